"""Value types shared by the stages: identities and positions of sources, loss events, and the
checkpoints a WAL commit carries (where each source and chain stands after it).

Only plain data lives here; every stage imports it, it imports nothing of ours but the Merkle
frontier (a value type too). The checkpoints are turned into lists only where they are written:
the WAL frame header (batch.py) and state.db (state.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from .merkle import Frontier


@dataclass(slots=True, frozen=True)
class FileId:
    """Identity of one log file across renames: device, inode and a fingerprint of its first bytes.

    The fingerprint (hex SHA-256 of the first `FINGERPRINT_BYTES` bytes) tells a reused inode from the
    file that used to own it. While a file is shorter, it is `"<n>:<sha256 of the n bytes>"` (empty for
    an empty file) and lengthens as the file grows; shipper.tail.identity documents how such ids match.
    """

    dev: int
    ino: int
    fingerprint: str

    def key(self) -> str:
        return f"{self.dev}:{self.ino}:{self.fingerprint}"


FINGERPRINT_BYTES = 256


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
        return [file_id.dev, file_id.ino, file_id.fingerprint, self.path, self.offset, self.chain]

    @classmethod
    def from_list(cls, value: list) -> SourceCheckpoint:
        dev, ino, fingerprint, path, offset, chain = value
        return cls(FileId(dev, ino, fingerprint), path, offset, chain)


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
