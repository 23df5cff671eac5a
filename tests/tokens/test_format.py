"""The token's wire form: `ztb_` + 43 base64url characters + 6 base62 digits of their CRC32.

The checksum is recomputed here independently (zlib.crc32 and a base62 of our own), so a
change to the product's encoding cannot go unnoticed.
"""

from __future__ import annotations

import base64
import hashlib
import re
import string
import zlib
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ztb.tokens.format import TOKEN_LENGTH, checksum, is_well_formed, new_token, token_hash, token_id

ALPHABET62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
BASE64URL = re.compile(r"[A-Za-z0-9_-]{43}")


def base62(value: int) -> str:
    """Six base62 digits, most significant first, zero-padded."""
    assert 0 <= value < 62**6
    digits = ""
    while value:
        value, digit = divmod(value, 62)
        digits = ALPHABET62[digit] + digits
    return digits.rjust(6, "0")


def crc_digits(body: str) -> str:
    return base62(zlib.crc32(body.encode("ascii")))


def test_base62_reference_values() -> None:
    assert base62(0) == "000000"
    assert base62(61) == "00000z"
    assert base62(62) == "000010"
    assert base62(2**32 - 1) == "4gfFC3"


def test_new_token_shape() -> None:
    token = new_token()
    assert len(token) == TOKEN_LENGTH == 53
    assert token.startswith("ztb_")
    body, digits = token[4:47], token[47:]
    assert BASE64URL.fullmatch(body)
    assert digits == crc_digits(body)
    assert re.fullmatch(r"[0-9A-Za-z]{6}", digits)
    # 43 base64url characters are exactly 256 bits
    assert len(base64.urlsafe_b64decode(body + "=")) == 32
    assert is_well_formed(token)


def test_new_tokens_differ() -> None:
    tokens = {new_token() for _ in range(1000)}
    assert len(tokens) == 1000


def test_fixed_body_checksum() -> None:
    body = "A" * 43
    token = "ztb_" + body + crc_digits(body)
    assert is_well_formed(token)
    zero_crc = "ztb_" + body + "000000"
    assert zlib.crc32(body.encode()) != 0
    assert not is_well_formed(zero_crc)


def _other(char: str) -> str:
    """Another character of the same class, so only the checksum can tell the difference."""
    if char.isdigit():
        return "0" if char != "0" else "1"
    if char in "-_":
        return "_" if char == "-" else "-"
    return "a" if char != "a" else "b"


def test_every_one_character_change_is_rejected() -> None:
    for _ in range(20):
        token = new_token()
        for position in range(len(token)):
            changed = token[:position] + _other(token[position]) + token[position + 1 :]
            assert changed != token
            assert not is_well_formed(changed), (token, position)


@pytest.mark.parametrize(
    "mangle",
    [
        lambda t: t[:-1],  # one character short
        lambda t: t + "0",  # one character long
        lambda t: "ZTB_" + t[4:],  # prefix case
        lambda t: "xtb_" + t[4:],
        lambda t: t[4:],  # no prefix
        lambda t: " " + t,
        lambda t: t + "\n",
        lambda t: t[:10] + "+" + t[11:],  # base64 (not base64url) character
        lambda t: t[:10] + "=" + t[11:],
        lambda t: t[:47] + "-" + t[48:],  # not a base62 digit in the checksum
        lambda t: t.upper(),
        lambda t: "",
    ],
)
def test_malformed_tokens(mangle: Callable[[str], str]) -> None:
    assert not is_well_formed(mangle(new_token()))


def test_checksum_of_another_body_is_rejected() -> None:
    a, b = new_token(), new_token()
    if a[47:] != b[47:]:  # equal checksums: a 1 in 2^32 coincidence
        assert not is_well_formed(a[:47] + b[47:])


def test_hash_and_id() -> None:
    token = new_token()
    digest = token_hash(token)
    assert digest == hashlib.sha256(token.encode("ascii")).digest()
    assert len(digest) == 32
    assert token_id(digest) == hashlib.sha256(token.encode("ascii")).hexdigest()[:16]
    assert re.fullmatch(r"[0-9a-f]{16}", token_id(digest))


@given(st.text(alphabet=string.ascii_letters + string.digits + "-_", min_size=43, max_size=43))
def test_checksum_matches_the_independent_base62_of_the_crc(body: str) -> None:
    assert checksum(body) == crc_digits(body)
