"""What the real shipper writes to a real broker is checkable without our code: every checkpoint and
manifest is a C2SP signed note that Go's golang.org/x/mod/sumdb/note opens with the key's vkey, its
tree root is the RFC 6962 root of the chain's record hashes, and an inclusion proof of a record
against it passes Go's tlog.CheckRecord (tools/c2sp, built through the Go module proxy)."""
from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import pytest

from shipper import merkle
from shipper.demo.reconcile import read_topic
from shipper.demo.simnode import SimNode
from shipper.seal import Identity, parse_checkpoint_note, parse_manifest_note
from tests.harness.c2sp import run_notecheck
from tests.support import ShipperProcess, new_topic, settle, write_config

pytestmark = [pytest.mark.timeout(300), pytest.mark.c2sp]


def keygen(tmp_path: Path) -> tuple[Path, str]:
    done = subprocess.run([sys.executable, "-m", "shipper.cli", "keygen", "--out", str(tmp_path / "keys")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return tmp_path / "keys" / "signing-key.pem", (tmp_path / "keys" / "signing-key.vkey").read_text().strip()


@pytest.mark.tansu
def test_checkpoints_manifests_and_proofs_of_the_real_shipper_pass_go_s_note_and_tlog(tmp_path, tansu_broker,
                                                                                       notecheck):
    topic = new_topic(tansu_broker)
    private_key, vkey = keygen(tmp_path)
    node = SimNode(tmp_path / "log", pods=3, containers_per_pod=1, rotate_every_bytes=128 << 10, keep_rotated=5,
                   seed=15)
    config = write_config(tmp_path / "config.yaml", bootstrap=tansu_broker.bootstrap, node_root=node.root,
                          state_dir=tmp_path / "state", topic=topic, kafka={"idempotence": "off"},
                          seal={"signing_key_file": str(private_key), "checkpoint_every_s": 0.5,
                                "checkpoint_every_records": 700})
    shipper = ShipperProcess(config, tmp_path / "shipper.log").start()
    try:
        for _ in range(4):
            node.write(1500)
            time.sleep(0.3)
        node.flush()
        node.delete_pod(0)
        settle(tansu_broker.bootstrap, topic, node, timeout=90, idle_s=1.5)
        assert shipper.sigterm() == 0
    finally:
        shipper.stop()
    records = [json.loads(value) for value in asyncio.run(read_topic(tansu_broker.bootstrap, topic, idle_s=1.5))]
    chains: dict[str, dict[int, dict]] = defaultdict(dict)
    for record in records:
        chains[record["seal"]["chain"]][record["seal"]["seq"]] = record

    checked_checkpoints = checked_manifests = proofs = 0
    closed = 0
    for name, by_seq in chains.items():
        assert sorted(by_seq) == list(range(1, len(by_seq) + 1)), f"{name} has holes"
        leaves = [bytes.fromhex(by_seq[seq]["seal"]["hash"]) for seq in sorted(by_seq)]
        for seq, record in sorted(by_seq.items()):
            if record.get("type") not in ("checkpoint", "manifest"):
                continue
            note_file = tmp_path / f"note-{checked_checkpoints + checked_manifests}.txt"
            note_file.write_text(record["body"])
            opened = run_notecheck(notecheck, "note", vkey, str(note_file))
            assert opened.returncode == 0, (name, seq, opened.stderr)
            if record["type"] == "manifest":
                parsed = parse_manifest_note(record["body"])
                checked_manifests += 1
            else:
                parsed = parse_checkpoint_note(record["body"])
                checked_checkpoints += 1
                assert parsed.identity == Identity.of_resource(by_seq[parsed.seq]["resource"] if parsed.seq else {})
            assert parsed.seq == seq - 1 and parsed.tree_start == 1
            covered = leaves[:parsed.seq]
            assert parsed.root == merkle.root_of(covered), (name, seq)
            if covered:
                index = len(covered) // 2
                proof = {"checkpoint": record["body"], "leaf_index": index, "tree_size": parsed.tree_size,
                         "leaf": covered[index].hex(),
                         "audit_path": [base64.b64encode(h).decode()
                                        for h in merkle.inclusion_proof(covered, index, len(covered))]}
                proof_file = tmp_path / "proof.json"
                proof_file.write_text(json.dumps(proof))
                checked = run_notecheck(notecheck, "proof", vkey, str(proof_file))
                assert checked.returncode == 0, checked.stderr
                proof["leaf"] = covered[index - 1].hex() if index else bytes(32).hex()
                proof_file.write_text(json.dumps(proof))
                assert run_notecheck(notecheck, "proof", vkey, str(proof_file)).returncode != 0
                proofs += 1
        types = [record.get("type") for record in by_seq.values()]
        if "close" in types:
            closed += 1
            assert types[-1] == "checkpoint" and types[-2] == "close", f"{name}: the close is attested last"
    assert checked_checkpoints >= 6 and checked_manifests >= 1 and proofs >= 6
    assert closed == 1, "the deleted pod's chain closes"
