"""Kafka's wire format for our records: v2 record batches built in one call per batch, compressed,
and the partition a key maps to; and the end of a refused SASL OAUTHBEARER exchange.

The only module that touches aiokafka internals (`_DefaultRecordBatchBuilderPy`, `BatchBuilder`'s
private fields, `DefaultRecordBatch`, `encode_varint_py`, `murmur2`, `OAuthAuthenticator` and the connection's
`authenticator_oauth`). They are not aiokafka's public API, which is why aiokafka is pinned to
>=0.14,<0.15 (pyproject.toml; 0.14.0 in constraints.txt): moving the pin means
tests/unit/test_kafka_records.py, which checks these batches against aiokafka's own builder and
reader, and tests/integration/test_oauth.py, which has the real broker refuse tokens, must pass on the
new version.
"""
from __future__ import annotations

import struct
import time
from array import array

import crc32c
import cramjam
from aiokafka.conn import AIOKafkaConnection, OAuthAuthenticator
from aiokafka.errors import SaslAuthenticationFailed
from aiokafka.partitioner import murmur2
from aiokafka.producer.message_accumulator import BatchBuilder
from aiokafka.record.default_records import DefaultRecordBatch, _DefaultRecordBatchBuilderPy
from aiokafka.record.util import encode_varint_py

from ..batch import Packed
from ..native import module as _native
from ..seal import SCHEMA_BYTES, SCHEMA_V2_BYTES

_RECORD_OVERHEAD = 512  # batch and record headers around a value, generously
_BATCH_HEADER = _DefaultRecordBatchBuilderPy.HEADER_STRUCT.size
_V2_PREFIX = b'{"schema":"' + SCHEMA_V2_BYTES + b'"'
_CRC = struct.Struct(">I")
_CODECS = {"none": 0, "gzip": 1, "snappy": 2, "lz4": 3, "zstd": 4}
# The xerial snappy stream header: marker -126, "SNAPPY\0", version 1, compatible version 1.
_XERIAL_HEADER = b"\x82SNAPPY\x00" + (1).to_bytes(4, "big") + (1).to_bytes(4, "big")


def partition_of(key: bytes, partitions: int) -> int:
    """Kafka's Java default partitioner for keyed records: murmur2, sign bit cleared, modulo."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


# (key, first_seq, values, start, stop): records values[start:stop]; values is a list of bytes or, for a
# run decoded from a WAL frame, (payload, ends) as in batch.Packed.
Span = tuple[bytes, int, "list[bytes] | tuple[bytes, array]", int, int]


def kafka_records_py(spans: list[Span], budget: int, limit: int, reserve: int = 0) -> tuple[bytearray, list[int], int]:
    """The records of a v2 record batch for spans of sealed values: (records, taken per span, value bytes),
    records after `reserve` zero bytes (room for the batch header).

    Each record: key = the chain, headers `schema` (the value's own: audit-shipper/v2 for a value that starts
    as a v2 record does, else audit-shipper/v1) and `event_id` (`<chain>:<seq>`), timestamp delta 0,
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
            schema = SCHEMA_V2_BYTES if value.startswith(_V2_PREFIX) else SCHEMA_BYTES
            for name, text in ((b"schema", schema), (b"event_id", b"%s:%d" % (key, first_seq + index - start))):
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
    the header first, then the records) as its buffer: no copy, and the buffer is the builder's now.
    Or, `prebuilt`, around a whole batch built (and compressed) before, to write its header again."""

    def __init__(self, codec: int, records: bytearray, count: int, timestamp_ms: int) -> None:
        super().__init__(2, codec, is_transactional=0, producer_id=-1, producer_epoch=-1, base_sequence=0,
                         batch_size=len(records))
        self._buffer = records
        self._first_timestamp = self._max_timestamp = timestamp_ms
        self._last_offset = count - 1
        self._num_records = count
        self._compressed: bool | None = None      # set by compress_now(): build() then only writes the header

    @classmethod
    def prebuilt(cls, batch: "bytes | bytearray | memoryview", timestamp_ms: int) -> "_RecordsBuilder":
        """A batch this builder built (kafka/prebuild.py, on the ingest side), copied: build() writes its
        header again (producer state, timestamps, CRC) and leaves its records, compressed or not, as they
        are. The records' timestamp deltas are 0, so they all take `timestamp_ms`, the send time, as a
        batch built at the send does (a WAL replayed days later is not refused as too old)."""
        fields = cls.HEADER_STRUCT.unpack_from(batch)
        codec = fields[5] & cls.CODEC_MASK
        builder = cls(codec, bytearray(batch), fields[12], timestamp_ms)
        builder._compressed = codec != cls.CODEC_NONE
        return builder

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

    def __init__(self, codec: int, records: bytearray, count: int,
                 builder: _RecordsBuilder | None = None) -> None:   # noqa: super() builds per record
        self._builder = builder or _RecordsBuilder(codec, records, count, int(time.time() * 1000))
        self._relative_offset = count
        self._buffer = None
        self._closed = True
        self._key_serializer = self._value_serializer = None

    @classmethod
    def prebuilt(cls, batch: "bytes | bytearray | memoryview") -> "_SpanBatch":
        """A whole batch built on the ingest side (batch.KafkaBatch.data), to send (a copy each time)."""
        builder = _RecordsBuilder.prebuilt(batch, int(time.time() * 1000))
        return cls(builder._compression_type, builder._buffer, builder._num_records, builder)

    def _set_producer_state(self, producer_id: int, producer_epoch: int, base_sequence: int) -> None:
        self._builder.set_producer_state(producer_id, producer_epoch, base_sequence)

    def compress_now(self) -> None:
        self._builder.compress_now()


def build_batch(codec: int, records: bytearray, count: int, timestamp_ms: int,
                compress=None) -> tuple[bytearray, int]:
    """The whole v2 batch for records that kafka_records built (room for the header first), compressed
    with `codec` when that makes them smaller, the producer state left at -1, -1, 0; and the codec its
    records are in (0 when compression did not pay). `compress`, when given, is called with the
    compressing function (to time it)."""
    builder = _RecordsBuilder(codec, records, count, timestamp_ms)
    if compress is None:
        builder.compress_now()
    else:
        compress(builder.compress_now)
    data = builder.build()
    return data, codec if builder._compressed else 0


def batch_records(batch: "bytes | bytearray | memoryview") -> list[tuple[bytes | None, bytes | None, list]]:
    """(key, value, headers) of every record of a v2 batch, in order, read back by aiokafka's reader
    (CRC checked, decompressed): the inverse of build_batch."""
    reader = DefaultRecordBatch(bytearray(batch))
    if not reader.validate_crc():
        raise ValueError("a prebuilt Kafka batch fails its CRC")
    return [(record.key, record.value, record.headers) for record in reader]



class _OAuthBearerAuthenticator(OAuthAuthenticator):
    """aiokafka 0.14's OAUTHBEARER client takes any answer to its token as success. A broker that refuses
    the token answers with an error challenge instead (RFC 7628 §3.2.2, `{"status":"invalid_token"}`),
    waiting for the client's %x01 that ends the exchange; aiokafka sends its next request instead, and
    Kafka answers that with empty metadata and closes: a producer that "started" without a broker and
    sends that time out. This one ends the exchange as the RFC says, so the broker fails it properly
    (SaslAuthenticationFailed, error 58), and tells the token source either way."""

    def __init__(self, *, sasl_oauth_token_provider) -> None:
        super().__init__(sasl_oauth_token_provider=sasl_oauth_token_provider)
        self._challenge: bytes | None = None

    async def step(self, payload):
        if not self._token_sent:
            return await super().step(payload)
        provider = self._sasl_oauth_token_provider
        if not payload:
            getattr(provider, "accepted", lambda: None)()
            return None
        if self._challenge is None:
            self._challenge = bytes(payload)
            getattr(provider, "refused", lambda challenge: None)(self._challenge)
            return b"\x01", True
        raise SaslAuthenticationFailed(self._challenge.decode(errors="replace"))


def _authenticator_oauth(connection: AIOKafkaConnection) -> _OAuthBearerAuthenticator:
    return _OAuthBearerAuthenticator(sasl_oauth_token_provider=connection._sasl_oauth_token_provider)


def end_refused_oauthbearer_exchanges() -> None:
    """Makes every aiokafka connection of this process use `_OAuthBearerAuthenticator` (idempotent)."""
    AIOKafkaConnection.authenticator_oauth = _authenticator_oauth
