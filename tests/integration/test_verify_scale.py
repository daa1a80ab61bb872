"""`shipper verify` at scale against real brokers: the partitions of a topic split across worker processes
(`--workers`) give the verdict of one process, manifests crossing workers included; bad input ends in a
clear message and exit status 2."""
from __future__ import annotations

import asyncio
import json

import pytest

from shipper.verify import cli_main, verify_topic
from shipper.verify.parallel import verify_topic_parallel
from tests.integration.test_verify_kafka import publish
from tests.unit.test_verify import KEYS, SPEC_END, Topic, spec_node

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(300)]
PARTITIONS = 8


def tampered(partitions: int = PARTITIONS):
    """spec_node's chains with one record changed and one chain's tail removed (caught through the manifest
    of another partition)."""
    node = spec_node()
    topic = node.topic(partitions)
    record = topic.record("uid-3/web", 17)
    record["body"] = "an auditor would want to know"
    topic.replace("uid-3/web", 17, record)
    topic.truncate_chain("uid-1/app", 300)
    assert topic.partition_of(b"uid-1/app") != topic.partition_of(b"node/node-a")
    return topic


def judged(report) -> dict:
    out = report.to_dict()
    del out["meta"]
    return out


@pytest.fixture(scope="module")
def tampered_topic(kafka_broker) -> str:
    return asyncio.run(publish(kafka_broker, "scale", tampered(), partitions=PARTITIONS))


@pytest.fixture(scope="module")
def key_file(tmp_path_factory) -> str:
    from cryptography.hazmat.primitives import serialization

    public_key = next(iter(KEYS.values()))
    path = tmp_path_factory.mktemp("keys") / "signing-key.pub.pem"
    path.write_bytes(public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return str(path)


def test_one_and_four_workers_give_the_same_verdict_on_a_tampered_topic(kafka_broker, tampered_topic, key_file):
    one = asyncio.run(verify_topic(kafka_broker.bootstrap, tampered_topic, public_keys=KEYS, now=SPEC_END + 60))
    four = verify_topic_parallel(kafka_broker.bootstrap, tampered_topic, 4, public_keys=[key_file], client_terms={},
                                 now=SPEC_END + 60)
    assert {issue.kind for issue in one.all_violations()} == {"altered", "tail_removed"}
    assert judged(four) == judged(one)
    assert four.meta["workers"] == 4 and four.meta["partitions"] == PARTITIONS
    (removed,) = four.chain("uid-1/app").violations
    assert (removed.kind, removed.seq, removed.seq_last) == ("tail_removed", 300, 314)


def test_workers_on_the_command_line_exit_1_with_the_json_report(kafka_broker, tampered_topic, key_file, capsys):
    status = cli_main(["--bootstrap-servers", kafka_broker.bootstrap, "--topic", tampered_topic, "--public-key",
                       key_file, "--workers", "3", "--json", "--now", "2026-11-28T18:04:00Z", "--progress", "json"])
    captured = capsys.readouterr()
    assert status == 1
    report = json.loads(captured.out)
    assert report["totals"]["violation_kinds"] == {"altered": 1, "tail_removed": 1}
    assert report["meta"]["workers"] == 3
    lines = [json.loads(line) for line in captured.err.splitlines() if line.startswith("{")]
    assert lines and lines[-1]["progress"] == "final"
    assert lines[-1]["records"] == lines[-1]["records_to_read"] == report["totals"]["records_read"]


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_topic_that_does_not_exist_or_an_unreachable_broker_is_exit_2(kafka_broker, workers, capsys):
    assert cli_main(["--bootstrap-servers", kafka_broker.bootstrap, "--topic", "no-such-topic-here",
                     "--workers", workers]) == 2
    assert "topic 'no-such-topic-here' does not exist" in capsys.readouterr().err
    assert cli_main(["--bootstrap-servers", "127.0.0.1:1", "--topic", "logs", "--workers", workers]) == 2
    assert "cannot connect to Kafka at 127.0.0.1:1" in capsys.readouterr().err


def test_a_wrong_public_key_is_a_violation_in_every_worker(kafka_broker, tampered_topic, tmp_path, capsys):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    other = tmp_path / "other.pub.pem"
    other.write_bytes(Ed25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    assert cli_main(["--bootstrap-servers", kafka_broker.bootstrap, "--topic", tampered_topic, "--public-key",
                     str(other), "--workers", "2", "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["totals"]["violation_kinds"]["unknown_key"] > 0


def run_member(bootstrap: str, topic: str, group: str, key_file: str, *extra: str):
    import subprocess
    import sys

    return subprocess.Popen([sys.executable, "-m", "shipper.cli", "verify", "--bootstrap-servers", bootstrap,
                             "--topic", topic, "--public-key", key_file, "--group", group, "--json",
                             "--now", "2026-11-28T18:04:00Z", "--idle-timeout", "3", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_a_group_of_two_members_splits_the_partitions_and_both_report_the_whole_verdict(
        kafka_broker, tampered_topic, key_file):
    group = f"audit-{tampered_topic}"
    members = [run_member(kafka_broker.bootstrap, tampered_topic, group, key_file) for _ in range(2)]
    outcomes = [member.communicate(timeout=240) for member in members]
    reports = []
    for member, (out, err) in zip(members, outcomes):
        assert member.returncode == 1, err
        reports.append(json.loads(out))
    single = asyncio.run(verify_topic(kafka_broker.bootstrap, tampered_topic, public_keys=KEYS, now=SPEC_END + 60))
    for report in reports:
        assert report["meta"]["members"] == 2 and report["meta"]["group"] == group
        assert sorted(report["meta"]["member_partitions"]) == [PARTITIONS // 2, PARTITIONS // 2]
        assert report["totals"] == single.to_dict()["totals"]
        assert report["chains"] == single.to_dict()["chains"]
    # the manifest naming uid-1/app's removed tail sits in another partition than the chain
    (removed,) = [chain for chain in reports[0]["chains"] if chain["chain"] == "uid-1/app"][0]["violations"]
    assert (removed["kind"], removed["seq"], removed["seq_last"]) == ("tail_removed", 300, 314)


def metrics_of(port: int) -> dict[str, float]:
    """The follower's /metrics as {sample name with labels: value}."""
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def wait_for(port: int, condition, timeout: float = 90.0) -> dict[str, float]:
    import time

    deadline = time.monotonic() + timeout
    last: dict[str, float] = {}
    while time.monotonic() < deadline:
        try:
            last = metrics_of(port)
            if condition(last):
                return last
        except OSError:
            pass
        time.sleep(0.3)
    raise AssertionError(f"metrics did not reach the condition in {timeout}s: {last}")


def start_follower(bootstrap: str, topic: str, group: str, key_file: str, port: int, *extra: str, grace: str = "600"):
    import subprocess
    import sys

    return subprocess.Popen([sys.executable, "-m", "shipper.cli", "verify", "--bootstrap-servers", bootstrap,
                             "--topic", topic, "--public-key", key_file, "--group", group, "--follow",
                             "--metrics-port", str(port), "--commit-every", "0.5", "--grace", grace, *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_follow_mode_resumes_after_sigkill_without_re_reading_and_catches_the_violation_after_the_restart(
        kafka_broker, key_file):
    import signal

    from tests.harness.ports import free_port
    from tests.integration.test_verify_kafka import produce

    node = spec_node()
    topic = node.topic(PARTITIONS)
    name = asyncio.run(publish(kafka_broker, "follow", topic, partitions=PARTITIONS))
    first = sum(len(records) for records in topic.partitions.values())
    group, port = f"follow-{name}", free_port()
    follower = start_follower(kafka_broker.bootstrap, name, group, key_file, port)
    try:
        # everything read, and committed after the last record was
        seen = wait_for(port, lambda m: m.get("audit_shipper_verify_records_total") == first
                        and m.get("audit_shipper_verify_last_commit_timestamp_seconds", 0)
                        > m.get("audit_shipper_verify_last_record_timestamp_seconds", 0) + 0.5)
        assert seen["audit_shipper_verify_partitions"] == PARTITIONS
        assert not any(key.startswith("audit_shipper_verify_violations_total{") for key in seen)
    finally:
        follower.send_signal(signal.SIGKILL)
        follower.communicate(timeout=30)

    # Right after the crash: five more records of a chain, the third changed on its way into the topic.
    emitted = len(node.emitted)
    node.chains["uid-3/web"].logs(5)
    later = Topic(PARTITIONS)
    for key, value in node.emitted[emitted:]:
        record = json.loads(value)
        if record["seal"]["seq"] == 163:
            record["body"] = "rewritten after the fact"
            value = json.dumps(record).encode()
        later.partitions.setdefault(topic.partition_of(key), []).append((key, value))
    asyncio.run(produce(kafka_broker.client_options(), name, later))

    restarted = start_follower(kafka_broker.bootstrap, name, group, key_file, port)
    try:
        after = wait_for(port, lambda m: m.get('audit_shipper_verify_violations_total{kind="altered"}') == 1)
        assert after["audit_shipper_verify_records_total"] == 5          # only what came after the commit
        assert after["audit_shipper_verify_restored_chains_total"] >= 4
        assert not [key for key, value in after.items()
                    if key.startswith("audit_shipper_verify_violations_total{") and "altered" not in key and value]
    finally:
        restarted.send_signal(signal.SIGTERM)
        out, err = restarted.communicate(timeout=60)
    assert restarted.returncode == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    (altered,) = [line for line in lines if line.get("violation") == "altered"]
    assert (altered["chain"], altered["seq"], altered["topic"]) == ("uid-3/web", 163, name)


def test_follow_mode_names_the_records_deleted_before_it_read_them_and_reads_on_from_the_log_start(
        kafka_broker, key_file):
    """Records deleted (by retention; here by DeleteRecords) between a commit and the restart cannot be
    judged: the follower says which offsets they were, in its output and metrics, and reads on from the
    partition's new start. Its lag gauges come from the partitions' high watermarks."""
    import signal

    from aiokafka import TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient, RecordsToDelete

    from tests.harness.ports import free_port
    from tests.integration.test_verify_kafka import produce

    node = spec_node()
    topic = node.topic(PARTITIONS)
    name = asyncio.run(publish(kafka_broker, "deleted", topic, partitions=PARTITIONS))
    first = sum(len(records) for records in topic.partitions.values())
    group, port = f"deleted-{name}", free_port()

    def lags(metrics: dict) -> list[float]:
        return [value for key, value in metrics.items() if key.startswith("audit_shipper_verify_lag_records{")]

    follower = start_follower(kafka_broker.bootstrap, name, group, key_file, port)
    try:
        wait_for(port, lambda m: m.get("audit_shipper_verify_records_total") == first
                 and m.get("audit_shipper_verify_last_commit_timestamp_seconds", 0)
                 > m.get("audit_shipper_verify_last_record_timestamp_seconds", 0) + 0.5
                 and lags(m) == [0.0] * PARTITIONS)
    finally:
        follower.send_signal(signal.SIGTERM)
        follower.communicate(timeout=60)
    assert follower.returncode == 0

    emitted = len(node.emitted)
    node.chains["uid-3/web"].logs(8)
    later = Topic(PARTITIONS)
    for key, value in node.emitted[emitted:]:
        later.partitions.setdefault(topic.partition_of(key), []).append((key, value))
    asyncio.run(produce(kafka_broker.client_options(), name, later))
    partition = topic.partition_of(b"uid-3/web")
    committed = len(topic.partitions[partition])           # where the follower's commit left the partition

    async def delete_two() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=kafka_broker.bootstrap)
        await admin.start()
        try:
            await admin.delete_records({TopicPartition(name, partition): RecordsToDelete(before_offset=committed + 2)})
        finally:
            await admin.close()

    asyncio.run(delete_two())
    written = sum(len(records) for records in later.partitions.values())
    restarted = start_follower(kafka_broker.bootstrap, name, group, key_file, port)
    try:
        wait_for(port, lambda m: m.get('audit_shipper_verify_violations_total{kind="incomplete_read"}') == 1
                         and m.get("audit_shipper_verify_records_total") == written - 2)
    finally:
        restarted.send_signal(signal.SIGTERM)
        out, err = restarted.communicate(timeout=60)
    assert restarted.returncode == 0, err
    (deleted,) = [json.loads(line) for line in out.splitlines() if json.loads(line).get("violation") == "incomplete_read"]
    assert (deleted["topic"], deleted["partition"], deleted["offset"]) == (name, partition, committed)
    assert f"offsets {committed}..{committed + 1} were deleted" in deleted["detail"]


def test_follow_members_relay_a_manifests_claims_to_the_member_holding_the_chain(kafka_broker, key_file):
    """Two followers, the node's manifests in one's partitions and a chain whose tail was removed in the
    other's: the claim crosses over the exchange topic and the holder reports the tail removed once it
    has waited --grace."""
    import signal

    from shipper.kafka import partition_of
    from tests.harness.ports import free_port
    from tests.integration.test_verify_kafka import produce

    class Murmur2Topic(Topic):
        def partition_of(self, key: bytes) -> int:         # as the shipper partitions
            return partition_of(key, self.partition_count)

    count = next(count for count in range(2, 9) if partition_of(b"uid-1/app", count) % 2
                 != partition_of(b"node/node-a", count) % 2)
    topic = Murmur2Topic(count)
    for key, value in spec_node().emitted:
        topic.append(key, value)
    topic.truncate_chain("uid-1/app", 300)
    name = asyncio.run(publish(kafka_broker, "relay", Murmur2Topic(count), partitions=count))     # empty
    group, ports = f"relay-{name}", [free_port(), free_port()]
    followers = [start_follower(kafka_broker.bootstrap, name, group, key_file, port, grace="3") for port in ports]
    try:
        # both members hold their partitions before the records come: the manifest's claim must cross
        wait_for(ports[0], lambda _: all(metrics_of(port).get("audit_shipper_verify_partitions", 0) > 0
                                         for port in ports))
        asyncio.run(produce(kafka_broker.client_options(), name, topic))
        total = sum(len(records) for records in topic.partitions.values())

        def read_all(_):
            metrics = [metrics_of(port) for port in ports]
            return (sum(m.get("audit_shipper_verify_records_total", 0) for m in metrics) == total
                    and all(m.get("audit_shipper_verify_partitions", 0) > 0 for m in metrics)
                    and sum(m.get('audit_shipper_verify_violations_total{kind="tail_removed"}', 0)
                            for m in metrics) == 1)

        wait_for(ports[0], read_all)
        relayed = sum(metrics_of(port).get("audit_shipper_verify_claims_relayed_total", 0) for port in ports)
        assert relayed > 0
    finally:
        outputs = []
        for follower in followers:
            follower.send_signal(signal.SIGTERM)
            outputs.append(follower.communicate(timeout=60)[0])
    removed = [json.loads(line) for out in outputs for line in out.splitlines()
               if json.loads(line).get("violation") == "tail_removed"]
    assert [(issue["chain"], issue["seq"], issue["seq_last"]) for issue in removed] == [("uid-1/app", 300, 314)]
