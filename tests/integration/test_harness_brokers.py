"""The test brokers themselves: records go in with aiokafka's batch API (acks=all, idempotent where the
broker allows it) and come back out, over every listener, through crashes, restarts and pauses. These
also pin the aiokafka behaviours the delivery code is built on (exception types, outage semantics)."""
from __future__ import annotations

import asyncio
import ssl
import uuid

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaConnectionError, KafkaError, MessageSizeTooLargeError, UnknownError

from tests.harness.certs import unrelated_ca
from tests.harness.kafka import MTLS, SASL_SSL, SSL, BrokerStartError
from tests.harness.tansu import TansuBroker

CODECS = [None, "gzip", "snappy", "lz4", "zstd"]
BROKERS = [pytest.param("kafka_broker", marks=pytest.mark.kafka, id="kafka"),
           pytest.param("tansu_broker", marks=pytest.mark.tansu, id="tansu")]


def unique_topic(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def values(count: int, tag: str) -> list[bytes]:
    return [f'{{"tag": "{tag}", "n": {n}}}'.encode() for n in range(count)]


async def start_producer(options: dict, *, idempotent: bool, **settings) -> AIOKafkaProducer:
    producer = AIOKafkaProducer(**options, acks="all", enable_idempotence=idempotent, **settings)
    try:
        await producer.start()
    except BaseException:
        await producer.stop()
        raise
    return producer


async def send_values(producer: AIOKafkaProducer, topic: str, batch_values: list[bytes]) -> asyncio.Future:
    """One batch on partition 0, the way the shipper sends; returns the delivery future."""
    batch = producer.create_batch()
    for n, value in enumerate(batch_values):
        appended = batch.append(key=f"chain-{n % 3}".encode(), value=value, timestamp=None,
                                headers=[("schema", b"audit-shipper/v1"), ("event_id", f"c:{n}".encode())])
        assert appended is not None, "test batch overflowed"
    return await producer.send_batch(batch, topic, partition=0)


async def produce(options: dict, topic: str, batch_values: list[bytes], *, idempotent: bool, **settings) -> None:
    producer = await start_producer(options, idempotent=idempotent, **settings)
    try:
        await asyncio.wait_for(await send_values(producer, topic, batch_values), 20)
    finally:
        await producer.stop()


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("broker_name", BROKERS)
async def test_batch_round_trips_with_every_codec(request, broker_name, codec):
    broker = request.getfixturevalue(broker_name)
    topic = unique_topic(f"codec-{codec}")
    await broker.create_topic(topic)
    sent = values(50, str(codec))
    await produce(broker.client_options(), topic, sent, idempotent=broker.kind == "kafka", compression_type=codec)
    records = await broker.consume_all(topic)
    assert [record.value for record in records] == sent
    assert records[4].key == b"chain-1"
    assert records[4].headers == (("schema", b"audit-shipper/v1"), ("event_id", b"c:4"))


@pytest.mark.kafka
@pytest.mark.parametrize("listener,mechanism", [(SSL, None), (MTLS, None), (SASL_SSL, "SCRAM-SHA-512"),
                                                (SASL_SSL, "SCRAM-SHA-256"), (SASL_SSL, "PLAIN")])
async def test_record_round_trips_over_each_secure_listener(secure_kafka_broker, listener, mechanism):
    broker = secure_kafka_broker
    options = broker.client_options(listener, mechanism)
    context: ssl.SSLContext = options["ssl_context"]
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    topic = unique_topic(f"secure-{listener}")
    await broker.create_topic(topic)
    sent = values(3, f"{listener}-{mechanism}")
    await produce(options, topic, sent, idempotent=True)
    records = await broker.consume_all(topic, listener=listener)
    assert [record.value for record in records] == sent


@pytest.mark.kafka
async def test_secure_listeners_refuse_untrusted_servers_missing_certificates_and_wrong_passwords(
        secure_kafka_broker, tmp_path):
    """aiokafka reports all three the same way, KafkaConnectionError, with the reason only in its log."""
    broker = secure_kafka_broker
    untrusted = broker.client_options(SSL) | {
        "ssl_context": ssl.create_default_context(cafile=str(unrelated_ca(tmp_path).cert_file))}
    no_client_cert = broker.client_options(SSL) | {"bootstrap_servers": broker.bootstrap_mtls}
    wrong_password = broker.client_options(SASL_SSL, "SCRAM-SHA-512") | {"sasl_plain_password": "not-the-password"}
    for options in (untrusted, no_client_cert, wrong_password):
        with pytest.raises(KafkaConnectionError):
            await asyncio.wait_for(start_producer(options, idempotent=True, request_timeout_ms=5000), 30)


@pytest.mark.kafka
async def test_batch_over_the_topic_max_message_bytes_fails_with_message_size_too_large(kafka_broker):
    topic = unique_topic("small")
    await kafka_broker.create_topic(topic, config={"max.message.bytes": "2000"})
    producer = await start_producer(kafka_broker.client_options(), idempotent=True)
    try:
        with pytest.raises(MessageSizeTooLargeError):
            await asyncio.wait_for(await send_values(producer, topic, [b"x" * 5000]), 20)
        # The refusal is per batch: the same producer goes on sending.
        await asyncio.wait_for(await send_values(producer, topic, [b"fits"]), 20)
    finally:
        await producer.stop()
    assert [record.value for record in await kafka_broker.consume_all(topic)] == [b"fits"]


@pytest.mark.tansu
async def test_tansu_refuses_the_idempotent_producer_at_start_with_unknown_error(tansu_broker):
    with pytest.raises(UnknownError):
        await asyncio.wait_for(start_producer(tansu_broker.client_options(), idempotent=True), 30)


@pytest.mark.kafka
async def test_kafka_keeps_acknowledged_records_across_sigkill_and_restart(fresh_kafka_broker):
    broker = fresh_kafka_broker
    bootstrap = broker.bootstrap
    topic = unique_topic("durable")
    await broker.create_topic(topic, partitions=2)
    before = values(100, "before")
    await produce(broker.client_options(), topic, before, idempotent=True)

    broker.kill()
    assert not broker.running
    await broker.restart_async()

    assert broker.bootstrap == bootstrap
    assert [record.value for record in await broker.consume_all(topic)] == before
    after = values(5, "after")
    await produce(broker.client_options(), topic, after, idempotent=True)
    assert [record.value for record in await broker.consume_all(topic)] == before + after


@pytest.mark.tansu
async def test_tansu_serves_again_after_sigkill_and_restart(fresh_tansu_broker):
    broker = fresh_tansu_broker
    broker.kill()
    await broker.restart_async()
    topic = unique_topic("again")  # memory storage: the restart emptied the broker
    await broker.create_topic(topic)
    await produce(broker.client_options(), topic, values(3, "again"), idempotent=False)
    assert len(await broker.consume_all(topic)) == 3


@pytest.mark.kafka
async def test_paused_kafka_holds_an_idempotent_batch_and_delivers_it_on_resume(fresh_kafka_broker):
    """With idempotence on, aiokafka never expires a batch: through an outage its future stays pending
    (longer than request_timeout_ms) and resolves once the broker answers again."""
    broker = fresh_kafka_broker
    topic = unique_topic("paused")
    await broker.create_topic(topic)
    producer = await start_producer(broker.client_options(), idempotent=True, request_timeout_ms=1000)
    try:
        await asyncio.wait_for(await send_values(producer, topic, [b"before"]), 20)
        broker.pause()
        try:
            waiting = await send_values(producer, topic, [b"during"])
            await asyncio.sleep(2.5)
            assert not waiting.done()
        finally:
            broker.resume()
        await asyncio.wait_for(waiting, 30)
    finally:
        await producer.stop()
    assert [record.value for record in await broker.consume_all(topic)] == [b"before", b"during"]


@pytest.mark.tansu
async def test_paused_tansu_fails_a_plain_batch_after_request_timeout_and_serves_on_resume(fresh_tansu_broker):
    """Without idempotence a batch expires after request_timeout_ms with a retriable KafkaError, although
    the paused broker may still write it when it resumes: the sender must resend, and duplicates stay
    possible (exact ones, recognisable by event_id)."""
    broker = fresh_tansu_broker
    topic = unique_topic("paused")
    await broker.create_topic(topic)
    producer = await start_producer(broker.client_options(), idempotent=False, request_timeout_ms=1000)
    try:
        # Sent first so the producer knows the partition's leader: a paused broker cannot tell it.
        await asyncio.wait_for(await send_values(producer, topic, [b"before"]), 20)
        broker.pause()
        try:
            waiting = await send_values(producer, topic, [b"during"])
            with pytest.raises(KafkaError) as failure:
                await asyncio.wait_for(waiting, 15)
            assert failure.value.retriable
        finally:
            broker.resume()
        await asyncio.wait_for(await send_values(producer, topic, [b"after"]), 20)
    finally:
        await producer.stop()
    # "during" may or may not have been written, and if so possibly after "after": the failed request
    # still sat in the paused broker's socket, and aiokafka sent "after" on a new connection.
    read = [record.value for record in await broker.consume_all(topic)]
    assert sorted(read) in (sorted([b"before", b"after"]), sorted([b"before", b"during", b"after"]))


@pytest.mark.tansu
def test_a_broker_that_cannot_start_says_why_with_its_log(tmp_path):
    broker = TansuBroker(tmp_path, storage="nonsense://nowhere")
    broker.start()
    try:
        with pytest.raises(BrokerStartError) as failure:
            broker.wait_ready(timeout=20)
    finally:
        broker.kill()
    message = str(failure.value)
    assert "exited with status" in message and str(broker.console_log) in message
    assert "UnsupportedStorageUrl" in message

