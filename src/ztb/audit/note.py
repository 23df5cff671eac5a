"""C2SP signed notes (c2sp.org/signed-note): the text, its signature lines, verifier keys
(`vkey`: name+keyid+base64(type||key)), Ed25519 note signatures (type 0x01), and timestamped
Ed25519 witness cosignatures (c2sp.org/tlog-cosignature `cosignature/v1`, type 0x04).

Owns the wire format of everything ztb signs for off-host anchoring, byte for byte as other
transparency-log tools write it. Pure code over bytes and keys: no files, no clock (a cosigner
is handed its timestamp). Verification follows the spec's rules: signatures from unknown keys
are ignored, a known key's failing signature rejects the whole note, and a note with no
verified signature is rejected. It must never accept a note it cannot fully parse.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import struct
from collections.abc import Iterable
from dataclasses import dataclass

from ztb.audit.keys import SigningKey, verify_signature

__all__ = [
    "COSIGNATURE_V1",
    "ED25519",
    "EM_DASH",
    "Note",
    "NoteError",
    "NoteSignature",
    "Verifier",
    "cosign",
    "key_id",
    "open_note",
    "sign_note",
]

EM_DASH = "\u2014"
ED25519 = 0x01
COSIGNATURE_V1 = 0x04
MAX_SIGNATURES = 64  # the spec asks verifiers to accept at least 16
MAX_NOTE_BYTES = 64 * 1024
_SIGNATURE_SIZES = {ED25519: 64, COSIGNATURE_V1: 8 + 64}
_NAME = re.compile(r"[^\s+]+")
_CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f\x7f]")


class NoteError(ValueError):
    """A note, signature line or key that does not follow the format; str() says what."""


def key_id(name: str, signature_type: int, public_raw: bytes) -> bytes:
    """SHA-256(name || 0x0A || type || public key)[:4], the key ID of signed-note."""
    return hashlib.sha256(name.encode("utf-8") + b"\n" + bytes([signature_type]) + public_raw).digest()[:4]


def _b64decode(text: str, what: str) -> bytes:
    try:
        value = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise NoteError(f"{what} is not base64") from None
    if base64.b64encode(value).decode("ascii") != text:
        raise NoteError(f"{what} is not canonical base64")
    return value


def _check_name(name: str) -> None:
    if _NAME.fullmatch(name) is None:
        raise NoteError(f"key name {name!r} is empty or holds a space or '+'")


@dataclass(frozen=True, slots=True)
class NoteSignature:
    """One signature line: `— <name> base64(key ID || signature)`."""

    name: str
    key_id: bytes
    signature: bytes

    def line(self) -> str:
        blob = base64.b64encode(self.key_id + self.signature).decode("ascii")
        return f"{EM_DASH} {self.name} {blob}\n"

    @classmethod
    def parse(cls, line: str) -> NoteSignature:
        """A line without its newline."""
        prefix = EM_DASH + " "
        if not line.startswith(prefix):
            raise NoteError("a signature line must start with an em dash and a space")
        name, space, blob = line[len(prefix) :].rpartition(" ")
        if not space:
            raise NoteError("a signature line needs a key name and a signature")
        _check_name(name)
        raw = _b64decode(blob, "signature")
        if len(raw) < 5:
            raise NoteError("a signature holds a 4-byte key ID and at least one byte")
        return cls(name, raw[:4], raw[4:])


@dataclass(frozen=True, slots=True)
class Note:
    """A signed note: `text` (ending in a newline) and its signatures, in order."""

    text: str
    signatures: tuple[NoteSignature, ...]

    def encode(self) -> str:
        return self.text + "\n" + "".join(signature.line() for signature in self.signatures)

    def with_signatures(self, signatures: Iterable[NoteSignature]) -> Note:
        """This note with `signatures` added after its own (duplicates dropped)."""
        merged = list(self.signatures)
        merged.extend(signature for signature in signatures if signature not in merged)
        return Note(self.text, tuple(merged))

    @classmethod
    def parse(cls, data: bytes | str) -> Note:
        if isinstance(data, bytes):
            if len(data) > MAX_NOTE_BYTES:
                raise NoteError(f"a note is at most {MAX_NOTE_BYTES} bytes")
            try:
                data = data.decode("utf-8")
            except UnicodeDecodeError:
                raise NoteError("a note must be UTF-8") from None
        if _CONTROL.search(data):
            raise NoteError("a note must hold no control character other than newline")
        if not data.endswith("\n"):
            raise NoteError("a note must end with a newline")
        split = data.rfind("\n\n")
        if split < 0:
            raise NoteError("a note needs a blank line between its text and its signatures")
        text, lines = data[: split + 1], data[split + 2 : -1].split("\n")
        if not lines or lines == [""]:
            raise NoteError("a note needs at least one signature")
        if len(lines) > MAX_SIGNATURES:
            raise NoteError(f"a note may carry at most {MAX_SIGNATURES} signatures")
        return cls(text, tuple(NoteSignature.parse(line) for line in lines))


@dataclass(frozen=True, slots=True)
class Verifier:
    """A public key that checks one kind of note signature: a signed-note `vkey`."""

    name: str
    signature_type: int  # ED25519 or COSIGNATURE_V1
    public_raw: bytes

    def __post_init__(self) -> None:
        _check_name(self.name)
        if self.signature_type not in _SIGNATURE_SIZES:
            raise NoteError(f"signature type 0x{self.signature_type:02x} is not supported")
        if len(self.public_raw) != 32:
            raise NoteError("an Ed25519 public key has 32 bytes")

    @property
    def key_id(self) -> bytes:
        return key_id(self.name, self.signature_type, self.public_raw)

    def vkey(self) -> str:
        material = base64.b64encode(bytes([self.signature_type]) + self.public_raw).decode("ascii")
        return f"{self.name}+{self.key_id.hex()}+{material}"

    @classmethod
    def parse(cls, vkey: str) -> Verifier:
        """Read `name+keyid+base64(type || key)`; NoteError when any part is wrong."""
        parts = vkey.strip().split("+", 2)
        if len(parts) != 3:
            raise NoteError("a verifier key is <name>+<key id hex>+<base64 key>")
        name, stated, material = parts
        raw = _b64decode(material, "verifier key material")
        if not raw:
            raise NoteError("verifier key material is empty")
        verifier = cls(name, raw[0], raw[1:])
        if stated != verifier.key_id.hex():
            raise NoteError(f"key ID {stated} does not match the key (expected {verifier.key_id.hex()})")
        return verifier

    def matches(self, signature: NoteSignature) -> bool:
        return signature.name == self.name and signature.key_id == self.key_id

    def verify(self, text: str, signature: NoteSignature) -> bool:
        """Whether `signature` (already matched to this key) is valid over the note `text`."""
        if len(signature.signature) != _SIGNATURE_SIZES[self.signature_type]:
            return False
        message = text.encode("utf-8")
        raw = signature.signature
        if self.signature_type == COSIGNATURE_V1:
            (timestamp,) = struct.unpack(">Q", raw[:8])
            if timestamp >= 1 << 63:
                return False
            message = cosigned_message(text, timestamp)
            raw = raw[8:]
        return verify_signature(self.public_raw, message, raw)

    def timestamp(self, signature: NoteSignature) -> int | None:
        """The time a cosignature states (POSIX seconds); None for other signature types."""
        if self.signature_type != COSIGNATURE_V1 or len(signature.signature) < 8:
            return None
        return int(struct.unpack(">Q", signature.signature[:8])[0])


def verifier_of(key: SigningKey, name: str, signature_type: int = ED25519) -> Verifier:
    return Verifier(name, signature_type, key.public_raw)


def cosigned_message(text: str, timestamp: int) -> bytes:
    """What a cosignature/v1 signs: a header line, a time line, then the checkpoint text."""
    return f"cosignature/v1\ntime {timestamp}\n{text}".encode()


def sign_note(text: str, key: SigningKey, name: str) -> NoteSignature:
    """An Ed25519 (type 0x01) signature of `text` by `key` under the key name `name`."""
    _check_text(text)
    return NoteSignature(name, key_id(name, ED25519, key.public_raw), key.sign(text.encode("utf-8")))


def cosign(text: str, key: SigningKey, name: str, timestamp: int) -> NoteSignature:
    """A timestamped Ed25519 witness cosignature (type 0x04) of a checkpoint's text."""
    _check_text(text)
    if not 0 <= timestamp < 1 << 63:
        raise NoteError("a cosignature timestamp is in 0..2^63-1")
    signature = key.sign(cosigned_message(text, timestamp))
    return NoteSignature(
        name, key_id(name, COSIGNATURE_V1, key.public_raw), struct.pack(">Q", timestamp) + signature
    )


def _check_text(text: str) -> None:
    if not text.endswith("\n") or "\n\n" in text or _CONTROL.search(text):
        raise NoteError("note text must end with a newline, hold no blank line and no control character")


def open_note(note: Note, verifiers: Iterable[Verifier]) -> list[Verifier]:
    """The known keys whose signatures on `note` verify (at least one); NoteError otherwise.

    Signatures from unknown keys are ignored; a failing signature from a known key rejects the
    whole note.
    """
    known = list(verifiers)
    verified: list[Verifier] = []
    for signature in note.signatures:
        for verifier in known:
            if not verifier.matches(signature):
                continue
            if not verifier.verify(note.text, signature):
                raise NoteError(f"the signature of {signature.name} does not verify")
            if verifier not in verified:
                verified.append(verifier)
    if not verified:
        raise NoteError("no signature from a trusted key")
    return verified
