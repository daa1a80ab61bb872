"""Wires the stages: discover -> tail -> parse -> enrich -> seal (Ingest) -> WAL -> Kafka (Sender).

Owns no logic of a stage, only the order of things: a batch is committed to the WAL before the
sender may see it; the frames the sender finishes go to the acknowledgements, which this flushes
every ACK_INTERVAL_S (the state snapshot moves with the acks, and state.db is pruned there, the
ingest told what went); SIGTERM stops reading, attests every chain, waits for acks up to the grace
period and closes cleanly.
"""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Awaitable, Callable, TypeVar

from .batch import Batch, Frame, encode_batch, encode_frame
from .enrich import build_provider
from .config import FsyncMode, Settings
from .ingest import Ingest, SigningKey
from .kafka import KafkaSink, Prebuilder, Sender
from .metrics import Metrics, timed
from .model import LossEvent
from .state import Acknowledgements, StateStore, append_keeping_reserve, roll_forward
from .wal import HEADER_SIZE, Wal, WalWriteError

log = logging.getLogger("shipper.pipeline")

ACK_INTERVAL_S = 0.2

_T = TypeVar("_T")


@dataclass(slots=True)
class PipelineStatus:
    running: bool = False
    last_tick: float = 0.0          # monotonic time the ingest loop last went round
    draining: bool = False
    backpressure: bool = False
    wal_error: str = ""


class Pipeline:
    def __init__(self, settings: Settings, metrics: Metrics | None = None, provider=None, shard=None) -> None:
        self.settings = settings
        self.shard = shard
        self.metrics = metrics or Metrics()
        self.status = PipelineStatus()
        # Always a provider: without Kubernetes it still runs the body stage (redaction, ids).
        self._provider = provider if provider is not None else build_provider(settings, self.metrics)
        self.wal: Wal | None = None
        self.sender: Sender | None = None
        self.acks: Acknowledgements | None = None
        self.ingest: Ingest | None = None
        self._ahead: asyncio.Future | None = None     # the next batch, being read while one is written
        self._prebuild: Callable[[Batch], Batch] | None = None    # Kafka batches built beside the ingest

    # -- start-up --------------------------------------------------------------------------------
    def _open_state(self) -> tuple[Wal, StateStore, Ingest]:
        settings = self.settings
        wal = Wal(settings.wal.dir, max_bytes=settings.wal.max_bytes, segment_bytes=settings.wal.segment_bytes)
        if wal.recovery.truncated_at is not None:
            log.warning("WAL recovery cut %d bytes at %s (%s); those lines are read again from their files",
                        wal.recovery.truncated_bytes, wal.recovery.truncated_at, wal.recovery.reason)
        state = StateStore(settings.state.dir)
        snapshot = state.load()
        rolled = roll_forward(snapshot, wal)
        if rolled:
            log.info("rolled source positions forward through %d unacknowledged WAL frames", rolled)
        ingest = Ingest(settings, snapshot, self.metrics, self._provider,
                        SigningKey(settings.seal.signing_key_file, settings.seal.key_id), shard=self.shard)
        self._snapshot = snapshot
        self.metrics.wal_limit_bytes.set(settings.wal.max_bytes)
        self.metrics.wal_bytes.set(wal.bytes_on_disk)
        self.metrics.wal_segments.set(wal.segment_count)
        self.metrics.state_bytes.set(state.bytes_on_disk)
        return wal, state, ingest

    async def run(self, stopping: asyncio.Event) -> None:
        """Run until `stopping` is set, then drain within the grace period."""
        wal, state, ingest = await asyncio.to_thread(self._open_state)
        self.wal, self.ingest = wal, ingest
        sink = KafkaSink(self.settings.kafka, self.metrics)
        # Frames hold compressed Kafka batches for the topics whose partition count the sender knows.
        self._prebuild = Prebuilder(self.settings.kafka, sink.partition_counts, self.metrics).prebuild
        loop = asyncio.get_running_loop()

        async def write_gap(chain: str, loss: LossEvent, seq: int, record_hash: str) -> None:
            done = loop.create_future()
            ingest.add_external_gap(chain, loss, seq, record_hash, lambda: done.done() or done.set_result(None))
            await done

        # The ack flusher prunes state.db too, and hands the chains it pruned to the ingest.
        acks = self.acks = Acknowledgements(state, self._snapshot, wal, self.metrics,
                                            prune_after_s=self.settings.state.prune_after_s, on_pruned=ingest.forget)
        sender = self.sender = Sender(wal, acks, sink, self.metrics, write_gap,
                                      hot_limit_bytes=2 * self.settings.wal.commit_bytes)
        sender.make_visible(wal.written)
        self.status.running = True
        self.metrics.up.set(1)
        try:
            async with asyncio.TaskGroup() as group:
                send_task = group.create_task(sender.run(stopping), name="sender")
                flush_task = group.create_task(_flush_every(acks, ACK_INTERVAL_S), name="ack-flusher")
                provider_task = group.create_task(self._provider.run(), name="metadata")
                await self._ingest_until(stopping, wal, ingest, sender)
                self.status.draining = True
                await self._drain(wal, ingest, sender)
                send_task.cancel()
                flush_task.cancel()
                provider_task.cancel()
        finally:
            self.status.running = False
            self.metrics.up.set(0)
            await sink.stop()
            await asyncio.to_thread(self._close, wal, state, ingest)

    @staticmethod
    def _close(wal: Wal, state: StateStore, ingest: Ingest) -> None:
        ingest.close()
        wal.close()
        state.close()

    # -- the ingest loop -------------------------------------------------------------------------
    async def _ingest_until(self, stopping: asyncio.Event, wal: Wal, ingest: Ingest, sender: Sender) -> None:
        config = self.settings
        commit_bytes = config.wal.commit_bytes
        # A batch is commit_bytes plus at most one read of records (about 4x the source bytes).
        room_needed = commit_bytes + 4 * ingest.read_size
        poll = config.sources.poll_interval_s
        interval_sync = config.wal.fsync is FsyncMode.interval
        sync_every = config.wal.fsync_interval_ms / 1000
        last_sync = time.monotonic()
        # The next batch is read and sealed on one worker thread while the last one is written and
        # fsynced on another: the write copies megabytes into the page cache and the fsync waits on
        # the disk, and reading behind them left the ingest idle that long. Only this loop calls into
        # the ingest, one call at a time; a batch read ahead is committed before stopping.
        try:
            while not stopping.is_set():
                self.status.last_tick = time.monotonic()
                if self._ahead is not None:
                    collected, self._ahead = await self._ahead, None
                elif not wal.has_room(room_needed) and wal.unacked_bytes > 0:
                    await self._pause_for_room(stopping, wal, room_needed)
                    continue
                else:
                    collected = await asyncio.to_thread(_collect_encoded, ingest, commit_bytes, self._prebuild)
                if collected is None:
                    if interval_sync and wal.written > wal.durable:
                        await self._sync(wal, sender)
                    await ingest.wait_for_change(stopping, poll)
                    continue
                frame, callbacks = collected
                if wal.has_room(room_needed + frame.nbytes):
                    self._ahead = asyncio.ensure_future(asyncio.to_thread(_collect_encoded, ingest, commit_bytes,
                                                                          self._prebuild))
                await self._commit(stopping, wal, sender, frame)
                if not interval_sync or time.monotonic() - last_sync >= sync_every:
                    await self._sync(wal, sender)
                    last_sync = time.monotonic()
                for callback in callbacks:
                    callback()
            if self._ahead is not None:
                collected, self._ahead = await self._ahead, None
                if collected is not None:
                    await self._commit(stopping, wal, sender, collected[0])
                    await self._sync(wal, sender)
                    for callback in collected[1]:
                        callback()
        finally:
            if self._ahead is not None:   # failing or cancelled: let the worker thread finish first
                await asyncio.wait({self._ahead})
                self._ahead = None

    async def _pause_for_room(self, stopping: asyncio.Event, wal: Wal, needed: int) -> None:
        if not self.status.backpressure:
            log.warning("WAL full (%d of %d bytes): reading paused until Kafka acknowledges records",
                        wal.bytes_on_disk, wal.max_bytes)
        self.status.backpressure = True
        self.metrics.backpressure.set(1)
        started = time.monotonic()
        # Acks free space; with nothing unacknowledged there is nothing to wait for, and a frame
        # larger than the whole limit is written anyway rather than never.
        while not wal.has_room(needed) and wal.unacked_bytes > 0 and not stopping.is_set():
            waiter = asyncio.ensure_future(self.acks.wait_progress())
            stop_waiter = asyncio.ensure_future(stopping.wait())
            await asyncio.wait({waiter, stop_waiter}, timeout=1.0, return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
            stop_waiter.cancel()
            self.status.last_tick = time.monotonic()
            if self.ingest is not None and self._ahead is None:   # never beside a batch being read
                await asyncio.to_thread(self.ingest.watch_rotations)
        self.metrics.backpressure_seconds.inc(time.monotonic() - started)
        self.status.backpressure = False
        self.metrics.backpressure.set(0)
        log.info("WAL has room again: reading resumed")

    async def _until_written(self, attempt: Callable[[], Awaitable[_T]], *, reading_paused: bool) -> _T:
        """`attempt()` again and again while the disk refuses it, with backoff; never gives up (what
        waits is a sealed batch, or the fsync that makes it visible). With `reading_paused` (a commit),
        health shows the error and the ingest loop counts as alive meanwhile."""
        delay = 0.2
        while True:
            try:
                return await attempt()
            except WalWriteError as exc:
                self.metrics.wal_write_errors.labels(errno=str(exc.errno)).inc()
                if reading_paused:
                    self.status.wal_error = str(exc)
                    self.status.backpressure = True
                    self.metrics.backpressure.set(1)
                log.error("%s; %sretrying in %.1fs", exc, "reading paused, " if reading_paused else "", delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                if reading_paused:
                    self.status.last_tick = time.monotonic()

    async def _commit(self, stopping: asyncio.Event, wal: Wal, sender: Sender, frame: Frame) -> None:
        """Append the frame, retrying while the disk refuses (the batch waits in memory, reading
        stays paused meanwhile); never gives up on a sealed batch."""

        async def append():
            if not wal.has_room(frame.nbytes) and wal.unacked_bytes > 0:
                await self._pause_for_room(stopping, wal, frame.nbytes)
                if stopping.is_set() and not wal.has_room(frame.nbytes) and wal.unacked_bytes > 0:
                    # Not written, not acknowledged: its lines are read again on the next start.
                    return None
            return await asyncio.to_thread(timed, self.metrics.stage_cpu.labels("wal_write"), append_keeping_reserve,
                                           wal, frame)

        end = await self._until_written(append, reading_paused=True)
        if end is None:
            return
        if self.status.wal_error:
            log.info("WAL writes succeed again")
            self.status.wal_error = ""
            self.status.backpressure = False
            self.metrics.backpressure.set(0)
        sender.offer(wal.last_start, end, frame)
        self.metrics.wal_commits.inc()
        self.metrics.wal_written_bytes.inc(frame.nbytes + HEADER_SIZE)
        self.metrics.wal_bytes.set(wal.bytes_on_disk)
        self.metrics.wal_segments.set(wal.segment_count)

    async def _sync(self, wal: Wal, sender: Sender) -> None:
        fsync_cpu = self.metrics.stage_cpu.labels("fsync")
        durable = await self._until_written(lambda: asyncio.to_thread(timed, fsync_cpu, wal.sync),
                                            reading_paused=False)
        sender.make_visible(durable)

    # -- shutdown --------------------------------------------------------------------------------
    async def _drain(self, wal: Wal, ingest: Ingest, sender: Sender) -> None:
        deadline = time.monotonic() + self.settings.shutdown_grace_s
        final = await asyncio.to_thread(ingest.final_checkpoints)
        if final is not None:
            payload = encode_batch(final)
            if wal.has_room(len(payload)):
                try:
                    await asyncio.to_thread(wal.append, [payload])
                    await self._sync(wal, sender)
                except WalWriteError as exc:
                    log.error("final checkpoints not written: %s", exc)
        while not sender.drained and time.monotonic() < deadline:
            try:
                await asyncio.wait_for(self.acks.wait_progress(),
                                       timeout=max(0.05, min(1.0, deadline - time.monotonic())))
            except asyncio.TimeoutError:
                pass
        await self.acks.flush()
        if sender.drained:
            log.info("drained: every record is acknowledged by Kafka")
        else:
            log.warning("grace period over with %d unacknowledged WAL bytes; they are sent on the next start",
                        wal.unacked_bytes)


async def _flush_every(acks: Acknowledgements, seconds: float) -> None:
    while True:
        await asyncio.sleep(seconds)
        await acks.flush()


def _collect_encoded(ingest: Ingest, commit_bytes: int, prebuild: Callable[[Batch], Batch] | None = None):
    """On a worker thread: the next batch read and sealed, its Kafka batches built (`prebuild`, timed as
    kafka_encode and compress), encoded as a WAL frame."""
    collected = ingest.collect(commit_bytes)
    if collected is None:
        return None
    batch, callbacks = collected
    if prebuild is not None:
        batch = prebuild(batch)
    return timed(ingest.metrics.stage_cpu.labels("frame_encode"), encode_frame, batch), callbacks
