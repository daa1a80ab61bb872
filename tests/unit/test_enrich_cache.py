"""The metadata cache, owner resolution and the provider's answers, fed with API-shaped objects (no API
server here: tests/integration/test_enrich_kube.py does the same against a real one)."""
from __future__ import annotations

import json
import logging

import pytest

from shipper.config import Settings
from shipper.enrich import PathOnlyProvider, build_provider
from shipper.enrich.cache import MetadataCache, pod_from_object
from shipper.enrich.owner import controller_owner, owner_attributes
from shipper.enrich.provider import MetadataProvider
from shipper.enrich.watch import Backoff, Event, Health, Relist
from shipper.metrics import Metrics
from shipper.model import ContainerRef

NODE = "node-a"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def pod_object(uid="uid-1", name="api-7d9f8-x2x4q", namespace="shop", labels=None, annotations=None,
               owner=("ReplicaSet", "api-7d9f8"), containers=(("app", "registry.example:5000/shop/api:1.4.2"),),
               statuses=(("app", "containerd://" + "c" * 64, 0, ""),)) -> dict:
    return {
        "metadata": {"uid": uid, "name": name, "namespace": namespace, "resourceVersion": "1",
                     "labels": {"pod-template-hash": "7d9f8", "app.kubernetes.io/name": "api", "tier": "web"}
                     if labels is None else labels,
                     "annotations": annotations or {},
                     "ownerReferences": [{"kind": owner[0], "name": owner[1], "controller": True}] if owner else []},
        "spec": {"nodeName": NODE, "containers": [{"name": n, "image": i} for n, i in containers]},
        "status": {"containerStatuses": [
            {"name": n, "containerID": cid, "restartCount": restarts,
             **({"lastState": {"terminated": {"containerID": previous}}} if previous else {})}
            for n, cid, restarts, previous in statuses]},
    }


def namespace_object(name="shop", labels=None) -> dict:
    return {"metadata": {"name": name, "labels": {"team": "checkout"} if labels is None else labels}}


def ref(uid="uid-1", pod="api-7d9f8-x2x4q", namespace="shop", container="app", restart=0) -> ContainerRef:
    return ContainerRef(namespace, pod, uid, container, restart)


# -- owner ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("owner, labels, expected", [
    (("ReplicaSet", "api-7d9f8"), {"pod-template-hash": "7d9f8"},
     {"k8s.replicaset.name": "api-7d9f8", "k8s.deployment.name": "api"}),
    (("ReplicaSet", "hand-made"), {"pod-template-hash": "7d9f8"}, {"k8s.replicaset.name": "hand-made"}),
    (("ReplicaSet", "api-7d9f8"), {}, {"k8s.replicaset.name": "api-7d9f8"}),
    (("Job", "backup-29433600"), {}, {"k8s.job.name": "backup-29433600", "k8s.cronjob.name": "backup"}),
    (("Job", "migrate-2"), {}, {"k8s.job.name": "migrate-2"}),
    (("StatefulSet", "db"), {}, {"k8s.statefulset.name": "db"}),
    (("DaemonSet", "agent"), {}, {"k8s.daemonset.name": "agent"}),
    (("Node", "node-a"), {}, {}),
    (None, {}, {}),
])
def test_owner_workload_from_names_and_labels(owner, labels, expected):
    assert owner_attributes(owner, labels) == expected


def test_controller_owner_reference_is_preferred():
    refs = [{"kind": "Foo", "name": "a"}, {"kind": "StatefulSet", "name": "b", "controller": True}]
    assert controller_owner(refs) == ("StatefulSet", "b")
    assert controller_owner([{"kind": "Foo", "name": "a"}]) == ("Foo", "a")
    assert controller_owner([]) is None


# -- cache ----------------------------------------------------------------------------------------------

def test_pod_from_object_keeps_what_enrichment_needs():
    pod = pod_from_object(pod_object(statuses=(("app", "cri-o://abc", 2, "containerd://old"),)))
    assert pod.uid == "uid-1" and pod.owner == ("ReplicaSet", "api-7d9f8") and pod.node == NODE
    container = pod.container("app")
    assert (container.container_id, container.runtime, container.restart_count) == ("abc", "cri-o", 2)
    assert container.id_for_restart(2) == "abc" and container.id_for_restart(1) == "old"
    assert container.id_for_restart(0) == ""
    assert pod_from_object({"metadata": {}}) is None


def test_unchanged_update_keeps_the_same_object():
    cache = MetadataCache(60)
    cache.apply_pod_event("ADDED", pod_object())
    first = cache.pod("uid-1")
    cache.apply_pod_event("MODIFIED", pod_object() | {"status": pod_object()["status"] | {"phase": "Running"}})
    assert cache.pod("uid-1") is first
    cache.apply_pod_event("MODIFIED", pod_object(labels={"tier": "db"}))
    assert cache.pod("uid-1") is not first and cache.pod("uid-1").labels == {"tier": "db"}


def test_deleted_pod_stays_for_the_grace_period():
    clock = FakeClock()
    cache = MetadataCache(30, clock)
    cache.apply_pod_event("ADDED", pod_object())
    cache.apply_pod_event("DELETED", pod_object())
    clock.now += 29
    assert cache.expire() == 0 and cache.pod("uid-1").deleted_at == 1000.0
    clock.now += 1
    assert cache.expire() == 1 and cache.pod("uid-1") is None


def test_relist_marks_vanished_pods_deleted_not_gone():
    clock = FakeClock()
    cache = MetadataCache(30, clock)
    cache.replace_pods([pod_object(), pod_object(uid="uid-2", name="other")])
    clock.now += 5
    cache.replace_pods([pod_object(uid="uid-2", name="other")])
    assert cache.pod("uid-1").deleted_at == 1005.0 and cache.pod("uid-2").deleted_at is None
    clock.now += 30
    cache.expire()
    assert set(cache.pods) == {"uid-2"}


def test_deleted_namespace_kept_while_its_pods_are():
    clock = FakeClock()
    cache = MetadataCache(30, clock)
    cache.replace_namespaces([namespace_object()])
    cache.apply_pod_event("ADDED", pod_object())
    cache.apply_namespace_event("DELETED", namespace_object())
    clock.now += 60
    cache.expire()
    assert cache.namespace("shop") is not None          # the pod is still cached (not deleted)
    cache.apply_pod_event("DELETED", pod_object())
    clock.now += 31
    cache.expire()
    assert cache.namespace("shop") is None and cache.pod("uid-1") is None


# -- provider (fed by hand) -----------------------------------------------------------------------------

def provider(clock: FakeClock | None = None, **enrich) -> MetadataProvider:
    settings = Settings(node_name=NODE, enrich=enrich)
    return MetadataProvider(settings, Metrics(), clock=clock or FakeClock())


def test_resource_from_the_api():
    p = provider()
    p.apply(Relist("namespaces", [namespace_object()]))
    p.apply(Relist("pods", [pod_object()]))
    resource = json.loads(p.resource_json(ref()))
    assert resource == {
        "k8s.namespace.name": "shop", "k8s.pod.name": "api-7d9f8-x2x4q", "k8s.pod.uid": "uid-1",
        "k8s.container.name": "app", "k8s.container.restart_count": 0, "container.id": "c" * 64,
        "container.runtime": "containerd", "container.image.name": "registry.example:5000/shop/api",
        "container.image.tags": ["1.4.2"], "k8s.node.name": NODE, "k8s.replicaset.name": "api-7d9f8",
        "k8s.deployment.name": "api", "service.name": "api",
        "k8s.pod.labels": {"app.kubernetes.io/name": "api", "pod-template-hash": "7d9f8", "tier": "web"},
        "k8s.namespace.labels": {"team": "checkout"}, "audit_shipper.metadata": "api"}


def test_rendered_resource_is_reused_until_the_pod_changes():
    p = provider()
    p.apply(Relist("pods", [pod_object()]))
    first = p.resource_json(ref())
    assert p.resource_json(ref()) is first
    p.apply(Event("pods", "MODIFIED", pod_object(labels={"pod-template-hash": "7d9f8", "tier": "db"})))
    second = p.resource_json(ref())
    assert second is not first and json.loads(second)["k8s.pod.labels"] == {"pod-template-hash": "7d9f8",
                                                                           "tier": "db"}
    p.apply(Event("namespaces", "MODIFIED", namespace_object(labels={"team": "payments"})))
    assert json.loads(p.resource_json(ref()))["k8s.namespace.labels"] == {"team": "payments"}


def test_label_and_annotation_filters():
    p = provider(label_include=["app.kubernetes.io/*", "tier"], label_exclude=["tier"],
                 annotation_include=["team.example/*"], service_name_labels=["missing"])
    p.apply(Relist("pods", [pod_object(annotations={"team.example/owner": "ann", "kubectl.kubernetes.io/x": "y"})]))
    resource = json.loads(p.resource_json(ref()))
    assert resource["k8s.pod.labels"] == {"app.kubernetes.io/name": "api"}
    assert resource["k8s.pod.annotations"] == {"team.example/owner": "ann"}
    assert resource["service.name"] == "api"           # from the Deployment name


def test_container_id_of_an_earlier_restart():
    p = provider()
    p.apply(Relist("pods", [pod_object(statuses=(("app", "containerd://new", 3, "containerd://old"),))]))
    assert json.loads(p.resource_json(ref(restart=3)))["container.id"] == "new"
    assert json.loads(p.resource_json(ref(restart=2)))["container.id"] == "old"
    assert "container.id" not in json.loads(p.resource_json(ref(restart=0)))


def test_unknown_pod_waits_then_ships_with_path_metadata():
    clock = FakeClock()
    p = provider(clock, unknown_pod_wait_ms=2000)
    first_seen = clock.now
    assert p.should_wait(ref(), first_seen)                 # API state not known yet: starting
    p.apply(Health("pods", True))
    clock.now += 1.9
    assert p.should_wait(ref(), first_seen)
    clock.now += 0.2
    assert not p.should_wait(ref(), first_seen)
    resource = json.loads(p.resource_json(ref()))
    assert resource["audit_shipper.metadata"] == "path" and resource["k8s.pod.uid"] == "uid-1"
    p.body_processor(ref())("a line")
    p.body_processor(ref())("another")
    assert p.metrics.registry.get_sample_value("audit_shipper_metadata_misses_total", {"reason": "unknown_pod"}) == 2
    p.apply(Event("pods", "ADDED", pod_object()))
    assert not p.should_wait(ref(), first_seen)
    assert json.loads(p.resource_json(ref()))["audit_shipper.metadata"] == "api"


def test_no_waiting_while_the_api_is_unreachable():
    clock = FakeClock()
    p = provider(clock)
    p.apply(Health("pods", False))
    assert not p.api_healthy
    assert not p.should_wait(ref(), clock.now)
    p.body_processor(ref())("x")
    assert p.metrics.registry.get_sample_value("audit_shipper_metadata_misses_total",
                                               {"reason": "api_unavailable"}) == 1


def test_exclusion_by_annotation_is_logged_once(caplog):
    p = provider()
    p.apply(Relist("pods", [
        pod_object(annotations={"audit-shipper.io/exclude": "true"}),
        pod_object(uid="uid-2", name="b", containers=(("app", "i"), ("sidecar", "i")),
                   annotations={"audit-shipper.io/exclude-sidecar": "TRUE"}),
        pod_object(uid="uid-3", name="c", annotations={"audit-shipper.io/exclude": "true",
                                                       "audit-shipper.io/exclude-app": "false"}),
    ]))
    with caplog.at_level(logging.INFO, logger="shipper.enrich"):
        assert p.is_excluded(ref()) and p.is_excluded(ref())
        assert p.is_excluded(ref(uid="uid-2", pod="b", container="sidecar"))
        assert not p.is_excluded(ref(uid="uid-2", pod="b", container="app"))
        assert not p.is_excluded(ref(uid="uid-3", pod="c"))      # the container's own annotation wins
        assert not p.is_excluded(ref(uid="unknown"))
    messages = [r.getMessage() for r in caplog.records if "excluding" in r.getMessage()]
    assert len(messages) == 2
    assert "shop/api-7d9f8-x2x4q" in messages[0] and "uid-1" in messages[0]


def test_parse_json_annotation_switches_the_body_processor():
    p = provider()
    p.apply(Relist("pods", [pod_object(annotations={"audit-shipper.io/parse-json": "true"}),
                            pod_object(uid="uid-2", name="b")]))
    with_fields = p.body_processor(ref())('{"msg":"hi"}')
    assert with_fields is not None and with_fields[2] == '"body.msg":"hi"'
    assert p.body_processor(ref(uid="uid-2", pod="b"))('{"msg":"hi"}') is None


def test_path_only_provider():
    settings = Settings(node_name=NODE, enrich={"kubernetes": False})
    p = build_provider(settings, Metrics())
    assert isinstance(p, PathOnlyProvider) and not p.api_healthy
    assert json.loads(p.resource_json(ref())) == {
        "k8s.namespace.name": "shop", "k8s.pod.name": "api-7d9f8-x2x4q", "k8s.pod.uid": "uid-1",
        "k8s.container.name": "app", "k8s.container.restart_count": 0, "k8s.node.name": NODE,
        "audit_shipper.metadata": "path"}
    assert not p.is_excluded(ref()) and not p.should_wait(ref(), 0)
    assert p.body_processor(ref())("INFO x")[1] == ',"severity_text":"INFO"'


def test_backoff_grows_with_jitter_and_is_capped():
    backoff = Backoff(initial_s=0.5, cap_s=4, rng=lambda: 1.0)
    assert [backoff.next_delay() for _ in range(6)] == [0.5, 1, 2, 4, 4, 4]
    low = Backoff(initial_s=0.5, cap_s=4, rng=lambda: 0.0)
    assert low.next_delay() == 0.25
    backoff.reset()
    assert backoff.next_delay() == 0.5


def test_ingest_ships_api_metadata_and_ids_and_skips_excluded_pods(tmp_path):
    """The provider through its real caller, Ingest, over a node's log directory (no API server)."""
    from shipper.ingest import Ingest
    from shipper.demo.simnode import SimNode
    from shipper.state import Snapshot
    from tests.support import full_context

    node = SimNode(tmp_path / "log", pods=3, containers_per_pod=1, rotate_every_bytes=None, seed=3)
    known, excluded, unknown = (sim.ref for sim in node.containers)
    node.write(60)
    settings = Settings(node_name=NODE, enrich={"unknown_pod_wait_ms": 0},
                        sources={"roots": [str(node.pods_dir)], "symlink_roots": [], "discover_interval_s": 0.01},
                        wal={"dir": str(tmp_path / "wal")}, state={"dir": str(tmp_path)})
    p = MetadataProvider(settings, Metrics())
    p.apply(Health("pods", True))
    p.apply(Relist("pods", [
        pod_object(uid=known.pod_uid, name=known.pod, namespace=known.namespace,
                   containers=((known.container, "img:2"),), statuses=()),
        pod_object(uid=excluded.pod_uid, name=excluded.pod, namespace=excluded.namespace,
                   containers=((excluded.container, "img:2"),), statuses=(),
                   annotations={"audit-shipper.io/exclude": "true"}),
    ]))
    ingest = Ingest(settings, Snapshot(), p.metrics, p)
    records = []
    while (collected := ingest.collect(1 << 20)) is not None:
        records += [json.loads(value) for run in collected[0].runs for value in run.values]
    logs = [r for r in full_context(records) if "type" not in r]      # v2: the full resource as rebuilt
    by_pod = {}
    for record in logs:
        by_pod.setdefault(record["resource"]["k8s.pod.uid"], []).append(record)
    assert excluded.pod_uid not in by_pod
    assert {r["resource"]["audit_shipper.metadata"] for r in by_pod[known.pod_uid]} == {"api"}
    assert {r["resource"]["audit_shipper.metadata"] for r in by_pod[unknown.pod_uid]} == {"path"}
    assert all(r["resource"]["container.image.name"] == "img" for r in by_pod[known.pod_uid])
    # Every simulated entry carries a request id (JSON field or key=value) and a level.
    assert all("request_id" in r["attributes"] and "severity_text" in r for r in logs)
    assert sum(1 for r in logs if "trace_id" in r) > 0
    misses = p.metrics.registry.get_sample_value("audit_shipper_metadata_misses_total", {"reason": "unknown_pod"})
    assert misses == len(by_pod[unknown.pod_uid])
