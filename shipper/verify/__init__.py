"""`shipper verify`: the auditor's check of the hash chains, checkpoints and manifests in a topic or a file.

A face that only re-exports. One file per concern: report (the stable kinds, Issue, ChainResult, Report),
window (the bounded duplicate window), chain (what is kept per chain), tree (a chain's Merkle tree),
attribution (the pod a chain's records name), signatures (the auditor's keys), verifier (Verifier, the
pure streaming judge), proof (per-record proofs, made and checked), inputs (keys, files, Kafka, saved
heads), command (`shipper verify` and `shipper prove` arguments and exit status). The checkpoint and
manifest formats live in seal.py.
"""
from __future__ import annotations

from ..seal import BadManifest, ParsedManifest, manifest_statement, parse_manifest
from .command import cli_main, prove_main
from .inputs import (VerifyError, feed_file, kafka_client_options, load_public_keys, load_trusted_heads,
                     prove_from_topic, save_heads, verify_file, verify_topic)
from .proof import PROOF_FORMAT, ProofBuilder, ProofError, check_proof
from .report import *  # noqa: F403 (the stable kinds, ISSUES_KEPT_PER_CHAIN, Issue, ChainResult, Report)
from .verifier import (CONTROL_TYPES, DEFAULT_MAX_DECLARED, DEFAULT_MAX_OPEN_RANGES, DEFAULT_STALE_AFTER_S,
                       DEFAULT_WINDOW, MANIFEST_CHAIN_PREFIX, Verifier)

__all__ = ["manifest_statement", "parse_manifest", "verify_topic", "verify_file", "load_public_keys", "cli_main",
           "prove_main", "prove_from_topic", "check_proof", "Verifier", "Report"]
