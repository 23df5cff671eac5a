"""Ed25519 audit signing keys: generate, load, save, sign, and verify a signature.

Owns the key material of the audit chain and the `kid` that names a public key. It must never
write a private key readable by others, never accept an encrypted or non-Ed25519 key silently,
and `verify_signature` must never raise: a bad key or signature is simply not valid.

Keys are read and written with `cryptography`, and signatures are verified with it. Signing,
two per call on the broker's hot path, uses libsodium (PyNaCl), which signs in about 60% of
OpenSSL's time on this code's machines. Ed25519 signatures are deterministic (RFC 8032), so
both libraries give the very same bytes: each key checks that once when it is loaded, and the
tests check it on the RFC 8032 vectors and on random keys and messages.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
from pathlib import Path

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from nacl.bindings import crypto_sign, crypto_sign_seed_keypair

from ztb.config import ConfigError

__all__ = ["SigningKey", "kid_of", "load_public_key", "verify_signature"]

_HEX_KEY = re.compile(r"[0-9a-fA-F]{64}")


def kid_of(public_raw: bytes) -> str:
    """The key id: the first 16 hex digits of SHA-256 over the raw 32-byte public key."""
    return hashlib.sha256(public_raw).hexdigest()[:16]


class SigningKey:
    """An Ed25519 private key that signs audit entries."""

    def __init__(self, private: Ed25519PrivateKey) -> None:
        self._private = private
        self._public_raw = private.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        self._kid = kid_of(self._public_raw)
        seed = private.private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
        )
        public, self._sodium = crypto_sign_seed_keypair(seed)  # libsodium's 64-byte secret key
        probe = b"ztb signing key self-check"
        if public != self._public_raw or self.sign(probe) != private.sign(probe):
            raise RuntimeError("libsodium and OpenSSL disagree on an Ed25519 key")  # never expected

    @classmethod
    def generate(cls) -> SigningKey:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def load(cls, path: Path) -> SigningKey:
        """Read an unencrypted PKCS#8 PEM Ed25519 private key; ConfigError naming `path` otherwise."""
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise ConfigError(f"{path}: no such file") from None
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
        try:
            private = serialization.load_pem_private_key(data, password=None)
        except TypeError:
            raise ConfigError(f"{path}: the key is encrypted; an unencrypted PKCS#8 PEM is needed") from None
        except (ValueError, UnsupportedAlgorithm):
            raise ConfigError(f"{path}: not a PEM private key") from None
        if not isinstance(private, Ed25519PrivateKey):
            raise ConfigError(f"{path}: not an Ed25519 key")
        return cls(private)

    def save(self, path: Path) -> None:
        """Write the private PEM to `path` (mode 0600) and the public PEM to `path.with_suffix(".pub")`."""
        private_pem = self._private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        public_pem = self._private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "wb") as file:
            os.fchmod(file.fileno(), 0o600)  # the file may have existed with wider permissions
            file.write(private_pem)
        path.with_suffix(".pub").write_bytes(public_pem)

    @property
    def kid(self) -> str:
        return self._kid

    @property
    def public_raw(self) -> bytes:
        return self._public_raw

    @property
    def public_hex(self) -> str:
        return self._public_raw.hex()

    def sign(self, message: bytes) -> bytes:
        """The 64-byte Ed25519 signature of `message` (libsodium's; identical to OpenSSL's)."""
        return crypto_sign(message, self._sodium)[:64]


def load_public_key(spec: str) -> bytes:
    """Raw 32-byte Ed25519 public key from a PEM file, a file holding 64 hex digits, or 64 hex
    digits inline; ValueError with a one-line message otherwise."""
    path = Path(spec)
    if path.is_file():
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ValueError(f"{spec}: cannot read: {exc.strerror or exc}") from None
        if b"-----BEGIN" in data:
            return _from_pem(spec, data)
        text = data.decode("ascii", errors="replace").strip()
        if _HEX_KEY.fullmatch(text):
            return bytes.fromhex(text)
        raise ValueError(f"{spec}: not a PEM public key nor 64 hex digits")
    if _HEX_KEY.fullmatch(spec):
        return bytes.fromhex(spec)
    raise ValueError(f"{spec}: no such file and not 64 hex digits")


def _from_pem(spec: str, data: bytes) -> bytes:
    try:
        public = serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm):
        raise ValueError(f"{spec}: not a PEM public key") from None
    if not isinstance(public, Ed25519PublicKey):
        raise ValueError(f"{spec}: not an Ed25519 public key")
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def verify_signature(public_raw: bytes, message: bytes, signature: bytes) -> bool:
    """True when `signature` is a valid Ed25519 signature of `message`; never raises."""
    try:
        _public_key(public_raw).verify(signature, message)
    except (InvalidSignature, ValueError, TypeError, UnsupportedAlgorithm):
        return False
    return True


@functools.lru_cache(maxsize=64)
def _public_key(public_raw: bytes) -> Ed25519PublicKey:
    # A verifier checks many signatures under few keys: load each key once.
    return Ed25519PublicKey.from_public_bytes(public_raw)
