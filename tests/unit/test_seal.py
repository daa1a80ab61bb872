"""The seal's invariants (see shipper/seal.py): each test is named after the one it proves."""
from __future__ import annotations

import json

from hypothesis import given, strategies as st

from shipper.parse import Entries
from shipper import merkle
from shipper.records import ChainContext, seal_control, seal_entries, seal_entries_py
from shipper.seal import (ChainHead, Signer, canon, checkpoint_body, gap_body, genesis_hash, link, parse_checkpoint,
                          signature_valid, statement_text)
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

TS = b"2026-11-28T18:00:00.1Z"
CTX = ChainContext("uid-1/app", '{"k8s.pod.name":"web"}', "/var/log/pods/ns_web_uid-1/app/0.log")


def entries(bodies: list[bytes]) -> Entries:
    out = Entries()
    for index, body in enumerate(bodies):
        out.add(index * 100, TS, b"stdout", body, 0)
    return out


def test_GENESIS_first_record_links_to_the_chain_genesis():
    values, head = seal_entries(ChainHead.genesis("uid-1/app"), entries([b"a"]), CTX, "2026-11-28T18:00:01Z", None)
    record = json.loads(values[0])
    assert record["seal"]["seq"] == 1
    assert record["seal"]["prev"] == genesis_hash("uid-1/app").hex()
    assert record["event_id"] == "uid-1/app:1"


@given(st.lists(st.binary(max_size=50), min_size=1, max_size=20))
def test_LINK_every_hash_recomputes_from_prev_and_the_evidence(bodies):
    values, head = seal_entries(ChainHead.genesis("c/x"), entries(bodies), ChainContext("c/x", "{}", "/p"),
                                "2026-11-28T18:00:01Z", None)
    prev = genesis_hash("c/x")
    for value in values:
        record = json.loads(value)
        assert bytes.fromhex(record["seal"]["prev"]) == prev
        prev = link(prev, record["seal"]["seq"], record["time"].encode(), record["stream"].encode(),
                    record["body"].encode())
        assert record["seal"]["hash"] == prev.hex()
    assert head.hash == prev and head.seq == len(bodies)


@given(st.tuples(st.binary(max_size=8), st.binary(max_size=8)), st.tuples(st.binary(max_size=8), st.binary(max_size=8)))
def test_LINK_canonical_encoding_is_unambiguous(first, second):
    if first != second:
        assert canon(1, first[0], b"", first[1], b"") != canon(1, second[0], b"", second[1], b"")


def test_CONTEXT_OUTSIDE_enrichment_changes_do_not_change_the_chain():
    a, _ = seal_entries(ChainHead.genesis("c/x"), entries([b"x", b"y"]), ChainContext("c/x", '{"a":1}', "/p"), "T1", None)
    b, _ = seal_entries(ChainHead.genesis("c/x"), entries([b"x", b"y"]), ChainContext("c/x", '{"a":2}', "/q"), "T2", None)
    assert [json.loads(v)["seal"] for v in a] == [json.loads(v)["seal"] for v in b]


def test_DETERMINISTIC_replay_reproduces_seq_and_hash():
    head = ChainHead("c/x", 41, b"\x01" * 32)
    first = seal_entries(head, entries([b"one", b"two"]), CTX, "T", None)
    again = seal_entries(head, entries([b"one", b"two"]), CTX, "T", None)
    assert first == again


def test_CHAIN_PER_LINEAGE_chain_id_is_pod_uid_and_container():
    from shipper.model import ContainerRef
    assert ContainerRef("ns", "web", "uid-1", "app", 3).chain == "uid-1/app"


def test_CHECKPOINT_signed_statement_round_trips_and_verifies():
    key = Ed25519PrivateKey.generate()
    signer = Signer(key)
    statement = statement_text("c/x", 10, b"\x02" * 32, "2026-11-28T18:00:00Z", "node-a")
    body = checkpoint_body(statement, [signer.sign(statement)])
    parsed = parse_checkpoint(body)
    assert (parsed.chain, parsed.seq, parsed.head_hash, parsed.node) == ("c/x", 10, b"\x02" * 32, "node-a")
    key_id, signature = parsed.signatures[0]
    assert key_id == signer.key_id
    assert signature_valid(key.public_key(), parsed.statement, signature)
    assert not signature_valid(key.public_key(), parsed.statement.replace("seq 10", "seq 11"), signature)


def test_control_records_are_links_of_the_chain():
    values, head = seal_entries(ChainHead.genesis("c/x"), entries([b"a"]), CTX, "T", None)
    value, head2 = seal_control(head, "gap", gap_body("rotated_unread", 120, "/p", 0), CTX, "2026-11-28T18:00:00Z")
    record = json.loads(value)
    assert record["type"] == "gap" and record["seal"]["seq"] == 2
    assert bytes.fromhex(record["seal"]["hash"]) == link(head.hash, 2, record["time"].encode(), b"",
                                                         record["body"].encode(), b"gap")
    assert json.loads(record["body"]) == {"bytes": 120, "offset": 0, "path": "/p", "reason": "rotated_unread"}


def test_invalid_utf8_is_replaced_flagged_and_hashed_as_shipped():
    values, _ = seal_entries(ChainHead.genesis("c/x"), entries([b"ok \xff\xfe bad"]), CTX, "T", None)
    record = json.loads(values[0])
    assert record["body"] == "ok \ufffd\ufffd bad"
    assert record["attributes"]["log.invalid_utf8"] is True
    assert record["seal"]["hash"] == link(genesis_hash("c/x"), 1, TS, b"stdout", record["body"].encode()).hex()


def test_tree_the_head_carries_is_the_merkle_tree_of_the_record_hashes():
    """TREE: native, reference and control sealing all extend the head's tree by each record's hash."""
    ctx = ChainContext("uid-1/app", '{"k8s.pod.name":"p"}', "/var/log/pods/ns_p_uid-1/app/0.log")
    entries = Entries()
    for i in range(37):
        entries.add(i * 10, b"2026-11-28T18:00:00.000000001Z", b"stdout", b"line %d" % i, 0)
    values, head = seal_entries(ChainHead.genesis(ctx.chain), entries, ctx, "2026-11-28T18:00:01Z", None)
    reference, reference_head = seal_entries_py(ChainHead.genesis(ctx.chain), entries, ctx,
                                                        "2026-11-28T18:00:01Z", None)
    assert head == reference_head
    value, head = seal_control(head, "gap", '{"reason":"x"}', ctx, "2026-11-28T18:00:02Z")
    leaves = [bytes.fromhex(json.loads(v)["seal"]["hash"]) for v in [*values, value]]
    assert head.tree.size == head.seq == 38 and head.tree_first_seq == 1
    assert head.tree.root() == merkle.root_of(leaves)
    forged = [*leaves[:5], bytes(32), *leaves[6:]]
    assert head.tree.root() != merkle.root_of(forged)
