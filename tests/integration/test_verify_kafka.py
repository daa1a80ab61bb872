"""`shipper verify` against a real Kafka topic: a clean chain set verifies; a copy of the topic with one
change (made the way someone with write access to the cluster would) is caught and named by chain and seq.

The chains are built by the real sealing code (tests/unit/test_verify.py builders) and produced with
aiokafka into explicit partitions, with the shipper's key and headers, so the topic looks like the
shipper's own. Each tampered copy is made by reading the clean topic back and producing it, changed,
into a new topic: what is verified is what Kafka returned, not the builders' memory.
"""
from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from aiokafka import AIOKafkaProducer

from shipper.kafka import partition_of
from shipper.seal import checkpoint_body, parse_checkpoint
from shipper.verify import Report, cli_main, prove_main, verify_topic
from tests.unit.test_verify import (ATTACKER, KEYS, SIGNER, SPEC_END, Topic, rehash, rewrite_chain_without_the_key,
                                    rfc3339, spec_node, standard_node)

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(300)]
PARTITIONS = 3


def new_topic_name(what: str) -> str:
    return f"verify-{what}-{uuid.uuid4().hex[:8]}"


async def produce(client_options: dict, name: str, topic: Topic) -> None:
    """Every partition's records in order, with the shipper's key and headers."""
    producer = AIOKafkaProducer(**client_options, acks="all", enable_idempotence=False, linger_ms=5)
    await producer.start()
    try:
        pending = []
        for partition, records in sorted(topic.partitions.items()):
            for key, value in records:
                record = json.loads(value)
                headers = [("schema", b"audit-shipper/v1"), ("event_id", str(record.get("event_id", "")).encode())]
                pending.append(await producer.send(name, value, key=key, partition=partition, headers=headers))
        await asyncio.gather(*pending)
    finally:
        await producer.stop()


async def read_back(broker, name: str) -> Topic:
    topic = Topic(PARTITIONS)
    for record in await broker.consume_all(name, timeout=30):
        topic.partitions.setdefault(record.partition, []).append((record.key, record.value))
    return topic


async def publish(broker, what: str, topic: Topic, partitions: int = PARTITIONS) -> str:
    name = new_topic_name(what)
    await broker.create_topic(name, partitions)
    await produce(broker.client_options(), name, topic)
    return name


async def verify(broker, name: str, **options) -> Report:
    return await verify_topic(broker.bootstrap, name, public_keys=KEYS, idle_timeout_s=5.0, timeout_s=120,
                              **options)


@pytest.fixture(scope="module")
def clean_topic(kafka_broker) -> str:
    return asyncio.run(publish(kafka_broker, "clean", standard_node().topic(PARTITIONS)))


def test_clean_chain_set_in_kafka_verifies_with_exit_0(kafka_broker, clean_topic, tmp_path, capsys):
    report = asyncio.run(verify(kafka_broker, clean_topic))
    assert report.ok, report.human()
    expected = standard_node().topic(PARTITIONS)
    assert report.totals["records"] == sum(len(records) for records in expected.partitions.values())
    assert report.meta["stopped"] == "end_offsets" and report.meta["partitions"] == PARTITIONS
    assert report.chain("uid-2/worker").complete
    assert report.totals["violations"] == 0 and report.totals["malformed"] == 0

    public = tmp_path / "signing.pub.pem"
    from cryptography.hazmat.primitives import serialization
    public.write_bytes(next(iter(KEYS.values())).public_bytes(serialization.Encoding.PEM,
                                                              serialization.PublicFormat.SubjectPublicKeyInfo))
    code = cli_main(["--bootstrap-servers", kafka_broker.bootstrap, "--topic", clean_topic, "--public-key",
                     str(public), "--require-attested", "--idle-timeout", "3"])
    assert code == 0
    assert "VERDICT OK" in capsys.readouterr().out


# -- one change per copy: (what to do to the topic, the violation it must cause, its chain, its seq) ---------

def change_body(topic: Topic):
    record = topic.record("uid-1/app", 123)
    record["body"] = "payment of 10 EUR approved"
    topic.replace("uid-1/app", 123, record)
    return "altered", "uid-1/app", 123


def delete_record(topic: Topic):
    topic.delete("uid-3/web", 64)
    return "missing", "uid-3/web", 64


def insert_record(topic: Topic):
    forged = topic.record("uid-1/app", 200)
    forged["body"] = "admin logged in"
    topic.insert_before("uid-1/app", 200, rehash(forged, bytes.fromhex(topic.record("uid-1/app", 199)["seal"]["hash"])))
    return "conflicting_duplicate", "uid-1/app", 200


def swap_records(topic: Topic):
    topic.swap("uid-2/worker", 30, 31)
    return "reordered", "uid-2/worker", 30


def remove_tail(topic: Topic):
    last = topic.chain_records("uid-1/app")[-1]["seal"]["seq"]
    topic.truncate_chain("uid-1/app", last - 5)
    return "tail_removed", "uid-1/app", last - 5


def forge_checkpoint(topic: Topic):
    checkpoint = topic.record("uid-3/web", 51)
    parsed = parse_checkpoint(checkpoint["body"])
    statement = checkpoint["body"].partition("\n\n")[0] + "\n"
    checkpoint["body"] = checkpoint_body(statement, [ATTACKER.sign(statement)])
    assert parsed.seq == 50
    topic.replace("uid-3/web", 51, rehash(checkpoint, bytes.fromhex(checkpoint["seal"]["prev"])))
    return "unknown_key", "uid-3/web", 51


def flip_signature_bit(topic: Topic):
    checkpoint = topic.record("uid-1/app", 101)
    parsed = parse_checkpoint(checkpoint["body"])
    (key_id, signature), = parsed.signatures
    checkpoint["body"] = checkpoint_body(parsed.statement, [(key_id, signature[:-1] + bytes([signature[-1] ^ 0x80]))])
    topic.replace("uid-1/app", 101, rehash(checkpoint, bytes.fromhex(checkpoint["seal"]["prev"])))
    return "bad_signature", "uid-1/app", 101


def rewrite_without_key(topic: Topic):
    rewrite_chain_without_the_key(topic, "uid-3/web", "keep")
    return "bad_signature", "uid-3/web", 51       # the first checkpoint of the rewritten chain


CHANGES: dict[str, Callable[[Topic], tuple[str, str, int]]] = {
    "body_changed": change_body, "record_deleted": delete_record, "record_inserted": insert_record,
    "records_swapped": swap_records, "tail_removed": remove_tail, "checkpoint_forged": forge_checkpoint,
    "signature_bit_flipped": flip_signature_bit, "rewritten_without_key": rewrite_without_key,
}


@pytest.mark.parametrize("change", list(CHANGES))
def test_tampered_copy_of_the_topic_is_caught_and_named(kafka_broker, clean_topic, change):
    async def scenario() -> tuple[Report, tuple[str, str, int], Topic]:
        topic = await read_back(kafka_broker, clean_topic)
        expected = CHANGES[change](topic)
        name = await publish(kafka_broker, change.replace("_", "-"), topic)
        return await verify(kafka_broker, name), expected, topic

    report, (kind, chain, seq), topic = asyncio.run(scenario())
    assert not report.ok
    named = [issue for issue in report.all_violations() if issue.kind == kind]
    assert named, report.human()
    assert any(issue.chain == chain and issue.seq == seq for issue in named), report.human()
    issue = next(issue for issue in named if issue.chain == chain and issue.seq == seq)
    if kind != "tail_removed":
        # named where it sits: the partition of its chain and an offset in it
        assert issue.partition == topic.partition_of(chain.encode()) and issue.offset is not None
    assert report.human().rstrip().splitlines()[-1].startswith("VERDICT FAILED")
    assert f"chain {chain}: FAILED" in report.human()


@pytest.mark.tansu
def test_verify_on_tansu_reads_the_last_batch_despite_its_end_offsets(tansu_broker):
    """Tansu reports a partition's end offset as the start of its last batch: reading stops at the first
    quiet poll after the end offsets, not at them, so the final checkpoints are read too."""
    async def scenario() -> Report:
        expected = standard_node().topic(PARTITIONS)
        name = new_topic_name("tansu")
        await tansu_broker.create_topic(name, PARTITIONS)
        await produce(tansu_broker.client_options(), name, expected)
        return await verify_topic(tansu_broker.bootstrap, name, public_keys=KEYS, idle_timeout_s=3.0, timeout_s=90)

    report = asyncio.run(scenario())
    assert report.ok, report.human()
    assert report.totals["unattested_records"] == 0
    assert report.totals["records"] == sum(len(r) for r in standard_node().topic(PARTITIONS).partitions.values())


@pytest.mark.parametrize("listener", ["mtls", "sasl_ssl-SCRAM-SHA-512", "sasl_ssl-PLAIN"])
def test_verify_reads_over_tls_and_sasl_and_never_prints_the_password(secure_kafka_broker, listener, tmp_path,
                                                                      capsys):
    broker = secure_kafka_broker
    name = asyncio.run(publish(broker, "secure", standard_node().topic(PARTITIONS)))
    args = ["--topic", name, "--tls-ca-file", str(broker.ca_file), "--idle-timeout", "3", "--json"]
    password = None
    if listener == "mtls":
        args += ["--bootstrap-servers", broker.bootstrap_mtls, "--tls-cert-file", str(broker.client_cert_file),
                 "--tls-key-file", str(broker.client_key_file)]
    else:
        user = broker.sasl_users[listener.split("-", 1)[1]]
        password = user.password
        secret = tmp_path / "sasl-password"
        secret.write_text(password + "\n")
        args += ["--bootstrap-servers", broker.bootstrap_sasl_ssl, "--sasl-mechanism", user.mechanism,
                 "--sasl-username", user.username, "--sasl-password-file", str(secret)]
    assert cli_main(args) == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert report["ok"] and report["meta"]["signatures"] == "unchecked"
    if password is not None:
        assert password not in captured.out + captured.err
        (tmp_path / "sasl-password").write_text("wrong-" + password)
        assert cli_main(args) == 2      # authentication fails: the run could not verify anything
        captured = capsys.readouterr()
        assert password not in captured.out + captured.err and "shipper verify:" in captured.err


# -- SPEC-15 topics: notes, attribution, manifests, saved heads, per-record proofs ---------------------------

@dataclass
class MurmurTopic(Topic):
    """Partitioned like the shipper (murmur2 of the chain), so `shipper prove` finds a chain's partition."""

    def partition_of(self, key: bytes) -> int:
        return partition_of(key, self.partition_count)


def spec_topic() -> MurmurTopic:
    topic = MurmurTopic(PARTITIONS)
    for key, value in spec_node().emitted:
        topic.append(key, value)
    return topic


async def read_back_spec(broker, name: str) -> MurmurTopic:
    topic = MurmurTopic(PARTITIONS)
    for record in await broker.consume_all(name, timeout=30):
        topic.partitions.setdefault(record.partition, []).append((record.key, record.value))
    return topic


async def spec_verify(broker, name: str, **options) -> Report:
    return await verify_topic(broker.bootstrap, name, public_keys=KEYS, idle_timeout_s=5.0, timeout_s=120,
                              now=options.pop("now", SPEC_END + 60), **options)


@pytest.fixture(scope="module")
def spec_clean_topic(kafka_broker) -> str:
    return asyncio.run(publish(kafka_broker, "spec-clean", spec_topic()))


def test_note_topic_in_kafka_verifies_with_every_tree_checked(kafka_broker, spec_clean_topic):
    report = asyncio.run(spec_verify(kafka_broker, spec_clean_topic))
    assert report.ok, report.human()
    assert report.totals["trees_checked"] == 16 and report.totals["trees_unchecked"] == 0
    assert report.chain("uid-2/worker").complete and report.totals["stale_chains"] == 0


def test_record_rewritten_to_another_namespace_pod_and_container_is_misattributed_by_name(kafka_broker,
                                                                                          spec_clean_topic):
    async def scenario():
        topic = await read_back_spec(kafka_broker, spec_clean_topic)
        record = topic.record("uid-1/app", 150)
        record["resource"].update({"k8s.namespace.name": "payments", "k8s.pod.name": "ledger-0",
                                   "k8s.container.name": "db"})
        topic.replace("uid-1/app", 150, record)
        name = await publish(kafka_broker, "spec-misattributed", topic)
        return await spec_verify(kafka_broker, name), topic

    report, topic = asyncio.run(scenario())
    assert not report.ok and set(report.totals["violation_kinds"]) == {"misattributed"}
    (issue,) = [issue for issue in report.all_violations() if issue.kind == "misattributed"]
    assert (issue.chain, issue.seq) == ("uid-1/app", 150)
    assert (issue.partition, issue.offset) == topic.locate("uid-1/app", 150)
    assert "namespace 'payments', pod 'ledger-0', container 'db'" in issue.detail
    assert f"misattributed seq 150 at {issue.topic}/{issue.partition}@{issue.offset}" in report.human()


def test_tail_dropped_with_its_last_checkpoint_is_tail_removed_via_the_manifests(kafka_broker, spec_clean_topic):
    async def scenario():
        topic = await read_back_spec(kafka_broker, spec_clean_topic)
        topic.truncate_chain("uid-1/app", 300)          # the last 11 lines and the checkpoint after them
        name = await publish(kafka_broker, "spec-tail", topic)
        return await spec_verify(kafka_broker, name)

    report = asyncio.run(scenario())
    assert set(report.totals["violation_kinds"]) == {"tail_removed"}, report.human()
    (issue,) = [issue for issue in report.all_violations() if issue.kind == "tail_removed"]
    assert (issue.chain, issue.seq, issue.seq_last) == ("uid-1/app", 300, 314)


def test_later_manifests_dropped_too_is_stale_and_with_saved_heads_tail_removed(kafka_broker, spec_clean_topic,
                                                                                 tmp_path, capsys):
    heads = tmp_path / "heads.json"
    later = rfc3339(SPEC_END + 3600)
    assert cli_main(["--bootstrap-servers", kafka_broker.bootstrap, "--topic", spec_clean_topic, "--idle-timeout",
                     "3", "--now", rfc3339(SPEC_END + 60), "--save-heads", str(heads)]) == 0
    assert "saved the heads of 4 chains" in capsys.readouterr().err

    async def cut() -> str:
        topic = await read_back_spec(kafka_broker, spec_clean_topic)
        topic.truncate_chain("uid-1/app", 300)
        topic.truncate_chain("node/node-a", 3)          # the two manifests that attest the removed records
        return await publish(kafka_broker, "spec-cut", topic)

    name = asyncio.run(cut())
    base = ["--bootstrap-servers", kafka_broker.bootstrap, "--topic", name, "--idle-timeout", "3", "--now", later,
            "--json"]
    assert cli_main(base) == 0                           # a shorter topic that is valid in itself ...
    report = json.loads(capsys.readouterr().out)
    stale = {issue["chain"] for chain in report["chains"] for issue in chain["findings"] if issue["kind"] == "stale"}
    assert {"uid-1/app", "node/node-a"} <= stale          # ... but neither the chain nor the node is attested lately
    assert cli_main(base + ["--trusted-heads", str(heads)]) == 1
    report = json.loads(capsys.readouterr().out)
    removed = {(issue["chain"], issue["seq"], issue.get("seq_last")) for issue in report["violations"] +
               [issue for chain in report["chains"] for issue in chain["violations"]] if issue["kind"] == "tail_removed"}
    assert ("uid-1/app", 300, 314) in removed and report["totals"]["violation_kinds"] == {"tail_removed": 2}


def test_prove_then_verify_the_proof_offline(kafka_broker, spec_clean_topic, tmp_path, capsys):
    vkey = tmp_path / "signing-key.vkey"
    vkey.write_text(SIGNER.verifier_key + "\n")
    proof = tmp_path / "proof.json"
    assert prove_main(["uid-3/web:64", "--bootstrap-servers", kafka_broker.bootstrap, "--topic", spec_clean_topic,
                       "--public-key", str(vkey), "--out", str(proof), "--idle-timeout", "3"]) == 0
    assert "checkpoint at seq 102" in capsys.readouterr().err
    written = json.loads(proof.read_text())
    assert written["event_id"] == "uid-3/web:64" and written["checkpoint_seq"] == 102
    assert cli_main(["--proof", str(proof), "--public-key", str(vkey)]) == 0
    assert capsys.readouterr().out.startswith("VERDICT OK: uid-3/web:64 is in the checkpoint at seq 102")

    written["record"]["resource"]["k8s.pod.name"] = "edge-9"
    proof.write_text(json.dumps(written))
    assert cli_main(["--proof", str(proof), "--public-key", str(vkey)]) == 1
    assert "re-attributed" in capsys.readouterr().out

    assert prove_main(["uid-3/web:999", "--bootstrap-servers", kafka_broker.bootstrap, "--topic", spec_clean_topic,
                       "--idle-timeout", "3"]) == 1
    assert "no record uid-3/web:999" in capsys.readouterr().err
    assert prove_main(["uid-3/web:64", "--bootstrap-servers", kafka_broker.bootstrap, "--topic", "absent-topic-x",
                       "--idle-timeout", "3"]) == 2


def test_prove_refuses_a_record_changed_in_the_topic(kafka_broker, spec_clean_topic, capsys):
    async def scenario() -> str:
        topic = await read_back_spec(kafka_broker, spec_clean_topic)
        record = topic.record("uid-1/app", 42)
        record["body"] = "refund of 500 EUR approved"
        topic.replace("uid-1/app", 42, record)
        return await publish(kafka_broker, "spec-prove-altered", topic)

    name = asyncio.run(scenario())
    assert prove_main(["uid-1/app:42", "--bootstrap-servers", kafka_broker.bootstrap, "--topic", name,
                       "--idle-timeout", "3"]) == 1
    assert "does not hash to its stated hash" in capsys.readouterr().err


def test_prove_takes_only_the_records_keyed_to_the_chain(kafka_broker, spec_clean_topic, tmp_path, capsys):
    """Prove reads the chain's partition natively and decodes only the chain's records: a copy of the
    record with another body, keyed to another chain and put before it in the same partition, is not the
    chain's record (taken for it, it would not hash to its stated hash and the proof would be refused)."""
    async def scenario() -> str:
        topic = await read_back_spec(kafka_broker, spec_clean_topic)
        part, index = topic.locate("uid-3/web", 64)
        forged = topic.record("uid-3/web", 64)
        forged["body"] = "a copy with another body"
        topic.partitions[part].insert(index, (b"uid-9/other", json.dumps(forged).encode()))
        return await publish(kafka_broker, "spec-prove-rekeyed", topic)

    name = asyncio.run(scenario())
    proof = tmp_path / "proof.json"
    assert prove_main(["uid-3/web:64", "--bootstrap-servers", kafka_broker.bootstrap, "--topic", name,
                       "--out", str(proof), "--idle-timeout", "3"]) == 0, capsys.readouterr().err
    written = json.loads(proof.read_text())
    assert written["record"]["body"] != "a copy with another body" and written["checkpoint_seq"] == 102


@pytest.mark.tansu
def test_prove_on_tansu_reads_the_checkpoint_in_the_last_batch(tansu_broker, tmp_path, capsys):
    name = new_topic_name("spec-tansu")
    asyncio.run(tansu_broker.create_topic(name, PARTITIONS))
    asyncio.run(produce(tansu_broker.client_options(), name, spec_topic()))
    proof = tmp_path / "proof.json"
    assert prove_main(["uid-1/app:305", "--bootstrap-servers", tansu_broker.bootstrap, "--topic", name, "--out",
                       str(proof), "--idle-timeout", "3"]) == 0, capsys.readouterr().err
    assert json.loads(proof.read_text())["checkpoint_seq"] == 314
    vkey = tmp_path / "signing-key.vkey"
    vkey.write_text(SIGNER.verifier_key + "\n")
    assert cli_main(["--proof", str(proof), "--public-key", str(vkey)]) == 0
