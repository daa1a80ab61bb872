"""The workload that owns a pod, from what the pod object already says (no API call per pod).

A pod's controller ownerReference names its direct owner. One level further is read from names:
- ReplicaSet -> Deployment: the Deployment controller names its ReplicaSets `<deployment>-<hash>` and
  labels their pods `pod-template-hash: <hash>`; the Deployment is the RS name minus `-<hash>`. An RS
  whose name does not end in the pod's hash (made by hand, or by another controller) has no Deployment.
- Job -> CronJob: the CronJob controller names its Jobs `<cronjob>-<scheduled time>`, the time in Unix
  minutes (8 or more digits, older controllers used a longer hash of the time); a Job whose name ends in
  `-` and at least 8 digits is taken as a CronJob's. A Job named `backup-20261128` by hand would be
  taken for CronJob `backup`: the name is all the pod carries.
- StatefulSet, DaemonSet, Job, ReplicaSet without a Deployment: the owner itself.
- ReplicationController: `k8s.replicationcontroller.name`. A bare pod, or a static pod mirrored by its
  Node: no owner keys.
"""
from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

POD_TEMPLATE_HASH = "pod-template-hash"
_CRONJOB_JOB = re.compile(r"^(.+)-(\d{8,})$")

_OWNER_KEYS = {
    "StatefulSet": "k8s.statefulset.name",
    "DaemonSet": "k8s.daemonset.name",
    "ReplicationController": "k8s.replicationcontroller.name",
}


def controller_owner(owner_references: Sequence[Mapping[str, object]] | None) -> tuple[str, str] | None:
    """(kind, name) of the controlling ownerReference, else of the first one; None for a bare pod."""
    if not owner_references:
        return None
    chosen = next((ref for ref in owner_references if ref.get("controller")), owner_references[0])
    kind, name = chosen.get("kind"), chosen.get("name")
    if not isinstance(kind, str) or not isinstance(name, str):
        return None
    return kind, name


def owner_attributes(owner: tuple[str, str] | None, labels: Mapping[str, str]) -> dict[str, str]:
    """Resource keys for the pod's owner workload (k8s.deployment.name, k8s.replicaset.name, ...)."""
    if owner is None:
        return {}
    kind, name = owner
    if kind == "ReplicaSet":
        keys = {"k8s.replicaset.name": name}
        template_hash = labels.get(POD_TEMPLATE_HASH)
        if template_hash and name.endswith("-" + template_hash) and len(name) > len(template_hash) + 1:
            keys["k8s.deployment.name"] = name[:-len(template_hash) - 1]
        return keys
    if kind == "Job":
        keys = {"k8s.job.name": name}
        match = _CRONJOB_JOB.match(name)
        if match is not None:
            keys["k8s.cronjob.name"] = match.group(1)
        return keys
    key = _OWNER_KEYS.get(kind)
    return {key: name} if key else {}


# The workload name that stands for the service when no label names it, looked for in this order.
_WORKLOAD_ORDER = ("k8s.deployment.name", "k8s.statefulset.name", "k8s.daemonset.name", "k8s.cronjob.name",
                   "k8s.job.name", "k8s.replicationcontroller.name", "k8s.replicaset.name")


def workload_name(owner_keys: Mapping[str, str]) -> str | None:
    for key in _WORKLOAD_ORDER:
        name = owner_keys.get(key)
        if name:
            return name
    return None
