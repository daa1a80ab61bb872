"""The judge of `shipper verify`: how the hash chains, checkpoints and manifests of a topic are judged.

A pure, streaming core (`Verifier`) is fed one record value at a time (or a partition's records in bulk,
decoded and scanned in C: `feed_scanned`, the same verdicts), in topic order per partition,
and keeps per chain only its head, counters, its last good checkpoint, a few open "missing" ranges and
a bounded window of seq -> hash prefix (ring arrays, 16 bytes a slot). Memory is bounded by the number
of chains times the window, never by the size of the topic. No I/O here: inputs.py feeds it from Kafka
or files, command.py is the command line.

How a record is judged (each rule is named by a test in tests/unit/test_verify.py):
- ALTERED: link(prev, seq, time, stream, body, type) != the stated hash. The chain continues from the
  stated hash, so one altered record is one violation, not a cascade.
- LINKED: seq = head + 1 and prev = the head's hash (h0 = genesis for seq 1); otherwise BROKEN_LINK.
- JUMP: seq > head + 1 opens a missing range. At the end a range is MISSING (deleted) unless gap records
  declare every seq of it (`missing_seq`, and the hash of its last seq equals the next record's prev).
  The range before a chain's first record is STARTS_AT_SEQ (retention, or a verify of a partial dump).
- REORDERED: a record that fills a missing range later, linking to the record before the range; it names
  the seq it arrived after. If the next record of the chain re-sends that later seq exactly, the pattern
  is a crash replay (the shipper resent its WAL), not a reorder: a finding.
- DUPLICATES: seq <= head, found in the window: same hash and re-hashes correctly = exact (harmless
  replay); different hash = CONFLICTING (tampering). A seq older than the window cannot be judged and is
  a violation that names the window size needed.
- CHECKPOINTS: a signed note over (chain, seq - 1, head before it); signature good by a known key, bad,
  unknown key, unsigned (a violation when public keys are given) or unchecked (no keys given); the
  statement must match the chain. Records after the last good checkpoint are an unattested tail
  (a violation only with require_attested). Legacy statements and SPEC-15 notes are both accepted; a
  note's signature line matches a key by name and key hash.
- TREE (notes): the verifier folds each chain's record hashes, from its first seq while the chain is
  contiguous, into an RFC 6962 frontier; a trusted checkpoint whose tree covers exactly those records
  must have the same root (TREE_MISMATCH), else its tree is unchecked (a finding). A tree restarted by
  an upgraded shipper is rebuilt from the last tree.RECENT_LEAVES leaves when it starts among them.
- ATTRIBUTION (notes): every record of a container chain must carry, in its resource, the identity
  (namespace, pod, pod uid, container, node) its trusted checkpoints attest, else MISATTRIBUTED names
  it; records before the first such checkpoint wait in buckets by distinct identity (bounded).
  Checkpoints of one chain attesting different identities: IDENTITY_MISMATCH.
- STALE: with a `now`, a chain not closed (or a node chain) whose latest trusted attestation is older
  than stale_after_s is a finding.
- TRUSTED HEADS: heads saved by an earlier run (trust_heads) are claims like a manifest's: the topic
  must hold the chain up to them (TAIL_REMOVED) with the same record there (TRUSTED_HEAD_MISMATCH).
- MANIFESTS (chain `node/<node>`, type `manifest`): signed lists of chain heads; at the end every
  attested head must be in the topic, else TAIL_REMOVED names the chain and the removed seqs.
- CLOSE: nothing but checkpoints may follow a close record; a closed chain whose close is attested by a
  good checkpoint, starting at seq 1 and without violations, is proven complete.
"""
from __future__ import annotations

import calendar
import hashlib
import json
import re
import time
from collections import Counter
from typing import Any, Callable, Iterable

from ..seal import (CHAIN_ORIGIN_PREFIX, NODE_ORIGIN_PREFIX, SCHEMA, SCHEMA_V2, TYPE_CHECKPOINT, TYPE_CLOSE,
                    TYPE_GAP, TYPE_MANIFEST, BadCheckpoint, BadManifest, genesis_hash, link, parse_checkpoint,
                    parse_checkpoint_note, parse_manifest, parse_manifest_note)
from .attribution import NO_IDENTITY, attested_identity
from .closing import Closing, _partition_label
from .chain import MANIFEST_CHAIN_PREFIX, NO_PARTITION, ChainState, Claim, Missing, RelayedClaim
from .report import (AFTER_CLOSE, ALTERED, BAD_SIGNATURE, BROKEN_LINK, CHECKPOINT_MISMATCH, CONFLICTING_DUPLICATE,
                     CONTINUES_FROM_COPY, ENVELOPE_MISMATCH, GAP, GAP_MISMATCH, GAP_RECORD_PRESENT, IDENTITY_MISMATCH,
                     ISSUES_KEPT_PER_CHAIN, KEY_ALIAS, MALFORMED, MANIFEST_MISMATCH, MISATTRIBUTED,
                     MULTIPLE_PARTITIONS, OUT_OF_WINDOW, REORDERED, REPLAYED_LATE, TREE_MISMATCH,
                     TRUSTED_HEAD_MISMATCH, UNKNOWN_KEY, UNSIGNED, Issue, Report, _where)
from .signatures import BAD, GOOD, UNCHECKED, UNKNOWN, UNSIGNED as NOT_SIGNED, KeyRing
from .tree import PENDING_MAX
from .window import _prefix

CONTROL_TYPES = frozenset((TYPE_GAP, TYPE_CHECKPOINT, TYPE_CLOSE, TYPE_MANIFEST))
DEFAULT_WINDOW = 100_000
DEFAULT_MAX_OPEN_RANGES = 10_000
DEFAULT_MAX_DECLARED = 100_000
DEFAULT_STALE_AFTER_S = 900.0
_RFC3339 = re.compile(r"(\d{4})-(\d\d)-(\d\d)[Tt](\d\d):(\d\d):(\d\d)(\.\d{1,9})?([Zz]|[+-]\d\d:\d\d)")


_json_decode = json.JSONDecoder().decode
_sha256 = hashlib.sha256


def _headers_match(headers: Iterable[tuple[str, bytes]], event_id: str, schema: object) -> bool:
    header_schema = event = None
    for header_key, header_value in headers:
        if header_key == "schema":
            header_schema = header_value
        elif header_key == "event_id":
            event = header_value
    return header_schema == _schema_header(schema) and event == event_id.encode()


# The record formats (records.py): the `schema` header names the value's own. A v1 value holds its
# event_id; a v2 value leaves it to the header.
_SCHEMA_BYTES = {SCHEMA: SCHEMA.encode(), SCHEMA_V2: SCHEMA_V2.encode()}


def _schema_header(schema: object) -> bytes | None:
    """The `schema` header a value naming `schema` goes with (None: no known format)."""
    return _SCHEMA_BYTES.get(schema) if type(schema) is str else None


def rfc3339_epoch(text: object) -> float | None:
    """Seconds since the epoch of an RFC 3339 time (nanoseconds allowed); None when it is not one."""
    match = _RFC3339.fullmatch(text) if isinstance(text, str) else None
    if match is None:
        return None
    year, month, day, hour, minute, second = (int(part) for part in match.groups()[:6])
    try:
        seconds = calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0))
    except (ValueError, OverflowError):
        return None
    if not (1 <= month <= 12 and 1 <= day <= 31 and hour < 24 and minute < 60 and second < 61):
        return None
    zone = match.group(8)
    if zone not in ("Z", "z"):
        sign = 1 if zone[0] == "+" else -1
        seconds -= sign * (int(zone[1:3]) * 3600 + int(zone[4:6]) * 60)
    return seconds + (float(match.group(7)) if match.group(7) else 0.0)


# how _place judged a record
_EXACT, _CONFLICT, _NEW, _FILL, _UNJUDGED = range(5)


class Verifier(Closing):
    """Feed record values in topic order (per partition), then `finish()` for the report.

    public_keys: key id -> Ed25519 public key (see load_public_keys); none = signatures unchecked.
    window: seqs per chain remembered to classify duplicates (two ring arrays, 16 bytes a slot).
    max_open_ranges / max_declared: bounds on missing ranges and gap declarations kept per chain.
    """

    def __init__(self, public_keys: dict[str, Any] | None = None, *, window: int = DEFAULT_WINDOW,
                 require_attested: bool = False, require_complete: bool = False, allow_absent_chains: bool = False,
                 max_open_ranges: int = DEFAULT_MAX_OPEN_RANGES, max_declared: int = DEFAULT_MAX_DECLARED,
                 now: float | None = None, stale_after_s: float = DEFAULT_STALE_AFTER_S) -> None:
        if window < 1:
            raise ValueError("window must be at least 1")
        self.keys = KeyRing(public_keys)
        self.public_keys = self.keys.keys
        self.now = now
        self.stale_after_s = stale_after_s
        self.trusted_heads: dict[str, tuple[int, dict]] = {}
        self.window = window
        self.require_attested = require_attested
        self.require_complete = require_complete
        self.allow_absent_chains = allow_absent_chains
        self.max_open_ranges = max(1, max_open_ranges)
        self.max_declared = max_declared
        self.chains: dict[str, ChainState] = {}
        self.records = 0
        self.violations: list[Issue] = []
        self.violation_counts: Counter = Counter()
        self.findings: list[Issue] = []
        self._where: tuple = (None, None, None)
        self._finished: Report | None = None
        #: called with (issue, is a violation) as each is found (follow mode reports them as they come)
        self.on_issue: Callable[[Issue, bool], None] | None = None

    # -- bookkeeping ---------------------------------------------------------------------------------
    def window_size(self, chain: str) -> int:
        """Slots the chain's duplicate window holds now (never more than `window`)."""
        state = self.chains.get(chain)
        return len(state.window) if state else 0

    def open_ranges(self, chain: str) -> int:
        state = self.chains.get(chain)
        return len(state.ranges) if state else 0

    def _state(self, name: str) -> ChainState:
        state = self.chains.get(name)
        if state is None:
            state = self.chains[name] = ChainState(name, self.window)
        return state

    def _violation(self, state: ChainState | None, kind: str, seq: int | None, detail: str, where: tuple | None = None,
                   seq_last: int | None = None) -> None:
        topic, partition, offset = where if where is not None else self._where
        issue = Issue(kind, state.name if state else None, seq, topic, partition, offset, detail, seq_last)
        if self.on_issue is not None:
            self.on_issue(issue, True)
        if state is None:
            self.violation_counts[kind] += 1
            if len(self.violations) < 1000:
                self.violations.append(issue)
            return
        state.violation_counts[kind] += 1
        if len(state.violations) < ISSUES_KEPT_PER_CHAIN:
            state.violations.append(issue)

    def _finding(self, state: ChainState, kind: str, seq: int | None, detail: str, where: tuple | None = None,
                 seq_last: int | None = None) -> None:
        topic, partition, offset = where if where is not None else self._where
        issue = Issue(kind, state.name, seq, topic, partition, offset, detail, seq_last)
        if self.on_issue is not None:
            self.on_issue(issue, False)
        state.finding_counts[kind] += 1
        if len(state.findings) < ISSUES_KEPT_PER_CHAIN:
            state.findings.append(issue)

    def add_violation(self, kind: str, detail: str, topic: str | None = None, partition: int | None = None,
                      offset: int | None = None) -> None:
        """A violation an edge found (a partition not read to its end, an unreadable line)."""
        self._violation(None, kind, None, detail, (topic, partition, offset))

    # -- feeding -------------------------------------------------------------------------------------
    def feed(self, value: bytes | str | dict, key: bytes | str | None = None, partition: int | None = None,
             offset: int | None = None, *, topic: str | None = None,
             headers: Iterable[tuple[str, bytes]] | None = None) -> None:
        """One record value (JSON bytes, or an already decoded object) and where it sits. Records of one
        partition must come in offset order; partitions may interleave."""
        if self._finished is not None:
            raise RuntimeError("the verifier has finished")
        self.records += 1
        where = self._where = (topic, partition, offset)
        try:
            if isinstance(value, dict):
                record = value
            else:
                # decode first: json.loads on bytes spends a tenth of the time guessing the encoding
                record = _json_decode(value if isinstance(value, str) else str(value, "utf-8"))
            seal = record["seal"]
            name = seal["chain"]
            seq = seal["seq"]
            prev_hex = seal["prev"]
            hash_hex = seal["hash"]
            type_ = record.get("type", "")
            if type(seq) is not int or seq < 1 or type(name) is not str or not name:
                raise TypeError("seal.seq must be an integer >= 1 and seal.chain a non-empty string")
            name.encode()       # a lone surrogate in the name: malformed here, not a crash further on
            if len(prev_hex) != 64 or len(hash_hex) != 64:
                raise ValueError("seal.prev and seal.hash must be 64 hex digits")
            prev = bytes.fromhex(prev_hex)
            stated = bytes.fromhex(hash_hex)
            body = record["body"]
            # seal.link, inlined for the hot path (the test suite checks both agree)
            body_b = body.encode()
            time_b = record["time"].encode()
            stream_b = record["stream"].encode()
            type_b = type_.encode()
            seq_b = b"%d" % seq
            digest = _sha256(b"%s%d:%s,%d:%s,%d:%s,%d:%s,%d:%s," % (
                prev, len(seq_b), seq_b, len(time_b), time_b, len(stream_b), stream_b, len(body_b), body_b,
                len(type_b), type_b)).digest()
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
            # RecursionError: json.loads of a value nested thousands deep, which only a rewrite writes
            self._violation(None, MALFORMED, None, f"not an audit-shipper/v1 or /v2 record: {_short(exc)}")
            return
        state = self.chains.get(name)
        if state is None:
            state = self.chains[name] = ChainState(name, self.window)
        if state.partition != (topic, partition):
            self._note_partition(state, topic, partition)
        event_id = f"{name}:{seq}"
        schema = record.get("schema")
        if not (record.get("event_id") == event_id if schema == SCHEMA
                else schema == SCHEMA_V2 and "event_id" not in record) \
                or (key is not None and key != state.key and key != name) \
                or (headers is not None and not _headers_match(headers, event_id, schema)):
            self._check_envelope(state, record, name, seq, key, headers)
        state.records += 1
        if digest != stated:
            self._violation(state, ALTERED, seq, "its time, stream, body or type does not hash to its stated hash: "
                                                 "the record was changed")
        attribution = state.attribution
        if attribution is not None:
            resource = record.get("resource")
            identity = (resource.get("k8s.namespace.name", ""), resource.get("k8s.pod.name", ""),
                        resource.get("k8s.pod.uid", ""), resource.get("k8s.container.name", ""),
                        resource.get("k8s.node.name", "")) if type(resource) is dict else NO_IDENTITY
            if identity != attribution.identity:
                bucket = attribution.recent
                if bucket is not None and bucket[2] == identity:
                    bucket[0] += 1
                    if len(bucket[1]) < ISSUES_KEPT_PER_CHAIN:
                        bucket[1].append((seq, where))
                else:
                    carried = attribution.observe(seq, identity, resource, where)
                    if carried is not None:
                        self._violation(state, MISATTRIBUTED, seq, attribution.misattributed_detail(carried))
        if seq == state.head_seq + 1 and prev == state.head_hash:
            # the common case, kept free of calls: the next link of the chain
            state.links += 1
            if state.first_seq is None:
                state.first_seq = seq
            state.head_seq = seq
            state.head_hash = stated
            if state.head_alternatives:
                state.head_alternatives = []
            tree = state.tree
            if seq == tree.next:
                pending = tree.pending
                if len(pending) >= PENDING_MAX:
                    tree.fold()
                    pending = tree.pending
                pending += stated
                tree.next = seq + 1
            else:
                tree.add(seq, stated)
            window = state.window
            index = seq % window.capacity
            if seq == window.high + 1 and index < len(window.hashes):
                window.hashes[index] = int.from_bytes(stated[:8], "big") or 1
                window.offsets[index] = offset if offset is not None else -1
                window.high = seq
            else:
                window.put(seq, _prefix(stated), offset if offset is not None else -1)
            verdict = _NEW
        else:
            verdict = self._place(state, seq, prev, stated, where)
        if state.just_filled is not None and verdict != _FILL:
            self._judge_fill(state, replayed=verdict == _EXACT and seq == state.just_filled.after_seq)
        if verdict == _EXACT or verdict == _CONFLICT or verdict == _UNJUDGED:
            return
        if type_:
            state.control[type_] += 1
            if state.closed_at is not None and seq > state.closed_at and type_ != TYPE_CHECKPOINT:
                self._violation(state, AFTER_CLOSE, seq, f"a {type_} record after the close record (seq "
                                                         f"{state.closed_at})")
            if type_ == TYPE_CHECKPOINT:
                self._checkpoint(state, seq, prev, body, record)
            elif type_ == TYPE_GAP:
                self._gap(state, seq, body)
            elif type_ == TYPE_CLOSE:
                if state.closed_at is None:
                    state.closed_at = seq
            elif type_ == TYPE_MANIFEST:
                self._manifest(state, seq, prev, body, record)
            else:
                self._violation(state, MALFORMED, seq, f"unknown record type {type_!r}")
        else:
            state.log_records += 1
            if state.closed_at is not None and seq > state.closed_at:
                self._violation(state, AFTER_CLOSE, seq, f"a log record after the close record (seq "
                                                         f"{state.closed_at})")
        if seq == state.claim_seq:
            self._check_claim(state, seq, stated)
        if state.trusted is not None and seq == state.trusted.seq:
            self._check_trusted(state, seq, stated)

    def feed_scanned(self, scanned: Any, topic: str | None, partition: int | None) -> None:
        """The records of one partition read in bulk, in offset order (a batches.RecordScan: the columns of
        scan.py, each record's offset, and the runs of plain log records of one chain and identity that each
        link to the one before): the same verdicts as `feed` of every record in that order. A run whose
        chain stands where feed's common path would take each of its records (the run continues the head
        in the same partition, no fill waits to be judged, the chain is not closed, the identity is the
        attested or the recent one) is judged at once: counters, head, duplicate window and Merkle leaves by
        slices, and a seq a manifest or saved head attests checked after it. Every other record goes through `feed`, its
        value, key and headers read again (`scanned.record(index)`)."""
        if self._finished is not None:
            raise RuntimeError("the verifier has finished")
        runs = scanned.runs
        identities = [tuple("" if value is None else value for value in seen) for seen in scanned.identities]
        position = 0
        for index in range(0, len(runs), 2):
            start, end = runs[index], runs[index + 1]
            for single in range(position, start):
                self._feed_scanned_record(scanned, single, topic, partition)
            self._feed_run(scanned, start, end, topic, partition, identities[scanned.idents[start]])
            position = end
        for single in range(position, scanned.count):
            self._feed_scanned_record(scanned, single, topic, partition)

    def _feed_scanned_record(self, scanned: Any, index: int, topic: str | None, partition: int | None) -> None:
        record = scanned.record(index)
        self.feed(record.value, record.key, partition, record.offset, topic=topic, headers=record.headers)

    def _feed_run(self, scanned: Any, start: int, end: int, topic: str | None, partition: int | None,
                  identity: tuple) -> None:
        """Records start..end-1 of a run: judged at once from the first whose chain allows it."""
        name = scanned.chain_names[scanned.chains[start]]
        seqs = scanned.seqs
        location = (topic, partition)
        while start < end:
            state = self.chains.get(name)
            first = seqs[start]
            bucket = None
            runnable = (state is not None and state.partition == location and state.just_filled is None
                        and state.closed_at is None and first == state.head_seq + 1
                        and scanned.prevs[32 * start:32 * start + 32] == state.head_hash)
            if runnable and state.attribution is not None and identity != state.attribution.identity:
                bucket = state.attribution.recent
                runnable = bucket is not None and bucket[2] == identity
            if not runnable:
                self._feed_scanned_record(scanned, start, topic, partition)
                start += 1
                continue
            # a seq a manifest or a saved head attests ends the part judged at once: feed checks it last
            stop = end
            claim_seq = state.claim_seq
            trusted_seq = state.trusted.seq if state.trusted is not None else 0
            if claim_seq >= first or trusted_seq >= first:
                last_seq = first + end - start - 1
                for special in (claim_seq, trusted_seq):
                    if first <= special <= last_seq:
                        stop = min(stop, start + special - first + 1)
            self._judge_run(state, scanned, start, stop, topic, partition, bucket)
            if claim_seq >= first or trusted_seq >= first:
                last_seq = seqs[stop - 1]
                if last_seq == claim_seq:
                    self._check_claim(state, last_seq, state.head_hash)
                if last_seq == trusted_seq:
                    self._check_trusted(state, last_seq, state.head_hash)
            start = stop

    def _judge_run(self, state: ChainState, scanned: Any, start: int, stop: int, topic: str | None,
                   partition: int | None, bucket: list | None) -> None:
        """What feed's common path does for each of records start..stop-1, each the next link of the chain."""
        count = stop - start
        last = stop - 1
        seqs = scanned.seqs
        first = seqs[start]
        self.records += count
        state.records += count
        state.links += count
        state.log_records += count
        if state.first_seq is None:
            state.first_seq = first
        if bucket is not None:
            bucket[0] += count
            kept = bucket[1]
            for index in range(start, min(stop, start + ISSUES_KEPT_PER_CHAIN - len(kept))):
                kept.append((seqs[index], (topic, partition, scanned.offsets[index])))
        hashes = scanned.hashes
        head_seq = state.head_seq = seqs[last]
        head_hash = state.head_hash = hashes[32 * last:32 * stop]
        if state.head_alternatives:
            state.head_alternatives = []
        offset = scanned.offsets[last]
        tree = state.tree
        window = state.window
        if count == 1:
            # a run of one (chains interleaved record by record): feed's own inline steps, no calls
            if head_seq == tree.next:
                pending = tree.pending
                if len(pending) >= PENDING_MAX:
                    tree.fold()
                    pending = tree.pending
                pending += head_hash
                tree.next = head_seq + 1
            elif tree.next:
                tree.add(head_seq, head_hash)
            index = head_seq % window.capacity
            if head_seq == window.high + 1 and index < len(window.hashes):
                window.hashes[index] = scanned.prefixes[last]
                window.offsets[index] = offset
                window.high = head_seq
            else:
                window.put(head_seq, scanned.prefixes[last], offset)
            self._where = (topic, partition, offset)
            return
        if tree.next == first:
            tree.add_packed(first, memoryview(hashes)[32 * start:32 * stop])
        elif tree.next:
            for index in range(start, stop):
                seq = seqs[index]
                if seq == tree.next:
                    tree.add_packed(seq, hashes[32 * index:32 * index + 32])
                else:
                    tree.add(seq, hashes[32 * index:32 * index + 32])
        if window.high == first - 1:
            window.put_run(first, scanned.prefixes[start:stop], scanned.offsets[start:stop])
        else:
            for index in range(start, stop):
                window.put(seqs[index], scanned.prefixes[index], scanned.offsets[index])
        self._where = (topic, partition, offset)

    def _check_envelope(self, state: ChainState, record: dict, name: str, seq: int, key, headers) -> None:
        """What sits outside the hash but consumers rely on: the schema, the dedupe id, the partition key. A v2
        value has no event_id (the header has it); one it holds all the same must be the seal's."""
        event_id = f"{name}:{seq}"
        problems: list[str] = []
        schema = record.get("schema")
        if _schema_header(schema) is None:
            problems.append(f"schema {schema!r}")
        if (schema != SCHEMA_V2 or "event_id" in record) and record.get("event_id") != event_id:
            problems.append(f"event_id {record.get('event_id')!r}")
        if key is not None:
            key_text = key.decode("utf-8", "replace") if isinstance(key, (bytes, bytearray)) else key
            if key_text != name:
                problems.append(f"record key {key_text!r}")
        if headers is not None:
            seen = {header_key: header_value for header_key, header_value in headers}
            if seen.get("schema") != (_schema_header(schema) or _SCHEMA_BYTES[SCHEMA]):
                problems.append(f"schema header {seen.get('schema')!r}")
            if seen.get("event_id") != event_id.encode():
                problems.append(f"event_id header {seen.get('event_id')!r}")
        if problems:
            self._violation(state, ENVELOPE_MISMATCH, seq, "does not match the seal: " + ", ".join(problems))

    def _note_partition(self, state: ChainState, topic: str | None, partition: int | None) -> None:
        location = (topic, partition)
        if state.partition != NO_PARTITION and location not in state.partitions:
            self._finding(state, MULTIPLE_PARTITIONS, None,
                          f"chain found in {_partition_label(*location)} after {_partition_label(*state.partition)}: "
                          "order across partitions is not defined (were partitions added to the topic?)")
        if location not in state.partitions:
            state.partitions.append(location)
        state.partition = location

    # -- placing a record in its chain ---------------------------------------------------------------
    def _place(self, state: ChainState, seq: int, prev: bytes, stated: bytes, where: tuple) -> int:
        head = state.head_seq
        if seq == head + 1:
            if prev == state.head_hash:
                state.links += 1
            elif prev in state.head_alternatives:
                state.links += 1
                self._finding(state, CONTINUES_FROM_COPY, head,
                              f"seq {seq} links to the other record with seq {head}: that one is in the chain")
            elif head == 0:
                self._violation(state, BROKEN_LINK, seq, "the first record does not link to the chain's genesis hash")
            else:
                self._violation(state, BROKEN_LINK, seq, f"prev is not the hash of seq {head}: a record was inserted, "
                                                         f"replaced or re-hashed before it")
            if state.first_seq is None:
                state.first_seq = seq
            self._advance(state, seq, stated, where)
            return _NEW
        if seq > head:
            if state.first_seq is None:
                state.first_seq = seq
                self._open_range(state, Missing(1, seq - 1, genesis_hash(state.name), seq, prev, where, True))
            else:
                self._open_range(state, Missing(head + 1, seq - 1, state.head_hash, seq, prev, where, False))
            self._advance(state, seq, stated, where)
            return _NEW
        # seq <= head: a duplicate, a late record, or one too old to judge
        window = state.window
        covered = window.covers(seq)
        if covered:
            known, known_offset = window.get(seq)
            if known:
                if known == _prefix(stated):
                    state.dups_exact += 1
                    return _EXACT
                state.dups_conflicting += 1
                first = _where(*state.partition, known_offset) if known_offset >= 0 else "earlier"
                self._violation(state, CONFLICTING_DUPLICATE, seq,
                                f"a second, different record with seq {seq} (the first is at {first})")
                if seq == head and len(state.head_alternatives) < 8:
                    state.head_alternatives.append(stated)
                return _CONFLICT
        for missing in state.ranges:
            if missing.lo <= seq <= missing.hi:
                return self._fill(state, missing, seq, prev, stated, where)
        if covered:
            self._violation(state, REORDERED, seq, f"arrived after seq {head}, after its place was judged missing")
        else:
            self._violation(state, OUT_OF_WINDOW, seq, f"arrived after seq {head}, older than the duplicate window "
                                                       f"({self.window} seqs): re-run with --window {head - seq + 1} "
                                                       "or more to judge it")
        return _UNJUDGED

    def _advance(self, state: ChainState, seq: int, stated: bytes, where: tuple) -> None:
        state.head_seq = seq
        state.head_hash = stated
        if state.head_alternatives:
            state.head_alternatives = []
        state.window.put(seq, _prefix(stated), where[2] if where[2] is not None else -1)
        if state.first_seq == seq and state.tree.start == 1 and seq > 1:
            state.tree.starts_at(seq)
        state.tree.add(seq, stated)

    def _check_tree(self, state: ChainState, seq: int, what: str, size: int, root: bytes) -> None:
        """The tree a trusted checkpoint (or manifest) at `seq` states: `size` leaves ending at seq - 1."""
        ok, reason = state.tree.judge(seq, size, root)
        if ok is None:
            state.tree.note_unchecked(seq, self._where, reason)
        elif not ok:
            self._violation(state, TREE_MISMATCH, seq, f"the {what}'s Merkle root over seqs {seq - size}..{seq - 1} "
                            "is not that of those records in the topic: a record was changed, inserted, removed or "
                            "reordered")

    def _open_range(self, state: ChainState, missing: Missing) -> None:
        if missing.lo > missing.hi:
            return
        missing.opened_at = time.monotonic()
        state.ranges.append(missing)
        if len(state.ranges) > self.max_open_ranges:
            self._close_range(state, state.ranges.pop(0), sorted(state.declared))

    def _fill(self, state: ChainState, missing: Missing, seq: int, prev: bytes, stated: bytes, where: tuple) -> int:
        """A record inside a missing range arrived late."""
        offset = where[2] if where[2] is not None else -1
        if seq == missing.lo:
            if missing.expected_prev is not None and prev != missing.expected_prev:
                self._violation(state, BROKEN_LINK, seq, f"a late record that does not link to seq {seq - 1}")
                return _UNJUDGED
            state.links += 1
            state.window.put(seq, _prefix(stated), offset)
            state.tree.add(seq, stated)
            missing.lo = seq + 1
            missing.expected_prev = stated
            missing.filled += 1
            if missing.fill_where is None:
                missing.fill_where = where
            if missing.lo > missing.hi:
                state.ranges.remove(missing)
                self._range_filled(state, missing, stated)
            return _FILL
        # Its predecessor is still missing: the range splits around it, and it becomes the first late
        # arrival of the part after it.
        state.window.put(seq, _prefix(stated), offset)
        state.tree.add(seq, stated)
        if missing.filled:
            self._report_fill(state, missing, replayed=False)
            missing.filled, missing.first_lo, missing.fill_where = 0, missing.lo, None
        late = Missing(seq + 1, missing.hi, stated, missing.after_seq, missing.after_prev, missing.after_where, False)
        late.first_lo, late.filled, late.fill_where = seq, 1, where
        missing.hi = seq - 1
        missing.after_seq, missing.after_prev, missing.after_where = seq, prev, where
        if late.lo <= late.hi:
            state.ranges.append(late)
        else:
            self._range_filled(state, late, stated)
        return _FILL

    def _range_filled(self, state: ChainState, missing: Missing, last_hash: bytes) -> None:
        """The last seq of a range arrived: it must link forward, and the next record says whether this
        was a reorder or a crash replay."""
        if last_hash == missing.after_prev:
            state.links += 1
        else:
            self._violation(state, BROKEN_LINK, missing.after_seq,
                            f"prev is not the hash of seq {missing.after_seq - 1} (which arrived late)",
                            missing.after_where)
        if state.just_filled is not None:
            self._judge_fill(state, replayed=False)
        state.just_filled = missing

    def _judge_fill(self, state: ChainState, replayed: bool) -> None:
        missing = state.just_filled
        state.just_filled = None
        if missing is not None:
            self._report_fill(state, missing, replayed)

    def _report_fill(self, state: ChainState, missing: Missing, replayed: bool) -> None:
        last = missing.first_lo + missing.filled - 1
        seqs = f"seq {missing.first_lo}" if last == missing.first_lo else f"seqs {missing.first_lo}..{last}"
        after = f"seq {missing.after_seq} ({_where(*missing.after_where)})"
        if replayed:
            self._finding(state, REPLAYED_LATE, missing.first_lo, f"{seqs} arrived after {after}, then an exact copy "
                          f"of seq {missing.after_seq} followed: a crash replay", missing.fill_where, last)
        else:
            self._violation(state, REORDERED, missing.first_lo, f"{seqs} arrived after {after}: records were "
                            "reordered in the topic", missing.fill_where, last)

    # -- control records -----------------------------------------------------------------------------
    def _signatures(self, state: ChainState, seq: int, what: str, statement: str, signatures: tuple,
                    note_body: str | None = None) -> str:
        """The status of _judge_signatures, its violation (bad, unknown key, unsigned when keys are given)
        and key alias finding reported."""
        status, detail, alias = self.keys.judge(what, statement, signatures, note_body)
        if alias:
            self._finding(state, KEY_ALIAS, seq, alias)
        if status == BAD:
            self._violation(state, BAD_SIGNATURE, seq, detail)
        elif status == UNKNOWN:
            self._violation(state, UNKNOWN_KEY, seq, detail)
        elif status == NOT_SIGNED and self.public_keys:
            self._violation(state, UNSIGNED, seq, detail)
        return status

    def _trusted_status(self, status: str) -> bool:
        """Whether a statement may be believed: a good signature, or any consistent one without keys."""
        return status == GOOD or not self.public_keys

    def _signed(self, state: ChainState, seq: int, type_: str, body: str) -> tuple[Any, bool, str] | None:
        """A checkpoint's or manifest's body parsed (a SPEC-15 note or a legacy statement) and its signatures
        judged: (parsed, is a note, status), or None when it is malformed (reported)."""
        try:
            parsed, notes, statement = parse_signed(type_, body)
        except (BadCheckpoint, BadManifest) as exc:
            state.checkpoints["malformed"] += 1
            self._violation(state, MALFORMED, seq, f"{type_} body: {exc}")
            return None
        status = self._signatures(state, seq, type_, statement, parsed.signatures, body if notes else None)
        return parsed, notes, status

    def _checkpoint(self, state: ChainState, seq: int, prev: bytes, body: str, record: dict) -> None:
        signed = self._signed(state, seq, TYPE_CHECKPOINT, body)
        if signed is None:
            return
        parsed, notes, status = signed
        state.checkpoints[status] += 1
        problems = []
        if parsed.chain != state.name:
            problems.append(f"names chain {parsed.chain!r}")
        if parsed.seq != seq - 1:
            problems.append(f"attests seq {parsed.seq}, not the seq before it ({seq - 1})")
        if parsed.head_hash != prev:
            problems.append("its head is not the prev of the checkpoint record")
        elif seq > 1 and state.window.covers(seq - 1):
            known, _ = state.window.get(seq - 1)
            if known and known != _prefix(parsed.head_hash):
                problems.append(f"its head is not the hash of seq {seq - 1} in the topic")
        if self._inconsistent(state, seq, "the checkpoint statement", problems):
            return
        if status == GOOD:
            state.last_good_cp = seq
        if not self.public_keys:
            state.last_consistent_cp = seq
        if not self._trusted_status(status):
            return
        self._attested_at(state, parsed.time, self._where)
        if status in (GOOD, UNCHECKED):
            self._keep_head(state, seq, record)
        if notes:
            self._check_tree(state, seq, "checkpoint", parsed.tree_size, parsed.root)
            if state.attribution is not None:
                self._attest_identity(state, seq, parsed.identity)

    def _inconsistent(self, state: ChainState, seq: int, what: str, problems: list[str]) -> bool:
        """Whether a signed statement disagrees with its chain (reported when it does)."""
        if problems:
            state.checkpoints["inconsistent"] += 1
            self._violation(state, CHECKPOINT_MISMATCH, seq, what + " " + "; ".join(problems))
        return bool(problems)

    def _keep_head(self, state: ChainState, seq: int, record: dict) -> None:
        if seq > state.head_record_seq:
            state.head_record, state.head_record_seq = record, seq

    def _attested_at(self, state: ChainState, time_text: str, where: tuple) -> None:
        """A trusted statement about the chain at `time_text` (for STALE)."""
        epoch = rfc3339_epoch(time_text)
        if epoch is None:
            return
        # of statements with the same time, the one furthest into the topic: the same whatever the order
        # partitions are read in, or a split verify hands the claims over
        if state.attested_time is None or epoch > state.attested_time or (
                epoch == state.attested_time and _place_key(where) > _place_key(state.attested_where)):
            state.attested_time, state.attested_time_text, state.attested_where = epoch, time_text, where

    def _attest_identity(self, state: ChainState, seq: int, attested: Any) -> None:
        attribution = state.attribution
        identity = attested_identity(attested)
        waited = attribution.attest(identity, seq, self._where)
        if waited is None:
            self._violation(state, IDENTITY_MISMATCH, seq, attribution.mismatch_detail(identity))
            return
        examples, uncounted = waited
        first = attribution.attested_by == (seq, self._where)
        for example_seq, carried, example_where in examples:
            self._violation(state, MISATTRIBUTED, example_seq, attribution.misattributed_detail(carried), example_where)
        if uncounted:
            state.violation_counts[MISATTRIBUTED] += uncounted
        if first and attribution.overflow:
            self._violation(state, MISATTRIBUTED, None, attribution.overflow_detail())

    def _gap(self, state: ChainState, seq: int, body: str) -> None:
        try:
            fields = json.loads(body)
            reason = str(fields["reason"])
            lost = int(fields.get("bytes", 0))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            self._violation(state, MALFORMED, seq, f"gap body: {_short(exc)}")
            return
        state.gaps += 1
        state.gap_bytes += max(0, lost)
        state.gap_reasons[reason] += 1
        detail = f"{reason}: {lost} bytes lost at source"
        if fields.get("path"):
            detail += f" ({fields['path']} at offset {fields.get('offset')})"
        missing_seq = fields.get("missing_seq")
        if missing_seq is None:
            self._finding(state, GAP, seq, detail)
            return
        missing_hash = fields.get("missing_hash")
        if type(missing_seq) is not int or not isinstance(missing_hash, str) or not 0 < missing_seq < seq:
            self._violation(state, MALFORMED, seq, f"gap body: bad missing_seq {missing_seq!r} / missing_hash")
            return
        self._finding(state, GAP, seq, f"{detail}; declares seq {missing_seq} refused by Kafka")
        if state.window.covers(missing_seq):
            known, _ = state.window.get(missing_seq)
            if known:
                try:
                    declared = _prefix(bytes.fromhex(missing_hash))
                except ValueError:
                    declared = -1
                if known == declared:
                    self._finding(state, GAP_RECORD_PRESENT, missing_seq,
                                  f"the gap at seq {seq} declares seq {missing_seq} refused, yet it is in the topic "
                                  "(the broker kept a batch it reported as failed)")
                else:
                    self._violation(state, GAP_MISMATCH, seq, f"declares seq {missing_seq} refused, with a hash other "
                                                              f"than that of the seq {missing_seq} in the topic")
                return
        if len(missing_hash) == 64:
            try:
                # the refused record is a leaf of the chain's tree: its declared hash stands in for it
                state.tree.add(missing_seq, bytes.fromhex(missing_hash))
            except ValueError:
                pass
        if len(state.declared) >= self.max_declared:
            state.declared_dropped += 1
            return
        state.declared[missing_seq] = (missing_hash.lower(), seq, self._where)

    def _manifest(self, state: ChainState, seq: int, prev: bytes, body: str, record: dict) -> None:
        signed = self._signed(state, seq, TYPE_MANIFEST, body)
        if signed is None:
            return
        parsed, notes, status = signed
        state.checkpoints["manifest_" + status] += 1
        if state.name != MANIFEST_CHAIN_PREFIX + parsed.node:
            self._violation(state, MANIFEST_MISMATCH, seq, f"a manifest of node {parsed.node!r} in chain {state.name}")
            return
        if notes:
            # a manifest note is also the checkpoint of the node chain
            problems = []
            if parsed.seq != seq - 1:
                problems.append(f"attests seq {parsed.seq}, not the seq before it ({seq - 1})")
            if parsed.head_hash != prev:
                problems.append("its head is not the prev of the manifest record")
            if self._inconsistent(state, seq, "the manifest", problems):
                return
        if status == GOOD:
            state.last_good_cp = seq
        elif self.public_keys:
            return   # a manifest we cannot trust attests nothing
        if not self.public_keys:
            state.last_consistent_cp = seq
        where = self._where
        self._attested_at(state, parsed.time, where)
        if status in (GOOD, UNCHECKED):
            self._keep_head(state, seq, record)
        if notes:
            self._check_tree(state, seq, "manifest", parsed.tree_size, parsed.root)
        for chain, head_seq, head_hash in parsed.heads:
            self._claim(self._state(chain), head_seq, head_hash, parsed.time, where)

    def _claim(self, target: ChainState, head_seq: int, head_hash: bytes, time_text: str, where: tuple) -> None:
        """A trusted manifest at `where` attests the head (head_seq, head_hash) of the target chain."""
        self._attested_at(target, time_text, where)
        self._head_claim(target, head_seq, head_hash, where)

    def _head_claim(self, target: ChainState, head_seq: int, head_hash: bytes, where: tuple) -> None:
        if head_seq > target.claim_seq:
            target.claim_at = time.monotonic()
            target.claim_seq, target.claim_hash, target.claim_where = head_seq, head_hash, where
        if 0 < head_seq <= target.head_seq and target.window.covers(head_seq):
            known, known_offset = target.window.get(head_seq)
            if known and known != _prefix(head_hash):
                # named where the record sits, as when the manifest comes first (_check_claim)
                self._violation(target, MANIFEST_MISMATCH, head_seq, f"the manifest at {_where(*where)} attests "
                                f"another hash for seq {head_seq}", (*target.partition, known_offset))

    def _check_claim(self, state: ChainState, seq: int, stated: bytes) -> None:
        if state.claim_hash is not None and stated != state.claim_hash:
            self._violation(state, MANIFEST_MISMATCH, seq, f"the manifest at {_where(*state.claim_where)} attests "
                                                           f"another hash for seq {seq}")

    def _check_trusted(self, state: ChainState, seq: int, stated: bytes) -> None:
        if stated != state.trusted.hash:
            self._trusted_mismatch(state, seq)

    def _trusted_mismatch(self, state: ChainState, seq: int) -> None:
        self._violation(state, TRUSTED_HEAD_MISMATCH, seq, f"{state.trusted.source} attests another record at seq "
                                                           f"{seq}: the chain was rewritten after it was saved")

    # -- a verify split across processes or machines (parallel.py, group.py) -------------------------
    def relay_claims(self, keep: Callable[[str], bool] | None = None) -> list[RelayedClaim]:
        """What this verifier learned of chains it read no record of (manifest heads, mentions, saved
        heads), taken out of it: another part of a split verify holds those chains, or none does. The
        chains `keep` names stay (following a topic: the chains of the partitions read here)."""
        relayed = []
        for name in [name for name, state in self.chains.items() if not state.records]:
            if keep is None or not keep(name):
                relayed.append(RelayedClaim.of(self.chains.pop(name)))
        return relayed

    def apply_claims(self, claims: Iterable[RelayedClaim]) -> None:
        """Claims other parts relayed (relay_claims), judged as if their manifests had been read here after
        every record; a chain of no record here is taken on (it is tail_removed or chain_absent)."""
        for claim in claims:
            state = self._state(claim.chain)
            if claim.attested_time is not None:
                self._attested_at(state, claim.attested_time, claim.attested_where)
            if claim.claim_seq:
                self._head_claim(state, claim.claim_seq, bytes.fromhex(claim.claim_hash), claim.claim_where)
            if claim.trusted_seq and (state.trusted is None or claim.trusted_seq > state.trusted.seq):
                state.trusted = Claim(claim.trusted_seq, bytes.fromhex(claim.trusted_hash), (None, None, None),
                                      claim.trusted_source)
                state.claim_at = time.monotonic()
                seq = claim.trusted_seq
                if seq <= state.head_seq and state.window.covers(seq):
                    known, _ = state.window.get(seq)
                    if known and known != _prefix(state.trusted.hash):
                        self._trusted_mismatch(state, seq)

    def unmet_claims(self) -> int:
        """Chains a manifest attests further than the records read so far (a live topic may still bring them)."""
        return sum(1 for state in self.chains.values() if state.claim_seq > state.head_seq)

    # -- external heads ------------------------------------------------------------------------------
    def trust_heads(self, records: Iterable[Any], source: str) -> int:
        """Heads saved by an earlier run (`latest_heads`), kept outside the topic: each a checkpoint or
        manifest record whose hash and signature are checked here. The topic must hold each chain up to
        them. ValueError names the first record that is not such a record. Call before feeding."""
        count = 0
        for index, record in enumerate(records, 1):
            try:
                claims = self._trusted_claims(record)
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                raise ValueError(f"saved head {index}: {_short(exc)}") from None
            for chain, seq, digest, what in claims:
                state = self._state(chain)
                if state.trusted is None or seq > state.trusted.seq:
                    state.trusted = Claim(seq, digest, (None, None, None), f"the {what} saved in {source}")
                    state.claim_at = time.monotonic()
            name, seq = record["seal"]["chain"], record["seal"]["seq"]
            if seq > self.trusted_heads.get(name, (0, None))[0]:
                self.trusted_heads[name] = (seq, record)
            count += 1
        return count

    def _trusted_claims(self, record: Any) -> list[tuple[str, int, bytes, str]]:
        seal = record["seal"]
        name, seq, type_, body = seal["chain"], seal["seq"], record.get("type", ""), record["body"]
        if type(seq) is not int or seq < 1 or type(name) is not str or not name:
            raise ValueError("seal.seq must be an integer >= 1 and seal.chain a non-empty string")
        prev, stated = bytes.fromhex(seal["prev"]), bytes.fromhex(seal["hash"])
        if len(prev) != 32 or len(stated) != 32:
            raise ValueError("seal.prev and seal.hash are 32-byte hashes")
        if link(prev, seq, record["time"].encode(), record["stream"].encode(), body.encode(),
                type_.encode()) != stated:
            raise ValueError(f"the record {name}:{seq} does not hash to its stated hash")
        if type_ not in (TYPE_CHECKPOINT, TYPE_MANIFEST):
            raise ValueError(f"the record {name}:{seq} is not a checkpoint or a manifest")
        parsed, notes, statement = parse_signed(type_, body)
        if type_ == TYPE_CHECKPOINT:
            consistent = parsed.chain == name and parsed.seq == seq - 1 and parsed.head_hash == prev
            heads: tuple = ()
        else:
            consistent = name == MANIFEST_CHAIN_PREFIX + parsed.node and (
                not notes or (parsed.seq == seq - 1 and parsed.head_hash == prev))
            heads = parsed.heads
        if not consistent:
            raise ValueError(f"the {type_} {name}:{seq} does not attest its own chain and head")
        status, detail, _ = self.keys.judge(type_, statement, parsed.signatures, body if notes else None)
        if self.public_keys and status != GOOD:
            raise ValueError(f"{name}:{seq}: {detail}")
        claims = [(name, seq, stated, f"{type_} {name}:{seq}")]
        claims += [(chain, head_seq, head_hash, f"manifest {name}:{seq}") for chain, head_seq, head_hash in heads
                   if head_seq > 0]
        return claims

    def latest_heads(self) -> list[dict]:
        """Per chain, the latest trusted checkpoint or manifest record read (or given to trust_heads, when
        that one is later): what --save-heads writes, sorted by chain."""
        heads = dict(self.trusted_heads)
        for name, state in self.chains.items():
            if state.head_record is not None and state.head_record_seq > heads.get(name, (0, None))[0]:
                heads[name] = (state.head_record_seq, state.head_record)
        return [record for _, (_, record) in sorted(heads.items())]


def parse_signed(type_: str, body: str) -> tuple[Any, bool, str]:
    """A checkpoint's or manifest's body: (parsed, whether it is a SPEC-15 note, the signed text).
    BadCheckpoint / BadManifest when it is neither a note nor a legacy statement."""
    if type_ == TYPE_CHECKPOINT:
        notes = body.startswith(CHAIN_ORIGIN_PREFIX)
        parsed = parse_checkpoint_note(body) if notes else parse_checkpoint(body)
    else:
        notes = body.startswith(NODE_ORIGIN_PREFIX)
        parsed = parse_manifest_note(body) if notes else parse_manifest(body)
    return parsed, notes, parsed.text if notes else parsed.statement


def _place_key(where: tuple) -> tuple:
    topic, partition, offset = where
    return (topic or "", -1 if partition is None else partition, -1 if offset is None else offset)


def _short(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    if isinstance(exc, KeyError):
        text = f"missing field {text}"
    return text if len(text) <= 200 else text[:200] + "..."
