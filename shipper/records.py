"""Entries to sealed records (`audit-shipper/v1` or `/v2`): the per-line hot path, behind a batch API.

`seal_entries_packed` (what the ingest stage calls) takes a whole batch of parsed entries of one chain
and returns the JSON values in one bytes object with their lengths, and the chain's new head;
`seal_entries` returns them as a list. Both run in C (shipper._native) when it is built;
`seal_entries_py` is the reference the native loop must match byte for byte. Control records (gap,
checkpoint, close, manifest) are rare and built here in Python by `seal_control`.

Two record formats, one chain (the seal is the same: only seq, time, stream, body and type are hashed):
- `audit-shipper/v1` (kafka.record_format: full): every member on every record.
- `audit-shipper/v2` (compact, the default): no `event_id` member (the Kafka header carries it, and it is
  `<seal.chain>:<seal.seq>`), no empty `attributes`. A log record carries either the pod's full resource
  and `source.path` (the first record of a call whose context says `full`: the ingest asks for it when
  the resource or the file changed, and at least every checkpoint interval) or the pod's identity
  (`IDENTITY_KEYS`) and `source.offset` only; a control record is a call of its own and always carries
  the full resource and its own source. A consumer that wants the full resource on every log record
  takes it from the latest log record of the same seal.chain that has `source.path`: a chain's records
  are in one partition, in order.
"""
from __future__ import annotations

import hashlib
import json
from array import array
from dataclasses import dataclass
from functools import lru_cache
from json.encoder import encode_basestring  # C-accelerated JSON string quoting
from typing import Callable

from .native import module as _native
from .parse import EntryFlag, Entries
from .seal import SCHEMA, SCHEMA_V2, TYPE_LOG, ChainHead

_sha256 = hashlib.sha256

NATIVE = _native is not None          # tests skip native comparisons without it

# body -> None (nothing to change or add) or (body after redaction, top-level JSON members such as
# ',"severity_text":"INFO","trace_id":"…"', attribute members such as '"request_id":"…"').
BodyProcessor = Callable[[str], "tuple[str, str, str] | None"]

_FLAG_ATTRIBUTES = (
    (EntryFlag.BAD_HEADER, '"log.parse_error":"cri_header"'),
    (EntryFlag.BAD_JSON, '"log.parse_error":"docker_json"'),
    (EntryFlag.BAD_UTF8, '"log.invalid_utf8":true'),
    (EntryFlag.TRUNCATED, '"log.truncated":true'),
    (EntryFlag.CONTINUED, '"log.continued":true'),
    (EntryFlag.MULTILINE, '"log.multiline":true'),
    (EntryFlag.UNTERMINATED, '"log.unterminated":true'),
)
_ATTRIBUTE_FLAGS = (EntryFlag.BAD_HEADER | EntryFlag.BAD_JSON | EntryFlag.BAD_UTF8 | EntryFlag.TRUNCATED
                    | EntryFlag.CONTINUED | EntryFlag.MULTILINE | EntryFlag.UNTERMINATED)


_STREAM_TEXT = {b"stdout": "stdout", b"stderr": "stderr"}


def flag_attributes(flags: int) -> list[str]:
    return [member for flag, member in _FLAG_ATTRIBUTES if flags & flag]


# The resource members a v2 record carries on every record: who wrote it, what verify's attribution check
# compares with the identity a signed checkpoint attests.
IDENTITY_KEYS = ("k8s.namespace.name", "k8s.pod.name", "k8s.pod.uid", "k8s.container.name",
                 "k8s.container.restart_count", "k8s.node.name")


@lru_cache(maxsize=4096)
def identity_json(resource_json: str) -> str:
    """The identity members of a resource object (JSON text), in IDENTITY_KEYS order. Cached: the provider
    hands out the same rendered text for every batch of a container."""
    resource = json.loads(resource_json)
    return json.dumps({key: resource[key] for key in IDENTITY_KEYS if key in resource}, separators=(",", ":"),
                      ensure_ascii=False)


@dataclass(slots=True, frozen=True)
class Templates:
    """A call's fixed record pieces: `head` opens a record (v1: up to the seq of its event_id); `source_first`
    holds the resource and source up to the offset for the call's first record, `source_rest` for the others
    (the same in v1, and in v2 when the context is not `full`); `seal` runs from after the offset to the seq
    of the seal."""

    head: str
    source_first: str
    source_rest: str
    seal: str
    compact: bool


@dataclass(slots=True, frozen=True)
class ChainContext:
    """What every record of one chain in one batch shares, pre-rendered as JSON text."""

    chain: str
    resource_json: str      # the "resource" object
    path: str               # source file the batch came from
    compact: bool = False   # audit-shipper/v2 (kafka.record_format: compact); False: audit-shipper/v1
    full: bool = True       # v2: the call's first record carries the full resource and source.path

    def templates(self) -> Templates:
        chain_quoted = encode_basestring(self.chain)
        seal = '},"seal":{"chain":' + chain_quoted + ',"seq":'
        first = ',"resource":' + self.resource_json + ',"source":{"path":' + encode_basestring(self.path) + ',"offset":'
        if not self.compact:
            head = '{"schema":"' + SCHEMA + '","event_id":' + chain_quoted[:-1] + ':'
            return Templates(head, first, first, seal, False)
        rest = ',"resource":' + identity_json(self.resource_json) + ',"source":{"offset":'
        return Templates('{"schema":"' + SCHEMA_V2 + '"', first if self.full else rest, rest, seal, True)


@dataclass(slots=True)
class SealStats:
    """Counts of degradations seen while sealing, for metrics."""

    invalid_utf8: int = 0
    processed: int = 0


def seal_entries(head: ChainHead, entries: Entries, ctx: ChainContext, observed_time: str,
                 process_body: BodyProcessor | None, stats: SealStats | None = None) -> tuple[list[bytes], ChainHead]:
    """Seal a batch of log entries onto `head`; returns the record values (seq head.seq+1 ...) and the new head.

    Runs in C (shipper._native) when it is built, unless SHIPPER_NATIVE=0; `seal_entries_py` is the
    reference the native code must match byte for byte. A body processor made by
    enrich.body.make_body_processor may carry `native_correlator`: then ASCII bodies that no built-in
    redaction rule could touch get their ids in C as well."""
    if _native is None:
        return seal_entries_py(head, entries, ctx, observed_time, process_body, stats)
    return _seal_native(head, entries, ctx, observed_time, process_body, stats, packed=False)


def seal_entries_packed(head: ChainHead, entries: Entries, ctx: ChainContext, observed_time: str,
                        process_body: BodyProcessor | None, stats: SealStats | None = None
                        ) -> tuple[bytes, array, ChainHead]:
    """seal_entries with the records in one bytes object and their lengths in an array('I') (what a
    WAL frame holds): no object per record."""
    if _native is None:
        values, head = seal_entries_py(head, entries, ctx, observed_time, process_body, stats)
        return b"".join(values), array("I", map(len, values)), head
    (blob, length_bytes), new_head = _seal_native(head, entries, ctx, observed_time, process_body, stats, packed=True)
    lengths = array("I")
    lengths.frombytes(length_bytes)
    return blob, lengths, new_head


def _seal_native(head: ChainHead, entries: Entries, ctx: ChainContext, observed_time: str,
                 process_body: BodyProcessor | None, stats: SealStats | None, packed: bool):
    """_native.seal_entries: (values, or (blob, lengths as bytes) when packed; the new head)."""
    tpl = ctx.templates()
    correlator = getattr(process_body, "native_correlator", None)
    values, seq, digest, bad_utf8, hashes = _native.seal_entries(
        head.hash, head.seq, entries.offsets, entries.times, entries.streams, entries.bodies, entries.flags,
        tpl.head, tpl.source_first, tpl.source_rest, tpl.seal, tpl.compact, observed_time, correlator,
        correlator is not None, process_body, slow_entry, packed, entries.data, entries.raw, entries.ordinals)
    if stats is not None:
        stats.invalid_utf8 += bad_utf8
        stats.processed += len(entries)
    return values, ChainHead(head.chain, seq, digest, head.tree.extend_packed(hashes))


def slow_entry(body_b: bytes, process_body: BodyProcessor | None) -> tuple[bytes, str, str, str, bool]:
    """One entry's body stage in Python, for the native loop: (body as hashed, body as JSON text, top-level
    members, attribute members, whether the body was invalid UTF-8)."""
    bad_utf8 = False
    try:
        body = body_b.decode()
    except UnicodeDecodeError:
        body = body_b.decode("utf-8", "replace")
        body_b = body.encode()
        bad_utf8 = True
    extra = attributes = ""
    if process_body is not None:
        result = process_body(body)
        if result is not None:
            new_body, extra, attributes = result
            if new_body is not body:
                body = new_body
                body_b = body.encode()
    return body_b, encode_basestring(body), extra, attributes, bad_utf8


def seal_entries_py(head: ChainHead, entries: Entries, ctx: ChainContext, observed_time: str,
                    process_body: BodyProcessor | None, stats: SealStats | None = None) -> tuple[list[bytes], ChainHead]:
    """The reference implementation of seal_entries."""
    entries.materialize()
    tpl = ctx.templates()
    head_tpl, source_tpl, seal_tpl, compact = tpl.head, tpl.source_first, tpl.seal, tpl.compact
    observed_b = observed_time.encode()
    prev = head.hash
    prev_hex = prev.hex()
    seq = head.seq
    values: list[bytes] = []
    append = values.append
    hashes: list[bytes] = []
    sha = _sha256
    bad_utf8 = 0
    for offset, time_b, stream_b, body_b, flags in zip(entries.offsets, entries.times, entries.streams,
                                                       entries.bodies, entries.flags):
        seq += 1
        body_b, quoted, extra, attributes, invalid = slow_entry(body_b, process_body)
        if invalid:
            flags |= EntryFlag.BAD_UTF8
            bad_utf8 += 1
        if flags & _ATTRIBUTE_FLAGS:
            members = flag_attributes(flags)
            if attributes:
                members.append(attributes)
            attributes = ",".join(members)
        if not time_b:
            time_b = observed_b
        seq_b = b"%d" % seq
        digest = sha(b"%s%d:%s,%d:%s,%d:%s,%d:%s,0:," % (prev, len(seq_b), seq_b, len(time_b), time_b,
                                                         len(stream_b), stream_b, len(body_b), body_b)).digest()
        digest_hex = digest.hex()
        event_id = "" if compact else f'{seq}"'
        attributes_member = f',"attributes":{{{attributes}}}' if attributes or not compact else ""
        append((f'{head_tpl}{event_id},"time":"{time_b.decode()}","observed_time":"{observed_time}",'
                f'"stream":"{_STREAM_TEXT.get(stream_b) or stream_b.decode()}","body":{quoted}{extra}'
                f'{attributes_member}{source_tpl}{offset}{seal_tpl}{seq},"prev":"{prev_hex}",'
                f'"hash":"{digest_hex}"}}}}').encode())
        source_tpl = tpl.source_rest
        hashes.append(digest)
        prev = digest
        prev_hex = digest_hex
    if stats is not None:
        stats.invalid_utf8 += bad_utf8
        stats.processed += len(values)
    return values, ChainHead(head.chain, seq, prev, head.tree.extend_packed(b"".join(hashes)))


def seal_control(head: ChainHead, type_: str, body: str, ctx: ChainContext, time: str,
                 extra_members: str = "") -> tuple[bytes, ChainHead]:
    """One control record (gap, checkpoint, close, manifest) at head.seq + 1. `extra_members` adds structured
    copies of what the body says (outside the hash: the body is the evidence)."""
    assert type_ != TYPE_LOG
    tpl = ctx.templates()
    seq = head.seq + 1
    body_b = body.encode()
    type_b = type_.encode()
    time_b = time.encode()
    seq_b = b"%d" % seq
    digest = _sha256(b"%s%d:%s,%d:%s,0:,%d:%s,%d:%s," % (head.hash, len(seq_b), seq_b, len(time_b), time_b,
                                                         len(body_b), body_b, len(type_b), type_b)).digest()
    # A control record is a call of its own: the full resource and the path (v2 too). Its empty stream
    # stays: it is hashed, and a reader takes every record's stream from the record.
    event_id = "" if tpl.compact else f'{seq}"'
    attributes = "" if tpl.compact else ',"attributes":{}'
    value = (f'{tpl.head}{event_id},"type":"{type_}","time":"{time}","observed_time":"{time}","stream":"",'
             f'"body":{encode_basestring(body)}{extra_members}{attributes}{tpl.source_first}0{tpl.seal}{seq},'
             f'"prev":"{head.hash.hex()}","hash":"{digest.hex()}"}}}}').encode()
    return value, ChainHead(head.chain, seq, digest, head.tree.extend_packed(digest))
