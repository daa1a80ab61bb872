"""`state.db`: where each source stands and each chain's head, as of a WAL position; and the
acknowledgements that move it.

The snapshot is written when the ack cursor moves (Acknowledgements applies the headers of the frames
the sender finished); frames after the snapshot's position stay in the WAL and recovery rolls the
snapshot forward through them (roll_forward). So the snapshot never runs ahead of what the WAL holds,
and a WAL frame cut off at recovery simply never reaches it.

Pruning keeps state.db bounded on a node that runs pods by the hundred thousand: a chain saved closed
(its close record acknowledged by Kafka) and not moved for `state.prune_after_s` is deleted with any
source row still naming it, and leaves a tombstone (an 8-byte hash of its name; the newest
TOMBSTONES_KEPT are kept) so that a file of it coming back is refused rather than opened as a new
chain under the same name. Freed pages go back to the file system (incremental vacuum).
"""
from __future__ import annotations

import asyncio
import errno
import hashlib
import logging
import os
import sqlite3
import time
from array import array
from bisect import bisect_left
from collections.abc import Callable, Iterable
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

# A tombstone costs about 20 bytes on disk and 16 in memory: 100k of them cover a node that starts
# 100k pods between the prune of a chain and a stale copy of its directory coming back.
TOMBSTONES_KEPT = 100_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS sources (key TEXT PRIMARY KEY, dev INTEGER, ino INTEGER, fingerprint TEXT,
                                    path TEXT, offset INTEGER, chain TEXT);
CREATE TABLE IF NOT EXISTS chains (chain TEXT PRIMARY KEY, seq INTEGER, hash TEXT, closed INTEGER, tree BLOB,
                                   closed_at REAL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS pruned (hash INTEGER PRIMARY KEY, pruned_at REAL NOT NULL);
"""


def chain_tombstone(name: str) -> int:
    """The tombstone of a chain name: 64 bits of its BLAKE2b, signed as SQLite keeps integers. A new
    chain taken for a pruned one by a collision is refused; at 100k tombstones the odds are 1 in 10^14."""
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "little", signed=True)


class Tombstones:
    """The pruned chains, as tombstone hashes: the newest `limit` kept, looked up by bisection in a
    sorted array (8 bytes each; a lookup happens once per chain first seen, never per line)."""

    __slots__ = ("limit", "_order", "_sorted")

    def __init__(self, limit: int = TOMBSTONES_KEPT, hashes: Iterable[int] = ()) -> None:
        self.limit = limit
        self._order = array("q", hashes)        # oldest first
        if len(self._order) > limit:
            del self._order[:len(self._order) - limit]
        self._sorted = array("q", sorted(self._order))

    def __len__(self) -> int:
        return len(self._order)

    def __contains__(self, name: str) -> bool:
        wanted = chain_tombstone(name)
        index = bisect_left(self._sorted, wanted)
        return index < len(self._sorted) and self._sorted[index] == wanted

    def add(self, names: Iterable[str]) -> None:
        added = [chain_tombstone(name) for name in names]
        if not added:
            return
        self._order.extend(added)
        if len(self._order) > self.limit:
            del self._order[:len(self._order) - self.limit]
        self._sorted = array("q", sorted(self._order))

    def copy(self) -> Tombstones:
        return Tombstones(self.limit, self._order)


@dataclass(slots=True, frozen=True)
class Pruned:
    """What one prune deleted from state.db: chains (closed, acknowledged, quiet long enough) and the
    source rows that still named them."""

    chains: list[str]
    sources: list[str]


@dataclass(slots=True)
class Snapshot:
    """Where every source and chain stood as of `position`; a source mapped to None was dropped (its
    file is gone for good)."""

    sources: dict[str, SourceCheckpoint | None] = field(default_factory=dict)
    chains: dict[str, ChainCheckpoint] = field(default_factory=dict)
    position: WalPosition = WalPosition(0, 0)
    tombstones: Tombstones = field(default_factory=Tombstones)

    def apply(self, sources: dict[str, SourceCheckpoint | None], chains: dict[str, ChainCheckpoint],
              position: WalPosition) -> None:
        self.sources.update(sources)
        self.chains.update(chains)
        if position > self.position:
            self.position = position


class StateStore:
    """state.db. One thread at a time (Acknowledgements serialises its saves and prunes)."""

    def __init__(self, directory: str | Path, *, tombstones_kept: int = TOMBSTONES_KEPT,
                 clock: Callable[[], float] = time.time) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.path = self.dir / "state.db"
        self.tombstones_kept = tombstones_kept
        self.clock = clock              # wall clock: closed_at must mean the same after a restart
        if not self.path.exists():
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        db = self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        # Before the first table exists (a new file), this makes the file one that can give pages back;
        # an older state.db is converted once below.
        db.execute("PRAGMA auto_vacuum=INCREMENTAL")
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        # Saves are a few pages each: checkpoint every 1 MiB of them (not the default 4), and since the
        # -wal file is rewound, not shrunk, after a checkpoint, cut it back to that much.
        db.execute("PRAGMA wal_autocheckpoint=256")
        db.execute(f"PRAGMA journal_size_limit={1 << 20}")
        db.executescript(_SCHEMA)
        columns = {row[1] for row in db.execute("PRAGMA table_info(chains)")}
        if "tree" not in columns:
            # state.db of a release without Merkle trees: its chains start a new tree at their next record.
            db.execute("ALTER TABLE chains ADD COLUMN tree BLOB")
        if "closed_at" not in columns:
            # state.db of a release without pruning: its closed chains were acknowledged closed before
            # the upgrade; their time starts now.
            db.execute("ALTER TABLE chains ADD COLUMN closed_at REAL")
            db.execute("UPDATE chains SET closed_at = ? WHERE closed = 1", (self.clock(),))
        if db.execute("PRAGMA auto_vacuum").fetchone()[0] != 2:
            db.execute("VACUUM")        # takes the auto_vacuum setting; once, as big as the file
        for suffix in ("-wal", "-shm"):
            side = Path(str(self.path) + suffix)
            if side.exists():
                os.chmod(side, 0o600)

    @property
    def bytes_on_disk(self) -> int:
        """state.db and its -wal file."""
        total = 0
        for suffix in ("", "-wal"):
            try:
                total += os.stat(str(self.path) + suffix).st_size
            except FileNotFoundError:
                pass
        return total

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
        snapshot.tombstones = Tombstones(self.tombstones_kept, (hash_ for (hash_,) in self._db.execute(
            "SELECT hash FROM pruned ORDER BY pruned_at, hash")))
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
            # closed_at: when a closed chain was last saved, so any later record of it (a gap for a
            # refused record, say) puts its pruning off again.
            now = self.clock()
            db.executemany("INSERT OR REPLACE INTO chains (chain, seq, hash, closed, tree, closed_at) "
                           "VALUES (?, ?, ?, ?, ?, ?)",
                           [(name, chain.seq, chain.hash.hex(), int(chain.closed), chain.tree.to_bytes(),
                             now if chain.closed else None)
                            for name, chain in chains.items()])
            db.execute("INSERT OR REPLACE INTO meta VALUES ('position', ?)", (f"{position.segment} {position.offset}",))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def adopt(self, sources: dict[str, SourceCheckpoint], chains: dict[str, ChainCheckpoint],
              tombstones: Tombstones) -> None:
        """Rows another state.db held, for a WAL that starts empty (workers.py moves chains between the
        workers' state.dbs when their count changes)."""
        self.save(sources, chains, WalPosition(0, 0))
        now = self.clock()
        self._db.executemany("INSERT OR IGNORE INTO pruned VALUES (?, ?)", [(hash_, now) for hash_ in tombstones._order])

    def prune(self, older_than_s: float) -> Pruned:
        """Delete the chains saved closed more than `older_than_s` ago and the source rows naming them,
        leave their tombstones (the oldest beyond `tombstones_kept` go), and give the file system back
        the pages freed when they are a quarter of the file."""
        db = self._db
        now = self.clock()
        cutoff = now - older_than_s
        gone = "SELECT chain FROM chains WHERE closed = 1 AND closed_at <= ?"
        db.execute("BEGIN")
        try:
            names = [name for (name,) in db.execute(gone, (cutoff,))]
            keys: list[str] = []
            if names:
                keys = [key for (key,) in db.execute(f"SELECT key FROM sources WHERE chain IN ({gone})", (cutoff,))]
                if keys:
                    db.execute(f"DELETE FROM sources WHERE chain IN ({gone})", (cutoff,))
                db.execute("DELETE FROM chains WHERE closed = 1 AND closed_at <= ?", (cutoff,))
                db.executemany("INSERT OR REPLACE INTO pruned VALUES (?, ?)",
                               [(chain_tombstone(name), now) for name in names])
                (count,) = db.execute("SELECT count(*) FROM pruned").fetchone()
                if count > self.tombstones_kept:
                    db.execute("DELETE FROM pruned WHERE hash IN (SELECT hash FROM pruned ORDER BY pruned_at, hash "
                               "LIMIT ?)", (count - self.tombstones_kept,))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        if names:
            (pages,) = db.execute("PRAGMA page_count").fetchone()
            (free,) = db.execute("PRAGMA freelist_count").fetchone()
            if free * 4 > pages:
                # One page per step, and Python's execute() steps once: executescript runs it through.
                db.executescript("PRAGMA incremental_vacuum;")
        return Pruned(names, keys)

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
    behind a snapshot that covers them. A flush also prunes state.db every `prune_every_s` (when
    `prune_after_s` is set) and tells `on_pruned` which chains went, so the ingest forgets them too.
    Flushes run one at a time: the state store is one connection."""

    def __init__(self, state: StateStore, snapshot: Snapshot, wal: Wal, metrics: Metrics, *,
                 prune_after_s: float | None = None, on_pruned: Callable[[list[str]], None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.state = state
        self.snapshot = snapshot
        self.wal = wal
        self.metrics = metrics
        self.prune_after_s = prune_after_s
        # Often enough that a chain goes at most a quarter later than due, at most once a minute.
        self.prune_every_s = None if prune_after_s is None else min(60.0, prune_after_s / 4)
        self.on_pruned = on_pruned
        self.clock = clock
        self._next_prune = clock() if prune_after_s is not None else float("inf")
        self._pending: tuple[dict, dict, WalPosition] | None = None
        self._progress = asyncio.Event()
        self._lock = asyncio.Lock()

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
        async with self._lock:
            await self._persist()
            if self.clock() >= self._next_prune:
                await self._prune()

    async def _persist(self) -> None:
        pending, self._pending = self._pending, None
        if pending is None:
            return
        sources, chains, position = pending
        try:
            if position > self.snapshot.position:
                await asyncio.to_thread(self.state.save, sources, chains, position)
                self.snapshot.apply(sources, chains, position)
                # The snapshot mirrors state.db, which keeps no row for a dropped source.
                for key, value in sources.items():
                    if value is None:
                        del self.snapshot.sources[key]
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

    async def _prune(self) -> None:
        self._next_prune = self.clock() + self.prune_every_s
        try:
            pruned = await asyncio.to_thread(self.state.prune, self.prune_after_s)
        except sqlite3.Error as exc:
            log.error("cannot prune state.db yet (%s); trying again in %.0fs", exc, self.prune_every_s)
            return
        finally:
            self.metrics.state_bytes.set(self.state.bytes_on_disk)
        if not pruned.chains:
            return
        snapshot = self.snapshot
        for name in pruned.chains:
            snapshot.chains.pop(name, None)
        for key in pruned.sources:
            snapshot.sources.pop(key, None)
        snapshot.tombstones.add(pruned.chains)
        self.metrics.state_pruned.labels(kind="chains").inc(len(pruned.chains))
        if pruned.sources:
            self.metrics.state_pruned.labels(kind="sources").inc(len(pruned.sources))
        log.info("pruned %d closed chains (and %d source rows) from state.db", len(pruned.chains), len(pruned.sources))
        if self.on_pruned is not None:
            self.on_pruned(pruned.chains)
