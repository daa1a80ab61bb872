"""The metadata provider the ingest stage asks about each container log stream.

`MetadataProvider` (enrich.kubernetes: true) answers from a cache kept by list+watch of this node's
pods and of namespaces; `PathOnlyProvider` (enrich.kubernetes: false) from the log path alone. Both
offer, for a `ContainerRef`:
- `resource_json(ref)`: the record's "resource" object as JSON text, rendered once per container log
  and pod/namespace version, so the ingest thread pays a dict look-up and an identity compare;
- `exclusion(ref)`: why the stream's lines are dropped, or None: `"annotation"` (the pod's
  `audit-shipper.io/exclude`, see pod_control.py) or `"namespace_selector"` (the pod's namespace does
  not match enrich.namespace_selector); each exclusion is logged once. `is_excluded(ref)`: the same as
  a bool;
- `multiline_start(ref)`, `topic(ref)`: what the pod's annotations ask for, or None for the
  configured default (pod_control.py);
- `should_wait(ref, first_seen)`: lines of a pod the cache does not know yet (or, with a namespace
  selector, whose namespace it does not know yet) wait, at most unknown_pod_wait_ms after the file was
  first seen, while the API is reachable or still starting;
- `body_processor(ref)`: the body stage (redaction, correlation); `audit-shipper.io/parse-json`
  ("true"/"false") on the pod overrides enrich.parse_json_bodies;
- `reconfigure(settings)`: the enrich options a reload may change (filters, selector, body stage)
  take effect for the next lines; nothing of the cache is lost;
- `api_healthy`, and `async run()`, the watch loops, which never raise on API errors.

The resource says where its metadata came from: `"audit_shipper.metadata": "api"` when the pod was
known (while the API is unreachable, the last known state of a known pod is still used), `"path"`
when only the log path spoke (pod unknown, or the API unreachable before it was seen). Entries shipped
with path metadata are counted per entry in `metadata_misses_total{reason}`: the body processor handed
out for such a stream counts them (reasons `unknown_pod`, `api_unavailable`).
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import fnmatch
import functools
import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from ..config import EnrichConfig, Settings
from ..metrics import Metrics
from ..model import ContainerRef
from . import pod_control
from .pod_control import PodAnnotations
from .body import BodyProcessor, make_body_processor
from .cache import MetadataCache, NamespaceInfo, PodInfo
from .owner import owner_attributes, workload_name
from .selector import LabelSelector, parse_selector
from .watch import Backoff, Event, Health, ListWatch, Relist

log = logging.getLogger("shipper.enrich")

ANNOTATION_EXCLUDE = pod_control.EXCLUDE
ANNOTATION_EXCLUDE_CONTAINER = pod_control.EXCLUDE + "-"
ANNOTATION_PARSE_JSON = pod_control.PARSE_JSON
DEFAULT_SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
SA_DIR_ENV = "SHIPPER_SA_DIR"

PODS, NAMESPACES = "pods", "namespaces"
MAX_RENDERED = 20_000          # rendered resources kept; beyond, the cache starts over
SWEEP_INTERVAL_S = 1.0         # how often deleted pods past their grace period are dropped
QUEUE_SIZE = 1024


def path_resource(ref: ContainerRef, node: str) -> str:
    """The resource the log path alone tells: namespace, pod, uid, container, restart count, node."""
    return json.dumps({"k8s.namespace.name": ref.namespace, "k8s.pod.name": ref.pod, "k8s.pod.uid": ref.pod_uid,
                       "k8s.container.name": ref.container, "k8s.container.restart_count": ref.restart_count,
                       "k8s.node.name": node, "audit_shipper.metadata": "path"},
                      separators=(",", ":"), ensure_ascii=False)


class PathOnlyProvider:
    """Metadata from the log path only (enrich.kubernetes: false); bodies are still processed."""

    api_healthy = False

    def __init__(self, settings: Settings, metrics: Metrics | None = None) -> None:
        self.node = settings.node_name
        self.metrics = metrics
        self._rendered: dict[ContainerRef, str] = {}
        self.reconfigure(settings)

    def reconfigure(self, settings: Settings) -> None:
        self._process = make_body_processor(settings.enrich, self.metrics)
        if settings.enrich.namespace_selector:
            log.warning("enrich.namespace_selector is ignored without enrich.kubernetes (namespace labels "
                        "come from the API)")

    def resource_json(self, ref: ContainerRef) -> str:
        text = self._rendered.get(ref)
        if text is None:
            if len(self._rendered) >= MAX_RENDERED:
                self._rendered = {}
            text = self._rendered[ref] = path_resource(ref, self.node)
        return text

    def is_excluded(self, ref: ContainerRef) -> bool:
        return False

    def exclusion(self, ref: ContainerRef) -> str | None:
        return None

    def multiline_start(self, ref: ContainerRef) -> str | None:
        return None

    def topic(self, ref: ContainerRef) -> str | None:
        return None

    def should_wait(self, ref: ContainerRef, first_seen_monotonic: float) -> bool:
        return False

    def body_processor(self, ref: ContainerRef) -> BodyProcessor:
        return self._process

    async def run(self) -> None:
        return None


class _Globs:
    """Key filter from include/exclude glob lists (exclude wins)."""

    def __init__(self, include: Sequence[str], exclude: Sequence[str]) -> None:
        self.everything = list(include) == ["*"] and not exclude
        self.nothing = not include
        self._include = _glob_regex(include)
        self._exclude = _glob_regex(exclude)

    def select(self, mapping: dict[str, str] | Any) -> dict[str, str]:
        if self.nothing or not mapping:
            return {}
        if self.everything:
            return dict(sorted(mapping.items()))
        return {key: value for key, value in sorted(mapping.items())
                if self._include.match(key) and not (self._exclude and self._exclude.match(key))}


def _glob_regex(globs: Sequence[str]) -> re.Pattern[str] | None:
    if not globs:
        return None
    return re.compile("|".join(f"(?:{fnmatch.translate(glob)})" for glob in globs))


def _image_parts(image: str) -> tuple[str, str]:
    """(name, tag) of an image reference: `registry:5000/team/app:1.2@sha256:…` -> (`registry:5000/team/app`, `1.2`)."""
    name = image.partition("@")[0]
    slash = name.rfind("/")
    colon = name.rfind(":")
    if colon > slash:
        return name[:colon], name[colon + 1:]
    return name, ""


class MetadataProvider:
    def __init__(self, settings: Settings, metrics: Metrics | None = None,
                 api_client_factory: Callable[[], Any] | None = None, backoff_cap_s: float = 30.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        config: EnrichConfig = settings.enrich
        self.node = settings.node_name
        self.metrics = metrics or Metrics()
        self.clock = clock
        self.cache = MetadataCache(config.deleted_pod_grace_s, clock)
        self.api_healthy = False
        self._pods_health: bool | None = None       # None: not known yet (starting)
        self._namespaces_health: bool | None = None
        self._wait_s = config.unknown_pod_wait_ms / 1000.0
        self._api_client_factory = api_client_factory or functools.partial(api_client_from, config)
        self._backoff_cap_s = backoff_cap_s
        self._watchers: list[ListWatch] = []
        self._stopping = threading.Event()
        self._configure(config)

    def reconfigure(self, settings: Settings) -> None:
        """A reloaded configuration: its filters, selector and body stage apply from the next lines on."""
        self._configure(settings.enrich)

    def _configure(self, config: EnrichConfig) -> None:
        # Everything is built first and swapped in attribute by attribute (the ingest thread reads them
        # meanwhile); the rendered resources go last, so none rendered with the old filters survives.
        labels = _Globs(config.label_include, config.label_exclude)
        annotations = _Globs(config.annotation_include, [])
        default = make_body_processor(config, self.metrics, config.parse_json_bodies)
        other = make_body_processor(config, self.metrics, not config.parse_json_bodies)
        pod_annotations = PodAnnotations(self.metrics, config.topic_annotation_allow)
        previous = getattr(self, "_pod_annotations", None)
        if previous is not None:
            pod_annotations.logged = previous.logged
        self.config = config
        self._labels, self._annotations = labels, annotations
        self._processors = {config.parse_json_bodies: default, not config.parse_json_bodies: other}
        self._default_processor = default
        self._miss_processors = {reason: _counting(default, self.metrics.metadata_misses.labels(reason=reason))
                                 for reason in ("unknown_pod", "api_unavailable")}
        self._pod_annotations = pod_annotations
        self._selector: LabelSelector | None = parse_selector(config.namespace_selector) or None
        self._namespace_verdicts: dict[str, tuple[NamespaceInfo, LabelSelector, bool]] = {}
        self._rendered: dict[ContainerRef, tuple[PodInfo | None, NamespaceInfo | None, str]] = {}

    # -- questions from the ingest thread ---------------------------------------------------------
    def resource_json(self, ref: ContainerRef) -> str:
        rendered = self._rendered       # once: a reload replaces it after the filters (see _configure)
        pod = self.cache.pods.get(ref.pod_uid)
        namespace = self.cache.namespaces.get(ref.namespace) if pod is not None else None
        entry = rendered.get(ref)
        if entry is not None and entry[0] is pod and entry[1] is namespace:
            return entry[2]
        text = path_resource(ref, self.node) if pod is None else self.render(ref, pod, namespace)
        if len(rendered) >= MAX_RENDERED:
            rendered = self._rendered = {}
        rendered[ref] = (pod, namespace, text)
        return text

    def is_excluded(self, ref: ContainerRef) -> bool:
        return self.exclusion(ref) is not None

    def exclusion(self, ref: ContainerRef) -> str | None:
        pod = self.cache.pods.get(ref.pod_uid)
        if pod is None:
            return None            # unknown pods are shipped (with path metadata)
        if self._pod_annotations.excluded(pod, ref.container):
            return "annotation"
        selector = self._selector
        if selector is not None and not self._namespace_selected(pod.namespace, selector):
            return "namespace_selector"
        return None

    def _namespace_selected(self, name: str, selector: LabelSelector) -> bool:
        namespace = self.cache.namespaces.get(name)
        if namespace is None:
            return True            # not known (should_wait held the lines while it could be learnt): shipped
        verdicts = self._namespace_verdicts
        verdict = verdicts.get(name)
        if verdict is not None and verdict[0] is namespace and verdict[1] is selector:
            return verdict[2]
        selected = selector.matches(namespace.labels)
        was_selected = True if verdict is None else verdict[2]
        if selected != was_selected:
            if selected:
                log.info("namespace %s matches enrich.namespace_selector %r again: its pods' logs are shipped",
                         name, selector.text)
            else:
                log.info("excluding logs of the pods in namespace %s: its labels %s do not match "
                         "enrich.namespace_selector %r", name, dict(namespace.labels), selector.text)
        verdicts[name] = (namespace, selector, selected)
        return selected

    def multiline_start(self, ref: ContainerRef) -> str | None:
        pod = self.cache.pods.get(ref.pod_uid)
        return None if pod is None else self._pod_annotations.multiline_start(pod, ref.container)

    def topic(self, ref: ContainerRef) -> str | None:
        pod = self.cache.pods.get(ref.pod_uid)
        return None if pod is None else self._pod_annotations.topic(pod, ref.container)

    def should_wait(self, ref: ContainerRef, first_seen_monotonic: float) -> bool:
        pod = self.cache.pods.get(ref.pod_uid)
        if pod is not None:
            if self._selector is None or pod.namespace in self.cache.namespaces or self._namespaces_health is False:
                return False
        elif self._pods_health is False:
            return False           # the API is unreachable: waiting would only delay the lines
        return self.clock() - first_seen_monotonic < self._wait_s

    def body_processor(self, ref: ContainerRef) -> BodyProcessor:
        pod = self.cache.pods.get(ref.pod_uid)
        if pod is None:
            return self._miss_processors["api_unavailable" if self._pods_health is False else "unknown_pod"]
        parse_json = self._pod_annotations.parse_json(pod, ref.container)
        if parse_json is None:
            return self._default_processor
        return self._processors[parse_json]

    # -- rendering -------------------------------------------------------------------------------
    def render(self, ref: ContainerRef, pod: PodInfo, namespace: NamespaceInfo | None) -> str:
        resource: dict[str, Any] = {
            "k8s.namespace.name": pod.namespace, "k8s.pod.name": pod.name, "k8s.pod.uid": pod.uid,
            "k8s.container.name": ref.container, "k8s.container.restart_count": ref.restart_count,
        }
        container = pod.container(ref.container)
        if container is not None:
            container_id = container.id_for_restart(ref.restart_count)
            if container_id:
                resource["container.id"] = container_id
            if container.runtime:
                resource["container.runtime"] = container.runtime
            if container.image:
                name, tag = _image_parts(container.image)
                resource["container.image.name"] = name
                if tag:
                    resource["container.image.tags"] = [tag]
        resource["k8s.node.name"] = pod.node or self.node
        owner_keys = owner_attributes(pod.owner, pod.labels)
        resource.update(owner_keys)
        service = next((pod.labels[label] for label in self.config.service_name_labels if pod.labels.get(label)),
                       None) or workload_name(owner_keys) or pod.name
        resource["service.name"] = service
        labels = self._labels.select(pod.labels)
        if labels:
            resource["k8s.pod.labels"] = labels
        namespace_labels = self._labels.select(namespace.labels) if namespace is not None else {}
        if namespace_labels:
            resource["k8s.namespace.labels"] = namespace_labels
        annotations = self._annotations.select(pod.annotations)
        if annotations:
            resource["k8s.pod.annotations"] = annotations
        resource["audit_shipper.metadata"] = "api"
        return json.dumps(resource, separators=(",", ":"), ensure_ascii=False)

    # -- the watch loops -------------------------------------------------------------------------
    async def run(self) -> None:
        """List+watch pods on this node and namespaces until cancelled; API errors are counted and
        retried, never raised."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[object] = asyncio.Queue(QUEUE_SIZE)
        self._stopping.clear()
        emit = self._emitter(loop, queue, self._stopping)
        api_client = await self._connect()
        from kubernetes import client

        core = client.CoreV1Api(api_client)
        pods = functools.partial(core.list_pod_for_all_namespaces, field_selector=f"spec.nodeName={self.node}")
        timeout = self.config.watch_timeout_s
        self._watchers = [
            ListWatch(PODS, pods, emit, self.metrics, timeout, Backoff(cap_s=self._backoff_cap_s)),
            ListWatch(NAMESPACES, core.list_namespace, emit, self.metrics, timeout, Backoff(cap_s=self._backoff_cap_s)),
        ]
        threads = [threading.Thread(target=watcher.run, name=f"shipper-watch-{watcher.resource}", daemon=True)
                   for watcher in self._watchers]
        for thread in threads:
            thread.start()
        try:
            next_sweep = self.clock() + SWEEP_INTERVAL_S
            while True:
                try:
                    item = await asyncio.wait_for(queue.get(), timeout=SWEEP_INTERVAL_S)
                except TimeoutError:
                    item = None
                if item is not None:
                    self.apply(item)
                if self.clock() >= next_sweep:
                    next_sweep = self.clock() + SWEEP_INTERVAL_S
                    self.sweep()
        finally:
            self._stopping.set()
            for watcher in self._watchers:
                watcher.stop()
            await asyncio.shield(asyncio.to_thread(_join_all, threads, 5.0))
            api_client.close()

    def apply(self, item: object) -> None:
        """One item from a watch thread, applied to the cache (on the loop: the cache's one writer)."""
        cache = self.cache
        if isinstance(item, Event):
            if item.resource == PODS:
                cache.apply_pod_event(item.type, item.object)
            else:
                cache.apply_namespace_event(item.type, item.object)
        elif isinstance(item, Relist):
            if item.resource == PODS:
                cache.replace_pods(item.objects)
            else:
                cache.replace_namespaces(item.objects)
            log.info("%s listed: %d", item.resource, len(item.objects))
        elif isinstance(item, Health):
            if item.resource == NAMESPACES:
                self._namespaces_health = item.healthy
            if item.resource == PODS:
                self._pods_health = item.healthy
                self.api_healthy = item.healthy
                if item.healthy:
                    log.info("Kubernetes API reachable: pod metadata from the API")
                else:
                    log.warning("Kubernetes API unreachable: new pods get path-derived metadata")
        self.metrics.metadata_cache_pods.set(len(cache.pods))

    def sweep(self) -> None:
        dropped = self.cache.expire()
        if dropped:
            pods = self.cache.pods
            self._rendered = {ref: entry for ref, entry in self._rendered.items()
                              if entry[0] is None or ref.pod_uid in pods}
            self._pod_annotations.forget_pods_except(pods)
            self.metrics.metadata_cache_pods.set(len(pods))

    async def _connect(self) -> Any:
        """The API client; retried with backoff while the configuration cannot be loaded (e.g. the
        ServiceAccount token is not mounted yet)."""
        backoff = Backoff(cap_s=self._backoff_cap_s)
        while True:
            try:
                return await asyncio.to_thread(self._api_client_factory)
            except Exception as exc:  # noqa: BLE001 - a bad kubeconfig must not stop the pipeline
                self.metrics.api_errors.labels(resource="config").inc()
                self._pods_health = False
                self.api_healthy = False
                delay = backoff.next_delay()
                log.error("cannot configure the Kubernetes client (%s: %s); retry in %.1fs", type(exc).__name__,
                          exc, delay)
                await asyncio.sleep(delay)

    @staticmethod
    def _emitter(loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[object], stopping: threading.Event
                 ) -> Callable[[object], None]:
        def emit(item: object) -> None:
            # Blocks the watch thread while the loop's queue is full (memory stays bounded).
            future = asyncio.run_coroutine_threadsafe(queue.put(item), loop)
            while True:
                try:
                    future.result(timeout=1.0)
                    return
                except concurrent.futures.TimeoutError:
                    if stopping.is_set() or loop.is_closed():
                        future.cancel()
                        return

        return emit


def _counting(process: BodyProcessor, counter: Any) -> BodyProcessor:
    inc = counter.inc

    def process_counted(body: str) -> tuple[str, str, str] | None:
        inc()
        return process(body)

    return process_counted


def _join_all(threads: Sequence[threading.Thread], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))


def api_client_from(config: EnrichConfig) -> Any:
    """A `kubernetes` ApiClient from enrich.kubeconfig, else in-cluster: KUBERNETES_SERVICE_HOST/PORT and
    the ServiceAccount token and CA in /var/run/secrets/kubernetes.io/serviceaccount (or $SHIPPER_SA_DIR).
    The token file is re-read as the kubelet rotates it."""
    from kubernetes import client
    from kubernetes import config as kube_config
    from kubernetes.config.incluster_config import InClusterConfigLoader

    if config.kubeconfig:
        return kube_config.new_client_from_config(config_file=config.kubeconfig)
    sa_dir = os.environ.get(SA_DIR_ENV) or DEFAULT_SA_DIR
    configuration = client.Configuration()
    InClusterConfigLoader(token_filename=os.path.join(sa_dir, "token"),
                          cert_filename=os.path.join(sa_dir, "ca.crt"),
                          try_refresh_token=True).load_and_set(configuration)
    return client.ApiClient(configuration)
