"""Entries to sealed `audit-shipper/v1` records: the per-line hot path, behind a batch API.

`seal_entries_packed` (what the ingest stage calls) takes a whole batch of parsed entries of one chain
and returns the JSON values in one bytes object with their lengths, and the chain's new head;
`seal_entries` returns them as a list. Both run in C (shipper._native) when it is built;
`seal_entries_py` is the reference the native loop must match byte for byte. Control records (gap,
checkpoint, close, manifest) are rare and built here in Python by `seal_control`.
"""
from __future__ import annotations

import hashlib
from array import array
from dataclasses import dataclass
from json.encoder import encode_basestring  # C-accelerated JSON string quoting
from typing import Callable

from .native import module as _native
from .parse import EntryFlag, Entries
from .seal import SCHEMA, TYPE_LOG, ChainHead

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


@dataclass(slots=True, frozen=True)
class ChainContext:
    """What every record of one chain in one batch shares, pre-rendered as JSON text."""

    chain: str
    resource_json: str      # the "resource" object
    path: str               # source file the batch came from

    def templates(self) -> tuple[str, str, str]:
        chain_quoted = encode_basestring(self.chain)
        head = '{"schema":"' + SCHEMA + '","event_id":' + chain_quoted[:-1] + ':'
        source = ',"resource":' + self.resource_json + ',"source":{"path":' + encode_basestring(self.path) + ',"offset":'
        seal = '},"seal":{"chain":' + chain_quoted + ',"seq":'
        return head, source, seal


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
    head_tpl, source_tpl, seal_tpl = ctx.templates()
    correlator = getattr(process_body, "native_correlator", None)
    values, seq, digest, bad_utf8, hashes = _native.seal_entries(
        head.hash, head.seq, entries.offsets, entries.times, entries.streams, entries.bodies, entries.flags,
        head_tpl, source_tpl, seal_tpl, observed_time, correlator, correlator is not None, process_body, slow_entry,
        packed, entries.data, entries.raw, entries.ordinals)
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
    head_tpl, source_tpl, seal_tpl = ctx.templates()
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
        append((f'{head_tpl}{seq}","time":"{time_b.decode()}","observed_time":"{observed_time}",'
                f'"stream":"{_STREAM_TEXT.get(stream_b) or stream_b.decode()}","body":{quoted}{extra},'
                f'"attributes":{{{attributes}}}{source_tpl}{offset}{seal_tpl}{seq},"prev":"{prev_hex}",'
                f'"hash":"{digest_hex}"}}}}').encode())
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
    head_tpl, source_tpl, seal_tpl = ctx.templates()
    seq = head.seq + 1
    body_b = body.encode()
    type_b = type_.encode()
    time_b = time.encode()
    seq_b = b"%d" % seq
    digest = _sha256(b"%s%d:%s,%d:%s,0:,%d:%s,%d:%s," % (head.hash, len(seq_b), seq_b, len(time_b), time_b,
                                                         len(body_b), body_b, len(type_b), type_b)).digest()
    value = (f'{head_tpl}{seq}","type":"{type_}","time":"{time}","observed_time":"{time}","stream":"",'
             f'"body":{encode_basestring(body)}{extra_members},"attributes":{{}}{source_tpl}0{seal_tpl}{seq},'
             f'"prev":"{head.hash.hex()}","hash":"{digest.hex()}"}}}}').encode()
    return value, ChainHead(head.chain, seq, digest, head.tree.extend_packed(digest))
