"""Tailing: one kubelet log path followed through its rotations, as raw bytes at file offsets.

- `Tailer(path, ref, position)`: `poll()` returns a `TailBatch` of `Chunk`s and losses,
  `position_of()` says where to resume once a chunk is committed. A file's identity is a
  `model.FileId`: device, inode and the `model.Fingerprint` of its first bytes.

One file per concern, each importing only those before it: identity (what makes a file the
same file, reading its first bytes), compressed (reading a `.gz` sibling from an uncompressed
offset, streaming), siblings (the rotated copies and their order), files (what the tailer knows of each file, and how
it compares with what is on disk), restore (where a committed position resumes), tailer (polling,
rotation, truncation, choosing the next file). Beside them, watch: which log directories changed
(inotify), so the pipeline polls only those tailers; it imports nothing of the others.
"""
from __future__ import annotations

from .siblings import GZIP_SUFFIX, TMP_SUFFIX
from .tailer import Chunk, TailBatch, Tailer

__all__ = ["GZIP_SUFFIX", "TMP_SUFFIX", "Chunk", "TailBatch", "Tailer"]
