"""Per-record proofs (SPEC-15): building one from the records of a chain's partition (`ProofBuilder`, fed by
inputs.prove_from_topic), and checking one offline (`check_proof`). Pure: no I/O.

A proof is a JSON object {"format": "audit-shipper/proof/v1", "event_id", "record", "leaf", "leaf_index",
"tree_size", "audit_path", "checkpoint", "checkpoint_seq"}: the record as it is in Kafka, its hash, and
the RFC 6962 audit path from it to the root of the first checkpoint after it (a signed note). Whoever
holds the public key can check that the record is, unchanged and attributed as it says, one of the
records the shipper signed for, without the topic.
"""
from __future__ import annotations

import base64
from collections import deque
from typing import Any

from cryptography.hazmat.primitives import serialization

from .. import note
from ..merkle import inclusion_proof, root_of, verify_inclusion
from ..seal import (CHAIN_ORIGIN_PREFIX, NODE_CHAIN_PREFIX, NODE_ORIGIN_PREFIX, SCHEMA_V2, TYPE_CHECKPOINT,
                    TYPE_MANIFEST, BadCheckpoint, BadManifest, Identity, link, parse_checkpoint_note, parse_manifest_note)

PROOF_FORMAT = "audit-shipper/proof/v1"
_IDENTITY_FIELDS = (("namespace", "namespace"), ("pod", "pod"), ("pod_uid", "pod-uid"), ("container", "container"),
                    ("node", "node"))


class ProofError(Exception):
    """No proof can be made for the record from what was read (a clear reason for the command line)."""


def parse_event_id(event_id: str) -> tuple[str, int]:
    """(chain, seq) of `<chain>:<seq>`; ValueError when it is not one."""
    chain, colon, seq_text = event_id.rpartition(":")
    if not colon or not chain or not seq_text.isdigit() or seq_text != str(int(seq_text)) or int(seq_text) < 1:
        raise ValueError(f"{event_id!r} is not an event id <chain>:<seq> (e.g. 0d9c7a4e-.../app:1234)")
    return chain, int(seq_text)


def record_hash(record: Any) -> bytes:
    """The hash a record's evidence gives (seal.link of its prev and canon fields); KeyError, TypeError,
    ValueError or AttributeError when it is not a record."""
    seal = record["seal"]
    seq = seal["seq"]
    if type(seq) is not int or seq < 1:
        raise ValueError("seal.seq is an integer >= 1")
    prev = bytes.fromhex(seal["prev"])
    if len(prev) != 32:
        raise ValueError("seal.prev is a 32-byte hash")
    return link(prev, seq, record["time"].encode(), record["stream"].encode(), record["body"].encode(),
                record.get("type", "").encode())


def note_signer(body: str, public_keys: dict[str, Any]) -> str | None:
    """The name of a given key with a good signature on the note `body`, None when none has one (or the
    note is malformed). A key also answers under the name a signature line gives it (seal.key_id)."""
    raws: dict[bytes, None] = {}
    keys = []
    for name, public_key in public_keys.items():
        raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        raws[raw] = None
        try:
            keys.append(note.VerifierKey(name, raw))
        except note.BadNote:
            pass
    try:
        opened = note.open_note(body, keys)
        if opened.verified:
            return opened.verified[0].name
        for name, key_hash in opened.unknown:
            for raw in raws:
                candidate = note.VerifierKey(name, raw)
                if candidate.key_hash == key_hash and note.open_note(body, [candidate]).trusted:
                    return name
    except note.BadNote:
        return None
    return None


def _parse_statement(chain: str, body: str):
    """The checkpoint note (or, for a node chain, the manifest note) `body`; BadCheckpoint/BadManifest."""
    if chain.startswith(NODE_CHAIN_PREFIX):
        return parse_manifest_note(body)
    return parse_checkpoint_note(body)


def _statement_chain(parsed) -> str:
    return getattr(parsed, "chain", None) or NODE_CHAIN_PREFIX + parsed.node


def _identity_text(identity: Identity) -> str:
    return ", ".join(f"{label} {getattr(identity, field)!r}" for field, label in _IDENTITY_FIELDS)


class ProofBuilder:
    """Fed the records of the partition that holds the chain, in offset order: keeps the chain's record
    hashes, finds the record and then the first checkpoint after it (good for one of `public_keys`, or
    any when none is given) whose tree covers it. `done` once the proof is made; `proof()` gives it or
    raises ProofError with the reason."""

    def __init__(self, event_id: str, public_keys: dict[str, Any] | None = None) -> None:
        self.event_id = event_id
        self.chain, self.seq = parse_event_id(event_id)
        self.public_keys = dict(public_keys or {})
        self.leaves = bytearray()          # record hashes of seqs leaves_start.. (contiguous)
        self.leaves_start = 0
        self.next_seq = 0
        self.record: dict | None = None
        self.record_where: tuple | None = None
        self.result: dict | None = None
        self.skipped: deque[str] = deque(maxlen=3)     # why the latest checkpoints after it could not serve
        self.hopeless: str | None = None
        self.records = 0

    @property
    def done(self) -> bool:
        """The proof is made, or no later record can make it."""
        return self.result is not None or self.hopeless is not None

    def feed(self, record: Any, where: tuple = (None, None, None)) -> bool:
        """One record of the partition (decoded); True once done."""
        if self.done:
            return True
        try:
            seal = record["seal"]
            if seal["chain"] != self.chain:
                return False
            seq = seal["seq"]
            stated = bytes.fromhex(seal["hash"])
            if type(seq) is not int or seq < 1 or len(stated) != 32:
                return False
        except (KeyError, TypeError, ValueError, AttributeError):
            return False
        self.records += 1
        if seq == self.next_seq:
            self.leaves += stated
            self.next_seq += 1
        elif seq > self.next_seq:
            # a hole (or the first record read): the tree can only be rebuilt from here on
            if self.record is None or seq <= self.seq:
                self.leaves, self.leaves_start, self.next_seq = bytearray(stated), seq, seq + 1
            else:
                self.hopeless = (f"seq {self.next_seq} of the chain is not in the partition: no checkpoint after "
                                 "it can be tied to the record")
                return True
        if seq == self.seq and self.record is None:
            self.record, self.record_where = record, where
            try:
                changed = record_hash(record) != stated
            except (KeyError, TypeError, ValueError, AttributeError) as exc:
                self.hopeless = f"the record is malformed: {exc}"
                return True
            if changed:
                self.hopeless = "the record does not hash to its stated hash: it was changed in the topic"
                return True
            return False
        if self.record is not None and seq > self.seq and record.get("type") in (TYPE_CHECKPOINT, TYPE_MANIFEST):
            self._try_checkpoint(record, seq)
        return self.done

    def _try_checkpoint(self, record: dict, seq: int) -> None:
        body = record.get("body")
        origin = NODE_ORIGIN_PREFIX if self.chain.startswith(NODE_CHAIN_PREFIX) else CHAIN_ORIGIN_PREFIX
        if not isinstance(body, str) or not body.startswith(origin):
            self.skipped.append(f"the checkpoint at seq {seq} is a legacy statement (no tree)")
            return
        try:
            parsed = _parse_statement(self.chain, body)
        except (BadCheckpoint, BadManifest) as exc:
            self.skipped.append(f"the checkpoint at seq {seq} is malformed: {exc}")
            return
        if _statement_chain(parsed) != self.chain or parsed.seq != seq - 1:
            self.skipped.append(f"the checkpoint at seq {seq} does not attest its own chain and head")
            return
        if self.public_keys and note_signer(body, self.public_keys) is None:
            self.skipped.append(f"the checkpoint at seq {seq} has no good signature by the given key(s)")
            return
        start, size = parsed.tree_start, parsed.tree_size
        if start > self.seq:
            self.skipped.append(f"the tree of the checkpoint at seq {seq} starts at seq {start}, after the record")
            return
        if self.next_seq != seq + 1 or start < self.leaves_start:
            self.skipped.append(f"the records of the tree of the checkpoint at seq {seq} (seqs {start}..{seq - 1}) "
                                "are not all in the partition")
            return
        offset = 32 * (start - self.leaves_start)
        leaves = [bytes(self.leaves[i:i + 32]) for i in range(offset, offset + 32 * size, 32)]
        if root_of(leaves) != parsed.root:
            raise ProofError(f"the records in the topic do not give the Merkle root of the checkpoint at seq {seq}: "
                             "the chain was changed (run shipper verify)")
        index = self.seq - start
        self.result = {
            "format": PROOF_FORMAT, "event_id": self.event_id, "record": self.record,
            "leaf": leaves[index].hex(), "leaf_index": index, "tree_size": size,
            "audit_path": [base64.b64encode(sibling).decode("ascii")
                           for sibling in inclusion_proof(leaves, index, size)],
            "checkpoint": body, "checkpoint_seq": seq,
        }

    def proof(self) -> dict:
        if self.result is not None:
            return self.result
        if self.record is None:
            raise ProofError(f"no record {self.event_id} in the partition of chain {self.chain} "
                             f"({self.records} records of the chain read)")
        if self.hopeless is not None:
            raise ProofError(f"no proof of {self.event_id}: {self.hopeless}")
        why = "; ".join(self.skipped) if self.skipped else "none was written after it yet (try again later)"
        signed = " signed by the given key(s)" if self.public_keys else ""
        raise ProofError(f"no usable checkpoint{signed} after {self.event_id}: {why}")


_SEAL_MEMBERS = frozenset(("chain", "seq", "prev", "hash"))


def check_proof(proof: Any, public_keys: dict[str, Any]) -> tuple[bool, str]:
    """(ok, one line saying why) for a proof object: the record hashes to the leaf, the audit path leads
    from it to the root of the checkpoint, whose signature is good for one of `public_keys`, which is of
    the record's chain, attests a head at or after it, and attests the identity the record's resource
    states. Never raises for any input."""
    try:
        return _check_proof(proof, public_keys)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
        return False, f"malformed proof: {type(exc).__name__}: {str(exc)[:200]}"


def _check_proof(proof: Any, public_keys: dict[str, Any]) -> tuple[bool, str]:
    if not isinstance(proof, dict) or proof.get("format") != PROOF_FORMAT:
        return False, f"not an {PROOF_FORMAT} proof"
    fields = {"event_id": str, "record": dict, "leaf": str, "leaf_index": int, "tree_size": int, "audit_path": list,
              "checkpoint": str, "checkpoint_seq": int}
    for name, kind in fields.items():
        if type(proof.get(name)) is not kind:
            return False, f"malformed proof: {name} is missing or not a{'n' if kind is int else ''} {kind.__name__}"
    record = proof["record"]
    try:
        chain, seq = record["seal"]["chain"], record["seal"]["seq"]
        computed = record_hash(record)
        stated = bytes.fromhex(record["seal"]["hash"])
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        return False, f"the proof's record is not an audit-shipper record: {type(exc).__name__}: {str(exc)[:200]}"
    if set(record["seal"]) != _SEAL_MEMBERS:
        return False, "the proof's record has a seal with other members than chain, seq, prev and hash"
    event_id = f"{chain}:{seq}"
    # a v2 record holds no event_id (its Kafka header does); one it holds all the same must be its own
    if proof["event_id"] != event_id or ((record.get("schema") != SCHEMA_V2 or "event_id" in record)
                                         and record.get("event_id") != event_id):
        return False, (f"the proof is for {proof['event_id']!r}, its record is {event_id!r} (event_id "
                       f"{record.get('event_id')!r}): a proof for another record")
    try:
        leaf = bytes.fromhex(proof["leaf"])
    except ValueError:
        return False, "malformed proof: leaf is not hex"
    if computed != leaf or computed != stated:
        return False, (f"the record {event_id} does not hash to the proof's leaf"
                       f"{'' if computed == stated else ' nor to its stated hash'}: the record was changed "
                       "(or the leaf is another record's)")
    checkpoint = proof["checkpoint"]
    try:
        parsed = _parse_statement(chain, checkpoint)
    except (BadCheckpoint, BadManifest) as exc:
        return False, f"the proof's checkpoint is not a signed checkpoint note: {exc}"
    if not parsed.signatures:
        return False, "the proof's checkpoint carries no signature"
    signer = note_signer(checkpoint, public_keys)
    if signer is None:
        return False, "the proof's checkpoint has no good signature by the given public key(s)"
    if _statement_chain(parsed) != chain:
        return False, f"the checkpoint is of chain {_statement_chain(parsed)!r}, the record of chain {chain!r}"
    if parsed.seq < seq:
        return False, (f"the checkpoint attests the chain up to seq {parsed.seq}, before the record (seq {seq}): "
                       "an older checkpoint")
    if proof["checkpoint_seq"] != parsed.seq + 1:
        return False, (f"checkpoint_seq {proof['checkpoint_seq']} is not the seq of that checkpoint "
                       f"({parsed.seq + 1})")
    if proof["tree_size"] != parsed.tree_size:
        return False, f"tree_size {proof['tree_size']} is not the checkpoint's ({parsed.tree_size})"
    if proof["leaf_index"] != seq - parsed.tree_start:
        return False, (f"leaf_index {proof['leaf_index']} is not the place of seq {seq} in the checkpoint's tree "
                       f"(seqs {parsed.tree_start}..{parsed.seq}): the record is not where the proof says")
    try:
        path = [_b64_hash(sibling) for sibling in proof["audit_path"]]
    except ValueError:
        return False, "malformed proof: audit_path holds something other than base64 hashes"
    if not verify_inclusion(leaf, proof["leaf_index"], proof["tree_size"], path, parsed.root):
        return False, (f"the audit path does not lead from the record to the checkpoint's root: the record is not "
                       f"seq {seq} of the tree the checkpoint signs (changed, reordered or the path is damaged)")
    where = f"the checkpoint at seq {parsed.seq + 1} (tree of {parsed.tree_size} records)"
    if hasattr(parsed, "identity"):
        claimed = Identity.of_resource(record.get("resource"))
        if claimed != parsed.identity:
            return False, (f"the record's resource names {_identity_text(claimed)}; {where} attests "
                           f"{_identity_text(parsed.identity)}: the record was re-attributed")
        return True, (f"OK: {event_id} is in {where}, signed by key {signer}, attributed to "
                      f"{_identity_text(parsed.identity)}")
    return True, f"OK: {event_id} is in {where}, signed by key {signer}"


def _b64_hash(text: Any) -> bytes:
    if not isinstance(text, str):
        raise ValueError("not a string")
    raw = base64.b64decode(text, validate=True)
    if len(raw) != 32:
        raise ValueError("not a 32-byte hash")
    return raw
