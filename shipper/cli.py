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
    config = commands.add_parser("config", help="print the effective configuration (secrets masked)")
    config.add_argument("--config", help="YAML configuration file")
    config.add_argument("--reference", action="store_true", help="print the configuration reference (Markdown)")
    commands.add_parser("verify", help="verify hash chains and checkpoints in a topic or file", add_help=False)
    keygen = commands.add_parser("keygen", help="write an Ed25519 key pair for signing checkpoints")
    keygen.add_argument("--out", default=".", help="directory for signing-key.pem, signing-key.pub.pem and "
                        "signing-key.vkey")
    keygen.add_argument("--name", help="key name in the notes (set the same as seal.key_id; default: derived from "
                        "the public key)")
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
    args = _parser().parse_args(argv)
    try:
        if args.command == "config":
            if args.reference:
                sys.stdout.write(reference_markdown())
                return 0
            print(json.dumps(masked_dump(load_settings(args.config)), indent=2))
            return 0
        if args.command == "run":
            return _run(load_settings(args.config))
    except ConfigError as exc:
        print(f"shipper: {exc}", file=sys.stderr)
        return 2
    if args.command == "keygen":
        return _keygen(Path(args.out), args.name)
    if args.command == "demo":
        from .demo.run import run_demo

        return asyncio.run(run_demo(seconds=args.seconds, pods=args.pods, rate=args.rate, keep=args.keep))
    return 2


def _run(settings) -> int:
    from .logs import setup_logging
    from .server import Server, UnsafeStateDirectory

    setup_logging(settings.log_level)
    try:
        return asyncio.run(Server(settings, config_file=os.environ.get("SHIPPER_CONFIG_FILE")).serve())
    except (UnsafeStateDirectory, ConfigError) as exc:
        print(f"shipper: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _keygen(out: Path, name: str | None) -> int:
    from cryptography.hazmat.primitives import serialization

    from .note import BadNote, verifier_key
    from .seal import generate_key_pair, key_id_of, load_public_key

    out.mkdir(parents=True, exist_ok=True)
    private_path, public_path = out / "signing-key.pem", out / "signing-key.pub.pem"
    if private_path.exists():
        print(f"shipper: {private_path} exists; not overwriting a signing key", file=sys.stderr)
        return 2
    private, public = generate_key_pair()
    public_key = load_public_key(public)
    name = name or key_id_of(public_key)
    try:
        vkey = verifier_key(name, public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw))
    except BadNote as exc:
        print(f"shipper: --name {name!r}: {exc}", file=sys.stderr)
        return 2
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(private)
    public_path.write_bytes(public)
    (out / "signing-key.vkey").write_text(vkey + "\n")
    print(f"wrote {private_path} (keep secret; mount as a Secret), {public_path} and signing-key.vkey (the "
          f"C2SP verifier key, for any signed-note verifier; give both to auditors); key name {name}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
