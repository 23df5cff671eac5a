"""RFC 8785 JSON Canonicalization Scheme: one value in, its one canonical byte form out.

Owns the exact bytes that audit hashes and signatures cover. It must never accept a value it
cannot render canonically (non-finite floats, non-string keys, lone surrogates, integers
outside the I-JSON range, foreign types): it raises ValueError instead of guessing.
"""

from __future__ import annotations

import math
from json.encoder import encode_basestring
from typing import cast

__all__ = ["canonicalize"]

# I-JSON (RFC 7493): integers beyond this cannot survive a round trip through an IEEE double.
_MAX_SAFE_INTEGER = 2**53 - 1


def canonicalize(value: object) -> bytes:
    """The RFC 8785 canonical UTF-8 bytes of `value` (dict with str keys, list, tuple, str,
    int, float, bool or None, nested); ValueError for anything that has no canonical form."""
    try:
        return _encode(value).encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("string contains a lone surrogate") from None


def _encode(value: object) -> str:
    # encode_basestring escapes exactly as RFC 8785 asks: \b \t \n \f \r \" \\ and the
    # other C0 controls as lowercase \u00xx, everything else verbatim.
    # Most frequent types first; bool before int because bool is an int subclass.
    if isinstance(value, str):
        return encode_basestring(value)
    if isinstance(value, dict):
        return _object(value)
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        if -_MAX_SAFE_INTEGER <= value <= _MAX_SAFE_INTEGER:
            return int.__repr__(value)
        raise ValueError(f"integer {value} is outside the I-JSON range ±(2**53-1)")
    if isinstance(value, list | tuple):
        return "[" + ",".join([_encode(item) for item in value]) + "]"
    if isinstance(value, float):
        return _number(value)
    raise ValueError(f"cannot canonicalize a value of type {type(value).__name__}")


def _object(value: dict[object, object]) -> str:
    try:
        ascii_keys = "".join(cast("dict[str, object]", value)).isascii()
    except TypeError:
        raise ValueError("object key is not a string") from None
    items = cast("list[tuple[str, object]]", list(value.items()))
    # Keys sort by UTF-16 code units; for ASCII keys that is plain string order (the fast path).
    items.sort(key=None if ascii_keys else _utf16_order)
    return "{" + ",".join([encode_basestring(key) + ":" + _encode(item) for key, item in items]) + "}"


def _utf16_order(item: tuple[str, object]) -> bytes:
    # Big-endian UTF-16 bytes compare exactly like the UTF-16 code units they encode.
    return item[0].encode("utf-16-be")


def _number(value: float) -> str:
    """ECMAScript Number::toString for a finite double (RFC 8785 section 3.2.2.3)."""
    if not math.isfinite(value):
        raise ValueError(f"number {value!r} is not finite")
    if value == 0:
        return "0"  # also -0
    sign = "-" if value < 0 else ""
    # repr() yields the shortest digits that round-trip, as ECMAScript requires.
    mantissa, _, exponent = repr(abs(value)).partition("e")
    whole, _, fraction = mantissa.partition(".")
    digits = whole + fraction
    stripped = digits.lstrip("0")
    # The value is 0.<digits> x 10**point.
    point = len(whole) + (int(exponent) if exponent else 0) - (len(digits) - len(stripped))
    digits = stripped.rstrip("0")
    count = len(digits)
    if count <= point <= 21:
        return sign + digits + "0" * (point - count)
    if 0 < point <= 21:
        return sign + digits[:point] + "." + digits[point:]
    if -6 < point <= 0:
        return sign + "0." + "0" * -point + digits
    power = point - 1
    exp = f"e+{power}" if power > 0 else f"e-{-power}"
    if count == 1:
        return sign + digits + exp
    return sign + digits[0] + "." + digits[1:] + exp
