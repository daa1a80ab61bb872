"""Per-pod control by annotation: what a pod's author may ask of the shipper for the pod's own logs.

- `audit-shipper.io/exclude: "true"`: the pod's lines are read and dropped (counted), never shipped;
- `audit-shipper.io/parse-json: "true"|"false"`: overrides enrich.parse_json_bodies;
- `audit-shipper.io/multiline-start: "<regex>"`: overrides sources.multiline_start_pattern (`""` turns
  grouping off for the pod);
- `audit-shipper.io/topic: "<topic>"`: the topic of the pod's chains, if enrich.topic_annotation_allow
  allows it.

Each may be given for one container as `<annotation>-<container>` (e.g.
`audit-shipper.io/exclude-sidecar`), which wins over the pod-wide one either way. A value that cannot
be used (a regex that does not compile, a name Kafka would refuse or the configuration does not
allow) is logged once per pod and value, counted in `annotation_errors_total{annotation}`, and
ignored: the configured default applies. Nothing a pod says can stop the shipper.
"""
from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from fnmatch import fnmatchcase

from .cache import PodInfo

log = logging.getLogger("shipper.enrich")

PREFIX = "audit-shipper.io/"
EXCLUDE = PREFIX + "exclude"
PARSE_JSON = PREFIX + "parse-json"
MULTILINE_START = PREFIX + "multiline-start"
TOPIC = PREFIX + "topic"

# What Kafka accepts as a topic name (kafka.common.internals.Topic).
_TOPIC_NAME = re.compile(r"[A-Za-z0-9._-]{1,249}")


def container_annotation(annotations: Mapping[str, str], key: str, container: str) -> tuple[str, str] | None:
    """(the key that applies, its value): `<key>-<container>` if the pod has it, else `<key>`."""
    specific = f"{key}-{container}"
    value = annotations.get(specific)
    if value is not None:
        return specific, value
    value = annotations.get(key)
    if value is not None:
        return key, value
    return None


def topic_problem(topic: str, allowed: Sequence[str]) -> str:
    """Why `topic` cannot be used ('' when it can)."""
    if not _TOPIC_NAME.fullmatch(topic) or topic in (".", ".."):
        return "not a Kafka topic name (1-249 of the characters a-z A-Z 0-9 . _ -)"
    if not any(fnmatchcase(topic, pattern) for pattern in allowed):
        return "not allowed by enrich.topic_annotation_allow"
    return ""


def pattern_problem(pattern: str) -> str:
    """Why `pattern` cannot be a multiline start pattern ('' when it can); compiled as the parser does."""
    try:
        re.compile(pattern.encode())
    except (re.error, ValueError, OverflowError, RecursionError) as exc:
        return f"not a valid regular expression: {exc}"
    return ""


class PodAnnotations:
    """Reads the control annotations of a pod for one container (from the ingest thread).

    `logged` remembers what was reported, so each unusable value is logged and counted once; the
    provider drops the entries of pods that left the cache."""

    def __init__(self, metrics, topic_allow: Sequence[str]) -> None:
        self.metrics = metrics
        self.topic_allow = tuple(topic_allow)
        self.logged: set[tuple[str, str, str]] = set()

    def excluded(self, pod: PodInfo, container: str) -> bool:
        found = container_annotation(pod.annotations, EXCLUDE, container) if pod.annotations else None
        if found is None or found[1].strip().lower() != "true":
            return False
        key, value = found
        if self._first_time(pod, key, container):
            log.info("excluding logs of %s/%s container %s (pod uid %s): annotation %s: %r", pod.namespace,
                     pod.name, container, pod.uid, key, value)
        return True

    def parse_json(self, pod: PodInfo, container: str) -> bool | None:
        found = container_annotation(pod.annotations, PARSE_JSON, container) if pod.annotations else None
        return None if found is None else found[1].strip().lower() == "true"

    def multiline_start(self, pod: PodInfo, container: str) -> str | None:
        """The pod's pattern ('' for none), or None: no usable annotation, the configured one applies."""
        found = container_annotation(pod.annotations, MULTILINE_START, container) if pod.annotations else None
        if found is None:
            return None
        key, value = found
        if value == "":
            return ""
        problem = pattern_problem(value)
        if problem:
            self._unusable(pod, key, value, container, "multiline-start", problem,
                           "sources.multiline_start_pattern applies")
            return None
        return value

    def topic(self, pod: PodInfo, container: str) -> str | None:
        """The topic the pod asks for, or None: no usable annotation, kafka.topic applies."""
        found = container_annotation(pod.annotations, TOPIC, container) if pod.annotations else None
        if found is None:
            return None
        key, value = found
        problem = topic_problem(value.strip(), self.topic_allow)
        if problem:
            self._unusable(pod, key, value, container, "topic", problem, "kafka.topic applies")
            return None
        return value.strip()

    def forget_pods_except(self, uids: Mapping[str, object]) -> None:
        self.logged = {seen for seen in self.logged if seen[0] in uids}

    def _first_time(self, pod: PodInfo, key: str, value: str) -> bool:
        seen = (pod.uid, key, value)
        if seen in self.logged:
            return False
        self.logged.add(seen)
        return True

    def _unusable(self, pod: PodInfo, key: str, value: str, container: str, kind: str, problem: str,
                  fallback: str) -> None:
        if self._first_time(pod, key, value):
            self.metrics.annotation_errors.labels(annotation=kind).inc()
            log.warning("pod %s/%s (uid %s) container %s: annotation %s: %r is %s; %s", pod.namespace, pod.name,
                        pod.uid, container, key, value, problem, fallback)


# The per-pod section of docs/configuration.md (config.reference_markdown).
REFERENCE = [
    "## Per-pod annotations",
    "",
    "A pod's author may ask this of the shipper for the pod's logs (shipper/enrich/pod_control.py). Each may "
    "also be given for one container as `<annotation>-<container>`, which wins over the pod-wide one. A value "
    "that cannot be used is logged once per pod and value, counted in "
    "`audit_shipper_annotation_errors_total{annotation}` and ignored: the configured default applies.",
    "",
    "| annotation | value | takes effect |",
    "|---|---|---|",
    "| `audit-shipper.io/exclude` | `\"true\"`: read and dropped, counted in "
    "`audit_shipper_excluded_entries_total{reason=\"annotation\"}` | at once, both ways; lines of the excluded "
    "time are never shipped |",
    "| `audit-shipper.io/parse-json` | `\"true\"` / `\"false\"`: overrides `enrich.parse_json_bodies` | at once |",
    "| `audit-shipper.io/multiline-start` | a regular expression (`\"\"`: no grouping); overrides "
    "`sources.multiline_start_pattern` | when the shipper starts reading a log file (at start, or when the "
    "file appears: a container's restart brings a new one) |",
    "| `audit-shipper.io/topic` | a topic allowed by `enrich.topic_annotation_allow`; overrides `kafka.topic` | "
    "when a chain is first read by this process: a chain never changes topic while the shipper runs; after a "
    "restart it continues in the topic named then |",
    "",
    "Namespaces: `enrich.namespace_selector` drops the logs of pods whose namespace's labels do not match "
    "(`audit_shipper_excluded_entries_total{reason=\"namespace_selector\"}`), following label changes at once; "
    "a pod cannot override it.",
]
