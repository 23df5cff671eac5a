"""Pure pieces of ztb.broker."""

from __future__ import annotations

import re

from hypothesis import given
from hypothesis import strategies as st

from ztb import broker

CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def decode_ulid(text: str) -> int:
    """The reference reading of a ULID: 26 Crockford base32 digits, most significant first."""
    value = 0
    for char in text:
        value = value * 32 + CROCKFORD.index(char)
    return value


@given(st.integers(0, 2**48 - 1), st.integers(0, 2**80 - 1))
def test_a_ulid_is_its_millisecond_time_and_random_bits_in_crockford_base32(
    millis: int, random_bits: int
) -> None:
    original = broker.secrets.randbits
    broker.secrets.randbits = lambda bits: random_bits  # type: ignore[assignment]
    try:
        ulid = broker.new_ulid((millis + 0.5) / 1000)
    finally:
        broker.secrets.randbits = original  # type: ignore[assignment]
    assert re.fullmatch(f"[{CROCKFORD}]{{26}}", ulid)
    assert decode_ulid(ulid) == (millis << 80) | random_bits


def test_ulids_sort_by_time() -> None:
    assert broker.new_ulid(1_700_000_000.000) < broker.new_ulid(1_700_000_000.002)
