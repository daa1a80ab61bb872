"""`shipper verify --follow --group NAME`: a verifier that keeps judging a live topic, as one or more
members of a Kafka consumer group, and resumes where it was after a restart.

- **Reading.** The group's coordinator deals the partitions; the consumer holds the membership and the
  commits, and fetches nothing itself (its partitions are paused): the records are read by fetch.Fetcher
  on its client, the fast path a one-shot verify reads with (batches decoded and scanned natively, chains
  judged in runs). A partition retention deleted records of before they were read is reported
  (`incomplete_read`) and read on from its log start; one deleted, truncated or unreadable is reported and
  stops until it is assigned again. Records are judged as they come; what a
  one-shot verify judges at the end (a missing range nothing filled, a head a manifest attests that the
  topic does not hold) is judged once it has waited `grace_s`, and a chain not attested for
  `stale_after_s` is reported stale (Verifier.settle).
- **Across partitions.** A member applies a manifest's claims on the chains of its own partitions (by the
  shipper's partitioner, murmur2 of the chain) and writes the others to the exchange topic
  (`audit-shipper-verify.<group>`, as group.py), where every member reads them.
- **Progress.** Every `commit_every_s`, per partition: the states of its chains (snapshot.py) go to the
  state topic (`audit-shipper-verify.<group>.state`, kept 7 days), then the partition's offset is
  committed to the group with the snapshot's place as the offset's metadata (`state:<offset>:<chunks>`).
  A member given the partition (after a restart, a crash or a rebalance) restores that snapshot and reads
  on from the committed offset: nothing before it is read again, nothing after it is skipped. A
  partition with no commit is read from its beginning.
- **Reporting.** Each violation and finding is a JSON line on standard output and counts in the metrics
  (`/metrics`, with `/healthz` and `/readyz`, on --metrics-port). `--on-violation exit` commits and exits
  with status 1 at the first violation; `alert` (the default) goes on: the metrics and the PrometheusRule
  alerts carry it.
"""
from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
import time
import zlib
from typing import Any, TextIO

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.exposition import generate_latest

from ..health import HealthServer
from ..kafka.wire import partition_of
from .chain import RelayedClaim
from .group import _Membership, _Messages, _ensure_exchange, encode_message, exchange_topic_of
from .fetch import Fetcher
from .inputs import POLL_EVERY_S, VerifyError, _settle_stopped, _stop, _topic_list, topic_partitions
from .report import INCOMPLETE_READ, Issue
from .snapshot import FORMAT, chain_from_dict, chain_to_dict
from .verifier import Verifier

log = logging.getLogger("shipper.verify.follow")

STATE_SUFFIX = ".state"
STATE_RETENTION_MS = 7 * 24 * 3600 * 1000
DEFAULT_GRACE_S = 300.0
DEFAULT_COMMIT_EVERY_S = 30.0
#: Seqs of each chain's duplicate window kept in a snapshot.
WINDOW_KEPT = 4096
STALL_AFTER_S = 60.0


class FollowMetrics:
    """The follower's Prometheus metrics (own registry)."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        p = "audit_shipper_verify_"
        self.records = Counter(p + "records_total", "Records verified", registry=r)
        self.violations = Counter(p + "violations_total", "Violations found, by kind", ["kind"], registry=r)
        self.findings = Counter(p + "findings_total", "Findings, by kind", ["kind"], registry=r)
        self.chains = Gauge(p + "chains", "Chains held by this member", registry=r)
        self.stale_chains = Gauge(p + "stale_chains", "Chains held whose latest attestation is older than "
                                  "--stale-after", registry=r)
        self.lag = Gauge(p + "lag_records", "Records in the partition not verified yet", ["topic", "partition"],
                         registry=r)
        self.partitions = Gauge(p + "partitions", "Partitions assigned to this member", registry=r)
        self.commits = Counter(p + "commits_total", "Snapshots written and offsets committed", registry=r)
        self.last_commit = Gauge(p + "last_commit_timestamp_seconds", "When progress was last committed",
                                 registry=r)
        self.restored = Counter(p + "restored_chains_total", "Chain states restored from a snapshot", registry=r)
        self.claims_relayed = Counter(p + "claims_relayed_total", "Manifest claims written for other members",
                                      registry=r)
        self.last_record = Gauge(p + "last_record_timestamp_seconds", "When a record was last verified", registry=r)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class Follower:
    """One member following the topics (see the module docstring). `run()` returns the exit status."""

    def __init__(self, bootstrap: str, topics: list[str], group: str, *, public_keys: dict[str, Any] | None,
                 verifier_options: dict[str, Any], grace_s: float = DEFAULT_GRACE_S,
                 commit_every_s: float = DEFAULT_COMMIT_EVERY_S, on_violation: str = "alert",
                 exchange_topic: str | None = None, metrics_host: str = "0.0.0.0", metrics_port: int | None = None,
                 out: TextIO | None = None, client_options: dict[str, Any] | None = None) -> None:
        if on_violation not in ("alert", "exit"):
            raise ValueError("on_violation is alert or exit")
        self.bootstrap, self.topics, self.group = bootstrap, topics, group
        self.public_keys, self.verifier_options = public_keys, dict(verifier_options)
        self.grace_s, self.commit_every_s, self.on_violation = grace_s, commit_every_s, on_violation
        self.exchange = exchange_topic or exchange_topic_of(group)
        self.state_topic = self.exchange + STATE_SUFFIX
        self.metrics_host, self.metrics_port = metrics_host, metrics_port
        self.out = out if out is not None else sys.stdout
        self.client_options = dict(client_options or {})
        self.metrics = FollowMetrics()
        self.verifier = Verifier(public_keys, **self.verifier_options)
        self.verifier.on_issue = self._issue
        self.run_id = f"{group}/follow"
        self.stop = asyncio.Event()
        self.violated = False
        self.positions: dict[Any, int] = {}             # assigned partition -> the next offset to read
        self.fetcher: Fetcher | None = None
        self._unfinished: dict[Any, str] = {}            # partitions the fetcher stopped for good, and why
        self.partition_counts: dict[str, int] = {}
        self.last_tick = time.monotonic()
        self.ready = False
        self.health: HealthServer | None = None
        self._exchange_tp = None
        self._rewind: int | None = None                   # where the exchange is to be read again from
        self._committed: dict[Any, tuple[int, float]] = {}    # partition -> (offset, when) last committed

    # -- issues --------------------------------------------------------------------------------------
    def _issue(self, issue: Issue, violation: bool) -> None:
        (self.metrics.violations if violation else self.metrics.findings).labels(issue.kind).inc()
        line = {"time": _now_text(), "violation" if violation else "finding": issue.kind, "chain": issue.chain,
                "seq": issue.seq, "topic": issue.topic, "partition": issue.partition, "offset": issue.offset,
                "detail": issue.detail}
        if issue.seq_last is not None:
            line["seq_last"] = issue.seq_last
        self.out.write(json.dumps(line) + "\n")
        self.out.flush()
        if violation:
            self.violated = True
            if self.on_violation == "exit":
                self.stop.set()

    # -- ownership -----------------------------------------------------------------------------------
    def _owns(self, chain: str) -> bool:
        """Whether the chain's records belong in a partition assigned here (the shipper's partitioner)."""
        key = chain.encode()
        return any((topic, partition_of(key, count)) in self._assigned_pairs
                   for topic, count in self.partition_counts.items())

    @property
    def _assigned_pairs(self) -> set[tuple[str, int]]:
        return {(tp.topic, tp.partition) for tp in self.positions}

    # -- the run -------------------------------------------------------------------------------------
    async def run(self) -> int:
        from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
        from aiokafka.errors import KafkaError

        self.membership = _Membership(on_assigned=self._assigned, on_revoked=self._revoked)
        common = dict(bootstrap_servers=self.bootstrap, client_id="shipper-verify-follow", **self.client_options)
        # membership and commits only: the fetcher reads its partitions, which it keeps paused
        self.consumer = AIOKafkaConsumer(group_id=self.group, enable_auto_commit=False, auto_offset_reset="earliest",
                                         **common)
        self.producer = AIOKafkaProducer(acks="all", max_request_size=(1 << 20), **common)
        self.exchange_reader = AIOKafkaConsumer(group_id=None, enable_auto_commit=False,
                                                auto_offset_reset="earliest", **common)
        self.state_reader = AIOKafkaConsumer(group_id=None, enable_auto_commit=False, auto_offset_reset="earliest",
                                             **common)
        self.fetcher = Fetcher(self.consumer._client, self.verifier)
        clients = (self.consumer, self.producer, self.exchange_reader, self.state_reader)
        try:
            for client in clients:
                await client.start()
        except (KafkaError, OSError) as exc:
            for client in clients:
                await _stop(client)
            raise VerifyError(f"cannot connect to Kafka at {self.bootstrap}: {exc}") from None
        try:
            for tp in await topic_partitions(self.consumer, self.topics):
                self.partition_counts[tp.topic] = max(self.partition_counts.get(tp.topic, 0), tp.partition + 1)
            await _ensure_exchange(self.bootstrap, self.exchange, self.client_options)
            await _ensure_exchange(self.bootstrap, self.state_topic, self.client_options,
                                   retention_ms=STATE_RETENTION_MS)
            exchange_tp = self._exchange_tp = TopicPartition(self.exchange, 0)
            self.exchange_reader.assign([exchange_tp])
            await self.exchange_reader.seek_to_end(exchange_tp)
            self.state_reader.assign([TopicPartition(self.state_topic, 0)])
            self.claims = _Messages(self.run_id)
            await self._serve_health()
            self.consumer.subscribe(self.topics, listener=self.membership.listener)
            await self._loop()
            await self._commit(force=True)
        except KafkaError as exc:
            raise VerifyError(f"following {', '.join(self.topics)} as group {self.group}: {exc}") from None
        finally:
            if self.health is not None:
                await self.health.stop()
            for client in clients:
                await _stop(client)
        return 1 if self.violated and self.on_violation == "exit" else 0

    async def _serve_health(self) -> None:
        if self.metrics_port is None:
            return

        def alive() -> bool:
            return time.monotonic() - self.last_tick < STALL_AFTER_S

        self.health = HealthServer(self.metrics, self.metrics_host, self.metrics_port, alive=alive,
                                   ready=lambda: self.ready)
        self.metrics_port = await self.health.start()

    async def _loop(self) -> None:
        verifier, fetcher = self.verifier, self.fetcher
        next_relay = next_settle = next_poll = time.monotonic()
        next_commit = time.monotonic() + self.commit_every_s
        while not self.stop.is_set():
            if self.positions:
                fed = await fetcher.fetch_once(500)
            else:                   # nothing assigned (yet): the poll below waits for the group instead
                fed = 0
                await self.consumer.getmany(timeout_ms=500)
            now = time.monotonic()
            self.last_tick = now
            self._take_positions()
            if fed:
                self.metrics.records.inc(fed)
                self.metrics.last_record.set(time.time())
            if len(fetcher.stopped) > len(self._unfinished):
                await self._settle_stopped()
            if now >= next_poll:        # it fetches nothing: polling keeps it in the group (see read_partitions)
                next_poll = now + POLL_EVERY_S
                await self.consumer.getmany(timeout_ms=0)
            if now >= next_relay:
                next_relay = now + 1.0
                await self._relay()
            if now >= next_settle:
                next_settle = now + min(5.0, max(0.5, self.grace_s / 4))
                verifier.settle(self.grace_s, time.time())
                self._gauges()
            if now >= next_commit:
                next_commit = now + self.commit_every_s
                await self._commit()

    def _take_positions(self) -> None:
        """The assigned partitions' positions as the fetcher has moved them (it feeds a round's records
        without yielding to the event loop, so these always match what the verifier was given)."""
        for tp in self.positions:
            try:
                self.positions[tp] = self.fetcher.position(tp.topic, tp.partition)
            except KeyError:            # being revoked: it keeps the position last taken
                pass

    async def _settle_stopped(self) -> None:
        """Partitions the fetcher stopped: records retention deleted before they were read are reported and
        reading goes on from the log start (inputs._settle_stopped); a partition deleted, truncated below the
        position or unreadable is reported once and not read again until it is assigned again."""
        from aiokafka.errors import KafkaError

        before = set(self._unfinished)
        try:
            await _settle_stopped(self.consumer._client, self.fetcher, self.verifier, set(), self._unfinished)
        except (KafkaError, OSError) as exc:
            log.warning("the partitions stopped could not be settled yet (%s): retried", exc)
            return
        for tp in sorted(set(self._unfinished) - before):
            position = self.fetcher.position(tp.topic, tp.partition)
            self.verifier.add_violation(INCOMPLETE_READ, f"reading stopped at offset {position}: "
                                        f"{self._unfinished[tp]}; the partition is not read again until it is "
                                        f"assigned again", tp.topic, tp.partition, position)

    def _gauges(self) -> None:
        self.metrics.chains.set(sum(1 for state in self.verifier.chains.values() if state.records))
        self.metrics.stale_chains.set(self.verifier.stale_chains(time.time()))
        self.metrics.partitions.set(len(self.positions))
        for tp, position in self.positions.items():
            highwater = self.fetcher.high_watermarks.get((tp.topic, tp.partition))
            if highwater is not None:
                self.metrics.lag.labels(tp.topic, str(tp.partition)).set(max(0, highwater - position))

    # -- claims across members -----------------------------------------------------------------------
    async def _relay(self) -> None:
        relayed = self.verifier.relay_claims(keep=self._owns)
        if relayed:
            chunks = encode_message({"claims": [claim.to_dict() for claim in relayed]})
            for index, chunk in enumerate(chunks):
                headers = [("run", self.run_id.encode()), ("member", self._member().encode()),
                           ("kind", b"claims"), ("chunk", f"{index}/{len(chunks)}".encode())]
                await self.producer.send_and_wait(self.exchange, chunk, key=self.run_id.encode(), partition=0,
                                                  headers=headers)
            self.metrics.claims_relayed.inc(len(relayed))
        if self._rewind is not None:
            # a restored partition's claims from before its snapshot: read again (claims only ever rise)
            self.exchange_reader.seek(self._exchange_tp, self._rewind)
            self._rewind = None
        batch = await self.exchange_reader.getmany(timeout_ms=0, max_records=1000)
        for records in batch.values():
            for record in records:
                # each message applied as it completes: a member's messages follow one another
                payload = self.claims.add(dict(record.headers or ()), record.value or b"")
                if payload is None:
                    continue
                self.claims.complete.clear()
                claims = [RelayedClaim.from_dict(claim) for claim in payload["claims"]]
                mine = [claim for claim in claims if self._owns(claim.chain) or (
                    claim.chain in self.verifier.chains and self.verifier.chains[claim.chain].records)]
                self.verifier.apply_claims(mine)

    def _member(self) -> str:
        return self.consumer._coordinator.member_id or "-"

    # -- progress ------------------------------------------------------------------------------------
    async def _commit(self, partitions: list | None = None, force: bool = False) -> None:
        """For each partition (all assigned by default) read further since its last commit, or not
        committed for ten intervals (claims and judgements change its chains too): its chains' snapshot,
        then its offset."""
        from aiokafka.structs import OffsetAndMetadata

        offsets = {}
        now = time.monotonic()
        self._take_positions()
        exchange_offset = await self.exchange_reader.position(self._exchange_tp)
        for tp in list(partitions if partitions is not None else self.positions):
            position = self.positions.get(tp)
            if position is None:
                continue
            last = self._committed.get(tp)
            if not force and last is not None and last[0] == position and now - last[1] < 10 * self.commit_every_s:
                continue
            chains = [chain_to_dict(state, WINDOW_KEPT) for state in self.verifier.chains.values()
                      if tuple(state.partition) == (tp.topic, tp.partition)
                      or (not state.records and self._owned_by(state.name, tp))]
            chunks = encode_message({"format": FORMAT, "topic": tp.topic, "partition": tp.partition,
                                     "offset": position, "exchange_offset": exchange_offset, "chains": chains})
            first = None
            for index, chunk in enumerate(chunks):
                sent = await self.producer.send_and_wait(self.state_topic, chunk, partition=0,
                                                         key=f"{tp.topic}/{tp.partition}/{index}".encode())
                first = sent.offset if first is None else first
            offsets[tp] = OffsetAndMetadata(position, f"state:{first}:{len(chunks)}")
            self._committed[tp] = (position, now)
        if offsets:
            await self.consumer.commit(offsets)
            self.metrics.commits.inc()
            self.metrics.last_commit.set(time.time())

    def _owned_by(self, chain: str, tp) -> bool:
        count = self.partition_counts.get(tp.topic)
        return count is not None and partition_of(chain.encode(), count) == tp.partition

    async def _assigned(self, assigned: list) -> None:
        self.consumer.pause(*assigned)                  # the fetcher reads them
        fresh = [tp for tp in assigned if tp not in self.positions]
        committed = await self.consumer._coordinator.fetch_committed_offsets(fresh) if fresh else {}
        unrestored = []
        for tp in fresh:
            found = committed.get(tp)
            position = 0
            if found is not None and found.offset >= 0 and (found.metadata or "").startswith("state:"):
                position = await self._restore(tp, found.offset, found.metadata)
            if position:
                self.fetcher.assign(tp.topic, tp.partition, position)
                self.positions[tp] = position
            else:
                unrestored.append(tp)
        if unrestored:
            begins = await self.consumer.beginning_offsets(unrestored)
            for tp in unrestored:
                self.fetcher.assign(tp.topic, tp.partition, begins[tp])
                self.positions[tp] = begins[tp]
        self.ready = True

    async def _restore(self, tp, offset: int, metadata: str) -> int:
        """The chains of a partition as its snapshot left them: the committed offset, or 0 (read it from
        its beginning) when the snapshot cannot be had (logged)."""
        from aiokafka import TopicPartition

        try:
            _, first, count = metadata.split(":")
            first, count = int(first), int(count)
            state_tp = TopicPartition(self.state_topic, 0)
            self.state_reader.seek(state_tp, first)
            chunks: list[bytes] = []
            deadline = time.monotonic() + 30
            while len(chunks) < count and time.monotonic() < deadline:
                batch = await self.state_reader.getmany(state_tp, timeout_ms=500, max_records=count - len(chunks))
                chunks += [record.value for record in batch.get(state_tp, [])]
            snapshot = json.loads(zlib.decompress(b"".join(chunks[:count])))
            if snapshot.get("format") != FORMAT or snapshot.get("offset") != offset:
                raise ValueError("the snapshot is not the one the offset was committed with")
            window = self.verifier.window
            for data in snapshot["chains"]:
                self.verifier.chains[data["name"]] = chain_from_dict(data, window)
            self.metrics.restored.inc(len(snapshot["chains"]))
            rewind = snapshot.get("exchange_offset")
            if isinstance(rewind, int):
                self._rewind = rewind if self._rewind is None else min(self._rewind, rewind)
            self._committed[tp] = (offset, time.monotonic())
            log.info("restored %d chains of %s/%d at offset %d", len(snapshot["chains"]), tp.topic, tp.partition,
                     offset)
            return offset
        except (ValueError, KeyError, TypeError, zlib.error) as exc:
            log.warning("the snapshot of %s/%d (%s) cannot be read (%s): reading the partition from its beginning",
                        tp.topic, tp.partition, metadata, exc)
            return 0

    async def _revoked(self, revoked: list) -> None:
        mine = [tp for tp in revoked if tp in self.positions]
        if not mine:
            return
        self._take_positions()
        for tp in mine:                 # nothing more is read of them: the commit holds what was judged
            self.fetcher.unassign(tp.topic, tp.partition)
            self._unfinished.pop(tp, None)
        try:
            await self._commit(mine, force=True)
        except Exception as exc:     # the next owner resumes from the last commit instead
            log.warning("could not commit %d revoked partitions: %s", len(mine), exc)
        pairs = {(tp.topic, tp.partition) for tp in mine}
        for tp in mine:
            del self.positions[tp]
            self._committed.pop(tp, None)
            try:
                self.metrics.lag.remove(tp.topic, str(tp.partition))    # another member reports it now
            except KeyError:
                pass
        for name in [name for name, state in self.verifier.chains.items() if tuple(state.partition) in pairs]:
            del self.verifier.chains[name]


def _now_text() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


async def follow_group(bootstrap: str, topic: str | list[str], group: str, *,
                       install_signals: bool = True, **options) -> int:
    """Run a Follower until SIGTERM/SIGINT (status 0) or, with on_violation="exit", the first violation
    (status 1)."""
    topics = _topic_list(topic)
    if not topics:
        raise VerifyError("no topic given")
    follower = Follower(bootstrap, topics, group, **options)
    if install_signals:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, follower.stop.set)
    return await follower.run()

