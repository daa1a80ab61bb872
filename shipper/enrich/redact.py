"""Redaction of secrets in log bodies, before anything else sees the body (ids, attributes, the seal).

Owns the built-in rules, the configured ones (EnrichConfig.redactions), the Luhn check and the
prefilter. A rule is a regular expression and a replacement; a `luhn` rule replaces a match only when
its digits pass the Luhn check. What fired is reported by rule name, never with the matched text.

Prefilter: most lines hold no secret, so `Redactor.candidate` first asks of the whole line whether any
rule could match. Each built-in rule has a trigger, a literal substring test or two (a C-speed scan
each; a regex alternation of the same literals is slower in Python's engine, which tests a character
class at every position). Card numbers are noticed by 13 digits in a row once spaces and dashes are
removed (one translate and one literal search). Only the rules whose trigger fired then run, and their
patterns start with a literal or a small class, so even a false alarm costs a few microseconds.
Configured rules are asked together, with one combined regex search.

A card number is a run of 13-19 digits (single spaces or dashes allowed between groups) not glued to
letters, whose first digit is 2-6 and which passes Luhn. Digit runs inside hex ids (trace and span ids)
are glued to letters and never redacted: that would corrupt the id.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ..config import RedactionRule

REDACTED = "[REDACTED]"


def luhn_valid(digits: str) -> bool:
    """The Luhn (mod 10) check of a string of decimal digits."""
    total = 0
    for position, char in enumerate(reversed(digits)):
        value = ord(char) - 48
        if position & 1:
            value *= 2
            if value > 9:
                value -= 9
        total += value
    return total % 10 == 0


@dataclass(frozen=True, slots=True)
class Rule:
    """`regex` finds candidates; `luhn` keeps only those whose digits pass Luhn; `pick`, when set,
    returns the (start, end) spans inside a candidate that are replaced."""

    name: str
    regex: re.Pattern[str]
    replacement: str
    luhn: bool = False
    pick: Callable[[str], list[tuple[int, int]]] | None = None
    trigger: Callable[[str], bool] | None = None    # cheap test: could this rule match the line at all?
    # A candidate right after this context is left alone (e.g. a span id that happens to be all digits).
    not_after: re.Pattern[str] | None = None


_DIGITS_TO_ZERO = bytes.maketrans(b"123456789", b"000000000")
# 13 digits in a row once spaces and dashes are removed. (Hex ids sometimes hold such a run too; the
# card rule then runs and finds nothing: about one line in a hundred with trace ids.)
_CARD_RUN = re.compile(rb"0000000000000").search


# The value of a W3C trace or span id field (`"span_id":"4507294942205492"`): 16 hex digits are all
# decimal digits in about one id in two thousand, and a tenth of those pass Luhn. Free-form id fields
# (request, correlation) get no such pass: a card number there is still a card number.
_ID_CONTEXT = re.compile(r"""(?:span|trace|parent)[_\-]?id["']?\s*[:=]\s*["']?$""", re.IGNORECASE)


def _card_trigger(body: str) -> bool:
    return _CARD_RUN(body.encode().translate(_DIGITS_TO_ZERO, b" -")) is not None


# Built-in rules. Replacements keep the part that says what the secret was (`Bearer `, the URL's scheme
# and user) so the line stays readable. Each pattern starts with a literal or a small character class
# (not a look-behind or a case-insensitive flag), so the engine skips to the places worth trying.
DEFAULT_RULES: tuple[Rule, ...] = (
    Rule("bearer_token", re.compile(r"(Bearer|bearer|BEARER)(?<![A-Za-z0-9_]......)(\s+)[A-Za-z0-9\-._~+/]{8,}=*"),
         r"\1\2" + REDACTED, trigger=lambda body: "earer" in body or "EARER" in body),
    Rule("aws_access_key_id", re.compile(r"A(?<![A-Z0-9]A)[KS]IA[A-Z0-9]{16}(?![A-Z0-9])"), REDACTED,
         trigger=lambda body: "IA" in body),
    Rule("aws_secret_access_key",
         re.compile(r"""((?:aws|AWS|Aws)_(?:secret|SECRET|Secret)_(?:access|ACCESS|Access)_(?:key|KEY|Key)["']?\s*[:=]\s*["']?)"""
                    r"[A-Za-z0-9/+=]{16,}"), r"\1" + REDACTED,
         trigger=lambda body: "ccess_" in body or "CCESS_" in body),   # access_Key, ACCESS_key too
    # user:password@ in a URL's authority (after a scheme); the password runs to the authority's last `@`.
    Rule("url_password", re.compile(r"""://(?<=[A-Za-z0-9+.\-]://)([^:/?#@\s"'<>]*:)[^/?#\s"'<>]+(?=@)"""),
         "://\\1" + REDACTED, trigger=lambda body: "://" in body),
    # Runs of 13 or more digits, in groups separated by one space or dash, not glued to letters (hex ids
    # hold such runs); within a run, card numbers are picked out by `_card_spans` (see there).
    Rule("credit_card", re.compile(r"[0-9](?<![0-9A-Za-z][0-9])(?=(?:[ \-]?[0-9]){12})[0-9]{0,18}(?:[ \-][0-9]{1,19})*"
                                   r"(?![0-9A-Za-z])"),
         REDACTED, luhn=True, pick=lambda run: _card_spans(run), trigger=_card_trigger, not_after=_ID_CONTEXT),
)


def _card_spans(run: str) -> list[tuple[int, int]]:
    """(start, end) of the card numbers in a run of digit groups (`4111 1111 1111 1111 2025`): whole
    groups, 13-19 digits in all, first digit 2-6 (Mir/Mastercard, Amex/JCB/Diners, Visa, Mastercard,
    Discover/UnionPay; this keeps epoch-millisecond and nanosecond timestamps, which start with 1, from
    being taken for cards when they happen to pass Luhn), passing the Luhn check. Leftmost first, then
    longest."""
    groups = [(match.start(), match.end()) for match in _DIGIT_GROUP.finditer(run)]
    spans = []
    first = 0
    while first < len(groups):
        found = None
        if "2" <= run[groups[first][0]] <= "6":
            digits = ""
            candidates = []
            for last in range(first, len(groups)):
                digits += run[groups[last][0]:groups[last][1]]
                if len(digits) > 19:
                    break
                if len(digits) >= 13 and luhn_valid(digits):
                    candidates.append(last)
            if candidates:
                found = candidates[-1]
        if found is None:
            first += 1
        else:
            spans.append((groups[first][0], groups[found][1]))
            first = found + 1
    return spans


_DIGIT_GROUP = re.compile(r"[0-9]+")


def default_candidate(body: str) -> bool:
    """Could a built-in rule match? False means certainly not; True is checked by the rules.
    (The built-in triggers inlined: this runs on every line.)"""
    return ("earer" in body or "EARER" in body or "IA" in body or "://" in body
            or "ccess_" in body or "CCESS_" in body
            or _CARD_RUN(body.encode().translate(_DIGITS_TO_ZERO, b" -")) is not None)


def compile_rule(rule: RedactionRule) -> Rule:
    return Rule(rule.name, re.compile(rule.pattern), rule.replacement, rule.luhn)


class Redactor:
    """Applies rules in order to a body: `redact(body) -> (new_body, fired rule names) | None`.

    `on_fired(name, count)` is told how many replacements each rule made (metrics)."""

    __slots__ = ("rules", "_defaults", "_custom_prefilter", "_on_fired")

    def __init__(self, rules: Sequence[Rule], on_fired: Callable[[str, int], None] | None = None,
                 defaults: bool = True) -> None:
        self._defaults = defaults
        self.rules = (tuple(DEFAULT_RULES) if defaults else ()) + tuple(rules)
        self._on_fired = on_fired
        self._custom_prefilter: Callable[[str], object] | None = None
        if rules:
            try:
                self._custom_prefilter = re.compile("|".join(f"(?:{rule.regex.pattern})" for rule in rules)).search
            except re.error:
                # Inline global flags such as `(?i)` cannot sit inside an alternation: ask each rule.
                searches = [rule.regex.search for rule in rules]
                self._custom_prefilter = lambda body: any(search(body) for search in searches)

    def __bool__(self) -> bool:
        return bool(self.rules)

    def candidate(self, body: str) -> bool:
        if self._defaults and default_candidate(body):
            return True
        custom = self._custom_prefilter
        return custom is not None and bool(custom(body))

    @property
    def prefilter(self) -> Callable[[str], bool]:
        """`candidate` as the fastest callable for this rule set (one call less per line when only the
        built-in rules are on)."""
        if self._custom_prefilter is None:
            return default_candidate
        return self.candidate

    def redact(self, body: str) -> tuple[str, tuple[str, ...]] | None:
        if not self.candidate(body):
            return None
        return self.apply(body)

    def apply(self, body: str) -> tuple[str, tuple[str, ...]] | None:
        """Every rule whose trigger fires (rules without one always run), in order."""
        fired: list[str] = []
        for rule in self.rules:
            if rule.trigger is not None and not rule.trigger(body):
                continue
            if rule.luhn:
                count = 0

                def replace_if_luhn(match: re.Match[str], rule: Rule = rule) -> str:
                    nonlocal count
                    text = match.group(0)
                    if rule.not_after is not None and \
                            rule.not_after.search(match.string, max(0, match.start() - 40), match.start()):
                        return text
                    if rule.pick is not None:
                        spans = rule.pick(text)
                        if not spans:
                            return text
                        count += len(spans)
                        pieces, position = [], 0
                        for start, end in spans:
                            pieces += [text[position:start], rule.replacement]
                            position = end
                        return "".join(pieces) + text[position:]
                    digits = "".join(char for char in text if "0" <= char <= "9")
                    if len(digits) >= 2 and luhn_valid(digits):
                        count += 1
                        return match.expand(rule.replacement)
                    return text

                new_body = rule.regex.sub(replace_if_luhn, body)
            else:
                new_body, count = rule.regex.subn(rule.replacement, body)
            if count:
                body = new_body
                fired.append(rule.name)
                if self._on_fired is not None:
                    self._on_fired(rule.name, count)
        if not fired:
            return None
        return body, tuple(fired)


def build_redactor(configured: Sequence[RedactionRule], defaults: bool,
                   on_fired: Callable[[str, int], None] | None = None) -> Redactor:
    return Redactor([compile_rule(rule) for rule in configured], on_fired, defaults)
