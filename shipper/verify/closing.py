"""What the verifier judges when reading ends (`finish`) or, following a live topic, once enough time
has passed (`settle`): missing ranges nothing filled, heads that manifests or saved heads attest but the
topic does not hold, unattested tails, trees not recomputed, stale chains; and the report.

A mixin of Verifier (verifier.py), which owns the state and the reporting of issues; kept apart because
it judges the absence of records, while verifier.py judges the records that come.
"""
from __future__ import annotations

import bisect
import time
from typing import TYPE_CHECKING

from .chain import ChainState, Missing
from .report import (CHAIN_ABSENT, GAP, GAP_EXPLAINS_MISSING, GAP_MISMATCH, MISSING, STALE, STARTS_AT_SEQ,
                     TAIL_REMOVED, TREE_UNCHECKED, UNATTESTED, UNATTESTED_TAIL, ChainResult, Report, _where)

if TYPE_CHECKING:
    from .verifier import Verifier as _Judge
else:
    _Judge = object


class Closing(_Judge):
    def finish(self) -> Report:
        """Judge what is still open (missing ranges, manifest claims, unattested tails) and report."""
        if self._finished is not None:
            return self._finished
        for state in self.chains.values():
            if state.just_filled is not None:
                self._judge_fill(state, replayed=False)
            declared_seqs = sorted(state.declared)
            for missing in state.ranges:
                self._close_range(state, missing, declared_seqs)
            state.ranges = []
            if state.declared_dropped:
                self._finding(state, GAP, None, f"{state.declared_dropped} gap declarations beyond the limit of "
                              f"{self.max_declared} could not be matched to missing records")
            self._finish_claims(state)
            self._finish_attestation(state)
            self._finish_tree(state)
            self._finish_staleness(state)
            if state.attribution is not None:
                state.attribution.release()
        self._finished = self._build_report()
        return self._finished

    def settle(self, grace_s: float, now: float | None = None) -> None:
        """Following a live topic: judge now what `finish` would, for what has waited longer than grace_s
        (seconds of this process's clock): a missing range still open, a head a manifest or saved head
        attests that the topic still does not hold (each claim once); and a chain not attested for
        stale_after_s of the wall clock `now` (once until it is attested again)."""
        clock = time.monotonic()
        for state in self.chains.values():
            if state.ranges:
                declared_seqs = None
                for missing in [missing for missing in state.ranges if clock - missing.opened_at >= grace_s]:
                    declared_seqs = declared_seqs if declared_seqs is not None else sorted(state.declared)
                    state.ranges.remove(missing)
                    self._close_range(state, missing, declared_seqs)
            claimed = max(state.claim_seq, state.trusted.seq if state.trusted else 0)
            if claimed > state.head_seq and claimed > state.claim_judged and clock - state.claim_at >= grace_s:
                state.claim_judged = claimed
                self._finish_claims(state)
            if now is not None and state.attested_time is not None and state.stale_judged != state.attested_time:
                if state.closed_at is None and now - state.attested_time > self.stale_after_s and state.records:
                    state.stale_judged = state.attested_time
                    saved, self.now = self.now, now
                    self._finish_staleness(state)
                    self.now = saved

    def stale_chains(self, now: float) -> int:
        """Chains (not closed) whose latest trusted attestation is older than stale_after_s at `now`."""
        return sum(1 for state in self.chains.values() if state.closed_at is None and state.records
                   and state.attested_time is not None and now - state.attested_time > self.stale_after_s)

    def _close_range(self, state: ChainState, missing: Missing, declared_seqs: list[int]) -> None:
        if missing.filled:
            self._report_fill(state, missing, replayed=False)
        start = bisect.bisect_left(declared_seqs, missing.lo)
        explained = []
        for missing_seq in declared_seqs[start:bisect.bisect_right(declared_seqs, missing.hi)]:
            if missing_seq in state.declared:
                explained.append(missing_seq)
        if missing.before_start and missing.lo == 1 and not explained:
            message = (f"the chain starts at seq {missing.hi + 1}: seqs 1..{missing.hi} are not in the topic "
                       "(retention, or a partial dump)")
            if self.require_complete:
                self._violation(state, STARTS_AT_SEQ, 1, message, missing.after_where, missing.hi)
            else:
                self._finding(state, STARTS_AT_SEQ, 1, message, missing.after_where, missing.hi)
            return
        for missing_seq in explained:
            missing_hash, gap_seq, gap_where = state.declared.pop(missing_seq)
            if missing_seq == missing.hi and missing_hash != missing.after_prev.hex():
                self._violation(state, GAP_MISMATCH, gap_seq, f"declares seq {missing_seq} refused with a hash other "
                                f"than the prev of seq {missing.after_seq}", gap_where)
            else:
                self._finding(state, GAP_EXPLAINS_MISSING, missing_seq,
                              f"missing, explained by the gap record at seq {gap_seq} ({_where(*gap_where)})",
                              gap_where)
        for hole_start, hole_end in _holes(missing.lo, missing.hi, explained):
            self._violation(state, MISSING, hole_start, f"not in the topic and no gap record explains it: deleted "
                            f"(noticed at seq {missing.after_seq}, the record after it)", missing.after_where, hole_end)

    def _finish_claims(self, state: ChainState) -> None:
        trusted = state.trusted
        if trusted is not None and trusted.seq > max(state.head_seq, state.claim_seq):
            claim_seq, where, source = trusted.seq, trusted.where, trusted.source
        elif state.claim_seq > state.head_seq:
            claim_seq, where = state.claim_seq, state.claim_where
            source = f"the manifest at {_where(*where)}"
        else:
            return
        if state.records == 0:
            message = f"{source} attests seq {claim_seq}, but no record of this chain is in the topic"
            if self.allow_absent_chains:
                self._finding(state, CHAIN_ABSENT, 1, message, where, claim_seq)
            else:
                self._violation(state, TAIL_REMOVED, 1, message + ": the whole chain was removed (or it lives in a "
                                "topic not verified: --allow-absent-chains)", where, claim_seq)
            return
        self._violation(state, TAIL_REMOVED, state.head_seq + 1, f"{source} attests seq {claim_seq}, the topic holds "
                        f"this chain only up to seq {state.head_seq}: seqs {state.head_seq + 1}..{claim_seq} were "
                        "removed", where, claim_seq)

    def _finish_tree(self, state: ChainState) -> None:
        tree = state.tree
        if tree.unchecked:
            seq, where, reason = tree.unchecked_first
            self._finding(state, TREE_UNCHECKED, seq, f"{tree.unchecked} of "
                          f"{tree.unchecked + tree.checked} checkpoint trees could not be recomputed, "
                          f"the first at seq {seq}: {reason}", where)
        tree.release()

    def _finish_staleness(self, state: ChainState) -> None:
        if self.now is None or state.closed_at is not None or state.attested_time is None or not state.records:
            return      # (a chain absent from the topic is tail_removed or chain_absent already)
        age = self.now - state.attested_time
        if age <= self.stale_after_s:
            return
        if state.attribution is not None:
            what, since = "its latest checkpoint or manifest mention", "the chain has not been attested since"
        else:
            what, since = "the node's last manifest", "the node has written none since"
        self._finding(state, STALE, None, f"{what} is from {state.attested_time_text}, {age:.0f} s before now, more "
                      f"than {self.stale_after_s:g} s: {since} (stopped, or its later records and statements were "
                      "removed)",
                      state.attested_where)

    def _attested(self, state: ChainState) -> int | None:
        return state.last_good_cp if self.public_keys else state.last_consistent_cp

    def _unattested(self, state: ChainState) -> int:
        if not state.records or state.first_seq is None:
            return 0
        attested = self._attested(state)
        return max(0, state.head_seq - (attested if attested is not None else state.first_seq - 1))

    def _finish_attestation(self, state: ChainState) -> None:
        unattested = self._unattested(state)
        if not unattested:
            return
        attested = self._attested(state)
        good = "good " if self.public_keys else ""
        since = f"after the last {good}checkpoint (seq {attested})" if attested else f"and no {good}checkpoint"
        message = f"{unattested} records {since}: not attested by a signed statement"
        first = state.head_seq - unattested + 1
        if self.require_attested:
            self._violation(state, UNATTESTED, first, message, (None, None, None), state.head_seq)
        else:
            self._finding(state, UNATTESTED_TAIL, first, message, (None, None, None), state.head_seq)

    def _build_report(self) -> Report:
        results: dict[str, ChainResult] = {}
        for state in self.chains.values():
            attested = self._attested(state)
            closed = state.closed_at is not None
            attested_close = closed and attested is not None and attested > state.closed_at
            result = ChainResult(
                chain=state.name,
                partitions=[_partition_label(topic, partition) for topic, partition in state.partitions
                            if partition is not None],
                records=state.records, log_records=state.log_records, control_records=dict(state.control),
                first_seq=state.first_seq, last_seq=state.head_seq, links_verified=state.links,
                duplicates_exact=state.dups_exact, duplicates_conflicting=state.dups_conflicting, gaps=state.gaps,
                gap_bytes=state.gap_bytes, gap_reasons=dict(state.gap_reasons), checkpoints=dict(state.checkpoints),
                last_good_checkpoint_seq=attested, unattested_records=self._unattested(state), closed=closed,
                attested_seq=state.claim_seq or None, violation_counts=dict(state.violation_counts),
                identity=state.attribution.as_dict() if state.attribution is not None else None,
                trees_checked=state.tree.checked, trees_unchecked=state.tree.unchecked,
                last_attested_time=state.attested_time_text,
                finding_counts=dict(state.finding_counts), violations=list(state.violations),
                findings=list(state.findings))
            result.complete = bool(attested_close and not state.violation_counts and state.first_seq == 1
                                   and self.public_keys)
            results[state.name] = result
        meta = {"signatures": "checked" if self.public_keys else "unchecked", "public_keys": sorted(self.public_keys),
                "window": self.window, "require_attested": self.require_attested,
                "require_complete": self.require_complete, "stale_after_s": self.stale_after_s,
                "now": self.now, "trusted_heads": len(self.trusted_heads)}
        return Report.assemble(results, list(self.violations), list(self.findings), dict(self.violation_counts),
                               self.records, meta)


def _partition_label(topic: str | None, partition: int | None) -> str:
    if partition is None:
        return topic or "file"
    return f"{topic}/{partition}" if topic else f"p{partition}"


def _holes(lo: int, hi: int, explained: list[int]) -> list[tuple[int, int]]:
    holes = []
    start = lo
    for seq in explained:
        if seq > start:
            holes.append((start, seq - 1))
        start = seq + 1
    if start <= hi:
        holes.append((start, hi))
    return holes
