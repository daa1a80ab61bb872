"""The edges of `shipper verify` that read: public keys (PEM), JSON-lines files and Kafka topics, each fed
to a `Verifier`; and the aiokafka TLS/SASL options from the command line's terms."""
from __future__ import annotations

import asyncio
import sys
import time as _time
from pathlib import Path
from typing import Any, Iterable

from ..seal import key_id_of, load_public_key
from .report import INCOMPLETE_READ, MALFORMED, Report
from .verifier import DEFAULT_WINDOW, Verifier, _json_decode, _short


class VerifyError(Exception):
    """The verification could not run (unreadable key or file, unknown topic, broker unreachable)."""


def load_public_keys(paths: Iterable[str]) -> dict[str, Any]:
    """key id -> Ed25519 public key, from PEM files (several keys in one file are fine). An entry
    `label=path` also answers to `label`: the key id a shipper configured with seal.key_id writes."""
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
            raise VerifyError(f"public key {path}: no PEM block")
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


def verify_file(path: str | Path | list, *, public_keys: dict[str, Any] | None = None, **verifier_options) -> Report:
    """Verify one or more JSON-lines files (offline audits of a topic dump), in order."""
    started = _time.monotonic()
    verifier = Verifier(public_keys, **verifier_options)
    paths = path if isinstance(path, (list, tuple)) else [path]
    try:
        for one in paths:
            feed_file(verifier, one)
    except OSError as exc:
        raise VerifyError(f"{exc.filename}: {exc.strerror}") from None
    report = verifier.finish()
    elapsed = _time.monotonic() - started
    report.meta.update(source="file", files=[str(one) for one in paths], elapsed_s=round(elapsed, 3),
                       records_per_s=round(verifier.records / elapsed) if elapsed > 0 else None)
    return report


async def verify_topic(bootstrap: str, topic: str | list[str], *, public_keys: dict[str, Any] | None = None,
                       idle_timeout_s: float = 5.0, timeout_s: float | None = None, window: int = DEFAULT_WINDOW,
                       require_attested: bool = False, require_complete: bool = False,
                       allow_absent_chains: bool = False, **client_options) -> Report:
    """Read every partition of the topic(s) from the beginning, without a consumer group (nothing is
    committed), and verify. `client_options` go to AIOKafkaConsumer (security_protocol, ssl_context,
    sasl_mechanism, sasl_plain_username, sasl_plain_password, ...).

    When to stop: the end offsets are captured at the start. Once every partition has been read up to
    them, reading goes on until a poll brings nothing new (at most `idle_timeout_s` more): Tansu reports
    a partition's end offset as the start of its last batch, so the end offset alone would leave that
    batch unread, and on a live topic it lets records written together with a manifest arrive. Reading
    also stops after `idle_timeout_s` without any new record (a partition that never reaches its end
    offset is then a violation `incomplete_read`), and after `timeout_s` in all.
    """
    from aiokafka import AIOKafkaConsumer, TopicPartition
    from aiokafka.errors import KafkaError

    topics = _topic_list(topic)
    if not topics:
        raise VerifyError("no topic given")
    verifier = Verifier(public_keys, window=window, require_attested=require_attested,
                        require_complete=require_complete, allow_absent_chains=allow_absent_chains)
    options = dict(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                   auto_offset_reset="earliest", client_id="shipper-verify", max_partition_fetch_bytes=16 << 20,
                   fetch_max_bytes=64 << 20)
    options.update(client_options)
    consumer = AIOKafkaConsumer(**options)
    started = _time.monotonic()
    try:
        await consumer.start()
    except (KafkaError, OSError) as exc:
        try:
            await asyncio.wait_for(consumer.stop(), 10)
        except (asyncio.TimeoutError, KafkaError, OSError):
            pass
        raise VerifyError(f"cannot connect to Kafka at {bootstrap}: {exc}") from None
    stopped = "end_offsets"
    try:
        # consumer.topics() fetches this too but returns only names; partitions_for_topic reads a cache
        # that may not know the topic yet
        cluster = await consumer._client.fetch_all_metadata()
        assigned = []
        for name in topics:
            partitions = cluster.partitions_for_topic(name)
            if not partitions:
                raise VerifyError(f"topic {name!r} does not exist")
            assigned += [TopicPartition(name, number) for number in sorted(partitions)]
        consumer.assign(assigned)
        await consumer.seek_to_beginning(*assigned)
        begins = await consumer.beginning_offsets(assigned)
        ends = await consumer.end_offsets(assigned)
        reached = {tp: begins[tp] for tp in assigned}
        pending = {tp for tp in assigned if ends[tp] > begins[tp]}
        idle_since = _time.monotonic()
        drain_since: float | None = None
        settle_ms = int(min(idle_timeout_s, 1.0) * 1000)
        feed = verifier.feed
        while True:
            batch = await consumer.getmany(timeout_ms=200 if pending else settle_ms, max_records=10_000)
            now = _time.monotonic()
            if batch:
                idle_since = now
                for tp, messages in batch.items():
                    for message in messages:
                        feed(message.value, message.key, message.partition, message.offset, topic=message.topic,
                             headers=message.headers)
                    reached[tp] = messages[-1].offset + 1
                    if tp in pending and reached[tp] >= ends[tp]:
                        pending.discard(tp)
            elif pending:
                # transaction markers move the position without a record
                for tp in list(pending):
                    if await consumer.position(tp) >= ends[tp]:
                        pending.discard(tp)
            if not pending:
                drain_since = now if drain_since is None else drain_since
                if (not batch and not verifier.unmet_claims()) or now - drain_since >= idle_timeout_s:
                    break
            elif now - idle_since >= idle_timeout_s:
                stopped = "idle"
                break
            if timeout_s is not None and now - started >= timeout_s:
                stopped = "timeout"
                break
        for tp in sorted(pending):
            verifier.add_violation(INCOMPLETE_READ, f"read up to offset {reached[tp]} of end offset {ends[tp]} "
                                   f"(stopped: {stopped})", tp.topic, tp.partition, reached[tp])
    except (KafkaError, OSError) as exc:
        raise VerifyError(f"reading {', '.join(topics)}: {exc}") from None
    finally:
        try:
            await asyncio.wait_for(consumer.stop(), 10)
        except (asyncio.TimeoutError, KafkaError):
            pass
    report = verifier.finish()
    elapsed = _time.monotonic() - started
    report.meta.update(source="kafka", topics=topics, partitions=len(assigned), stopped=stopped,
                       idle_timeout_s=idle_timeout_s,
                       end_offsets={f"{tp.topic}/{tp.partition}": ends[tp] for tp in assigned},
                       elapsed_s=round(elapsed, 3),
                       records_per_s=round(verifier.records / elapsed) if elapsed > 0 else None)
    return report


def _topic_list(topic: str | Iterable[str]) -> list[str]:
    items = [topic] if isinstance(topic, str) else list(topic)
    out: list[str] = []
    for item in items:
        out += [name.strip() for name in item.split(",") if name.strip() and name.strip() not in out]
    return out


def kafka_client_options(*, tls: bool = False, ca_file: str | None = None, cert_file: str | None = None,
                         key_file: str | None = None, check_hostname: bool = True, sasl_mechanism: str | None = None,
                         sasl_username: str | None = None, sasl_password_file: str | None = None,
                         sasl_oauth_token_file: str | None = None) -> dict[str, Any]:
    """aiokafka client options for TLS and SASL, from the command line's terms."""
    import ssl

    if sasl_mechanism == "OAUTHBEARER":
        from ..kafka.client import KafkaSetupError, kafka_client_options as shipper_client_options

        try:
            return shipper_client_options(tls=tls, ca_file=ca_file, cert_file=cert_file, key_file=key_file,
                                          check_hostname=check_hostname, sasl_mechanism=sasl_mechanism,
                                          sasl_oauth_token_file=sasl_oauth_token_file)
        except KafkaSetupError as exc:
            raise VerifyError(str(exc)) from None
    use_tls = tls or bool(ca_file or cert_file)
    options: dict[str, Any] = {}
    if use_tls:
        try:
            context = ssl.create_default_context(cafile=ca_file) if ca_file else ssl.create_default_context()
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            context.check_hostname = check_hostname
            if cert_file:
                context.load_cert_chain(cert_file, key_file)
        except (OSError, ssl.SSLError) as exc:
            raise VerifyError(f"TLS: cannot load certificates: {exc}") from None
        options["ssl_context"] = context
    if sasl_mechanism:
        if not sasl_username or not sasl_password_file:
            raise VerifyError("--sasl-mechanism needs --sasl-username and --sasl-password-file")
        try:
            password = Path(sasl_password_file).read_text().strip()
        except OSError as exc:
            raise VerifyError(f"SASL password file {sasl_password_file}: {exc.strerror}") from None
        options.update(sasl_mechanism=sasl_mechanism, sasl_plain_username=sasl_username,
                       sasl_plain_password=password)
        options["security_protocol"] = "SASL_SSL" if use_tls else "SASL_PLAINTEXT"
    elif use_tls:
        options["security_protocol"] = "SSL"
    return options
