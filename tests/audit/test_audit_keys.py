"""Ed25519 audit keys: Wycheproof vectors, kid, save/load, public key specs."""

from __future__ import annotations

import hashlib
import json
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ec import SECP256R1, generate_private_key

from ztb.audit.keys import SigningKey, kid_of, load_public_key, verify_signature
from ztb.config import ConfigError

WYCHEPROOF = json.loads(
    (Path(__file__).parent / "vectors" / "ed25519" / "wycheproof_ed25519_test.json").read_text()
)
CASES = [(group["publicKey"]["pk"], test) for group in WYCHEPROOF["testGroups"] for test in group["tests"]]


def test_every_wycheproof_vector_is_used() -> None:
    assert len(CASES) == WYCHEPROOF["numberOfTests"]
    assert {test["result"] for _, test in CASES} == {"valid", "invalid"}


@pytest.mark.parametrize(("pk", "case"), CASES, ids=[f"tc{case['tcId']}" for _, case in CASES])
def test_wycheproof(pk: str, case: dict[str, object]) -> None:
    result = verify_signature(
        bytes.fromhex(pk), bytes.fromhex(str(case["msg"])), bytes.fromhex(str(case["sig"]))
    )
    assert result is (case["result"] == "valid")


def test_sign_and_verify_round_trip() -> None:
    key = SigningKey.generate()
    signature = key.sign(b"message")
    assert len(signature) == 64
    assert verify_signature(key.public_raw, b"message", signature)
    assert not verify_signature(key.public_raw, b"messagE", signature)
    assert not verify_signature(SigningKey.generate().public_raw, b"message", signature)


@pytest.mark.parametrize(
    ("public", "signature"), [(b"", b"\x00" * 64), (b"\x01" * 31, b"\x00" * 64), (b"\x01" * 32, b"short")]
)
def test_verify_never_raises(public: bytes, signature: bytes) -> None:
    assert verify_signature(public, b"m", signature) is False


def test_kid_and_properties() -> None:
    key = SigningKey.generate()
    assert len(key.public_raw) == 32
    assert key.public_hex == key.public_raw.hex()
    assert key.kid == hashlib.sha256(key.public_raw).hexdigest()[:16] == kid_of(key.public_raw)


def test_save_and_load(tmp_path: Path) -> None:
    key = SigningKey.generate()
    path = tmp_path / "audit.key"
    path.write_text("old")
    path.chmod(0o644)
    key.save(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert SigningKey.load(path).public_raw == key.public_raw
    assert load_public_key(str(tmp_path / "audit.pub")) == key.public_raw


def test_load_problems_name_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "missing.key"
    with pytest.raises(ConfigError, match=f"^{missing}: no such file"):
        SigningKey.load(missing)
    garbage = tmp_path / "garbage.key"
    garbage.write_text("not a key")
    with pytest.raises(ConfigError, match=f"^{garbage}: not a PEM private key"):
        SigningKey.load(garbage)
    ec_key = tmp_path / "ec.key"
    ec_key.write_bytes(
        generate_private_key(SECP256R1()).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    with pytest.raises(ConfigError, match="not an Ed25519 key"):
        SigningKey.load(ec_key)
    encrypted = tmp_path / "encrypted.key"
    encrypted.write_bytes(
        generate_private_key(SECP256R1()).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    with pytest.raises(ConfigError, match="encrypted"):
        SigningKey.load(encrypted)


def test_load_public_key_specs(tmp_path: Path) -> None:
    key = SigningKey.generate()
    assert load_public_key(key.public_hex) == key.public_raw
    assert load_public_key(key.public_hex.upper()) == key.public_raw
    hex_file = tmp_path / "audit.hex"
    hex_file.write_text(key.public_hex + "\n")
    assert load_public_key(str(hex_file)) == key.public_raw


@pytest.mark.parametrize("content", ["", "abc", "-----BEGIN PUBLIC KEY-----\nxx\n-----END PUBLIC KEY-----\n"])
def test_load_public_key_refuses_bad_files(tmp_path: Path, content: str) -> None:
    path = tmp_path / "bad.pub"
    path.write_text(content)
    with pytest.raises(ValueError, match=f"^{path}: "):
        load_public_key(str(path))


def test_load_public_key_refuses_other_algorithms_and_nonsense(tmp_path: Path) -> None:
    ec_pub = tmp_path / "ec.pub"
    ec_pub.write_bytes(
        generate_private_key(SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    with pytest.raises(ValueError, match="not an Ed25519 public key"):
        load_public_key(str(ec_pub))
    with pytest.raises(ValueError, match="no such file and not 64 hex digits"):
        load_public_key(str(tmp_path / "missing.pub"))
    with pytest.raises(ValueError, match="not 64 hex digits"):
        load_public_key("ab" * 31)
