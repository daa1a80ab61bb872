"""The long-running process of `shipper run`: the pipeline, the health server, signals (SIGTERM and
SIGINT stop, SIGHUP reloads the configuration) and the configuration reloads."""
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
from .enrich import build_provider
from .health import HealthServer, pipeline_checks
from .logs import set_level
from .metrics import Metrics
from .pipeline import Pipeline
from .reload import ConfigReloader

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
    def __init__(self, settings: Settings, metrics: Metrics | None = None, provider=None,
                 config_file: str | None = None, shard=None) -> None:
        self.settings = settings
        self.shard = shard                  # workers.Shard of `workers: N`, or None (one process)
        self.metrics = metrics or Metrics()
        self.provider = provider
        self.config_file = config_file      # what SIGHUP reloads (none: SIGHUP is logged and ignored)
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
                self._exit_now(signum)

        hangup = asyncio.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, on_signal, signum)
        loop.add_signal_handler(signal.SIGHUP, hangup.set)
        if self.provider is None:
            self.provider = build_provider(settings, self.metrics)
        pipeline = self.pipeline = Pipeline(settings, self.metrics, self.provider, shard=self.shard)
        reloader = ConfigReloader(settings, self.config_file, self.metrics, self._apply_settings)
        if settings.metrics.enabled:
            alive, ready = pipeline_checks(self.pipeline)
            self.health = HealthServer(self.metrics, settings.metrics.host, settings.metrics.port, alive=alive,
                                       ready=ready)
            await self.health.start()
        reloads = asyncio.create_task(reloader.run(hangup, settings.config_poll_interval_s,
                                                   ready=lambda: pipeline.ingest is not None), name="reload")
        try:
            await self.pipeline.run(self.stopping)
        finally:
            reloads.cancel()
            await asyncio.gather(reloads, return_exceptions=True)
            if self.health is not None:
                await self.health.stop()
            for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(signum)
        return 0

    def _apply_settings(self, settings: Settings) -> None:
        """A reload's settings (reload.py: only Reloadable options differ) to the components that read
        them while running: the provider (filters, selector, body stage), the ingest (source globs) and
        the log level. The pipeline's own copy keeps the start-up values, all of which stay."""
        self.provider.reconfigure(settings)
        assert self.pipeline is not None and self.pipeline.ingest is not None
        self.pipeline.ingest.reconfigure(settings)
        set_level(settings.log_level)
        self.settings = settings

    def _exit_now(self, signum: int) -> None:
        """The second SIGTERM/SIGINT: no drain. What the WAL holds is fsynced (it is sent on the next
        start; the lines not yet in it are read again from their files), then the process exits at once
        with 128 + the signal number, as a shell reports a process killed by it."""
        status = 128 + signum
        wal = self.pipeline.wal if self.pipeline is not None else None
        if wal is None:
            outcome = "the WAL was not open yet"
        elif wal.fsync_now():
            outcome = "the WAL is fsynced; unacknowledged records are sent on the next start"
        else:
            outcome = ("the WAL fsync failed: what it holds survives this exit (the page cache) but not a power "
                       "loss before the kernel writes it")
        log.warning("second signal %s: exiting now with status %d without draining; %s",
                    signal.Signals(signum).name, status, outcome)
        os._exit(status)
