"""Kubernetes enrichment against a real kube-apiserver + etcd (tests/harness/kube.py), as the shipper's
ServiceAccount with exactly the chart's ClusterRole.

Each test uses its own node name, so the node-filtered watch sees only that test's pods. There is no
kubelet: pods are created already bound (or bound later through pods/binding, as the scheduler does),
and their container statuses are patched in by hand.
"""
from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable

import pytest
from kubernetes import client

from shipper.config import Settings
from shipper.enrich import MetadataProvider
from shipper.enrich.watch import Backoff, Event, ListWatch, Relist
from shipper.metrics import Metrics
from shipper.model import ContainerRef
from tests.harness.kube import (
    ContainerState,
    KubeCluster,
    container_id,
    create_pod,
    replicaset_owner,
    set_container_statuses,
)

pytestmark = [pytest.mark.kube, pytest.mark.timeout(180)]


def new_node() -> str:
    return f"node-{uuid.uuid4().hex[:8]}"


def metric(metrics: Metrics, name: str, labels: dict[str, str]) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


async def until(predicate: Callable[[], object], timeout: float = 30, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def running(provider: MetadataProvider) -> AsyncIterator[MetadataProvider]:
    task = asyncio.create_task(provider.run(), name="metadata")
    try:
        await until(lambda: provider.api_healthy or task.done(), what="the first pod list")
        if task.done():
            task.result()
        yield provider
        assert not task.done(), "run() ended on its own"
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def make_provider(cluster: KubeCluster, tmp_path, node: str, metrics: Metrics | None = None, **enrich) -> MetadataProvider:
    kubeconfig = cluster.write_kubeconfig(tmp_path / "kubeconfig", as_shipper=True)
    enrich = {"kubeconfig": str(kubeconfig), "unknown_pod_wait_ms": 1500, "watch_timeout_s": 30} | enrich
    settings = Settings(node_name=node, enrich=enrich)
    return MetadataProvider(settings, metrics or Metrics(), backoff_cap_s=1.0)


def resource(provider: MetadataProvider, ref: ContainerRef) -> dict:
    return json.loads(provider.resource_json(ref))


def ref_of(pod: client.V1Pod, container: str = "app", restart: int = 0) -> ContainerRef:
    return ContainerRef(pod.metadata.namespace, pod.metadata.name, pod.metadata.uid, container, restart)


def deployment_pod(cluster: KubeCluster, namespace: str, node: str, name: str = "checkout",
                   labels: dict[str, str] | None = None, annotations: dict[str, str] | None = None) -> client.V1Pod:
    owner, hash_label = replicaset_owner(name)
    with cluster.admin_client() as api:
        pod = create_pod(api, namespace, f"{name}-{hash_label['pod-template-hash']}-{uuid.uuid4().hex[:5]}", node,
                         labels={"app.kubernetes.io/name": name, **hash_label, **(labels or {})},
                         annotations=annotations, owner_references=[owner])
        set_container_statuses(api, namespace, pod.metadata.name,
                               [ContainerState("app", container_id(pod.metadata.uid))])
    return pod


def bind(cluster: KubeCluster, namespace: str, pod: str, node: str) -> None:
    """What the scheduler does: the pods/binding subresource sets spec.nodeName."""
    body = {"apiVersion": "v1", "kind": "Binding", "metadata": {"name": pod},
            "target": {"apiVersion": "v1", "kind": "Node", "name": node}}
    with cluster.admin_client() as api:
        client.CoreV1Api(api).create_namespaced_pod_binding(pod, namespace, body, _preload_content=False)


async def test_running_pod_is_enriched_through_the_incluster_path(kube_cluster, kube_namespace, tmp_path,
                                                                  monkeypatch):
    node = new_node()
    pod = deployment_pod(kube_cluster, kube_namespace, node)
    with kube_cluster.admin_client() as api:
        elsewhere = create_pod(api, kube_namespace, "elsewhere", new_node())
    files = kube_cluster.incluster_env(tmp_path / "sa")
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", files.env["KUBERNETES_SERVICE_HOST"])
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", files.env["KUBERNETES_SERVICE_PORT"])
    monkeypatch.setenv("SHIPPER_SA_DIR", str(tmp_path / "sa"))
    metrics = Metrics()
    provider = MetadataProvider(Settings(node_name=node), metrics, backoff_cap_s=1.0)
    async with running(provider):
        await until(lambda: pod.metadata.uid in provider.cache.pods, what="the pod in the cache")
        await until(lambda: kube_namespace in provider.cache.namespaces, what="the namespace labels")
        got = resource(provider, ref_of(pod))
        assert got == {
            "k8s.namespace.name": kube_namespace, "k8s.pod.name": pod.metadata.name, "k8s.pod.uid": pod.metadata.uid,
            "k8s.container.name": "app", "k8s.container.restart_count": 0,
            "container.id": container_id(pod.metadata.uid).removeprefix("containerd://"),
            "container.runtime": "containerd", "container.image.name": "registry.example/app",
            "container.image.tags": ["1.0"], "k8s.node.name": node,
            "k8s.replicaset.name": "checkout-5d8f7c9b6", "k8s.deployment.name": "checkout", "service.name": "checkout",
            "k8s.pod.labels": {"app.kubernetes.io/name": "checkout", "pod-template-hash": "5d8f7c9b6"},
            "k8s.namespace.labels": {"env": "test", "kubernetes.io/metadata.name": kube_namespace, "team": "audit"},
            "audit_shipper.metadata": "api"}
        assert elsewhere.metadata.uid not in provider.cache.pods     # the watch is filtered by node
        assert metric(metrics, "audit_shipper_metadata_cache_pods", {}) == 1
        assert not provider.should_wait(ref_of(pod), time.monotonic())


async def test_pod_created_after_its_first_line_waits_then_gets_full_metadata(kube_cluster, kube_namespace,
                                                                              tmp_path):
    node = new_node()
    metrics = Metrics()
    provider = make_provider(kube_cluster, tmp_path, node, metrics, unknown_pod_wait_ms=20_000)
    with kube_cluster.admin_client() as api:
        # Not yet bound to a node: invisible to this node's watch, though its uid (the log path's) is known.
        pod = create_pod(api, kube_namespace, "late", "")
    ref = ref_of(pod)
    async with running(provider):
        first_seen = time.monotonic()
        assert provider.should_wait(ref, first_seen)
        await asyncio.sleep(0.5)
        assert provider.should_wait(ref, first_seen)           # still unknown, still within the wait
        bind(kube_cluster, kube_namespace, "late", node)
        await until(lambda: not provider.should_wait(ref, first_seen), what="the bound pod to appear")
        assert time.monotonic() - first_seen < 20
        assert resource(provider, ref)["audit_shipper.metadata"] == "api"
        assert resource(provider, ref)["k8s.pod.name"] == "late"
        # A pod that never shows up: its lines wait unknown_pod_wait_ms, then ship with path metadata.
        never = ContainerRef(kube_namespace, "ghost", str(uuid.uuid4()), "app", 0)
        assert not provider.should_wait(never, time.monotonic() - 20.1)
        assert resource(provider, never)["audit_shipper.metadata"] == "path"
        provider.body_processor(never)("a line")
        assert metric(metrics, "audit_shipper_metadata_misses_total", {"reason": "unknown_pod"}) == 1


async def test_deleted_pod_is_enriched_during_the_grace_period(kube_cluster, kube_namespace, tmp_path):
    node = new_node()
    provider = make_provider(kube_cluster, tmp_path, node, deleted_pod_grace_s=3)
    pod = deployment_pod(kube_cluster, kube_namespace, node, name="worker")
    async with running(provider):
        await until(lambda: pod.metadata.uid in provider.cache.pods, what="the pod")
        with kube_cluster.admin_client() as api:
            client.CoreV1Api(api).delete_namespaced_pod(pod.metadata.name, kube_namespace, grace_period_seconds=0)
        await until(lambda: (provider.cache.pods.get(pod.metadata.uid) or pod).deleted_at is not None,
                    what="the DELETED event")
        deleted = time.monotonic()
        # Its last lines, read after the deletion, still get the full metadata.
        got = resource(provider, ref_of(pod))
        assert got["audit_shipper.metadata"] == "api" and got["k8s.deployment.name"] == "worker"
        await until(lambda: pod.metadata.uid not in provider.cache.pods, timeout=10, what="the grace period")
        assert time.monotonic() - deleted >= 2.5
        assert resource(provider, ref_of(pod))["audit_shipper.metadata"] == "path"


async def test_label_changes_reach_the_next_records(kube_cluster, kube_namespace, tmp_path):
    node = new_node()
    provider = make_provider(kube_cluster, tmp_path, node)
    pod = deployment_pod(kube_cluster, kube_namespace, node, labels={"version": "v1"})
    ref = ref_of(pod)
    async with running(provider):
        await until(lambda: "k8s.namespace.labels" in resource(provider, ref), what="pod and namespace")
        assert resource(provider, ref)["k8s.pod.labels"]["version"] == "v1"
        with kube_cluster.admin_client() as api:
            core = client.CoreV1Api(api)
            core.patch_namespaced_pod(pod.metadata.name, kube_namespace, {"metadata": {"labels": {"version": "v2"}}})
            core.patch_namespace(kube_namespace, {"metadata": {"labels": {"team": "payments"}}})
        await until(lambda: resource(provider, ref)["k8s.pod.labels"]["version"] == "v2", what="the new pod label")
        await until(lambda: resource(provider, ref)["k8s.namespace.labels"]["team"] == "payments",
                    what="the new namespace label")
        # A status-only update (the kubelet's heartbeat of the pod) does not re-render the resource.
        before = provider.resource_json(ref)
        with kube_cluster.admin_client() as api:
            set_container_statuses(api, kube_namespace, pod.metadata.name,
                                   [ContainerState("app", container_id(pod.metadata.uid), ready=False)])
        version = _pod_resource_version(kube_cluster, kube_namespace, pod.metadata.name)
        await until(lambda: provider._watchers[0].resource_version is not None
                    and int(provider._watchers[0].resource_version) >= int(version), what="the status event")
        assert provider.resource_json(ref) is before


def _pod_resource_version(cluster: KubeCluster, namespace: str, name: str) -> str:
    with cluster.admin_client() as api:
        return client.CoreV1Api(api).read_namespaced_pod(name, namespace).metadata.resource_version


async def test_expired_resource_version_is_answered_with_a_relist(kube_cluster, kube_namespace, tmp_path):
    """A watch from a resourceVersion the API server no longer keeps gets 410 Gone; the loop lists again
    and goes on watching from the fresh list's version.

    The version is made old the way it happens in clusters: the API server restarts, and its watch cache
    starts from the current etcd revision (a write after the version was read makes sure it moved on)."""
    node = new_node()
    pod = deployment_pod(kube_cluster, kube_namespace, node)
    with kube_cluster.admin_client() as api:
        core = client.CoreV1Api(api)
        old_version = core.list_pod_for_all_namespaces(field_selector=f"spec.nodeName={node}").metadata.resource_version
        core.patch_namespace(kube_namespace, {"metadata": {"labels": {"moved": "on"}}})
    kube_cluster.kill_apiserver()
    kube_cluster.start_apiserver()
    items: list[object] = []
    metrics = Metrics()
    with kube_cluster.shipper_client() as api:
        core = client.CoreV1Api(api)
        pods = functools.partial(core.list_pod_for_all_namespaces, field_selector=f"spec.nodeName={node}")
        watcher = ListWatch("pods", pods, items.append, metrics, timeout_s=30, backoff=Backoff(cap_s=1.0))
        watcher.resource_version = old_version      # as if we had been watching before the restart
        thread = threading.Thread(target=watcher.run, daemon=True)
        thread.start()
        try:
            await until(lambda: any(isinstance(item, Relist) for item in items), what="the relist after 410")
            relist = next(item for item in items if isinstance(item, Relist))
            assert [obj["metadata"]["uid"] for obj in relist.objects] == [pod.metadata.uid]
            assert metric(metrics, "audit_shipper_metadata_watch_restarts_total",
                          {"resource": "pods", "reason": "expired"}) == 1
            assert metric(metrics, "audit_shipper_metadata_api_errors_total", {"resource": "pods"}) == 0
            assert int(watcher.resource_version) > int(old_version)
            # ... and the watch that follows delivers new pods.
            late = deployment_pod(kube_cluster, kube_namespace, node, name="late")
            await until(lambda: any(isinstance(item, Event) and item.object["metadata"]["uid"] == late.metadata.uid
                                    for item in items), what="the event after the relist")
        finally:
            watcher.stop()
            await asyncio.to_thread(thread.join, 10)
        assert not thread.is_alive()


async def test_api_server_outage_degrades_to_path_metadata_and_recovers(kube_cluster, kube_namespace, tmp_path):
    node = new_node()
    metrics = Metrics()
    provider = make_provider(kube_cluster, tmp_path, node, metrics)
    known = deployment_pod(kube_cluster, kube_namespace, node, name="known")
    async with running(provider):
        await until(lambda: known.metadata.uid in provider.cache.pods, what="the known pod")
        errors_before = metric(metrics, "audit_shipper_metadata_api_errors_total", {"resource": "pods"})
        kube_cluster.kill_apiserver()
        try:
            await until(lambda: not provider.api_healthy, what="the outage to be noticed")
            assert metric(metrics, "audit_shipper_metadata_api_errors_total", {"resource": "pods"}) > errors_before
            # A pod first seen during the outage: no waiting, path metadata, counted.
            stranger = ContainerRef(kube_namespace, "stranger", str(uuid.uuid4()), "app", 0)
            assert not provider.should_wait(stranger, time.monotonic())
            assert resource(provider, stranger) == {
                "k8s.namespace.name": kube_namespace, "k8s.pod.name": "stranger", "k8s.pod.uid": stranger.pod_uid,
                "k8s.container.name": "app", "k8s.container.restart_count": 0, "k8s.node.name": node,
                "audit_shipper.metadata": "path"}
            provider.body_processor(stranger)("INFO line during the outage")
            assert metric(metrics, "audit_shipper_metadata_misses_total", {"reason": "api_unavailable"}) == 1
            # A pod known before the outage keeps its last known metadata.
            assert resource(provider, ref_of(known))["k8s.deployment.name"] == "known"
        finally:
            kube_cluster.start_apiserver()
        await until(lambda: provider.api_healthy, timeout=60, what="recovery after the restart")
        after = deployment_pod(kube_cluster, kube_namespace, node, name="after")
        await until(lambda: after.metadata.uid in provider.cache.pods, what="a pod created after the restart")
        got = resource(provider, ref_of(after))
        assert got["audit_shipper.metadata"] == "api" and got["k8s.deployment.name"] == "after"
        assert not provider.should_wait(ref_of(after), time.monotonic())
