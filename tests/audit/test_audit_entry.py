"""A single entry: leaf hash, seal, and the seal check."""

from __future__ import annotations

import hashlib
import json

from ztb.audit.entry import SIG_CONTEXT, VERSION, ZERO_HASH, body_of, check_seal, leaf_hash, seal
from ztb.audit.jcs import canonicalize
from ztb.audit.keys import SigningKey, verify_signature

KEY = SigningKey.generate()


def start_body() -> dict[str, object]:
    return {
        "v": VERSION,
        "kind": "start",
        "seq": 0,
        "ts": "2026-05-04T11:42:08.317Z",
        "broker": "broker-a",
        "kid": KEY.kid,
        "prev_hash": ZERO_HASH,
        "version": "0.1.0",
        "registry_sha256": "sha256:" + "ab" * 32,
        "keys": {KEY.kid: KEY.public_hex},
    }


def test_leaf_hash_is_rfc6962() -> None:
    assert leaf_hash(b"") == "sha256:6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"
    assert leaf_hash(b"{}") == "sha256:" + hashlib.sha256(b"\x00{}").hexdigest()


def test_seal_produces_the_canonical_signed_line() -> None:
    body = start_body()
    line, entry_hash, sig = seal(body, KEY)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    entry = json.loads(line)
    assert canonicalize(entry) + b"\n" == line
    assert entry == {**body, "hash": entry_hash, "sig": sig}
    assert entry_hash == leaf_hash(canonicalize(body))
    assert sig.startswith("ed25519:") and len(sig) == len("ed25519:") + 128
    signature = bytes.fromhex(sig.removeprefix("ed25519:"))
    assert verify_signature(KEY.public_raw, SIG_CONTEXT + entry_hash.encode("ascii"), signature)
    assert body_of(entry) == body
    assert check_seal(entry, KEY.public_raw) is None


def test_check_seal_explains_what_is_wrong() -> None:
    line, _, _ = seal(start_body(), KEY)
    entry = json.loads(line)
    assert check_seal({**entry, "ts": "2026-05-04T11:42:09.317Z"}, KEY.public_raw) == (
        "hash does not match the entry's body"
    )
    assert check_seal(entry, SigningKey.generate().public_raw) == "signature does not verify"
    assert check_seal({**entry, "hash": None}, KEY.public_raw) == "hash missing or not a string"
    assert check_seal({**entry, "sig": "rsa:00"}, KEY.public_raw) == "sig missing or not ed25519:<hex>"
    assert check_seal({**entry, "sig": "ed25519:zz"}, KEY.public_raw) == "sig is not hex"
    assert check_seal({**entry, "x": float("nan")}, KEY.public_raw) == (
        "body cannot be canonicalized: number nan is not finite"
    )
