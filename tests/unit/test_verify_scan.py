"""verify_scan, the verifier's bulk decoder: the native scan (native/verify.c) against its json.loads
reference (shipper.verify.scan.verify_scan_py), on records the real sealing code writes and on every
way a value in a topic can differ from them.

The contract: whenever the native scan says a record is OK, the reference says OK with the same fields;
on our own records (however json.dumps re-renders them) it says OK; and the reference is SLOW whenever
the judge's own decoding (Verifier.feed) rejects the record.
"""
from __future__ import annotations

import json
import random

import pytest
from hypothesis import HealthCheck, assume, example, given, settings, strategies as st

from shipper.parse import Entries
from shipper.records import ChainContext, seal_control, seal_entries
from shipper.seal import ChainHead, link
from shipper.verify import Verifier
from shipper.verify.scan import (FLAG_ALTERED, FLAG_EVENT_ID_OK, FLAG_FOLLOWS, FLAG_OK, FLAG_RESOURCE,
                                 FLAG_SCHEMA_OK, FLAG_SLOW, IDENTITY_FIELDS, NATIVE, NO_IDENTITY, ScanResult,
                                 verify_scan, verify_scan_py)

native = pytest.importorskip("shipper._native") if NATIVE else None
needs_native = pytest.mark.skipif(not NATIVE, reason="shipper._native is not built")

TS = b"2026-11-28T18:00:00.123456789Z"
OBSERVED = "2026-11-28T18:00:01.000000000Z"
RESOURCE = {"k8s.namespace.name": "shop", "k8s.pod.name": "web-1", "k8s.pod.uid": "uid-1",
            "k8s.container.name": "app", "k8s.node.name": "node-a", "k8s.pod.labels": {"app": "web"}}


def ref(values) -> ScanResult:
    return ScanResult.from_columns(verify_scan_py(values))


def nat(values) -> ScanResult:
    return ScanResult.from_columns(native.verify_scan(values))


def sealed(bodies: list[bytes], chain: str = "uid-1/app", resource: dict | None = None,
           head: ChainHead | None = None) -> tuple[list[bytes], ChainHead]:
    head = head or ChainHead.genesis(chain)
    ctx = ChainContext(chain, json.dumps(RESOURCE if resource is None else resource, ensure_ascii=False,
                                         separators=(",", ":")),
                       f"/var/log/pods/shop_web-1_uid-1/{chain}/0.log")
    entries = Entries()
    for index, body in enumerate(bodies):
        entries.add(100 * index, TS, b"stdout" if index % 2 else b"stderr", body, 0)
    return seal_entries(head, entries, ctx, OBSERVED, None)


def control(head: ChainHead, type_: str, body: str, resource: dict | None = None) -> tuple[bytes, ChainHead]:
    ctx = ChainContext(head.chain, json.dumps(RESOURCE if resource is None else resource, separators=(",", ":")), "")
    return seal_control(head, type_, body, ctx, OBSERVED)


def record(**changes) -> dict:
    (value,), _ = sealed([b"hello"])
    out = json.loads(value)
    out.update(changes)
    return out


def one(value: bytes) -> tuple[tuple, tuple]:
    """(reference slot, native slot) of one value."""
    return ref([value]).slot(0), (nat([value]).slot(0) if NATIVE else None)


def assert_agrees(values: list) -> tuple[ScanResult, ScanResult]:
    """The contract on one batch: native OK => reference OK with the same fields (FOLLOWS: native's is a
    subset, since a record native leaves to Python ends its runs); the same SLOW set => the same bytes."""
    expected = ref(values)
    if not NATIVE:
        return expected, expected
    got = nat(values)
    assert got.count == expected.count == len(values)
    for index in range(len(values)):
        if got.flags[index] & FLAG_SLOW:
            assert got.slot(index) == (FLAG_SLOW,)
            continue
        assert not expected.flags[index] & FLAG_SLOW, values[index]
        mine, theirs = got.slot(index), expected.slot(index)
        if got.flags[index] & FLAG_FOLLOWS:
            assert expected.flags[index] & FLAG_FOLLOWS
        assert (mine[0] & ~FLAG_FOLLOWS, *mine[1:]) == (theirs[0] & ~FLAG_FOLLOWS, *theirs[1:]), values[index]
    slow = [bool(flag & FLAG_SLOW) for flag in got.flags]
    if slow == [bool(flag & FLAG_SLOW) for flag in expected.flags]:
        assert native.verify_scan(values) == verify_scan_py(values)
    return got, expected


def judge_rejects(value) -> bool:
    """Whether Verifier.feed finds the value malformed before judging it (its parse failed)."""
    verifier = Verifier()
    try:
        verifier.feed(value, None, 0, 0)
    except (RecursionError, UnicodeEncodeError):
        return True        # feed() crashes on these (see the report to the lead); SLOW is what they need
    return verifier.violation_counts.get("malformed", 0) > 0


# -- our own records ------------------------------------------------------------------------------------

bodies = st.lists(st.one_of(
    st.text(max_size=80).map(str.encode),
    st.binary(max_size=60),                                     # invalid UTF-8: the sealer replaces it
    st.sampled_from([b"", b'{"level":"info","msg":"ok"}', b'say "hi"\\n', b"\x00\x1f\x7f", "€ 😀 \u2028".encode()]),
), min_size=1, max_size=12)

resources = st.fixed_dictionaries({}, optional={
    **{name: st.text(max_size=12) for name in IDENTITY_FIELDS},
    "k8s.pod.labels": st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=3),
    "k8s.container.restart_count": st.integers(0, 10 ** 30),
})


def _encodable(resource: dict) -> bool:
    try:
        json.dumps(resource, ensure_ascii=False).encode()
    except UnicodeEncodeError:
        return False
    return True


@needs_native
@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(bodies=bodies, resource=resources, chain=st.text(min_size=1, max_size=20))
def test_sealed_records_scan_natively_exactly_like_the_reference(bodies, resource, chain):
    assume(_encodable(resource) and _encodable({"c": chain}))
    values, head = sealed(bodies, chain, resource)
    for type_, body in (("checkpoint", "statement\n\n— sig"), ("gap", '{"bytes":1,"reason":"x"}'),
                        ("close", "stream ended"), ("manifest", "m")):
        value, head = control(head, type_, body, resource)
        values.append(value)
    got, expected = assert_agrees(values)
    assert not any(flag & FLAG_SLOW for flag in got.flags)
    assert native.verify_scan(values) == verify_scan_py(values)
    for index in range(len(values)):
        assert got.flags[index] & (FLAG_OK | FLAG_SCHEMA_OK | FLAG_EVENT_ID_OK | FLAG_RESOURCE) == \
            FLAG_OK | FLAG_SCHEMA_OK | FLAG_EVENT_ID_OK | FLAG_RESOURCE
        assert not got.flags[index] & FLAG_ALTERED
        assert bool(got.flags[index] & FLAG_FOLLOWS) == (index > 0)
    assert got.chain_names == [chain]
    assert got.identities == [tuple(resource.get(name) for name in IDENTITY_FIELDS)]
    assert [got.seqs[i] for i in range(got.count)] == list(range(1, len(values) + 1))
    assert got.hash(got.count - 1) == head.hash


@needs_native
@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(bodies=bodies, resource=resources, data=st.data())
def test_records_re_rendered_by_json_dumps_still_scan_natively(bodies, resource, data):
    """Key order, spaces, indentation, \\uXXXX escapes (surrogate pairs included): a consumer that
    re-serialises records changes none of what is judged."""
    assume(_encodable(resource))
    values, _ = sealed(bodies, "uid-1/app", resource)
    rendered = []
    for value in values:
        obj = json.loads(value)
        if data.draw(st.booleans()):
            items = list(obj.items())
            random.Random(data.draw(st.integers(0, 1000))).shuffle(items)
            obj = dict(items)
        rendered.append(json.dumps(obj, ensure_ascii=data.draw(st.booleans()), indent=data.draw(st.sampled_from([None, 0, 2])),
                                   separators=data.draw(st.sampled_from([None, (",", ":"), (" , ", " : ")])),
                                   sort_keys=data.draw(st.booleans())).encode())
    got, expected = assert_agrees(rendered)
    assert not any(flag & FLAG_SLOW for flag in got.flags)
    assert native.verify_scan(rendered) == verify_scan_py(rendered)
    assert ref(values).hashes == got.hashes


# -- values an attacker or a broken pipeline wrote -------------------------------------------------------

def _mutations(value: bytes, rng: random.Random) -> list[bytes]:
    out = []
    raw = bytearray(value)
    for _ in range(4):
        at = rng.randrange(len(raw))
        flipped = bytearray(raw)
        flipped[at] ^= 1 << rng.randrange(8)
        out.append(bytes(flipped))
        out.append(bytes(raw[:at] + raw[at + 1:]))
        out.append(bytes(raw[:at] + bytes([rng.choice(b'"\\{}[],:0123456789eE-+. \x00\x80\xc3\xed\xf4u')]) + raw[at:]))
        out.append(bytes(raw[:at]))
    text = value.decode()
    for key in ("body", "time", "stream", "seal", "chain", "seq", "prev", "hash", "type", "schema", "event_id",
                "resource", "k8s.pod.name", "k8s.pod.uid"):
        quoted = f'"{key}":'
        at = text.find(quoted)
        if at < 0:
            continue
        escaped = '"' + key[0] + "\\u%04x" % ord(key[1]) + key[2:] + '":'
        out.append((text[:at] + escaped + text[at + len(quoted):]).encode())              # escaped key
        end = _value_end(text, at + len(quoted))
        member = text[at:end]
        out.append((text[:end] + "," + member + text[end:]).encode())                       # duplicate key
        out.append((text[:end] + "," + quoted + '"other"' + text[end:]).encode())
        out.append((text[:at] + quoted + "null" + text[end:]).encode())
        out.append((text[:at] + quoted + "1" + text[end:]).encode())
        out.append((text[:at] + quoted + "{}" + text[end:]).encode())
    seq_at = text.find('"seq":') + len('"seq":')
    seq_end = _value_end(text, seq_at)
    for seq in ("1e3", "-0", "0", "01", "1.0", "true", '"5"', "5 ", " 5", str(10 ** 18), str(10 ** 18 - 1),
                "-1", "1E0", "2e-0", "9" * 30):
        out.append((text[:seq_at] + seq + text[seq_end:]).encode())
    attrs_at = text.find('"attributes":') + len('"attributes":')
    attrs_end = _value_end(text, attrs_at)
    for attrs in ("NaN", "-Infinity", "[1,2,{\"a\":[true,false,null]}]", "[" * 70 + "]" * 70, "[" * 3000 + "]" * 3000,
                  '"\\ud800"', '"\\ud800\\u0041"', '"\\udc00"', '"\\ud83d\\ude00"', '"\\x"', '"\\u12"', "1" * 5000,
                  "1." + "1" * 5000, '{"a":1,"a":2}', '{"a" : [ 1 , 2 ] }', "0.5e+7", "-0.0", "[1,]", "{,}", "01"):
        out.append((text[:attrs_at] + attrs + text[attrs_end:]).encode())
    body_at = text.find('"body":') + len('"body":')
    body_end = _value_end(text, body_at)
    for body in ('"\\ud800"', '"\\udbff\\udfff"', '"a\\u0000b"', '"\\/\\b\\f\\n\\r\\t\\"\\\\"', '"tab\there"',
                 '"\\u00e9"', '"\\u00E9"', '"é"', "null"):
        out.append((text[:body_at] + body + text[body_end:]).encode())
    for edit in (lambda t: " \n\t" + t + " \r\n", lambda t: "\ufeff" + t, lambda t: t + "x", lambda t: t + "{}",
                 lambda t: "[" + t + "]", lambda t: t.replace('"seal":{', '"seal":{"chain":"x/y",', 1),
                 lambda t: t.upper(), lambda t: t.replace('"prev":"', '"prev":"' + "A" * 64 + '","x":"', 1)):
        out.append(edit(text).encode())
    return out


def _value_end(text: str, start: int) -> int:
    while text[start] == " ":
        start += 1
    _, end = json.JSONDecoder().raw_decode(text, start)
    return end


@needs_native
@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(bodies=bodies, seed=st.integers(0, 2 ** 32))
def test_any_changed_value_scans_like_the_reference_or_is_slow(bodies, seed):
    rng = random.Random(seed)
    values, head = sealed(bodies)
    value, head = control(head, "checkpoint", "c")
    values.append(value)
    mutated = []
    for value in values:
        mutated += _mutations(value, rng)
    rng.shuffle(mutated)
    assert_agrees(mutated)
    for value in mutated[:40]:
        assert_agrees([value])


@settings(max_examples=100, suppress_health_check=[HealthCheck.too_slow])
@given(bodies=bodies, seed=st.integers(0, 2 ** 32))
def test_the_reference_is_slow_wherever_the_judge_rejects_the_record(bodies, seed):
    values, _ = sealed(bodies)
    for value in _mutations(values[0], random.Random(seed)):
        if judge_rejects(value):
            assert ref([value]).flags[0] == FLAG_SLOW, value


@needs_native
@settings(max_examples=200)
@given(st.binary(max_size=300))
@example(b"")
@example(b"{}")
@example(b'{"seal":{}}')
@example(b"\xef\xbb\xbf{}")
def test_garbage_never_crashes_and_is_slow(value):
    got, _ = assert_agrees([value, value + b"}", b"{" + value])
    assert set(got.flags) == {FLAG_SLOW}


# -- named cases ----------------------------------------------------------------------------------------

def dumps(obj: dict) -> bytes:
    return json.dumps(obj).encode()


@pytest.mark.parametrize("value, native_slow, reference_slow", [
    (dumps(record()), False, False),
    (dumps(record(body="\ud83d\ude00 pair")), False, False),                          # \\ud83d\\ude00 escapes
    (json.dumps(record(body="x")).replace('"body": "x"', '"body": "\\ud800"').encode(), True, True),
    (json.dumps(record(attributes={"a": "x"})).replace('"a": "x"', '"a": "\\ud800"').encode(), False, False),
    (json.dumps(record(attributes={"a": 1})).replace('"a": 1', '"a": NaN').encode(), True, False),
    (dumps(record(attributes={"a": [[[[[[[[1]]]]]]]]})), False, False),
    (dumps(record(type="")), False, False),
    (dumps(record(type="verdict")), True, True),                                     # judged in Python
    (dumps(record(type=None)), True, True),
    (dumps(record(body=5)), True, True),
    (dumps(record(resource=None)), True, True),
    (dumps(record(resource={"k8s.pod.name": 5})), True, True),
    (dumps(record(resource={"k8s.pod.name": None})), True, True),
    (dumps(record(schema=5, event_id=None)), False, False),
    (dumps({key: value for key, value in record().items() if key != "time"}), True, True),
    (dumps({key: value for key, value in record().items() if key != "resource"}), False, False),
    (json.dumps(record()).replace('"body"', '"b\\u006fdy"').encode(), True, False),
    (json.dumps(record()).replace('"seq": 1', '"seq": 1, "seq": 1').encode(), True, False),
    (json.dumps(record()).replace('"seq": 1', '"seq": 1e0').encode(), True, True),
    (json.dumps(record()).replace('"seq": 1', '"seq": -0').encode(), True, True),
    (json.dumps(record()).replace('"seq": 1', '"seq": true').encode(), True, True),
    (dumps(record()).replace(b"hello", b"h\x01llo"), True, True),                      # raw control character
    (dumps(record()).replace(b"hello", "h\u00e9llo".encode("latin-1")), True, True),   # not UTF-8
    (dumps(record()).replace(b"hello", b"h\xc0\xa9llo"), True, True),                   # overlong
    (dumps(record()).replace(b"hello", b"h\xed\xa0\x80llo"), True, True),               # UTF-8 surrogate
    (dumps(record()) + b" \n", False, False),
    (dumps(record()) + b"x", True, True),
    (None, True, True),
    ("text", True, True),
    (bytearray(dumps(record())), True, True),
])
def test_named_cases(value, native_slow, reference_slow):
    reference, mine = one(value)
    assert (reference[0] == FLAG_SLOW) == reference_slow
    if NATIVE:
        assert (mine[0] == FLAG_SLOW) == native_slow
        if not native_slow:
            assert mine == reference


def test_fields_and_flags_of_a_record():
    values, head = sealed([b"a", b"b"])
    checkpoint, head = control(head, "checkpoint", "c")
    values.append(checkpoint)
    changed = json.loads(values[1])
    changed["body"] = "B"
    values[1] = json.dumps(changed).encode()                  # ALTERED, and the chain goes on from its hash
    no_resource = json.loads(values[0])
    del no_resource["resource"]
    no_resource["event_id"] = "uid-1/app:9"
    no_resource["schema"] = "audit-shipper/v2"
    values.append(json.dumps(no_resource).encode())
    for scan in filter(None, (ref(values), nat(values) if NATIVE else None)):
        flags = list(scan.flags)
        base = FLAG_OK | FLAG_SCHEMA_OK | FLAG_EVENT_ID_OK | FLAG_RESOURCE
        assert flags == [base, base | FLAG_ALTERED | FLAG_FOLLOWS, base | FLAG_FOLLOWS, FLAG_OK]
        assert [scan.types[i] for i in range(4)] == [0, 0, 2, 0]
        assert [scan.seqs[i] for i in range(4)] == [1, 2, 3, 1]
        assert scan.chain_names == ["uid-1/app"] and list(scan.chains) == [0, 0, 0, 0]
        assert scan.identities == [("shop", "web-1", "uid-1", "app", "node-a"), NO_IDENTITY]
        assert scan.hash(2) == head.hash
        assert scan.prev(0) == ChainHead.genesis("uid-1/app").hash
        assert scan.prefixes[2] == int.from_bytes(head.hash[:8], "big")
        stated = link(scan.prev(1), 2, TS, b"stdout", b"b")
        assert scan.hash(1) == stated


def test_follows_marks_runs_per_chain_and_never_across_a_slow_record():
    a, _ = sealed([b"1", b"2", b"3", b"4"], "a/x")
    b, _ = sealed([b"1", b"2"], "b/x")
    values = [a[0], b[0], a[1], b[1], b"garbage", a[2], a[3], a[1]]
    for scan in filter(None, (ref(values), nat(values) if NATIVE else None)):
        follows = [bool(flag & FLAG_FOLLOWS) for flag in scan.flags]
        assert follows == [False, False, True, True, False, False, True, False]
        assert scan.chain_names == ["a/x", "b/x"]


def test_an_empty_batch_and_a_batch_of_one():
    for scan in filter(None, (ref([]), nat([]) if NATIVE else None)):
        assert scan.count == 0 and scan.chain_names == [] and scan.identities == []
    if NATIVE:
        assert native.verify_scan(()) == verify_scan_py(())
        values, _ = sealed([b"x"])
        assert native.verify_scan(tuple(values)) == verify_scan_py(values)
        with pytest.raises(TypeError):
            native.verify_scan(5)


def test_verify_scan_uses_the_native_scan_when_built():
    values, _ = sealed([b"x", b"y"])
    assert verify_scan(values).slot(1) == ref(values).slot(1)


@needs_native
def test_many_chains_and_identities_intern_in_order_of_appearance():
    values = []
    for index in range(3000):
        resource = dict(RESOURCE, **{"k8s.pod.name": f"pod-{index % 700}"})
        chunk, _ = sealed([b"x"], f"uid-{index}/c", resource)
        values += chunk
    values.reverse()
    got, expected = assert_agrees(values)
    assert native.verify_scan(values) == verify_scan_py(values)
    assert len(got.chain_names) == 3000 and len(got.identities) == 700
