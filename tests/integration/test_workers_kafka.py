"""`workers: N` against a real Kafka broker: N processes ship every line once, their chains verify, the
supervisor's /metrics shows each worker; a change of the worker count sends what the old WAL holds
first, then the chains go on in their new workers (verify finds no fork, no loss)."""
from __future__ import annotations

import pytest
import yaml

from shipper.demo.simnode import SimNode
from tests.support import ShipperProcess, new_topic, run_verify, settle, signed_shipper, wait_until

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(300)]


def test_two_workers_ship_every_line_once_and_their_chains_verify(tmp_path, kafka_broker):
    topic = new_topic(kafka_broker)
    node = SimNode(tmp_path / "log", pods=6, containers_per_pod=1, rotate_every_bytes=128 << 10, keep_rotated=5,
                   seed=31)
    shipper, public_key = signed_shipper(tmp_path, kafka_broker.bootstrap, topic, node, workers=2)
    shipper.start()
    try:
        node.write(6000)
        result = settle(kafka_broker.bootstrap, topic, node, timeout=120, idle_s=1.5)
        metrics = shipper.metrics()
        assert shipper.sigterm() == 0
    finally:
        shipper.stop()
    summary = result.summary()
    assert summary["missing"] == 0 and summary["duplicates_conflicting"] == 0, summary
    assert summary["received"] == summary["written"] == 6000
    per_worker = {worker: metrics.get(f'audit_shipper_entries_total{{worker="{worker}"}}', 0) for worker in "01"}
    assert all(per_worker.values()) and sum(per_worker.values()) == 6000, per_worker
    code, report = run_verify(kafka_broker.bootstrap, topic, public_key)
    assert code == 0, report["verdict"]
    chains = {chain["chain"] for chain in report["chains"]}
    assert {"node/test-node/worker-0", "node/test-node/worker-1"} <= chains


def test_a_new_worker_count_sends_the_old_wal_first_and_the_chains_go_on(tmp_path, fresh_kafka_broker):
    broker = fresh_kafka_broker
    topic = new_topic(broker)
    node = SimNode(tmp_path / "log", pods=4, containers_per_pod=1, rotate_every_bytes=None, seed=32)
    shipper, public_key = signed_shipper(tmp_path, broker.bootstrap, topic, node, shutdown_grace_s=2,
                                         kafka={"bootstrap_servers": broker.bootstrap, "topic": topic,
                                                "request_timeout_ms": 3000, "retry_backoff_ms": 100,
                                                "retry_backoff_max_ms": 500})
    shipper.start()
    try:
        node.write(1000)
        wait_until(lambda: shipper.metrics().get("audit_shipper_records_shipped_total", 0) >= 1000, 60, "first lines")
        broker.stop()
        node.write(1000)            # into the WAL only: Kafka is down
        wait_until(lambda: shipper.metrics().get("audit_shipper_wal_unacked_records", 0) >= 1000, 60, "the WAL")
        shipper.sigterm()
    finally:
        shipper.stop()

    broker.start()
    broker.wait_ready(120)
    config = yaml.safe_load(shipper.config.read_text())
    config.update(workers=3, shutdown_grace_s=20)
    shipper.config.write_text(yaml.safe_dump(config))
    restarted = ShipperProcess(shipper.config, tmp_path / "restarted.log").start()
    try:
        node.write(1000)
        result = settle(broker.bootstrap, topic, node, timeout=150, idle_s=1.5)
        assert restarted.sigterm() == 0
    finally:
        restarted.stop()
    summary = result.summary()
    assert summary["missing"] == 0 and summary["duplicates_conflicting"] == 0, summary
    assert summary["written"] == 3000
    code, report = run_verify(broker.bootstrap, topic, public_key)
    assert code == 0, report["verdict"]
    for chain in report["chains"]:
        if not chain["chain"].startswith("node/"):
            assert chain["first_seq"] == 1 and chain["links_verified"] >= chain["last_seq"] - 1, chain
    log = restarted.log_path.read_text()
    assert "draining" in log and "moved 5 chains to the layout of 3 workers" in log     # 4 pods and the node
