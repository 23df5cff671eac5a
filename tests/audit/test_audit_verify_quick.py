"""The verifier's quick canonical test never says yes where RFC 8785 says no: whatever JSON it
is shown, it answers only for lines that are exactly the canonical form (else the full check
decides)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ztb.audit.entry import ZERO_HASH, body_of
from ztb.audit.jcs import canonicalize
from ztb.audit.verify import _Hashes, _Places, _quick_canonical

SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8)
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=12,
)
ENTRIES = st.dictionaries(st.sampled_from(["hash", "sig", "seq", "kind", "a", "B", "é", "\x7f"]), VALUES)


def as_line(value: dict[str, Any], *, sort: bool) -> bytes | None:
    try:
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS if sort else 0)
    except orjson.JSONEncodeError:
        return None


@given(ENTRIES, st.booleans())
def test_quick_answer_implies_canonical(entry: dict[str, Any], sort: bool) -> None:
    line = as_line(entry, sort=sort)
    if line is None:
        return
    quick = _quick_canonical(line)
    if quick is not None:
        assert line == canonicalize(entry)
        assert quick[1] == canonicalize(body_of(entry))


@given(ENTRIES)
def test_quick_path_reads_canonical_lines_exactly(entry: dict[str, Any]) -> None:
    try:
        line = canonicalize(entry)
    except ValueError:
        return
    quick = _quick_canonical(line)
    if quick is not None:
        assert quick[0] == entry


def test_the_verifiers_compact_stores_answer_like_lists() -> None:
    """`_Hashes` (32 bytes an entry) and `_Places` (runs of lines) stand in for lists of every
    entry's hash and place; they must answer exactly as those lists would."""
    hashes, places = _Hashes(), _Places()
    as_lists: tuple[list[str], list[tuple[Path, int]]] = ([], [])
    layout = [
        (Path("000001.jsonl"), range(1, 6)),
        (Path("000002.jsonl"), range(1, 4)),
        (Path("000002.jsonl"), range(7, 9)),
        (Path("000003.jsonl"), range(2, 3)),
    ]
    for segment, lines in layout:
        for line in lines:
            entry_hash = "sha256:" + hashlib.sha256(f"{segment}{line}".encode()).hexdigest()
            hashes.append(entry_hash)
            places.append((segment, line))
            as_lists[0].append(entry_hash)
            as_lists[1].append((segment, line))
    assert len(hashes) == len(places) == len(as_lists[0]) == 11 and hashes.last == as_lists[0][-1]
    assert [hashes[i] for i in range(11)] == as_lists[0]
    assert [places[i] for i in range(11)] == as_lists[1] and places[-1] == as_lists[1][-1]
    with pytest.raises(IndexError):
        hashes[11]
    with pytest.raises(IndexError):
        places[11]
    with pytest.raises(ValueError):
        hashes.append("sha256:" + "AB" * 32)  # not the canonical (lowercase) form
    assert _Hashes().last == ZERO_HASH
