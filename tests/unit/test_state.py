"""state.db, recovery through the WAL and the acknowledgement ledger (shipper/state.py), over real
files: typed checkpoints round-trip, an older release's WAL and state.db are recovered, a newer
frame format is refused clearly, and acknowledgements persist in order and survive a failed save."""
from __future__ import annotations

import asyncio
import json
import sqlite3
import stat
import struct

import pytest

from shipper.batch import Batch, FrameFormatError, Run, decode_batch, encode_batch
from shipper.config import load_settings
from shipper.demo.simnode import SimNode
from shipper.merkle import Frontier
from shipper.metrics import Metrics
from shipper.model import ChainCheckpoint, FileId, SourceCheckpoint
from shipper.pipeline import Pipeline
from shipper.seal import TYPE_CHECKPOINT, parse_checkpoint_note
from shipper.state import Acknowledgements, Snapshot, StateStore, roll_forward
from shipper.wal import Wal, WalPosition
from tests.support import write_config

_U32 = struct.Struct("<I")
SOURCE = SourceCheckpoint(FileId(1, 2, "ab" * 32), "/var/log/pods/ns_p_u/app/0.log", 4096, "u/app")
CHAIN = ChainCheckpoint(7, bytes(range(32)), False, Frontier(7, bytes(32) * 3))


def as_format_1(payload: bytes) -> bytes:
    """The frame the previous release wrote for the same batch: no "v", chains as [seq, hash, closed]."""
    (length,) = _U32.unpack_from(payload, 0)
    header = json.loads(payload[4:4 + length])
    del header["v"]
    header["chains"] = {name: value[:3] for name, value in header["chains"].items()}
    encoded = json.dumps(header, separators=(",", ":")).encode()
    return _U32.pack(len(encoded)) + encoded + payload[4 + length:]


def test_checkpoints_round_trip_through_state_db_which_is_private(tmp_path):
    store = StateStore(tmp_path)
    store.save({"a": SOURCE, "gone": None}, {"u/app": CHAIN}, WalPosition(3, 100))
    store.close()
    snapshot = StateStore(tmp_path).load()
    assert snapshot.sources == {"a": SOURCE}
    assert snapshot.chains == {"u/app": CHAIN}
    assert snapshot.position == WalPosition(3, 100)
    assert stat.S_IMODE((tmp_path / "state.db").stat().st_mode) == 0o600


def test_a_state_db_of_the_previous_release_is_read_and_its_chains_start_a_new_tree(tmp_path):
    db = sqlite3.connect(tmp_path / "state.db")
    db.executescript("""
        CREATE TABLE sources (key TEXT PRIMARY KEY, dev INTEGER, ino INTEGER, fingerprint TEXT, path TEXT,
                              offset INTEGER, chain TEXT);
        CREATE TABLE chains (chain TEXT PRIMARY KEY, seq INTEGER, hash TEXT, closed INTEGER);
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT);
        INSERT INTO chains VALUES ('u/app', 41, '%s', 0);
        INSERT INTO meta VALUES ('position', '2 512');
    """ % ("ee" * 32))
    db.commit()
    db.close()
    store = StateStore(tmp_path)
    snapshot = store.load()
    assert snapshot.chains == {"u/app": ChainCheckpoint(41, b"\xee" * 32, False, Frontier())}
    store.save({}, {"u/app": CHAIN}, WalPosition(2, 600))
    assert StateStore(tmp_path).load().chains["u/app"] == CHAIN


def test_a_frame_of_a_newer_format_is_refused_with_a_message_that_says_what_to_do(tmp_path):
    payload = encode_batch(Batch([], {"a": SOURCE}, {"u/app": CHAIN}, 1.0))
    (length,) = _U32.unpack_from(payload, 0)
    header = json.loads(payload[4:4 + length])
    header["v"] = 3
    encoded = json.dumps(header).encode()
    with pytest.raises(FrameFormatError, match="format 3.*release that wrote the WAL"):
        decode_batch(_U32.pack(len(encoded)) + encoded + payload[4 + length:])


def test_roll_forward_applies_unacknowledged_frames_of_both_formats(tmp_path):
    wal = Wal(tmp_path / "wal", max_bytes=1 << 20, segment_bytes=1 << 16)
    old = encode_batch(Batch([Run("u/app", "logs", 1, [b"{}"])], {"a": SOURCE}, {"u/app": CHAIN}, 1.0))
    newer_source = SourceCheckpoint(SOURCE.file_id, SOURCE.path, 8192, "u/app")
    newer_chain = ChainCheckpoint(9, b"\x01" * 32, True, Frontier(9, bytes(32) * 2))
    wal.append([as_format_1(old)])
    wal.append([encode_batch(Batch([], {"a": newer_source, "b": None}, {"u/app": newer_chain, "v/x": CHAIN}, 2.0))])
    wal.sync()
    first = Snapshot()
    assert roll_forward(first, wal) == 2
    assert first.sources == {"a": newer_source, "b": None}
    assert first.chains == {"u/app": newer_chain, "v/x": CHAIN}
    only_old = Snapshot()
    wal2 = Wal(tmp_path / "wal-old", max_bytes=1 << 20, segment_bytes=1 << 16)
    wal2.append([as_format_1(old)])
    wal2.sync()
    roll_forward(only_old, wal2)
    assert only_old.chains == {"u/app": ChainCheckpoint(CHAIN.seq, CHAIN.hash, False, Frontier())}


def test_a_wal_written_by_the_previous_release_is_recovered_and_its_chains_go_on(tmp_path):
    """A node upgraded with records still in its WAL: they are sent as they are, every chain goes on
    from its head (no fork, no seq reused), and its next checkpoint's tree starts after that head."""
    node = SimNode(tmp_path / "log", pods=2, containers_per_pod=1, rotate_every_bytes=None, seed=5)
    node.write(300)
    node.flush()
    config = write_config(tmp_path / "config.yaml", bootstrap="127.0.0.1:1", node_root=node.root,
                          state_dir=tmp_path / "state")
    settings = load_settings(str(config))
    pipeline = Pipeline(settings)
    wal, state, ingest = pipeline._open_state()
    batch, _callbacks = ingest.collect(1 << 30)
    heads = {name: (chain.seq, chain.hash) for name, chain in batch.chains.items()}
    wal.append([as_format_1(encode_batch(batch))])          # what the previous release left in its WAL
    wal.sync()
    pipeline._close(wal, state, ingest)

    node.write(100)
    node.flush()
    pipeline = Pipeline(settings)
    wal, state, ingest = pipeline._open_state()
    try:
        frames = [decode_batch(payload) for _s, _e, payload in wal.read_frames(wal.acked, wal.written, 1 << 30)]
        assert [run.first_seq for run in frames[0].runs] == [1] * len(heads)   # still readable, sent as it is
        more, _ = ingest.collect(1 << 30)
        for run in more.runs:
            assert run.first_seq == heads[run.chain][0] + 1
        final = ingest.final_checkpoints()
        for run in final.runs:
            if run.chain not in heads:
                continue
            record = json.loads(list(run.values)[-1])
            assert record["type"] == TYPE_CHECKPOINT
            parsed = parse_checkpoint_note(record["body"])
            assert parsed.tree_start == heads[run.chain][0] + 1
            assert parsed.seq == record["seal"]["seq"] - 1
    finally:
        pipeline._close(wal, state, ingest)


class FakeFailingStore:
    """A state store whose first save fails as a full disk would (the ledger's retry is the subject)."""

    def __init__(self, real: StateStore) -> None:
        self.real = real
        self.failures = 1
        self.saved: list[WalPosition] = []

    def save(self, sources, chains, position) -> None:
        if self.failures:
            self.failures -= 1
            raise sqlite3.OperationalError("database or disk is full")
        self.real.save(sources, chains, position)
        self.saved.append(position)


def test_acknowledgements_merge_frames_persist_the_snapshot_then_the_cursor_and_retry_a_failed_save(tmp_path):
    wal = Wal(tmp_path / "wal", max_bytes=1 << 20, segment_bytes=4096)
    ends = [wal.append([b"x" * 3000]) for _ in range(3)]
    wal.sync()
    store = FakeFailingStore(StateStore(tmp_path / "state"))
    snapshot = Snapshot()
    metrics = Metrics()
    acks = Acknowledgements(store, snapshot, wal, metrics)
    later = ChainCheckpoint(8, b"\x02" * 32, False, Frontier(8, bytes(32)))

    async def run() -> None:
        acks.frame_acknowledged(ends[0], {"a": SOURCE}, {"u/app": CHAIN})
        acks.frame_acknowledged(ends[1], {"b": SOURCE}, {"u/app": later})
        await acks.flush()                  # the save fails: nothing moves, nothing is forgotten
        assert wal.acked < ends[0] and snapshot.chains == {}
        assert metrics.wal_write_errors.labels(errno="")._value.get() == 1
        acks.frame_acknowledged(ends[2], {}, {})
        await acks.flush()

    asyncio.run(run())
    assert store.saved == [ends[2]]
    assert wal.acked == ends[2]
    assert snapshot.chains == {"u/app": later} and set(snapshot.sources) == {"a", "b"}
    assert StateStore(tmp_path / "state").load().chains == {"u/app": later}
