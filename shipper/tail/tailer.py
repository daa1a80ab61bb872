"""Following one kubelet log path through its rotations, as raw bytes at file offsets: `Tailer`,
and the `Chunk`s and `TailBatch`es it returns.

A `Tailer` owns one path (`.../<container>/0.log`) and the rotated copies next to it
(`0.log.<stamp>`, `0.log.<stamp>.gz`; kubelet's stamps sort by time, other suffixes go by mtime).
Its calls block; the pipeline runs them in a thread. A `poll()` reads at most `read_size` bytes,
and one that finds nothing new costs one fstat and one stat.

Invariants (the tests are named after them):

- Every byte of a file identity is returned exactly once, in order, in `Chunk`s whose offsets are
  contiguous within the identity, or it is counted in a `LossEvent`. The losses of a batch come
  before its chunks in stream order (seal the gaps first, then the chunks).
- One identity at a time: an identity that ends (rotated, deleted, truncated) gets a last chunk
  with `end_of_file=True` before any byte of the next one is returned.
- Bounded descriptors: the file being read, plus at most `max_held_files` newer files opened ahead
  when rotations outpace reading (tracked by name and inode beyond that); a drained file is closed
  at once.

What was never visible is not counted: a file created and deleted between two looks of ours (two
polls, or a restart) leaves nothing to count.

Identity is (dev, ino, fingerprint of the first bytes), see `identity`; chunks of one short file
may carry a growing FileId, and `position_of()` answers with the longest.

A rotated (renamed or deleted) file is finished when, after a final drain, the next file holds data
(the runtime has reopened its log, so nothing more lands in the old one), or `settle_s` after we
noticed, or at once when the pod's log directory is gone.

Restoring a position is `restore.resume_point()`'s decision; the tailer opens the file it names.
`position_of()` never names an empty file (a later file may reuse its inode) but the end of the
last file with content.
"""
from __future__ import annotations

import errno
import os
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from shipper.model import FINGERPRINT_BYTES, ContainerRef, FileId, LossEvent, LossReason, SourcePosition

from .compressed import GzipReader
from .files import (_File, _NoFile, already_passed, anchor, compressed_entry, gone_marker, is_same_file, lost_marker,
                    may_bear_name, starts_like)
from .identity import _read_head
from .restore import Lost, Reopen, resume_point
from .siblings import _GONE, _NEWEST, GZIP_SUFFIX, _KUBELET_STAMP, _order_key, _Sibling, scan_siblings

_KNOWN_FILES = 16                 # identities remembered for position_of after they were closed
_MAX_STEPS = 1000                 # file switches and reads in one poll, at most
_RESTORE_LOOKS = 3                # restore decisions tried while the chosen file keeps moving
_SKIP_READS = 8                   # a compressed file is decompressed up to a restored offset, at most
                                  # this many reads' worth per poll


def _listed(path: str, stamp: str) -> _Sibling | None:
    """`path` as a sibling listing would show it, None when it is not there."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return _Sibling(stamp, path, path.endswith(GZIP_SUFFIX), st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)


# -- what a poll returns -------------------------------------------------------------------------

@dataclass(slots=True, frozen=True)
class Chunk:
    """`data` are the bytes of file `file_id` starting at `offset` (possibly cut mid-line).
    `end_of_file`: nothing more will ever come from this identity; the parser flushes then."""

    file_id: FileId
    path: str
    offset: int
    data: bytes
    end_of_file: bool = False


@dataclass(slots=True)
class TailBatch:
    chunks: list[Chunk] = field(default_factory=list)
    losses: list[LossEvent] = field(default_factory=list)   # all of them precede all chunks
    finished: bool = False                                    # path gone for good, all drained


class Tailer:
    """Follows `path` (a kubelet `<restart>.log`) through rename rotation, compression, copytruncate,
    deletion and inode reuse, from `position` (None: a new source, read from the oldest byte still
    on disk, compressed siblings too).

    Each poll first looks (one stat) whether the path names a new file; if so it takes note of it
    and of any file rotated in between, held open while there is room, so a file rotated away and
    deleted while we are still busy with an older one is read all the same. A backpressured
    pipeline that stops polling should keep calling `watch()`, which does only this."""

    def __init__(self, path: str, ref: ContainerRef, position: SourcePosition | None, *,
                 read_size: int = 1 << 20, settle_s: float = 5.0, max_held_files: int = 4,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.path = path
        self.ref = ref
        self._dir = os.path.dirname(path) or "."
        self._sibling_prefix = os.path.basename(path) + "."
        self._read_size = read_size
        self._settle_s = settle_s
        self._max_held = max_held_files
        self._clock = clock
        self._cur: _File | None = None
        # Files seen after the current one, oldest first: held open (at most max_held_files),
        # tracked by name and inode (fd -1), or markers of ones lost before their turn (`loss`).
        self._queue: deque[_File] = deque()
        self._prev: _File | _NoFile = _NoFile()  # what was read (or lost) last, to find what follows
        self._pending: list[LossEvent] = []
        self._known: deque[_File] = deque(maxlen=_KNOWN_FILES)
        self._missing_since: float | None = None
        self._finished = False
        self._error_reported: int | None = None  # errno of the UNREADABLE already reported
        self._origin = position                   # evidence of last resort for position_of
        try:
            self._restore(position)
            if self._cur is None and not self._pending:
                self._open_next()                 # hold the file from now on, not from the first poll
        except OSError as exc:
            self._report_error(exc)               # the next polls start from the oldest file instead

    # -- public ----------------------------------------------------------------------------------
    def poll(self) -> TailBatch:
        """Up to `read_size` new bytes, oldest identity first. Never raises for I/O trouble."""
        cur = self._cur
        if cur is not None and cur.retired_at is None and not self._queue and not self._pending:
            # The idle case, kept to one stat and one fstat: nothing rotated, nothing written.
            try:
                st = os.stat(self.path)
                if st.st_ino == cur.ino and st.st_dev == cur.dev:
                    fst = os.fstat(cur.fd)
                    if fst.st_size == cur.last_size == cur.offset and fst.st_mtime_ns == cur.last_mtime:
                        self._error_reported = None
                        return TailBatch()
            except OSError:
                pass                                   # the full path below reports it
        batch = TailBatch()
        budget = self._read_size
        try:
            self.watch()
            for _ in range(_MAX_STEPS):             # bounded even if a directory keeps changing
                if self._pending:
                    if batch.chunks:
                        break                      # a loss is never reported after later data
                    batch.losses.extend(self._pending)
                    self._pending.clear()
                if budget <= 0 or self._finished:
                    break
                if self._cur is None:
                    if not self._open_next():
                        if self._pending and not batch.chunks:
                            batch.losses.extend(self._pending)
                            self._pending.clear()
                        break
                    continue
                used, more = self._step(self._cur, batch, budget)
                budget -= used
                if not more:
                    break
            self._error_reported = None
        except OSError as exc:
            self._report_error(exc)
            if not batch.chunks:
                batch.losses.extend(self._pending)
                self._pending.clear()
        batch.finished = self._finished and not self._pending
        return batch

    @property
    def idle(self) -> bool:
        """Whether only a change on disk can give the next poll anything: the live file read to the
        size last seen, nothing rotated, held or pending. Otherwise (mid-rotation, waiting for a path
        to come back, more to read) the next poll may return something as time passes alone."""
        cur = self._cur
        return (cur is not None and cur.retired_at is None and not self._queue and not self._pending
                and not self._finished and cur.offset == cur.last_size)

    def watch(self) -> None:
        """Notice a rotation (one stat when nothing changed) and take note of the new files, held
        open while there is room, so none can vanish unread while we are busy with an older one."""
        cur = self._cur
        queue = self._queue
        if cur is None and not queue:
            return                                 # between files: _open_next looks for itself
        newest = queue[-1] if queue else cur
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            st = None
        if st is not None and st.st_ino == newest.ino and st.st_dev == newest.dev:
            if newest.fd >= 0:
                if newest is not cur:
                    self._observe(newest)          # behind: keep what we know of it current
                return                             # the usual case: nothing rotated
            # Tracked, not open: its inode could have been reused, so the first bytes decide (and
            # the name, for an empty one).
            head = _read_head(self.path)
            if head is not None and head[:len(newest.head)] == newest.head and (newest.head or may_bear_name(newest, "")):
                if len(head) > len(newest.head):
                    newest.set_head(head)
                newest.max_seen = max(newest.max_seen, st.st_size)
                return
        if st is None and newest.retired_at is not None:
            return                                 # still missing; already noted
        now = self._clock()
        if newest.retired_at is None:
            newest.retired_at = now
        siblings = self._siblings()
        if newest.fd >= 0:
            self._place(newest, siblings)
        self._refresh_tracked(siblings, st)
        taken = {(f.dev, f.ino) for f in (cur, *queue) if f is not None and f.loss is None}
        # Files created and rotated since our last look: take them too, oldest first.
        for sib in self._successors(newest, siblings):
            if sib.compressed or (sib.dev, sib.ino) not in taken:
                queue.append(self._take_rotated(sib, now))
        if st is not None and (st.st_dev, st.st_ino) not in taken:
            live = self._take_live(siblings)
            if live is not None:
                queue.append(live)
        self._promote()

    def _place(self, entry: _File, siblings: list[_Sibling]) -> None:
        """Learn the rotated name (and final size) of a file that left the live path."""
        if entry.fd >= 0:
            self._observe(entry)
        for sib in siblings:
            if is_same_file(sib, entry):
                entry.stamp, entry.path = sib.stamp, sib.path
                if entry.fd < 0 and not sib.compressed:
                    entry.max_seen = max(entry.max_seen, sib.size)
                return

    def _refresh_tracked(self, siblings: list[_Sibling], st_path: os.stat_result | None) -> None:
        """Find tracked files again; one that was compressed or deleted becomes a loss marker
        (its inode may already belong to another file)."""
        queue = self._queue
        for index, entry in enumerate(queue):
            if entry.fd >= 0 or entry.loss is not None or entry.compressed:
                continue
            if entry.stamp is None and st_path is not None and is_same_file(self._live_sibling(st_path), entry):
                continue                                # still the live file
            found = next((sib for sib in siblings if is_same_file(sib, entry)), None)
            if found is not None and not found.compressed:
                entry.stamp, entry.path = found.stamp, found.path
                entry.max_seen = max(entry.max_seen, found.size)
                entry.retired_at = entry.retired_at or self._clock()
            elif found is not None:
                queue[index] = self._compressed_since(found, entry)
            else:
                queue[index] = gone_marker(entry)

    def _open_count(self) -> int:
        return sum(1 for f in self._queue if f.fd >= 0)

    def _observe(self, held: _File) -> None:
        """Size and first bytes of a held file we have not started, so a truncation before its
        turn is measured (only while they still agree with what we knew: otherwise the check at
        its turn sees the difference)."""
        size = os.fstat(held.fd).st_size
        if size == held.max_seen and len(held.head) == min(size, FINGERPRINT_BYTES):
            return
        head_now = os.pread(held.fd, FINGERPRINT_BYTES, 0)
        if head_now[:len(held.head)] != held.head or size < held.max_seen:
            return
        held.set_head(head_now)
        held.max_seen = size

    def _take_live(self, siblings: list[_Sibling]) -> _File | None:
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        fst = os.fstat(fd)
        if any((f.dev, f.ino) == (fst.st_dev, fst.st_ino) for f in (self._cur, *self._queue) if f is not None):
            os.close(fd)
            return None
        if self._open_count() < self._max_held:
            live = self._file_of(fd, self.path, offset=0, stamp=None)
        else:
            live = self._tracked(fd, self.path, None)
        live.older = frozenset(s.stamp for s in siblings)
        return live

    def _take_rotated(self, sib: _Sibling, now: float) -> _File:
        """An open rotated file, tracked when no room is left, an entry for a compressed one (read
        at its turn), or a marker for one deleted."""
        known_size = -1
        if not sib.compressed:
            try:
                fd = os.open(sib.path, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                gz = _listed(sib.path + GZIP_SUFFIX, sib.stamp)
                if gz is None:
                    return lost_marker(sib)
                sib, known_size = gz, sib.size       # compressed since the listing
        if sib.compressed:
            entry = compressed_entry(sib, known_size)
            entry.retired_at = now
            entry.final_hint = True
            return entry
        if self._open_count() < self._max_held:
            opened = self._file_of(fd, sib.path, offset=0, stamp=sib.stamp)
        else:
            opened = self._tracked(fd, sib.path, sib.stamp)
        opened.retired_at = now
        opened.final_hint = True
        return opened

    def _compressed_since(self, sib: _Sibling, entry: _File) -> _File:
        """`entry`, a file we tracked, compressed before its turn into `sib`: read from there."""
        compressed = compressed_entry(sib, entry.max_seen if entry.stamp is not None else -1)
        compressed.retired_at = entry.retired_at or self._clock()
        compressed.final_hint = True
        return compressed

    def _tracked(self, fd: int, path: str, stamp: str | None) -> _File:
        """Remember a file by inode and first bytes without keeping it open (no room left)."""
        try:
            st = os.fstat(fd)
            head = os.pread(fd, FINGERPRINT_BYTES, 0)
        finally:
            os.close(fd)
        entry = _File(-1, st.st_dev, st.st_ino, path, 0, head, stamp=stamp)
        entry.max_seen = st.st_size
        return entry

    def _promote(self) -> None:
        """Open tracked files while there is room again."""
        for index, entry in enumerate(self._queue):
            if self._open_count() >= self._max_held:
                return
            if entry.fd < 0 and entry.loss is None and not entry.compressed:
                self._queue[index] = self._resolve(entry)

    def _resolve(self, entry: _File) -> _File:
        """Open a tracked file where it is now, or a marker saying how it was lost."""
        siblings = self._siblings()
        candidates = [sib for sib in siblings if is_same_file(sib, entry)]
        if entry.stamp is None:
            try:
                live = self._live_sibling(os.stat(self.path))
                if is_same_file(live, entry):
                    candidates.insert(0, live)
            except FileNotFoundError:
                pass
        for sib in candidates:
            if sib.compressed:
                return self._compressed_since(sib, entry)
            try:
                fd = os.open(sib.path, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                continue
            opened = self._file_of(fd, sib.path, offset=0, stamp=sib.stamp or None)
            if (opened.dev, opened.ino) != (entry.dev, entry.ino) or opened.head[:len(entry.head)] != entry.head:
                self._discard(opened)
                continue
            opened.older, opened.retired_at, opened.final_hint = entry.older, entry.retired_at, entry.final_hint
            opened.max_seen = max(opened.max_seen, entry.max_seen)
            return opened
        return gone_marker(entry)

    def position_of(self, file_id: FileId, offset: int) -> SourcePosition:
        """Where to resume once `offset` bytes of `file_id` are committed. Names the strongest
        evidence known: the longest fingerprint of that file; the next file, from its start, once
        this one was committed whole; and never an empty file (any file that reuses its inode would
        match it): the end of the last file that had content instead."""
        same_inode = [k for k in reversed(self._known) if (k.dev, k.ino) == (file_id.dev, file_id.ino)]
        if self._cur is not None and self._cur in same_inode:
            same_inode.remove(self._cur)
            same_inode.insert(0, self._cur)
        match = next((k for k in same_inode if k.fp == file_id.fingerprint), None) or next(
            (k for k in same_inode if file_id.fingerprint.starts_with(k.head)), None)
        if match is None:
            return SourcePosition(file_id, self.path, offset)
        target, at = match, offset
        while target.fd == -1 and target.successor is not None and at >= target.offset and target.successor.head:
            target, at = target.successor, 0
        if not target.head and at == 0:
            if target.before is not None:
                target, at = target.before, target.before.offset
            elif self._origin is not None:
                return self._origin
        return SourcePosition(target.file_id, target.path, at)

    def close(self) -> None:
        for f in (self._cur, *self._queue):
            if f is not None and f.fd >= 0:
                os.close(f.fd)
                f.fd = -1
            if f is not None and f.gz is not None:
                f.gz.close()
                f.gz = None
        self._cur = None
        self._queue.clear()

    @property
    def open_files(self) -> int:
        return sum(1 for f in (self._cur, *self._queue) if f is not None and f.fd >= 0)

    # -- reading the current file ---------------------------------------------------------------
    def _step(self, cur: _File, batch: TailBatch, budget: int) -> tuple[int, bool]:
        """Read from the current file; (bytes used, whether the poll should go on)."""
        if cur.gz is not None:
            return self._step_compressed(cur, batch, budget)
        # Asked before the final drain: once the successor holds data the runtime writes no more
        # here, so a drain after this answer sees every byte.
        ready = cur.retired_at is not None and self._successor_ready(cur)
        st = os.fstat(cur.fd)
        size = st.st_size
        if size != cur.last_size or st.st_mtime_ns != cur.last_mtime:
            if self._check_truncation(cur, batch, size):
                return 0, True
            cur.last_size, cur.last_mtime = size, st.st_mtime_ns
            if size > cur.max_seen:
                cur.max_seen = size
        used = 0
        want = min(budget, size - cur.offset)
        if want > 0:
            data = os.pread(cur.fd, want, cur.offset)
            if not data:
                return 0, False
            offset = cur.offset
            if offset < FINGERPRINT_BYTES and len(cur.head) < FINGERPRINT_BYTES and offset + len(data) > len(cur.head):
                cur.set_head((cur.head + data[len(cur.head) - offset:])[:FINGERPRINT_BYTES])
            batch.chunks.append(Chunk(cur.file_id, cur.path, offset, data))
            cur.offset = offset + len(data)
            used = len(data)
            if cur.offset > cur.max_seen:
                cur.max_seen = cur.offset
            if cur.offset < size:
                return used, used < budget     # budget spent, or the file shrank under us
        if not ready:
            return used, False
        self._finish(cur, batch)
        return used, True

    def _step_compressed(self, cur: _File, batch: TailBatch, budget: int) -> tuple[int, bool]:
        """Read on in a compressed file (final: nothing is written to it any more); at its end, or
        where it is damaged, finish it, the unreadable rest counted as lost."""
        reader = cur.gz
        assert reader is not None
        if reader.offset < cur.offset:
            # A restored position: decompress up to it, a bounded piece per poll.
            reader.skip(min(cur.offset - reader.offset, _SKIP_READS * budget))
            if reader.offset < cur.offset and not reader.done:
                return budget, False
        used = 0
        if reader.offset == cur.offset:
            data = reader.read(budget)
            if data:
                batch.chunks.append(Chunk(cur.file_id, cur.path, cur.offset, data))
                cur.offset += len(data)
                cur.max_seen = max(cur.max_seen, cur.offset)
                used = len(data)
        if not reader.done:
            return used, False
        damage = reader.damage
        if damage is not None:
            self._pending.append(self._damage_loss(cur, reader))
        self._finish(cur, batch)
        if damage is not None:
            # Not read to its end: a position of ours must never go on from the next file.
            marker = cur.snapshot()
            marker.last_mtime = cur.last_mtime
            self._set_prev(marker)
        return used, True

    @staticmethod
    def _damage_loss(cur: _File, reader: GzipReader) -> LossEvent:
        # The size the trailer states, or the size we saw before the file was compressed; a value
        # below what was read already cannot be true.
        sizes = [size for size in (reader.trailer_size(), cur.known_size) if size >= cur.offset]
        lost = max(sizes) - cur.offset if sizes else -1
        return LossEvent(cur.path, LossReason.CORRUPT, lost, cur.offset,
                         f"compressed file {reader.damage}; read up to uncompressed offset {cur.offset}")

    def _check_truncation(self, cur: _File, batch: TailBatch, size: int) -> bool:
        """Handle a file that shrank or was rewritten under us; True when the identity ended."""
        head_now = b""
        if cur.head or cur.offset:
            head_now = os.pread(cur.fd, FINGERPRINT_BYTES, 0)
        common = min(len(head_now), len(cur.head))
        rewritten = head_now[:common] != cur.head[:common]
        if rewritten or size < cur.offset:
            old = cur.snapshot()
            self._known.append(old)
            batch.chunks.append(Chunk(old.file_id, old.path, old.offset, b"", True))
            self._pending.append(LossEvent(
                cur.path, LossReason.TRUNCATED, max(cur.max_seen - cur.offset, 0), cur.offset,
                f"truncated under us (size {size}, read up to {cur.offset}, had seen {cur.max_seen}); "
                "bytes written after our last look and before the truncation are not counted"))
            cur.offset = 0
            cur.max_seen = 0
            cur.last_size = cur.last_mtime = -1
            cur.set_head(b"")                  # the rewritten content is a new identity
            cur.before = anchor(old) or cur.before
            if cur.stamp is None:
                # a copy made before the truncation (copytruncate's) is older, not a rotation to read
                cur.older = frozenset(s.stamp for s in self._siblings())
            return True
        if size < cur.max_seen:
            # Cut short beyond our offset but the start is unchanged: the cut bytes are gone.
            self._pending.append(LossEvent(cur.path, LossReason.TRUNCATED, cur.max_seen - size, size,
                                           f"cut from {cur.max_seen} to {size} bytes"))
            cur.max_seen = size
        if len(head_now) > len(cur.head):
            cur.set_head(head_now)
        return False

    def _successor_ready(self, cur: _File) -> bool:
        if cur.final_hint or self._clock() - (cur.retired_at or 0.0) >= self._settle_s:
            return True
        if self._queue:
            nxt = self._queue[0]
            if nxt.fd < 0:
                return nxt.loss is not None or nxt.retired_at is not None or nxt.max_seen > 0
            return nxt.retired_at is not None or os.fstat(nxt.fd).st_size > 0
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return not os.path.isdir(self._dir)          # the pod's log directory is gone
        return (st.st_dev, st.st_ino) != (cur.dev, cur.ino) and st.st_size > 0

    def _finish(self, cur: _File, batch: TailBatch) -> None:
        fid = cur.file_id
        last = batch.chunks[-1] if batch.chunks else None
        if last is not None and last.file_id == fid and last.offset + len(last.data) == cur.offset:
            batch.chunks[-1] = Chunk(fid, last.path, last.offset, last.data, True)
        else:
            batch.chunks.append(Chunk(fid, cur.path, cur.offset, b"", True))
        if cur.gz is not None:
            cur.gz.close()
            cur.gz = None
        else:
            os.close(cur.fd)
        cur.fd = -1
        self._cur = None
        self._prev = cur

    # -- choosing the next file ------------------------------------------------------------------
    def _open_next(self) -> bool:
        """Make the oldest file after the previous one current; False when there is none (yet).
        True also when only a loss was recorded (a sibling compressed or deleted before its turn)."""
        prev = self._prev
        siblings = self._siblings()
        successors = self._successors(prev, siblings)
        limit = self._queue_key(self._queue[0], siblings) if self._queue else _NEWEST
        for index, sib in enumerate(successors):
            if sib.key >= limit:
                break
            if sib.compressed:
                self._open_compressed(prev, sib.path, sib.stamp, sib.mtime_ns)
                return True
            try:
                fd = os.open(sib.path, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                # compressed meanwhile (or deleted): its size as listed is what the .gz must hold
                self._open_compressed(prev, sib.path + GZIP_SUFFIX, sib.stamp, sib.mtime_ns, sib.size)
                return True
            opened = self._file_of(fd, sib.path, offset=0, stamp=sib.stamp)
            opened.retired_at = self._clock()
            opened.final_hint = index + 1 < len(successors) or bool(self._queue) or os.path.exists(self.path)
            self._make_current(prev, opened)
            return True
        if self._queue:
            nxt = self._queue.popleft()
            if nxt.fd < 0 and nxt.loss is None and not nxt.compressed:
                nxt = self._resolve(nxt)
            if already_passed(prev, nxt):
                if nxt.fd >= 0:
                    self._discard(nxt)
                return True
            if nxt.compressed:
                # deleted before its turn, it lost what we saw: before compression, or in its trailer
                seen = nxt.known_size if nxt.known_size >= 0 else (nxt.max_seen if nxt.head else -1)
                self._open_compressed(prev, nxt.path, nxt.stamp, nxt.last_mtime, nxt.known_size, seen)
                return True
            if nxt.loss is not None:
                if nxt.loss.bytes_lost != 0:
                    self._pending.append(nxt.loss)
                self._set_prev(nxt)
            else:
                self._make_current(prev, nxt)
            return True
        return self._open_live(prev)

    def _queue_key(self, entry: _File, siblings: list[_Sibling]) -> tuple[int, str, int, str]:
        """Where a file seen ahead of its turn stands in rotation order now."""
        if entry.stamp is None and entry.loss is None:
            try:
                if is_same_file(self._live_sibling(os.stat(self.path)), entry):
                    return _NEWEST
            except FileNotFoundError:
                pass
            self._place(entry, siblings)
            if entry.stamp is not None:
                entry.retired_at = entry.retired_at or self._clock()
        if entry.stamp is None:
            # Deleted: kubelet deletes oldest first, so everything still on disk is newer.
            return _GONE
        return _order_key(entry.stamp, entry.last_mtime)

    def _make_current(self, prev: _File | _NoFile, opened: _File) -> None:
        self._cur = opened
        self._missing_since = None
        # Only a file read to its end gets a successor: a lost sibling in between leaves a
        # placeholder as `prev`, so position_of never jumps over a gap.
        if isinstance(prev, _File):
            prev.successor = opened
        opened.before = anchor(prev)

    def _set_prev(self, prev: _File) -> None:
        """Move past a file we could not read, remembering what came before it."""
        prev.before = anchor(self._prev)
        self._prev = prev

    def _open_live(self, prev: _File | _NoFile) -> bool:
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            now = self._clock()
            if self._missing_since is None:
                self._missing_since = now
            if now - self._missing_since >= self._settle_s or not os.path.isdir(self._dir):
                self._finished = True
            return False
        try:
            st = os.fstat(fd)
            offset = 0
            if isinstance(prev, _File) and prev.head and (st.st_dev, st.st_ino) == (prev.dev, prev.ino):
                if prev.fp.starts_with(os.pread(fd, FINGERPRINT_BYTES, 0)):
                    offset = prev.offset      # the same file came back: never read a byte twice
        except OSError:
            os.close(fd)
            raise
        opened = self._file_of(fd, self.path, offset=offset, stamp=None)
        opened.older = frozenset(s.stamp for s in self._siblings())
        self._make_current(prev, opened)
        return True

    def _file_of(self, fd: int, path: str, *, offset: int, stamp: str | None) -> _File:
        try:
            st = os.fstat(fd)
            head = os.pread(fd, FINGERPRINT_BYTES, 0)
        except OSError:
            os.close(fd)
            raise
        opened = _File(fd, st.st_dev, st.st_ino, path, offset, head, stamp=stamp)
        opened.max_seen = max(offset, st.st_size)
        self._known.append(opened)
        return opened

    def _open_compressed(self, prev: _File | _NoFile, path: str, stamp: str, mtime_ns: int,
                         known_size: int = -1, size_if_gone: int | None = None) -> None:
        """Make a compressed sibling current, read from its first byte; one gone before its turn
        (deleted by the kubelet) is a loss of `size_if_gone` bytes (by default the uncompressed
        size seen before it was compressed, `known_size`; -1 unknown)."""
        try:
            reader = GzipReader(path)
        except FileNotFoundError:
            lost = known_size if size_if_gone is None else size_if_gone
            if lost != 0:                          # an empty file loses nothing
                self._pending.append(LossEvent(path, LossReason.ROTATED_UNREAD, lost, 0,
                                               "deleted before it was read"))
            marker = _File(-1, -1, -1, path, 0, b"", stamp=stamp)
            marker.last_mtime = mtime_ns           # its place in rotation order, for what follows
            self._set_prev(marker)
            return
        self._make_current(prev, self._compressed_file(reader, stamp, 0, known_size))

    def _compressed_file(self, reader: GzipReader, stamp: str | None, offset: int, known_size: int) -> _File:
        opened = _File(-1, reader.dev, reader.ino, reader.path, offset, reader.head, stamp=stamp)
        opened.compressed = True
        opened.gz = reader
        opened.known_size = known_size
        opened.max_seen = max(offset, reader.trailer_size())
        opened.last_mtime = reader.mtime_ns
        opened.retired_at = self._clock()
        opened.final_hint = True
        self._known.append(opened)
        return opened

    # -- siblings ----------------------------------------------------------------------------------
    def _siblings(self) -> list[_Sibling]:
        return scan_siblings(self._dir, self._sibling_prefix)

    def _live_sibling(self, st: os.stat_result) -> _Sibling:
        """The file at the live path (stat `st`), as a sibling with no stamp, for `is_same_file`."""
        return _Sibling("", self.path, False, st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)

    def _successors(self, prev: _File | _NoFile, siblings: list[_Sibling]) -> list[_Sibling]:
        """Siblings rotated after `prev` that we do not hold open already, oldest first."""
        held = {(h.dev, h.ino) for h in self._queue if h.fd >= 0}
        held_stamps = {h.stamp for h in self._queue if h.stamp is not None}
        siblings = [s for s in siblings if s.stamp not in held_stamps
                    and (s.compressed or (s.dev, s.ino) not in held)]
        if isinstance(prev, _NoFile):
            if prev.lost_stamp is not None and _KUBELET_STAMP.fullmatch(prev.lost_stamp):
                # >=: a file still under the lost one's name did not match it, so it holds newer bytes
                siblings = [s for s in siblings if s.key >= _order_key(prev.lost_stamp, 0)]
            return sorted(siblings, key=lambda s: s.key)
        if prev.stamp is None:
            for sib in siblings:
                if is_same_file(sib, prev):
                    prev.stamp, prev.path = sib.stamp, sib.path
                    break
        if prev.stamp is not None:
            own_key = _order_key(prev.stamp, prev.last_mtime)
            newer = [s for s in siblings if s.key > own_key and s.stamp != prev.stamp]
        elif prev.older is None:
            return []                     # nothing tells what is newer: never risk reading twice
        else:
            # Neither renamed nor compressed under a name we can find (deleted, or moved away):
            # whatever was rotated since we opened it is newer, except a copy of what we read
            # (copytruncate's), which starts with the same bytes.
            older = prev.older
            newer = [s for s in siblings if s.stamp not in older and (s.compressed or s.mtime_ns >= prev.last_mtime)
                     and not starts_like(s, prev.head)]
        return sorted(newer, key=lambda s: s.key)

    # -- restore -----------------------------------------------------------------------------------
    def _restore(self, position: SourcePosition | None) -> None:
        # The file resume_point chose may be rotated away between its look and our open: look again.
        for _ in range(_RESTORE_LOOKS):
            point = resume_point(self.path, position, self._siblings())
            if point is None:
                return                                    # _NoFile: every sibling, then the path
            if isinstance(point, Lost):
                if point.loss is not None:
                    self._pending.append(point.loss)
                self._prev = point.after
                return
            if self._reopen(point):
                return
        raise OSError(errno.EAGAIN, "changed on every look while its position was restored", self.path)

    def _reopen(self, point: Reopen) -> bool:
        """Make the file `point` names current; False when the path names another file by now."""
        if point.compressed:
            try:
                reader = GzipReader(point.path)
            except FileNotFoundError:
                return False
            if (reader.dev, reader.ino) != (point.dev, point.ino) or not point.fingerprint.starts_with(reader.head):
                reader.close()
                return False
            self._cur = self._compressed_file(reader, point.stamp, point.offset, -1)
            return True
        try:
            fd = os.open(point.path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return False
        opened = self._file_of(fd, point.path, offset=point.offset, stamp=point.stamp)
        same = (opened.dev, opened.ino) == (point.dev, point.ino)
        if not (same and point.fingerprint.starts_with(opened.head)):
            self._discard(opened)
            return False
        opened.max_seen = point.offset             # a shorter file now means it was truncated
        if point.stamp is None:
            opened.older = frozenset(s.stamp for s in self._siblings())
        else:
            opened.retired_at = self._clock()
            opened.final_hint = True
        self._cur = opened
        return True

    def _discard(self, rec: _File) -> None:
        os.close(rec.fd)
        rec.fd = -1
        if rec in self._known:
            self._known.remove(rec)

    # -- errors ------------------------------------------------------------------------------------
    def _report_error(self, exc: OSError) -> None:
        # Reported once per streak, so a file that stays unreadable does not flood the chain.
        if self._error_reported == exc.errno:
            return
        self._error_reported = exc.errno
        name = errno.errorcode.get(exc.errno or 0, f"errno {exc.errno}")
        where = exc.filename or (self._cur.path if self._cur is not None else self.path)
        offset = self._cur.offset if self._cur is not None else 0
        self._pending.append(LossEvent(str(where), LossReason.UNREADABLE, 0, offset,
                                       f"{name}: {exc.strerror}; retrying"))
