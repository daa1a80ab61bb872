"""Compressed rotated files: when the uncompressed copy is gone, the tailer reads on from the `.gz`
at the same uncompressed offset, so only bytes that truly cannot be read become a loss. Kubelet
rotations happen while the tailer is stopped; a damaged `.gz` gives what decompresses and a loss
with the byte count of the rest, counted in the ingest's metrics, never an exception."""
from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path

import pytest

from shipper.config import load_settings
from shipper.enrich import build_provider
from shipper.ingest import Ingest
from shipper.metrics import Metrics
from shipper.model import FileId, Fingerprint, LossReason
from shipper.state import Snapshot
from shipper.tail.compressed import GzipReader
from tests.unit.test_tail import REF, live, tailer  # noqa: F401 (live is a fixture)



def lines(tag: str, n: int, start: int = 0) -> bytes:
    return b"".join(f"2026-11-28T18:00:{(start + i) % 60:02d}.{start + i:09d}Z stdout F {tag} line {start + i} "
                    f"{'y' * (40 + (start + i) * 7 % 90)}\n".encode() for i in range(n))


def append(path: Path, data: bytes) -> None:
    with open(path, "ab") as f:
        f.write(data)


def kubelet_compress(path: Path) -> Path:
    """As the kubelet does: gzip into `<name>.tmp`, rename to `<name>.gz`, delete the original."""
    target = path.with_name(path.name + ".gz")
    tmp = path.with_name(path.name + ".tmp")
    with open(path, "rb") as src, open(tmp, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as dst:
        while block := src.read(65536):
            dst.write(block)
    os.rename(tmp, target)
    path.unlink()
    return target


def kubelet_rotate(live: Path, stamp: str) -> Path:
    target = live.with_name(f"{live.name}.{stamp}")
    os.rename(live, target)
    live.write_bytes(b"")
    return target



def read_then_stop(live: Path, tail_record, commit_at: int | None = None, **kw):
    """Read what is there; the committed position is the end of the last line before `commit_at`
    bytes (what a pipeline would have made durable), or all of it. Returns the bytes committed
    and the position, the tailer stopped."""
    rec = tail_record(tailer(live, **kw))
    rec.drain()
    seg = rec.segments[-1]
    data = bytes(seg.data)
    end = len(data) if commit_at is None else data.rfind(b"\n", 0, commit_at) + 1
    fid = FileId(seg.dev, seg.ino, Fingerprint.of(data))
    position = rec.tailer.position_of(fid, seg.start + end)
    rec.tailer.close()
    return data[:end], position


def every_line_once(*parts: bytes) -> list[bytes]:
    out = b"".join(parts).splitlines(keepends=True)
    assert len(out) == len(set(out)), "a line came out twice"
    return out


# -- reading on from a .gz -------------------------------------------------------------------------

def test_rotation_and_gzip_while_stopped_reads_every_line_exactly_once(live, tail_record):
    a = lines("a", 40)
    append(live, a)
    committed, position = read_then_stop(live, tail_record, commit_at=3000)
    more_a = lines("a", 25, start=40)                 # written while the shipper was down
    append(live, more_a)
    kubelet_compress(kubelet_rotate(live, "20261128-180000"))
    b = lines("b", 30)
    append(live, b)
    rec = tail_record(tailer(live, position))
    rec.drain()
    assert rec.losses == []
    assert [bytes(s.data) for s in rec.segments] == [(a + more_a)[len(committed):], b]
    assert rec.segments[0].start == len(committed) and rec.segments[0].path.endswith("0.log.20261128-180000.gz")
    assert every_line_once(committed, rec.data) == (a + more_a + b).splitlines(keepends=True)


def test_several_rotations_while_stopped_read_gz_and_plain_siblings_in_order(live, tail_record):
    a = lines("a", 30)
    append(live, a)
    committed, position = read_then_stop(live, tail_record, commit_at=2500)
    kubelet_rotate(live, "20261128-180000")
    b = lines("b", 20)
    append(live, b)
    kubelet_rotate(live, "20261128-180010")
    c = lines("c", 20)
    append(live, c)
    kubelet_rotate(live, "20261128-180020")
    kubelet_compress(live.with_name("0.log.20261128-180000"))   # the kubelet compresses all but the newest
    kubelet_compress(live.with_name("0.log.20261128-180010"))
    d = lines("d", 5)
    append(live, d)
    rec = tail_record(tailer(live, position))
    rec.drain()
    assert rec.losses == []
    assert [bytes(s.data) for s in rec.segments] == [a[len(committed):], b, c, d]
    assert every_line_once(committed, rec.data) == (a + b + c + d).splitlines(keepends=True)


def test_position_committed_from_the_gz_resumes_in_it(live, tail_record):
    a = lines("a", 60)
    append(live, a)
    committed, position = read_then_stop(live, tail_record, commit_at=1000)
    kubelet_compress(kubelet_rotate(live, "20261128-180000"))
    append(live, lines("b", 3))
    # Read part of the rest from the .gz, commit there, stop again.
    rec = tail_record(tailer(live, position, read_size=4096))
    rec.poll()
    chunk_end = rec.segments[0].end
    cut = rec.data.rfind(b"\n") + 1
    seg = rec.segments[0]
    position2 = rec.tailer.position_of(FileId(seg.dev, seg.ino, Fingerprint.of(a)),
                                       seg.start + cut)
    assert position2.path.endswith(".gz") and chunk_end > position2.offset > position.offset
    rec.tailer.close()
    again = tail_record(tailer(live, position2))
    again.drain()
    assert again.losses == [] and again.segments[0].start == position2.offset
    assert every_line_once(committed, rec.data[:cut], again.data) == (a + lines("b", 3)).splitlines(keepends=True)


def test_position_at_the_end_of_a_file_since_compressed_goes_on_after_it(live, tail_record):
    a = lines("a", 30)
    append(live, a)
    committed, position = read_then_stop(live, tail_record)
    assert committed == a
    kubelet_compress(kubelet_rotate(live, "20261128-180000"))
    b = lines("b", 4)
    append(live, b)
    rec = tail_record(tailer(live, position))
    rec.drain()
    assert rec.data == b and rec.losses == []


def test_skipping_to_a_far_offset_is_bounded_per_poll(live, tail_record):
    a = lines("a", 4000)                              # ~0.5 MB
    append(live, a)
    committed, position = read_then_stop(live, tail_record, commit_at=len(a) - 500)
    kubelet_compress(kubelet_rotate(live, "20261128-180000"))
    rec = tail_record(tailer(live, position, read_size=8192))
    empty_polls = 0
    while not rec.segments:
        batch = rec.poll()
        empty_polls += not batch.chunks
        assert empty_polls < 100
    # at most 8 reads' worth decompressed and discarded per poll: several polls to get there
    assert empty_polls >= (position.offset // (8 * 8192)) - 1
    rec.drain()
    assert rec.data == a[len(committed):]


def test_reader_decompresses_in_bounded_pieces_and_reads_every_member(tmp_path):
    path = tmp_path / "big.gz"
    with gzip.open(path, "wb") as f:
        f.write(b"z" * (8 << 20))                     # 8 MiB of one byte: a few kB compressed
    reader = GzipReader(str(path))
    try:
        assert reader.skip(3 << 20) == 3 << 20 and reader.offset == 3 << 20
        piece = reader.read(100_000)
        assert len(piece) == 100_000 and reader.offset == (3 << 20) + 100_000
        assert reader.trailer_size() == 8 << 20
        assert len(reader._in) <= 16 * 1024 and len(reader._ahead) == 0   # nothing held beyond one piece
    finally:
        reader.close()
    two = tmp_path / "two.gz"
    two.write_bytes(gzip.compress(b"first member\n") + gzip.compress(b"second member\n") + bytes(10))
    reader = GzipReader(str(two))
    try:
        assert reader.read(1000) == b"first member\nsecond member\n" and reader.done and reader.damage is None
    finally:
        reader.close()


# -- damaged .gz files -----------------------------------------------------------------------------

def compress_damaged(path: Path, good: int) -> Path:
    """Compress `path` as the kubelet would, but with damage right after its first `good` bytes: the
    deflate stream is flushed to a byte boundary there and 16 zero bytes follow (a stored block whose
    length check fails at once), so exactly `good` bytes decompress. Header and trailer are intact."""
    data = path.read_bytes()
    deflate = zlib.compressobj(6, zlib.DEFLATED, -15)
    body = deflate.compress(data[:good]) + deflate.flush(zlib.Z_FULL_FLUSH) + bytes(16)
    body += deflate.compress(data[good:]) + deflate.flush()
    target = path.with_name(path.name + ".gz")
    target.write_bytes(b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff" + body
                       + zlib.crc32(data).to_bytes(4, "little") + len(data).to_bytes(4, "little"))
    path.unlink()
    return target


def test_corrupt_gz_gives_what_decompresses_then_a_loss_of_the_exact_rest(live, tail_record):
    a = lines("a", 200)
    append(live, a)
    committed, position = read_then_stop(live, tail_record, commit_at=2000)
    gz = compress_damaged(kubelet_rotate(live, "20261128-180000"), good=len(committed) + 5000)
    b = lines("b", 10)
    append(live, b)
    rec = tail_record(tailer(live, position))
    rec.drain()
    got = bytes(rec.segments[0].data)
    assert got == a[len(committed):len(committed) + 5000]
    assert [(x.reason, x.path) for x in rec.losses] == [(LossReason.CORRUPT, str(gz))]
    loss = rec.losses[0]
    assert loss.bytes_lost == len(a) - len(committed) - len(got) and loss.offset == len(committed) + len(got)
    assert "corrupt" in loss.detail and "may be damaged" in loss.detail
    assert bytes(rec.segments[1].data) == b          # the next file, read whole after the loss
    kinds = ["loss" if not hasattr(e, "data") else ("eof" if e.end_of_file else "data") for e in rec.events]
    assert kinds.index("loss") > kinds.index("eof")     # in stream order: after what was read of it


def test_truncated_gz_gives_what_decompresses_then_a_loss_of_unknown_size(live, tail_record):
    a = lines("a", 200)
    append(live, a)
    committed, position = read_then_stop(live, tail_record, commit_at=2000)
    gz = kubelet_compress(kubelet_rotate(live, "20261128-180000"))
    with open(gz, "r+b") as f:
        f.truncate(gz.stat().st_size * 2 // 3)        # the trailer, with the size, is gone too
    b = lines("b", 10)
    append(live, b)
    rec = tail_record(tailer(live, position))
    rec.drain()
    got = bytes(rec.segments[0].data)
    assert a[len(committed):].startswith(got) and 0 < len(got) < len(a) - len(committed)
    assert [(x.reason, x.bytes_lost, x.offset) for x in rec.losses] == [
        (LossReason.CORRUPT, -1, len(committed) + len(got))]
    assert "truncated" in rec.losses[0].detail
    assert bytes(rec.segments[1].data) == b


def test_file_tracked_then_compressed_and_damaged_before_its_turn_counts_the_exact_rest(live, tail_record):
    # Nothing held ahead (max_held_files=0): the rotated file is known by name, inode and size only.
    rec = tail_record(tailer(live, read_size=2000, max_held_files=0))
    a = lines("a", 60)
    append(live, a)
    rec.poll()
    kubelet_rotate(live, "20261128-180000")
    b = lines("b", 200)
    append(live, b)
    second = kubelet_rotate(live, "20261128-180010")
    c = lines("c", 5)
    append(live, c)
    rec.poll()                                        # sees both rotations; tracks the second file
    gz = compress_damaged(second, good=7000)
    rec.drain()
    assert bytes(rec.segments[0].data) == a
    got = bytes(rec.segments[1].data)
    assert rec.segments[1].path == str(gz) and got == b[:7000]
    # the size it had before compression (and in the trailer) less what was returned
    assert [(x.reason, x.bytes_lost) for x in rec.losses] == [(LossReason.CORRUPT, len(b) - len(got))]
    assert bytes(rec.segments[2].data) == c


def test_gz_that_is_not_gzip_at_all_is_one_loss_and_reading_goes_on(live, tail_record):
    junk = live.with_name("0.log.20261128-170000.gz")
    junk.write_bytes(os.urandom(5000))
    older = lines("older", 4)
    live.with_name("0.log.20261128-180000").write_bytes(older)
    b = lines("b", 3)
    append(live, b)
    rec = tail_record(tailer(live))
    rec.drain()
    assert rec.data == older + b
    assert [(x.reason, x.bytes_lost, x.path) for x in rec.losses] == [(LossReason.CORRUPT, -1, str(junk))]


def test_empty_gz_is_a_loss_not_silence(live, tail_record):
    a = lines("a", 20)
    append(live, a)
    committed, position = read_then_stop(live, tail_record, commit_at=1500)
    gz = kubelet_compress(kubelet_rotate(live, "20261128-180000"))
    gz.write_bytes(b"")                               # a crash after the rename, before the data
    b = lines("b", 2)
    append(live, b)
    rec = tail_record(tailer(live, position))
    rec.drain()
    assert rec.data == b
    # The position's file is nowhere (unknown loss), and the empty .gz says nothing of its size.
    assert rec.losses and all(x.bytes_lost == -1 for x in rec.losses)


def test_empty_file_seen_compressed_then_deleted_before_its_turn_is_no_loss(live, tail_record):
    # Its whole .gz said it held nothing: deleted unread, it lost nothing (not an unknown amount).
    rec = tail_record(tailer(live, read_size=1000), read_size=1000)
    a, b = lines("a", 40), lines("b", 3)
    append(live, a)
    rec.poll()                                        # reading a
    first = kubelet_rotate(live, "20261128-180000")
    empty = kubelet_compress(kubelet_rotate(live, "20261128-180010"))
    append(live, b)
    rec.poll()                                        # still in a; the empty .gz taken as next
    first.unlink()                                    # kubelet deletes the oldest first
    empty.unlink()
    rec.drain()
    assert rec.data == a + b
    assert rec.losses == []


# -- the ingest: a gap record, counted in the metrics ----------------------------------------------

def _ingest(root: Path, tmp_path: Path, snapshot: Snapshot) -> Ingest:
    settings = load_settings(None, node_name="n", sources={"roots": [str(root)], "symlink_roots": [],
                                                           "watch": "poll"},
                             enrich={"kubernetes": False}, wal={"dir": str(tmp_path / "wal")},
                             state={"dir": str(tmp_path)})
    metrics = Metrics()
    return Ingest(settings, snapshot, metrics, build_provider(settings, metrics))


def _collect_all(ingest: Ingest, snapshot: Snapshot) -> list[dict]:
    """Every record, each batch applied to `snapshot` as the pipeline's commit would."""
    import json

    out = []
    idle = 0
    while idle < 3:                                   # a poll may end a file and find nothing yet
        collected = ingest.collect(1 << 20)
        if collected is None:
            idle += 1
            continue
        idle = 0
        batch = collected[0]
        for run in batch.runs:
            out.extend(json.loads(value) for value in run.values)
        snapshot.apply(batch.sources, batch.chains, snapshot.position)
    return out


def test_ingest_turns_a_corrupt_gz_into_a_gap_record_with_its_bytes_and_counts_it(live, tmp_path):
    root = live.parents[2]
    a = lines("a", 100)
    append(live, a)
    snapshot = Snapshot()
    first = _ingest(root, tmp_path / "one", snapshot)
    try:
        bodies = [r["body"] for r in _collect_all(first, snapshot) if "type" not in r]
    finally:
        first.close()
    assert len(bodies) == 100
    more = lines("a", 200, start=100)
    append(live, more)                                # written while stopped, then rotated and damaged
    gz = compress_damaged(kubelet_rotate(live, "20261128-180000"), good=len(a) + len(more) // 2)
    b = lines("b", 5)
    append(live, b)
    second = _ingest(root, tmp_path / "two", snapshot)
    try:
        records = _collect_all(second, snapshot)
    finally:
        second.close()
    gaps = [r for r in records if r.get("type") == "gap"]
    entries = [r for r in records if "type" not in r]
    assert len(gaps) == 1, gaps
    gap = gaps[0]
    read_of_more = entries[:-5]
    assert 0 < len(read_of_more) < 200 and read_of_more[0]["body"].startswith("a line 100 ")
    assert gap["gap"]["reason"] == "corrupt" and gap["gap"]["bytes"] > 0
    assert gap["seal"]["seq"] == read_of_more[-1]["seal"]["seq"] + 1       # the gap after what was read
    # the lost bytes are the rest of the file after the last byte returned (the parser shipped a
    # cut last line as it was, so everything before the gap's offset reached a record)
    assert gap["gap"]["bytes"] == len(a) + len(more) - json_offset(gap)
    assert [r["body"] for r in entries[-5:]] == [line.split(b" F ", 1)[1].decode().rstrip("\n")
                                                 for line in b.splitlines(keepends=True)]
    metrics = second.metrics
    assert metrics.loss_events.labels(reason="corrupt")._value.get() == 1
    assert metrics.lost_bytes.labels(reason="corrupt")._value.get() == gap["gap"]["bytes"]
    assert metrics.gap_records.labels(reason="corrupt")._value.get() == 1


def json_offset(gap: dict) -> int:
    import json

    return json.loads(gap["body"])["offset"]
