"""Per-pod control, end to end: a real `shipper run` process watching a real kube-apiserver (as the chart's
ServiceAccount) ships a node's log files to the real Apache Kafka broker. Pods are created with the
control annotations and in namespaces with labels; what reaches which topic is read back from Kafka.
"""
from __future__ import annotations

import asyncio
import json
import time
import uuid
from pathlib import Path

import pytest
from kubernetes import client

from shipper.demo.reconcile import read_topic
from tests.harness.kube import create_namespace, create_pod
from tests.support import ShipperProcess, new_topic, wait_until, write_config

pytestmark = [pytest.mark.kube, pytest.mark.kafka, pytest.mark.timeout(300)]

TS = "2026-03-01T10:00:00.000000000Z"


class LogDir:
    """The kubelet's /var/log/pods for the pods of this test."""

    def __init__(self, root: Path) -> None:
        self.pods = root / "pods"
        self.pods.mkdir(parents=True)
        (root / "containers").mkdir()

    def write(self, pod: client.V1Pod, *lines: str, container: str = "app") -> None:
        directory = self.pods / f"{pod.metadata.namespace}_{pod.metadata.name}_{pod.metadata.uid}" / container
        directory.mkdir(parents=True, exist_ok=True)
        with open(directory / "0.log", "ab") as handle:
            handle.write(b"".join(f"{TS} stdout F {line}\n".encode() for line in lines))


def log_records(bootstrap: str, topic: str) -> list[dict]:
    values = asyncio.run(read_topic(bootstrap, topic, idle_s=1.5))
    return [record for record in map(json.loads, values) if "type" not in record]


def bodies_by_pod(records: list[dict]) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for record in records:
        found.setdefault(record["resource"]["k8s.pod.name"], []).append(record["body"])
    return found


def test_pod_annotations_and_namespace_selector_decide_what_ships_where(kube_cluster, kube_namespace, kafka_broker,
                                                                       tmp_path):
    node = f"node-{uuid.uuid4().hex[:8]}"
    default_topic = new_topic(kafka_broker, 1, prefix="logs")
    routed_topic = new_topic(kafka_broker, 1, prefix="team")
    later_topic = new_topic(kafka_broker, 1, prefix="team")
    other_namespace = f"{kube_namespace}-other"
    with kube_cluster.admin_client() as api:
        create_namespace(api, other_namespace, {"team": "payments", "env": "test"})
        pods = {
            "routed": create_pod(api, kube_namespace, "routed", node, annotations={
                "audit-shipper.io/topic": routed_topic, "audit-shipper.io/multiline-start-app": r"^\d{4}-"}),
            "plain": create_pod(api, kube_namespace, "plain", node),
            "excluded": create_pod(api, kube_namespace, "excluded", node,
                                   annotations={"audit-shipper.io/exclude": "true"}),
            "bad": create_pod(api, kube_namespace, "bad", node, annotations={
                "audit-shipper.io/multiline-start": "(unclosed", "audit-shipper.io/topic": "no such/topic"}),
            "visitor": create_pod(api, other_namespace, "visitor", node),
        }
    logs = LogDir(tmp_path / "log")
    trace = ("2026-03-01 ERROR payment failed", "Traceback (most recent call last):",
             '  File "pay.py", line 7, in charge', "ValueError: card declined", "2026-03-01 INFO retrying")
    for name in ("routed", "plain", "bad", "excluded", "visitor"):
        logs.write(pods[name], *trace)
    kubeconfig = kube_cluster.write_kubeconfig(tmp_path / "kubeconfig", as_shipper=True)
    config = write_config(tmp_path / "config.yaml", bootstrap=kafka_broker.bootstrap, node_root=tmp_path / "log",
                          state_dir=tmp_path / "state", topic=default_topic, node_name=node,
                          enrich={"kubernetes": True, "kubeconfig": str(kubeconfig), "unknown_pod_wait_ms": 10_000,
                                  "namespace_selector": "team in (audit),env!=prod,!no-logs",
                                  "topic_annotation_allow": ["team-*"]})
    shipper = ShipperProcess(config, tmp_path / "shipper.log").start()
    try:
        def shipped_everything() -> bool:
            default = bodies_by_pod(log_records(kafka_broker.bootstrap, default_topic))
            return len(default.get("plain", ())) == 5 and len(default.get("bad", ())) == 5 \
                and len(bodies_by_pod(log_records(kafka_broker.bootstrap, routed_topic)).get("routed", ())) == 1

        wait_until(shipped_everything, 90, "the first lines in their topics", interval=1)
        default = bodies_by_pod(log_records(kafka_broker.bootstrap, default_topic))
        routed = bodies_by_pod(log_records(kafka_broker.bootstrap, routed_topic))
        # The annotated pod: its own topic, its stack trace one entry (the last group waits for the next start).
        assert routed == {"routed": ["2026-03-01 ERROR payment failed\nTraceback (most recent call last):\n"
                                     '  File "pay.py", line 7, in charge\nValueError: card declined']}
        # No annotation: the default topic, one entry per line.
        assert default["plain"] == list(trace)
        # Unusable annotations: ignored (logged once, counted), the defaults apply.
        assert default["bad"] == list(trace)
        # Excluded by annotation, and by the namespace selector: nowhere.
        assert set(default) == {"plain", "bad"} and set(routed) == {"routed"}
        metrics = shipper.metrics()
        assert metrics['audit_shipper_excluded_entries_total{reason="annotation"}'] == 5
        assert metrics['audit_shipper_excluded_entries_total{reason="namespace_selector"}'] == 5
        assert metrics['audit_shipper_annotation_errors_total{annotation="multiline-start"}'] == 1
        assert metrics['audit_shipper_annotation_errors_total{annotation="topic"}'] == 1
        log = shipper.log_text()
        assert log.count("excluding logs of the pods in namespace " + other_namespace) == 1
        assert log.count("excluding logs of " + kube_namespace + "/excluded") == 1
        assert "'(unclosed' is not a valid regular expression" in log
        assert "'no such/topic' is not a Kafka topic name" in log

        # Annotations changed on running pods: exclusion follows at once, a chain keeps its topic.
        with kube_cluster.admin_client() as api:
            core = client.CoreV1Api(api)
            core.patch_namespaced_pod("plain", kube_namespace,
                                      {"metadata": {"annotations": {"audit-shipper.io/exclude": "true"}}})
            core.patch_namespaced_pod("routed", kube_namespace,
                                      {"metadata": {"annotations": {"audit-shipper.io/topic": later_topic}}})
            core.patch_namespace(other_namespace, {"metadata": {"labels": {"team": "audit"}}})
        time.sleep(2)                   # the watch events reach the shipper
        logs.write(pods["plain"], "plain: after the exclusion")
        logs.write(pods["routed"], "2026-03-01 INFO after the topic change")
        logs.write(pods["visitor"], "visitor: after the namespace label change")
        wait_until(lambda: shipper.metrics()['audit_shipper_excluded_entries_total{reason="annotation"}'] == 6, 30,
                   "the newly excluded line to be dropped")

        def visitor_arrived() -> bool:
            return "visitor: after the namespace label change" in \
                bodies_by_pod(log_records(kafka_broker.bootstrap, default_topic)).get("visitor", ())

        wait_until(visitor_arrived, 60, "the namespace's pod to ship once its labels match", interval=1)
        wait_until(lambda: len(log_records(kafka_broker.bootstrap, routed_topic)) == 2, 60,
                   "the routed pod's next entry", interval=1)
        default = bodies_by_pod(log_records(kafka_broker.bootstrap, default_topic))
        assert "plain: after the exclusion" not in default["plain"]
        assert default["visitor"] == ["visitor: after the namespace label change"]   # the past stays dropped
        assert bodies_by_pod(log_records(kafka_broker.bootstrap, routed_topic))["routed"][1] == \
            "2026-03-01 INFO retrying"
        assert log_records(kafka_broker.bootstrap, later_topic) == []
        assert shipper.alive()
    finally:
        shipper.stop()
