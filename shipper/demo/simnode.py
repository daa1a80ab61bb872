"""A simulated node: containers writing CRI log lines in the kubelet layout, rotated like kubelet.

For the demo, the tests and the benchmark. Everything is deterministic for a seed (names, bodies,
timestamps, rotation stamps); only `run_async` paces by the wall clock.

Layout under `root` (stands for the node's /var/log):
  pods/<namespace>_<pod>_<uid>/<container>/<restart>.log      written by the "runtime"
  containers/<pod>_<namespace>_<container>-<container id>.log  symlinks, as kubelet makes them

Rotation (kubelet's order): drop `.tmp` leftovers, delete the oldest rotated files beyond
`keep_rotated - 1`, gzip every uncompressed rotated file, rename the live file to
`<n>.log.<YYYYMMDD-HHMMSS>` and create a new live file. So after a rotation the newest rotated file
is uncompressed and the older ones are `.gz`.

The `Ledger` records, per chain (`<pod_uid>/<container>`), the full bodies written (partial lines
joined), in order: what a correct shipper must deliver. Bodies are unique (a per-chain counter). A
rotation falls between entries, never between the P and F lines of one, unless
`rotate_between_partials` (kubelet can do that; the parser then flushes the P part at the end of the
file, so the ledger no longer matches entry for entry). With `journal=True` the node also keeps
every byte written to every file instance, so a tailer test can account for each byte.
"""
from __future__ import annotations

import asyncio
import gzip
import hashlib
import os
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from shipper.model import ContainerRef

_EPOCH_NS = 1_795_888_800 * 1_000_000_000          # 2026-11-28T18:00:00Z
_NAMESPACES = ("default", "payments", "kube-system", "checkout", "observability", "team-a")
_APPS = ("api", "web", "worker", "billing", "auth", "search", "cart", "ledger")
_CONTAINER_NAMES = ("app", "sidecar", "proxy", "agent", "init-db", "metrics")
_WORDS = ("request", "handled", "user", "order", "payment", "retry", "cache", "miss", "hit", "upstream",
          "timeout", "connection", "accepted", "queued", "flushed", "record", "batch", "commit", "token",
          "validated", "session", "opened", "closed", "latency", "ms", "status", "ok", "failed", "item")
_LEVELS = ("info", "info", "info", "info", "debug", "warn", "error")


class Ledger:
    """What was written, per chain: entry count, an order-sensitive digest of the bodies, and (when
    `keep_bodies`) the bodies themselves. Memory is bounded without bodies."""

    def __init__(self, keep_bodies: bool = True) -> None:
        self.keep_bodies = keep_bodies
        self._counts: dict[str, int] = {}
        self._hashes: dict[str, "hashlib._Hash"] = {}
        self._bodies: dict[str, list[bytes]] = {}

    def record(self, chain: str, body: bytes) -> None:
        h = self._hashes.get(chain)
        if h is None:
            h = self._hashes[chain] = hashlib.sha256()
            self._counts[chain] = 0
            self._bodies[chain] = []
        h.update(len(body).to_bytes(8, "little"))
        h.update(body)
        self._counts[chain] += 1
        if self.keep_bodies:
            self._bodies[chain].append(body)

    @staticmethod
    def digest_of(bodies: list[bytes]) -> str:
        """The digest a chain has when exactly `bodies` were written to it, in this order."""
        h = hashlib.sha256()
        for body in bodies:
            h.update(len(body).to_bytes(8, "little"))
            h.update(body)
        return h.hexdigest()

    def chains(self) -> list[str]:
        return sorted(self._counts)

    def count(self, chain: str) -> int:
        return self._counts.get(chain, 0)

    def total(self) -> int:
        return sum(self._counts.values())

    def digest(self, chain: str) -> str:
        h = self._hashes.get(chain)
        return h.hexdigest() if h is not None else hashlib.sha256().hexdigest()

    def bodies(self, chain: str) -> list[bytes]:
        if not self.keep_bodies:
            raise ValueError("ledger created with keep_bodies=False")
        return list(self._bodies.get(chain, ()))


@dataclass(slots=True)
class FileInstance:
    """One physical file content as the runtime wrote it (journal mode). A truncation starts a new
    instance on the same inode; a copy (copytruncate's) is an instance with `copy_of` set."""

    serial: int
    dev: int
    ino: int
    paths: list[str]
    data: bytearray = field(default_factory=bytearray)
    copy_of: int | None = None
    ended: str = ""                      # "", "rotated", "truncated", "deleted", "restarted"


@dataclass(slots=True)
class SimContainer:
    ref: ContainerRef
    container_id: str
    pod_dir: Path
    counter: int = 0                     # entries written to this chain
    buffer: bytearray = field(default_factory=bytearray)
    live_size: int = 0                   # bytes of the live file on disk
    instance: FileInstance | None = None
    last_stamp: str = ""
    live_missing: bool = False           # deleted; the next write creates it again

    @property
    def log_path(self) -> Path:
        return self.pod_dir / self.ref.container / f"{self.ref.restart_count}.log"


class SimNode:
    def __init__(self, root: Path, pods: int, containers_per_pod: int, rotate_every_bytes: int | None,
                 keep_rotated: int = 2, gzip_rotated: bool = True, partial_ratio: float = 0.02,
                 json_ratio: float = 0.7, seed: int = 0, *, keep_bodies: bool = True, journal: bool = False,
                 flush_bytes: int = 1 << 16, rotate_between_partials: bool = False) -> None:
        self.root = Path(root)
        self.pods_dir = self.root / "pods"
        self.containers_dir = self.root / "containers"
        self.rotate_every_bytes = rotate_every_bytes
        self.keep_rotated = max(keep_rotated, 1)
        self.gzip_rotated = gzip_rotated
        self.partial_ratio = partial_ratio
        self.json_ratio = json_ratio
        self.flush_bytes = flush_bytes
        self.rotate_between_partials = rotate_between_partials
        self.ledger = Ledger(keep_bodies)
        self.journal: list[FileInstance] | None = [] if journal else None
        self.bytes_written = 0
        self.rotations = 0
        self._rng = random.Random(seed)
        self._now_ns = _EPOCH_NS
        self._sec_cache = (-1, "")
        # Messages drawn from a fixed pool: cheap per entry; bodies stay unique by their counter.
        self._phrases = [" ".join(self._rng.choices(_WORDS, k=self._rng.randrange(4, 12))) for _ in range(1024)]
        self.pods_dir.mkdir(parents=True, exist_ok=True)
        self.containers_dir.mkdir(parents=True, exist_ok=True)
        self.containers: list[SimContainer] = []
        self._pods_added = 0
        self.add_pods(pods, containers_per_pod)

    # -- setup -----------------------------------------------------------------------------------
    def _hex(self, bits: int) -> str:
        return f"{self._rng.getrandbits(bits):0{bits // 4}x}"

    def add_pods(self, count: int, containers_per_pod: int = 1) -> list[SimContainer]:
        """New pods (their log directories, empty live files and links), as kubelet starts them."""
        first = len(self.containers)
        for _ in range(count):
            self._add_pod(self._pods_added, containers_per_pod)
            self._pods_added += 1
        return self.containers[first:]

    def _add_pod(self, index: int, containers: int) -> None:
        rng = self._rng
        namespace = _NAMESPACES[index % len(_NAMESPACES)]
        pod = f"{rng.choice(_APPS)}-{self._hex(40)[:10]}-{self._hex(20)}"
        u = self._hex(128)
        uid = f"{u[:8]}-{u[8:12]}-{u[12:16]}-{u[16:20]}-{u[20:]}"
        pod_dir = self.pods_dir / f"{namespace}_{pod}_{uid}"
        for c in range(containers):
            name = _CONTAINER_NAMES[c] if c < len(_CONTAINER_NAMES) else f"c{c}"
            ref = ContainerRef(namespace=namespace, pod=pod, pod_uid=uid, container=name, restart_count=0)
            sim = SimContainer(ref=ref, container_id=self._hex(256), pod_dir=pod_dir)
            sim.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._create_live(sim)
            self.containers.append(sim)

    def _link_path(self, sim: SimContainer) -> Path:
        r = sim.ref
        return self.containers_dir / f"{r.pod}_{r.namespace}_{r.container}-{sim.container_id}.log"

    def _create_live(self, sim: SimContainer) -> None:
        path = sim.log_path
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
        try:
            st = os.fstat(fd)
        finally:
            os.close(fd)
        sim.live_size = st.st_size
        sim.live_missing = False
        link = self._link_path(sim)
        if not link.is_symlink():
            link.symlink_to(path)
        if self.journal is not None:
            sim.instance = FileInstance(len(self.journal), st.st_dev, st.st_ino, [str(path)])
            self.journal.append(sim.instance)

    # -- writing ---------------------------------------------------------------------------------
    def _timestamp(self) -> bytes:
        self._now_ns += 1_000 + int(self._rng.random() * 1_999_000)
        sec, frac = divmod(self._now_ns, 1_000_000_000)
        if self._sec_cache[0] != sec:
            self._sec_cache = (sec, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)))
        digits = f"{frac:09d}".rstrip("0")         # Go's RFC3339Nano drops trailing zeros
        return (f"{self._sec_cache[1]}.{digits}Z" if digits else f"{self._sec_cache[1]}Z").encode()

    def _body(self, sim: SimContainer) -> tuple[bytes, bytes]:
        rng = self._rng
        rnd = rng.random
        sim.counter += 1
        n = sim.counter
        words = self._phrases[int(rnd() * len(self._phrases))]
        req = f"req-{sim.ref.pod_uid[:8]}-{sim.ref.container}-{n}"
        if rnd() < self.json_ratio:
            level = _LEVELS[int(rnd() * len(_LEVELS))]
            body = (f'{{"level":"{level}","msg":"{words}","trace_id":"{rng.getrandbits(128):032x}",'
                    f'"span_id":"{rng.getrandbits(64):016x}","request_id":"{req}","n":{n}}}')
            stream = b"stderr" if level == "error" else b"stdout"
        else:
            level = _LEVELS[int(rnd() * len(_LEVELS))].upper()
            body = f"{level} {words} request_id={req} n={n} took={1 + int(rnd() * 4999)}ms"
            stream = b"stderr" if level == "ERROR" else b"stdout"
        return body.encode(), stream

    def _lines_of(self, sim: SimContainer) -> list[bytes]:
        body, stream = self._body(sim)
        self.ledger.record(sim.ref.chain, body)
        if len(body) > 8 and self._rng.random() < self.partial_ratio:
            cut = 1 + int(self._rng.random() * (len(body) - 2))
            return [b"%s %s P %s\n" % (self._timestamp(), stream, body[:cut]),
                    b"%s %s F %s\n" % (self._timestamp(), stream, body[cut:])]
        return [b"%s %s F %s\n" % (self._timestamp(), stream, body)]

    def write(self, entries: int, container: int | None = None) -> int:
        """Write `entries` log entries (to one container, or spread at random); returns bytes written."""
        before = self.bytes_written
        rnd = self._rng.random
        containers = self.containers
        count = len(containers)
        limit = self.rotate_every_bytes
        flush_bytes = self.flush_bytes
        for _ in range(entries):
            sim = containers[container if container is not None else int(rnd() * count)]
            lines = self._lines_of(sim)
            last = len(lines) - 1
            for i, line in enumerate(lines):
                sim.buffer += line
                self.bytes_written += len(line)
                if limit is not None and sim.live_size + len(sim.buffer) >= limit \
                        and (i == last or self.rotate_between_partials):
                    self.rotate(sim)
                elif len(sim.buffer) >= flush_bytes:
                    self._flush(sim)
        self.flush()
        return self.bytes_written - before

    def _flush(self, sim: SimContainer) -> None:
        if not sim.buffer:
            return
        if sim.live_missing:
            self._create_live(sim)
        fd = os.open(sim.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
        try:
            os.write(fd, sim.buffer)   # one block; regular files take it whole
        finally:
            os.close(fd)
        if sim.instance is not None:
            sim.instance.data += sim.buffer
        sim.live_size += len(sim.buffer)
        sim.buffer.clear()

    def flush(self) -> None:
        for sim in self.containers:
            self._flush(sim)

    # -- kubelet operations ------------------------------------------------------------------------
    def _next_stamp(self, sim: SimContainer) -> str:
        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(self._now_ns // 1_000_000_000))
        while stamp <= sim.last_stamp:                  # kubelet's stamps have 1 s resolution
            self._now_ns += 1_000_000_000
            stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(self._now_ns // 1_000_000_000))
        sim.last_stamp = stamp
        return stamp

    def rotated_files(self, sim: SimContainer) -> list[Path]:
        prefix = sim.log_path.name + "."
        return sorted(p for p in sim.log_path.parent.iterdir() if p.name.startswith(prefix))

    def rotate(self, sim: SimContainer | int) -> Path:
        """Rotate like kubelet; returns the new name of the file that was live."""
        sim = self._sim(sim)
        self._flush(sim)
        rotated = []
        for p in self.rotated_files(sim):
            if p.name.endswith(".tmp"):
                p.unlink()
            else:
                rotated.append(p)
        while len(rotated) > self.keep_rotated - 1:
            rotated.pop(0).unlink()
        if self.gzip_rotated:
            for p in rotated:
                if p.suffix != ".gz":
                    self._gzip(p)
        target = sim.log_path.with_name(f"{sim.log_path.name}.{self._next_stamp(sim)}")
        os.rename(sim.log_path, target)
        if sim.instance is not None:
            sim.instance.paths.append(str(target))
            sim.instance.ended = "rotated"
        self.rotations += 1
        self._create_live(sim)
        return target

    @staticmethod
    def _gzip(path: Path) -> None:
        tmp = path.with_name(path.name + ".gz.tmp")
        with open(path, "rb") as src, open(tmp, "wb") as raw:
            with gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=1, mtime=0) as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
        os.rename(tmp, path.with_name(path.name + ".gz"))
        path.unlink()

    def copytruncate(self, sim: SimContainer | int) -> Path:
        """logrotate's copytruncate: copy the live file aside, then truncate it in place."""
        sim = self._sim(sim)
        self._flush(sim)
        target = sim.log_path.with_name(f"{sim.log_path.name}.{self._next_stamp(sim)}")
        shutil.copyfile(sim.log_path, target)
        with open(sim.log_path, "r+b") as f:
            f.truncate(0)
        sim.live_size = 0
        if sim.instance is not None and self.journal is not None:
            old = sim.instance
            old.ended = "truncated"
            st = os.stat(target)
            self.journal.append(FileInstance(len(self.journal), st.st_dev, st.st_ino, [str(target)],
                                             bytearray(old.data), copy_of=old.serial, ended="copy"))
            sim.instance = FileInstance(len(self.journal), old.dev, old.ino, [str(sim.log_path)])
            self.journal.append(sim.instance)
        return target

    def restart(self, sim: SimContainer | int) -> Path:
        """The container restarts: a new `<n+1>.log` (and container id); the chain goes on."""
        sim = self._sim(sim)
        self._flush(sim)
        if sim.instance is not None:
            sim.instance.ended = "restarted"
        self._link_path(sim).unlink(missing_ok=True)
        r = sim.ref
        sim.ref = ContainerRef(r.namespace, r.pod, r.pod_uid, r.container, r.restart_count + 1)
        sim.container_id = self._hex(256)
        sim.last_stamp = ""
        self._create_live(sim)
        return sim.log_path

    def delete_live(self, sim: SimContainer | int, recreate: bool = False, rotated: bool = False) -> None:
        """Delete the live file (a reader holding it open can still drain it); with `rotated`, its
        rotated copies too, as container garbage collection does."""
        sim = self._sim(sim)
        self._flush(sim)
        if rotated:
            for path in self.rotated_files(sim):
                path.unlink()
        sim.log_path.unlink()
        if sim.instance is not None:
            sim.instance.ended = "deleted"
            sim.instance = None
        sim.live_size = 0
        sim.live_missing = True
        if recreate:
            self._create_live(sim)

    def delete_pod(self, index: int) -> None:
        """The pod is deleted: its log directory and links go away."""
        pod_dir = self.containers[index].pod_dir
        for sim in [s for s in self.containers if s.pod_dir == pod_dir]:
            self._flush(sim)
            if sim.instance is not None:
                sim.instance.ended = "deleted"
            self._link_path(sim).unlink(missing_ok=True)
            self.containers.remove(sim)
        shutil.rmtree(pod_dir)

    def _sim(self, sim: SimContainer | int) -> SimContainer:
        return self.containers[sim] if isinstance(sim, int) else sim

    # -- demo ----------------------------------------------------------------------------------------
    async def run_async(self, rate_lines_per_s: float, duration_s: float, tick_s: float = 0.05) -> int:
        """Write at about `rate_lines_per_s` entries per second for `duration_s`; returns entries."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        written = 0
        while (elapsed := loop.time() - start) < duration_s:
            due = int(rate_lines_per_s * min(elapsed + tick_s, duration_s)) - written
            if due > 0:
                self.write(due)
                written += due
            await asyncio.sleep(tick_s)
        return written
