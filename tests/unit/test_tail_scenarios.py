"""Tailer scenarios against the simulated kubelet: every byte written to every file instance is
returned exactly once, or counted in a LossEvent with the exact byte count.

The oracle is the SimNode journal (every byte the "runtime" wrote to each file instance). An
instance may go unaccounted only if it was *dropped*: after a tailer restart (a crash loses the
descriptors it held) or container garbage collection, it was neither on disk nor held open by us.
"""
from __future__ import annotations

import os
import threading
import time
from collections import defaultdict
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from shipper.demo.simnode import FileInstance, Ledger, SimContainer, SimNode
from shipper.discover import discover
from shipper.model import LossReason
from shipper.tail import Chunk, Tailer


def open_inodes() -> set[tuple[int, int]]:
    found = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            st = os.stat(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        found.add((st.st_dev, st.st_ino))
    return found


def on_disk(node: SimNode, inst: FileInstance) -> bool:
    if inst.ended == "truncated":
        return any(on_disk(node, c) for c in node.journal if c.copy_of == inst.serial)
    for i, path in enumerate(inst.paths):
        try:
            st = os.stat(path)
            if (st.st_dev, st.st_ino) == (inst.dev, inst.ino):
                with open(path, "rb") as f:
                    if f.read(64) == bytes(inst.data[:64]):
                        return True
        except FileNotFoundError:
            pass
        if i > 0 and os.path.exists(path + ".gz"):
            return True
    return False


class Follower:
    """One lineage (a container's `<n>.log`) followed by a tailer that may crash and restore.

    Records the committed stream: chunks, and the losses reported before the last chunk of each
    incarnation (a loss after the last commit is not durable and must be found again)."""

    def __init__(self, node: SimNode, sim: SimContainer, **tailer_kw) -> None:
        self.node = node
        self.path = str(sim.log_path)
        self.ref = sim.ref
        self.kw = tailer_kw
        self.tailer = Tailer(self.path, self.ref, None, **tailer_kw)
        self.chunks: list[Chunk] = []
        self.losses: list = []
        self._uncommitted: list = []
        self.dropped: set[int] = set()
        self.restarts = 0
        self.finished = False
        self.position = None                           # what a pipeline would have committed

    def poll(self) -> bool:
        batch = self.tailer.poll()
        assert sum(len(c.data) for c in batch.chunks) <= self.kw.get("read_size", 1 << 20)
        self._uncommitted.extend(batch.losses)
        if batch.chunks:
            self.losses.extend(self._uncommitted)
            self._uncommitted.clear()
            self.chunks.extend(batch.chunks)
            last = batch.chunks[-1]
            self.position = self.tailer.position_of(last.file_id, last.offset + len(last.data))
        self.finished = self.finished or batch.finished
        return bool(batch.chunks or batch.losses)

    def drain(self, polls: int = 10_000) -> None:
        for _ in range(polls):
            if not self.poll():
                break
        else:
            raise AssertionError("tailer kept returning data")
        self.losses.extend(self._uncommitted)
        self._uncommitted.clear()

    def restart(self) -> None:
        """Crash and restore from the last committed chunk."""
        position = self.position
        self.tailer.close()
        self._uncommitted.clear()
        self.chunks.append(None)                       # crash boundary
        self.mark_dropped()
        self.tailer = Tailer(self.path, self.ref, position, **self.kw)
        self.restarts += 1

    def mark_dropped(self) -> set[int]:
        """Instances now neither on disk nor open here; returns those newly dropped."""
        held = open_inodes()
        new = {inst.serial for inst in self.instances()
               if not on_disk(self.node, inst) and (inst.dev, inst.ino) not in held} - self.dropped
        self.dropped |= new
        return new

    def instances(self) -> list[FileInstance]:
        return [i for i in self.node.journal if i.paths[0] == self.path and i.copy_of is None]


def segments(chunks: list[Chunk | None]) -> list[tuple[int, int, int, bytes, str]]:
    """(dev, ino, start, data, path) per identity run, checking offsets are contiguous within one."""
    out: list[list] = []
    open_run = False
    for chunk in chunks:
        if chunk is None:
            open_run = False
            continue
        fid = chunk.file_id
        if open_run and (out[-1][0], out[-1][1]) == (fid.dev, fid.ino) and out[-1][2] + len(out[-1][3]) == chunk.offset:
            out[-1][3] += chunk.data
        else:
            assert not open_run, f"identity changed without end_of_file at {chunk.path}:{chunk.offset}"
            out.append([fid.dev, fid.ino, chunk.offset, bytearray(chunk.data), chunk.path])
        open_run = not chunk.end_of_file
    return [(d, i, s, bytes(b), p) for d, i, s, b, p in out]


def account(follower: Follower) -> dict[str, int]:
    """Assert the exact accounting of one lineage; returns totals for the caller's own checks."""
    node = follower.node
    insts = follower.instances()
    copies = {(c.dev, c.ino, c.serial): c for c in node.journal if c.copy_of is not None}
    delivered: dict[int, list[tuple[int, int]]] = defaultdict(list)
    for dev, ino, start, data, path in segments(follower.chunks):
        if not data:
            continue
        candidates = [i for i in insts if (i.dev, i.ino) == (dev, ino)]
        if path.endswith(".gz"):          # read from the compressed copy, whose inode is its own
            candidates += [i for i in insts if path[:-3] in i.paths[1:]]
        candidates += [node.journal[c.copy_of] for (d, n, _), c in copies.items() if (d, n) == (dev, ino)]
        matches = [i for i in candidates if bytes(i.data[start:start + len(data)]) == data]
        assert matches, f"bytes at {start} of {dev}:{ino} match nothing written there"
        inst = matches[0]
        for a, b in delivered[inst.serial]:
            assert start >= b or start + len(data) <= a, f"bytes {start}.. of instance {inst.serial} returned twice"
        delivered[inst.serial].append((start, start + len(data)))
    lost: dict[int, int] = defaultdict(int)
    unknown = 0
    truncated_done: set[int] = set()
    for loss in follower.losses:
        assert loss.reason is not LossReason.UNREADABLE, loss
        if loss.bytes_lost < 0:
            unknown += 1
            continue
        if loss.reason is LossReason.TRUNCATED:
            inst = next(i for i in insts if i.ended == "truncated" and i.serial not in truncated_done
                        and max((b for _, b in delivered[i.serial]), default=0) == loss.offset)
            truncated_done.add(inst.serial)
        else:
            base = loss.path[:-3] if loss.path.endswith(".gz") else loss.path
            inst = next(i for i in node.journal if base in i.paths[1:] or (i.copy_of is not None and base in i.paths))
            if inst.copy_of is not None:
                inst = node.journal[inst.copy_of]
        lost[inst.serial] += loss.bytes_lost
    if unknown:
        assert follower.dropped, "a loss of unknown size without a dropped file"
    totals = {"written": 0, "delivered": 0, "lost": 0, "dropped": 0}
    for inst in insts:
        got = sum(b - a for a, b in delivered[inst.serial])
        totals["written"] += len(inst.data)
        totals["delivered"] += got
        totals["lost"] += lost[inst.serial]
        if inst.serial in follower.dropped:
            totals["dropped"] += 1
            assert got <= len(inst.data)
            continue
        assert got + lost[inst.serial] == len(inst.data), (
            f"instance {inst.serial} ({inst.paths[-1]}, {inst.ended}): wrote {len(inst.data)}, "
            f"returned {got}, reported lost {lost[inst.serial]}")
    return totals


def make_node(tmp_path: Path, **kw) -> SimNode:
    kw.setdefault("seed", 7)
    kw.setdefault("journal", True)
    kw.setdefault("keep_bodies", False)
    return SimNode(tmp_path / "log", **kw)


# -- rename rotation ---------------------------------------------------------------------------------

def test_kubelet_rotation_with_gzip_under_load_loses_nothing(tmp_path):
    node = make_node(tmp_path, pods=5, containers_per_pod=2, rotate_every_bytes=60_000, keep_rotated=3)
    followers = [Follower(node, sim, settle_s=0.0, read_size=64 * 1024) for sim in node.containers]
    for _ in range(150):
        node.write(100)                                 # ~20 kB: a rotation every ~3 rounds per file
        for f in followers:
            f.poll()
    for f in followers:
        f.drain()
    totals = [account(f) for f in followers]
    assert node.rotations > 30
    assert sum(t["lost"] for t in totals) == 0 and sum(t["written"] for t in totals) == node.bytes_written


def test_slow_reader_keeps_rotated_files_open_and_reports_only_what_it_never_held(tmp_path):
    # Reading 2 kB per poll against ~20 kB written: the reader falls far behind; the files it
    # holds open are read whole, the rest is counted to the byte (compressed before its turn).
    node = make_node(tmp_path, pods=1, containers_per_pod=1, rotate_every_bytes=8_000, keep_rotated=3)
    follower = Follower(node, node.containers[0], settle_s=0.0, read_size=2048, max_held_files=2)
    for _ in range(60):
        node.write(20)
        follower.poll()
    follower.drain()
    totals = account(follower)
    assert totals["lost"] > 0 and totals["dropped"] == 0
    assert totals["delivered"] + totals["lost"] == totals["written"]


def test_rotation_every_few_hundred_lines_is_followed_without_gaps(tmp_path):
    node = make_node(tmp_path, pods=2, containers_per_pod=2, rotate_every_bytes=300 * 200, keep_rotated=2)
    followers = [Follower(node, sim, settle_s=0.0) for sim in node.containers]
    for _ in range(100):
        node.write(250)
        for f in followers:
            f.poll()
    for f in followers:
        f.drain()
    for f in followers:
        assert account(f)["lost"] == 0


def test_inode_reuse_under_rotation_never_confuses_identities(tmp_path):
    node = make_node(tmp_path, pods=1, containers_per_pod=2, rotate_every_bytes=4_000, keep_rotated=2)
    followers = [Follower(node, sim, settle_s=0.0) for sim in node.containers]
    for _ in range(200):
        node.write(6)
        for f in followers:
            f.poll()
    for f in followers:
        f.drain()
        assert account(f)["lost"] == 0
    inodes = [(i.dev, i.ino) for i in node.journal]
    reused = len(inodes) - len(set(inodes))
    if reused == 0:
        pytest.skip("the filesystem handed out no inode twice")


# -- copytruncate, deletion, restarts ---------------------------------------------------------------

def test_copytruncate_counts_the_unread_tail_exactly(tmp_path):
    node = make_node(tmp_path, pods=1, containers_per_pod=1, rotate_every_bytes=None)
    follower = Follower(node, node.containers[0], settle_s=0.0, read_size=3000)
    for round_ in range(30):
        node.write(30)
        follower.poll()
        if round_ % 5 == 4:
            node.copytruncate(0)
    follower.drain()
    totals = account(follower)
    assert totals["lost"] > 0 and totals["delivered"] + totals["lost"] == totals["written"]


def test_file_deleted_while_open_is_drained_and_the_tailer_finishes(tmp_path):
    node = make_node(tmp_path, pods=1, containers_per_pod=1, rotate_every_bytes=10_000)
    follower = Follower(node, node.containers[0], settle_s=0.0, read_size=4096)
    for _ in range(4):
        node.write(50)                                 # about one rotation per poll
        follower.poll()
    node.delete_pod(0)                                  # pod deleted: directory and links gone
    follower.drain()
    assert follower.finished
    assert follower.tailer.open_files == 0
    totals = account(follower)
    assert totals["delivered"] + totals["lost"] == totals["written"]


def test_container_restart_starts_a_new_file_and_the_old_one_is_finished_whole(tmp_path):
    node = make_node(tmp_path, pods=1, containers_per_pod=1, rotate_every_bytes=20_000)
    sim = node.containers[0]
    first = Follower(node, sim, settle_s=0.0)
    for _ in range(6):
        node.write(50)
        first.poll()
    node.restart(sim)
    second = Follower(node, sim, settle_s=0.0)
    for _ in range(6):
        node.write(50)
        first.poll()
        second.poll()
    for f in (first, second):
        f.drain()
    assert account(first)["lost"] == 0 and account(second)["lost"] == 0
    found = discover([str(node.pods_dir)], [str(node.containers_dir)])
    assert [f.ref.restart_count for f in found.files] == [0, 1]


def test_restarted_tailer_resumes_without_reading_a_byte_twice(tmp_path):
    node = make_node(tmp_path, pods=1, containers_per_pod=1, rotate_every_bytes=15_000, keep_rotated=3)
    follower = Follower(node, node.containers[0], settle_s=0.0, read_size=5000)
    for round_ in range(40):
        node.write(25)
        follower.poll()
        if round_ % 7 == 3:
            follower.restart()
    follower.drain()
    assert account(follower)["delivered"] > 0 and follower.restarts == 6


# -- scale and concurrency ---------------------------------------------------------------------------

def test_a_thousand_files_are_each_read_completely(tmp_path):
    node = make_node(tmp_path, pods=500, containers_per_pod=2, rotate_every_bytes=3_000, keep_rotated=2,
                     flush_bytes=1 << 20)
    found = discover([str(node.pods_dir)], [str(node.containers_dir)])
    assert len(found.files) == 1000
    by_path = {str(sim.log_path): sim for sim in node.containers}
    followers = [Follower(node, by_path[f.path], settle_s=0.0) for f in found.files]
    for _ in range(4):
        node.write(5000)
        for f in followers:
            f.poll()
    for f in followers:
        f.drain()
        assert f.tailer.open_files <= 1
    totals = [account(f) for f in followers]
    assert sum(t["written"] for t in totals) == node.bytes_written
    assert sum(t["lost"] for t in totals) == 0
    for f in followers:
        f.tailer.close()


def test_reader_and_writer_running_concurrently(tmp_path):
    node = make_node(tmp_path, pods=2, containers_per_pod=2, rotate_every_bytes=40_000, keep_rotated=3)
    followers = [Follower(node, sim, settle_s=0.2, read_size=256 * 1024) for sim in node.containers]
    done = threading.Event()

    def writer() -> None:
        try:
            for _ in range(150):
                node.write(40)
                time.sleep(0.001)
        finally:
            done.set()

    thread = threading.Thread(target=writer)
    thread.start()
    while not done.is_set():
        for f in followers:
            f.poll()
    thread.join()
    time.sleep(0.25)                                    # past settle_s: rotated files are final
    for f in followers:
        f.drain()
    assert node.rotations > 5
    for f in followers:
        assert account(f)["lost"] == 0


# -- random interleavings ----------------------------------------------------------------------------

OPS = st.lists(
    st.one_of(
        st.tuples(st.just("write"), st.integers(1, 60)),
        st.tuples(st.just("poll"), st.integers(1, 3)),
        st.just(("rotate",)),
        st.just(("copytruncate",)),
        st.just(("gc_and_recreate",)),
        st.just(("restart",)),
    ),
    min_size=1, max_size=40)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=OPS, read_size=st.sampled_from([700, 4096, 1 << 20]), seed=st.integers(0, 3),
       keep_rotated=st.sampled_from([2, 3]), gzip_rotated=st.booleans(), max_held=st.sampled_from([1, 8]))
# An empty file tracked by inode, deleted, its inode reused by a newer empty file: not mistaken for
# it, so the held file between them is read, not skipped.
@example(ops=[("rotate",), ("write", 7), ("rotate",), ("rotate",), ("write", 1), ("rotate",), ("rotate",), ("rotate",)],
         read_size=700, seed=0, keep_rotated=2, gzip_rotated=False, max_held=1)
# The file we read, truncated to nothing, rotated and compressed: its empty .gz, taken for a file of
# its own and deleted before its turn, lost nothing (not an unknown amount).
@example(ops=[("write", 1), ("copytruncate",), ("rotate",), ("rotate",), ("rotate",)],
         read_size=700, seed=0, keep_rotated=2, gzip_rotated=True, max_held=1)
# An empty rotated file tracked by inode, compressed, its inode reused by the new live file: not taken
# for it, so the live file's bytes are read once and not also counted lost.
@example(ops=[("write", 7), ("rotate",), ("rotate",), ("write", 1), ("rotate",), ("rotate",), ("rotate",), ("write", 1)],
         read_size=700, seed=0, keep_rotated=2, gzip_rotated=True, max_held=1)
# A file deleted while read (never renamed), then an empty .gz: no evidence of where the file went, so
# reading goes on with the held file after it, not after the .gz.
@example(ops=[("write", 4), ("rotate",), ("gc_and_recreate",), ("write", 1), ("rotate",), ("rotate",), ("rotate",)],
         read_size=700, seed=0, keep_rotated=2, gzip_rotated=True, max_held=1)
def test_random_interleavings_account_for_every_byte(tmp_path_factory, ops, read_size, seed, keep_rotated,
                                                     gzip_rotated, max_held):
    node = make_node(tmp_path_factory.mktemp("node"), pods=1, containers_per_pod=1, rotate_every_bytes=None,
                     keep_rotated=keep_rotated, gzip_rotated=gzip_rotated, seed=seed)
    sim = node.containers[0]
    follower = Follower(node, sim, settle_s=0.0, read_size=read_size, max_held_files=max_held)
    # With room to hold every file a polling reader sees, rotation may excuse nothing; with one
    # descriptor, files tracked by name can go before their turn (then counted, or -1 if never
    # seen rotated).
    strict = max_held > 1 and keep_rotated > 2
    rotations_since_poll = 0
    for op in ops:
        kind = op[0]
        if kind == "write":
            node.write(op[1])
        elif kind == "poll":
            for _ in range(op[1]):
                follower.poll()
            rotations_since_poll = 0
        elif kind == "rotate":
            if rotations_since_poll >= 2:              # a reader polls at least every two rotations
                follower.poll()
                rotations_since_poll = 0
            node.rotate(sim)
            rotations_since_poll += 1
            if not strict:
                follower.mark_dropped()
        elif kind == "copytruncate":
            follower.drain()                           # copytruncate comes with a caught-up reader
            node.copytruncate(sim)
        elif kind == "gc_and_recreate":
            node.delete_live(sim, recreate=True, rotated=True)
            follower.mark_dropped()
        elif kind == "restart":
            follower.restart()
    follower.drain()
    # Only a crash or garbage collection may excuse a file; rotation never outruns a polling reader.
    account(follower)
    follower.tailer.close()


# -- the simulated node itself ------------------------------------------------------------------------

def _entries_in(path: Path) -> list[bytes]:
    """CRI lines of a file with P parts joined to their F line (a test-local reading, not the parser)."""
    out, partial = [], b""
    for line in path.read_bytes().splitlines():
        _ts, _stream, tag, message = line.split(b" ", 3)
        partial += message
        if tag == b"F":
            out.append(partial)
            partial = b""
    assert partial == b""
    return out


def test_simnode_ledger_holds_exactly_what_the_files_hold(tmp_path):
    node = make_node(tmp_path, pods=3, containers_per_pod=2, rotate_every_bytes=None, keep_bodies=True,
                     partial_ratio=0.2)
    node.write(600)
    for sim in node.containers:
        assert _entries_in(sim.log_path) == node.ledger.bodies(sim.ref.chain)
        assert Ledger.digest_of(node.ledger.bodies(sim.ref.chain)) == node.ledger.digest(sim.ref.chain)
    assert node.ledger.total() == 600
    bodies = [b for chain in node.ledger.chains() for b in node.ledger.bodies(chain)]
    assert len(set(bodies)) == len(bodies)
    assert 150 < node.bytes_written / 600 < 300                     # ~200-byte entries


def test_simnode_is_deterministic_for_a_seed(tmp_path):
    def files(root: Path) -> dict[str, bytes]:
        node = make_node(root, pods=2, containers_per_pod=2, rotate_every_bytes=5_000, gzip_rotated=False)
        node.write(300)
        return {str(p.relative_to(root)): p.read_bytes() for p in sorted((root / "log").rglob("*.log*"))}

    first, second = files(tmp_path / "a"), files(tmp_path / "b")
    assert first == second and len(first) > 4
