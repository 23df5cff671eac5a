"""One `ztb-1` audit entry: its canonical line, its leaf hash and its signature.

Owns the integrity rules of a single entry (SPEC section 4): body = entry without `hash` and
`sig`, hash = RFC 6962 leaf hash of the canonical body, sig = Ed25519 over a domain-separated
context + hash. Pure functions over plain values: it must never touch files, clocks or the
chain (seq and prev_hash are the writer's and the verifier's business).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

import orjson

from ztb.audit.jcs import canonicalize
from ztb.audit.keys import SigningKey, verify_signature

__all__ = [
    "SIG_CONTEXT",
    "VERSION",
    "ZERO_HASH",
    "body_of",
    "canonical_entry",
    "check_seal",
    "leaf_hash",
    "seal",
]

VERSION = "ztb-1"
ZERO_HASH = "sha256:" + "0" * 64
SIG_CONTEXT = b"ztb-1/entry\n"

_SIG_PREFIX = "ed25519:"


def leaf_hash(canonical_body: bytes) -> str:
    """`"sha256:" + hex(SHA-256(0x00 || canonical_body))`, the RFC 6962 leaf hash."""
    return "sha256:" + hashlib.sha256(b"\x00" + canonical_body).hexdigest()


_FAST = orjson.OPT_SORT_KEYS | orjson.OPT_STRICT_INTEGER


def canonical_entry(entry: dict[str, object]) -> bytes:
    """RFC 8785 form of an entry, taking orjson's sorted compact form when it provably agrees.

    For values without floats (entries never hold one) orjson with sorted keys and 53-bit
    integers writes the same bytes as RFC 8785 (same escapes, same integers), except that it
    orders keys by UTF-8 rather than UTF-16 code units, which differ only for non-ASCII keys.
    So pure-ASCII output is taken as is, and anything else goes through `canonicalize`.
    """
    try:
        data = orjson.dumps(entry, option=_FAST)
    except TypeError:  # out-of-range integer or a type JSON lacks: let canonicalize say why
        return canonicalize(entry)
    return data if data.isascii() else canonicalize(entry)


def seal(body: dict[str, object], key: SigningKey) -> tuple[bytes, str, str]:
    """Hash and sign a complete body (common fields and the kind's fields, no hash/sig).

    Returns (line, hash, sig): line is the canonical whole entry followed by a newline.
    """
    entry_hash = leaf_hash(canonical_entry(body))
    sig = _SIG_PREFIX + key.sign(SIG_CONTEXT + entry_hash.encode("ascii")).hex()
    line = canonical_entry({**body, "hash": entry_hash, "sig": sig}) + b"\n"
    return line, entry_hash, sig


def body_of(entry: Mapping[str, object]) -> dict[str, object]:
    """The entry without `hash` and `sig`: the part the hash covers."""
    return {name: value for name, value in entry.items() if name not in ("hash", "sig")}


def check_seal(
    entry: Mapping[str, object], public_raw: bytes, canonical_body: bytes | None = None
) -> str | None:
    """Why the entry's `hash` or `sig` does not hold under `public_raw`, or None when both do.

    `canonical_body`, when the caller already has it, is the JCS form of `body_of(entry)`."""
    stated = entry.get("hash")
    if not isinstance(stated, str):
        return "hash missing or not a string"
    try:
        recomputed = leaf_hash(canonical_body if canonical_body is not None else canonicalize(body_of(entry)))
    except ValueError as exc:
        return f"body cannot be canonicalized: {exc}"
    if stated != recomputed:
        return "hash does not match the entry's body"
    sig = entry.get("sig")
    if not isinstance(sig, str) or not sig.startswith(_SIG_PREFIX):
        return "sig missing or not ed25519:<hex>"
    try:
        signature = bytes.fromhex(sig.removeprefix(_SIG_PREFIX))
    except ValueError:
        return "sig is not hex"
    if not verify_signature(public_raw, SIG_CONTEXT + stated.encode("ascii"), signature):
        return "signature does not verify"
    return None
