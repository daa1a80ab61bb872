"""Kubernetes label selectors in their string form (`kubectl -l`), parsed and matched here.

Grammar: requirements separated by commas, all of which must hold (an empty selector matches
everything):
- `key`, `!key`: the label is there / is not there;
- `key=value`, `key==value`, `key!=value` (`!=` also holds when the label is missing);
- `key in (a,b)`, `key notin (a,b)` (`notin` also holds when the label is missing).

Keys are `[prefix/]name` and values follow the API server's label syntax, so a selector the API
server would refuse is refused here too, with the position of the mistake. Pure functions: no I/O.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import NoReturn

_NAME = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?")
_PREFIX = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_SPECIAL = " \t,()=!"

EXISTS, NOT_EXISTS, EQUALS, NOT_EQUALS, IN, NOT_IN = "exists", "!exists", "=", "!=", "in", "notin"


class SelectorSyntaxError(ValueError):
    """The text is not a label selector; the message says where and why."""


@dataclass(frozen=True, slots=True)
class Requirement:
    key: str
    operator: str
    values: frozenset[str] = frozenset()

    def matches(self, labels: Mapping[str, str]) -> bool:
        value = labels.get(self.key)
        operator = self.operator
        if operator == EXISTS:
            return value is not None
        if operator == NOT_EXISTS:
            return value is None
        if operator in (EQUALS, IN):
            return value is not None and value in self.values
        return value is None or value not in self.values        # != and notin


@dataclass(frozen=True, slots=True)
class LabelSelector:
    text: str
    requirements: tuple[Requirement, ...]

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(requirement.matches(labels) for requirement in self.requirements)

    def __bool__(self) -> bool:
        return bool(self.requirements)


def parse_selector(text: str) -> LabelSelector:
    return LabelSelector(text, tuple(_Parser(text).requirements()))


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = _tokens(text)
        self.index = 0

    def requirements(self) -> list[Requirement]:
        if not self.tokens:
            return []
        found = [self.requirement()]
        while self.peek() == ",":
            self.take()
            found.append(self.requirement())
        if self.index < len(self.tokens):
            self.fail("expected `,` or the end")
        return found

    def requirement(self) -> Requirement:
        if self.peek() == "!":
            self.take()
            return Requirement(self.key(), NOT_EXISTS)
        key = self.key()
        token = self.peek()
        if token is None or token == ",":
            return Requirement(key, EXISTS)
        if token in ("=", "==", "!="):
            self.take()
            operator = NOT_EQUALS if token == "!=" else EQUALS
            following = self.peek()
            value = "" if following is None or following == "," else self.value()
            return Requirement(key, operator, frozenset((value,)))
        if token in ("in", "notin"):
            self.take()
            return Requirement(key, IN if token == "in" else NOT_IN, self.value_set())
        self.fail("expected `=`, `==`, `!=`, `in`, `notin`, `,` or the end")

    def key(self) -> str:
        token = self.peek()
        if token is None or _is_special(token):
            self.fail("expected a label key")
        self.take()
        prefix, slash, name = token.rpartition("/")
        if slash and (len(prefix) > 253 or not _PREFIX.fullmatch(prefix)):
            self.fail(f"{token!r}: the key's prefix must be a DNS subdomain (lower case, at most 253 characters)",
                      back=1)
        if not _NAME.fullmatch(name):
            self.fail(f"{token!r}: a key's name is 1-63 letters, digits, `-`, `_` or `.`, "
                      f"beginning and ending with a letter or digit", back=1)
        return token

    def value(self) -> str:
        token = self.peek()
        if token is None or _is_special(token):
            self.fail("expected a label value")
        self.take()
        if not _NAME.fullmatch(token):
            self.fail(f"{token!r}: a value is at most 63 letters, digits, `-`, `_` or `.`, "
                      f"beginning and ending with a letter or digit", back=1)
        return token

    def value_set(self) -> frozenset[str]:
        if self.peek() != "(":
            self.fail("expected `(` and a list of values")
        self.take()
        values = {self.value()}
        while self.peek() == ",":
            self.take()
            values.add(self.value())
        if self.peek() != ")":
            self.fail("expected `,` or `)`")
        self.take()
        return frozenset(values)

    def peek(self) -> str | None:
        return self.tokens[self.index][0] if self.index < len(self.tokens) else None

    def take(self) -> str:
        token = self.tokens[self.index][0]
        self.index += 1
        return token

    def fail(self, why: str, back: int = 0) -> NoReturn:
        index = self.index - back
        where = self.tokens[index][1] if index < len(self.tokens) else len(self.text)
        raise SelectorSyntaxError(f"not a label selector: {why} at character {where + 1} of {self.text!r}")


def _is_special(token: str) -> bool:
    return token in (",", "(", ")", "=", "==", "!=", "!")


def _tokens(text: str) -> list[tuple[str, int]]:
    """(token, position) pairs: `,` `(` `)` `=` `==` `!=` `!`, and words (keys, values, `in`, `notin`)."""
    tokens: list[tuple[str, int]] = []
    position = 0
    while position < len(text):
        char = text[position]
        if char in " \t":
            position += 1
        elif char in ",()":
            tokens.append((char, position))
            position += 1
        elif char in "=!":
            pair = text[position:position + 2]
            if pair in ("==", "!="):
                tokens.append((pair, position))
                position += 2
            else:
                tokens.append((char, position))
                position += 1
        else:
            start = position
            while position < len(text) and text[position] not in _SPECIAL:
                position += 1
            tokens.append((text[start:position], start))
    return tokens
