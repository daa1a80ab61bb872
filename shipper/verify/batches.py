"""Kafka record batches as a fetch returns them -> the columns the judge takes (`RecordScan`).

A partition's fetched bytes are a run of record batches, the last one possibly cut off by the fetch size
(`split_batches`). A v2 batch (`RawBatch`) has a 61-byte header (base offset, length, CRC-32C of what follows
its CRC, attributes with the codec and the control bit, last offset delta, record count) and then its
records, compressed as a whole with the codec (`batch_records`: gzip, snappy in the xerial framing or raw,
lz4 frames, zstd). Each record is length-prefixed: attributes, timestamp delta, offset delta, key, value
and headers, with Kafka's zigzag varints.

`verify_records(batches, min_offset)` reads the records of the batches of one partition and scans their
values exactly as `scan.verify_scan` does, in one native call (shipper._native.verify_records, native/
verify.c with native/kafka_read.h) when it is built; `verify_records_py` is the reference it must match,
on top of `read_record_py` and `verify_scan_py`. Next to the scan's columns it gives each record's offset
and where it starts (for `RecordScan.record`, which decodes one record again for the per-record path), the
envelope (FLAG_ENVELOPE_OK: as Verifier.feed wants it, so that it checks nothing: a v1 value's event_id
is the seal's and a v2 value has none, the key is null or the chain, the last `schema` header names the
value's format and the last `event_id` header is the seal's), the runs (start, end) of consecutive records
a run may hold (scanned, log records, not altered, envelope good, one chain and one identity, each
FOLLOWS the one before), and the batches that could not be read to their end: (batch index, index of
the record that failed, code), ERROR_MESSAGES[code] says why. Records before such a record are read.

The native reader never trusts its input: a record that cannot be read stops its batch, whatever the
bytes; the tests cut and corrupt batches at random and require the same answer as the reference.
"""
from __future__ import annotations

import gzip
import struct
import zlib
from array import array
from dataclasses import dataclass
from typing import Sequence

import cramjam
import crc32c

from ..native import module as _native
from ..seal import SCHEMA, SCHEMA_V2
from .scan import FLAG_ALTERED, FLAG_ENVELOPE_OK, FLAG_FOLLOWS, FLAG_OK, FLAG_SLOW, ScanResult, verify_scan_py
from .verifier import _headers_match, _json_decode

NATIVE = _native is not None and hasattr(_native, "verify_records")

#: The v2 batch header: base offset, length, partition leader epoch, magic, CRC, attributes, last offset
#: delta, first and max timestamps, producer id and epoch, base sequence, record count.
_HEADER = struct.Struct(">qiibIhiqqqhii")
HEADER_SIZE = _HEADER.size                # 61
_PREFIX = struct.Struct(">qi")            # every message format starts with offset and length
_CRC_START = 21                           # the CRC covers the batch from its attributes on
_LEGACY_MIN_LENGTH = 14                   # crc, magic, attributes, key and value lengths of a v0 message
CODEC_MASK = 0x07
TRANSACTIONAL = 0x10
CONTROL = 0x20
CODECS = {0: "none", 1: "gzip", 2: "snappy", 3: "lz4", 4: "zstd"}
_XERIAL_MAGIC = b"\x82SNAPPY\x00"
_XERIAL_HEADER_SIZE = 16

# Why a batch could not be read to its end; the codes are native/kafka_read.h's KREAD_*.
TRUNCATED, VARINT, LENGTH, NEGATIVE, OFFSET, SIZE, COUNT, TRAILING = range(1, 9)
ERROR_MESSAGES = {
    TRUNCATED: "a field runs past the end of its record",
    VARINT: "a varint is longer than 10 bytes",
    LENGTH: "a record length is negative or runs past the end of the batch",
    NEGATIVE: "a key, value or header has a negative length",
    OFFSET: "an offset delta is outside 0..2**31-1",
    SIZE: "a record's fields end before its stated length",
    COUNT: "the batch holds fewer records than its header counts",
    TRAILING: "bytes follow the last record its header counts",
}
_MASK64 = (1 << 64) - 1
_OFFSET_LIMIT = (1 << 63) - 1
# a record a run may hold (native/verify.c's RUN_MASK, RUN_WANT)
_RUN_MASK = FLAG_OK | FLAG_SLOW | FLAG_ALTERED | FLAG_ENVELOPE_OK
_RUN_WANT = FLAG_OK | FLAG_ENVELOPE_OK


class BadBatch(ValueError):
    """The bytes of a partition or of one batch cannot be read (a length out of bounds, a codec that does
    not decompress); `offset` is the batch's base offset."""

    def __init__(self, offset: int, message: str) -> None:
        super().__init__(message)
        self.offset = offset


@dataclass(slots=True, frozen=True)
class RawBatch:
    """One complete batch of fetched bytes, its header read (v2; for the legacy formats, magic 0 or 1, only
    base_offset, magic and data mean anything)."""

    base_offset: int
    magic: int
    attributes: int
    last_offset_delta: int
    count: int
    crc: int
    data: memoryview                      # the whole batch, header included

    @property
    def next_offset(self) -> int:
        """The offset after the batch: where the next read starts (also after a control batch)."""
        return self.base_offset + self.last_offset_delta + 1

    @property
    def codec(self) -> int:
        return self.attributes & CODEC_MASK

    @property
    def is_control(self) -> bool:
        return bool(self.attributes & CONTROL)

    def crc_ok(self) -> bool:
        return crc32c.crc32c(self.data[_CRC_START:]) == self.crc


def split_batches(data: bytes | memoryview) -> tuple[list[RawBatch], int, BadBatch | None]:
    """The complete batches at the start of one partition's fetched bytes, how many bytes they take, and
    BadBatch when the next one has a length no batch can have (nothing after it can be found); else what
    follows them is a batch cut off by the fetch size, or nothing."""
    view = memoryview(data)
    size = len(view)
    out: list[RawBatch] = []
    position = 0
    while size - position >= 17:
        base_offset, length = _PREFIX.unpack_from(view, position)
        magic = view[position + 16]
        if length < (HEADER_SIZE - 12 if magic == 2 else _LEGACY_MIN_LENGTH):
            return out, position, BadBatch(base_offset, f"a batch length of {length} bytes")
        end = position + 12 + length
        if end > size:
            break
        if magic == 2:
            fields = _HEADER.unpack_from(view, position)
            out.append(RawBatch(base_offset, 2, fields[5], fields[6], fields[12], fields[4], view[position:end]))
        else:
            out.append(RawBatch(base_offset, magic, 0, 0, 0, 0, view[position:end]))
        position = end
    return out, position, None


def batch_records(batch: RawBatch):
    """The records section of a v2 batch, decompressed (bytes or a cramjam Buffer: both are buffers).
    BadBatch when its codec is unknown or its data does not decompress."""
    body = batch.data[HEADER_SIZE:]
    codec = batch.codec
    try:
        if codec == 0:
            return body
        if codec == 1:
            return gzip.decompress(body)
        if codec == 2:
            return _snappy(body, batch.base_offset)
        if codec == 3:
            return cramjam.lz4.decompress(body)
        if codec == 4:
            return cramjam.zstd.decompress(body)
    except (cramjam.DecompressionError, OSError, EOFError, zlib.error) as exc:
        raise BadBatch(batch.base_offset, f"its {CODECS[codec]} data does not decompress: {exc}") from None
    raise BadBatch(batch.base_offset, f"unknown compression codec {codec}")


def _snappy(body: memoryview, base_offset: int):
    """Snappy as Kafka clients write it: the xerial framing (a header, then blocks each prefixed with its
    length; the shipper writes one block) or one raw block. Decompressed without a copy: one block as
    cramjam's buffer, several into one bytearray."""
    if bytes(body[:len(_XERIAL_MAGIC)]) != _XERIAL_MAGIC:
        return cramjam.snappy.decompress_raw(body)
    blocks = []
    size = 0
    position = _XERIAL_HEADER_SIZE
    while position < len(body):
        if len(body) - position < 4:
            raise BadBatch(base_offset, "its snappy data ends inside a block length")
        length = int.from_bytes(body[position:position + 4], "big", signed=True)
        position += 4
        if length < 0 or length > len(body) - position:
            raise BadBatch(base_offset, f"its snappy data has a block of {length} bytes past its end")
        block = body[position:position + length]
        blocks.append(block)
        size += cramjam.snappy.decompress_raw_len(block)
        position += length
    if len(blocks) == 1:
        return cramjam.snappy.decompress_raw(blocks[0])
    out = bytearray(size)
    view = memoryview(out)
    written = 0
    for block in blocks:
        if cramjam.snappy.decompress_raw_len(block) > size - written:
            raise BadBatch(base_offset, "its snappy blocks decompress to more than they state")
        written += cramjam.snappy.decompress_raw_into(block, view[written:])
    del view
    return out if written == size else out[:written]


# -- records: the reference reader --------------------------------------------------------------------------

@dataclass(slots=True, frozen=True)
class KafkaRecord:
    """One record of a batch; `start` is where it starts in the batch's records."""

    offset: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes | None]]
    start: int


class _Unreadable(Exception):
    def __init__(self, code: int) -> None:
        super().__init__(ERROR_MESSAGES[code])
        self.code = code


def _varint(data: bytes, position: int, end: int) -> tuple[int, int]:
    value = 0
    for shift in range(0, 70, 7):
        if position >= end:
            raise _Unreadable(TRUNCATED)
        byte = data[position]
        position += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            value &= _MASK64
            return (value >> 1) ^ -(value & 1), position
    raise _Unreadable(VARINT)


def _bytes(data: bytes, position: int, end: int, nullable: bool) -> tuple[bytes | None, int]:
    length, position = _varint(data, position, end)
    if length == -1 and nullable:
        return None, position
    if length < 0:
        raise _Unreadable(NEGATIVE)
    if length > end - position:
        raise _Unreadable(TRUNCATED)
    return data[position:position + length], position + length


def read_record_py(data: bytes, start: int, base_offset: int) -> tuple[KafkaRecord, int]:
    """The record at `start` of a batch's records (bytes) and where the next one starts; _Unreadable
    (its `code`) when it cannot be read. Header keys are decoded as UTF-8 with replacement, so only the
    bytes `schema` and `event_id` name those headers, as the native reader compares them."""
    end = len(data)
    length, position = _varint(data, start, end)
    if length < 0 or length > end - position:
        raise _Unreadable(LENGTH)
    stop = position + length
    if position >= stop:
        raise _Unreadable(TRUNCATED)
    position += 1                                           # attributes
    _, position = _varint(data, position, stop)             # timestamp delta
    delta, position = _varint(data, position, stop)
    if not 0 <= delta <= 0x7FFFFFFF:
        raise _Unreadable(OFFSET)
    key, position = _bytes(data, position, stop, True)
    value, position = _bytes(data, position, stop, True)
    count, position = _varint(data, position, stop)
    if count < 0:
        raise _Unreadable(NEGATIVE)
    headers = []
    for _ in range(count):
        header_key, position = _bytes(data, position, stop, False)
        header_value, position = _bytes(data, position, stop, True)
        headers.append((header_key.decode("utf-8", "replace"), header_value))
    if position != stop:
        raise _Unreadable(SIZE)
    if base_offset + delta > _OFFSET_LIMIT:
        raise _Unreadable(OFFSET)
    return KafkaRecord(base_offset + delta, key, value, headers, start), stop


def read_records_py(data: bytes, base_offset: int, count: int) -> tuple[list[KafkaRecord], tuple[int, int] | None]:
    """The records of one batch, and (index of the record that could not be read, code) or None."""
    records: list[KafkaRecord] = []
    position = 0
    index = 0
    while index < count:
        if position == len(data):
            return records, (index, COUNT)
        try:
            record, position = read_record_py(data, position, base_offset)
        except _Unreadable as exc:
            return records, (index, exc.code)
        records.append(record)
        index += 1
    if position != len(data):
        return records, (index, TRAILING)
    return records, None


# -- the scan of a partition's batches ------------------------------------------------------------------------

Batch = tuple  # (records: a buffer, base_offset: int, count: int)


@dataclass(slots=True, frozen=True)
class RecordScan(ScanResult):
    """The columns of one verify_records call (see the module docstring and scan.py): a scan's columns, and
    where each record sits, the runs and errors, and the batches they were read from. What
    Verifier.feed_scanned takes."""

    offsets: memoryview                    # int64 a record
    locations: memoryview                  # uint32 pairs: (batch index, start in its records)
    runs: memoryview                       # uint32 pairs: (start, end) of each run
    errors: list[tuple[int, int, int]]     # (batch index, record index, code)
    batches: Sequence[Batch]

    @classmethod
    def from_columns(cls, columns: tuple, batches: Sequence[Batch]) -> RecordScan:
        scan = ScanResult.from_columns(columns[:10])
        offsets, locations, runs, errors = columns[10:]
        return cls(scan.count, scan.flags, scan.types, scan.chains, scan.idents, scan.seqs, scan.prefixes,
                   scan.prevs, scan.hashes, scan.chain_names, scan.identities, memoryview(offsets).cast("q"),
                   memoryview(locations).cast("I"), memoryview(runs).cast("I"), errors, batches)

    def scan(self) -> ScanResult:
        """The scan's own columns (for comparisons and tests)."""
        return ScanResult(self.count, self.flags, self.types, self.chains, self.idents, self.seqs, self.prefixes,
                          self.prevs, self.hashes, self.chain_names, self.identities)

    def record(self, index: int) -> KafkaRecord:
        """Record `index` decoded again by the reference reader: what the per-record path feeds."""
        batch = self.locations[2 * index]
        data, base_offset, _ = self.batches[batch]
        return read_record_py(bytes(data), self.locations[2 * index + 1], base_offset)[0]


def verify_records(batches: Sequence[Batch], min_offset: int = 0) -> RecordScan:
    """The records at offsets >= min_offset of one partition's batches, scanned (native when built)."""
    if NATIVE:
        return RecordScan.from_columns(_native.verify_records(batches, min_offset), batches)
    return RecordScan.from_columns(verify_records_py(batches, min_offset), batches)


def verify_records_py(batches: Sequence[Batch], min_offset: int = 0) -> tuple:
    """The reference: read_records_py per batch, verify_scan_py over the values, the envelope as
    Verifier.feed judges it, and the runs."""
    values: list[bytes | None] = []
    keys: list[bytes | None] = []
    headers: list[list] = []
    offsets = array("q")
    locations = array("I")
    errors: list[tuple[int, int, int]] = []
    for index, (data, base_offset, count) in enumerate(batches):
        records, error = read_records_py(bytes(data), base_offset, count)
        for record in records:
            if record.offset < min_offset:
                continue
            values.append(record.value)
            keys.append(record.key)
            headers.append(record.headers)
            offsets.append(record.offset)
            locations.extend((index, record.start))
        if error is not None:
            errors.append((index, *error))
    columns = verify_scan_py(values)
    scan = ScanResult.from_columns(columns)
    flags = bytearray(columns[0])
    for index in range(scan.count):
        if not flags[index] & FLAG_OK:
            continue
        chain = scan.chain_names[scan.chains[index]]
        event_id = f"{chain}:{scan.seqs[index]}"
        record = _json_decode(str(values[index], "utf-8"))
        schema = record.get("schema")
        # the value's own part of the envelope: a v1 value holds the seal's event_id, a v2 value none
        own = (record.get("event_id") == event_id if schema == SCHEMA
               else schema == SCHEMA_V2 and "event_id" not in record)
        key = keys[index]
        if own and (key is None or key == chain.encode()) and _headers_match(headers[index], event_id, schema):
            flags[index] |= FLAG_ENVELOPE_OK
    runs = array("I")
    start = -1
    for index in range(scan.count):
        candidate = flags[index] & _RUN_MASK == _RUN_WANT and scan.types[index] == 0
        if (candidate and start >= 0 and scan.chains[index] == scan.chains[index - 1]
                and scan.idents[index] == scan.idents[index - 1] and flags[index] & FLAG_FOLLOWS):
            continue
        if start >= 0:
            runs.extend((start, index))
        start = index if candidate else -1
    if start >= 0:
        runs.extend((start, scan.count))
    return (bytes(flags), *columns[1:], offsets.tobytes(), locations.tobytes(), runs.tobytes(), errors)
