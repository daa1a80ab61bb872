"""The WAL's invariants (see shipper/wal.py): each test is named after the one it proves."""
from __future__ import annotations

from array import array

import os
import stat

import pytest
from hypothesis import given, settings, strategies as st

from shipper.batch import Batch, Run, Sealed, decode_batch, encode_batch, encode_frame
from shipper.merkle import Frontier
from shipper.model import ChainCheckpoint, FileId, Fingerprint, SourceCheckpoint
from shipper.wal import HEADER_SIZE, Wal, WalError, WalPosition, segment_name


def open_wal(path, max_bytes=1 << 20, segment_bytes=4096) -> Wal:
    return Wal(path, max_bytes=max_bytes, segment_bytes=segment_bytes)


def frames(wal: Wal, start=None) -> list[bytes]:
    return [payload for _s, _e, payload in wal.read_frames(start or wal.acked, wal.written, max_bytes=1 << 30)]


def test_APPEND_ONLY_frames_read_back_in_order_across_segments(tmp_path):
    wal = open_wal(tmp_path)
    payloads = [bytes([i]) * (300 + i) for i in range(40)]
    for payload in payloads:
        wal.append([payload])
    wal.sync()
    assert wal.segment_count > 1
    assert frames(wal) == payloads
    wal.close()
    assert frames(open_wal(tmp_path)) == payloads


def test_DURABLE_BEFORE_VISIBLE_sync_reports_the_durable_position(tmp_path):
    wal = open_wal(tmp_path)
    end = wal.append([b"x" * 10])
    assert wal.durable < end
    assert wal.sync() == end == wal.durable


def test_TORN_TAIL_TRUNCATED_a_frame_cut_mid_way_is_removed_on_open(tmp_path):
    wal = open_wal(tmp_path, segment_bytes=1 << 20)
    wal.append([b"a" * 100, b"b" * 100])
    wal.sync()
    wal.close()
    segment = tmp_path / segment_name(0)
    os.truncate(segment, segment.stat().st_size - 30)
    reopened = open_wal(tmp_path, segment_bytes=1 << 20)
    assert reopened.recovery.reason == "torn frame"
    assert frames(reopened) == [b"a" * 100]
    assert segment.stat().st_size == HEADER_SIZE + 100


def test_TORN_TAIL_TRUNCATED_a_corrupted_frame_and_all_after_it_are_cut(tmp_path):
    wal = open_wal(tmp_path, segment_bytes=1 << 20)
    wal.append([b"a" * 100, b"b" * 100, b"c" * 100])
    wal.sync()
    wal.close()
    segment = tmp_path / segment_name(0)
    data = bytearray(segment.read_bytes())
    data[HEADER_SIZE + 100 + HEADER_SIZE + 5] ^= 0xFF
    segment.write_bytes(bytes(data))
    reopened = open_wal(tmp_path, segment_bytes=1 << 20)
    assert reopened.recovery.reason == "frame checksum mismatch"
    assert frames(reopened) == [b"a" * 100]


def test_ACK_MONOTONIC_cursor_survives_restart_and_never_moves_back(tmp_path):
    wal = open_wal(tmp_path)
    first = wal.append([b"1" * 50])
    wal.append([b"2" * 50])
    wal.sync()
    wal.ack(first)
    wal.ack(WalPosition(0, 0))
    assert wal.acked == first
    wal.close()
    reopened = open_wal(tmp_path)
    assert reopened.acked == first
    assert frames(reopened) == [b"2" * 50]


def test_ACK_MONOTONIC_cursor_cannot_pass_the_durable_position(tmp_path):
    wal = open_wal(tmp_path)
    end = wal.append([b"x"])
    with pytest.raises(WalError):
        wal.ack(end)


def test_DELETE_ONLY_ACKED_segments_go_when_wholly_acknowledged(tmp_path):
    wal = open_wal(tmp_path)
    ends = [wal.append([b"z" * 1000]) for _ in range(12)]
    wal.sync()
    before = wal.segment_count
    wal.ack(ends[3])
    assert wal.segment_count < before
    remaining = sorted(p.name for p in tmp_path.glob("*.seg"))
    assert segment_name(ends[3].segment) in remaining or ends[3].offset >= 4000
    assert frames(wal) == [b"z" * 1000] * 8


def test_BOUNDED_has_room_turns_false_at_the_limit(tmp_path):
    wal = open_wal(tmp_path, max_bytes=1 << 20, segment_bytes=64 << 10)
    assert wal.has_room(1000)
    while wal.has_room(10_000):
        wal.append([b"q" * 10_000])
    assert wal.bytes_on_disk + 10_000 > wal.max_bytes
    wal.sync()
    wal.ack(wal.durable)
    assert wal.has_room(10_000)


def test_segments_and_cursor_are_private_files(tmp_path):
    wal = open_wal(tmp_path / "wal")
    end = wal.append([b"x"])
    wal.sync()
    wal.ack(end)
    assert stat.S_IMODE((tmp_path / "wal").stat().st_mode) == 0o700
    for path in (tmp_path / "wal").iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.text(min_size=1, max_size=10), st.integers(1, 10**9),
                          st.lists(st.binary(max_size=64), min_size=1, max_size=5)), max_size=6))
def test_batch_payload_round_trips(runs):
    batch = Batch([Run(chain, "logs", seq, values) for chain, seq, values in runs],
                  {"k": SourceCheckpoint(FileId(1, 2, Fingerprint.of(b"fp")), "/p", 9, "c"), "gone": None},
                  {"c": ChainCheckpoint(3, bytes(32), False, Frontier(1, bytes(range(32))))}, 12.5)
    decoded = decode_batch(encode_batch(batch))
    assert decoded == batch
    sealed = []
    for chain, seq, values in runs:          # as the ingest builds them: blobs and lengths
        run_values = Sealed()
        run_values.add_packed(b"".join(values[:2]), array("I", map(len, values[:2])))
        for value in values[2:]:
            run_values.append(value)
        sealed.append(Run(chain, "logs", seq, run_values))
    assert encode_batch(Batch(sealed, batch.sources, batch.chains, 12.5)) == encode_batch(batch)
    assert [list(run.values) for run in decoded.runs] == [values for _, _, values in runs]


def test_frames_kept_in_memory_are_the_frames_on_disk_across_segment_rolls(tmp_path):
    """The sender takes just-committed frames from memory (kafka.Sender.offer): in order, across
    segment rolls, only once visible, and exactly what reading the WAL back would give."""
    from shipper.kafka import Sender
    from shipper.metrics import Metrics

    wal = open_wal(tmp_path / "wal", segment_bytes=300)
    sender = Sender(wal, acks=None, sink=None, metrics=Metrics(), write_gap=None,
                    hot_limit_bytes=1 << 20)
    for i in range(12):                       # 100-byte payloads: a roll every few frames
        payload = bytes([i]) * 100
        end = wal.append([payload])
        sender.offer(wal.last_start, end, payload)
    assert len({start.segment for start, _, _ in sender._hot}) > 3
    on_disk = list(wal.read_frames(wal.acked, wal.written, max_bytes=1 << 30))

    assert sender._hot_frames(1 << 20) == []            # nothing is visible (durable) yet
    sender.make_visible(wal.sync())
    taken = []
    while True:
        frames = sender._hot_frames(250)                # a little at a time, like the sender
        if not frames:
            break
        taken += frames
        sender._read_position = frames[-1][1]
    assert [(start, end, bytes(payload)) for start, end, payload in taken] == \
        [(start, end, bytes(payload)) for start, end, payload in on_disk]
    assert sender._hot_bytes == 0


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.text(min_size=1, max_size=10), st.integers(1, 10**9),
                          st.lists(st.lists(st.binary(max_size=40), min_size=1, max_size=4), min_size=1, max_size=4)),
                max_size=5))
def test_a_frame_written_in_pieces_is_the_frame_on_disk_and_its_runs_are_the_decoded_runs(tmp_path_factory, runs):
    """The pipeline hands the WAL a frame's pieces (no join) and the sender the batch itself (no decode):
    the WAL holds exactly encode_batch's payload, and the sender's per-blob runs from memory carry the
    values and seqs that decoding the frame from disk gives."""
    batch = Batch([], {"k": SourceCheckpoint(FileId(1, 2, Fingerprint.of(b"fp")), "/p", 9, "c")},
                  {"c": ChainCheckpoint(3, bytes(32))}, 12.5)
    for chain, seq, blobs in runs:
        values = Sealed()
        for blob in blobs:                      # one sealing call per blob, as the ingest does
            values.add_packed(b"".join(blob), array("I", map(len, blob)))
        batch.runs.append(Run(chain, "logs", seq, values))
    frame = encode_frame(batch)
    assert b"".join(frame.parts) == encode_batch(batch) and frame.nbytes == len(encode_batch(batch))

    wal = open_wal(tmp_path_factory.mktemp("wal"), segment_bytes=1 << 20)
    wal.append([frame.parts, b"after"])
    assert frames(wal) == [encode_batch(batch), b"after"]

    decoded = decode_batch(frames(wal)[0])
    for run, from_disk in zip(batch.runs, decoded.runs):
        in_memory = [(run.first_seq + index, list(packed)) for index, packed in run.values.packed_parts()]
        seqs = [seq + i for seq, values in in_memory for i in range(len(values))]
        assert [value for _, values in in_memory for value in values] == list(from_disk.values)
        assert seqs == list(range(from_disk.first_seq, from_disk.first_seq + len(from_disk.values)))


def test_fsync_now_beside_a_thread_appending_across_rolls_never_raises(tmp_path):
    """The second signal's exit path: an fsync from another thread while the writer appends and rolls
    segments; nothing it does moves `durable` or disturbs what is written."""
    import threading

    wal = open_wal(tmp_path, segment_bytes=4096)
    done = threading.Event()
    payloads = [bytes([i % 251]) * 500 for i in range(400)]

    def write() -> None:
        for payload in payloads:
            wal.append([payload])
        done.set()

    writer = threading.Thread(target=write)
    writer.start()
    answers = []
    while not done.is_set():
        answers.append(wal.fsync_now())
    writer.join()
    assert wal.segment_count > 10 and True in answers
    assert wal.durable == WalPosition(0, 0)           # only sync() moves it
    assert wal.fsync_now()
    wal.sync()
    wal.close()
    assert frames(open_wal(tmp_path, segment_bytes=4096)) == payloads
