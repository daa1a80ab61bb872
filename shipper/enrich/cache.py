"""What the API server told us about this node's pods and the cluster's namespaces.

Pods are keyed by uid (the log path carries it), namespaces by name. Only the fields enrichment uses
are kept, as immutable values: an update that changes none of them keeps the old value object, so what
was rendered from it stays valid (the provider compares by identity). A deleted pod stays for
`deleted_pod_grace_s` (its last lines are often read after the DELETED event), then `expire()` drops it.

Threads: one writer (the provider's event loop) and readers on the ingest thread. Writers replace a
dict entry or swap a whole dict in one assignment; readers do single look-ups. Under the GIL each of
these is atomic, so no lock is needed and readers never wait.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from .owner import controller_owner

ADDED, MODIFIED, DELETED = "ADDED", "MODIFIED", "DELETED"


@dataclass(frozen=True, slots=True)
class ContainerInfo:
    name: str
    image: str
    container_id: str = ""       # the running (or last) container, without the runtime prefix
    runtime: str = ""            # `containerd`, `cri-o`, `docker`
    restart_count: int = 0       # of `container_id`, as the kubelet reports it
    previous_id: str = ""        # the container before it (lastState.terminated), if reported

    def id_for_restart(self, restart_count: int) -> str:
        """The container id that wrote log file `<restart_count>.log`, when the status tells it."""
        if restart_count == self.restart_count:
            return self.container_id
        if restart_count == self.restart_count - 1:
            return self.previous_id
        return ""


@dataclass(frozen=True, slots=True)
class PodInfo:
    uid: str
    namespace: str
    name: str
    node: str
    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    owner: tuple[str, str] | None
    containers: tuple[ContainerInfo, ...]
    deleted_at: float | None = None   # monotonic time of the DELETED event

    def container(self, name: str) -> ContainerInfo | None:
        for container in self.containers:
            if container.name == name:
                return container
        return None


@dataclass(frozen=True, slots=True)
class NamespaceInfo:
    name: str
    labels: Mapping[str, str]
    deleted_at: float | None = None


def _strings(mapping: Any) -> dict[str, str]:
    if not isinstance(mapping, dict):
        return {}
    return {str(key): str(value) for key, value in mapping.items()}


def pod_from_object(obj: Mapping[str, Any]) -> PodInfo | None:
    """A PodInfo from a pod as the API returns it (JSON object); None when it has no uid."""
    metadata = obj.get("metadata") or {}
    uid = metadata.get("uid")
    if not uid:
        return None
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    statuses: dict[str, tuple[str, str, int, str]] = {}
    for key in ("initContainerStatuses", "containerStatuses", "ephemeralContainerStatuses"):
        for entry in status.get(key) or ():
            runtime, _, container_id = (entry.get("containerID") or "").partition("://")
            terminated = ((entry.get("lastState") or {}).get("terminated") or {})
            previous_id = (terminated.get("containerID") or "").partition("://")[2]
            restarts = entry.get("restartCount")
            statuses[entry.get("name", "")] = (container_id, runtime, restarts if isinstance(restarts, int) else 0,
                                               previous_id)
    containers = []
    for key in ("initContainers", "containers", "ephemeralContainers"):
        for entry in spec.get(key) or ():
            name = entry.get("name", "")
            container_id, runtime, restarts, previous_id = statuses.get(name, ("", "", 0, ""))
            containers.append(ContainerInfo(name, entry.get("image") or "", container_id, runtime, restarts,
                                            previous_id))
    return PodInfo(uid=uid, namespace=metadata.get("namespace", ""), name=metadata.get("name", ""),
                   node=spec.get("nodeName") or "", labels=_strings(metadata.get("labels")),
                   annotations=_strings(metadata.get("annotations")),
                   owner=controller_owner(metadata.get("ownerReferences")), containers=tuple(containers))


def namespace_from_object(obj: Mapping[str, Any]) -> NamespaceInfo | None:
    metadata = obj.get("metadata") or {}
    name = metadata.get("name")
    if not name:
        return None
    return NamespaceInfo(name, _strings(metadata.get("labels")))


class MetadataCache:
    def __init__(self, deleted_pod_grace_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.deleted_pod_grace_s = deleted_pod_grace_s
        self.clock = clock
        self.pods: dict[str, PodInfo] = {}
        self.namespaces: dict[str, NamespaceInfo] = {}

    # -- reads (any thread) ------------------------------------------------------------------------
    def pod(self, uid: str) -> PodInfo | None:
        return self.pods.get(uid)

    def namespace(self, name: str) -> NamespaceInfo | None:
        return self.namespaces.get(name)

    # -- writes (one thread) -----------------------------------------------------------------------
    def apply_pod_event(self, event_type: str, obj: Mapping[str, Any]) -> None:
        pod = pod_from_object(obj)
        if pod is None:
            return
        if event_type == DELETED:
            self._mark_deleted(pod)
        else:
            self._store_pod(pod)

    def replace_pods(self, objects: Iterable[Mapping[str, Any]]) -> None:
        """A fresh list: what it holds is current; a cached pod it lacks was deleted while we were not
        watching, and gets the grace period from now."""
        pods = (pod for pod in map(pod_from_object, objects) if pod is not None)
        self.pods = _relisted(self.pods, pods, lambda pod: pod.uid, self.clock())

    def apply_namespace_event(self, event_type: str, obj: Mapping[str, Any]) -> None:
        namespace = namespace_from_object(obj)
        if namespace is None:
            return
        if event_type == DELETED:
            # Its pods' last lines may still be read: the labels stay for the grace period too.
            namespace = replace(namespace, deleted_at=self.clock())
        if self.namespaces.get(namespace.name) != namespace:
            self.namespaces[namespace.name] = namespace

    def replace_namespaces(self, objects: Iterable[Mapping[str, Any]]) -> None:
        namespaces = (ns for ns in map(namespace_from_object, objects) if ns is not None)
        self.namespaces = _relisted(self.namespaces, namespaces, lambda ns: ns.name, self.clock())

    def expire(self) -> int:
        """Drop deleted pods (and namespaces) past their grace period; returns how many pods."""
        now = self.clock()
        grace = self.deleted_pod_grace_s
        gone = [uid for uid, pod in self.pods.items() if pod.deleted_at is not None and now - pod.deleted_at >= grace]
        if gone:
            fresh = dict(self.pods)
            for uid in gone:
                del fresh[uid]
            self.pods = fresh
        in_use = {pod.namespace for pod in self.pods.values()}
        stale = [name for name, namespace in self.namespaces.items() if namespace.deleted_at is not None
                 and now - namespace.deleted_at >= grace and name not in in_use]
        if stale:
            fresh_namespaces = dict(self.namespaces)
            for name in stale:
                del fresh_namespaces[name]
            self.namespaces = fresh_namespaces
        return len(gone)

    def _store_pod(self, pod: PodInfo) -> None:
        old = self.pods.get(pod.uid)
        if old != pod:
            self.pods[pod.uid] = pod

    def _mark_deleted(self, pod: PodInfo) -> None:
        old = self.pods.get(pod.uid)
        if old is not None and old.deleted_at is not None:
            return
        self.pods[pod.uid] = replace(pod, deleted_at=self.clock())


def _relisted(cached: dict, listed: Iterable, key: Callable[[Any], str], now: float) -> dict:
    """The cache after a fresh list: unchanged entries keep their object (so rendered text stays
    valid); entries the list lacks were deleted while we were not watching and get the grace period
    from now."""
    fresh = {}
    for item in listed:
        old = cached.get(key(item))
        fresh[key(item)] = old if old == item else item
    for name, old in cached.items():
        if name not in fresh:
            fresh[name] = old if old.deleted_at is not None else replace(old, deleted_at=now)
    return fresh
