"""`shipper` command line: parses arguments and hands over; nothing else lives here."""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path

from .config import ConfigError, load_settings, masked_dump, reference_markdown


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="shipper", description="Audit-ready Kubernetes log shipper to Kafka.")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="ship this node's container logs (the DaemonSet entry point)")
    run.add_argument("--config", help="YAML configuration file (also SHIPPER_CONFIG_FILE)")
    # a worker of `workers: N`, started by the supervisor (workers.py)
    run.add_argument("--worker", help=argparse.SUPPRESS)
    run.add_argument("--worker-port", type=int, help=argparse.SUPPRESS)
    config = commands.add_parser("config", help="print the effective configuration (secrets masked)")
    config.add_argument("--config", help="YAML configuration file")
    config.add_argument("--reference", action="store_true", help="print the configuration reference (Markdown)")
    commands.add_parser("verify", help="verify hash chains and checkpoints in a topic or file, or a proof",
                        add_help=False)
    commands.add_parser("prove", help="write the proof that one record is in a signed checkpoint's tree",
                        add_help=False)
    keygen = commands.add_parser("keygen", help="write an Ed25519 key pair for signing checkpoints")
    keygen.add_argument("--out", default=".",
                        help="directory for signing-key.pem, signing-key.pub.pem and signing-key.vkey")
    keygen.add_argument("--key-id", help="the key name the shipper will sign under (its seal.key_id; default: "
                                         "derived from the public key), written into signing-key.vkey")
    demo = commands.add_parser("demo", help="simulated node -> real pipeline -> embedded broker -> verify")
    demo.add_argument("--seconds", type=float, default=10.0, help="how long the simulated pods write")
    demo.add_argument("--pods", type=int, default=6)
    demo.add_argument("--rate", type=int, default=5000, help="lines per second over all pods")
    demo.add_argument("--keep", help="keep the demo's files in this directory")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["verify"]:
        from .verify import cli_main

        return cli_main(argv[1:])
    if argv[:1] == ["prove"]:
        from .verify import prove_main

        return prove_main(argv[1:])
    args = _parser().parse_args(argv)
    try:
        if args.command == "config":
            if args.reference:
                sys.stdout.write(reference_markdown())
                return 0
            print(json.dumps(masked_dump(load_settings(args.config)), indent=2))
            return 0
        if args.command == "run":
            return _run(load_settings(args.config), args.worker, args.worker_port)
    except ConfigError as exc:
        print(f"shipper: {exc}", file=sys.stderr)
        return 2
    if args.command == "keygen":
        return _keygen(Path(args.out), args.key_id)
    if args.command == "demo":
        from .demo.run import run_demo

        return asyncio.run(run_demo(seconds=args.seconds, pods=args.pods, rate=args.rate, keep=args.keep))
    return 2


def _run(settings, worker: str | None = None, worker_port: int | None = None) -> int:
    from .logs import setup_logging
    from .server import Server, UnsafeStateDirectory
    from .workers import Shard, Supervisor, resolve_workers, unit_settings

    setup_logging(settings.log_level)
    config_file = os.environ.get("SHIPPER_CONFIG_FILE")
    try:
        if worker is not None:
            shard = Shard.parse(worker)
            settings = unit_settings(settings, shard)
            settings = settings.model_copy(update={"metrics": settings.metrics.model_copy(
                update={"host": "127.0.0.1", "port": worker_port or 0})})
            return asyncio.run(Server(settings, config_file=config_file, shard=shard).serve())
        count = resolve_workers(settings.workers)
        if count > 1:
            return asyncio.run(Supervisor(settings, count, config_file).run())
        return asyncio.run(Server(settings, config_file=config_file).serve())
    except (UnsafeStateDirectory, ConfigError, ValueError) as exc:
        print(f"shipper: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _keygen(out: Path, key_id: str | None = None) -> int:
    from .note import BadNote, VerifierKey
    from .seal import generate_key_pair, key_id_of, load_public_key

    out.mkdir(parents=True, exist_ok=True)
    private_path, public_path = out / "signing-key.pem", out / "signing-key.pub.pem"
    vkey_path = out / "signing-key.vkey"
    if private_path.exists():
        print(f"shipper: {private_path} exists; not overwriting a signing key", file=sys.stderr)
        return 2
    private, public = generate_key_pair()
    public_key = load_public_key(public)
    name = key_id or key_id_of(public_key)
    try:
        vkey = VerifierKey.of(name, public_key).text
    except BadNote as exc:
        print(f"shipper: --key-id: {exc}", file=sys.stderr)
        return 2
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(private)
    public_path.write_bytes(public)
    vkey_path.write_text(vkey + "\n")
    print(f"wrote {private_path} (keep secret; mount as a Secret), {public_path} and {vkey_path} "
          f"(give to auditors); key id {key_id_of(public_key)}, key name {name}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
