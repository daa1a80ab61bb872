"""Where a committed position goes on after a restart: `resume_point()` decides from what is on disk
now, and the tailer opens the file it names.

The file at the path (dev, inode and fingerprint); else an uncompressed sibling with that inode,
or with the same first bytes (a copy: copytruncate's); else a compressed sibling with those
uncompressed first bytes (read on from the same uncompressed offset); else a loss of unknown size, and reading
starts after the lost file (by its rotation stamp when its name told it, else at the oldest
sibling still on disk, kubelet deleting oldest first). `Tailer.position_of()` never names an empty
file (a later file may reuse its inode) but the end of the last file with content; a position with
an empty fingerprint therefore means nothing with content was committed yet, and reading starts
over as for a new source.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from shipper.model import FINGERPRINT_BYTES, Fingerprint, LossEvent, LossReason, SourcePosition

from .files import _File, _NoFile, placeholder
from .identity import _gzip_size, _read_gzip_head
from .siblings import GZIP_SUFFIX, _Sibling


@dataclass(slots=True, frozen=True)
class Reopen:
    """Read on at `offset` in `path`, the live path when `stamp` is None, else a rotated copy (to be
    finished once drained). It is the position's file while it has inode (dev, ino) and starts with
    the bytes `fingerprint` was taken of: opened later, it may no longer be."""

    path: str
    stamp: str | None
    dev: int
    ino: int
    fingerprint: Fingerprint
    offset: int
    compressed: bool = False          # a `.gz` sibling; `offset` counts its uncompressed bytes


@dataclass(slots=True, frozen=True)
class Lost:
    """The rest of the position's file cannot be read: count `loss` (None when nothing of it was left
    unread), then go on with what follows `after`."""

    loss: LossEvent | None
    after: _File | _NoFile


def resume_point(path: str, position: SourcePosition | None, siblings: list[_Sibling]) -> Reopen | Lost | None:
    """What to read on after `position` among the live `path` and its `siblings` (in any order);
    None: start as a new source, with every sibling. Raises OSError for a file that is there but
    unreadable."""
    if position is None:
        return None
    fid, offset = position.file_id, position.offset
    if fid.fingerprint.length == 0:
        # position_of names an empty file only when nothing with content was ever committed
        # (it names the last file with content otherwise), and an empty file proves nothing by
        # its inode, which a later file may have: start over, as a new source does.
        return None
    try:
        st = os.stat(path)
    except FileNotFoundError:
        st = None
    if st is not None and (st.st_dev, st.st_ino) == (fid.dev, fid.ino):
        head = _head_if_present(path)
        if head is not None and fid.fingerprint.starts_with(head):
            return Reopen(path, None, fid.dev, fid.ino, fid.fingerprint, offset)
    ordered = sorted(siblings, key=lambda s: s.key)
    plain = [s for s in ordered if not s.compressed]
    # the same inode first; then a copy with the same first bytes (copytruncate's copy)
    for want_inode in (True, False):
        for sib in plain:
            if ((sib.dev, sib.ino) == (fid.dev, fid.ino)) != want_inode:
                continue
            head = _head_if_present(sib.path)
            if head is not None and fid.fingerprint.starts_with(head):
                return Reopen(sib.path, sib.stamp, sib.dev, sib.ino, fid.fingerprint, offset)
    for sib in ordered:
        if sib.compressed:
            head = _read_gzip_head(sib.path)
            if head and fid.fingerprint.starts_with(head):
                if 0 <= _gzip_size(sib.path) <= offset:
                    return Lost(None, placeholder(sib))      # read to its end: nothing to decompress
                return Reopen(sib.path, sib.stamp, sib.dev, sib.ino, fid.fingerprint, offset, compressed=True)
    lost_stamp = None
    if position.path.startswith(path + "."):
        lost_stamp = position.path[len(path) + 1:].removesuffix(GZIP_SUFFIX)
    return Lost(LossEvent(position.path, LossReason.ROTATED_UNREAD, -1, offset,
                          f"file {fid.key()} is gone; how much of it was unread is unknown"), _NoFile(lost_stamp))


def _head_if_present(path: str) -> bytes | None:
    # Unlike identity._read_head, an unreadable file is an error to report, not a file that is gone.
    try:
        with open(path, "rb") as f:
            return f.read(FINGERPRINT_BYTES)
    except FileNotFoundError:
        return None
