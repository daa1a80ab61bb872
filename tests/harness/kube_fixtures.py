"""pytest fixtures for the real control plane (register with `pytest_plugins = ["tests.harness.kube_fixtures"]`
in the root conftest, or import the fixtures into a directory's conftest.py).

- `kube_cluster` (session): etcd + kube-apiserver, with the chart's ServiceAccount, ClusterRole and
  ClusterRoleBinding (as `helm template` renders them) applied, so `.shipper_client()` has exactly the
  permissions the chart grants — no more, or a test of the shipper would pass here and fail in a cluster.
- `kube_namespace`: a fresh namespace per test (labelled, so tests can check label enrichment); left
  behind at the end because nothing here would finish deleting it.
- `chart_objects`: the chart rendered with default values (session).
"""
from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from .kube import SHIPPER_NAMESPACE, KubeCluster, create_namespace, rbac_objects, render_chart

_namespace_numbers = itertools.count(1)

# Several conftests may import these fixtures before the root conftest registers the plugin; each import
# makes its own session fixture, so the cluster behind them is shared and stopped by the last user.
_shared_lock = threading.Lock()
_shared: dict[str, Any] = {"cluster": None, "users": 0}


@pytest.fixture(scope="session")
def chart_objects() -> list[dict[str, Any]]:
    return render_chart()


@pytest.fixture(scope="session")
def kube_cluster(tmp_path_factory: pytest.TempPathFactory, chart_objects: list[dict[str, Any]]
                 ) -> Iterator[KubeCluster]:
    with _shared_lock:
        if _shared["cluster"] is None:
            _shared["cluster"] = _start_cluster(tmp_path_factory, chart_objects)
        _shared["users"] += 1
        cluster = _shared["cluster"]
    try:
        yield cluster
    finally:
        with _shared_lock:
            _shared["users"] -= 1
            if _shared["users"] == 0:
                _shared["cluster"] = None
                cluster.stop()


def _start_cluster(tmp_path_factory: pytest.TempPathFactory, chart_objects: list[dict[str, Any]]) -> KubeCluster:
    cluster = KubeCluster(tmp_path_factory.mktemp("kube"))
    cluster.start()
    try:
        with cluster.admin_client() as api:
            create_namespace(api, SHIPPER_NAMESPACE)
        cluster.apply(rbac_objects(chart_objects), namespace=SHIPPER_NAMESPACE)
    except BaseException:
        cluster.stop()
        raise
    return cluster


@pytest.fixture
def kube_namespace(kube_cluster: KubeCluster) -> str:
    name = f"test-{next(_namespace_numbers)}"
    with kube_cluster.admin_client() as api:
        create_namespace(api, name, {"team": "audit", "env": "test"})
    return name
