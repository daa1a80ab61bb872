"""A real Kubernetes control plane for the tests: etcd and kube-apiserver as child processes on loopback
ports chosen at run time, built from source by scripts/build-kube-tools (cached in
$AUDIT_SHIPPER_CACHE/bin), plus the real helm binary.

There is no kubelet, scheduler or controller-manager. Pods are created with `spec.nodeName` already set
and their `status.containerStatuses` are patched in by hand (`set_container_statuses`); deleted
namespaces stay Terminating and nothing garbage-collects.

Identities (static bearer tokens, `--token-auth-file`):
- admin: group `system:masters`, can do anything;
- shipper: `system:serviceaccount:<ns>:<sa>` with the ServiceAccount groups, so the RBAC objects of the
  chart, once applied (see kube_fixtures.py), give it exactly the chart's permissions.

Every wait is bounded; a process that does not come up raises `KubeStartError` with its log's tail.
"""
from __future__ import annotations

import atexit
import contextlib
import functools
import json
import os
import secrets
import signal
import ssl
import subprocess
import time
import urllib.error
import urllib.request
import weakref
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from .certs import CertificateAuthority, Identity, new_ca
from .ports import free_ports, wait_until_bindable

REPO_ROOT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO_ROOT / "scripts" / "build-kube-tools"
CHART_DIR = REPO_ROOT / "charts" / "audit-shipper"
KUBE_TOOLS = ("kube-apiserver", "etcd", "helm")
#: The Kubernetes version the binaries are built at and the chart is rendered and validated for.
KUBE_VERSION = "1.34.0"

SHIPPER_NAMESPACE = "audit-shipper"
SHIPPER_SERVICE_ACCOUNT = "audit-shipper"
SERVICE_CLUSTER_IP_RANGE = "10.0.0.0/24"


class KubeStartError(RuntimeError):
    """etcd or kube-apiserver did not come up, or a tool could not be built; carries the log's tail."""


class HelmError(subprocess.CalledProcessError):
    """helm exited non-zero; unlike its base class, the message shows what helm said."""

    def __str__(self) -> str:
        return f"{super().__str__()}\n{self.stderr}"


# ---------------------------------------------------------------------------------------------- tools

def cache_dir() -> Path:
    return Path(os.environ.get("AUDIT_SHIPPER_CACHE") or Path.home() / ".cache" / "audit-shipper")


def tool_path(name: str) -> Path:
    """Path of a cached tool (`kube-apiserver`, `etcd`, `helm`). The build script runs once per process:
    a no-op in under a second when the cache is current, a rebuild when tools/kube/ pins changed, and
    the full build (10-20 minutes cold; `make tools` does it before the test run) when it is empty."""
    if name not in KUBE_TOOLS:
        raise ValueError(f"unknown tool {name!r}; one of {KUBE_TOOLS}")
    path = cache_dir() / "bin" / name
    _build_tools()
    if not os.access(path, os.X_OK):
        raise KubeStartError(f"{BUILD_SCRIPT} ran but {path} is still missing")
    return path


@functools.cache
def _build_tools() -> None:
    result = subprocess.run([str(BUILD_SCRIPT)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            timeout=3600)
    if result.returncode != 0:
        raise KubeStartError(f"{BUILD_SCRIPT} failed ({result.returncode}):\n{result.stdout[-4000:]}")


def helm(*args: str, timeout: float = 120) -> str:
    """Run the real helm with `args`; its stdout, or CalledProcessError carrying stderr."""
    env = dict(os.environ)
    # helm keeps caches and config under $HOME by default; keep test runs out of the user's helm setup.
    helm_home = cache_dir() / "helm-home"
    env.update(HELM_CACHE_HOME=str(helm_home / "cache"), HELM_CONFIG_HOME=str(helm_home / "config"),
               HELM_DATA_HOME=str(helm_home / "data"))
    result = subprocess.run([str(tool_path("helm")), *args], capture_output=True, text=True, timeout=timeout,
                            env=env)
    if result.returncode != 0:
        raise HelmError(result.returncode, result.args, result.stdout, result.stderr)
    return result.stdout


def render_chart(*, values_files: Sequence[Path] = (), set_values: Mapping[str, str] | None = None,
                 set_strings: Mapping[str, str] | None = None, release: str = "audit-shipper",
                 namespace: str = SHIPPER_NAMESPACE, chart: Path = CHART_DIR,
                 kube_version: str = KUBE_VERSION) -> list[dict[str, Any]]:
    """`helm template` of the chart, as a list of objects (empty documents dropped). `set_values` go
    through `--set` (helm types them: "true" is a boolean), `set_strings` through `--set-string`."""
    args = ["template", release, str(chart), "--namespace", namespace, "--kube-version", kube_version]
    for values_file in values_files:
        args += ["--values", str(values_file)]
    for key, value in (set_values or {}).items():
        args += ["--set", f"{key}={value}"]
    for key, value in (set_strings or {}).items():
        args += ["--set-string", f"{key}={value}"]
    return [doc for doc in yaml.safe_load_all(helm(*args)) if doc]


def rbac_objects(objects: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The identity and permission objects of a rendered chart, in the order they must be created."""
    order = {"ServiceAccount": 0, "ClusterRole": 1, "ClusterRoleBinding": 2, "Role": 1, "RoleBinding": 2}
    chosen = [obj for obj in objects if obj.get("kind") in order]
    return sorted(chosen, key=lambda obj: order[obj["kind"]])


# -------------------------------------------------------------------------------------------- cluster

@dataclass(frozen=True, slots=True)
class Principal:
    user: str
    groups: tuple[str, ...]
    token: str


@dataclass(frozen=True, slots=True)
class InClusterFiles:
    """What a pod would see: the ServiceAccount files and the service env vars pointing at the API server.

    `env` holds KUBERNETES_SERVICE_HOST/PORT (what the in-cluster loader reads) and SHIPPER_SA_DIR, the
    directory the shipper reads `token` and `ca.crt` from instead of
    /var/run/secrets/kubernetes.io/serviceaccount. Pass `env` to a `shipper run` subprocess, or
    monkeypatch it in-process."""

    env: dict[str, str]
    token_file: Path
    ca_file: Path
    namespace_file: Path


_live_clusters: weakref.WeakSet[KubeCluster] = weakref.WeakSet()


@atexit.register
def _stop_leftover_clusters() -> None:
    # A run interrupted before fixture teardown must not leave etcd and an API server behind (they run
    # in their own sessions, so the terminal's Ctrl-C does not reach them).
    for cluster in list(_live_clusters):
        cluster.stop()


class KubeCluster:
    """etcd + kube-apiserver in `workdir`. `start()` generates certificates and keys once; the API server
    can be killed and started again on the same port (and the same certificates) for outage tests."""

    ready_timeout = 90.0

    def __init__(self, workdir: Path, *, shipper_namespace: str = SHIPPER_NAMESPACE,
                 shipper_service_account: str = SHIPPER_SERVICE_ACCOUNT) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.etcd_client_port, self.etcd_peer_port, self.port = free_ports(3)
        self.host = f"https://127.0.0.1:{self.port}"
        sa_user = f"system:serviceaccount:{shipper_namespace}:{shipper_service_account}"
        self.admin = Principal("test-admin", ("system:masters",), secrets.token_hex(16))
        self.shipper = Principal(sa_user, ("system:serviceaccounts", f"system:serviceaccounts:{shipper_namespace}"),
                                 secrets.token_hex(16))
        self.shipper_namespace = shipper_namespace
        self.shipper_service_account = shipper_service_account
        self.etcd: subprocess.Popen | None = None
        self.apiserver: subprocess.Popen | None = None
        self.ca: CertificateAuthority | None = None
        self.serving: Identity | None = None
        self.apiserver_start_seconds: list[float] = []
        self.etcd_start_seconds: float | None = None

    # -- lifecycle

    def start(self) -> KubeCluster:
        _live_clusters.add(self)
        self._write_credentials()
        self._start_etcd()
        self.start_apiserver()
        return self

    def start_apiserver(self) -> None:
        """Start (or restart after `kill_apiserver`) the API server on the same port; returns once
        /readyz says ok."""
        if self.apiserver is not None and self.apiserver.poll() is None:
            raise RuntimeError("kube-apiserver is already running")
        if not wait_until_bindable(self.port, timeout=30):
            raise KubeStartError(f"port {self.port} is still held after the previous API server exited")
        began = time.monotonic()
        log = self.workdir / "apiserver.log"
        with log.open("ab") as out:
            self.apiserver = subprocess.Popen(self._apiserver_command(), stdout=out, stderr=subprocess.STDOUT,
                                              cwd=self.workdir, start_new_session=True)
        self._wait_ready(log, began)
        self.apiserver_start_seconds.append(time.monotonic() - began)

    def kill_apiserver(self) -> None:
        """SIGKILL the API server (an outage as clients see it: connections refused). etcd keeps running."""
        self._kill(self.apiserver, signal.SIGKILL)

    def stop(self) -> None:
        self._kill(self.apiserver, signal.SIGTERM)
        self._kill(self.etcd, signal.SIGTERM)

    def __enter__(self) -> KubeCluster:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def ca_file(self) -> Path:
        assert self.ca is not None, "start() first"
        return self.ca.cert_file

    # -- clients

    def admin_client(self):
        return self._client(self.admin.token)

    def shipper_client(self):
        return self._client(self.shipper.token)

    def client_for_token(self, token: str):
        return self._client(token)

    def apply(self, objects: Iterable[dict[str, Any]], *, namespace: str = "default", dry_run: str | None = None,
              as_shipper: bool = False) -> list[Any]:
        """`apply_objects` as admin (or as the shipper, to prove what it may not do)."""
        with (self.shipper_client() if as_shipper else self.admin_client()) as api:
            return apply_objects(api, objects, namespace=namespace, dry_run=dry_run,
                                 discovery_cache=self.workdir / "discovery.json")

    def write_kubeconfig(self, path: Path, as_shipper: bool = True) -> Path:
        principal = self.shipper if as_shipper else self.admin
        config = {
            "apiVersion": "v1", "kind": "Config", "current-context": "test",
            "clusters": [{"name": "test", "cluster": {"server": self.host,
                                                       "certificate-authority": str(self.ca_file)}}],
            "users": [{"name": principal.user, "user": {"token": principal.token}}],
            "contexts": [{"name": "test", "context": {"cluster": "test", "user": principal.user,
                                                       "namespace": self.shipper_namespace}}],
        }
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(config))
        path.chmod(0o600)
        return path

    def incluster_env(self, tmpdir: Path, token: str | None = None) -> InClusterFiles:
        """ServiceAccount files as a pod has them (token, ca.crt, namespace) in `tmpdir`, and the env
        vars of the in-cluster path. The token defaults to the shipper's; pass one from
        `serviceaccount_token` to use a real signed JWT instead."""
        directory = Path(tmpdir)
        directory.mkdir(parents=True, exist_ok=True)
        token_file, ca_file, namespace_file = directory / "token", directory / "ca.crt", directory / "namespace"
        token_file.write_text(token or self.shipper.token)
        token_file.chmod(0o600)
        ca_file.write_bytes(self.ca_file.read_bytes())
        namespace_file.write_text(self.shipper_namespace)
        env = {"KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": str(self.port),
               "SHIPPER_SA_DIR": str(directory)}
        return InClusterFiles(env=env, token_file=token_file, ca_file=ca_file, namespace_file=namespace_file)

    def serviceaccount_token(self, namespace: str | None = None, name: str | None = None,
                             expiration_seconds: int = 3600) -> str:
        """A real JWT for a ServiceAccount (TokenRequest), signed by this API server's issuer key."""
        from kubernetes import client

        with self.admin_client() as api:
            request = client.AuthenticationV1TokenRequest(
                spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=expiration_seconds))
            answer = client.CoreV1Api(api).create_namespaced_service_account_token(
                name or self.shipper_service_account, namespace or self.shipper_namespace, request)
        return answer.status.token

    def readyz(self, timeout: float = 2.0) -> str:
        """Body of GET /readyz (raises on connection failure or a non-200 answer)."""
        context = ssl.create_default_context(cafile=str(self.ca_file))
        request = urllib.request.Request(f"{self.host}/readyz",
                                         headers={"Authorization": f"Bearer {self.admin.token}"})
        with urllib.request.urlopen(request, timeout=timeout, context=context) as response:
            return response.read().decode()

    # -- internals

    def _client(self, token: str):
        from kubernetes import client

        configuration = client.Configuration()
        configuration.host = self.host
        configuration.ssl_ca_cert = str(self.ca_file)
        configuration.api_key = {"BearerToken": token}
        configuration.api_key_prefix = {"BearerToken": "Bearer"}
        return client.ApiClient(configuration)

    def _write_credentials(self) -> None:
        pki = self.workdir / "pki"
        if self.ca is not None:
            return
        self.ca = new_ca(pki, name="audit-shipper test kube CA", stem="ca")
        self.serving = self.ca.issue_server(pki, stem="apiserver",
                                            hosts=("127.0.0.1", "localhost", "kubernetes", "kubernetes.default",
                                                   "kubernetes.default.svc", "10.0.0.1"))
        sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        (pki / "sa.key").write_bytes(sa_key.private_bytes(serialization.Encoding.PEM,
                                                          serialization.PrivateFormat.TraditionalOpenSSL,
                                                          serialization.NoEncryption()))
        (pki / "sa.key").chmod(0o600)
        (pki / "sa.pub").write_bytes(sa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
        lines = [f'{p.token},{p.user},{p.user},"{",".join(p.groups)}"' for p in (self.admin, self.shipper)]
        (pki / "tokens.csv").write_text("\n".join(lines) + "\n")
        (pki / "tokens.csv").chmod(0o600)

    def _start_etcd(self) -> None:
        began = time.monotonic()
        peer = f"http://127.0.0.1:{self.etcd_peer_port}"
        client_url = f"http://127.0.0.1:{self.etcd_client_port}"
        command = [str(tool_path("etcd")), "--name", "test", "--data-dir", str(self.workdir / "etcd"),
                   "--listen-client-urls", client_url, "--advertise-client-urls", client_url,
                   "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                   "--initial-cluster", f"test={peer}", "--initial-cluster-state", "new",
                   # Test data is thrown away; fsync would only slow every write.
                   "--unsafe-no-fsync", "--log-level", "warn"]
        log = self.workdir / "etcd.log"
        with log.open("ab") as out:
            self.etcd = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=self.workdir,
                                         start_new_session=True)
        deadline = time.monotonic() + 30
        while True:
            if self.etcd.poll() is not None:
                raise KubeStartError(f"etcd exited with {self.etcd.returncode}:\n{_tail(log)}")
            with contextlib.suppress(OSError, ValueError):
                with urllib.request.urlopen(f"{client_url}/health", timeout=1) as response:
                    if json.loads(response.read()).get("health") == "true":
                        break
            if time.monotonic() > deadline:
                self._kill(self.etcd, signal.SIGKILL)
                raise KubeStartError(f"etcd not healthy within 30s:\n{_tail(log)}")
            time.sleep(0.1)
        self.etcd_start_seconds = time.monotonic() - began

    def _apiserver_command(self) -> list[str]:
        assert self.serving is not None
        pki = self.workdir / "pki"
        return [
            str(tool_path("kube-apiserver")),
            f"--etcd-servers=http://127.0.0.1:{self.etcd_client_port}",
            "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1", f"--secure-port={self.port}",
            f"--cert-dir={self.workdir / 'apiserver-certs'}",
            f"--tls-cert-file={self.serving.cert_file}", f"--tls-private-key-file={self.serving.key_file}",
            f"--client-ca-file={self.ca_file}",
            f"--token-auth-file={pki / 'tokens.csv'}",
            "--authorization-mode=RBAC",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={pki / 'sa.pub'}",
            f"--service-account-signing-key-file={pki / 'sa.key'}",
            f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
            # No controller-manager mints tokens and no kubelet mounts them: the admission plugin
            # would reject pods whose ServiceAccount does not exist yet.
            "--disable-admission-plugins=ServiceAccount",
            "--profiling=false",
            "--v=1",
        ]

    def _wait_ready(self, log: Path, began: float) -> None:
        assert self.apiserver is not None
        deadline = began + self.ready_timeout
        last = ""
        while True:
            if self.apiserver.poll() is not None:
                raise KubeStartError(f"kube-apiserver exited with {self.apiserver.returncode}:\n{_tail(log)}")
            try:
                body = self.readyz(timeout=2)
                if body.strip() == "ok":
                    return
                last = body
            except urllib.error.HTTPError as exc:
                last = exc.read().decode(errors="replace")
            except (OSError, ssl.SSLError) as exc:
                last = str(exc)
            if time.monotonic() > deadline:
                self._kill(self.apiserver, signal.SIGKILL)
                raise KubeStartError(f"kube-apiserver not ready within {self.ready_timeout}s "
                                     f"(last /readyz: {last[-2000:]}):\n{_tail(log)}")
            time.sleep(0.1)

    @staticmethod
    def _kill(process: subprocess.Popen | None, sig: signal.Signals) -> None:
        if process is None or process.poll() is not None:
            return
        process.send_signal(sig)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def _tail(path: Path, size: int = 6000) -> str:
    with contextlib.suppress(OSError):
        return path.read_bytes()[-size:].decode(errors="replace")
    return "(no log)"


# ------------------------------------------------------------------------------- objects (no kubelet)

def apply_objects(api_client, objects: Iterable[dict[str, Any]], *, namespace: str = "default",
                  dry_run: str | None = None, discovery_cache: Path | None = None) -> list[Any]:
    """Create each object through the generic (dynamic) client; `dry_run="All"` validates server-side
    (schema, defaulting, admission) without storing anything. Returns the server's answers.
    `discovery_cache` is where the client keeps API discovery (by default a file in /tmp named after
    the host, which a later cluster on the same port would misread)."""
    from kubernetes.dynamic import DynamicClient

    dynamic = DynamicClient(api_client, cache_file=str(discovery_cache) if discovery_cache else None)
    answers = []
    for obj in objects:
        resource = dynamic.resources.get(api_version=obj["apiVersion"], kind=obj["kind"])
        kwargs: dict[str, Any] = {"body": obj}
        if resource.namespaced:
            kwargs["namespace"] = obj.get("metadata", {}).get("namespace") or namespace
        if dry_run:
            kwargs["dry_run"] = dry_run
        answers.append(resource.create(**kwargs))
    return answers


def create_namespace(api_client, name: str, labels: Mapping[str, str] | None = None):
    from kubernetes import client

    body = client.V1Namespace(metadata=client.V1ObjectMeta(name=name, labels=dict(labels or {})))
    return client.CoreV1Api(api_client).create_namespace(body)


def replicaset_owner(deployment: str, template_hash: str = "5d8f7c9b6", uid: str | None = None
                     ) -> tuple[dict[str, Any], dict[str, str]]:
    """The owner reference and labels of a pod that a Deployment's ReplicaSet made: ownerReference to
    ReplicaSet `<deployment>-<hash>` and label `pod-template-hash` (what lets the enricher name the
    Deployment without another API call)."""
    import uuid

    owner = {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": f"{deployment}-{template_hash}",
             "uid": uid or str(uuid.uuid4()), "controller": True, "blockOwnerDeletion": True}
    return owner, {"pod-template-hash": template_hash}


@dataclass(frozen=True, slots=True)
class ContainerSpec:
    name: str = "app"
    image: str = "registry.example/app:1.0"


def create_pod(api_client, namespace: str, name: str, node_name: str, *,
               labels: Mapping[str, str] | None = None, annotations: Mapping[str, str] | None = None,
               owner_references: Sequence[Mapping[str, Any]] = (),
               containers: Sequence[ContainerSpec] = (ContainerSpec(),)):
    """A pod already bound to `node_name` (no scheduler here). Returns the created V1Pod (its uid is
    what the log directory name carries)."""
    from kubernetes import client

    body = {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": dict(labels or {}),
                     "annotations": dict(annotations or {}), "ownerReferences": [dict(o) for o in owner_references]},
        "spec": {"nodeName": node_name,
                 "containers": [{"name": c.name, "image": c.image} for c in containers]},
    }
    return client.CoreV1Api(api_client).create_namespaced_pod(namespace, body)


@dataclass(frozen=True, slots=True)
class ContainerState:
    """What a kubelet would report for one container."""

    name: str
    container_id: str  # "containerd://<64 hex>"
    image: str = "registry.example/app:1.0"
    image_id: str = "registry.example/app@sha256:" + "ab" * 32
    restart_count: int = 0
    running: bool = True
    ready: bool = True
    started_at: str = "2026-01-01T00:00:00Z"


def container_id(seed: str) -> str:
    """A containerd-style container id derived from `seed` (stable across runs)."""
    import hashlib

    return "containerd://" + hashlib.sha256(seed.encode()).hexdigest()


def set_container_statuses(api_client, namespace: str, name: str, statuses: Sequence[ContainerState], *,
                           phase: str = "Running", pod_ip: str = "10.244.0.10"):
    """Patch pods/status the way a kubelet would after starting the containers."""
    from kubernetes import client

    container_statuses = []
    for s in statuses:
        state = {"running": {"startedAt": s.started_at}} if s.running else \
            {"terminated": {"exitCode": 0, "reason": "Completed", "startedAt": s.started_at,
                            "finishedAt": s.started_at}}
        container_statuses.append({"name": s.name, "containerID": s.container_id, "image": s.image,
                                   "imageID": s.image_id, "restartCount": s.restart_count, "ready": s.ready,
                                   "started": s.running, "state": state})
    body = {"status": {"phase": phase, "podIP": pod_ip, "podIPs": [{"ip": pod_ip}],
                       "containerStatuses": container_statuses}}
    return client.CoreV1Api(api_client).patch_namespaced_pod_status(name, namespace, body)
