"""Which watched directories changed since the last look: `DirWatcher`, over Linux inotify (ctypes
on libc, no dependency), with polling as the fallback.

The pipeline waits on the watcher's descriptor instead of sleeping between polls, and then polls
only the tailers whose directory had an event. One watch per directory, never per file: a
container directory's watch covers its `0.log` and every rotated copy. What inotify cannot tell:

- `overflow` (IN_Q_OVERFLOW, the kernel dropped events): every directory counts as changed and
  discovery rescans;
- a directory that cannot be watched (ENOSPC: `fs.inotify.max_user_watches` reached; or another
  error) is listed in `unwatched` with the reason, and its tailers are polled as before;
- file systems where no event fires for writes (NFS, some overlay set-ups): `sources.watch: poll`,
  and in every mode a bounded fallback poll, so a missed event delays a line, never stalls it.

Calls are thread-safe: the event loop drains the descriptor when it becomes readable, the worker
thread takes the changes.
"""
from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import errno
import os
import struct
import threading
from dataclasses import dataclass, field

IN_MODIFY = 0x00000002
IN_CLOSE_WRITE = 0x00000008
IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800
IN_UNMOUNT = 0x00002000
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000
IN_ONLYDIR = 0x01000000
IN_NONBLOCK = 0o4000
IN_CLOEXEC = 0o2000000

# Writes and truncations (IN_MODIFY), a writer closing (IN_CLOSE_WRITE), names appearing or going
# (rotation, a new restart's N.log, a new pod or container directory), the directory itself going.
DIR_MASK = (IN_MODIFY | IN_CLOSE_WRITE | IN_CREATE | IN_MOVED_TO | IN_MOVED_FROM | IN_DELETE | IN_DELETE_SELF
            | IN_MOVE_SELF | IN_ONLYDIR)
_STRUCTURE = (IN_CREATE | IN_MOVED_TO | IN_MOVED_FROM | IN_DELETE | IN_DELETE_SELF | IN_MOVE_SELF | IN_UNMOUNT
              | IN_IGNORED)
_EVENT = struct.Struct("iIII")          # wd, mask, cookie, len; then len bytes of NUL-padded name
_READ_BYTES = 64 * 1024

WATCH_MODES = ("auto", "inotify", "poll")


class InotifyUnavailable(OSError):
    """inotify cannot be used here (not Linux, no libc symbol, or the instance limit reached)."""


class _Inotify:
    """The three system calls, on a non-blocking close-on-exec descriptor."""

    def __init__(self) -> None:
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
            self._init1 = libc.inotify_init1
            self._add = libc.inotify_add_watch
            self._rm = libc.inotify_rm_watch
        except (OSError, AttributeError) as exc:
            raise InotifyUnavailable(errno.ENOSYS, f"no inotify in libc: {exc}") from None
        self._init1.argtypes = (ctypes.c_int,)
        self._add.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32)
        self._rm.argtypes = (ctypes.c_int, ctypes.c_int)
        fd = self._init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            err = ctypes.get_errno()
            raise InotifyUnavailable(err, f"inotify_init1: {os.strerror(err)}")
        self.fd = fd

    def add_watch(self, path: str, mask: int) -> int:
        wd = self._add(self.fd, os.fsencode(path), mask)
        if wd < 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), path)
        return wd

    def rm_watch(self, wd: int) -> None:
        self._rm(self.fd, wd)           # EINVAL when the kernel dropped it already: nothing to do

    def read(self) -> list[tuple[int, int]]:
        """(wd, mask) of the queued events; none when nothing is queued."""
        try:
            data = os.read(self.fd, _READ_BYTES)
        except BlockingIOError:
            return []
        events = []
        pos, size = 0, _EVENT.size
        while pos + size <= len(data):
            wd, mask, _cookie, length = _EVENT.unpack_from(data, pos)
            events.append((wd, mask))
            pos += size + length
        return events

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


@dataclass(slots=True)
class Changes:
    """What happened since the last `take()`: directories with events, whether names appeared or
    went (discovery should look), and whether events were dropped (everything counts as changed)."""

    dirs: set[str] = field(default_factory=set)
    structure: bool = False
    overflow: bool = False


class DirWatcher:
    """Watches directories for the pipeline. `mode`: `inotify` (raises InotifyUnavailable if it
    cannot be had), `poll` (no watches: `enabled` is False and callers poll), `auto` (inotify when
    it can be had, `unavailable` says why not)."""

    def __init__(self, mode: str = "auto") -> None:
        if mode not in WATCH_MODES:
            raise ValueError(f"watch mode {mode!r} is not one of {WATCH_MODES}")
        self._lock = threading.Lock()
        self._inotify: _Inotify | None = None
        self.unavailable = ""
        if mode != "poll":
            try:
                self._inotify = _Inotify()
            except InotifyUnavailable as exc:
                if mode == "inotify":
                    raise
                self.unavailable = str(exc)
        self._wd_of: dict[str, int] = {}
        self._dirs_of: dict[int, list[str]] = {}   # one watch per inode, perhaps under two names
        self.unwatched: dict[str, str] = {}         # directory -> why it is polled instead: limit, error
        self.missing: set[str] = set()              # wanted but not there (a root not created yet)
        self.overflows = 0
        self._changes = Changes()
        self._woken = False
        self._waiter: tuple[asyncio.AbstractEventLoop, asyncio.Future] | None = None

    @property
    def enabled(self) -> bool:
        return self._inotify is not None

    def fileno(self) -> int:
        return self._inotify.fd if self._inotify is not None else -1

    @property
    def watched(self) -> frozenset[str]:
        with self._lock:
            return frozenset(self._wd_of)

    # -- the watch set -----------------------------------------------------------------------------
    def sync(self, dirs: set[str]) -> None:
        """Watch exactly `dirs`: add the new ones (and retry those that could not be watched), remove
        those no longer wanted. A directory that went away was dropped by the kernel already."""
        if self._inotify is None:
            return
        with self._lock:
            for path in [p for p in self._wd_of if p not in dirs]:
                self._remove(path)
            for path in [p for p in self.unwatched if p not in dirs]:
                del self.unwatched[path]
            self.missing.clear()
            for path in dirs:
                if path not in self._wd_of:
                    self._add(path)

    def _add(self, path: str) -> None:
        try:
            wd = self._inotify.add_watch(path, DIR_MASK)
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.ENOTDIR):
                self.unwatched.pop(path, None)   # gone before we looked, or not there yet
                self.missing.add(path)
            else:
                self.unwatched[path] = "limit" if exc.errno == errno.ENOSPC else "error"
            return
        self.unwatched.pop(path, None)
        self._wd_of[path] = wd
        self._dirs_of.setdefault(wd, []).append(path)
        # What changed between our last look and the watch is announced by nothing: look once, both at
        # the files in it and for directories made in it meanwhile (a new pod's container directory, say).
        self._changes.dirs.add(path)
        self._changes.structure = True

    def _remove(self, path: str) -> None:
        wd = self._wd_of.pop(path)
        paths = self._dirs_of.get(wd, [])
        if path in paths:
            paths.remove(path)
            if not paths:
                del self._dirs_of[wd]
                self._inotify.rm_watch(wd)

    # -- events ------------------------------------------------------------------------------------
    def pump(self) -> bool:
        """Drain queued events into the pending changes; whether anything is pending."""
        with self._lock:
            while self._inotify is not None:
                events = self._inotify.read()
                if not events:
                    break
                for wd, mask in events:
                    self._event(wd, mask)
            changes = self._changes
            return bool(self._woken or changes.dirs or changes.structure or changes.overflow)

    def _event(self, wd: int, mask: int) -> None:
        changes = self._changes
        if mask & IN_Q_OVERFLOW:
            self.overflows += 1
            changes.overflow = changes.structure = True
            return
        paths = self._dirs_of.get(wd)
        if paths is None:
            return                                # its watch was removed after the event was queued
        changes.dirs.update(paths)
        if mask & _STRUCTURE:
            changes.structure = True
        if mask & IN_IGNORED:                     # the kernel dropped the watch (directory gone)
            del self._dirs_of[wd]
            for path in paths:
                if self._wd_of.get(path) == wd:
                    del self._wd_of[path]

    def take(self) -> Changes:
        """The changes since the last take (draining the descriptor first)."""
        self.pump()
        with self._lock:
            changes, self._changes = self._changes, Changes()
            self._woken = False
        return changes

    def wake(self) -> None:
        """Make the current or next `wait()` return at once (work arrived from elsewhere)."""
        with self._lock:
            self._woken = True
            waiter = self._waiter
        if waiter is not None:
            loop, future = waiter
            loop.call_soon_threadsafe(_resolve, future)

    async def wait(self, stopping: asyncio.Event, timeout: float) -> None:
        """Until a change is pending, `wake()` is called, `stopping` is set, or `timeout` seconds
        pass; costs nothing while it waits (the event loop watches the descriptor)."""
        if timeout <= 0 or stopping.is_set() or self.pump():
            return
        loop = asyncio.get_running_loop()
        changed = loop.create_future()
        with self._lock:
            if self._woken:
                return
            self._waiter = (loop, changed)

        def readable() -> None:
            if self.pump():
                _resolve(changed)

        stop = asyncio.ensure_future(stopping.wait())
        fd = self.fileno()
        if fd >= 0:
            loop.add_reader(fd, readable)
        try:
            await asyncio.wait({changed, stop}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if fd >= 0:
                loop.remove_reader(fd)
            with self._lock:
                self._waiter = None
            stop.cancel()
            changed.cancel()

    def close(self) -> None:
        with self._lock:
            if self._inotify is not None:
                self._inotify.close()
                self._inotify = None
            self._wd_of.clear()
            self._dirs_of.clear()


def _resolve(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(None)
