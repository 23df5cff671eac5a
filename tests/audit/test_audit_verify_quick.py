"""The verifier's quick canonical test never says yes where RFC 8785 says no: whatever JSON it
is shown, it answers only for lines that are exactly the canonical form (else the full check
decides)."""

from __future__ import annotations

from typing import Any

import orjson
from hypothesis import given
from hypothesis import strategies as st

from ztb.audit.entry import body_of
from ztb.audit.jcs import canonicalize
from ztb.audit.verify import _quick_canonical

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
