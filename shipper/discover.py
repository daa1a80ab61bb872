"""Which log files exist on this node, and which container each one belongs to.

Owns the scan of the kubelet layout (`<root>/<namespace>_<pod>_<uid>/<container>/<restart>.log`),
of the `/var/log/containers` symlinks that point into it, and of a sidecar's flat directory. It
reads directory entries and symlinks, never file contents: a symlink whose target leaves the
allowed roots is reported in `DiscoveryResult.rejected` and never opened.

Rotated copies (`0.log.20261128-180000`, `….gz`, `….tmp`) are not sources of their own: the tailer
of `0.log` follows them. Nothing here raises for an odd or hostile tree; a path that does not fit
is rejected with a reason. With docker's json-file driver `<restart>.log` is itself a link into
/var/lib/docker/containers, which must then be one of the roots; the tailer follows the target.

Cost: one scandir per pod and container directory, no stat for plain files (d_type), one readlink
per /var/log/containers link whose target was already scanned; links and linked directories take
the slow, checked path.
"""
from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from fnmatch import fnmatchcase

from shipper.model import ContainerRef

# Kubelet names the live file of restart N `N.log`; ASCII digits only (str.isdigit would let
# other scripts' digits through, and int() would accept them).
_RESTART_LOG = re.compile(r"([0-9]+)\.log")
# `<restart>.log.<anything>`: a rotated copy, owned by the tailer of `<restart>.log`.
_ROTATED_LOG = re.compile(r"[0-9]+\.log\..+")
# /var/log/containers/<pod>_<namespace>_<container>-<64 hex container id>.log
_CONTAINER_LINK = re.compile(r"(?P<pod>[^_]+)_(?P<ns>[^_]+)_(?P<container>.+)-(?P<cid>[0-9a-f]{64})\.log")
_MAX_LINK_HOPS = 40


@dataclass(slots=True, frozen=True)
class DiscoveredFile:
    """One source: `path` is what the tailer follows (a symlink's target when the layout file is
    itself a link, as with docker's json-file logs); `ref` is what the layout path says;
    `container_id` comes from a `/var/log/containers` link name when one points here."""

    path: str
    ref: ContainerRef
    container_id: str = ""


@dataclass(slots=True, frozen=True)
class Rejected:
    path: str
    reason: str


@dataclass(slots=True)
class DiscoveryResult:
    files: list[DiscoveredFile] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)
    excluded: list[str] = field(default_factory=list)      # matched exclude / missed include
    dirs: list[str] = field(default_factory=list)          # directories listed (what a watcher watches)


def parse_pod_dir(name: str) -> tuple[str, str, str] | None:
    """`<namespace>_<pod>_<uid>` -> (namespace, pod, uid). Kubernetes names cannot hold `_`, so the
    first and last underscores delimit; anything stranger in the middle stays part of the pod name."""
    first = name.find("_")
    last = name.rfind("_")
    if first <= 0 or last == first or last == len(name) - 1:
        return None
    return name[:first], name[first + 1:last], name[last + 1:]


def parse_layout_path(path: str, root: str) -> ContainerRef | str:
    """The ContainerRef of `<root>/<ns>_<pod>_<uid>/<container>/<restart>.log`, or why not."""
    rel = os.path.relpath(path, root)
    parts = rel.split(os.sep)
    if len(parts) != 3 or parts[0] in (os.curdir, os.pardir):
        return "not <namespace>_<pod>_<uid>/<container>/<restart>.log under the root"
    pod_dir, container, file_name = parts
    ids = parse_pod_dir(pod_dir)
    if ids is None:
        return f"pod directory {pod_dir!r} is not <namespace>_<pod>_<uid>"
    match = _RESTART_LOG.fullmatch(file_name)
    if match is None:
        return f"file name {file_name!r} is not <restart>.log"
    if not container:
        return "empty container name"
    namespace, pod, uid = ids
    return ContainerRef(namespace=namespace, pod=pod, pod_uid=uid, container=container,
                        restart_count=int(match.group(1)))


def _real_roots(roots: Iterable[str]) -> list[str]:
    return [os.path.realpath(r) for r in roots]


def _inside(real_path: str, real_roots: Sequence[str]) -> bool:
    for root in real_roots:
        if real_path == root or real_path.startswith(root.rstrip(os.sep) + os.sep):
            return True
    return False


def _selected(path: str, include: Sequence[str], exclude: Sequence[str]) -> bool:
    if any(fnmatchcase(path, pattern) for pattern in exclude):
        return False
    return not include or any(fnmatchcase(path, pattern) for pattern in include)


def _link_hops(path: str) -> list[str] | str:
    """Every path a symlink chain passes through, the link itself first and the final target last
    (each hop's directory part resolved), or why it cannot be followed. Never opens a file."""
    hops = [os.path.abspath(path)]
    current = hops[0]
    for _ in range(_MAX_LINK_HOPS):
        try:
            mode = os.lstat(current).st_mode
        except FileNotFoundError:
            return "dangling symlink"
        except OSError as exc:
            return f"cannot stat {current!r}: {exc.strerror}"
        if not stat.S_ISLNK(mode):
            return hops
        try:
            target = os.readlink(current)
        except OSError as exc:
            return f"cannot read link {current!r}: {exc.strerror}"
        parent = os.path.realpath(os.path.dirname(current))
        current = os.path.normpath(os.path.join(parent, target))
        hops.append(current)
    return "symlink chain too long"


def _resolve_inside(path: str, real_roots: Sequence[str], must_be_link: bool = False) -> tuple[list[str], str] | str:
    """(hops, real target) when `path` ends at a regular file inside the roots, else the reason."""
    hops = _link_hops(path)
    if isinstance(hops, str):
        return hops
    if must_be_link and len(hops) == 1:
        return "not a symlink"
    real = os.path.realpath(hops[-1])
    if not _inside(real, real_roots):
        return f"symlink target {real!r} is outside the allowed roots"
    try:
        mode = os.stat(real).st_mode
    except OSError as exc:
        return f"cannot stat target: {exc.strerror}"
    if not stat.S_ISREG(mode):
        return "target is not a regular file"
    return hops, real


def _scandir(path: str, rejected: list[Rejected]) -> list[os.DirEntry]:
    try:
        with os.scandir(path) as it:
            return list(it)
    except FileNotFoundError:
        return []                    # vanished between listing and scanning: a pod being deleted
    except OSError as exc:
        rejected.append(Rejected(path, f"cannot list directory: {exc.strerror}"))
        return []


def _is_link(entry: os.DirEntry) -> bool:
    try:
        return entry.is_symlink()
    except OSError:
        return False


def _is_dir_inside(entry: os.DirEntry, real_roots: Sequence[str], rejected: list[Rejected]) -> bool:
    try:
        if entry.is_symlink():
            real = os.path.realpath(entry.path)
            if not _inside(real, real_roots):
                rejected.append(Rejected(entry.path, f"symlink target {real!r} is outside the allowed roots"))
                return False
        return entry.is_dir()
    except OSError:
        return False


class _Scan:
    """One discovery pass. Sources are keyed by real path (a file reached twice is one source);
    `by_layout` maps layout paths to real paths, so a /var/log/containers link whose target was
    already scanned costs one readlink. A real path mapped to None was excluded."""

    def __init__(self, roots: Sequence[str], include: Sequence[str], exclude: Sequence[str]) -> None:
        self.roots = [os.path.abspath(r) for r in roots]
        self.real_roots = _real_roots(self.roots)
        self.include = include
        self.exclude = exclude
        self.result = DiscoveryResult()
        self.found: dict[str, DiscoveredFile | None] = {}
        self.by_layout: dict[str, str] = {}

    def reject(self, path: str, reason: str) -> None:
        self.result.rejected.append(Rejected(path, reason))

    def add(self, real: str, layout_path: str, source: DiscoveredFile, container_id: str = "") -> None:
        self.by_layout[layout_path] = real
        if real in self.found:
            return
        if not _selected(layout_path, self.include, self.exclude):
            self.result.excluded.append(layout_path)
            self.found[real] = None
            return
        self.found[real] = replace(source, container_id=container_id) if container_id else source

    # -- the pods tree ------------------------------------------------------------------------
    def pods_root(self, root: str, real_root: str) -> None:
        rejected = self.result.rejected
        dirs = self.result.dirs
        dirs.append(root)
        for pod_entry in _scandir(root, rejected):
            if not _is_dir_inside(pod_entry, self.real_roots, rejected):
                continue
            ids = parse_pod_dir(pod_entry.name)
            if ids is None:
                self.reject(pod_entry.path, "pod directory is not <namespace>_<pod>_<uid>")
                continue
            pod_link = _is_link(pod_entry)
            dirs.append(pod_entry.path)
            for container_entry in _scandir(pod_entry.path, rejected):
                if not _is_dir_inside(container_entry, self.real_roots, rejected):
                    continue
                dirs.append(container_entry.path)
                plain_dirs = not pod_link and not _is_link(container_entry)
                for file_entry in _scandir(container_entry.path, rejected):
                    name = file_entry.name
                    if _ROTATED_LOG.fullmatch(name):
                        continue
                    match = _RESTART_LOG.fullmatch(name)
                    if match is None:
                        self.reject(file_entry.path, "file name is not <restart>.log")
                        continue
                    ref = ContainerRef(namespace=ids[0], pod=ids[1], pod_uid=ids[2],
                                       container=container_entry.name, restart_count=int(match.group(1)))
                    self.pods_file(file_entry, plain_dirs, real_root, pod_entry.name, container_entry.name, ref)

    def pods_file(self, entry: os.DirEntry, plain_dirs: bool, real_root: str, pod_dir: str, container: str,
                  ref: ContainerRef) -> None:
        path = entry.path
        if plain_dirs and not _is_link(entry):
            # No link on the way: the real path is known without a syscall (d_type from scandir).
            try:
                regular = entry.is_file(follow_symlinks=False)
            except OSError:
                regular = False
            if not regular:
                self.reject(path, "not a regular file")
                return
            self.add(os.path.join(real_root, pod_dir, container, entry.name), path, DiscoveredFile(path, ref))
            return
        resolved = _resolve_inside(path, self.real_roots)
        if isinstance(resolved, str):
            self.reject(path, resolved)
            return
        hops, real = resolved
        # A plain kubelet file is followed by its own path (its rotations happen next to it); a link
        # (docker json-file) by its target, next to which the runtime rotates.
        self.add(real, path, DiscoveredFile(path if len(hops) == 1 else real, ref))

    # -- /var/log/containers ----------------------------------------------------------------------
    def link_root(self, link_root: str) -> None:
        real_link_dir = os.path.realpath(link_root)
        self.result.dirs.append(link_root)
        for entry in _scandir(link_root, self.result.rejected):
            name = entry.name
            if not name.endswith(".log"):
                continue
            if not _is_link(entry):
                self.reject(entry.path, "not a symlink")
                continue
            name_match = _CONTAINER_LINK.fullmatch(name)
            container_id = name_match.group("cid") if name_match else ""
            try:
                target = os.path.normpath(os.path.join(real_link_dir, os.readlink(entry.path)))
            except OSError as exc:
                self.reject(entry.path, f"cannot read link: {exc.strerror}")
                continue
            real = self.by_layout.get(target)
            if real is None:
                resolved = self.link_slow(entry.path)
                if resolved is None:
                    continue
                real, layout_path, ref = resolved
                self.add(real, layout_path, DiscoveredFile(self.follow_path(layout_path, real), ref), container_id)
                continue
            known = self.found.get(real)
            if known is not None and container_id and not known.container_id:
                self.found[real] = replace(known, container_id=container_id)

    def link_slow(self, path: str) -> tuple[str, str, ContainerRef] | None:
        resolved = _resolve_inside(path, self.real_roots, must_be_link=True)
        if isinstance(resolved, str):
            self.reject(path, resolved)
            return None
        hops, real = resolved
        for hop in hops:
            for root in (*self.roots, *self.real_roots):
                if hop.startswith(root.rstrip(os.sep) + os.sep):
                    ref = parse_layout_path(hop, root)
                    if isinstance(ref, ContainerRef):
                        return real, hop, ref
        # Without the pods-tree hop the pod uid and restart count are unknown, and a chain cannot
        # be named honestly.
        self.reject(path, "link does not lead through <root>/<ns>_<pod>_<uid>/<container>/<n>.log")
        return None

    @staticmethod
    def follow_path(layout_path: str, real: str) -> str:
        if not os.path.islink(layout_path) and os.path.realpath(layout_path) == real:
            return layout_path
        return real


def _sort_key(f: DiscoveredFile) -> tuple:
    r = f.ref
    return (r.namespace, r.pod, r.pod_uid, r.container, r.restart_count, f.path)


def discover(roots: Sequence[str], symlink_roots: Sequence[str], include: Sequence[str] = (),
             exclude: Sequence[str] = ()) -> DiscoveryResult:
    """Every `<restart>.log` under `roots`, plus the targets of `symlink_roots/*.log` links that stay
    inside `roots` (deduplicated by real path). `include`/`exclude` are globs over the layout path
    (`*` crosses `/`); exclude wins. Sorted by container, lower restart counts first."""
    scan = _Scan(roots, include, exclude)
    for root, real_root in zip(scan.roots, scan.real_roots):
        scan.pods_root(root, real_root)
    for link_root in symlink_roots:
        scan.link_root(os.path.abspath(link_root))
    result = scan.result
    result.files = sorted((f for f in scan.found.values() if f is not None), key=_sort_key)
    return result


def discover_flat(directory: str, ref_template: ContainerRef, include: Sequence[str] = (),
                  exclude: Sequence[str] = ()) -> DiscoveryResult:
    """Sidecar mode: each `*.log` file directly in `directory` is a source named after its stem;
    namespace, pod, uid and restart count come from `ref_template` (the Downward API). A symlink is
    followed only if it stays inside `directory`."""
    result = DiscoveryResult()
    base = os.path.abspath(directory)
    result.dirs.append(base)
    real_roots = _real_roots([base])
    files: list[DiscoveredFile] = []
    seen: set[str] = set()
    # Plain files before links, so a link to a file of the same directory never hides it.
    for entry in sorted(_scandir(base, result.rejected), key=lambda e: (_is_link(e), e.name)):
        name = entry.name
        if not name.endswith(".log") or name == ".log":
            continue
        resolved = _resolve_inside(entry.path, real_roots)
        if isinstance(resolved, str):
            if resolved != "target is not a regular file" or entry.is_symlink():
                result.rejected.append(Rejected(entry.path, resolved))
            continue
        hops, real = resolved
        if real in seen:
            continue
        seen.add(real)
        if not _selected(entry.path, include, exclude):
            result.excluded.append(entry.path)
            continue
        ref = replace(ref_template, container=name[:-len(".log")])
        files.append(DiscoveredFile(path=entry.path if len(hops) == 1 else real, ref=ref))
    result.files = sorted(files, key=_sort_key)
    return result
