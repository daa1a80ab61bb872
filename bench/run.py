"""End-to-end throughput harness (not part of the tests): `make bench` or `python bench/run.py`.

Workload (a `SimNode`, seed 7): `--files` CRI log files (10), one container per pod in the kubelet's
/var/log/pods layout, never rotated; `--lines` entries (2,000,000) spread over them at random, about
213 bytes an entry. 70 % of the bodies are JSON (level, message, trace_id, span_id, request_id), 30 %
plain text (a level word, the message, request_id=...); 2 % of the entries are split into a P and an
F line. The files are written first (or at `--rate` while the shipper runs), then `shipper run` (a
separate process, default configuration apart from paths) tails them from the start into a real
broker; the run ends when every entry is acknowledged.

Each of `--runs` runs (3) starts a fresh broker and shipper; the broker is pinned to the machine's last
core and the shipper to the others (taskset-like affinity; `--no-pin` lets them share), so that each
one's CPU is its own. Prints per run, then min / median / max: entries/s, MB/s, CPU-seconds per million
lines (the shipper's user+sys), peak RSS, the broker's own CPU, end-to-end lag p50/p99 (line read ->
broker ack, from the shipper's histogram), the bytes written to the WAL per line (frames and their
headers, audit_shipper_wal_written_bytes_total), and where the shipper's CPU went, stage by stage (read,
parse, seal, WAL frame encode, WAL write, fsync, Kafka batch encode, compress, and the rest: the event
loop's sending, acknowledgements and discovery), from its own audit_shipper_stage_cpu_seconds_total.
"""
from __future__ import annotations

import argparse
import asyncio
import os
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


def process_tree(pid: int) -> list[int]:
    """The process and its descendants (`workers: N` runs a supervisor and N workers)."""
    out, todo = [], [pid]
    while todo:
        current = todo.pop()
        out.append(current)
        for task in Path(f"/proc/{current}/task").iterdir():
            try:
                todo += [int(child) for child in (task / "children").read_text().split()]
            except OSError:
                pass
    return out


def tree_cpu_seconds(pid: int) -> float:
    return sum(cpu_seconds(each) for each in process_tree(pid))


def peak_rss(pid: int) -> int:
    """Peak RSS of the process and its descendants, added up."""
    total = 0
    for each in process_tree(pid):
        for line in Path(f"/proc/{each}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                total += int(line.split()[1]) * 1024
    return total


def summed(metrics: dict[str, float]) -> dict[str, float]:
    """Samples of the workers (`worker` label, see shipper/workers.py) added up under their other labels."""
    out: dict[str, float] = {}
    for key, value in metrics.items():
        name, brace, labels = key.partition("{")
        if brace:
            kept = ",".join(label for label in labels.rstrip("}").split(",") if not label.startswith("worker="))
            key = f"{name}{{{kept}}}" if kept else name
        out[key] = out.get(key, 0.0) + value
    return out


def histogram_quantile(metrics: dict[str, float], name: str, q: float) -> float:
    buckets = sorted(((float(key.split('le="')[1].split('"')[0]), value) for key, value in metrics.items()
                      if key.startswith(name + "_bucket")), key=lambda item: item[0])
    total = buckets[-1][1] if buckets else 0
    for bound, count in buckets:
        if total and count >= q * total:
            return bound
    return float("nan")


async def start_broker(kind: str, workdir: Path, partitions: int = 1):
    if kind == "tansu":
        broker = EmbeddedTansu(log_dir=str(workdir))
        broker.start()
        await broker.wait_ready()
        await broker.create_topic("logs", partitions)
        return broker, broker.stop
    from tests.harness.kafka import KafkaBroker  # the test harness's real Apache Kafka

    broker = KafkaBroker(workdir / "kafka", fast_start=False)   # the full JIT: a broker under sustained load
    broker.start()
    await broker.wait_ready_async(120)
    await warm_up(broker)
    await broker.create_topic("logs", partitions)
    return broker, broker.stop


async def warm_up(broker, records: int = 200_000) -> None:
    """A few seconds of produce traffic into a topic of its own, so the broker's JIT has compiled its
    produce path before the run: a broker in service is warm, and a cold one's first seconds would be
    counted as the shipper's lag."""
    from aiokafka import AIOKafkaProducer

    await broker.create_topic("warm-up", 1)
    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, acks="all", linger_ms=5,
                                compression_type="snappy", max_batch_size=1 << 20)
    await producer.start()
    try:
        value = b'{"warm":"up","body":"' + b"x" * 800 + b'"}'
        for start in range(0, records, 10_000):
            await asyncio.gather(*[await producer.send("warm-up", value, key=b"%d" % (index % 16))
                                   for index in range(start, start + 10_000)])
    finally:
        await producer.stop()


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


STAGES = ("read", "parse", "seal", "frame_encode", "wal_write", "fsync", "kafka_encode", "compress")


def pin_process(pid: int, cpus: set[int]) -> None:
    """Every thread of a running process onto `cpus` (threads it starts later inherit it)."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            os.sched_setaffinity(int(task.name), cpus)
        except (ProcessLookupError, PermissionError):
            pass


def cores_for(pin: bool) -> tuple[set[int] | None, set[int] | None]:
    """(the shipper's cores, the broker's cores): the broker on the last core, the shipper on the others,
    so that the CPU each uses is its own; None when not pinned (or one core only)."""
    cores = sorted(os.sched_getaffinity(0))
    if not pin or len(cores) < 2:
        return None, None
    return set(cores[:-1]), {cores[-1]}


async def run_once(args, workdir: Path, node: SimNode, entries: int, size: int) -> dict[str, float]:
    shipper_cores, broker_cores = cores_for(args.pin)
    broker, stop_broker = await start_broker(args.broker, workdir, args.partitions)
    try:
        broker_pid = broker.process.pid
        if broker_cores:
            pin_process(broker_pid, broker_cores)
        sections: dict[str, dict] = {"sources": {"discover_interval_s": 1.0, "poll_interval_s": 0.1},
                                     "kafka": {"request_timeout_ms": 30000}}
        for item in args.set:
            key, _, value = item.partition("=")
            section, dot, name = key.partition(".")
            if dot:
                sections.setdefault(section, {})[name] = yaml.safe_load(value)
            else:
                sections[key] = yaml.safe_load(value)       # a top-level option (workers=2)
        config = write_config(workdir / "config.yaml", bootstrap=broker.bootstrap, node_root=workdir / "log",
                              state_dir=workdir / "state", metrics_port=free_port(), **sections)
        shipper = ShipperProcess(config, workdir / "shipper.log",
                                 env={"SHIPPER_NATIVE": "0"} if args.python else None).start(shipper_cores)
        spy = None
        if args.py_spy:
            spy = subprocess.Popen([shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy"),
                                    "record", "--nonblocking", "-r", "200", "--format", "raw",
                                    "-o", args.py_spy, "-p", str(shipper.pid)],
                                   stdout=subprocess.DEVNULL)
        begin = time.monotonic()
        broker_cpu_begin = cpu_seconds(broker_pid)
        if args.rate:
            write_at_rate(node, args.lines, args.rate, shipper)
            entries = node.ledger.total()
            size = sum(f.stat().st_size for f in (workdir / "log" / "pods").rglob("*.log"))
            print(f"workload: {entries:,} entries, {size / 1e6:.0f} MB in {args.files} files, written at "
                  f"{args.rate:,}/s while the shipper ran")
        metrics: dict[str, float] = {}
        while time.monotonic() - begin < 1800:
            time.sleep(0.5)
            if not shipper.alive():
                print(shipper.log_text()[-3000:])
                raise SystemExit(1)
            try:
                metrics = summed(scrape(shipper.metrics_port))
            except OSError:
                continue
            if metrics.get("audit_shipper_entries_total", 0) >= entries and \
                    metrics.get("audit_shipper_wal_unacked_records", 0) == 0 and \
                    metrics.get("audit_shipper_records_shipped_total", 0) >= entries:
                break
        elapsed = time.monotonic() - begin
        cpu = tree_cpu_seconds(shipper.pid)
        broker_cpu = cpu_seconds(broker_pid) - broker_cpu_begin
        rss = peak_rss(shipper.pid)
        metrics = summed(scrape(shipper.metrics_port))
        if spy is not None:
            spy.send_signal(2)
            spy.wait(30)
        shipper.sigterm()
    finally:
        stop_broker()
    physical = metrics.get('audit_shipper_lines_read_total{format="cri"}', entries)
    per_line = 1e6 / physical
    figures = {"entries/s": entries / elapsed, "MB/s": size / elapsed / 1e6, "CPU-s per 1M lines": cpu * per_line,
               "peak RSS MiB": rss / 2**20, "broker CPU-s per 1M": broker_cpu * per_line,
               "WAL bytes per line": metrics.get("audit_shipper_wal_written_bytes_total", 0.0) / physical,
               "lag p50 s": histogram_quantile(metrics, "audit_shipper_end_to_end_lag_seconds", 0.5),
               "lag p99 s": histogram_quantile(metrics, "audit_shipper_end_to_end_lag_seconds", 0.99)}
    staged = 0.0
    for stage in STAGES:
        seconds = metrics.get(f'audit_shipper_stage_cpu_seconds_total{{stage="{stage}"}}', 0.0)
        staged += seconds
        figures[f"  {stage}"] = seconds * per_line
    figures["  other (event loop: send, acks, discovery)"] = max(0.0, cpu - staged) * per_line
    return figures


def summary(runs: list[dict[str, float]]) -> list[str]:
    lines = []
    for name in runs[0]:
        values = sorted(run[name] for run in runs)
        median = values[len(values) // 2] if len(values) % 2 else (values[len(values) // 2 - 1] +
                                                                   values[len(values) // 2]) / 2
        unit = ".0f" if name in ("entries/s",) else ".2f"
        lines.append(f"{name:44s} {values[0]:>10{unit}} {median:>10{unit}} {values[-1]:>10{unit}}")
    return lines


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lines", type=int, default=2_000_000, help="entries to write")
    parser.add_argument("--files", type=int, default=10)
    parser.add_argument("--broker", choices=["kafka", "tansu"], default="kafka")
    parser.add_argument("--partitions", type=int, default=1, help="partitions of the topic (default 1)")
    parser.add_argument("--runs", type=int, default=3, help="runs, each with a fresh broker and state (default 3)")
    parser.add_argument("--no-pin", dest="pin", action="store_false",
                        help="let the broker and the shipper share every core (default: the broker on the last "
                             "core, the shipper on the others)")
    parser.add_argument("--python", action="store_true",
                        help="run the pure-Python reference hot path (SHIPPER_NATIVE=0) instead of shipper._native")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override one configuration value (YAML scalar), e.g. --set kafka.compression=zstd "
                             "or --set workers=2")
    parser.add_argument("--rate", type=int, default=0, metavar="ENTRIES_PER_S",
                        help="write the entries while the shipper runs, at this rate (for latency at a given "
                             "load), instead of writing them all before it starts")
    parser.add_argument("--py-spy", metavar="FILE", help="also sample the running shipper with py-spy "
                        "(collapsed stacks to FILE; `pip install py-spy`)")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="audit-shipper-bench-"))
    try:
        results = []
        for number in range(1, args.runs + 1):
            run_dir = workdir / f"run-{number}"
            started = time.monotonic()
            node, entries = write_workload(run_dir / "log", 0 if args.rate else args.lines, args.files)
            size = sum(f.stat().st_size for f in (run_dir / "log" / "pods").rglob("*.log"))
            if not args.rate and number == 1:
                print(f"workload: {entries:,} entries, {size / 1e6:.0f} MB in {args.files} files "
                      f"(written in {time.monotonic() - started:.1f}s)")
            figures = await run_once(args, run_dir, node, entries, size)
            results.append(figures)
            print(f"run {number}: {figures['entries/s']:,.0f} entries/s, {figures['CPU-s per 1M lines']:.2f} CPU-s "
                  f"per 1M lines, {figures['peak RSS MiB']:.0f} MiB, lag p99 {figures['lag p99 s']}s")
            shutil.rmtree(run_dir, ignore_errors=True)
        shipper_cores, broker_cores = cores_for(args.pin)
        pinned = (f"the broker pinned to core(s) {sorted(broker_cores)}, the shipper to {sorted(shipper_cores)}"
                  if broker_cores else "broker and shipper share every core")
        print(f"broker: {args.broker}; hot path: {'Python (SHIPPER_NATIVE=0)' if args.python else 'native'}; "
              f"{pinned}; {len(results)} runs")
        print(f"{'':44s} {'min':>10s} {'median':>10s} {'max':>10s}")
        for line in summary(results):
            print(line)
        print("(stage lines: CPU-s per 1M lines in each stage, from the shipper's audit_shipper_stage_cpu_seconds_total;"
              " lag: histogram bucket bounds)")
        return 0
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
