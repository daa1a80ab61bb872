"""Container log lines to entries: CRI and docker json-file, partial lines joined, optional multiline.

Pure and incremental: a `StreamParser` is fed raw bytes as the tailer reads them, in chunks cut
anywhere, and yields the same entries whatever the cut (property-tested). It never raises on
input: a malformed line is shipped raw with a parse-error flag.

Offsets: every entry carries the file offset of its first line, and `safe_offset` is where reading
must resume after a crash so that no entry is lost: the start of the oldest line not yet part of an
emitted entry (a physical line without its newline, an open partial group, a held multiline group).
One approximation is accepted: after a physical line longer than `max_entry_bytes` was shipped in
pieces, the safe offset may point into that line, and a restart ships its rest flagged
`cri_header` instead of continuing it.
"""
from __future__ import annotations

import json
import re
import struct
from array import array
from dataclasses import dataclass, field

from .native import module as _native


class EntryFlag:
    """Bits of an entry's flags (plain ints: enum arithmetic costs a call per line)."""

    JOINED = 1            # partial lines were joined
    TRUNCATED = 2         # cut at max_entry_bytes; the rest follows as the next entry
    CONTINUED = 4         # this entry is the rest of a cut one
    BAD_HEADER = 8        # CRI header malformed: shipped raw
    BAD_JSON = 16         # docker json-file line not valid JSON: shipped raw
    BAD_UTF8 = 32         # invalid UTF-8 replaced by U+FFFD (set by the record builder)
    MULTILINE = 64        # several lines grouped by the multiline start pattern
    UNTERMINATED = 128    # last line of a file that ended without a newline


FORMAT_CRI = "cri"
FORMAT_DOCKER = "docker"

_STREAMS = (b"stdout", b"stderr")
_TAGS = (b"F", b"P")
_EMPTY = b""
_SLACK = 4096   # room for a header beyond max_entry before a physical line is cut


# A raw row (native/parse.h raw_row_t): ordinal, offset, time position and length, stream (0 stdout,
# 1 stderr), body position and length, as native int64s.
_RAW_ROW = struct.Struct("=7q")


@dataclass(slots=True)
class Entries:
    """Parallel lists, one slot per entry: cheaper than an object per line on the hot path.
    An empty time means "no runtime time": the record builder uses the observed time.

    With the native CRI loop, plain lines are not in the lists: they are raw rows (`raw`, filled by
    _native.cri_rows) into `data`, the bytes they were parsed from, and the seal loop reads them
    there. Each list entry then has its place among all entries in `ordinals`. `materialize()` turns
    raw rows into list entries (the reference implementations and tests read the lists)."""

    offsets: list[int] = field(default_factory=list)
    times: list[bytes] = field(default_factory=list)
    streams: list[bytes] = field(default_factory=list)
    bodies: list[bytes] = field(default_factory=list)
    flags: list[int] = field(default_factory=list)
    raw: bytearray = field(default_factory=bytearray)
    data: bytes | None = None
    ordinals: array = field(default_factory=lambda: array("q"))

    def __len__(self) -> int:
        return len(self.bodies) + len(self.raw) // _RAW_ROW.size

    def add(self, offset: int, time: bytes, stream: bytes, body: bytes, flags: int) -> None:
        if self.data is not None:
            self.ordinals.append(len(self))
        self.offsets.append(offset)
        self.times.append(time)
        self.streams.append(stream)
        self.bodies.append(body)
        self.flags.append(flags)

    def raw_rows_into(self, data: bytes) -> bytearray:
        """The raw rows, for rows into `data` (rows into other data are made list entries first).
        The list entries get their ordinals before the first raw row."""
        if self.data is not None and self.data is not data:
            self.materialize()
        if self.data is None:
            self.ordinals = array("q", range(len(self.bodies)))
            self.data = data
        return self.raw

    def materialize(self) -> None:
        """Raw rows become list entries, in entry order."""
        data = self.data
        if data is None:
            return
        if not self.raw:                     # the list entries are all there is, in order
            self.data = None
            self.ordinals = array("q")
            return
        listed = list(zip(self.offsets, self.times, self.streams, self.bodies, self.flags))
        merged: list = [None] * len(self)
        for ordinal, row in zip(self.ordinals, listed):
            merged[ordinal] = row
        for ordinal, offset, time_pos, time_n, stream, body_pos, body_n in _RAW_ROW.iter_unpack(self.raw):
            merged[ordinal] = (offset, data[time_pos:time_pos + time_n], _STREAMS[stream],
                               data[body_pos:body_pos + body_n], 0)
        self.offsets, self.times, self.streams, self.bodies, self.flags = (list(column) for column in zip(*merged))
        self.raw = bytearray()
        self.data = None
        self.ordinals = array("q")

    def rows(self) -> list[tuple[int, bytes, bytes, bytes, int]]:
        self.materialize()
        return list(zip(self.offsets, self.times, self.streams, self.bodies, self.flags))


def detect_format(first_bytes: bytes) -> str:
    """docker json-file lines start with `{`; everything else is read as CRI."""
    return FORMAT_DOCKER if first_bytes.lstrip()[:1] == b"{" else FORMAT_CRI


# RFC3339 with an optional fraction: what runtimes write. Strict, because the time goes into the
# record verbatim (and into the hash): free text in its place is a malformed header.
looks_like_timestamp = re.compile(
    rb"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d{1,9})?(?:Z|[+-]\d\d:\d\d)").fullmatch


class _Group:
    """An open partial group of one stream (CRI P lines, docker lines without a newline)."""
    __slots__ = ("offset", "time", "pieces", "size", "flags")

    def __init__(self, offset: int, time: bytes, flags: int) -> None:
        self.offset = offset
        self.time = time
        self.pieces: list[bytes] = []
        self.size = 0
        self.flags = flags


class StreamParser:
    """Incremental parser for one log file lineage (one tailer).

    `feed(data, offset, end_of_file)` takes the next bytes of the file at `offset`; offsets are
    contiguous within one file identity. With the last chunk of an identity the tailer passes
    `end_of_file=True`; the parser then flushes whatever it holds (a file that ends mid-line or
    mid-group will never be completed).
    """

    __slots__ = ("format", "max_entry", "_carry", "_carry_offset", "_groups", "_cont", "_next_offset",
                 "_multiline", "_ml_max", "_held", "lines")

    def __init__(self, *, fmt: str | None = None, max_entry_bytes: int = 1 << 20,
                 multiline_start: str | None = None, multiline_max_lines: int = 500) -> None:
        self.format = fmt                            # None: detected from the first bytes
        self.max_entry = max_entry_bytes
        self._carry = _EMPTY                         # physical line without its newline yet
        self._carry_offset = 0
        self._groups: dict[bytes, _Group] = {}       # open partial group per stream
        self._cont: tuple[bytes, bytes, bytes] | None = None   # (time, stream, tag) of a cut line
        self._next_offset = 0
        self._multiline = re.compile(multiline_start.encode()) if multiline_start else None
        self._ml_max = multiline_max_lines
        self._held: list | None = None               # [offset, time, stream, bodies, flags]
        self.lines = 0                               # physical lines (newlines) parsed so far

    # -- positions ---------------------------------------------------------------------------
    @property
    def safe_offset(self) -> int:
        """Offset from which a restarted reader reproduces exactly the entries not yet emitted."""
        safe = self._next_offset - len(self._carry)
        for group in self._groups.values():
            safe = min(safe, group.offset)
        if self._held is not None:
            safe = min(safe, self._held[0])
        return safe

    @property
    def expected_offset(self) -> int:
        """Offset of the next byte the parser expects (the end of what it was fed)."""
        return self._next_offset

    @property
    def holds_data(self) -> bool:
        return bool(self._carry or self._groups or self._held is not None)

    def reset(self, offset: int) -> None:
        """Start over at `offset` (a restore, or a file truncated under us)."""
        self._carry = _EMPTY
        self._groups = {}
        self._cont = None
        self._held = None
        self._next_offset = offset

    # -- feeding -----------------------------------------------------------------------------
    def feed(self, data: bytes, offset: int, end_of_file: bool = False, out: Entries | None = None) -> Entries:
        """The entries that `data` completes, appended to `out` (which may then hold raw rows, see
        Entries); without `out`, a new Entries with everything in its lists."""
        if out is None:
            out = self.feed(data, offset, end_of_file, Entries())
            out.materialize()
            return out
        if self._carry:
            data = self._carry + data
            offset = self._carry_offset
            self._carry = _EMPTY
        self._next_offset = offset + len(data)
        if self.format is None:
            if not data.strip() and not end_of_file:
                self._carry, self._carry_offset = data, offset
                return out
            self.format = detect_format(data)
        add_line = {FORMAT_CRI: self._add_cri_line, FORMAT_DOCKER: self._add_docker_line}.get(
            self.format, self._add_raw_line)
        if self.format == FORMAT_CRI and self._multiline is None and _native is not None:
            end = data.rfind(b"\n") + 1
            line_offset = self._add_cri_lines_native(data, end, offset, out)
            self._finish_feed(data[end:], line_offset, end_of_file, add_line, out)
            return out
        lines = data.split(b"\n")
        tail = lines.pop()                           # bytes after the last newline (maybe empty)
        self.lines += len(lines)
        line_offset = offset
        if self.format == FORMAT_CRI and self._multiline is None:
            line_offset = self._add_cri_lines_fast(lines, line_offset, out)
        else:
            for line in lines:
                add_line(line, line_offset, out, 0)
                line_offset += len(line) + 1
        self._finish_feed(tail, line_offset, end_of_file, add_line, out)
        return out

    def _finish_feed(self, tail: bytes, line_offset: int, end_of_file: bool, add_line, out: Entries) -> None:
        """The bytes after the last newline, and the end of a file."""
        if tail:
            if end_of_file:
                add_line(tail, line_offset, out, EntryFlag.UNTERMINATED)
            elif len(tail) > self.max_entry + _SLACK:
                self._spill_long_line(tail, line_offset, out)
            else:
                self._carry, self._carry_offset = tail, line_offset
        if end_of_file:
            self._cont = None
            for stream in list(self._groups):
                self._close_group(stream, out)
            self.flush_held(out)

    def flush_held(self, out: Entries) -> None:
        """Emit a held multiline group (end of file, or idle longer than the grouping timeout)."""
        held, self._held = self._held, None
        if held is not None:
            offset, time, stream, bodies, flags = held
            self._emit_cut(out, offset, time, stream, b"\n".join(bodies),
                           flags | (EntryFlag.MULTILINE if len(bodies) > 1 else 0))

    # -- line handlers -----------------------------------------------------------------------
    def _add_cri_lines_fast(self, lines: list[bytes], line_offset: int, out: Entries) -> int:
        """The common case inlined: a well-formed `F` line with no partial group open becomes an
        entry here; everything else goes through `_add_cri_line`."""
        offsets, times, streams, bodies, flags = out.offsets, out.times, out.streams, out.bodies, out.flags
        max_entry = self.max_entry
        is_timestamp = looks_like_timestamp
        slow = self._add_cri_line
        for line in lines:
            parts = line.split(b" ", 3)
            if (len(parts) == 4 and parts[2] == b"F" and not self._groups and self._cont is None
                    and (parts[1] == b"stdout" or parts[1] == b"stderr") and len(parts[3]) <= max_entry
                    and is_timestamp(parts[0])):
                offsets.append(line_offset)
                times.append(parts[0])
                streams.append(parts[1])
                bodies.append(parts[3])
                flags.append(0)
            else:
                slow(line, line_offset, out, 0)
            line_offset += len(line) + 1
        return line_offset

    def _add_cri_lines_native(self, data: bytes, end: int, line_offset: int, out: Entries) -> int:
        """`_add_cri_lines_fast` over data[:end] with its loop in C (shipper._native.cri_rows: raw rows
        into `data`, no object per line), which stops at the first line that needs this parser's
        state; that line is handled here."""
        cri_rows = _native.cri_rows
        max_entry = self.max_entry
        rows = None
        pos = 0
        lines = 0
        while pos < end:
            if not self._groups and self._cont is None:
                if rows is None:
                    rows = out.raw_rows_into(data)
                pos, line_offset, taken = cri_rows(data, pos, end, line_offset, max_entry, rows, len(out))
                lines += taken
                if pos >= end:
                    break
            newline = data.index(b"\n", pos)
            self._add_cri_line(data[pos:newline], line_offset, out, 0)
            line_offset += newline - pos + 1
            pos = newline + 1
            lines += 1
        self.lines += lines
        return line_offset

    def _add_cri_line(self, line: bytes, offset: int, out: Entries, flags: int) -> None:
        if self._cont is not None:
            time, stream, tag = self._cont
            self._cont = None
            self._add_message(out, offset, time, stream, tag, line, flags | EntryFlag.CONTINUED)
            return
        parts = line.split(b" ", 3)
        if len(parts) == 3:
            parts.append(_EMPTY)                     # "<ts> stdout F" with an empty message
        if len(parts) == 4:
            time, stream, tag, message = parts
            if stream in _STREAMS and tag in _TAGS and looks_like_timestamp(time):
                self._add_message(out, offset, time, stream, tag, message, flags)
                return
        self._emit(out, offset, _EMPTY, b"stdout", line, flags | EntryFlag.BAD_HEADER)

    def _add_docker_line(self, line: bytes, offset: int, out: Entries, flags: int) -> None:
        if self._cont is not None:
            time, stream, tag = self._cont
            self._cont = None
            self._emit(out, offset, time, stream, line, flags | EntryFlag.CONTINUED | EntryFlag.BAD_JSON)
            return
        try:
            obj = json.loads(line)
            message = obj["log"]
            stream = obj.get("stream", "stdout").encode()
            if stream not in _STREAMS:
                raise ValueError("stream is neither stdout nor stderr")
            time = obj.get("time", "").encode()
            if not isinstance(message, str):
                raise TypeError("log is not a string")
            if time and not looks_like_timestamp(time):
                time = _EMPTY           # the observed time stands in
        except (ValueError, KeyError, TypeError, AttributeError):
            if line.strip():
                self._emit(out, offset, _EMPTY, b"stdout", line, flags | EntryFlag.BAD_JSON)
            return
        body = message.encode("utf-8", "surrogatepass")
        if body.endswith(b"\n"):
            self._add_message(out, offset, time, stream, b"F", body[:-1], flags)
        else:
            self._add_message(out, offset, time, stream, b"P", body, flags)

    def _add_raw_line(self, line: bytes, offset: int, out: Entries, flags: int) -> None:
        if self._cont is not None:
            self._cont = None
            flags |= EntryFlag.CONTINUED
        self._emit(out, offset, _EMPTY, b"stdout", line[:-1] if line.endswith(b"\r") else line, flags)

    # -- joining -----------------------------------------------------------------------------
    def _add_message(self, out: Entries, offset: int, time: bytes, stream: bytes, tag: bytes,
                     message: bytes, flags: int) -> None:
        group = self._groups.get(stream)
        if tag == b"P":
            if group is None:
                group = self._groups[stream] = _Group(offset, time, flags)
            else:
                group.flags |= flags
            group.pieces.append(message)
            group.size += len(message)
            if group.size > self.max_entry:
                self._cut_group(stream, group, offset, out)
            return
        if group is None:
            self._emit(out, offset, time, stream, message, flags)
            return
        del self._groups[stream]
        group.pieces.append(message)
        self._emit(out, group.offset, group.time, stream, b"".join(group.pieces),
                   group.flags | flags | EntryFlag.JOINED)

    def _close_group(self, stream: bytes, out: Entries) -> None:
        group = self._groups.pop(stream)
        self._emit(out, group.offset, group.time, stream, b"".join(group.pieces), group.flags | EntryFlag.JOINED)

    def _cut_group(self, stream: bytes, group: _Group, line_offset: int, out: Entries) -> None:
        joined = b"".join(group.pieces)
        head, rest = joined[:self.max_entry], joined[self.max_entry:]
        self._emit(out, group.offset, group.time, stream, head, group.flags | EntryFlag.JOINED | EntryFlag.TRUNCATED)
        # The rest lives in the line at line_offset: resuming there after a crash re-reads it whole.
        group.offset = line_offset
        group.pieces = [rest]
        group.size = len(rest)
        group.flags = (group.flags & ~EntryFlag.TRUNCATED) | EntryFlag.CONTINUED
        if group.size > self.max_entry:
            self._cut_group(stream, group, line_offset, out)

    def _spill_long_line(self, tail: bytes, offset: int, out: Entries) -> None:
        """A physical line longer than an entry may be: ship what we have in pieces instead of
        buffering it; the rest of the line continues the entry when its newline arrives."""
        if self._cont is None:
            if self.format == FORMAT_CRI:
                parts = tail.split(b" ", 3)
                if len(parts) == 4 and parts[1] in _STREAMS and parts[2] in _TAGS and looks_like_timestamp(parts[0]):
                    time, stream, tag, message = parts
                    flags = 0
                else:
                    time, stream, tag, message, flags = _EMPTY, b"stdout", b"F", tail, EntryFlag.BAD_HEADER
            else:
                flags = EntryFlag.BAD_JSON if self.format == FORMAT_DOCKER else 0
                time, stream, tag, message = _EMPTY, b"stdout", b"F", tail
            consumed = len(tail) - len(message)
        else:
            time, stream, tag = self._cont
            message, consumed, flags = tail, 0, EntryFlag.CONTINUED
        cut = len(message) // self.max_entry * self.max_entry
        # Route the shipped part through the joiner as a P piece: it cuts groups at max_entry.
        self._add_message(out, offset, time, stream, b"P", message[:cut], flags)
        self._cont = (time, stream, tag)
        rest_offset = offset + consumed + cut
        self._carry, self._carry_offset = message[cut:], rest_offset

    # -- emitting ----------------------------------------------------------------------------
    def _emit(self, out: Entries, offset: int, time: bytes, stream: bytes, body: bytes, flags: int) -> None:
        pattern = self._multiline
        if pattern is None:
            self._emit_cut(out, offset, time, stream, body, flags)
            return
        held = self._held
        if held is not None and held[2] == stream and not pattern.match(body) and len(held[3]) < self._ml_max:
            held[3].append(body)
            held[4] |= flags
            return
        self.flush_held(out)
        self._held = [offset, time, stream, [body], flags]

    def _emit_cut(self, out: Entries, offset: int, time: bytes, stream: bytes, body: bytes, flags: int) -> None:
        if len(body) <= self.max_entry:
            out.add(offset, time, stream, body, flags)
            return
        step = self.max_entry
        for start in range(0, len(body), step):
            piece_flags = flags
            if start + step < len(body):
                piece_flags |= EntryFlag.TRUNCATED
            if start:
                piece_flags |= EntryFlag.CONTINUED
            out.add(offset, time, stream, body[start:start + step], piece_flags)
