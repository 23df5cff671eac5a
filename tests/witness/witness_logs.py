"""A log's side for the witness tests: leaves, signed checkpoints and add-checkpoint bodies."""

from __future__ import annotations

import hashlib

from ztb.audit.checkpoint import Checkpoint, sign_checkpoint
from ztb.audit.keys import SigningKey
from ztb.audit.merkle import consistency_proof, root_of, subtree_of
from ztb.audit.note import ED25519, Note, Verifier
from ztb.edge.witness_client import add_checkpoint_body

ORIGIN = "test/broker-a"


class FakeLog:
    """A log of synthetic leaves with its checkpoint key (a real key: only the leaves are made up)."""

    def __init__(self, origin: str = ORIGIN, seed: str = "a", key: SigningKey | None = None) -> None:
        self.origin = origin
        self.key = key or SigningKey.generate()
        self.verifier = Verifier(origin, ED25519, self.key.public_raw)
        self.leaves = [hashlib.sha256(f"{seed}{i}".encode()).digest() for i in range(512)]

    def note(self, size: int) -> Note:
        return sign_checkpoint(Checkpoint(self.origin, size, root_of(self.leaves[:size])), self.key)

    def proof(self, old: int, new: int) -> list[bytes]:
        return [] if old in (0, new) else consistency_proof(old, new, subtree_of(self.leaves))

    def body(self, old: int, new: int, proof: list[bytes] | None = None) -> bytes:
        return add_checkpoint_body(old, self.proof(old, new) if proof is None else proof, self.note(new))
