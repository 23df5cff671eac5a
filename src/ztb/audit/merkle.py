"""RFC 6962 Merkle trees over the audit log's leaf hashes: roots, the tree's right edge grown one
leaf at a time, and inclusion and consistency proofs, built and verified.

The leaves are the entries' `hash` values (already SHA-256(0x00 || JCS(body)), see entry.py);
interior nodes are SHA-256(0x01 || left || right). Pure code over 32-byte hashes: it never reads
a file and never knows what an entry is. Proofs are built from a `subtree(start, end)` function
so a caller can answer from whatever it holds (every leaf, or the right edge at the old size and
the leaves appended since): nothing here recomputes a whole tree to extend it. Verification
follows RFC 9162 sections 2.1.3.2 and 2.1.4.2; a consistency proof from size 0 is refused (an
empty tree proves nothing), as in transparency-dev/merkle.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

__all__ = [
    "EMPTY_ROOT",
    "HASH_SIZE",
    "CompactRange",
    "ProofError",
    "Subtree",
    "consistency_proof",
    "inclusion_proof",
    "node_hash",
    "root_of",
    "subtree_of",
    "verify_consistency",
    "verify_inclusion",
]

HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()

Subtree = Callable[[int, int], bytes]
"""The root of the leaves [start, end): how a proof builder asks for the hashes it needs."""


class ProofError(Exception):
    """A proof that does not hold or cannot be built; str() says why."""


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(size: int) -> int:
    """The largest power of two strictly below `size` (size >= 2): RFC 6962's k."""
    return 1 << ((size - 1).bit_length() - 1)


def root_of(leaves: Sequence[bytes]) -> bytes:
    """MTH(leaves): the root of the tree over all of `leaves`."""
    return subtree_of(leaves)(0, len(leaves))


def subtree_of(leaves: Sequence[bytes]) -> Subtree:
    """A `Subtree` answering from a sequence holding every leaf."""

    def mth(start: int, end: int) -> bytes:
        size = end - start
        if size == 0:
            return EMPTY_ROOT
        if size == 1:
            return leaves[start]
        k = _split(size)
        return node_hash(mth(start, start + k), mth(start + k, end))

    return mth


class CompactRange:
    """The right edge of the tree [0, size): one perfect subtree per set bit of `size`, largest
    (leftmost) first. Appending a leaf costs O(log size); so does the root."""

    __slots__ = ("_nodes", "_size")

    def __init__(self) -> None:
        self._size = 0
        self._nodes: list[bytes] = []

    @property
    def size(self) -> int:
        return self._size

    def copy(self) -> CompactRange:
        other = CompactRange()
        other._size = self._size
        other._nodes = list(self._nodes)
        return other

    @property
    def nodes(self) -> tuple[bytes, ...]:
        """The edge's nodes, largest first: with `size`, all `restore` needs."""
        return tuple(self._nodes)

    @classmethod
    def restore(cls, size: int, nodes: Sequence[bytes]) -> CompactRange:
        """The right edge of a tree of `size` leaves from its `nodes`; ValueError when they
        cannot be one (one node per set bit of `size`, each a hash)."""
        if size < 0 or len(nodes) != bin(size).count("1") or any(len(n) != HASH_SIZE for n in nodes):
            raise ValueError(f"not the right edge of a tree of size {size}")
        edge = cls()
        edge._size = size
        edge._nodes = [bytes(n) for n in nodes]
        return edge

    def append(self, leaf: bytes) -> None:
        if len(leaf) != HASH_SIZE:
            raise ValueError(f"a leaf hash has {HASH_SIZE} bytes, not {len(leaf)}")
        self._nodes.append(leaf)
        self._size += 1
        merged = self._size
        while merged & 1 == 0:  # two perfect subtrees of equal size become one
            right = self._nodes.pop()
            self._nodes[-1] = node_hash(self._nodes[-1], right)
            merged >>= 1

    def extend(self, leaves: Sequence[bytes]) -> None:
        for leaf in leaves:
            self.append(leaf)

    def root(self) -> bytes:
        if not self._nodes:
            return EMPTY_ROOT
        root = self._nodes[-1]
        for node in reversed(self._nodes[:-1]):
            root = node_hash(node, root)
        return root

    def ranges(self) -> list[tuple[int, int]]:
        """The leaf range [start, end) of each node, in order."""
        spans: list[tuple[int, int]] = []
        start = 0
        for bit in range(self._size.bit_length() - 1, -1, -1):
            if self._size >> bit & 1:
                spans.append((start, start + (1 << bit)))
                start += 1 << bit
        return spans

    def node(self, start: int, end: int) -> bytes:
        """The node covering exactly [start, end); KeyError when there is none."""
        for index, span in enumerate(self.ranges()):
            if span == (start, end):
                return self._nodes[index]
        raise KeyError(f"no node [{start}, {end}) on the right edge of a tree of size {self._size}")


# -- building proofs (RFC 6962 section 2.1.1 PATH and 2.1.2 PROOF) -------------------------------


def inclusion_proof(index: int, size: int, subtree: Subtree) -> list[bytes]:
    """The audit path of leaf `index` in the tree of `size` leaves."""
    if not 0 <= index < size:
        raise ProofError(f"leaf {index} is not in a tree of size {size}")

    def path(m: int, start: int, end: int) -> list[bytes]:
        if end - start == 1:
            return []
        k = _split(end - start)
        if m < k:
            return [*path(m, start, start + k), subtree(start + k, end)]
        return [*path(m - k, start + k, end), subtree(start, start + k)]

    return path(index, 0, size)


@dataclass(frozen=True, slots=True)
class StreamedInclusion:
    """What one pass over a log's leaves gives for an inclusion proof."""

    count: int  # leaves read: `size`, or fewer when the log is shorter
    root: bytes  # of the first `count` leaves
    leaf: bytes | None  # leaf `index`, if it was reached
    path: list[bytes]  # the audit path, when count == size


def inclusion_proof_streamed(index: int, size: int, leaves: Iterable[bytes]) -> StreamedInclusion:
    """`inclusion_proof(index, size, ...)` in one pass over the leaves, holding O(log size) hashes
    instead of every leaf: each hash of the path is the root of one run of consecutive leaves."""
    wanted: list[tuple[int, int]] = []

    def note(start: int, end: int) -> bytes:  # the path's shape first: which runs it needs
        wanted.append((start, end))
        return EMPTY_ROOT

    inclusion_proof(index, size, note)
    runs = sorted(wanted)  # disjoint: filled in order as the leaves go by
    found: dict[tuple[int, int], bytes] = {}
    tree, run, current = CompactRange(), 0, CompactRange()
    leaf_at: bytes | None = None
    for position, leaf in enumerate(leaves):
        if position == size:
            break
        tree.append(leaf)
        if position == index:
            leaf_at = leaf
        if run < len(runs) and runs[run][0] <= position:
            current.append(leaf)
            if position + 1 == runs[run][1]:
                found[runs[run]] = current.root()
                run, current = run + 1, CompactRange()
    path = [found[span] for span in wanted] if tree.size == size else []
    return StreamedInclusion(tree.size, tree.root(), leaf_at, path)


def consistency_proof(old_size: int, new_size: int, subtree: Subtree) -> list[bytes]:
    """The proof that the tree of `new_size` leaves extends the tree of `old_size` leaves.

    Every hash it asks `subtree` for lies either wholly inside [0, old_size) (a node of the right
    edge at old_size) or wholly inside [old_size, new_size).
    """
    if not 0 < old_size <= new_size:
        raise ProofError(f"no consistency proof from size {old_size} to size {new_size}")

    def subproof(m: int, start: int, end: int, complete: bool) -> list[bytes]:
        size = end - start
        if m == size:
            return [] if complete else [subtree(start, end)]
        k = _split(size)
        if m <= k:
            return [*subproof(m, start, start + k, complete), subtree(start + k, end)]
        return [*subproof(m - k, start + k, end, False), subtree(start, start + k)]

    return subproof(old_size, 0, new_size, True)


# -- verifying proofs (RFC 9162 sections 2.1.3.2 and 2.1.4.2) ------------------------------------


def verify_inclusion(index: int, size: int, leaf: bytes, proof: Sequence[bytes], root: bytes) -> None:
    """Raise ProofError unless `proof` shows `leaf` at `index` in the tree of `size` with `root`."""
    if not 0 <= index < size:
        raise ProofError(f"leaf {index} is not in a tree of size {size}")
    _check_lengths([leaf, root, *proof])
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            raise ProofError("inclusion proof is too long")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError("inclusion proof is too short")
    if r != root:
        raise ProofError("inclusion proof does not lead to the root")


def verify_consistency(
    old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> None:
    """Raise ProofError unless `proof` shows the tree (new_size, new_root) extends (old_size, old_root)."""
    if old_size > new_size:
        raise ProofError(f"old size {old_size} is larger than new size {new_size}")
    if old_size == 0:
        raise ProofError("a consistency proof from the empty tree proves nothing")
    if old_size == new_size:
        if proof:
            raise ProofError("equal sizes need an empty proof")
        if old_root != new_root:
            raise ProofError("equal sizes but different roots")
        return
    if not proof:
        raise ProofError("consistency proof is empty")
    _check_lengths(proof)
    path = list(proof)
    if old_size & (old_size - 1) == 0:  # the old tree is a perfect subtree: its root starts the path
        path.insert(0, old_root)
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise ProofError("consistency proof is too long")
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError("consistency proof is too short")
    if fr != old_root:
        raise ProofError("consistency proof does not lead to the old root")
    if sr != new_root:
        raise ProofError("consistency proof does not lead to the new root")


def _check_lengths(proof: Sequence[bytes]) -> None:
    if any(len(p) != HASH_SIZE for p in proof):
        raise ProofError(f"a hash in the proof does not have {HASH_SIZE} bytes")
