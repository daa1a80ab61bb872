"""state.db, recovery through the WAL and the acknowledgement ledger (shipper/state.py), over real
files: typed checkpoints round-trip, an older release's WAL and state.db are recovered, a newer
frame format is refused clearly, and acknowledgements persist in order and survive a failed save."""
from __future__ import annotations

import asyncio
import json
import sqlite3
import stat
import struct
import time

import pytest

from shipper.batch import Batch, FrameFormatError, Run, decode_batch, decode_checkpoints, encode_batch
from shipper.config import load_settings
from shipper.demo.simnode import SimNode
from shipper.merkle import Frontier
from shipper.metrics import Metrics
from shipper.model import ChainCheckpoint, FileId, Fingerprint, SourceCheckpoint
from shipper.pipeline import Pipeline
from shipper.seal import TYPE_CHECKPOINT, parse_checkpoint_note
from shipper.state import Acknowledgements, Snapshot, StateStore, roll_forward
from shipper.wal import Wal, WalPosition
from tests.support import write_config

_U32 = struct.Struct("<I")
SOURCE = SourceCheckpoint(FileId(1, 2, Fingerprint.parse("ab" * 32)), "/var/log/pods/ns_p_u/app/0.log", 4096, "u/app")
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


# A frame as the release before the Fingerprint type wrote it: a full, a short and an empty fingerprint.
FRAME_WITH_FINGERPRINT_STRINGS = (
    b'\x8e\x01\x00\x00{"v":2,"runs":[],"sources":{"a":[64769,1234,'
    b'"35b6d703ce6529ffaf8dc29cfcc65549a3d1a2c481c51d48387c243a5a8c9de0",'
    b'"/var/log/pods/ns_p_u/app/0.log.20261128-180000",4096,"u/app"],"b":[64769,1235,'
    b'"33:02c565c794dd87b7fa016ce03f0e582a6df5e9dc4cc80b1524d187d58a33da71","/var/log/pods/ns_p_u/app/0.log",'
    b'33,"u/app"],"c":[64769,1236,"","/var/log/pods/ns_q_w/app/0.log",0,"w/app"],"d":null},"chains":{},'
    b'"t":1.5}\x00\x00\x00\x00')
FULL = Fingerprint.of(b"2026-11-28T18:00:00Z stdout F " + b"x" * 300)
SHORT = Fingerprint.of(b"2026-11-28T18:00:00Z stdout F hi\n")
EMPTY = Fingerprint.of(b"")


def test_a_frame_with_the_fingerprint_strings_of_the_previous_release_loads_and_encodes_to_the_same_bytes():
    sources, _chains = decode_checkpoints(FRAME_WITH_FINGERPRINT_STRINGS)
    assert {key: None if source is None else source.file_id for key, source in sources.items()} == {
        "a": FileId(64769, 1234, FULL), "b": FileId(64769, 1235, SHORT), "c": FileId(64769, 1236, EMPTY), "d": None}
    assert encode_batch(decode_batch(FRAME_WITH_FINGERPRINT_STRINGS)) == FRAME_WITH_FINGERPRINT_STRINGS


def test_a_state_db_with_the_fingerprint_strings_of_the_previous_release_loads_and_saves_the_same_strings(tmp_path):
    StateStore(tmp_path).close()
    texts = {"a": "35b6d703ce6529ffaf8dc29cfcc65549a3d1a2c481c51d48387c243a5a8c9de0",
             "b": "33:02c565c794dd87b7fa016ce03f0e582a6df5e9dc4cc80b1524d187d58a33da71", "c": ""}
    db = sqlite3.connect(tmp_path / "state.db")
    db.executemany("INSERT INTO sources VALUES (?, 1, 2, ?, '/p', 9, 'u/app')", texts.items())
    db.commit()
    db.close()
    store = StateStore(tmp_path)
    sources = store.load().sources
    assert {key: source.file_id.fingerprint for key, source in sources.items()} == {"a": FULL, "b": SHORT, "c": EMPTY}
    store.save({key: SourceCheckpoint(source.file_id, source.path, 10, source.chain)
                for key, source in sources.items()}, {}, WalPosition(1, 0))
    store.close()
    db = sqlite3.connect(tmp_path / "state.db")
    assert dict(db.execute("SELECT key, fingerprint FROM sources WHERE offset = 10")) == texts
    db.close()


def test_a_frame_of_a_newer_format_is_refused_with_a_message_that_says_what_to_do(tmp_path):
    payload = encode_batch(Batch([], {"a": SOURCE}, {"u/app": CHAIN}, 1.0))
    (length,) = _U32.unpack_from(payload, 0)
    header = json.loads(payload[4:4 + length])
    header["v"] = 4
    encoded = json.dumps(header).encode()
    with pytest.raises(FrameFormatError, match="format 4.*release that wrote the WAL"):
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


class FakeClock:
    """Wall-clock seconds the test moves by hand."""

    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def closed(seq: int) -> ChainCheckpoint:
    return ChainCheckpoint(seq, bytes([seq]) * 32, True, Frontier(seq, bytes(32) * seq.bit_count()))


def test_prune_deletes_chains_closed_and_quiet_long_enough_with_the_sources_naming_them(tmp_path):
    clock = FakeClock()
    store = StateStore(tmp_path, clock=clock)
    unselected = SourceCheckpoint(SOURCE.file_id, "/var/log/pods/ns_q_w/app/0.log", 10, "w/app")
    store.save({"a": SOURCE, "w": unselected}, {"u/app": CHAIN, "w/app": closed(3)}, WalPosition(1, 10))
    clock.now += 50
    store.save({}, {"v/app": closed(4)}, WalPosition(1, 20))
    clock.now += 60
    pruned = store.prune(100)
    assert pruned.chains == ["w/app"] and pruned.sources == ["w"]
    snapshot = store.load()
    assert set(snapshot.chains) == {"u/app", "v/app"} and set(snapshot.sources) == {"a"}
    assert "w/app" in snapshot.tombstones and "v/app" not in snapshot.tombstones
    clock.now += 10
    store.save({}, {"v/app": closed(5)}, WalPosition(1, 30))     # it moved: its time starts again
    clock.now += 60
    assert store.prune(100).chains == []
    clock.now += 40
    assert store.prune(100).chains == ["v/app"]
    assert store.prune(100) == store.prune(100) == type(pruned)([], [])
    assert store.load().chains == {"u/app": CHAIN}          # an open chain is never pruned, however old


def test_tombstones_keep_the_newest_and_survive_a_restart(tmp_path):
    clock = FakeClock()
    store = StateStore(tmp_path, tombstones_kept=3, clock=clock)
    for index in range(5):
        store.save({}, {f"c{index}/app": closed(index + 1)}, WalPosition(1, index + 1))
        clock.now += 10
        store.prune(5)
    store.close()
    tombstones = StateStore(tmp_path, tombstones_kept=3).load().tombstones
    assert len(tombstones) == 3
    assert [f"c{index}/app" in tombstones for index in range(5)] == [False, False, True, True, True]
    tombstones.add(["c5/app"])
    assert "c2/app" not in tombstones and "c5/app" in tombstones and len(tombstones) == 3


def test_pruning_gives_the_pages_back_so_the_file_shrinks(tmp_path):
    clock = FakeClock()
    store = StateStore(tmp_path, clock=clock)
    frontier = Frontier((1 << 20) - 1, bytes(32) * 20)      # a big tree: every row takes room
    many = {f"{index:032x}/app": ChainCheckpoint(1 << 20, bytes(32), True, frontier) for index in range(3000)}
    store.save({}, many, WalPosition(1, 1))
    db = sqlite3.connect(tmp_path / "state.db")
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    full = (tmp_path / "state.db").stat().st_size
    clock.now += 10
    assert len(store.prune(5).chains) == 3000
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    emptied = (tmp_path / "state.db").stat().st_size
    assert full > 2_000_000 and emptied < full / 10, (full, emptied)
    assert store.bytes_on_disk == emptied + (tmp_path / "state.db-wal").stat().st_size


def test_a_state_db_without_closed_times_gets_them_and_can_give_pages_back(tmp_path):
    """A state.db of the release before pruning: its closed chains count as closed since the upgrade,
    and the file is converted once so that pruning can shrink it."""
    db = sqlite3.connect(tmp_path / "state.db")
    db.executescript("""
        CREATE TABLE sources (key TEXT PRIMARY KEY, dev INTEGER, ino INTEGER, fingerprint TEXT, path TEXT,
                              offset INTEGER, chain TEXT);
        CREATE TABLE chains (chain TEXT PRIMARY KEY, seq INTEGER, hash TEXT, closed INTEGER, tree BLOB);
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT);
        INSERT INTO chains VALUES ('u/app', 41, '%s', 0, NULL);
        INSERT INTO chains VALUES ('w/app', 9, '%s', 1, NULL);
        INSERT INTO meta VALUES ('position', '2 512');
    """ % ("ee" * 32, "dd" * 32))
    db.commit()
    db.close()
    clock = FakeClock()
    store = StateStore(tmp_path, clock=clock)
    assert sqlite3.connect(tmp_path / "state.db").execute("PRAGMA auto_vacuum").fetchone()[0] == 2
    assert set(store.load().chains) == {"u/app", "w/app"}
    clock.now += 99
    assert store.prune(100).chains == []
    clock.now += 1
    assert store.prune(100).chains == ["w/app"]
    assert set(store.load().chains) == {"u/app"} and store.load().position == WalPosition(2, 512)


def test_acknowledgements_prune_at_their_cadence_even_when_idle_and_say_what_went(tmp_path):
    wal = Wal(tmp_path / "wal", max_bytes=1 << 20, segment_bytes=4096)
    ends = [wal.append([b"x" * 100]) for _ in range(2)]
    wal.sync()
    wall, steady = FakeClock(), FakeClock(0.0)
    store = StateStore(tmp_path / "state", clock=wall)
    snapshot = store.load()
    metrics = Metrics()
    told: list[list[str]] = []
    acks = Acknowledgements(store, snapshot, wal, metrics, prune_after_s=40, on_pruned=told.append, clock=steady)
    assert acks.prune_every_s == 10
    gone = SourceCheckpoint(SOURCE.file_id, "/var/log/pods/ns_p_u/app/1.log", 5, "u/app")

    async def run() -> None:
        acks.frame_acknowledged(ends[0], {"a": SOURCE, "b": gone, "c": None}, {"u/app": CHAIN, "v/app": closed(2)})
        await acks.flush()
        assert set(snapshot.sources) == {"a", "b"}          # a dropped source leaves no key behind
        acks.frame_acknowledged(ends[1], {"b": None}, {"u/app": closed(8)})
        wall.now += 5
        await acks.flush()
        wall.now += 36
        await acks.flush()                # not yet its time
        assert told == []
        steady.now += 10
        await acks.flush()                # nothing pending: it prunes all the same
        assert told == [["v/app"]]
        wall.now += 5
        steady.now += 10
        await acks.flush()

    asyncio.run(run())
    assert told == [["v/app"], ["u/app"]]
    assert snapshot.chains == {} and snapshot.sources == {}
    assert "u/app" in snapshot.tombstones and "v/app" in snapshot.tombstones
    assert metrics.state_pruned.labels(kind="chains")._value.get() == 2
    assert metrics.state_pruned.labels(kind="sources")._value.get() == 1      # "a" still named u/app
    assert metrics.state_bytes._value.get() == store.bytes_on_disk > 0
    assert StateStore(tmp_path / "state").load().sources == {}


def test_flushes_run_one_at_a_time_on_the_one_connection(tmp_path):
    wal = Wal(tmp_path / "wal", max_bytes=1 << 20, segment_bytes=4096)
    ends = [wal.append([b"x" * 100]) for _ in range(2)]
    wal.sync()
    store = StateStore(tmp_path / "state")
    inside = []

    class Watched:
        def save(self, *args) -> None:
            inside.append(1)
            assert len(inside) == 1, "two saves at once"
            time.sleep(0.05)
            store.save(*args)
            inside.pop()

    acks = Acknowledgements(Watched(), Snapshot(), wal, Metrics())

    async def run() -> None:
        acks.frame_acknowledged(ends[0], {"a": SOURCE}, {})
        first = asyncio.ensure_future(acks.flush())
        await asyncio.sleep(0.01)
        acks.frame_acknowledged(ends[1], {"b": SOURCE}, {})
        await asyncio.gather(first, acks.flush())

    asyncio.run(run())
    assert set(store.load().sources) == {"a", "b"} and wal.acked == ends[1]
