"""The seal: per-chain hash chains, and the signed-note format of checkpoints and node manifests (writing
and parsing both). Pure: no I/O, no clocks.

Invariants (each named by a test in tests/unit/test_seal.py):
- CHAIN_PER_LINEAGE: one chain per container lineage, `chain = <pod_uid>/<container>`; `seq` runs on
  across rotations and container restarts (the head is persisted with the source position).
- GENESIS: h0 = SHA-256("audit-shipper/v1" || chain); the first record has seq 1 and prev = h0. The
  prefix stays "audit-shipper/v1" whatever the record format (v1 or v2), so a chain goes on unchanged
  when kafka.record_format changes.
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
- NOTE_CHECKPOINT (SPEC-15): the statement is a C2SP signed note whose text is a tlog-checkpoint: origin
  `audit-shipper.io/v1/chain/<chain>`, the RFC 6962 tree (size, root) of the chain's last records up to
  the head, then seq, head, time and the chain's identity (node, namespace, pod, pod-uid, container).
  A node manifest is the same for the node chain, plus one `chain <chain> <seq> <hash>` line per chain.
- PERCENT: values in note lines are percent-encoded for bytes <= 0x20, 0x7f and '%' (and for the bytes
  of a lone surrogate, which UTF-8 cannot carry), so any value fits on one line and decodes back exactly;
  the parser accepts only the one canonical spelling.
- STRICT: parse_checkpoint_note / parse_manifest_note raise only BadCheckpoint / BadManifest on any
  malformed body, as the legacy parse_checkpoint / parse_manifest do (old topics must still verify).
"""
from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from . import note
from .merkle import Frontier

SCHEMA = "audit-shipper/v1"             # the full record format; also the genesis prefix of every chain (GENESIS)
SCHEMA_BYTES = SCHEMA.encode()
SCHEMA_V2 = "audit-shipper/v2"          # the compact record format (kafka.record_format: compact): same chains
SCHEMA_V2_BYTES = SCHEMA_V2.encode()
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
        self._note_signer: note.NoteSigner | None = None

    @classmethod
    def from_pem(cls, pem: bytes, key_id: str | None = None) -> Signer:
        key = serialization.load_pem_private_key(pem, password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError("the signing key is not an Ed25519 private key")
        return cls(key, key_id)

    def sign(self, statement: str) -> tuple[str, bytes]:
        return self.key_id, self._key.sign(statement.encode())

    @property
    def note_signer(self) -> note.NoteSigner:
        """The same key as a C2SP note signer, named by this signer's key id; `note.BadNote` when the
        key id is not a valid note key name (it holds a space or a plus)."""
        if self._note_signer is None:
            self._note_signer = note.NoteSigner(self.key_id, self._key)
        return self._note_signer

    @property
    def verifier_key(self) -> str:
        """The verifier key (`name+hash+base64`) auditors check this signer's notes with."""
        return self.note_signer.verifier.text


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


# -- notes (SPEC-15): checkpoints and manifests as C2SP signed notes over tlog-checkpoint texts --------
CHAIN_ORIGIN_PREFIX = "audit-shipper.io/v1/chain/"
NODE_ORIGIN_PREFIX = "audit-shipper.io/v1/node/"
NODE_CHAIN_PREFIX = "node/"

_CHECKPOINT_EXTENSIONS = ("seq", "head", "time", "node", "namespace", "pod", "pod-uid", "container")
_MANIFEST_EXTENSIONS = ("seq", "head", "time", "node")
_DECIMAL = re.compile("0|[1-9][0-9]{0,18}")
# A value needs escaping when it holds a byte <= 0x20, 0x7f, '%' or a lone surrogate.
_NEEDS_ESCAPE = re.compile("[\x00-\x20\x7f%\ud800-\udfff]")


def percent_encode(value: str) -> str:
    """`value` as it is written in a note line (see PERCENT)."""
    if not _NEEDS_ESCAPE.search(value):
        return value
    return _NEEDS_ESCAPE.sub(lambda match: "".join(
        f"%{byte:02X}" for byte in match.group().encode("utf-8", "surrogatepass")), value)


def percent_decode(text: str) -> str:
    """The value `percent_encode` wrote as `text`; ValueError unless `text` is its canonical spelling."""
    if "%" in text:
        first, *escaped = text.split("%")
        raw = bytearray(first.encode("utf-8", "surrogatepass"))
        for part in escaped:
            digits = part[:2]
            if len(digits) != 2 or not all(c in "0123456789ABCDEF" for c in digits):
                raise ValueError(f"bad percent escape in {text[:80]!r}")
            raw.append(int(digits, 16))
            raw += part[2:].encode("utf-8", "surrogatepass")
        try:
            value = raw.decode("utf-8", "surrogatepass")
        except UnicodeDecodeError:
            raise ValueError(f"percent escapes of {text[:80]!r} are not UTF-8") from None
    else:
        value = text
    if percent_encode(value) != text:
        raise ValueError(f"{text[:80]!r} is not written the canonical way")
    return value


_IDENTITY_RESOURCE_KEYS = ("k8s.namespace.name", "k8s.pod.name", "k8s.pod.uid", "k8s.container.name",
                           "k8s.node.name")


@dataclass(slots=True, frozen=True)
class Identity:
    """What a chain's records are attributed to: the facts that never change during a pod's life."""

    namespace: str = ""
    pod: str = ""
    pod_uid: str = ""
    container: str = ""
    node: str = ""

    @classmethod
    def of_resource(cls, resource: object) -> Identity:
        """The identity a record's `resource` states (`k8s.*` keys; a missing key is "")."""
        return cls(*identity_values(resource))


def identity_values(resource: object) -> tuple[str, str, str, str, str]:
    """(namespace, pod, pod uid, container, node) of a record's `resource`, in Identity's field order.
    A value that is not a string (only a rewritten record has one) is rendered as JSON."""
    if not isinstance(resource, dict):
        return ("", "", "", "", "")
    values = []
    for key in _IDENTITY_RESOURCE_KEYS:
        value = resource.get(key)
        values.append(value if type(value) is str else "" if value is None else json.dumps(value, sort_keys=True))
    return tuple(values)  # type: ignore[return-value]


def _b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode("ascii")


def checkpoint_note_text(chain: str, tree: Frontier, head: ChainHead, time: str, identity: Identity) -> str:
    """The text of a chain's checkpoint (SPEC-15), ready for `sign_statement` / `note.sign_note`: the tree
    covers the chain's last `tree.size` records, seqs head.seq - tree.size + 1 .. head.seq."""
    if head.chain != chain:
        raise ValueError(f"the head is of chain {head.chain!r}, not {chain!r}")
    if tree.size > head.seq:
        raise ValueError(f"a tree of {tree.size} leaves cannot end at seq {head.seq}")
    extensions = [f"seq {head.seq}", f"head {_b64(head.hash)}", f"time {percent_encode(time)}",
                  f"node {percent_encode(identity.node)}", f"namespace {percent_encode(identity.namespace)}",
                  f"pod {percent_encode(identity.pod)}", f"pod-uid {percent_encode(identity.pod_uid)}",
                  f"container {percent_encode(identity.container)}"]
    return note.checkpoint_text(CHAIN_ORIGIN_PREFIX + percent_encode(chain), tree.size, tree.root(), extensions)


def manifest_note_text(node: str, tree: Frontier, head: ChainHead, time: str,
                       heads: list[tuple[str, int, bytes]]) -> str:
    """The text of a node manifest (SPEC-15): the checkpoint of the node chain `node/<node>` (`head`,
    `tree`) and one line per chain head, sorted by chain name."""
    if head.chain != NODE_CHAIN_PREFIX + node:
        raise ValueError(f"the head is of chain {head.chain!r}, not {NODE_CHAIN_PREFIX + node!r}")
    if tree.size > head.seq:
        raise ValueError(f"a tree of {tree.size} leaves cannot end at seq {head.seq}")
    extensions = [f"seq {head.seq}", f"head {_b64(head.hash)}", f"time {percent_encode(time)}",
                  f"node {percent_encode(node)}"]
    previous = None
    for chain, seq, digest in sorted(heads):
        if chain == previous:
            raise ValueError(f"chain {chain!r} is listed twice")
        if isinstance(seq, bool) or not isinstance(seq, int) or seq < 0 or len(digest) != 32:
            raise ValueError(f"bad head for chain {chain!r}")
        extensions.append(f"chain {percent_encode(chain)} {seq} {_b64(digest)}")
        previous = chain
    return note.checkpoint_text(NODE_ORIGIN_PREFIX + percent_encode(node), tree.size, tree.root(), extensions)


def sign_statement(text: str, signers: Iterable[Signer | note.NoteSigner]) -> str:
    """The body of a checkpoint or manifest record: the note signed by each signer (a seal.Signer signs
    under its key id), or the text alone when there is none (an unsigned checkpoint still links)."""
    note_signers = [signer.note_signer if isinstance(signer, Signer) else signer for signer in signers]
    if not note_signers:
        return text
    return note.sign_note(text, note_signers)


@dataclass(slots=True, frozen=True)
class ParsedTreeNote:
    """What a checkpoint note and a manifest note (SPEC-15) both state: the head of a chain (`seq`,
    `head_hash`) and the Merkle tree of its records up to that head (`tree_size`, `root`), at `time`,
    by `node`. `text` is what the signatures sign, `note` the whole body (check its signatures with
    note.open_note), `signatures` the (key name, key hash) of each signature line."""

    node: str
    tree_size: int
    root: bytes
    seq: int                 # the head attested: the seq before the checkpoint (or manifest) record
    head_hash: bytes
    time: str
    text: str
    note: str
    signatures: tuple[tuple[str, bytes], ...]

    @property
    def tree_start(self) -> int:
        """The seq of the tree's first leaf (head seq + 1 when the tree is empty)."""
        return self.seq - self.tree_size + 1


@dataclass(slots=True, frozen=True)
class ParsedCheckpointNote(ParsedTreeNote):
    """A checkpoint note (SPEC-15): the head and tree of chain `chain`, and the container it is of."""

    chain: str
    identity: Identity


@dataclass(slots=True, frozen=True)
class ParsedManifestNote(ParsedTreeNote):
    """A manifest note (SPEC-15): the head and tree of the node chain, and the heads of the node's chains."""

    heads: tuple[tuple[str, int, bytes], ...]


def _open_body(body: object, error: type[ValueError]) -> tuple[str, note.TreeHead, tuple[tuple[str, bytes], ...]]:
    """(text, tree head, signature identities) of a note body; an unsigned body is all text."""
    if not isinstance(body, str):
        raise error("a note body is a string")
    try:
        if "\n\n" in body:
            opened = note.open_note(body, ())
            text, signatures = opened.text, opened.unknown
        else:
            text, signatures = body, ()
        return text, note.parse_checkpoint_text(text), signatures
    except note.BadNote as exc:
        raise error(str(exc)) from None


def _extension_values(extensions: tuple[str, ...], names: tuple[str, ...], error: type[ValueError]) -> list[str]:
    values = []
    for line, name in zip(extensions, names):
        if not line.startswith(name + " "):
            raise error(f"expected a {name!r} line, not {line[:80]!r}")
        values.append(line[len(name) + 1:])
    return values


def _decimal(text: str, what: str, error: type[ValueError]) -> int:
    if not _DECIMAL.fullmatch(text):
        raise error(f"the {what} is a decimal without leading zeros, not {text[:40]!r}")
    return int(text)


def _hash32(text: str, what: str, error: type[ValueError]) -> bytes:
    try:
        raw = base64.b64decode(text, validate=True)
    except ValueError:
        raise error(f"the {what} is not base64") from None
    if len(raw) != 32 or _b64(raw) != text:
        raise error(f"the {what} is not the canonical base64 of 32 bytes")
    return raw


def _decoded(text: str, what: str, error: type[ValueError]) -> str:
    try:
        return percent_decode(text)
    except ValueError as exc:
        raise error(f"the {what}: {exc}") from None


def _origin_name(tree: note.TreeHead, prefix: str, kind: str, what: str, error: type[ValueError]) -> str:
    """The chain or node an origin line names after `prefix`: decoded, not empty."""
    if not tree.origin.startswith(prefix):
        raise error(f"not an audit-shipper.io/v1 {kind} (origin {tree.origin[:80]!r})")
    name = _decoded(tree.origin[len(prefix):], what, error)
    if not name:
        raise error(f"the origin names no {what}")
    return name


def _attested_head(tree: note.TreeHead, seq_text: str, head_text: str, error: type[ValueError]) -> tuple[int, bytes]:
    """The head (seq, hash) a note attests; its tree cannot hold more leaves than the head's seq."""
    seq = _decimal(seq_text, "seq", error)
    if tree.size > seq:
        raise error(f"a tree of {tree.size} leaves cannot end at seq {seq}")
    return seq, _hash32(head_text, "head", error)


def parse_checkpoint_note(body: str) -> ParsedCheckpointNote:
    """A checkpoint note's fields; BadCheckpoint unless it follows SPEC-15 exactly."""
    text, tree, signatures = _open_body(body, BadCheckpoint)
    chain = _origin_name(tree, CHAIN_ORIGIN_PREFIX, "chain checkpoint", "chain", BadCheckpoint)
    if len(tree.extensions) != len(_CHECKPOINT_EXTENSIONS):
        raise BadCheckpoint(f"a checkpoint has {len(_CHECKPOINT_EXTENSIONS)} extension lines, not "
                            f"{len(tree.extensions)}")
    seq_text, head_text, *rest = _extension_values(tree.extensions, _CHECKPOINT_EXTENSIONS, BadCheckpoint)
    seq, head = _attested_head(tree, seq_text, head_text, BadCheckpoint)
    time, node, namespace, pod, pod_uid, container = (
        _decoded(value, name, BadCheckpoint) for value, name in zip(rest, _CHECKPOINT_EXTENSIONS[2:]))
    return ParsedCheckpointNote(node=node, tree_size=tree.size, root=tree.root, seq=seq, head_hash=head, time=time,
                                text=text, note=body, signatures=signatures, chain=chain,
                                identity=Identity(namespace, pod, pod_uid, container, node))


def parse_manifest_note(body: str) -> ParsedManifestNote:
    """A manifest note's fields; BadManifest unless it follows SPEC-15 exactly (chains sorted, once each)."""
    text, tree, signatures = _open_body(body, BadManifest)
    node = _origin_name(tree, NODE_ORIGIN_PREFIX, "node manifest", "node", BadManifest)
    if len(tree.extensions) < len(_MANIFEST_EXTENSIONS):
        raise BadManifest("a manifest has seq, head, time and node lines")
    seq_text, head_text, time_text, node_text = _extension_values(tree.extensions, _MANIFEST_EXTENSIONS, BadManifest)
    seq, head = _attested_head(tree, seq_text, head_text, BadManifest)
    time = _decoded(time_text, "time", BadManifest)
    if _decoded(node_text, "node", BadManifest) != node:
        raise BadManifest("the node line names another node than the origin")
    heads: list[tuple[str, int, bytes]] = []
    for line in tree.extensions[len(_MANIFEST_EXTENSIONS):]:
        parts = line.split(" ")
        if len(parts) != 4 or parts[0] != "chain":
            raise BadManifest(f"malformed manifest line {line[:80]!r}")
        chain = _decoded(parts[1], "chain", BadManifest)
        if not chain:
            raise BadManifest("a manifest line names no chain")
        if heads and chain <= heads[-1][0]:
            raise BadManifest(f"chain {chain[:80]!r} is out of order or listed twice")
        heads.append((chain, _decimal(parts[2], "seq", BadManifest), _hash32(parts[3], "head hash", BadManifest)))
    return ParsedManifestNote(node=node, tree_size=tree.size, root=tree.root, seq=seq, head_hash=head, time=time,
                              text=text, note=body, signatures=signatures, heads=tuple(heads))
