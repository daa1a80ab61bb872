"""`shipper verify` reads topics in every codec a producer can write, on Apache Kafka and on Tansu: gzip,
snappy (the xerial framing in 32 KiB blocks as aiokafka writes it, and in one block as the shipper's own
batches are), lz4 and zstd. A clean copy verifies with every record judged; a copy with one body changed
names that record by chain, seq, partition and offset.
"""
from __future__ import annotations

import asyncio
import json

import pytest
from aiokafka import AIOKafkaProducer

from shipper.kafka.wire import _BATCH_HEADER, _CODECS, _kafka_records, _SpanBatch
from shipper.verify import Report, verify_topic
from tests.integration.test_verify_kafka import PARTITIONS, change_body, new_topic_name, produce
from tests.unit.test_verify import KEYS, Topic, standard_node

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(300)]
WRITERS = ["none", "gzip", "snappy", "lz4", "zstd", "shipper-snappy", "shipper-zstd"]


async def produce_like_the_shipper(client_options: dict, name: str, topic: Topic, codec: str) -> None:
    """Each partition's records as the shipper sends them: runs of one chain (its consecutive seqs) as
    spans, records built by kafka_records, compressed by wire.py's batch builder, sent with send_batch."""
    producer = AIOKafkaProducer(**client_options, acks="all", enable_idempotence=False)
    await producer.start()
    try:
        for partition, records in sorted(topic.partitions.items()):
            spans: list[tuple] = []
            for key, value in records:
                seq = json.loads(value)["seal"]["seq"]
                if spans and spans[-1][0] == key and spans[-1][1] + len(spans[-1][2]) == seq:
                    spans[-1][2].append(value)
                else:
                    spans.append((key, seq, [value]))
            for start in range(0, len(spans), 7):
                chunk = [(key, seq, values, 0, len(values)) for key, seq, values in spans[start:start + 7]]
                built, taken, _ = _kafka_records(chunk, 1 << 40, 1 << 40, _BATCH_HEADER)
                batch = _SpanBatch(_CODECS[codec], built, sum(taken))
                await (await producer.send_batch(batch, name, partition=partition))
    finally:
        await producer.stop()


async def publish(broker, topic: Topic, writer: str) -> str:
    name = new_topic_name(f"codec-{writer}")
    await broker.create_topic(name, PARTITIONS)
    if writer.startswith("shipper-"):
        await produce_like_the_shipper(broker.client_options(), name, topic, writer.split("-", 1)[1])
    else:
        options = broker.client_options()
        if writer != "none":
            options["compression_type"] = writer
        await produce(options, name, topic)
    return name


def verify_written(broker, writer: str) -> tuple[Report, Report, Topic]:
    async def scenario():
        clean = standard_node().topic(PARTITIONS)
        changed = standard_node().topic(PARTITIONS)
        change_body(changed)
        names = [await publish(broker, clean, writer), await publish(broker, changed, writer)]
        reports = [await verify_topic(broker.bootstrap, name, public_keys=KEYS, idle_timeout_s=3.0, timeout_s=90)
                   for name in names]
        return reports[0], reports[1], changed

    return asyncio.run(scenario())


def assert_judged(clean: Report, changed: Report, topic: Topic, writer: str) -> None:
    codec = writer.split("-")[-1]
    assert set(clean.meta["fetch"]["codecs"]) == {codec} and set(changed.meta["fetch"]["codecs"]) == {codec}
    assert clean.ok, clean.human()
    assert clean.totals["records"] == sum(len(records) for records in topic.partitions.values())
    assert clean.totals["unattested_records"] == 0 and clean.chain("uid-2/worker").complete
    assert changed.totals["violation_kinds"] == {"altered": 1}, changed.human()
    (issue,) = changed.all_violations()
    assert (issue.chain, issue.seq) == ("uid-1/app", 123)
    assert (issue.partition, issue.offset) == topic.locate("uid-1/app", 123)


@pytest.mark.parametrize("writer", WRITERS)
def test_a_topic_in_each_codec_verifies_on_kafka(kafka_broker, writer):
    assert_judged(*verify_written(kafka_broker, writer), writer)


@pytest.mark.tansu
@pytest.mark.parametrize("writer", WRITERS)
def test_a_topic_in_each_codec_verifies_on_tansu(tansu_broker, writer):
    assert_judged(*verify_written(tansu_broker, writer), writer)
