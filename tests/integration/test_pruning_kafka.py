"""Pruning with the real shipper and the real Apache Kafka broker: pods come and go, their chains
close and are pruned from state.db a moment later; every record of a pruned chain is in the topic,
verify passes, and a stale copy of a pruned pod's directory coming back is refused (counted), not
shipped as a second chain under the old name."""
from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from pathlib import Path

import pytest

from shipper.demo.reconcile import read_topic
from shipper.demo.simnode import SimNode
from tests.support import new_topic, run_verify, settle, signed_shipper, wait_until

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(300)]

PRUNED = 'audit_shipper_state_pruned_total{kind="chains"}'
REFUSED = 'audit_shipper_closed_chain_files_total{state="pruned"}'


def test_pruned_chains_are_whole_in_the_topic_verify_passes_and_a_stale_directory_is_refused(tmp_path, kafka_broker):
    topic = new_topic(kafka_broker)
    node = SimNode(tmp_path / "log", pods=2, containers_per_pod=1, rotate_every_bytes=None, seed=31)
    state_dir = tmp_path / "state"
    shipper, public_key = signed_shipper(tmp_path, kafka_broker.bootstrap, topic, node,
                                         state={"dir": str(state_dir), "prune_after_s": 1})
    shipper.start()
    short_lived: list[tuple[str, Path, str]] = []
    try:
        for _wave in range(3):
            pods = node.add_pods(4)
            for sim in pods:
                node.write(100, container=node.containers.index(sim))
                short_lived.append((sim.ref.chain, sim.pod_dir, sim.ref.container))
            node.write(50, container=0)
            time.sleep(1.0)
            for sim in pods:
                node.delete_pod(node.containers.index(sim))
        wait_until(lambda: shipper.metrics().get(PRUNED, 0) >= len(short_lived), 90, "the closed chains pruned")

        chain, pod_dir, container = short_lived[0]
        (pod_dir / container).mkdir(parents=True)      # a stale copy of a pruned pod's directory
        (pod_dir / container / "0.log").write_bytes(b"2026-11-28T18:00:00Z stdout F not shipped again\n")
        wait_until(lambda: shipper.metrics().get(REFUSED, 0) == 1, 30, "the stale file refused")
        node.write(50, container=1)
        result = settle(kafka_broker.bootstrap, topic, node, timeout=90, idle_s=1.5)
        assert shipper.sigterm() == 0
    finally:
        shipper.stop()
    summary = result.summary()
    assert summary["missing"] == 0 and summary["duplicates_conflicting"] == 0, summary
    assert summary["received"] == summary["written"] == 12 * 100 + 3 * 50 + 50

    records = [json.loads(value) for value in asyncio.run(read_topic(kafka_broker.bootstrap, topic, idle_s=1.5))]
    by_chain: dict[str, list[dict]] = {}
    for record in records:
        by_chain.setdefault(record["seal"]["chain"], []).append(record)
    for name, _dir, _container in short_lived:
        seqs = sorted(record["seal"]["seq"] for record in by_chain[name])
        assert seqs == list(range(1, len(seqs) + 1)), name          # one genesis, no hole, nothing after
        assert [r.get("type") for r in sorted(by_chain[name], key=lambda r: r["seal"]["seq"])][-2:] == \
            ["close", "checkpoint"]
    assert not any("not shipped again" in record.get("body", "") for record in records)

    db = sqlite3.connect(state_dir / "state.db")
    left = {name for (name,) in db.execute("SELECT chain FROM chains")}
    assert left.isdisjoint(name for name, _d, _c in short_lived), left
    assert db.execute("SELECT count(*) FROM pruned").fetchone()[0] == len(short_lived)
    db.close()

    code, report = run_verify(kafka_broker.bootstrap, topic, public_key)
    chains = {result["chain"]: result for result in report["chains"]}
    violations = report["violations"] + [issue for result in report["chains"] for issue in result["violations"]]
    assert not violations, violations
    assert code == 0, report
    for name, _dir, _container in short_lived:
        assert chains[name]["closed"] and chains[name]["complete"], chains[name]
