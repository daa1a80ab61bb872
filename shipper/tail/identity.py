"""What makes a file the same file, and reading the first bytes that say so (of a plain file, or of
a compressed one, with its uncompressed size from the gzip trailer).

Identity is (dev, ino, `model.Fingerprint` of the first FINGERPRINT_BYTES bytes). A file shorter
than that has the fingerprint of the bytes it has so far (none when empty); it lengthens as the file
grows, with no `end_of_file` between: chunks of one file may carry such a growing FileId, and
`Tailer.position_of()` answers with the longest. A position matches a file when dev and inode are
equal and the file starts with the bytes of its fingerprint (`Fingerprint.starts_with`). A
truncated file whose first bytes changed is a new identity on the same inode.
"""
from __future__ import annotations

import os
import zlib

from shipper.model import FINGERPRINT_BYTES

_GZIP_PROBE_LIMIT = 1 << 20       # compressed bytes read at most to recover a gzip file's first bytes
_EMPTY_GZIP_LIMIT = 4096          # an empty gzip file: 20 bytes, and the name or comment its header may carry


def _read_head(path: str) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read(FINGERPRINT_BYTES)
    except OSError:
        return None


def _read_gzip_head(path: str, n: int = FINGERPRINT_BYTES) -> bytes | None:
    try:
        with open(path, "rb") as f:
            inflater = zlib.decompressobj(wbits=31)
            out = b""
            consumed = 0
            while len(out) < n and consumed < _GZIP_PROBE_LIMIT:
                block = f.read(16384)
                if not block:
                    break
                consumed += len(block)
                out += inflater.decompress(block, n - len(out))
                if inflater.eof:
                    break
            return out
    except (OSError, zlib.error):
        return None


def _gzip_is_empty(path: str) -> bool:
    """Whether `path` is a whole gzip stream of no bytes (a file compressed while empty): unlike
    a damaged or cut one, it says how much it holds."""
    try:
        with open(path, "rb") as f:
            data = f.read(_EMPTY_GZIP_LIMIT + 1)
    except OSError:
        return False
    if len(data) > _EMPTY_GZIP_LIMIT:
        return False
    inflater = zlib.decompressobj(wbits=31)
    try:
        out = inflater.decompress(data)
    except zlib.error:
        return False
    return out == b"" and inflater.eof and not inflater.unused_data


def _gzip_size(path: str) -> int:
    """Uncompressed size from the gzip trailer (mod 2**32; rotated logs are far smaller), -1 unknown."""
    try:
        with open(path, "rb") as f:
            f.seek(-4, os.SEEK_END)
            trailer = f.read(4)
    except OSError:
        return -1
    return int.from_bytes(trailer, "little") if len(trailer) == 4 else -1
