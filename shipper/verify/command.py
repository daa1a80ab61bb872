"""`shipper verify` and `shipper prove` on the command line: arguments, then a file or topic verify (the
report), a proof check, or a proof made from a topic; the exit status (0 no violation / a good proof,
1 violations / a bad proof / no proof to make, 2 could not run)."""
from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
from pathlib import Path

from .inputs import (VerifyError, _topic_list, kafka_client_options, load_public_keys, prove_from_topic, verify_file,
                     verify_topic)
from .follow import DEFAULT_COMMIT_EVERY_S, DEFAULT_GRACE_S, follow_group
from .group import verify_group
from .parallel import verify_topic_parallel
from .progress import MODES, Progress
from .verifier import DEFAULT_STALE_AFTER_S, DEFAULT_WINDOW, rfc3339_epoch


def _cli_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="shipper verify",
        description="Verify the hash chains, signed checkpoints and node manifests of audit-shipper records in "
                    "Kafka topics or JSON-lines files. Exit status: 0 no violation, 1 violations, 2 could not verify.")
    source = parser.add_argument_group("what to verify")
    source.add_argument("--bootstrap-servers", help="Kafka bootstrap servers, host:port[,host:port]")
    source.add_argument("--topic", action="append", default=[], help="topic to read (repeatable, or a comma list)")
    source.add_argument("--file", action="append", default=[],
                        help="JSON-lines file of record values or of {key, value, partition, offset} (repeatable; "
                             "- for stdin)")
    source.add_argument("--proof", metavar="FILE",
                        help="check a per-record proof written by `shipper prove` offline (needs --public-key)")
    judge = parser.add_argument_group("how to judge")
    judge.add_argument("--public-key", action="append", default=[], metavar="[LABEL=]KEY",
                       help="Ed25519 public key(s) that sign checkpoints: PEM or a C2SP verifier key file "
                            "(signing-key.vkey) (repeatable)")
    judge.add_argument("--require-attested", action="store_true",
                       help="records after a chain's last good checkpoint are a violation")
    judge.add_argument("--require-complete", action="store_true",
                       help="a chain that does not start at seq 1 in the topic is a violation")
    judge.add_argument("--allow-absent-chains", action="store_true",
                       help="a chain a manifest names but absent from the topics is only a finding (verifying a "
                            "subset of topics)")
    judge.add_argument("--window", type=int, default=DEFAULT_WINDOW,
                       help="seqs per chain remembered to judge duplicates (16 bytes each)")
    judge.add_argument("--stale-after", type=float, default=DEFAULT_STALE_AFTER_S, metavar="SECONDS",
                       help="a chain not closed (or a node) whose latest checkpoint or manifest is older than this "
                            f"is reported stale (default {DEFAULT_STALE_AFTER_S:g}; 0 or less: never)")
    judge.add_argument("--now", metavar="RFC3339",
                       help="the time staleness is measured against (default: the clock), for reproducible runs")
    judge.add_argument("--trusted-heads", metavar="FILE",
                       help="heads saved by an earlier --save-heads, kept outside the topic: a chain the topic holds "
                            "only below one is tail_removed")
    out_heads = parser.add_argument_group("keeping heads")
    out_heads.add_argument("--save-heads", metavar="FILE",
                           help="write the latest signed checkpoint/manifest record of every chain read (keep it "
                                "outside the topic; give it to a later run as --trusted-heads)")
    _read_options(parser)
    scale = parser.add_argument_group("scaling out")
    scale.add_argument("--workers", type=int, default=1, metavar="N",
                       help="verify the topic's partitions in N processes on this machine (default 1)")
    scale.add_argument("--group", metavar="NAME",
                       help="verify as a member of Kafka consumer group NAME: run the same command on several "
                            "machines; the group's members split the partitions, and each prints the whole report")
    follow = parser.add_argument_group("following a live topic (with --group)")
    follow.add_argument("--follow", action="store_true",
                        help="keep verifying new records; progress is committed to the group with the chains' states, "
                             "so a restart goes on where it was; each violation and finding is a JSON line on "
                             "standard output")
    follow.add_argument("--on-violation", choices=["alert", "exit"], default="alert",
                        help="alert: count it in the metrics and go on (default); exit: commit and exit with status 1")
    follow.add_argument("--grace", type=float, default=DEFAULT_GRACE_S, metavar="SECONDS",
                        help="how long a missing record or a head a manifest attests may stay absent before it is a "
                             f"violation (default {DEFAULT_GRACE_S:g})")
    follow.add_argument("--commit-every", type=float, default=DEFAULT_COMMIT_EVERY_S, metavar="SECONDS",
                        help=f"how often progress is committed (default {DEFAULT_COMMIT_EVERY_S:g})")
    follow.add_argument("--metrics-port", type=int, metavar="PORT",
                        help="serve /metrics, /healthz and /readyz on this port (0: any free port)")
    follow.add_argument("--metrics-host", default="0.0.0.0", help="address the metrics are served on")
    scale.add_argument("--exchange-topic", metavar="TOPIC",
                       help="with --group: the one-partition topic the members exchange claims and report parts on "
                            "(default audit-shipper-verify.<group>, created when absent)")
    out = parser.add_argument_group("output")
    out.add_argument("--json", action="store_true", help="print the report as JSON")
    out.add_argument("--progress", choices=MODES, default="auto",
                     help="progress of a topic verify on standard error: a line on a terminal (tty), JSON lines "
                          "(json), or none; auto: the line when standard error is a terminal (default)")
    return parser


def cli_main(argv: list[str]) -> int:
    parser = _cli_parser()
    args = parser.parse_args(argv)
    topics = _topic_list(args.topic)
    if args.proof is not None:
        if args.file or topics or args.bootstrap_servers:
            print("shipper verify: --proof checks a proof file offline; give it without --file or --topic",
                  file=sys.stderr)
            return 2
        return _check_proof_file(args)
    if bool(args.file) == bool(topics or args.bootstrap_servers):
        parser.print_usage(sys.stderr)
        print("shipper verify: give either --file, or --bootstrap-servers with --topic", file=sys.stderr)
        return 2
    if topics and not args.bootstrap_servers or args.bootstrap_servers and not topics:
        print("shipper verify: --bootstrap-servers and --topic go together", file=sys.stderr)
        return 2
    if args.require_attested and not args.public_key:
        print("shipper verify: --require-attested needs --public-key (attestation is a signature check)",
              file=sys.stderr)
        return 2
    now = None
    if args.now is not None:
        now = rfc3339_epoch(args.now)
        if now is None:
            print(f"shipper verify: --now {args.now!r} is not an RFC 3339 time (2026-11-28T18:00:00Z)", file=sys.stderr)
            return 2
    if args.workers < 1:
        print("shipper verify: --workers must be at least 1", file=sys.stderr)
        return 2
    if (args.workers > 1 or args.group) and args.file:
        print("shipper verify: --workers and --group split a topic's partitions; a file is read by one process",
              file=sys.stderr)
        return 2
    if args.follow and not args.group:
        print("shipper verify: --follow needs --group (its progress is committed to the group)", file=sys.stderr)
        return 2
    if args.follow and (args.now or args.save_heads or args.trusted_heads):
        print("shipper verify: --follow judges staleness by the clock and keeps its heads in the group: --now, "
              "--save-heads and --trusted-heads are for one-shot runs", file=sys.stderr)
        return 2
    if args.workers > 1 and args.group:
        print("shipper verify: give --workers or --group, not both (run one member per process)", file=sys.stderr)
        return 2
    judge = dict(require_attested=args.require_attested, require_complete=args.require_complete,
                 allow_absent_chains=args.allow_absent_chains, window=args.window,
                 stale_after_s=args.stale_after if args.stale_after > 0 else math.inf)
    progress = Progress(args.progress) if topics and not args.follow else None
    try:
        keys = load_public_keys(args.public_key)
        if args.file:
            report = verify_file(args.file, public_keys=keys, now=now, trusted_heads=args.trusted_heads,
                                 save_heads=args.save_heads, **judge)
        elif args.follow:
            client = kafka_client_options(**_client_terms(args))
            return asyncio.run(follow_group(args.bootstrap_servers, topics, args.group, public_keys=keys,
                                            verifier_options=judge, grace_s=args.grace,
                                            commit_every_s=args.commit_every, on_violation=args.on_violation,
                                            exchange_topic=args.exchange_topic, metrics_host=args.metrics_host,
                                            metrics_port=args.metrics_port, client_options=client))
        elif args.group:
            client = kafka_client_options(**_client_terms(args))
            report = asyncio.run(verify_group(args.bootstrap_servers, topics, args.group, public_keys=keys,
                                              verifier_options=judge, now=now, idle_timeout_s=args.idle_timeout,
                                              timeout_s=args.timeout, trusted_heads=args.trusted_heads,
                                              save_heads_to=args.save_heads, exchange_topic=args.exchange_topic,
                                              progress=progress, **client))
        elif args.workers > 1:
            report = verify_topic_parallel(args.bootstrap_servers, topics, args.workers, public_keys=args.public_key,
                                           client_terms=_client_terms(args), idle_timeout_s=args.idle_timeout,
                                           timeout_s=args.timeout, now=now, trusted_heads=args.trusted_heads,
                                           save_heads_to=args.save_heads, progress=progress, **judge)
        else:
            client = kafka_client_options(**_client_terms(args))
            report = asyncio.run(verify_topic(args.bootstrap_servers, topics, public_keys=keys,
                                              idle_timeout_s=args.idle_timeout, timeout_s=args.timeout, now=now,
                                              trusted_heads=args.trusted_heads, save_heads=args.save_heads,
                                              progress=progress, **judge, **client))
    except VerifyError as exc:
        print(f"shipper verify: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    finally:
        if progress is not None:
            progress.close()
    sys.stdout.write(report.to_json(indent=2) + "\n" if args.json else report.human())
    if args.save_heads and not args.json:
        print(f"saved the heads of {report.meta.get('saved_heads', 0)} chains to {args.save_heads}", file=sys.stderr)
    return 0 if report.ok else 1


def _check_proof_file(args) -> int:
    from .proof import check_proof

    if not args.public_key:
        print("shipper verify: --proof needs --public-key (a proof is only as good as the signature it ends in)",
              file=sys.stderr)
        return 2
    try:
        keys = load_public_keys(args.public_key)
        text = Path(args.proof).read_text("utf-8")
    except VerifyError as exc:
        print(f"shipper verify: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"shipper verify: proof {args.proof}: {exc.strerror}", file=sys.stderr)
        return 2
    except UnicodeDecodeError:
        ok, reason = False, "the proof file is not UTF-8 text"
    else:
        try:
            proof = json.loads(text)
        except ValueError as exc:
            ok, reason = False, f"the proof file is not JSON: {str(exc)[:200]}"
        else:
            ok, reason = check_proof(proof, keys)
    if args.json:
        sys.stdout.write(json.dumps({"schema": "audit-shipper/proof-verdict/v1", "ok": ok, "reason": reason}) + "\n")
    else:
        print(f"VERDICT {reason}" if ok else f"VERDICT FAILED: {reason}")
    return 0 if ok else 1


def _prove_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="shipper prove",
        description="Write the proof that one record is in the Merkle tree of a signed checkpoint, read from the "
                    "partition of its chain; check it offline with `shipper verify --proof FILE --public-key KEY`. "
                    "Exit status: 0 proof written, 1 no proof can be made, 2 could not run.")
    parser.add_argument("event_id", metavar="EVENT_ID", help="the record's event_id, <chain>:<seq>")
    parser.add_argument("--bootstrap-servers", required=True, help="Kafka bootstrap servers, host:port[,host:port]")
    parser.add_argument("--topic", required=True, help="the topic that holds the record")
    parser.add_argument("--public-key", action="append", default=[], metavar="[LABEL=]KEY",
                        help="use the first checkpoint after the record signed by this key (PEM or verifier key; "
                             "repeatable); without one, the first checkpoint after it")
    parser.add_argument("--out", metavar="FILE", help="write the proof here (default: standard output)")
    _read_options(parser)
    return parser


def _read_options(parser: argparse.ArgumentParser) -> None:
    read = parser.add_argument_group("reading Kafka")
    read.add_argument("--idle-timeout", type=float, default=5.0,
                      help="stop after this many seconds without a new record (default 5)")
    read.add_argument("--timeout", type=float, default=None, help="stop after this many seconds in all")
    read.add_argument("--tls", action="store_true", help="TLS with the system CAs")
    read.add_argument("--tls-ca-file", help="CA bundle (PEM) for the brokers' certificates (implies TLS)")
    read.add_argument("--tls-cert-file", help="client certificate (PEM) for mutual TLS")
    read.add_argument("--tls-key-file", help="client private key (PEM) for mutual TLS")
    read.add_argument("--tls-no-hostname-check", action="store_true", help="do not check the brokers' host names")
    read.add_argument("--sasl-mechanism", choices=["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER"])
    read.add_argument("--sasl-username")
    read.add_argument("--sasl-password-file", help="file holding the SASL password (never printed)")
    read.add_argument("--sasl-oauth-token-file", help="OAUTHBEARER: file holding the access token, re-read when it "
                                                      "changes (never printed)")


def _client_terms(args) -> dict:
    """The TLS/SASL terms of the command line (file paths and names, never secrets): kafka_client_options
    turns them into aiokafka options, in each process that connects."""
    return dict(tls=args.tls, ca_file=args.tls_ca_file, cert_file=args.tls_cert_file, key_file=args.tls_key_file,
                check_hostname=not args.tls_no_hostname_check, sasl_mechanism=args.sasl_mechanism,
                sasl_username=args.sasl_username, sasl_password_file=args.sasl_password_file,
                sasl_oauth_token_file=args.sasl_oauth_token_file)


def prove_main(argv: list[str]) -> int:
    """`shipper prove`."""
    from .proof import ProofError

    args = _prove_parser().parse_args(argv)
    try:
        keys = load_public_keys(args.public_key)
        proof = asyncio.run(prove_from_topic(args.bootstrap_servers, args.topic, args.event_id, public_keys=keys,
                                             idle_timeout_s=args.idle_timeout, timeout_s=args.timeout,
                                             **kafka_client_options(**_client_terms(args))))
    except ProofError as exc:
        print(f"shipper prove: {exc}", file=sys.stderr)
        return 1
    except VerifyError as exc:
        print(f"shipper prove: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    text = json.dumps(proof, indent=2, ensure_ascii=False) + "\n"
    if args.out:
        try:
            Path(args.out).write_text(text, "utf-8")
        except OSError as exc:
            print(f"shipper prove: {args.out}: {exc.strerror}", file=sys.stderr)
            return 2
        print(f"wrote the proof of {args.event_id} (checkpoint at seq {proof['checkpoint_seq']}, tree of "
              f"{proof['tree_size']} records) to {args.out}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0
