"""Reading a rotated file the kubelet compressed (`0.log.<stamp>.gz`): `GzipReader` returns its
uncompressed bytes from an uncompressed offset, as a plain file's reads would.

Streaming, bounded memory: at most `_IN_PIECE` compressed bytes are decompressed per call, with
the output bounded by what was asked for; reaching an offset means decompressing and discarding
up to it, a bounded piece per call (`skip`), never the whole file at once. The first bytes (the
identity's evidence) are decompressed when it opens.

The gzip format through zlib (wbits=31: header, CRC-32 and length checked, members one after
another), not the gzip module: where the stream is damaged, zlib raises and drops the output of
that whole call, and the gzip module with it; here the call is replayed from a copy of the state
before it, a byte at a time, so every byte that decompresses before the damage is returned.

A damaged file never raises: what decompresses is returned, then `damage` says why the rest cannot
be read and `truncated` whether the compressed stream just stops (its trailer, with the
uncompressed size, is then missing too). What a truncated file returns is its true beginning;
deflate notices other damage only some way after it, so what a corrupt file returned last may be
wrong already (the damage text says so). An I/O error raises OSError as for a plain file.
"""
from __future__ import annotations

import os
import zlib

from shipper.model import FINGERPRINT_BYTES

_IN_PIECE = 16 * 1024             # compressed bytes per decompression call
_OUT_PIECE = 64 * 1024            # uncompressed bytes per pass while skipping
_MAGIC = b"\x1f\x8b"
_MAX_RATIO = 1032                 # deflate expands at most about 1032-fold


class GzipReader:
    """One open `.gz` file; `offset` is the uncompressed offset of the next byte `read()` returns."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            st = os.fstat(self._fd)
            self.dev, self.ino, self.mtime_ns, self.compressed_size = st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size
            self.offset = 0
            self.eof = False
            self.damage: str | None = None
            self.truncated = False
            self._inflate = zlib.decompressobj(wbits=31)
            self._in = b""               # compressed, read from the file, not yet decompressed
            self._in_member = False      # input of the current member was fed
            self._ahead = b""            # decompressed, from `offset` on, not yet returned
            self._returned = False
            self.head = self._decompress(FINGERPRINT_BYTES)
            self._ahead = self.head
        except BaseException:
            os.close(self._fd)
            raise

    @property
    def done(self) -> bool:
        """Nothing more will come: the end of the stream, or damage."""
        return not self._ahead and (self.eof or self.damage is not None)

    def trailer_size(self) -> int:
        """The uncompressed size the gzip trailer states (mod 2**32), -1 when there is no trailer to
        believe (a truncated stream ends in compressed data; a file that is no gzip at all)."""
        if self.truncated or self.compressed_size < 18 or os.pread(self._fd, 2, 0) != _MAGIC:
            return -1                    # 10 header and 8 trailer bytes at least
        trailer = os.pread(self._fd, 4, self.compressed_size - 4)
        size = int.from_bytes(trailer, "little") if len(trailer) == 4 else -1
        return size if size <= _MAX_RATIO * self.compressed_size else -1

    def read(self, n: int) -> bytes:
        """Up to `n` bytes from `offset`; fewer only at the end or where damage starts."""
        out = self._ahead[:n]
        self._ahead = self._ahead[len(out):]
        if len(out) < n:
            out += self._decompress(n - len(out))
        self.offset += len(out)
        return out

    def skip(self, n: int) -> int:
        """Pass over up to `n` bytes without returning them; how many were passed."""
        passed = min(n, len(self._ahead))
        self._ahead = self._ahead[passed:]
        while passed < n and not (self.eof or self.damage is not None):
            passed += len(self._decompress(min(_OUT_PIECE, n - passed)))
        self.offset += passed
        return passed

    def _decompress(self, n: int) -> bytes:
        """Up to `n` new bytes; more decompressed than that waits in `_ahead`."""
        parts: list[bytes] = []
        got = 0
        while got < n and not (self.eof or self.damage is not None):
            if not self._in:
                self._in = os.read(self._fd, _IN_PIECE)
                if not self._in:
                    if self._in_member or self.compressed_size == 0:
                        self.damage = "truncated: the compressed stream ends before its end marker"
                        self.truncated = True
                    else:
                        self.eof = True   # after a whole member, the end of the file is the end
                    break
            before = self._inflate.copy()
            try:
                data = self._inflate.decompress(self._in, n - got)
            except zlib.error as exc:
                data = self._salvage(before, self._in)
                self.damage = f"corrupt: {exc}" + (
                    "; the bytes read just before may be damaged too" if self._returned or data else "")
                parts.append(data)
                got += len(data)
                break
            self._in_member = True
            self._in = self._inflate.unconsumed_tail
            parts.append(data)
            got += len(data)
            if self._inflate.eof:
                self._next_member(self._inflate.unused_data)
        out = b"".join(parts)
        if got > n:
            out, self._ahead = out[:n], self._ahead + out[n:]
        self._returned = self._returned or bool(out)
        return out

    def _next_member(self, rest: bytes) -> None:
        self._inflate = zlib.decompressobj(wbits=31)
        self._in_member = False
        self._in = rest
        if rest and not rest.strip(b"\0"):
            self.eof = True              # zero padding after the last member, as some tools write

    @staticmethod
    def _salvage(state, data: bytes) -> bytes:
        """What `data` decompresses to from `state` before the byte that is damaged."""
        parts = []
        for i in range(len(data)):
            try:
                parts.append(state.decompress(data[i:i + 1]))
            except zlib.error:
                break
        return b"".join(parts)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
