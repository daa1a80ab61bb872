"""At-least-once delivery under faults, against the real Apache Kafka broker.

Every test writes with a simulated kubelet, breaks something, and then accounts for every entry
written: it is in the topic (deduplicated by event_id), or its chain carries a gap record.
"""
from __future__ import annotations

import os
import random
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from shipper.demo.simnode import SimNode
from shipper.wal import HEADER_SIZE, segment_name
from tests.support import ShipperProcess, new_topic, settle, shipper_for, wait_until

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(420)]


class Writer:
    """Writes entries in a background thread at about `rate` entries per second."""

    def __init__(self, node: SimNode, rate: int) -> None:
        self.node = node
        self.rate = rate
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.lock = threading.Lock()

    def _run(self) -> None:
        tick = 0.05
        while not self._stop.is_set():
            with self.lock:
                self.node.write(max(1, int(self.rate * tick)))
            time.sleep(tick)

    def __enter__(self) -> Writer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self.node.flush()

    def __exit__(self, *exc) -> None:
        self.stop()



def assert_complete(result, shipper: ShipperProcess | None = None) -> None:
    summary = result.summary()
    context = f"\nshipper log tail:\n{shipper.log_text()[-4000:]}" if shipper else ""
    assert summary["written"] > 0
    assert summary["missing"] == 0, f"{summary}{context}"
    assert summary["duplicates_conflicting"] == 0, f"{summary}{context}"
    assert summary["malformed"] == 0


def test_sigkill_at_ten_random_moments_loses_nothing(tmp_path, fresh_kafka_broker):
    broker = fresh_kafka_broker
    topic = new_topic(broker)
    node = SimNode(tmp_path / "log", pods=4, containers_per_pod=1, rotate_every_bytes=2 << 20, keep_rotated=4, seed=11)
    shipper = shipper_for(tmp_path, broker.bootstrap, topic, node).start()
    rng = random.Random(7)
    try:
        with Writer(node, rate=3000):
            for _ in range(10):
                time.sleep(rng.uniform(0.3, 2.5))
                shipper.sigkill()
                shipper.start()
            time.sleep(1)
        result = settle(broker.bootstrap, topic, node)
    finally:
        shipper.stop()
    assert_complete(result, shipper)
    print(f"\n10 SIGKILLs: {result.total('written')} entries, {result.total('duplicates_exact')} exact duplicates "
          f"({result.total('duplicates_exact') / 10:.0f} per crash), gaps {result.total('gaps')}")


def test_broker_sigkilled_mid_stream_and_restarted_loses_nothing(tmp_path, fresh_kafka_broker):
    broker = fresh_kafka_broker
    topic = new_topic(broker)
    node = SimNode(tmp_path / "log", pods=3, containers_per_pod=1, rotate_every_bytes=4 << 20, seed=12)
    shipper = shipper_for(tmp_path, broker.bootstrap, topic, node).start()
    try:
        with Writer(node, rate=3000):
            time.sleep(2)
            broker.kill()
            time.sleep(4)
            broker.restart()
            time.sleep(2)
        result = settle(broker.bootstrap, topic, node)
    finally:
        shipper.stop()
    assert_complete(result, shipper)


def test_broker_paused_sixty_seconds_memory_stays_bounded_and_nothing_is_lost(tmp_path, fresh_kafka_broker):
    broker = fresh_kafka_broker
    topic = new_topic(broker)
    node = SimNode(tmp_path / "log", pods=4, containers_per_pod=1, rotate_every_bytes=None, seed=13,
                   keep_bodies=True)
    shipper = shipper_for(tmp_path, broker.bootstrap, topic, node,
                          wal={"max_bytes": 32 << 20, "segment_bytes": 4 << 20}).start()
    peak = 0
    try:
        wait_until(lambda: shipper.metrics() is not None, 20, "the shipper's metrics")
        with Writer(node, rate=20_000):
            time.sleep(1)
            broker.pause()
            try:
                until = time.monotonic() + 60
                while time.monotonic() < until:
                    peak = max(peak, shipper.rss_bytes())
                    time.sleep(1)
                backpressure = shipper.metrics().get("audit_shipper_backpressure_active", 0)
            finally:
                broker.resume()
        result = settle(broker.bootstrap, topic, node, timeout=180)
    finally:
        shipper.stop()
    assert_complete(result, shipper)
    print(f"\n60 s pause at ~20k lines/s: peak RSS {peak / 2**20:.0f} MiB, backpressure at the end {backpressure}")
    assert peak < 200 * 2**20, f"peak RSS {peak / 2**20:.0f} MiB during the outage"


def test_outage_longer_than_the_wal_holds_pauses_reading_and_loses_nothing(tmp_path, fresh_kafka_broker):
    broker = fresh_kafka_broker
    topic = new_topic(broker)
    node = SimNode(tmp_path / "log", pods=2, containers_per_pod=1, rotate_every_bytes=None, seed=14)
    shipper = shipper_for(tmp_path, broker.bootstrap, topic, node,
                          wal={"max_bytes": 2 << 20, "segment_bytes": 256 << 10, "commit_bytes": 128 << 10}).start()
    try:
        broker.stop()
        node.write(30_000)                     # ~6 MB of source, ~20 MB of records: three WALs' worth
        wait_until(lambda: shipper.metrics().get("audit_shipper_backpressure_active") == 1, 60, "backpressure")
        wal_bytes = shipper.metrics()["audit_shipper_wal_bytes"]
        assert wal_bytes <= 2 << 20
        broker.start()
        broker.wait_ready()
        result = settle(broker.bootstrap, topic, node, timeout=180)
        wait_until(lambda: shipper.metrics().get("audit_shipper_backpressure_active") == 0, 60, "backpressure to end")
        paused = shipper.metrics()["audit_shipper_backpressure_seconds_total"]
    finally:
        shipper.stop()
    assert_complete(result, shipper)
    assert paused > 0


def _frames_in(segment: Path) -> list[int]:
    data = segment.read_bytes()
    starts, offset = [], 0
    while offset + HEADER_SIZE <= len(data):
        starts.append(offset)
        offset += HEADER_SIZE + int.from_bytes(data[offset:offset + 4], "big")
    return starts


def test_torn_wal_tail_and_corrupted_frame_on_restart_lose_nothing(tmp_path, fresh_kafka_broker):
    broker = fresh_kafka_broker
    topic = new_topic(broker)
    node = SimNode(tmp_path / "log", pods=2, containers_per_pod=1, rotate_every_bytes=None, seed=15)
    shipper = shipper_for(tmp_path, broker.bootstrap, topic, node,
                          wal={"commit_bytes": 64 << 10, "segment_bytes": 16 << 20})
    broker.stop()
    wal_dir = tmp_path / "state" / "wal"
    try:
        shipper.start()
        node.write(3000)
        wait_until(lambda: shipper.metrics().get("audit_shipper_wal_commits_total", 0) >= 3, 60, "three WAL commits")
        shipper.sigkill()
        segment = wal_dir / segment_name(0)
        os.truncate(segment, segment.stat().st_size - 37)           # torn tail
        shipper.start()
        node.write(3000)
        wait_until(lambda: shipper.metrics().get("audit_shipper_wal_commits_total", 0) >= 3, 60, "more commits")
        shipper.sigkill()
        starts = _frames_in(segment)
        assert len(starts) >= 4
        data = bytearray(segment.read_bytes())
        data[starts[len(starts) // 2] + HEADER_SIZE + 10] ^= 0x5A     # corrupt a frame in the middle
        segment.write_bytes(bytes(data))
        shipper.start()
        broker.start()
        broker.wait_ready()
        result = settle(broker.bootstrap, topic, node)
    finally:
        shipper.stop()
    assert_complete(result, shipper)
    log = shipper.log_text()
    assert "torn frame" in log and "checksum mismatch" in log


@pytest.fixture
def tiny_filesystem(tmp_path):
    mount_point = tmp_path / "walfs"
    mount_point.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m,mode=0700", "tmpfs", str(mount_point)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {done.stderr.strip()}")
    yield mount_point
    subprocess.run(["umount", "-l", str(mount_point)], capture_output=True)


def test_wal_disk_full_is_a_clear_error_with_backpressure_and_recovers(tmp_path, fresh_kafka_broker, tiny_filesystem):
    broker = fresh_kafka_broker
    topic = new_topic(broker)
    node = SimNode(tmp_path / "log", pods=2, containers_per_pod=1, rotate_every_bytes=None, seed=16)
    shipper = shipper_for(tmp_path, broker.bootstrap, topic, node,
                          wal={"dir": str(tiny_filesystem / "wal"), "max_bytes": 64 << 20, "segment_bytes": 256 << 10,
                               "commit_bytes": 128 << 10})
    broker.stop()
    try:
        shipper.start()
        node.write(20_000)                                           # far more than 3 MiB of records
        def disk_full_reported() -> bool:
            metrics = shipper.metrics()
            errors = sum(v for k, v in metrics.items() if k.startswith("audit_shipper_wal_write_errors_total"))
            return errors > 0 and metrics.get("audit_shipper_backpressure_active") == 1 \
                and "No space left on device" in shipper.log_text()

        wait_until(disk_full_reported, 90, "a WAL write error, backpressure and a clear message")
        broker.start()
        broker.wait_ready()
        result = settle(broker.bootstrap, topic, node, timeout=180)
    finally:
        shipper.stop()
    assert_complete(result, shipper)


def test_sigterm_during_steady_stream_exits_zero_in_grace_and_loses_nothing(tmp_path, fresh_kafka_broker):
    broker = fresh_kafka_broker
    topic = new_topic(broker)
    node = SimNode(tmp_path / "log", pods=3, containers_per_pod=1, rotate_every_bytes=1 << 20, seed=17)
    shipper = shipper_for(tmp_path, broker.bootstrap, topic, node).start()
    try:
        with Writer(node, rate=3000):
            time.sleep(3)
            started = time.monotonic()
            code = shipper.sigterm(timeout=30)
            took = time.monotonic() - started
            time.sleep(1)
        assert code == 0 and took < 20, (code, took)
        shipper.start()                                              # the rest is read on the next start
        result = settle(broker.bootstrap, topic, node)
    finally:
        shipper.stop()
    assert_complete(result, shipper)
    assert result.total("duplicates_exact") == 0, "a drained stop leaves nothing to send twice"


def test_second_sigterm_exits_at_once_and_a_restart_loses_nothing(tmp_path, fresh_kafka_broker):
    """The broker is down, so everything read is only in the WAL. SIGTERM starts the drain (which would
    wait shutdown_grace_s for acks); a second SIGTERM ends the process at once, WAL fsynced, status
    128 + 15. The next start, with the broker back, ships every line."""
    broker = fresh_kafka_broker
    topic = new_topic(broker)
    node = SimNode(tmp_path / "log", pods=2, containers_per_pod=1, rotate_every_bytes=None, seed=18)
    shipper = shipper_for(tmp_path, broker.bootstrap, topic, node, wal={"commit_bytes": 64 << 10}, shutdown_grace_s=60)
    broker.stop()
    try:
        shipper.start()
        node.write(4000)
        node.flush()
        wait_until(lambda: shipper.metrics().get("audit_shipper_entries_total", 0) >= 4000, 60,
                   "every line read (and so committed to the WAL)")
        assert shipper.metrics()["audit_shipper_wal_commits_total"] >= 3
        assert shipper.metrics().get("audit_shipper_records_shipped_total", 0) == 0
        shipper.process.send_signal(signal.SIGTERM)
        wait_until(lambda: "draining" in shipper.log_text(), 10, "the drain to begin", interval=0.05)
        time.sleep(0.3)
        assert shipper.alive(), "the drain waits for acks the stopped broker cannot give"
        started = time.monotonic()
        shipper.process.send_signal(signal.SIGTERM)
        code = shipper.process.wait(10)
        took = time.monotonic() - started
        assert code == 128 + signal.SIGTERM and took < 1.0, (code, took)
        log = shipper.log_text()
        assert "second signal SIGTERM: exiting now with status 143" in log and "the WAL is fsynced" in log
        broker.start()
        broker.wait_ready()
        shipper.start()
        node.write(500)                                              # and the stream goes on
        node.flush()
        result = settle(broker.bootstrap, topic, node)
    finally:
        shipper.stop()
    assert_complete(result, shipper)
    assert result.total("written") == 4500
