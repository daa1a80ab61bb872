"""Per-pod control (annotations) and the namespace selector, fed with API-shaped objects (no API server
here: tests/integration/test_pod_control_kube.py does it against a real one, through Kafka)."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from shipper.config import ConfigError, Settings, load_settings
from shipper.enrich.provider import MetadataProvider
from shipper.enrich.selector import SelectorSyntaxError, parse_selector
from shipper.enrich.watch import Event, Health, Relist
from shipper.ingest import Ingest
from shipper.metrics import Metrics
from shipper.state import Snapshot
from tests.unit.test_enrich_cache import NODE, FakeClock, namespace_object, pod_object, ref

TS = "2026-03-01T10:00:00.000000000Z"


def provider(clock: FakeClock | None = None, **enrich) -> MetadataProvider:
    return MetadataProvider(Settings(node_name=NODE, enrich=enrich), Metrics(), clock=clock or FakeClock())


def metric(p: MetadataProvider, name: str, labels: dict[str, str]) -> float:
    return p.metrics.registry.get_sample_value(name, labels) or 0.0


# -- the label selector ---------------------------------------------------------------------------------

@pytest.mark.parametrize("text, labels, expected", [
    ("", {}, True),
    ("team=audit", {"team": "audit"}, True),
    ("team==audit", {"team": "other"}, False),
    ("team!=audit", {}, True),
    ("team!=audit", {"team": "audit"}, False),
    ("env in (prod, staging)", {"env": "staging"}, True),
    ("env in (prod,staging)", {}, False),
    ("env notin (prod)", {}, True),
    ("env notin (prod)", {"env": "prod"}, False),
    ("logs", {"logs": ""}, True),
    ("!logs", {"logs": "x"}, False),
    ("team=audit,!skip,env notin (dev)", {"team": "audit", "env": "prod"}, True),
    ("team=audit,!skip,env notin (dev)", {"team": "audit", "skip": "1"}, False),
    ("kubernetes.io/metadata.name notin (kube-system)", {"kubernetes.io/metadata.name": "shop"}, True),
    ("empty=", {"empty": ""}, True),
])
def test_label_selector_matches_as_the_api_server_does(text, labels, expected):
    assert parse_selector(text).matches(labels) is expected


@pytest.mark.parametrize("text, where", [
    ("=a", "character 1"), ("a b", "character 3"), ("a in b", "character 6"), ("a in (b", "character 8"),
    ("a in ()", "character 7"), ("a,", "character 3"), ("!a=b", "character 3"), ("a=b=c", "character 4"),
    ("Bad_Prefix/x", "character 1"), ("a=-x", "character 3"), ("x" * 64, "character 1"),
])
def test_bad_selector_names_the_position(text, where):
    with pytest.raises(SelectorSyntaxError, match=where):
        parse_selector(text)


def test_bad_selector_is_a_config_error_naming_the_option():
    with pytest.raises(ConfigError, match=r"enrich.namespace_selector: not a label selector.*character 6"):
        load_settings(enrich={"namespace_selector": "a in b"})


# -- annotations -------------------------------------------------------------------------------------------

def test_multiline_annotation_per_container_wins_and_bad_regex_is_logged_once(caplog):
    p = provider()
    p.apply(Relist("pods", [
        pod_object(annotations={"audit-shipper.io/multiline-start": r"^\S"}),
        pod_object(uid="uid-2", name="b", containers=(("app", "i"), ("db", "i")),
                   annotations={"audit-shipper.io/multiline-start": r"^\d{4}-",
                                "audit-shipper.io/multiline-start-db": ""}),
        pod_object(uid="uid-3", name="c", annotations={"audit-shipper.io/multiline-start": "(unclosed"}),
        pod_object(uid="uid-4", name="d", annotations={"audit-shipper.io/multiline-start": r"(?u)\w"}),
    ]))
    assert p.multiline_start(ref()) == r"^\S"
    assert p.multiline_start(ref(uid="uid-2", pod="b")) == r"^\d{4}-"
    assert p.multiline_start(ref(uid="uid-2", pod="b", container="db")) == ""       # off for that container
    with caplog.at_level(logging.WARNING, logger="shipper.enrich"):
        for _ in range(3):
            assert p.multiline_start(ref(uid="uid-3", pod="c")) is None
        assert p.multiline_start(ref(uid="uid-4", pod="d")) is None         # valid for str, not for bytes
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 2 and "shop/c" in warnings[0] and "(unclosed" in warnings[0]
    assert metric(p, "audit_shipper_annotation_errors_total", {"annotation": "multiline-start"}) == 2
    assert p.multiline_start(ref(uid="unknown")) is None


def test_topic_annotation_is_validated_and_must_be_allowed(caplog):
    p = provider(topic_annotation_allow=["team-*", "audit"])
    p.apply(Relist("pods", [
        pod_object(annotations={"audit-shipper.io/topic": "team-shop"}),
        pod_object(uid="uid-2", name="b", annotations={"audit-shipper.io/topic": "bad topic!"}),
        pod_object(uid="uid-3", name="c", annotations={"audit-shipper.io/topic": "payments"}),
        pod_object(uid="uid-4", name="d", containers=(("app", "i"), ("proxy", "i")),
                   annotations={"audit-shipper.io/topic": "team-d", "audit-shipper.io/topic-proxy": "audit"}),
        pod_object(uid="uid-5", name="e", annotations={"audit-shipper.io/topic": ".."}),
    ]))
    assert p.topic(ref()) == "team-shop"
    with caplog.at_level(logging.WARNING, logger="shipper.enrich"):
        assert p.topic(ref(uid="uid-2", pod="b")) is None and p.topic(ref(uid="uid-2", pod="b")) is None
        assert p.topic(ref(uid="uid-3", pod="c")) is None
        assert p.topic(ref(uid="uid-5", pod="e")) is None
    assert p.topic(ref(uid="uid-4", pod="d")) == "team-d"
    assert p.topic(ref(uid="uid-4", pod="d", container="proxy")) == "audit"
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 3
    assert "not a Kafka topic name" in messages[0] and "not allowed by enrich.topic_annotation_allow" in messages[1]
    assert metric(p, "audit_shipper_annotation_errors_total", {"annotation": "topic"}) == 3
    assert provider().topic(ref()) is None          # nothing allowed by default


# -- the namespace selector ------------------------------------------------------------------------------------

def test_namespace_selector_excludes_pods_of_other_namespaces_and_follows_label_changes(caplog):
    p = provider(namespace_selector="team in (checkout,audit),env!=dev")
    p.apply(Relist("namespaces", [namespace_object("shop", {"team": "checkout"}),
                                  namespace_object("dev", {"team": "checkout", "env": "dev"})]))
    p.apply(Relist("pods", [pod_object(), pod_object(uid="uid-2", name="b", namespace="dev"),
                            pod_object(uid="uid-3", name="c", annotations={"audit-shipper.io/exclude": "true"})]))
    with caplog.at_level(logging.INFO, logger="shipper.enrich"):
        assert p.exclusion(ref()) is None
        for _ in range(3):
            assert p.exclusion(ref(uid="uid-2", pod="b", namespace="dev")) == "namespace_selector"
        assert p.exclusion(ref(uid="uid-3", pod="c")) == "annotation"
        p.apply(Event("namespaces", "MODIFIED", namespace_object("dev", {"team": "checkout", "env": "test"})))
        assert p.exclusion(ref(uid="uid-2", pod="b", namespace="dev")) is None
    messages = [r.getMessage() for r in caplog.records if "namespace" in r.getMessage()]
    assert len(messages) == 2
    assert "excluding logs of the pods in namespace dev" in messages[0] and "again" in messages[1]


def test_lines_wait_for_the_namespace_when_a_selector_is_set():
    clock = FakeClock()
    p = provider(clock, namespace_selector="team=checkout", unknown_pod_wait_ms=500)
    p.apply(Health("pods", True))
    p.apply(Relist("pods", [pod_object()]))
    first_seen = clock.now
    assert p.should_wait(ref(), first_seen)                 # the pod is known, its namespace not yet
    p.apply(Relist("namespaces", [namespace_object("shop", {"team": "checkout"})]))
    assert not p.should_wait(ref(), first_seen)
    plain = provider(clock)
    plain.apply(Relist("pods", [pod_object()]))
    assert not plain.should_wait(ref(), first_seen)         # without a selector: no such wait
    q = provider(clock, namespace_selector="team=checkout", unknown_pod_wait_ms=500)
    q.apply(Relist("pods", [pod_object()]))
    clock.now += 0.6
    assert not q.should_wait(ref(), first_seen)             # ... at most unknown_pod_wait_ms
    assert q.exclusion(ref()) is None                       # still unknown: shipped
    q.apply(Health("namespaces", False))
    assert not q.should_wait(ref(), clock.now)              # namespaces unreachable: no waiting


# -- through Ingest --------------------------------------------------------------------------------------------

def cri(*lines: str) -> bytes:
    return b"".join(f"{TS} stdout F {line}\n".encode() for line in lines)


def write_pod(root: Path, namespace: str, pod: str, uid: str, container: str, data: bytes) -> None:
    directory = root / f"{namespace}_{pod}_{uid}" / container
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / "0.log", "ab") as handle:
        handle.write(data)


def collect_all(ingest: Ingest) -> list[tuple[str, dict]]:
    records = []
    while (collected := ingest.collect(1 << 20)) is not None:
        records += [(run.topic, json.loads(value)) for run in collected[0].runs for value in run.values]
    return records


def test_ingest_applies_topic_multiline_and_namespace_annotations(tmp_path):
    pods = tmp_path / "pods"
    trace = cri("2026-03-01 ERROR failed", "Traceback (most recent call last):", "ValueError: boom",
                "2026-03-01 INFO next")
    write_pod(pods, "shop", "a", "uid-1", "app", trace)
    write_pod(pods, "shop", "b", "uid-2", "app", trace)
    write_pod(pods, "dev", "c", "uid-3", "app", cri("dropped"))
    write_pod(pods, "shop", "d", "uid-4", "app", cri("bad annotations", "  are ignored"))
    settings = Settings(node_name=NODE, kafka={"topic": "logs.{namespace}"},
                        enrich={"unknown_pod_wait_ms": 0, "namespace_selector": "env!=dev",
                                "topic_annotation_allow": ["team-*"]},
                        sources={"roots": [str(pods)], "symlink_roots": [], "discover_interval_s": 0.01},
                        wal={"dir": str(tmp_path / "wal")}, state={"dir": str(tmp_path)})
    p = MetadataProvider(settings, Metrics())
    p.apply(Health("pods", True))
    p.apply(Relist("namespaces", [namespace_object("shop", {}), namespace_object("dev", {"env": "dev"})]))
    p.apply(Relist("pods", [
        pod_object(uid="uid-1", name="a", annotations={"audit-shipper.io/multiline-start": r"^\d{4}-",
                                                       "audit-shipper.io/topic": "team-shop"}),
        pod_object(uid="uid-2", name="b"),
        pod_object(uid="uid-3", name="c", namespace="dev"),
        pod_object(uid="uid-4", name="d", annotations={"audit-shipper.io/multiline-start": "[",
                                                       "audit-shipper.io/topic": "other"}),
    ]))
    ingest = Ingest(settings, Snapshot(), p.metrics, p)
    records = [(topic, r) for topic, r in collect_all(ingest) if "type" not in r]
    by_pod: dict[str, list[tuple[str, dict]]] = {}
    for topic, record in records:
        by_pod.setdefault(record["resource"]["k8s.pod.name"], []).append((topic, record))
    # (the last group is held until the next start line or the grouping timeout)
    assert [(topic, r["body"]) for topic, r in by_pod["a"]] == [
        ("team-shop", "2026-03-01 ERROR failed\nTraceback (most recent call last):\nValueError: boom")]
    assert [(topic, r["body"]) for topic, r in by_pod["b"]][0] == ("logs.shop", "2026-03-01 ERROR failed")
    assert len(by_pod["b"]) == 4
    assert "c" not in by_pod
    assert [(topic, r["body"]) for topic, r in by_pod["d"]] == [("logs.shop", "bad annotations"),
                                                              ("logs.shop", "  are ignored")]
    registry = p.metrics.registry
    assert registry.get_sample_value("audit_shipper_excluded_entries_total", {"reason": "namespace_selector"}) == 1
    assert registry.get_sample_value("audit_shipper_annotation_errors_total", {"annotation": "topic"}) == 1
    assert registry.get_sample_value("audit_shipper_annotation_errors_total", {"annotation": "multiline-start"}) == 1


def test_a_chains_topic_is_fixed_at_its_first_read(tmp_path):
    pods = tmp_path / "pods"
    write_pod(pods, "shop", "a", "uid-1", "app", cri("first"))
    settings = Settings(node_name=NODE, enrich={"unknown_pod_wait_ms": 0, "topic_annotation_allow": ["*"]},
                        sources={"roots": [str(pods)], "symlink_roots": [], "discover_interval_s": 0.01},
                        wal={"dir": str(tmp_path / "wal")}, state={"dir": str(tmp_path)})
    p = MetadataProvider(settings, Metrics())
    p.apply(Health("pods", True))
    p.apply(Relist("pods", [pod_object(uid="uid-1", name="a", annotations={"audit-shipper.io/topic": "one"})]))
    ingest = Ingest(settings, Snapshot(), p.metrics, p)
    assert {topic for topic, r in collect_all(ingest) if "type" not in r} == {"one"}
    p.apply(Event("pods", "MODIFIED", pod_object(uid="uid-1", name="a",
                                                 annotations={"audit-shipper.io/topic": "two"})))
    write_pod(pods, "shop", "a", "uid-1", "app", cri("second"))
    assert {topic for topic, r in collect_all(ingest) if "type" not in r} == {"one"}
