"""C2SP signed notes (c2sp.org/signed-note) with Ed25519 keys, and the tlog checkpoint text they carry
(c2sp.org/tlog-checkpoint). Pure: no I/O, no clocks.

A note is a text (valid UTF-8, no control characters but newline, ending in a newline; blank lines are
allowed) followed by a blank line and one or more signature lines `— <key name> <base64(key hash ||
signature)>`. The signature block starts after the LAST blank line, which is unambiguous because a
signature line is never empty. A signature belongs to a key only when both its name and its 4-byte key
hash match; anything else is an unknown signature, kept aside and never trusted.

Input from outside (notes, verifier keys, checkpoint texts) is parsed strictly; every way it can be
malformed raises `BadNote`, never another exception type. Where the spec is loose, the parse is
stricter than Go's golang.org/x/mod/sumdb/note, never looser: base64 must be canonical, the key hash
of a verifier key lower-case hex.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

ALGORITHM_ED25519 = 0x01
SIGNATURE_PREFIX = "\u2014 "  # em dash, space
#: Signature lines parsed before giving up: the spec requires at least 16; more is a note built to
#: waste the verifier's time.
MAX_SIGNATURES = 100
#: Tree sizes are int64 in Go's tlog, the reference verifier.
MAX_TREE_SIZE = 2**63 - 1

_CONTROL = re.compile("[\x00-\x09\x0b-\x1f]")
_HEX8 = re.compile("[0-9a-f]{8}")
_DECIMAL = re.compile("0|[1-9][0-9]{0,18}")


class BadNote(ValueError):
    """A note, verifier key or checkpoint text that does not follow its format."""


def _check_name(name: str) -> None:
    # Spec: non-empty, no Unicode spaces, no plus. Control characters are excluded by the note format.
    if (not isinstance(name, str) or not name or "+" in name or any(c.isspace() for c in name)
            or _CONTROL.search(name) or not _is_utf8(name)):
        raise BadNote(f"invalid key name {name!r}")


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates
        return False
    return True


def _b64decode_canonical(text: str) -> bytes:
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as error:
        raise BadNote(f"invalid base64 {text[:80]!r}") from error
    # Non-zero padding bits decode too; accepting them would give one value several spellings.
    if base64.b64encode(raw).decode("ascii") != text:
        raise BadNote(f"non-canonical base64 {text[:80]!r}")
    return raw


def key_hash(name: str, public_raw: bytes) -> bytes:
    """The 4-byte key hash of an Ed25519 key: SHA-256(name || 0x0A || 0x01 || public key)[:4]."""
    return hashlib.sha256(name.encode("utf-8") + b"\n" + bytes([ALGORITHM_ED25519]) + public_raw).digest()[:4]


def verifier_key(name: str, public_raw: bytes) -> str:
    """`<name>+<hex key hash>+<base64(0x01 || public key)>`, the form Go's note.NewVerifier reads."""
    _check_name(name)
    if len(public_raw) != 32:
        raise ValueError("an Ed25519 public key is 32 bytes")
    encoded = base64.b64encode(bytes([ALGORITHM_ED25519]) + public_raw).decode("ascii")
    return f"{name}+{key_hash(name, public_raw).hex()}+{encoded}"


@dataclass(frozen=True, slots=True)
class VerifierKey:
    """A named Ed25519 public key that signatures on notes are checked against."""

    name: str
    public_raw: bytes
    key_hash: bytes = field(init=False)
    public_key: Ed25519PublicKey = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _check_name(self.name)
        if not isinstance(self.public_raw, bytes) or len(self.public_raw) != 32:
            raise BadNote("an Ed25519 public key is 32 bytes")
        try:
            public_key = Ed25519PublicKey.from_public_bytes(self.public_raw)
        except ValueError as error:
            raise BadNote(f"invalid Ed25519 public key: {error}") from error
        object.__setattr__(self, "key_hash", key_hash(self.name, self.public_raw))
        object.__setattr__(self, "public_key", public_key)

    @classmethod
    def of(cls, name: str, public_key: Ed25519PublicKey) -> VerifierKey:
        return cls(name, public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw))

    @property
    def text(self) -> str:
        """This key as a verifier key string (see `verifier_key`)."""
        return verifier_key(self.name, self.public_raw)

    def signature_valid(self, text: bytes, signature: bytes) -> bool:
        try:
            self.public_key.verify(signature, text)
        except InvalidSignature:
            return False
        return True


def parse_verifier_key(text: str) -> VerifierKey:
    """The key a verifier key string names; `BadNote` unless name, hash, algorithm and key all agree."""
    if not isinstance(text, str):
        raise BadNote("a verifier key is a string")
    # The name holds no plus, the hash is hex; only the base64 key may contain one.
    parts = text.split("+", 2)
    if len(parts) != 3:
        raise BadNote("a verifier key is <name>+<key hash>+<key>")
    name, hash_hex, encoded = parts
    _check_name(name)
    if not _HEX8.fullmatch(hash_hex):
        raise BadNote(f"the key hash of a verifier key is 8 lower-case hex digits, not {hash_hex!r}")
    raw = _b64decode_canonical(encoded)
    if len(raw) != 33 or raw[0] != ALGORITHM_ED25519:
        raise BadNote("only Ed25519 verifier keys (algorithm 0x01, 32 bytes) are supported")
    key = VerifierKey(name, raw[1:])
    if key.key_hash.hex() != hash_hex:
        raise BadNote(f"verifier key {name!r}: the key hash does not match the key")
    return key


@dataclass(frozen=True, slots=True)
class NoteSigner:
    """Signs note texts under a key name with an Ed25519 private key."""

    name: str
    private_key: Ed25519PrivateKey = field(repr=False)
    verifier: VerifierKey = field(init=False)

    def __post_init__(self) -> None:
        _check_name(self.name)
        object.__setattr__(self, "verifier", VerifierKey.of(self.name, self.private_key.public_key()))

    @property
    def key_hash(self) -> bytes:
        return self.verifier.key_hash

    def sign(self, text: bytes) -> bytes:
        return self.private_key.sign(text)


def _note_text_bytes(text: str) -> bytes:
    """`text` as UTF-8, once it is checked to be a note text."""
    if not isinstance(text, str):
        raise BadNote("a note text is a string")
    if not text.endswith("\n"):
        raise BadNote("a note text ends with a newline")
    if _CONTROL.search(text):
        raise BadNote("a note contains no control characters other than newline")
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise BadNote("a note is valid UTF-8") from error


def sign_note(text: str, signers: Iterable[NoteSigner]) -> str:
    """The signed note: `text`, a blank line, and one signature line per signer, in the order given."""
    raw = _note_text_bytes(text)
    lines = []
    seen: set[tuple[str, bytes]] = set()
    for signer in signers:
        identity = (signer.name, signer.key_hash)
        if identity in seen:
            raise ValueError(f"key {signer.name!r} is given twice")
        seen.add(identity)
        signature = base64.b64encode(signer.key_hash + signer.sign(raw)).decode("ascii")
        lines.append(f"{SIGNATURE_PREFIX}{signer.name} {signature}\n")
    if not lines:
        raise ValueError("a note needs at least one signer")
    return text + "\n" + "".join(lines)


@dataclass(frozen=True, slots=True)
class OpenedNote:
    """A note's text and what its signatures proved.

    `verified`: the known keys with a valid signature; `unknown`: (name, key hash) of signatures by keys
    not given, which the spec says to ignore; `bad`: names of known keys whose signature failed.
    The text may only be trusted when `trusted` is true (`verified` non-empty, `bad` empty)."""

    text: str
    verified: tuple[VerifierKey, ...]
    unknown: tuple[tuple[str, bytes], ...]
    bad: tuple[str, ...]

    @property
    def trusted(self) -> bool:
        return bool(self.verified) and not self.bad


def _split_signature_line(line: str) -> tuple[str, bytes, bytes]:
    if not line.startswith(SIGNATURE_PREFIX):
        raise BadNote("a signature line starts with an em dash and a space")
    name, space, encoded = line[len(SIGNATURE_PREFIX):].partition(" ")
    if not space:
        raise BadNote("a signature line is '— <key name> <signature>'")
    _check_name(name)
    raw = _b64decode_canonical(encoded)
    if len(raw) < 5:
        raise BadNote("a signature is a 4-byte key hash and at least one byte")
    return name, raw[:4], raw[4:]


def open_note(note: str | bytes, keys: Iterable[VerifierKey]) -> OpenedNote:
    """Split `note` into its text and signatures and check each signature made by one of `keys`.

    `BadNote` when the note is malformed; a valid signature by none of the keys is not an error here
    (see `OpenedNote.trusted`)."""
    if isinstance(note, (bytes, bytearray, memoryview)):
        try:
            note = bytes(note).decode("utf-8")
        except UnicodeDecodeError as error:
            raise BadNote("a note is valid UTF-8") from error
    if not isinstance(note, str):
        raise BadNote("a note is a string")
    if _CONTROL.search(note):
        raise BadNote("a note contains no control characters other than newline")
    if not _is_utf8(note):
        raise BadNote("a note is valid UTF-8")
    split = note.rfind("\n\n")
    if split < 0:
        raise BadNote("a note has a blank line before its signatures")
    text, block = note[:split + 1], note[split + 2:]
    if not block.endswith("\n"):
        raise BadNote("a note ends with a signature line")
    lines = block[:-1].split("\n")
    if len(lines) > MAX_SIGNATURES:
        raise BadNote(f"more than {MAX_SIGNATURES} signatures")
    signatures = [_split_signature_line(line) for line in lines]

    by_identity: dict[tuple[str, bytes], list[VerifierKey]] = {}
    for key in keys:
        if not isinstance(key, VerifierKey):
            raise TypeError("keys are VerifierKey objects (see parse_verifier_key)")
        by_identity.setdefault((key.name, key.key_hash), []).append(key)
    raw_text = text.encode("utf-8")
    verified: list[VerifierKey] = []
    unknown: list[tuple[str, bytes]] = []
    bad: list[str] = []
    for name, hash_, signature in signatures:
        candidates = by_identity.get((name, hash_))
        if candidates is None:
            if (name, hash_) not in unknown:
                unknown.append((name, hash_))
            continue
        # Two known keys may share name and hash (the hash is short); the signature tells which.
        signer = next((k for k in candidates if k.signature_valid(raw_text, signature)), None)
        if signer is None:
            if name not in bad:
                bad.append(name)
        elif signer not in verified:
            verified.append(signer)
    return OpenedNote(text, tuple(verified), tuple(unknown), tuple(bad))


# ---------------------------------------------------------------------------------- tlog checkpoints

@dataclass(frozen=True, slots=True)
class TreeHead:
    """The body of a tlog checkpoint: the log's origin, the tree size, its RFC 6962 root, and any
    extension lines."""

    origin: str
    size: int
    root: bytes
    extensions: tuple[str, ...] = ()


def _check_line(line: str, what: str) -> None:
    if not isinstance(line, str) or not line or "\n" in line or _CONTROL.search(line) or not _is_utf8(line):
        raise ValueError(f"the {what} is a non-empty line of text without control characters: {line!r}")


def checkpoint_text(origin: str, size: int, root: bytes, extensions: Sequence[str] = ()) -> str:
    """`<origin>\\n<size>\\n<base64 root>\\n` and one line per extension: the note text of a checkpoint."""
    _check_line(origin, "origin")
    if isinstance(size, bool) or not isinstance(size, int) or not 0 <= size <= MAX_TREE_SIZE:
        raise ValueError(f"a tree size is an integer in [0, 2**63), not {size!r}")
    if not isinstance(root, bytes) or len(root) != 32:
        raise ValueError("a root hash is 32 bytes")
    for line in extensions:
        _check_line(line, "extension line")
    lines = [origin, str(size), base64.b64encode(root).decode("ascii"), *extensions]
    return "".join(line + "\n" for line in lines)


def parse_checkpoint_text(text: str) -> TreeHead:
    """The tree head a checkpoint's note text states; `BadNote` unless it follows c2sp.org/tlog-checkpoint."""
    if not isinstance(text, str) or not text.endswith("\n"):
        raise BadNote("a checkpoint text ends with a newline")
    if _CONTROL.search(text) or not _is_utf8(text):
        raise BadNote("a checkpoint text is note text: valid UTF-8 without control characters")
    lines = text[:-1].split("\n")
    if len(lines) < 3:
        raise BadNote("a checkpoint text has origin, size and root lines")
    if not all(lines):
        raise BadNote("a checkpoint text has no empty lines")
    origin, size_text, root_text, *extensions = lines
    if not _DECIMAL.fullmatch(size_text) or int(size_text) > MAX_TREE_SIZE:
        raise BadNote(f"the tree size is a decimal without leading zeros below 2**63, not {size_text[:40]!r}")
    root = _b64decode_canonical(root_text)
    if len(root) != 32:
        raise BadNote("the root hash is 32 bytes")
    return TreeHead(origin, int(size_text), root, tuple(extensions))
