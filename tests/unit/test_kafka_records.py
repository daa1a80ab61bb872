"""Kafka record batches built from runs of sealed values: the native builder equals the Python reference
byte for byte, and what either builds reads back with aiokafka's own batch reader (CRC, codec, keys,
values, headers). Real brokers taking these batches are the pipeline's integration tests."""
from __future__ import annotations

import cramjam
import pytest
from aiokafka.record.default_records import DefaultRecordBatch
from hypothesis import given, settings
from hypothesis import strategies as st

from shipper.kafka import wire as kafka
from shipper.batch import Batch, Run, decode_batch, encode_batch
from shipper.native import module as native

# values that start as a v1 or v2 record does (the schema header follows the value), or almost do
PREFIXES = [b"", b'{"schema":"audit-shipper/v1"', b'{"schema":"audit-shipper/v2"', b'{"schema":"audit-shipper/v2',
            b'{"schema":"audit-shipper/v3"']
values_strategy = st.lists(st.builds(bytes.__add__, st.sampled_from(PREFIXES), st.binary(min_size=0, max_size=300)),
                           min_size=1, max_size=20)
span_strategy = st.builds(
    lambda key, first_seq, values, cut: (key, first_seq, values, min(cut, len(values) - 1), len(values)),
    st.binary(min_size=1, max_size=80), st.integers(1, 2**40), values_strategy, st.integers(0, 5))


@pytest.mark.skipif(native is None, reason="shipper._native is not built")
@settings(max_examples=300, deadline=None)
@given(spans=st.lists(span_strategy, min_size=1, max_size=6), budget=st.integers(1, 4000),
       limit=st.integers(0, 400))
def test_native_records_equal_the_reference(spans, budget, limit):
    assert native.kafka_records(spans, budget, limit) == kafka.kafka_records_py(spans, budget, limit)
    records, taken, _ = native.kafka_records(spans, budget, limit, 61)
    assert records[:61] == bytes(61) and records[61:] == kafka.kafka_records_py(spans, budget, limit)[0]


@pytest.mark.parametrize("build", [kafka.kafka_records_py] + ([native.kafka_records] if native else []),
                         ids=["python"] + (["native"] if native else []))
@pytest.mark.parametrize("codec", ["none", "gzip", "snappy", "lz4", "zstd"])
def test_a_built_batch_reads_back_with_aiokafka(build, codec):
    values = [b'{"n":%d,"body":"%s"}' % (i, b"x" * (i * 37 % 300)) for i in range(200)]
    spans = [(b"uid-1/app", 41, values, 0, 150), (b"uid-2/web", 7, values, 150, 200)]
    records, taken, value_bytes = build(spans, 1 << 20, 1 << 20, kafka._BATCH_HEADER)
    assert taken == [150, 50] and value_bytes == sum(map(len, values))
    batch = kafka._SpanBatch(kafka._CODECS[codec], records, 200)
    batch._set_producer_state(4242, 3, 1000)
    data = bytes(batch._build())

    reader = DefaultRecordBatch(bytearray(data))
    assert reader.validate_crc()
    assert (reader.producer_id, reader.producer_epoch, reader.base_sequence) == (4242, 3, 1000)
    assert reader.compression_type == kafka._CODECS[codec]
    read = list(reader)
    assert [record.value for record in read] == values
    assert [record.key for record in read] == [b"uid-1/app"] * 150 + [b"uid-2/web"] * 50
    assert [dict(record.headers) for record in read[148:152]] == [
        {"schema": b"audit-shipper/v1", "event_id": b"uid-1/app:189"},
        {"schema": b"audit-shipper/v1", "event_id": b"uid-1/app:190"},
        {"schema": b"audit-shipper/v1", "event_id": b"uid-2/web:7"},
        {"schema": b"audit-shipper/v1", "event_id": b"uid-2/web:8"},
    ]
    assert [record.offset for record in read] == list(range(200))


@pytest.mark.parametrize("build", [kafka.kafka_records_py] + ([native.kafka_records] if native else []),
                         ids=["python"] + (["native"] if native else []))
def test_records_stop_at_the_budget_and_before_an_oversized_value(build):
    values = [b"a" * 100] * 10 + [b"b" * 5000] + [b"c" * 10] * 5
    records, taken, _ = build([(b"k", 1, values, 0, len(values))], 600, 1000)
    assert taken == [4]                       # ~140 bytes a record; the budget is 600
    records, taken, _ = build([(b"k", 1, values, 0, len(values))], 1 << 20, 1000)
    assert taken == [10]                      # the 5,000-byte value is left for the caller to refuse
    records, taken, _ = build([(b"k", 1, values, 10, len(values))], 10, 1 << 20)
    assert taken == [1]                       # the first record always goes, whatever the budget


@settings(max_examples=200, deadline=None)
@given(spans=st.lists(span_strategy, min_size=1, max_size=6), budget=st.integers(1, 4000))
def test_runs_left_inside_their_wal_frame_build_the_same_records(spans, budget):
    """A run decoded from a WAL frame (batch.Packed: the payload and offsets) gives the records its
    values would give as a list, natively and in Python."""
    batch = Batch([Run(key.decode("latin-1"), "logs", seq, values) for key, seq, values, _, _ in spans], {}, {})
    decoded = decode_batch(encode_batch(batch))
    packed = [(key, seq, (run.values.payload, run.values.ends), start, stop)
              for (key, seq, _, start, stop), run in zip(spans, decoded.runs)]
    builders = [kafka.kafka_records_py] + ([native.kafka_records] if native else [])
    for build in builders:
        assert build(packed, budget, 1 << 20) == kafka.kafka_records_py(spans, budget, 1 << 20)


@pytest.mark.parametrize("codec", ["none", "snappy"])
def test_the_batch_header_is_the_one_aiokafka_writes(codec):
    """_RecordsBuilder writes the header and CRC itself (hardware CRC-32C): byte for byte aiokafka's."""
    values = [b'{"n":%d}' % i for i in range(50)]
    records, _, _ = kafka.kafka_records_py([(b"k", 1, values, 0, 50)], 1 << 20, 1 << 20, kafka._BATCH_HEADER)
    ours = kafka._RecordsBuilder(kafka._CODECS[codec], bytearray(records), 50, 1_700_000_000_000)
    ours.set_producer_state(7, 1, 99)
    built = bytes(ours.build())
    theirs = kafka._RecordsBuilder(kafka._CODECS[codec], bytearray(records), 50, 1_700_000_000_000)
    theirs.set_producer_state(7, 1, 99)
    theirs._buffer = bytearray(built)
    kafka._DefaultRecordBatchBuilderPy._write_header(theirs, codec != "none")
    assert theirs._buffer == built


@pytest.mark.skipif(native is None, reason="shipper._native is not built")
@settings(max_examples=300, deadline=None)
@given(data=st.one_of(st.binary(max_size=3000), st.builds(lambda chunk, n: chunk * n, st.binary(min_size=1, max_size=40),
                                                         st.integers(1, 3000))),
       start=st.integers(0, 64))
def test_native_snappy_blocks_read_back_with_the_reference_decoder(data, start):
    """libsnappy (GIL released) against cramjam's decoder, which is the one aiokafka reads with."""
    buffer = bytearray(b"h" * start) + data
    assert bytes(cramjam.snappy.decompress_raw(native.snappy_block(buffer, start))) == data


@pytest.mark.skipif(native is None, reason="shipper._native is not built")
def test_native_snappy_refuses_a_start_outside_the_buffer():
    with pytest.raises(IndexError):
        native.snappy_block(bytearray(b"abc"), 4)
    with pytest.raises(IndexError):
        native.snappy_block(b"abc", -1)


@pytest.mark.parametrize("build", [kafka.kafka_records_py] + ([native.kafka_records] if native else []),
                         ids=["python"] + (["native"] if native else []))
def test_the_schema_header_names_the_values_own_format(build):
    values = [b'{"schema":"audit-shipper/v1","event_id":"u/c:1"}', b'{"schema":"audit-shipper/v2","time":"t"}',
              b'{"schema":"audit-shipper/v2"}', b'{"schema":"audit-shipper/v2x"}', b"not a record"]
    records, taken, _ = build([(b"u/c", 1, values, 0, len(values))], 1 << 20, 1 << 20, kafka._BATCH_HEADER)
    batch = kafka._SpanBatch(kafka._CODECS["none"], records, len(values))
    read = list(DefaultRecordBatch(bytearray(bytes(batch._build()))))
    assert [dict(record.headers)["schema"] for record in read] == [
        b"audit-shipper/v1", b"audit-shipper/v2", b"audit-shipper/v2", b"audit-shipper/v1", b"audit-shipper/v1"]
