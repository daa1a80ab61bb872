"""`state.db`: where each source stands and each chain's head, as of a WAL position; and the
acknowledgements that move it.

The snapshot is written when the ack cursor moves (Acknowledgements applies the headers of the frames
the sender finished); frames after the snapshot's position stay in the WAL and recovery rolls the
snapshot forward through them (roll_forward). So the snapshot never runs ahead of what the WAL holds,
and a WAL frame cut off at recovery simply never reaches it.
"""
from __future__ import annotations

import asyncio
import errno
import logging
import os
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

from .batch import Frame, decode_checkpoints
from .merkle import Frontier
from .metrics import Metrics
from .model import ChainCheckpoint, SourceCheckpoint
from .wal import Wal, WalPosition, WalWriteError

log = logging.getLogger("shipper.state")

# Free disk a WAL commit must leave: saving the snapshot and moving the ack cursor, which free
# segments, need room of their own.
DISK_RESERVE_BYTES = 1 << 20

_SCHEMA = """
CREATE TABLE IF NOT EXISTS sources (key TEXT PRIMARY KEY, dev INTEGER, ino INTEGER, fingerprint TEXT,
                                    path TEXT, offset INTEGER, chain TEXT);
CREATE TABLE IF NOT EXISTS chains (chain TEXT PRIMARY KEY, seq INTEGER, hash TEXT, closed INTEGER, tree BLOB);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
"""


@dataclass(slots=True)
class Snapshot:
    """Where every source and chain stood as of `position`; a source mapped to None was dropped (its
    file is gone for good)."""

    sources: dict[str, SourceCheckpoint | None] = field(default_factory=dict)
    chains: dict[str, ChainCheckpoint] = field(default_factory=dict)
    position: WalPosition = WalPosition(0, 0)

    def apply(self, sources: dict[str, SourceCheckpoint | None], chains: dict[str, ChainCheckpoint],
              position: WalPosition) -> None:
        self.sources.update(sources)
        self.chains.update(chains)
        if position > self.position:
            self.position = position


class StateStore:
    def __init__(self, directory: str | Path) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.path = self.dir / "state.db"
        if not self.path.exists():
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(chains)")}
        if "tree" not in columns:
            # state.db of a release without Merkle trees: its chains start a new tree at their next record.
            self._db.execute("ALTER TABLE chains ADD COLUMN tree BLOB")
        for suffix in ("-wal", "-shm"):
            side = Path(str(self.path) + suffix)
            if side.exists():
                os.chmod(side, 0o600)

    def load(self) -> Snapshot:
        snapshot = Snapshot()
        for key, *value in self._db.execute("SELECT key, dev, ino, fingerprint, path, offset, chain FROM sources"):
            snapshot.sources[key] = SourceCheckpoint.from_list(value)
        for chain, seq, hash_hex, closed, tree in self._db.execute("SELECT chain, seq, hash, closed, tree FROM chains"):
            snapshot.chains[chain] = ChainCheckpoint(seq, bytes.fromhex(hash_hex), bool(closed),
                                                     Frontier.from_bytes(tree) if tree else Frontier())
        row = self._db.execute("SELECT value FROM meta WHERE key = 'position'").fetchone()
        if row:
            segment, offset = (int(part) for part in row[0].split())
            snapshot.position = WalPosition(segment, offset)
        return snapshot

    def save(self, sources: dict[str, SourceCheckpoint | None], chains: dict[str, ChainCheckpoint],
             position: WalPosition) -> None:
        db = self._db
        db.execute("BEGIN")
        try:
            for key, value in sources.items():
                if value is None:
                    db.execute("DELETE FROM sources WHERE key = ?", (key,))
                else:
                    db.execute("INSERT OR REPLACE INTO sources VALUES (?, ?, ?, ?, ?, ?, ?)", (key, *value.to_list()))
            db.executemany("INSERT OR REPLACE INTO chains (chain, seq, hash, closed, tree) VALUES (?, ?, ?, ?, ?)",
                           [(name, chain.seq, chain.hash.hex(), int(chain.closed), chain.tree.to_bytes())
                            for name, chain in chains.items()])
            db.execute("INSERT OR REPLACE INTO meta VALUES ('position', ?)", (f"{position.segment} {position.offset}",))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def close(self) -> None:
        self._db.close()


def roll_forward(snapshot: Snapshot, wal: Wal) -> int:
    """Recovery: apply the headers of the WAL frames past the snapshot's position (written, not yet
    acknowledged) to the snapshot, so that sources resume after what the WAL holds and chains go on
    from its heads; the position stays, those frames are sent again. Returns how many were applied."""
    rolled = 0
    for _start, end, payload in wal.scan_unacked():
        if end > snapshot.position:
            sources, chains = decode_checkpoints(payload)
            snapshot.apply(sources, chains, snapshot.position)
            rolled += 1
    return rolled


def append_keeping_reserve(wal: Wal, frame: Frame) -> WalPosition:
    """Append the frame unless the disk would keep less than DISK_RESERVE_BYTES free. One call (for a
    worker thread) for the check and the write."""
    free = wal.free_bytes()
    if free < frame.nbytes + DISK_RESERVE_BYTES:
        raise WalWriteError(f"No space left on device for the WAL: {free} bytes free, a commit needs "
                            f"{frame.nbytes} plus {DISK_RESERVE_BYTES} kept for acknowledgements", errno.ENOSPC)
    return wal.append([frame.parts])


class Acknowledgements:
    """The frames the sender finished, merged (later source positions and chain heads win) until a
    flush persists them: the snapshot first, then the WAL's ack cursor, which deletes segments only
    behind a snapshot that covers them."""

    def __init__(self, state: StateStore, snapshot: Snapshot, wal: Wal, metrics: Metrics) -> None:
        self.state = state
        self.snapshot = snapshot
        self.wal = wal
        self.metrics = metrics
        self._pending: tuple[dict, dict, WalPosition] | None = None
        self._progress = asyncio.Event()

    def frame_acknowledged(self, end: WalPosition, sources: dict, chains: dict) -> None:
        if self._pending is None:
            self._pending = ({}, {}, end)
        pending_sources, pending_chains, _ = self._pending
        pending_sources.update(sources)
        pending_chains.update(chains)
        self._pending = (pending_sources, pending_chains, end)

    async def wait_progress(self) -> None:
        """Until a flush has moved the ack cursor (and freed what it could)."""
        self._progress.clear()
        await self._progress.wait()

    async def flush(self) -> None:
        pending, self._pending = self._pending, None
        if pending is None:
            return
        sources, chains, position = pending
        try:
            if position > self.snapshot.position:
                await asyncio.to_thread(self.state.save, sources, chains, position)
                self.snapshot.apply(sources, chains, position)
            await asyncio.to_thread(self.wal.ack, position)
        except (WalWriteError, sqlite3.Error, OSError) as exc:
            # A full disk, say: keep what is acknowledged and try again on the next flush.
            self.metrics.wal_write_errors.labels(errno=str(getattr(exc, "errno", "") or "")).inc()
            log.error("cannot persist acknowledgements yet (%s); retrying", exc)
            if self._pending is not None:
                later_sources, later_chains, later_position = self._pending
                sources.update(later_sources)
                chains.update(later_chains)
                position = later_position
            self._pending = (sources, chains, position)
            return
        self.metrics.wal_bytes.set(self.wal.bytes_on_disk)
        self.metrics.wal_segments.set(self.wal.segment_count)
        self._progress.set()
