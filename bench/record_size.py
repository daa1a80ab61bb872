"""Bytes per record on the topic (not part of the tests): `python bench/record_size.py`.

Workload: bench/run.py's (a SimNode, seed 7: 10 pods, one container each, about 205 bytes a line, 70 %
JSON bodies with level/msg/trace_id/span_id/request_id, 30 % plain text, 2 % split in a P and an F
line). Every simulated pod is made a Deployment's pod as the API would list it: 4 labels (three
app.kubernetes.io/* and pod-template-hash), 2 annotations, an owner ReplicaSet, an image with a tag and
a digest, a containerd container id; its namespace has 2 labels. The shipper's metadata provider takes
them through its own list path (MetadataProvider.apply), with its default filters (every label, no
annotation); only the API server is left out.

1. Offline, for N lines (--lines): the files are parsed in the ingest's reads (sources.read_size) and
   each read sealed as one call, by the shipper's own code, in both record formats; the records go into
   Kafka v2 record batches of at most kafka.batch_bytes (1 MiB) of records, built and compressed by the
   shipper's own batch builder, with snappy (the default codec) and zstd. Printed: the JSON value, and
   the whole batch (header, record framing, key, headers, value) per record, uncompressed and
   compressed. The same for the Fluent Bit-shaped record of each line.
2. v2 when fewer entries share a seal call (a live node seals what a pod wrote since the last poll, often
   a line or two), with the full resource on every call's first record, and as the ingest writes it.
3. Per record when fewer records share a Kafka batch (a live node's batches are small), v1, v2 and Fluent
   Bit, snappy and zstd.
4. On a real topic (--topic-lines, 0 to skip): the real pipeline (shipper.pipeline.Pipeline, in this
   process, default options but paths, the provider above) ships the workload into a real Apache Kafka
   broker (tests/harness/kafka.py; its jars come from `make tools`), a one-partition topic per format and
   kafka.compression (--topic-codecs); the partition's log segments on the broker's disk divided by the
   records in them. --topic-rate N
   writes the lines at N a second while the shipper runs instead of before it starts.

The Fluent Bit record is reconstructed, not produced by Fluent Bit (which cannot be installed here):
it is what its documentation says its tail input with the built-in `cri` multiline parser
(`time`, `stream`, `_p`, `log`), its kubernetes filter with the defaults (Labels On, Annotations On,
Merge_Log Off: a `kubernetes` map with pod_name, namespace_name, pod_id, labels, annotations, host,
container_name, docker_id, container_hash, container_image) and its Kafka output (Format json, the
record time under the default Timestamp_Key `@timestamp`, Timestamp_Format double, no message key, no
headers) write for the same line and the same pod. It goes into the same batches as ours, built and
compressed by the same code.
"""
from __future__ import annotations

import argparse
import asyncio
import calendar
import hashlib
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from aiokafka.record.util import encode_varint_py  # noqa: E402

from shipper.config import Settings  # noqa: E402
from shipper.demo.simnode import SimNode  # noqa: E402
from shipper.enrich.provider import MetadataProvider  # noqa: E402
from shipper.enrich.watch import Relist  # noqa: E402
from shipper.kafka.wire import _BATCH_HEADER, _CODECS, _kafka_records, _RecordsBuilder  # noqa: E402
from shipper.metrics import Metrics  # noqa: E402
from shipper.parse import Entries, StreamParser  # noqa: E402
from shipper.records import ChainContext, seal_entries  # noqa: E402
from shipper.seal import ChainHead  # noqa: E402

NODE = "ip-10-0-3-17.eu-west-1.compute.internal"
OBSERVED = "2026-11-28T18:00:05.123456789Z"
BATCH_BYTES = 1 << 20                      # kafka.batch_bytes (ours), librdkafka's batch.size (about the same)
READ_SIZE = 512 * 1024                     # sources.read_size
FORMATS = (("audit-shipper/v1 (full)", False), ("audit-shipper/v2 (compact)", True))


# -- the pods --------------------------------------------------------------------------------------------

def _digest(seed: str) -> str:
    return hashlib.sha256(seed.encode()).hexdigest()


def pod_objects(node: SimNode) -> tuple[list[dict], list[dict]]:
    """Each simulated container's pod as the API lists it (a Deployment's pod), and the namespaces."""
    pods, namespaces = [], {}
    for sim in node.containers:
        ref = sim.ref
        app, template_hash, _suffix = ref.pod.split("-")
        image = f"registry.example.com/{ref.namespace}/{app}"
        pods.append({
            "metadata": {"uid": ref.pod_uid, "name": ref.pod, "namespace": ref.namespace,
                         "labels": {"app.kubernetes.io/name": app, "app.kubernetes.io/instance": f"{app}-prod",
                                    "app.kubernetes.io/version": "1.42.0", "pod-template-hash": template_hash},
                         "annotations": {"kubectl.kubernetes.io/restartedAt": "2026-11-20T09:14:03Z",
                                         "prometheus.io/scrape": "true"},
                         "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "controller": True,
                                              "name": f"{app}-{template_hash}", "uid": _digest(ref.pod)[:36]}]},
            "spec": {"nodeName": NODE, "containers": [{"name": ref.container, "image": f"{image}:1.42.0"}]},
            "status": {"containerStatuses": [{"name": ref.container, "restartCount": 0,
                                              "containerID": f"containerd://{sim.container_id}",
                                              "image": f"{image}:1.42.0",
                                              "imageID": f"{image}@sha256:{_digest(image)}"}]},
        })
        namespaces[ref.namespace] = {"metadata": {"name": ref.namespace, "labels": {
            "kubernetes.io/metadata.name": ref.namespace, "team": "platform"}}}
    return pods, list(namespaces.values())


def provider_for(node: SimNode, settings: Settings | None = None) -> MetadataProvider:
    """The shipper's metadata provider with the pods listed, as its watch would after a list."""
    provider = _ListedProvider(settings or Settings(node_name=NODE), Metrics())
    pods, namespaces = pod_objects(node)
    provider.apply(Relist("pods", pods))
    provider.apply(Relist("namespaces", namespaces))
    return provider


class _ListedProvider(MetadataProvider):
    """The pods are listed up front; there is no API server to watch."""

    async def run(self) -> None:
        await asyncio.Event().wait()


def fluent_bit_metadata(pod: dict) -> dict:
    """The `kubernetes` map of Fluent Bit's kubernetes filter (defaults) for the pod's first container."""
    metadata, status = pod["metadata"], pod["status"]["containerStatuses"][0]
    return {"pod_name": metadata["name"], "namespace_name": metadata["namespace"], "pod_id": metadata["uid"],
            "labels": metadata["labels"], "annotations": metadata["annotations"], "host": pod["spec"]["nodeName"],
            "container_name": status["name"], "docker_id": status["containerID"].partition("://")[2],
            "container_hash": status["imageID"], "container_image": status["image"]}


def _epoch(rfc3339: bytes) -> float:
    text = rfc3339.decode()
    seconds, _, fraction = text.rstrip("Z").partition(".")
    return calendar.timegm(time.strptime(seconds, "%Y-%m-%dT%H:%M:%S")) + float("0." + (fraction or "0"))


def fluent_bit_value(time_b: bytes, stream: bytes, body: bytes, kubernetes: dict) -> bytes:
    record = {"@timestamp": round(_epoch(time_b), 6), "time": time_b.decode(), "stream": stream.decode(), "_p": "F",
              "log": body.decode("utf-8", "replace"), "kubernetes": kubernetes}
    return json.dumps(record, separators=(",", ":"), ensure_ascii=False).encode()


# -- the workload, read and sealed as the ingest does ---------------------------------------------------

def reads(node: SimNode) -> list[tuple[int, Entries]]:
    """Each container file parsed in reads of READ_SIZE, the files taken in turn: (container, entries)."""
    files = [sim.log_path.read_bytes() for sim in node.containers]
    parsers = [StreamParser() for _ in files]
    out: list[tuple[int, Entries]] = []
    position = [0] * len(files)
    while any(position[i] < len(data) for i, data in enumerate(files)):
        for index, data in enumerate(files):
            start = position[index]
            if start >= len(data):
                continue
            chunk = data[start:start + READ_SIZE]
            entries = Entries()
            parsers[index].feed(chunk, start, start + len(chunk) >= len(data), out=entries)
            entries.materialize()
            position[index] = start + len(chunk)
            if len(entries):
                out.append((index, entries))
    return out


def split(entries: Entries, per_call: int) -> list[Entries]:
    if per_call <= 0 or per_call >= len(entries):
        return [entries]
    parts = []
    for start in range(0, len(entries), per_call):
        part = Entries()
        for row in zip(entries.offsets[start:start + per_call], entries.times[start:start + per_call],
                       entries.streams[start:start + per_call], entries.bodies[start:start + per_call],
                       entries.flags[start:start + per_call]):
            part.add(*row)
        parts.append(part)
    return parts


def seal_runs(node: SimNode, provider: MetadataProvider, compact: bool, read_list, per_call: int = 0,
              full_each_call: bool = False):
    """(key, first seq, values) per seal call, in ingest order. v2: the full resource on a chain's first call
    (the ingest's rule while the pod does not change, within a checkpoint interval), or on every call's
    first record."""
    heads = [ChainHead.genesis(sim.ref.chain) for sim in node.containers]
    runs = []
    for index, entries in read_list:
        sim = node.containers[index]
        process = provider.body_processor(sim.ref)
        for part in split(entries, per_call):
            full = full_each_call or heads[index].seq == 0
            ctx = ChainContext(sim.ref.chain, provider.resource_json(sim.ref), str(sim.log_path), compact, full)
            first = heads[index].seq + 1
            values, heads[index] = seal_entries(heads[index], part, ctx, OBSERVED, process)
            runs.append((sim.ref.chain.encode(), first, values))
    return runs


def fluent_bit_values(node: SimNode, read_list) -> list[bytes]:
    pods = {pod["metadata"]["uid"]: fluent_bit_metadata(pod) for pod in pod_objects(node)[0]}
    values = []
    for index, entries in read_list:
        kubernetes = pods[node.containers[index].ref.pod_uid]
        for time_b, stream, body in zip(entries.times, entries.streams, entries.bodies):
            values.append(fluent_bit_value(time_b, stream, body, kubernetes))
    return values


# -- Kafka batches ----------------------------------------------------------------------------------------

def _batch(codec: str, records: bytearray, count: int) -> int:
    return len(_RecordsBuilder(_CODECS[codec], records, count, 1_795_888_805_000).build())


def our_batches(runs, codec: str, per_batch: int = 0) -> int:
    """Bytes of the record batches the shipper's sender builds for these runs (key, headers, values), with
    at most `per_batch` records a batch when given."""
    if per_batch:
        return sum(our_batches(group, codec) for group in _groups(runs, per_batch))
    spans = [(key, first, values, 0, len(values)) for key, first, values in runs]
    total = 0
    while spans:
        records, taken, _ = _kafka_records(spans, BATCH_BYTES, 1 << 30, _BATCH_HEADER)
        count = sum(taken)
        total += _batch(codec, records, count)
        rest = []
        for (key, first, values, start, stop), took in zip(spans, taken + [0] * (len(spans) - len(taken))):
            if start + took < stop:
                rest.append((key, first, values, start + took, stop))
        spans = rest
    return total


def _groups(runs, per_batch: int):
    """The runs' records in groups of `per_batch`, each group as runs again."""
    group: list = []
    count = 0
    for key, first, values in runs:
        start = 0
        while start < len(values):
            take = min(per_batch - count, len(values) - start)
            group.append((key, first + start, values[start:start + take]))
            count += take
            start += take
            if count == per_batch:
                yield group
                group, count = [], 0
    if group:
        yield group


def _keyless(value: bytes, offset_delta: int) -> bytearray:
    record = bytearray(b"\x00\x00")                      # attributes, timestamp delta
    encode_varint_py(offset_delta, record.append)
    encode_varint_py(-1, record.append)                  # null key
    encode_varint_py(len(value), record.append)
    record += value
    encode_varint_py(0, record.append)                   # no headers
    framed = bytearray()
    encode_varint_py(len(record), framed.append)
    return framed + record


def keyless_batches(values: list[bytes], codec: str, per_batch: int = 0) -> int:
    """Bytes of record batches of these values with no key and no headers (Fluent Bit's Kafka output)."""
    total = count = 0
    records = bytearray(_BATCH_HEADER)
    for value in values:
        framed = _keyless(value, count)
        if count and (len(records) - _BATCH_HEADER + len(framed) > BATCH_BYTES or count == per_batch):
            total += _batch(codec, records, count)
            records, count = bytearray(_BATCH_HEADER), 0
            framed = _keyless(value, 0)
        records += framed
        count += 1
    if count:
        total += _batch(codec, records, count)
    return total


def sizes(values: list[bytes], batches) -> tuple[float, float, float, float]:
    n = len(values)
    return (sum(map(len, values)) / n, batches("none") / n, batches("snappy") / n, batches("zstd") / n)


# -- on a real topic --------------------------------------------------------------------------------------

async def on_topic(lines: int, rate: int, compact: bool, codec: str, workdir: Path, kafka) -> tuple[int, int]:
    """(records, bytes of the partition's log segments) after the real pipeline shipped `lines` entries."""
    from shipper.config import load_settings
    from shipper.pipeline import Pipeline

    topic = "logs-" + ("v2" if compact else "v1") + f"-{codec}-{rate}"
    await kafka.create_topic(topic, 1)
    node = SimNode(workdir / topic / "log", pods=10, containers_per_pod=1, rotate_every_bytes=None, seed=7,
                   keep_bodies=False, flush_bytes=1 << 20)
    if not rate:
        node.write(lines)
    state = workdir / topic / "state"
    settings = load_settings(
        None, node_name=NODE,
        sources={"roots": [str(node.pods_dir)], "symlink_roots": [str(node.containers_dir)],
                 "discover_interval_s": 1.0, "poll_interval_s": 0.1},
        wal={"dir": str(state / "wal")}, state={"dir": str(state)},
        kafka={"bootstrap_servers": kafka.bootstrap, "topic": topic, "compression": codec,
               "record_format": "compact" if compact else "full"},
        metrics={"enabled": False})
    pipeline = Pipeline(settings, provider=provider_for(node, settings))
    stopping = asyncio.Event()
    run = asyncio.create_task(pipeline.run(stopping))
    if rate:
        await node.run_async(rate, lines / rate)
        node.flush()
    expected = node.ledger.total()
    deadline = time.monotonic() + 1800
    while time.monotonic() < deadline and not run.done():
        if pipeline.metrics.entries._value.get() >= expected and pipeline.sender is not None \
                and pipeline.sender.drained:
            break
        await asyncio.sleep(0.2)
    stopping.set()
    await run
    records = int(pipeline.metrics.records_shipped._value.get())
    partition = kafka.data_dir / f"{topic}-0"
    return records, sum(path.stat().st_size for path in partition.glob("*.log"))


async def topic_figures(lines: int, rate: int, codecs: list[str]) -> list[tuple[str, str, int, int]]:
    from tests.harness.kafka import KafkaBroker

    workdir = Path(tempfile.mkdtemp(prefix="audit-shipper-size-"))
    kafka = KafkaBroker(workdir / "kafka")
    try:
        kafka.start()
        await kafka.wait_ready_async(180)
        out = []
        for codec in codecs:
            for label, compact in FORMATS:
                records, size = await on_topic(lines, rate, compact, codec, workdir, kafka)
                out.append((codec, label, records, size))
        return out
    finally:
        kafka.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lines", type=int, default=20_000, help="entries for the offline measurement")
    parser.add_argument("--topic-lines", type=int, default=300_000, help="entries shipped to a real topic per "
                        "format (0: skip)")
    parser.add_argument("--topic-rate", type=int, default=0, metavar="ENTRIES_PER_S",
                        help="write the topic's entries at this rate while the shipper runs (0: all before)")
    parser.add_argument("--topic-codecs", default="none,snappy,zstd", help="kafka.compression values to ship with")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="audit-shipper-size-"))
    try:
        node = SimNode(workdir / "log", pods=10, containers_per_pod=1, rotate_every_bytes=None, seed=7,
                       keep_bodies=False, flush_bytes=1 << 20)
        node.write(args.lines)
        provider = provider_for(node)
        read_list = reads(node)
        lines = sum(len(entries) for _index, entries in read_list)
        body_bytes = sum(len(body) for _index, entries in read_list for body in entries.bodies)
        print(f"workload: {lines:,} entries ({body_bytes / lines:.0f} bytes a line), 10 Deployment pods; "
              f"resource of one: {len(provider.resource_json(node.containers[0].ref))} bytes")
        print("bytes per record        value   in Kafka batches (<= 1 MiB of records; header, framing, key, "
              "headers, value)")
        print(f"{'':28s}{'JSON':>8s} {'uncompressed':>13s} {'snappy':>8s} {'zstd':>8s}")
        for label, compact in FORMATS:
            runs = seal_runs(node, provider, compact, read_list)
            values = [value for _key, _first, run in runs for value in run]
            row = sizes(values, lambda codec, runs=runs: our_batches(runs, codec))
            print(f"{label:28s}{row[0]:8.0f} {row[1]:13.0f} {row[2]:8.0f} {row[3]:8.0f}")
        fluent_bit = fluent_bit_values(node, read_list)
        row = sizes(fluent_bit, lambda codec: keyless_batches(fluent_bit, codec))
        print(f"{'Fluent Bit (reconstructed)':28s}{row[0]:8.0f} {row[1]:13.0f} {row[2]:8.0f} {row[3]:8.0f}")
        print("  (Fluent Bit's record rebuilt from its documentation, not produced by Fluent Bit: see the "
              "docstring)")
        print()
        print("audit-shipper/v2 by entries in a sealed batch (a live node seals what a pod wrote since the last "
              "poll:\n1.2 entries at 10 lines/s a pod, 5 at 100/s, 57 at 1,000/s): the full resource on every "
              "batch's first record,\nor as the ingest writes it (a chain's first batch, then when it changes or a "
              "checkpoint interval passed)")
        for per_call in (1, 5, 57):
            for each_call in (True, False):
                runs = seal_runs(node, provider, True, read_list, per_call, each_call)
                values = [value for _key, _first, run in runs for value in run]
                row = sizes(values, lambda codec, runs=runs: our_batches(runs, codec))
                label = f"{per_call:2d} a batch, " + ("every batch" if each_call else "ingest rule")
                print(f"  {label:26s}{row[0]:8.0f} {row[1]:13.0f} {row[2]:8.0f} {row[3]:8.0f}")
        print()
        print("bytes per record by records in a Kafka batch, snappy / zstd (a live node's batches are small: the "
              "sender\nwaits kafka.linger_ms, 5 ms; Fluent Bit flushes once a second by default)")
        v1_runs, v2_runs = (seal_runs(node, provider, compact, read_list) for _label, compact in FORMATS)
        print(f"{'':12s}{'v1':>14s}{'v2':>14s}{'Fluent Bit':>14s}")
        for per_batch in (1, 10, 100, 1000):
            cells = []
            for batches in (lambda codec: our_batches(v1_runs, codec, per_batch),
                            lambda codec: our_batches(v2_runs, codec, per_batch),
                            lambda codec: keyless_batches(fluent_bit, codec, per_batch)):
                cells.append(f"{batches('snappy') / lines:6.0f} /{batches('zstd') / lines:5.0f}")
            print(f"  {per_batch:5d} a batch" + "".join(f"{cell:>14s}" for cell in cells))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    if args.topic_lines:
        print()
        how = f"written at {args.topic_rate:,}/s while it ran" if args.topic_rate else "written before it started"
        print(f"on a real topic: the pipeline shipped {args.topic_lines:,} entries ({how}) into Apache Kafka, "
              "one partition; the partition's log segments on disk per record")
        for codec, label, records, size in asyncio.run(topic_figures(args.topic_lines, args.topic_rate,
                                                                     args.topic_codecs.split(","))):
            print(f"  {codec:7s}{label:28s}{size / records:8.0f} bytes/record  ({size:,} bytes, {records:,} records)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
