"""Whose signature a checkpoint or manifest carries: the auditor's public keys, and the judgement of a
legacy statement's signatures or of a C2SP signed note's signature lines against them."""
from __future__ import annotations

from typing import Any

from cryptography.hazmat.primitives import serialization

from .. import note
from ..seal import signature_valid

GOOD, UNCHECKED, UNSIGNED, BAD, UNKNOWN = "good", "unchecked", "unsigned", "bad_signature", "unknown_key"


class KeyRing:
    """key id -> Ed25519 public key (see inputs.load_public_keys); empty = signatures unchecked. A note's
    signature line names its key and key hash: the same keys serve as note verifier keys."""

    def __init__(self, public_keys: dict[str, Any] | None) -> None:
        self.keys = dict(public_keys or {})
        self.note_keys: list[note.VerifierKey] = []
        self._raw: dict[bytes, str] = {}
        for key_name, public_key in self.keys.items():
            raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
            self._raw.setdefault(raw, key_name)
            try:
                self.note_keys.append(note.VerifierKey(key_name, raw))
            except note.BadNote:
                pass    # a label no note can carry (a space, a plus): it can only sign legacy statements

    def __bool__(self) -> bool:
        return bool(self.keys)

    def judge(self, what: str, statement: str, signatures: tuple, note_body: str | None) -> tuple[str, str, str]:
        """(status, violation detail, key alias detail) of a checkpoint's or manifest's signatures: status
        good | unchecked (no keys given) | unsigned | bad_signature | unknown_key. `note_body` is the whole
        note for a SPEC-15 note (its `signatures` are (name, key hash)), None for a legacy statement (its
        `signatures` are (key id, signature))."""
        if not signatures:
            return UNSIGNED, f"the {what} carries no signature", ""
        if not self.keys:
            return UNCHECKED, "", ""
        if note_body is not None:
            return self._judge_note(what, note_body, signatures)
        good, bad, unknown, alias = [], [], [], ""
        for key_id, signature in signatures:
            key = self.keys.get(key_id)
            if key is not None:
                (good if signature_valid(key, statement, signature) else bad).append(key_id)
                continue
            # A key id is the signer's label (seal.key_id may rename it): a known key may stand behind it.
            known = next((known for known, candidate in self.keys.items()
                          if signature_valid(candidate, statement, signature)), None)
            if known is None:
                unknown.append(key_id)
            else:
                good.append(key_id)
                alias = f"the {what} is signed as key {key_id!r} by known key {known}"
        return self._verdict(what, good, bad, unknown, alias)

    def _judge_note(self, what: str, body: str, signatures: tuple) -> tuple[str, str, str]:
        opened = note.open_note(body, self.note_keys)
        good = [key.name for key in opened.verified]
        unknown, alias = [], ""
        for name, key_hash in opened.unknown:
            # Signed under another name (seal.key_id): the key hash covers the name, so try each known
            # key under the name the line gives.
            for raw, known in self._raw.items():
                try:
                    candidate = note.VerifierKey(name, raw)
                except note.BadNote:
                    break
                if candidate.key_hash == key_hash and note.open_note(body, [candidate]).trusted:
                    good.append(name)
                    alias = f"the {what} is signed as key {name!r} by known key {known}"
                    break
            else:
                unknown.append(name)
        return self._verdict(what, good, list(opened.bad), unknown, alias)

    def _verdict(self, what: str, good: list, bad: list, unknown: list, alias: str) -> tuple[str, str, str]:
        if bad:
            return BAD, (f"the {what}'s signature by key {', '.join(bad)} does not verify: its statement or "
                         "signature was changed"), alias
        if good:
            return GOOD, "", alias
        return UNKNOWN, (f"the {what} is signed by unknown key {', '.join(unknown)}: none of the "
                         f"{len(self.keys)} public keys given verifies it"), alias
