"""Idle cost and lone-line latency (not part of the tests): `python bench/idle.py`.

A node with `--files` quiet CRI files in a /var/log/pods layout; `shipper run` (a separate process,
the default intervals) tails them into a real broker, once per `--modes` entry (`sources.watch`).
For each mode it prints:

- idle CPU-seconds per minute of the shipper (user+sys from /proc) once everything is shipped and
  nothing is written, measured over `--idle-s` seconds;
- latency of a lone line, written to one random file (then nothing for a random 0.2-0.6 s), until a
  consumer of the topic holds its record: p50, p99, max over `--samples` lines.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.run import cpu_seconds, start_broker  # noqa: E402
from tests.harness.ports import free_port  # noqa: E402
from tests.support import ShipperProcess, scrape, write_config  # noqa: E402


def make_files(root: Path, files: int) -> list[Path]:
    paths = []
    for i in range(files):
        directory = root / "pods" / f"bench_pod-{i}_{uuid.UUID(int=i)}" / "app"
        directory.mkdir(parents=True)
        path = directory / "0.log"
        path.write_bytes(cri_line(f"first line of file {i}"))
        paths.append(path)
    (root / "containers").mkdir()
    return paths


def cri_line(body: str) -> bytes:
    now = time.time_ns()
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now // 10**9)) + f".{now % 10**9:09d}Z"
    return f"{stamp} stdout F {body}\n".encode()


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def wait_shipped(shipper: ShipperProcess, count: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if scrape(shipper.metrics_port).get("audit_shipper_entries_total", 0) >= count:
                return
        except OSError:
            pass
        await asyncio.sleep(0.2)
    raise RuntimeError(f"the shipper did not read {count} entries in {timeout:.0f}s:\n{shipper.log_text()[-3000:]}")


async def lone_line_latencies(bootstrap: str, topic: str, paths: list[Path], samples: int) -> list[float]:
    from aiokafka import AIOKafkaConsumer

    # A short fetch wait: the broker answers a fetch at once when data is there, but not every
    # broker (Tansu) does, and then the consumer's own wait would be measured.
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="latest",
                                enable_auto_commit=False, group_id=None, fetch_max_wait_ms=10)
    await consumer.start()
    latencies: list[float] = []
    rng = random.Random(11)
    try:
        await consumer.getmany(timeout_ms=1000)          # assigned, at the end of the topic
        for n in range(samples):
            marker = f"lone-{n}-{uuid.uuid4().hex[:8]}".encode()
            path = rng.choice(paths)
            with open(path, "ab") as f:
                written = time.monotonic()
                f.write(cri_line(marker.decode()))
            deadline = written + 30
            seen = False
            while not seen and time.monotonic() < deadline:
                batch = await consumer.getmany(timeout_ms=50)
                arrived = time.monotonic()
                for messages in batch.values():
                    if any(marker in message.value for message in messages):
                        latencies.append(arrived - written)
                        seen = True
            if not seen:
                raise RuntimeError(f"line {n} never reached the topic")
            await asyncio.sleep(rng.uniform(0.2, 0.6))
    finally:
        await asyncio.wait_for(consumer.stop(), 10)
    return latencies


async def run_mode(mode: str, broker, workdir: Path, files: int, idle_s: float, samples: int) -> dict:
    root = workdir / mode
    paths = make_files(root / "log", files)
    topic = f"idle-{mode}"
    await broker.create_topic(topic, 1)
    config = write_config(root / "config.yaml", bootstrap=broker.bootstrap, node_root=root / "log",
                          state_dir=root / "state", topic=topic, metrics_port=free_port(),
                          sources={"watch": mode, "discover_interval_s": 1.0, "poll_interval_s": 0.1},
                          seal={"checkpoint_every_s": 30})
    shipper = ShipperProcess(config, root / "shipper.log").start()
    try:
        await wait_shipped(shipper, files, 120)
        await asyncio.sleep(35)                          # past the first checkpoints: truly idle from here
        cpu_before, began = cpu_seconds(shipper.pid), time.monotonic()
        await asyncio.sleep(idle_s)
        idle_cpu = (cpu_seconds(shipper.pid) - cpu_before) / (time.monotonic() - began) * 60
        metrics = scrape(shipper.metrics_port)
        latencies = await lone_line_latencies(broker.bootstrap, topic, paths, samples)
        if shipper.sigterm() != 0:
            raise RuntimeError(shipper.log_text()[-3000:])
    finally:
        shipper.stop()
    return {"mode": mode, "idle_cpu_s_per_min": idle_cpu, "p50": quantile(latencies, 0.5),
            "p99": quantile(latencies, 0.99), "max": max(latencies),
            "inotify": metrics.get("audit_shipper_watch_inotify", 0),
            "watched": metrics.get("audit_shipper_watched_directories", 0)}


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=200)
    parser.add_argument("--idle-s", type=float, default=60.0, help="seconds of idle CPU measured per mode")
    parser.add_argument("--samples", type=int, default=100, help="lone lines per mode")
    parser.add_argument("--modes", default="poll,inotify", help="sources.watch values, comma-separated")
    parser.add_argument("--broker", choices=["kafka", "tansu"], default="tansu")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="audit-shipper-idle-"))
    results = []
    try:
        broker, stop_broker = await start_broker(args.broker, workdir)
        try:
            for mode in args.modes.split(","):
                results.append(await run_mode(mode, broker, workdir, args.files, args.idle_s, args.samples))
        finally:
            stop_broker()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"{args.files} idle files, broker {args.broker}, {os.cpu_count()} cores; lone line: written -> in the topic")
    print(f"{'watch':<8} {'idle CPU-s/min':>15} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}  watched dirs")
    for r in results:
        print(f"{r['mode']:<8} {r['idle_cpu_s_per_min']:>15.3f} {r['p50'] * 1000:>8.1f} {r['p99'] * 1000:>8.1f} "
              f"{r['max'] * 1000:>8.1f}  {int(r['watched'])}")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
