"""Proofs made by `shipper prove` (shipper/verify/proof.py) and checkpoint notes made by seal.py, judged by Go's
golang.org/x/mod/sumdb/note and tlog through notecheck (tools/c2sp; see tests/harness/c2sp.py): a third
party, not our own code, agrees that the record's hash is in the tree the signed checkpoint states."""
from __future__ import annotations

import copy
import json

import pytest

from tests.harness.c2sp import run_notecheck
from tests.unit.test_prove import chain_node, make_proof
from tests.unit.test_verify import SIGNER

pytestmark = [pytest.mark.c2sp, pytest.mark.timeout(300)]
GO_FIELDS = ("checkpoint", "leaf_index", "tree_size", "leaf", "audit_path")


def go_check(notecheck, tmp_path, proof: dict):
    path = tmp_path / "proof.json"
    path.write_text(json.dumps({name: proof[name] for name in GO_FIELDS}))     # notecheck refuses other members
    return run_notecheck(notecheck, "proof", SIGNER.verifier_key, str(path))


@pytest.mark.parametrize("event_id", ["uid-1/app:1", "uid-1/app:15", "uid-1/app:27", "uid-2/worker:8",
                                      "node/node-a:1"])
def test_go_accepts_the_proofs_shipper_prove_writes(notecheck, tmp_path, event_id):
    node = chain_node()
    node.node_chain.logs(0)
    node.manifest()
    proof = make_proof(node.topic(), event_id)
    result = go_check(notecheck, tmp_path, proof)
    assert result.returncode == 0, result.stderr
    assert f"leaf {proof['leaf_index']} is in audit-shipper.io/v1/" in result.stdout


def test_go_rejects_a_proof_whose_record_or_path_was_changed(notecheck, tmp_path):
    proof = make_proof(chain_node().topic(), "uid-1/app:15")
    other = copy.deepcopy(proof)
    other["leaf"] = make_proof(chain_node().topic(), "uid-1/app:16")["leaf"]
    shorter = copy.deepcopy(proof)
    shorter["audit_path"] = shorter["audit_path"][:-1]
    for bad in (other, shorter):
        result = go_check(notecheck, tmp_path, bad)
        assert result.returncode == 1 and result.stderr


def test_go_opens_the_checkpoint_notes_seal_writes(notecheck, tmp_path):
    record = chain_node().topic().record("uid-1/app", 28)
    path = tmp_path / "note"
    path.write_bytes(record["body"].encode())
    result = run_notecheck(notecheck, "note", SIGNER.verifier_key, str(path))
    assert result.returncode == 0, result.stderr
    assert result.stdout == record["body"][:record["body"].rindex("\n\n") + 1]
