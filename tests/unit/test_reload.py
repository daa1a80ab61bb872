"""Hot reload (shipper/reload.py): what a new file may change, what it may not, a bad file, and the
components taking the new settings in. tests/integration/test_config_reload.py does it to a running
shipper process through Kafka."""
from __future__ import annotations

import asyncio
import json
import logging
import os
from pathlib import Path

import pytest
import yaml

from shipper.config import Settings, load_settings
from shipper.enrich import build_provider
from shipper.enrich.provider import MetadataProvider
from shipper.enrich.watch import Health, Relist
from shipper.ingest import Ingest
from shipper.metrics import Metrics
from shipper.reload import ConfigReloader, merge
from shipper.state import Snapshot
from tests.unit.test_enrich_cache import NODE, namespace_object, pod_object
from tests.unit.test_enrich_cache import ref as container_ref
from tests.unit.test_pod_control import collect_all, cri, write_pod


pytestmark = pytest.mark.usefixtures("no_shipper_env")


def write_yaml(path: Path, config: dict) -> Path:
    # Written aside and renamed, as a ConfigMap volume changes: never seen half-written.
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(config))
    os.replace(tmp, path)
    return path


BASE = {"node_name": NODE, "kafka": {"topic": "logs"}, "sources": {"exclude": ["*/skip*"]}}


class Applied:
    def __init__(self) -> None:
        self.settings: list[Settings] = []

    def __call__(self, settings: Settings) -> None:
        self.settings.append(settings)


def reloader(tmp_path: Path, config: dict = BASE) -> tuple[ConfigReloader, Applied, Path]:
    path = write_yaml(tmp_path / "config.yaml", config)
    applied = Applied()
    return ConfigReloader(load_settings(str(path)), str(path), Metrics(), applied), applied, path


def sample(r: ConfigReloader, name: str) -> float:
    return r.metrics.registry.get_sample_value(name) or 0.0


def test_merge_takes_reloadable_options_and_keeps_the_rest():
    running = Settings(node_name=NODE)
    loaded = Settings(node_name=NODE, sources={"exclude": ["*x*"], "read_size": 8192}, kafka={"topic": "other"},
                      log_level="DEBUG", enrich={"redactions": [{"name": "pin", "pattern": r"pin=\d+"}]})
    merged, applied, needs_restart = merge(running, loaded)
    assert applied == ["sources.exclude", "enrich.redactions", "log_level"]
    assert needs_restart == ["sources.read_size", "kafka.topic"]
    assert merged.sources.exclude == ["*x*"] and merged.enrich.redactions[0].name == "pin"
    assert merged.log_level == "DEBUG"
    assert merged.kafka.topic == "logs" and merged.sources.read_size == running.sources.read_size
    assert merge(merged, merged)[1:] == ([], [])


def test_reload_applies_a_changed_file_and_counts_the_generation(tmp_path, caplog):
    r, applied, path = reloader(tmp_path)
    assert not r.reload("SIGHUP") and applied.settings == []          # nothing changed
    write_yaml(path, BASE | {"sources": {"exclude": ["*/other*"]}, "kafka": {"topic": "elsewhere", "linger_ms": 50},
                             "enrich": {"redactions": [{"name": "pin", "pattern": r"pin=\d+"}]}})
    with caplog.at_level(logging.WARNING, logger="shipper.reload"):
        assert r.reload("SIGHUP")
    assert [s.sources.exclude for s in applied.settings] == [["*/other*"]]
    assert applied.settings[0].kafka.topic == "logs" and applied.settings[0].kafka.linger_ms == 5
    assert r.settings is applied.settings[0]
    assert sample(r, "audit_shipper_config_generation") == 1
    warnings = [record.getMessage() for record in caplog.records]
    assert len(warnings) == 2
    assert "kafka.topic changed ('logs' -> 'elsewhere') but needs a restart" in warnings[0]
    assert "kafka.linger_ms" in warnings[1]


@pytest.mark.parametrize("content, message", [
    ("sources: [unclosed", "not valid YAML"),
    ("sources:\n  exclude: 7\n", "sources.exclude"),
    ("enrich:\n  namespace_selector: 'a in b'\n", "enrich.namespace_selector: not a label selector"),
    ("enrich:\n  redactions: [{name: x, pattern: '('}]\n", "not a valid regular expression"),
    ("kafka:\n  topik: x\n", "kafka.topik"),
])
def test_a_bad_file_keeps_the_running_configuration_and_counts_the_failure(tmp_path, caplog, content, message):
    r, applied, path = reloader(tmp_path)
    before = r.settings
    path.write_text(content)
    with caplog.at_level(logging.ERROR, logger="shipper.reload"):
        assert not r.reload("SIGHUP")
    assert applied.settings == [] and r.settings is before
    assert sample(r, "audit_shipper_config_reload_failures_total") == 1
    assert sample(r, "audit_shipper_config_generation") == 0
    assert message in caplog.text and "the running configuration stays" in caplog.text


def test_a_missing_file_is_a_failure_too(tmp_path):
    r, applied, path = reloader(tmp_path)
    path.unlink()
    assert not r.reload("SIGHUP")
    assert sample(r, "audit_shipper_config_reload_failures_total") == 1


def test_without_a_file_sighup_changes_nothing():
    applied = Applied()
    r = ConfigReloader(Settings(node_name=NODE), None, Metrics(), applied)
    assert not r.reload("SIGHUP") and applied.settings == []


async def test_run_reloads_on_sighup_and_on_a_settled_change_of_the_file(tmp_path):
    r, applied, path = reloader(tmp_path)
    hangup = asyncio.Event()
    task = asyncio.create_task(r.run(hangup, 0.05, ready=lambda: True))
    try:
        write_yaml(path, BASE | {"sources": {"exclude": ["*/a*"]}})
        await _until(lambda: len(applied.settings) == 1)
        assert applied.settings[0].sources.exclude == ["*/a*"]
        await asyncio.sleep(0.3)
        assert len(applied.settings) == 1                     # once per change
        write_yaml(path, BASE | {"sources": {"exclude": ["*/b*"]}})
        hangup.set()
        await _until(lambda: len(applied.settings) == 2)
        await asyncio.sleep(0.3)
        assert [s.sources.exclude for s in applied.settings] == [["*/a*"], ["*/b*"]]
        assert sample(r, "audit_shipper_config_generation") == 2
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_nothing_is_applied_before_the_components_are_ready(tmp_path):
    r, applied, path = reloader(tmp_path)
    ready = False
    hangup = asyncio.Event()
    task = asyncio.create_task(r.run(hangup, 0.05, ready=lambda: ready))
    try:
        write_yaml(path, BASE | {"sources": {"exclude": ["*/a*"]}})
        hangup.set()
        await asyncio.sleep(0.3)
        assert applied.settings == []
        ready = True
        await _until(lambda: len(applied.settings) == 1)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def _until(predicate, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.02)


# -- the components ---------------------------------------------------------------------------------------

def node_settings(tmp_path: Path, **sources) -> Settings:
    return Settings(node_name=NODE, enrich={"kubernetes": False},
                    sources={"roots": [str(tmp_path / "pods")], "symlink_roots": [], "discover_interval_s": 60,
                             **sources},
                    wal={"dir": str(tmp_path / "wal")}, state={"dir": str(tmp_path)})


def test_ingest_closes_files_that_stop_matching_and_resumes_them_where_they_stopped(tmp_path):
    pods = tmp_path / "pods"
    write_pod(pods, "shop", "a", "uid-1", "app", cri("a1"))
    write_pod(pods, "shop", "b", "uid-2", "app", cri("b1"))
    settings = node_settings(tmp_path, exclude=["*_b_*"])
    provider = build_provider(settings, Metrics())
    ingest = Ingest(settings, Snapshot(), provider.metrics, provider)
    bodies = lambda: [r["body"] for _t, r in collect_all(ingest) if "type" not in r]
    assert bodies() == ["a1"]
    write_pod(pods, "shop", "a", "uid-1", "app", cri("a2"))
    ingest.reconfigure(node_settings(tmp_path, exclude=["*_a_*"]))
    assert bodies() == ["b1"]                          # a2 is not read: a's file was closed first
    write_pod(pods, "shop", "a", "uid-1", "app", cri("a3"))
    write_pod(pods, "shop", "b", "uid-2", "app", cri("b2"))
    assert bodies() == ["b2"]
    ingest.reconfigure(node_settings(tmp_path))
    assert bodies() == ["a2", "a3"]                    # a resumes where it was closed, b goes on
    ingest.close()


def test_provider_reconfigure_changes_filters_redaction_and_selector_for_the_next_lines():
    settings = Settings(node_name=NODE, enrich={"label_include": ["tier"]})
    p = MetadataProvider(settings, Metrics())
    p.apply(Health("pods", True))
    p.apply(Relist("namespaces", [namespace_object("shop", {"team": "checkout"})]))
    p.apply(Relist("pods", [pod_object()]))
    ref = container_ref()
    assert json.loads(p.resource_json(ref))["k8s.pod.labels"] == {"tier": "web"}
    assert p.body_processor(ref)("pin=1234") is None
    p.reconfigure(Settings(node_name=NODE, enrich={
        "label_include": ["app.kubernetes.io/*"], "namespace_selector": "team!=checkout",
        "redactions": [{"name": "pin", "pattern": r"pin=\d+", "replacement": "pin=[PIN]"}]}))
    assert json.loads(p.resource_json(ref))["k8s.pod.labels"] == {"app.kubernetes.io/name": "api"}
    assert p.body_processor(ref)("pin=1234")[0] == "pin=[PIN]"
    assert p.exclusion(ref) == "namespace_selector"
