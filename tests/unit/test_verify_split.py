"""A verify split by partitions (verify/split.py) gives the report of one verifier reading everything: the
claims a node manifest makes on chains of other partitions, and saved heads, reach the part that holds
those chains; a chain no part holds is judged once. The parts here are verifiers in this process; the
processes and group members that carry the same exchange are tested against real brokers."""
from __future__ import annotations

import json

import pytest

from shipper.verify import Verifier, load_trusted_heads, verify_file
from shipper.verify.report import merge_reports, report_from_part, report_part
from shipper.verify.split import balance, route_claims
from tests.unit.test_verify import (KEYS, SPEC_END, Topic, drop_tail_and_later_manifests, kinds,
                                   rewrite_chain_without_the_key, rewrite_identity, spec_node, standard_node)

SPLITS = [[{0}, {1}, {2}], [{0, 1}, {2}], [{0}, {1, 2}], [{0, 2}, {1}]]


def split_verify(topic: Topic, groups: list[set[int]], trusted_heads=None, **options):
    """Each group of partitions read by its own verifier, the claims routed as parallel.py does, the chains
    no part holds judged by one more verifier, the reports merged (through their JSON part form)."""
    parts = [Verifier(KEYS, **options) for _ in groups]
    for partition, offset, key, value in topic.rows():
        for verifier, group in zip(parts, groups):
            if partition in group:
                verifier.feed(value, key, partition, offset, topic="logs")
    absent = Verifier(KEYS, **options)
    if trusted_heads is not None:
        load_trusted_heads(absent, trusted_heads)
    relayed = [claim for verifier in parts + [absent] for claim in verifier.relay_claims()]
    routed, unheld = route_claims([set(verifier.chains) for verifier in parts], relayed)
    for verifier, claims in zip(parts, routed):
        verifier.apply_claims(claims)
    absent.apply_claims(unheld)
    reports = [report_from_part(json.loads(json.dumps(report_part(verifier.finish())))) for verifier in parts + [absent]]
    return merge_reports(reports, {})


def judged(report) -> dict:
    out = report.to_dict()
    del out["meta"]
    return out


def whole(topic: Topic, trusted_heads=None, **options):
    verifier = Verifier(KEYS, **options)
    if trusted_heads is not None:
        load_trusted_heads(verifier, trusted_heads)
    for partition, offset, key, value in topic.rows():
        verifier.feed(value, key, partition, offset, topic="logs")
    return verifier.finish()


def tampered_topics() -> dict[str, Topic]:
    topics = {"clean": spec_node().topic(), "legacy_clean": standard_node().topic()}
    tail = spec_node().topic()
    tail.truncate_chain("uid-1/app", 300)
    topics["tail_removed"] = tail
    gone = spec_node().topic()
    gone.truncate_chain("uid-3/web", 1)
    topics["chain_removed"] = gone
    rewritten = standard_node().topic()
    rewrite_chain_without_the_key(rewritten, "uid-1/app", "resign")
    topics["rewritten"] = rewritten
    moved = spec_node().topic()
    rewrite_identity(moved, "uid-2/worker", [3, 4], pod="intruder")
    topics["misattributed"] = moved
    altered = spec_node().topic()
    record = altered.record("uid-1/app", 42)
    record["body"] = "changed"
    altered.replace("uid-1/app", 42, record)
    topics["altered"] = altered
    return topics


@pytest.mark.parametrize("name", list(tampered_topics()))
@pytest.mark.parametrize("groups", SPLITS, ids=lambda groups: "|".join("".join(map(str, sorted(g))) for g in groups))
def test_a_split_verify_gives_the_report_of_one_verifier(name, groups):
    topic = tampered_topics()[name]
    expected = whole(topic, now=SPEC_END + 60)
    assert judged(split_verify(topic, groups, now=SPEC_END + 60)) == judged(expected)
    if name != "clean" and name != "legacy_clean":
        assert not expected.ok


def test_a_manifest_in_one_part_catches_the_tail_removed_in_another():
    topic = spec_node().topic()
    topic.truncate_chain("uid-1/app", 300)
    app, node = topic.partition_of(b"uid-1/app"), topic.partition_of(b"node/node-a")
    assert app != node, "the test needs the chain and its node's manifests in different partitions"
    report = split_verify(topic, [{app}, {0, 1, 2} - {app}], now=SPEC_END + 60)
    assert kinds(report) == {"tail_removed"}
    (issue,) = report.chain("uid-1/app").violations
    assert (issue.seq, issue.seq_last, issue.partition) == (300, 314, node)


def test_saved_heads_reach_the_part_that_holds_the_chain(tmp_path):
    full, heads = tmp_path / "full.jsonl", tmp_path / "heads.json"
    spec_node().topic().write_jsonl(full)
    assert verify_file(full, public_keys=KEYS, now=SPEC_END + 60, save_heads=heads).ok
    cut = spec_node().topic()
    drop_tail_and_later_manifests(cut, "uid-1/app", 299, 3)
    expected = whole(cut, trusted_heads=heads, now=SPEC_END + 3600)
    assert kinds(expected) == {"tail_removed"}
    for groups in SPLITS:
        assert judged(split_verify(cut, groups, trusted_heads=heads, now=SPEC_END + 3600)) == judged(expected)


def test_a_chain_found_in_two_parts_is_added_up_with_a_finding():
    topic = spec_node().topic()
    records = topic.partitions[topic.partition_of(b"uid-2/worker")]
    moved = [row for row in records if row[0] == b"uid-2/worker"][40:]
    other = (topic.partition_of(b"uid-2/worker") + 1) % 3
    topic.partitions[topic.partition_of(b"uid-2/worker")] = [row for row in records if row not in moved]
    topic.partitions[other] += moved
    report = split_verify(topic, [{0}, {1}, {2}], now=SPEC_END + 60)
    result = report.chain("uid-2/worker")
    assert result.finding_counts.get("multiple_partitions") == 1 and result.records == 71
    assert len(result.partitions) == 2 and not result.complete


def test_partitions_are_dealt_by_size_and_never_left_empty():
    sizes = {("logs", 0): 900, ("logs", 1): 100, ("logs", 2): 500, ("logs", 3): 450, ("audit", 0): 0}
    parts = balance(sizes, 2)
    assert parts == [[("logs", 0), ("logs", 1)], [("audit", 0), ("logs", 2), ("logs", 3)]]
    assert balance(sizes, 9) == [[("logs", 0)], [("logs", 2)], [("logs", 3)], [("logs", 1)], [("audit", 0)]]


def test_exchange_messages_are_cut_into_chunks_and_each_completes_once():
    from shipper.verify.group import _Messages, encode_message

    messages = _Messages("g/3")
    import os

    payloads = [{"claims": [{"chain": os.urandom(64).hex(), "claim_seq": i} for i in range(16000)]},  # > 1 chunk
                {"claims": [{"chain": "c1", "claim_seq": 1}]}]
    assert len(encode_message(payloads[0])) > 1
    completed = []
    for number, payload in enumerate(payloads):
        chunks = encode_message(payload)
        for index, chunk in enumerate(chunks):
            headers = {"run": b"g/3", "kind": b"claims", "member": b"m1", "chunk": f"{index}/{len(chunks)}".encode()}
            got = messages.add(headers, chunk)
            assert (got is not None) == (index == len(chunks) - 1)
            if got is not None:
                completed.append(got)
    assert completed == payloads            # two messages of one member in a row: neither lost
    assert messages.add({"run": b"g/2", "kind": b"claims", "member": b"m1", "chunk": b"0/1"},
                        encode_message({"x": 1})[0]) is None          # another run's message is not ours
