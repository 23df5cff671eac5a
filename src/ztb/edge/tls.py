"""TLS at both edges: the listener's context (client certificate required), the egress context
(the broker's own client certificate towards upstreams), and the certificate rules OpenSSL does
not enforce by itself (clientAuth/serverAuth EKU present, no CA certificate as a leaf).

TLS 1.3 by default; 1.2 only when a deployment enables it, and then only forward-secret AEAD
suites. No compression, no renegotiation.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from ztb.pki import cert_thumbprint, spki_pin
from ztb.reasons import Reason

TLS12_AEAD_SUITES = "ECDHE+AESGCM:ECDHE+CHACHA20"
MinVersion = Literal["1.3", "1.2"]


def _harden(ctx: ssl.SSLContext, min_version: MinVersion) -> None:
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3 if min_version == "1.3" else ssl.TLSVersion.TLSv1_2
    if min_version == "1.2":
        ctx.set_ciphers(TLS12_AEAD_SUITES)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    ctx.verify_flags |= ssl.VERIFY_X509_STRICT
    ctx.set_alpn_protocols(["http/1.1"])


def server_context(cert: Path, key: Path, client_ca: Path, min_version: MinVersion) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    _harden(ctx, min_version)
    ctx.load_cert_chain(cert, key)
    ctx.load_verify_locations(cafile=client_ca)
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def egress_context(cert: Path, key: Path, upstream_ca: Path, min_version: MinVersion) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    _harden(ctx, min_version)
    ctx.load_cert_chain(cert, key)
    ctx.load_verify_locations(cafile=upstream_ca)
    ctx.check_hostname = True
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


@dataclass(frozen=True, slots=True)
class PeerCert:
    spki: str  # "sha256:<hex>"
    thumbprint: str  # hex SHA-256 of the DER certificate
    problem: Reason | None  # a rule the certificate breaks, if any


def _purpose_problem(
    cert: x509.Certificate, purpose: x509.ObjectIdentifier, missing: Reason
) -> Reason | None:
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        if constraints.ca:
            return Reason.CLIENT_CERT_IS_CA
    except x509.ExtensionNotFound:
        pass
    try:
        usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return missing
    return None if purpose in usages else missing


@lru_cache(maxsize=1024)
def client_cert_facts(der: bytes) -> PeerCert:
    """Pin, thumbprint and rule check of a client certificate that OpenSSL already verified."""
    cert = x509.load_der_x509_certificate(der)
    problem = _purpose_problem(cert, ExtendedKeyUsageOID.CLIENT_AUTH, Reason.CLIENT_CERT_NOT_CLIENT_AUTH)
    return PeerCert(spki_pin(cert), cert_thumbprint(der), problem)


@lru_cache(maxsize=256)
def upstream_cert_facts(der: bytes) -> PeerCert:
    """Pin and rule check of an upstream's certificate: it must carry serverAuth and not be a CA."""
    cert = x509.load_der_x509_certificate(der)
    problem = _purpose_problem(cert, ExtendedKeyUsageOID.SERVER_AUTH, Reason.UPSTREAM_PIN_MISMATCH)
    if problem is not None:
        problem = Reason.UPSTREAM_PIN_MISMATCH
    return PeerCert(spki_pin(cert), cert_thumbprint(der), problem)


def handshake_reason(exc: BaseException) -> Reason:
    """Classify a failed client handshake for the `identity` audit entry."""
    text = f"{getattr(exc, 'reason', '')} {exc}".upper()
    if "PEER_DID_NOT_RETURN_A_CERTIFICATE" in text or "CERTIFICATE REQUIRED" in text:
        return Reason.NO_CLIENT_CERTIFICATE
    if "CERTIFICATE" in text and ("VERIFY" in text or "UNKNOWN_CA" in text or "UNSUPPORTED" in text):
        return Reason.UNTRUSTED_CERTIFICATE
    return Reason.TLS_HANDSHAKE_FAILED
