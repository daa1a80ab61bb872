"""What the ingest keeps of ended chains (shipper/ingest.py with state.py's pruning), over real files:
a chain pruned from state.db is forgotten in memory too, a file of a closed or pruned chain that comes
back is refused and counted (never a second genesis under the old name, also after a restart), and
chains whose directory goes away without a file being dropped still close."""
from __future__ import annotations

import functools
import json
import os
import shutil

import pytest

from shipper import ingest as ingest_module
from shipper.config import load_settings
from shipper.demo.simnode import SimNode
from shipper.tail import Tailer
from tests.statedriver import DrivenState, FakeClock
from tests.support import write_config

PRUNE_AFTER_S = 100


@pytest.fixture
def node_and_settings(tmp_path):
    node = SimNode(tmp_path / "log", pods=2, containers_per_pod=1, rotate_every_bytes=None, seed=11)
    config = write_config(tmp_path / "config.yaml", bootstrap="127.0.0.1:1", node_root=node.root,
                          state_dir=tmp_path / "state", sources={"discover_interval_s": 0.001},
                          state={"dir": str(tmp_path / "state"), "prune_after_s": PRUNE_AFTER_S})
    return node, load_settings(str(config))


def records(batches, chain: str) -> list[dict]:
    return [json.loads(value) for batch in batches for run in batch.runs if run.chain == chain for value in run.values]


def recreate(pod_dir, container: str, line: bytes = b"2026-11-28T18:00:00Z stdout F back again\n") -> None:
    (pod_dir / container).mkdir(parents=True)
    (pod_dir / container / "0.log").write_bytes(line)


def test_a_pruned_chain_is_forgotten_and_its_files_coming_back_are_refused_also_after_a_restart(node_and_settings):
    node, settings = node_and_settings
    wall, steady = FakeClock(1_800_000_000.0), FakeClock(0.0)
    driven = DrivenState(settings, wall, steady)
    gone, stays = node.containers
    name, pod_dir = gone.ref.chain, gone.pod_dir
    node.write(50)
    driven.cycle()
    node.delete_pod(0)
    closing = records(driven.cycle(), name)
    assert [record["type"] for record in closing] == ["close", "checkpoint"]
    driven.flush()

    recreate(pod_dir, gone.ref.container)          # closed, not yet pruned: refused all the same
    assert records(driven.cycle(), name) == []
    assert driven.metrics.closed_chain_files.labels(state="closed")._value.get() == 1
    shutil.rmtree(pod_dir)

    wall.now += PRUNE_AFTER_S + 1
    steady.now += driven.acks.prune_every_s
    driven.flush()
    driven.cycle()
    assert name not in driven.ingest._chains and stays.ref.chain in driven.ingest._chains
    assert name not in driven.state.load().chains
    assert driven.metrics.state_pruned.labels(kind="chains")._value.get() == 1

    recreate(pod_dir, gone.ref.container)
    node.write(10, container=0)                   # the pod that stays goes on
    batches = driven.cycle() + driven.cycle()
    assert records(batches, name) == []
    assert name not in driven.ingest._chains
    assert driven.metrics.closed_chain_files.labels(state="pruned")._value.get() == 1     # once per path
    head = driven.ingest._chains[stays.ref.chain].head.seq
    driven.flush()
    driven.close()

    again = DrivenState(settings, wall, steady)
    node.write(10, container=0)
    batches = again.cycle()
    assert records(batches, name) == [] and name not in again.ingest._chains
    assert again.metrics.closed_chain_files.labels(state="pruned")._value.get() == 1
    assert records(batches, stays.ref.chain)[0]["seal"]["seq"] == head + 1      # goes on from its head
    again.close()


def test_a_chain_left_without_files_closes_when_its_directory_goes_later(node_and_settings, monkeypatch):
    """The runtime removed a dead container's log while its pod stayed (the chain has no file, its
    directory is there: it stays open); when the pod goes, its chain closes."""
    monkeypatch.setattr(ingest_module, "Tailer", functools.partial(Tailer, settle_s=0.0))
    node, settings = node_and_settings
    driven = DrivenState(settings, FakeClock(1_800_000_000.0), FakeClock(0.0))
    sim = node.containers[0]
    node.write(20, container=0)
    driven.cycle()
    node.delete_live(sim, rotated=True)
    batches = driven.cycle()
    assert records(batches, sim.ref.chain) == [] and driven.ingest._chains[sim.ref.chain].sources == 0
    shutil.rmtree(sim.pod_dir)
    assert [record["type"] for record in records(driven.cycle(), sim.ref.chain)] == ["close", "checkpoint"]
    assert driven.ingest._chains[sim.ref.chain].closed
    driven.close()


def test_a_source_restored_after_its_pod_was_deleted_while_down_declares_the_loss_and_closes(node_and_settings):
    node, settings = node_and_settings
    wall, steady = FakeClock(1_800_000_000.0), FakeClock(0.0)
    driven = DrivenState(settings, wall, steady)
    sim = node.containers[0]
    node.write(20)
    driven.cycle()
    driven.flush()
    driven.close()
    node.delete_pod(0)

    again = DrivenState(settings, wall, steady)
    assert os.path.dirname(str(sim.log_path)) not in {os.path.dirname(key) for key in again.ingest._sources}
    kinds = [record["type"] for record in records(again.cycle(), sim.ref.chain)]
    assert kinds == ["gap", "checkpoint", "close", "checkpoint"] or kinds == ["gap", "close", "checkpoint"], kinds
    again.flush()
    state = again.state.load()
    assert state.chains[sim.ref.chain].closed
    assert all(saved.chain != sim.ref.chain for saved in state.sources.values())
    again.close()
