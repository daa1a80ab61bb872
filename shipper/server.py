"""The long-running process of `shipper run`: the pipeline, the health server, signals."""
from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
import os
import signal
import stat
from pathlib import Path

from . import native
from .config import ConfigError, Settings
from .health import HealthServer, pipeline_checks
from .metrics import Metrics
from .pipeline import Pipeline

log = logging.getLogger("shipper.server")


M_ARENA_MAX = -8     # glibc mallopt parameter


def limit_malloc_arenas(arenas: int = 2) -> None:
    """Records are sealed on a worker thread and freed on the event loop's: with glibc's default of
    up to 8 arenas per core, memory freed across threads stays spread over arenas (about 50 MiB more
    peak RSS at full rate). Two arenas keep the peak down at no measurable cost. Not glibc: no-op."""
    libc_name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(libc_name) if libc_name else None
        if libc is not None and hasattr(libc, "mallopt"):
            libc.mallopt(M_ARENA_MAX, arenas)
    except OSError:
        pass


class UnsafeStateDirectory(Exception):
    """The WAL or state directory could be read or changed by someone else."""


def check_private_directory(path: str, what: str) -> None:
    """Create `path` 0700 if missing; refuse one that others may write or that another user owns."""
    directory = Path(path)
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    info = directory.stat()
    if info.st_mode & stat.S_IWOTH:
        raise UnsafeStateDirectory(f"{what} {path} is world-writable (mode {stat.filemode(info.st_mode)}); "
                                   f"refusing to keep audit data there — chmod 700 it")
    if info.st_uid != os.geteuid():
        raise UnsafeStateDirectory(f"{what} {path} is owned by uid {info.st_uid}, not by this process "
                                   f"(uid {os.geteuid()}); refusing to keep audit data there")


def preflight(settings: Settings) -> None:
    """Check at start what would otherwise fail later, naming the option: certificates, password
    and signing-key files must be readable and well-formed."""
    from .ingest import SigningKey
    from .kafka import KafkaSetupError, producer_options

    try:
        producer_options(settings.kafka, idempotent=False)
    except KafkaSetupError as exc:
        raise ConfigError(str(exc)) from None
    try:
        SigningKey(settings.seal.signing_key_file, settings.seal.key_id)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if settings.sources.watch.value == "inotify":
        from .tail.watch import DirWatcher, InotifyUnavailable
        try:
            DirWatcher("inotify").close()
        except InotifyUnavailable as exc:
            raise ConfigError(f"sources.watch: inotify cannot be used here ({exc}); use auto or poll") from None
    for root in settings.sources.roots:
        if not os.path.isdir(root):
            log.warning("sources.roots: %s does not exist (yet); it is watched", root)


class Server:
    def __init__(self, settings: Settings, metrics: Metrics | None = None, provider=None) -> None:
        self.settings = settings
        self.metrics = metrics or Metrics()
        self.provider = provider
        self.pipeline: Pipeline | None = None
        self.health: HealthServer | None = None
        self.stopping = asyncio.Event()

    async def serve(self) -> int:
        settings = self.settings
        os.umask(0o077)            # WAL, state and their SQLite side files: this user only
        limit_malloc_arenas()
        self.metrics.native.set(1 if native.ENABLED else 0)
        if native.ENABLED:
            log.info("hot path: native (shipper._native)")
        else:
            log.warning("hot path: pure Python (SHIPPER_NATIVE=0 or shipper._native not built): several times "
                        "the CPU per line")
        preflight(settings)
        check_private_directory(settings.wal.dir, "wal.dir")
        check_private_directory(settings.state.dir, "state.dir")
        loop = asyncio.get_running_loop()
        signals_seen = 0

        def on_signal(signum: int) -> None:
            nonlocal signals_seen
            signals_seen += 1
            if signals_seen == 1:
                log.info("signal %s: draining (grace %.0fs)", signal.Signals(signum).name, settings.shutdown_grace_s)
                self.stopping.set()
            else:
                log.warning("second signal: exiting now; unacknowledged records stay in the WAL")
                os._exit(0)

        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, on_signal, signum)
        self.pipeline = Pipeline(settings, self.metrics, self.provider)
        if settings.metrics.enabled:
            alive, ready = pipeline_checks(self.pipeline)
            self.health = HealthServer(self.metrics, settings.metrics.host, settings.metrics.port, alive=alive,
                                       ready=ready)
            await self.health.start()
        try:
            await self.pipeline.run(self.stopping)
        finally:
            if self.health is not None:
                await self.health.stop()
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(signum)
        return 0
