"""Strict JSON: the parse a body must survive before its schema is even looked at.

Refused: invalid UTF-8 (overlong forms and encoded surrogates included), a byte-order mark,
duplicate keys, NaN/Infinity, numbers that overflow a double or an integer beyond ±(2^53-1),
escaped lone surrogates, and nesting deeper than 32 levels. A number written with a fraction or
an exponent stays a non-integer whatever its value (`1.0` never passes as a schema `integer`):
the forwarded bytes still say `1.0`, and an upstream may read them as a float. Pure code.
"""

from __future__ import annotations

import json
import math
from typing import Any

from ztb.reasons import Reason

MAX_DEPTH = 32
MAX_SAFE_INTEGER = 2**53 - 1


class JSONRefused(Exception):
    def __init__(self, reason: Reason) -> None:
        super().__init__(reason.value)
        self.reason = reason


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        raise JSONRefused(Reason.DUPLICATE_KEY)
    return result


def _constant(name: str) -> Any:
    raise JSONRefused(Reason.NON_FINITE_NUMBER)


class WrittenFraction(float):
    """A JSON number written with a fraction or exponent. JSON Schema (draft 6 on) counts 1.0 as an
    integer via `float.is_integer`; the bytes forwarded are still `1.0`, so here it never is."""

    __slots__ = ()

    def is_integer(self) -> bool:
        return False


def _float(text: str) -> float:
    value = WrittenFraction(text)
    if not math.isfinite(value):
        raise JSONRefused(Reason.NUMBER_OUT_OF_RANGE)
    return value


def _int(text: str) -> int:
    if len(text) > 17:
        raise JSONRefused(Reason.NUMBER_OUT_OF_RANGE)
    value = int(text)
    if abs(value) > MAX_SAFE_INTEGER:
        raise JSONRefused(Reason.NUMBER_OUT_OF_RANGE)
    return value


_DECODER = json.JSONDecoder(
    object_pairs_hook=_pairs, parse_constant=_constant, parse_float=_float, parse_int=_int, strict=True
)


def parse(data: bytes) -> Any:
    """The JSON value of `data`, or JSONRefused with the reason it was refused."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise JSONRefused(Reason.INVALID_UTF8) from None
    try:
        value = _DECODER.decode(text)
    except RecursionError:
        raise JSONRefused(Reason.NESTING_TOO_DEEP) from None
    except ValueError:  # json.JSONDecodeError and int/float conversion failures
        raise JSONRefused(Reason.INVALID_JSON) from None
    # The walk looks for what only some bytes can produce: a lone surrogate comes only from a
    # `\u` escape (the UTF-8 decode above refuses encoded ones), and a depth past MAX_DEPTH needs
    # more than MAX_DEPTH opening brackets. A body with neither cannot fail it.
    if b"\\u" in data or data.count(b"[") + data.count(b"{") > MAX_DEPTH:
        _check(value, 1)
    return value


def _check(value: Any, depth: int) -> None:
    if isinstance(value, dict):
        if depth > MAX_DEPTH:
            raise JSONRefused(Reason.NESTING_TOO_DEEP)
        for key, item in value.items():
            _check_text(key)
            _check(item, depth + 1)
    elif isinstance(value, list):
        if depth > MAX_DEPTH:
            raise JSONRefused(Reason.NESTING_TOO_DEEP)
        for item in value:
            _check(item, depth + 1)
    elif isinstance(value, str):
        _check_text(value)


def _check_text(text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # an escaped lone surrogate such as "\ud800"
        raise JSONRefused(Reason.LONE_SURROGATE) from None
