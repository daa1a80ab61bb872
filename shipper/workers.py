"""`workers: N`: a node's log files read by N processes, so one node is not bound by one core.

- **Shards.** Worker i of N reads the files of the chains whose name hashes to i (CRC-32 of the chain,
  modulo N): a chain is never split, so its seq and hash run on in one process. Each worker is a whole
  pipeline (ingest, WAL, Kafka producer) with its own WAL (`<wal.dir>/worker-<i>`) and state.db
  (`<state.dir>/worker-<i>`), and writes its manifests as node `<node>/worker-<i>` (its own node
  chain). With one worker (the default) nothing of this exists: the layout is the one of one process.
- **The supervisor** (`shipper run` with N > 1) starts the workers (`shipper run --worker i/N`), serves
  `/metrics` (every worker's samples with a `worker` label), `/healthz` and `/readyz` (all workers), passes
  SIGTERM, SIGINT and SIGHUP on, and when a worker dies, stops the others and exits with its status, so
  the kubelet restarts the pod.
- **Changing N.** `<state.dir>/layout.json` records the layout. When N differs at start, the supervisor
  first sends what the old layout's WALs still hold (each drained by a pipeline that reads no file), then
  moves each chain's head and each file's position into the state.db of the worker that owns the chain
  now, then starts the new layout. Nothing is read twice into a new chain: a chain goes on from its head
  wherever it moved. While Kafka cannot take the old WALs, the new layout waits (logged).
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path

from .config import Settings
from .health import HealthServer

log = logging.getLogger("shipper.workers")

LAYOUT_FILE = "layout.json"
DRAIN_LOG_EVERY_S = 10.0


@dataclass(slots=True, frozen=True)
class Shard:
    """Worker `index` of `count`."""

    index: int
    count: int

    def owns(self, chain: str) -> bool:
        return shard_of(chain, self.count) == self.index

    @property
    def manifest_node(self) -> str:
        return f"worker-{self.index}"

    @classmethod
    def parse(cls, text: str) -> Shard:
        index, _, count = text.partition("/")
        shard = cls(int(index), int(count))
        if not 0 <= shard.index < shard.count:
            raise ValueError(f"worker {text!r}: the index is 0 .. count - 1")
        return shard


def shard_of(chain: str, count: int) -> int:
    return zlib.crc32(chain.encode()) % count


def cpu_limit() -> int:
    """The CPUs this container may use: its cgroup v2 quota (cpu.max), rounded up, else the CPUs the
    process may run on."""
    available = len(os.sched_getaffinity(0))
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if quota != "max":
            return max(1, min(available, -(-int(quota) // int(period))))
    except (OSError, ValueError):
        pass
    return available


def resolve_workers(setting: int | str) -> int:
    return cpu_limit() if setting == "auto" else int(setting)


def unit_settings(settings: Settings, shard: Shard | None) -> Settings:
    """The settings of one worker: its WAL and state directories (one process: the configured ones)."""
    if shard is None:
        return settings
    return settings.model_copy(update={
        "wal": settings.wal.model_copy(update={"dir": str(Path(settings.wal.dir) / f"worker-{shard.index}")}),
        "state": settings.state.model_copy(update={"dir": str(Path(settings.state.dir) / f"worker-{shard.index}")}),
    })


def units(settings: Settings, count: int) -> list[tuple[Shard | None, Settings]]:
    if count == 1:
        return [(None, settings)]
    return [(shard, unit_settings(settings, shard)) for shard in (Shard(i, count) for i in range(count))]


def recorded_layout(settings: Settings) -> int | None:
    """The worker count the state directory was last run with (None: never run). A change of layout
    left half done (staged, see change_layout) is finished here first."""
    path = Path(settings.state.dir) / LAYOUT_FILE
    try:
        layout = json.loads(path.read_text())
        count = int(layout["workers"])
    except FileNotFoundError:
        return 1 if (Path(settings.state.dir) / "state.db").exists() else None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{path}: not a layout file ({exc}); it records the worker count of state.dir") from None
    if "replacing" in layout:
        _switch(settings, int(layout["replacing"]), count)
    return count


def record_layout(settings: Settings, count: int, replacing: int | None = None) -> None:
    path = Path(settings.state.dir) / LAYOUT_FILE
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    temporary = path.with_name(LAYOUT_FILE + ".tmp")
    layout: dict = {"workers": count}
    if replacing is not None:
        layout["replacing"] = replacing
    with open(temporary, "w") as out:
        out.write(json.dumps(layout) + "\n")
        out.flush()
        os.fsync(out.fileno())
    os.replace(temporary, path)
    _fsync_directory(path.parent)


def _fsync_directory(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# -- changing the worker count ---------------------------------------------------------------------------
STAGING = ".layout-staging"


async def change_layout(settings: Settings, old: int, new: int, stopping: asyncio.Event) -> bool:
    """Drain the old layout's WALs, then move every chain and source row to the unit that owns it now.
    False when stopped before the move (nothing changed). Crash-safe: the new state.dbs are written
    aside (`<state.dir>/.layout-staging`), then layout.json names the new count with the one it
    replaces, then the old files go and the staged ones take their place (`_switch`, which a restart
    finishes when a crash interrupted it)."""
    from .state import StateStore

    log.info("worker count changed from %d to %d: sending what the old WALs hold, then moving the state", old, new)
    for _, unit in units(settings, old):
        if not await _drain(unit, stopping):
            return False
    snapshots = []
    for _, unit in units(settings, old):
        if Path(unit.state.dir, "state.db").exists():
            store = StateStore(unit.state.dir)
            snapshots.append(store.load())
            store.close()
    staging = Path(settings.state.dir) / STAGING
    shutil.rmtree(staging, ignore_errors=True)
    moved = 0
    for index, (_, unit) in enumerate(units(settings, new)):
        store = StateStore(staging / Path(unit.state.dir).relative_to(settings.state.dir))
        try:
            for snapshot in snapshots:
                chains = {name: chain for name, chain in snapshot.chains.items() if _owner(name, new) == index}
                sources = {key: value for key, value in snapshot.sources.items()
                           if value is not None and _owner(value.chain, new) == index}
                store.adopt(sources, chains, snapshot.tombstones)
                moved += len(chains)
        finally:
            store.close()
    record_layout(settings, new, replacing=old)
    _switch(settings, old, new)
    log.info("moved %d chains to the layout of %d workers", moved, new)
    return True


def _owner(chain: str, count: int) -> int:
    return shard_of(chain, count) if count > 1 else 0


def _switch(settings: Settings, old: int, new: int) -> None:
    """The old layout's WAL and state files go (its WALs are drained), the staged state.dbs take their
    place, and layout.json names the new count alone. Idempotent."""
    staging = Path(settings.state.dir) / STAGING
    if staging.is_dir():
        for _, unit in units(settings, old):
            _remove_unit(settings, unit)
        for _, unit in units(settings, new):
            staged = staging / Path(unit.state.dir).relative_to(settings.state.dir) / "state.db"
            if staged.exists():
                target = Path(unit.state.dir)
                target.mkdir(parents=True, exist_ok=True, mode=0o700)
                os.replace(staged, target / "state.db")
        shutil.rmtree(staging, ignore_errors=True)
    record_layout(settings, new)


def _remove_unit(settings: Settings, unit: Settings) -> None:
    """A drained unit's WAL and state files. The one-process unit's live in wal.dir and state.dir
    themselves, beside the workers' directories: only its files go."""
    for directory, configured in ((unit.wal.dir, settings.wal.dir), (unit.state.dir, settings.state.dir)):
        path = Path(directory)
        if not path.is_dir():
            continue
        if directory != configured:
            shutil.rmtree(path, ignore_errors=True)
            continue
        for item in path.iterdir():
            if item.is_file() and item.name != LAYOUT_FILE and not item.name.startswith(LAYOUT_FILE):
                item.unlink()


async def _drain(unit: Settings, stopping: asyncio.Event) -> bool:
    """Send what the unit's WAL holds with a pipeline that reads no file; True once nothing is left."""
    from .pipeline import Pipeline

    if not Path(unit.wal.dir).is_dir():
        return True
    pending = _unacked_bytes(unit)
    if not pending:
        return True
    reading_nothing = unit.model_copy(update={
        "sources": unit.sources.model_copy(update={"roots": [], "symlink_roots": []})})
    log.info("draining %s: %d bytes not yet acknowledged by Kafka", unit.wal.dir, pending)
    while not stopping.is_set():
        pipeline = Pipeline(reading_nothing)
        done = asyncio.Event()
        run = asyncio.create_task(pipeline.run(done))
        last_log = time.monotonic()
        while not run.done():
            await asyncio.sleep(0.2)
            if stopping.is_set() or (pipeline.wal is not None and pipeline.sender is not None
                                     and pipeline.wal.unacked_bytes == 0):
                done.set()
            elif time.monotonic() - last_log >= DRAIN_LOG_EVERY_S:
                last_log = time.monotonic()
                log.warning("draining %s: %d bytes still not acknowledged by Kafka", unit.wal.dir,
                            pipeline.wal.unacked_bytes if pipeline.wal is not None else pending)
        await run
        pending = _unacked_bytes(unit)
        if not pending:
            return True
    return False


def _unacked_bytes(unit: Settings) -> int:
    from .wal import Wal

    wal = Wal(unit.wal.dir, max_bytes=unit.wal.max_bytes, segment_bytes=unit.wal.segment_bytes)
    try:
        return wal.unacked_bytes
    finally:
        wal.close()


# -- the supervisor ------------------------------------------------------------------------------------
class Supervisor:
    """`shipper run` with N workers (see the module docstring). `run()` returns the exit status."""

    def __init__(self, settings: Settings, count: int, config_file: str | None) -> None:
        self.settings = settings
        self.count = count
        self.config_file = config_file
        self.stopping = asyncio.Event()
        self.children: list[subprocess.Popen] = []
        self.ports: list[int] = []
        self.health: HealthServer | None = None

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        signals_seen = 0

        def on_signal(signum: int) -> None:
            nonlocal signals_seen
            signals_seen += 1
            self.stopping.set()
            self._forward(signum)

        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, on_signal, signum)
        loop.add_signal_handler(signal.SIGHUP, self._forward, signal.SIGHUP)
        try:
            old = recorded_layout(self.settings)
            if old is not None and old != self.count:
                if not await change_layout(self.settings, old, self.count, self.stopping):
                    return 0
            record_layout(self.settings, self.count)
            if self.stopping.is_set():
                return 0
            self._start_children()
            if self.settings.metrics.enabled:
                self.health = HealthServer(self, self.settings.metrics.host, self.settings.metrics.port,
                                           alive=self._alive, ready=self._ready)
                await self.health.start()
            return await self._watch()
        finally:
            for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(signum)
            if self.health is not None:
                await self.health.stop()
            self._stop_children()

    def _start_children(self) -> None:
        from .health import free_loopback_port

        env = dict(os.environ)
        if self.config_file:
            env["SHIPPER_CONFIG_FILE"] = self.config_file
        for index in range(self.count):
            port = free_loopback_port()
            self.ports.append(port)
            self.children.append(subprocess.Popen(
                [sys.executable, "-m", "shipper.cli", "run", "--worker", f"{index}/{self.count}",
                 "--worker-port", str(port)], env=env, stdin=subprocess.DEVNULL))
        log.info("started %d workers (pids %s)", self.count, ", ".join(str(child.pid) for child in self.children))

    async def _watch(self) -> int:
        while True:
            for index, child in enumerate(self.children):
                status = child.poll()
                if status is not None:
                    if self.stopping.is_set():
                        return await self._wait_all()
                    log.error("worker %d exited with status %d: stopping the others", index, status)
                    self.stopping.set()
                    self._forward(signal.SIGTERM)
                    await self._wait_all()
                    return status or 1
            await asyncio.sleep(0.2)

    async def _wait_all(self) -> int:
        deadline = time.monotonic() + self.settings.shutdown_grace_s + 10
        while any(child.poll() is None for child in self.children) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        statuses = [child.poll() for child in self.children]
        return next((status for status in statuses if status not in (0, None)), 0)

    def _forward(self, signum: int) -> None:
        for child in self.children:
            if child.poll() is None:
                child.send_signal(signum)

    def _stop_children(self) -> None:
        for child in self.children:
            if child.poll() is None:
                child.kill()
                child.wait(10)

    # -- what the health server asks ---------------------------------------------------------------
    def exposition(self) -> bytes:
        texts = []
        for index, port in enumerate(self.ports):
            try:
                texts.append((str(index), _get(port, "/metrics")))
            except OSError:
                continue
        return merge_expositions(texts)

    def _alive(self) -> bool:
        return all(child.poll() is None for child in self.children) and self._all_ok("/healthz")

    def _ready(self) -> bool:
        return bool(self.children) and self._all_ok("/readyz")

    def _all_ok(self, path: str) -> bool:
        for port in self.ports:
            try:
                _get(port, path)
            except OSError:
                return False
        return True


def _get(port: int, path: str) -> bytes:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as response:
        return response.read()


def merge_expositions(texts: list[tuple[str, bytes]]) -> bytes:
    """Prometheus text expositions of the workers as one: each sample gains a `worker` label; a metric
    family's HELP and TYPE lines come once, before its samples."""
    families: dict[str, list[str]] = {}
    headers: dict[str, list[str]] = {}
    order: list[str] = []
    for worker, text in texts:
        family = ""
        for line in text.decode().splitlines():
            if not line:
                continue
            if line.startswith("# "):
                parts = line.split(" ", 3)
                family = parts[2] if len(parts) > 2 else family
                if family not in headers:
                    headers[family] = []
                    families[family] = []
                    order.append(family)
                if line not in headers[family]:
                    headers[family].append(line)
                continue
            name, brace, rest = line.partition("{")
            if brace:
                sample = f'{name}{{worker="{worker}",{rest}' if not rest.startswith("}") else \
                    f'{name}{{worker="{worker}"{rest}'
            else:
                metric, _, value = line.partition(" ")
                sample = f'{metric}{{worker="{worker}"}} {value}'
            if family not in families:
                families[family], headers[family] = [], []
                order.append(family)
            families[family].append(sample)
    out = []
    for family in order:
        out += headers[family] + families[family]
    return ("\n".join(out) + "\n").encode()
