"""RFC 8785 canonicalization: the published vectors, ECMAScript number formatting, refusals,
and round-trip properties."""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ztb.audit.jcs import canonicalize

VECTORS = Path(__file__).parent / "vectors" / "jcs"
VECTOR_NAMES = sorted(path.name for path in (VECTORS / "input").glob("*.json"))


def test_all_vectors_are_present() -> None:
    assert sorted(path.name for path in (VECTORS / "output").glob("*.json")) == VECTOR_NAMES
    assert len(VECTOR_NAMES) == 6


@pytest.mark.parametrize("name", VECTOR_NAMES)
def test_rfc8785_vector(name: str) -> None:
    value = json.loads((VECTORS / "input" / name).read_text(encoding="utf-8"))
    assert canonicalize(value) == (VECTORS / "output" / name).read_bytes()


# RFC 8785 appendix B: IEEE 754 bit patterns and their ECMAScript string form.
NUMBER_SAMPLES = [
    ("0000000000000000", "0"),
    ("8000000000000000", "0"),
    ("0000000000000001", "5e-324"),
    ("8000000000000001", "-5e-324"),
    ("7fefffffffffffff", "1.7976931348623157e+308"),
    ("ffefffffffffffff", "-1.7976931348623157e+308"),
    ("4340000000000000", "9007199254740992"),
    ("c340000000000000", "-9007199254740992"),
    ("4430000000000000", "295147905179352830000"),
    ("44b52d02c7e14af5", "9.999999999999997e+22"),
    ("44b52d02c7e14af6", "1e+23"),
    ("44b52d02c7e14af7", "1.0000000000000001e+23"),
    ("444b1ae4d6e2ef4e", "999999999999999700000"),
    ("444b1ae4d6e2ef4f", "999999999999999900000"),
    ("444b1ae4d6e2ef50", "1e+21"),
    ("3eb0c6f7a0b5ed8c", "9.999999999999997e-7"),
    ("3eb0c6f7a0b5ed8d", "0.000001"),
    ("41b3de4355555553", "333333333.3333332"),
    ("41b3de4355555554", "333333333.33333325"),
    ("41b3de4355555555", "333333333.3333333"),
    ("41b3de4355555556", "333333333.3333334"),
    ("41b3de4355555557", "333333333.33333343"),
    ("becbf647612f3696", "-0.0000033333333333333333"),
    ("43143ff3c1cb0959", "1424953923781206.2"),
]


@pytest.mark.parametrize(("bits", "expected"), NUMBER_SAMPLES)
def test_number_formatting(bits: str, expected: str) -> None:
    (value,) = struct.unpack(">d", bytes.fromhex(bits))
    assert canonicalize(value) == expected.encode("ascii")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1e-7, "1e-7"),
        (1.5e-7, "1.5e-7"),
        (1e20, "100000000000000000000"),
        (123.0, "123"),
        (0.1, "0.1"),
        (-2.5, "-2.5"),
        (2**53 - 1, "9007199254740991"),
        (-(2**53 - 1), "-9007199254740991"),
        (0, "0"),
    ],
)
def test_number_edges(value: float, expected: str) -> None:
    assert canonicalize(value) == expected.encode("ascii")


def test_strings_are_minimally_escaped() -> None:
    text = '\b\t\n\f\r"\\\x00\x1f\x7f/é€😂\u2028'
    expected = '"\\b\\t\\n\\f\\r\\"\\\\\\u0000\\u001f\x7f/é€😂\u2028"'
    assert canonicalize(text) == expected.encode("utf-8")


def test_keys_sort_by_utf16_code_units() -> None:
    # U+1F600 is a surrogate pair (D83D DE00), which sorts before U+FB33 in UTF-16.
    value = {"\ufb33": 1, "\U0001f600": 2, "b": 3, "a": {"z": None, "é": True, "A": False}}
    assert canonicalize(value) == '{"a":{"A":false,"z":null,"é":true},"b":3,"😂":0}'.replace(
        '"😂":0', '"\U0001f600":2,"\ufb33":1'
    ).encode("utf-8")


def test_tuples_are_arrays_and_bools_are_not_ints() -> None:
    assert canonicalize((1, True, False, None, [])) == b"[1,true,false,null,[]]"
    assert canonicalize({"a": {}, "b": ()}) == b'{"a":{},"b":[]}'


@pytest.mark.parametrize(
    "value",
    [
        math.nan,
        math.inf,
        -math.inf,
        {1: "x"},
        {True: "x"},
        {"é": 1, None: 2},
        "\ud800",
        {"\udfff": 1},
        b"bytes",
        {1, 2},
        object(),
        2**53,
        -(2**53),
        [1.0, {"a": [math.nan]}],
    ],
)
def test_refuses_what_has_no_canonical_form(value: object) -> None:
    with pytest.raises(ValueError):
        canonicalize(value)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**53 - 1), max_value=2**53 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(), children, max_size=5),
    max_leaves=30,
)


def parse_as_ijson(text: bytes) -> object:
    """Read JSON as I-JSON does: a number too large for an exact integer is a double."""

    def number(digits: str) -> int | float:
        value = int(digits)
        return value if abs(value) <= 2**53 - 1 else float(value)

    return json.loads(text, parse_int=number)


@given(json_values)
def test_canonical_form_is_a_fixed_point(value: object) -> None:
    once = canonicalize(value)
    assert canonicalize(parse_as_ijson(once)) == once


@given(json_values)
def test_output_is_json_equal_to_the_input(value: object) -> None:
    assert parse_as_ijson(canonicalize(value)) == value


@given(st.dictionaries(st.text(), st.integers(min_value=0, max_value=9), max_size=8))
def test_key_order_does_not_matter(value: dict[str, int]) -> None:
    reversed_order = dict(reversed(list(value.items())))
    assert canonicalize(reversed_order) == canonicalize(value)


@given(st.floats(allow_nan=False, allow_infinity=False))
def test_floats_round_trip_exactly(value: float) -> None:
    assert float(canonicalize(value)) == value
