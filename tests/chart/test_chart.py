"""The Helm chart, rendered by the real helm: lint-clean, every object valid for Kubernetes 1.34 (schemas
offline, and a server-side dry run against a real kube-apiserver), least privilege, and in step with
the product (its settings model accepts the rendered config; alerts and dashboard name real metrics)."""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from shipper.metrics import Metrics
from shipper.verify.command import _cli_parser as verify_cli_parser
from shipper.verify.follow import FollowMetrics
from tests.chart.conftest import FULL_VALUES
from tests.harness.kube import (
    CHART_DIR,
    KUBE_VERSION,
    REPO_ROOT,
    KubeCluster,
    create_namespace,
    helm,
    render_chart,
    tool_path,
)

pytestmark = pytest.mark.helm

CRD_KINDS = {"ServiceMonitor", "PrometheusRule"}
DEPLOY = REPO_ROOT / "deploy"
MANIFEST = DEPLOY / "manifests" / "audit-shipper.yaml"
RENDER_MANIFESTS = REPO_ROOT / "scripts" / "render-manifests"


def by_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [obj for obj in objects if obj["kind"] == kind]


def one(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = by_kind(objects, kind)
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def of_component(objects: list[dict[str, Any]], kind: str, component: str) -> dict[str, Any]:
    """The one object of `kind` that belongs to the shipper (log-shipper) or to the verifier."""
    found = [obj for obj in by_kind(objects, kind)
             if obj["metadata"]["labels"]["app.kubernetes.io/component"] == component]
    assert len(found) == 1, f"expected one {component} {kind}, got {len(found)}"
    return found[0]


def shipper_container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    containers = one(objects, "DaemonSet")["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == ["shipper"]
    return containers[0]


def rendered_config(objects: list[dict[str, Any]]) -> dict[str, Any]:
    return yaml.safe_load(one(objects, "ConfigMap")["data"]["config.yaml"])


# ------------------------------------------------------------------------------------------ lint/schema

@pytest.mark.parametrize("values", [None, FULL_VALUES], ids=["default", "full"])
def test_helm_lint_strict(values: Path | None) -> None:
    args = ["lint", str(CHART_DIR), "--strict", "--kube-version", KUBE_VERSION]
    if values:
        args += ["--values", str(values)]
    out = helm(*args)
    assert "0 chart(s) failed" in out, out


def test_default_render_is_the_daemonset_and_its_identity(chart_objects: list[dict[str, Any]]) -> None:
    kinds = sorted(obj["kind"] for obj in chart_objects)
    assert kinds == ["ClusterRole", "ClusterRoleBinding", "ConfigMap", "DaemonSet", "ServiceAccount"]
    # Secrets are referenced, never created: key material stays out of values and release history.
    assert not by_kind(chart_objects, "Secret")


def test_full_render_adds_monitoring_objects(full_objects: list[dict[str, Any]]) -> None:
    kinds = sorted(obj["kind"] for obj in full_objects)
    assert kinds == ["ClusterRole", "ClusterRoleBinding", "ConfigMap", "DaemonSet", "Deployment", "PrometheusRule",
                     "Service", "Service", "ServiceAccount", "ServiceMonitor", "ServiceMonitor"]
    assert not by_kind(full_objects, "Secret")


@pytest.mark.parametrize("fixture", ["chart_objects", "full_objects"])
def test_every_object_is_valid_kubernetes_1_34(fixture: str, request: pytest.FixtureRequest) -> None:
    objects = request.getfixturevalue(fixture)
    checked = 0
    for obj in objects:
        if obj["kind"] in CRD_KINDS:
            continue
        kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)
        checked += 1
    assert checked >= 5


@pytest.mark.parametrize("bad, message", [
    (["--set", "unknownTopLevel=1"], "additional properties 'unknownTopLevel' not allowed"),
    (["--set", "image.pullPolicy=Sometimes"], "pullPolicy"),
    (["--set", "image.colour=blue"], "colour"),
    (["--set", "hostPaths.state=relative/path"], "state"),
    (["--set", "metrics.serviceMonitor.interval=often"], "interval"),
    (["--set", "secrets.signingKey.keyFile=x"], "keyFile"),
    (["--set", "verifier.onViolation=ignore"], "onViolation"),
    (["--set", "verifier.metricsPort=0"], "metricsPort"),
    (["--set", "verifier.publicKey.file=x"], "file"),
    (["--set", "verifier.kafka.bootstrapServers=kafka"], "bootstrapServers"),
    (["--set", "verifier.grace=-1"], "grace"),
])
def test_values_schema_refuses_what_the_chart_does_not_know(bad: list[str], message: str) -> None:
    with pytest.raises(subprocess.CalledProcessError) as info:
        helm("template", "x", str(CHART_DIR), "--kube-version", KUBE_VERSION, *bad)
    assert message in info.value.stderr, info.value.stderr


def test_config_is_a_passthrough_of_product_settings() -> None:
    objects = render_chart(set_values={"config.enrich.parse_json_bodies": "true",
                                       "config.kafka.client_id": "node-agent"})
    config = rendered_config(objects)
    assert config["enrich"] == {"parse_json_bodies": True}
    assert config["kafka"]["client_id"] == "node-agent"
    assert config["kafka"]["bootstrap_servers"] == "kafka.kafka.svc:9092"


@pytest.mark.parametrize("fixture", ["chart_objects", "full_objects"])
def test_settings_model_accepts_the_rendered_config(fixture: str, request: pytest.FixtureRequest,
                                                    tmp_path: Path) -> None:
    """The shipper's own `config` command loads the file the pods will load, with no SHIPPER_* from the
    environment of this test run."""
    config_file = tmp_path / "config.yaml"
    config_file.write_text(one(request.getfixturevalue(fixture), "ConfigMap")["data"]["config.yaml"])
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHIPPER_")}
    result = subprocess.run([sys.executable, "-m", "shipper.cli", "config", "--config", str(config_file)],
                            capture_output=True, text=True, timeout=60, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr


# ------------------------------------------------------------------------------------- least privilege

@pytest.mark.parametrize("fixture", ["chart_objects", "full_objects"])
def test_clusterrole_is_exactly_read_only_pods_and_namespaces(fixture: str, request: pytest.FixtureRequest) -> None:
    objects = request.getfixturevalue(fixture)
    role = one(objects, "ClusterRole")
    granted = {(group, resource, verb) for rule in role["rules"] for group in rule["apiGroups"]
               for resource in rule["resources"] for verb in rule["verbs"]}
    assert granted == {("", r, v) for r in ("pods", "namespaces") for v in ("get", "list", "watch")}
    assert all(set(rule) == {"apiGroups", "resources", "verbs"} for rule in role["rules"])
    assert not by_kind(objects, "Role") and not by_kind(objects, "RoleBinding")
    binding = one(objects, "ClusterRoleBinding")
    account = one(objects, "ServiceAccount")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                                  "name": role["metadata"]["name"]}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account["metadata"]["name"],
                                    "namespace": account["metadata"]["namespace"]}]


@pytest.mark.parametrize("fixture", ["chart_objects", "full_objects"])
def test_container_security_context_is_minimal(fixture: str, request: pytest.FixtureRequest) -> None:
    objects = request.getfixturevalue(fixture)
    pod = one(objects, "DaemonSet")["spec"]["template"]["spec"]
    context = shipper_container(objects)["securityContext"]
    assert context["readOnlyRootFilesystem"] is True
    assert context["allowPrivilegeEscalation"] is False
    assert context["privileged"] is False
    assert context["capabilities"] == {"drop": ["ALL"], "add": ["DAC_READ_SEARCH"]}
    assert context["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    # Root, deliberately: the kubelet's log files are root-owned and capabilities do not reach a
    # non-root process's effective set in Kubernetes (values.yaml explains).
    assert context["runAsUser"] == 0
    for forbidden in ("hostNetwork", "hostPID", "hostIPC", "shareProcessNamespace"):
        assert not pod.get(forbidden)


@pytest.mark.parametrize("fixture", ["chart_objects", "full_objects"])
def test_only_state_and_tmp_are_writable(fixture: str, request: pytest.FixtureRequest) -> None:
    objects = request.getfixturevalue(fixture)
    pod = one(objects, "DaemonSet")["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    writable = {m["name"] for m in shipper_container(objects)["volumeMounts"] if not m.get("readOnly")}
    assert writable == {"state", "tmp"}
    assert volumes["state"]["hostPath"]["type"] == "DirectoryOrCreate"
    assert volumes["tmp"]["emptyDir"]["medium"] == "Memory"
    for name, volume in volumes.items():
        if "hostPath" in volume and name != "state":
            mount = next(m for m in shipper_container(objects)["volumeMounts"] if m["name"] == name)
            # Same path inside as on the node: the kubelet's symlinks name absolute node paths.
            assert mount["mountPath"] == volume["hostPath"]["path"] and mount["readOnly"] is True


# ----------------------------------------------------------------------------------------- pod shape

def test_daemonset_defaults(chart_objects: list[dict[str, Any]]) -> None:
    daemonset = one(chart_objects, "DaemonSet")
    pod = daemonset["spec"]["template"]["spec"]
    container = shipper_container(chart_objects)
    env = {e["name"]: e for e in container["env"]}
    assert env["NODE_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
    assert env["SHIPPER_CONFIG_FILE"]["value"] == "/etc/audit-shipper/config.yaml"
    assert "command" not in container and container["args"] == ["run"]  # the image's ENTRYPOINT is `shipper`
    config_mount = next(m for m in container["volumeMounts"] if m["name"] == "config")
    assert (config_mount["mountPath"], config_mount["subPath"]) == ("/etc/audit-shipper/config.yaml", "config.yaml")
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["config"]["configMap"]["name"] == one(chart_objects, "ConfigMap")["metadata"]["name"]
    assert volumes["pod-logs"]["hostPath"]["path"] == "/var/log/pods"
    assert volumes["container-logs"]["hostPath"]["path"] == "/var/log/containers"
    assert volumes["state"]["hostPath"]["path"] == "/var/lib/audit-shipper"
    assert pod["tolerations"] == [{"operator": "Exists"}]
    assert pod["priorityClassName"] == "system-node-critical"
    assert pod["terminationGracePeriodSeconds"] == 60
    assert pod["serviceAccountName"] == one(chart_objects, "ServiceAccount")["metadata"]["name"]
    assert daemonset["spec"]["updateStrategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "10%"}}
    assert container["resources"]["limits"]["memory"] == "256Mi"
    assert container["resources"]["requests"]["memory"] and container["resources"]["requests"]["cpu"]
    assert container["ports"] == [{"name": "metrics", "containerPort": 2020, "protocol": "TCP"}]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    annotations = daemonset["spec"]["template"]["metadata"]["annotations"]
    assert re.fullmatch(r"[0-9a-f]{64}", annotations["checksum/config"])
    # Its own self-logs (exclusions, losses, config at start) belong in the audit stream too.
    assert "audit-shipper.io/exclude" not in annotations
    # The WAL and state must land on the hostPath, or a restarted pod forgets what it read.
    config = rendered_config(chart_objects)
    assert config["wal"]["dir"].startswith("/var/lib/audit-shipper/")
    assert config["state"]["dir"] == "/var/lib/audit-shipper"


def test_full_values_mount_secrets_and_fill_their_paths(full_objects: list[dict[str, Any]]) -> None:
    pod = one(full_objects, "DaemonSet")["spec"]["template"]["spec"]
    container = shipper_container(full_objects)
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    config = rendered_config(full_objects)
    expected = {
        "kafka-sasl": ("audit-shipper-kafka-sasl", ["password"]),
        "kafka-tls": ("audit-shipper-kafka-tls", ["ca.crt"]),
        "signing-key": ("audit-shipper-signing-key", ["ed25519.pem"]),
    }
    for name, (secret, keys) in expected.items():
        assert volumes[name]["secret"]["secretName"] == secret
        assert [item["key"] for item in volumes[name]["secret"]["items"]] == keys
        assert volumes[name]["secret"]["defaultMode"] == 0o400
        assert mounts[name]["readOnly"] is True
        assert mounts[name]["mountPath"] == f"/etc/audit-shipper/secrets/{name}"
    assert config["kafka"]["sasl"] == {"mechanism": "SCRAM-SHA-512", "username": "audit-shipper",
                                       "password_file": "/etc/audit-shipper/secrets/kafka-sasl/password"}
    assert config["kafka"]["tls"] == {"ca_file": "/etc/audit-shipper/secrets/kafka-tls/ca.crt"}
    assert config["seal"] == {"checkpoint_every_records": 5000,
                              "signing_key_file": "/etc/audit-shipper/secrets/signing-key/ed25519.pem"}
    # The metrics port is the product's option; pod, probes and Service follow it.
    assert container["ports"][0]["containerPort"] == 9102
    assert of_component(full_objects, "Service", "log-shipper")["spec"]["ports"][0]["port"] == 9102
    assert container["image"] == ("registry.example/platform/audit-shipper@sha256:"
                                  "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef")
    assert volumes["state"]["hostPath"]["path"] == "/mnt/audit-shipper"
    assert mounts["host-extra-0"]["mountPath"] == "/var/lib/docker/containers"


def test_config_given_paths_win_over_derived_ones() -> None:
    objects = render_chart(set_values={"secrets.signingKey.secretName": "k",
                                       "config.seal.signing_key_file": "/custom/key.pem"})
    assert rendered_config(objects)["seal"]["signing_key_file"] == "/custom/key.pem"


def test_config_change_rolls_the_pods(chart_objects: list[dict[str, Any]]) -> None:
    changed = render_chart(set_values={"config.kafka.topic": "audit"})
    checksum = lambda objs: one(objs, "DaemonSet")["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
    assert checksum(changed) != checksum(chart_objects)


# -------------------------------------------------------------------------------------------- monitoring

def series_names(registry) -> set[str]:
    """Every series name a registry can expose, from its metric declarations."""
    names: set[str] = set()
    for family in registry.collect():
        suffixes = {"counter": ["_total", "_created"], "gauge": [""], "histogram": ["_bucket", "_sum", "_count",
                    "_created"], "summary": ["_sum", "_count", "_created", ""]}[family.type]
        names.update(family.name + suffix for suffix in suffixes)
    return names


def shipper_series_names() -> set[str]:
    """What `shipper run` exports (shipper/metrics.py)."""
    return series_names(Metrics().registry)


def verifier_series_names() -> set[str]:
    """What `shipper verify --follow` exports (FollowMetrics)."""
    return series_names(FollowMetrics().registry)


def product_series_names() -> set[str]:
    return shipper_series_names() | verifier_series_names()


SERVICE_MONITOR_SCHEMA = {
    "type": "object", "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"}, "kind": {"const": "ServiceMonitor"},
        "metadata": {"type": "object", "required": ["name", "namespace"]},
        "spec": {"type": "object", "additionalProperties": False, "required": ["selector", "endpoints"],
                 "properties": {
                     "namespaceSelector": {"type": "object", "additionalProperties": False,
                                           "properties": {"matchNames": {"type": "array", "items": {"type": "string"}},
                                                          "any": {"type": "boolean"}}},
                     "selector": {"type": "object", "additionalProperties": False,
                                  "properties": {"matchLabels": {"type": "object"}}},
                     "endpoints": {"type": "array", "minItems": 1, "items": {
                         "type": "object", "additionalProperties": False, "required": ["port"],
                         "properties": {"port": {"type": "string"}, "path": {"type": "string"},
                                        "interval": {"type": "string", "pattern": r"^(\d+(ms|s|m|h))+$"},
                                        "scrapeTimeout": {"type": "string", "pattern": r"^(\d+(ms|s|m|h))+$"},
                                        "relabelings": {"type": "array", "items": {"type": "object"}},
                                        "metricRelabelings": {"type": "array", "items": {"type": "object"}}}}}}},
    },
}

PROMETHEUS_RULE_SCHEMA = {
    "type": "object", "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"}, "kind": {"const": "PrometheusRule"},
        "metadata": {"type": "object", "required": ["name", "namespace"]},
        "spec": {"type": "object", "additionalProperties": False, "required": ["groups"], "properties": {
            "groups": {"type": "array", "minItems": 1, "items": {
                "type": "object", "additionalProperties": False, "required": ["name", "rules"],
                "properties": {"name": {"type": "string"}, "rules": {"type": "array", "minItems": 1, "items": {
                    "type": "object", "additionalProperties": False, "required": ["alert", "expr", "labels"],
                    "properties": {"alert": {"type": "string", "pattern": "^[A-Za-z][A-Za-z0-9]*$"},
                                   "expr": {"type": "string", "minLength": 1},
                                   "for": {"type": "string", "pattern": r"^(\d+(ms|s|m|h|d))+$"},
                                   "labels": {"type": "object", "required": ["severity"],
                                              "properties": {"severity": {"enum": ["info", "warning", "critical"]}}},
                                   "annotations": {"type": "object"}}}}}}}}},
    },
}


def test_service_monitor_selects_the_metrics_service(full_objects: list[dict[str, Any]]) -> None:
    monitor = of_component(full_objects, "ServiceMonitor", "log-shipper")
    jsonschema.validate(monitor, SERVICE_MONITOR_SCHEMA)
    service = of_component(full_objects, "Service", "log-shipper")
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= service["metadata"]["labels"].items()
    assert [p["name"] for p in service["spec"]["ports"]] == [monitor["spec"]["endpoints"][0]["port"]]
    # The Service's selector must find the DaemonSet's pods.
    pod_labels = one(full_objects, "DaemonSet")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"


def test_alerts_cover_the_failure_modes_and_name_real_metrics(full_objects: list[dict[str, Any]]) -> None:
    rule = one(full_objects, "PrometheusRule")
    jsonschema.validate(rule, PROMETHEUS_RULE_SCHEMA)
    groups = {group["name"]: group["rules"] for group in rule["spec"]["groups"]}
    assert list(groups) == ["audit-shipper", "audit-shipper-verifier"]
    rules = {r["alert"]: r for group in rule["spec"]["groups"] for r in group["rules"]}
    assert len(rules) == sum(len(group) for group in groups.values())
    assert {"AuditShipperGapRecords", "AuditShipperBackpressure", "AuditShipperWalNearlyFull",
            "AuditShipperKafkaSendErrors", "AuditShipperLagging", "AuditShipperNotRunning",
            "AuditShipperNoCheckpoints"} <= rules.keys()
    assert "audit_shipper_gap_records_total" in rules["AuditShipperGapRecords"]["expr"]
    assert "audit_shipper_backpressure_active" in rules["AuditShipperBackpressure"]["expr"]
    wal_expr = rules["AuditShipperWalNearlyFull"]["expr"]
    assert "audit_shipper_wal_bytes / audit_shipper_wal_limit_bytes) > 0.7" in wal_expr
    assert "audit_shipper_kafka_send_errors_total" in rules["AuditShipperKafkaSendErrors"]["expr"]
    # Each group names only the metrics of its own process: a verifier alert on a shipper metric (or the
    # reverse) would watch the wrong pods.
    known = {"audit-shipper": shipper_series_names(), "audit-shipper-verifier": verifier_series_names()}
    for group, group_rules in groups.items():
        for r in group_rules:
            name = r["alert"]
            used = set(re.findall(r"\baudit_shipper_[a-z0-9_]+", r["expr"]))
            if name == "AuditVerifierDown":     # the scrape itself: Prometheus's own `up`
                assert not used and r["expr"].startswith("absent(up{"), r["expr"]
            else:
                assert used and used <= known[group], f"{name} names unknown metrics {used - known[group]}"
            assert _balanced(r["expr"]), name
            for text in r.get("annotations", {}).values():
                assert _balanced(text) and "{{ $" not in text.replace("{{ $labels", "").replace("{{ $value", ""), text


def test_default_threshold_is_80_percent_of_the_wal() -> None:
    objects = render_chart(set_values={"metrics.prometheusRule.enabled": "true"})
    rules = {r["alert"]: r for g in one(objects, "PrometheusRule")["spec"]["groups"] for r in g["rules"]}
    assert rules["AuditShipperWalNearlyFull"]["expr"].endswith("> 0.8")


def _balanced(text: str) -> bool:
    depth = 0
    for char in text:
        depth += {"(": 1, ")": -1}.get(char, 0)
        if depth < 0:
            return False
    return depth == 0


def test_grafana_dashboard_is_valid_and_names_real_metrics() -> None:
    dashboard = json.loads((DEPLOY / "grafana" / "audit-shipper-dashboard.json").read_text())
    assert dashboard["uid"] == "audit-shipper" and dashboard["panels"]
    used: set[str] = set()
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    rows = [panel["title"] for panel in dashboard["panels"] if panel["type"] == "row"]
    assert rows == ["Verifier"]
    # The shipper's panels come first, then the Verifier row's; each names only its own process's metrics.
    known, section = shipper_series_names(), "shipper"
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            assert not panel.get("panels") and panel["gridPos"]["w"] == 24
            known, section = verifier_series_names(), "verifier"
            continue
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            names = set(re.findall(r"\baudit_shipper_[a-z0-9_]+", target["expr"]))
            assert names and names <= known, f"{section} panel {panel['title']}: unknown {names - known}"
            assert _balanced(target["expr"]), target["expr"]
            used |= names
    for required in ("audit_shipper_gap_records_total", "audit_shipper_backpressure_active", "audit_shipper_wal_bytes",
                     "audit_shipper_wal_limit_bytes", "audit_shipper_kafka_send_errors_total",
                     "audit_shipper_end_to_end_lag_seconds_bucket",
                     "audit_shipper_verify_records_total", "audit_shipper_verify_violations_total",
                     "audit_shipper_verify_chains", "audit_shipper_verify_stale_chains",
                     "audit_shipper_verify_lag_records", "audit_shipper_verify_last_commit_timestamp_seconds"):
        assert required in used
    # No two panels overlap on the grid.
    cells = [(x, y) for grid in (panel["gridPos"] for panel in dashboard["panels"])
             for x in range(grid["x"], grid["x"] + grid["w"]) for y in range(grid["y"], grid["y"] + grid["h"])]
    assert len(cells) == len(set(cells))


# ---------------------------------------------------------------------------------------------- verifier

VERIFIER_ON = {"verifier.enabled": "true"}
# The shipper on SASL_SSL with mTLS, and one Secret holding what `shipper keygen` writes (private key,
# public key, verifier key), as `kubectl create secret generic --from-file=DIR` makes it.
SHIPPER_KAFKA_REUSED = {
    "verifier.enabled": "true",
    "config.kafka.security_protocol": "SASL_SSL",
    "config.kafka.sasl.username": "audit-shipper",
    "secrets.kafkaSasl.secretName": "kafka-sasl",
    "secrets.kafkaTls.secretName": "kafka-tls",
    "secrets.signingKey.secretName": "signing-keys",
    "verifier.publicKey.secretName": "signing-keys",
}


class VerifyArgsRefused(Exception):
    """`shipper verify`'s parser refused the container's arguments (its message is the parser's)."""


def verifier_deployment(objects: list[dict[str, Any]]) -> dict[str, Any]:
    return one(objects, "Deployment")


def verifier_container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    containers = verifier_deployment(objects)["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == ["verifier"]
    return containers[0]


def parse_verifier_args(container: dict[str, Any]) -> argparse.Namespace:
    """The container's arguments through `shipper verify`'s own parser. The image's ENTRYPOINT is `shipper`,
    so the arguments start with the subcommand."""
    assert "command" not in container and container["args"][0] == "verify"
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        try:
            return verify_cli_parser().parse_args(container["args"][1:])
        except SystemExit:
            raise VerifyArgsRefused(stderr.getvalue()) from None


def mounted_files(objects: list[dict[str, Any]]) -> dict[str, tuple[str, str, str]]:
    """path in the verifier container -> (volume kind, object name, key) of every item it mounts."""
    pod = verifier_deployment(objects)["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    files = {}
    for mount in verifier_container(objects).get("volumeMounts", []):
        volume = volumes[mount["name"]]
        kind = "secret" if "secret" in volume else "configMap"
        source = volume[kind]
        name = source["secretName"] if kind == "secret" else source["name"]
        for item in source["items"]:
            files[f"{mount['mountPath']}/{item['path']}"] = (kind, name, item["key"])
    return files


@pytest.fixture(scope="module")
def verifier_objects() -> list[dict[str, Any]]:
    """Default values with the verifier on, and nothing else."""
    return render_chart(set_values=VERIFIER_ON)


@pytest.fixture(scope="module")
def reused_objects() -> list[dict[str, Any]]:
    return render_chart(set_values=SHIPPER_KAFKA_REUSED)


VERIFIER_RENDERS = ["verifier_objects", "reused_objects", "full_objects"]


def test_every_verifier_value_is_typed_described_and_defaulted_as_in_values_yaml() -> None:
    schema = json.loads((CHART_DIR / "values.schema.json").read_text())
    values = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
    opaque = {"resources", "livenessProbe", "readinessProbe"}      # shapes shared with the DaemonSet's

    def check(node: dict[str, Any], given: Any, path: str) -> None:
        for key, sub in node["properties"].items():
            where = f"{path}.{key}"
            assert sub.get("description") and ("type" in sub or "enum" in sub), where
            assert "default" in sub or "properties" in sub and key not in opaque, where
            if "default" in sub:
                assert sub["default"] == given[key], f"{where}: schema {sub['default']!r}, values.yaml {given[key]!r}"
            if "properties" in sub and key not in opaque:
                check(sub, given[key], where)

    check(schema["properties"]["verifier"], values["verifier"], "verifier")
    rule = schema["properties"]["metrics"]["properties"]["prometheusRule"]["properties"]
    for key in ("verifierLagRecords", "verifierCommitAgeSeconds"):
        assert rule[key]["description"] and rule[key]["default"] == values["metrics"]["prometheusRule"][key]


def test_verifier_is_off_by_default_and_renders_nothing_of_it(chart_objects: list[dict[str, Any]]) -> None:
    everything_else_on = render_chart(set_values={
        "metrics.service.enabled": "true", "metrics.serviceMonitor.enabled": "true",
        "metrics.prometheusRule.enabled": "true", "verifier.publicKey.configMapName": "keys",
        "verifier.topics[0]": "logs"})
    for objects in (chart_objects, everything_else_on):
        assert not by_kind(objects, "Deployment")
        assert not [o for o in objects if o["metadata"].get("labels", {}).get("app.kubernetes.io/component")
                    == "verifier" or "verifier" in o["metadata"]["name"]]
    rule = one(everything_else_on, "PrometheusRule")
    assert [g["name"] for g in rule["spec"]["groups"]] == ["audit-shipper"]
    assert "audit_shipper_verify_" not in json.dumps(rule)
    assert len(by_kind(everything_else_on, "ServiceMonitor")) == len(by_kind(everything_else_on, "Service")) == 1


@pytest.mark.parametrize("fixture", VERIFIER_RENDERS)
def test_verifier_objects_are_valid_kubernetes_1_34(fixture: str, request: pytest.FixtureRequest) -> None:
    objects = request.getfixturevalue(fixture)
    kubernetes_validate.validate(verifier_deployment(objects), KUBE_VERSION, strict=True)
    for service in by_kind(objects, "Service"):
        kubernetes_validate.validate(service, KUBE_VERSION, strict=True)


@pytest.mark.parametrize("fixture", VERIFIER_RENDERS)
def test_verifier_args_are_accepted_by_shipper_verify(fixture: str, request: pytest.FixtureRequest) -> None:
    """The real argument parser of `shipper verify` takes the rendered command line, and it is a follow of a
    group (the combination cli_main requires) whose every file is one the pod mounts."""
    objects = request.getfixturevalue(fixture)
    container = verifier_container(objects)
    args = parse_verifier_args(container)
    assert args.follow and args.group and args.bootstrap_servers and args.topic
    assert not (args.file or args.proof or args.now or args.save_heads or args.trusted_heads)
    assert args.workers == 1
    assert args.metrics_port == container["ports"][0]["containerPort"]
    files = mounted_files(objects)
    for path in [*args.public_key, args.tls_ca_file, args.tls_cert_file, args.tls_key_file, args.sasl_password_file]:
        if path is not None:
            assert path in files, f"{path} is not mounted in the verifier (mounted: {sorted(files)})"


def test_an_argument_shipper_verify_does_not_know_fails_the_check() -> None:
    objects = render_chart(set_values=VERIFIER_ON | {"verifier.extraArgs[0]": "--folow"})
    with pytest.raises(VerifyArgsRefused, match="unrecognized arguments: --folow"):
        parse_verifier_args(verifier_container(objects))


def test_verifier_defaults(verifier_objects: list[dict[str, Any]]) -> None:
    deployment = verifier_deployment(verifier_objects)
    args = parse_verifier_args(verifier_container(verifier_objects))
    assert deployment["metadata"]["name"] == "audit-shipper-verifier"
    assert deployment["spec"]["replicas"] == 1
    assert args.group == "audit-shipper-verifier"     # the release's full name + "-verifier"
    assert args.topic == ["logs"] and args.bootstrap_servers == "kafka.kafka.svc:9092"   # the shipper's
    assert (args.on_violation, args.grace, args.commit_every, args.stale_after, args.metrics_port) == \
        ("alert", 300.0, 30.0, 900.0, 9102)
    assert args.exchange_topic is None and args.public_key == []
    assert (args.tls, args.tls_ca_file, args.sasl_mechanism) == (False, None, None)   # PLAINTEXT, as the shipper
    container = verifier_container(verifier_objects)
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert container["image"] == shipper_container(verifier_objects)["image"]
    assert deployment["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 0, "maxUnavailable": 1}


def test_full_values_reach_the_verifier_command_line(full_objects: list[dict[str, Any]]) -> None:
    deployment = verifier_deployment(full_objects)
    args = parse_verifier_args(verifier_container(full_objects))
    assert deployment["spec"]["replicas"] == 3
    assert args.group == "audit-verifier"
    assert args.topic == ["logs.payments", "logs.platform"]
    assert args.bootstrap_servers == rendered_config(full_objects)["kafka"]["bootstrap_servers"]
    assert (args.on_violation, args.grace, args.stale_after, args.commit_every) == ("exit", 600.0, 1800.5, 15.0)
    assert args.window == 2_000_000 and args.require_attested
    assert args.public_key == ["/etc/audit-shipper/public-key/signing-key.vkey",
                               "/etc/audit-shipper/public-key/signing-key-2025.pub.pem"]
    # The shipper's CA; the verifier's own SASL identity instead of the shipper's.
    assert args.tls_ca_file == "/etc/audit-shipper/secrets/kafka-tls/ca.crt"
    assert (args.sasl_mechanism, args.sasl_username) == ("SCRAM-SHA-512", "audit-verifier")
    files = mounted_files(full_objects)
    assert files[args.sasl_password_file] == ("secret", "audit-verifier-kafka-sasl", "password")
    assert not [f for f in files.values() if f[1] == "audit-shipper-kafka-sasl"]
    assert files[args.public_key[0]] == ("configMap", "audit-shipper-public-key", "signing-key.vkey")


def test_verifier_reuses_the_shippers_kafka_settings_and_secrets(reused_objects: list[dict[str, Any]]) -> None:
    args = parse_verifier_args(verifier_container(reused_objects))
    config = rendered_config(reused_objects)["kafka"]
    assert args.tls_ca_file == config["tls"]["ca_file"]
    assert (args.tls_cert_file, args.tls_key_file) == (config["tls"]["cert_file"], config["tls"]["key_file"])
    assert (args.sasl_mechanism, args.sasl_username, args.sasl_password_file) == \
        ("SCRAM-SHA-512", "audit-shipper", config["sasl"]["password_file"])
    files = mounted_files(reused_objects)
    assert {path: f for path, f in files.items() if f[1] in ("kafka-tls", "kafka-sasl")} == {
        "/etc/audit-shipper/secrets/kafka-tls/ca.crt": ("secret", "kafka-tls", "ca.crt"),
        "/etc/audit-shipper/secrets/kafka-tls/tls.crt": ("secret", "kafka-tls", "tls.crt"),
        "/etc/audit-shipper/secrets/kafka-tls/tls.key": ("secret", "kafka-tls", "tls.key"),
        "/etc/audit-shipper/secrets/kafka-sasl/password": ("secret", "kafka-sasl", "password")}


@pytest.mark.parametrize("fixture", VERIFIER_RENDERS)
def test_verifier_mounts_the_public_key_never_the_signing_key(fixture: str, request: pytest.FixtureRequest) -> None:
    objects = request.getfixturevalue(fixture)
    files = mounted_files(objects)
    daemonset_pod = one(objects, "DaemonSet")["spec"]["template"]["spec"]
    signing = {(v["secret"]["secretName"], item["key"]) for v in daemonset_pod["volumes"] if v["name"] == "signing-key"
               for item in v["secret"]["items"]}
    assert not {(name, key) for _, name, key in files.values()} & signing
    container = verifier_container(objects)
    assert not [m for m in container.get("volumeMounts", []) if "signing-key" in m["name"] or
                m["mountPath"].startswith("/etc/audit-shipper/secrets/signing-key")]
    assert not [a for a in container["args"] if "/secrets/signing-key" in a]
    args = parse_verifier_args(container)
    for path in args.public_key:
        assert files[path][2].endswith((".pub.pem", ".vkey"))


def test_reused_secret_holds_the_private_key_yet_only_the_public_item_is_mounted(
        reused_objects: list[dict[str, Any]]) -> None:
    items = {key for kind, name, key in mounted_files(reused_objects).values() if name == "signing-keys"}
    assert items == {"signing-key.pub.pem"}


def test_naming_the_private_signing_key_as_public_key_fails_the_render() -> None:
    with pytest.raises(subprocess.CalledProcessError) as info:
        render_chart(set_values=SHIPPER_KAFKA_REUSED | {"verifier.publicKey.keys[0]": "signing-key.pem"})
    assert "is the private signing key" in info.value.stderr


@pytest.mark.parametrize("set_values, message", [
    ({"config.kafka.topic": "logs.{namespace}"}, "list the topics it yields in verifier.topics"),
    ({"verifier.publicKey.configMapName": "a", "verifier.publicKey.secretName": "b"}, "not both"),
    ({"config.kafka.security_protocol": "SASL_SSL", "config.kafka.sasl.mechanism": "OAUTHBEARER",
      "config.kafka.sasl.oauth.token_endpoint_url": "https://idp.example/token"}, "OAUTHBEARER token from a file"),
    ({"verifier.kafka.sasl.secretName": "s", "config.kafka.security_protocol": "SASL_SSL"},
     "needs verifier.kafka.sasl.username"),
])
def test_verifier_settings_it_cannot_run_with_fail_the_render(set_values: dict[str, str], message: str) -> None:
    with pytest.raises(subprocess.CalledProcessError) as info:
        render_chart(set_values=VERIFIER_ON | set_values)
    assert message in info.value.stderr


@pytest.mark.parametrize("fixture", VERIFIER_RENDERS)
def test_verifier_pod_is_non_root_read_only_without_capabilities_or_token(fixture: str,
                                                                          request: pytest.FixtureRequest) -> None:
    objects = request.getfixturevalue(fixture)
    pod = verifier_deployment(objects)["spec"]["template"]["spec"]
    container = verifier_container(objects)
    context, pod_context = container["securityContext"], pod["securityContext"]
    assert context["runAsNonRoot"] is True and pod_context["runAsNonRoot"] is True
    assert pod_context["runAsUser"] != 0 and pod_context["runAsGroup"] != 0
    assert context["readOnlyRootFilesystem"] is True
    assert context["allowPrivilegeEscalation"] is False and context["privileged"] is False
    assert context["capabilities"] == {"drop": ["ALL"]}
    assert context["seccompProfile"] == pod_context["seccompProfile"] == {"type": "RuntimeDefault"}
    # It never talks to the Kubernetes API: no token, and not the shipper's account with its ClusterRole.
    assert pod["automountServiceAccountToken"] is False
    assert pod.get("serviceAccountName", "default") != one(objects, "ServiceAccount")["metadata"]["name"]
    for forbidden in ("hostNetwork", "hostPID", "hostIPC", "shareProcessNamespace"):
        assert not pod.get(forbidden)
    assert all(m["readOnly"] is True for m in container.get("volumeMounts", []))
    for volume in pod.get("volumes", []):
        assert set(volume) & {"secret", "configMap"}, volume     # no disk, no hostPath
        if "secret" in volume:
            # Read by a non-root user: the group bit, with the pod's fsGroup owning the files.
            assert volume["secret"]["defaultMode"] & 0o040 and pod_context["fsGroup"] == pod_context["runAsGroup"]


@pytest.mark.parametrize("fixture", VERIFIER_RENDERS)
def test_shipper_and_verifier_never_select_each_others_pods(fixture: str, request: pytest.FixtureRequest) -> None:
    objects = request.getfixturevalue(fixture)
    daemonset, deployment = one(objects, "DaemonSet"), verifier_deployment(objects)
    shipper_pods = daemonset["spec"]["template"]["metadata"]["labels"]
    verifier_pods = deployment["spec"]["template"]["metadata"]["labels"]
    selects = lambda selector, labels: selector.items() <= labels.items()
    assert selects(deployment["spec"]["selector"]["matchLabels"], verifier_pods)
    assert not selects(deployment["spec"]["selector"]["matchLabels"], shipper_pods)
    assert not selects(daemonset["spec"]["selector"]["matchLabels"], verifier_pods)
    for service in by_kind(objects, "Service"):
        mine = service["metadata"]["labels"]["app.kubernetes.io/component"] == "verifier"
        assert selects(service["spec"]["selector"], verifier_pods) is mine
        assert selects(service["spec"]["selector"], shipper_pods) is not mine


def test_verifier_is_scraped_through_its_own_service_and_monitor(full_objects: list[dict[str, Any]]) -> None:
    service = of_component(full_objects, "Service", "verifier")
    monitor = of_component(full_objects, "ServiceMonitor", "verifier")
    jsonschema.validate(monitor, SERVICE_MONITOR_SCHEMA)
    # A member the group gave no partition is not ready, and is still up: its endpoint stays.
    assert service["spec"]["publishNotReadyAddresses"] is True
    assert service["spec"]["ports"] == [{"name": "metrics", "port": 9200, "targetPort": "metrics", "protocol": "TCP"}]
    assert verifier_container(full_objects)["ports"][0] == {"name": "metrics", "containerPort": 9200, "protocol": "TCP"}
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert [e["port"] for e in monitor["spec"]["endpoints"]] == ["metrics"]
    shipper_service = of_component(full_objects, "Service", "log-shipper")
    assert not monitor["spec"]["selector"]["matchLabels"].items() <= shipper_service["metadata"]["labels"].items()
    shipper_monitor = of_component(full_objects, "ServiceMonitor", "log-shipper")
    assert not shipper_monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    # AuditVerifierDown looks for the job the operator names after this Service.
    rules = {r["alert"]: r for g in one(full_objects, "PrometheusRule")["spec"]["groups"] for r in g["rules"]}
    assert (f'up{{job="{service["metadata"]["name"]}", namespace="{service["metadata"]["namespace"]}"}}'
            in rules["AuditVerifierDown"]["expr"])


def test_verifier_alerts(full_objects: list[dict[str, Any]]) -> None:
    rules = {r["alert"]: r for g in one(full_objects, "PrometheusRule")["spec"]["groups"] for r in g["rules"]}
    violation = rules["AuditVerifierViolation"]
    assert violation["labels"]["severity"] == "critical"
    assert "increase(audit_shipper_verify_violations_total" in violation["expr"]
    assert "by (namespace, kind)" in violation["expr"] and "{{ $labels.kind }}" in violation["annotations"]["summary"]
    assert re.search(r"audit_shipper_verify_lag_records\{[^}]*\}\) > 100000$", rules["AuditVerifierLagging"]["expr"])
    assert "audit_shipper_verify_last_commit_timestamp_seconds" in rules["AuditVerifierNotCommitting"]["expr"]
    assert ") > 900 and on (namespace, pod) " in rules["AuditVerifierNotCommitting"]["expr"]
    assert "audit_shipper_verify_stale_chains" in rules["AuditVerifierStaleChains"]["expr"]
    assert rules["AuditVerifierDown"]["labels"]["severity"] == "critical"
    for name in ("AuditVerifierViolation", "AuditVerifierLagging", "AuditVerifierNotCommitting",
                 "AuditVerifierStaleChains", "AuditVerifierDown"):
        assert set(rules[name]["annotations"]) == {"summary", "description"}, name
        assert 'namespace="audit-shipper"' in rules[name]["expr"], name   # this release's verifier only


def test_verifier_alert_thresholds_are_values_and_down_needs_the_service_monitor() -> None:
    objects = render_chart(set_values=VERIFIER_ON | {"metrics.prometheusRule.enabled": "true",
                                                     "metrics.prometheusRule.verifierLagRecords": "5000000",
                                                     "metrics.prometheusRule.verifierCommitAgeSeconds": "120"})
    rules = {r["alert"]: r for g in one(objects, "PrometheusRule")["spec"]["groups"] for r in g["rules"]}
    assert rules["AuditVerifierLagging"]["expr"].endswith("> 5000000")
    assert "> 120" in rules["AuditVerifierNotCommitting"]["expr"]
    # Without the ServiceMonitor nothing scrapes the verifier under the job that alert names.
    assert "AuditVerifierDown" not in rules


# ------------------------------------------------------------------------------------------------ deploy/

def test_plain_manifests_are_the_rendered_chart() -> None:
    assert MANIFEST.exists(), "run: scripts/render-manifests"
    result = subprocess.run([str(RENDER_MANIFESTS), "--stdout"], capture_output=True, text=True, timeout=120,
                            env=os.environ | {"HELM": str(tool_path("helm")), "KUBE_VERSION": KUBE_VERSION})
    assert result.returncode == 0, result.stderr
    assert MANIFEST.read_text() == result.stdout, \
        "deploy/manifests/audit-shipper.yaml is stale; run: scripts/render-manifests"


def test_plain_manifests_are_valid_kubernetes_1_34() -> None:
    objects = [doc for doc in yaml.safe_load_all(MANIFEST.read_text()) if doc]
    assert objects[0]["kind"] == "Namespace"
    for obj in objects:
        kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)


def test_sidecar_example_is_valid_and_runs_in_sidecar_mode(tmp_path: Path) -> None:
    objects = [doc for doc in yaml.safe_load_all((DEPLOY / "sidecar" / "example.yaml").read_text()) if doc]
    for obj in objects:
        kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)
    pod = one(objects, "Pod")
    sidecar = next(c for c in pod["spec"]["initContainers"] if c["name"] == "audit-shipper")
    assert sidecar["restartPolicy"] == "Always"  # native sidecar: outlives the app container
    env = {e["name"]: e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") for e in sidecar["env"]}
    assert {"POD_NAME": "metadata.name", "POD_NAMESPACE": "metadata.namespace", "POD_UID": "metadata.uid",
            "NODE_NAME": "spec.nodeName"}.items() <= env.items()
    app = pod["spec"]["containers"][0]
    shared = {m["name"] for m in sidecar["volumeMounts"]} & {m["name"] for m in app["volumeMounts"]}
    assert shared == {"app-logs"}
    config = yaml.safe_load(one(objects, "ConfigMap")["data"]["config.yaml"])
    assert config["sources"]["mode"] == "sidecar"
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    config_file = tmp_path / "config.yaml"
    config_file.write_text(one(objects, "ConfigMap")["data"]["config.yaml"])
    env_vars = {k: v for k, v in os.environ.items() if not k.startswith("SHIPPER_")}
    result = subprocess.run([sys.executable, "-m", "shipper.cli", "config", "--config", str(config_file)],
                            capture_output=True, text=True, timeout=60, env=env_vars, cwd=tmp_path)
    assert result.returncode == 0, result.stderr


def test_kafka_topic_doc_states_the_recommended_settings() -> None:
    text = (DEPLOY / "kafka-topic.md").read_text()
    for setting in ("min.insync.replicas=2", "--replication-factor 3", "retention.ms=31536000000",
                    "max.message.bytes=2097152", "cleanup.policy=delete", "10.5.1"):
        assert setting in text


# ------------------------------------------------------------------------------- against a real server

@pytest.mark.kube
@pytest.mark.parametrize("values", [None, FULL_VALUES], ids=["default", "full"])
def test_server_side_dry_run_accepts_every_object(kube_cluster: KubeCluster, values: Path | None) -> None:
    release = "dryrun-full" if values else "dryrun"
    # A namespace of its own, so the names do not collide with the RBAC the fixture really created.
    with kube_cluster.admin_client() as api:
        create_namespace(api, release)
    objects = render_chart(values_files=[values] if values else [], release=release, namespace=release)
    answers = kube_cluster.apply([o for o in objects if o["kind"] not in CRD_KINDS], namespace=release,
                                 dry_run="All")
    assert len(answers) == len([o for o in objects if o["kind"] not in CRD_KINDS])
    daemonset = next(a for a in answers if a.kind == "DaemonSet")
    # Defaulting ran server-side: the pod template came back complete.
    assert daemonset.spec.template.spec.containers[0].terminationMessagePath == "/dev/termination-log"
    if values:      # the full values turn the verifier on
        deployment = next(a for a in answers if a.kind == "Deployment")
        assert deployment.spec.template.spec.containers[0].terminationMessagePath == "/dev/termination-log"
        assert deployment.spec.revisionHistoryLimit == 10
    with kube_cluster.admin_client() as api:
        from kubernetes import client

        assert not client.AppsV1Api(api).list_namespaced_daemon_set(release).items  # nothing was stored


@pytest.mark.kube
@pytest.mark.parametrize("set_values", [VERIFIER_ON, SHIPPER_KAFKA_REUSED], ids=["plain", "tls-sasl"])
def test_verifier_pod_meets_the_restricted_pod_security_standard(kube_cluster: KubeCluster,
                                                                  set_values: dict[str, str]) -> None:
    """Pod Security admission, enforcing `restricted`, admits the verifier's pod (a dry run of the pod its
    Deployment makes) and refuses the shipper's, which proves it is enforcing."""
    from kubernetes.client.exceptions import ApiException

    namespace = "restricted-" + ("tls" if "secrets.kafkaTls.secretName" in set_values else "plain")
    with kube_cluster.admin_client() as api:
        create_namespace(api, namespace, labels={"pod-security.kubernetes.io/enforce": "restricted",
                                                 "pod-security.kubernetes.io/enforce-version": "latest"})
    objects = render_chart(set_values=set_values, namespace=namespace)

    def pod_of(workload: dict[str, Any]) -> dict[str, Any]:
        template = workload["spec"]["template"]
        return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": workload["metadata"]["name"] + "-0",
                "namespace": namespace, "labels": template["metadata"]["labels"]}, "spec": template["spec"]}

    [answer] = kube_cluster.apply([pod_of(verifier_deployment(objects))], namespace=namespace, dry_run="All")
    assert answer.spec.securityContext.runAsNonRoot is True
    with pytest.raises(ApiException) as refused:
        kube_cluster.apply([pod_of(one(objects, "DaemonSet"))], namespace=namespace, dry_run="All")
    assert refused.value.status == 403 and "restricted" in refused.value.body


@pytest.mark.kube
def test_helm_install_upgrade_uninstall_against_a_real_apiserver(kube_cluster: KubeCluster, tmp_path: Path) -> None:
    """What a platform team runs. No kubelet here, so pods never start; the objects, the release
    bookkeeping, NOTES and the rolling of pods on a config change are all real."""
    from kubernetes import client

    kubeconfig = kube_cluster.write_kubeconfig(tmp_path / "kubeconfig", as_shipper=False)
    common = ["--kubeconfig", str(kubeconfig), "--namespace", "helm-install"]
    installed = helm("install", "shipper", str(CHART_DIR), *common, "--create-namespace",
                     "--set", "secrets.signingKey.secretName=signing-key")
    assert "rollout status daemonset/shipper-audit-shipper" in installed
    assert "WARNING: no signing key" not in installed
    with kube_cluster.admin_client() as api:
        apps = client.AppsV1Api(api)
        before = apps.read_namespaced_daemon_set("shipper-audit-shipper", "helm-install")
        helm("upgrade", "shipper", str(CHART_DIR), *common, "--reuse-values", "--set", "config.kafka.topic=audit")
        after = apps.read_namespaced_daemon_set("shipper-audit-shipper", "helm-install")
        key = "checksum/config"
        assert before.spec.template.metadata.annotations[key] != after.spec.template.metadata.annotations[key]
        assert after.metadata.generation == before.metadata.generation + 1
        helm("uninstall", "shipper", *common, "--wait", "--timeout", "60s")
        assert not apps.list_namespaced_daemon_set("helm-install").items
        rbac = client.RbacAuthorizationV1Api(api)
        assert "shipper-audit-shipper" not in {r.metadata.name for r in rbac.list_cluster_role().items}


@pytest.mark.kube
def test_helm_install_with_the_verifier_follows_the_topic_and_turns_off(kube_cluster: KubeCluster,
                                                                        tmp_path: Path) -> None:
    """The verifier through a real install: NOTES name it, a change of the shipper's topic reaches its
    command line, and verifier.enabled=false removes it on upgrade."""
    from kubernetes import client

    kubeconfig = kube_cluster.write_kubeconfig(tmp_path / "kubeconfig", as_shipper=False)
    common = ["--kubeconfig", str(kubeconfig), "--namespace", "helm-verifier"]
    installed = helm("install", "shipper", str(CHART_DIR), *common, "--create-namespace",
                     "--set", "secrets.signingKey.secretName=signing-key", "--set", "verifier.enabled=true",
                     "--set", "verifier.publicKey.configMapName=audit-shipper-public-key")
    assert "logs deployment/shipper-audit-shipper-verifier" in installed
    assert "WARNING: no public key" not in installed
    with kube_cluster.admin_client() as api:
        apps = client.AppsV1Api(api)
        before = apps.read_namespaced_deployment("shipper-audit-shipper-verifier", "helm-verifier")
        assert before.spec.template.spec.containers[0].args[:4] == ["verify", "--follow", "--group",
                                                                    "shipper-audit-shipper-verifier"]
        helm("upgrade", "shipper", str(CHART_DIR), *common, "--reuse-values", "--set", "config.kafka.topic=audit")
        after = apps.read_namespaced_deployment("shipper-audit-shipper-verifier", "helm-verifier")
        args = after.spec.template.spec.containers[0].args
        assert args[args.index("--topic") + 1] == "audit"
        assert before.spec.template.metadata.annotations["checksum/args"] != \
            after.spec.template.metadata.annotations["checksum/args"]
        helm("upgrade", "shipper", str(CHART_DIR), *common, "--reuse-values", "--set", "verifier.enabled=false")
        assert not apps.list_namespaced_deployment("helm-verifier").items
        assert apps.list_namespaced_daemon_set("helm-verifier").items
        helm("uninstall", "shipper", *common, "--wait", "--timeout", "60s")
