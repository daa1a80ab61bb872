"""The duplicate window of one chain: seq -> (hash prefix, offset) for its last seqs, in ring arrays that
never grow past the window, so the verifier's memory per chain is bounded whatever the topic holds."""
from __future__ import annotations

from array import array


def _prefix(digest: bytes) -> int:
    """8 bytes of a hash as a non-zero int (0 marks an empty window slot)."""
    return int.from_bytes(digest[:8], "big") or 1


class _Window:
    """seq -> (hash prefix, offset) for the last `capacity` seqs of a chain: two ring arrays indexed by
    seq % capacity, grown on demand up to capacity. Slots of seqs skipped by a jump are cleared so a
    stale entry from seq - capacity can never answer for seq."""

    __slots__ = ("capacity", "hashes", "offsets", "high")

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.hashes = array("Q")
        self.offsets = array("q")
        self.high = 0

    def __len__(self) -> int:
        return len(self.hashes)

    def covers(self, seq: int) -> bool:
        return self.high - self.capacity < seq <= self.high

    def get(self, seq: int) -> tuple[int, int]:
        """(prefix, offset) of seq; prefix 0 when unknown. Only for seqs the window covers."""
        index = seq % self.capacity
        if index >= len(self.hashes):
            return 0, -1
        return self.hashes[index], self.offsets[index]

    def put(self, seq: int, prefix: int, offset: int) -> None:
        if seq > self.high:
            self._clear(self.high + 1, seq)
            self.high = seq
        elif seq <= self.high - self.capacity:
            return
        index = seq % self.capacity
        hashes = self.hashes
        if index >= len(hashes):
            size = min(self.capacity, max(index + 1, 2 * len(hashes), 64))
            grow = size - len(hashes)
            hashes.frombytes(bytes(8 * grow))
            self.offsets.frombytes(bytes(8 * grow))
        hashes[index] = prefix
        self.offsets[index] = offset

    def put_run(self, first_seq: int, prefixes: memoryview, offsets: memoryview) -> None:
        """seqs first_seq, first_seq + 1, ... (first_seq = high + 1), their prefixes and offsets in memoryviews
        of the arrays' types ('Q', 'q'): what put() of each in turn leaves behind, the arrays grown by the
        same steps, written by slices."""
        capacity = self.capacity
        count = len(prefixes)
        seq = first_seq
        done = 0
        while done < count:
            index = seq % capacity
            step = min(count - done, capacity - index)
            size = len(self.hashes)
            while index + step > size:
                grown = min(capacity, max(max(index, size) + 1, 2 * size, 64))
                self.hashes.frombytes(bytes(8 * (grown - size)))
                self.offsets.frombytes(bytes(8 * (grown - size)))
                size = grown
            memoryview(self.hashes)[index:index + step] = prefixes[done:done + step]
            memoryview(self.offsets)[index:index + step] = offsets[done:done + step]
            done += step
            seq += step
        self.high = first_seq + count - 1

    def _clear(self, first: int, end: int) -> None:
        """Forget seqs first..end-1 (skipped by a jump)."""
        if end - first <= 0:
            return
        size = len(self.hashes)
        if not size:
            return
        if end - first >= self.capacity:
            self.hashes = array("Q", bytes(8 * size))
            self.offsets = array("q", bytes(8 * size))
            return
        for seq in range(first, end):
            index = seq % self.capacity
            if index < size:
                self.hashes[index] = 0
