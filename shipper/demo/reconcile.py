"""What a node wrote against what reached the topic: the demo's report and the tests' accounting.

Given the bodies written per chain (a `simnode.Ledger`) and the records read back from Kafka,
count per chain what arrived, what is missing, what arrived twice (exact copies: harmless replays;
conflicting copies: a defect) and what the chain itself declares lost (gap records).
"""
from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable


@dataclass(slots=True)
class ChainAccount:
    written: int = 0
    received: int = 0
    missing: int = 0
    unexpected: int = 0
    duplicates_exact: int = 0
    duplicates_conflicting: int = 0
    gaps: int = 0
    gap_bytes: int = 0


@dataclass(slots=True)
class Reconciliation:
    chains: dict[str, ChainAccount] = field(default_factory=dict)
    control_records: Counter = field(default_factory=Counter)
    malformed: int = 0

    def total(self, name: str) -> int:
        return sum(getattr(account, name) for account in self.chains.values())

    @property
    def complete(self) -> bool:
        """Every written entry arrived (or its chain names the loss), and no copy conflicts."""
        return all(account.missing == 0 or account.gaps for account in self.chains.values()) \
            and self.total("duplicates_conflicting") == 0 and self.malformed == 0

    def summary(self) -> dict:
        return {name: self.total(name) for name in ("written", "received", "missing", "unexpected", "duplicates_exact",
                                                     "duplicates_conflicting", "gaps", "gap_bytes")} | {
            "control_records": dict(self.control_records), "malformed": self.malformed, "chains": len(self.chains)}


def reconcile(written: dict[str, list[bytes]], values: Iterable[bytes]) -> Reconciliation:
    """`written`: chain -> bodies in order. `values`: record values as read from the topic."""
    result = Reconciliation()
    seen: dict[str, bytes] = {}
    bodies: dict[str, list[str]] = {}
    for value in values:
        try:
            record = json.loads(value)
            chain = record["seal"]["chain"]
            event_id = f'{chain}:{record["seal"]["seq"]}'     # what a v1 value holds and a v2 header carries
        except (ValueError, KeyError, TypeError):
            result.malformed += 1
            continue
        account = result.chains.setdefault(chain, ChainAccount())
        earlier = seen.get(event_id)
        if earlier is not None:
            if earlier == bytes(value):
                account.duplicates_exact += 1
            else:
                account.duplicates_conflicting += 1
            continue
        seen[event_id] = bytes(value)
        kind = record.get("type")
        if kind:
            result.control_records[kind] += 1
            if kind == "gap":
                account.gaps += 1
                account.gap_bytes += max(0, json.loads(record["body"]).get("bytes", 0))
            continue
        account.received += 1
        bodies.setdefault(chain, []).append(record["body"])
    for chain, expected in written.items():
        account = result.chains.setdefault(chain, ChainAccount())
        account.written = len(expected)
        want = Counter(body.decode("utf-8", "replace") for body in expected)
        got = Counter(bodies.get(chain, []))
        account.missing = sum((want - got).values())
        account.unexpected = sum((got - want).values())
    return result


async def read_topic(bootstrap: str, topic: str, *, idle_s: float = 3.0, timeout_s: float = 120.0,
                     **client_options) -> list[bytes]:
    """Every record value of a topic, from the beginning, until nothing new came for `idle_s`.
    (Tansu reports a partition's end offset as the start of its last batch, so end offsets alone
    cannot say when everything was read.)"""
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                enable_auto_commit=False, group_id=None, **client_options)
    await consumer.start()
    values: list[bytes] = []
    try:
        deadline = time.monotonic() + timeout_s
        idle_since = time.monotonic()
        while time.monotonic() < deadline and time.monotonic() - idle_since < idle_s:
            batch = await consumer.getmany(timeout_ms=500, max_records=10_000)
            if batch:
                idle_since = time.monotonic()
                for messages in batch.values():
                    values.extend(message.value for message in messages)
    finally:
        await asyncio.wait_for(consumer.stop(), 10)
    return values
