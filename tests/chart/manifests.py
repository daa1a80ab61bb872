"""deploy/manifests/audit-shipper.yaml: the chart rendered with default values, for clusters installed
without Helm. A test keeps it in step with the chart; regenerate it with

    .venv/bin/python -m tests.chart.manifests
"""
from __future__ import annotations

import sys

from tests.harness.kube import CHART_DIR, KUBE_VERSION, REPO_ROOT, SHIPPER_NAMESPACE, helm

MANIFEST = REPO_ROOT / "deploy" / "manifests" / "audit-shipper.yaml"

_HEADER = f"""\
# audit-shipper, plain manifests: `helm template` of charts/audit-shipper with default values,
# release "audit-shipper" in namespace "{SHIPPER_NAMESPACE}". Generated; do not edit by hand:
#   .venv/bin/python -m tests.chart.manifests
# Edit config.yaml in the ConfigMap (kafka.bootstrap_servers at least) before applying:
#   kubectl apply -f deploy/manifests/audit-shipper.yaml
---
apiVersion: v1
kind: Namespace
metadata:
  name: {SHIPPER_NAMESPACE}
  labels:
    app.kubernetes.io/part-of: audit-shipper
    # The shipper runs as root with CAP_DAC_READ_SEARCH and hostPath mounts (see the chart's values).
    pod-security.kubernetes.io/enforce: privileged
"""


def render_manifests() -> str:
    rendered = helm("template", "audit-shipper", str(CHART_DIR), "--namespace", SHIPPER_NAMESPACE,
                    "--kube-version", KUBE_VERSION)
    return _HEADER + rendered


def main() -> int:
    MANIFEST.parent.mkdir(parents=True, exist_ok=True)
    MANIFEST.write_text(render_manifests())
    print(f"wrote {MANIFEST.relative_to(REPO_ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
