"""The Helm chart, rendered by the real helm: lint-clean, every object valid for Kubernetes 1.34 (schemas
offline, and a server-side dry run against a real kube-apiserver), least privilege, and in step with
the product (its settings model accepts the rendered config; alerts and dashboard name real metrics)."""
from __future__ import annotations

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
    assert kinds == ["ClusterRole", "ClusterRoleBinding", "ConfigMap", "DaemonSet", "PrometheusRule", "Service",
                     "ServiceAccount", "ServiceMonitor"]
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
    assert one(full_objects, "Service")["spec"]["ports"][0]["port"] == 9102
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

def product_series_names() -> set[str]:
    """Every series name the shipper can expose, from its own metric declarations."""
    names: set[str] = set()
    for family in Metrics().registry.collect():
        suffixes = {"counter": ["_total", "_created"], "gauge": [""], "histogram": ["_bucket", "_sum", "_count",
                    "_created"], "summary": ["_sum", "_count", "_created", ""]}[family.type]
        names.update(family.name + suffix for suffix in suffixes)
    return names


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
    monitor = one(full_objects, "ServiceMonitor")
    jsonschema.validate(monitor, SERVICE_MONITOR_SCHEMA)
    service = one(full_objects, "Service")
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
    rules = {r["alert"]: r for group in rule["spec"]["groups"] for r in group["rules"]}
    assert {"AuditShipperGapRecords", "AuditShipperBackpressure", "AuditShipperWalNearlyFull",
            "AuditShipperKafkaSendErrors", "AuditShipperLagging", "AuditShipperNotRunning",
            "AuditShipperNoCheckpoints"} <= rules.keys()
    assert "audit_shipper_gap_records_total" in rules["AuditShipperGapRecords"]["expr"]
    assert "audit_shipper_backpressure_active" in rules["AuditShipperBackpressure"]["expr"]
    wal_expr = rules["AuditShipperWalNearlyFull"]["expr"]
    assert "audit_shipper_wal_bytes / audit_shipper_wal_limit_bytes) > 0.7" in wal_expr
    assert "audit_shipper_kafka_send_errors_total" in rules["AuditShipperKafkaSendErrors"]["expr"]
    known = product_series_names()
    for name, r in rules.items():
        used = set(re.findall(r"\baudit_shipper_[a-z0-9_]+", r["expr"]))
        assert used and used <= known, f"{name} names unknown metrics {used - known}"
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
    known = product_series_names()
    used: set[str] = set()
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            names = set(re.findall(r"\baudit_shipper_[a-z0-9_]+", target["expr"]))
            assert names <= known, f"{panel['title']}: unknown {names - known}"
            assert _balanced(target["expr"]), target["expr"]
            used |= names
    for required in ("audit_shipper_gap_records_total", "audit_shipper_backpressure_active", "audit_shipper_wal_bytes",
                     "audit_shipper_wal_limit_bytes", "audit_shipper_kafka_send_errors_total",
                     "audit_shipper_end_to_end_lag_seconds_bucket"):
        assert required in used


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
    with kube_cluster.admin_client() as api:
        from kubernetes import client

        assert not client.AppsV1Api(api).list_namespaced_daemon_set(release).items  # nothing was stored


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
