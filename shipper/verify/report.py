"""The verify report: the stable kinds of violation and finding, `Issue`, `ChainResult`, `Report`, and
their human and JSON renderings."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

__all__ = ["MALFORMED", "ENVELOPE_MISMATCH", "ALTERED", "BROKEN_LINK", "CONFLICTING_DUPLICATE", "MISSING", "REORDERED",
           "OUT_OF_WINDOW", "BAD_SIGNATURE", "UNKNOWN_KEY", "UNSIGNED", "CHECKPOINT_MISMATCH", "MANIFEST_MISMATCH",
           "TAIL_REMOVED", "GAP_MISMATCH", "AFTER_CLOSE", "UNATTESTED", "INCOMPLETE_READ", "GAP",
           "GAP_EXPLAINS_MISSING", "STARTS_AT_SEQ", "UNATTESTED_TAIL", "SIGNATURES_UNCHECKED", "REPLAYED_LATE",
           "GAP_RECORD_PRESENT", "CHAIN_ABSENT", "MULTIPLE_PARTITIONS", "KEY_ALIAS", "CONTINUES_FROM_COPY",
           "TREE_MISMATCH", "MISATTRIBUTED", "IDENTITY_MISMATCH", "TRUSTED_HEAD_MISMATCH", "TREE_UNCHECKED", "STALE",
           "ISSUES_KEPT_PER_CHAIN", "Issue", "ChainResult", "Report"]

ISSUES_KEPT_PER_CHAIN = 50

# Violations (exit status 1) and findings (reported, harmless on their own). Names are stable: they are
# the `kind` of the JSON report.
MALFORMED = "malformed"
ENVELOPE_MISMATCH = "envelope_mismatch"
ALTERED = "altered"
BROKEN_LINK = "broken_link"
CONFLICTING_DUPLICATE = "conflicting_duplicate"
MISSING = "missing"
REORDERED = "reordered"
OUT_OF_WINDOW = "out_of_window"
BAD_SIGNATURE = "bad_signature"
UNKNOWN_KEY = "unknown_key"
UNSIGNED = "unsigned"
CHECKPOINT_MISMATCH = "checkpoint_mismatch"
MANIFEST_MISMATCH = "manifest_mismatch"
TAIL_REMOVED = "tail_removed"
GAP_MISMATCH = "gap_mismatch"
AFTER_CLOSE = "after_close"
UNATTESTED = "unattested"
INCOMPLETE_READ = "incomplete_read"
TREE_MISMATCH = "tree_mismatch"                  # a checkpoint's Merkle root is not that of the records before it
MISATTRIBUTED = "misattributed"                  # a record's resource identity is not the one its checkpoints attest
IDENTITY_MISMATCH = "identity_mismatch"          # checkpoints of one chain attest different identities
TRUSTED_HEAD_MISMATCH = "trusted_head_mismatch"  # the topic's record at a trusted head's seq is another record
# findings
GAP = "gap"
GAP_EXPLAINS_MISSING = "gap_explains_missing"
STARTS_AT_SEQ = "starts_at_seq"
UNATTESTED_TAIL = "unattested_tail"
SIGNATURES_UNCHECKED = "signatures_unchecked"
REPLAYED_LATE = "replayed_late"
GAP_RECORD_PRESENT = "gap_record_present"
CHAIN_ABSENT = "chain_absent"
MULTIPLE_PARTITIONS = "multiple_partitions"
KEY_ALIAS = "key_alias"
CONTINUES_FROM_COPY = "continues_from_copy"
TREE_UNCHECKED = "tree_unchecked"                # a checkpoint's tree covers records the verifier cannot rebuild
STALE = "stale"                                  # a chain's (or node's) latest attestation is older than --stale-after
_ROUTINE_FINDINGS = frozenset((UNATTESTED_TAIL, KEY_ALIAS, REPLAYED_LATE, GAP_RECORD_PRESENT))
# findings the human summary spells out (one per chain at most): what a consistent cut of a topic leaves
_SPELLED_FINDINGS = frozenset((STALE, TREE_UNCHECKED))


@dataclass(slots=True, frozen=True)
class Issue:
    """A violation or a finding, located: chain, seq (and a seq range when it spans several) and where
    the record sits (topic, partition, offset; for files the line number is the offset)."""

    kind: str
    chain: str | None
    seq: int | None
    topic: str | None
    partition: int | None
    offset: int | None
    detail: str
    seq_last: int | None = None

    @property
    def where(self) -> str:
        return _where(self.topic, self.partition, self.offset)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "chain": self.chain, "seq": self.seq}
        if self.seq_last is not None:
            out["seq_last"] = self.seq_last
        out.update(topic=self.topic, partition=self.partition, offset=self.offset, detail=self.detail)
        return out

    def human(self) -> str:
        seqs = "" if self.seq is None else (f" seq {self.seq}" if self.seq_last in (None, self.seq)
                                              else f" seqs {self.seq}..{self.seq_last}")
        where = self.where
        return f"{self.kind}{seqs}{' at ' + where if where else ''}: {self.detail}"


def _where(topic: str | None, partition: int | None, offset: int | None) -> str:
    if offset is None:
        return ""
    if partition is None:
        return f"line {offset}"
    return f"{topic + '/' if topic else 'p'}{partition}@{offset}"


@dataclass(slots=True)
class ChainResult:
    chain: str
    partitions: list[str] = field(default_factory=list)
    records: int = 0
    log_records: int = 0
    control_records: dict[str, int] = field(default_factory=dict)
    first_seq: int | None = None
    last_seq: int = 0
    links_verified: int = 0
    duplicates_exact: int = 0
    duplicates_conflicting: int = 0
    gaps: int = 0
    gap_bytes: int = 0
    gap_reasons: dict[str, int] = field(default_factory=dict)
    checkpoints: dict[str, int] = field(default_factory=dict)
    last_good_checkpoint_seq: int | None = None
    unattested_records: int = 0
    closed: bool = False
    complete: bool = False
    attested_seq: int | None = None          # highest head a manifest attests for this chain
    identity: dict[str, str] | None = None   # what its signed checkpoints attest (namespace, pod, ...)
    trees_checked: int = 0                   # checkpoints whose Merkle root was recomputed and matched
    trees_unchecked: int = 0
    last_attested_time: str | None = None    # `time` of its latest checkpoint or manifest mention
    violation_counts: dict[str, int] = field(default_factory=dict)
    finding_counts: dict[str, int] = field(default_factory=dict)
    violations: list[Issue] = field(default_factory=list)
    findings: list[Issue] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.violation_counts

    def to_dict(self) -> dict[str, Any]:
        return {"chain": self.chain, "ok": self.ok, "complete": self.complete, "closed": self.closed,
                "partitions": self.partitions, "records": self.records, "log_records": self.log_records,
                "control_records": self.control_records, "first_seq": self.first_seq, "last_seq": self.last_seq,
                "links_verified": self.links_verified, "duplicates_exact": self.duplicates_exact,
                "duplicates_conflicting": self.duplicates_conflicting, "gaps": self.gaps,
                "gap_bytes": self.gap_bytes, "gap_reasons": self.gap_reasons, "checkpoints": self.checkpoints,
                "last_good_checkpoint_seq": self.last_good_checkpoint_seq,
                "unattested_records": self.unattested_records, "attested_seq": self.attested_seq,
                "identity": self.identity, "trees_checked": self.trees_checked,
                "trees_unchecked": self.trees_unchecked, "last_attested_time": self.last_attested_time,
                "violation_counts": self.violation_counts, "finding_counts": self.finding_counts,
                "violations": [issue.to_dict() for issue in self.violations],
                "findings": [issue.to_dict() for issue in self.findings]}

    def problems(self) -> bool:
        return bool(self.violation_counts) or bool(self.finding_counts)


@dataclass(slots=True)
class Report:
    chains: dict[str, ChainResult]
    violations: list[Issue]              # not tied to a chain (malformed records, an incomplete read)
    findings: list[Issue]
    totals: dict[str, Any]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def violation_count(self) -> int:
        return self.totals["violations"]

    @property
    def ok(self) -> bool:
        return self.violation_count == 0

    def chain(self, name: str) -> ChainResult:
        return self.chains[name]

    def all_violations(self) -> list[Issue]:
        """The kept violations (per chain at most ISSUES_KEPT_PER_CHAIN; the counts are exact)."""
        out = list(self.violations)
        for result in self.chains.values():
            out.extend(result.violations)
        return out

    def all_findings(self) -> list[Issue]:
        out = list(self.findings)
        for result in self.chains.values():
            out.extend(result.findings)
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"schema": "audit-shipper/verify-report/v1", "ok": self.ok, "verdict": self.verdict(),
                "totals": self.totals, "meta": self.meta,
                "violations": [issue.to_dict() for issue in self.violations],
                "findings": [issue.to_dict() for issue in self.findings],
                "chains": [result.to_dict() for result in sorted(self.chains.values(), key=lambda r: r.chain)]}

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), indent=indent, sort_keys=False)

    def verdict(self) -> str:
        totals = self.totals
        if self.ok:
            return f"OK: {totals['records']} records in {totals['chains']} chains verified"
        kinds = ", ".join(f"{kind} {count}" for kind, count in sorted(totals["violation_kinds"].items()))
        failed = sum(1 for result in self.chains.values() if not result.ok)
        outside = f" and {len(self.violations)} outside any chain" if self.violations else ""
        return (f"FAILED: {_plural(totals['violations'], 'violation')} in {failed} of "
                f"{_plural(totals['chains'], 'chain')}{outside} ({kinds})")

    def human(self, max_issues_per_chain: int = 5, max_chains: int = 50) -> str:
        """One line per chain with a violation or a finding worth a look (routine ones, such as the
        unattested tail of a live chain, are only counted), its first violations, totals, the verdict."""
        lines: list[str] = []
        for issue in self.violations[:max_chains]:
            lines.append(f"VIOLATION {issue.human()}")
        if len(self.violations) > max_chains:
            lines.append(f"... and {len(self.violations) - max_chains} more violations outside chains (see --json)")
        shown_chains = [result for result in sorted(self.chains.values(), key=lambda r: (r.ok, r.chain))
                        if not result.ok or set(result.finding_counts) - _ROUTINE_FINDINGS]
        for result in shown_chains[:max_chains]:
            state = "FAILED" if not result.ok else "ok"
            span = f"seq {result.first_seq}..{result.last_seq}" if result.first_seq is not None else "no records"
            counts = dict(result.violation_counts)
            counts.update(result.finding_counts)
            summary = ", ".join(f"{kind} {count}" for kind, count in sorted(counts.items()))
            gaps = (f"; gaps: {', '.join(f'{r} {n}' for r, n in sorted(result.gap_reasons.items()))}, "
                    f"{result.gap_bytes} bytes lost at source") if result.gaps else ""
            lines.append(f"chain {result.chain}: {state}, {result.records} records ({span}): {summary}{gaps}")
            shown = result.violations[:max_issues_per_chain]
            for issue in shown:
                lines.append(f"    {issue.human()}")
            more = sum(result.violation_counts.values()) - len(shown)
            if more > 0:
                lines.append(f"    ... and {more} more violations (see --json)")
            for issue in result.findings:
                if issue.kind in _SPELLED_FINDINGS:
                    lines.append(f"    finding {issue.human()}")
        if len(shown_chains) > max_chains:
            lines.append(f"... and {len(shown_chains) - max_chains} more chains (see --json)")
        totals = self.totals
        control = ", ".join(f"{count} {kind}" for kind, count in sorted(totals["control_records"].items()))
        lines.append(f"totals: {totals['chains']} chains, {totals['records']} records ({totals['log_records']} log"
                     f"{', ' + control if control else ''}), {totals['links_verified']} links verified, "
                     f"{totals['duplicates_exact']} exact duplicates, {totals['duplicates_conflicting']} conflicting, "
                     f"{totals['gaps']} gaps ({totals['gap_bytes']} bytes), {totals['complete_chains']} closed chains "
                     f"proven complete, {totals['unattested_records']} unattested records, "
                     f"{totals.get('trees_checked', 0)} tree roots checked ({totals.get('trees_unchecked', 0)} not), "
                     f"{_plural(totals['violations'], 'violation')}")
        meta = self.meta
        if meta.get("source") == "kafka":
            how = {"end_offsets": "to their end offsets", "idle": f"until idle ({meta.get('idle_timeout_s')}s)",
                   "timeout": "until the timeout"}.get(meta.get("stopped"), meta.get("stopped"))
            lines.append(f"read: {meta['partitions']} partitions of {', '.join(meta['topics'])} {how} in "
                         f"{meta['elapsed_s']}s ({meta['records_per_s']} records/s)")
        if meta.get("trusted_heads"):
            lines.append(f"trusted heads: {meta['trusted_heads']} chains from {meta.get('trusted_heads_file')}")
        if meta.get("signatures") == "unchecked":
            lines.append("note: no --public-key given: checkpoint signatures were not checked")
        lines.append("VERDICT " + self.verdict())
        return "\n".join(lines) + "\n"


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"
