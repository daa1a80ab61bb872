"""Value types shared by the stages: identities and positions of sources, loss events.

Only plain data lives here; every stage imports it, it imports nothing of ours.
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


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
    LINE_TOO_LONG = "line_too_long"        # entry cut at the size limit (the cut part is shipped)
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
