"""Certificates for `ztb init` and the tests: a CA, server and client leaves, SPKI pins, thumbprints.

Owns the X.509 profile of a ztb deployment (ECDSA P-256 keys, SHA-256 signatures) and the two
fingerprint formats the rest of ztb compares: the SPKI pin of registry.yaml and the RFC 8705
certificate thumbprint that binds a token to a certificate. It must never decide trust: it
issues and measures certificates; the gates decide what a certificate is worth. The knobs that
make bad certificates (expired, CA leaves, wrong EKUs, self-signed) exist for hostile-input tests.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

SERVER_AUTH = ExtendedKeyUsageOID.SERVER_AUTH
CLIENT_AUTH = ExtendedKeyUsageOID.CLIENT_AUTH
SPIFFE_TRUST_DOMAIN = "ztb.dev"
DEFAULT_VALIDITY = dt.timedelta(days=365)
# Backdated so that a peer whose clock is a little behind still accepts a fresh certificate.
BACKDATE = dt.timedelta(minutes=5)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True, slots=True)
class Issued:
    """A certificate and its private key."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def der(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.DER)

    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def key_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    @property
    def pin(self) -> str:
        return spki_pin(self.cert)

    def write(self, cert_path: Path, key_path: Path) -> None:
        """Write the certificate (PEM) and the unencrypted PKCS#8 key (PEM, mode 0600)."""
        cert_path.write_bytes(self.cert_pem())
        write_private(key_path, self.key_pem())


def write_private(path: Path, data: bytes) -> None:
    """Create `path` with mode 0600 and write `data`; refuses to overwrite an existing file."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def new_ca(
    common_name: str,
    *,
    not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
) -> Issued:
    """A self-signed CA certificate: CA:TRUE (path length 0), keyCertSign and cRLSign."""
    key = new_key()
    name = _name(common_name)
    start, end = _validity(not_before, not_after)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(digital_signature=True, cert_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    return Issued(builder.sign(key, hashes.SHA256()), key)


def issue_leaf(
    issuer: Issued | None,
    common_name: str,
    *,
    dns_names: Sequence[str] = (),
    ip_addresses: Sequence[IPAddress | str] = (),
    uris: Sequence[str] = (),
    eku: Sequence[x509.ObjectIdentifier] = (),
    is_ca: bool = False,
    not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
    key: ec.EllipticCurvePrivateKey | None = None,
) -> Issued:
    """Any leaf certificate. `issuer=None` makes it self-signed; an empty `eku` omits the extension."""
    key = key if key is not None else new_key()
    subject = _name(common_name)
    start, end = _validity(not_before, not_after)
    signer_key = issuer.key if issuer is not None else key
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.cert.subject if issuer is not None else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
        .add_extension(_key_usage(digital_signature=True, cert_sign=is_ca), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(signer_key.public_key()), critical=False
        )
    )
    if eku:
        builder = builder.add_extension(x509.ExtendedKeyUsage(list(eku)), critical=False)
    sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns_names]
    sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ip_addresses]
    sans += [x509.UniformResourceIdentifier(u) for u in uris]
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return Issued(builder.sign(signer_key, hashes.SHA256()), key)


def issue_server(
    ca: Issued,
    dns_names: Sequence[str],
    ip_addresses: Sequence[IPAddress | str] = (),
    *,
    not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
) -> Issued:
    """A TLS server certificate (serverAuth); its CN is the first DNS name."""
    if not dns_names:
        raise ValueError("a server certificate needs at least one DNS name")
    return issue_leaf(
        ca,
        dns_names[0],
        dns_names=dns_names,
        ip_addresses=ip_addresses,
        eku=[SERVER_AUTH],
        not_before=not_before,
        not_after=not_after,
    )


def issue_client(
    ca: Issued,
    identity: str,
    *,
    not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
) -> Issued:
    """A TLS client certificate (clientAuth) for `identity`: CN and a SPIFFE URI SAN name it."""
    return issue_leaf(
        ca,
        identity,
        uris=[f"spiffe://{SPIFFE_TRUST_DOMAIN}/{identity}"],
        eku=[CLIENT_AUTH],
        not_before=not_before,
        not_after=not_after,
    )


def load_issued(cert_path: Path, key_path: Path) -> Issued:
    """Read back a PEM certificate and its P-256 key (e.g. a deployment's CA, to issue more)."""
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{key_path}: not an EC private key")
    return Issued(cert, key)


def spki_pin(cert: x509.Certificate | bytes) -> str:
    """The pin format of registry.yaml: "sha256:" + hex SHA-256 of the DER SubjectPublicKeyInfo.

    `cert` is a certificate object or a DER-encoded certificate (as TLS hands it over).
    """
    if isinstance(cert, bytes):
        cert = x509.load_der_x509_certificate(cert)
    return key_pin(cert.public_key())


def key_pin(public_key: CertificatePublicKeyTypes) -> str:
    """The SPKI pin of a public key; equals `spki_pin` of any certificate for that key."""
    spki = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return "sha256:" + hashlib.sha256(spki).hexdigest()


def cert_thumbprint(der: bytes) -> str:
    """RFC 8705 `x5t#S256` of a DER certificate, as hex (binds a token to the certificate)."""
    return hashlib.sha256(der).hexdigest()


def common_name(cert: x509.Certificate) -> str | None:
    """The subject's first CN, or None."""
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not names:
        return None
    value = names[0].value
    return value if isinstance(value, str) else value.decode("utf-8", "replace")


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _validity(
    not_before: dt.datetime | None, not_after: dt.datetime | None
) -> tuple[dt.datetime, dt.datetime]:
    now = dt.datetime.now(dt.UTC)
    start = not_before if not_before is not None else now - BACKDATE
    end = not_after if not_after is not None else now + DEFAULT_VALIDITY
    return start, end


def _key_usage(*, digital_signature: bool, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )
