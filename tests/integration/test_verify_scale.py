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
from tests.unit.test_verify import KEYS, SPEC_END, spec_node

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
