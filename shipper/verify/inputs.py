"""The edges of `shipper verify` that read and write: public keys (PEM or C2SP verifier keys), JSON-lines
files and Kafka topics, each fed to a `Verifier`; saved heads (--save-heads / --trusted-heads); and the
aiokafka TLS/SASL options from the command line's terms."""
from __future__ import annotations

import asyncio
import json
import os
import sys
import time as _time
from datetime import datetime, timezone
from pathlib import Path
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from .. import note
from ..seal import key_id_of, load_public_key
from .report import INCOMPLETE_READ, MALFORMED, Report
from .verifier import DEFAULT_STALE_AFTER_S, DEFAULT_WINDOW, Verifier, _json_decode, _short

HEADS_FORMAT = "audit-shipper/heads/v1"


class VerifyError(Exception):
    """The verification could not run (unreadable key or file, unknown topic, broker unreachable)."""


def load_public_keys(paths: Iterable[str]) -> dict[str, Any]:
    """key name -> Ed25519 public key, from PEM files (several keys in one file are fine) or C2SP verifier
    key files (`name+hash+base64`, one a line, as keygen writes signing-key.vkey). A PEM key answers to
    its derived key id, a verifier key to its name and its derived key id. An entry `label=path` also
    answers to `label`: the key id a shipper configured with seal.key_id writes."""
    keys: dict[str, Any] = {}
    for entry in paths:
        label, path = None, entry
        if "=" in entry and not Path(entry).exists():
            label, path = entry.split("=", 1)
        try:
            text = Path(path).read_bytes()
        except OSError as exc:
            raise VerifyError(f"public key {path}: {exc.strerror}") from None
        blocks = [b"-----BEGIN" + block for block in text.split(b"-----BEGIN")[1:]]
        if not blocks:
            for name, public_key in _verifier_keys(path, text):
                keys[name] = keys[key_id_of(public_key)] = public_key
                if label:
                    keys[label] = public_key
            continue
        for block in blocks:
            if b"PRIVATE KEY" in block.split(b"\n", 1)[0]:
                raise VerifyError(f"public key {path}: this is a private key; give the auditor the public key "
                                  "(signing-key.pub.pem)")
            try:
                key = load_public_key(block)
            except ValueError as exc:
                raise VerifyError(f"public key {path}: {exc}") from None
            keys[key_id_of(key)] = key
            if label:
                keys[label] = key
    return keys


def _verifier_keys(path: str, text: bytes) -> list[tuple[str, Any]]:
    try:
        lines = text.decode("utf-8").splitlines()
    except UnicodeDecodeError:
        raise VerifyError(f"public key {path}: neither a PEM block nor verifier keys (not UTF-8)") from None
    out = []
    for number, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            key = note.parse_verifier_key(line)
        except note.BadNote as exc:
            raise VerifyError(f"public key {path}: line {number} is neither a PEM block nor a verifier key: "
                              f"{exc}") from None
        out.append((key.name, key.public_key))
    if not out:
        raise VerifyError(f"public key {path}: no PEM block and no verifier key")
    return out


def load_trusted_heads(verifier: Verifier, path: str | Path) -> int:
    """Give the verifier the heads a --save-heads file holds; VerifyError unless every one is a checkpoint
    or manifest record with its hash and (when keys are given) a good signature."""
    try:
        saved = json.loads(Path(path).read_text("utf-8"))
    except OSError as exc:
        raise VerifyError(f"trusted heads {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise VerifyError(f"trusted heads {path}: not JSON: {_short(exc)}") from None
    if not isinstance(saved, dict) or saved.get("format") != HEADS_FORMAT or not isinstance(saved.get("heads"), list):
        raise VerifyError(f"trusted heads {path}: not an {HEADS_FORMAT} file (written by --save-heads)")
    try:
        return verifier.trust_heads(saved["heads"], f"{path} (saved {saved.get('saved_at', '?')})")
    except ValueError as exc:
        raise VerifyError(f"trusted heads {path}: {exc}") from None


def save_heads(verifier: Verifier | list[dict], path: str | Path, now: float) -> int:
    """Write the latest trusted checkpoint/manifest record per chain (of a verifier, or given: see
    latest_of), atomically: a file next to it, renamed."""
    heads = verifier.latest_heads() if isinstance(verifier, Verifier) else verifier
    saved = {"format": HEADS_FORMAT, "saved_at": rfc3339(now), "heads": heads}
    target = Path(path)
    temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        temporary.write_text(json.dumps(saved, indent=1) + "\n", "utf-8")
        os.replace(temporary, target)
    except OSError as exc:
        temporary.unlink(missing_ok=True)
        raise VerifyError(f"saving heads to {path}: {exc.strerror}") from None
    return len(heads)


def latest_of(*head_lists: list[dict]) -> list[dict]:
    """Per chain the head record of the highest seq among several verifiers' latest_heads(), by chain."""
    heads: dict[str, dict] = {}
    for records in head_lists:
        for record in records:
            name, seq = record["seal"]["chain"], record["seal"]["seq"]
            if name not in heads or seq > heads[name]["seal"]["seq"]:
                heads[name] = record
    return [heads[name] for name in sorted(heads)]


def rfc3339(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _new_verifier(public_keys: dict[str, Any] | None, now: float | None, trusted_heads: str | Path | None,
                  verifier_options: dict) -> tuple[Verifier, float]:
    """The verifier of a run: staleness measured against `now` (the wall clock when None)."""
    now = _time.time() if now is None else now
    verifier = Verifier(public_keys, now=now, **verifier_options)
    if trusted_heads is not None:
        load_trusted_heads(verifier, trusted_heads)
    return verifier, now


def _finish(verifier: Verifier, now: float, trusted_heads: str | Path | None, save_to: str | Path | None) -> Report:
    return keep_heads(verifier.finish(), verifier, now, trusted_heads, save_to)


def keep_heads(report: Report, heads: Verifier | list[dict], now: float, trusted_heads: str | Path | None,
               save_to: str | Path | None) -> Report:
    """The report, with the --trusted-heads file it was held to, and the --save-heads file written."""
    if trusted_heads is not None:
        report.meta["trusted_heads_file"] = str(trusted_heads)
    if save_to is not None:
        report.meta["saved_heads"] = save_heads(heads, save_to, now)
        report.meta["saved_heads_file"] = str(save_to)
    return report


def feed_file(verifier: Verifier, path: str | Path) -> int:
    """Feed a JSON-lines file: each line a record value, or {"key", "value", "partition", "offset",
    "topic"} (value as a JSON string or object) as a topic dump writes it. `-` reads stdin."""
    count = 0
    stream = sys.stdin.buffer if str(path) == "-" else open(path, "rb")
    try:
        for line_number, line in enumerate(stream, 1):
            if line.isspace():
                continue
            count += 1
            try:
                obj = _json_decode(str(line, "utf-8"))
            except ValueError as exc:
                verifier.add_violation(MALFORMED, f"not JSON: {_short(exc)}", None, None, line_number)
                continue
            if isinstance(obj, dict) and "seal" not in obj and "value" in obj:
                value = obj["value"]
                if isinstance(value, str):
                    value = value.encode()
                elif value is None:
                    verifier.add_violation(MALFORMED, "null value (a tombstone?)", obj.get("topic"),
                                           obj.get("partition"), obj.get("offset", line_number))
                    continue
                offset = obj.get("offset")
                partition = obj.get("partition")
                verifier.feed(value, obj.get("key"), partition, offset if offset is not None else line_number,
                              topic=obj.get("topic"))
            else:
                verifier.feed(obj if isinstance(obj, dict) else line, None, None, line_number)
    finally:
        if stream is not sys.stdin.buffer:
            stream.close()
    return count


def verify_file(path: str | Path | list, *, public_keys: dict[str, Any] | None = None, now: float | None = None,
                trusted_heads: str | Path | None = None, save_heads: str | Path | None = None,
                **verifier_options) -> Report:
    """Verify one or more JSON-lines files (offline audits of a topic dump), in order. `now` (seconds
    since the epoch, default the wall clock) is what staleness is measured against; `trusted_heads`
    and `save_heads` are the files of --trusted-heads and --save-heads."""
    started = _time.monotonic()
    verifier, now = _new_verifier(public_keys, now, trusted_heads, verifier_options)
    paths = path if isinstance(path, (list, tuple)) else [path]
    try:
        for one in paths:
            feed_file(verifier, one)
    except OSError as exc:
        raise VerifyError(f"{exc.filename}: {exc.strerror}") from None
    report = _finish(verifier, now, trusted_heads, save_heads)
    elapsed = _time.monotonic() - started
    report.meta.update(source="file", files=[str(one) for one in paths], elapsed_s=round(elapsed, 3),
                       records_per_s=round(verifier.records / elapsed) if elapsed > 0 else None)
    return report


async def _started_consumer(bootstrap: str, client_id: str, client_options: dict):
    """A consumer without a group (nothing is committed) that reads from the beginning, started; or
    VerifyError when the brokers cannot be reached."""
    from aiokafka import AIOKafkaConsumer
    from aiokafka.errors import KafkaError

    options = dict(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                   auto_offset_reset="earliest", client_id=client_id, max_partition_fetch_bytes=16 << 20,
                   fetch_max_bytes=64 << 20)
    options.update(client_options)
    consumer = AIOKafkaConsumer(**options)
    try:
        await consumer.start()
    except (KafkaError, OSError) as exc:
        try:
            await asyncio.wait_for(consumer.stop(), 10)
        except (asyncio.TimeoutError, KafkaError, OSError):
            pass
        raise VerifyError(f"cannot connect to Kafka at {bootstrap}: {exc}") from None
    return consumer


async def verify_topic(bootstrap: str, topic: str | list[str], *, public_keys: dict[str, Any] | None = None,
                       idle_timeout_s: float = 5.0, timeout_s: float | None = None, window: int = DEFAULT_WINDOW,
                       require_attested: bool = False, require_complete: bool = False,
                       allow_absent_chains: bool = False, now: float | None = None,
                       stale_after_s: float = DEFAULT_STALE_AFTER_S, trusted_heads: str | Path | None = None,
                       save_heads: str | Path | None = None, progress: Callable[[int, int], None] | None = None,
                       **client_options) -> Report:
    """Read every partition of the topic(s) from the beginning, without a consumer group (nothing is
    committed), and verify. `client_options` go to AIOKafkaConsumer, whose client reads (security_protocol,
    ssl_context, sasl_mechanism, sasl_plain_username, sasl_plain_password, ...); `progress(records read,
    records to read)` is called as reading goes (see read_partitions for how it reads and when it stops)."""
    topics = _topic_list(topic)
    if not topics:
        raise VerifyError("no topic given")
    verifier, now = _new_verifier(public_keys, now, trusted_heads, dict(
        window=window, require_attested=require_attested, require_complete=require_complete,
        allow_absent_chains=allow_absent_chains, stale_after_s=stale_after_s))
    started = _time.monotonic()
    consumer = await _started_consumer(bootstrap, "shipper-verify", client_options)
    try:
        assigned = await topic_partitions(consumer, topics)
        reading = await read_partitions(verifier, consumer, assigned, idle_timeout_s=idle_timeout_s,
                                        timeout_s=timeout_s, progress=progress)
    finally:
        await _stop(consumer)
    report = _finish(verifier, now, trusted_heads, save_heads)
    report.meta.update(reading.meta(topics, verifier.records, _time.monotonic() - started, idle_timeout_s))
    return report


@dataclass(slots=True)
class Reading:
    """How a read of partitions to their end offsets went: why it stopped (end_offsets, idle, timeout),
    per TopicPartition the offsets it began at, was to end at, and reached, and what fetching cost
    (fetch.FetchStats.as_dict: requests, batches, bytes, codecs, CPU seconds per stage)."""

    stopped: str
    begins: dict
    ends: dict
    reached: dict
    fetch: dict | None = None

    def meta(self, topics: list[str], records: int, elapsed: float, idle_timeout_s: float) -> dict[str, Any]:
        meta = dict(source="kafka", topics=topics, partitions=len(self.ends), stopped=self.stopped,
                    idle_timeout_s=idle_timeout_s,
                    end_offsets={f"{tp.topic}/{tp.partition}": end for tp, end in sorted(self.ends.items())},
                    elapsed_s=round(elapsed, 3), records_per_s=round(records / elapsed) if elapsed > 0 else None)
        if self.fetch is not None:
            meta["fetch"] = self.fetch
        return meta


async def topic_partitions(consumer, topics: list[str]) -> list:
    """Every TopicPartition of the topics; VerifyError names a topic that does not exist."""
    from aiokafka import TopicPartition
    from aiokafka.errors import KafkaError

    try:
        # consumer.topics() fetches this too but returns only names; partitions_for_topic reads a cache
        # that may not know the topic yet
        cluster = await consumer._client.fetch_all_metadata()
    except (KafkaError, OSError) as exc:
        raise VerifyError(f"reading the metadata of {', '.join(topics)}: {exc}") from None
    assigned = []
    for name in topics:
        partitions = cluster.partitions_for_topic(name)
        if not partitions:
            raise VerifyError(f"topic {name!r} does not exist")
        assigned += [TopicPartition(name, number) for number in sorted(partitions)]
    return assigned


#: How often a group's consumer is polled while the fetcher reads its partitions (see read_partitions).
POLL_EVERY_S = 1.0


async def offset_range(consumer, assigned: list) -> tuple[dict, dict]:
    """(first offsets, end offsets) of the partitions now."""
    from aiokafka.errors import KafkaError

    try:
        return await consumer.beginning_offsets(assigned), await consumer.end_offsets(assigned)
    except (KafkaError, OSError) as exc:
        raise VerifyError(f"reading the offsets of {_partitions_text(assigned)}: {exc}") from None


async def read_partitions(verifier: Verifier, consumer, assigned: list, *, idle_timeout_s: float,
                          timeout_s: float | None, begins: dict | None = None, ends: dict | None = None,
                          wait_for_claims: bool = True, assign: bool = True,
                          progress: Callable[[int, int], None] | None = None,
                          interrupted: Callable[[], bool] | None = None) -> Reading:
    """Feed the verifier every record of the partitions, from their beginning to their end offsets
    (captured now unless given), in offset order per partition.

    How: through fetch.Fetcher on the consumer's client (raw fetch requests, batches read and scanned in
    C, records judged in runs by Verifier.feed_scanned); the consumer itself fetches nothing: the
    partitions are not assigned to it, and a group's consumer, which has them already (`assign` False),
    has them paused. Records retention deletes while they are read are an `incomplete_read`, and reading
    goes on from the new log start; a log truncated below the position, or bytes no batch can be read
    from, leave the partition `incomplete_read`.

    When to stop: once every partition has been read up to its end offset, reading goes on until a poll
    brings nothing new (at most `idle_timeout_s` more): Tansu reports a partition's end offset as the
    start of its last batch, so the end offset alone would leave that batch unread, and on a live topic
    it lets records written together with a manifest arrive (`wait_for_claims`: while a manifest attests
    more than was read). Reading also stops after `idle_timeout_s` without any new record (a partition
    that never reaches its end offset is then a violation `incomplete_read`), and after `timeout_s` in all.
    `interrupted()` true (its group rebalanced) ends the read at once, stopped "interrupted". A group's
    consumer is polled every POLL_EVERY_S meanwhile (it returns nothing, its partitions being paused): a
    consumer not polled for max_poll_interval_ms (5 minutes) leaves its group, and a member reading a
    large share of a topic would be dropped, and start over, each time.
    """
    from aiokafka.errors import KafkaError

    from .fetch import Fetcher

    started = _time.monotonic()
    stopped = "end_offsets"
    fetcher = Fetcher(consumer._client, verifier)
    try:
        if not assign:
            owned = consumer.assignment()
            consumer.pause(*[tp for tp in assigned if tp in owned])
        if begins is None or ends is None:
            begins, ends = await offset_range(consumer, assigned)
        for tp in assigned:
            fetcher.assign(tp.topic, tp.partition, begins[tp])
        pending = {tp for tp in assigned if ends[tp] > begins[tp]}
        unfinished: dict = {}                   # partitions that cannot be read to their end, and why
        total = sum(max(0, ends[tp] - begins[tp]) for tp in assigned)
        idle_since = _time.monotonic()
        drain_since: float | None = None
        settle_ms = int(min(idle_timeout_s, 1.0) * 1000)
        next_poll = _time.monotonic() + POLL_EVERY_S
        while True:
            fed = await fetcher.fetch_once(200 if pending else settle_ms)
            now = _time.monotonic()
            if not assign and now >= next_poll:
                next_poll = now + POLL_EVERY_S
                await consumer.getmany(timeout_ms=0)
            if len(fetcher.stopped) > len(unfinished):
                await _settle_stopped(consumer._client, fetcher, verifier, pending, unfinished)
            if fed:
                idle_since = now
                if progress is not None:
                    progress(sum(fetcher.position(tp.topic, tp.partition) - begins[tp] for tp in assigned), total)
            for tp in list(pending):
                # control batches (transaction markers) move the position too
                if fetcher.position(tp.topic, tp.partition) >= ends[tp]:
                    pending.discard(tp)
            if not pending:
                drain_since = now if drain_since is None else drain_since
                if (not fed and not (wait_for_claims and verifier.unmet_claims())) \
                        or now - drain_since >= idle_timeout_s:
                    break
            elif now - idle_since >= idle_timeout_s:
                stopped = "idle"
                break
            if timeout_s is not None and now - started >= timeout_s:
                stopped = "timeout"
                break
            if interrupted is not None and interrupted():
                return Reading("interrupted", begins, ends, _positions(fetcher, assigned), fetcher.stats.as_dict())
        for tp, reason in sorted([(tp, stopped) for tp in pending] + list(unfinished.items())):
            position = fetcher.position(tp.topic, tp.partition)
            verifier.add_violation(INCOMPLETE_READ, f"read up to offset {position} of end offset {ends[tp]} "
                                   f"(stopped: {reason})", tp.topic, tp.partition, position)
    except (KafkaError, OSError) as exc:
        raise VerifyError(f"reading {_partitions_text(assigned)}: {exc}") from None
    return Reading(stopped, begins, ends, _positions(fetcher, assigned), fetcher.stats.as_dict())


def _positions(fetcher, assigned: list) -> dict:
    return {tp: fetcher.position(tp.topic, tp.partition) for tp in assigned}


async def _settle_stopped(client, fetcher, verifier: Verifier, pending: set, unfinished: dict) -> None:
    """Partitions the fetcher stopped: a position retention deleted is reported and reading goes on from the
    log start; a log truncated below the position, or bytes that cannot be read (reported by the fetcher),
    leave the partition unfinished (pending and unfinished hold TopicPartitions, which equal (topic,
    partition) tuples)."""
    from aiokafka import TopicPartition

    from .fetch import DELETED, EARLIEST, LATEST, OUT_OF_RANGE, list_offsets

    for key, stop in list(fetcher.stopped.items()):
        tp = TopicPartition(*key)
        if tp in unfinished:
            continue
        if stop.reason == OUT_OF_RANGE:
            start = (await list_offsets(client, [key], EARLIEST))[key]
            if start > stop.offset:
                verifier.add_violation(INCOMPLETE_READ, f"offsets {stop.offset}..{start - 1} were deleted (retention) "
                                       f"while the topic was read: their records are not judged; read on from "
                                       f"offset {start}", tp.topic, tp.partition, stop.offset)
                fetcher.assign(tp.topic, tp.partition, start)
                continue
            end = (await list_offsets(client, [key], LATEST))[key]
            unfinished[tp] = f"offset {stop.offset} is past the end of the log ({end}): it was truncated"
        elif stop.reason == DELETED:
            unfinished[tp] = stop.detail
        else:
            unfinished[tp] = "unreadable"
        pending.discard(tp)


def _partitions_text(assigned: list) -> str:
    topics = sorted({tp.topic for tp in assigned})
    return ", ".join(topics)


async def _stop(consumer) -> None:
    from aiokafka.errors import KafkaError

    try:
        await asyncio.wait_for(consumer.stop(), 10)
    except (asyncio.TimeoutError, KafkaError):
        pass


def _topic_list(topic: str | Iterable[str]) -> list[str]:
    items = [topic] if isinstance(topic, str) else list(topic)
    out: list[str] = []
    for item in items:
        out += [name.strip() for name in item.split(",") if name.strip() and name.strip() not in out]
    return out


def kafka_client_options(**terms: Any) -> dict[str, Any]:
    """aiokafka client options for TLS and SASL, from the command line's terms: the shipper's own
    (kafka/client.py), its errors turned into VerifyError for the command line."""
    from ..kafka.client import KafkaSetupError, kafka_client_options as options_of

    try:
        return options_of(**terms)
    except KafkaSetupError as exc:
        raise VerifyError(str(exc)) from None


class _ProofFeed:
    """What fetch.Fetcher feeds (the verifier's side of it) when a proof is built: the records keyed to the
    proof's chain, decoded, to the ProofBuilder, in offset order. The other chains' records are passed over
    on the scan's chain column, never decoded; a record the scan could not read (SLOW) is decoded and its
    key compared, as is every record of the chain (a record keyed to another chain is not the chain's)."""

    def __init__(self, builder, chain_key: bytes) -> None:
        self.builder, self.chain_key = builder, chain_key
        self.unreadable: list[str] = []          # what the fetcher could not read, for the error if no proof

    def feed_scanned(self, scanned: Any, topic: str | None, partition: int | None) -> None:
        from .scan import FLAG_SLOW

        names = scanned.chain_names
        wanted = names.index(self.builder.chain) if self.builder.chain in names else -1
        flags, chains = scanned.flags, scanned.chains
        for index in range(scanned.count):
            if chains[index] == wanted or flags[index] & FLAG_SLOW:
                record = scanned.record(index)
                if self.feed(record.value, record.key, partition, record.offset, topic=topic):
                    return

    def feed(self, value: bytes | None, key: bytes | None, partition: int | None, offset: int | None, *,
             topic: str | None = None, headers: Any = None) -> bool:
        """One record; True once the builder is done."""
        if self.builder.done:
            return True
        if key != self.chain_key or value is None:
            return False
        try:
            record = _json_decode(str(value, "utf-8"))
        except ValueError:
            return False
        return self.builder.feed(record, (topic, partition, offset))

    def add_violation(self, kind: str, detail: str, topic: str | None = None, partition: int | None = None,
                      offset: int | None = None) -> None:
        self.unreadable.append(detail)


async def prove_from_topic(bootstrap: str, topic: str, event_id: str, *, public_keys: dict[str, Any] | None = None,
                           idle_timeout_s: float = 5.0, timeout_s: float | None = None, **client_options) -> dict:
    """The proof of one record (proof.py): read only the partition its chain is keyed to (murmur2, as the
    shipper partitions), from the beginning, until the first checkpoint after the record that is good
    for one of the keys (any, with no keys) or the partition's end. ProofError when there is no proof
    to make, VerifyError when Kafka cannot be read.

    Read with fetch.Fetcher, as verify reads (batches decoded and scanned natively): only the chain's own
    records are decoded (_ProofFeed)."""
    from aiokafka import TopicPartition
    from aiokafka.errors import KafkaError

    from ..kafka.wire import partition_of
    from .fetch import OUT_OF_RANGE, Fetcher
    from .proof import ProofBuilder, ProofError

    try:
        builder = ProofBuilder(event_id, public_keys)
    except ValueError as exc:
        raise ProofError(str(exc)) from None
    chain_key = builder.chain.encode()
    started = _time.monotonic()
    consumer = await _started_consumer(bootstrap, "shipper-prove", client_options)
    feed = _ProofFeed(builder, chain_key)
    try:
        cluster = await consumer._client.fetch_all_metadata()
        partitions = cluster.partitions_for_topic(topic)
        if not partitions:
            raise VerifyError(f"topic {topic!r} does not exist")
        key = (topic, partition_of(chain_key, len(partitions)))
        tp = TopicPartition(*key)
        begins, ends = await offset_range(consumer, [tp])
        end = ends[tp]
        fetcher = Fetcher(consumer._client, feed)
        fetcher.assign(*key, begins[tp])
        idle_since = _time.monotonic()
        settle_ms = int(min(idle_timeout_s, 1.0) * 1000)
        past_end = end == 0
        while not builder.done:
            before = fetcher.position(*key)
            await fetcher.fetch_once(settle_ms if past_end else 200)
            now = _time.monotonic()
            stopped = fetcher.stopped.get(key)
            if stopped is not None:
                unfinished: dict = {}           # retention: read on from the log start; else it stays stopped
                await _settle_stopped(consumer._client, fetcher, feed, set(), unfinished)
                if key in fetcher.stopped:
                    feed.unreadable.append(unfinished[tp] if stopped.reason == OUT_OF_RANGE else stopped.detail)
                    break
            if fetcher.position(*key) != before:
                idle_since = now
            elif past_end:
                break       # a quiet poll past the end offset (Tansu's is the start of its last batch)
            elif now - idle_since >= idle_timeout_s:
                break
            past_end = past_end or fetcher.position(*key) >= end
            if timeout_s is not None and now - started >= timeout_s:
                break
    except (KafkaError, OSError) as exc:
        raise VerifyError(f"reading {topic}: {exc}") from None
    finally:
        await _stop(consumer)
    try:
        return builder.proof()
    except ProofError as exc:
        if feed.unreadable:
            raise ProofError(f"{exc} (the partition could not all be read: {'; '.join(feed.unreadable[:3])})") from None
        raise
