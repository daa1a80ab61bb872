"""inotify in the real pipeline: a lone line written to one of many quiet files reaches the real
broker in a fraction of the fallback intervals, so the event woke the pipeline, not a poll."""
from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

import pytest

from tests.support import ShipperProcess, new_topic, wait_until, write_config

pytestmark = pytest.mark.timeout(300)


def cri(body: str) -> bytes:
    return f"2026-11-28T18:00:00.000000000Z stdout F {body}\n".encode()


async def lone_lines(bootstrap: str, topic: str, paths: list[Path], count: int) -> list[float]:
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                enable_auto_commit=False, group_id=None, fetch_max_wait_ms=10)
    await consumer.start()
    latencies = []
    try:
        while await consumer.getmany(timeout_ms=500):
            pass                                          # the topic so far: the first lines
        for n in range(count):
            marker = f"lone-{n}-{uuid.uuid4().hex[:8]}"
            with open(paths[(n * 7) % len(paths)], "ab") as f:
                written = time.monotonic()
                f.write(cri(marker))
            arrived = None
            while arrived is None and time.monotonic() - written < 20:
                for messages in (await consumer.getmany(timeout_ms=20)).values():
                    if any(marker.encode() in m.value for m in messages):
                        arrived = time.monotonic()
            assert arrived is not None, f"line {n} never arrived"
            latencies.append(arrived - written)
            await asyncio.sleep(0.3)
    finally:
        await asyncio.wait_for(consumer.stop(), 10)
    return latencies


@pytest.mark.kafka
def test_a_lone_line_reaches_the_broker_well_before_any_poll_would_have_read_it(tmp_path, kafka_broker):
    topic = new_topic(kafka_broker, partitions=1)
    root = tmp_path / "log"
    paths = []
    for i in range(50):
        directory = root / "pods" / f"ns_quiet-{i}_{uuid.UUID(int=i)}" / "app"
        directory.mkdir(parents=True)
        paths.append(directory / "0.log")
        paths[-1].write_bytes(cri(f"first line of {i}"))
    (root / "containers").mkdir()
    # Every poll far apart: only an event can bring a line in under a second.
    config = write_config(tmp_path / "config.yaml", bootstrap=kafka_broker.bootstrap, node_root=root,
                          state_dir=tmp_path / "state", topic=topic,
                          sources={"watch": "inotify", "poll_interval_s": 5, "discover_interval_s": 10,
                                   "watch_fallback_s": 10, "watch_rescan_s": 60},
                          seal={"checkpoint_every_s": 60})
    shipper = ShipperProcess(config, tmp_path / "shipper.log").start()
    try:
        wait_until(lambda: shipper.metrics().get("audit_shipper_records_shipped_total", 0) >= 50, 60,
                   "the first lines")
        metrics = shipper.metrics()
        assert metrics["audit_shipper_watch_inotify"] == 1
        assert metrics["audit_shipper_watched_directories"] == 1 + 50 + 50 + 1   # root, pods, containers, links
        time.sleep(1)
        latencies = asyncio.run(lone_lines(kafka_broker.bootstrap, topic, paths, 15))
        assert shipper.sigterm() == 0
    finally:
        shipper.stop()
    latencies.sort()
    assert latencies[-1] < 1.0, latencies                # the fallback poll is 10 s away
    assert latencies[len(latencies) // 2] < 0.25, latencies
