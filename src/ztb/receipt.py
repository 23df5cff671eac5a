"""Receipts (SPEC section 7): `ZTB-Receipt: <seq>.<hash hex>.<sig hex>` on every response to an
allowed call, the caller's proof that the broker logged its `call` entry.

A receipt alone shows the broker signed the entry (check it with the audit public key); a later
checkpoint, cosigned by a witness, turns it into proof that the entry is in the log for good:
`verify_receipt` checks a proof document (`ztb audit prove DIR --seq N`, or `prove_receipt` when
the log is at hand) against the receipt and the keys the caller trusts. Pure checks plus, in
`prove_receipt`, reading the log; no network.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ztb.audit.entry import SIG_CONTEXT
from ztb.audit.keys import verify_signature
from ztb.audit.merkle import ProofError
from ztb.audit.note import Verifier
from ztb.audit.proofs import InclusionProof, ProvedEntry, check_proof, prove_entry
from ztb.config.errors import ConfigError

__all__ = ["HEADER", "Receipt", "ReceiptError", "prove_receipt", "verify_receipt"]

HEADER = "ztb-receipt"
_FORM = re.compile(r"(0|[1-9][0-9]{0,15})\.([0-9a-f]{64})\.([0-9a-f]{128})")


class ReceiptError(Exception):
    """A receipt that does not hold; str() is a one-line reason."""


@dataclass(frozen=True, slots=True)
class Receipt:
    seq: int
    leaf_hash: bytes  # the entry's `hash`, raw
    signature: bytes  # the entry's `sig`, raw

    @classmethod
    def parse(cls, header: str) -> Receipt:
        match = _FORM.fullmatch(header.strip())
        if match is None:
            raise ReceiptError("a receipt is <seq>.<64 hex digits>.<128 hex digits>")
        return cls(int(match[1]), bytes.fromhex(match[2]), bytes.fromhex(match[3]))

    @property
    def entry_hash(self) -> str:
        return "sha256:" + self.leaf_hash.hex()

    def header(self) -> str:
        return f"{self.seq}.{self.leaf_hash.hex()}.{self.signature.hex()}"

    def signed_by(self, audit_public_raw: bytes) -> bool:
        return verify_signature(
            audit_public_raw, SIG_CONTEXT + self.entry_hash.encode("ascii"), self.signature
        )


def verify_receipt(
    receipt: Receipt | str,
    proof: InclusionProof | dict[str, object] | str,
    *,
    audit_keys: Iterable[bytes],
    checkpoint_key: Verifier | str,
    witness_keys: Sequence[Verifier | str] = (),
) -> ProvedEntry:
    """Check that the proof shows the receipt's entry in a checkpoint signed by `checkpoint_key`
    and cosigned by every witness in `witness_keys` (vkeys or Verifiers). ReceiptError otherwise.
    """
    if isinstance(receipt, str):
        receipt = Receipt.parse(receipt)
    try:
        document = json.loads(proof) if isinstance(proof, str) else proof
        parsed = document if isinstance(document, InclusionProof) else InclusionProof.from_json(document)
        log_key = Verifier.parse(checkpoint_key) if isinstance(checkpoint_key, str) else checkpoint_key
        witnesses = [Verifier.parse(w) if isinstance(w, str) else w for w in witness_keys]
    except ValueError as exc:
        raise ReceiptError(str(exc)) from None
    keys = list(audit_keys)
    if not any(receipt.signed_by(key) for key in keys):
        raise ReceiptError("the receipt is not signed by a trusted audit key")
    if parsed.leaf_index != receipt.seq or parsed.leaf_hash != receipt.leaf_hash:
        raise ReceiptError(
            f"the proof is for entry {parsed.leaf_index}, not the receipt's entry {receipt.seq}"
        )
    try:
        return check_proof(parsed, checkpoint_key=log_key, witness_keys=witnesses, audit_keys=keys)
    except ProofError as exc:
        raise ReceiptError(str(exc)) from None


def prove_receipt(
    receipt: Receipt | str,
    log_dir: Path,
    *,
    audit_keys: Iterable[bytes],
    checkpoint_key: Verifier | str,
    witness_keys: Sequence[Verifier | str] = (),
) -> tuple[InclusionProof, ProvedEntry]:
    """Build the receipt's proof from a broker's log folder against the largest checkpoint
    cosigned by every witness in `witness_keys`, and check it."""
    if isinstance(receipt, str):
        receipt = Receipt.parse(receipt)
    try:
        log_key = Verifier.parse(checkpoint_key) if isinstance(checkpoint_key, str) else checkpoint_key
        witnesses = [Verifier.parse(w) if isinstance(w, str) else w for w in witness_keys]
        proof = prove_entry(log_dir, receipt.seq, log_key, witness_keys=witnesses)
    except (ValueError, ConfigError) as exc:
        raise ReceiptError(str(exc)) from None
    keys = list(audit_keys)
    return proof, verify_receipt(
        receipt, proof, audit_keys=keys, checkpoint_key=log_key, witness_keys=witnesses
    )
