"""The native sealing loop (shipper._native.seal_entries) against the Python reference, byte for byte.

The reference is records.seal_entries_py; every record the native loop builds must equal it, for
every kind of body (ASCII, non-ASCII, invalid UTF-8, control characters, secrets), flag and body
stage configuration, in both record formats (v1; v2 with and without the full resource on a call's
first record), and the chain head it returns must be the same."""
from __future__ import annotations

import dataclasses
import json
from array import array

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shipper import records
from shipper.config import EnrichConfig, RedactionRule
from shipper.demo.simnode import SimNode
from shipper.enrich.body import make_body_processor
from shipper.enrich.redact import default_candidate
from shipper.parse import Entries, StreamParser
from shipper.seal import ChainHead

pytestmark = pytest.mark.skipif(not records.NATIVE, reason="shipper._native is not built")

CTX = records.ChainContext("pod-uid/app", '{"k8s.namespace.name":"ns","k8s.pod.name":"p","k8s.pod.uid":"pod-uid",'
                           '"k8s.container.name":"app","k8s.container.restart_count":0,"k8s.node.name":"n",'
                           '"k8s.pod.labels":{"app":"p"},"audit_shipper.metadata":"api"}',
                           "/var/log/pods/ns_p_uid/app/0.log")
CONTEXTS = {"v1": CTX, "v2": dataclasses.replace(CTX, compact=True),
            "v2_identity": dataclasses.replace(CTX, compact=True, full=False)}
contexts = st.sampled_from(sorted(CONTEXTS)).map(CONTEXTS.__getitem__)
OBSERVED = "2026-11-28T18:00:01.000000000Z"

FRAGMENTS = [
    '{"level":"info","msg":"', '"trace_id":"4bf92f3577b34da6a3ce929d0e0e4736"', '"span_id":"00f067aa0ba902b7"',
    '"request_id":"req-1"', "Bearer abcdefghijkl", "AKIAABCDEFGHIJKLMNOP", "https://user:pw@host/",
    "4111 1111 1111 1111", "level=warn ", "trace_id=4bf92f3577b34da6a3ce929d0e0e4736 ", "é", "\u2028", "\x00",
    "\x1f", "\\", '"', "\t", "\n", "ERROR ", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "}",
    "aws_secret_access_key=abcdefghijklmnopqrstuvwxyz", "1234567890123", "IA", "0" * 32, "x",
]

bodies = st.one_of(
    st.lists(st.sampled_from(FRAGMENTS), max_size=8).map(lambda parts: "".join(parts).encode()),
    st.binary(max_size=60),
    st.text(max_size=40).map(str.encode),
)
entry = st.tuples(st.integers(0, 2**40), st.sampled_from([b"", b"2026-11-28T18:00:00.123456789Z"]),
                  st.sampled_from([b"stdout", b"stderr"]), bodies, st.integers(0, 255))


def processors() -> dict[str, object]:
    custom = RedactionRule(name="ticket", pattern=r"T-\d{4}", replacement="T-XXXX")
    return {
        "none": None,
        "defaults": make_body_processor(EnrichConfig()),
        "custom": make_body_processor(EnrichConfig(redactions=[custom])),
        "json_fields": make_body_processor(EnrichConfig(), parse_json=True),
        "no_redaction": make_body_processor(EnrichConfig(default_redactions=False)),
        "custom_ids": make_body_processor(EnrichConfig(correlation_fields=["traceId", "spanId", "x-request-id",
                                                                           "tenant"])),
    }


PROCESSORS = processors()


def build(rows) -> Entries:
    out = Entries()
    for row in rows:
        out.add(*row)
    return out


def both(rows, process_body, head=None, ctx=CTX):
    head = head or ChainHead.genesis(ctx.chain)
    expected_stats, native_stats = records.SealStats(), records.SealStats()
    expected = records.seal_entries_py(head, build(rows), ctx, OBSERVED, process_body, expected_stats)
    native = records.seal_entries(head, build(rows), ctx, OBSERVED, process_body, native_stats)
    return expected, native, expected_stats, native_stats


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=st.lists(entry, max_size=12), which=st.sampled_from(sorted(PROCESSORS)), ctx=contexts)
def test_native_records_equal_the_reference(rows, which, ctx):
    expected, native, expected_stats, native_stats = both(rows, PROCESSORS[which], ctx=ctx)
    assert native == expected
    assert native_stats == expected_stats


@pytest.mark.parametrize("which_ctx", sorted(CONTEXTS))
def test_a_long_batch_continues_the_chain_like_the_reference(tmp_path, which_ctx):
    rows = [(i * 210, b"2026-11-28T18:00:00.000000001Z", b"stdout", line, 0)
            for i, line in enumerate(workload_bodies(tmp_path, 2000))]
    head = ChainHead(CTX.chain, 41, bytes(range(32)))
    expected, native, _, _ = both(rows, PROCESSORS["defaults"], head, CONTEXTS[which_ctx])
    assert native == expected
    values, last = native
    assert last.seq == 41 + len(rows)
    record = json.loads(values[-1])
    assert record["seal"]["seq"] == last.seq and bytes.fromhex(record["seal"]["hash"]) == last.hash


def test_invalid_utf8_is_counted_and_flagged():
    (_, _), (values, _), _, stats = both([(0, b"", b"stdout", b"caf\xe9", 0)], None)
    assert stats.invalid_utf8 == 1
    record = json.loads(values[0])
    assert record["body"] == "caf\ufffd" and record["attributes"]["log.invalid_utf8"] is True


prefilter_bodies = st.one_of(
    st.lists(st.sampled_from(FRAGMENTS), max_size=6).map("".join),
    st.text(alphabet="earrEARRIAKS:/@cCs_kKyY_SE0123456789 -xa", max_size=40),
    st.lists(st.sampled_from(["earer", "EARER", "IA", "AKIA", "ASIA", "://", "@", "ccess_", "CCESS_", "Key",
                              "1234567", "123456", "4", " ", "-", "a", "e", "I", ":/", "x", '"']),
             max_size=12).map("".join),
    st.text(max_size=80).filter(str.isascii))


@settings(max_examples=2000, deadline=None)
@given(prefilter_bodies)
def test_native_redaction_prefilter_never_hides_a_secret(body):
    """The native prefilter may be sharper than the Python one, never blinder: when it says no, no
    built-in rule changes the body; and it says yes only where the Python prefilter does too."""
    from shipper.enrich.redact import build_redactor
    if not body.isascii():
        return
    if records._native.default_candidate(body):
        assert default_candidate(body)
    else:
        assert build_redactor([], defaults=True).apply(body) is None, body


SECRETS = {"Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl": "eyJhbGciOiJIUzI1NiJ9",
           "AKIAIOSFODNN7EXAMPLE": "AKIAIOSFODNN7EXAMPLE",
           "aws_secret_access_key=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY": "wJalrXUtnFEMI",
           "Aws_Secret_Access_Key: wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY": "wJalrXUtnFEMI",
           "redis://user:pa55word@cache:6379": "pa55word", "4111111111111111": "4111111111111111",
           "5500 0000 0000 0004": "5500 0000 0000 0004", "3782-822463-10005": "3782-822463-10005",
           "4222222222222": "4222222222222"}    # 13 digits: the shortest card


@settings(max_examples=400, deadline=None)
@given(before=st.text(alphabet='abc xyz=:/-_"{},.;0123', max_size=40), secret=st.sampled_from(sorted(SECRETS)),
       after=st.text(alphabet='abc xyz=:/-_"{},.;0123', max_size=40))
def test_a_secret_never_survives_the_native_seal(before, secret, after):
    body = f"{before} {secret} {after}".encode()
    (values, _), _ = records.seal_entries(ChainHead.genesis(CTX.chain), build([(0, b"", b"stdout", body, 0)]), CTX,
                                          OBSERVED, PROCESSORS["defaults"]), None
    assert SECRETS[secret].encode() not in values[0]


def workload_bodies(root, count: int) -> list[bytes]:
    """The benchmark workload's bodies (SimNode, as bench/run.py writes them)."""
    node = SimNode(root, pods=2, containers_per_pod=1, rotate_every_bytes=None)
    node.write(count)
    node.flush()
    return [body for chain in node.ledger.chains() for body in node.ledger.bodies(chain)]


@settings(max_examples=100, deadline=None)
@given(rows=st.lists(entry, max_size=12), which=st.sampled_from(sorted(PROCESSORS)), ctx=contexts)
def test_packed_records_are_the_reference_records_end_to_end(rows, which, ctx):
    head = ChainHead.genesis(ctx.chain)
    expected, expected_head = records.seal_entries_py(head, build(rows), ctx, OBSERVED, PROCESSORS[which])
    blob, lengths, packed_head = records.seal_entries_packed(head, build(rows), ctx, OBSERVED, PROCESSORS[which])
    assert (blob, list(lengths), packed_head) == (b"".join(expected), [len(v) for v in expected], expected_head)


@pytest.mark.parametrize("secret", ["4222222222222", "4222-2222-2222-2", "Bearer abcdefghijkl", "AKIAIOSFODNN7EXAMPLE",
                                    "aws_secret_access_key=wJalrXUtnFEMI/K7MDENG", "s3://u:pw@h"])
def test_the_prefilter_sees_a_secret_at_every_offset(secret):
    """The native prefilter reads 16 bytes at a time: a secret straddling any block boundary, or in the
    tail, is still seen."""
    for before in range(0, 40):
        for after in (0, 3, 17, 30):
            body = "x" * before + "\"" + secret + "\"" + "y" * after
            assert records._native.default_candidate(body), (before, after)


@pytest.mark.parametrize("which_ctx", sorted(CONTEXTS))
@pytest.mark.parametrize("which", ["none", "defaults"])
def test_packed_records_longer_than_estimated_are_whole(which, which_ctx):
    """Packed records are rendered into the returned bytes object sized from an estimate; a body that
    escapes to six times its length (control characters) outgrows it mid-batch and must lose nothing."""
    ctx = CONTEXTS[which_ctx]
    rows = [(0, b"", b"stdout", b"plain line", 0), (11, b"", b"stderr", b"\x01" * 5000, 0),
            (5012, b"", b"stdout", b"after", 0)]
    head = ChainHead.genesis(ctx.chain)
    expected, expected_head = records.seal_entries_py(head, build(rows), ctx, OBSERVED, PROCESSORS[which])
    blob, lengths, packed_head = records.seal_entries_packed(head, build(rows), ctx, OBSERVED, PROCESSORS[which])
    assert len(expected[1]) > 30_000
    assert (blob, list(lengths), packed_head) == (b"".join(expected), [len(v) for v in expected], expected_head)
    assert records.seal_entries_packed(head, build([]), ctx, OBSERVED, PROCESSORS[which])[:2] == (b"", array("I"))


TS = b"2026-11-28T18:00:00.123456789Z"
cri_line = st.one_of(
    bodies.map(lambda body: TS + b" stdout F " + body.replace(b"\n", b" ") + b"\n"),
    bodies.map(lambda body: TS + b" stderr F " + body.replace(b"\n", b" ") + b"\n"),
    bodies.map(lambda body: TS + b" stdout P " + body.replace(b"\n", b" ") + b"\n"),
    bodies.map(lambda body: b"not-a-header " + body.replace(b"\n", b" ") + b"\n"),
)


def seal_chunks(lines: list[bytes], cuts: list[int], which: str, raw: bool, ctx=CTX):
    """Parse the lines chunk by chunk as the ingest does (raw=True: entries stay raw rows in the data
    read) and seal each chunk: natively with raw rows, or by the reference over list entries."""
    data = b"".join(lines)
    parser = StreamParser()
    head = ChainHead.genesis(ctx.chain)
    blobs, raw_rows = [], 0
    position = 0
    for cut in sorted(set(cuts)) + [len(data)]:
        if cut <= position or cut > len(data):
            continue
        chunk = data[position:cut]
        if raw:
            entries = Entries()
            parser.feed(chunk, position, cut == len(data), out=entries)
            raw_rows += len(entries.raw) // 56
            blob, _, head = records.seal_entries_packed(head, entries, ctx, OBSERVED, PROCESSORS[which])
        else:
            entries = parser.feed(chunk, position, cut == len(data))
            values, head = records.seal_entries_py(head, entries, ctx, OBSERVED, PROCESSORS[which])
            blob = b"".join(values)
        blobs.append(blob)
        position = cut
    return b"".join(blobs), head, raw_rows


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lines=st.lists(cri_line, max_size=25), cuts=st.lists(st.integers(1, 3000), max_size=4),
       which=st.sampled_from(sorted(PROCESSORS)), ctx=contexts)
def test_entries_left_in_the_data_read_seal_like_the_reference(lines, cuts, which, ctx):
    """Plain lines stay raw rows in the bytes read (no object per line) between list entries (partials,
    malformed headers): sealed in their order, they give the reference's records and chain head."""
    native_blob, native_head, _ = seal_chunks(lines, cuts, which, raw=True, ctx=ctx)
    expected_blob, expected_head, _ = seal_chunks(lines, cuts, which, raw=False, ctx=ctx)
    assert native_blob == expected_blob
    assert native_head == expected_head


def test_raw_rows_and_list_entries_interleave_in_file_order():
    lines = [TS + b" stdout F first\n", TS + b" stdout P par", TS + b" stdout F tial\n",
             TS + b" stdout F caf\xc3\xa9 (not ASCII: the Python body stage)\n", b"bad header line\n",
             TS + b" stderr F Bearer abcdefghijklmnop\n", TS + b" stdout F last\n"]
    lines[1] += b"\n"
    native_blob, native_head, raw_rows = seal_chunks(lines, [], "defaults", raw=True)
    expected_blob, expected_head, _ = seal_chunks(lines, [], "defaults", raw=False)
    assert raw_rows == 4 and native_blob == expected_blob and native_head == expected_head
    bodies = [json.loads(line)["body"] for line in native_blob.replace(b"}}{", b"}}\n{").split(b"\n")]
    assert bodies == ["first", "partial", "caf\u00e9 (not ASCII: the Python body stage)", "bad header line",
                      "Bearer [REDACTED]", "last"]


def test_raw_rows_are_checked_before_they_are_read():
    entries = Entries()
    StreamParser().feed(TS + b" stdout F one\n" + TS + b" stdout F two\n", 0, out=entries)
    assert len(entries.raw) == 2 * 56
    head = ChainHead.genesis(CTX.chain)
    entries.raw[2 * 8:3 * 8] = (10**6).to_bytes(8, "little")       # the first row's time, beyond the data
    with pytest.raises(ValueError, match="outside its data"):
        records.seal_entries_packed(head, entries, CTX, OBSERVED, None)
    entries.raw[2 * 8:3 * 8] = (0).to_bytes(8, "little")
    entries.raw[0:8] = (1).to_bytes(8, "little")                    # two entries claim ordinal 1
    with pytest.raises(ValueError, match="ordinals"):
        records.seal_entries_packed(head, entries, CTX, OBSERVED, None)


def test_v2_records_carry_the_full_resource_on_a_full_calls_first_record_only():
    rows = [(i * 20, b"", b"stdout", b"line %d" % i, 2 if i == 1 else 0) for i in range(3)]
    for ctx, full in ((CONTEXTS["v2"], 1), (CONTEXTS["v2_identity"], 0)):
        expected, (values, _), _, _ = both(rows, None, ctx=ctx)
        decoded = [json.loads(value) for value in values]
        assert [record["schema"] for record in decoded] == ["audit-shipper/v2"] * 3
        assert not any("event_id" in record for record in decoded)
        assert ["attributes" in record for record in decoded] == [False, True, False]
        assert sum("path" in record["source"] for record in decoded) == full
        assert all(list(record["resource"]) == list(records.IDENTITY_KEYS)
                   for record in decoded[full:])
