"""The payload of one WAL frame: a batch of sealed records with the source checkpoint they reach.

Pure encoding over bytes. A batch carries, besides the records, where every source it touched stands
after it and every chain head it moved, so that recovery can roll source positions forward from the
WAL alone (the checkpoint travels with the commit).

The records travel in two forms. Record values (`Batch.runs`): what the ingest seals, and what a frame
holds for a topic whose partition count was not known when it was built. Kafka record batches
(`Batch.kafka`): complete Kafka v2 RecordBatches, built and compressed on the ingest side
(kafka/prebuild.py) for one topic partition each, which the sender forwards as they are. This module
treats a Kafka batch as opaque bytes described by its header entry; it never builds or reads one.

Layout: `[u32 header length][header JSON][u32 n][n x u32 value lengths][values...][kafka batches...]`,
little endian.
Header (format 3): `{"v": 3, "runs": [[chain, topic, first_seq, count, before], ...], "batches":
[[topic, partition, partitions, codec, count, nbytes, value_bytes, [[chain, first_seq, count], ...]],
...], "sources": {key: SourceCheckpoint.to_list() or null when dropped}, "chains": {chain:
ChainCheckpoint.to_list()}, "t": read time}`. A batch entry names the topic's partition count its
partition was computed with (`partitions`), the codec its records are compressed with (0: none, also
when compression did not make them smaller), its record count, its length in the body, the bytes of
its record values and the runs of consecutive seqs it holds, in order. A value run's `before` is the
index of the first Kafka batch that is sent after it (a record too large for any batch between two
batches of its chain); the sender keeps that order.
A batch without Kafka batches is written in format 2, the same bytes as the release before: `{"v": 2,
"runs": [[chain, topic, first_seq, count], ...], "sources": ..., "chains": ..., "t": ...}` and no
Kafka batches in the body. Format 1 (no "v") had chains as [seq, hash_hex, closed] without a Merkle
tree; it is still read (those chains start a new tree). A newer format is refused with FrameFormatError.
"""
from __future__ import annotations

import json
import struct
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import accumulate

from .model import ChainCheckpoint, SourceCheckpoint

_U32 = struct.Struct("<I")
FRAME_FORMAT = 3
_VALUES_ONLY_FORMAT = 2       # what a batch without Kafka batches is written as


class FrameFormatError(ValueError):
    """A WAL frame written by a newer release than this one."""


@dataclass(slots=True, frozen=True)
class Run:
    """Consecutive records of one chain bound for one topic: seqs first_seq, first_seq + 1, ..."""

    chain: str
    topic: str
    first_seq: int
    values: "list[bytes] | Sealed | Packed"
    before: int = 0                 # index of the first of the batch's Kafka batches sent after this run


@dataclass(slots=True, frozen=True)
class BatchRun:
    """Records first_seq .. first_seq + count - 1 of one chain, inside a Kafka batch."""

    chain: str
    first_seq: int
    count: int


@dataclass(slots=True, frozen=True)
class KafkaBatch:
    """A complete Kafka v2 RecordBatch for one topic partition, built on the ingest side: its records
    (key, headers and values as the sender builds them) compressed with `codec`, the producer id, epoch
    and base sequence left at -1, -1, 0; the sender sets those, the timestamps and the CRC when it sends.
    `partition` is the chain keys' murmur2 modulo `partitions`, the topic's partition count then."""

    topic: str
    partition: int
    partitions: int
    codec: int
    count: int
    value_bytes: int
    data: "bytes | bytearray | memoryview"
    runs: tuple[BatchRun, ...]

    @property
    def nbytes(self) -> int:
        return len(self.data)


@dataclass(slots=True)
class Batch:
    runs: list[Run] = field(default_factory=list)
    sources: dict[str, SourceCheckpoint | None] = field(default_factory=dict)
    chains: dict[str, ChainCheckpoint] = field(default_factory=dict)
    read_time: float = 0.0          # wall-clock time the batch was read (for the end-to-end lag)
    kafka: list[KafkaBatch] = field(default_factory=list)

    @property
    def record_count(self) -> int:
        return sum(len(run.values) for run in self.runs) + sum(batch.count for batch in self.kafka)


class Packed(Sequence):
    """A decoded run's values, left where they are in the frame payload: value i is
    payload[ends[i]:ends[i + 1]]. Decoding a frame makes no object per record; the Kafka records
    builder reads the payload directly (kafka.Span)."""

    __slots__ = ("payload", "ends")

    def __init__(self, payload: "bytes | memoryview", ends: array) -> None:
        self.payload = payload       # a WAL frame payload, often a view into the chunk read from disk
        self.ends = ends             # array('q'), len(self) + 1 offsets into payload

    def __len__(self) -> int:
        return len(self.ends) - 1

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(index)
        return bytes(self.payload[self.ends[index]:self.ends[index + 1]])

    def __eq__(self, other) -> bool:
        return isinstance(other, Sequence) and list(self) == list(other)


class Sealed(Sequence):
    """A run's values as the ingest builds them: blobs of consecutive records (one per sealing call, or
    one control record) and every record's length. Encoding a frame joins blobs, not records."""

    __slots__ = ("parts", "lengths", "counts")

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.lengths = array("I")
        self.counts: list[int] = []          # records in each part

    def append(self, value: bytes) -> None:
        self.parts.append(value)
        self.lengths.append(len(value))
        self.counts.append(1)

    def add_packed(self, blob: bytes, lengths: array) -> None:
        self.parts.append(blob)
        self.lengths.extend(lengths)
        self.counts.append(len(lengths))

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self):
        lengths = iter(self.lengths)
        for part in self.parts:
            position = 0
            while position < len(part):
                length = next(lengths)
                yield part[position:position + length]
                position += length

    def __getitem__(self, index):
        return list(self)[index]

    def __eq__(self, other) -> bool:
        return isinstance(other, Sequence) and list(self) == list(other)

    def packed_parts(self):
        """(index of its first value in the run, the blob as Packed) for each blob: the sender's view of
        a run taken from memory, as decode_batch would give it from disk, one Packed per blob."""
        index = 0
        lengths = self.lengths
        for part, count in zip(self.parts, self.counts):
            yield index, Packed(part, array("q", accumulate(lengths[index:index + count], initial=0)))
            index += count


@dataclass(slots=True)
class Frame:
    """A batch encoded as a WAL frame payload, left in pieces: b"".join(parts) is encode_batch(batch).
    The WAL writes the pieces with one writev and the sender takes `batch` itself from memory, so on
    the hot path the payload is neither joined (megabytes copied) nor decoded."""

    parts: list
    nbytes: int
    batch: Batch


def encode_frame(batch: Batch) -> Frame:
    if batch.kafka:
        header_runs = [[run.chain, run.topic, run.first_seq, len(run.values), run.before] for run in batch.runs]
        kafka = {"batches": [[kb.topic, kb.partition, kb.partitions, kb.codec, kb.count, kb.nbytes, kb.value_bytes,
                              [[run.chain, run.first_seq, run.count] for run in kb.runs]] for kb in batch.kafka]}
        version = FRAME_FORMAT
    else:
        header_runs = [[run.chain, run.topic, run.first_seq, len(run.values)] for run in batch.runs]
        kafka = {}
        version = _VALUES_ONLY_FORMAT
    header = json.dumps({"v": version,
                         "runs": header_runs,
                         **kafka,
                         "sources": {key: None if source is None else source.to_list()
                                     for key, source in batch.sources.items()},
                         "chains": {name: chain.to_list() for name, chain in batch.chains.items()},
                         "t": batch.read_time},
                        separators=(",", ":")).encode()
    lengths = array("I")
    bodies: list[bytes] = []
    for run in batch.runs:
        values = run.values
        if type(values) is Sealed:
            lengths.extend(values.lengths)
            bodies.extend(values.parts)
        else:
            lengths.extend(map(len, values))
            bodies.extend(values)
    if lengths.itemsize != 4:  # pragma: no cover - every platform we run on has 4-byte unsigned ints
        raise RuntimeError("array('I') is not 32-bit here")
    if struct.pack("=I", 1) != struct.pack("<I", 1):  # pragma: no cover - big-endian hosts
        lengths.byteswap()
    parts = [b"".join([_U32.pack(len(header)), header, _U32.pack(len(lengths)), lengths.tobytes()]), *bodies]
    parts.extend(kb.data for kb in batch.kafka)
    return Frame(parts, sum(map(len, parts)), batch)


def encode_batch(batch: Batch) -> bytes:
    return b"".join(encode_frame(batch).parts)


def _header(payload: "bytes | memoryview") -> tuple[dict, int]:
    (header_len,) = _U32.unpack_from(payload, 0)
    header = json.loads(bytes(payload[4:4 + header_len]))
    version = header.get("v", 1)
    if version not in (1, 2, FRAME_FORMAT):
        raise FrameFormatError(f"a WAL frame of format {version!r}: this release reads formats 1 to {FRAME_FORMAT}; "
                               "run the release that wrote the WAL until it has shipped it, or move the WAL aside")
    return header, 4 + header_len


def decode_checkpoints(payload: "bytes | memoryview"
                       ) -> tuple[dict[str, SourceCheckpoint | None], dict[str, ChainCheckpoint]]:
    """Where the frame leaves its sources and chains (recovery reads only this)."""
    header, _ = _header(payload)
    return _checkpoints(header)


def _checkpoints(header: dict) -> tuple[dict[str, SourceCheckpoint | None], dict[str, ChainCheckpoint]]:
    sources = {key: None if value is None else SourceCheckpoint.from_list(value)
               for key, value in header["sources"].items()}
    chains = {name: ChainCheckpoint.from_list(value) for name, value in header["chains"].items()}
    return sources, chains


def decode_batch(payload: "bytes | memoryview") -> Batch:
    header, position = _header(payload)
    (count,) = _U32.unpack_from(payload, position)
    position += 4
    lengths = array("I")
    lengths.frombytes(payload[position:position + 4 * count])
    if struct.pack("=I", 1) != struct.pack("<I", 1):  # pragma: no cover
        lengths.byteswap()
    position += 4 * count
    ends = array("q", accumulate(lengths, initial=position))
    entries = header.get("batches", [])
    kafka_bytes = sum(entry[5] for entry in entries)
    if ends[-1] + kafka_bytes != len(payload):
        raise ValueError(f"batch body holds {len(payload) - position} bytes, its lengths say "
                         f"{ends[-1] - position} of values and {kafka_bytes} of Kafka batches")
    runs = []
    index = 0
    for chain, topic, first_seq, run_count, *before in header["runs"]:
        runs.append(Run(chain, topic, first_seq, Packed(payload, ends[index:index + run_count + 1]), *before))
        index += run_count
    if index != count:
        raise ValueError(f"batch header names {index} records, the body holds {count}")
    kafka = []
    position = ends[-1]
    view = memoryview(payload)
    for topic, partition, partitions, codec, batch_count, nbytes, value_bytes, batch_runs in entries:
        runs_in = tuple(BatchRun(chain, first_seq, run_count) for chain, first_seq, run_count in batch_runs)
        if sum(run.count for run in runs_in) != batch_count:
            raise ValueError(f"a Kafka batch of {batch_count} records lists runs of {sum(r.count for r in runs_in)}")
        kafka.append(KafkaBatch(topic, partition, partitions, codec, batch_count, value_bytes,
                                view[position:position + nbytes], runs_in))
        position += nbytes
    sources, chains = _checkpoints(header)
    return Batch(runs, sources, chains, header.get("t", 0.0), kafka)
