"""Receipts: the `ZTB-Receipt` header of an allowed call, turned into a verified inclusion proof
against a later cosigned checkpoint; and everything that must not verify."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from procs import wait_until
from stack import UPSTREAM, AnchoredStack
from ztb.audit.keys import SigningKey, load_public_key
from ztb.audit.note import Verifier
from ztb.audit.proofs import prove_entry
from ztb.config import ConfigError
from ztb.receipt import Receipt, ReceiptError, prove_receipt, verify_receipt


@pytest.fixture(scope="module")
def anchored(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AnchoredStack]:
    stack = AnchoredStack(tmp_path_factory.mktemp("receipts") / "dep", every_entries=1000, every_s=0.1)
    try:
        yield stack
    finally:
        stack.close()


def keys(stack: AnchoredStack) -> dict[str, object]:
    return {
        "audit_keys": [load_public_key(str(stack.root / "keys/audit.pub"))],
        "checkpoint_key": (stack.root / "keys/checkpoint.vkey").read_text(),
        "witness_keys": [stack.witness_vkey],
    }


def allowed(stack: AnchoredStack) -> tuple[str, str]:
    caller = stack.caller()
    try:
        token = caller.mint(UPSTREAM, "orders:read")
        response = caller.call("GET", UPSTREAM, "/v1/orders?limit=5", token=token)
    finally:
        caller.close()
    assert response.status == 200
    return response.headers["ztb-receipt"], response.headers["ztb-call-id"]


def test_a_receipt_is_the_call_entry_signed(anchored: AnchoredStack) -> None:
    header, call_id = allowed(anchored)
    receipt = Receipt.parse(header)
    entry = anchored.entry_of(call_id)
    assert (receipt.seq, receipt.entry_hash, "ed25519:" + receipt.signature.hex()) == (
        entry["seq"],
        entry["hash"],
        entry["sig"],
    )
    assert receipt.signed_by(load_public_key(str(anchored.root / "keys/audit.pub")))
    assert not receipt.signed_by(SigningKey.generate().public_raw)
    assert Receipt.parse(receipt.header()) == receipt


def test_a_receipt_verifies_against_a_later_cosigned_checkpoint(anchored: AnchoredStack) -> None:
    header, call_id = allowed(anchored)
    seq = Receipt.parse(header).seq
    wait_until(lambda: max(anchored.sizes(), default=0) > seq, what="a cosigned checkpoint past the call")
    proof, proved = prove_receipt(header, anchored.log_dir, **keys(anchored))  # type: ignore[arg-type]
    assert proved.checkpoint.size > seq and proved.witnesses == ("witness.test/w1",)
    assert proof.entry is not None and proof.entry["call_id"] == call_id
    # The same proof as a JSON document (what `ztb audit prove --seq` prints) verifies too.
    document = json.dumps(proof.to_json())
    again = verify_receipt(header, document, **keys(anchored))  # type: ignore[arg-type]
    assert again.checkpoint == proved.checkpoint


def test_what_must_not_verify(anchored: AnchoredStack) -> None:
    header, _ = allowed(anchored)
    other_header, _ = allowed(anchored)
    wait_until(
        lambda: max(anchored.sizes(), default=0) > Receipt.parse(other_header).seq, what="a checkpoint"
    )
    proof, _ = prove_receipt(header, anchored.log_dir, **keys(anchored))  # type: ignore[arg-type]
    document = proof.to_json()
    k = keys(anchored)
    receipt = Receipt.parse(header)
    forged_hash = Receipt(receipt.seq, bytes(32), receipt.signature).header()
    with pytest.raises(ReceiptError, match="not signed by a trusted audit key"):
        verify_receipt(forged_hash, document, **k)  # type: ignore[arg-type]
    with pytest.raises(ReceiptError, match="is for entry"):
        verify_receipt(other_header, document, **k)  # type: ignore[arg-type]
    bad_path = {**document, "proof": [*document["proof"][:-1], "A" * 43 + "="]}
    with pytest.raises(ReceiptError, match="inclusion proof"):
        verify_receipt(header, bad_path, **k)  # type: ignore[arg-type]
    stranger = Verifier("witness.test/w9", 4, SigningKey.generate().public_raw)
    with pytest.raises(ReceiptError, match=r"not cosigned by witness\.test/w9"):
        verify_receipt(header, document, **{**k, "witness_keys": [stranger]})  # type: ignore[arg-type]
    with pytest.raises(
        ReceiptError, match=r"not signed by the checkpoint key|no signature from a trusted key"
    ):
        verify_receipt(
            header,
            document,
            **{**k, "checkpoint_key": Verifier("dev/broker-a", 1, SigningKey.generate().public_raw)},  # type: ignore[arg-type]
        )
    with pytest.raises(ReceiptError, match="a receipt is"):
        Receipt.parse("12.abc.def")


def test_a_refused_call_carries_no_receipt(anchored: AnchoredStack) -> None:
    caller = anchored.caller()
    try:
        response = caller.request("GET", f"/{UPSTREAM}/v1/orders?limit=5", None, {})
    finally:
        caller.close()
    assert response.status == 401 and "ztb-receipt" not in response.headers


def test_prove_needs_a_checkpoint_that_covers_the_entry(anchored: AnchoredStack) -> None:
    log_key = Verifier.parse((anchored.root / "keys/checkpoint.vkey").read_text())
    with pytest.raises(ConfigError, match="no checkpoint"):
        prove_entry(anchored.log_dir, 10**9, log_key)
