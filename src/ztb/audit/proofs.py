"""Inclusion proofs of audit entries against checkpoints: built from a log and its notes files
(`ztb audit prove`), and checked by anyone holding the public keys (a caller with a receipt, an
auditor).

A proof document is JSON: the log's origin, the entry, its leaf index and hash, the tree size,
the audit path (base64 hashes, RFC 6962 order) and the checkpoint note it leads to, with every
signature the note carries (the log's and the witnesses'). Checking it needs no log: the note
must be signed by the checkpoint key (and cosigned by each required witness), the path must
lead from the leaf to the checkpoint's root, and the entry, when present, must hash to the
leaf under a trusted audit key. Building reads files; checking is pure.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ztb.audit.anchor import CHECKPOINTS_DIR, COSIGNED_NOTES, LOG_NOTES, iter_leaves, read_notes
from ztb.audit.checkpoint import Checkpoint
from ztb.audit.entry import check_seal
from ztb.audit.keys import kid_of
from ztb.audit.merkle import ProofError, inclusion_proof_streamed, verify_inclusion
from ztb.audit.note import Note, NoteError, Verifier, open_note
from ztb.audit.reader import read_entries
from ztb.config.errors import ConfigError

__all__ = ["InclusionProof", "ProvedEntry", "check_proof", "prove_entry"]


@dataclass(frozen=True, slots=True)
class InclusionProof:
    origin: str
    leaf_index: int
    leaf_hash: bytes
    tree_size: int
    path: tuple[bytes, ...]
    checkpoint: Note
    entry: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "origin": self.origin,
            "entry": self.entry,
            "leaf_index": self.leaf_index,
            "leaf_hash": "sha256:" + self.leaf_hash.hex(),
            "tree_size": self.tree_size,
            "proof": [base64.b64encode(node).decode("ascii") for node in self.path],
            "checkpoint": self.checkpoint.encode(),
        }

    @classmethod
    def from_json(cls, data: object) -> InclusionProof:
        """Read a proof document; ValueError with a one-line reason when it is malformed."""
        if not isinstance(data, dict):
            raise ValueError("a proof is a JSON object")
        try:
            leaf = str(data["leaf_hash"])
            entry = data.get("entry")
            proof = cls(
                origin=str(data["origin"]),
                leaf_index=_integer(data["leaf_index"], "leaf_index"),
                leaf_hash=bytes.fromhex(leaf.removeprefix("sha256:")),
                tree_size=_integer(data["tree_size"], "tree_size"),
                path=tuple(base64.b64decode(str(node), validate=True) for node in data["proof"]),
                checkpoint=Note.parse(str(data["checkpoint"])),
                entry=entry if isinstance(entry, dict) else None,
            )
        except KeyError as exc:
            raise ValueError(f"a proof needs {exc.args[0]!r}") from None
        except (TypeError, ValueError) as exc:
            raise ValueError(f"malformed proof: {exc}") from None
        return proof


def _integer(value: object, name: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer")
    return value


@dataclass(frozen=True, slots=True)
class ProvedEntry:
    """What a checked proof establishes."""

    checkpoint: Checkpoint
    witnesses: tuple[str, ...]  # names of the witnesses whose cosignatures verified
    cosigned_at: tuple[int, ...]  # their timestamps (POSIX seconds)


def check_proof(
    proof: InclusionProof,
    *,
    checkpoint_key: Verifier,
    witness_keys: Sequence[Verifier] = (),
    audit_keys: Iterable[bytes] = (),
) -> ProvedEntry:
    """Raise ProofError unless the proof holds under these keys; what it proves otherwise.

    Every witness in `witness_keys` must have cosigned the checkpoint. When `audit_keys` are
    given and the proof carries its entry, the entry must be sealed by one of them and hash to
    the proved leaf.
    """
    try:
        signed = open_note(proof.checkpoint, [checkpoint_key, *witness_keys])
        checkpoint = Checkpoint.from_text(proof.checkpoint.text)
    except NoteError as exc:
        raise ProofError(f"checkpoint: {exc}") from None
    if checkpoint_key not in signed:
        raise ProofError("the checkpoint is not signed by the checkpoint key")
    missing = [witness.name for witness in witness_keys if witness not in signed]
    if missing:
        raise ProofError(f"the checkpoint is not cosigned by {', '.join(missing)}")
    if checkpoint.origin != checkpoint_key.name or proof.origin != checkpoint.origin:
        raise ProofError(f"the checkpoint's origin {checkpoint.origin!r} is not {checkpoint_key.name!r}")
    if proof.tree_size != checkpoint.size:
        raise ProofError(f"the proof is for size {proof.tree_size}, the checkpoint for {checkpoint.size}")
    verify_inclusion(proof.leaf_index, proof.tree_size, proof.leaf_hash, proof.path, checkpoint.root)
    keys = {kid_of(key): key for key in audit_keys}
    if keys and proof.entry is not None:
        public = keys.get(str(proof.entry.get("kid")))
        if public is None or check_seal(proof.entry, public) is not None:
            raise ProofError("the entry is not sealed by a trusted audit key")
        if (
            proof.entry.get("hash") != "sha256:" + proof.leaf_hash.hex()
            or proof.entry.get("seq") != proof.leaf_index
        ):
            raise ProofError("the entry is not the proved leaf")
    cosigners = [witness for witness in witness_keys if witness in signed]
    stamps = tuple(
        stamp
        for witness in cosigners
        for signature in proof.checkpoint.signatures
        if witness.matches(signature) and (stamp := witness.timestamp(signature)) is not None
    )
    return ProvedEntry(checkpoint, tuple(witness.name for witness in cosigners), stamps)


def prove_entry(
    log_dir: Path,
    seq: int,
    checkpoint_key: Verifier,
    *,
    witness_keys: Sequence[Verifier] = (),
    extra_notes: Iterable[Path] = (),
) -> InclusionProof:
    """The proof of entry `seq` against the largest checkpoint that covers it: cosigned by every
    witness in `witness_keys` (when given; else any checkpoint signed by `checkpoint_key`,
    preferring one that carries cosignatures). ConfigError when there is none or it does not
    match the log."""
    notes_dir = log_dir / CHECKPOINTS_DIR
    notes = [
        *read_notes(notes_dir / COSIGNED_NOTES),
        *read_notes(notes_dir / LOG_NOTES),
        *(note for path in extra_notes for note in read_notes(path)),
    ]
    best: tuple[int, int, Note] | None = None  # (size, signatures, note)
    for note in notes:
        try:
            signed = open_note(note, [checkpoint_key, *witness_keys])
            checkpoint = Checkpoint.from_text(note.text)
        except NoteError:
            continue
        if checkpoint_key not in signed or any(w not in signed for w in witness_keys):
            continue
        if checkpoint.origin != checkpoint_key.name or checkpoint.size <= seq:
            continue
        rank = (checkpoint.size, len(note.signatures), note)
        if best is None or rank[:2] > best[:2]:
            best = rank
    if best is None:
        needed = " cosigned by " + ", ".join(w.name for w in witness_keys) if witness_keys else ""
        raise ConfigError(f"{log_dir}: no checkpoint{needed} covers seq {seq} yet")
    size, _, note = best
    # One pass over the log, O(log size) hashes held (not every leaf).
    streamed = inclusion_proof_streamed(seq, size, iter_leaves(log_dir))
    if streamed.count < size:
        raise ConfigError(
            f"{log_dir}: the log holds {streamed.count} entries, the checkpoint covers {size}: truncated"
        )
    checkpoint = Checkpoint.from_text(note.text)
    if streamed.root != checkpoint.root or streamed.leaf is None:
        raise ConfigError(f"{log_dir}: the first {size} entries do not match the checkpoint's root")
    entry = next(e for index, e in enumerate(read_entries(sorted(log_dir.glob("*.jsonl")))) if index == seq)
    return InclusionProof(
        origin=checkpoint.origin,
        leaf_index=seq,
        leaf_hash=streamed.leaf,
        tree_size=size,
        path=tuple(streamed.path),
        checkpoint=note,
        entry=entry,
    )
