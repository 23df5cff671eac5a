"""The Merkle tree against transparency-dev/merkle's public vectors, and proofs built here checked
against the verifier and against full recomputation."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ztb.audit.merkle import (
    EMPTY_ROOT,
    CompactRange,
    ProofError,
    consistency_proof,
    inclusion_proof,
    inclusion_proof_streamed,
    node_hash,
    root_of,
    subtree_of,
    verify_consistency,
    verify_inclusion,
)

VECTORS = Path(__file__).parent / "vectors" / "merkle"
INCLUSION = sorted((VECTORS / "inclusion").rglob("*.json"))
CONSISTENCY = sorted((VECTORS / "consistency").rglob("*.json"))


def _b64(value: str) -> bytes:
    return base64.b64decode(value)


def _name(path: Path) -> str:
    return str(path.relative_to(VECTORS))


def test_the_vectors_are_there() -> None:
    assert len(INCLUSION) > 50 and len(CONSISTENCY) > 50
    happy = [p for p in INCLUSION + CONSISTENCY if not json.loads(p.read_text())["wantErr"]]
    assert len(happy) >= 10  # the suite checks acceptance, not only refusals


@pytest.mark.parametrize("path", INCLUSION, ids=_name)
def test_inclusion_vector(path: Path) -> None:
    case = json.loads(path.read_text())
    args = (
        case["leafIdx"],
        case["treeSize"],
        _b64(case["leafHash"]),
        [_b64(p) for p in case["proof"] or []],
        _b64(case["root"]),
    )
    if case["wantErr"]:
        with pytest.raises(ProofError):
            verify_inclusion(*args)
    else:
        verify_inclusion(*args)


@pytest.mark.parametrize("path", CONSISTENCY, ids=_name)
def test_consistency_vector(path: Path) -> None:
    case = json.loads(path.read_text())
    args = (
        case["size1"],
        case["size2"],
        _b64(case["root1"]),
        _b64(case["root2"]),
        [_b64(p) for p in case["proof"] or []],
    )
    if case["wantErr"]:
        with pytest.raises(ProofError):
            verify_consistency(*args)
    else:
        verify_consistency(*args)


def _leaves(count: int) -> list[bytes]:
    return [hashlib.sha256(b"\x00" + str(i).encode()).digest() for i in range(count)]


def test_rfc6962_shapes() -> None:
    a, b, c = _leaves(3)
    assert root_of([]) == EMPTY_ROOT == hashlib.sha256(b"").digest()
    assert root_of([a]) == a
    assert root_of([a, b]) == node_hash(a, b)
    assert root_of([a, b, c]) == node_hash(node_hash(a, b), c)


def test_compact_range_matches_full_recomputation() -> None:
    leaves = _leaves(70)
    tree = CompactRange()
    assert tree.root() == EMPTY_ROOT
    for size in range(1, len(leaves) + 1):
        tree.append(leaves[size - 1])
        assert tree.size == size
        assert tree.root() == root_of(leaves[:size])
        assert len(tree.ranges()) == bin(size).count("1")
        full = subtree_of(leaves)
        for start, end in tree.ranges():
            assert tree.node(start, end) == full(start, end)


def test_built_proofs_verify_and_tampered_ones_do_not() -> None:
    leaves = _leaves(40)
    full = subtree_of(leaves)
    for size in range(1, 41):
        root = root_of(leaves[:size])
        for index in range(size):
            proof = inclusion_proof(index, size, full)
            verify_inclusion(index, size, leaves[index], proof, root)
            if proof:
                bad = [*proof[:-1], bytes(32)]
                with pytest.raises(ProofError):
                    verify_inclusion(index, size, leaves[index], bad, root)
        for old in range(1, size + 1):
            proof = consistency_proof(old, size, full)
            verify_consistency(old, size, root_of(leaves[:old]), root, proof)
            if old < size:
                with pytest.raises(ProofError):
                    verify_consistency(old, size, root_of(leaves[: old - 1] or [bytes(32)]), root, proof)


def test_consistency_from_the_right_edge_and_new_leaves_only() -> None:
    """What the broker does: the old right edge plus the leaves appended since, nothing else."""
    leaves = _leaves(300)
    for old, new in [(1, 2), (3, 8), (6, 8), (7, 300), (128, 129), (129, 256), (255, 300)]:
        edge = CompactRange()
        edge.extend(leaves[:old])
        recent = leaves[old:new]

        def subtree(
            start: int, end: int, edge: CompactRange = edge, recent: list[bytes] = recent, old: int = old
        ) -> bytes:
            if end <= old:
                return edge.node(start, end)
            assert start >= old, (start, end)
            return root_of(recent[start - old : end - old])

        proof = consistency_proof(old, new, subtree)
        assert proof == consistency_proof(old, new, subtree_of(leaves))
        verify_consistency(old, new, edge.root(), root_of(leaves[:new]), proof)


def test_builders_refuse_impossible_requests() -> None:
    full = subtree_of(_leaves(4))
    with pytest.raises(ProofError):
        inclusion_proof(4, 4, full)
    with pytest.raises(ProofError):
        consistency_proof(0, 4, full)
    with pytest.raises(ProofError):
        consistency_proof(5, 4, full)
    with pytest.raises(ValueError):
        CompactRange().append(b"short")


@settings(max_examples=300, deadline=None)
@given(
    st.integers(min_value=1, max_value=300).flatmap(
        lambda size: st.tuples(st.just(size), st.integers(0, size - 1))
    )
)
def test_a_streamed_inclusion_proof_is_the_built_one(shape: tuple[int, int]) -> None:
    size, index = shape
    leaves = [hashlib.sha256(b"leaf %d" % n).digest() for n in range(size + 3)]  # the log goes on
    streamed = inclusion_proof_streamed(index, size, iter(leaves))
    assert streamed.count == size and streamed.leaf == leaves[index]
    assert streamed.root == root_of(leaves[:size])
    assert streamed.path == inclusion_proof(index, size, subtree_of(leaves[:size]))
    verify_inclusion(index, size, leaves[index], streamed.path, streamed.root)


def test_a_streamed_proof_over_a_short_log_says_how_short() -> None:
    leaves = [hashlib.sha256(b"leaf %d" % n).digest() for n in range(5)]
    streamed = inclusion_proof_streamed(2, 9, iter(leaves))
    assert (streamed.count, streamed.path) == (5, [])
