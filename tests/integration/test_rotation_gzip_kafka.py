"""Compressed rotations while the shipper is down, against the real pipeline and broker: on restart it
reads the rest of each file from its `.gz` at the committed uncompressed offset, so the topic holds
every line once and `shipper verify` finds no gap."""
from __future__ import annotations

import asyncio
import json
import time

import pytest

from shipper.demo.reconcile import read_topic
from shipper.demo.simnode import SimNode
from tests.support import new_topic, run_verify, settle, signed_shipper, wait_until

pytestmark = pytest.mark.timeout(300)


@pytest.mark.kafka
def test_rotated_and_gzipped_while_stopped_arrives_complete_and_verifies_without_gaps(tmp_path, kafka_broker):
    topic = new_topic(kafka_broker)
    node = SimNode(tmp_path / "log", pods=2, containers_per_pod=1, rotate_every_bytes=None, keep_rotated=5,
                   gzip_rotated=True, seed=31)
    shipper, public_key = signed_shipper(tmp_path, kafka_broker.bootstrap, topic, node)
    shipper.start()
    try:
        node.write(600)
        wait_until(lambda: shipper.metrics().get("audit_shipper_entries_total", 0) >= 600, 60, "the first lines")
        assert shipper.sigterm() == 0
        # While it is down: each live file gets more lines, is rotated, and compressed by the next
        # rotation (the kubelet compresses all but the newest rotated file and deletes the original).
        for n in (400, 300, 200):
            node.write(n)
            for index in range(len(node.containers)):
                node.rotate(index)
        node.write(100)
        compressed = sorted(p.name for p in (node.root / "pods").rglob("*.gz"))
        assert len(compressed) == 2 * len(node.containers), compressed
        shipper.start()
        result = settle(kafka_broker.bootstrap, topic, node, timeout=90, idle_s=1.5)
        time.sleep(2)                                   # a checkpoint after the last lines
        assert shipper.sigterm() == 0
    finally:
        shipper.stop()
    summary = result.summary()
    assert summary["written"] == 1600 and summary["missing"] == 0, summary
    assert summary["duplicates_exact"] == 0 and summary["duplicates_conflicting"] == 0, summary
    values = [json.loads(v) for v in asyncio.run(read_topic(kafka_broker.bootstrap, topic, idle_s=1.5))]
    assert not [v for v in values if v.get("type") == "gap"]
    assert any(v["source"].get("path", "").endswith(".gz") for v in values if "type" not in v)   # v2: when it changes
    code, report = run_verify(kafka_broker.bootstrap, topic, public_key)
    assert code == 0, report
    assert all(chain["gaps"] == 0 for chain in report["chains"]), report
