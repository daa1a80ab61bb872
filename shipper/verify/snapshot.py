"""A chain's verify state as JSON, so a verifier following a topic can stop and go on where it was
(follow.py keeps one snapshot per partition beside the group's committed offsets).

What is kept: the head, the counters, the attested checkpoint and identity, manifest and saved-head claims,
open missing ranges and gap declarations, the Merkle frontier, and the duplicate window's latest
`window_kept` seqs. What is not: the issues already reported (their counts are kept), the leaves kept to
rebuild a restarted tree (a tree restarted before the snapshot is unchecked after it), the latest trusted
head record (--save-heads is a one-shot option). A duplicate older than the kept window after a restart
is judged out_of_window, as one older than the window is.
"""
from __future__ import annotations

from collections import Counter
from typing import Any

from ..merkle import Frontier
from .chain import ChainState, Claim, Missing

FORMAT = 1


def _hex(value: bytes | None) -> str | None:
    return value.hex() if value is not None else None


def _bytes(text: str | None) -> bytes | None:
    return bytes.fromhex(text) if text is not None else None


def _where(value: Any) -> tuple:
    return tuple(value) if value is not None else (None, None, None)


def chain_to_dict(state: ChainState, window_kept: int) -> dict[str, Any]:
    window = state.window
    kept = []
    for seq in range(max(1, window.high - min(window_kept, window.capacity) + 1), window.high + 1):
        if window.covers(seq):
            prefix, _ = window.get(seq)
            if prefix:
                kept.append([seq, prefix])
    tree = state.tree
    tree.fold(keep=0)
    attribution = state.attribution
    return {
        "name": state.name, "partition": list(state.partition), "partitions": [list(p) for p in state.partitions],
        "records": state.records, "log_records": state.log_records, "control": dict(state.control),
        "first_seq": state.first_seq, "head_seq": state.head_seq, "head_hash": state.head_hash.hex(),
        "links": state.links, "dups_exact": state.dups_exact, "dups_conflicting": state.dups_conflicting,
        "gaps": state.gaps, "gap_bytes": state.gap_bytes, "gap_reasons": dict(state.gap_reasons),
        "checkpoints": dict(state.checkpoints), "last_good_cp": state.last_good_cp,
        "last_consistent_cp": state.last_consistent_cp, "closed_at": state.closed_at,
        "window": kept,
        "ranges": [[m.lo, m.hi, m.first_lo, _hex(m.expected_prev), m.after_seq, m.after_prev.hex(),
                    list(m.after_where), m.before_start, m.filled, list(m.fill_where) if m.fill_where else None]
                   for m in state.ranges],
        "declared": [[seq, digest, gap_seq, list(where)] for seq, (digest, gap_seq, where) in state.declared.items()],
        "declared_dropped": state.declared_dropped,
        "claim": [state.claim_seq, _hex(state.claim_hash), list(state.claim_where), state.claim_judged],
        "violation_counts": dict(state.violation_counts), "finding_counts": dict(state.finding_counts),
        "tree": [tree.frontier.size, tree.frontier.nodes.hex(), tree.start, tree.next, tree.broken_at, tree.checked,
                 tree.unchecked, list(tree.unchecked_first) if tree.unchecked_first else None,
                 {str(seq): digest.hex() for seq, digest in (tree.future or {}).items()}],
        "identity": None if attribution is None else [
            list(attribution.identity) if attribution.identity is not None else None,
            [attribution.attested_by[0], list(attribution.attested_by[1])] if attribution.attested_by else None,
            [[list(identity), bucket[0], [[seq, list(where)] for seq, where in bucket[1]]]
             for identity, bucket in (attribution.buckets or {}).items()], attribution.overflow],
        "attested": [state.attested_time, state.attested_time_text, list(state.attested_where), state.stale_judged],
        "trusted": None if state.trusted is None else [state.trusted.seq, state.trusted.hash.hex(),
                                                       state.trusted.source],
    }


def chain_from_dict(data: dict[str, Any], window: int) -> ChainState:
    """The state chain_to_dict kept; KeyError/TypeError/ValueError when `data` is not such a snapshot."""
    state = ChainState(data["name"], window)
    state.partition = tuple(data["partition"])
    state.partitions = [tuple(p) for p in data["partitions"]]
    for name in ("records", "log_records", "first_seq", "head_seq", "links", "dups_exact", "dups_conflicting",
                 "gaps", "gap_bytes", "last_good_cp", "last_consistent_cp", "closed_at", "declared_dropped"):
        setattr(state, name, data[name])
    state.head_hash = bytes.fromhex(data["head_hash"])
    for name in ("control", "gap_reasons", "checkpoints", "violation_counts", "finding_counts"):
        setattr(state, name, Counter(data[name]))
    for seq, prefix in data["window"]:
        state.window.put(seq, prefix, -1)
    for lo, hi, first_lo, expected, after_seq, after_prev, after_where, before_start, filled, fill_where in \
            data["ranges"]:
        missing = Missing(lo, hi, _bytes(expected), after_seq, bytes.fromhex(after_prev), _where(after_where),
                          before_start)
        missing.first_lo, missing.filled = first_lo, filled
        missing.fill_where = _where(fill_where) if fill_where is not None else None
        state.ranges.append(missing)
    state.declared = {seq: (digest, gap_seq, _where(where)) for seq, digest, gap_seq, where in data["declared"]}
    state.claim_seq, claim_hash, claim_where, state.claim_judged = data["claim"]
    state.claim_hash, state.claim_where = _bytes(claim_hash), _where(claim_where)
    size, nodes, start, next_seq, broken_at, checked, unchecked, unchecked_first, future = data["tree"]
    tree = state.tree
    tree.frontier = Frontier(size, bytes.fromhex(nodes))
    tree.start, tree.next, tree.broken_at, tree.checked, tree.unchecked = start, next_seq, broken_at, checked, unchecked
    if unchecked_first is not None:
        seq, where, reason = unchecked_first
        tree.unchecked_first = (seq, _where(where), reason)
    tree.future = {int(seq): bytes.fromhex(digest) for seq, digest in future.items()} or None
    if data["identity"] is not None and state.attribution is not None:
        identity, attested_by, buckets, overflow = data["identity"]
        attribution = state.attribution
        attribution.identity = tuple(identity) if identity is not None else None
        attribution.attested_by = (attested_by[0], _where(attested_by[1])) if attested_by else None
        attribution.buckets = None if attribution.identity is not None else {
            tuple(identity): [count, [(seq, _where(where)) for seq, where in examples], None]
            for identity, count, examples in buckets}
        attribution.overflow = overflow
    state.attested_time, state.attested_time_text, attested_where, state.stale_judged = data["attested"]
    state.attested_where = _where(attested_where)
    if data["trusted"] is not None:
        seq, digest, source = data["trusted"]
        state.trusted = Claim(seq, bytes.fromhex(digest), (None, None, None), source)
    return state
