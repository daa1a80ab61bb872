"""`shipper verify --group NAME`: one verify of a topic split across machines, each run of the command a
member of the Kafka consumer group NAME. Kafka's group coordinator deals the partitions; nothing else
coordinates. What crosses partitions (split.py) goes through an exchange topic of one partition,
`audit-shipper-verify.<group>`, which every member reads whole:

1. A run is one generation of the group: `<group>/<generation>`. Each member reads its assigned
   partitions from their beginning to their end offsets, then writes a `read` message: the partitions
   it read, the chains it holds, and its claims on chains it read no record of.
2. Once `read` messages of the run cover every partition of the topics, each member routes the claims
   itself (every member sees the same messages, so all route alike): the claims on its chains it
   applies; the claims on chains no member holds are judged by the member of lowest id among those
   with partitions. It finishes and writes a `report` message: its report part and latest heads.
3. Once `report` messages cover every partition, every member merges the same parts in the same order
   and prints the same report; then it leaves the group.

A rebalance before the run is complete (a member joined, left or died) starts a new run in the new
generation: the partitions are dealt again and read again. A member that finds the run complete when
the group rebalances (another member left after finishing) is done too. Messages are JSON, zlib-
compressed and cut into chunks under a broker's default message size; the exchange topic is created
(one partition, replicated on up to three brokers, deleted after a day) when it does not exist.
"""
from __future__ import annotations

import json
import re
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable

from .chain import RelayedClaim
from .inputs import (VerifyError, _stop, _topic_list, keep_heads, latest_of, load_trusted_heads, offset_range,
                     read_partitions, topic_partitions)
from .report import Report, merge_reports, report_from_part, report_part
from .split import route_claims
from .verifier import Verifier

EXCHANGE_PREFIX = "audit-shipper-verify."
CHUNK_BYTES = 512 * 1024
#: How far back, before the run began, the exchange topic is read (clocks of members may differ).
CLOCK_SKEW_S = 600.0
_TOPIC_CHARS = re.compile(r"[^A-Za-z0-9._-]")


def exchange_topic_of(group: str) -> str:
    return (EXCHANGE_PREFIX + _TOPIC_CHARS.sub("_", group))[:249]


def encode_message(payload: dict[str, Any]) -> list[bytes]:
    """A payload as zlib-compressed JSON cut into chunks of at most CHUNK_BYTES."""
    blob = zlib.compress(json.dumps(payload, separators=(",", ":")).encode(), 6)
    return [blob[start:start + CHUNK_BYTES] for start in range(0, max(1, len(blob)), CHUNK_BYTES)] or [b""]


@dataclass
class _Messages:
    """The messages of one run read so far, reassembled from their chunks: (kind, member) -> payload."""

    run: str
    complete: dict[tuple[str, str], dict] = field(default_factory=dict)
    _chunks: dict[tuple[str, str], dict[int, bytes]] = field(default_factory=dict)

    def add(self, headers: dict[str, bytes], value: bytes) -> dict | None:
        """Take one chunk; the payload when it completes a message (kept in `complete` too)."""
        if headers.get("run", b"").decode("utf-8", "replace") != self.run:
            return None
        try:
            kind, member = headers["kind"].decode(), headers["member"].decode()
            index, count = (int(part) for part in headers["chunk"].decode().split("/"))
        except (KeyError, ValueError):
            return None
        key = (kind, member)
        parts = self._chunks.setdefault(key, {})
        parts[index] = value
        if len(parts) != count:
            return None
        del self._chunks[key]
        try:
            payload = json.loads(zlib.decompress(b"".join(parts[i] for i in range(count))))
        except (ValueError, zlib.error, KeyError):
            return None     # a broken message: the run waits for a whole one (a rerun of that member)
        self.complete[key] = payload
        return payload

    def of_kind(self, kind: str) -> dict[str, dict]:
        return {member: payload for (each, member), payload in sorted(self.complete.items()) if each == kind}

    def covers(self, kind: str, partitions: set[str]) -> bool:
        read = set()
        for payload in self.of_kind(kind).values():
            read.update(payload["partitions"])
        return partitions <= read


class _Membership:
    """The rebalance listener: the partitions assigned (`assignments` counts them), and whether the group
    rebalanced since `rebalanced` was cleared."""

    def __init__(self, on_assigned: Callable[[list], Awaitable[None]] | None = None,
                 on_revoked: Callable[[list], Awaitable[None]] | None = None) -> None:
        from aiokafka.abc import ConsumerRebalanceListener

        outer = self

        class Listener(ConsumerRebalanceListener):
            async def on_partitions_revoked(self, revoked) -> None:
                outer.rebalanced = True
                if on_revoked is not None:
                    await on_revoked(sorted(revoked))

            async def on_partitions_assigned(self, assigned) -> None:
                outer.assigned = sorted(assigned)
                if on_assigned is not None:
                    await on_assigned(outer.assigned)
                outer.assignments += 1
                outer.rebalanced = True

        self.listener = Listener()
        self.assigned: list = []
        self.assignments = 0
        self.rebalanced = False


async def verify_group(bootstrap: str, topic: str | list[str], group: str, *, public_keys: dict[str, Any] | None,
                       verifier_options: dict[str, Any], now: float | None = None, idle_timeout_s: float = 5.0,
                       timeout_s: float | None = None, trusted_heads: str | Path | None = None,
                       save_heads_to: str | Path | None = None, exchange_topic: str | None = None,
                       progress: Callable[[int, int], None] | None = None, **client_options) -> Report:
    """Verify the topic(s) as a member of consumer group `group` (see the module docstring): the report of
    the whole topic, the same on every member."""
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
    from aiokafka.errors import KafkaError

    topics = _topic_list(topic)
    if not topics:
        raise VerifyError("no topic given")
    exchange = exchange_topic or exchange_topic_of(group)
    now = time.time() if now is None else now
    started = time.monotonic()
    membership = _Membership()
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False, auto_offset_reset="earliest",
                                client_id="shipper-verify", max_partition_fetch_bytes=16 << 20,
                                fetch_max_bytes=64 << 20, **client_options)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, client_id="shipper-verify", acks="all", compression_type=None,
                                max_request_size=CHUNK_BYTES + 64 * 1024, **client_options)
    exchange_reader = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False, client_id="shipper-verify",
                                       auto_offset_reset="earliest", **client_options)
    try:
        for client in (consumer, producer, exchange_reader):
            await client.start()
    except (KafkaError, OSError) as exc:
        for client in (consumer, producer, exchange_reader):
            await _stop(client)
        raise VerifyError(f"cannot connect to Kafka at {bootstrap}: {exc}") from None
    try:
        every = {f"{tp.topic}/{tp.partition}" for tp in await topic_partitions(consumer, topics)}
        await _ensure_exchange(bootstrap, exchange, client_options)
        consumer.subscribe(topics, listener=membership.listener)
        member = _Member(consumer, producer, exchange_reader, exchange, membership, every, group, public_keys,
                         dict(verifier_options, now=now), trusted_heads, idle_timeout_s, timeout_s, progress)
        report, heads, runs = await member.verify()
    except KafkaError as exc:
        raise VerifyError(f"verifying {', '.join(topics)} as group {group}: {exc}") from None
    finally:
        for client in (consumer, producer, exchange_reader):
            await _stop(client)
    elapsed = time.monotonic() - started
    report.meta.update(source="kafka", topics=topics, partitions=len(every), stopped="end_offsets", group=group,
                       exchange_topic=exchange,
                       runs=runs, elapsed_s=round(elapsed, 3),
                       records_per_s=round(report.totals["records_read"] / elapsed) if elapsed > 0 else None)
    return keep_heads(report, heads, now, trusted_heads, save_heads_to)


async def _ensure_exchange(bootstrap: str, exchange: str, client_options: dict,
                           retention_ms: int = 24 * 3600 * 1000) -> None:
    """Create the topic (one partition, delete policy) unless it exists; VerifyError when it cannot be."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from aiokafka.errors import KafkaError, TopicAlreadyExistsError

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, client_id="shipper-verify", **client_options)
    await admin.start()
    try:
        if exchange in await admin.list_topics():
            return
        try:
            brokers = len((await admin.describe_cluster()).get("brokers") or ()) or 1
            await admin.create_topics([NewTopic(exchange, 1, min(3, brokers), topic_configs={
                "retention.ms": str(retention_ms), "cleanup.policy": "delete"})])
        except TopicAlreadyExistsError:
            pass
        except KafkaError as exc:
            raise VerifyError(f"the topic {exchange} does not exist and cannot be created ({exc}): create it with one "
                              "partition, or name another exchange topic with --exchange-topic") from None
    finally:
        await admin.close()


class _Member:
    """One member's part of the runs of a group verify."""

    def __init__(self, consumer, producer, exchange_reader, exchange: str, membership: _Membership, every: set[str],
                 group: str, public_keys, verifier_options: dict, trusted_heads, idle_timeout_s: float,
                 timeout_s: float | None, progress) -> None:
        self.consumer, self.producer, self.exchange_reader = consumer, producer, exchange_reader
        self.exchange, self.membership, self.every, self.group = exchange, membership, every, group
        self.public_keys, self.verifier_options, self.trusted_heads = public_keys, verifier_options, trusted_heads
        self.idle_timeout_s, self.timeout_s, self.progress = idle_timeout_s, timeout_s, progress

    async def verify(self) -> tuple[Report, list[dict], int]:
        from aiokafka import TopicPartition

        exchange_tp = TopicPartition(self.exchange, 0)
        self.exchange_reader.assign([exchange_tp])
        runs = seen = 0
        while True:
            while self.membership.assignments == seen:
                await self.consumer.getmany(timeout_ms=200)     # joins the group, keeps it alive
            seen = self.membership.assignments
            runs += 1
            self.membership.rebalanced = False
            run = f"{self.group}/{self.consumer._coordinator.generation}"
            me = self.consumer._coordinator.member_id
            began = time.time() - CLOCK_SKEW_S
            found = await self.exchange_reader.offsets_for_times({exchange_tp: int(began * 1000)})
            start = found.get(exchange_tp)
            if start is None:
                await self.exchange_reader.seek_to_end(exchange_tp)
            else:
                self.exchange_reader.seek(exchange_tp, start.offset)
            outcome = await self._run(run, me, list(self.membership.assigned))
            if outcome is not None:
                return (*outcome, runs)

    async def _run(self, run: str, me: str, assigned: list) -> tuple[Report, list[dict]] | None:
        messages = _Messages(run)
        verifier = Verifier(self.public_keys, **self.verifier_options)
        if self.trusted_heads is not None:
            load_trusted_heads(verifier, self.trusted_heads)
        mine = sorted(f"{tp.topic}/{tp.partition}" for tp in assigned)
        if assigned:
            begins, ends = await offset_range(self.consumer, assigned)
            reading = await read_partitions(verifier, self.consumer, assigned, idle_timeout_s=self.idle_timeout_s,
                                            timeout_s=self.timeout_s, begins=begins, ends=ends, wait_for_claims=False,
                                            assign=False, progress=self.progress,
                                            interrupted=lambda: self.membership.rebalanced)
            if reading.stopped == "interrupted":
                return None
        relayed = verifier.relay_claims()
        await self._write(run, me, "read", {"partitions": mine, "held": sorted(verifier.chains),
                                            "claims": [claim.to_dict() for claim in relayed]})
        if not await self._collect(messages, "read"):
            return None
        reads = messages.of_kind("read")
        members = sorted(reads)
        held = [set(reads[member]["held"]) for member in members]
        claims = [RelayedClaim.from_dict(claim) for member in members for claim in reads[member]["claims"]]
        routed, unheld = route_claims(held, claims)
        verifier.apply_claims(routed[members.index(me)])
        judge = min((member for member in members if reads[member]["partitions"]), default=me)
        parts = [verifier.finish()]
        if judge == me and unheld:
            absent = Verifier(self.public_keys, **self.verifier_options)
            absent.apply_claims(unheld)
            parts.append(absent.finish())
        await self._write(run, me, "report", {"partitions": mine, "parts": [report_part(part) for part in parts],
                                              "heads": verifier.latest_heads()})
        if not await self._collect(messages, "report", allow_rebalance=True):
            return None
        reports = messages.of_kind("report")
        merged = merge_reports([report_from_part(part) for member in sorted(reports)
                                for part in reports[member]["parts"]],
                               {"members": len(reports),
                                "member_partitions": [len(reports[member]["partitions"]) for member in sorted(reports)]})
        heads = latest_of(*(reports[member]["heads"] for member in sorted(reports)))
        return merged, heads

    async def _write(self, run: str, me: str, kind: str, payload: dict) -> None:
        chunks = encode_message(payload)
        for index, chunk in enumerate(chunks):
            headers = [("run", run.encode()), ("member", me.encode()), ("kind", kind.encode()),
                       ("chunk", f"{index}/{len(chunks)}".encode())]
            await self.producer.send_and_wait(self.exchange, chunk, key=run.encode(), partition=0, headers=headers)

    async def _collect(self, messages: _Messages, kind: str, allow_rebalance: bool = False) -> bool:
        """Read the exchange until `kind` messages of the run cover every partition: True; False when the
        group rebalanced first (unless the run completes anyway, `allow_rebalance`)."""
        while not messages.covers(kind, self.every):
            if self.membership.rebalanced and not allow_rebalance:
                return False
            batch = await self.exchange_reader.getmany(timeout_ms=200, max_records=1000)
            for records in batch.values():
                for record in records:
                    messages.add(dict(record.headers or ()), record.value or b"")
            await self.consumer.getmany(timeout_ms=0)     # stay alive in the group meanwhile
            if allow_rebalance and self.membership.rebalanced and not batch:
                # a member that finished left: the run may be complete; else it restarts
                if not messages.covers(kind, self.every):
                    return False
        return True
