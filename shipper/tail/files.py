"""What a tailer knows of each file: `_File` (one identity, open, tracked by name and inode, or a
marker standing for one that was lost), `_NoFile` (before every sibling), and the comparisons
between what we knew of a file and what is on disk now.

Markers are `_File`s with no descriptor: a placeholder stands for a sibling we could not read, so
the choice of the next file starts after it; a lost or gone marker also carries the `LossEvent`
to report when its turn comes. A compressed entry stands for a `.gz` sibling seen ahead of its
turn; when its turn comes it is opened through `compressed.GzipReader` (held in `gz`, `fd` -1).

An empty file has no first bytes to prove it is the file we knew: one we do not hold open is
recognised by inode and name (a later file may have its inode), and an empty `.gz` is never taken
for a file we know (it is a file of its own, known to hold nothing).
"""
from __future__ import annotations

import os

from shipper.model import FINGERPRINT_BYTES, FileId, Fingerprint, LossEvent, LossReason

from .compressed import GzipReader
from .identity import _gzip_is_empty, _gzip_size, _read_gzip_head, _read_head
from .siblings import _KUBELET_STAMP, GZIP_SUFFIX, _Sibling


class _File:
    """One file identity this tailer reads or has read. `fd` is -1 once closed."""

    __slots__ = ("fd", "dev", "ino", "path", "stamp", "older", "offset", "head", "fp", "max_seen",
                 "last_size", "last_mtime", "retired_at", "final_hint", "successor", "before", "loss",
                 "compressed", "gz", "known_size")

    def __init__(self, fd: int, dev: int, ino: int, path: str, offset: int, head: bytes,
                 stamp: str | None = None, older: frozenset[str] | None = None) -> None:
        self.fd = fd
        self.dev = dev
        self.ino = ino
        self.path = path
        self.stamp = stamp                  # rotation suffix once known (None: still the live file)
        self.older = older                  # stamps that existed when we opened it as the live file
        self.offset = offset                # next byte to return
        self.head = head                    # first bytes (<= FINGERPRINT_BYTES), identity evidence
        self.fp = Fingerprint.of(head)
        self.max_seen = offset              # largest size we know the file had
        self.last_size = -1                 # size and mtime at the last check (-1: check now)
        self.last_mtime = -1
        self.retired_at: float | None = None   # when we saw the path stop pointing at it
        self.final_hint = False             # newer rotations exist: the runtime has left it
        self.successor: _File | None = None    # the file read next, when nothing was lost between
        self.before: _File | None = None       # the last file with content before this one
        self.loss: LossEvent | None = None     # set on a marker: a sibling lost before its turn
        self.compressed = False             # a `.gz` sibling: read through `gz` once its turn comes
        self.gz: GzipReader | None = None   # open while a compressed file is current (`fd` stays -1)
        self.known_size = -1                # uncompressed size seen before compression, -1 unknown

    @property
    def file_id(self) -> FileId:
        return FileId(self.dev, self.ino, self.fp)

    def set_head(self, head: bytes) -> None:
        self.head = head
        self.fp = Fingerprint.of(head)

    def snapshot(self) -> _File:
        """A closed copy standing for this identity after truncation reused the descriptor."""
        copy = _File(-1, self.dev, self.ino, self.path, self.offset, self.head, self.stamp, self.older)
        copy.max_seen = self.max_seen
        return copy


class _NoFile:
    """Stands for 'before every sibling': a new source, or one whose file was lost without trace."""

    __slots__ = ("lost_stamp",)

    def __init__(self, lost_stamp: str | None = None) -> None:
        self.lost_stamp = lost_stamp        # rotation stamp of the lost file, when its name told it


# -- markers -------------------------------------------------------------------------------------

def placeholder(sib: _Sibling, gz_path: str | None = None) -> _File:
    """Stands for a sibling we could not read, so the next choice starts after it. A
    compressed one keeps its first bytes and size: a position naming it as read to its end
    lets a restart go on after it instead of counting it lost again."""
    marker = _File(-1, sib.dev, sib.ino, sib.path, 0, b"", stamp=sib.stamp)
    marker.last_mtime = sib.mtime_ns
    gz_path = sib.path if sib.compressed else gz_path
    if gz_path is not None:
        head, size = _read_gzip_head(gz_path), _gzip_size(gz_path)
        if head and size > 0:
            marker.path = gz_path
            marker.set_head(head)
            marker.offset = marker.max_seen = size
    return marker


def compressed_entry(sib: _Sibling, known_size: int = -1) -> _File:
    """A compressed sibling (`sib.compressed`) seen ahead of its turn, read when its turn comes
    (not held open: it is final, and opening it means decompressing). `known_size`: its size seen
    before it was compressed, evidence of what a damaged one lost."""
    entry = placeholder(sib)
    entry.offset = 0
    entry.compressed = True
    # an empty one has no first bytes to show, but its whole stream says it holds nothing
    entry.known_size = 0 if known_size < 0 and not entry.head and _gzip_is_empty(sib.path) else known_size
    return entry


def lost_marker(sib: _Sibling) -> _File:
    """A sibling deleted before its turn (or, found only compressed where it cannot be read on
    from, compressed: callers read a compressed sibling through `compressed_entry` instead)."""
    path = sib.path if sib.compressed else sib.path + GZIP_SUFFIX
    marker = placeholder(sib, path)
    if os.path.exists(path):
        marker.loss = LossEvent(path, LossReason.ROTATED_UNREAD, _gzip_size(path), 0,
                                "compressed before it was read")
    else:
        marker.loss = LossEvent(sib.path, LossReason.ROTATED_UNREAD, -1, 0, "deleted before it was read")
    return marker


def gone_marker(entry: _File) -> _File:
    """A tracked file found nowhere any more."""
    marker = placeholder(_Sibling(entry.stamp or "", entry.path, False, entry.dev, entry.ino,
                                  entry.last_mtime, entry.max_seen))
    # Once rotated its size is final, and we saw it after the rotation; still live, we cannot know.
    size = entry.max_seen if entry.stamp is not None else -1
    marker.loss = LossEvent(entry.path, LossReason.ROTATED_UNREAD, size, 0,
                            f"deleted before it was read (last seen with {entry.max_seen} bytes)")
    return marker


# -- comparisons ---------------------------------------------------------------------------------

def is_same_file(sib: _Sibling, rec: _File) -> bool:
    """Whether sibling `sib` is the file `rec` stands for: by inode (and first bytes, unless we
    hold it open; and name, when it has no first bytes yet), or for a compressed one by its first
    bytes and size."""
    if sib.compressed:
        if rec.fd >= 0:
            # What we hold now, not what we read: a copy of older content may be around.
            head, size = os.pread(rec.fd, FINGERPRINT_BYTES, 0), os.fstat(rec.fd).st_size
        else:
            head, size = rec.head, (-1 if rec.stamp is None else rec.max_seen)
        if not head:
            return False
        gz_head = _read_gzip_head(sib.path)
        if not gz_head or gz_head[:len(head)] != head[:len(gz_head)]:
            return False                    # an empty one agrees with any first bytes: no evidence
        # the size must agree too where we know it is final
        return size < 0 or _gzip_size(sib.path) == size % (1 << 32)
    if (sib.dev, sib.ino) != (rec.dev, rec.ino):
        return False
    if rec.fd >= 0:
        return True                         # we hold it open: the inode cannot have been reused
    if not rec.head and not may_bear_name(rec, sib.stamp):
        return False                        # an empty file proves nothing by its inode: its name must agree
    head = _read_head(sib.path)
    return head is not None and head[:len(rec.head)] == rec.head


def may_bear_name(rec: _File, stamp: str) -> bool:
    """Whether the file `rec` stands for can be under rotation suffix `stamp` now ("" for the live
    path). kubelet never renames a rotated file (it only compresses it), and the live file it
    renames takes a stamp that did not exist yet when we saw it live."""
    if rec.stamp is not None:
        return stamp == rec.stamp or not _KUBELET_STAMP.fullmatch(rec.stamp)
    return rec.older is None or stamp not in rec.older


def starts_like(sib: _Sibling, head: bytes) -> bool:
    """Whether `sib` begins with the same bytes as `head`, as far as both go (a copy of it)."""
    if not head:
        return False
    other = (_read_gzip_head(sib.path) if sib.compressed else _read_head(sib.path)) or b""
    n = min(len(other), len(head))
    return n > 0 and other[:n] == head[:n]


def already_passed(prev: _File | _NoFile, entry: _File) -> bool:
    """An entry taken ahead that the sibling scan has since read or counted (rotation order
    never goes back)."""
    if not isinstance(prev, _File) or prev.stamp is None or entry.stamp is None:
        return False
    if not (_KUBELET_STAMP.fullmatch(prev.stamp) and _KUBELET_STAMP.fullmatch(entry.stamp)):
        return False
    return entry.stamp <= prev.stamp


def anchor(prev: _File | _NoFile) -> _File | None:
    """The last finished file with content at or before `prev`."""
    if not isinstance(prev, _File):
        return None
    if prev.head and prev.fd == -1 and prev.offset > 0:
        prev.before = None               # only empty files need to look back: no chains
        return prev
    return prev.before
