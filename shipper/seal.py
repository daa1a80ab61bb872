"""The seal: per-chain hash chains, and the signed-note format of checkpoints and node manifests (writing
and parsing both). Pure: no I/O, no clocks.

Invariants (each named by a test in tests/unit/test_seal.py):
- CHAIN_PER_LINEAGE: one chain per container lineage, `chain = <pod_uid>/<container>`; `seq` runs on
  across rotations and container restarts (the head is persisted with the source position).
- GENESIS: h0 = SHA-256("audit-shipper/v1" || chain); the first record has seq 1 and prev = h0.
- LINK: hn = SHA-256(hn-1 || canon(seq, time, stream, body, type)); `canon` writes each field as a
  netstring (`<decimal length>:<bytes>,`), so no two field tuples encode alike.
- CONTEXT_OUTSIDE: enrichment (resource, attributes, observed_time, source) is outside the hash, so
  a label change between a crash and its replay cannot fork a chain.
- DETERMINISTIC: the same head and the same entries give the same seq, prev and hash (and tree).
- TREE: every record hash is also a leaf of the chain's RFC 6962 Merkle tree (shipper/merkle.py),
  whose frontier travels with the head; a checkpoint signs the tree's size and root, so one record can
  be proven against it with an audit path alone.
- CHECKPOINT: a checkpoint record at seq n attests the head (seq n-1, hash hn-1) with an Ed25519
  signature over a small line-based statement (after C2SP's signed-note idea); it is itself a link
  of the chain, so removing it breaks the chain too.
"""
from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from .merkle import Frontier

SCHEMA = "audit-shipper/v1"
SCHEMA_BYTES = SCHEMA.encode()
STATEMENT_HEADER = "audit-shipper/checkpoint/v1"

TYPE_LOG = ""
TYPE_GAP = "gap"
TYPE_CHECKPOINT = "checkpoint"
TYPE_CLOSE = "close"
TYPE_MANIFEST = "manifest"

_sha256 = hashlib.sha256


_NO_TREE = Frontier()


@dataclass(slots=True, frozen=True)
class ChainHead:
    """The last link of a chain: seq of the last record (0 before the first) and its hash, and the
    Merkle tree over the chain's record hashes (TREE): `tree.size` leaves, the last one the head's."""

    chain: str
    seq: int
    hash: bytes
    tree: Frontier = _NO_TREE

    @classmethod
    def genesis(cls, chain: str) -> ChainHead:
        return cls(chain, 0, genesis_hash(chain))

    @property
    def tree_first_seq(self) -> int:
        """Seq of the tree's first leaf: 1 for a chain sealed from its start; later for a chain whose
        state came from a release that kept no tree (its tree starts at the first record after it)."""
        return self.seq - self.tree.size + 1


def genesis_hash(chain: str) -> bytes:
    return _sha256(SCHEMA_BYTES + chain.encode()).digest()


def canon(seq: int, time: bytes, stream: bytes, body: bytes, type_: bytes) -> bytes:
    """Canonical bytes of one record's evidence: netstrings of seq (decimal), time, stream, body, type."""
    seq_text = b"%d" % seq
    return b"%d:%s,%d:%s,%d:%s,%d:%s,%d:%s," % (len(seq_text), seq_text, len(time), time, len(stream), stream,
                                                len(body), body, len(type_), type_)


def link(prev: bytes, seq: int, time: bytes, stream: bytes, body: bytes, type_: bytes = b"") -> bytes:
    """hn from hn-1 and the record's evidence (the LINK invariant)."""
    return _sha256(prev + canon(seq, time, stream, body, type_)).digest()


def gap_body(reason: str, bytes_lost: int, path: str, offset: int, detail: str = "", missing_seq: int | None = None,
             missing_hash: str | None = None) -> str:
    """The body of a gap record: canonical JSON (sorted keys, no spaces), so it hashes the same everywhere."""
    fields: dict[str, object] = {"reason": reason, "bytes": bytes_lost, "path": path, "offset": offset}
    if detail:
        fields["detail"] = detail
    if missing_seq is not None:
        fields["missing_seq"] = missing_seq
        fields["missing_hash"] = missing_hash
    return json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


# -- checkpoints -------------------------------------------------------------------------------

def key_id_of(public_key: Ed25519PublicKey) -> str:
    """A short, stable name of a public key: the first 8 bytes of SHA-256 of its raw form, in hex."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return _sha256(raw).hexdigest()[:16]


def statement_text(chain: str, seq: int, head_hash: bytes, time: str, node: str) -> str:
    """The signed statement: versioned, one value per line, ending with a newline."""
    return (f"{STATEMENT_HEADER}\nchain {chain}\nseq {seq}\nhead {base64.b64encode(head_hash).decode()}\n"
            f"time {time}\nnode {node}\n")


def checkpoint_body(statement: str, signatures: list[tuple[str, bytes]]) -> str:
    """A signed note: the statement, a blank line, one `— <key id> <base64 signature>` line per key.
    With no key, the statement alone (an unsigned checkpoint still links the chain)."""
    lines = [f"\u2014 {key_id} {base64.b64encode(signature).decode()}" for key_id, signature in signatures]
    return statement + ("\n" + "\n".join(lines) + "\n" if lines else "")


@dataclass(slots=True, frozen=True)
class ParsedCheckpoint:
    chain: str
    seq: int
    head_hash: bytes
    time: str
    node: str
    statement: str
    signatures: tuple[tuple[str, bytes], ...]


class BadCheckpoint(ValueError):
    """A checkpoint body that is not a well-formed statement."""


def split_note(body: str) -> tuple[str, str]:
    """A signed note's statement (ending with one newline) and its signature block; an unsigned
    note has no blank line and is all statement."""
    statement, separator, signature_block = body.partition("\n\n")
    return (statement + "\n", signature_block) if separator else (body, "")


def parse_signature_lines(block: str, error: type[ValueError]) -> tuple[tuple[str, bytes], ...]:
    """`— <key id> <base64 signature>` lines of a signed note."""
    signatures = []
    for line in block.splitlines():
        if not line:
            continue
        parts = line.split(" ")
        if len(parts) != 3 or parts[0] != "\u2014":
            raise error(f"malformed signature line {line!r}")
        try:
            signatures.append((parts[1], base64.b64decode(parts[2], validate=True)))
        except ValueError:
            raise error(f"signature of key {parts[1]} is not base64") from None
    return tuple(signatures)


def parse_checkpoint(body: str) -> ParsedCheckpoint:
    statement, signature_block = split_note(body)
    lines = statement.rstrip("\n").split("\n")
    if len(lines) != 6 or lines[0] != STATEMENT_HEADER:
        raise BadCheckpoint("not an audit-shipper/checkpoint/v1 statement")
    values: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(" ")
        if not sep:
            raise BadCheckpoint(f"malformed statement line {line!r}")
        values[name] = value
    try:
        parsed_seq = int(values["seq"])
        head = base64.b64decode(values["head"], validate=True)
        chain, time, node = values["chain"], values["time"], values["node"]
    except (KeyError, ValueError) as exc:
        raise BadCheckpoint(f"malformed statement: {exc}") from None
    signatures = parse_signature_lines(signature_block, BadCheckpoint)
    return ParsedCheckpoint(chain, parsed_seq, head, time, node, statement, signatures)


class Signer:
    """Signs checkpoint statements with an Ed25519 private key."""

    def __init__(self, private_key: Ed25519PrivateKey, key_id: str | None = None) -> None:
        self._key = private_key
        self.key_id = key_id or key_id_of(private_key.public_key())

    @classmethod
    def from_pem(cls, pem: bytes, key_id: str | None = None) -> Signer:
        key = serialization.load_pem_private_key(pem, password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError("the signing key is not an Ed25519 private key")
        return cls(key, key_id)

    def sign(self, statement: str) -> tuple[str, bytes]:
        return self.key_id, self._key.sign(statement.encode())


def load_public_key(pem: bytes) -> Ed25519PublicKey:
    key = serialization.load_pem_public_key(pem)
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError("not an Ed25519 public key")
    return key


def signature_valid(public_key: Ed25519PublicKey, statement: str, signature: bytes) -> bool:
    try:
        public_key.verify(signature, statement.encode())
    except InvalidSignature:
        return False
    return True


def generate_key_pair() -> tuple[bytes, bytes]:
    """(private PEM, public PEM) of a new Ed25519 key, for `shipper keygen`."""
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return private, public


# -- manifests ---------------------------------------------------------------------------------
MANIFEST_HEADER = "audit-shipper/manifest/v1"


def manifest_statement(node: str, time: str, heads: list[tuple[str, int, bytes]]) -> str:
    """A node's signed list of chain heads (chain `node/<node>`, type `manifest`): lets `verify`
    notice a chain whose tail was removed from the topic together with its checkpoints."""
    lines = [MANIFEST_HEADER, f"node {node}", f"time {time}"]
    lines += [f"head {chain} {seq} {base64.b64encode(head).decode()}" for chain, seq, head in heads]
    return "\n".join(lines) + "\n"


class BadManifest(ValueError):
    """A manifest body that is not a well-formed statement."""


@dataclass(slots=True, frozen=True)
class ParsedManifest:
    node: str
    time: str
    heads: tuple[tuple[str, int, bytes], ...]
    statement: str
    signatures: tuple[tuple[str, bytes], ...]


def parse_manifest(body: str) -> ParsedManifest:
    statement, signature_block = split_note(body)
    if not statement.endswith("\n"):
        raise BadManifest("statement does not end with a newline")
    lines = statement[:-1].split("\n")
    if len(lines) < 3 or lines[0] != MANIFEST_HEADER:
        raise BadManifest("not an audit-shipper/manifest/v1 statement")
    if not lines[1].startswith("node ") or not lines[2].startswith("time "):
        raise BadManifest("manifest must name its node and time on lines 2 and 3")
    heads = []
    for line in lines[3:]:
        name, _, rest = line.partition(" ")
        parts = rest.rsplit(" ", 2)
        if name != "head" or len(parts) != 3 or not parts[0]:
            raise BadManifest(f"malformed manifest line {line!r}")
        try:
            seq = int(parts[1])
            head = base64.b64decode(parts[2], validate=True)
        except ValueError:
            raise BadManifest(f"malformed manifest line {line!r}") from None
        if seq < 0 or len(head) != 32 or not parts[1].isdigit():
            raise BadManifest(f"malformed manifest line {line!r}")
        heads.append((parts[0], seq, head))
    return ParsedManifest(lines[1][5:], lines[2][5:], tuple(heads), statement,
                          parse_signature_lines(signature_block, BadManifest))
