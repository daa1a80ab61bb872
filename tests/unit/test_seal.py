"""The seal's invariants (see shipper/seal.py): each test is named after the one it proves."""
from __future__ import annotations

import base64
import json

import pytest
from hypothesis import given, settings, strategies as st

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


# -- SPEC-15 notes ----------------------------------------------------------------------------------------

from shipper import note  # noqa: E402
from shipper.merkle import Frontier, root_of  # noqa: E402
from shipper.seal import (BadCheckpoint, BadManifest, Identity, key_id_of, manifest_note_text,  # noqa: E402
                          checkpoint_note_text, parse_checkpoint_note, parse_manifest_note, percent_decode,
                          percent_encode, sign_statement)

KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
IDENTITY = Identity("shop", "web-1", "uid-1", "app", "node-a")
LEAVES = [bytes([i]) * 32 for i in range(1, 8)]
TREE = Frontier().extend(LEAVES)
HEAD = ChainHead("uid-1/app", 7, LEAVES[-1])
TIME = "2026-11-28T18:00:00.123456789Z"


def test_NOTE_CHECKPOINT_text_is_a_tlog_checkpoint_with_our_extension_lines_in_order():
    text = checkpoint_note_text("uid-1/app", TREE, HEAD, TIME, IDENTITY)
    b64 = lambda raw: base64.b64encode(raw).decode()  # noqa: E731
    assert text == (f"audit-shipper.io/v1/chain/uid-1/app\n7\n{b64(root_of(LEAVES))}\nseq 7\nhead {b64(LEAVES[-1])}\n"
                    f"time {TIME}\nnode node-a\nnamespace shop\npod web-1\npod-uid uid-1\ncontainer app\n")
    assert note.parse_checkpoint_text(text).size == 7


def test_NOTE_CHECKPOINT_signed_round_trips_and_verifies_by_key_name_and_hash():
    signer = Signer(KEY)
    text = checkpoint_note_text("uid-1/app", TREE, HEAD, TIME, IDENTITY)
    body = sign_statement(text, [signer])
    parsed = parse_checkpoint_note(body)
    assert (parsed.chain, parsed.tree_size, parsed.root, parsed.seq, parsed.head_hash, parsed.time, parsed.node,
            parsed.identity, parsed.text, parsed.note) == ("uid-1/app", 7, TREE.root(), 7, LEAVES[-1], TIME, "node-a",
                                                           IDENTITY, text, body)
    assert parsed.tree_start == 1
    verifier = note.VerifierKey.of(key_id_of(KEY.public_key()), KEY.public_key())
    assert parsed.signatures == ((signer.key_id, verifier.key_hash),)
    assert note.open_note(parsed.note, [verifier]).trusted
    assert signer.note_signer.name == signer.key_id and signer.verifier_key == verifier.text
    renamed = Signer(KEY, "prod-2026")
    assert parse_checkpoint_note(sign_statement(text, [renamed])).signatures[0][0] == "prod-2026"


def test_NOTE_CHECKPOINT_unsigned_is_the_text_alone():
    text = checkpoint_note_text("uid-1/app", TREE, HEAD, TIME, IDENTITY)
    assert sign_statement(text, []) == text
    parsed = parse_checkpoint_note(text)
    assert parsed.signatures == () and parsed.identity == IDENTITY


def test_NOTE_CHECKPOINT_restarted_tree_covers_the_last_records_only():
    tree = Frontier().extend(LEAVES[4:])
    parsed = parse_checkpoint_note(checkpoint_note_text("uid-1/app", tree, HEAD, TIME, Identity()))
    assert (parsed.tree_size, parsed.tree_start, parsed.identity) == (3, 5, Identity())
    assert parse_checkpoint_note(checkpoint_note_text("uid-1/app", Frontier(), HEAD, TIME, IDENTITY)).tree_start == 8


def test_NOTE_CHECKPOINT_builder_refuses_a_tree_past_the_head_or_another_chain():
    with pytest.raises(ValueError):
        checkpoint_note_text("uid-1/app", Frontier().extend(LEAVES + LEAVES), HEAD, TIME, IDENTITY)
    with pytest.raises(ValueError):
        checkpoint_note_text("uid-2/app", TREE, HEAD, TIME, IDENTITY)


def test_NOTE_CHECKPOINT_manifest_round_trips_with_chains_sorted():
    node_head = ChainHead("node/node-a", 7, LEAVES[-1])
    heads = [("uid-2/worker", 20, b"\x02" * 32), ("uid-1/app", 310, b"\x01" * 32)]
    text = manifest_note_text("node-a", TREE, node_head, TIME, heads)
    assert text.splitlines()[0] == "audit-shipper.io/v1/node/node-a"
    one, two = (base64.b64encode(byte * 32).decode() for byte in (b"\x01", b"\x02"))
    assert text.splitlines()[-2:] == [f"chain uid-1/app 310 {one}", f"chain uid-2/worker 20 {two}"]
    parsed = parse_manifest_note(sign_statement(text, [Signer(KEY)]))
    assert (parsed.node, parsed.tree_size, parsed.root, parsed.seq, parsed.head_hash, parsed.time) == (
        "node-a", 7, TREE.root(), 7, LEAVES[-1], TIME)
    assert parsed.heads == tuple(sorted(heads)) and parsed.text == text
    assert parse_manifest_note(manifest_note_text("node-a", TREE, node_head, TIME, [])).heads == ()
    with pytest.raises(ValueError):
        manifest_note_text("node-b", TREE, node_head, TIME, heads)
    with pytest.raises(ValueError):
        manifest_note_text("node-a", TREE, node_head, TIME, heads + heads[:1])


def test_PERCENT_odd_values_are_escaped_and_decode_back():
    identity = Identity("ns with space", "pod%50", "uid\n", "c\x7f\x00", "n\u00e9\ud800")
    parsed = parse_checkpoint_note(checkpoint_note_text("uid 1/app", TREE, ChainHead("uid 1/app", 7, b"\x00" * 32),
                                                        TIME, identity))
    assert parsed.identity == identity and parsed.chain == "uid 1/app"
    assert "pod pod%2550\n" in parsed.text and "namespace ns%20with%20space\n" in parsed.text
    assert "node n\u00e9%ED%A0%80\n" in parsed.text


@given(st.text(max_size=40))
def test_PERCENT_any_value_round_trips_on_one_line_of_note_text(value):
    encoded = percent_encode(value)
    assert percent_decode(encoded) == value
    assert not any(c <= " " or c == "\x7f" for c in encoded)
    encoded.encode("utf-8")   # never a lone surrogate


@pytest.mark.parametrize("text", ["%", "%4", "%zz", "%41", "%2a", "a b", "%C3%A9", "%ED"])
def test_PERCENT_only_the_canonical_spelling_is_accepted(text):
    with pytest.raises(ValueError):
        percent_decode(text)


def test_identity_of_a_resource_takes_the_k8s_keys_and_defaults_to_empty():
    resource = {"k8s.namespace.name": "shop", "k8s.pod.name": "web-1", "k8s.pod.uid": "uid-1",
                "k8s.container.name": "app", "k8s.node.name": "node-a", "k8s.pod.labels": {"a": "b"}}
    assert Identity.of_resource(resource) == IDENTITY
    assert Identity.of_resource({"k8s.pod.name": "web-1"}) == Identity(pod="web-1")
    assert Identity.of_resource(None) == Identity()
    assert Identity.of_resource({"k8s.pod.name": 5}) == Identity(pod="5")


def _mutations(body: str):
    return st.one_of(
        st.tuples(st.integers(0, len(body)), st.integers(0, 12), st.text(max_size=8)).map(
            lambda m: body[:m[0]] + m[2] + body[m[0] + m[1]:]),
        st.tuples(st.integers(0, len(body) - 1),
                  st.sampled_from(["\n", " ", "", "%", "0", "A", "=", "\u2014", "+"])).map(
            lambda m: body[:m[0]] + m[1] + body[m[0] + 1:]),
        st.text(max_size=200),
    )


SIGNED_CHECKPOINT = sign_statement(checkpoint_note_text("uid-1/app", TREE, HEAD, TIME, IDENTITY), [Signer(KEY)])
SIGNED_MANIFEST = sign_statement(manifest_note_text("node-a", TREE, ChainHead("node/node-a", 7, LEAVES[-1]), TIME,
                                                    [("uid-1/app", 3, b"\x01" * 32), ("uid-2/x", 4, b"\x02" * 32)]),
                                 [Signer(KEY)])


@settings(max_examples=400)
@given(_mutations(SIGNED_CHECKPOINT))
def test_STRICT_a_malformed_checkpoint_note_raises_only_BadCheckpoint(body):
    try:
        parsed = parse_checkpoint_note(body)
    except BadCheckpoint:
        return
    # what parses is a checkpoint the builder writes the same way
    head = ChainHead(parsed.chain, parsed.seq, parsed.head_hash)
    tree_text = checkpoint_note_text(parsed.chain, _FakeTree(parsed.tree_size, parsed.root), head, parsed.time,
                                     parsed.identity)
    assert tree_text == parsed.text


@settings(max_examples=400)
@given(_mutations(SIGNED_MANIFEST))
def test_STRICT_a_malformed_manifest_note_raises_only_BadManifest(body):
    try:
        parsed = parse_manifest_note(body)
    except BadManifest:
        return
    text = manifest_note_text(parsed.node, _FakeTree(parsed.tree_size, parsed.root),
                              ChainHead("node/" + parsed.node, parsed.seq, parsed.head_hash), parsed.time,
                              list(parsed.heads))
    assert text == parsed.text


@given(st.text(max_size=300))
def test_STRICT_arbitrary_text_raises_only_the_parsers_own_error(body):
    for parse, error in ((parse_checkpoint_note, BadCheckpoint), (parse_manifest_note, BadManifest),
                         (parse_checkpoint, BadCheckpoint)):
        try:
            parse(body)
        except error:
            pass


def test_STRICT_legacy_and_note_parsers_refuse_each_others_bodies():
    with pytest.raises(BadCheckpoint):
        parse_checkpoint_note(statement_text("c/x", 1, b"\x00" * 32, TIME, "n"))
    with pytest.raises(BadCheckpoint):
        parse_checkpoint(SIGNED_CHECKPOINT)
    with pytest.raises(BadManifest):
        parse_manifest_note(SIGNED_CHECKPOINT)
    with pytest.raises(BadCheckpoint):
        parse_checkpoint_note(SIGNED_MANIFEST)


class _FakeTree:
    """A stand-in with a Frontier's size and root, to re-render what was parsed."""

    def __init__(self, size: int, root: bytes) -> None:
        self.size, self._root = size, root

    def root(self) -> bytes:
        return self._root
