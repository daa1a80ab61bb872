# Until tests/conftest.py registers tests.harness.kube_fixtures as a plugin (pytest refuses
# `pytest_plugins` outside the root conftest); the fixtures share one cluster either way.
from tests.harness.kube_fixtures import chart_objects, kube_cluster, kube_namespace  # noqa: F401
