"""Redaction: each built-in rule, the Luhn gate, custom rules, metrics, and the guarantee that a
secret never reaches the record's body or attributes."""
from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shipper.config import EnrichConfig, RedactionRule
from shipper.enrich import make_body_processor
from shipper.enrich.redact import DEFAULT_RULES, build_redactor, default_candidate, luhn_valid
from shipper.metrics import Metrics

VISA = "4111111111111111"          # passes Luhn
VISA_BAD = "4111111111111112"      # fails Luhn
AMEX = "378282246310005"
MASTERCARD_SPACED = "5555 5555 5555 4444"
AWS_KEY_ID = "AKIAIOSFODNN7EXAMPLE"
AWS_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl"


def redacted(body: str, **config) -> tuple[str, list[str]]:
    """(body after redaction, rules fired) through the real body processor."""
    process = make_body_processor(EnrichConfig(**config))
    result = process(body)
    if result is None:
        return body, []
    new_body, _, attributes = result
    return new_body, json.loads("{" + attributes + "}").get("redaction.rules", [])


@pytest.mark.parametrize("body, expected, rule", [
    (f"Authorization: Bearer {JWT}", "Authorization: Bearer [REDACTED]", "bearer_token"),
    (f'{{"headers":{{"authorization":"bearer {JWT}"}}}}', '{"headers":{"authorization":"bearer [REDACTED]"}}',
     "bearer_token"),
    (f"key id {AWS_KEY_ID} used", "key id [REDACTED] used", "aws_access_key_id"),
    ("session ASIAY34FZKBOKMUTVV7A ok", "session [REDACTED] ok", "aws_access_key_id"),
    (f"aws_secret_access_key={AWS_SECRET}", "aws_secret_access_key=[REDACTED]", "aws_secret_access_key"),
    (f'AWS_SECRET_ACCESS_KEY: "{AWS_SECRET}"', 'AWS_SECRET_ACCESS_KEY: "[REDACTED]"', "aws_secret_access_key"),
    # the rule takes every casing it lists; the prefilter once missed these two
    (f"Aws_Secret_Access_Key={AWS_SECRET}", "Aws_Secret_Access_Key=[REDACTED]", "aws_secret_access_key"),
    (f"AWS_SECRET_ACCESS_key={AWS_SECRET}", "AWS_SECRET_ACCESS_key=[REDACTED]", "aws_secret_access_key"),
    ("connect postgres://app:s3cr3t@db:5432/x", "connect postgres://app:[REDACTED]@db:5432/x", "url_password"),
    ("https://u:p%40ss@w0rd@host/path", "https://u:[REDACTED]@host/path", "url_password"),
    (f"paid with {VISA} today", "paid with [REDACTED] today", "credit_card"),
    (f"card {MASTERCARD_SPACED}.", "card [REDACTED].", "credit_card"),
    ("amex 3782-822463-10005 ok", "amex [REDACTED] ok", "credit_card"),
    (f'{{"card":"{AMEX}"}}', '{"card":"[REDACTED]"}', "credit_card"),
])
def test_each_default_rule(body, expected, rule):
    assert redacted(body) == (expected, [rule])


@pytest.mark.parametrize("body", [
    f"order {VISA_BAD} shipped",             # fails Luhn
    "ts=1732812345678 took 12ms",             # epoch milliseconds (starts with 1) even when Luhn-valid
    "id 12345678901234567890123",            # too long for a card
    "https://host:8443/path?x=1",            # a port is not a password
    "mail me at user@example.com",
    "Bearer",                                 # no token
    "AKIAIOSFODNN7EXAMPL",                    # 15 characters after AKIA
    "plain text line",
])
def test_no_redaction_without_a_secret(body):
    assert redacted(body) == (body, [])


@pytest.mark.parametrize("trace", ["08440321c1bc6f3fc67325598782192d", "03321f3d1dc23cb4725798509012e612",
                                   "f55be89f0876c26654f4547138479809"])
def test_digit_runs_inside_hex_ids_are_not_cards(trace):
    """These ids hold a Luhn-valid 13+ digit run; redacting it would corrupt the id."""
    body = f'{{"trace_id":"{trace}","n":1}}'
    assert redacted(body) == (body, [])


@settings(max_examples=500, deadline=None)
@given(trace=st.integers(0, 2**128 - 1), span=st.integers(0, 2**64 - 1))
def test_hex_ids_are_never_redacted(trace, span):
    body = f'{{"trace_id":"{trace:032x}","span_id":"{span:016x}"}}'
    assert redacted(body) == (body, [])


def test_epoch_millis_passing_luhn_is_kept():
    millis = next(str(n) for n in range(1732812345678, 1732812345700) if luhn_valid(str(n)))
    assert redacted(f'{{"ts":{millis}}}') == (f'{{"ts":{millis}}}', [])


@pytest.mark.parametrize("digits, valid", [
    ("4111111111111111", True), ("4111111111111112", False), ("79927398713", True), ("79927398710", False),
    ("0", True), ("378282246310005", True), ("6011111111111117", True), ("6011111111111118", False),
])
def test_luhn(digits, valid):
    assert luhn_valid(digits) is valid


def test_secret_never_lands_in_attributes():
    """Redaction runs before id extraction: an id field holding a secret is copied redacted."""
    process = make_body_processor(EnrichConfig())
    body = f'{{"request_id":"Bearer {JWT}","correlation_id":"{VISA}","msg":"x"}}'
    new_body, _, attributes = process(body)
    assert JWT not in new_body and VISA not in new_body
    assert JWT not in attributes and VISA not in attributes
    assert json.loads("{" + attributes + "}") == {
        "request_id": "Bearer [REDACTED]", "correlation_id": "[REDACTED]",
        "redaction.rules": ["bearer_token", "credit_card"]}


def test_several_rules_in_one_line_are_all_listed():
    body, rules = redacted(f"Bearer {JWT} then {VISA} and mysql://root:hunter22@db")
    assert rules == ["bearer_token", "url_password", "credit_card"]
    assert "hunter22" not in body and JWT not in body and VISA not in body


def test_redaction_counts_per_rule_in_metrics():
    metrics = Metrics()
    process = make_body_processor(EnrichConfig(), metrics)
    process(f"{VISA} and {AMEX}")
    process(f"Bearer {JWT}")
    sample = metrics.registry.get_sample_value
    assert sample("audit_shipper_redactions_total", {"rule": "credit_card"}) == 2
    assert sample("audit_shipper_redactions_total", {"rule": "bearer_token"}) == 1


def test_custom_rules_with_groups_and_luhn():
    rules = [RedactionRule(name="email", pattern=r"([\w.]+)@([\w.]+)", replacement=r"***@\2"),
             RedactionRule(name="imei", pattern=r"\b\d{15}\b", luhn=True, replacement="<imei>")]
    body, fired = redacted("from a.b@example.org imei 490154203237518 other 490154203237519",
                           redactions=rules, default_redactions=False)
    assert body == "from ***@example.org imei <imei> other 490154203237519"
    assert fired == ["email", "imei"]


def test_custom_rule_with_inline_flags_still_prefiltered():
    rules = [RedactionRule(name="token", pattern=r"(?i)token=\S+")]
    assert redacted("TOKEN=abc x", redactions=rules, default_redactions=False) == ("[REDACTED] x", ["token"])
    assert redacted("nothing", redactions=rules, default_redactions=False) == ("nothing", [])


def test_default_rules_off():
    assert redacted(f"Bearer {JWT}", default_redactions=False) == (f"Bearer {JWT}", [])


def test_rule_names_are_json_escaped():
    rules = [RedactionRule(name='we"ird\\name', pattern="secret")]
    body, fired = redacted("a secret", redactions=rules, default_redactions=False)
    assert body == "a [REDACTED]" and fired == ['we"ird\\name']


secrets_ = st.sampled_from([f"Bearer {JWT}", AWS_KEY_ID, f"aws_secret_access_key={AWS_SECRET}",
                            "redis://user:pa55word@cache:6379", VISA, MASTERCARD_SPACED])
filler = st.text(alphabet=st.sampled_from(list("abc xyz=:/-_\"{},.;0123")), max_size=40)


@settings(max_examples=300, deadline=None)
@given(before=filler, secret=secrets_, after=filler)
def test_a_secret_anywhere_never_survives(before, secret, after):
    body = f"{before} {secret} {after}"
    process = make_body_processor(EnrichConfig())
    result = process(body)
    assert result is not None
    new_body, top, attributes = result
    needle = {"Bearer " + JWT: JWT, f"aws_secret_access_key={AWS_SECRET}": AWS_SECRET,
              "redis://user:pa55word@cache:6379": "pa55word"}.get(secret, secret)
    assert needle not in new_body and needle not in top and needle not in attributes


@settings(max_examples=300, deadline=None)
@given(body=st.text(max_size=200))
def test_prefilter_never_hides_a_match(body):
    """When the prefilter says no, no built-in rule would have changed the body."""
    if not default_candidate(body):
        redactor = build_redactor([], defaults=True)
        assert redactor.apply(body) is None


def test_default_rule_names_are_stable():
    assert [rule.name for rule in DEFAULT_RULES] == [
        "bearer_token", "aws_access_key_id", "aws_secret_access_key", "url_password", "credit_card"]


def test_records_built_by_the_sealer_carry_redacted_body_ids_and_rules():
    """The body stage through its real caller: records.seal_entries splices the fragments."""
    from shipper.parse import EntryFlag, Entries
    from shipper.records import ChainContext, seal_entries
    from shipper.seal import ChainHead

    process = make_body_processor(EnrichConfig())
    entries = Entries()
    bodies = [f'{{"level":"warn","trace_id":"4bf92f3577b34da6a3ce929d0e0e4736","request_id":"r1",'
              f'"auth":"Bearer {JWT}"}}', "plain line", f"ERROR paid {VISA} request_id=r2"]
    for offset, body in enumerate(bodies):
        entries.add(offset, b"2026-11-28T18:00:00Z", b"stdout", body.encode(), EntryFlag.TRUNCATED if offset == 1 else 0)
    values, _ = seal_entries(ChainHead.genesis("u/c"), entries, ChainContext("u/c", "{}", "/p"),
                             "2026-11-28T18:00:01Z", process)
    records = [json.loads(value) for value in values]
    assert records[0]["severity_text"] == "WARN" and records[0]["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert records[0]["attributes"] == {"request_id": "r1", "redaction.rules": ["bearer_token"]}
    assert JWT not in values[0].decode()
    assert records[1]["attributes"] == {"log.truncated": True} and "severity_text" not in records[1]
    assert records[2]["body"] == "ERROR paid [REDACTED] request_id=r2"
    assert records[2]["attributes"] == {"request_id": "r2", "redaction.rules": ["credit_card"]}


def test_all_digit_span_id_that_passes_luhn_is_not_taken_for_a_card():
    from shipper.config import load_settings
    from shipper.enrich import make_body_processor

    process = make_body_processor(load_settings().enrich, None)
    body = '{"trace_id":"f085185a6270fd94e3a39c3374fbd6bc","span_id":"4507294942205492","n":1}'
    result = process(body)
    assert result is not None and result[0] == body and '"span_id":"4507294942205492"' in result[1]
    assert process('{"card":"4111111111111111"}')[0] == '{"card":"[REDACTED]"}'
