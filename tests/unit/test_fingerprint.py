"""Fingerprint (shipper/model.py): the identity of a file's first bytes. Its text is the string the
release before the type wrote to WAL frames and state.db, for every file; `parse` reads back exactly
those strings; `starts_with` decides as that release's `fingerprint_matches` did."""
from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings, strategies as st

from shipper.model import FINGERPRINT_BYTES, Fingerprint

HEX = "35b6d703ce6529ffaf8dc29cfcc65549a3d1a2c481c51d48387c243a5a8c9de0"


# The functions the type replaces, as the release before it had them (shipper/tail/identity.py).
def released_fingerprint(head: bytes) -> str:
    n = len(head)
    if n >= FINGERPRINT_BYTES:
        return hashlib.sha256(head[:FINGERPRINT_BYTES]).hexdigest()
    if n == 0:
        return ""
    return f"{n}:{hashlib.sha256(head).hexdigest()}"


def released_fingerprint_matches(fp: str, head: bytes) -> bool:
    if not fp:
        n = 0
    else:
        count, sep, _ = fp.partition(":")
        n = int(count) if sep and count.isdigit() else FINGERPRINT_BYTES
    if len(head) < n:
        return False
    return released_fingerprint(head[:n]) == fp


@pytest.mark.parametrize("head,text", [
    (b"", ""),
    (b"2026-11-28T18:00:00Z stdout F hi\n",
     "33:02c565c794dd87b7fa016ce03f0e582a6df5e9dc4cc80b1524d187d58a33da71"),
    (b"2026-11-28T18:00:00Z stdout F " + b"x" * 300, HEX),
])
def test_full_short_and_empty_fingerprints_round_trip_through_the_text_the_last_release_wrote(head, text):
    fingerprint = Fingerprint.of(head)
    assert fingerprint.text == text
    assert Fingerprint.parse(text) == fingerprint
    assert fingerprint.length == min(len(head), FINGERPRINT_BYTES)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=FINGERPRINT_BYTES + 64))
def test_text_is_the_released_string_for_any_first_bytes_and_parses_back(head):
    fingerprint = Fingerprint.of(head)
    assert fingerprint.text == released_fingerprint(head)
    assert Fingerprint.parse(fingerprint.text) == fingerprint


@st.composite
def fingerprint_and_head(draw):
    """First bytes a fingerprint is taken of, and a head to hold against it: the same bytes cut or
    extended, one byte changed, or unrelated bytes."""
    taken_of = draw(st.binary(max_size=FINGERPRINT_BYTES + 16))
    kind = draw(st.sampled_from(["cut", "extended", "changed", "other"]))
    if kind == "cut":
        head = taken_of[:draw(st.integers(0, len(taken_of)))]
    elif kind == "extended":
        head = taken_of + draw(st.binary(max_size=FINGERPRINT_BYTES))
    elif kind == "changed" and taken_of:
        at = draw(st.integers(0, len(taken_of) - 1))
        head = taken_of[:at] + bytes([taken_of[at] ^ draw(st.integers(1, 255))]) + taken_of[at + 1:]
    else:
        head = draw(st.binary(max_size=FINGERPRINT_BYTES + 16))
    return taken_of, head


@settings(max_examples=500, deadline=None)
@given(fingerprint_and_head())
def test_starts_with_decides_as_the_released_fingerprint_matches(case):
    taken_of, head = case
    assert Fingerprint.of(taken_of).starts_with(head) is released_fingerprint_matches(released_fingerprint(taken_of),
                                                                                       head)


@pytest.mark.parametrize("head,taken_of,expected", [
    (b"abc", b"abc", True), (b"abcdef", b"abc", True), (b"ab", b"abc", False), (b"abd", b"abc", False),
    (b"", b"", True), (b"x" * 300, b"x" * 256, True), (b"x" * 255, b"x" * 256, False),
])
def test_a_file_starts_with_a_fingerprint_when_it_has_the_bytes_it_covers(head, taken_of, expected):
    assert Fingerprint.of(taken_of).starts_with(head) is expected


@pytest.mark.parametrize("text", [
    "0:" + HEX, f"{FINGERPRINT_BYTES}:" + HEX, "033:" + HEX, "33:" + HEX.upper(), HEX.upper(), HEX[:-1],
    HEX + "0", "33:", ":" + HEX, "fp", " " + HEX, "\u0663\u0663:" + HEX,
])
def test_parse_refuses_a_text_no_release_writes(text):
    with pytest.raises(ValueError, match="not a fingerprint"):
        Fingerprint.parse(text)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(alphabet="0123456789abcdefABCDEF:", max_size=70),
                 st.from_regex(r"\A(?:[0-9]{1,3}:)?[0-9a-f]{64}\Z")))
def test_parse_gives_back_a_fingerprint_whose_text_is_the_text_or_refuses_it(text):
    try:
        fingerprint = Fingerprint.parse(text)
    except ValueError:
        return
    assert fingerprint.text == text


def test_a_fingerprint_cannot_be_built_with_a_length_or_digest_it_cannot_have():
    for length, digest in ((FINGERPRINT_BYTES + 1, bytes(32)), (-1, bytes(32)), (3, bytes(31)), (0, bytes(32))):
        with pytest.raises(ValueError):
            Fingerprint(length, digest)
