"""What the verifier keeps of one chain between its records (`ChainState`), the open ranges of seqs not
seen yet (`Missing`) and the heads others attest for it (`Claim`). Data only: verifier.py judges."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from ..seal import genesis_hash
from .attribution import Attribution
from .report import Issue
from .tree import ChainTree
from .window import _Window

MANIFEST_CHAIN_PREFIX = "node/"
NO_PARTITION: tuple = ("", -1)


class Missing:
    """Seqs lo..hi not (yet) seen, between the record before (its hash `expected_prev`, None when unknown)
    and the record after (`after_seq`, whose prev claims the hash of hi). Late records fill it from lo;
    `first_lo`..lo-1 are the ones that arrived late so far."""

    __slots__ = ("lo", "hi", "first_lo", "expected_prev", "after_seq", "after_prev", "after_where", "before_start",
                 "filled", "fill_where", "opened_at")

    def __init__(self, lo: int, hi: int, expected_prev: bytes | None, after_seq: int, after_prev: bytes,
                 after_where: tuple, before_start: bool) -> None:
        self.lo = self.first_lo = lo
        self.hi = hi
        self.expected_prev = expected_prev
        self.after_seq = after_seq
        self.after_prev = after_prev
        self.after_where = after_where
        self.before_start = before_start
        self.filled = 0
        self.fill_where: tuple | None = None
        self.opened_at = 0.0                                  # monotonic clock (follow mode settles on it)


class Claim:
    """A head someone trusted attests for a chain: a manifest in the topic, or a saved head."""

    __slots__ = ("seq", "hash", "where", "source")

    def __init__(self, seq: int, digest: bytes, where: tuple, source: str) -> None:
        self.seq, self.hash, self.where, self.source = seq, digest, where, source


@dataclass(slots=True, frozen=True)
class RelayedClaim:
    """What a part of a split verify learned of a chain it read no record of, for the part that holds the
    chain: the highest head a trusted manifest attests (claim_*), the latest time a trusted statement
    mentions it (attested_*), a saved head (trusted_*). JSON-ready: hashes in hex, places as lists."""

    chain: str
    claim_seq: int = 0
    claim_hash: str = ""
    claim_where: tuple = (None, None, None)
    attested_time: str | None = None
    attested_where: tuple = (None, None, None)
    trusted_seq: int = 0
    trusted_hash: str = ""
    trusted_source: str = ""

    @classmethod
    def of(cls, state: ChainState) -> RelayedClaim:
        trusted = state.trusted
        return cls(state.name, state.claim_seq, state.claim_hash.hex() if state.claim_hash else "",
                   tuple(state.claim_where), state.attested_time_text, tuple(state.attested_where),
                   trusted.seq if trusted else 0, trusted.hash.hex() if trusted else "",
                   trusted.source if trusted else "")

    def to_dict(self) -> dict:
        return {name: getattr(self, name) for name in self.__slots__}

    @classmethod
    def from_dict(cls, data: dict) -> RelayedClaim:
        return cls(**{name: tuple(value) if name.endswith("_where") else value for name, value in data.items()})


class ChainState:
    """What the verifier keeps of one chain between its records: head, counters, duplicate window, open
    missing ranges, gap declarations, manifest claim, Merkle tree, attribution and the issues kept so far."""

    __slots__ = ("name", "key", "partition", "partitions", "records", "log_records", "control", "first_seq", "head_seq",
                 "head_hash", "head_alternatives", "links", "dups_exact", "dups_conflicting", "gaps", "gap_bytes",
                 "gap_reasons", "checkpoints", "last_good_cp", "last_consistent_cp", "closed_at", "window", "ranges",
                 "declared", "declared_dropped", "just_filled", "claim_seq", "claim_hash", "claim_where",
                 "violations", "findings", "violation_counts", "finding_counts", "tree", "attribution",
                 "attested_time", "attested_time_text", "attested_where", "head_record", "head_record_seq", "trusted",
                 "claim_at", "claim_judged", "stale_judged")

    def __init__(self, name: str, window: int) -> None:
        self.name = name
        self.key = name.encode()
        self.partition: tuple = NO_PARTITION
        self.partitions: list[tuple[str | None, int | None]] = []
        self.records = 0
        self.log_records = 0
        self.control: Counter = Counter()
        self.first_seq: int | None = None
        self.head_seq = 0
        self.head_hash = genesis_hash(name)
        self.head_alternatives: list[bytes] = []
        self.links = 0
        self.dups_exact = 0
        self.dups_conflicting = 0
        self.gaps = 0
        self.gap_bytes = 0
        self.gap_reasons: Counter = Counter()
        self.checkpoints: Counter = Counter()
        self.last_good_cp: int | None = None          # seq of the last checkpoint/manifest with a good signature
        self.last_consistent_cp: int | None = None    # ... consistent with the chain (when no keys are given)
        self.closed_at: int | None = None
        self.window = _Window(window)
        self.ranges: list[Missing] = []
        self.declared: dict[int, tuple[str, int, tuple]] = {}   # missing_seq -> (hash hex, gap seq, where)
        self.declared_dropped = 0
        self.just_filled: Missing | None = None
        self.claim_seq = 0
        self.claim_hash: bytes | None = None
        self.claim_where: tuple = (None, None, None)
        self.violations: list[Issue] = []
        self.findings: list[Issue] = []
        self.violation_counts: Counter = Counter()
        self.finding_counts: Counter = Counter()
        self.tree = ChainTree()
        # a node chain (manifests) names no pod: nothing to attribute
        self.attribution: Attribution | None = None if name.startswith(MANIFEST_CHAIN_PREFIX) else Attribution()
        self.attested_time: float | None = None
        self.attested_time_text: str | None = None
        self.attested_where: tuple = (None, None, None)
        self.head_record: dict | None = None                 # latest trusted checkpoint / manifest record
        self.head_record_seq = 0
        self.trusted: Claim | None = None                    # a saved head (--trusted-heads)
        # following a live topic (Closing.settle): when the claim last rose, the claim seq and the
        # attestation time already judged
        self.claim_at = 0.0
        self.claim_judged = 0
        self.stale_judged: float | None = None
