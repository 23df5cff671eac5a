"""Ed25519 audit keys: Wycheproof and RFC 8032 vectors, libsodium = OpenSSL, kid, save/load, public key specs."""

from __future__ import annotations

import hashlib
import json
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ec import SECP256R1, generate_private_key
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st

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


# RFC 8032 section 7.1, TESTs 1-3: (secret key, public key, message, signature), hex.
RFC8032 = [
    (
        "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
        "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
        "",
        "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b",
    ),
    (
        "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
        "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
        "72",
        "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00",
    ),
    (
        "c5aa8df43f9f837bedb7442f31dcb7b166d38535076f094b85ce3a2e0b4458f7",
        "fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025",
        "af82",
        "6291d657deec24024827e69c3abe01a30ce548a284743a445e3680d7db5ac3ac18ff9b538d16f290ae67f760984dc6594a7c15e9716ed28dc027beceea1ec40a",
    ),
]


@pytest.mark.parametrize(("secret", "public", "message", "signature"), RFC8032)
def test_signs_the_rfc8032_vectors(secret: str, public: str, message: str, signature: str) -> None:
    key = SigningKey(Ed25519PrivateKey.from_private_bytes(bytes.fromhex(secret)))
    assert key.public_hex == public
    assert key.sign(bytes.fromhex(message)).hex() == signature


@given(st.binary(min_size=32, max_size=32), st.binary(max_size=300))
def test_libsodium_signs_exactly_as_openssl(seed: bytes, message: bytes) -> None:
    """The hot path signs with libsodium; the bytes must be OpenSSL's, for any key and message."""
    private = Ed25519PrivateKey.from_private_bytes(seed)
    assert SigningKey(private).sign(message) == private.sign(message)


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
