"""`shipper verify` on the command line: arguments, then a file or topic verify, the report, the exit
status (0 no violation, 1 violations, 2 could not verify)."""
from __future__ import annotations

import argparse
import asyncio
import sys

from .inputs import VerifyError, _topic_list, kafka_client_options, load_public_keys, verify_file, verify_topic
from .verifier import DEFAULT_WINDOW


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
    judge = parser.add_argument_group("how to judge")
    judge.add_argument("--public-key", action="append", default=[], metavar="[LABEL=]PEM",
                       help="Ed25519 public key(s) that sign checkpoints (repeatable)")
    judge.add_argument("--require-attested", action="store_true",
                       help="records after a chain's last good checkpoint are a violation")
    judge.add_argument("--require-complete", action="store_true",
                       help="a chain that does not start at seq 1 in the topic is a violation")
    judge.add_argument("--allow-absent-chains", action="store_true",
                       help="a chain a manifest names but absent from the topics is only a finding (verifying a "
                            "subset of topics)")
    judge.add_argument("--window", type=int, default=DEFAULT_WINDOW,
                       help="seqs per chain remembered to judge duplicates (16 bytes each)")
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
    out = parser.add_argument_group("output")
    out.add_argument("--json", action="store_true", help="print the report as JSON")
    return parser


def cli_main(argv: list[str]) -> int:
    parser = _cli_parser()
    args = parser.parse_args(argv)
    topics = _topic_list(args.topic)
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
    options = dict(require_attested=args.require_attested, require_complete=args.require_complete,
                   allow_absent_chains=args.allow_absent_chains, window=args.window)
    try:
        keys = load_public_keys(args.public_key)
        if args.file:
            report = verify_file(args.file, public_keys=keys, **options)
        else:
            client = kafka_client_options(tls=args.tls, ca_file=args.tls_ca_file, cert_file=args.tls_cert_file,
                                          key_file=args.tls_key_file, check_hostname=not args.tls_no_hostname_check,
                                          sasl_mechanism=args.sasl_mechanism, sasl_username=args.sasl_username,
                                          sasl_password_file=args.sasl_password_file,
                                          sasl_oauth_token_file=args.sasl_oauth_token_file)
            report = asyncio.run(verify_topic(args.bootstrap_servers, topics, public_keys=keys,
                                              idle_timeout_s=args.idle_timeout, timeout_s=args.timeout,
                                              **options, **client))
    except VerifyError as exc:
        print(f"shipper verify: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    sys.stdout.write(report.to_json(indent=2) + "\n" if args.json else report.human())
    return 0 if report.ok else 1
