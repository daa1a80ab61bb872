"""Value types shared by the stages: identities and positions of sources, loss events, and the
checkpoints a WAL commit carries (where each source and chain stands after it).

Only plain data lives here; every stage imports it, it imports nothing of ours but the Merkle
frontier (a value type too). The checkpoints are turned into lists only where they are written:
the WAL frame header (batch.py) and state.db (state.py); a fingerprint is written as its `text`.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from enum import Enum

from .merkle import Frontier

FINGERPRINT_BYTES = 256

_EMPTY_DIGEST = hashlib.sha256(b"").digest()
_FINGERPRINT_TEXT = re.compile(r"(?:([1-9][0-9]*):)?([0-9a-f]{64})", re.ASCII)


@dataclass(slots=True, frozen=True)
class Fingerprint:
    """The identity of a file's first bytes: the SHA-256 `digest` of its first `length` bytes, which
    are FINGERPRINT_BYTES, or all of a file shorter than that (the fingerprint lengthens as the file
    grows). An empty file's covers no bytes and every file starts with it.

    Written (WAL frame header, state.db) as `text`, the form every release has written: the hex
    digest when full, `"<length>:<hex digest>"` when shorter, `""` when empty."""

    length: int
    digest: bytes

    def __post_init__(self) -> None:
        if not 0 <= self.length <= FINGERPRINT_BYTES or len(self.digest) != 32 \
                or (self.length == 0 and self.digest != _EMPTY_DIGEST):
            raise ValueError(f"not a fingerprint: {self.length} bytes, digest {self.digest.hex()}")

    @classmethod
    def of(cls, head: bytes) -> Fingerprint:
        """The fingerprint of a file whose first bytes are `head` (only FINGERPRINT_BYTES of it count)."""
        head = head[:FINGERPRINT_BYTES]
        return cls(len(head), hashlib.sha256(head).digest())

    def starts_with(self, head: bytes) -> bool:
        """Whether a file starting with `head` (at least FINGERPRINT_BYTES of it, or all of a shorter
        file) can be the file this was taken of: `head` has the bytes it covers."""
        return len(head) >= self.length and hashlib.sha256(head[:self.length]).digest() == self.digest

    @property
    def text(self) -> str:
        if self.length == FINGERPRINT_BYTES:
            return self.digest.hex()
        if self.length == 0:
            return ""
        return f"{self.length}:{self.digest.hex()}"

    @classmethod
    def parse(cls, text: str) -> Fingerprint:
        """The fingerprint whose `text` this is; ValueError for a text no release writes."""
        if not text:
            return cls(0, _EMPTY_DIGEST)
        match = _FINGERPRINT_TEXT.fullmatch(text)
        if match is None or (match[1] is not None and int(match[1]) >= FINGERPRINT_BYTES):
            raise ValueError(f"not a fingerprint: {text[:80]!r}")
        return cls(FINGERPRINT_BYTES if match[1] is None else int(match[1]), bytes.fromhex(match[2]))


@dataclass(slots=True, frozen=True)
class FileId:
    """Identity of one log file across renames: device, inode and the fingerprint of its first bytes,
    which tells a reused inode from the file that used to own it. A file's fingerprint lengthens
    while it is shorter than FINGERPRINT_BYTES; shipper.tail.identity documents how such ids match.
    """

    dev: int
    ino: int
    fingerprint: Fingerprint

    def key(self) -> str:
        return f"{self.dev}:{self.ino}:{self.fingerprint.text}"


@dataclass(slots=True, frozen=True)
class ContainerRef:
    """What the kubelet's path says about a log file:
    /var/log/pods/<namespace>_<pod>_<uid>/<container>/<restart>.log"""

    namespace: str
    pod: str
    pod_uid: str
    container: str
    restart_count: int

    @property
    def chain(self) -> str:
        """One hash chain per container lineage; it runs on across restarts and rotations."""
        return f"{self.pod_uid}/{self.container}"


class LossReason(str, Enum):
    ROTATED_UNREAD = "rotated_unread"      # rotated away / deleted before we read it all
    TRUNCATED = "truncated"                # copytruncate or truncation under us
    REJECTED_BY_BROKER = "rejected_by_broker"
    UNREADABLE = "unreadable"              # I/O error reading the file
    CORRUPT = "corrupt"                    # a compressed rotated file that cannot be decompressed to its end


@dataclass(slots=True, frozen=True)
class LossEvent:
    """Bytes that reached a log file but will never be shipped, and why.

    `bytes_lost` is -1 when the amount cannot be known (e.g. a file deleted before it was ever seen
    whole)."""

    path: str
    reason: LossReason
    bytes_lost: int
    offset: int = 0
    detail: str = ""


@dataclass(slots=True, frozen=True)
class SourcePosition:
    """Where reading of one container log stream resumes: the file (by identity and last known path)
    and the byte offset of the first byte not yet committed to the WAL."""

    file_id: FileId
    path: str
    offset: int


@dataclass(slots=True, frozen=True)
class SourceCheckpoint:
    """Where one source stands once a WAL commit is durable: its file (identity, last known path),
    the offset of the first byte not committed, and the chain it feeds."""

    file_id: FileId
    path: str
    offset: int
    chain: str

    @property
    def position(self) -> SourcePosition:
        return SourcePosition(self.file_id, self.path, self.offset)

    def to_list(self) -> list:
        file_id = self.file_id
        return [file_id.dev, file_id.ino, file_id.fingerprint.text, self.path, self.offset, self.chain]

    @classmethod
    def from_list(cls, value: list) -> SourceCheckpoint:
        """From a frame header or state row: [dev, ino, fingerprint text, path, offset, chain]."""
        dev, ino, fingerprint, path, offset, chain = value
        return cls(FileId(dev, ino, Fingerprint.parse(fingerprint)), path, offset, chain)


_NO_TREE = Frontier()


@dataclass(slots=True, frozen=True)
class ChainCheckpoint:
    """Where one chain stands once a WAL commit is durable: its head (seq, hash), whether it is
    closed, and the Merkle frontier over its records (empty for a chain restored from a release that
    kept none: its tree starts again at its next record)."""

    seq: int
    hash: bytes
    closed: bool = False
    tree: Frontier = _NO_TREE

    def to_list(self) -> list:
        return [self.seq, self.hash.hex(), self.closed, self.tree.to_bytes().hex()]

    @classmethod
    def from_list(cls, value: list) -> ChainCheckpoint:
        """From a frame header or state row: [seq, hash hex, closed, tree hex], or the three-element
        form of frame format 1, which had no tree."""
        seq, hash_hex, closed, *rest = value
        tree = Frontier.from_bytes(bytes.fromhex(rest[0])) if rest and rest[0] else _NO_TREE
        return cls(seq, bytes.fromhex(hash_hex), bool(closed), tree)
