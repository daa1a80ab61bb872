"""List+watch of one Kubernetes resource, in a thread, feeding the provider's event loop.

The `kubernetes` client is blocking, so each watched resource (this node's pods; namespaces) gets a
thread running `ListWatch.run`: list, then watch from the list's resourceVersion, for ever:
- the resourceVersion of every event and BOOKMARK (allowWatchBookmarks) is kept, and a watch that ends
  (its server-side `timeout_seconds`, a dropped connection, an API server restart) resumes from it;
- `410 Gone` (that version was compacted away) is answered with a fresh list;
- any other failure is counted (`api_errors`), marks the resource unhealthy, and is retried after an
  exponential backoff with jitter, capped;
- objects stay raw JSON dicts (the client's model classes cost milliseconds per pod and we need a few
  fields).

Items go to the loop through `emit` (blocking when the loop's queue is full), as
`Relist(resource, objects)` and `Event(resource, type, object)`. `stop()` ends the thread promptly: it
shuts the watch's socket down under the blocked read.
"""
from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from ..metrics import Metrics

log = logging.getLogger("shipper.enrich")

LIST_PAGE_SIZE = 500
CONNECT_TIMEOUT_S = 10
LIST_READ_TIMEOUT_S = 60
# A watch is silent while nothing changes, up to its server-side timeout; reads may wait that long.
WATCH_READ_SLACK_S = 30


@dataclass(frozen=True, slots=True)
class Relist:
    resource: str
    objects: list[dict[str, Any]]


@dataclass(frozen=True, slots=True)
class Event:
    resource: str
    type: str
    object: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Health:
    resource: str
    healthy: bool


class ResourceGone(Exception):
    """410: the resourceVersion we asked for is older than the API server keeps."""


class Backoff:
    """Exponential backoff with jitter: the n-th delay is drawn from [d/2, d] with
    d = min(cap, initial * 2**n), so many shippers restarted together do not retry in step."""

    def __init__(self, initial_s: float = 0.5, cap_s: float = 30.0, rng: Callable[[], float] = random.random):
        self.initial_s = initial_s
        self.cap_s = cap_s
        self.rng = rng
        self.failures = 0

    def next_delay(self) -> float:
        ceiling = min(self.cap_s, self.initial_s * (2 ** min(self.failures, 30)))
        self.failures += 1
        return ceiling * (0.5 + 0.5 * self.rng())

    def reset(self) -> None:
        self.failures = 0


def _status_of(exc: BaseException) -> int | None:
    status = getattr(exc, "status", None)
    return status if isinstance(status, int) else None


class ListWatch:
    """One resource's list+watch loop (blocking; run it in a thread).

    `list_call(**kwargs)` and `watch_call(**kwargs)` are the API function (e.g.
    `CoreV1Api.list_pod_for_all_namespaces`) with its fixed arguments (field selector) bound."""

    def __init__(self, resource: str, list_call: Callable[..., Any], emit: Callable[[object], None],
                 metrics: Metrics, timeout_s: int, backoff: Backoff | None = None,
                 list_resource_version: str | None = "0") -> None:
        self.resource = resource
        self.list_call = list_call
        self.emit = emit
        self.metrics = metrics
        self.timeout_s = timeout_s
        self.backoff = backoff or Backoff()
        # "0": served from the API server's watch cache (what kubelets and informers do on start), so
        # a restart of many shippers does not turn into quorum reads of etcd.
        self.list_resource_version = list_resource_version
        self.resource_version: str | None = None
        self._stopped = threading.Event()
        self._watch = None
        self._healthy: bool | None = None

    # -- control ---------------------------------------------------------------------------------
    def stop(self) -> None:
        self._stopped.set()
        watch = self._watch
        if watch is not None:
            watch.stop()

    @property
    def stopped(self) -> bool:
        return self._stopped.is_set()

    def run(self) -> None:
        while not self._stopped.is_set():
            try:
                if self.resource_version is None:
                    self._relist()
                self._watch_once()
                if not self._stopped.is_set():
                    self.metrics.watch_restarts.labels(resource=self.resource, reason="timeout").inc()
            except ResourceGone:
                log.info("%s watch: resourceVersion %s expired (410 Gone); listing again", self.resource,
                         self.resource_version)
                self.metrics.watch_restarts.labels(resource=self.resource, reason="expired").inc()
                self.resource_version = None
            except Exception as exc:  # noqa: BLE001 - every API failure is retried; the loop must not die
                if self._stopped.is_set():
                    break
                self._failed(exc)

    # -- steps -----------------------------------------------------------------------------------
    def _relist(self) -> None:
        objects, version = self._list_all()
        self.resource_version = version
        self.emit(Relist(self.resource, objects))
        self._set_health(True)
        self.backoff.reset()

    def _list_all(self) -> tuple[list[dict[str, Any]], str]:
        import json

        objects: list[dict[str, Any]] = []
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"limit": LIST_PAGE_SIZE, "_preload_content": False,
                                      "_request_timeout": (CONNECT_TIMEOUT_S, LIST_READ_TIMEOUT_S)}
            if token:
                kwargs["_continue"] = token
            elif self.list_resource_version is not None:
                kwargs["resource_version"] = self.list_resource_version
            try:
                response = self.list_call(**kwargs)
            except Exception as exc:
                if _status_of(exc) == 410 and token:
                    # The continue token expired mid-list: start over for a consistent snapshot.
                    objects, token = [], None
                    continue
                raise
            try:
                page = json.loads(response.data)
            finally:
                response.release_conn()
            objects.extend(page.get("items") or ())
            metadata = page.get("metadata") or {}
            token = metadata.get("continue")
            if not token:
                return objects, str(metadata.get("resourceVersion") or "")

    def _watch_once(self) -> None:
        from kubernetes import watch

        connected = False

        def call(**kwargs: Any) -> Any:
            # A plain wrapper: the Watch then leaves objects as dicts (it deserializes into model
            # classes only when it can tell the return type), and we learn when the stream is open.
            nonlocal connected
            response = self.list_call(**kwargs)
            connected = True
            self._set_health(True)
            self.backoff.reset()
            return response

        stream = watch.Watch()
        self._watch = stream
        if self._stopped.is_set():
            return
        try:
            events: Iterator[dict[str, Any]] = stream.stream(
                call, resource_version=self.resource_version, allow_watch_bookmarks=True,
                timeout_seconds=self.timeout_s, _request_timeout=(CONNECT_TIMEOUT_S, self.timeout_s + WATCH_READ_SLACK_S))
            for event in events:
                if self._stopped.is_set():
                    break
                self._handle(event)
        except Exception as exc:
            if _status_of(exc) == 410:
                raise ResourceGone() from exc
            if connected and self._stopped.is_set():
                return
            raise
        finally:
            self._watch = None

    def _handle(self, event: dict[str, Any]) -> None:
        event_type = event.get("type")
        obj = event.get("raw_object") or event.get("object") or {}
        if event_type == "ERROR":
            if obj.get("code") == 410:
                raise ResourceGone()
            raise RuntimeError(f"watch error event: {obj.get('reason')}: {obj.get('message')}")
        version = (obj.get("metadata") or {}).get("resourceVersion")
        if version:
            self.resource_version = version
        if event_type in ("ADDED", "MODIFIED", "DELETED"):
            self.emit(Event(self.resource, event_type, obj))

    def _failed(self, exc: Exception) -> None:
        self.metrics.api_errors.labels(resource=self.resource).inc()
        self.metrics.watch_restarts.labels(resource=self.resource, reason="error").inc()
        self._set_health(False)
        delay = self.backoff.next_delay()
        status = _status_of(exc)
        detail = f"HTTP {status}" if status else type(exc).__name__
        if self.backoff.failures <= 3 or self.backoff.failures % 10 == 0:
            log.warning("%s list/watch failed (%s: %s); retry %d in %.1fs", self.resource, detail,
                        _short(exc), self.backoff.failures, delay)
        self._stopped.wait(delay)

    def _set_health(self, healthy: bool) -> None:
        if self._healthy is not healthy:
            self._healthy = healthy
            self.emit(Health(self.resource, healthy))


def _short(exc: BaseException, limit: int = 300) -> str:
    text = str(exc).replace("\n", " ")
    return text if len(text) <= limit else text[:limit] + "..."
