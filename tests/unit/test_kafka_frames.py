"""Kafka-ready WAL frames (batch.py format 3, kafka/prebuild.py).

A frame holds its records as complete, compressed Kafka batches for the topics whose partition count the
sender knew, as values for the others: it round-trips, every chain's records come back in seq order with
the key and headers the sender would give them, and in the partition murmur2 gives their key. A frame
without Kafka batches is the format-2 frame of the release before, byte for byte.
"""
from __future__ import annotations

import json
import struct
from array import array
from collections import defaultdict

import pytest
from aiokafka.record.default_records import DefaultRecordBatch
from hypothesis import given, settings
from hypothesis import strategies as st

from shipper.batch import (Batch, FrameFormatError, Run, Sealed, decode_batch, decode_checkpoints, encode_batch,
                           encode_frame)
from shipper.config import Compression, KafkaConfig
from shipper.kafka import PartitionCounts, Prebuilder
from shipper.kafka.wire import batch_records, partition_of
from shipper.merkle import Frontier
from shipper.metrics import Metrics
from shipper.model import ChainCheckpoint, FileId, Fingerprint, SourceCheckpoint

SOURCE = SourceCheckpoint(FileId(1, 2, Fingerprint.of(b"fp")), "/p", 9, "u/app")
CHAIN = ChainCheckpoint(43, bytes(range(32)), False, Frontier(7, bytes(32) * 3))


def kafka_config(**values) -> KafkaConfig:
    """Kafka options as given, below the configured minimums too (small batches, small requests)."""
    return KafkaConfig.model_construct(**{"compression": Compression.snappy, "batch_bytes": 1 << 20,
                                          "max_request_bytes": 2 << 20, "retry_backoff_ms": 1,
                                          "retry_backoff_max_ms": 5, "max_in_flight_bytes": 8 << 20} | values)


def frame_format(payload: bytes) -> int:
    return json.loads(payload[4:4 + struct.unpack_from("<I", payload)[0]])["v"]


def in_dispatch_order(batch: Batch):
    """The runs and Kafka batches of a batch in the order the sender queues them (a run before the Kafka
    batch its `before` names)."""
    runs = sorted(batch.runs, key=lambda run: run.before)
    for index, kafka_batch in enumerate(batch.kafka):
        while runs and runs[0].before <= index:
            yield runs.pop(0)
        yield kafka_batch
    yield from runs


def records_by_chain(batch: Batch) -> dict[str, list[tuple[int, bytes]]]:
    """Every chain's (seq, value) pairs, in dispatch order, reading each Kafka batch back with aiokafka's
    reader (CRC, codec, key, headers checked against what its header entry says)."""
    out: dict[str, list[tuple[int, bytes]]] = defaultdict(list)
    for item in in_dispatch_order(batch):
        if isinstance(item, Run):
            out[item.chain] += [(item.first_seq + i, value) for i, value in enumerate(item.values)]
            continue
        reader = DefaultRecordBatch(bytearray(item.data))
        assert reader.validate_crc() and reader.compression_type == item.codec
        assert (reader.producer_id, reader.producer_epoch, reader.base_sequence) == (-1, -1, 0)
        records = list(reader)
        assert len(records) == item.count == sum(run.count for run in item.runs)
        assert sum(len(record.value) for record in records) == item.value_bytes
        index = 0
        for run in item.runs:
            assert partition_of(run.chain.encode(), item.partitions) == item.partition
            for seq in range(run.first_seq, run.first_seq + run.count):
                record = records[index]
                headers = dict(record.headers)
                assert record.key == run.chain.encode() and headers["event_id"] == f"{run.chain}:{seq}".encode()
                assert headers["schema"] in (b"audit-shipper/v1", b"audit-shipper/v2")
                out[run.chain].append((seq, record.value))
                index += 1
    return out


value_strategy = st.one_of(st.binary(min_size=1, max_size=200), st.builds(lambda n: b"v" * n, st.integers(1, 3000)))
runs_strategy = st.lists(
    st.tuples(st.sampled_from(["u/app", "u/web", "w/db", "node/n", "x/y"]), st.integers(1, 10**9),
              st.sampled_from(["logs", "audit", "new"]),
              st.lists(st.lists(value_strategy, min_size=1, max_size=6), min_size=1, max_size=4)),
    max_size=6, unique_by=lambda run: run[0])


@settings(max_examples=150, deadline=None)
@given(runs=runs_strategy, logs=st.integers(1, 4), audit=st.integers(1, 3), budget=st.integers(100, 6000),
       limit=st.integers(500, 4000), codec=st.sampled_from(["none", "snappy", "gzip", "zstd"]))
def test_a_kafka_ready_frame_round_trips_and_holds_every_record_in_its_chains_order(runs, logs, audit, budget,
                                                                                   limit, codec):
    batch = Batch([], {"k": SOURCE, "gone": None}, {"u/app": CHAIN}, 12.5)
    expected: dict[str, list[tuple[int, bytes]]] = {}
    for chain, seq, topic, blobs in runs:
        values = Sealed()
        for blob in blobs:                      # one sealing call per blob, as the ingest does
            values.add_packed(b"".join(blob), array("I", map(len, blob)))
        batch.runs.append(Run(chain, topic, seq, values))
        expected[chain] = [(seq + i, value) for i, value in enumerate(values)]
    counts = PartitionCounts()
    counts.set("logs", logs)
    counts.set("audit", audit)                  # "new": not known yet, its runs stay values
    prebuilder = Prebuilder(kafka_config(compression=Compression(codec), batch_bytes=budget + 61,
                                         max_request_bytes=limit + 512), counts, Metrics())
    ready = prebuilder.prebuild(batch)
    assert ready.record_count == batch.record_count
    assert records_by_chain(ready) == expected
    for run in ready.runs:                      # values: an unknown topic's runs, or a record too large
        assert run.topic == "new" or len(run.values) == 1 and len(run.values[0]) > limit
    for kafka_batch in ready.kafka:
        assert kafka_batch.topic != "new"
        assert kafka_batch.count == 1 or len(batch_records(kafka_batch.data)) and \
            sum(len(value) for _, value, _ in batch_records(kafka_batch.data)) <= budget

    frame = encode_frame(ready)
    payload = b"".join(frame.parts)
    assert frame.nbytes == len(payload)
    assert frame_format(payload) == (3 if ready.kafka else 2)
    decoded = decode_batch(payload)
    assert records_by_chain(decoded) == expected
    assert [bytes(kb.data) for kb in decoded.kafka] == [bytes(kb.data) for kb in ready.kafka]
    assert [(kb.topic, kb.partition, kb.partitions, kb.codec, kb.count, kb.value_bytes, kb.runs)
            for kb in decoded.kafka] == [(kb.topic, kb.partition, kb.partitions, kb.codec, kb.count, kb.value_bytes,
                                          kb.runs) for kb in ready.kafka]
    assert [run.before for run in decoded.runs] == [run.before for run in ready.runs]
    assert (decoded.sources, decoded.chains, decoded.read_time) == (batch.sources, batch.chains, 12.5)
    assert decode_checkpoints(payload) == (batch.sources, batch.chains)


# What the release before wrote for this batch (batch.encode_frame on main): a batch without Kafka
# batches is still written so, and read back.
FORMAT_2_FRAME = (
    b'\xf0\x01\x00\x00{"v":2,"runs":[["u/app","logs",41,3],["v/web","logs-b",7,2]],"sources":{"k":[1,2,"2:5aef96240bca'
    b'5582e6fd0468879a26863d81d1c1fb602def55926ef33ec8bb1f","/p",9,"u/app"],"gone":null},"chains":{"u/app"'
    b':[43,"000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f",false,"000000000000000700000'
    b'0000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000'
    b'000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"]},"t":12.5}'
    b'\x05\x00\x00\x00\x07\x00\x00\x00\x08\x00\x00\x00\t\x00\x00\x00\x01\x00\x00\x00\x02\x00\x00\x00'
    b'{"a":1}{"b":22}{"c":333}xyz'
)


def test_a_batch_without_kafka_batches_is_the_format_2_frame_of_the_release_before():
    sealed = Sealed()
    sealed.add_packed(b'{"a":1}{"b":22}', array("I", [7, 8]))
    sealed.append(b'{"c":333}')
    batch = Batch([Run("u/app", "logs", 41, sealed), Run("v/web", "logs-b", 7, [b"x", b"yz"])],
                  {"k": SOURCE, "gone": None}, {"u/app": CHAIN}, 12.5)
    assert encode_batch(batch) == FORMAT_2_FRAME
    # a prebuilder that knows no topic leaves the batch as it is
    assert encode_batch(Prebuilder(kafka_config(), PartitionCounts(), Metrics()).prebuild(batch)) == FORMAT_2_FRAME
    decoded = decode_batch(FORMAT_2_FRAME)
    assert [(run.chain, run.first_seq, list(run.values)) for run in decoded.runs] == [
        ("u/app", 41, [b'{"a":1}', b'{"b":22}', b'{"c":333}']), ("v/web", 7, [b"x", b"yz"])]
    assert decoded.kafka == [] and decode_checkpoints(FORMAT_2_FRAME) == ({"k": SOURCE, "gone": None}, {"u/app": CHAIN})


def test_recovery_reads_the_headers_of_formats_1_2_and_3_and_refuses_a_newer_one():
    counts = PartitionCounts()
    counts.set("logs", 2)
    ready = Prebuilder(kafka_config(), counts, Metrics()).prebuild(
        Batch([Run("u/app", "logs", 44, [b'{"d":4}'])], {"k": SOURCE}, {"u/app": CHAIN}, 3.0))
    format_3 = b"".join(encode_frame(ready).parts)
    (length,) = struct.unpack_from("<I", format_3)
    header = json.loads(format_3[4:4 + length])
    # one small record: snappy would not make it smaller, so it is left uncompressed (codec 0)
    assert header["v"] == 3 and header["batches"][0][:5] == ["logs", partition_of(b"u/app", 2), 2, 0, 1]
    assert decode_checkpoints(format_3) == ({"k": SOURCE}, {"u/app": CHAIN})
    assert decode_checkpoints(FORMAT_2_FRAME) == ({"k": SOURCE, "gone": None}, {"u/app": CHAIN})
    (length_2,) = struct.unpack_from("<I", FORMAT_2_FRAME)
    header_1 = json.loads(FORMAT_2_FRAME[4:4 + length_2])
    del header_1["v"]                           # format 1: no "v", chains without a tree
    header_1["chains"] = {name: value[:3] for name, value in header_1["chains"].items()}
    encoded = json.dumps(header_1).encode()
    assert decode_checkpoints(struct.pack("<I", len(encoded)) + encoded + FORMAT_2_FRAME[4 + length_2:])[1] == {
        "u/app": ChainCheckpoint(CHAIN.seq, CHAIN.hash, False, Frontier())}
    header["v"] = 4
    newer = json.dumps(header).encode()
    newer = struct.pack("<I", len(newer)) + newer + format_3[4 + length:]
    for decode in (decode_checkpoints, decode_batch):
        with pytest.raises(FrameFormatError, match="format 4.*formats 1 to 3.*release that wrote the WAL"):
            decode(newer)
