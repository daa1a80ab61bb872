"""Per-record proofs (shipper/verify/proof.py): a proof made from a chain's records checks offline with the
public key alone; every way a proof or its record can be wrong gives a clear verdict, never a traceback.

Topics are built by the SPEC-15 builders of tests/unit/test_verify.py (FakeNode)."""
from __future__ import annotations

import base64
import copy
import json

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from shipper.merkle import Frontier
from shipper.verify import PROOF_FORMAT, ProofBuilder, ProofError, check_proof, cli_main
from tests.unit.test_verify import (ATTACKER, ATTACKER_KEYS, KEYS, NODE, SIGNER, FakeNode, Topic, checkpoint_body,
                                    rehash, sign_statement, statement_text)


def chain_node() -> FakeNode:
    """uid-1/app: 10 lines, checkpoint (seq 11), 10 lines, checkpoint by the attacker's key (seq 22), 5 lines,
    checkpoint (seq 28), 3 lines; a manifest of node-a."""
    node = FakeNode()
    app = node.chain("uid-1/app")
    other = node.chain("uid-2/worker")
    app.logs(10)
    other.logs(4)
    app.checkpoint()
    app.logs(10)
    app.checkpoint(signer=ATTACKER)
    other.logs(4)
    app.logs(5)
    app.checkpoint()
    other.checkpoint()
    app.logs(3)
    node.manifest()
    return node


def make_proof(topic: Topic, event_id: str, keys: dict | None = KEYS) -> dict:
    chain = event_id.rpartition(":")[0]
    builder = ProofBuilder(event_id, keys)
    part = topic.partition_of(chain.encode())
    for offset, (key, value) in enumerate(topic.partitions.get(part, [])):
        if builder.feed(json.loads(value), ("logs", part, offset)):
            break
    return builder.proof()


@pytest.fixture(scope="module")
def topic() -> Topic:
    return chain_node().topic()


@pytest.fixture()
def proof(topic) -> dict:
    return make_proof(topic, "uid-1/app:15")


def test_a_proof_made_from_the_topic_checks_with_the_public_key(topic, proof):
    assert proof["format"] == PROOF_FORMAT and proof["event_id"] == "uid-1/app:15"
    assert proof["record"] == topic.record("uid-1/app", 15)
    assert proof["checkpoint_seq"] == 28 and proof["tree_size"] == 27 and proof["leaf_index"] == 14
    assert proof["leaf"] == proof["record"]["seal"]["hash"]
    ok, reason = check_proof(proof, KEYS)
    assert ok, reason
    assert reason.startswith("OK: uid-1/app:15 is in the checkpoint at seq 28 (tree of 27 records), signed by key ")
    assert "namespace 'shop', pod 'web-1', pod-uid 'uid-1', container 'app', node 'node-a'" in reason


def test_without_keys_the_first_checkpoint_after_the_record_serves(topic):
    proof = make_proof(topic, "uid-1/app:15", keys=None)
    assert proof["checkpoint_seq"] == 22
    assert check_proof(proof, ATTACKER_KEYS)[0] and not check_proof(proof, KEYS)[0]


def test_the_record_right_before_its_checkpoint_and_the_first_record_prove(topic):
    for event_id, checkpoint_seq in (("uid-1/app:10", 11), ("uid-1/app:1", 11), ("uid-1/app:11", 28)):
        proof = make_proof(topic, event_id)
        assert proof["checkpoint_seq"] == checkpoint_seq
        assert check_proof(proof, KEYS)[0]


def test_a_node_chain_record_proves_through_a_later_manifest():
    node = chain_node()
    node.node_chain.logs(0)
    node.manifest()
    proof = make_proof(node.topic(), "node/node-a:1")
    assert proof["checkpoint_seq"] == 2
    ok, reason = check_proof(proof, KEYS)
    assert ok and "attributed" not in reason


# -- no proof to make ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("event_id, reason", [
    ("uid-1/app:29", "no usable checkpoint signed by the given key(s) after uid-1/app:29: none was written"),
    ("uid-1/app:99", "no record uid-1/app:99"),
    ("uid-9/none:1", "no record uid-9/none:1"),
])
def test_no_proof_without_the_record_or_a_checkpoint_after_it(topic, event_id, reason):
    with pytest.raises(ProofError, match=reason.replace("(", r"\(").replace(")", r"\)")):
        make_proof(topic, event_id)


@pytest.mark.parametrize("event_id", ["uid-1/app", "uid-1/app:0", "uid-1/app:x", ":5", "uid-1/app:05"])
def test_an_event_id_that_is_not_one_is_refused(event_id):
    with pytest.raises(ValueError, match="is not an event id"):
        ProofBuilder(event_id)


def test_no_proof_of_a_record_changed_in_the_topic():
    topic = chain_node().topic()
    record = topic.record("uid-1/app", 15)
    record["body"] = "payment approved"
    topic.replace("uid-1/app", 15, record)
    with pytest.raises(ProofError, match="does not hash to its stated hash"):
        make_proof(topic, "uid-1/app:15")


def test_no_proof_when_a_record_of_the_tree_was_changed_and_rehashed():
    topic = chain_node().topic()
    record = topic.record("uid-1/app", 3)
    record["body"] = "forged"
    topic.replace("uid-1/app", 3, rehash(record, bytes.fromhex(record["seal"]["prev"])))
    with pytest.raises(ProofError, match="do not give the Merkle root"):
        make_proof(topic, "uid-1/app:15")


def test_no_proof_when_the_chain_has_a_hole_after_the_record():
    topic = chain_node().topic()
    topic.delete("uid-1/app", 20)
    with pytest.raises(ProofError, match="seq 20 of the chain is not in the partition"):
        make_proof(topic, "uid-1/app:15")


def test_no_proof_from_legacy_checkpoints():
    node = FakeNode()
    app = node.chain("uid-1/app")
    app.logs(5)
    statement = statement_text(app.chain, app.head.seq, app.head.hash, node.now(), NODE)
    app.control("checkpoint", checkpoint_body(statement, [SIGNER.sign(statement)]))
    with pytest.raises(ProofError, match="legacy statement"):
        make_proof(node.topic(), "uid-1/app:3")


# -- bad proofs: each a clear verdict ------------------------------------------------------------------------

def forged_record(proof):
    proof["record"]["body"] = "payment of 10 EUR approved"


def forged_and_rehashed(proof):
    proof["record"]["body"] = "payment of 10 EUR approved"
    rehash(proof["record"], bytes.fromhex(proof["record"]["seal"]["prev"]))
    proof["leaf"] = proof["record"]["seal"]["hash"]


def truncated_record(proof):
    del proof["record"]["stream"]


def truncated_path(proof):
    proof["audit_path"] = proof["audit_path"][:-1]


def reordered_index(proof):
    proof["leaf_index"] += 1


def reordered_path(proof):
    proof["audit_path"] = proof["audit_path"][::-1]


def reattributed(proof):
    proof["record"]["resource"]["k8s.namespace.name"] = "kube-system"


def reattributed_pod(proof):
    proof["record"]["resource"]["k8s.pod.name"] = "admin-0"


def other_records_proof(proof, other):
    proof["record"], proof["leaf"] = other["record"], other["leaf"]


def old_checkpoint(proof, topic):
    older = topic.record("uid-1/app", 11)
    proof["checkpoint"], proof["checkpoint_seq"] = older["body"], 11


def other_chain_checkpoint(proof, topic):
    other = topic.record("uid-2/worker", 9)
    proof["checkpoint"], proof["checkpoint_seq"] = other["body"], 9


def attacker_resigned(proof):
    text = proof["checkpoint"][:proof["checkpoint"].rindex("\n\n") + 1]
    proof["checkpoint"] = sign_statement(text, [ATTACKER])


def attacker_checkpoint_with_its_own_tree(proof):
    """Someone without the key builds a tree over the forged record and signs it with another key."""
    forged_and_rehashed(proof)
    leaves = [bytes.fromhex(proof["leaf"])] * proof["tree_size"]
    from shipper.merkle import inclusion_proof
    from shipper.seal import ChainHead, Identity, checkpoint_note_text
    text = checkpoint_note_text("uid-1/app", Frontier().extend(leaves), ChainHead("uid-1/app", 27, b"\x00" * 32),
                                "2026-11-28T18:00:00Z", Identity("shop", "web-1", "uid-1", "app", NODE))
    proof["checkpoint"] = sign_statement(text, [ATTACKER])
    proof["audit_path"] = [base64.b64encode(h).decode() for h in inclusion_proof(leaves, 14, 27)]


def stripped_signature(proof):
    proof["checkpoint"] = proof["checkpoint"][:proof["checkpoint"].rindex("\n\n") + 1]


def edited_checkpoint(proof):
    proof["checkpoint"] = proof["checkpoint"].replace("pod web-1", "pod web-2")


def damaged_path(proof):
    raw = bytearray(base64.b64decode(proof["audit_path"][0]))
    raw[0] ^= 1
    proof["audit_path"][0] = base64.b64encode(bytes(raw)).decode()


def wrong_event_id(proof):
    proof["event_id"] = "uid-1/app:16"


def wrong_tree_size(proof):
    proof["tree_size"] = 26


BAD_PROOFS = {
    "forged record": (forged_record, "does not hash to the proof's leaf"),
    "forged record, rehashed": (forged_and_rehashed, "the audit path does not lead"),
    "truncated record": (truncated_record, "not an audit-shipper record"),
    "truncated audit path": (truncated_path, "the audit path does not lead"),
    "reordered: another index": (reordered_index, "leaf_index 15 is not the place of seq 15"),
    "reordered audit path": (reordered_path, "the audit path does not lead"),
    "re-attributed namespace": (reattributed, "namespace 'kube-system'"),
    "re-attributed pod": (reattributed_pod, "the record was re-attributed"),
    "attacker re-signed": (attacker_resigned, "no good signature by the given public key"),
    "attacker tree": (attacker_checkpoint_with_its_own_tree, "no good signature by the given public key"),
    "signature stripped": (stripped_signature, "the proof's checkpoint carries no signature"),
    "checkpoint edited": (edited_checkpoint, "no good signature"),
    "damaged path": (damaged_path, "the audit path does not lead"),
    "another event id": (wrong_event_id, "a proof for another record"),
    "another tree size": (wrong_tree_size, "tree_size 26 is not the checkpoint's (27)"),
}


@pytest.mark.parametrize("name", list(BAD_PROOFS))
def test_a_bad_proof_is_refused_with_its_reason(proof, name):
    change, reason = BAD_PROOFS[name]
    bad = copy.deepcopy(proof)
    change(bad)
    ok, why = check_proof(bad, KEYS)
    assert not ok
    assert reason in why, why


def test_a_proof_for_a_different_record_is_refused(topic, proof):
    bad = copy.deepcopy(proof)
    other_records_proof(bad, make_proof(topic, "uid-1/app:16"))
    ok, why = check_proof(bad, KEYS)
    assert not ok and "a proof for another record" in why
    bad["event_id"] = "uid-1/app:16"
    ok, why = check_proof(bad, KEYS)
    assert not ok and "leaf_index 14 is not the place of seq 16" in why
    bad["leaf_index"] = 15
    ok, why = check_proof(bad, KEYS)
    assert not ok and "the audit path does not lead" in why


def test_an_old_checkpoint_replayed_or_another_chains_is_refused(topic, proof):
    bad = copy.deepcopy(proof)
    old_checkpoint(bad, topic)
    ok, why = check_proof(bad, KEYS)
    assert not ok and "attests the chain up to seq 10, before the record (seq 15): an older checkpoint" in why
    bad = copy.deepcopy(proof)
    other_chain_checkpoint(bad, topic)
    ok, why = check_proof(bad, KEYS)
    assert not ok and "the checkpoint is of chain 'uid-2/worker', the record of chain 'uid-1/app'" in why


def test_a_proof_checked_with_another_key_is_refused(proof):
    ok, why = check_proof(proof, ATTACKER_KEYS)
    assert not ok and "no good signature by the given public key" in why


@pytest.mark.parametrize("proof_object", [None, [], "proof", 5, {}, {"format": PROOF_FORMAT},
                                          {"format": PROOF_FORMAT, "event_id": 5}])
def test_a_proof_that_is_not_one_is_refused(proof_object):
    ok, why = check_proof(proof_object, KEYS)
    assert not ok and ("not an audit-shipper/proof/v1 proof" in why or "malformed proof" in why)


def _json_mutations():
    scalars = st.one_of(st.none(), st.booleans(), st.integers(-3, 40), st.text(max_size=12),
                        st.sampled_from(["", "AAAA", "=" * 4, "\u2014 x y\n"]))
    return st.recursive(scalars, lambda children: st.one_of(st.lists(children, max_size=3),
                                                            st.dictionaries(st.text(max_size=6), children, max_size=3)),
                        max_leaves=6)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(path=st.lists(st.sampled_from(["record", "seal", "resource", "audit_path", 0, 1, "leaf", "checkpoint",
                                      "leaf_index", "tree_size", "body", "prev", "seq", "hash", "event_id",
                                      "checkpoint_seq", "format", "chain", "time"]), min_size=1, max_size=3),
       value=_json_mutations())
def test_any_change_to_a_proof_never_raises_and_never_passes_unless_harmless(proof, path, value):
    bad = copy.deepcopy(proof)
    target = bad
    for step in path[:-1]:
        try:
            target = target[step]
        except (KeyError, IndexError, TypeError):
            break
    try:
        if isinstance(target, dict) and isinstance(path[-1], str) or isinstance(target, list) and \
                isinstance(path[-1], int) and path[-1] < len(target):
            target[path[-1]] = value
    except TypeError:
        pass
    ok, why = check_proof(bad, KEYS)
    assert isinstance(why, str) and why
    if ok:
        # only what is outside the hash and the identity may change: the resource's other members
        assert bad["record"]["seal"] == proof["record"]["seal"] and bad["checkpoint"] == proof["checkpoint"]
        assert bad["audit_path"] == proof["audit_path"] and bad["leaf"] == proof["leaf"]


# -- the command line ----------------------------------------------------------------------------------------

@pytest.fixture()
def vkey(tmp_path):
    path = tmp_path / "signing-key.vkey"
    path.write_text(SIGNER.verifier_key + "\n")
    return path


def test_verify_proof_exits_0_for_a_good_proof_and_1_for_a_bad_one(tmp_path, proof, vkey, capsys):
    good = tmp_path / "proof.json"
    good.write_text(json.dumps(proof))
    assert cli_main(["--proof", str(good), "--public-key", str(vkey)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("VERDICT OK: uid-1/app:15 is in the checkpoint at seq 28") and out.count("\n") == 1
    for name, (change, reason) in BAD_PROOFS.items():
        bad_proof = copy.deepcopy(proof)
        change(bad_proof)
        bad = tmp_path / "bad.json"
        bad.write_text(json.dumps(bad_proof))
        assert cli_main(["--proof", str(bad), "--public-key", str(vkey)]) == 1, name
        captured = capsys.readouterr()
        assert captured.out.startswith("VERDICT FAILED: ") and reason in captured.out and captured.out.count("\n") == 1
        assert "Traceback" not in captured.err
    assert cli_main(["--proof", str(good), "--public-key", str(vkey), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["ok"] is True


@pytest.mark.parametrize("content", [b"", b"{", b"\xff\xfe", b"[]", b'{"format": "audit-shipper/proof/v1"}',
                                     b"null"])
def test_verify_proof_of_a_corrupted_file_is_a_verdict_not_a_traceback(tmp_path, vkey, capsys, content):
    path = tmp_path / "proof.json"
    path.write_bytes(content)
    assert cli_main(["--proof", str(path), "--public-key", str(vkey)]) == 1
    captured = capsys.readouterr()
    assert captured.out.startswith("VERDICT FAILED: ") and not captured.err


def test_verify_proof_of_a_truncated_file_is_a_verdict(tmp_path, proof, vkey, capsys):
    text = json.dumps(proof)
    for cut in (len(text) // 3, len(text) - 2):
        path = tmp_path / "proof.json"
        path.write_text(text[:cut])
        assert cli_main(["--proof", str(path), "--public-key", str(vkey)]) == 1
        assert "the proof file is not JSON" in capsys.readouterr().out


def test_verify_proof_needs_a_key_a_readable_file_and_nothing_else(tmp_path, proof, vkey, capsys):
    path = tmp_path / "proof.json"
    path.write_text(json.dumps(proof))
    assert cli_main(["--proof", str(path)]) == 2
    assert "--proof needs --public-key" in capsys.readouterr().err
    assert cli_main(["--proof", str(tmp_path / "absent.json"), "--public-key", str(vkey)]) == 2
    assert cli_main(["--proof", str(path), "--public-key", str(vkey), "--file", str(path)]) == 2
    assert cli_main(["--proof", str(path), "--public-key", str(tmp_path / "absent.vkey")]) == 2
    capsys.readouterr()


def test_keygen_writes_a_verifier_key_that_checks_notes_signed_under_its_name(tmp_path, capsys):
    from shipper.cli import main
    from shipper.seal import Signer

    assert main(["keygen", "--out", str(tmp_path), "--key-id", "prod-2026"]) == 0
    assert "key name prod-2026" in capsys.readouterr().out
    vkey = (tmp_path / "signing-key.vkey").read_text()
    assert vkey.startswith("prod-2026+") and vkey.endswith("\n")
    signer = Signer.from_pem((tmp_path / "signing-key.pem").read_bytes(), "prod-2026")
    assert signer.verifier_key == vkey.strip()
    assert main(["keygen", "--out", str(tmp_path / "bad"), "--key-id", "has space"]) == 2
    assert not (tmp_path / "bad" / "signing-key.pem").exists()
    capsys.readouterr()
