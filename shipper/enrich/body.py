"""The per-line body stage: redaction, then correlation ids and severity, as one BodyProcessor.

`make_body_processor(config, metrics)` returns `process(body) -> None | (body, top, attributes)` (the
contract in records.py). Redaction runs first and ids are read from the redacted body, so a secret can
never be copied into an attribute. None, the common answer, means nothing to change or add.

With `parse_json` (EnrichConfig.parse_json_bodies, or per pod the annotation
`audit-shipper.io/parse-json: "true"`), the top-level scalar members of a JSON body are copied into
attributes as `body.<key>`; that path does parse the body, which is why it is opt-in.
"""
from __future__ import annotations

import json
import math
from collections.abc import Callable
from json.encoder import encode_basestring_ascii

from ..config import EnrichConfig
from ..native import module as _native
from .correlation import Correlator
from .redact import Redactor, build_redactor

# body -> None (nothing to change or add) or (body after redaction, top-level JSON members,
# attribute members). The same alias lives in records.py, the caller.
BodyProcessor = Callable[[str], "tuple[str, str, str] | None"]

MAX_BODY_FIELDS = 64          # body.* attributes copied from one JSON body
MAX_BODY_FIELD_CHARS = 4096   # longer string values are not copied (the body holds them anyway)


def make_body_processor(config: EnrichConfig, metrics=None, parse_json: bool | None = None) -> BodyProcessor:
    """The body stage for one configuration; `parse_json` overrides config.parse_json_bodies."""
    correlator = Correlator(config.correlation_fields)
    redactor = build_redactor(config.redactions, config.default_redactions, _redaction_counter(metrics))
    if parse_json is None:
        parse_json = config.parse_json_bodies
    process = _compose(correlator, redactor, parse_json)
    if _native is not None and not parse_json and not config.redactions:
        # The sealing loop runs this stage in C for ASCII bodies no built-in rule could touch (the
        # prefilter, then ids); every other body still comes here. Configured rules and JSON body
        # fields keep the whole stage in Python.
        process.native_correlator = _native.Correlator(*correlator.native_arguments())
    return process


def _compose(correlator: Correlator, redactor: Redactor, parse_json: bool) -> BodyProcessor:
    extract = correlator.extract
    candidate = redactor.prefilter if redactor else None
    apply_rules = redactor.apply
    rules_members: dict[tuple[str, ...], str] = {}

    def process(body: str) -> tuple[str, str, str] | None:
        rules = ""
        if candidate is not None and candidate(body):
            redacted = apply_rules(body)
            if redacted is not None:
                body, fired = redacted
                rules = rules_members.get(fired) or rules_members.setdefault(fired, _rules_member(fired))
        top, attributes = extract(body)
        if parse_json and body[:1] == "{":
            fields = body_fields(body)
            if fields:
                attributes = attributes + "," + fields if attributes else fields
        if rules:
            attributes = attributes + "," + rules if attributes else rules
        elif not top and not attributes:
            return None
        return body, top, attributes

    return process


def _rules_member(fired: tuple[str, ...]) -> str:
    return '"redaction.rules":[' + ",".join(encode_basestring_ascii(name) for name in fired) + "]"


def _redaction_counter(metrics) -> Callable[[str, int], None] | None:
    if metrics is None:
        return None
    children: dict[str, object] = {}

    def count(rule: str, replaced: int) -> None:
        child = children.get(rule)
        if child is None:
            child = children[rule] = metrics.redactions.labels(rule=rule)
        child.inc(replaced)

    return count


def body_fields(body: str) -> str:
    """`"body.<key>":<value>` members for the top-level scalars of a JSON object body ('' otherwise)."""
    try:
        document = json.loads(body)
    except ValueError:
        return ""
    if not isinstance(document, dict):
        return ""
    members = []
    for key, value in document.items():
        if len(members) >= MAX_BODY_FIELDS:
            break
        if isinstance(value, str):
            if len(value) > MAX_BODY_FIELD_CHARS:
                continue
            text = encode_basestring_ascii(value)
        elif value is True:
            text = "true"
        elif value is False:
            text = "false"
        elif value is None:
            text = "null"
        elif isinstance(value, int):
            text = int.__repr__(value)
        elif isinstance(value, float):
            if not math.isfinite(value):
                continue
            text = float.__repr__(value)
        else:
            continue                  # objects and arrays stay in the body
        members.append(encode_basestring_ascii("body." + key) + ":" + text)
    return ",".join(members)
