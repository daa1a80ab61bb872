"""What one partition's fetched bytes feed the verifier (fetch.feed_fetched, the Fetcher's pure part): every
record once, in order, from the position on; control batches and batches that cannot be read move the
position; what cannot be read is a violation where it is, never a crash. The Fetcher's I/O is tested
against real brokers in tests/integration/test_verify_kafka.py.
"""
from __future__ import annotations

import asyncio
import json

from aiokafka.record.legacy_records import _LegacyRecordBatchBuilderPy

from shipper.verify import Verifier
from shipper.verify.batches import CONTROL, HEADER_SIZE, read_records_py
from shipper.verify.fetch import UNREADABLE, Fetcher, FetchStats, Stopped, feed_fetched
from tests.unit.test_verify import KEYS, standard_node
from tests.unit.test_verify_fast import encode, headers_for, rows_of

PARTITION = 1


def partition_rows() -> list[tuple]:
    rows = rows_of(standard_node().topic())
    return max(rows.values(), key=len)


def fetched(rows: list[tuple], sizes: list[int], codecs: list[str]) -> tuple[bytes, list[int]]:
    """The batches of rows, of the given sizes and codecs in turn; and where each batch starts in the bytes."""
    out, starts, offset = b"", [], 0
    for index, size in enumerate(sizes):
        starts.append(len(out))
        out += encode(rows[offset:offset + size], offset, codecs[index % len(codecs)])
        offset += size
    return out, starts


def per_record(rows: list[tuple], first: int, last: int) -> dict:
    verifier = Verifier(KEYS)
    for offset in range(first, last):
        key, value, headers = rows[offset]
        verifier.feed(value, key, PARTITION, offset, topic="logs", headers=headers)
    return verifier.finish().to_dict()


def read(data: bytes, position: int = 0) -> tuple:
    verifier = Verifier(KEYS)
    stats = FetchStats()
    result = feed_fetched(verifier, "logs", PARTITION, data, position, stats)
    return result, verifier, stats


def test_every_record_once_in_order_in_every_codec_up_to_a_batch_cut_by_the_fetch_size():
    rows = partition_rows()
    data, starts = fetched(rows, [40, 1, 100, 7, 60, 3], ["none", "gzip", "snappy", "lz4", "zstd"])
    end = 40 + 1 + 100 + 7 + 60
    result, verifier, stats = read(data[:-5])
    assert (result.position, result.records, result.stopped, result.partial) == (end, end, None, False)
    assert verifier.finish().to_dict() == per_record(rows, 0, end)
    assert stats.batches == 5 and stats.records == end and stats.bytes == starts[-1]
    assert min(stats.decode_s, stats.scan_s, stats.judge_s) >= 0


def test_a_position_inside_a_batch_skips_the_records_before_it():
    rows = partition_rows()
    data, _ = fetched(rows, [50, 50], ["snappy"])
    result, verifier, _ = read(data, position=37)
    assert (result.position, result.records) == (100, 63)
    assert verifier.finish().to_dict() == per_record(rows, 37, 100)


def test_a_control_batch_moves_the_position_and_feeds_nothing():
    rows = partition_rows()
    marker = bytearray(encode([(b"\x00\x00\x00\x00", b"\x00\x00\x00\x00\x00\x00", [])], 10, "none"))
    marker[21:23] = (int.from_bytes(marker[21:23], "big") | CONTROL | 0x10).to_bytes(2, "big")
    from crc32c import crc32c
    marker[17:21] = crc32c(bytes(marker[21:])).to_bytes(4, "big")
    data = encode(rows[:10], 0, "none") + bytes(marker)
    result, verifier, _ = read(data)
    assert (result.position, result.records) == (11, 10)
    assert verifier.finish().to_dict() == per_record(rows, 0, 10)


def test_only_a_batch_cut_by_the_fetch_size_asks_for_more():
    rows = partition_rows()
    data = encode(rows[:30], 0, "lz4")
    result, verifier, _ = read(data[:len(data) // 2])
    assert (result.position, result.records, result.partial) == (0, 0, True)


def test_a_batch_whose_crc_fails_is_named_and_its_records_judged():
    rows = partition_rows()
    first, second = encode(rows[:20], 0, "none"), bytearray(encode(rows[20:40], 20, "none"))
    second[-30] ^= 0x01                                      # a bit of the last record's value
    result, verifier, _ = read(first + bytes(second))
    assert (result.position, result.records) == (40, 40)
    report = verifier.finish()
    crc = [issue for issue in report.violations if "CRC-32C" in issue.detail]
    assert [(issue.kind, issue.partition, issue.offset) for issue in crc] == [("malformed", PARTITION, 20)]


def test_a_batch_that_does_not_decompress_is_named_and_skipped():
    rows = partition_rows()
    broken = bytearray(encode(rows[10:20], 10, "zstd"))
    broken[HEADER_SIZE:HEADER_SIZE + 8] = b"\xff" * 8
    data = encode(rows[:10], 0, "none") + bytes(broken) + encode(rows[20:30], 20, "gzip")
    result, verifier, _ = read(data)
    assert (result.position, result.records) == (30, 20)
    report = verifier.finish()
    (issue,) = [issue for issue in report.violations if "decompress" in issue.detail]
    assert issue.offset == 10 and "10 records are not judged" in issue.detail


def test_records_that_cannot_be_read_are_named_after_the_ones_before_them():
    rows = partition_rows()
    batch = bytearray(encode(rows[0:10], 0, "none"))
    records, _ = read_records_py(bytes(batch[HEADER_SIZE:]), 0, 10)
    batch[HEADER_SIZE + records[4].start + 1] = 0x7F                  # inside record 4: its attributes, no more
    batch[HEADER_SIZE + records[4].start] = 0x7E                      # its length: past the batch
    from crc32c import crc32c
    batch[17:21] = crc32c(bytes(batch[21:])).to_bytes(4, "big")
    data = bytes(batch) + encode(rows[10:20], 10, "snappy")
    result, verifier, _ = read(data)
    assert (result.position, result.records) == (20, 14)
    report = verifier.finish()
    (issue,) = [issue for issue in report.violations if "cannot be read" in issue.detail]
    assert issue.offset == 0 and "the records from there to the end of the batch are not judged" in issue.detail


def test_bytes_where_no_batch_can_be_found_stop_the_partition():
    rows = partition_rows()
    broken = bytearray(encode(rows[10:20], 10, "none"))
    broken[8:12] = (3).to_bytes(4, "big")
    result, verifier, _ = read(encode(rows[:10], 0, "none") + bytes(broken))
    assert (result.position, result.records) == (10, 10)
    assert result.stopped is not None and result.stopped.reason == UNREADABLE and result.stopped.offset == 10
    assert any("no record batch can be read at offset 10" in issue.detail for issue in verifier.finish().violations)


def test_a_legacy_message_set_is_read_record_by_record():
    rows = partition_rows()
    builder = _LegacyRecordBatchBuilderPy(1, 0, 1 << 20)
    for index, (key, value, _) in enumerate(rows[:5]):
        builder.append(index, 1_700_000_000_000, key, value)
    result, verifier, _ = read(bytes(builder.build()) + encode(rows[5:9], 5, "none"))
    assert (result.position, result.records) == (9, 9)
    report = verifier.finish()
    # the legacy formats carry no headers: the envelope check names each of those records
    assert report.totals["violation_kinds"] == {"envelope_mismatch": 5}
    assert report.totals["records_read"] == 9 and json.loads(rows[0][1])["seal"]["seq"] == 1
    assert headers_for(rows[0][1])[0] == ("schema", b"audit-shipper/v1")


def test_a_round_with_nothing_to_fetch_waits_its_timeout_instead_of_returning_at_once():
    """A follower whose partitions are all stopped loops on rounds: each must wait, not spin a core."""
    import time

    class FakeClient:                   # a fake: no partition is fetched, so no broker is asked
        def add_topic(self, topic):
            pass

    fetcher = Fetcher(FakeClient(), Verifier(KEYS))
    fetcher.assign("logs", 0, 0)
    fetcher.stopped[("logs", 0)] = Stopped(UNREADABLE, 0, "no batch at offset 0")
    started = time.monotonic()
    assert asyncio.run(fetcher.fetch_once(300)) == 0
    assert time.monotonic() - started >= 0.29
