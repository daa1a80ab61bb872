"""state.db and the ingest stay bounded on a node where pods come and go by the ten thousand
(shipper/state.py pruning, shipper/ingest.py forgetting): 20,000 simulated pods are started, write a
few lines and are deleted, in waves, beside a few pods that live throughout; the state side of the
pipeline runs on real files (tests/statedriver.py, every frame acknowledged at once) with the clocks
moved a minute per wave. The file size of state.db, the rows in it, what a restart loads and how long
that takes stay flat.

The pods' log directories go on a tmpfs when there is one: the subject is state.db, and creating and
deleting 20,000 directories on a loaded disk would be most of the run. `python -m
tests.integration.test_state_growth` prints the figures with and without pruning."""
from __future__ import annotations

import os
import shutil
import sqlite3
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from shipper.config import load_settings
from shipper.demo.simnode import SimNode
from shipper.enrich import build_provider
from shipper.ingest import Ingest
from shipper.metrics import Metrics
from shipper.state import TOMBSTONES_KEPT, StateStore
from tests.statedriver import DrivenState, FakeClock, state_files_bytes
from tests.support import write_config

pytestmark = pytest.mark.timeout(300)

WAVE = 200                  # pods started, then deleted, per simulated minute
RESIDENTS = 20              # pods that live throughout
PRUNE_AFTER_S = 600         # ten waves of closed chains kept
MARKS = (2_000, 10_000, 20_000)


@dataclass
class Figures:
    pods: int
    db_bytes: int           # state.db after a checkpoint: all its pages
    wal_bytes: int          # state.db-wal as found, before that checkpoint
    chain_rows: int
    source_rows: int
    tombstones: int
    startup_s: float        # StateStore, load, Ingest
    restored_chains: int    # what a restart holds in memory
    in_memory_chains: int   # what the running ingest holds
    acked_entries: int      # chains and sources in the acknowledgements' snapshot
    meta_rows: int
    elapsed_s: float
    node_chain_rows: int = 0    # the node's manifest chain, once a manifest is written (that is on the clock)


def simulate(work: Path, logs: Path, prune_after_s: float, tombstones_kept: int = TOMBSTONES_KEPT,
             marks=MARKS) -> list[Figures]:
    node = SimNode(logs, pods=RESIDENTS, containers_per_pod=1, rotate_every_bytes=None, seed=7, keep_bodies=False)
    state_dir = work / "state"
    config = write_config(work / "config.yaml", bootstrap="127.0.0.1:1", node_root=node.root, state_dir=state_dir,
                          sources={"discover_interval_s": 0.001},
                          state={"dir": str(state_dir), "prune_after_s": prune_after_s})
    settings = load_settings(str(config))
    wall, steady = FakeClock(1_800_000_000.0), FakeClock(0.0)
    driven = DrivenState(settings, wall, steady, tombstones_kept=tombstones_kept)
    figures = []
    started = time.perf_counter()
    pods = 0
    try:
        while pods < marks[-1]:
            for sim in node.add_pods(WAVE):
                node.write(3, container=node.containers.index(sim))
            for resident in range(RESIDENTS):
                node.write(1, container=resident)
            driven.cycle()
            while len(node.containers) > RESIDENTS:
                node.delete_pod(len(node.containers) - 1)
            driven.cycle()
            driven.cycle()
            wall.now += 60
            steady.now += 60
            driven.flush()
            pods += WAVE
            if pods in marks:
                figures.append(measure(driven, settings, state_dir, tombstones_kept, pods, started))
    finally:
        driven.close()
    return figures


def measure(driven: DrivenState, settings, state_dir: Path, tombstones_kept: int, pods: int,
            started: float) -> Figures:
    _db, wal_bytes = state_files_bytes(state_dir)
    db = sqlite3.connect(state_dir / "state.db")
    try:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        rows = [db.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
                for table in ("chains", "sources", "pruned", "meta")]
        node_rows = db.execute("SELECT count(*) FROM chains WHERE chain LIKE 'node/%'").fetchone()[0]
    finally:
        db.close()
    db_bytes, _wal = state_files_bytes(state_dir)
    opened = time.perf_counter()
    store = StateStore(state_dir, tombstones_kept=tombstones_kept)
    snapshot = store.load()
    metrics = Metrics()
    restarted = Ingest(settings, snapshot, metrics, build_provider(settings, metrics))
    startup_s = time.perf_counter() - opened
    restored = len(restarted._restored_chains)
    restarted.close()
    store.close()
    acked = len(driven.acks.snapshot.chains) + len(driven.acks.snapshot.sources)
    return Figures(pods, db_bytes, wal_bytes, *rows[:3], startup_s, restored, len(driven.ingest._chains), acked,
                   rows[3], time.perf_counter() - started, node_rows)


def log_root(tmp_path: Path) -> Path:
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        return shm / f"audit-shipper-growth-{uuid.uuid4().hex[:8]}"
    return tmp_path / "log"


def test_twenty_thousand_pods_leave_state_db_and_the_ingest_flat(tmp_path):
    logs = log_root(tmp_path)
    try:
        figures = simulate(tmp_path, logs, PRUNE_AFTER_S)
    finally:
        shutil.rmtree(logs, ignore_errors=True)
    for line in table("pruning, prune_after_s=600", figures):
        print(line)
    first, middle, last = figures
    # Kept: the residents, the manifest chain, the chains closed within prune_after_s (and at most a
    # prune interval more); everything else is a tombstone of some 20 bytes.
    kept = RESIDENTS + 1 + WAVE * (PRUNE_AFTER_S // 60 + PRUNE_AFTER_S // 4 // 60 + 1)
    for figure in figures:
        assert figure.chain_rows <= kept and figure.in_memory_chains <= kept and figure.restored_chains <= kept
        assert figure.source_rows <= RESIDENTS and figure.meta_rows == 1
        assert figure.acked_entries <= kept + RESIDENTS
        assert figure.tombstones == figure.pods + RESIDENTS + figure.node_chain_rows - figure.chain_rows
        assert figure.wal_bytes <= 4 << 20
        assert figure.startup_s < 2.0, figure
    assert last.db_bytes < 3 * first.db_bytes, figures
    assert last.db_bytes - middle.db_bytes < 40 * (last.pods - middle.pods), figures      # tombstones only


def table(title: str, figures: list[Figures]) -> list[str]:
    lines = [title, f"{'pods':>6} {'state.db':>10} {'-wal':>10} {'chains':>7} {'sources':>7} {'tombst.':>7} "
                    f"{'startup':>8} {'restored':>8} {'in mem':>7} {'elapsed':>8}"]
    for f in figures:
        lines.append(f"{f.pods:>6} {f.db_bytes:>10,} {f.wal_bytes:>10,} {f.chain_rows:>7} {f.source_rows:>7} "
                     f"{f.tombstones:>7} {f.startup_s * 1000:>6.0f}ms {f.restored_chains:>8} {f.in_memory_chains:>7} "
                     f"{f.elapsed_s:>7.1f}s")
    return lines


if __name__ == "__main__":
    runs = [("pruning, prune_after_s=600", PRUNE_AFTER_S, TOMBSTONES_KEPT),
            ("pruning, prune_after_s=600, 5000 tombstones kept", PRUNE_AFTER_S, 5000),
            ("no pruning (prune_after_s=1e12)", 1e12, TOMBSTONES_KEPT)]
    for title, prune_after_s, kept in runs[int(sys.argv[1]) if len(sys.argv) > 1 else 0:]:
        work = Path(tempfile.mkdtemp())
        logs = log_root(work)
        try:
            print("\n".join(table(title, simulate(work, logs, prune_after_s, kept))), flush=True)
        finally:
            shutil.rmtree(logs, ignore_errors=True)
            shutil.rmtree(work, ignore_errors=True)
