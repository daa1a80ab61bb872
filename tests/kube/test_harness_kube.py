"""The control plane the integration tests rely on behaves like a cluster's, and the shipper's identity
has exactly the chart's permissions: node-filtered pod list+watch and namespace list, nothing else."""
from __future__ import annotations

import pytest
import urllib3
from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException
from kubernetes.config.incluster_config import InClusterConfigLoader

from tests.harness.kube import (
    ContainerState,
    KubeCluster,
    container_id,
    create_pod,
    replicaset_owner,
    set_container_statuses,
)

pytestmark = [pytest.mark.kube, pytest.mark.helm]


def test_apiserver_is_ready_and_reports_its_real_version(kube_cluster: KubeCluster) -> None:
    assert kube_cluster.readyz() == "ok"
    with kube_cluster.admin_client() as api:
        version = client.VersionApi(api).get_code()
    assert (version.major, version.minor) == ("1", "34")
    assert version.git_version.startswith("v1.34.")


def _pod_on_node_a(kube_cluster: KubeCluster, namespace: str) -> client.V1Pod:
    owner, hash_label = replicaset_owner("checkout")
    with kube_cluster.admin_client() as api:
        pod = create_pod(api, namespace, "checkout-5d8f7c9b6-x2x7q", "node-a",
                         labels={"app.kubernetes.io/name": "checkout", **hash_label},
                         annotations={"audit-shipper.io/parse-json": "true"}, owner_references=[owner])
        create_pod(api, namespace, "elsewhere", "node-b")
        set_container_statuses(api, namespace, pod.metadata.name,
                               [ContainerState("app", container_id(pod.metadata.uid), restart_count=2)])
    return pod


def test_shipper_lists_and_watches_only_its_node_pods(kube_cluster: KubeCluster, kube_namespace: str) -> None:
    created = _pod_on_node_a(kube_cluster, kube_namespace)
    with kube_cluster.shipper_client() as api:
        core = client.CoreV1Api(api)
        listed = core.list_pod_for_all_namespaces(field_selector="spec.nodeName=node-a")
        mine = [p for p in listed.items if p.metadata.namespace == kube_namespace]
        assert [p.metadata.name for p in mine] == [created.metadata.name]
        pod = mine[0]
        assert pod.metadata.uid == created.metadata.uid
        assert pod.metadata.owner_references[0].kind == "ReplicaSet"
        assert pod.metadata.labels["pod-template-hash"] == "5d8f7c9b6"
        status = pod.status.container_statuses[0]
        assert (status.container_id, status.restart_count) == (container_id(created.metadata.uid), 2)

        events = watch.Watch().stream(core.list_pod_for_all_namespaces, field_selector="spec.nodeName=node-a",
                                      resource_version=listed.metadata.resource_version,
                                      allow_watch_bookmarks=True, timeout_seconds=10)
        with kube_cluster.admin_client() as admin:
            create_pod(admin, kube_namespace, "late", "node-a")
            create_pod(admin, kube_namespace, "late-other-node", "node-b")
        seen = []
        for event in events:
            if event["type"] == "BOOKMARK":
                continue
            seen.append((event["type"], event["object"].metadata.name))
            break
        assert seen == [("ADDED", "late")]

        namespaces = {ns.metadata.name: ns.metadata.labels for ns in core.list_namespace().items}
        assert namespaces[kube_namespace]["team"] == "audit"


def test_shipper_identity_is_refused_everything_else(kube_cluster: KubeCluster, kube_namespace: str) -> None:
    with kube_cluster.shipper_client() as api:
        core = client.CoreV1Api(api)
        refused = [
            lambda: core.list_secret_for_all_namespaces(),
            lambda: core.list_namespaced_secret(kube_namespace),
            lambda: core.read_namespaced_secret("anything", "audit-shipper"),
            lambda: core.list_config_map_for_all_namespaces(),
            lambda: core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name="nope"))),
            lambda: core.delete_collection_namespaced_pod(kube_namespace),
            lambda: core.patch_namespaced_pod_status("x", kube_namespace, {"status": {}}),
            lambda: client.RbacAuthorizationV1Api(api).create_cluster_role_binding(
                {"metadata": {"name": "escalate"}, "roleRef": {"apiGroup": "rbac.authorization.k8s.io",
                 "kind": "ClusterRole", "name": "cluster-admin"}, "subjects": []}),
            lambda: client.AppsV1Api(api).list_replica_set_for_all_namespaces(),
        ]
        for call in refused:
            with pytest.raises(ApiException) as info:
                call()
            assert info.value.status == 403, info.value.body


def test_incluster_files_reach_the_apiserver_as_the_shipper(kube_cluster: KubeCluster, tmp_path) -> None:
    real_token = kube_cluster.serviceaccount_token()  # a signed JWT, as a projected volume would hold
    files = kube_cluster.incluster_env(tmp_path / "sa", token=real_token)
    configuration = client.Configuration()
    InClusterConfigLoader(token_filename=str(files.token_file), cert_filename=str(files.ca_file),
                          environ=files.env).load_and_set(configuration)
    with client.ApiClient(configuration) as api:
        review = client.AuthenticationV1Api(api).create_self_subject_review({"apiVersion": "authentication.k8s.io/v1",
                                                                            "kind": "SelfSubjectReview"})
        assert review.status.user_info.username == "system:serviceaccount:audit-shipper:audit-shipper"
        client.CoreV1Api(api).list_namespace(limit=1)
        with pytest.raises(ApiException) as info:
            client.CoreV1Api(api).list_secret_for_all_namespaces()
        assert info.value.status == 403


def test_incluster_env_drives_the_products_own_incluster_path(kube_cluster: KubeCluster, tmp_path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from shipper.config import EnrichConfig
    from shipper.enrich.provider import api_client_from

    files = kube_cluster.incluster_env(tmp_path / "sa")
    for name, value in files.env.items():
        monkeypatch.setenv(name, value)
    with api_client_from(EnrichConfig()) as api:
        review = client.AuthenticationV1Api(api).create_self_subject_review({"apiVersion": "authentication.k8s.io/v1",
                                                                            "kind": "SelfSubjectReview"})
    assert review.status.user_info.username == kube_cluster.shipper.user


def test_kubeconfig_for_the_shipper(kube_cluster: KubeCluster, tmp_path) -> None:
    from kubernetes import config

    path = kube_cluster.write_kubeconfig(tmp_path / "kubeconfig", as_shipper=True)
    with config.new_client_from_config(str(path)) as api:
        client.CoreV1Api(api).list_pod_for_all_namespaces(field_selector="spec.nodeName=node-a", limit=1)
        with pytest.raises(ApiException) as info:
            client.CoreV1Api(api).list_secret_for_all_namespaces()
        assert info.value.status == 403


def test_apiserver_restarts_on_the_same_port_with_its_data(kube_cluster: KubeCluster, kube_namespace: str) -> None:
    """Outage tests kill the API server and bring it back; clients keep their address and credentials."""
    with kube_cluster.admin_client() as api:
        create_pod(api, kube_namespace, "survivor", "node-a")
    port = kube_cluster.port
    kube_cluster.kill_apiserver()
    with kube_cluster.shipper_client() as api:
        with pytest.raises(urllib3.exceptions.MaxRetryError):
            client.CoreV1Api(api).list_namespace(_request_timeout=2)
    kube_cluster.start_apiserver()
    assert kube_cluster.port == port
    with kube_cluster.shipper_client() as api:
        pods = client.CoreV1Api(api).list_pod_for_all_namespaces(field_selector="spec.nodeName=node-a")
    assert "survivor" in {p.metadata.name for p in pods.items}
