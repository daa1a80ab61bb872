"""The state side of a pipeline driven by hand, for tests about what state.db and the ingest keep
rather than about delivery: Ingest, WAL, StateStore and Acknowledgements wired as pipeline.py wires
them, a sender that acknowledges every durable frame at once, and clocks the test moves."""
from __future__ import annotations

import asyncio
import time
from collections import deque
from pathlib import Path

from shipper.batch import Batch
from shipper.config import Settings
from shipper.enrich import build_provider
from shipper.ingest import Ingest
from shipper.metrics import Metrics
from shipper.pipeline import _collect_encoded
from shipper.state import TOMBSTONES_KEPT, Acknowledgements, StateStore, append_keeping_reserve, roll_forward
from shipper.wal import Wal


class FakeClock:
    """Seconds the test moves by hand."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class FakeAckingSender:
    """Stands in for the Kafka sender: a frame is acknowledged as soon as the WAL has it durable, as by
    a broker that takes everything at once (the real sender's two calls, offer and make_visible)."""

    def __init__(self, acks: Acknowledgements) -> None:
        self.acks = acks
        self._offered: deque[tuple] = deque()

    def offer(self, start, end, frame) -> None:
        self._offered.append((end, frame.batch))

    def make_visible(self, durable) -> None:
        while self._offered and self._offered[0][0] <= durable:
            end, batch = self._offered.popleft()
            self.acks.frame_acknowledged(end, batch.sources, batch.chains)


class DrivenState:
    """What `Pipeline._open_state` and `Pipeline.run` set up, without the Kafka sink and the tasks:
    `cycle()` reads until nothing is left, commits each batch, syncs and has it acknowledged; `flush()`
    is the ack flusher's one round (which prunes). `startup_s` is how long opening took: StateStore,
    load, roll forward, Ingest."""

    def __init__(self, settings: Settings, wall: FakeClock, steady: FakeClock,
                 tombstones_kept: int = TOMBSTONES_KEPT, shard=None) -> None:
        self.settings = settings
        self.metrics = Metrics()
        started = time.perf_counter()
        self.wal = Wal(settings.wal.dir, max_bytes=settings.wal.max_bytes, segment_bytes=settings.wal.segment_bytes)
        self.state = StateStore(settings.state.dir, tombstones_kept=tombstones_kept, clock=wall)
        snapshot = self.state.load()
        roll_forward(snapshot, self.wal)
        self.ingest = Ingest(settings, snapshot, self.metrics, build_provider(settings, self.metrics), shard=shard)
        self.startup_s = time.perf_counter() - started
        self.acks = Acknowledgements(self.state, snapshot, self.wal, self.metrics,
                                     prune_after_s=settings.state.prune_after_s, on_pruned=self.ingest.forget,
                                     clock=steady)
        self.sender = FakeAckingSender(self.acks)

    def cycle(self) -> list[Batch]:
        batches = []
        while True:
            collected = _collect_encoded(self.ingest, self.settings.wal.commit_bytes)
            if collected is None:
                return batches
            frame, callbacks = collected
            end = append_keeping_reserve(self.wal, frame)
            self.sender.offer(self.wal.last_start, end, frame)
            self.sender.make_visible(self.wal.sync())
            for callback in callbacks:
                callback()
            batches.append(frame.batch)

    def flush(self) -> None:
        asyncio.run(self.acks.flush())

    def close(self) -> None:
        self.ingest.close()
        self.wal.close()
        self.state.close()


def state_files_bytes(directory: Path) -> tuple[int, int]:
    """(state.db, state.db-wal) sizes on disk."""
    sizes = []
    for name in ("state.db", "state.db-wal"):
        path = Path(directory) / name
        sizes.append(path.stat().st_size if path.exists() else 0)
    return sizes[0], sizes[1]
