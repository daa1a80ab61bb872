"""End-to-end throughput harness (not part of the tests): `make bench` or `python bench/run.py`.

Workload (a `SimNode`, seed 7): `--files` CRI log files (10), one container per pod in the kubelet's
/var/log/pods layout, never rotated; `--lines` entries (2,000,000) spread over them at random, about
213 bytes an entry. 70 % of the bodies are JSON (level, message, trace_id, span_id, request_id), 30 %
plain text (a level word, the message, request_id=...); 2 % of the entries are split into a P and an
F line. The files are written first (or at `--rate` while the shipper runs), then `shipper run` (a
separate process, default configuration apart from paths) tails them from the start into a real
broker; the run ends when every entry is acknowledged.

Prints: entries/s, MB/s, CPU-seconds per million lines (the shipper's user+sys; the broker's beside it,
since both share the machine's cores), peak RSS,
end-to-end lag p50/p99 (line read -> broker ack, from the shipper's histogram), and the share of
CPU time per stage (from a profiled in-process run of the ingest stages over the same files).
"""
from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import pstats
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from shipper.demo.embedded import EmbeddedTansu  # noqa: E402
from shipper.demo.simnode import SimNode  # noqa: E402
from tests.harness.ports import free_port  # noqa: E402
from tests.support import ShipperProcess, scrape, write_config  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def peak_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def histogram_quantile(metrics: dict[str, float], name: str, q: float) -> float:
    buckets = sorted(((float(key.split('le="')[1].split('"')[0]), value) for key, value in metrics.items()
                      if key.startswith(name + "_bucket")), key=lambda item: item[0])
    total = buckets[-1][1] if buckets else 0
    for bound, count in buckets:
        if total and count >= q * total:
            return bound
    return float("nan")


async def start_broker(kind: str, workdir: Path):
    if kind == "tansu":
        broker = EmbeddedTansu(log_dir=str(workdir))
        broker.start()
        await broker.wait_ready()
        await broker.create_topic("logs", 1)
        return broker, broker.stop
    from tests.harness.kafka import KafkaBroker  # the test harness's real Apache Kafka

    broker = KafkaBroker(workdir / "kafka", fast_start=False)   # the full JIT: a broker under sustained load
    broker.start()
    await broker.wait_ready_async(120)
    await broker.create_topic("logs", 1)
    return broker, broker.stop


def write_workload(root: Path, lines: int, files: int) -> tuple[SimNode, int]:
    node = SimNode(root, pods=files, containers_per_pod=1, rotate_every_bytes=None, seed=7, keep_bodies=False,
                   flush_bytes=1 << 20)
    node.write(lines)
    return node, node.ledger.total()


def write_at_rate(node: SimNode, lines: int, rate: int, shipper: ShipperProcess) -> None:
    """`lines` entries at `rate` per second, in 100 ms steps, each flushed to the files."""
    step = max(1, rate // 10)
    written = 0
    next_at = time.monotonic()
    while written < lines and shipper.alive():
        count = min(step, lines - written)
        node.write(count)
        node.flush()
        written += count
        next_at += count / rate
        delay = next_at - time.monotonic()
        if delay > 0:
            time.sleep(delay)


def profile_stages(settings_path: Path) -> list[tuple[str, float]]:
    """CPU share per stage of an in-process ingest over the same files (no Kafka)."""
    from shipper.config import load_settings
    from shipper.ingest import Ingest
    from shipper.metrics import Metrics
    from shipper.state import Snapshot
    from shipper.batch import encode_batch

    from shipper.enrich import build_provider

    settings = load_settings(str(settings_path))
    metrics = Metrics()
    ingest = Ingest(settings, Snapshot(), metrics, build_provider(settings, metrics))
    profiler = cProfile.Profile()
    profiler.enable()
    while True:
        collected = ingest.collect(settings.wal.commit_bytes)
        if collected is None:
            break
        encode_batch(collected[0])
    profiler.disable()
    stats = pstats.Stats(profiler)
    total = stats.total_tt
    stages = {"tail (read)": ("tailer.py", "poll"), "parse": ("parse.py", "feed"),
              "seal + ids + redaction": ("records.py", "seal_entries_packed"),
              "  of which Python body stage": ("body.py", "process"),
              "WAL frame encode": ("batch.py", "encode_batch")}
    shares = []
    for label, (filename, function) in stages.items():
        cumulative = sum(value[3] for (file, _line, name), value in stats.stats.items()
                         if file.endswith(filename) and name == function)
        shares.append((label, cumulative / total if total else 0.0))
    return shares


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lines", type=int, default=2_000_000, help="entries to write")
    parser.add_argument("--files", type=int, default=10)
    parser.add_argument("--broker", choices=["kafka", "tansu"], default="kafka")
    parser.add_argument("--no-profile", action="store_true")
    parser.add_argument("--python", action="store_true",
                        help="run the pure-Python reference hot path (SHIPPER_NATIVE=0) instead of shipper._native")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override one configuration value (YAML scalar), e.g. --set kafka.compression=zstd")
    parser.add_argument("--rate", type=int, default=0, metavar="ENTRIES_PER_S",
                        help="write the entries while the shipper runs, at this rate (for latency at a given "
                             "load), instead of writing them all before it starts")
    parser.add_argument("--py-spy", metavar="FILE", help="also sample the running shipper with py-spy "
                        "(collapsed stacks to FILE; `pip install py-spy`)")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="audit-shipper-bench-"))
    try:
        started = time.monotonic()
        node, entries = write_workload(workdir / "log", 0 if args.rate else args.lines, args.files)
        size = sum(f.stat().st_size for f in (workdir / "log" / "pods").rglob("*.log"))
        if not args.rate:
            print(f"workload: {entries:,} entries, {size / 1e6:.0f} MB in {args.files} files "
                  f"(written in {time.monotonic() - started:.1f}s)")
        broker, stop_broker = await start_broker(args.broker, workdir)
        try:
            sections: dict[str, dict] = {"sources": {"discover_interval_s": 1.0, "poll_interval_s": 0.1},
                                         "kafka": {"request_timeout_ms": 30000}}
            for item in args.set:
                key, _, value = item.partition("=")
                section, _, name = key.partition(".")
                sections.setdefault(section, {})[name] = yaml.safe_load(value)
            config = write_config(workdir / "config.yaml", bootstrap=broker.bootstrap, node_root=workdir / "log",
                                  state_dir=workdir / "state", metrics_port=free_port(), **sections)
            shipper = ShipperProcess(config, workdir / "shipper.log",
                                     env={"SHIPPER_NATIVE": "0"} if args.python else None).start()
            spy = None
            if args.py_spy:
                spy = subprocess.Popen([shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy"),
                                        "record", "--nonblocking", "-r", "200", "--format", "raw",
                                        "-o", args.py_spy, "-p", str(shipper.pid)],
                                       stdout=subprocess.DEVNULL)
            begin = time.monotonic()
            broker_pid = broker.process.pid
            broker_cpu_begin = cpu_seconds(broker_pid)
            if args.rate:
                write_at_rate(node, args.lines, args.rate, shipper)
                entries = node.ledger.total()
                size = sum(f.stat().st_size for f in (workdir / "log" / "pods").rglob("*.log"))
                print(f"workload: {entries:,} entries, {size / 1e6:.0f} MB in {args.files} files, written at "
                      f"{args.rate:,}/s while the shipper ran")
            target = entries
            metrics: dict[str, float] = {}
            while time.monotonic() - begin < 1800:
                time.sleep(0.5)
                if not shipper.alive():
                    print(shipper.log_text()[-3000:])
                    return 1
                try:
                    metrics = scrape(shipper.metrics_port)
                except OSError:
                    continue
                if metrics.get("audit_shipper_entries_total", 0) >= target and \
                        metrics.get("audit_shipper_wal_unacked_records", 0) == 0 and \
                        metrics.get("audit_shipper_records_shipped_total", 0) >= target:
                    break
            elapsed = time.monotonic() - begin
            cpu = cpu_seconds(shipper.pid)
            broker_cpu = cpu_seconds(broker_pid) - broker_cpu_begin
            rss = peak_rss(shipper.pid)
            metrics = scrape(shipper.metrics_port)
            if spy is not None:
                spy.send_signal(2)
                spy.wait(30)
            shipper.sigterm()
        finally:
            stop_broker()
        physical = metrics.get('audit_shipper_lines_read_total{format="cri"}', entries)
        print(f"broker: {args.broker}; hot path: {'Python (SHIPPER_NATIVE=0)' if args.python else 'native'}")
        print(f"entries/s:            {entries / elapsed:,.0f}")
        print(f"MB/s:                 {size / elapsed / 1e6:,.1f}")
        print(f"CPU-s per 1M lines:   {cpu / physical * 1e6:.2f}  (user+sys {cpu:.1f}s for {physical:,.0f} lines)")
        print(f"peak RSS:             {rss / 2**20:.0f} MiB")
        print(f"broker CPU-s per 1M:  {broker_cpu / physical * 1e6:.2f}  (the broker shares this machine's "
              f"{os.cpu_count()} cores: {(cpu + broker_cpu) / elapsed:.2f} cores busy with both)")
        print(f"lag p50 / p99:        {histogram_quantile(metrics, 'audit_shipper_end_to_end_lag_seconds', 0.5)}s / "
              f"{histogram_quantile(metrics, 'audit_shipper_end_to_end_lag_seconds', 0.99)}s (bucket bounds)")
        if not args.no_profile:
            print("CPU share per stage (profiled in-process run of the ingest, no Kafka; --py-spy profiles the "
                  "whole process):")
            for label, share in profile_stages(config):
                print(f"  {label:24s} {share * 100:5.1f} %")
        return 0
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
