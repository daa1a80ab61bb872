"""What makes a file the same file: the fingerprint of its first bytes, and reading those bytes
(of a plain file, or of a compressed one, with its uncompressed size from the gzip trailer).

Identity is (dev, ino, fingerprint of the first FINGERPRINT_BYTES bytes), see `fingerprint()`. A
file shorter than that has the fingerprint of the bytes it has so far, tagged with their count
(`"<n>:<sha256>"`, `""` when empty); it lengthens as the file grows, with no `end_of_file` between:
chunks of one file may carry such a growing FileId, and `Tailer.position_of()` answers with the
longest. A position matches a file when dev and inode are equal and the file's first n bytes hash
to the fingerprint. A truncated file whose first bytes changed is a new identity on the same inode.
"""
from __future__ import annotations

import hashlib
import os
import zlib

from shipper.model import FINGERPRINT_BYTES

_GZIP_PROBE_LIMIT = 1 << 20       # compressed bytes read at most to recover a gzip file's first bytes


def fingerprint(head: bytes) -> str:
    """Fingerprint of a file whose first bytes are `head` (only the first FINGERPRINT_BYTES count).

    Full: hex SHA-256 of FINGERPRINT_BYTES bytes. Short file: `"<n>:<hex SHA-256 of n bytes>"`, so a
    later check knows how many bytes to compare. Empty file: `""` (matches any content)."""
    n = len(head)
    if n >= FINGERPRINT_BYTES:
        return hashlib.sha256(head[:FINGERPRINT_BYTES]).hexdigest()
    if n == 0:
        return ""
    return f"{n}:{hashlib.sha256(head).hexdigest()}"


def fingerprint_length(fp: str) -> int:
    """How many leading bytes `fp` covers."""
    if not fp:
        return 0
    n, sep, _ = fp.partition(":")
    return int(n) if sep and n.isdigit() else FINGERPRINT_BYTES


def fingerprint_matches(fp: str, head: bytes) -> bool:
    """Whether a file starting with `head` (at least FINGERPRINT_BYTES of it, or all of a shorter
    file) can be the file that `fp` was taken of."""
    n = fingerprint_length(fp)
    if len(head) < n:
        return False
    return fingerprint(head[:n]) == fp


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


def _gzip_size(path: str) -> int:
    """Uncompressed size from the gzip trailer (mod 2**32; rotated logs are far smaller), -1 unknown."""
    try:
        with open(path, "rb") as f:
            f.seek(-4, os.SEEK_END)
            trailer = f.read(4)
    except OSError:
        return -1
    return int.from_bytes(trailer, "little") if len(trailer) == 4 else -1
