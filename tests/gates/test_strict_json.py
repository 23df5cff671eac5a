"""ztb.gates.strict_json.parse: the strict parse a body must survive before its schema is looked at."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ztb.gates.strict_json import _DECODER, MAX_DEPTH, JSONRefused, _check, parse
from ztb.reasons import Reason


def refusal(data: bytes) -> Reason:
    with pytest.raises(JSONRefused) as caught:
        parse(data)
    return caught.value.reason


@pytest.mark.parametrize(
    ("data", "value"),
    [
        (b'{"a": 1, "b": [true, false, null], "c": "x"}', {"a": 1, "b": [True, False, None], "c": "x"}),
        (b"[]", []),
        (b"{}", {}),
        (b'"caf\xc3\xa9"', "café"),
        (b'"\\u00e9"', "é"),
        (b'"\\ud83d\\ude00"', "\U0001f600"),  # a proper surrogate pair
        (b'"\xf0\x9f\x98\x80"', "\U0001f600"),
        (b"9007199254740991", 2**53 - 1),
        (b"-9007199254740991", -(2**53 - 1)),
        (b"1.5e300", 1.5e300),
        (b"-0.0", -0.0),
        (b' \n\t{"a":1} \r\n', {"a": 1}),
        (b'{"a": {"a": 1}, "b": {"a": 2}}', {"a": {"a": 1}, "b": {"a": 2}}),  # same key, other objects
    ],
)
def test_strict_json_accepts_plain_json(data: bytes, value: object) -> None:
    assert parse(data) == value


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        # duplicate keys, at any depth
        (b'{"a": 1, "a": 2}', Reason.DUPLICATE_KEY),
        (b'{"a": 1, "a": 1}', Reason.DUPLICATE_KEY),
        (b'{"x": {"a": 1, "b": 2, "a": 3}}', Reason.DUPLICATE_KEY),
        (b'[{"ok": 1}, {"k": [{"a": 1, "a": 2}]}]', Reason.DUPLICATE_KEY),
        (b'{"\\u0061": 1, "a": 2}', Reason.DUPLICATE_KEY),  # an escaped spelling is the same key
        # non-finite numbers
        (b"NaN", Reason.NON_FINITE_NUMBER),
        (b"Infinity", Reason.NON_FINITE_NUMBER),
        (b"-Infinity", Reason.NON_FINITE_NUMBER),
        (b'{"price": NaN}', Reason.NON_FINITE_NUMBER),
        (b"[1, -Infinity]", Reason.NON_FINITE_NUMBER),
        # numbers a double or a safe integer cannot hold
        (b"1e400", Reason.NUMBER_OUT_OF_RANGE),
        (b"-1e400", Reason.NUMBER_OUT_OF_RANGE),
        (b'{"q": 1.0e309}', Reason.NUMBER_OUT_OF_RANGE),
        (b"9007199254740992", Reason.NUMBER_OUT_OF_RANGE),
        (b"-9007199254740992", Reason.NUMBER_OUT_OF_RANGE),
        (b"18446744073709551616", Reason.NUMBER_OUT_OF_RANGE),
        (b"1" * 5000, Reason.NUMBER_OUT_OF_RANGE),  # beyond int()'s digit limit: refused, not crashed
        (b'{"qty": 99999999999999999999}', Reason.NUMBER_OUT_OF_RANGE),
        # invalid UTF-8
        (b'"\xff"', Reason.INVALID_UTF8),
        (b'"\xc3"', Reason.INVALID_UTF8),  # truncated sequence
        (b'"\xc0\xaf"', Reason.INVALID_UTF8),  # overlong "/"
        (b'"\xe0\x80\xae"', Reason.INVALID_UTF8),  # overlong "."
        (b'"\xc1\xbf"', Reason.INVALID_UTF8),  # overlong
        (b'"\xed\xa0\x80"', Reason.INVALID_UTF8),  # CESU-8 high surrogate U+D800
        (b'"\xed\xbf\xbf"', Reason.INVALID_UTF8),  # CESU-8 low surrogate U+DFFF
        (b'"\xed\xa0\xbd\xed\xb8\x80"', Reason.INVALID_UTF8),  # CESU-8 pair for U+1F600
        (b'"\xf4\x90\x80\x80"', Reason.INVALID_UTF8),  # beyond U+10FFFF
        (b'{"k\x80": 1}', Reason.INVALID_UTF8),
        # escaped lone surrogates, in values and keys
        (b'"\\ud800"', Reason.LONE_SURROGATE),
        (b'"\\uDBFF"', Reason.LONE_SURROGATE),
        (b'"\\udc00"', Reason.LONE_SURROGATE),
        (b'"\\ude00\\ud83d"', Reason.LONE_SURROGATE),  # a pair in the wrong order
        (b'{"note": "x\\ud800y"}', Reason.LONE_SURROGATE),
        (b'{"\\udfff": 1}', Reason.LONE_SURROGATE),
        (b'[["\\ud800"]]', Reason.LONE_SURROGATE),
        # a byte-order mark is not JSON
        (b'\xef\xbb\xbf{"a": 1}', Reason.INVALID_JSON),
        # plainly invalid
        (b"", Reason.INVALID_JSON),
        (b"{", Reason.INVALID_JSON),
        (b"[1,]", Reason.INVALID_JSON),
        (b"{'a': 1}", Reason.INVALID_JSON),
        (b'{"a": 1} {"b": 2}', Reason.INVALID_JSON),
        (b'"tab\there"', Reason.INVALID_JSON),  # raw control character in a string
        (b"01", Reason.INVALID_JSON),
        (b"nan", Reason.INVALID_JSON),
    ],
)
def test_strict_json_refuses_with_its_reason(data: bytes, reason: Reason) -> None:
    assert refusal(data) is reason


def nested_arrays(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


def nested_objects(depth: int) -> bytes:
    return b'{"a":' * (depth - 1) + b"{}" + b"}" * (depth - 1)


def test_max_depth_is_32() -> None:
    assert MAX_DEPTH == 32


def depth_of(value: object) -> int:
    if isinstance(value, list):
        return 1 + max((depth_of(item) for item in value), default=0)
    if isinstance(value, dict):
        return 1 + max((depth_of(item) for item in value.values()), default=0)
    return 0


@pytest.mark.parametrize("build", [nested_arrays, nested_objects])
def test_nesting_32_is_accepted(build: Callable[[int], bytes]) -> None:
    assert depth_of(parse(build(32))) == 32


@pytest.mark.parametrize("build", [nested_arrays, nested_objects])
def test_nesting_33_is_refused(build: Callable[[int], bytes]) -> None:
    assert refusal(build(33)) is Reason.NESTING_TOO_DEEP


def test_mixed_nesting_33_is_refused() -> None:
    data = b'{"a":[' * 16 + b'{"b":1}' + b"]}" * 16  # 16 objects + 16 arrays + 1 object = 33
    assert refusal(data) is Reason.NESTING_TOO_DEEP


def test_a_scalar_inside_32_containers_is_32_levels() -> None:
    assert depth_of(parse(b"[" * 32 + b'"x"' + b"]" * 32)) == 32


@pytest.mark.parametrize("data", [nested_arrays(100_000), b'{"a":' * 100_000 + b"1" + b"}" * 100_000])
def test_very_deep_nesting_is_refused_without_crashing(data: bytes) -> None:
    assert refusal(data) is Reason.NESTING_TOO_DEEP


def test_unterminated_deep_nesting_is_refused() -> None:
    assert refusal(b"[" * 100_000) is Reason.NESTING_TOO_DEEP


# -- the walk is skipped only when it cannot refuse -----------------------------------------------

_JSON_TEXT = st.recursive(
    st.sampled_from([b"1", b"true", b"null", b'"x"', b'"\\ud800"', b'"\\u00e9"', b'"[{"', b"1.5"]),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3).map(lambda items: b"[" + b",".join(items) + b"]"),
        st.lists(inner, max_size=3).map(
            lambda items: b"{" + b",".join(b'"k%d":%s' % (i, v) for i, v in enumerate(items)) + b"}"
        ),
    ),
    max_leaves=60,
)


def _full_walk_verdict(data: bytes) -> Reason | None:
    """What the walk decides when it always runs (the definition the shortcut must match)."""
    try:
        _check(_DECODER.decode(data.decode("utf-8")), 1)
    except JSONRefused as refused:
        return refused.reason
    return None


@given(_JSON_TEXT)
def test_skipping_the_walk_never_changes_the_verdict(data: bytes) -> None:
    walked = _full_walk_verdict(data)  # every generated text decodes; only the walk can refuse it
    if walked is None:
        parse(data)
    else:
        assert refusal(data) == walked


def test_a_lone_surrogate_is_found_in_a_shallow_body() -> None:
    assert refusal(b'{"a": "\\udc00"}') == Reason.LONE_SURROGATE
