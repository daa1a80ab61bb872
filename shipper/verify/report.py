"""The verify report: the stable kinds of violation and finding, `Issue`, `ChainResult`, `Report`, and
their human and JSON renderings."""
from __future__ import annotations

import json
from collections import Counter
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
    outside_counts: dict[str, int] = field(default_factory=dict)   # violations by kind not tied to a chain

    @classmethod
    def assemble(cls, results: dict[str, ChainResult], violations: list[Issue], findings: list[Issue],
                 outside_counts: dict[str, int], records_read: int, meta: dict[str, Any]) -> Report:
        """The report of these chain results and violations outside chains, its totals summed here."""
        totals: Counter = Counter()
        violation_kinds: Counter = Counter(outside_counts)
        control_records: Counter = Counter()
        for result in results.values():
            for name in _SUMMED:
                totals[name] += getattr(result, name)
            totals["complete_chains"] += result.complete
            totals["stale_chains"] += bool(result.finding_counts.get(STALE))
            violation_kinds.update(result.violation_counts)
            control_records.update(result.control_records)
        out: dict[str, Any] = {"chains": len(results), "records_read": records_read,
                               "malformed": outside_counts.get(MALFORMED, 0)}
        for name in _SUMMED + ("complete_chains", "stale_chains"):
            out[name] = totals[name]
        out["control_records"] = dict(control_records)
        out["violations"] = sum(violation_kinds.values())
        out["violation_kinds"] = dict(violation_kinds)
        return cls(results, violations, findings, out, meta, dict(outside_counts))

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
            by = (f" by {meta['workers']} worker processes" if meta.get("workers") else
                  f" by {meta['members']} members of group {meta.get('group')}" if meta.get("members") else "")
            lines.append(f"read: {meta['partitions']} partitions of {', '.join(meta['topics'])} {how}{by} in "
                         f"{meta['elapsed_s']}s ({meta['records_per_s']} records/s)")
        if meta.get("trusted_heads"):
            lines.append(f"trusted heads: {meta['trusted_heads']} chains from {meta.get('trusted_heads_file')}")
        if meta.get("signatures") == "unchecked":
            lines.append("note: no --public-key given: checkpoint signatures were not checked")
        lines.append("VERDICT " + self.verdict())
        return "\n".join(lines) + "\n"


_SUMMED = ("records", "log_records", "links_verified", "duplicates_exact", "duplicates_conflicting", "gaps",
           "gap_bytes", "unattested_records", "trees_checked", "trees_unchecked")


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def issue_from_dict(data: dict[str, Any]) -> Issue:
    return Issue(data["kind"], data["chain"], data["seq"], data["topic"], data["partition"], data["offset"],
                 data["detail"], data.get("seq_last"))


def chain_result_from_dict(data: dict[str, Any]) -> ChainResult:
    fields = {name: value for name, value in data.items() if name not in ("ok", "violations", "findings")}
    return ChainResult(**fields, violations=[issue_from_dict(issue) for issue in data["violations"]],
                       findings=[issue_from_dict(issue) for issue in data["findings"]])


def report_part(report: Report) -> dict[str, Any]:
    """A report as one part of a split verify (`merge_reports` joins them): JSON-ready, totals left out."""
    return {"chains": [result.to_dict() for result in report.chains.values()],
            "violations": [issue.to_dict() for issue in report.violations],
            "findings": [issue.to_dict() for issue in report.findings],
            "outside_counts": report.outside_counts, "records_read": report.totals["records_read"],
            "meta": report.meta}


def report_from_part(part: dict[str, Any]) -> Report:
    results = {data["chain"]: chain_result_from_dict(data) for data in part["chains"]}
    return Report.assemble(results, [issue_from_dict(issue) for issue in part["violations"]],
                           [issue_from_dict(issue) for issue in part["findings"]], part["outside_counts"],
                           part["records_read"], part["meta"])


def merge_reports(parts: list[Report], meta: dict[str, Any]) -> Report:
    """One report of the parts of a split verify, each of other partitions. A chain found in the parts of
    two partitions (partitions added to the topic) is judged in each part alone; its results are added
    up and the merged chain carries a MULTIPLE_PARTITIONS finding."""
    results: dict[str, ChainResult] = {}
    violations: list[Issue] = []
    findings: list[Issue] = []
    outside: Counter = Counter()
    records_read = 0
    for part in parts:
        for name, result in part.chains.items():
            results[name] = _added(results[name], result) if name in results else result
        violations += part.violations
        findings += part.findings
        outside.update(part.outside_counts)
        records_read += part.totals["records_read"]
    merged_meta = dict(parts[0].meta) if parts else {}
    merged_meta.update(meta)
    return Report.assemble(results, violations[:_OUTSIDE_KEPT], findings[:_OUTSIDE_KEPT], dict(outside),
                           records_read, merged_meta)


_OUTSIDE_KEPT = 1000


def _added(first: ChainResult, second: ChainResult) -> ChainResult:
    merged = ChainResult(chain=first.chain, partitions=first.partitions + [p for p in second.partitions
                                                                            if p not in first.partitions])
    for name in _SUMMED:
        setattr(merged, name, getattr(first, name) + getattr(second, name))
    for name in ("control_records", "gap_reasons", "checkpoints", "violation_counts", "finding_counts"):
        setattr(merged, name, dict(Counter(getattr(first, name)) + Counter(getattr(second, name))))
    seqs = [seq for seq in (first.first_seq, second.first_seq) if seq is not None]
    merged.first_seq = min(seqs) if seqs else None
    merged.last_seq = max(first.last_seq, second.last_seq)
    goods = [seq for seq in (first.last_good_checkpoint_seq, second.last_good_checkpoint_seq) if seq is not None]
    merged.last_good_checkpoint_seq = max(goods) if goods else None
    claims = [seq for seq in (first.attested_seq, second.attested_seq) if seq is not None]
    merged.attested_seq = max(claims) if claims else None
    merged.closed = first.closed or second.closed
    merged.complete = False
    merged.identity = first.identity or second.identity
    merged.last_attested_time = max(filter(None, (first.last_attested_time, second.last_attested_time)), default=None)
    merged.violations = (first.violations + second.violations)[:ISSUES_KEPT_PER_CHAIN]
    note = Issue(MULTIPLE_PARTITIONS, first.chain, None, None, None, None,
                 f"chain found in {', '.join(merged.partitions)}, read by different parts of a split verify: each "
                 "part was judged alone (were partitions added to the topic?)")
    merged.findings = ([note] + first.findings + second.findings)[:ISSUES_KEPT_PER_CHAIN]
    merged.finding_counts[MULTIPLE_PARTITIONS] = merged.finding_counts.get(MULTIPLE_PARTITIONS, 0) + 1
    return merged
