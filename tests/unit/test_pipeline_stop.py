"""The ingest loop reads the next batch while the last is written and fsynced (pipeline._ingest_until).
A stop that comes while a batch is being read ahead must still commit it: its records are sealed, so the
chains' heads in memory (and the final checkpoints written from them) already count them."""
from __future__ import annotations

import asyncio

from shipper import pipeline as pipeline_module
from shipper.batch import decode_batch
from shipper.config import load_settings
from shipper.demo.simnode import SimNode
from shipper.kafka import Sender
from tests.support import write_config


def test_a_batch_read_ahead_when_the_stop_comes_is_committed(tmp_path, monkeypatch):
    node = SimNode(tmp_path / "log", pods=2, containers_per_pod=1, rotate_every_bytes=None, seed=3)
    node.write(20_000)
    node.flush()
    config = write_config(tmp_path / "config.yaml", bootstrap="127.0.0.1:1", node_root=node.root,
                          state_dir=tmp_path / "state", sources={"read_size": 64 * 1024})
    pipeline = pipeline_module.Pipeline(load_settings(str(config)))
    wal, state, ingest = pipeline._open_state()
    # The sender is only handed frames here (offer, make_visible): nothing is sent, no broker is needed.
    sender = Sender(wal, acks=None, sink=None, metrics=pipeline.metrics, write_gap=None)
    real_collect = pipeline_module._collect_encoded
    calls = []

    async def run() -> None:
        loop = asyncio.get_running_loop()
        stopping = asyncio.Event()

        def collect_and_stop_during_the_third(ingest_, commit_bytes, prebuild):
            calls.append(pipeline._ahead is not None)
            if len(calls) == 3:                 # a read-ahead: the batch before is being written meanwhile
                loop.call_soon_threadsafe(stopping.set)
            return real_collect(ingest_, commit_bytes, prebuild)

        monkeypatch.setattr(pipeline_module, "_collect_encoded", collect_and_stop_during_the_third)
        await asyncio.wait_for(pipeline._ingest_until(stopping, wal, ingest, sender), 60)

    try:
        asyncio.run(run())
        assert len(calls) == 3 and calls[2], calls          # the third read was a read-ahead, and the last
        assert wal.durable == wal.written
        seqs: dict[str, list[int]] = {}
        heads: dict[str, int] = {}
        for _start, _end, payload in wal.read_frames(wal.acked, wal.written, max_bytes=1 << 30):
            batch = decode_batch(payload)
            for run in batch.runs:
                seqs.setdefault(run.chain, []).extend(range(run.first_seq, run.first_seq + len(run.values)))
            heads.update({chain: head.seq for chain, head in batch.chains.items()})
        assert seqs and all(chain_seqs == list(range(1, len(chain_seqs) + 1)) for chain_seqs in seqs.values())
        in_memory = {name: chain.head.seq for name, chain in ingest._chains.items()}
        assert heads == in_memory == {chain: len(chain_seqs) for chain, chain_seqs in seqs.items()}
    finally:
        pipeline._close(wal, state, ingest)
