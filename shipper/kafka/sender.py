"""The Kafka stage: WAL frames out, finished frames back.

Records leave the WAL in order; each partition has one worker with at most one batch in flight,
so a chain (one key, one partition) reaches Kafka in seq order. A frame's Kafka batches (format 3:
built and compressed on the ingest side, kafka/prebuild.py) go to their partition's queue whole and
are sent as they are, only their header written again (producer state, timestamps, CRC); its runs of
values (a format-2 frame, or what the ingest could not build) are built into batches here, between
them, in queue order. A frame's WAL position travels with its records and comes back as the ack: a
frame is finished only when every record in it is acknowledged (or turned into a gap record, for one
the broker refused for good), and finished frames are handed on in WAL order to the acknowledgements
the sender was given (state.Acknowledgements persists them and moves the WAL's ack cursor). A failed
batch is sent again from memory, with backoff, forever: an outage is normal, the WAL is the buffer.
A prebuilt batch the broker refuses for good is read back into its records and split like any other.
"""
from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Awaitable, Callable, Protocol

from aiokafka.errors import (
    CorruptRecordException,
    InvalidTopicError,
    KafkaConnectionError,
    KafkaError,
    MessageSizeTooLargeError,
    RecordTooLargeError,
)

from ..batch import Frame, KafkaBatch, Packed, Run, Sealed, decode_batch
from ..metrics import Metrics, timed
from ..model import LossEvent, LossReason
from ..wal import Wal, WalPosition
from .client import KafkaSink, _describe, backoff_delays
from .wire import _BATCH_HEADER, _RECORD_OVERHEAD, Span, _kafka_records, _SpanBatch, batch_records, partition_of

log = logging.getLogger("shipper.kafka")

# Errors after which sending the same record again cannot succeed.
_REJECTED = (MessageSizeTooLargeError, RecordTooLargeError, CorruptRecordException, InvalidTopicError)


class FinishedFrames(Protocol):
    """What the sender hands finished frames to (state.Acknowledgements): each frame once, in WAL
    order, with the source positions and chain heads its header carries."""

    def frame_acknowledged(self, end: WalPosition, sources: dict, chains: dict) -> None: ...


@dataclass(slots=True)
class _FrameTicket:
    """One WAL frame in flight: acknowledged when `pending` reaches zero."""

    end: WalPosition
    sources: dict
    chains: dict
    read_time: float
    pending: int
    nbytes: int


@dataclass(slots=True)
class _Run:
    """Records values[start:stop] of one chain from one WAL frame, seqs first_seq, first_seq + 1, ...
    A partition queue holds runs, not a Python object per record."""

    ticket: _FrameTicket
    chain: str
    key: bytes
    first_seq: int
    values: list
    start: int
    stop: int

    @property
    def count(self) -> int:
        return self.stop - self.start

    def span(self) -> Span:
        values = self.values
        if type(values) is Packed:
            values = (values.payload, values.ends)
        return self.key, self.first_seq, values, self.start, self.stop

    def take(self, count: int) -> "_Run":
        """The first `count` records as a run of their own; this run keeps the rest."""
        head = _Run(self.ticket, self.chain, self.key, self.first_seq, self.values, self.start, self.start + count)
        self.start += count
        self.first_seq += count
        return head

    def singles(self) -> list["_Run"]:
        return [_Run(self.ticket, self.chain, self.key, self.first_seq + i, self.values, self.start + i,
                     self.start + i + 1) for i in range(self.count)]


@dataclass(slots=True)
class _Prebuilt:
    """A Kafka batch built on the ingest side (batch.KafkaBatch, from a format-3 frame): sent whole, as it
    is, after the items before it in its partition's queue."""

    ticket: _FrameTicket
    batch: KafkaBatch

    @property
    def count(self) -> int:
        return self.batch.count

    def runs(self) -> list[_Run]:
        """Its records read back (decompressed) as runs of values, one per run its header lists: to send
        them the way a format-2 frame's runs are sent."""
        records = batch_records(self.batch.data)
        if len(records) != self.batch.count:
            raise ValueError(f"a prebuilt Kafka batch holds {len(records)} records, its frame says {self.batch.count}")
        runs: list[_Run] = []
        index = 0
        for run in self.batch.runs:
            key = run.chain.encode()
            values = []
            for seq in range(run.first_seq, run.first_seq + run.count):
                record_key, value, headers = records[index]
                if record_key != key or dict(headers).get("event_id") != b"%s:%d" % (key, seq):
                    raise ValueError(f"record {index} of a prebuilt Kafka batch is not {run.chain}:{seq}")
                values.append(value)
                index += 1
            runs.append(_Run(self.ticket, run.chain, key, run.first_seq, values, 0, run.count))
        return runs

    def singles(self) -> list[_Run]:
        return [single for run in self.runs() for single in run.singles()]


@dataclass(slots=True)
class _PartitionQueue:
    items: deque = field(default_factory=deque)
    ready: asyncio.Event = field(default_factory=asyncio.Event)


# Called with a refused record's loss event; resolves once the gap record is durable in the WAL.
GapWriter = Callable[[str, LossEvent, int, str], Awaitable[None]]


def _frame_size(frame: "Frame | bytes") -> int:
    return frame.nbytes if type(frame) is Frame else len(frame)


class Sender:
    """Pumps durable WAL frames to Kafka and hands each finished frame to `acks`."""

    def __init__(self, wal: Wal, acks: FinishedFrames, sink: KafkaSink, metrics: Metrics, write_gap: GapWriter,
                 *, hot_limit_bytes: int = 8 << 20) -> None:
        self.wal = wal
        self.acks = acks
        self.sink = sink
        self.metrics = metrics
        self._encode_cpu, self._compress_cpu = (metrics.stage_cpu.labels(stage) for stage in ("kafka_encode", "compress"))
        self.write_gap = write_gap
        self.visible = wal.acked             # frames before this are durable and may be sent
        self._visible_changed = asyncio.Event()
        self._read_position = wal.acked
        # Frames just committed, kept so that sending them needs no read back from the WAL file (which
        # is then only read after a restart, or when sending falls behind by more than the limit).
        self._hot: deque[tuple[WalPosition, WalPosition, bytes]] = deque()
        self._hot_bytes = 0
        self.hot_limit_bytes = hot_limit_bytes
        self._tickets: deque[_FrameTicket] = deque()
        self._in_flight_bytes = 0
        self._room = asyncio.Event()
        self._queues: dict[tuple[str, int], _PartitionQueue] = {}
        self._workers: asyncio.TaskGroup | None = None
        self._stopping = asyncio.Event()
        self._restarting = False
        self.last_success = 0.0

    # -- interface for the pipeline --------------------------------------------------------------
    def offer(self, start: WalPosition, end: WalPosition, frame: "Frame | bytes") -> None:
        """A frame the pipeline has just appended to the WAL (not yet durable: it is sent once visible):
        its batch.Frame (the batch itself, not to be decoded), or its payload."""
        if self._hot_bytes + _frame_size(frame) <= self.hot_limit_bytes:
            self._hot.append((start, end, frame))
            self._hot_bytes += _frame_size(frame)

    def _hot_frames(self, max_bytes: int) -> list[tuple[WalPosition, WalPosition, "Frame | bytes"]]:
        """The frames next to send, from memory, if memory holds them (else [] and the WAL is read)."""
        hot = self._hot
        while hot and hot[0][1] <= self._read_position:
            self._hot_bytes -= _frame_size(hot.popleft()[2])
        frames: list[tuple[WalPosition, WalPosition, Frame | bytes]] = []
        expected = self.wal.frame_start(self._read_position)
        taken = 0
        while hot and hot[0][0] == expected and hot[0][1] <= self.visible and taken < max_bytes:
            frame = hot.popleft()
            self._hot_bytes -= _frame_size(frame[2])
            taken += _frame_size(frame[2])
            frames.append(frame)
            expected = self.wal.frame_start(frame[1])
        return frames

    def make_visible(self, position: WalPosition) -> None:
        if position > self.visible:
            self.visible = position
            self._visible_changed.set()

    @property
    def drained(self) -> bool:
        return self.wal.acked >= self.visible and not self._tickets

    # -- tasks -----------------------------------------------------------------------------------
    async def run(self, stopping: asyncio.Event) -> None:
        """Runs until cancelled: reading frames, partition workers."""
        self._stopping = stopping
        if not await self.sink.start(stopping):
            return
        async with asyncio.TaskGroup() as group:
            self._workers = group
            await self._read_frames_forever()

    async def _read_frames_forever(self) -> None:
        max_in_flight = self.sink.config.max_in_flight_bytes
        while True:
            if self._read_position >= self.visible:
                self._visible_changed.clear()
                await self._visible_changed.wait()
                continue
            while self._in_flight_bytes >= max_in_flight:
                self._room.clear()
                await self._room.wait()
            frames = self._hot_frames(4 << 20)
            if not frames:
                self.metrics.wal_reads.inc()
                frames = await asyncio.to_thread(
                    lambda: list(self.wal.read_frames(self._read_position, self.visible, max_bytes=4 << 20)))
            for _start, end, payload in frames:
                await self._dispatch(end, payload)
                self._read_position = end

    async def _dispatch(self, end: WalPosition, frame: "Frame | bytes") -> None:
        if type(frame) is Frame:
            batch, nbytes = frame.batch, frame.nbytes
        else:
            batch, nbytes = decode_batch(frame), len(frame)
        ticket = _FrameTicket(end, batch.sources, batch.chains, batch.read_time, batch.record_count, nbytes)
        self._tickets.append(ticket)
        self._in_flight_bytes += nbytes
        self.metrics.wal_unacked_records.inc(ticket.pending)
        if ticket.pending == 0:
            self._complete(ticket)
            return
        if not batch.kafka:
            for run in batch.runs:
                await self._dispatch_run(ticket, run)
            return
        # A run goes before the Kafka batch its `before` names (a record too large for a request, between two
        # batches of its chain): every chain's records reach their partition's queue in seq order.
        runs = sorted(batch.runs, key=lambda run: run.before)
        next_run = 0
        for index, kafka_batch in enumerate(batch.kafka):
            while next_run < len(runs) and runs[next_run].before <= index:
                await self._dispatch_run(ticket, runs[next_run])
                next_run += 1
            await self._dispatch_prebuilt(ticket, kafka_batch)
        for run in runs[next_run:]:
            await self._dispatch_run(ticket, run)

    async def _dispatch_run(self, ticket: _FrameTicket, run: Run) -> None:
        if not run.values:
            return
        key = run.chain.encode()
        partitions = await self._partitions(run.topic)
        queue = self._queue(run.topic, partition_of(key, partitions))
        if type(run.values) is Sealed:          # a batch from memory: one run per sealed blob
            for index, packed in run.values.packed_parts():
                queue.items.append(_Run(ticket, run.chain, key, run.first_seq + index, packed, 0, len(packed)))
        else:
            queue.items.append(_Run(ticket, run.chain, key, run.first_seq, run.values, 0, len(run.values)))
        queue.ready.set()

    async def _dispatch_prebuilt(self, ticket: _FrameTicket, kafka_batch: KafkaBatch) -> None:
        partitions = await self._partitions(kafka_batch.topic)
        if partitions == kafka_batch.partitions:
            queue = self._queue(kafka_batch.topic, kafka_batch.partition)
            queue.items.append(_Prebuilt(ticket, kafka_batch))
            queue.ready.set()
            return
        # The topic's partition count changed since the frame was built: a chain's records must go where
        # murmur2 of its key modulo the count puts them now, the partition its next records go to, so the
        # batch is read back into its runs and each run is dispatched as a format-2 frame's run is, in the
        # batch's order (each chain's records stay in seq order in their new partition's queue).
        log.info("topic %s has %d partitions now, %d when a WAL frame was built: its batch for partition %d is "
                 "sent again by chain", kafka_batch.topic, partitions, kafka_batch.partitions, kafka_batch.partition)
        for run in _Prebuilt(ticket, kafka_batch).runs():
            queue = self._queue(kafka_batch.topic, partition_of(run.key, partitions))
            queue.items.append(run)
            queue.ready.set()

    async def _partitions(self, topic: str) -> int:
        delays = backoff_delays(self.sink.config.retry_backoff_ms, self.sink.config.retry_backoff_max_ms)
        while True:
            try:
                return await self.sink.partitions(topic)
            except KafkaError as exc:
                self.metrics.send_errors.labels(reason=type(exc).__name__).inc()
                log.warning("no metadata for topic %s yet: %s", topic, _describe(exc))
                await asyncio.sleep(next(delays))

    def _queue(self, topic: str, partition: int) -> _PartitionQueue:
        queue = self._queues.get((topic, partition))
        if queue is None:
            queue = self._queues[(topic, partition)] = _PartitionQueue()
            assert self._workers is not None
            self._workers.create_task(self._partition_worker(topic, partition, queue), name=f"send-{topic}-{partition}")
        return queue

    async def _partition_worker(self, topic: str, partition: int, queue: _PartitionQueue) -> None:
        limit = self.sink.config.max_request_bytes - _RECORD_OVERHEAD
        budget = self.sink.config.batch_bytes - _BATCH_HEADER
        items = queue.items
        # One batch of a partition is in flight at a time (the order of its records is the order of
        # the chain); the next one is built and compressed meanwhile, so the broker's turn and ours
        # overlap instead of alternating.
        in_flight: asyncio.Task | None = None
        try:
            while True:
                if not items:
                    if in_flight is not None:
                        await in_flight
                        in_flight = None
                        continue
                    queue.ready.clear()
                    await queue.ready.wait()
                    continue
                while self.sink.producer is None:
                    await asyncio.sleep(0.1)
                head = items[0]
                if type(head) is _Prebuilt:           # built and compressed on the ingest side already
                    items.popleft()
                    if in_flight is not None:
                        await in_flight
                    in_flight = asyncio.ensure_future(self._send_until_acked(topic, partition, [head]))
                    continue
                if len(head.values[head.start]) > limit:
                    if in_flight is not None:     # its gap record comes after the records before it
                        await in_flight
                        in_flight = None
                    refused = head.take(1)
                    if not head.count:
                        items.popleft()
                    await self._refuse(refused, topic, f"record of {len(refused.values[refused.start])} bytes "
                                                       f"exceeds kafka.max_request_bytes "
                                                       f"({self.sink.config.max_request_bytes})")
                    continue
                runs, built = timed(self._encode_cpu, self._take_batch, items, budget, limit)
                # On a worker thread: the loop meanwhile gets the batch before on its way (libsnappy
                # releases the GIL, so the ingest thread runs too).
                await asyncio.to_thread(timed, self._compress_cpu, built[0].compress_now)
                if in_flight is not None:
                    await in_flight
                in_flight = asyncio.ensure_future(self._send_until_acked(topic, partition, runs, built))
        finally:
            if in_flight is not None and not in_flight.done():
                in_flight.cancel()

    def _take_batch(self, items: deque, budget: int, limit: int) -> tuple[list[_Run], tuple[_SpanBatch, int, int]]:
        """The next batch from the head of a partition's queue: at most `budget` bytes of records, and
        the runs it takes (the queue keeps the rest)."""
        candidates: list[_Run] = []
        for item in items:
            if type(item) is not _Run or len(candidates) == 64:     # a prebuilt batch goes on its own
                break
            candidates.append(item)
        records, taken, value_bytes = _kafka_records([run.span() for run in candidates], budget, limit, _BATCH_HEADER)
        runs: list[_Run] = []
        for run, count in zip(candidates, taken):
            if count == run.count:
                items.popleft()
                runs.append(run)
            elif count:
                runs.append(run.take(count))
        return runs, self._span_batch(records, taken, value_bytes)

    def _batch(self, runs: list[_Run]) -> tuple[_SpanBatch, int, int]:
        """All of `runs` as one batch (a resend, or a part of a refused batch)."""
        return self._span_batch(*_kafka_records([run.span() for run in runs], 1 << 62, 1 << 62, _BATCH_HEADER))

    def _span_batch(self, records: bytearray, taken: list[int], value_bytes: int) -> tuple[_SpanBatch, int, int]:
        count = sum(taken)
        return _SpanBatch(self.sink.codec, records, count), count, value_bytes

    async def _built(self, runs: "list[_Run] | list[_Prebuilt]") -> tuple[_SpanBatch, int, int]:
        """The batch to send for `runs` (again): a prebuilt batch as it is (a copy, its header written at
        the send), else built and compressed anew (compressed on a worker thread, not the loop's)."""
        if len(runs) == 1 and type(runs[0]) is _Prebuilt:
            kafka_batch = runs[0].batch
            return _SpanBatch.prebuilt(kafka_batch.data), kafka_batch.count, kafka_batch.value_bytes
        built = self._batch(runs)
        await asyncio.to_thread(timed, self._compress_cpu, built[0].compress_now)
        return built

    async def _send_until_acked(self, topic: str, partition: int, runs: "list[_Run] | list[_Prebuilt]",
                                built: tuple[_SpanBatch | None, int, int] | None = None) -> None:
        delays = backoff_delays(self.sink.config.retry_backoff_ms, self.sink.config.retry_backoff_max_ms)
        attempt = 0
        while True:
            try:
                if built is None or built[0] is None:
                    built = await self._built(runs)
                producer = self.sink.producer
                if producer is None:
                    raise KafkaConnectionError("producer is restarting")
                batch, count, value_bytes = built
                built = (None, count, value_bytes)    # aiokafka owns the batch now: a retry rebuilds
                future = await producer.send_batch(batch, topic, partition=partition)
                await future
            except _REJECTED as exc:
                await self._fresh_idempotent_producer(exc)
                singles = [single for run in runs for single in run.singles()]
                if len(singles) == 1:
                    await self._refuse(singles[0], topic, _describe(exc))
                    return
                # Find the refused record(s) by halves: the rest of the batch must still arrive, in order.
                half = len(singles) // 2
                await self._send_until_acked(topic, partition, singles[:half])
                await self._send_until_acked(topic, partition, singles[half:])
                return
            except (KafkaError, asyncio.TimeoutError, OSError) as exc:
                attempt += 1
                self.metrics.send_errors.labels(reason=type(exc).__name__).inc()
                self.metrics.kafka_connected.set(0)
                if attempt == 1 or attempt % 20 == 0:
                    log.warning("send to %s[%d] failed (attempt %d), retrying: %s", topic, partition, attempt,
                                _describe(exc))
                self.metrics.retries.inc()
                await asyncio.sleep(next(delays))
                await self._pick_up_rotated_secret()
                continue
            self.last_success = time.monotonic()
            self.metrics.kafka_connected.set(1)
            self.metrics.records_shipped.inc(count)
            self.metrics.bytes_shipped.inc(value_bytes)
            self.metrics.kafka_batches.labels(built="ingest" if type(runs[0]) is _Prebuilt else "sender").inc()
            self.metrics.wal_unacked_records.dec(count)
            for run in runs:
                ticket = run.ticket
                ticket.pending -= run.count
                if ticket.pending == 0:
                    self._complete(ticket)
            return

    async def _fresh_idempotent_producer(self, exc: BaseException) -> None:
        """An idempotent producer numbered the refused batch: every later batch of that partition would
        now be out of sequence (OutOfOrderSequenceException, forever). A new producer id starts clean."""
        if not self.sink.idempotent or self._restarting:
            return
        self._restarting = True
        try:
            log.warning("kafka refused a batch for good (%s): starting a new idempotent producer", _describe(exc))
            await self.sink.restart(self._stopping)
        finally:
            self._restarting = False

    async def _pick_up_rotated_secret(self) -> None:
        """Kubernetes rotates Secrets in place: a changed password file means a new producer."""
        if self.sink.secret_changed() and not self._restarting:
            self._restarting = True
            try:
                log.info("kafka.sasl.password_file changed: reconnecting with the new password")
                await self.sink.restart(self._stopping)
            finally:
                self._restarting = False

    async def _refuse(self, item: _Run, topic: str, reason: str) -> None:
        """A record Kafka will never take (`item` is a run of one): its chain gets a gap record naming it;
        then it counts as done."""
        value = item.values[item.start]
        try:
            record = json.loads(value)
            record_hash = record["seal"]["hash"]
            source = record.get("source", {})
        except (ValueError, KeyError):
            record_hash, source = "", {}
        loss = LossEvent(path=source.get("path", ""), reason=LossReason.REJECTED_BY_BROKER, bytes_lost=len(value),
                         offset=source.get("offset", 0), detail=f"topic {topic}: {reason}")
        self.metrics.loss_events.labels(reason=loss.reason.value).inc()
        self.metrics.lost_bytes.labels(reason=loss.reason.value).inc(len(value))
        log.error("kafka refused record %s:%d for good (%s); writing a gap record", item.chain, item.first_seq, reason)
        await self.write_gap(item.chain, loss, item.first_seq, record_hash)
        self.metrics.wal_unacked_records.dec()
        ticket = item.ticket
        ticket.pending -= 1
        if ticket.pending == 0:
            self._complete(ticket)

    def _complete(self, _ticket: _FrameTicket) -> None:
        # Frames complete out of order across partitions; only the completed prefix is finished.
        tickets = self._tickets
        now = time.time()
        while tickets and tickets[0].pending == 0:
            done = tickets.popleft()
            self._in_flight_bytes -= done.nbytes
            if done.read_time:
                self.metrics.lag.observe(max(0.0, now - done.read_time))
            self.acks.frame_acknowledged(done.end, done.sources, done.chains)
        self._room.set()
