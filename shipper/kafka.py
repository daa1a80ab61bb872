"""The Kafka stage: WAL frames out, acknowledgements back.

Records leave the WAL in order; each partition has one worker with at most one batch in flight,
so a chain (one key, one partition) reaches Kafka in seq order. A frame's WAL position travels with
its records and comes back as the ack: the ack cursor moves past a frame only when every record in
it is acknowledged (or turned into a gap record, for one the broker refused for good). A failed
batch is sent again from memory, with backoff, forever: an outage is normal, the WAL is the buffer.
"""
from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import random
import ssl
import struct
import time
from array import array
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Awaitable, Callable

import crc32c
import cramjam
from aiokafka import AIOKafkaProducer
from aiokafka.errors import (
    CorruptRecordException,
    InvalidTopicError,
    KafkaConnectionError,
    KafkaError,
    MessageSizeTooLargeError,
    RecordTooLargeError,
    UnsupportedVersionError,
)
from aiokafka.partitioner import murmur2
from aiokafka.producer.message_accumulator import BatchBuilder
from aiokafka.record.default_records import _DefaultRecordBatchBuilderPy
from aiokafka.record.util import encode_varint_py

from .batch import Frame, Packed, Sealed, decode_batch
from .config import KafkaConfig, SecurityProtocol
from .metrics import Metrics
from .model import LossEvent, LossReason
from .native import module as _native
from .seal import SCHEMA_BYTES
from .state import Snapshot, StateStore
from .wal import Wal, WalPosition, WalWriteError

log = logging.getLogger("shipper.kafka")

# Errors after which sending the same record again cannot succeed.
_REJECTED = (MessageSizeTooLargeError, RecordTooLargeError, CorruptRecordException, InvalidTopicError)
_RECORD_OVERHEAD = 512  # batch and record headers around a value, generously
_BATCH_HEADER = _DefaultRecordBatchBuilderPy.HEADER_STRUCT.size
_CRC = struct.Struct(">I")
_CODECS = {"none": 0, "gzip": 1, "snappy": 2, "lz4": 3, "zstd": 4}
# The xerial snappy stream header: marker -126, "SNAPPY\0", version 1, compatible version 1.
_XERIAL_HEADER = b"\x82SNAPPY\x00" + (1).to_bytes(4, "big") + (1).to_bytes(4, "big")


class KafkaSetupError(Exception):
    """The Kafka client cannot be configured (e.g. an unreadable CA or password file)."""


def read_secret_file(path: str, what: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError as exc:
        raise KafkaSetupError(f"{what} file {path}: {exc.strerror}") from None


def ssl_context_for(config: KafkaConfig) -> ssl.SSLContext | None:
    if config.security_protocol not in (SecurityProtocol.SSL, SecurityProtocol.SASL_SSL):
        return None
    tls = config.tls
    try:
        context = ssl.create_default_context(cafile=tls.ca_file) if tls.ca_file else ssl.create_default_context()
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.check_hostname = tls.check_hostname
        if tls.cert_file:
            context.load_cert_chain(tls.cert_file, tls.key_file)
    except (OSError, ssl.SSLError) as exc:
        raise KafkaSetupError(f"kafka.tls: cannot load certificates: {exc}") from None
    return context


def producer_options(config: KafkaConfig, *, idempotent: bool) -> dict:
    options = dict(
        bootstrap_servers=config.bootstrap_servers,
        client_id=config.client_id,
        acks="all",
        enable_idempotence=idempotent,
        compression_type=None if config.compression.value == "none" else config.compression.value,
        max_batch_size=config.batch_bytes,
        max_request_size=config.max_request_bytes,
        linger_ms=config.linger_ms,
        request_timeout_ms=config.request_timeout_ms,
        retry_backoff_ms=config.retry_backoff_ms,
        security_protocol=config.security_protocol.value,
        ssl_context=ssl_context_for(config),
    )
    if config.security_protocol in (SecurityProtocol.SASL_SSL, SecurityProtocol.SASL_PLAINTEXT):
        options.update(sasl_mechanism=config.sasl.mechanism.value, sasl_plain_username=config.sasl.username,
                       sasl_plain_password=read_secret_file(config.sasl.password_file, "kafka.sasl.password_file"))
    return options


def partition_of(key: bytes, partitions: int) -> int:
    """Kafka's Java default partitioner for keyed records: murmur2, sign bit cleared, modulo."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


# (key, first_seq, values, start, stop): records values[start:stop]; values is a list of bytes or, for a
# run decoded from a WAL frame, (payload, ends) as in batch.Packed.
Span = tuple[bytes, int, "list[bytes] | tuple[bytes, array]", int, int]


def kafka_records_py(spans: list[Span], budget: int, limit: int, reserve: int = 0) -> tuple[bytearray, list[int], int]:
    """The records of a v2 record batch for spans of sealed values: (records, taken per span, value bytes),
    records after `reserve` zero bytes (room for the batch header).

    Each record: key = the chain, headers `schema` and `event_id` (`<chain>:<seq>`), timestamp delta 0,
    offset delta = its index. Records are taken in order while the section stays within `budget` bytes
    (the first always) and stop before a value longer than `limit`. The reference for the native
    `_native.kafka_records`, which builds the same bytes."""
    out = bytearray()
    taken: list[int] = []
    offset = value_bytes = 0
    for key, first_seq, values, start, stop in spans:
        if isinstance(values, tuple):
            values = Packed(*values)
        count = 0
        full = False
        for index in range(start, stop):
            value = values[index]
            if len(value) > limit:
                full = True
                break
            record = bytearray(b"\x00\x00")                      # attributes, timestamp delta
            encode_varint_py(offset, record.append)
            for part in (key, value):
                encode_varint_py(len(part), record.append)
                record += part
            encode_varint_py(2, record.append)
            for name, text in ((b"schema", SCHEMA_BYTES), (b"event_id", b"%s:%d" % (key, first_seq + index - start))):
                encode_varint_py(len(name), record.append)
                record += name
                encode_varint_py(len(text), record.append)
                record += text
            framed = bytearray()
            encode_varint_py(len(record), framed.append)
            framed += record
            if offset and len(out) + len(framed) > budget:
                full = True
                break
            out += framed
            offset += 1
            count += 1
            value_bytes += len(value)
        taken.append(count)
        if full:
            break
    return bytearray(reserve) + out, taken, value_bytes


_kafka_records = _native.kafka_records if _native is not None else kafka_records_py


def _snappy_block_py(buffer: bytearray, start: int) -> bytes:
    return bytes(cramjam.snappy.compress_raw(memoryview(buffer)[start:]))


# libsnappy with the GIL released (the ingest thread seals meanwhile); cramjam holds the GIL.
_snappy_block = _native.snappy_block if _native is not None else _snappy_block_py


class _RecordsBuilder(_DefaultRecordBatchBuilderPy):
    """aiokafka's own v2 batch builder (header, CRC, compression, producer state) around records that
    kafka_records built in one call, instead of one `append` per record. It takes `records` (room for
    the header first, then the records) as its buffer: no copy, and the buffer is the builder's now."""

    def __init__(self, codec: int, records: bytearray, count: int, timestamp_ms: int) -> None:
        super().__init__(2, codec, is_transactional=0, producer_id=-1, producer_epoch=-1, base_sequence=0,
                         batch_size=len(records))
        self._buffer = records
        self._first_timestamp = self._max_timestamp = timestamp_ms
        self._last_offset = count - 1
        self._num_records = count
        self._compressed: bool | None = None      # set by compress_now(): build() then only writes the header

    def compress_now(self) -> None:
        """Compress ahead of the send (on a worker thread, while the batch before is awaiting its ack);
        the header and CRC, which hold the producer state, are still written when aiokafka drains it."""
        self._compressed = self._compress()

    def _maybe_compress(self) -> bool:
        if self._compressed is None:
            self._compressed = self._compress()
        return self._compressed

    def _write_header(self, use_compression_type: bool = True) -> None:
        """The v2 batch header, its CRC-32C by the crc32c package (the CPU's instruction: aiokafka's
        table-driven CRC cost 170 µs per 250 KB batch, the hardware one 20 µs)."""
        self.HEADER_STRUCT.pack_into(
            self._buffer, 0, 0, len(self._buffer) - self.AFTER_LEN_OFFSET, self.NO_PARTITION_LEADER_EPOCH,
            self._magic, 0, self._get_attributes(use_compression_type), self._last_offset,
            self._first_timestamp, self._max_timestamp, self._producer_id, self._producer_epoch,
            self._base_sequence, self._num_records)
        _CRC.pack_into(self._buffer, self.CRC_OFFSET,
                       crc32c.crc32c(memoryview(self._buffer)[self.ATTRIBUTES_OFFSET:]))

    def _compress(self) -> bool:
        if self._compression_type != self.CODEC_SNAPPY:
            return super()._maybe_compress()
        # xerial-framed snappy as every Kafka client reads it, in one block rather than 32 KiB ones:
        # one compress call per batch (aiokafka's loop of small blocks costs 40 % more CPU).
        header = self.HEADER_STRUCT.size
        block = _snappy_block(self._buffer, header)
        if len(_XERIAL_HEADER) + 4 + len(block) >= len(self._buffer) - header:
            return False
        del self._buffer[header:]
        self._buffer += _XERIAL_HEADER
        self._buffer += len(block).to_bytes(4, "big")
        self._buffer += block
        return True


class _SpanBatch(BatchBuilder):
    """A closed aiokafka BatchBuilder holding a prebuilt batch (what `producer.send_batch` takes)."""

    def __init__(self, codec: int, records: bytearray, count: int) -> None:   # noqa: super() builds per record
        self._builder = _RecordsBuilder(codec, records, count, int(time.time() * 1000))
        self._relative_offset = count
        self._buffer = None
        self._closed = True
        self._key_serializer = self._value_serializer = None

    def _set_producer_state(self, producer_id: int, producer_epoch: int, base_sequence: int) -> None:
        self._builder.set_producer_state(producer_id, producer_epoch, base_sequence)

    def compress_now(self) -> None:
        self._builder.compress_now()


def backoff_delays(first_ms: int, max_ms: int):
    delay = first_ms / 1000
    while True:
        yield delay * (0.8 + 0.4 * random.random())
        delay = min(delay * 2, max_ms / 1000)


class KafkaSink:
    """The producer, created and re-created as the broker and configuration allow."""

    def __init__(self, config: KafkaConfig, metrics: Metrics) -> None:
        self.config = config
        self.metrics = metrics
        self.producer: AIOKafkaProducer | None = None
        self.idempotent = config.idempotence != "off"
        self.codec = _CODECS[config.compression.value]
        self._partitions: dict[str, int] = {}
        self._secret_mtime: float | None = None

    async def start(self, stopping: asyncio.Event) -> bool:
        """Connect, retrying forever with backoff; False when stopping was requested first."""
        delays = backoff_delays(self.config.retry_backoff_ms, self.config.retry_backoff_max_ms)
        while not stopping.is_set():
            producer = AIOKafkaProducer(**producer_options(self.config, idempotent=self.idempotent))
            try:
                await producer.start()
            except (UnsupportedVersionError, KafkaError) as exc:
                await _quietly_stop(producer)
                if self._idempotence_unsupported(exc):
                    continue
                self.metrics.send_errors.labels(reason=type(exc).__name__).inc()
                log.warning("kafka not reachable yet: %s", _describe(exc))
                await wait_event(stopping, next(delays))
                continue
            self.producer = producer
            self._remember_secret_mtime()
            log.info("kafka producer started", extra={"bootstrap": self.config.bootstrap_servers,
                                                       "idempotent": self.idempotent})
            return True
        return False

    def _idempotence_unsupported(self, exc: Exception) -> bool:
        if not self.idempotent or self.config.idempotence != "auto" or isinstance(exc, KafkaConnectionError):
            return False
        # Brokers without InitProducerId support (Tansu) answer with an error at start: fall back to
        # acks=all without idempotence; duplicates stay exact and recognisable by event_id.
        log.warning("broker refused the idempotent producer (%s); continuing with acks=all without idempotence",
                    _describe(exc))
        self.idempotent = False
        return True

    def _remember_secret_mtime(self) -> None:
        path = self.config.sasl.password_file
        if path:
            try:
                self._secret_mtime = Path(path).stat().st_mtime
            except OSError:
                self._secret_mtime = None

    def secret_changed(self) -> bool:
        path = self.config.sasl.password_file
        if not path:
            return False
        try:
            return Path(path).stat().st_mtime != self._secret_mtime
        except OSError:
            return False

    async def restart(self, stopping: asyncio.Event) -> bool:
        if self.producer is not None:
            await _quietly_stop(self.producer)
            self.producer = None
        self._partitions.clear()
        return await self.start(stopping)

    async def partitions(self, topic: str) -> int:
        count = self._partitions.get(topic)
        if count is None:
            assert self.producer is not None
            found = await self.producer.partitions_for(topic)
            count = self._partitions[topic] = len(found)
        return count

    async def stop(self) -> None:
        if self.producer is not None:
            await _quietly_stop(self.producer)
            self.producer = None


async def _quietly_stop(producer: AIOKafkaProducer) -> None:
    try:
        await asyncio.wait_for(producer.stop(), timeout=5)
    except Exception:  # noqa: BLE001 - a producer that cannot stop cleanly is dropped either way
        pass


async def wait_event(event: asyncio.Event, seconds: float) -> None:
    """Wait for `event`, at most `seconds`."""
    try:
        await asyncio.wait_for(event.wait(), timeout=seconds)
    except asyncio.TimeoutError:
        pass


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if type(exc).__name__ not in text else text


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
class _PartitionQueue:
    items: deque = field(default_factory=deque)
    ready: asyncio.Event = field(default_factory=asyncio.Event)


# Called with a refused record's loss event; resolves once the gap record is durable in the WAL.
GapWriter = Callable[[str, LossEvent, int, str], Awaitable[None]]


def _frame_size(frame: "Frame | bytes") -> int:
    return frame.nbytes if type(frame) is Frame else len(frame)


class Sender:
    """Pumps durable WAL frames to Kafka and moves the ack cursor (and the state snapshot) behind them."""

    def __init__(self, wal: Wal, state: StateStore, snapshot: Snapshot, sink: KafkaSink, metrics: Metrics,
                 write_gap: GapWriter, *, ack_interval_s: float = 0.2, hot_limit_bytes: int = 8 << 20) -> None:
        self.wal = wal
        self.state = state
        self.snapshot = snapshot
        self.sink = sink
        self.metrics = metrics
        self.write_gap = write_gap
        self.ack_interval_s = ack_interval_s
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
        self._acked_pending: tuple[dict, dict, WalPosition] | None = None
        self._queues: dict[tuple[str, int], _PartitionQueue] = {}
        self._workers: asyncio.TaskGroup | None = None
        self._progress = asyncio.Event()
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

    async def wait_progress(self) -> None:
        self._progress.clear()
        await self._progress.wait()

    # -- tasks -----------------------------------------------------------------------------------
    async def run(self, stopping: asyncio.Event) -> None:
        """Runs until cancelled: reading frames, partition workers, the ack flusher."""
        self._stopping = stopping
        if not await self.sink.start(stopping):
            return
        async with asyncio.TaskGroup() as group:
            self._workers = group
            group.create_task(self._flush_acks_forever(), name="ack-flusher")
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
        for run in batch.runs:
            if not run.values:
                continue
            key = run.chain.encode()
            partitions = await self._partitions(run.topic)
            queue = self._queue(run.topic, partition_of(key, partitions))
            if type(run.values) is Sealed:          # a batch from memory: one run per sealed blob
                for index, packed in run.values.packed_parts():
                    queue.items.append(_Run(ticket, run.chain, key, run.first_seq + index, packed, 0, len(packed)))
            else:
                queue.items.append(_Run(ticket, run.chain, key, run.first_seq, run.values, 0, len(run.values)))
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
                runs, built = self._take_batch(items, budget, limit)
                # On a worker thread: the loop meanwhile gets the batch before on its way (libsnappy
                # releases the GIL, so the ingest thread runs too).
                await asyncio.to_thread(built[0].compress_now)
                if in_flight is not None:
                    await in_flight
                in_flight = asyncio.ensure_future(self._send_until_acked(topic, partition, runs, built))
        finally:
            if in_flight is not None and not in_flight.done():
                in_flight.cancel()

    def _take_batch(self, items: deque, budget: int, limit: int) -> tuple[list[_Run], tuple[_SpanBatch, int, int]]:
        """The next batch from the head of a partition's queue: at most `budget` bytes of records, and
        the runs it takes (the queue keeps the rest)."""
        candidates = [items[i] for i in range(min(len(items), 64))]
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

    async def _send_until_acked(self, topic: str, partition: int, runs: list[_Run],
                                built: tuple[_SpanBatch | None, int, int] | None = None) -> None:
        delays = backoff_delays(self.sink.config.retry_backoff_ms, self.sink.config.retry_backoff_max_ms)
        attempt = 0
        while True:
            producer = self.sink.producer
            try:
                if producer is None:
                    raise KafkaConnectionError("producer is restarting")
                if built is None or built[0] is None:
                    built = self._batch(runs)
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
        # Frames complete out of order across partitions; the cursor moves over the completed prefix.
        tickets = self._tickets
        now = time.time()
        while tickets and tickets[0].pending == 0:
            done = tickets.popleft()
            self._in_flight_bytes -= done.nbytes
            if done.read_time:
                self.metrics.lag.observe(max(0.0, now - done.read_time))
            if self._acked_pending is None:
                self._acked_pending = ({}, {}, done.end)
            sources, chains, _ = self._acked_pending
            sources.update(done.sources)
            chains.update(done.chains)
            self._acked_pending = (sources, chains, done.end)
        self._room.set()

    async def _flush_acks_forever(self) -> None:
        while True:
            await asyncio.sleep(self.ack_interval_s)
            await self.flush_acks()

    async def flush_acks(self) -> None:
        pending, self._acked_pending = self._acked_pending, None
        if pending is None:
            return
        sources, chains, position = pending
        try:
            # The snapshot moves first: segments are deleted only behind a snapshot that covers them.
            if position > self.snapshot.position:
                await asyncio.to_thread(self.state.save, sources, chains, position)
                self.snapshot.apply(sources, chains, position)
            await asyncio.to_thread(self.wal.ack, position)
        except (WalWriteError, sqlite3.Error, OSError) as exc:
            # A full disk, say: keep what is acknowledged and try again on the next tick.
            self.metrics.wal_write_errors.labels(errno=str(getattr(exc, "errno", "") or "")).inc()
            log.error("cannot persist acknowledgements yet (%s); retrying", exc)
            if self._acked_pending is not None:
                later_sources, later_chains, later_position = self._acked_pending
                sources.update(later_sources)
                chains.update(later_chains)
                position = later_position
            self._acked_pending = (sources, chains, position)
            return
        self.metrics.wal_bytes.set(self.wal.bytes_on_disk)
        self.metrics.wal_segments.set(self.wal.segment_count)
        self._progress.set()
