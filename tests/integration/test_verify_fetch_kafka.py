"""verify's own fetch loop (shipper/verify/fetch.py) where a broker makes reading hard: records retention
deletes while they are read, a broker restarted in the middle of a read, a broker gone for good, a topic
that does not exist and a broker that never answered. On real brokers; nothing stands in for Kafka.
"""
from __future__ import annotations

import asyncio
import json

import pytest
from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, RecordsToDelete

from shipper.verify import Verifier, VerifyError, verify_topic
from shipper.verify import fetch as fetch_module
from shipper.verify.fetch import EARLIEST, LATEST, OUT_OF_RANGE, FetchError, Fetcher, list_offsets
from shipper.verify.inputs import _settle_stopped
from tests.harness.ports import free_port
from tests.integration.test_verify_kafka import new_topic_name
from tests.integration.test_verify_kafka_codecs import produce_like_the_shipper
from tests.unit.test_verify import KEYS, Topic, standard_node

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(300)]


async def started_client(bootstrap: str):
    """aiokafka's client, as the Fetcher reads through it (the consumer's, in verify)."""
    from aiokafka.client import AIOKafkaClient

    client = AIOKafkaClient(bootstrap_servers=bootstrap, client_id="test-verify")
    await client.bootstrap()
    return client


def one_partition() -> Topic:
    topic = Topic(1)
    for key, value in standard_node().emitted:
        topic.append(key, value)
    return topic


async def written(broker, what: str, topic: Topic) -> str:
    name = new_topic_name(what)
    await broker.create_topic(name, 1)
    await produce_like_the_shipper(broker.client_options(), name, topic, "snappy")
    return name


async def read_to_the_end(fetcher: Fetcher, name: str, end: int, timeout: float = 60.0) -> int:
    fed = 0
    async with asyncio.timeout(timeout):
        while fetcher.position(name, 0) < end:
            fed += await fetcher.fetch_once(200)
    return fed


def test_records_retention_deletes_while_they_are_read_are_named_and_reading_goes_on(kafka_broker):
    async def scenario():
        topic = one_partition()
        total = len(topic.partitions[0])
        name = await written(kafka_broker, "retention", topic)
        client = await started_client(kafka_broker.bootstrap)
        try:
            verifier = Verifier(KEYS)
            fetcher = Fetcher(client, verifier)
            fetcher.assign(name, 0, 0)
            admin = AIOKafkaAdminClient(bootstrap_servers=kafka_broker.bootstrap)
            await admin.start()
            try:
                await admin.delete_records({TopicPartition(name, 0): RecordsToDelete(before_offset=100)})
            finally:
                await admin.close()
            assert await fetcher.fetch_once(500) == 0
            assert fetcher.stopped[(name, 0)].reason == OUT_OF_RANGE and fetcher.position(name, 0) == 0
            pending, unfinished = {(name, 0)}, {}
            await _settle_stopped(client, fetcher, verifier, pending, unfinished)
            assert fetcher.position(name, 0) == 100 and not fetcher.stopped and pending == {(name, 0)}
            assert (await list_offsets(client, [(name, 0)], EARLIEST))[(name, 0)] == 100
            end = (await list_offsets(client, [(name, 0)], LATEST))[(name, 0)]
            assert end == total
            fed = await read_to_the_end(fetcher, name, end)      # from inside a batch: offset 100 is in one
            return fed, total, verifier.finish()
        finally:
            await client.close()

    fed, total, report = asyncio.run(scenario())
    assert fed == total - 100 and report.totals["records_read"] == total - 100
    (issue,) = [issue for issue in report.violations if issue.kind == "incomplete_read"]
    assert (issue.partition, issue.offset) == (0, 0) and "offsets 0..99 were deleted (retention)" in issue.detail


def test_a_broker_restarted_in_the_middle_of_a_read_is_retried_and_read_on(fresh_kafka_broker):
    broker = fresh_kafka_broker
    topic = one_partition()
    first, second = Topic(1), Topic(1)
    first.partitions[0], second.partitions[0] = topic.partitions[0][:300], topic.partitions[0][300:]

    async def scenario():
        name = await written(broker, "restart", first)
        client = await started_client(broker.bootstrap)
        try:
            verifier = Verifier(KEYS)
            fetcher = Fetcher(client, verifier)
            fetcher.assign(name, 0, 0)
            fed = await read_to_the_end(fetcher, name, 300)

            async def restart_and_write_on() -> None:
                await broker.restart_async(120)
                await produce_like_the_shipper(broker.client_options(), name, second, "snappy")

            writer = asyncio.create_task(restart_and_write_on())
            try:
                fed += await read_to_the_end(fetcher, name, len(topic.partitions[0]), timeout=180)
            finally:
                await writer
            return fed, verifier.finish()
        finally:
            await client.close()

    fed, report = asyncio.run(scenario())
    assert fed == len(topic.partitions[0]) and report.ok, report.human()


def test_a_broker_gone_for_good_is_a_fetch_error_and_verify_cannot_run(fresh_tansu_broker, monkeypatch):
    broker = fresh_tansu_broker
    monkeypatch.setattr(fetch_module, "RETRY_FOR_S", 3.0)

    async def scenario():
        name = await written(broker, "gone", one_partition())
        client = await started_client(broker.bootstrap)
        try:
            fetcher = Fetcher(client, Verifier(KEYS))
            fetcher.assign(name, 0, 0)
            assert await fetcher.fetch_once(500) > 0
            broker.kill()
            with pytest.raises(FetchError, match="retried for 3 s"):
                async with asyncio.timeout(60):
                    while True:
                        await fetcher.fetch_once(200)
        finally:
            await client.close()
        with pytest.raises(VerifyError, match="cannot connect to Kafka"):
            await verify_topic(broker.bootstrap, name, idle_timeout_s=1.0)

    asyncio.run(scenario())


def test_an_absent_topic_or_a_port_nobody_answers_on_cannot_be_verified(kafka_broker):
    async def scenario():
        with pytest.raises(VerifyError, match="topic 'absent-topic-x' does not exist"):
            await verify_topic(kafka_broker.bootstrap, "absent-topic-x", idle_timeout_s=1.0)
        with pytest.raises(VerifyError, match="cannot connect to Kafka at"):
            await verify_topic(f"127.0.0.1:{free_port()}", "logs", idle_timeout_s=1.0)

    asyncio.run(scenario())


def test_the_report_states_what_was_read_and_the_cpu_of_each_stage(kafka_broker):
    async def scenario():
        name = await written(kafka_broker, "stats", one_partition())
        return await verify_topic(kafka_broker.bootstrap, name, public_keys=KEYS, idle_timeout_s=1.0), name

    report, name = asyncio.run(scenario())
    assert report.ok, report.human()
    stats = report.meta["fetch"]
    assert stats["records"] == report.totals["records_read"] == len(one_partition().partitions[0])
    assert stats["codecs"] == {"snappy": stats["batches"]} and stats["requests"] >= 1
    assert all(stats[stage] >= 0 for stage in ("fetch_s", "decode_s", "scan_s", "judge_s"))
    assert json.loads(json.dumps(report.to_dict()))["meta"]["end_offsets"] == {f"{name}/0": stats["records"]}


def test_a_topic_deleted_while_it_is_read_stops_its_partitions_as_deleted(kafka_broker):
    """Half a partition read, then its topic deleted: the fetcher stops the partition as deleted at the
    next metadata (not after retrying a broker for 30 s), and verify's report names the partition read
    only so far: an incomplete read, exit status 1."""
    async def scenario():
        topic = one_partition()
        name = await written(kafka_broker, "deleted", topic)
        client = await started_client(kafka_broker.bootstrap)
        try:
            verifier = Verifier(KEYS)
            fetcher = Fetcher(client, verifier, max_partition_bytes=4096, max_bytes=4096)
            fetcher.assign(name, 0, 0)
            end = (await list_offsets(client, [(name, 0)], LATEST))[(name, 0)]
            async with asyncio.timeout(30):
                while not await fetcher.fetch_once(200):
                    pass
            read = fetcher.position(name, 0)
            assert 0 < read < end
            admin = AIOKafkaAdminClient(bootstrap_servers=kafka_broker.bootstrap)
            await admin.start()
            try:
                await admin.delete_topics([name])
            finally:
                await admin.close()
            started = asyncio.get_running_loop().time()
            async with asyncio.timeout(20):
                while (name, 0) not in fetcher.stopped:
                    await fetcher.fetch_once(200)
            pending, unfinished = {TopicPartition(name, 0)}, {}
            await _settle_stopped(client, fetcher, verifier, pending, unfinished)
            return fetcher.stopped[(name, 0)], asyncio.get_running_loop().time() - started, unfinished, read
        finally:
            await client.close()

    stopped, took, unfinished, read = asyncio.run(scenario())
    assert stopped.reason == fetch_module.DELETED and stopped.offset >= read and took < 15
    assert list(unfinished.values()) == ["its topic was deleted while it was read"]


def test_a_group_member_reading_longer_than_the_poll_interval_stays_in_its_group(kafka_broker):
    """The fetcher reads a group member's partitions, not its consumer; a consumer not polled for
    max_poll_interval_ms leaves the group, and the member's read would end "interrupted" (and a one-shot
    group verify start over). Here the poll interval is 2 s and the read waits 6 s for a record that
    never comes: the member stays, and the read ends "idle"."""
    from aiokafka import AIOKafkaConsumer

    from shipper.verify.group import _Membership
    from shipper.verify.inputs import read_partitions

    async def scenario():
        name = await written(kafka_broker, "poll", one_partition())
        membership = _Membership()
        consumer = AIOKafkaConsumer(bootstrap_servers=kafka_broker.bootstrap, group_id=f"poll-{name}",
                                    enable_auto_commit=False, max_poll_interval_ms=2000,
                                    heartbeat_interval_ms=300, session_timeout_ms=6000)
        await consumer.start()
        try:
            consumer.subscribe([name], listener=membership.listener)
            async with asyncio.timeout(60):
                while not membership.assignments:
                    await consumer.getmany(timeout_ms=200)
            membership.rebalanced = False
            assigned = list(membership.assigned)
            begins = {tp: 0 for tp in assigned}
            ends = {tp: len(one_partition().partitions[0]) + 1 for tp in assigned}   # one more than there is
            reading = await read_partitions(Verifier(KEYS), consumer, assigned, idle_timeout_s=6.0, timeout_s=60,
                                            begins=begins, ends=ends, wait_for_claims=False, assign=False,
                                            interrupted=lambda: membership.rebalanced)
            return reading.stopped, membership.assignments, reading.reached
        finally:
            await consumer.stop()

    stopped, assignments, positions = asyncio.run(scenario())
    assert (stopped, assignments) == ("idle", 1)
    assert list(positions.values()) == [len(one_partition().partitions[0])]
