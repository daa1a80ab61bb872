"""Our signed notes (shipper/note.py) and Merkle proofs (shipper/merkle.py) judged by Go's reference
implementation of the same formats, golang.org/x/mod/sumdb/note and tlog, through notecheck
(tools/c2sp; built on first use, see tests/harness/c2sp.py)."""
from __future__ import annotations

import base64
import hashlib
import json
import random
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from shipper.merkle import Frontier, inclusion_proof, root_of
from shipper.note import NoteSigner, checkpoint_text, open_note, parse_checkpoint_text, sign_note, verifier_key
from tests.harness.c2sp import run_notecheck

pytestmark = [pytest.mark.c2sp, pytest.mark.timeout(300)]

ORIGIN = "audit-shipper.local/node-1/pod-uid/app"
LOG = NoteSigner(ORIGIN, Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"log key").digest()))
OTHER = NoteSigner(ORIGIN, Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"other key").digest()))
WITNESS = NoteSigner("witness.example/w1", Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"w").digest()))

TEXTS = [
    "hello\n",
    "\n",
    "first line\n\nafter a blank line\n",
    "ends with blank lines\n\n\n",
    "unicode: é ü 日本 \u2014 and an emoji \U0001F512\n",
    checkpoint_text(ORIGIN, 12345, hashlib.sha256(b"r").digest(), ["ext: one", "ext: two"]),
]


def go_open(notecheck: Path, tmp_path: Path, vkey: str, note: str):
    path = tmp_path / "note"
    path.write_bytes(note.encode())
    return run_notecheck(notecheck, "note", vkey, str(path))


def signer_key(signer: NoteSigner) -> str:
    """The private key in the form Go's note.NewSigner reads (the test's business, not the product's)."""
    seed = signer.private_key.private_bytes_raw()
    encoded = base64.b64encode(b"\x01" + seed).decode()
    return f"PRIVATE+KEY+{signer.name}+{signer.key_hash.hex()}+{encoded}"


# -------------------------------------------------------------------------------------------- notes

@pytest.mark.parametrize("text", TEXTS)
def test_go_opens_python_signed_notes_and_reads_the_same_text(notecheck, tmp_path, text):
    for signers in ([LOG], [WITNESS, LOG]):  # a signature by a key Go was not given is ignored there too
        result = go_open(notecheck, tmp_path, LOG.verifier.text, sign_note(text, signers))
        assert result.returncode == 0, result.stderr
        assert result.stdout == text


def test_go_accepts_our_verifier_key_strings(notecheck, tmp_path):
    vkey = verifier_key(WITNESS.name, WITNESS.verifier.public_raw)
    result = go_open(notecheck, tmp_path, vkey, sign_note("x\n", [WITNESS]))
    assert result.returncode == 0, result.stderr


def test_go_rejects_a_tampered_text(notecheck, tmp_path):
    note = sign_note("amount 10\n", [LOG])
    result = go_open(notecheck, tmp_path, LOG.verifier.text, note.replace("10", "99"))
    assert result.returncode == 1
    assert "invalid signature" in result.stderr
    assert not open_note(note.replace("10", "99"), [LOG.verifier]).trusted


def test_go_rejects_a_note_signed_by_another_key_of_the_same_name(notecheck, tmp_path):
    note = sign_note("hello\n", [OTHER])
    result = go_open(notecheck, tmp_path, LOG.verifier.text, note)
    assert result.returncode == 1
    assert "no verifiable signatures" in result.stderr
    assert not open_note(note, [LOG.verifier]).trusted


def test_go_rejects_our_key_under_another_name(notecheck, tmp_path):
    renamed = NoteSigner("audit-shipper.local/somebody-else", LOG.private_key)
    note = sign_note("hello\n", [renamed])
    result = go_open(notecheck, tmp_path, LOG.verifier.text, note)
    assert result.returncode == 1
    assert not open_note(note, [LOG.verifier]).trusted
    # And the other way round: a verifier key whose name was edited no longer matches its hash.
    forged_vkey = LOG.verifier.text.replace(ORIGIN, "audit-shipper.local/somebody-else")
    result = go_open(notecheck, tmp_path, forged_vkey, sign_note("hello\n", [LOG]))
    assert result.returncode == 1 and "verifier key" in result.stderr


def test_go_rejects_a_malformed_signature_line(notecheck, tmp_path):
    note = sign_note("hello\n", [LOG]).replace("\u2014 ", "- ")
    result = go_open(notecheck, tmp_path, LOG.verifier.text, note)
    assert result.returncode == 1 and "malformed" in result.stderr


@pytest.mark.parametrize("text", TEXTS)
def test_go_signed_notes_are_ours_byte_for_byte_and_open_in_python(notecheck, tmp_path, text):
    path = tmp_path / "text"
    path.write_bytes(text.encode())
    result = run_notecheck(notecheck, "sign", signer_key(LOG), str(path))
    assert result.returncode == 0, result.stderr
    # Ed25519 is deterministic: the same key and text give the same signature, so the same note.
    assert result.stdout == sign_note(text, [LOG])
    opened = open_note(result.stdout, [LOG.verifier])
    assert opened.trusted and opened.text == text


# ------------------------------------------------------------------------------------------- Merkle

def random_leaves(count: int, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    return [rng.randbytes(32) for _ in range(count)]


def test_go_computes_the_same_tree_roots(notecheck, tmp_path):
    leaves = random_leaves(70, 7)
    frontier = Frontier()
    for size in range(0, 71):
        if size:
            frontier = frontier.extend_packed(leaves[size - 1])
        path = tmp_path / "leaves"
        path.write_text("".join(leaf.hex() + "\n" for leaf in leaves[:size]))
        result = run_notecheck(notecheck, "root", str(path))
        assert result.returncode == 0, result.stderr
        assert base64.b64decode(result.stdout) == frontier.root() == root_of(leaves[:size]), f"size {size}"


def proof_file(tmp_path: Path, leaves: list[bytes], index: int, size: int, *, signer: NoteSigner = LOG,
               checkpoint_size: int | None = None, path_edit=None, leaf: bytes | None = None) -> Path:
    root = Frontier().extend_packed(b"".join(leaves[:size])).root()
    text = checkpoint_text(ORIGIN, size if checkpoint_size is None else checkpoint_size, root)
    audit_path = inclusion_proof(leaves, index, size)
    if path_edit is not None:
        audit_path = path_edit(audit_path)
    path = tmp_path / f"proof-{size}-{index}.json"
    path.write_text(json.dumps({
        "checkpoint": sign_note(text, [signer]),
        "leaf_index": index,
        "tree_size": size,
        "leaf": (leaves[index] if leaf is None else leaf).hex(),
        "audit_path": [base64.b64encode(h).decode() for h in audit_path],
    }))
    return path


def go_proof(notecheck: Path, path: Path):
    return run_notecheck(notecheck, "proof", LOG.verifier.text, str(path))


@pytest.mark.parametrize("size", range(1, 71))
def test_go_accepts_our_inclusion_proofs(notecheck, tmp_path, size):
    leaves = random_leaves(size + 3, size)  # a longer list: the tree is its first `size` leaves
    rng = random.Random(size)
    every_index = size in (1, 2, 3, 5, 7, 8, 9, 16, 17, 31, 32, 33, 64, 70)
    indexes = range(size) if every_index else sorted({0, size - 1, rng.randrange(size), rng.randrange(size)})
    for index in indexes:
        result = go_proof(notecheck, proof_file(tmp_path, leaves, index, size))
        assert result.returncode == 0, f"leaf {index} of {size}: {result.stderr}"
    # The checkpoint we sign parses back to what we proved against.
    head = parse_checkpoint_text(open_note(json.loads(proof_file(tmp_path, leaves, 0, size).read_text())
                                           ["checkpoint"], [LOG.verifier]).text)
    assert (head.origin, head.size) == (ORIGIN, size)


def flip(hashes: list[bytes], which: int) -> list[bytes]:
    out = [bytearray(h) for h in hashes]
    out[which][which % 32] ^= 0x10
    return [bytes(h) for h in out]


@pytest.mark.parametrize("size,index", [(2, 0), (7, 6), (13, 4), (64, 33), (70, 69)])
def test_go_rejects_tampered_proofs(notecheck, tmp_path, size, index):
    leaves = random_leaves(size, 1000 + size)
    assert go_proof(notecheck, proof_file(tmp_path, leaves, index, size)).returncode == 0
    proof_length = len(inclusion_proof(leaves, index, size))
    tampered = {
        "flipped bit": dict(path_edit=lambda p: flip(p, proof_length - 1)),
        "dropped hash": dict(path_edit=lambda p: p[:-1]),
        "extra hash": dict(path_edit=lambda p: p + [p[0]]),
        "reversed path": dict(path_edit=lambda p: p[::-1] if len(p) > 1 and p[0] != p[-1] else p + [p[0]]),
        "other leaf": dict(leaf=leaves[(index + 1) % size]),
        "checkpoint of another size": dict(checkpoint_size=size + 1),
        "checkpoint by another key": dict(signer=OTHER),
    }
    for what, edit in tampered.items():
        result = go_proof(notecheck, proof_file(tmp_path, leaves, index, size, **edit))
        assert result.returncode == 1, f"{what}: Go accepted it"
        assert result.stderr, what
