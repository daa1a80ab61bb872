"""The native Correlator (shipper._native) gives byte-identical output to the Python reference
(shipper.enrich.correlation.Correlator.extract) for every ASCII body, and leaves exactly the non-ASCII
bodies to Python."""
from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from shipper import _native
from shipper.config import EnrichConfig
from shipper.demo.simnode import SimNode
from shipper.enrich import correlation
from shipper.enrich.correlation import Correlator

CONFIGS = {
    "default": list(EnrichConfig().correlation_fields),
    "custom": ["traceId", "spanId", "x-request-id", "tenant"],
    # Names that exercise the corners: an empty key, keys that are level keys or contain `=`, `.` or a
    # quote, a kind whose `"<kind>":"` prefix contains another's, and no span names at all.
    "odd": ["dd.trace_id", "", "=", "level", "log.level", 'a"tenant', "tenant", "a", "traceparent",
            "X-Correlation-ID", "ab=c"],
    "none": [],
}

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN = "00f067aa0ba902b7"


def pair(fields: list[str]) -> tuple[Correlator, "_native.Correlator"]:
    python = Correlator(fields)
    return python, _native.Correlator(*python.native_arguments())


PAIRS = {name: pair(fields) for name, fields in CONFIGS.items()}


def fragments_for(fields: list[str]) -> tuple[list[str], list[str], list[str]]:
    """Concrete pieces of bodies, biased to what the patterns look for and to their edges: single
    tokens, whole members (`"key":"value"`, `key=value`), and what a line starts with (a timestamp
    and a level word, in brackets or not)."""
    keys = sorted(set(fields) | set(correlation.LEVEL_FIELDS) | set(correlation.TEXT_LEVEL_KEYS)
                  | {"msg", "n", "x"})
    words = list(correlation.LEVEL_WORDS) + ["Info", "warning", "Err", "eRRoR", "Informational", "I", "W", "e",
                                             "F", "dbg", "x" * 16, "x" * 17]
    hexes = [(digits * 3)[:length] for digits in ("4bf92f3577b34da6a3ce929d", "00F067AA0BA902B7abcdef")
             for length in (15, 16, 17, 31, 32, 33)] + ["0" * 15, "0" * 16, "0" * 17, "0" * 32, "0" * 33]
    numbers = ["10", "20", "30", "40", "50", "60", "99", "3", "300", "30.5", "05"]
    values = ["", "a", "req-1", "x=y", "a.b:c/d", "@_-", "Z9", "x" * 16, "x" * 17, 'a\\"b', "\\u00e9", "\\u12",
              "\\x", "a\\\\", "\\/\\b\\f\\r\\t", "\\uABCD", "\\ug123"]
    traceparents = [f"00-{t}-{s}-{f}" for t in (TRACE, "0" * 32, TRACE.upper(), TRACE[:31])
                    for s in (SPAN, "0" * 16, SPAN[:15]) for f in ("01", "1")]
    pieces = (keys + words + hexes + numbers + values + traceparents
              + [" ", "  ", "\t", "\x1c", "\x0b", "\n", ",", ";", "&", "-", ".", "_"]
              + ['"', ":", "=", "{", "}", "[", "]", "\\", "(", ")", "<", "'", "+", "/"]
              + ['\\"', "\\\\", "\\/", "\\n", "\\u00e9", "\\u12", "\\x", "\\uABCD"]
              + ["\x00", "\x01", "\x1f", "\x7f", "\r"]
              + ["2026-11-28T18:00:00Z", "2026-11-28 18:00:00,123", "[2026-11-28 18:00:00]",
                 "2026-11-28T18:00:00.123+01:00", "1", "12:00", "1 T Z"]
              + ["I1128 18:00:00.000000", "E0101 00:00:", "W1128 1", "F9999 99:"]
              + [f'"{k}":' for k in keys] + [f'"{k}":"' for k in keys] + [f'"{k}": "' for k in keys]
              + [f"{k}=" for k in keys])
    members = []
    for key in keys:
        for value in words[:4] + hexes + values:
            members += [f'"{key}":"{value}"', f'"{key}": "{value}"', f"{key}={value}", f'{key}="{value}']
        members += [f'"{key}":{number}' for number in numbers[::2]] + [f"{key}={number}" for number in numbers[::2]]
    # Valid and nearly valid ids under their own keys, so that trace and span ids are common.
    for key in fields:
        kind = correlation.kind_of(key)
        if kind in (correlation.TRACE, correlation.SPAN):
            for value in hexes + [TRACE, TRACE.upper(), SPAN, SPAN.upper()]:
                members += [f'"{key}":"{value}"', f"{key}={value}", f'{key}="{value}"'] * 3
    leading = (["[", "]", " ", "  ", "\t", "\x1c", "1", "2026-11-28", "T", "Z", ":", ",", "+", ".", "18:00:00", "-",
                "x", "_", "I", "W1128"] + words)
    return pieces, members, leading


def bodies_for(fields: list[str]) -> st.SearchStrategy[str]:
    pieces, members, leading = fragments_for(fields)
    # One flat choice (cheaper to draw than a one_of), tokens weighted like the members as a whole.
    parts = st.lists(st.sampled_from(pieces * max(1, len(members) // len(pieces)) + members),
                     max_size=24).map("".join)
    starts = st.lists(st.sampled_from(leading), max_size=8).map("".join)
    long_values = st.builds(lambda k, c, n, q: f'{q}{k}{"=" if q == "" else chr(34) + ":" + chr(34)}{c * n}'
                                               f'{"" if q == "" else chr(34)}',
                            st.sampled_from(fields or ["x"]), st.sampled_from(["r", "\\n", "r\\t"]),
                            st.sampled_from([85, 128, 255, 256, 257, 300]), st.sampled_from(["", '"']))
    return st.one_of(parts, parts.map(lambda s: "{" + s), st.builds(lambda a, b: a + b, parts, long_values),
                     st.builds(lambda a, b: a + b, starts, parts))


def assert_same(config: str, body: str) -> None:
    python, native = PAIRS[config]
    assert native.extract(body) == python.extract(body), body


def differential_test(config: str):
    @example(body='{"trace_id":"' + TRACE + '"}')
    @settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(body=bodies_for(CONFIGS[config]))
    def test(body: str) -> None:
        assert_same(config, body)
    return test


test_native_equals_python_for_ascii_bodies_default = differential_test("default")
test_native_equals_python_for_ascii_bodies_custom = differential_test("custom")
test_native_equals_python_for_ascii_bodies_odd_names = differential_test("odd")
test_native_equals_python_for_ascii_bodies_no_names = differential_test("none")


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("body", [
    "", "{", "=", "==", '"', '{"', "INFO", "info: x", "[ERROR] boom", "WARNING", "WARNINGS", "EMERG-x",
    "2026-11-28T18:00:00.123Z DEBUG x", "[2026-11-28 18:00:00,123] [warn] x", "1 2 Z  \t[Trace]",
    "1 INFO 2 WARN x", "[1]  ERROR", "1]\x1cNOTICE", "1 ]  INFO", "12 " + " " * 300 + "ALERT",
    "E1128 18:00:00.000000       1 reflector.go:1] x", "I1128 18:00:00", "Error: file not found",
    '{"level":30,"msg":"pino"}', '{"level":50}', '{"level":30.5}', '{"lvl":"dbg"}', '{"level":"I"}',
    '{"level":"i"}', '{"level":"abcdefghijklmnopq"}', '{"severity_text": "Warning"}',
    f"trace_id={TRACE}ab", f'trace_id="{TRACE}" span_id={SPAN}', f"my.trace_id={TRACE} trace_id={TRACE.upper()}",
    "request_id=a=b=c x=request_id=d", "xrequest_id=1 my.request_id=2 request_id=3",
    "level=warn msg=retry url=/x?request_id=q1&b=2", "level=30 lvl=I severity=99",
    f"traceparent 00-{TRACE}-{SPAN}-01", f"x-00-{TRACE}-{SPAN}-01 00-{TRACE}-{SPAN}-01",
    f"00-{'0' * 32}-{SPAN}-01 00-{TRACE}-{SPAN}-01", f"span_id={SPAN} 00-{TRACE}-{'1' * 16}-01",
    'payload received {"request_id":"in-json","n":1}', 'x {"request_id":""} {"requestId":"b"}',
    '{"request_id":"a\\"b\\\\c\\u00e9\\n","correlation_id":"plain"}', '{"request_id":"a\x01b"}',
    '{"request_id":"' + "r" * 256 + '"}', '{"request_id":"' + "r" * 257 + '"}',
    '{"request_id":"' + "r" * 256 + "\\n" + "r" * 256 + '"}', '{"request_id":"' + "\\n" * 256 + '"}',
    '{"request_id":"' + "\\n" * 257 + '"}', "request_id=" + "r" * 256, "request_id=" + "r" * 257,
    '{"tenant":"t","a\\"tenant":"u"}', '{"a\\"tenant":"u","tenant":"t"}', '{"":"empty key"}',
    "=x ==y a==z", "ab=c=v ab=c= d", 'level="warn"', "tenant= a", "a=1 tenant=2",
])
def test_native_equals_python_on_corner_cases(config, body):
    assert_same(config, body)


def test_every_level_value_maps_like_python():
    """The severity tables (pino numbers, klog letters, upper-cased words) are copies in C; all of
    their inputs are enumerated here."""
    python, native = PAIRS["default"]
    values = [f"{n:02d}" for n in range(100)] + [chr(c) for c in range(ord("A"), ord("z") + 1) if chr(c).isalpha()]
    values += [w for word in correlation.LEVEL_WORDS for w in (word, word.lower(), word.title())]
    for value in values:
        bodies = [f"{value} x", f"[{value}] x", f"{value}1128 18:00:00.000000 x"]
        bodies += [f'{{"{key}":"{value}"}}' for key in correlation.LEVEL_FIELDS]
        bodies += [f"{{\"{key}\":{value}}}" for key in correlation.LEVEL_FIELDS]
        bodies += [f"{key}={value}" for key in correlation.TEXT_LEVEL_KEYS]
        for body in bodies:
            assert native.extract(body) == python.extract(body), body


@pytest.mark.parametrize("body", ["request_id=caf\u00e9", "\u00e9", '{"level":"\u212aelvin"}', "ſ"])
def test_non_ascii_bodies_are_left_to_python(body):
    for _, native in PAIRS.values():
        assert native.extract(body) is None


@settings(max_examples=500, deadline=None)
@given(body=st.text(alphabet=st.characters(max_codepoint=127), max_size=200))
def test_every_ascii_body_is_taken_natively(body):
    for python, native in PAIRS.values():
        assert native.extract(body) == python.extract(body)


def simnode_bodies(tmp_path, count: int) -> list[str]:
    node = SimNode(tmp_path, pods=4, containers_per_pod=2, rotate_every_bytes=None, seed=7)
    node.write(count)
    return [body.decode() for sim in node.containers for body in node.ledger.bodies(sim.ref.chain)]


def test_simnode_workload_is_taken_natively_and_matches(tmp_path):
    python, native = PAIRS["default"]
    bodies = simnode_bodies(tmp_path, 3000)
    assert len(bodies) == 3000
    for body in bodies:
        assert native.extract(body) == python.extract(body), body


def test_constructor_refuses_names_that_are_not_str():
    with pytest.raises(TypeError):
        _native.Correlator(["trace_id"], [], [("request_id", [1])])
    with pytest.raises(TypeError):
        _native.Correlator([], [], [("request_id",)])


def seeded_bodies(fields: list[str], count: int, seed: int) -> list[str]:
    """More bodies of the same make as bodies_for, without hypothesis' per-example cost (and without
    its shrinking: a failure here shows the whole body)."""
    rng = random.Random(seed)
    pieces, members, leading = fragments_for(fields)
    noise = 'ab09fF_-.=:"{}[] \t\x1c\\,' + "trace_id" + "level"
    bodies = []
    for _ in range(count):
        body = "".join(rng.choice(pieces if rng.random() < 0.5 else members) for _ in range(rng.randrange(25)))
        shape = rng.random()
        if shape < 0.2:
            body = "{" + body
        elif shape < 0.4:
            body = "".join(rng.choice(leading) for _ in range(rng.randrange(9))) + body
        elif shape < 0.5:
            key, chunk = rng.choice(fields or ["x"]), rng.choice(["r", "\\n", "r\\t"])
            value = chunk * rng.choice([85, 128, 255, 256, 257, 300])
            body += f'"{key}":"{value}"' if rng.random() < 0.5 else f"{key}={value}"
        elif shape < 0.6:
            body = "".join(rng.choice(noise) for _ in range(rng.randrange(80)))
        bodies.append(body)
    return bodies


@pytest.mark.parametrize("config", CONFIGS)
def test_native_equals_python_for_seeded_fragment_bodies(config):
    python, native = PAIRS[config]
    for body in seeded_bodies(CONFIGS[config], 20_000, seed=len(config)):
        assert native.extract(body) == python.extract(body), body
