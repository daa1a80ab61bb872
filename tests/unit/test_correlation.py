"""Correlation ids and severity from bodies: what is found, where it goes, what is refused, and that the
JSON fragments always splice into valid JSON."""
from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shipper.config import EnrichConfig
from shipper.enrich import make_body_processor
from shipper.enrich.correlation import Correlator, kind_of

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN = "00f067aa0ba902b7"
FIELDS = EnrichConfig().correlation_fields


@pytest.fixture(scope="module")
def correlator() -> Correlator:
    return Correlator(FIELDS)


def record(top: str, attributes: str) -> dict:
    """The fragments spliced the way records.py does, parsed back."""
    return json.loads('{"body":"x"' + top + ',"attributes":{' + attributes + "}}")


def found(correlator: Correlator, body: str) -> dict:
    return record(*correlator.extract(body))


def test_json_body_ids_go_to_top_level_and_attributes(correlator):
    body = (f'{{"level":"info","msg":"handled","trace_id":"{TRACE}","span_id":"{SPAN}",'
            '"request_id":"req-1","correlation_id":"corr-9","n":1}')
    assert found(correlator, body) == {"body": "x", "severity_text": "INFO", "trace_id": TRACE, "span_id": SPAN,
                                       "attributes": {"request_id": "req-1", "correlation_id": "corr-9"}}


def test_every_default_spelling_maps_to_its_kind(correlator):
    body = (f'{{"traceId": "{TRACE.upper()}", "spanId": "{SPAN}", "requestId": "r", '
            '"correlationId": "c", "severity": "Warning"}')
    assert found(correlator, body) == {"body": "x", "severity_text": "WARNING", "trace_id": TRACE,
                                       "span_id": SPAN, "attributes": {"request_id": "r", "correlation_id": "c"}}
    assert found(correlator, '{"x-request-id":"abc"}')["attributes"] == {"request_id": "abc"}


def test_first_value_of_a_kind_wins(correlator):
    body = '{"request_id":"first","requestId":"second","x-request-id":"third"}'
    assert found(correlator, body)["attributes"] == {"request_id": "first"}


def test_traceparent_anywhere_in_the_line(correlator):
    text = f"GET /api headers traceparent: 00-{TRACE}-{SPAN}-01 done"
    assert found(correlator, text) == {"body": "x", "trace_id": TRACE, "span_id": SPAN, "attributes": {}}
    in_json = f'{{"msg":"x","traceparent":"00-{TRACE}-{SPAN}-00"}}'
    assert found(correlator, in_json)["trace_id"] == TRACE


def test_explicit_trace_id_wins_over_traceparent(correlator):
    other = "a" * 32
    body = f'{{"trace_id":"{other}","traceparent":"00-{TRACE}-{SPAN}-01"}}'
    assert found(correlator, body)["trace_id"] == other


def test_key_value_text(correlator):
    body = f"INFO handled trace_id={TRACE} span_id={SPAN} request_id=req-7 correlation_id=\"c-1\" took=3ms"
    assert found(correlator, body) == {"body": "x", "severity_text": "INFO", "trace_id": TRACE, "span_id": SPAN,
                                       "attributes": {"request_id": "req-7", "correlation_id": "c-1"}}


def test_key_value_needs_a_whole_key(correlator):
    assert found(correlator, "xrequest_id=1 my.request_id=2 request_id=3")["attributes"] == {"request_id": "3"}


def test_logfmt_level_and_query_string(correlator):
    body = "level=warn msg=retry url=/x?request_id=q1&b=2"
    assert found(correlator, body) == {"body": "x", "severity_text": "WARN", "attributes": {"request_id": "q1"}}


@pytest.mark.parametrize("body, severity", [
    ("INFO starting", "INFO"), ("info: starting", "INFO"), ("WARNING disk 91%", "WARNING"),
    ("[ERROR] boom", "ERROR"), ("2026-11-28T18:00:00.123Z DEBUG x", "DEBUG"),
    ("[2026-11-28 18:00:00,123] [warn] x", "WARN"), ("E1128 18:00:00.000000       1 reflector.go:1] x", "ERROR"),
    ("I1128 18:00:00.000000 1 x.go:1] y", "INFO"), ("Error: file not found", "ERROR"), ("FATAL", "FATAL"),
    ('{"level":30,"msg":"pino"}', "INFO"), ('{"level":50}', "ERROR"), ('{"lvl":"dbg"}', "DBG"),
])
def test_severity(correlator, body, severity):
    assert found(correlator, body).get("severity_text") == severity


@pytest.mark.parametrize("body", ["Information follows", "Errors: 0", "INFOS", "nothing here", "Inform x"])
def test_no_severity_without_a_level_word(correlator, body):
    assert "severity_text" not in found(correlator, body)


@pytest.mark.parametrize("body", [
    '{"trace_id":"00000000000000000000000000000000"}',           # all zero: invalid in W3C
    '{"trace_id":"4bf92f3577b34da6a3ce929d0e0e473"}',            # 31 digits
    '{"trace_id":"4bf92f3577b34da6a3ce929d0e0e4736aa"}',         # 34 digits
    '{"trace_id":"4bf92f3577b34da6a3ce929d0e0e473g"}',           # not hex
    '{"span_id":"0000000000000000"}', '{"span_id":"00f067aa0ba902"}', '{"spanId":"xyz"}',
    f"trace_id={TRACE}ab", f"span_id={SPAN}00",
    "traceparent 00-00000000000000000000000000000000-00f067aa0ba902b7-01",
    f"id=100-{TRACE}-{SPAN}-01",                                 # not a traceparent: glued to other text
])
def test_invalid_trace_and_span_ids_are_refused(correlator, body):
    result = found(correlator, body)
    assert "trace_id" not in result and "span_id" not in result


def test_ids_with_escapes_are_copied_as_valid_json(correlator):
    body = r'{"request_id":"a\"b\\c\u00e9\n","correlation_id":"plain"}'
    assert found(correlator, body)["attributes"] == {"request_id": 'a"b\\c\u00e9\n', "correlation_id": "plain"}


def test_non_ascii_and_control_characters_never_break_the_record(correlator):
    assert found(correlator, 'request_id=caf\u00e9-\u2603 x')["attributes"] == {"request_id": "caf\u00e9-\u2603"}
    # A raw control character or quote ends an unquoted value before it.
    assert found(correlator, 'request_id=ab\x01cd')["attributes"] == {"request_id": "ab"}
    assert found(correlator, '{"request_id":"a\x01b"}')["attributes"] == {}


def test_overlong_ids_are_not_copied(correlator):
    assert found(correlator, '{"request_id":"' + "r" * 300 + '"}')["attributes"] == {}
    assert found(correlator, "request_id=" + "r" * 300)["attributes"] == {}


def test_text_with_embedded_json(correlator):
    body = 'payload received {"request_id":"in-json","n":1}'
    assert found(correlator, body)["attributes"] == {"request_id": "in-json"}


def test_configured_field_names():
    custom = Correlator(["X-Correlation-ID", "txn", "traceparent", "dd.trace_id"])
    assert kind_of("X-Correlation-ID") == "correlation_id" and kind_of("txn") == "txn"
    assert found(custom, f'{{"X-Correlation-ID":"c","txn":"t-1","dd.trace_id":"{TRACE}"}}') == {
        "body": "x", "trace_id": TRACE, "attributes": {"correlation_id": "c", "txn": "t-1"}}
    assert found(custom, '{"request_id":"not configured"}') == {"body": "x", "attributes": {}}


def test_processor_returns_none_when_nothing_to_add():
    process = make_body_processor(EnrichConfig())
    assert process("plain text line without anything") is None
    assert process('{"msg":"json without ids"}') is None


def test_processor_keeps_the_body_object_when_not_redacted():
    process = make_body_processor(EnrichConfig())
    body = f'{{"trace_id":"{TRACE}"}}'
    new_body, top, attributes = process(body)
    assert new_body is body and top == f',"trace_id":"{TRACE}"' and attributes == ""


def test_parse_json_bodies_copies_top_level_scalars():
    process = make_body_processor(EnrichConfig(parse_json_bodies=True))
    body = '{"msg":"hi","n":3,"ok":true,"none":null,"ratio":0.5,"nested":{"a":1},"list":[1],"request_id":"r"}'
    _, _, attributes = process(body)
    assert json.loads("{" + attributes + "}") == {
        "request_id": "r", "body.msg": "hi", "body.n": 3, "body.ok": True, "body.none": None, "body.ratio": 0.5,
        "body.request_id": "r"}
    assert process('{"broken": ') is None


text_bodies = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=300)
id_like = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=40)


@settings(max_examples=300, deadline=None)
@given(body=text_bodies)
def test_any_body_splices_into_valid_json(body):
    correlator = Correlator(FIELDS)
    record(*correlator.extract(body))
    record(*correlator.extract("{" + body))


@settings(max_examples=300, deadline=None)
@given(value=id_like, key=st.sampled_from(["request_id", "correlationId", "x-request-id"]))
def test_json_encoded_ids_round_trip(value, key):
    correlator = Correlator(FIELDS)
    body = json.dumps({"msg": "m", key: value})
    attributes = found(correlator, body)["attributes"]
    if value:
        assert list(attributes.values()) == [value]
    else:
        assert attributes == {}
