"""Kafka-ready WAL frames (batch.py format 3, kafka/prebuild.py) and the sender that forwards them.

A frame holds its records as complete, compressed Kafka batches for the topics whose partition count the
sender knew, as values for the others: it round-trips, every chain's records come back in seq order with
the key and headers the sender would give them, and in the partition murmur2 gives their key. A frame
without Kafka batches is the format-2 frame of the release before, byte for byte, and a WAL of those
frames is recovered and sent. The sender forwards prebuilt batches as they are; a batch the broker
refuses is split down to the refused record, which becomes a gap record naming its seq and hash; a batch
built for a partition count that changed since goes, chain by chain, where murmur2 puts them now.
The broker here is FakeProducer (what a broker keeps of a batch, or its refusal); the real brokers take
these frames in tests/integration and tests/faults.
"""
from __future__ import annotations

import asyncio
import json
import struct
from array import array
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path

import pytest
from aiokafka.errors import MessageSizeTooLargeError
from aiokafka.record.default_records import DefaultRecordBatch
from hypothesis import given, settings
from hypothesis import strategies as st

from shipper.batch import (Batch, FrameFormatError, Run, Sealed, decode_batch, decode_checkpoints, encode_batch,
                           encode_frame)
from shipper.config import Compression, KafkaConfig, load_settings
from shipper.demo.simnode import SimNode
from shipper.merkle import Frontier
from shipper.metrics import Metrics
from shipper.model import ChainCheckpoint, FileId, Fingerprint, SourceCheckpoint
from shipper.kafka import PartitionCounts, Prebuilder, Sender
from shipper.kafka.wire import _CODECS, batch_records, partition_of
from shipper.pipeline import Pipeline, _collect_encoded
from shipper.state import append_keeping_reserve
from tests.support import write_config

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
        values = [value for _, value, _ in batch_records(kafka_batch.data)]
        assert kafka_batch.count == 1 or sum(map(len, values)) <= budget      # cut at kafka.batch_bytes
        assert all(len(value) <= limit for value in values)                   # none too large for a request

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


# -- the sender, against a stand-in broker -----------------------------------------------------------------

class FakeProducer:
    """Stands in for the broker behind aiokafka: keeps what it takes of each batch (the bytes aiokafka would
    send: header, CRC, records), and refuses for good a batch holding a value longer than `refuse_over`
    (as Kafka refuses a batch over a topic's max.message.bytes)."""

    def __init__(self, refuse_over: int | None = None) -> None:
        self.refuse_over = refuse_over
        self.partitions: dict[tuple[str, int], list] = defaultdict(list)
        self.batches: list[bytes] = []

    async def send_batch(self, batch, topic, *, partition):
        data = bytes(batch._build())
        reader = DefaultRecordBatch(bytearray(data))
        assert reader.validate_crc()
        records = list(reader)
        future = asyncio.get_running_loop().create_future()
        if self.refuse_over is not None and any(len(record.value) > self.refuse_over for record in records):
            future.set_exception(MessageSizeTooLargeError())
        else:
            self.batches.append(data)
            self.partitions[(topic, partition)] += records
            future.set_result(None)
        return future


class FakeSink:
    """Stands in for KafkaSink: its producer is a FakeProducer, its metadata `counts`."""

    def __init__(self, config: KafkaConfig, counts: dict[str, int], producer: FakeProducer) -> None:
        self.config = config
        self.codec = _CODECS[config.compression.value]
        self.idempotent = False
        self.producer = producer
        self.counts = counts
        self.partition_counts = PartitionCounts()

    async def start(self, stopping) -> bool:
        return True

    async def partitions(self, topic: str) -> int:
        self.partition_counts.set(topic, self.counts[topic])
        return self.counts[topic]

    def secret_changed(self) -> bool:
        return False


class FakeAcks:
    def __init__(self) -> None:
        self.ends = []

    def frame_acknowledged(self, end, sources, chains) -> None:
        self.ends.append(end)


def send_everything(wal, sink: FakeSink, offered=()) -> tuple[Sender, FakeAcks, list]:
    """Runs a Sender until every frame of the WAL is acknowledged; `offered`: frames also handed over in
    memory, as the pipeline does right after a commit."""
    acks = FakeAcks()
    gaps = []

    async def write_gap(chain, loss, seq, record_hash) -> None:
        # the chain's records the broker has at that moment: the gap comes after those before the refused one
        before = [seq_ for seq_, _ in chain_values(sink.producer).get(chain, [])]
        assert before == list(range(before[0], seq)) if before else seq == 1, (before[-3:], seq)
        gaps.append((chain, seq, record_hash, loss.reason.value))

    async def run() -> Sender:
        sender = Sender(wal, acks, sink, Metrics(), write_gap)
        for start, end, frame in offered:
            sender.offer(start, end, frame)
        sender.make_visible(wal.durable)
        task = asyncio.create_task(sender.run(asyncio.Event()))
        for _ in range(2000):
            if acks.ends and acks.ends[-1] == wal.durable:
                break
            await asyncio.sleep(0.01)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        assert acks.ends and acks.ends[-1] == wal.durable, "not every frame was acknowledged"
        return sender

    return asyncio.run(run()), acks, gaps


def node_pipeline(tmp_path: Path, **sections):
    node = SimNode(tmp_path / "log", pods=3, containers_per_pod=1, rotate_every_bytes=None, seed=11)
    config = write_config(tmp_path / "config.yaml", bootstrap="127.0.0.1:1", node_root=node.root,
                          state_dir=tmp_path / "state", **sections)
    return node, load_settings(str(config))


def node_with_one_big_entry(tmp_path: Path, container: int, body: bytes, kafka: dict):
    """A node of three pods whose container `container` logs one entry of `body` amid 600 others."""
    node, settings = node_pipeline(tmp_path, kafka=kafka)
    node.write(300)
    node.flush()
    with open(node.containers[container].log_path, "ab") as live:
        live.write(b"2026-11-28T18:00:00.5Z stdout F " + body + b"\n")
    node.write(300)
    node.flush()
    return settings


def commit_everything(pipeline: Pipeline, wal, ingest, prebuild=None) -> list:
    """What the ingest loop does, by hand: collect, build, append, sync; returns (start, end, frame)."""
    committed = []
    while (collected := _collect_encoded(ingest, pipeline.settings.wal.commit_bytes, prebuild)) is not None:
        frame, callbacks = collected
        end = append_keeping_reserve(wal, frame)
        committed.append((wal.last_start, end, frame))
        wal.sync()
        for callback in callbacks:
            callback()
    return committed


@contextmanager
def prebuilt_frames(settings, partitions: int):
    """The node's lines read and committed as Kafka-ready frames built for `partitions` partitions;
    yields the open WAL and the (start, end, frame) committed."""
    pipeline = Pipeline(settings)
    wal, state, ingest = pipeline._open_state()
    try:
        counts = PartitionCounts()
        counts.set(settings.kafka.topic, partitions)
        yield wal, commit_everything(pipeline, wal, ingest, Prebuilder(settings.kafka, counts, Metrics()).prebuild)
    finally:
        pipeline._close(wal, state, ingest)


def chain_values(producer: FakeProducer) -> dict[str, list[tuple[int, bytes]]]:
    """Every chain's (seq, value) in the order the broker took them, checking each chain keeps one partition."""
    out: dict[str, list[tuple[int, bytes]]] = defaultdict(list)
    partition_of_chain: dict[str, int] = {}
    for (_topic, partition), records in producer.partitions.items():
        for record in records:
            chain = record.key.decode()
            assert partition_of_chain.setdefault(chain, partition) == partition
            seq = int(dict(record.headers)["event_id"].decode().rsplit(":", 1)[1])
            out[chain].append((seq, record.value))
    return out


def test_a_wal_of_the_release_before_is_recovered_and_sent_then_kafka_ready_frames_after_it(tmp_path):
    node, settings = node_pipeline(tmp_path)
    node.write(3000)
    node.flush()
    pipeline = Pipeline(settings)
    wal, state, ingest = pipeline._open_state()
    old_frames = commit_everything(pipeline, wal, ingest)          # no prebuilder: what main wrote
    assert {frame_format(b"".join(frame.parts)) for _, _, frame in old_frames} == {2}
    pipeline._close(wal, state, ingest)

    node.write(2000)
    node.flush()
    pipeline = Pipeline(settings)
    wal, state, ingest = pipeline._open_state()                     # recovery: roll_forward over format 2
    try:
        counts = PartitionCounts()
        counts.set(settings.kafka.topic, 3)
        new_frames = commit_everything(pipeline, wal, ingest, Prebuilder(settings.kafka, counts, Metrics()).prebuild)
        assert new_frames and all(frame.batch.kafka for _, _, frame in new_frames)
        assert sum(frame.nbytes for _, _, frame in new_frames) * 2 < sum(frame.nbytes for _, _, frame in old_frames)
        producer = FakeProducer()
        sender, _acks, gaps = send_everything(wal, FakeSink(settings.kafka, {settings.kafka.topic: 3}, producer),
                                              offered=new_frames[1:])    # the first one read back from disk
        assert gaps == []
        shipped = chain_values(producer)
        for chain in node.ledger.chains():
            seqs = [seq for seq, _ in shipped[chain]]
            assert seqs == list(range(1, len(seqs) + 1))             # in order, none twice, none missing
            bodies = [json.loads(value)["body"].encode() for _, value in shipped[chain]
                      if not json.loads(value).get("type")]
            assert bodies == node.ledger.bodies(chain)
        built = sender.metrics.kafka_batches
        assert built.labels(built="sender")._value.get() > 0 and built.labels(built="ingest")._value.get() > 0
    finally:
        pipeline._close(wal, state, ingest)


def test_a_kafka_ready_batch_the_broker_refuses_is_split_down_to_the_refused_record_which_becomes_a_gap(tmp_path):
    settings = node_with_one_big_entry(tmp_path, 0, b"x" * 8000, {"batch_bytes": 16384})
    with prebuilt_frames(settings, 1) as (wal, frames):
        written = {}                                             # what the WAL holds, by chain and seq
        for _, _, frame in frames:
            written.update({(chain, seq): value for chain, pairs in records_by_chain(frame.batch).items()
                            for seq, value in pairs})
        big = [(key, value) for key, value in written.items() if len(value) > 8000]
        assert len(big) == 1 and any(kb.count > 1 and any(r.chain == big[0][0][0] for r in kb.runs)
                                     for _, _, frame in frames for kb in frame.batch.kafka)
        (refused_chain, refused_seq), refused_value = big[0]

        producer = FakeProducer(refuse_over=5000)
        sender, _acks, gaps = send_everything(wal, FakeSink(settings.kafka, {settings.kafka.topic: 1}, producer),
                                              offered=frames)
        assert gaps == [(refused_chain, refused_seq, json.loads(refused_value)["seal"]["hash"], "rejected_by_broker")]
        shipped = chain_values(producer)
        assert {(chain, seq): value for chain, pairs in shipped.items() for seq, value in pairs} == \
            {key: value for key, value in written.items() if key != (refused_chain, refused_seq)}
        for chain, pairs in shipped.items():
            assert [seq for seq, _ in pairs] == sorted(seq for seq, _ in pairs)   # the rest in order
        assert sender.metrics.loss_events.labels(reason="rejected_by_broker")._value.get() == 1


def test_a_record_too_large_for_a_request_stays_a_value_between_its_chains_batches_and_becomes_a_gap(tmp_path):
    settings = node_with_one_big_entry(tmp_path, 1, b"y" * 70_000, {"batch_bytes": 16384, "max_request_bytes": 65536})
    with prebuilt_frames(settings, 2) as (wal, frames):
        oversized = [(frame, run) for _, _, frame in frames for run in frame.batch.runs]
        assert len(oversized) == 1
        frame, run = oversized[0]
        assert 0 < run.before < len(frame.batch.kafka) and len(run.values[0]) > 70_000
        producer = FakeProducer()
        _sender, _acks, gaps = send_everything(wal, FakeSink(settings.kafka, {settings.kafka.topic: 2}, producer))
        assert gaps == [(run.chain, run.first_seq, json.loads(run.values[0])["seal"]["hash"], "rejected_by_broker")]
        seqs = [seq for seq, _ in chain_values(producer)[run.chain]]
        assert seqs == [seq for seq in range(1, len(seqs) + 2) if seq != run.first_seq]


def test_a_batch_built_for_a_partition_count_that_changed_goes_chain_by_chain_where_murmur2_puts_it_now(tmp_path):
    node, settings = node_pipeline(tmp_path)
    node.write(3000)
    node.flush()
    with prebuilt_frames(settings, 1) as (wal, frames):           # built for one partition ...
        assert all(kb.partitions == 1 for _, _, frame in frames for kb in frame.batch.kafka)
        written = [records_by_chain(frame.batch) for _, _, frame in frames]
        producer = FakeProducer()
        sender, _acks, gaps = send_everything(wal, FakeSink(settings.kafka, {settings.kafka.topic: 5}, producer),
                                              offered=frames[:1])   # ... sent to a topic of five now
        assert gaps == []
        shipped = chain_values(producer)
        chains = {chain for pairs in written for chain in pairs}
        assert len({partition_of(chain.encode(), 5) for chain in chains}) > 1
        for (topic, partition), records in producer.partitions.items():
            assert {partition_of(record.key, 5) for record in records} == {partition}
        for chain in chains:
            assert shipped[chain] == [pair for pairs in written for pair in pairs.get(chain, [])]
        assert sender.metrics.kafka_batches.labels(built="ingest")._value.get() == 0


def test_a_partition_count_asked_while_the_producer_restarts_is_a_retried_kafka_error_not_a_crash():
    """A refused batch restarts the idempotent producer, which forgets the partition counts: a frame
    dispatched meanwhile asks for one with no producer. That is an error the sender retries (a Kafka
    error), never an assertion that ends the sender's task group and the pipeline with it."""
    import asyncio

    from aiokafka.errors import KafkaConnectionError

    from shipper.kafka import KafkaSink
    from shipper.metrics import Metrics

    sink = KafkaSink(kafka_config(), Metrics())
    with pytest.raises(KafkaConnectionError, match="restarting"):
        asyncio.run(sink.partitions("logs"))
    sink.partition_counts.set("logs", 3)
    assert asyncio.run(sink.partitions("logs")) == 3
