"""Signed notes and checkpoint texts (shipper/note.py): the c2sp.org formats, strict parsing, and that
malformed input only ever raises BadNote."""
from __future__ import annotations

import base64
import hashlib

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shipper.note import (MAX_SIGNATURES, BadNote, NoteSigner, OpenedNote, TreeHead, VerifierKey, checkpoint_text,
                          key_hash, open_note, parse_checkpoint_text, parse_verifier_key, sign_note, verifier_key)

# The example in the documentation of golang.org/x/mod/sumdb/note: a private key (0x01 || seed), the
# verifier key that goes with it, and the note it signs.
EXAMPLE_SEED = base64.b64decode("AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz")[1:]
EXAMPLE_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
EXAMPLE_TEXT = "If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n"
EXAMPLE_NOTE = (EXAMPLE_TEXT + "\n\u2014 PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNX"
                "gKvqfqdngotpRZb6KE6RyyBwJnAM=\n")

ALICE = NoteSigner("example.com/alice", Ed25519PrivateKey.from_private_bytes(bytes(range(32))))
BOB = NoteSigner("example.com/bob", Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33))))
MALLORY_AS_ALICE = NoteSigner("example.com/alice", Ed25519PrivateKey.from_private_bytes(bytes(range(2, 34))))

note_lines = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\n",
                                   min_codepoint=0x20), max_size=30)
note_texts = st.lists(note_lines, min_size=1, max_size=6).map(lambda lines: "".join(line + "\n" for line in lines))


def example_signer() -> NoteSigner:
    return NoteSigner("PeterNeumann", Ed25519PrivateKey.from_private_bytes(EXAMPLE_SEED))


# ------------------------------------------------------------------------------------------- keys

def test_key_hash_and_verifier_key_match_the_published_example():
    key = example_signer().verifier
    assert key.key_hash.hex() == "c74f20a3"
    assert key_hash("PeterNeumann", key.public_raw) == key.key_hash
    assert verifier_key("PeterNeumann", key.public_raw) == EXAMPLE_VKEY == key.text


def test_key_hash_is_the_truncated_sha256_of_name_newline_algorithm_and_key():
    public = ALICE.verifier.public_raw
    assert key_hash(ALICE.name, public) == hashlib.sha256(ALICE.name.encode() + b"\n\x01" + public).digest()[:4]


def test_parse_verifier_key_gives_back_name_and_key():
    key = parse_verifier_key(EXAMPLE_VKEY)
    assert key == example_signer().verifier
    assert (key.name, key.public_raw) == ("PeterNeumann", example_signer().verifier.public_raw)
    assert parse_verifier_key(ALICE.verifier.text) == ALICE.verifier


@pytest.mark.parametrize("text", [
    "",
    "PeterNeumann",
    "PeterNeumann+c74f20a3",
    "+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",                # no name
    "Peter Neumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",   # space in the name
    "Peter\u00a0Neumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",  # a Unicode space
    "PeterNeumann+C74F20A3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",    # upper-case hash
    "PeterNeumann+c74f20a4+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",    # hash of another key
    "PeterNeumann+c74f20+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",      # short hash
    "PeterNeumann+c74f20a3+AhpczQcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",    # algorithm 0x02
    "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10",      # 31-byte key
    "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TX",    # another key than the hash names
    "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW\n",  # trailing newline
    "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW=",   # extra padding
])
def test_parse_verifier_key_rejects_malformed_keys(text):
    with pytest.raises(BadNote):
        parse_verifier_key(text)


@given(st.text(max_size=90))
def test_parse_verifier_key_raises_only_bad_note(text):
    try:
        parse_verifier_key(text)
    except BadNote:
        pass


@pytest.mark.parametrize("name", ["", "a b", "a+b", "a\nb", "a\tb", "a\u2028b", "a\x01b", "\ud800"])
def test_invalid_key_names_are_refused_for_signers_and_keys(name):
    with pytest.raises(BadNote):
        NoteSigner(name, Ed25519PrivateKey.generate())
    with pytest.raises(BadNote):
        verifier_key(name, ALICE.verifier.public_raw)


# ---------------------------------------------------------------------------------- sign and open

def test_signing_the_published_example_text_gives_its_published_note():
    assert sign_note(EXAMPLE_TEXT, [example_signer()]) == EXAMPLE_NOTE


def test_the_published_example_note_opens_with_its_verifier_key():
    opened = open_note(EXAMPLE_NOTE, [parse_verifier_key(EXAMPLE_VKEY)])
    assert opened == OpenedNote(EXAMPLE_TEXT, (parse_verifier_key(EXAMPLE_VKEY),), (), ())
    assert opened.trusted


@settings(max_examples=150, deadline=None)
@given(text=note_texts, signers=st.permutations([ALICE, BOB]), count=st.integers(1, 2))
def test_a_signed_note_opens_with_the_text_and_every_signers_key(text, signers, count):
    signers = signers[:count]
    note = sign_note(text, signers)
    opened = open_note(note, [ALICE.verifier, BOB.verifier])
    assert opened.text == text
    assert opened.verified == tuple(s.verifier for s in signers)
    assert opened.unknown == () and opened.bad == ()
    assert opened.trusted
    assert open_note(note.encode(), [ALICE.verifier, BOB.verifier]) == opened


def test_the_signature_block_follows_the_last_blank_line_so_the_text_may_hold_blank_lines():
    text = "first\n\nafter a blank line\n\n"
    note = sign_note(text, [ALICE])
    assert note == text + "\n" + note.rsplit("\n\n", 1)[1]
    assert open_note(note, [ALICE.verifier]).text == text


def test_signature_lines_are_em_dash_space_name_space_base64_of_hash_and_signature():
    note = sign_note("hello\n", [ALICE])
    line = note.split("\n")[2]
    assert line.startswith("\u2014 example.com/alice ")
    raw = base64.b64decode(line.split(" ")[2])
    assert raw[:4] == ALICE.key_hash and len(raw) == 68
    assert ALICE.verifier.signature_valid(b"hello\n", raw[4:])


def test_signatures_by_keys_not_given_are_set_aside_not_trusted():
    note = sign_note("hello\n", [ALICE, BOB])
    opened = open_note(note, [BOB.verifier])
    assert opened.verified == (BOB.verifier,)
    assert opened.unknown == ((ALICE.name, ALICE.key_hash),)
    nobody = open_note(note, [])
    assert nobody.verified == () and not nobody.trusted and len(nobody.unknown) == 2


def test_a_key_with_the_same_name_but_another_hash_is_unknown_not_bad():
    opened = open_note(sign_note("hello\n", [MALLORY_AS_ALICE]), [ALICE.verifier])
    assert MALLORY_AS_ALICE.key_hash != ALICE.key_hash
    assert opened.unknown == ((ALICE.name, MALLORY_AS_ALICE.key_hash),)
    assert not opened.trusted and opened.bad == ()


def test_a_signature_that_fails_under_its_named_key_is_bad():
    # Mallory's signature, claiming Alice's key hash.
    forged_signature = base64.b64encode(ALICE.key_hash + MALLORY_AS_ALICE.sign(b"pay mallory\n")).decode()
    note = f"pay mallory\n\n\u2014 {ALICE.name} {forged_signature}\n"
    opened = open_note(note, [ALICE.verifier])
    assert opened.bad == (ALICE.name,) and opened.verified == () and not opened.trusted


def test_a_tampered_text_does_not_verify():
    note = sign_note("amount 10\n", [ALICE])
    opened = open_note(note.replace("10", "99"), [ALICE.verifier])
    assert opened.text == "amount 99\n" and opened.bad == (ALICE.name,) and not opened.trusted


def test_a_bad_signature_among_good_ones_makes_the_note_untrusted():
    note = sign_note("hello\n", [ALICE])
    forged = base64.b64encode(BOB.key_hash + bytes(64)).decode()
    opened = open_note(note + f"\u2014 {BOB.name} {forged}\n", [ALICE.verifier, BOB.verifier])
    assert opened.verified == (ALICE.verifier,) and opened.bad == (BOB.name,) and not opened.trusted


def test_keys_sharing_name_and_hash_are_told_apart_by_the_signature():
    twin = VerifierKey(ALICE.name, BOB.verifier.public_raw)
    object.__setattr__(twin, "key_hash", ALICE.key_hash)  # a (rare) key hash collision
    opened = open_note(sign_note("hello\n", [ALICE]), [twin, ALICE.verifier])
    assert opened.verified == (ALICE.verifier,) and opened.bad == ()


@pytest.mark.parametrize("text", ["no newline", "", "tab\there\n", "nul\x00\n", "cr\r\n", "bad \ud800\n"])
def test_sign_note_refuses_what_is_not_note_text(text):
    with pytest.raises(BadNote):
        sign_note(text, [ALICE])


def test_sign_note_needs_a_signer_and_each_key_once():
    with pytest.raises(ValueError):
        sign_note("hello\n", [])
    with pytest.raises(ValueError):
        sign_note("hello\n", [ALICE, ALICE])


def _good_note() -> str:
    return sign_note("hello\n", [ALICE])


@pytest.mark.parametrize("note", [
    "",
    "hello\n",
    "hello\n\n",                                                       # no signature line
    _good_note()[:-1],                                                 # no final newline
    _good_note() + "\n",                                               # a blank line after the signatures
    _good_note().replace("\u2014 ", "- "),                             # a hyphen, not an em dash
    _good_note().replace("\u2014 ", "\u2014"),                         # no space after the dash
    _good_note().replace("example.com/alice ", "example.com/alice  "),  # two spaces
    _good_note().replace("example.com/alice ", "example.com/alice+x "),  # plus in the name
    _good_note().replace("example.com/alice ", ""),                    # no name
    _good_note().replace("=\n", "\n"),                                 # padding missing
    _good_note().replace("hello", "hel\rlo"),                          # a control character in the text
    "hello\n\n\u2014 example.com/alice AAAAAA==\n",                    # a signature of 4 bytes
    "hello\n\n\u2014 example.com/alice \n",                            # an empty signature
    "hello\n\n\u2014 example.com/alice AAAAAAB=\n",                    # non-canonical base64
    "hello\n\n\u2014 example.com/alice AAAA\u00e9AAA\n",               # not base64
    "hello\n\n" + "\u2014 a AAAAAAA=\n" * (MAX_SIGNATURES + 1),
])
def test_malformed_notes_raise_bad_note(note):
    with pytest.raises(BadNote):
        open_note(note, [ALICE.verifier])


def test_bytes_that_are_not_utf8_are_a_bad_note():
    with pytest.raises(BadNote):
        open_note(_good_note().encode().replace(b"hello", b"hell\xff"), [ALICE.verifier])


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.text(max_size=200), st.binary(max_size=200),
                 st.lists(st.sampled_from(["hello", "\n", "\n\n", "\u2014 ", " ", "example.com/alice", "AAAA",
                                           "=", "+", "\r", "\ud800"]), max_size=20).map("".join)))
def test_open_note_on_arbitrary_input_raises_only_bad_note(note):
    try:
        opened = open_note(note, [ALICE.verifier])
    except BadNote:
        return
    assert not opened.trusted


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=note_texts, at=st.integers(0, 10**6), cut=st.integers(0, 3),
       insert=st.text(st.sampled_from("a\n\u2014 +=/A\x01\u00e9"), max_size=3))
def test_an_edited_note_is_rejected_or_untrusted_unless_its_text_is_unchanged(text, at, cut, insert):
    note = sign_note(text, [ALICE])
    at %= len(note) + 1
    edited = note[:at] + insert + note[at + cut:]
    try:
        opened = open_note(edited, [ALICE.verifier])
    except BadNote:
        return
    if opened.trusted:
        assert opened.text == text


# ------------------------------------------------------------------------------- checkpoint texts

ROOT = hashlib.sha256(b"root").digest()


def test_checkpoint_text_is_origin_size_root_and_extension_lines():
    text = checkpoint_text("example.com/log", 20852163, ROOT, ["ext one", "ext two"])
    b64 = base64.b64encode(ROOT).decode()
    assert text == f"example.com/log\n20852163\n{b64}\next one\next two\n"
    assert parse_checkpoint_text(text) == TreeHead("example.com/log", 20852163, ROOT, ("ext one", "ext two"))


def test_the_empty_tree_has_size_zero():
    text = checkpoint_text("o", 0, hashlib.sha256(b"").digest())
    assert text.split("\n")[1] == "0"
    assert parse_checkpoint_text(text).size == 0


@given(origin=note_lines.filter(bool), size=st.integers(0, 2**63 - 1),
       root=st.binary(min_size=32, max_size=32), extensions=st.lists(note_lines.filter(bool), max_size=3))
def test_checkpoint_text_round_trips(origin, size, root, extensions):
    text = checkpoint_text(origin, size, root, extensions)
    assert parse_checkpoint_text(text) == TreeHead(origin, size, root, tuple(extensions))
    opened = open_note(sign_note(text, [ALICE]), [ALICE.verifier])
    assert parse_checkpoint_text(opened.text).root == root


B64_ROOT = base64.b64encode(ROOT).decode()


@pytest.mark.parametrize("text", [
    "",
    "o\n1\n",
    f"o\n1\n{B64_ROOT}",                                # no final newline
    f"\n1\n{B64_ROOT}\n",                               # empty origin
    f"o\n01\n{B64_ROOT}\n",                             # leading zero
    f"o\n00\n{B64_ROOT}\n",
    f"o\n-1\n{B64_ROOT}\n",
    f"o\n+1\n{B64_ROOT}\n",
    f"o\n 1\n{B64_ROOT}\n",
    f"o\n\u0661\n{B64_ROOT}\n",                         # an Arabic-Indic digit
    f"o\n9223372036854775808\n{B64_ROOT}\n",            # 2**63
    f"o\n{'9' * 400}\n{B64_ROOT}\n",
    f"o\n1\n{base64.b64encode(ROOT[:31]).decode()}\n",  # a 31-byte root
    f"o\n1\n{B64_ROOT[:-2]}=\n",                        # not base64
    f"o\n1\n{B64_ROOT}\n\n",                            # an empty extension line
    f"o\n1\n{B64_ROOT}\nx\n\ny\n",
    f"o\x01\n1\n{B64_ROOT}\n",                          # a control character
])
def test_parse_checkpoint_text_rejects_malformed_texts(text):
    with pytest.raises(BadNote):
        parse_checkpoint_text(text)


def test_parse_checkpoint_text_accepts_the_largest_int64_size():
    assert parse_checkpoint_text(f"o\n9223372036854775807\n{B64_ROOT}\n").size == 2**63 - 1


@pytest.mark.parametrize("args", [
    ("", 1, ROOT, ()), ("a\nb", 1, ROOT, ()), ("o", -1, ROOT, ()), ("o", 2**63, ROOT, ()), ("o", True, ROOT, ()),
    ("o", 1, ROOT[:31], ()), ("o", 1, ROOT, ("",)), ("o", 1, ROOT, ("x\ny",)), ("o\x00", 1, ROOT, ()),
])
def test_checkpoint_text_refuses_what_would_not_parse(args):
    with pytest.raises(ValueError):
        checkpoint_text(*args)


@given(st.one_of(st.text(max_size=120),
                 st.lists(st.sampled_from(["o", "\n", "0", "1", "01", B64_ROOT, "=", "-", "\u0661"]),
                          max_size=12).map("".join)))
def test_parse_checkpoint_text_raises_only_bad_note(text):
    try:
        head = parse_checkpoint_text(text)
    except BadNote:
        return
    assert checkpoint_text(head.origin, head.size, head.root, head.extensions) == text
