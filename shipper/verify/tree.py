"""The Merkle tree of one chain as the verifier rebuilds it, to check the roots its checkpoints state.

The leaves are the chain's record hashes from the first seq the topic holds, while the chain is
contiguous: `frontier` folds the first ones (RFC 6962, merkle.Frontier) and `pending` keeps the latest
leaves packed (32 bytes each), so a tree restarted by an upgraded shipper (state from a release without
trees) can be rebuilt from the last RECENT_LEAVES leaves. Leaves after a hole wait aside (at most
FUTURE_MAX) until the hole is filled; past that the tree stops (`next` = 0) and later roots are unchecked.
"""
from __future__ import annotations

from ..merkle import EMPTY_ROOT, Frontier

#: Leaves a chain keeps unfolded (32 bytes each): a tree restarted among them can still be rebuilt.
RECENT_LEAVES = 4096
PENDING_MAX = 2 * RECENT_LEAVES * 32
#: Leaves kept aside per chain after a hole (a record refused and declared by a gap, a crash replay).
FUTURE_MAX = 1024


class ChainTree:
    """The tree of seqs start..next-1 of one chain, and how its checkpoints' roots compared."""

    __slots__ = ("frontier", "start", "next", "pending", "future", "broken_at", "checked", "unchecked",
                 "unchecked_first")

    def __init__(self) -> None:
        self.frontier = Frontier()
        self.start = 1
        self.next = 1                                   # 0 once a hole stops the tree
        self.pending = bytearray()
        self.future: dict[int, bytes] | None = None     # leaves after a hole, until it is filled
        self.broken_at: int | None = None
        self.checked = 0
        self.unchecked = 0
        self.unchecked_first: tuple | None = None       # (seq, where, reason)

    def fold(self, keep: int = RECENT_LEAVES) -> None:
        """Fold all but the latest `keep` leaves into the frontier."""
        pending = self.pending
        cut = len(pending) - 32 * keep
        if cut > 0:
            self.frontier = self.frontier.extend_packed(bytes(pending[:cut]))
            del pending[:cut]

    def starts_at(self, seq: int) -> None:
        """The topic holds the chain from a later seq (retention): its tree starts there."""
        self.start = self.next = seq

    def add(self, seq: int, digest: bytes) -> None:
        """The leaf of seq: appended when it is the next one (with the later ones that came before it),
        kept aside (boundedly) when records before it are still missing, ignored when already in."""
        next_seq = self.next
        if not next_seq or seq < next_seq:
            return
        if seq > next_seq:
            future = self.future
            if future is None:
                future = self.future = {}
            if len(future) >= FUTURE_MAX:
                self._stop(next_seq)
            else:
                future.setdefault(seq, digest)
            return
        pending = self.pending
        future = self.future
        while True:
            if len(pending) >= PENDING_MAX:
                self.fold()
                pending = self.pending
            pending += digest
            next_seq += 1
            if not future or next_seq not in future:
                break
            digest = future.pop(next_seq)
        self.next = next_seq

    def add_packed(self, first_seq: int, digests: bytes | memoryview) -> None:
        """The leaves of first_seq.. (32 bytes each, in order), first_seq being the next one: a run of records
        that each linked to the one before. Exactly what appending them one at a time as the verifier's
        common path does leaves behind (folded whenever PENDING_MAX is reached, so the leaves a restarted
        tree can be rebuilt from are the same; leaves waiting aside are not looked at, as there)."""
        pending = self.pending
        size = len(digests)
        taken = 0
        while taken < size:
            if len(pending) >= PENDING_MAX:
                self.fold()
                pending = self.pending
            step = min(size - taken, PENDING_MAX - len(pending))
            pending += digests[taken:taken + step]
            taken += step
        self.next = first_seq + size // 32

    def _stop(self, seq: int) -> None:
        """Too many records after a hole at seq: the chain's tree cannot be rebuilt past it."""
        self.next = 0
        self.broken_at = seq
        self.pending = bytearray()
        self.future = None
        self.frontier = Frontier()

    def judge(self, seq: int, size: int, root: bytes) -> tuple[bool | None, str]:
        """Whether the tree a trusted checkpoint (or manifest) at `seq` states, `size` leaves ending at
        seq - 1 with this root, is the one of the records read: True, False, or None with the reason it
        cannot be recomputed. Counted in checked / unchecked."""
        start = seq - size
        if size == 0:
            ok, reason = root == EMPTY_ROOT, ""
        elif self.next != seq + 1:
            ok, reason = None, (f"seq {self.next} is not in the topic" if self.next else
                                f"the chain has a hole at seq {self.broken_at} that no later record filled")
        else:
            pending = self.pending
            first_pending = self.next - len(pending) // 32
            if start == self.start:
                self.fold(keep=1)
                ok, reason = self.frontier.root() == root, ""
            elif start >= first_pending:
                # a tree restarted by the shipper (state from a release without trees): rebuilt from the
                # leaves still at hand, and the chain's tree starts there from now on
                offset = 32 * (start - first_pending)
                frontier = Frontier().extend_packed(bytes(pending[offset:-32]))
                ok, reason = frontier.root() == root, ""
                self.frontier, self.start = frontier, start
                del pending[:-32]
            elif start < self.start:
                ok, reason = None, f"its tree starts at seq {start}, the topic holds the chain from seq {self.start}"
            else:
                ok, reason = None, f"its tree restarts at seq {start}, more than {RECENT_LEAVES} records before it"
        if ok is True:
            self.checked += 1
        return ok, reason

    def note_unchecked(self, seq: int, where: tuple, reason: str) -> None:
        self.unchecked += 1
        if self.unchecked_first is None:
            self.unchecked_first = (seq, where, reason)

    def release(self) -> None:
        """The chain is judged: drop the leaves."""
        self.pending = bytearray()
        self.future = None
