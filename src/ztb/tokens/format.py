"""The token's wire form: `ztb_` + 43 base64url characters (256 random bits) + 6 base62 CRC32.

Pure code. The checksum lets secret scanners recognise a leaked token and lets the broker reject
a mistyped one without a store lookup. The broker keeps only SHA-256(token); the token's id in
logs is the first 16 hex digits of that hash. Nothing here ever logs or stores a raw token.
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
import zlib

PREFIX = "ztb_"
_BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_SHAPE = re.compile(r"ztb_([A-Za-z0-9_-]{43})([0-9A-Za-z]{6})")
TOKEN_LENGTH = len(PREFIX) + 43 + 6


_PAIRS = [high + low for high in _BASE62 for low in _BASE62]  # 62 * 62: two digits at a time


def _base62(value: int, width: int) -> str:
    """`value` as `width` base62 digits (even `width`), most significant first, zero-padded."""
    pairs = []
    for _ in range(width // 2):
        value, pair = divmod(value, 3844)
        pairs.append(_PAIRS[pair])
    return "".join(reversed(pairs))


def checksum(body: str) -> str:
    """CRC32 of the 43 body characters as 6 base62 digits, most significant first."""
    return _base62(zlib.crc32(body.encode("ascii")), 6)


def new_token() -> str:
    body = base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode("ascii")
    return PREFIX + body + checksum(body)


def is_well_formed(token: str) -> bool:
    """Shape and checksum only; says nothing about whether the token was ever minted."""
    match = _SHAPE.fullmatch(token)
    return match is not None and checksum(match.group(1)) == match.group(2)


def token_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode("ascii")).digest()


def token_id(digest: bytes) -> str:
    return digest[:8].hex()
