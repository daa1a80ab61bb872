"""DirWatcher over real directories and the real kernel: what each file operation of a kubelet
rotation announces, what the watcher does when the kernel drops events or refuses a watch, and the
ingest polling only what changed (all of it at the fallback interval)."""
from __future__ import annotations

import asyncio
import errno
import os
import time
from pathlib import Path

import pytest

from shipper.config import load_settings
from shipper.ingest import Ingest
from shipper.metrics import Metrics
from shipper.state import Snapshot
from shipper.tail import watch as watch_module
from shipper.tail.watch import DirWatcher, InotifyUnavailable

try:
    DirWatcher("inotify").close()
except InotifyUnavailable:                              # pragma: no cover - not Linux
    pytest.skip("no inotify on this machine", allow_module_level=True)


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    a, b = tmp_path / "ns_a_1" / "app", tmp_path / "ns_b_2" / "app"
    a.mkdir(parents=True)
    b.mkdir(parents=True)
    return a, b


@pytest.fixture
def watcher(dirs):
    w = DirWatcher("inotify")
    w.sync({str(d) for d in dirs})
    w.take()                                            # the first look every new watch asks for
    yield w
    w.close()


def test_append_marks_only_its_directory_changed(watcher, dirs):
    a, b = dirs
    with open(a / "0.log", "ab") as f:
        f.write(b"line\n")
    watcher.take()                                      # the create
    with open(a / "0.log", "ab") as f:
        f.write(b"more\n")
    changes = watcher.take()
    assert changes.dirs == {str(a)} and not changes.overflow


def test_nothing_written_means_nothing_changed(watcher, dirs):
    (dirs[0] / "0.log").write_bytes(b"x\n")
    watcher.take()
    os.stat(dirs[0] / "0.log")                          # reading metadata is no change
    with open(dirs[0] / "0.log", "rb") as f:
        f.read()
    changes = watcher.take()
    assert changes.dirs == set() and not changes.structure


def test_create_rename_and_delete_are_structure_changes(watcher, dirs):
    a, _ = dirs
    live = a / "0.log"
    live.write_bytes(b"x\n")
    created = watcher.take()
    assert created.dirs == {str(a)} and created.structure
    os.rename(live, a / "0.log.20261128-180000")        # kubelet's rotation: rename, then a new 0.log
    renamed = watcher.take()
    assert renamed.dirs == {str(a)} and renamed.structure
    (a / "0.log.20261128-180000").unlink()
    deleted = watcher.take()
    assert deleted.dirs == {str(a)} and deleted.structure


def test_a_directory_removed_drops_its_watch(watcher, dirs):
    a, b = dirs
    os.rmdir(a)
    changes = watcher.take()
    assert str(a) in changes.dirs and changes.structure
    assert watcher.watched == {str(b)}
    a.mkdir()                                           # back under the same name: watched again on sync
    watcher.sync({str(a), str(b)})
    assert watcher.watched == {str(a), str(b)}


def test_sync_removes_watches_no_longer_wanted(watcher, dirs):
    a, b = dirs
    watcher.sync({str(b)})
    assert watcher.watched == {str(b)}
    (a / "0.log").write_bytes(b"x\n")
    assert watcher.take().dirs == set()


def test_queue_overflow_means_everything_changed(tmp_path):
    limit = int(Path("/proc/sys/fs/inotify/max_queued_events").read_text())
    if limit > 100_000:
        pytest.skip("the kernel queues too many events to overflow it here")
    w = DirWatcher("inotify")
    try:
        d = tmp_path / "busy"
        d.mkdir()
        w.sync({str(d)})
        w.take()
        fd = os.open(d, os.O_RDONLY)
        try:
            for i in range(limit // 2 + 10):            # a create and a delete each: the queue overflows
                name = f"f{i}"
                os.close(os.open(name, os.O_CREAT | os.O_WRONLY, dir_fd=fd))
                os.unlink(name, dir_fd=fd)
        finally:
            os.close(fd)
        changes = w.take()
        assert changes.overflow and changes.structure and w.overflows == 1
    finally:
        w.close()


def test_watch_limit_falls_back_to_polling_that_directory(dirs, monkeypatch):
    a, b = dirs
    w = DirWatcher("inotify")
    real_add = w._inotify.add_watch

    def limited(path: str, mask: int) -> int:
        if path == str(b):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
        return real_add(path, mask)

    monkeypatch.setattr(w._inotify, "add_watch", limited)
    try:
        w.sync({str(a), str(b)})
        assert w.watched == {str(a)} and w.unwatched == {str(b): "limit"}
        monkeypatch.setattr(w._inotify, "add_watch", real_add)
        w.sync({str(a), str(b)})                        # room again: tried once more, and watched
        assert w.watched == {str(a), str(b)} and w.unwatched == {}
    finally:
        w.close()


def test_wait_returns_on_a_write_well_before_its_timeout(watcher, dirs):
    a, _ = dirs

    async def run() -> float:
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.call_later(0.05, lambda: (a / "0.log").write_bytes(b"x\n"))
        started = time.monotonic()
        await watcher.wait(stopping, 5.0)
        return time.monotonic() - started

    assert asyncio.run(run()) < 1.0
    assert watcher.take().dirs == {str(a)}


def test_wait_times_out_when_nothing_happens_and_wake_ends_it(watcher):
    async def run() -> tuple[float, float]:
        stopping = asyncio.Event()
        started = time.monotonic()
        await watcher.wait(stopping, 0.2)
        idle = time.monotonic() - started
        asyncio.get_running_loop().call_later(0.05, watcher.wake)
        started = time.monotonic()
        await watcher.wait(stopping, 5.0)
        return idle, time.monotonic() - started

    idle, woken = asyncio.run(run())
    assert 0.15 < idle < 1.0 and woken < 1.0


def test_poll_mode_has_no_watches(dirs):
    w = DirWatcher("poll")
    w.sync({str(d) for d in dirs})
    assert not w.enabled and w.watched == frozenset() and w.fileno() == -1
    w.close()


def test_auto_mode_polls_when_inotify_is_unavailable(monkeypatch):
    def refuse() -> None:
        raise InotifyUnavailable(errno.EMFILE, "inotify_init1: Too many open files")

    monkeypatch.setattr(watch_module, "_Inotify", refuse)
    w = DirWatcher("auto")
    assert not w.enabled and "Too many open files" in w.unavailable
    with pytest.raises(InotifyUnavailable):
        DirWatcher("inotify")


# -- the ingest polls what changed -----------------------------------------------------------------

def _ingest(tmp_path: Path, **sources) -> tuple[Ingest, Path]:
    root = tmp_path / "pods"
    for name in ("ns_a_1", "ns_b_2"):
        (root / name / "app").mkdir(parents=True)
        (root / name / "app" / "0.log").write_bytes(b"")
    settings = load_settings(None, node_name="n", sources={"roots": [str(root)], "symlink_roots": [], **sources},
                             enrich={"kubernetes": False}, wal={"dir": str(tmp_path / "wal")},
                             state={"dir": str(tmp_path)})
    from shipper.enrich import build_provider

    metrics = Metrics()
    return Ingest(settings, Snapshot(), metrics, build_provider(settings, metrics)), root


def _cri(text: str) -> bytes:
    return f"2026-11-28T18:00:00.000000000Z stdout F {text}\n".encode()


def test_ingest_polls_only_the_directory_that_had_an_event(tmp_path, monkeypatch):
    ingest, root = _ingest(tmp_path, watch="inotify", watch_fallback_s=60)
    try:
        counts: dict[int, int] = {}
        from shipper.tail import Tailer

        real_poll = Tailer.poll

        def counting(self):
            counts[id(self)] = counts.get(id(self), 0) + 1
            return real_poll(self)

        monkeypatch.setattr(Tailer, "poll", counting)
        ingest.collect(1 << 20)                          # discovery, the first look at both
        while ingest.collect(1 << 20) is not None:
            pass
        ingest.collect(1 << 20)
        assert not any(source.busy for source in ingest._sources.values())
        tailer_of = {key.split("/")[-3]: id(source.tailer) for key, source in ingest._sources.items()}
        before = dict(counts)
        with open(root / "ns_a_1" / "app" / "0.log", "ab") as f:
            f.write(_cri("hello"))
        collected = ingest.collect(1 << 20)
        assert collected is not None
        assert counts[tailer_of["ns_a_1"]] == before[tailer_of["ns_a_1"]] + 1
        assert counts[tailer_of["ns_b_2"]] == before[tailer_of["ns_b_2"]]
        assert ingest.metrics.watch_inotify._value.get() == 1
    finally:
        ingest.close()


def test_ingest_finds_data_no_event_announced_at_the_fallback_poll(tmp_path, monkeypatch):
    ingest, root = _ingest(tmp_path, watch="inotify", watch_fallback_s=0.3, watch_rescan_s=60)
    try:
        while ingest.collect(1 << 20) is not None:
            pass
        # An event that never comes (NFS, overlay): drop whatever the kernel says from now on.
        monkeypatch.setattr(ingest.watcher, "take", lambda: watch_module.Changes())
        with open(root / "ns_b_2" / "app" / "0.log", "ab") as f:
            f.write(_cri("unannounced"))
        deadline = time.monotonic() + 5
        found = False
        while time.monotonic() < deadline and not found:
            collected = ingest.collect(1 << 20)
            found = collected is not None and any(run.values for run in collected[0].runs)
            time.sleep(0.05)
        assert found
    finally:
        ingest.close()


def test_ingest_watches_new_pod_directories_and_finds_their_files(tmp_path):
    ingest, root = _ingest(tmp_path, watch="inotify", watch_fallback_s=60, watch_rescan_s=60)
    try:
        while ingest.collect(1 << 20) is not None:
            pass
        ingest.collect(1 << 20)
        new = root / "ns_c_3" / "app"
        new.mkdir(parents=True)                          # kubelet: the pod directory, then the container's
        ingest.collect(1 << 20)
        assert str(new) in ingest.watcher.watched
        (new / "0.log").write_bytes(_cri("first"))
        collected = ingest.collect(1 << 20)
        assert collected is not None and any("ns_c_3" in key for key in ingest._sources)
    finally:
        ingest.close()


def test_a_root_not_there_yet_is_rescanned_at_the_discovery_interval(tmp_path):
    root = tmp_path / "pods"
    settings = load_settings(None, node_name="n", sources={"roots": [str(root)], "symlink_roots": [],
                                                           "watch": "inotify", "discover_interval_s": 0.1,
                                                           "watch_rescan_s": 3600},
                             enrich={"kubernetes": False}, wal={"dir": str(tmp_path / "wal")},
                             state={"dir": str(tmp_path)})
    from shipper.enrich import build_provider

    metrics = Metrics()
    ingest = Ingest(settings, Snapshot(), metrics, build_provider(settings, metrics))
    try:
        ingest.collect(1 << 20)
        assert str(root) in ingest.watcher.missing
        (root / "ns_a_1" / "app").mkdir(parents=True)           # nothing watched announces this
        (root / "ns_a_1" / "app" / "0.log").write_bytes(_cri("late root"))
        time.sleep(0.15)
        assert ingest.collect(1 << 20) is not None
        assert str(root) in ingest.watcher.watched and not ingest.watcher.missing
    finally:
        ingest.close()


def test_preflight_refuses_inotify_where_it_cannot_be_had(monkeypatch, tmp_path):
    from shipper.config import ConfigError
    from shipper.server import preflight

    def refuse() -> None:
        raise InotifyUnavailable(errno.EMFILE, "inotify_init1: Too many open files")

    monkeypatch.setattr(watch_module, "_Inotify", refuse)
    settings = load_settings(None, node_name="n", sources={"watch": "inotify"}, enrich={"kubernetes": False})
    with pytest.raises(ConfigError, match="sources.watch"):
        preflight(settings)
    preflight(load_settings(None, node_name="n", sources={"watch": "auto"}, enrich={"kubernetes": False}))


def test_a_directory_made_inside_a_new_one_before_its_watch_is_still_found(tmp_path):
    """A new pod's directory is listed, and its container directory made, before the watch on the pod
    directory exists: nothing announces it, so a new watch asks for a rediscovery."""
    root = tmp_path / "pods"
    root.mkdir()
    w = DirWatcher("inotify")
    try:
        w.sync({str(root)})
        w.take()
        pod = root / "ns_p_9"
        pod.mkdir()
        assert w.take().structure                      # the root announces the pod directory
        (pod / "app").mkdir()                          # ... made before the pod directory is watched
        (pod / "app" / "0.log").write_bytes(b"x\n")
        w.sync({str(root), str(pod)})
        assert w.take().structure, "the new watch must ask to look for what was made before it"
    finally:
        w.close()
