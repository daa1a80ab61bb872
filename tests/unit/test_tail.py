"""Tailer: every byte of every file identity returned exactly once or counted as lost, through each
kind of rotation, deletion, inode reuse, truncation and restore."""
from __future__ import annotations

import gzip
import os
from pathlib import Path

import pytest

from shipper.model import FINGERPRINT_BYTES, ContainerRef, FileId, Fingerprint, LossReason, SourcePosition
from shipper.tail import Tailer

REF = ContainerRef("ns", "pod", "uid-1", "app", 0)


def lines(tag: str, n: int, start: int = 0) -> bytes:
    """n distinct CRI lines of ~200 bytes."""
    pad = "x" * 120
    return b"".join(
        f"2026-11-28T18:00:{(start + i) % 60:02d}.{start + i:09d}Z stdout F {tag} line {start + i} {pad}\n".encode()
        for i in range(n))


def append(path: Path, data: bytes) -> None:
    with open(path, "ab") as f:
        f.write(data)


@pytest.fixture
def live(tmp_path: Path) -> Path:
    d = tmp_path / "pods" / "ns_pod_uid-1" / "app"
    d.mkdir(parents=True)
    path = d / "0.log"
    path.write_bytes(b"")
    return path


def tailer(path: Path, position: SourcePosition | None = None, **kw) -> Tailer:
    kw.setdefault("settle_s", 0.0)
    return Tailer(str(path), REF, position, **kw)


def rotate(path: Path, stamp: str, gz: bool = False) -> Path:
    target = path.with_name(f"{path.name}.{stamp}")
    os.rename(path, target)
    path.write_bytes(b"")
    if gz:
        compress(target)
        return target.with_name(target.name + ".gz")
    return target


def compress(path: Path) -> None:
    with open(path, "rb") as src, gzip.open(path.with_name(path.name + ".gz"), "wb") as dst:
        dst.write(src.read())
    path.unlink()


def create_on_inode(path: Path, inode: int) -> None:
    """Creates `path`, empty, on the freed inode `inode` (ext4 hands a freed inode out again soon); the
    files made on the way wait in the directory above, outside the watched one (a directory made for
    them now would take the inode). Skips the test where that never happens."""
    spares = path.parent.parent
    for _ in range(200):
        path.write_bytes(b"")
        if os.stat(path).st_ino == inode:
            return
        path.rename(spares / f"spare-{os.urandom(4).hex()}")
    pytest.skip("the filesystem did not reuse the inode")


# -- reading ---------------------------------------------------------------------------------------

def test_new_file_is_read_from_the_first_byte(live, tail_record):
    data = lines("a", 50)
    append(live, data)
    rec = tail_record(tailer(live))
    rec.drain()
    assert rec.data == data and rec.segments[0].start == 0 and rec.losses == []


def test_poll_reads_at_most_read_size_and_may_cut_lines(live, tail_record):
    data = lines("a", 100)
    append(live, data)
    rec = tail_record(tailer(live, read_size=1000), read_size=1000)
    first = rec.poll()
    assert sum(len(c.data) for c in first.chunks) == 1000 and not first.chunks[-1].data.endswith(b"\n")
    rec.drain()
    assert rec.data == data


def test_empty_poll_returns_nothing(live, tail_record):
    append(live, lines("a", 3))
    rec = tail_record(tailer(live))
    rec.drain()
    batch = rec.poll()
    assert batch.chunks == [] and batch.losses == [] and not batch.finished


def test_growth_is_picked_up_between_polls(live, tail_record):
    rec = tail_record(tailer(live))
    written = b""
    for i in range(20):
        chunk = lines("a", 3, start=i * 3)
        append(live, chunk)
        written += chunk
        rec.poll()
    assert rec.data == written


# -- rename rotation -------------------------------------------------------------------------------

def test_rename_rotation_finishes_the_old_file_before_the_new(live, tail_record):
    rec = tail_record(tailer(live, read_size=4096))
    old = lines("old", 40)
    append(live, old)
    rec.poll()                                        # part of the old file
    rotated = rotate(live, "20261128-180000")
    new = lines("new", 10)
    append(live, new)
    rec.drain()
    assert [bytes(s.data) for s in rec.segments] == [old, new]
    eof = next(e for e in rec.events if getattr(e, "end_of_file", False))
    assert eof.path == str(rotated)                   # chunks name the file where it is now
    assert rec.losses == []


def test_rotated_file_gzipped_and_deleted_while_open_is_still_drained(live, tail_record):
    rec = tail_record(tailer(live, read_size=2000))
    old = lines("old", 40)
    append(live, old)
    rec.poll()
    rotated = rotate(live, "20261128-180000")
    compress(rotated)                                 # kubelet removes the uncompressed copy
    append(live, lines("new", 5))
    rec.drain()
    assert bytes(rec.segments[0].data) == old and rec.losses == []


def test_writes_landing_in_the_renamed_file_before_the_runtime_reopens_are_read(live, tail_record, fake_clock):
    rec = tail_record(tailer(live, settle_s=5.0, clock=fake_clock))
    append(live, lines("a", 5))
    rec.poll()
    rotated = live.with_name("0.log.20261128-180000")
    os.rename(live, rotated)
    live.write_bytes(b"")                             # reopen created the file, no data yet
    rec.poll()
    late = lines("late", 3, start=5)
    append(rotated, late)                             # the runtime still wrote to the old one
    rec.poll()
    assert not rec.segments[0].ended                  # not final while the new file is empty
    append(live, lines("new", 2))
    rec.drain()
    assert bytes(rec.segments[0].data) == lines("a", 5) + late
    assert bytes(rec.segments[1].data) == lines("new", 2)


def test_idle_after_rotation_finishes_the_old_file_after_settle(live, tail_record, fake_clock):
    rec = tail_record(tailer(live, settle_s=5.0, clock=fake_clock))
    append(live, lines("a", 5))
    rec.poll()
    rotate(live, "20261128-180000")
    rec.drain()
    assert not rec.segments[0].ended
    fake_clock.advance(5.0)
    rec.drain()
    assert rec.segments[0].ended


def test_several_rotations_between_polls_are_read_in_order(live, tail_record):
    rec = tail_record(tailer(live, read_size=1 << 20))
    a, b, c, d = lines("a", 10), lines("b", 10), lines("c", 10), lines("d", 10)
    append(live, a)
    rec.poll()
    rotate(live, "20261128-180000")
    append(live, b)
    rotate(live, "20261128-180010")
    append(live, c)
    rotate(live, "20261128-180020")
    append(live, d)
    rec.drain()
    assert [bytes(s.data) for s in rec.segments] == [a, b, c, d]
    assert rec.losses == []


def test_sibling_compressed_before_its_turn_is_read_from_the_compressed_file(live, tail_record):
    rec = tail_record(tailer(live))
    a, b, c = lines("a", 10), lines("b", 17), lines("c", 10)
    append(live, a)
    rec.poll()
    first = rotate(live, "20261128-180000")
    append(live, b)
    second = rotate(live, "20261128-180010")
    append(live, c)
    compress(second)
    compress(first)
    rec.drain()
    assert [bytes(s.data) for s in rec.segments] == [a, b, c] and rec.losses == []
    assert rec.segments[1].path.endswith("0.log.20261128-180010.gz")


def test_loss_is_reported_before_the_data_that_follows_it(live, tail_record):
    rec = tail_record(tailer(live))
    append(live, lines("a", 3))
    rec.poll()
    first = rotate(live, "20261128-180000")
    append(live, lines("b", 3))
    second = rotate(live, "20261128-180010")
    second.with_name(second.name + ".gz").write_bytes(b"not what gzip wrote")   # compressed, then damaged
    second.unlink()
    append(live, lines("c", 3))
    rec.drain()
    kinds = ["loss" if not hasattr(e, "data") else ("eof" if e.end_of_file else "data") for e in rec.events]
    assert kinds == ["data", "eof", "eof", "loss", "data"]      # the damaged file ends, with nothing read
    assert first.exists()


def test_new_file_held_open_survives_rotation_and_deletion_while_we_read_an_older_one(live, tail_record):
    rec = tail_record(tailer(live, read_size=1000))
    a, b = lines("a", 40), lines("b", 20)
    append(live, a)
    rec.poll()
    rotate(live, "20261128-180000")
    append(live, b)
    rec.poll()                                         # still in a; b is now held open
    assert rec.tailer.open_files == 2
    second = rotate(live, "20261128-180010")
    compress(second)                                   # b's name is gone before we reached it
    rec.drain()
    assert [bytes(s.data) for s in rec.segments][:2] == [a, b]
    assert rec.losses == []
    assert rec.tailer.open_files == 1


def test_drained_rotated_files_are_closed_at_once(live, tail_record):
    rec = tail_record(tailer(live))
    for i in range(30):
        append(live, lines(f"r{i}", 3))
        rec.poll()
        rotate(live, f"20261128-18{i:04d}")
        rec.poll()
        assert rec.tailer.open_files <= 2
    rec.drain()
    assert rec.tailer.open_files == 1
    assert len(rec.segments) == 30 and all(s.ended for s in rec.segments)


# -- copytruncate ------------------------------------------------------------------------------------

def test_copytruncate_reports_the_unread_tail_and_restarts_at_zero(live, tail_record):
    rec = tail_record(tailer(live, read_size=1000))
    before = lines("before", 20)
    append(live, before)
    rec.poll()                                         # 1000 of the bytes
    rec.tailer.watch()
    with open(live, "r+b") as f:
        f.truncate(0)
    after = lines("after", 5)
    append(live, after)
    rec.drain()
    assert bytes(rec.segments[0].data) == before[:1000] and rec.segments[0].ended
    assert bytes(rec.segments[1].data) == after and rec.segments[1].start == 0
    assert [(x.reason, x.bytes_lost) for x in rec.losses] == [(LossReason.TRUNCATED, len(before) - 1000)]


def test_truncate_and_regrow_past_our_offset_is_noticed_by_the_first_bytes(live, tail_record):
    rec = tail_record(tailer(live))
    before = lines("before", 5)
    append(live, before)
    rec.drain()
    with open(live, "r+b") as f:
        f.truncate(0)
    after = lines("after", 30)                         # longer than what we had read
    append(live, after)
    rec.drain()
    assert [bytes(s.data) for s in rec.segments] == [before, after]
    assert [(x.reason, x.bytes_lost) for x in rec.losses] == [(LossReason.TRUNCATED, 0)]


def test_file_cut_beyond_our_offset_loses_only_the_cut_part(live, tail_record):
    rec = tail_record(tailer(live, read_size=1000))
    data = lines("a", 20)
    append(live, data)
    rec.poll()
    with open(live, "r+b") as f:
        f.truncate(2000)
    rec.drain()
    assert rec.data == data[:2000]
    assert [(x.reason, x.bytes_lost) for x in rec.losses] == [(LossReason.TRUNCATED, len(data) - 2000)]


# -- deletion ----------------------------------------------------------------------------------------

def test_file_deleted_while_open_is_drained_then_finished(live, tail_record, fake_clock):
    rec = tail_record(tailer(live, read_size=1000, settle_s=5.0, clock=fake_clock))
    data = lines("a", 30)
    append(live, data)
    rec.poll()
    live.unlink()
    rec.drain()
    assert rec.data == data and not rec.finished
    fake_clock.advance(5.0)
    rec.drain()
    fake_clock.advance(5.0)
    rec.drain()
    assert rec.segments[0].ended and rec.finished and rec.losses == []
    assert rec.tailer.open_files == 0


def test_pod_directory_removed_finishes_without_waiting(live, tail_record, fake_clock):
    import shutil
    rec = tail_record(tailer(live, settle_s=3600.0, clock=fake_clock))
    data = lines("a", 10)
    append(live, data[:500])
    rec.poll()
    append(live, data[500:])
    shutil.rmtree(live.parent.parent)
    rec.drain()
    assert rec.data == data and rec.segments[0].ended and rec.finished


def test_deleted_and_recreated_path_continues_with_the_new_file(live, tail_record):
    rec = tail_record(tailer(live))
    a, b = lines("a", 5), lines("b", 5)
    append(live, a)
    rec.poll()
    live.unlink()
    append(live, b)
    rec.drain()
    assert [bytes(s.data) for s in rec.segments] == [a, b] and not rec.finished


# -- inode reuse -------------------------------------------------------------------------------------

def test_reused_inode_with_other_first_bytes_is_not_resumed(live, tail_record):
    old = lines("old", 10)
    append(live, old)
    st = os.stat(live)
    position = SourcePosition(FileId(st.st_dev, st.st_ino, Fingerprint.of(old)), str(live), 1500)
    with open(live, "r+b") as f:                       # same dev and inode, other content
        f.truncate(0)
    new = lines("new", 10)
    append(live, new)
    assert os.stat(live).st_ino == st.st_ino
    rec = tail_record(tailer(live, position))
    rec.drain()
    assert rec.data == new and rec.segments[0].start == 0
    assert [(x.reason, x.bytes_lost) for x in rec.losses] == [(LossReason.ROTATED_UNREAD, -1)]


def test_kernel_reused_inode_is_a_new_identity(live, tail_record):
    old = lines("old", 10)
    append(live, old)
    st = os.stat(live)
    position = SourcePosition(FileId(st.st_dev, st.st_ino, Fingerprint.of(old)), str(live), len(old))
    live.unlink()
    create_on_inode(live, st.st_ino)
    new = lines("new", 3)
    append(live, new)
    rec = tail_record(tailer(live, position))
    rec.drain()
    assert rec.data == new
    assert rec.losses[0].reason is LossReason.ROTATED_UNREAD


def test_held_rotated_file_is_read_when_an_empty_file_before_it_lost_its_inode_to_a_newer_one(live, tail_record):
    # One descriptor: the empty file E is known by name and inode only, the file after it (c) is
    # held open. E is deleted and a newer empty file gets its inode: it is not E (its name says
    # so), so reading never jumps past c to it.
    rec = tail_record(tailer(live, read_size=1000, max_held_files=1), read_size=1000)
    a, b, c = lines("a", 40), lines("b", 40), lines("c", 5)
    append(live, a)
    rec.poll()                                         # reading a
    rotate(live, "20261128-180000")
    append(live, b)
    rec.poll()                                         # b held open
    rotate(live, "20261128-180001")
    rec.poll()                                         # E, live and empty, tracked: no room left
    while not (rec.segments and rec.segments[-1].path.endswith("180001")):
        rec.poll()                                     # a finished: now reading b
    empty = rotate(live, "20261128-180002")            # E, rotated: its name is learned
    append(live, c)
    rec.poll()                                         # c held open
    rotate(live, "20261128-180003")
    inode = os.stat(empty).st_ino
    empty.unlink()                                     # kubelet deletes the oldest
    rotate(live, "20261128-180004")
    create_on_inode(live, inode)
    rotate(live, "20261128-180005")                    # a newer empty file on E's inode
    rec.drain()
    assert rec.data == a + b + c
    assert rec.losses == []


def test_empty_rotated_file_is_not_taken_for_the_live_file_that_reused_its_inode(live, tail_record):
    # One descriptor, held by b: the empty file E is known by name and inode only. Compressed and
    # gone, its inode goes to the new live file: that is not E (a rotated file never comes back to
    # the live path), so c is read once and E, which held nothing, loses nothing.
    rec = tail_record(tailer(live, read_size=1000, max_held_files=1), read_size=1000)
    a, c = lines("a", 40), lines("c", 5)
    append(live, a)
    rec.poll()                                         # reading a
    rotate(live, "20261128-180000")
    rotate(live, "20261128-180001")                    # b, empty, held open; E, live, tracked
    rec.poll()
    empty = live.with_name("0.log.20261128-180002")
    os.rename(live, empty)                             # the runtime has not reopened its log yet
    rec.poll()                                         # E's rotated name is learned
    inode = os.stat(empty).st_ino
    compress(empty)
    create_on_inode(live, inode)
    append(live, c)
    rec.drain()
    assert rec.data == a + c
    assert rec.losses == []


def test_empty_gz_is_not_taken_for_a_deleted_file_so_the_held_file_after_it_is_read(live, tail_record):
    # a is deleted while we read it (never renamed); h, rotated after it, is held open. An empty
    # .gz newer than h (the tracked empty file E, compressed; its inode reused by the live file,
    # so the rotation went unnoticed) agrees with no first bytes: it says nothing of where a went,
    # and reading goes on with h, not after the .gz.
    rec = tail_record(tailer(live, read_size=1000, max_held_files=1), read_size=1000)
    a, h = lines("a", 40), lines("h", 3)
    append(live, a)
    rec.poll()                                         # reading a
    live.unlink()
    append(live, h)
    rotate(live, "20261128-180001")                    # h held open; E, live and empty, tracked
    rec.poll()
    empty = live.with_name("0.log.20261128-180002")
    os.rename(live, empty)
    inode = os.stat(empty).st_ino
    compress(empty)
    create_on_inode(live, inode)
    rec.drain()
    assert rec.data == a + h
    assert rec.losses == []


# -- restore ---------------------------------------------------------------------------------------

def read_all_and_position(live: Path, tail_record, n_bytes: int | None = None, **kw):
    rec = tail_record(tailer(live, **kw))
    rec.drain()
    seg = rec.segments[-1]
    offset = seg.end if n_bytes is None else seg.start + n_bytes
    fid = FileId(seg.dev, seg.ino, Fingerprint.of(bytes(seg.data[:FINGERPRINT_BYTES])))
    position = rec.tailer.position_of(fid, offset)
    rec.tailer.close()
    return position


def test_restore_resumes_in_the_current_file(live, tail_record):
    data = lines("a", 20)
    append(live, data)
    position = read_all_and_position(live, tail_record, n_bytes=1234)
    more = lines("b", 5)
    append(live, more)
    rec = tail_record(tailer(live, position))
    rec.drain()
    assert rec.data == data[1234:] + more and rec.losses == []


def test_restore_resumes_in_a_rotated_sibling_then_reads_newer_ones(live, tail_record):
    a = lines("a", 20)
    append(live, a)
    position = read_all_and_position(live, tail_record, n_bytes=1000)
    rotate(live, "20261128-180000")
    b = lines("b", 7)
    append(live, b)
    rotate(live, "20261128-180010")
    c = lines("c", 3)
    append(live, c)
    rec = tail_record(tailer(live, position))
    rec.drain()
    assert [bytes(s.data) for s in rec.segments] == [a[1000:], b, c] and rec.losses == []


def test_restore_into_a_compressed_sibling_reads_the_rest_from_it(live, tail_record):
    a = lines("a", 20)
    append(live, a)
    position = read_all_and_position(live, tail_record, n_bytes=1000)
    first = rotate(live, "20261128-180000")
    b = lines("b", 7)
    append(live, b)
    rotate(live, "20261128-180010")
    compress(first)
    c = lines("c", 3)
    append(live, c)
    rec = tail_record(tailer(live, position))
    rec.drain()
    assert [bytes(s.data) for s in rec.segments] == [a[1000:], b, c] and rec.losses == []
    assert rec.segments[0].start == 1000 and rec.segments[0].path.endswith(".gz")


def test_restore_of_a_file_gone_without_trace_starts_after_it(live, tail_record):
    a = lines("a", 20)
    append(live, a)
    rec = tail_record(tailer(live))
    rec.drain()
    first = rotate(live, "20261128-180000")
    rec.drain()                                        # the tailer learns the rotated name
    seg = rec.segments[0]
    position = rec.tailer.position_of(FileId(seg.dev, seg.ino, Fingerprint.of(bytes(seg.data))), 500)
    assert position.path == str(first)
    rec.tailer.close()
    b = lines("b", 4)
    append(live, b)
    rotate(live, "20261128-180010")
    c = lines("c", 4)
    append(live, c)
    first.unlink()
    older = live.with_name("0.log.20261128-170000")    # older than the lost one: must not be read
    older.write_bytes(lines("older", 3))
    rec2 = tail_record(tailer(live, position))
    rec2.drain()
    assert [bytes(s.data) for s in rec2.segments] == [b, c]
    assert [(x.reason, x.bytes_lost) for x in rec2.losses] == [(LossReason.ROTATED_UNREAD, -1)]


def test_restore_after_copytruncate_finishes_from_the_copy(live, tail_record):
    a = lines("a", 20)
    append(live, a)
    position = read_all_and_position(live, tail_record, n_bytes=700)
    copy = live.with_name("0.log.20261128-180000")
    copy.write_bytes(live.read_bytes())
    with open(live, "r+b") as f:
        f.truncate(0)
    b = lines("b", 3)
    append(live, b)
    rec = tail_record(tailer(live, position))
    rec.drain()
    assert [bytes(s.data) for s in rec.segments] == [a[700:], b] and rec.losses == []


def test_new_source_reads_existing_siblings_oldest_first_compressed_ones_too(live, tail_record):
    gz_part, old, cur = lines("gz", 5), lines("old", 5), lines("cur", 5)
    older = live.with_name("0.log.20261128-170000")
    older.write_bytes(gz_part)
    compress(older)
    live.with_name("0.log.20261128-180000").write_bytes(old)
    append(live, cur)
    rec = tail_record(tailer(live))
    rec.drain()
    assert [bytes(s.data) for s in rec.segments] == [gz_part, old, cur] and rec.losses == []


def test_position_after_a_finished_file_points_at_its_successor(live, tail_record):
    a, b = lines("a", 5), lines("b", 5)
    append(live, a)
    rec = tail_record(tailer(live))
    rec.drain()
    rotate(live, "20261128-180000")
    append(live, b)
    rec.poll()
    first = rec.segments[0]
    position = rec.tailer.position_of(FileId(first.dev, first.ino, Fingerprint.of(a)), first.end)
    second = os.stat(live)
    assert (position.file_id.ino, position.offset, position.path) == (second.st_ino, 0, str(live))


# -- short files -------------------------------------------------------------------------------------

def test_short_file_fingerprint_grows_with_the_file(live, tail_record):
    rec = tail_record(tailer(live))
    append(live, b"2026-11-28T18:00:00Z stdout F hi\n")
    first = rec.poll().chunks[0].file_id
    assert first.fingerprint.length == 33
    append(live, lines("more", 3))
    later = rec.poll().chunks[0].file_id
    assert later.fingerprint == Fingerprint.of(live.read_bytes())
    assert rec.tailer.position_of(first, 33).file_id == later
    assert len(rec.segments) == 1                      # same identity all along


def test_restore_with_a_short_fingerprint_matches_as_a_prefix(live, tail_record):
    short = b"2026-11-28T18:00:00Z stdout F hi\n"
    append(live, short)
    st = os.stat(live)
    position = SourcePosition(FileId(st.st_dev, st.st_ino, Fingerprint.of(short)), str(live), len(short))
    more = lines("more", 3)
    append(live, more)
    rec = tail_record(tailer(live, position))
    rec.drain()
    assert rec.data == more and rec.losses == []


def test_restore_with_a_short_fingerprint_of_other_bytes_is_not_resumed(live, tail_record):
    append(live, b"2026-11-28T18:00:00Z stdout F bye\n")
    st = os.stat(live)
    position = SourcePosition(FileId(st.st_dev, st.st_ino, Fingerprint.of(b"2026-11-28T18:00:00Z stdout F hi\n")),
                              str(live), 33)
    rec = tail_record(tailer(live, position))
    rec.drain()
    assert rec.segments[0].start == 0


# -- trouble -----------------------------------------------------------------------------------------

def test_unreadable_path_becomes_a_loss_event_not_an_exception(live, tail_record):
    live.unlink()
    live.mkdir()                                       # open works, read fails with EISDIR
    rec = tail_record(tailer(live))
    first = rec.poll()
    second = rec.poll()
    assert [x.reason for x in first.losses] == [LossReason.UNREADABLE]
    assert "EISDIR" in first.losses[0].detail
    assert second.losses == []                         # reported once per streak


def test_path_that_never_existed_finishes(tmp_path, tail_record):
    rec = tail_record(tailer(tmp_path / "nope" / "0.log"))
    rec.drain()
    assert rec.finished and rec.segments == []


def test_restore_of_a_deleted_pod_reports_the_loss_and_finishes(tmp_path, tail_record):
    path = tmp_path / "gone" / "0.log"
    position = SourcePosition(FileId(1, 2, Fingerprint.parse("ab" * 32)), str(path), 10)
    rec = tail_record(tailer(path, position))
    rec.drain()
    assert rec.finished and [x.bytes_lost for x in rec.losses] == [-1]
