"""`workers: N` (shipper/workers.py): shards never split a chain, the supervisor's /metrics labels each
worker's samples, and a change of the worker count moves every chain's head and file position to its
new worker, so chains go on (no second genesis) and no line is read twice; a change interrupted after
staging is finished by the next start."""
from __future__ import annotations

import asyncio
import json
from collections import Counter
from pathlib import Path

import pytest

from shipper.config import ConfigError, load_settings
from shipper.demo.simnode import SimNode
from shipper.state import StateStore
from shipper.workers import (LAYOUT_FILE, STAGING, Shard, change_layout, merge_expositions, recorded_layout,
                             record_layout, shard_of, unit_settings, units)
from tests.statedriver import DrivenState, FakeClock
from tests.support import write_config


def test_every_chain_has_exactly_one_worker_and_the_shards_are_even():
    names = [f"{index:08x}-0000-4000-8000-000000000000/app" for index in range(4000)]
    for count in (2, 3, 4):
        owners = [[shard.index for shard in (Shard(i, count) for i in range(count)) if shard.owns(name)]
                  for name in names]
        assert all(len(owner) == 1 for owner in owners)
        spread = Counter(owner[0] for owner in owners)
        assert min(spread.values()) > 0.8 * len(names) / count


def test_a_worker_index_outside_the_count_is_refused():
    assert Shard.parse("1/3") == Shard(1, 3)
    with pytest.raises(ValueError, match="index"):
        Shard.parse("3/3")


def test_workers_are_refused_out_of_range_and_in_sidecar_mode(tmp_path):
    for bad, message in ((0, "1 to 64"), (65, "1 to 64")):
        path = tmp_path / f"bad-{bad}.yaml"
        path.write_text(json.dumps({"workers": bad}))
        with pytest.raises(ConfigError, match=message):
            load_settings(str(path))
    path = tmp_path / "sidecar.yaml"
    path.write_text(json.dumps({"workers": 2, "sources": {"mode": "sidecar"}}))
    with pytest.raises(ConfigError, match="sidecar"):
        load_settings(str(path))


def test_the_supervisor_labels_each_workers_samples_and_keeps_one_help_per_family():
    first = (b"# HELP audit_shipper_entries_total Log entries\n# TYPE audit_shipper_entries_total counter\n"
             b"audit_shipper_entries_total 10.0\n"
             b"# HELP audit_shipper_lines_read_total Lines\n# TYPE audit_shipper_lines_read_total counter\n"
             b'audit_shipper_lines_read_total{format="cri"} 12.0\n')
    second = first.replace(b"10.0", b"5.0").replace(b"12.0", b"6.0")
    merged = merge_expositions([("0", first), ("1", second)]).decode().splitlines()
    assert merged == [
        "# HELP audit_shipper_entries_total Log entries", "# TYPE audit_shipper_entries_total counter",
        'audit_shipper_entries_total{worker="0"} 10.0', 'audit_shipper_entries_total{worker="1"} 5.0',
        "# HELP audit_shipper_lines_read_total Lines", "# TYPE audit_shipper_lines_read_total counter",
        'audit_shipper_lines_read_total{worker="0",format="cri"} 12.0',
        'audit_shipper_lines_read_total{worker="1",format="cri"} 6.0']


@pytest.fixture
def node_and_settings(tmp_path):
    node = SimNode(tmp_path / "log", pods=6, containers_per_pod=1, rotate_every_bytes=None, seed=5)
    config = write_config(tmp_path / "config.yaml", bootstrap="127.0.0.1:1", node_root=node.root,
                          state_dir=tmp_path / "state", sources={"discover_interval_s": 0.001})
    return node, load_settings(str(config))


def records_of(batches) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for batch in batches:
        for run in batch.runs:
            out.setdefault(run.chain, []).extend(json.loads(value) for value in run.values)
    return out


def drive(settings, shard) -> DrivenState:
    return DrivenState(unit_settings(settings, shard), FakeClock(1_800_000_000.0), FakeClock(0.0), shard=shard)


def test_each_worker_reads_only_its_chains_and_manifests_as_its_own_node(node_and_settings):
    node, settings = node_and_settings
    node.write(600)
    node.flush()
    seen: Counter = Counter()
    for shard in (Shard(0, 2), Shard(1, 2)):
        driven = drive(settings, shard)
        for name in records_of(driven.cycle()):
            assert shard_of(name, 2) == shard.index
            seen[name] += 1
        batch = driven.ingest.final_checkpoints()
        assert f"node/test-node/worker-{shard.index}" in {run.chain for run in batch.runs}
        driven.close()
    assert sorted(seen) == sorted(container.ref.chain for container in node.containers)
    assert set(seen.values()) == {1}


def run_layout(settings, layout) -> dict[str, list[dict]]:
    """Read what the files hold with one DrivenState per unit of the layout: the records by chain."""
    out: dict[str, list[dict]] = {}
    for shard, _ in layout:
        driven = drive(settings, shard)
        for name, records in records_of(driven.cycle()).items():
            out.setdefault(name, []).extend(records)
        driven.flush()
        driven.close()
    return out


@pytest.mark.parametrize("old, new", [(1, 2), (2, 3), (3, 1)])
def test_changing_the_worker_count_moves_each_chain_and_it_goes_on_from_its_head(node_and_settings, old, new):
    node, settings = node_and_settings
    if old > 1:
        record_layout(settings, old)
    node.write(400)
    node.flush()
    before = run_layout(settings, units(settings, old))
    heads = {name: records[-1]["seal"] for name, records in before.items() if not name.startswith("node/")}
    assert len(heads) == 6

    assert asyncio.run(change_layout(settings, old, new, asyncio.Event()))
    assert recorded_layout(settings) == new
    for shard, unit in units(settings, new):
        held = StateStore(unit.state.dir).load().chains
        for name in heads:
            assert (name in held) == (shard is None or shard.owns(name)), (name, shard)

    node.write(400)
    node.flush()
    after = run_layout(settings, units(settings, new))
    for name, head in heads.items():
        first = after[name][0]["seal"]
        assert first["seq"] == head["seq"] + 1 and first["prev"] == head["hash"], name     # goes on, no genesis
    read = sum(1 for records in (before, after) for name, chain in records.items() if not name.startswith("node/")
               for record in chain if "type" not in record)
    assert read == node.ledger.total() == 800                  # every line once


def test_a_change_interrupted_after_staging_is_finished_at_the_next_start(node_and_settings, monkeypatch):
    from shipper import workers

    node, settings = node_and_settings
    node.write(200)
    node.flush()
    before = run_layout(settings, units(settings, 1))
    calls = []

    def crash_once(settings_, old, new):
        calls.append((old, new))
        if len(calls) == 1:
            raise KeyboardInterrupt("power cut")
        return real_switch(settings_, old, new)

    real_switch = workers._switch
    monkeypatch.setattr(workers, "_switch", crash_once)
    with pytest.raises(KeyboardInterrupt):
        asyncio.run(change_layout(settings, 1, 2, asyncio.Event()))
    assert (Path(settings.state.dir) / STAGING).is_dir()
    assert json.loads((Path(settings.state.dir) / LAYOUT_FILE).read_text()) == {"workers": 2, "replacing": 1}
    assert recorded_layout(settings) == 2          # the next start finishes the switch
    names = {name for name in before if not name.startswith("node/")}
    held = set()
    for _, unit in units(settings, 2):
        held |= set(StateStore(unit.state.dir).load().chains)
    assert names <= held
