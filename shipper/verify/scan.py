"""The verifier's bulk decoder: a batch of record values -> the fields the judge needs, in columns.

`verify_scan(values)` runs in C (shipper._native.verify_scan, native/verify.c) when it is built and
`verify_scan_py` is the reference it must match. For each value it extracts seal.chain, seal.seq,
seal.prev, seal.hash, type, whether schema and event_id are the ones the seal implies, and the five
identity fields of `resource`, and recomputes the link digest exactly as Verifier.feed does:
SHA-256(prev || netstrings(seq, time, stream, body, type)).

A value either scans (FLAG_OK) or is SLOW: the caller then decodes it with json.loads and judges it
the ordinary way. SLOW is always a correct answer; the native scanner answers it whenever its parse
might differ from json.loads (duplicate or escaped keys where it looks, numbers that are not plain
decimals, non-string fields, a lone surrogate in an extracted string, nesting deeper than 64, NaN,
anything that is not JSON) and for what the judge handles in Python anyway (unknown record types,
values that are not bytes). The reference answers SLOW only where the judge's own decoding would fail
or reject the record, so the contract the tests check is: whenever the native scan says OK, the
reference says OK with the same fields.

Layout: one column per field, `count` entries each, native byte order, so a caller indexes
memoryviews and creates no object per record it does not need:

    flags     uint8   FLAG_* bits
    types     uint8   index into TYPE_NAMES ("" = a log record)
    chains    uint32  index into chain_names (first appearance order among scanned records)
    idents    uint32  index into identities: tuples of the IDENTITY_FIELDS values (str, or None when
                      absent; all None when there is no resource)
    seqs      int64   seal.seq (1 <= seq < 10**18)
    prefixes  uint64  the duplicate window's key of the stated hash: its first 8 bytes, big-endian, or
                      1 when those are zero (window._prefix)
    prevs     32 bytes a record, seal.prev
    hashes    32 bytes a record, seal.hash (the stated hash)

A SLOW record has flags == FLAG_SLOW and zeros in every other column.

FLAG_FOLLOWS marks the next link of a run inside one call: the last earlier scanned record of the same
chain has seq - 1 and the stated hash this prev names, and no SLOW record lies between the two. A
caller that has just advanced the chain's head to that earlier record knows this one links without
comparing anything (ALTERED is reported apart: a chain continues from the stated hash).
"""
from __future__ import annotations

import hashlib
import json
from array import array
from dataclasses import dataclass
from typing import Sequence

from ..native import module as _native
from ..seal import SCHEMA

FLAG_OK = 1
FLAG_SLOW = 2
FLAG_ALTERED = 4          # the recomputed digest is not the stated hash
FLAG_SCHEMA_OK = 8        # schema == "audit-shipper/v1"
FLAG_EVENT_ID_OK = 16     # event_id == f"{chain}:{seq}"
FLAG_RESOURCE = 32        # a resource object is present
FLAG_FOLLOWS = 64
FLAG_ENVELOPE_OK = 128    # (batches.verify_records only) schema, event_id, key and headers as feed wants them

TYPE_NAMES = ("", "gap", "checkpoint", "close", "manifest")
IDENTITY_FIELDS = ("k8s.namespace.name", "k8s.pod.name", "k8s.pod.uid", "k8s.container.name", "k8s.node.name")
SEQ_LIMIT = 10 ** 18
NO_IDENTITY = (None,) * len(IDENTITY_FIELDS)

NATIVE = _native is not None and hasattr(_native, "verify_scan")

_TYPE_CODES = {name: code for code, name in enumerate(TYPE_NAMES)}
_HEX = frozenset("0123456789abcdefABCDEF")
_json_decode = json.JSONDecoder().decode
_sha256 = hashlib.sha256


@dataclass(slots=True, frozen=True)
class ScanResult:
    """The columns of one verify_scan call (see the module docstring), as memoryviews."""

    count: int
    flags: memoryview
    types: memoryview
    chains: memoryview
    idents: memoryview
    seqs: memoryview
    prefixes: memoryview
    prevs: bytes
    hashes: bytes
    chain_names: list[str]
    identities: list[tuple]

    @classmethod
    def from_columns(cls, columns: tuple) -> ScanResult:
        flags, types, chains, idents, seqs, prefixes, prevs, hashes, chain_names, identities = columns
        return cls(len(flags), memoryview(flags), memoryview(types), memoryview(chains).cast("I"),
                   memoryview(idents).cast("I"), memoryview(seqs).cast("q"), memoryview(prefixes).cast("Q"),
                   prevs, hashes, chain_names, identities)

    def prev(self, index: int) -> bytes:
        return self.prevs[32 * index:32 * index + 32]

    def hash(self, index: int) -> bytes:
        return self.hashes[32 * index:32 * index + 32]

    def slot(self, index: int) -> tuple:
        """One record's fields, tables resolved: (flags, type, chain, identity, seq, prefix, prev, hash);
        for comparisons and tests, not for the hot path."""
        if self.flags[index] & FLAG_SLOW:
            return (self.flags[index],)
        return (self.flags[index], TYPE_NAMES[self.types[index]], self.chain_names[self.chains[index]],
                self.identities[self.idents[index]], self.seqs[index], self.prefixes[index], self.prev(index),
                self.hash(index))


def verify_scan(values: Sequence[bytes]) -> ScanResult:
    """Scan a batch of record values (native when built, else the reference)."""
    if NATIVE:
        return ScanResult.from_columns(_native.verify_scan(values))
    return ScanResult.from_columns(verify_scan_py(values))


def verify_scan_py(values: Sequence[bytes]) -> tuple:
    """The reference: json.loads per value, then the same columns and tables as the native scan."""
    count = len(values)
    flags = bytearray(count)
    types = bytearray(count)
    chains = array("I", bytes(4 * count))
    idents = array("I", bytes(4 * count))
    seqs = array("q", bytes(8 * count))
    prefixes = array("Q", bytes(8 * count))
    prevs = bytearray(32 * count)
    hashes = bytearray(32 * count)
    chain_index: dict[str, int] = {}
    ident_index: dict[tuple, int] = {}
    last: dict[int, tuple[int, bytes, int]] = {}      # chain index -> (seq, stated hash, slow epoch)
    epoch = 0
    for index, value in enumerate(values):
        fields = _fields(value)
        if fields is None:
            flags[index] = FLAG_SLOW
            epoch += 1
            continue
        chain, seq, prev, stated, digest, type_code, identity, flag = fields
        chain_id = chain_index.setdefault(chain, len(chain_index))
        if digest != stated:
            flag |= FLAG_ALTERED
        before = last.get(chain_id)
        if before is not None and before[2] == epoch and before[0] == seq - 1 and before[1] == prev:
            flag |= FLAG_FOLLOWS
        last[chain_id] = (seq, stated, epoch)
        flags[index] = flag
        types[index] = type_code
        chains[index] = chain_id
        idents[index] = ident_index.setdefault(identity, len(ident_index))
        seqs[index] = seq
        prefixes[index] = int.from_bytes(stated[:8], "big") or 1
        prevs[32 * index:32 * index + 32] = prev
        hashes[32 * index:32 * index + 32] = stated
    return (bytes(flags), bytes(types), chains.tobytes(), idents.tobytes(), seqs.tobytes(), prefixes.tobytes(),
            bytes(prevs), bytes(hashes), list(chain_index), list(ident_index))


def _fields(value) -> tuple | None:
    """(chain, seq, prev, stated, digest, type code, identity, flags) of one value, or None: SLOW."""
    if type(value) is not bytes:
        return None
    try:
        record = _json_decode(str(value, "utf-8"))
    except (ValueError, RecursionError):
        return None
    if type(record) is not dict:
        return None
    seal = record.get("seal")
    if type(seal) is not dict:
        return None
    chain = seal.get("chain")
    seq = seal.get("seq")
    prev_hex = seal.get("prev")
    hash_hex = seal.get("hash")
    if type(chain) is not str or not chain or type(seq) is not int or not 1 <= seq < SEQ_LIMIT:
        return None
    if not _hex64(prev_hex) or not _hex64(hash_hex):
        return None
    time_b = _utf8(record.get("time"))
    stream_b = _utf8(record.get("stream"))
    body_b = _utf8(record.get("body"))
    type_ = record.get("type", "")
    type_code = _TYPE_CODES.get(type_) if type(type_) is str else None
    chain_b = _utf8(chain)
    if time_b is None or stream_b is None or body_b is None or type_code is None or chain_b is None:
        return None
    flags = FLAG_OK
    schema = record.get("schema")
    event_id = record.get("event_id")
    if type(schema) is str and _utf8(schema) is None or type(event_id) is str and _utf8(event_id) is None:
        return None
    if schema == SCHEMA:
        flags |= FLAG_SCHEMA_OK
    if event_id == f"{chain}:{seq}":
        flags |= FLAG_EVENT_ID_OK
    if "resource" in record:
        resource = record["resource"]
        if type(resource) is not dict:
            return None
        identity = []
        for name in IDENTITY_FIELDS:
            if name not in resource:
                identity.append(None)
                continue
            field = resource[name]
            if type(field) is not str or _utf8(field) is None:
                return None
            identity.append(field)
        identity_t = tuple(identity)
        flags |= FLAG_RESOURCE
    else:
        identity_t = NO_IDENTITY
    prev = bytes.fromhex(prev_hex)
    stated = bytes.fromhex(hash_hex)
    type_b = TYPE_NAMES[type_code].encode()
    seq_b = b"%d" % seq
    digest = _sha256(b"%s%d:%s,%d:%s,%d:%s,%d:%s,%d:%s," % (
        prev, len(seq_b), seq_b, len(time_b), time_b, len(stream_b), stream_b, len(body_b), body_b,
        len(type_b), type_b)).digest()
    return chain, seq, prev, stated, digest, type_code, identity_t, flags


def _hex64(text) -> bool:
    return type(text) is str and len(text) == 64 and _HEX.issuperset(text)


def _utf8(text) -> bytes | None:
    """text as UTF-8, or None when it is not a string or holds a lone surrogate (which the judge's
    .encode() would refuse)."""
    if type(text) is not str:
        return None
    try:
        return text.encode()
    except UnicodeEncodeError:
        return None
