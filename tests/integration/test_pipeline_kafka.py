"""The whole pipeline against real brokers: records in the topic, metrics, health, verify."""
from __future__ import annotations

import asyncio
import base64
import json
import random
import time
from pathlib import Path

import jsonschema
import pytest

from shipper.demo.reconcile import read_topic
from shipper.demo.simnode import SimNode
from tests.support import http_status, new_topic, run_verify, settle, shipper_for, signed_shipper, wait_until

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.timeout(300)


@pytest.mark.kafka
def test_clean_run_arrives_complete_validates_and_verifies(tmp_path, kafka_broker):
    topic = new_topic(kafka_broker)
    node = SimNode(tmp_path / "log", pods=3, containers_per_pod=2, rotate_every_bytes=256 << 10, keep_rotated=5,
                   seed=21)
    shipper, public_key = signed_shipper(tmp_path, kafka_broker.bootstrap, topic, node)
    shipper.start()
    try:
        for _ in range(5):
            node.write(2000)
            time.sleep(0.3)
        result = settle(kafka_broker.bootstrap, topic, node, timeout=90, idle_s=1.5)
        assert shipper.sigterm() == 0
    finally:
        shipper.stop()
    summary = result.summary()
    assert summary["missing"] == 0 and summary["duplicates_conflicting"] == 0, summary
    assert summary["received"] == summary["written"] == 10_000
    assert summary["control_records"].get("checkpoint", 0) >= 6

    validators = {f"audit-shipper/{version}": jsonschema.Draft202012Validator(
        json.loads((REPO / "schema" / f"audit-shipper-{version}.json").read_text())) for version in ("v1", "v2")}
    values = asyncio.run(read_topic(kafka_broker.bootstrap, topic, idle_s=1.5))
    records = [json.loads(value) for value in values]
    assert {record["schema"] for record in records} == {"audit-shipper/v2"}      # kafka.record_format: compact
    for record in records:
        validators[record["schema"]].validate(record)

    code, report = run_verify(kafka_broker.bootstrap, topic, public_key)
    assert code == 0, report


@pytest.mark.kafka
def test_loss_at_source_verifies_as_a_named_gap(tmp_path, kafka_broker):
    topic = new_topic(kafka_broker)
    node = SimNode(tmp_path / "log", pods=1, containers_per_pod=1, rotate_every_bytes=None, keep_rotated=2,
                   gzip_rotated=True, seed=22)
    shipper, public_key = signed_shipper(tmp_path, kafka_broker.bootstrap, topic, node)
    shipper.start()
    try:
        node.write(500)
        wait_until(lambda: shipper.metrics().get("audit_shipper_records_shipped_total", 0) >= 500, 60, "first lines")
        assert shipper.sigterm() == 0
        node.write(400)           # never read: rotated, gzipped, then deleted by the kubelet
        node.rotate(0)
        node.write(10)
        node.rotate(0)            # the first rotated file is gzipped now
        node.write(10)
        node.rotate(0)            # ... and now deleted (keep_rotated=2); the second one is gzipped
        node.write(300)
        shipper.start()
        wait_until(lambda: sum(v for k, v in shipper.metrics().items()
                               if k.startswith("audit_shipper_gap_records_total")) > 0, 60, "a gap record")
        time.sleep(3)
        assert shipper.sigterm() == 0
    finally:
        shipper.stop()
    code, report = run_verify(kafka_broker.bootstrap, topic, public_key)
    assert code == 0, report
    text = json.dumps(report)
    assert "rotated_unread" in text, report
    values = asyncio.run(read_topic(kafka_broker.bootstrap, topic, idle_s=1.5))
    gaps = [json.loads(json.loads(v)["body"]) for v in values if json.loads(v).get("type") == "gap"]
    assert gaps and all(gap["reason"] == "rotated_unread" for gap in gaps)
    # The first rotated file is gone, with nothing left that says how much of it was unread; the
    # second one, gzipped but still there, is read from its .gz instead of counted lost.
    assert [gap["bytes"] for gap in gaps] == [-1], gaps
    bodies = {json.loads(v)["body"] for v in values if not json.loads(v).get("type")}
    assert len(bodies) == 500 + 10 + 10 + 300, len(bodies)


@pytest.mark.kafka
def test_metrics_count_what_was_shipped_and_readyz_flips_when_the_pipeline_stops(tmp_path, fresh_kafka_broker):
    kafka_broker = fresh_kafka_broker
    topic = new_topic(kafka_broker)
    node = SimNode(tmp_path / "log", pods=2, containers_per_pod=1, rotate_every_bytes=None, seed=23)
    shipper = shipper_for(tmp_path, kafka_broker.bootstrap, topic, node,
                          seal={"checkpoint_every_s": 3600, "checkpoint_every_records": 10**9}).start()
    port = shipper.metrics_port
    try:
        wait_until(lambda: http_status(port, "/readyz") == 200, 60, "/readyz 200")
        assert http_status(port, "/healthz") == 200
        node.write(3000)
        wait_until(lambda: shipper.metrics().get("audit_shipper_records_shipped_total", 0) >= 3000, 60, "3000 shipped")
        metrics = shipper.metrics()
        assert metrics["audit_shipper_records_shipped_total"] == 3000
        assert metrics["audit_shipper_entries_total"] == 3000
        assert metrics['audit_shipper_lines_read_total{format="cri"}'] >= 3000
        assert metrics["audit_shipper_files_tracked"] == 2
        assert metrics["audit_shipper_pipeline_running"] == 1
        assert metrics["audit_shipper_kafka_connected"] == 1
        assert metrics["audit_shipper_native_hot_path"] == 1      # make setup builds shipper._native
        assert metrics["audit_shipper_wal_reads_total"] == 0      # frames went from memory, not read back
        kafka_broker.stop()
        node.write(50)
        # an outage the WAL absorbs keeps the shipper ready
        time.sleep(2)
        assert http_status(port, "/readyz") == 200
        kafka_broker.start()
        kafka_broker.wait_ready()
        wait_until(lambda: shipper.metrics().get("audit_shipper_records_shipped_total", 0) >= 3050, 90, "3050 shipped")
        shipper.process.send_signal(15)
        saw_not_ready = False
        deadline = time.monotonic() + 20
        while shipper.alive() and time.monotonic() < deadline:
            status = http_status(port, "/readyz")
            if status in (0, 503):
                saw_not_ready = True
                break
            time.sleep(0.02)
        assert shipper.process.wait(30) == 0
        assert saw_not_ready or http_status(port, "/readyz") == 0
    finally:
        shipper.stop()
    values = asyncio.run(read_topic(kafka_broker.bootstrap, topic, idle_s=1.5))
    seals = [json.loads(v)["seal"] for v in values if not json.loads(v).get("type")]
    assert len({(seal["chain"], seal["seq"]) for seal in seals}) == 3050


@pytest.mark.tansu
def test_tansu_steady_stream_arrives_complete(tmp_path, tansu_broker):
    topic = new_topic(tansu_broker)
    node = SimNode(tmp_path / "log", pods=3, containers_per_pod=1, rotate_every_bytes=512 << 10, keep_rotated=4,
                   seed=24)
    shipper = shipper_for(tmp_path, tansu_broker.bootstrap, topic, node).start()
    try:
        for _ in range(4):
            node.write(2500)
            time.sleep(0.3)
        result = settle(tansu_broker.bootstrap, topic, node, timeout=90, idle_s=1.5)
        assert shipper.sigterm() == 0
    finally:
        shipper.stop()
    summary = result.summary()
    assert summary["missing"] == 0 and summary["duplicates_conflicting"] == 0, summary
    assert "idempotent producer" in shipper.log_text()


@pytest.mark.kafka
def test_a_record_the_broker_refuses_for_good_becomes_a_gap_and_the_rest_arrives(tmp_path, kafka_broker):
    """A record over the topic's max.message.bytes can never be written: the batch holding it is
    split, its neighbours arrive in order, and its place in the chain is a verified gap naming it."""
    topic = f"logs-small-{time.monotonic_ns() % 10**8}"
    asyncio.run(kafka_broker.create_topic(topic, 1, config={"max.message.bytes": "20000"}))
    node = SimNode(tmp_path / "log", pods=1, containers_per_pod=1, rotate_every_bytes=None, seed=25)
    shipper, public_key = signed_shipper(tmp_path, kafka_broker.bootstrap, topic, node,
                                         kafka={"compression": "none", "batch_bytes": 16384})
    node.write(300)
    node.flush()
    with open(node.containers[0].log_path, "ab") as live:      # one entry of 40 kB amid the others
        live.write(b"2026-11-28T18:00:00.5Z stdout F " + b"x" * 40_000 + b"\n")
    node.write(300)
    node.flush()
    shipper.start()
    try:
        wait_until(lambda: shipper.metrics().get("audit_shipper_records_shipped_total", 0) >= 600, 90, "600 shipped")
        time.sleep(2)
        metrics = shipper.metrics()
        assert shipper.sigterm() == 0
    finally:
        shipper.stop()
    assert metrics['audit_shipper_loss_events_total{reason="rejected_by_broker"}'] == 1
    values = [json.loads(v) for v in asyncio.run(read_topic(kafka_broker.bootstrap, topic, idle_s=1.5))]
    logs = [v for v in values if not v.get("type")]
    assert [v["body"] for v in logs] == [b.decode() for b in node.ledger.bodies(node.ledger.chains()[0])]
    gaps = [v for v in values if v.get("type") == "gap"]
    assert len(gaps) == 1 and json.loads(gaps[0]["body"])["reason"] == "rejected_by_broker"
    assert json.loads(gaps[0]["body"])["bytes"] > 40_000
    refused_seq = logs[299]["seal"]["seq"] + 1
    assert logs[300]["seal"]["seq"] == refused_seq + 1
    code, report = run_verify(kafka_broker.bootstrap, topic, public_key)
    assert code == 0, report
    assert "rejected_by_broker" in json.dumps(report)


@pytest.mark.kafka
def test_a_kafka_ready_batch_the_broker_refuses_is_split_to_the_refused_record_and_the_rest_arrives(tmp_path,
                                                                                                    kafka_broker):
    """The same refusal once the shipper knows the topic's partition count, so that the batch holding the
    record was built on the ingest side and sits compressed in the WAL frame: it is read back into its
    records and split in halves, its neighbours arrive in order, the refused record becomes a gap naming it.
    The record (random base64, which snappy cannot shrink) is over max.message.bytes; the batches of the
    other records, compressed, are not."""
    topic = f"logs-small-{time.monotonic_ns() % 10**8}"
    asyncio.run(kafka_broker.create_topic(topic, 1, config={"max.message.bytes": "20000"}))
    node = SimNode(tmp_path / "log", pods=1, containers_per_pod=1, rotate_every_bytes=None, seed=26)
    shipper, public_key = signed_shipper(tmp_path, kafka_broker.bootstrap, topic, node,
                                         kafka={"batch_bytes": 49152})
    shipper.start()
    try:
        node.write(300)
        node.flush()
        wait_until(lambda: shipper.metrics().get("audit_shipper_records_shipped_total", 0) >= 300, 90, "300 shipped")
        assert shipper.metrics().get('audit_shipper_kafka_batches_total{built="sender"}', 0) >= 1  # before it knew
        # one entry of 40 kB amid the others, written with the next ones (the node's buffer goes to the file
        # in one write), so that the shipper reads them together and builds them into one batch
        node.containers[0].buffer += b"2026-11-28T18:00:00.5Z stdout F " + \
            base64.b64encode(random.randbytes(30_000)) + b"\n"
        node.write(300)
        node.flush()

        def settled() -> bool:
            metrics = shipper.metrics()
            return metrics.get('audit_shipper_loss_events_total{reason="rejected_by_broker"}', 0) == 1 and \
                metrics.get("audit_shipper_records_shipped_total", 0) >= 600 and \
                metrics.get("audit_shipper_wal_unacked_records", 1) == 0
        wait_until(settled, 90, "the refused record declared, the rest shipped")
        time.sleep(2)
        metrics = shipper.metrics()
        # the batch built with it held other records too: refused, then its halves, down to the record
        assert shipper.log_text().count("kafka refused a batch for good") >= 2
        assert shipper.sigterm() == 0
    finally:
        shipper.stop()
    assert metrics['audit_shipper_loss_events_total{reason="rejected_by_broker"}'] == 1
    assert metrics['audit_shipper_kafka_batches_total{built="ingest"}'] >= 1
    values = [json.loads(v) for v in asyncio.run(read_topic(kafka_broker.bootstrap, topic, idle_s=1.5))]
    logs = [v for v in values if not v.get("type")]
    assert [v["body"] for v in logs] == [b.decode() for b in node.ledger.bodies(node.ledger.chains()[0])]
    gaps = [v for v in values if v.get("type") == "gap"]
    assert len(gaps) == 1 and json.loads(gaps[0]["body"])["reason"] == "rejected_by_broker"
    refused_seq = json.loads(gaps[0]["body"])["missing_seq"]
    assert logs[299]["seal"]["seq"] < refused_seq < logs[300]["seal"]["seq"]
    chain = logs[0]["seal"]["chain"]
    seqs = [v["seal"]["seq"] for v in values if v["seal"]["chain"] == chain]        # in topic order
    assert seqs == [seq for seq in range(1, len(seqs) + 2) if seq != refused_seq]
    code, report = run_verify(kafka_broker.bootstrap, topic, public_key)
    assert code == 0, report
    assert "rejected_by_broker" in json.dumps(report)
