"""verify_records, the reader of Kafka v2 record batches for the verifier: the native reader
(native/kafka_read.h, native/verify.c) against its reference (shipper.verify.batches.verify_records_py),
on batches the shipper's own encoder (shipper/kafka/wire.py) and aiokafka's builder write, of records in
either format (audit-shipper/v1 and /v2), in every codec, and on the same batches cut and corrupted at
random.

The contract: the offsets, locations and unreadable batches are always the same; the scanned columns
follow verify_scan's contract (native OK => reference OK with the same fields; FOLLOWS a subset); the
envelope flag is the one Verifier.feed's envelope check implies; the runs are the same whenever both
found the same SLOW records. No input makes either crash.
"""
from __future__ import annotations

import json
import random

import pytest
from aiokafka.codec import snappy_encode
from aiokafka.record.default_records import _DefaultRecordBatchBuilderPy
from hypothesis import HealthCheck, example, given, settings, strategies as st

from shipper.kafka.wire import _BATCH_HEADER, _CODECS, _kafka_records, _RecordsBuilder
from shipper.parse import Entries
from shipper.records import ChainContext, seal_entries
from shipper.seal import ChainHead
from shipper.verify import Verifier
from shipper.verify.batches import (CONTROL, COUNT, ERROR_MESSAGES, HEADER_SIZE, LENGTH, NATIVE, NEGATIVE, OFFSET,
                                    SIZE, TRAILING, TRUNCATED, VARINT, BadBatch, RecordScan, batch_records,
                                    read_records_py, split_batches, verify_records, verify_records_py)
from shipper.verify.scan import FLAG_ENVELOPE_OK, FLAG_FOLLOWS, FLAG_OK, FLAG_SLOW

native = pytest.importorskip("shipper._native") if NATIVE else None
needs_native = pytest.mark.skipif(not NATIVE, reason="shipper._native is not built")

TS = b"2026-11-28T18:00:00.123456789Z"
OBSERVED = "2026-11-28T18:00:01.000000000Z"
RESOURCE = '{"k8s.namespace.name":"shop","k8s.pod.name":"web-1","k8s.pod.uid":"uid-1","k8s.container.name":"app"}'
CODEC_NAMES = ["none", "gzip", "snappy", "lz4", "zstd"]


def sealed_values(chain: str, count: int, head: ChainHead | None = None,
                  compact: bool = False) -> tuple[list[bytes], ChainHead]:
    """Records as the shipper seals them: audit-shipper/v1, or the compact /v2 (`compact`)."""
    head = head or ChainHead.genesis(chain)
    entries = Entries()
    for index in range(count):
        entries.add(100 * index, TS, b"stdout", f"line {head.seq + index + 1} of {chain} é".encode(), 0)
    context = ChainContext(chain, RESOURCE, "/var/log/pods/x/0.log", compact=compact)
    return seal_entries(head, entries, context, OBSERVED, None)


def shipper_batch(spans: list[tuple[bytes, int, list[bytes]]], codec: str, base_offset: int = 0) -> bytes:
    """A batch as the shipper sends it (wire.py: kafka_records, then aiokafka's builder and its codec);
    base_offset written as the broker would (it is outside the CRC)."""
    records, taken, _ = _kafka_records([(key, first, values, 0, len(values)) for key, first, values in spans],
                                       1 << 40, 1 << 40, _BATCH_HEADER)
    batch = bytearray(_RecordsBuilder(_CODECS[codec], records, sum(taken), 1_700_000_000_000).build())
    batch[0:8] = base_offset.to_bytes(8, "big", signed=True)
    return bytes(batch)


def builder_batch(records: list[tuple[bytes | None, bytes | None, list]], codec: str, base_offset: int = 0) -> bytes:
    """A batch of arbitrary records by aiokafka's own builder (null keys and values, any headers)."""
    builder = _DefaultRecordBatchBuilderPy(2, _CODECS[codec], 0, -1, -1, -1, 1 << 30)
    for index, (key, value, headers) in enumerate(records):
        assert builder.append(index, 1_700_000_000_000 + index, key, value, headers) is not None
    batch = bytearray(builder.build())
    batch[0:8] = base_offset.to_bytes(8, "big", signed=True)
    return bytes(batch)


def records_of(batch: bytes) -> tuple:
    (raw,), used, bad = split_batches(batch)
    assert used == len(batch) and bad is None and raw.crc_ok()
    return bytes(batch_records(raw)), raw.base_offset, raw.count


def assert_agrees(batches: list[tuple], min_offset: int = 0) -> tuple[RecordScan, RecordScan]:
    expected = RecordScan.from_columns(verify_records_py(batches, min_offset), batches)
    if not NATIVE:
        return expected, expected
    got = RecordScan.from_columns(native.verify_records(batches, min_offset), batches)
    assert got.count == expected.count
    assert got.offsets.tobytes() == expected.offsets.tobytes()
    assert got.locations.tobytes() == expected.locations.tobytes()
    assert got.errors == expected.errors
    mine, theirs = got.scan(), expected.scan()
    for index in range(got.count):
        if got.flags[index] & FLAG_SLOW:
            assert mine.slot(index) == (FLAG_SLOW,)
            continue
        assert not expected.flags[index] & FLAG_SLOW
        if got.flags[index] & FLAG_FOLLOWS:
            assert expected.flags[index] & FLAG_FOLLOWS
        a, b = mine.slot(index), theirs.slot(index)
        assert (a[0] & ~FLAG_FOLLOWS, *a[1:]) == (b[0] & ~FLAG_FOLLOWS, *b[1:])
    if [f & FLAG_SLOW for f in got.flags] == [f & FLAG_SLOW for f in expected.flags]:
        assert native.verify_records(batches, min_offset) == verify_records_py(batches, min_offset)
    for index in range(got.count):
        record = got.record(index)
        assert record.offset == got.offsets[index]
    return got, expected


# -- our own batches ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("compact", [False, True], ids=["v1", "v2"])
@pytest.mark.parametrize("codec", CODEC_NAMES)
def test_shipper_batches_in_every_codec_read_as_runs_of_good_records(codec, compact):
    a, head_a = sealed_values("uid-1/app", 40, compact=compact)
    b, _ = sealed_values("uid-2/web", 7, compact=compact)
    a2, _ = sealed_values("uid-1/app", 5, head_a, compact=compact)
    batch = shipper_batch([(b"uid-1/app", 1, a), (b"uid-2/web", 1, b), (b"uid-1/app", 41, a2)], codec, 1000)
    got, _ = assert_agrees([records_of(batch)])
    assert got.count == 52 and got.errors == []
    assert list(got.offsets) == list(range(1000, 1052))
    good = FLAG_OK | FLAG_ENVELOPE_OK
    assert all(flag & good == good for flag in got.flags)
    assert list(got.runs) == [0, 40, 40, 47, 47, 52]
    assert got.record(45).value == b[5]
    schema = b"audit-shipper/v2" if compact else b"audit-shipper/v1"
    assert got.record(51).headers == [("schema", schema), ("event_id", b"uid-1/app:45")]


def test_snappy_in_the_xerial_framing_of_many_blocks_and_raw_reads_the_same():
    values, _ = sealed_values("uid-1/app", 300)
    plain = shipper_batch([(b"uid-1/app", 1, values)], "none")
    records = plain[HEADER_SIZE:]
    framed = snappy_encode(records, xerial_compatible=True, xerial_blocksize=4096)
    raw = snappy_encode(records, xerial_compatible=False)
    for body in (framed, raw):
        batch = bytearray(plain[:HEADER_SIZE] + body)
        batch[8:12] = (len(batch) - 12).to_bytes(4, "big")
        batch[21:23] = (int.from_bytes(batch[21:23], "big") | 2).to_bytes(2, "big")      # codec snappy
        (rebuilt,), _, _ = split_batches(bytes(batch))
        assert bytes(batch_records(rebuilt)) == records
    assert framed.count(b"SNAPPY") == 1 and len(records) > 3 * 4096


def test_a_batch_cut_by_the_fetch_size_is_left_for_the_next_fetch():
    values, _ = sealed_values("uid-1/app", 20)
    first = shipper_batch([(b"uid-1/app", 1, values[:10])], "snappy", 0)
    second = shipper_batch([(b"uid-1/app", 11, values[10:])], "snappy", 10)
    for cut in (0, 1, 16, 17, 60, len(second) - 1):
        batches, used, bad = split_batches(first + second[:cut])
        assert used == len(first) and [b.base_offset for b in batches] == [0] and bad is None
        assert batches[0].next_offset == 10
    batches, used, _ = split_batches(first + second)
    assert used == len(first) + len(second) and batches[1].next_offset == 20


def test_a_length_no_batch_can_have_is_a_bad_batch():
    values, _ = sealed_values("uid-1/app", 2)
    good = shipper_batch([(b"uid-1/app", 1, values)], "none", 5)
    batch = bytearray(shipper_batch([(b"uid-1/app", 1, values)], "none", 7))
    batch[8:12] = (20).to_bytes(4, "big")
    batches, used, bad = split_batches(good + bytes(batch))
    assert [b.base_offset for b in batches] == [5] and used == len(good)
    assert isinstance(bad, BadBatch) and bad.offset == 7 and "20 bytes" in str(bad)


def test_data_that_does_not_decompress_is_a_bad_batch_and_a_changed_batch_fails_its_crc():
    values, _ = sealed_values("uid-1/app", 30)
    for codec in CODEC_NAMES[1:]:
        batch = bytearray(shipper_batch([(b"uid-1/app", 1, values)], codec, 5))
        batch[HEADER_SIZE + 20:HEADER_SIZE + 40] = bytes(20)
        (raw,), _, _ = split_batches(bytes(batch))
        assert not raw.crc_ok()
        try:
            bytes(batch_records(raw))
        except BadBatch as exc:
            assert exc.offset == 5 and "does not decompress" in str(exc)


def test_a_control_batch_is_marked_and_moves_the_position():
    batch = bytearray(builder_batch([(b"\x00\x00\x00\x00", b"\x00\x00\x00\x00\x00\x00", [])], "none", 41))
    batch[21:23] = (int.from_bytes(batch[21:23], "big") | CONTROL | 0x10).to_bytes(2, "big")
    (raw,), _, _ = split_batches(bytes(batch))
    assert raw.is_control and raw.next_offset == 42


def test_records_below_the_position_are_left_out():
    values, _ = sealed_values("uid-1/app", 10)
    batch = records_of(shipper_batch([(b"uid-1/app", 1, values)], "lz4", 100))
    got, _ = assert_agrees([batch], min_offset=104)
    assert list(got.offsets) == list(range(104, 110)) and list(got.runs) == [0, 6]
    assert got.record(0).value == values[4]


V1, V2 = b"audit-shipper/v1", b"audit-shipper/v2"


def _with_event_id(value: bytes, event_id: str | None) -> bytes:
    record = json.loads(value)
    record["event_id"] = event_id
    return json.dumps(record).encode()


# (format, key, headers (%d: the record's seq), a change to the value, envelope good, feed names a mismatch)
ENVELOPES = [
    ("v1", b"uid-1/app", [("schema", V1), ("event_id", b"uid-1/app:%d")], None, True, False),
    ("v1", None, [("schema", V1), ("event_id", b"uid-1/app:%d")], None, True, False),     # a null key: unchecked
    ("v1", b"uid-1/ap", [("schema", V1), ("event_id", b"uid-1/app:%d")], None, False, True),
    ("v1", b"uid-1/app", [("schema", V1)], None, False, True),
    ("v1", b"uid-1/app", [("schema", V1), ("event_id", b"uid-1/app:%d"), ("schema", V2)], None, False, True),
    ("v1", b"uid-1/app", [("schema", b"x"), ("schema", V1), ("event_id", b"uid-1/app:%d")], None, True, False),
    ("v1", b"uid-1/app", [("schema", None), ("event_id", b"uid-1/app:%d")], None, False, True),
    ("v1", b"uid-1/app", [("schema ", V1), ("event_id", b"uid-1/app:%d")], None, False, True),
    ("v1", b"uid-1/app", [("schema", V1), ("event_id", b"uid-1/app:%d")], "uid-1/app:99", False, True),
    ("v2", b"uid-1/app", [("schema", V2), ("event_id", b"uid-1/app:%d")], None, True, False),
    ("v2", None, [("schema", V2), ("event_id", b"uid-1/app:%d")], None, True, False),
    ("v2", b"uid-1/app", [("schema", V1), ("event_id", b"uid-1/app:%d")], None, False, True),   # a lying header
    ("v2", b"uid-1/app", [("schema", V2), ("event_id", b"uid-1/app:1")], None, False, True),
    ("v2", b"uid-1/app", [("schema", V2)], None, False, True),
    ("v2", b"uid-1/app", [("schema", V2), ("event_id", b"uid-1/app:%d")], "uid-1/app:%d", False, False),
    ("v2", b"uid-1/app", [("schema", V2), ("event_id", b"uid-1/app:%d")], "uid-1/app:1", False, True),
]


def test_the_envelope_is_judged_as_feed_judges_it():
    """FLAG_ENVELOPE_OK exactly when feed would check nothing; a record without it goes through feed, which
    names a mismatch or (a v2 value holding its own event_id after all) finds none."""
    v1_values, _ = sealed_values("uid-1/app", len(ENVELOPES))
    v2_values, _ = sealed_values("uid-1/app", len(ENVELOPES), compact=True)
    records = []
    for index, (form, key, headers, event_id, _, _) in enumerate(ENVELOPES):
        seq = index + 1
        value = (v1_values if form == "v1" else v2_values)[index]
        if event_id is not None:
            value = _with_event_id(value, event_id.replace("%d", str(seq)))
        records.append((key, value, [(k, v.replace(b"%d", b"%d" % seq) if v else v) for k, v in headers]))
    got, _ = assert_agrees([records_of(builder_batch(records, "zstd"))])
    for index, (_, _, _, _, good, mismatch) in enumerate(ENVELOPES):
        assert bool(got.flags[index] & FLAG_ENVELOPE_OK) == good, index
        record = got.record(index)
        verifier = Verifier()
        verifier.feed(record.value, record.key, 0, record.offset, headers=record.headers)
        assert bool(verifier.finish().totals["violation_kinds"].get("envelope_mismatch")) == mismatch, index


@pytest.mark.parametrize("edit, code", [
    (lambda data: data[:-1], LENGTH),
    (lambda data: data + b"\x00", TRAILING),
    (lambda data: data + b"\x02\x00", TRAILING),
    (lambda data: b"\x10\x00\x00\x00\x01\x01\x00\x00\x00" + data, SIZE),     # 8 bytes, fields end after 6
    (lambda data: b"\x08\x00\x00\x00\x02" + data, TRUNCATED),                 # a 1-byte key past its record
    (lambda data: b"\x0c\x00\x00\x00\x03\x01\x00" + data, NEGATIVE),          # a key of length -2
    (lambda data: b"\x0c\x00\x00\x03\x01\x01\x00" + data, OFFSET),            # an offset delta of -2
    (lambda data: b"\xff" * 11 + data, VARINT),
    (lambda data: b"\x7f" + data, LENGTH),
    (lambda data: b"\x03" + data, LENGTH),                                      # a length of -2
])
def test_a_batch_that_cannot_be_read_to_its_end_names_the_record_and_why(edit, code):
    values, _ = sealed_values("uid-1/app", 3)
    records, base, count = records_of(shipper_batch([(b"uid-1/app", 1, values)], "none", 10))
    got, _ = assert_agrees([(edit(records), base, count)])
    ((batch, index, found),) = got.errors
    assert found == code and ERROR_MESSAGES[code]
    assert got.count == index


def test_fewer_records_than_the_header_counts_and_an_offset_past_the_limit():
    values, _ = sealed_values("uid-1/app", 3)
    records, base, count = records_of(shipper_batch([(b"uid-1/app", 1, values)], "none"))
    got, _ = assert_agrees([(records, base, count + 2), (records, 2 ** 63 - 2, count), (records, 0, -1)])
    assert got.errors == [(0, 3, COUNT), (1, 2, OFFSET), (2, 0, TRAILING)]
    assert list(got.offsets) == [0, 1, 2, 2 ** 63 - 2, 2 ** 63 - 1]


# -- random batches, cut and corrupted ----------------------------------------------------------------------

POOL_A, _ = sealed_values("uid-1/app", 30)
POOL_B, _ = sealed_values("uid-2/web", 30, compact=True)                   # a chain of v2 records

record_kinds = st.sampled_from(["ours", "ours", "ours", "altered", "null", "garbage", "wrong_key", "no_headers",
                                "json", "schema"])


@st.composite
def random_records(draw) -> list[tuple]:
    out = []
    seq = {b"uid-1/app": 0, b"uid-2/web": 0}
    for _ in range(draw(st.integers(0, 25))):
        chain = draw(st.sampled_from([b"uid-1/app", b"uid-2/web"]))
        pool = POOL_A if chain == b"uid-1/app" else POOL_B
        index = min(seq[chain], len(pool) - 1) if draw(st.integers(0, 5)) else draw(st.integers(0, len(pool) - 1))
        seq[chain] = index + 1
        value = pool[index]
        schema = b"audit-shipper/v2" if pool is POOL_B else b"audit-shipper/v1"
        headers = [("schema", schema), ("event_id", b"%s:%d" % (chain, index + 1))]
        kind = draw(record_kinds)
        key: bytes | None = chain
        if kind == "altered":
            value = value.replace(b"line", b"LINE")
        elif kind == "null":
            value = None
        elif kind == "garbage":
            value = draw(st.binary(max_size=40))
        elif kind == "wrong_key":
            key = draw(st.sampled_from([None, b"", b"uid-2/web", b"\xff"]))
        elif kind == "no_headers":
            headers = draw(st.lists(st.tuples(st.sampled_from(["schema", "event_id", "x"]),
                                              st.one_of(st.none(), st.binary(max_size=20))), max_size=3))
        elif kind == "json":
            value = json.dumps(json.loads(value), indent=1).encode()
        elif kind == "schema":
            headers = [("schema", draw(st.sampled_from([b"audit-shipper/v1", b"audit-shipper/v2"]))), headers[1]]
        out.append((key, value, headers))
    return out


def _corrupt(data: bytes, rng: random.Random) -> bytes:
    raw = bytearray(data)
    for _ in range(rng.randrange(1, 4)):
        what = rng.randrange(4)
        at = rng.randrange(len(raw) + 1)
        if what == 0 and raw:
            raw[min(at, len(raw) - 1)] ^= 1 << rng.randrange(8)
        elif what == 1:
            del raw[at:at + rng.randrange(1, 4)]
        elif what == 2:
            raw[at:at] = bytes(rng.choice([0x00, 0x01, 0x7F, 0x80, 0xFF, 0xFE]) for _ in range(rng.randrange(1, 4)))
        else:
            del raw[at:]
    return bytes(raw)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(records=random_records(), codec=st.sampled_from(CODEC_NAMES), seed=st.integers(0, 2 ** 32),
       base=st.sampled_from([0, 1, 4711, 2 ** 40]), corrupt=st.booleans())
def test_random_batches_cut_and_corrupted_read_like_the_reference(records, codec, seed, base, corrupt):
    rng = random.Random(seed)
    data, base_offset, count = records_of(builder_batch(records, codec, base)) if records else (b"", base, 0)
    batches = [(data, base_offset, count)]
    if corrupt:
        batches.append((_corrupt(data, rng), base_offset + count, count + rng.choice([-1, 0, 0, 1])))
    min_offset = base_offset + rng.randrange(count + 1) if count and rng.random() < 0.3 else 0
    got, _ = assert_agrees(batches, min_offset)
    if not corrupt and not min_offset:
        assert got.errors == [] and got.count == len(records)
        for index, (key, value, headers) in enumerate(records):
            record = got.record(index)
            assert (record.key, record.value, record.headers) == (key, value, headers)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200), st.integers(-2, 40))
@example(b"", 1)
@example(b"\x00", 1)
@example(b"\x01\x00", 1)
@example(b"\xff" * 12, 1)
def test_garbage_records_never_crash_and_read_like_the_reference(data, count):
    got, _ = assert_agrees([(data, 0, count), (data, 10, count)])
    assert len(got.errors) <= 2
    records, error = read_records_py(data, 0, count)
    assert len(records) == got.count // 2 and (error is None) == (got.errors == [])


@needs_native
def test_arguments_that_are_not_batches_are_type_errors():
    for bad in ([(b"", 0)], [("text", 0, 0)], [5], 5):
        with pytest.raises(TypeError):
            native.verify_records(bad, 0)
    assert native.verify_records([], 0)[:8] == verify_records_py([], 0)[:8]


def test_verify_records_uses_the_native_reader_when_built():
    values, _ = sealed_values("uid-1/app", 3)
    batch = records_of(shipper_batch([(b"uid-1/app", 1, values)], "gzip"))
    assert verify_records([batch]).scan().slot(2) == RecordScan.from_columns(
        verify_records_py([batch]), [batch]).scan().slot(2)
