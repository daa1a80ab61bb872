"""The write-ahead log: sealed records on disk between the tailers and Kafka.

Layout: `<dir>/NNNNNNNNNNNN.seg` segment files of frames `[len u32 BE][crc32c u32 BE][payload]`, and
`<dir>/acked`, the send cursor, replaced atomically (write, fsync, rename, fsync dir).

Invariants (tests in tests/unit/test_wal.py are named after them):
- APPEND_ONLY: frames are only appended; a segment is closed when the next frame would pass
  `segment_bytes` and is never written again.
- DURABLE_BEFORE_VISIBLE: `sync()` returns the position up to which frames are on disk; readers
  (the Kafka sender) never see a frame past the last durable position.
- TORN_TAIL_TRUNCATED: on open, frames from the ack cursor on are checked; the first frame that is
  short or fails its CRC and everything after it is cut off. Those frames were not acknowledged by
  Kafka; the caller restores source positions from the frames that survive, so their lines are
  read again from the source.
- ACK_MONOTONIC: the ack cursor only moves forward and never past the durable position.
- DELETE_ONLY_ACKED: a segment is deleted only when every frame in it is before the ack cursor.
- BOUNDED: `bytes_on_disk` counts every segment; `has_room(n)` is false when appending n bytes
  would pass `max_bytes` — the caller pauses reading (backpressure) instead of dropping data.
"""
from __future__ import annotations

import errno
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import crc32c

_HEADER = struct.Struct(">II")
HEADER_SIZE = _HEADER.size
SEGMENT_SUFFIX = ".seg"
ACKED_FILE = "acked"
MAX_FRAME = 1 << 30


class WalError(Exception):
    """The WAL cannot be used (a bad directory, an unreadable segment)."""


class WalWriteError(WalError):
    """A frame could not be written (e.g. the disk is full); nothing of it counts as written."""

    def __init__(self, message: str, errno_: int | None) -> None:
        super().__init__(message)
        self.errno = errno_


@dataclass(slots=True, frozen=True, order=True)
class WalPosition:
    """A place in the WAL: a segment number and a byte offset in it (a frame boundary)."""

    segment: int
    offset: int

    def __str__(self) -> str:
        return f"{self.segment}:{self.offset}"


def _write_all(fd: int, parts: list[bytes], total: int) -> int:
    """writev until everything is written or the kernel writes nothing more (a full disk); returns the
    bytes written. A short write (a signal, a quota) continues where it stopped."""
    written = 0
    views = [memoryview(part) for part in parts if part]
    while views:
        count = os.writev(fd, views[:_IOV_MAX])
        if count <= 0:
            break
        written += count
        while views and count >= len(views[0]):
            count -= len(views.pop(0))
        if views and count:
            views[0] = views[0][count:]
    return written


_IOV_MAX = 1024


def segment_name(number: int) -> str:
    return f"{number:012d}{SEGMENT_SUFFIX}"


@dataclass(slots=True)
class RecoveryReport:
    frames_checked: int = 0
    truncated_at: WalPosition | None = None
    truncated_bytes: int = 0
    reason: str = ""


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Wal:
    """Owns the segment files. Blocking methods: call them from a worker thread."""

    def __init__(self, directory: str | Path, *, max_bytes: int, segment_bytes: int) -> None:
        self.dir = Path(directory)
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._segments: dict[int, int] = {}      # number -> size on disk
        for entry in self.dir.iterdir():
            if entry.name.endswith(SEGMENT_SUFFIX) and entry.name[:-len(SEGMENT_SUFFIX)].isdigit():
                self._segments[int(entry.name[:-len(SEGMENT_SUFFIX)])] = entry.stat().st_size
        self.acked = self._read_ack_cursor()
        self.recovery = self._recover()
        # With every segment deleted, writing goes on after the cursor, never before it.
        last = max(self._segments) if self._segments else self.acked.segment + (1 if self.acked.offset else 0)
        if last not in self._segments:
            self._create_segment(last)
        self._active = last
        self._fd = os.open(self.dir / segment_name(last), os.O_WRONLY | os.O_APPEND)
        self.written = WalPosition(last, self._segments[last])
        self.durable = self.written
        self.last_start = self.written      # where the last appended frame starts

    # -- recovery ----------------------------------------------------------------------------
    def _read_ack_cursor(self) -> WalPosition:
        try:
            text = (self.dir / ACKED_FILE).read_text()
        except FileNotFoundError:
            first = min(self._segments) if self._segments else 0
            return WalPosition(first, 0)
        try:
            segment, offset = (int(part) for part in text.split())
        except ValueError:
            raise WalError(f"{self.dir / ACKED_FILE}: unreadable ack cursor {text!r}") from None
        return WalPosition(segment, offset)

    def _recover(self) -> RecoveryReport:
        report = RecoveryReport()
        for number in sorted(self._segments):
            if number < self.acked.segment:
                continue
            start = self.acked.offset if number == self.acked.segment else 0
            path = self.dir / segment_name(number)
            with open(path, "rb") as handle:
                data = handle.read()
            offset = start
            while offset < len(data):
                bad = ""
                if offset + HEADER_SIZE > len(data):
                    bad = "torn frame header"
                else:
                    length, crc = _HEADER.unpack_from(data, offset)
                    end = offset + HEADER_SIZE + length
                    if length > MAX_FRAME or end > len(data):
                        bad = "torn frame"
                    elif crc32c.crc32c(data[offset + HEADER_SIZE:end]) != crc:
                        bad = "frame checksum mismatch"
                if bad:
                    self._truncate_from(WalPosition(number, offset), report, bad)
                    return report
                report.frames_checked += 1
                offset = end
        return report

    def _truncate_from(self, position: WalPosition, report: RecoveryReport, reason: str) -> None:
        report.truncated_at = position
        report.reason = reason
        for number in sorted(self._segments):
            if number < position.segment:
                continue
            path = self.dir / segment_name(number)
            if number == position.segment:
                report.truncated_bytes += self._segments[number] - position.offset
                os.truncate(path, position.offset)
                self._segments[number] = position.offset
            else:
                report.truncated_bytes += self._segments.pop(number)
                path.unlink()
        fd = os.open(self.dir / segment_name(position.segment), os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        _fsync_dir(self.dir)

    def _create_segment(self, number: int) -> None:
        fd = os.open(self.dir / segment_name(number), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.close(fd)
        self._segments[number] = 0
        _fsync_dir(self.dir)

    # -- writing -----------------------------------------------------------------------------
    @property
    def bytes_on_disk(self) -> int:
        return sum(self._segments.values())

    @property
    def segment_count(self) -> int:
        return len(self._segments)

    def has_room(self, nbytes: int) -> bool:
        return self.bytes_on_disk + nbytes <= self.max_bytes

    def append(self, payloads: list) -> WalPosition:
        """Append frames (not yet durable); returns the position after the last one. A payload is bytes,
        or a list of the pieces of one payload (batch.Frame.parts), written as they are.
        On failure the segment is cut back to where it was: a half-written frame never stays."""
        # Frame headers and payloads go to one writev: a commit is megabytes, and joining them copied it twice.
        parts: list[bytes] = []
        for payload in payloads:
            pieces = payload if isinstance(payload, list) else [payload]
            crc = 0
            for piece in pieces:
                crc = crc32c.crc32c(piece, crc)
            parts.append(_HEADER.pack(sum(map(len, pieces)), crc))
            parts.extend(pieces)
        total = sum(map(len, parts))
        size = self._segments[self._active]
        if size and size + total > self.segment_bytes:
            self._roll()
            size = 0
        try:
            written = _write_all(self._fd, parts, total)
            if written != total:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC) + f" (wrote {written} of {total} bytes)")
        except OSError as exc:
            try:
                os.ftruncate(self._fd, size)
            except OSError:
                pass
            raise WalWriteError(f"writing {total} bytes to the WAL failed: {exc.strerror}", exc.errno) from None
        self._segments[self._active] = size + total
        self.last_start = WalPosition(self._active, size)
        self.written = WalPosition(self._active, size + total)
        return self.written

    def frame_start(self, position: WalPosition) -> WalPosition:
        """Where the frame read next from `position` (a frame boundary) starts: the next segment's
        beginning when `position` is the end of a closed segment."""
        if position.offset >= self._segments.get(position.segment, 0):
            later = [number for number in self._segments if number > position.segment]
            if later:
                return WalPosition(min(later), 0)
        return position

    def sync(self) -> WalPosition:
        """Make everything appended durable; returns the durable position."""
        try:
            os.fsync(self._fd)
        except OSError as exc:
            raise WalWriteError(f"fsync of the WAL failed: {exc.strerror}", exc.errno) from None
        self.durable = self.written
        return self.durable

    def fsync_now(self) -> bool:
        """fsync what is appended to the active segment, from any thread, without the writer's
        bookkeeping: the exit path of a second signal, while a worker thread may be appending.

        Safe beside a concurrent `append`: an fsync does not change the file (a frame being written
        may end torn, which recovery cuts: TORN_TAIL_TRUNCATED), and a closed segment was fsynced before
        it was closed (`_roll`). `durable` does not move. False when the fsync failed (e.g. the
        descriptor was closed by a roll at that instant: the new segment is then empty)."""
        try:
            os.fsync(self._fd)
        except OSError:
            return False
        return True

    def _roll(self) -> None:
        os.fsync(self._fd)
        os.close(self._fd)
        self._active += 1
        self._create_segment(self._active)
        self._fd = os.open(self.dir / segment_name(self._active), os.O_WRONLY | os.O_APPEND)

    # -- reading -----------------------------------------------------------------------------
    def read_frames(self, start: WalPosition, limit: WalPosition, max_bytes: int = 8 << 20
                    ) -> Iterator[tuple[WalPosition, WalPosition, bytes]]:
        """Frames in [start, limit): (frame start, frame end, payload), about max_bytes at a time.
        The caller holds no lock: segments at or after `start` are not deleted while unacked."""
        position = start
        budget = max_bytes
        while position < limit and budget > 0:
            size = self._segments.get(position.segment)
            if size is None:
                later = [n for n in self._segments if n > position.segment]
                if not later:
                    return
                position = WalPosition(min(later), 0)
                continue
            end_here = limit.offset if limit.segment == position.segment else size
            if position.offset >= end_here:
                if limit.segment == position.segment:
                    return
                position = WalPosition(position.segment + 1, 0)
                continue
            with open(self.dir / segment_name(position.segment), "rb") as handle:
                handle.seek(position.offset)
                chunk = handle.read(min(end_here - position.offset, max(budget, HEADER_SIZE)))
                offset = 0
                view = memoryview(chunk)
                while offset + HEADER_SIZE <= len(chunk):
                    length, crc = _HEADER.unpack_from(chunk, offset)
                    end = offset + HEADER_SIZE + length
                    if end > len(chunk):
                        if offset == 0:       # one frame larger than the budget: read it whole
                            chunk = chunk + handle.read(end - len(chunk))
                            view = memoryview(chunk)
                            continue
                        break
                    payload = view[offset + HEADER_SIZE:end]       # no copy: the chunk stays alive
                    if crc32c.crc32c(payload) != crc:
                        raise WalError(f"WAL frame at {position.segment}:{position.offset + offset} fails its checksum")
                    frame_start = WalPosition(position.segment, position.offset + offset)
                    yield frame_start, WalPosition(position.segment, position.offset + end), payload
                    offset = end
                    budget -= HEADER_SIZE + length
                    if budget <= 0:
                        return
                position = WalPosition(position.segment, position.offset + offset)

    def scan_unacked(self) -> Iterator[tuple[WalPosition, WalPosition, bytes]]:
        """Every frame from the ack cursor to the end (recovery replays their source positions)."""
        position = self.acked
        while True:
            count = 0
            for frame_start, frame_end, payload in self.read_frames(position, self.written):
                count += 1
                position = frame_end
                yield frame_start, frame_end, payload
            if count == 0:
                return

    # -- acknowledging -----------------------------------------------------------------------
    def ack(self, position: WalPosition) -> None:
        """Persist the send cursor and delete segments that are wholly before it."""
        if position <= self.acked:
            return
        if position > self.durable:
            raise WalError(f"ack at {position} is past the durable position {self.durable}")
        tmp = self.dir / (ACKED_FILE + ".tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.write(fd, f"{position.segment} {position.offset}\n".encode())
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self.dir / ACKED_FILE)
            _fsync_dir(self.dir)
        except OSError as exc:
            raise WalWriteError(f"persisting the ack cursor failed: {exc.strerror}", exc.errno) from None
        self.acked = position
        for number in sorted(self._segments):
            if number >= position.segment or number == self._active:
                break
            (self.dir / segment_name(number)).unlink(missing_ok=True)
            del self._segments[number]
        # A cursor at the very end of a closed segment also frees that segment.
        if position.segment != self._active and position.offset >= self._segments.get(position.segment, 0):
            (self.dir / segment_name(position.segment)).unlink(missing_ok=True)
            self._segments.pop(position.segment, None)

    def free_bytes(self) -> int:
        """Space left on the WAL's filesystem for an unprivileged writer."""
        info = os.statvfs(self.dir)
        return info.f_bavail * info.f_frsize

    @property
    def unacked_bytes(self) -> int:
        total = 0
        for number, size in self._segments.items():
            if number > self.acked.segment:
                total += size
            elif number == self.acked.segment:
                total += size - self.acked.offset
        return total

    def close(self) -> None:
        try:
            os.fsync(self._fd)
        except OSError:
            pass
        os.close(self._fd)
