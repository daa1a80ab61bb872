"""The rotated copies next to a log path, and the order they were rotated in.

A path `.../0.log` has siblings `0.log.<stamp>` and `0.log.<stamp>.gz`, one per stamp (the
uncompressed one when both exist; `.tmp` files are the runtime's, half written). kubelet's stamps
sort by time as text; any other suffix goes by mtime. `scan_siblings()` is one directory listing.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass

GZIP_SUFFIX = ".gz"
TMP_SUFFIX = ".tmp"
# kubelet's rotation suffix (Go layout "20060102-150405"): sorts chronologically as text.
_KUBELET_STAMP = re.compile(r"[0-9]{8}-[0-9]{6}")


def _order_key(stamp: str, mtime_ns: int) -> tuple[int, str, int, str]:
    """Rotation order of a sibling: kubelet stamps by their text, anything else by mtime (the
    stamp breaks ties, so distinct siblings never compare equal)."""
    if _KUBELET_STAMP.fullmatch(stamp):
        return (0, stamp, 0, stamp)
    return (1, "", mtime_ns, stamp)


# Order keys beyond every sibling's, either side of `_order_key`'s range.
_NEWEST = (9, "", 0, "")          # order key of the file still at the live path
_GONE = (-1, "", 0, "")           # order key of a file gone from disk: kubelet deletes oldest first


@dataclass(slots=True)
class _Sibling:
    stamp: str
    path: str
    compressed: bool
    dev: int
    ino: int
    mtime_ns: int
    size: int

    @property
    def key(self) -> tuple[int, str, int, str]:
        return _order_key(self.stamp, self.mtime_ns)


def scan_siblings(directory: str, prefix: str) -> list[_Sibling]:
    """Rotated copies (`<prefix><stamp>[.gz]` in `directory`), one per stamp (the uncompressed one
    when both exist), in no particular order; none when the directory is gone."""
    by_stamp: dict[str, _Sibling] = {}
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return []
    for entry in entries:
        name = entry.name
        if not name.startswith(prefix) or name.endswith(TMP_SUFFIX):
            continue
        rest = name[len(prefix):]
        compressed = rest.endswith(GZIP_SUFFIX)
        stamp = rest[:-len(GZIP_SUFFIX)] if compressed else rest
        if not stamp:
            continue
        try:
            if not entry.is_file(follow_symlinks=False):
                continue
            st = entry.stat(follow_symlinks=False)
        except FileNotFoundError:
            continue
        known = by_stamp.get(stamp)
        if known is not None and not known.compressed:
            continue
        by_stamp[stamp] = _Sibling(stamp, entry.path, compressed, st.st_dev, st.st_ino, st.st_mtime_ns,
                                   st.st_size)
    return list(by_stamp.values())
