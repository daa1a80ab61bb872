"""Correlation ids and severity found in a log body, without parsing the body.

Owns: which body fields are read as ids (EnrichConfig.correlation_fields), where they go in the record
(trace_id / span_id at the top level; request_id, correlation_id and any other configured name in
attributes), the W3C `traceparent`, and `severity_text`.

Cost model (this runs once per line): Python's regex engine scans fast for a literal and is slow at
every position where it must try a match. So the JSON pattern starts with the literal `"` and its key
alternatives each start with a literal (rejected after one character compare), and the key=value pattern
starts with `=` and checks the key behind it. A body is never `json.loads`-ed here.

Values taken from JSON strings are copied raw: the pattern admits only what is valid inside a JSON
string (valid escapes, no quote, no control character), so the copy is already JSON text. Values taken
from key=value text exclude quotes, backslashes and control characters for the same reason. Ids longer
than MAX_ID_CHARS are not taken. Trace ids must be 32 hex digits and not all zero, span ids 16 hex digits
and not all zero (W3C); both are written in lower case.
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from json.encoder import encode_basestring_ascii

TRACE = "trace_id"
SPAN = "span_id"
REQUEST = "request_id"
CORRELATION = "correlation_id"
TRACEPARENT = "traceparent"
MAX_ID_CHARS = 256
_ZERO_TRACE = "0" * 32
_ZERO_SPAN = "0" * 16

LEVEL_FIELDS = ("level", "severity", "lvl", "loglevel", "severity_text", "log.level")
TEXT_LEVEL_KEYS = ("level", "lvl", "severity")

# W3C Trace Context: version 00, 32-hex trace id, 16-hex parent (span) id, 2-hex flags.
_TRACEPARENT = re.compile(r"(?<![0-9a-zA-Z-])00-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}(?![0-9a-zA-Z-])")

LEVEL_WORDS = ("TRACE", "DEBUG", "INFO", "NOTICE", "WARN", "WARNING", "ERROR", "ERR", "CRITICAL", "CRIT",
               "FATAL", "PANIC", "ALERT", "EMERG", "EMERGENCY")
# A level word at the start of a text line, optionally in brackets, optionally after one timestamp
# (`2026-11-28T18:00:00Z INFO`, `[2026-11-28 18:00:00,123] [WARN]`); or klog's `I1128 18:00:00.000000`
# (the Kubernetes components' format).
_LEADING_LEVEL_WORD = (r"(?:\[?\d[\d\-:T.,Z+ ]*\]?\s+)?\[?((?i:" + "|".join(sorted(LEVEL_WORDS, key=len, reverse=True))
                       + r"))(?![\w-])")
_KLOG_LEVEL = {"I": "INFO", "W": "WARN", "E": "ERROR", "F": "FATAL"}
# pino / bunyan numeric levels.
_NUMERIC_LEVEL = {"10": "TRACE", "20": "DEBUG", "30": "INFO", "40": "WARN", "50": "ERROR", "60": "FATAL"}
# A JSON string's content, unrolled (a run of plain characters, then escape + run, ...) so the common
# escape-free id is one fast character-class run. Plain runs and escapes are each capped.
_JSON_STRING = (r'[^"\\\x00-\x1f]{0,%d}(?:\\(?:["\\/bfnrt]|u[0-9a-fA-F]{4})[^"\\\x00-\x1f]{0,%d}){0,%d}'
                % (MAX_ID_CHARS, MAX_ID_CHARS, MAX_ID_CHARS))
_TEXT_CHAR = r'[^\s"\\,;&\'<>()\[\]{}\x00-\x1f\x7f]'
_TEXT_VALUE = r'"?(%s{1,%d})(?!%s)' % (_TEXT_CHAR, MAX_ID_CHARS, _TEXT_CHAR)


def kind_of(field: str) -> str:
    """Where a configured correlation field goes: `trace_id`, `span_id`, `request_id`, `correlation_id`
    (names that say so in any spelling: `traceId`, `x-request-id`, `X-Correlation-ID`), `traceparent`,
    or, for a name that says none of these, an attribute of its own name."""
    normal = field.lower().replace("-", "").replace("_", "").replace(".", "")
    for word, kind in (("traceparent", TRACEPARENT), ("trace", TRACE), ("span", SPAN), ("request", REQUEST),
                       ("correlation", CORRELATION)):
        if word in normal:
            return kind
    return field


class Correlator:
    """Finds ids and severity in a body: `extract(body) -> (top_level_members, attribute_members)`.

    Both are JSON text ready for splicing into a record: top-level members start with a comma
    (`,"severity_text":"INFO","trace_id":"…","span_id":"…"`), attribute members have no comma at
    either end (`"request_id":"…","correlation_id":"…"`); ('', '') when nothing was found. The first
    valid value of each kind wins. JSON bodies (starting with `{`) are read as JSON members, other bodies
    as key=value text with a leading level word; a traceparent is found anywhere.
    """

    __slots__ = ("_json_findall", "_text_findall", "_attribute_prefix", "_text_attribute_prefixes",
                 "_severity_cache", "_names_by_kind")

    def __init__(self, fields: Sequence[str]) -> None:
        names_by_kind: dict[str, list[str]] = {TRACE: [], SPAN: []}
        for field in dict.fromkeys(fields):
            kind = kind_of(field)
            if kind != TRACEPARENT:       # a traceparent is recognised by its shape, wherever it is
                names_by_kind.setdefault(kind, []).append(field)
        self._names_by_kind = names_by_kind
        attribute_kinds = [kind for kind in names_by_kind if kind not in (TRACE, SPAN)]
        # `"<attribute>":"` by the field name found in a JSON body, and by group in key=value text.
        self._attribute_prefix = {name: encode_basestring_ascii(kind) + ':"'
                                  for kind in attribute_kinds for name in names_by_kind[kind]}
        self._text_attribute_prefixes = tuple(encode_basestring_ascii(kind) + ':"' for kind in attribute_kinds)
        self._json_findall = _json_pattern(names_by_kind[TRACE], names_by_kind[SPAN],
                                           [name for kind in attribute_kinds for name in names_by_kind[kind]]).findall
        self._text_findall = _text_pattern(names_by_kind[TRACE], names_by_kind[SPAN],
                                           [names_by_kind[kind] for kind in attribute_kinds]).findall
        self._severity_cache: dict[str, str] = {letter: ',"severity_text":"' + word + '"'
                                                for letter, word in _KLOG_LEVEL.items()}

    def native_arguments(self) -> tuple[list[str], list[str], list[tuple[str, list[str]]]]:
        """The constructor arguments of the native twin, `shipper._native.Correlator(*these)`: trace id
        names, span id names, and `(kind, names)` per attribute kind, in the order this Correlator tries
        them."""
        names = self._names_by_kind
        return (list(names[TRACE]), list(names[SPAN]),
                [(kind, list(kind_names)) for kind, kind_names in names.items() if kind not in (TRACE, SPAN)])

    def severity(self, word: str) -> str:
        """The `,"severity_text":"…"` member for a level word, pino number or klog letter ('' for none)."""
        member = self._severity_cache.get(word)
        if member is None:
            text = _NUMERIC_LEVEL.get(word, "") if word.isdigit() else word.upper()
            member = ',"severity_text":"' + text + '"' if text else ""
            if len(self._severity_cache) < 4096:
                self._severity_cache[word] = member
        return member

    def extract(self, body: str) -> tuple[str, str]:
        # Written for the interpreter: this runs once per line, and every operation counts.
        trace = span = top = attributes = ""
        if body[:1] == "{":
            found = self._json_findall(body)
        else:
            found = self._text_findall("=" + body)
            if found:
                return self._from_text(body, found)
            if "{" in body:
                found = self._json_findall(body)     # text with an embedded JSON object
        if found:
            prefixes = self._attribute_prefix
            for trace_v, span_v, word, number, key, value in found:
                if value:
                    prefix = prefixes[key]
                    # A kind's first value wins. (`"request_id":"` cannot occur inside a value: the
                    # quotes of values are escaped.)
                    if prefix not in attributes:
                        attributes = attributes + "," + prefix + value + '"' if attributes else prefix + value + '"'
                elif trace_v:
                    if not trace and trace_v != _ZERO_TRACE:
                        trace = trace_v
                elif span_v:
                    if not span and span_v != _ZERO_SPAN:
                        span = span_v
                elif not top:
                    top = self._severity_cache.get(word or number) or self.severity(word or number)
        if not trace:
            return self._finish(body, top, trace, span, attributes)
        # The common JSON line (it has a trace id) finishes here, without one more call.
        top += ',"trace_id":"' + trace.lower() + '"'
        if span:
            top += ',"span_id":"' + span.lower() + '"'
        return top, attributes

    def _from_text(self, body: str, found: list[tuple[str, ...]]) -> tuple[str, str]:
        trace = span = top = attributes = ""
        prefixes = self._text_attribute_prefixes
        for groups in found:
            value = groups[-2] or groups[-1]          # leading level word, klog letter
            if value:
                top = self._severity_cache.get(value) or self.severity(value)
                continue
            value = groups[0]
            if value:
                if not trace and value != _ZERO_TRACE:
                    trace = value
                continue
            value = groups[1]
            if value:
                if not span and value != _ZERO_SPAN:
                    span = value
                continue
            value = groups[2] or groups[3]
            if value:
                if not top:
                    top = self._severity_cache.get(value) or self.severity(value)
                continue
            for index, prefix in enumerate(prefixes, 4):
                value = groups[index]
                if value:
                    if prefix not in attributes:
                        attributes = attributes + "," + prefix + value + '"' if attributes else prefix + value + '"'
                    break
        return self._finish(body, top, trace, span, attributes)

    @staticmethod
    def _finish(body: str, top: str, trace: str, span: str, attributes: str) -> tuple[str, str]:
        if not trace and "00-" in body:
            parent = _TRACEPARENT.search(body)
            if parent is not None:
                parent_trace, parent_span = parent.groups()
                if parent_trace != _ZERO_TRACE and parent_span != _ZERO_SPAN:
                    trace = parent_trace
                    span = span or parent_span
        if trace:
            top += ',"trace_id":"' + trace.lower() + '"'
        if span:
            top += ',"span_id":"' + span.lower() + '"'
        return top, attributes


def _json_pattern(trace: Sequence[str], span: Sequence[str], attributes: Sequence[str]) -> re.Pattern[str]:
    """`"<name>":<value>`, groups (trace, span, level word, level number, attribute name, its value).
    Every alternative after the leading quote starts with a literal, so a quote that starts no wanted
    key is rejected after one character compare per alternative."""
    def keys(names: Sequence[str]) -> str:
        return "(?:" + "|".join(re.escape(name) for name in names) + ")"

    never = "(?!)"
    branches = [
        keys(trace) + r'":\s*"([0-9a-fA-F]{32})"' if trace else never + "()",
        keys(span) + r'":\s*"([0-9a-fA-F]{16})"' if span else never + "()",
        keys(LEVEL_FIELDS) + r'":\s*(?:"([A-Za-z]{1,16})"|(\d{2})(?![\d.]))',
        "(" + "|".join(re.escape(name) for name in attributes) + r')":\s*"(' + _JSON_STRING + ')"'
        if attributes else never + "()()",
    ]
    return re.compile('"(?:' + "|".join(branches) + ")")


def _text_pattern(trace: Sequence[str], span: Sequence[str], attributes: Sequence[Sequence[str]]) -> re.Pattern[str]:
    """`<name>=<value>` found from its `=`: one look-behind per name checks the key, and another (only
    reached when the key matched) that the key is a whole word. Groups: trace, span, level word, level
    number, one per attribute kind, leading level word, klog letter."""

    def keys(group: Sequence[str]) -> str:
        return "(?:" + "|".join("(?<=" + re.escape(name) + "=)(?<![\\w.-]" + re.escape(name) + "=)"
                                for name in group) + ")"

    branches = []
    branches.append(keys(trace) + r'"?([0-9a-fA-F]{32})(?![\w-])' if trace else "(?!)()")
    branches.append(keys(span) + r'"?([0-9a-fA-F]{16})(?![\w-])' if span else "(?!)()")
    levels = keys(TEXT_LEVEL_KEYS)
    branches.append(levels + r'"?([A-Za-z]{1,16})(?![\w-])')
    branches.append(levels + r'(\d{2})(?![\d.])')
    for group in attributes:
        branches.append(keys(group) + _TEXT_VALUE)
    # The line is searched as "=" + line, so its start is one more `=`: a level word there (after an
    # optional timestamp), or klog's level letter.
    branches.append(r"(?<=\A=)" + _LEADING_LEVEL_WORD)
    branches.append(r"(?<=\A=)([IWEF])\d{4} \d\d:")
    return re.compile("=(?:" + "|".join(branches) + ")")
