"""Records per second of `shipper verify` reading a real broker (not part of the tests):
`python bench/verify_topic_bench.py --broker kafka` (or tansu).

Writes --records realistic records (--format: the compact v2 by default) into a topic of a broker the
test harness starts (tests/harness: Apache Kafka with the full JIT, or Tansu): --chains container chains
of one node, sealed by the real sealing code in runs of --run records per chain (the spans of one shipper
batch), a signed checkpoint note every --checkpoint-every records of a chain, a signed node manifest of
every chain's head every --manifest-every records (after a round), and the last checkpoints and
manifest at the end; keyed by murmur2 onto --partitions partitions and sent as the shipper sends them
(wire.py's kafka_records and batch builder, --codec, about 1 MiB a batch). Then runs verify_topic
--rounds times with the public key and prints records/s by this process's CPU time (the verifier runs
on one thread; CPU time is steadier than the wall clock on a shared machine) and by the wall clock, min
and median, and the CPU per record of each stage from the report (fetch: the requests and aiokafka's
decoding of the answers; decode: batches split, CRCs checked, decompressed; scan: records read and
values scanned in C; judge: Verifier.feed_scanned and feed, checkpoints' signatures and trees included;
other: the rest of verify_topic, ListOffsets, the report).

The idle settle of verify_topic (a quiet poll after the end offsets, --idle seconds at most) is part of
the wall clock, as it is for a user.

--follow measures `shipper verify --follow --group` instead: each round a Follower of a new consumer
group (in this process, no metrics port) reads the topic from its beginning until it has verified every
record; its CPU and wall clock include joining the group and its commits (state snapshots), and the
records/s are its own metric's.

--prove measures `shipper prove` instead: each round the proof of the record 9/10 into the first chain
(9,000 of 10,000 by default), which reads its chain's partition to the first checkpoint after the record
(nearly the whole partition); the records/s are the partition's records read, by CPU time and by the
wall clock.
"""
from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Awaitable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aiokafka import AIOKafkaProducer  # noqa: E402
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: E402

from shipper import seal  # noqa: E402
from shipper.kafka.wire import _BATCH_HEADER, _CODECS, _kafka_records, _SpanBatch, partition_of  # noqa: E402
from shipper.parse import Entries  # noqa: E402
from shipper.records import ChainContext, seal_control, seal_entries  # noqa: E402
from shipper.verify import verify_topic  # noqa: E402
from shipper.verify.verifier import rfc3339_epoch  # noqa: E402

TIME = "2026-11-28T18:00:00.123456789Z"
NODE = "node-a"
TOPIC = "logs"
BATCH_BYTES = 1 << 20


def resource(uid: str) -> str:
    return json.dumps({"k8s.namespace.name": "shop", "k8s.pod.name": f"web-{uid}", "k8s.pod.uid": uid,
                       "k8s.container.name": "app", "k8s.container.restart_count": 0, "k8s.node.name": NODE,
                       "k8s.pod.labels": {"app": "web", "tier": "frontend"}, "k8s.deployment.name": "web"})


class Partitions:
    """Spans per partition, sent as one batch each time a partition holds BATCH_BYTES of values."""

    def __init__(self, producer: AIOKafkaProducer, count: int, codec: str) -> None:
        self.producer = producer
        self.count = count
        self.codec = _CODECS[codec]
        self.spans: list[list[tuple]] = [[] for _ in range(count)]
        self.sizes = [0] * count
        self.acks: list[asyncio.Future] = []

    async def add(self, chain: str, first_seq: int, values: list[bytes]) -> None:
        key = chain.encode()
        partition = partition_of(key, self.count)
        self.spans[partition].append((key, first_seq, values, 0, len(values)))
        self.sizes[partition] += sum(map(len, values))
        if self.sizes[partition] >= BATCH_BYTES:
            await self.send(partition)

    async def send(self, partition: int) -> None:
        if not self.spans[partition]:
            return
        records, taken, _ = _kafka_records(self.spans[partition], 1 << 40, 1 << 40, _BATCH_HEADER)
        self.acks.append(await self.producer.send_batch(_SpanBatch(self.codec, records, sum(taken)), TOPIC,
                                                        partition=partition))
        self.spans[partition], self.sizes[partition] = [], 0
        if len(self.acks) >= 32:
            await asyncio.gather(*self.acks)
            self.acks = []

    async def flush(self) -> None:
        for partition in range(self.count):
            await self.send(partition)
        await asyncio.gather(*self.acks)


async def write_topic(bootstrap: str, args: argparse.Namespace, signer: seal.Signer) -> int:
    names = [f"uid-{index:04d}/app" for index in range(args.chains)]
    node_chain = "node/" + NODE
    heads = {name: seal.ChainHead.genesis(name) for name in names + [node_chain]}
    compact = args.format == "v2"
    contexts = {name: ChainContext(name, resource(name.split("/")[0]), f"/var/log/pods/{name}/0.log",
                                   compact=compact) for name in names}
    contexts[node_chain] = ChainContext(node_chain, json.dumps({"k8s.node.name": NODE}), "", compact=compact)
    # v2: a chain's first records after its start and after each checkpoint carry the full resource, the
    # others only the pod's identity (as the ingest asks for them)
    brief = {name: dataclasses.replace(context, full=False) for name, context in contexts.items()}
    full_next = set(names)
    identities = {name: seal.Identity.of_resource(json.loads(contexts[name].resource_json)) for name in names}
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=False,
                                max_request_size=8 << 20)
    await producer.start()
    written = 0
    try:
        partitions = Partitions(producer, args.partitions, args.codec)
        since_checkpoint = dict.fromkeys(names, 0)
        def checkpoint(name: str) -> bytes:
            head = heads[name]
            text = seal.checkpoint_note_text(name, head.tree, head, TIME, identities[name])
            value, heads[name] = seal_control(head, seal.TYPE_CHECKPOINT, seal.sign_statement(text, [signer]),
                                              contexts[name], TIME)
            since_checkpoint[name] = 0
            full_next.add(name)
            return value

        async def manifest() -> int:
            head = heads[node_chain]
            listed = [(name, heads[name].seq, heads[name].hash) for name in names]
            text = seal.manifest_note_text(NODE, head.tree, head, TIME, listed)
            value, heads[node_chain] = seal_control(head, seal.TYPE_MANIFEST, seal.sign_statement(text, [signer]),
                                                    contexts[node_chain], TIME)
            await partitions.add(node_chain, head.seq + 1, [value])
            return 1

        manifested = 0
        while written < args.records:
            for name in names:
                entries = Entries()
                first = heads[name].seq + 1
                for index in range(args.run):
                    entries.add(index * 120, TIME.encode(), b"stdout",
                                f"GET /api/orders/{first + index} 200 in 12ms user=alice".encode(), 0)
                context = contexts[name] if name in full_next else brief[name]
                full_next.discard(name)
                values, heads[name] = seal_entries(heads[name], entries, context, TIME, None)
                since_checkpoint[name] += len(values)
                if since_checkpoint[name] >= args.checkpoint_every:
                    values.append(checkpoint(name))
                await partitions.add(name, first, values)
                written += len(values)
            if written - manifested >= args.manifest_every:
                written += await manifest()
                manifested = written
        for name in names:            # the shipper's last checkpoints as it stops: every record attested
            if since_checkpoint[name]:
                await partitions.add(name, heads[name].seq + 1, [checkpoint(name)])
                written += 1
        written += await manifest()
        await partitions.flush()
    finally:
        await producer.stop()
    return written


async def run(broker, args: argparse.Namespace) -> None:
    key = Ed25519PrivateKey.generate()
    signer = seal.Signer(key)
    await broker.create_topic(TOPIC, args.partitions)
    started = time.perf_counter()
    count = await write_topic(broker.bootstrap, args, signer)
    print(f"wrote {count:,} records in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    now = rfc3339_epoch(TIME) + 60
    rounds, splits = Rounds(), []
    cpu, wall = rounds.cpu, rounds.wall
    if args.follow:
        await follow_rounds(broker.bootstrap, {signer.key_id: key.public_key()}, count, args, rounds)
    if args.prove:
        count = await prove_rounds(broker.bootstrap, {signer.key_id: key.public_key()}, args, rounds)
    for _ in range(0 if args.follow or args.prove else args.rounds):
        report, elapsed_cpu = await rounds.timed(count, verify_topic(
            broker.bootstrap, TOPIC, public_keys={signer.key_id: key.public_key()}, idle_timeout_s=args.idle,
            timeout_s=600, now=now))
        assert report.ok, report.human()[-2000:]
        assert report.totals["records_read"] >= count and report.totals["unattested_records"] == 0, report.totals
        if "fetch" in report.meta:
            stages = {name: report.meta["fetch"][name + "_s"] for name in ("fetch", "decode", "scan", "judge")}
            stages["other"] = elapsed_cpu - sum(stages.values())
            splits.append(stages)
    print(f"{args.broker}{' --follow' if args.follow else ' --prove' if args.prove else ''}: {count:,} {args.format} records, {args.chains} chains in runs of {args.run}, "
          f"{args.partitions} partitions, {args.codec}: {min(cpu):,.0f} / {statistics.median(cpu):,.0f} records/s "
          f"of CPU time (min / median of {args.rounds}), {min(wall):,.0f} / {statistics.median(wall):,.0f} by the "
          "wall clock")
    if splits:
        parts = ", ".join(f"{name} {statistics.median(s[name] for s in splits) / count * 1e6:.2f}"
                          for name in splits[0])
        print(f"  CPU µs per record (median): {parts}")


class Rounds:
    """Each round's records/s, by this process's CPU time and by the wall clock."""

    def __init__(self) -> None:
        self.cpu: list[float] = []
        self.wall: list[float] = []

    async def timed(self, count: int, work: Awaitable) -> tuple[Any, float]:
        """Awaits `work`, a round of `count` records: its result and the CPU seconds it took."""
        started, started_cpu = time.perf_counter(), time.process_time()
        result = await work
        elapsed, elapsed_cpu = time.perf_counter() - started, time.process_time() - started_cpu
        self.cpu.append(count / elapsed_cpu)
        self.wall.append(count / elapsed)
        print(f"  round: {count / elapsed_cpu:,.0f} records/s CPU, {count / elapsed:,.0f} wall", file=sys.stderr)
        return result, elapsed_cpu


async def follow_rounds(bootstrap: str, public_keys: dict, count: int, args: argparse.Namespace,
                        rounds: Rounds) -> None:
    import io
    import uuid

    from shipper.verify.follow import Follower

    for _ in range(args.rounds):
        follower = Follower(bootstrap, [TOPIC], f"bench-{uuid.uuid4().hex[:8]}", public_keys=public_keys,
                            verifier_options={}, commit_every_s=5.0, out=io.StringIO())
        task = None

        async def verified_all() -> None:
            nonlocal task
            task = asyncio.ensure_future(follower.run())
            while follower.metrics.records._value.get() < count and not task.done():
                await asyncio.sleep(0.05)

        await rounds.timed(count, verified_all())
        follower.stop.set()
        assert await task == 0 and not follower.violated, follower.out.getvalue()[-2000:]


async def prove_rounds(bootstrap: str, public_keys: dict, args: argparse.Namespace, rounds: Rounds) -> int:
    """Rounds of prove_from_topic; returns the records of the partition read."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    from shipper.verify.inputs import prove_from_topic

    chain = "uid-0000/app"
    seq = args.records // args.chains * 9 // 10          # 9/10 into the chain: 9,000 of 10,000 by default
    event_id = f"{chain}:{seq}"
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        tp = TopicPartition(TOPIC, partition_of(chain.encode(), args.partitions))
        count = (await consumer.end_offsets([tp]))[tp]
    finally:
        await consumer.stop()
    for _ in range(args.rounds):
        proof, _ = await rounds.timed(count, prove_from_topic(bootstrap, TOPIC, event_id, public_keys=public_keys,
                                                              idle_timeout_s=1.0))
        assert proof["event_id"] == event_id and proof["checkpoint_seq"] > seq, proof
    return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--broker", choices=["kafka", "tansu"], default="kafka")
    parser.add_argument("--records", type=int, default=2_000_000)
    parser.add_argument("--chains", type=int, default=200)
    parser.add_argument("--run", type=int, default=100, help="records of one chain in a row (a span of a batch)")
    parser.add_argument("--checkpoint-every", type=int, default=1000, help="records of a chain between checkpoints")
    parser.add_argument("--manifest-every", type=int, default=20_000,
                        help="records between node manifests (after a round of every chain)")
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--codec", choices=list(_CODECS), default="snappy")
    parser.add_argument("--format", choices=["v1", "v2"], default="v2",
                        help="record format: audit-shipper/v1 (full) or /v2 (compact, the shipper's default)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--idle", type=float, default=0.5, help="verify_topic's idle_timeout_s")
    parser.add_argument("--follow", action="store_true", help="measure verify --follow --group instead")
    parser.add_argument("--prove", action="store_true", help="measure prove (one record's proof) instead")
    args = parser.parse_args()
    from tests.harness.kafka import KafkaBroker
    from tests.harness.tansu import TansuBroker

    with tempfile.TemporaryDirectory(prefix="verify-bench-") as tmp:
        # the full JIT for Kafka: a broker under sustained load
        broker = (KafkaBroker(Path(tmp), fast_start=False, heap="2g") if args.broker == "kafka"
                  else TansuBroker(Path(tmp)))
        with broker:
            asyncio.run(run(broker, args))


if __name__ == "__main__":
    main()
