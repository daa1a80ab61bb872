"""Hot reload of a running `shipper run` process: its configuration file is changed and SIGHUP sent; the
lines written after follow the new rules, as read back from the real Apache Kafka broker."""
from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from pathlib import Path

import pytest
import yaml

from shipper.demo.reconcile import read_topic
from tests.support import ShipperProcess, new_topic, wait_until, write_config

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(240)]

TS = "2026-03-01T10:00:00.000000000Z"


def write_line(root: Path, pod: str, line: str) -> None:
    directory = root / "pods" / f"shop_{pod}_uid-{pod}" / "app"
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / "0.log", "ab") as handle:
        handle.write(f"{TS} stdout F {line}\n".encode())


def bodies(bootstrap: str, topic: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for record in map(json.loads, asyncio.run(read_topic(bootstrap, topic, idle_s=1.0))):
        if "type" not in record:
            found.setdefault(record["resource"]["k8s.pod.name"], []).append(record["body"])
    return found


def rewrite(config: Path, change) -> None:
    """Edit the YAML and put it in place by a rename (what a ConfigMap volume does)."""
    data = yaml.safe_load(config.read_text())
    change(data)
    tmp = config.with_suffix(".new")
    tmp.write_text(yaml.safe_dump(data))
    os.replace(tmp, config)


def test_sighup_reloads_sources_and_redaction_keeps_the_rest_and_survives_a_broken_file(kafka_broker, tmp_path):
    topic = new_topic(kafka_broker, 1)
    root = tmp_path / "log"
    (root / "containers").mkdir(parents=True)
    write_line(root, "a", "a1 pin=1111 token=t1")
    write_line(root, "b", "b1 pin=2222 token=t2")
    config = write_config(tmp_path / "config.yaml", bootstrap=kafka_broker.bootstrap, node_root=root,
                          state_dir=tmp_path / "state", topic=topic, config_poll_interval_s=1,
                          sources={"exclude": ["*/shop_b_*"]},
                          enrich={"kubernetes": False, "redactions": [
                              {"name": "pin", "pattern": r"pin=\d+", "replacement": "pin=[PIN]"}]})
    shipper = ShipperProcess(config, tmp_path / "shipper.log").start()
    bootstrap = kafka_broker.bootstrap
    try:
        wait_until(lambda: bodies(bootstrap, topic).get("a") == ["a1 pin=[PIN] token=t1"], 60, "a's first line")
        assert "b" not in bodies(bootstrap, topic)

        def new_rules(data: dict) -> None:
            data["sources"]["exclude"] = ["*/shop_a_*"]
            data["enrich"]["redactions"] = [{"name": "token", "pattern": r"token=\w+", "replacement": "token=[T]"}]
            data["kafka"]["linger_ms"] = 50                 # needs a restart: kept, with a warning

        rewrite(config, new_rules)
        shipper.process.send_signal(signal.SIGHUP)
        wait_until(lambda: shipper.metrics().get("audit_shipper_config_generation") == 1, 20, "the reload")
        time.sleep(1)                                   # the next discovery closes a's file
        write_line(root, "a", "a2 pin=3333 token=t3")
        write_line(root, "b", "b2 pin=4444 token=t4")
        wait_until(lambda: "b2 pin=4444 token=[T]" in bodies(bootstrap, topic).get("b", ()), 60, "b's new line")
        time.sleep(2)
        shipped = bodies(bootstrap, topic)
        assert shipped["a"] == ["a1 pin=[PIN] token=t1"]                # a2 is excluded now
        # b's file is new to the shipper: read from its start, as at a restart with this configuration.
        assert shipped["b"] == ["b1 pin=2222 token=[T]", "b2 pin=4444 token=[T]"]
        log = shipper.log_text()
        assert "kafka.linger_ms changed (5 -> 50) but needs a restart; keeping 5" in log
        assert "applied sources.exclude, enrich.redactions (generation 1)" in log

        broken = config.with_suffix(".new")
        broken.write_text(config.read_text() + "sources: [unclosed\n")          # not YAML any more
        os.replace(broken, config)
        shipper.process.send_signal(signal.SIGHUP)
        wait_until(lambda: shipper.metrics().get("audit_shipper_config_reload_failures_total", 0) >= 1, 20,
                   "the refused reload")
        write_line(root, "a", "a3 pin=5555 token=t5")
        write_line(root, "b", "b3 pin=6666 token=t6")
        wait_until(lambda: "b3 pin=6666 token=[T]" in bodies(bootstrap, topic).get("b", ()), 60,
                   "b's line under the kept configuration")
        time.sleep(1)
        assert bodies(bootstrap, topic)["a"] == ["a1 pin=[PIN] token=t1"]
        metrics = shipper.metrics()
        assert metrics["audit_shipper_config_generation"] == 1
        assert "configuration reload (SIGHUP) failed; the running configuration stays" in shipper.log_text() \
            or "configuration reload (the file changed) failed" in shipper.log_text()
        assert shipper.alive()
    finally:
        shipper.stop()
