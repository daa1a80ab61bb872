"""Reading partitions for `shipper verify` with raw fetch requests (`Fetcher`), their begin and end offsets
(`list_offsets`), and what one partition's fetched bytes feed the verifier (`feed_fetched`).

A consumer costs 5 to 9 µs of CPU per record before the verifier sees it (a record object, its
fields decoded one by one); the verifier itself needs about 2. So the verifier reads the topic itself:
one FetchRequest per partition leader per round, each partition's bytes split into batches
(batches.split_batches), their CRC checked, decompressed per batch, and their records read and scanned
in one native call per partition (batches.verify_records) that the verifier judges in runs
(Verifier.feed_scanned). Control batches (transaction markers) move the position and feed nothing;
records of aborted transactions are read like any other (read_uncommitted, as the consumer did). A batch
cut off by the fetch size is fetched again from its start next round.

What cannot be read is a violation (`malformed`) where it is, never a crash: a batch whose CRC fails (its
records are still judged), a batch that does not decompress or whose records cannot be read to the end
(the records before the bad one are judged, the rest of the batch is named), bytes in which no next batch
can be found (the partition stops: `stopped`). A position retention moved past (OFFSET_OUT_OF_RANGE) stops
the partition too, for the caller to decide (inputs.verify_topic reports and restarts at the log start).
A leader change or an unknown partition refreshes the metadata and is retried next round; a broker that
cannot be reached is retried with a doubling backoff for RETRY_FOR_S, then FetchError.

Uses aiokafka internals, not its public API, which is why aiokafka is pinned (>=0.14,<0.15 in
pyproject.toml, 0.14.0 in constraints.txt; shipper/kafka/wire.py says the same of its own): the client
`aiokafka.client.AIOKafkaClient` (bootstrap, send, cluster, force_metadata_update, fetch_all_metadata,
close), which keeps connections, TLS, SASL (with kafka/wire.py's OAUTHBEARER patch) and metadata; the
request builders `aiokafka.protocol.fetch.FetchRequest` and `aiokafka.protocol.offset.OffsetRequest`,
whose versions the client negotiates per connection, and the tuple layout of their responses (records
last in a fetched partition; v0 and v1+ offset answers); `aiokafka.errors.for_code`; and, for the legacy
message formats (magic 0 and 1, which Kafka 4 no longer writes), `aiokafka.record.memory_records.
MemoryRecords`. Moving the pin means tests/integration/test_verify_kafka.py (Apache Kafka and Tansu, every
codec) must pass on the new version.
"""
from __future__ import annotations

import asyncio
import struct
import time
from dataclasses import dataclass, field
from typing import Iterable

from aiokafka import TopicPartition
from aiokafka.errors import (KafkaConnectionError, KafkaError, NodeNotReadyError, OffsetOutOfRangeError,
                             RequestTimedOutError, for_code)
from aiokafka.protocol.fetch import FetchRequest
from aiokafka.protocol.offset import OffsetRequest
from aiokafka.record.memory_records import MemoryRecords

from .batches import CODECS, ERROR_MESSAGES, BadBatch, RawBatch, batch_records, split_batches, verify_records
from .report import MALFORMED
from .verifier import Verifier

EARLIEST = -2                     # ListOffsets' timestamps: the log start offset, ...
LATEST = -1                       # ... and the end offset (the high watermark)
READ_UNCOMMITTED = 0
RETRY_FOR_S = 30.0                # how long rounds may fail in a row (a broker restarting) before FetchError
BACKOFF_S = (0.1, 2.0)            # first and longest wait after a failed round
LARGEST_PARTITION_FETCH = 1 << 30
# Decompressed records scanned in one native call: enough that a call's fixed cost (its chain and identity
# tables) is spread thin, few enough that they are scanned while still in the cache and their memory is
# reused rather than fresh pages from the kernel (which cost as much as the decompression).
SCAN_BYTES = 4 << 20

OUT_OF_RANGE = "offset_out_of_range"
UNREADABLE = "unreadable"
DELETED = "deleted"

Partition = tuple[str, int]       # (topic, partition)


class FetchError(KafkaError):
    """A broker could not be read from for RETRY_FOR_S, or answered with an error that retrying does not
    cure (not authorised, say)."""


@dataclass(slots=True, frozen=True)
class Stopped:
    """Why a partition is no longer fetched: OUT_OF_RANGE (`offset` is no longer in the log), UNREADABLE
    (no batch can be found at `offset`: already reported as malformed) or DELETED (its topic, or the
    partition, no longer exists)."""

    reason: str
    offset: int
    detail: str


@dataclass(slots=True)
class FetchStats:
    """CPU seconds (time.process_time) spent per stage, and what was read."""

    fetch_s: float = 0.0          # the requests sent and their answers decoded by aiokafka
    decode_s: float = 0.0         # batches split, CRCs checked, batches decompressed
    scan_s: float = 0.0           # records read and their values scanned (verify_records, in C)
    judge_s: float = 0.0          # Verifier.feed_scanned, and feed for whatever is not in a run
    rounds: int = 0
    requests: int = 0
    batches: int = 0
    records: int = 0
    bytes: int = 0
    codecs: dict[str, int] = field(default_factory=dict)     # batches read, by codec

    def as_dict(self) -> dict:
        return {name: round(value, 3) if isinstance(value, float) else value
                for name, value in ((name, getattr(self, name)) for name in self.__slots__)}


@dataclass(slots=True)
class Read:
    """What feed_fetched made of one partition's bytes."""

    position: int                 # the next offset to fetch
    records: int = 0              # records fed
    stopped: Stopped | None = None
    partial: bool = False         # only a batch cut off by the fetch size: fetch more at once


def feed_fetched(verifier: Verifier, topic: str, partition: int, data: bytes | memoryview, position: int,
                 stats: FetchStats | None = None) -> Read:
    """Feed the records at offsets >= position of one partition's fetched bytes to the verifier, in order;
    the next position and how many records were fed. Pure but for the verifier: no I/O."""
    stats = stats if stats is not None else FetchStats()
    started = time.process_time()
    scan_and_judge = stats.scan_s + stats.judge_s
    batches, used, bad = split_batches(data)
    read = Read(position)
    pending: list[tuple] = []
    pending_bytes = 0
    for raw in batches:
        if raw.next_offset <= read.position:
            continue                      # a fetch answers from the start of the batch that holds the position
        stats.batches += 1
        if raw.magic != 2:
            read.records += _feed_batches(verifier, topic, partition, pending, position, stats)
            read.records += _feed_legacy(verifier, topic, partition, raw, read.position)
            read.position = raw.next_offset
            continue
        if not raw.crc_ok():
            read.records += _feed_batches(verifier, topic, partition, pending, position, stats)
            verifier.add_violation(MALFORMED, f"the record batch at offsets {raw.base_offset}..{raw.next_offset - 1} "
                                   "fails its CRC-32C: its bytes changed after it was written (its records are "
                                   "judged all the same)", topic, partition, raw.base_offset)
        read.position = raw.next_offset
        if raw.is_control:
            continue                      # a transaction marker: no record of ours, the position moves on
        codec = CODECS.get(raw.codec, str(raw.codec))
        stats.codecs[codec] = stats.codecs.get(codec, 0) + 1
        try:
            records = batch_records(raw)
        except BadBatch as exc:
            read.records += _feed_batches(verifier, topic, partition, pending, position, stats)
            verifier.add_violation(MALFORMED, f"the record batch at offsets {raw.base_offset}..{raw.next_offset - 1}: "
                                   f"{exc}; its {raw.count} records are not judged", topic, partition, raw.base_offset)
            continue
        pending.append((records, raw.base_offset, raw.count))
        pending_bytes += len(records)
        if pending_bytes >= SCAN_BYTES:
            read.records += _feed_batches(verifier, topic, partition, pending, position, stats)
            pending_bytes = 0
    read.records += _feed_batches(verifier, topic, partition, pending, position, stats)
    if bad is not None:
        detail = (f"no record batch can be read at offset {read.position} ({bad}): the rest of the partition is "
                  "not read")
        verifier.add_violation(MALFORMED, detail, topic, partition, read.position)
        read.stopped = Stopped(UNREADABLE, read.position, detail)
    elif not batches and len(data):
        read.partial = True
    stats.bytes += used
    stats.decode_s += time.process_time() - started - (stats.scan_s + stats.judge_s - scan_and_judge)
    return read


def _feed_batches(verifier: Verifier, topic: str, partition: int, batches: list[tuple], min_offset: int,
                  stats: FetchStats) -> int:
    """One native read and scan of consecutive batches (emptied), judged in bulk. A batch whose records
    cannot all be read is named after the records before it (read alone, so its violation sits between its
    records and the next batch's)."""
    if not batches:
        return 0
    clock = time.process_time
    started = clock()
    scanned = verify_records(batches, min_offset)
    if scanned.errors and len(batches) > 1:
        stats.scan_s += clock() - started
        alone = list(batches)
        batches.clear()
        return sum(_feed_batches(verifier, topic, partition, [batch], min_offset, stats) for batch in alone)
    scanned_at = clock()
    verifier.feed_scanned(scanned, topic, partition)
    for _, index, code in scanned.errors:
        _, base_offset, count = batches[0]
        verifier.add_violation(MALFORMED, f"the record batch at offset {base_offset}: record {index} of {count} "
                               f"cannot be read ({ERROR_MESSAGES[code]}); the records from there to the end of the "
                               "batch are not judged", topic, partition, base_offset)
    batches.clear()
    stats.scan_s += scanned_at - started
    stats.judge_s += clock() - scanned_at
    stats.records += scanned.count
    return scanned.count


def _feed_legacy(verifier: Verifier, topic: str, partition: int, raw: RawBatch, min_offset: int) -> int:
    """A message set of the legacy formats (magic 0 or 1), read by aiokafka, fed record by record."""
    try:
        batch = MemoryRecords(bytes(raw.data)).next_batch()
        records = [(record.offset, record.key, record.value) for record in batch] if batch is not None else []
    except (KafkaError, ValueError, struct.error, IndexError, TypeError) as exc:
        verifier.add_violation(MALFORMED, f"the message at offset {raw.base_offset} (format v{raw.magic}) cannot be "
                               f"read: {exc}", topic, partition, raw.base_offset)
        return 0
    fed = 0
    for offset, key, value in records:
        if offset >= min_offset:
            verifier.feed(value, key, partition, offset, topic=topic, headers=[])
            fed += 1
    return fed


class Fetcher:
    """Reads assigned partitions from their positions and feeds the verifier, one round at a time.

    Positions move only here (over records, control batches and unreadable batches alike); `stopped`
    holds the partitions fetching cannot go on with (see Stopped) until they are assigned again."""

    def __init__(self, client, verifier: Verifier, *, max_partition_bytes: int = 16 << 20,
                 max_bytes: int = 64 << 20) -> None:
        self._client = client
        self.verifier = verifier
        self.max_partition_bytes = max_partition_bytes
        self.max_bytes = max_bytes
        self._positions: dict[Partition, int] = {}
        self._limits: dict[Partition, int] = {}
        self._led: set[Partition] = set()        # partitions seen with a leader (a deleted one had one)
        self._order: list[Partition] = []
        self.stopped: dict[Partition, Stopped] = {}
        self.high_watermarks: dict[Partition, int] = {}    # as the partition's last answer gave it
        self.stats = FetchStats()
        self._failing: dict[int | None, tuple[int, float]] = {}   # leader -> (rounds failed in a row, since)

    def assign(self, topic: str, partition: int, offset: int) -> None:
        """Read the partition from `offset` on (again, when it was stopped)."""
        self._client.add_topic(topic)       # the client's metadata follows the topics read (a future: not awaited)
        key = (topic, partition)
        if key not in self._positions:
            self._order.append(key)
        self._positions[key] = offset
        self._limits[key] = self.max_partition_bytes
        self.stopped.pop(key, None)

    def unassign(self, topic: str, partition: int) -> None:
        key = (topic, partition)
        if key in self._positions:
            del self._positions[key], self._limits[key]
            self._order.remove(key)
        self.stopped.pop(key, None)
        self.high_watermarks.pop(key, None)

    def position(self, topic: str, partition: int) -> int:
        """The next offset to read (KeyError when not assigned)."""
        return self._positions[(topic, partition)]

    async def fetch_once(self, timeout_ms: int) -> int:
        """One round: a fetch request to each leader of the assigned partitions that are not stopped (the
        broker answers once it has a byte for one of them or after timeout_ms), every answer fed to the
        verifier. Returns the records fed. With nothing to fetch (every partition stopped, or none assigned)
        the round waits timeout_ms all the same, so that a caller's loop of rounds never spins."""
        self.stats.rounds += 1
        if self._order:
            self._order.append(self._order.pop(0))      # each partition leads its request in turn
        by_leader, unknown = self._by_leader()
        if unknown:
            if await self._client.force_metadata_update():
                self._stop_deleted()
            by_leader, unknown = self._by_leader()
        if not by_leader:
            if unknown:
                await self._failed(None, "no partition has a known leader")
            else:
                await asyncio.sleep(timeout_ms / 1000)
            return 0
        self._failing.pop(None, None)
        started = time.process_time()
        answers = await asyncio.gather(*(self._request(leader, keys, timeout_ms)
                                         for leader, keys in by_leader.items()), return_exceptions=True)
        self.stats.fetch_s += time.process_time() - started
        for answer in answers:
            if isinstance(answer, BaseException):
                raise answer
        fed = 0
        for answer in answers:
            if answer is not None:
                response, asked = answer
                for topic, partitions in response.topics:
                    for part in partitions:
                        fed += self._take(topic, part, asked)
        return fed

    def _stop_deleted(self) -> None:
        """Partitions that had a leader and the fresh metadata no longer has (the topic was deleted, or the
        partition): stopped, not retried until a broker is given up on."""
        cluster = self._client.cluster
        for key in self._order:
            if key in self.stopped or key not in self._led:
                continue
            partitions = cluster.partitions_for_topic(key[0])
            if not partitions or key[1] not in partitions:
                what = "its topic was deleted" if not partitions else "the partition no longer exists"
                self.stopped[key] = Stopped(DELETED, self._positions[key], f"{what} while it was read")

    def _by_leader(self) -> tuple[dict[int, list[Partition]], bool]:
        """The partitions to fetch by leader, and whether some have no known leader."""
        by_leader: dict[int, list[Partition]] = {}
        unknown = False
        for key in self._order:
            if key in self.stopped:
                continue
            leader = self._client.cluster.leader_for_partition(TopicPartition(*key))
            if leader is None or leader < 0:
                unknown = True
            else:
                self._led.add(key)
                by_leader.setdefault(leader, []).append(key)
        return by_leader, unknown

    async def _request(self, leader: int, keys: list[Partition], timeout_ms: int):
        topics: dict[str, list[tuple[int, int, int]]] = {}
        asked: dict[Partition, int] = {}
        for key in keys:
            asked[key] = self._positions[key]
            topics.setdefault(key[0], []).append((key[1], asked[key], self._limits[key]))
        max_bytes = max(self.max_bytes, max(self._limits[key] for key in keys))
        request = FetchRequest(timeout_ms, 1, max_bytes, READ_UNCOMMITTED, list(topics.items()))
        self.stats.requests += 1
        try:
            response = await self._client.send(leader, request)
        except (KafkaConnectionError, NodeNotReadyError, RequestTimedOutError) as exc:
            await self._failed(leader, f"broker {leader}: {exc}")
            return None
        session_error = getattr(response, "error_code", 0)
        if session_error:
            await self._failed(leader, f"broker {leader}: {for_code(session_error).__name__}")
            return None
        self._failing.pop(leader, None)
        return response, asked

    async def _failed(self, leader: int | None, why: str) -> None:
        """A round that could not fetch from `leader`: retried after a doubling backoff, for RETRY_FOR_S at
        most."""
        now = time.monotonic()
        failures, since = self._failing.get(leader, (0, now))
        if now - since > RETRY_FOR_S:
            raise FetchError(f"{why} (retried for {RETRY_FOR_S:g} s)")
        self._failing[leader] = (failures + 1, since)
        self._client.force_metadata_update()
        await asyncio.sleep(min(BACKOFF_S[1], BACKOFF_S[0] * 2 ** failures))

    def _take(self, topic: str, part: tuple, asked: dict[Partition, int]) -> int:
        partition, error_code, data = part[0], part[1], part[-1]      # part[2]: the high watermark, every version
        key = (topic, partition)
        position = self._positions.get(key)
        if position is None or key in self.stopped or asked.get(key) != position:
            return 0                      # unassigned, stopped or moved while the request was out
        if error_code:
            error = for_code(error_code)
            if error is OffsetOutOfRangeError:
                self.stopped[key] = Stopped(OUT_OF_RANGE, position, f"offset {position} is no longer in the log")
            elif error.retriable or error.invalid_metadata:
                self._client.force_metadata_update()
            else:
                raise FetchError(f"{topic}/{partition}: {error.__name__}")
            return 0
        self.high_watermarks[key] = part[2]
        read = feed_fetched(self.verifier, topic, partition, data or b"", position, self.stats)
        self._positions[key] = read.position
        if read.stopped is not None:
            self.stopped[key] = read.stopped
        elif read.partial:
            self._limits[key] = min(LARGEST_PARTITION_FETCH, 2 * self._limits[key])
        return read.records


async def list_offsets(client, partitions: Iterable[Partition], timestamp: int, *,
                       attempts: int = 5) -> dict[Partition, int]:
    """Per partition its offset at `timestamp` (EARLIEST: the log start offset; LATEST: the end offset),
    asked of each partition's leader. A leader change or unknown leader refreshes the metadata and asks
    again (`attempts` times in all); other errors raise aiokafka's error for their code."""
    wanted = list(partitions)
    found: dict[Partition, int] = {}
    if any(client.cluster.leader_for_partition(TopicPartition(*key)) in (None, -1) for key in wanted):
        await client.force_metadata_update()
    for attempt in range(attempts):
        by_leader: dict[int, list[Partition]] = {}
        for key in wanted:
            if key in found:
                continue
            leader = client.cluster.leader_for_partition(TopicPartition(*key))
            if leader is None or leader < 0:
                continue
            by_leader.setdefault(leader, []).append(key)
        answers = await asyncio.gather(*(_offsets_of(client, leader, keys, timestamp)
                                         for leader, keys in by_leader.items()), return_exceptions=True)
        for answer in answers:
            if isinstance(answer, BaseException):
                raise answer
            found.update(answer)
        if len(found) == len(set(wanted)):
            return found
        if attempt + 1 < attempts:
            await client.force_metadata_update()
            await asyncio.sleep(BACKOFF_S[0] * 2 ** attempt)
    missing = ", ".join(f"{topic}/{partition}" for topic, partition in wanted if (topic, partition) not in found)
    raise FetchError(f"no leader answered for the offsets of {missing}")


async def _offsets_of(client, leader: int, keys: list[Partition], timestamp: int) -> dict[Partition, int]:
    topics: dict[str, list[tuple[int, int]]] = {}
    for topic, partition in keys:
        topics.setdefault(topic, []).append((partition, timestamp))
    response = await client.send(leader, OffsetRequest(-1, READ_UNCOMMITTED, list(topics.items())))
    out: dict[Partition, int] = {}
    for topic, parts in response.topics:
        for partition, error_code, *answer in parts:
            if error_code:
                error = for_code(error_code)
                if error.retriable or error.invalid_metadata:
                    continue                  # asked again after a metadata refresh
                raise error(f"{topic}/{partition}")
            if response.API_VERSION == 0:
                out[(topic, partition)] = answer[0][0] if answer[0] else -1
            else:
                out[(topic, partition)] = answer[1]
    return out
