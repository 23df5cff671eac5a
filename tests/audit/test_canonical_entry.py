"""The fast canonical form of entries must be byte-identical to RFC 8785 for every float-free value."""

from __future__ import annotations

import string

from hypothesis import given, settings
from hypothesis import strategies as st

from ztb.audit.entry import canonical_entry
from ztb.audit.jcs import canonicalize

SAFE_INT = st.integers(min_value=-(2**53) + 1, max_value=2**53 - 1)
TEXT = st.text(alphabet=st.characters(blacklist_categories=["Cs"]), max_size=12)
ASCII_KEY = st.text(alphabet=string.printable, min_size=1, max_size=8)
ANY_KEY = st.one_of(ASCII_KEY, TEXT)
SCALAR = st.one_of(SAFE_INT, TEXT, st.booleans(), st.none())


def trees(keys: st.SearchStrategy[str]) -> st.SearchStrategy[object]:
    return st.recursive(
        SCALAR,
        lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(keys, inner, max_size=5)),
        max_leaves=25,
    )


@settings(max_examples=400)
@given(st.dictionaries(ASCII_KEY, trees(ASCII_KEY), max_size=8))
def test_ascii_keys_match_rfc8785(entry: dict[str, object]) -> None:
    assert canonical_entry(entry) == canonicalize(entry)


@settings(max_examples=400)
@given(st.dictionaries(ANY_KEY, trees(ANY_KEY), max_size=8))
def test_any_keys_match_rfc8785(entry: dict[str, object]) -> None:
    assert canonical_entry(entry) == canonicalize(entry)


def test_non_ascii_key_order_follows_utf16() -> None:
    entry = {"\ue000": 1, "\U0001f600": 2, "a": "é\u2028\x00\x1f\x7f"}
    assert canonical_entry(entry) == canonicalize(entry)
    assert canonical_entry(entry).index("😀".encode()) < canonical_entry(entry).index("\ue000".encode())


def test_out_of_range_integer_is_refused_like_rfc8785() -> None:
    for value in (2**53, -(2**53), 2**70):
        try:
            canonical_entry({"n": value})
        except ValueError:
            continue
        raise AssertionError(f"{value} accepted")
