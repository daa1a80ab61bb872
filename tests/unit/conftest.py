"""Unit-only fixtures: for the tailer tests, a recorder that checks the tailer's stream invariants
as chunks arrive, and a clock the tests move by hand; for the settings tests, an environment without
SHIPPER_* variables."""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import pytest

from shipper.model import LossEvent
from shipper.tail import Chunk, TailBatch, Tailer


@dataclass
class Segment:
    """The bytes one file identity returned, from `start` on, up to its end_of_file."""

    dev: int
    ino: int
    path: str
    start: int
    data: bytearray = field(default_factory=bytearray)
    ended: bool = False

    @property
    def end(self) -> int:
        return self.start + len(self.data)


class TailRecord:
    """Polls a tailer and asserts, chunk by chunk: one identity at a time, offsets contiguous within
    an identity, nothing after end_of_file, at most `read_size` bytes per poll."""

    def __init__(self, tailer: Tailer, read_size: int | None = None) -> None:
        self.tailer = tailer
        self.read_size = read_size
        self.segments: list[Segment] = []
        self.losses: list[LossEvent] = []
        self.events: list[LossEvent | Chunk] = []
        self.finished = False

    def poll(self) -> TailBatch:
        batch = self.tailer.poll()
        self.record(batch)
        return batch

    def record(self, batch: TailBatch) -> None:
        if self.read_size is not None:
            assert sum(len(c.data) for c in batch.chunks) <= self.read_size
        self.losses.extend(batch.losses)
        self.events.extend(batch.losses)
        for chunk in batch.chunks:
            self.events.append(chunk)
            seg = self.segments[-1] if self.segments and not self.segments[-1].ended else None
            fid = chunk.file_id
            if seg is None:
                seg = Segment(fid.dev, fid.ino, chunk.path, chunk.offset)
                self.segments.append(seg)
            assert (fid.dev, fid.ino) == (seg.dev, seg.ino), "a new identity started before the old one ended"
            assert chunk.offset == seg.end, f"offset {chunk.offset} does not continue {seg.end}"
            seg.data += chunk.data
            seg.ended = chunk.end_of_file
        self.finished = self.finished or batch.finished

    def drain(self, polls: int = 1000) -> None:
        """Poll until a poll returns nothing."""
        for _ in range(polls):
            batch = self.poll()
            if not batch.chunks and not batch.losses:
                return
        raise AssertionError("tailer kept returning data")

    @property
    def data(self) -> bytes:
        return b"".join(bytes(s.data) for s in self.segments)

    def bytes_lost(self) -> int:
        return sum(loss.bytes_lost for loss in self.losses)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def tail_record():
    return TailRecord


@pytest.fixture
def fake_clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def no_shipper_env(monkeypatch):
    """The settings under test see no SHIPPER_* variable of the environment the tests run in."""
    for name in list(os.environ):
        if name.startswith("SHIPPER_"):
            monkeypatch.delenv(name)
