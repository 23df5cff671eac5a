"""ztb.pki: the certificate profile, SPKI pins and thumbprints."""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import re
from pathlib import Path
from typing import TypeVar

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

from ztb import pki


@pytest.fixture(scope="module")
def ca() -> pki.Issued:
    return pki.new_ca("test CA")


E = TypeVar("E", bound=x509.ExtensionType)


def _ext(cert: x509.Certificate, kind: type[E]) -> E:
    return cert.extensions.get_extension_for_class(kind).value


def test_ca_is_self_signed_ca(ca: pki.Issued) -> None:
    bc = _ext(ca.cert, x509.BasicConstraints)
    assert bc.ca
    ku = _ext(ca.cert, x509.KeyUsage)
    assert ku.key_cert_sign
    assert ca.cert.issuer == ca.cert.subject
    ca.cert.verify_directly_issued_by(ca.cert)


def test_server_cert_profile(ca: pki.Issued) -> None:
    server = pki.issue_server(ca, ["localhost", "orders.api.internal"], ["127.0.0.1", "::1"])
    cert = server.cert
    cert.verify_directly_issued_by(ca.cert)
    assert pki.common_name(cert) == "localhost"
    eku = _ext(cert, x509.ExtendedKeyUsage)
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    bc = _ext(cert, x509.BasicConstraints)
    assert not bc.ca
    ku = _ext(cert, x509.KeyUsage)
    assert ku.digital_signature and not ku.key_cert_sign
    san = _ext(cert, x509.SubjectAlternativeName)
    assert san.get_values_for_type(x509.DNSName) == ["localhost", "orders.api.internal"]
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    ]
    assert cert.signature_hash_algorithm is not None and cert.signature_hash_algorithm.name == "sha256"


def test_client_cert_profile(ca: pki.Issued) -> None:
    client = pki.issue_client(ca, "svc.checkout")
    cert = client.cert
    cert.verify_directly_issued_by(ca.cert)
    assert pki.common_name(cert) == "svc.checkout"
    eku = _ext(cert, x509.ExtendedKeyUsage)
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    san = _ext(cert, x509.SubjectAlternativeName)
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == ["spiffe://ztb.dev/svc.checkout"]
    bc = _ext(cert, x509.BasicConstraints)
    assert not bc.ca


def test_default_validity_is_a_year_backdated_five_minutes(ca: pki.Issued) -> None:
    now = dt.datetime.now(dt.UTC)
    cert = pki.issue_client(ca, "svc.a").cert
    assert dt.timedelta(minutes=4) < now - cert.not_valid_before_utc < dt.timedelta(minutes=6)
    assert abs(cert.not_valid_after_utc - now - dt.timedelta(days=365)) < dt.timedelta(minutes=1)


def test_hostile_options(ca: pki.Issued) -> None:
    past = dt.datetime(2020, 1, 1, tzinfo=dt.UTC)
    expired = pki.issue_leaf(
        ca, "old", eku=[pki.CLIENT_AUTH], not_before=past, not_after=past + dt.timedelta(days=1)
    )
    assert expired.cert.not_valid_after_utc == past + dt.timedelta(days=1)

    ca_leaf = pki.issue_leaf(ca, "svc.ca", eku=[pki.CLIENT_AUTH], is_ca=True)
    bc = _ext(ca_leaf.cert, x509.BasicConstraints)
    assert bc.ca

    no_eku = pki.issue_leaf(ca, "svc.none")
    with pytest.raises(x509.ExtensionNotFound):
        no_eku.cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage)

    both = pki.issue_leaf(ca, "svc.both", eku=[pki.SERVER_AUTH, pki.CLIENT_AUTH])
    assert list(_ext(both.cert, x509.ExtendedKeyUsage)) == [pki.SERVER_AUTH, pki.CLIENT_AUTH]

    selfsigned = pki.issue_leaf(None, "svc.self", eku=[pki.CLIENT_AUTH])
    assert selfsigned.cert.issuer == selfsigned.cert.subject
    selfsigned.cert.verify_directly_issued_by(selfsigned.cert)

    other_ca = pki.new_ca("other CA")
    foreign = pki.issue_client(other_ca, "svc.checkout")
    foreign.cert.verify_directly_issued_by(other_ca.cert)
    with pytest.raises(Exception):  # noqa: B017 - signature or issuer mismatch
        foreign.cert.verify_directly_issued_by(ca.cert)


def test_pin_format_and_stability(ca: pki.Issued) -> None:
    leaf = pki.issue_client(ca, "svc.pin")
    pin = pki.spki_pin(leaf.cert)
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", pin)
    assert pin == pki.spki_pin(leaf.der) == leaf.pin
    assert pin == pki.key_pin(leaf.key.public_key())
    spki = leaf.key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert pin == "sha256:" + hashlib.sha256(spki).hexdigest()
    # A new certificate for the same key keeps the pin; a new key changes it.
    reissued = pki.issue_leaf(ca, "svc.pin", eku=[pki.CLIENT_AUTH], key=leaf.key)
    assert reissued.der != leaf.der
    assert reissued.pin == pin
    assert pki.issue_client(ca, "svc.pin").pin != pin


def test_thumbprint_is_sha256_of_der(ca: pki.Issued) -> None:
    leaf = pki.issue_client(ca, "svc.thumb")
    thumb = pki.cert_thumbprint(leaf.der)
    assert thumb == hashlib.sha256(leaf.der).hexdigest()
    assert re.fullmatch(r"[0-9a-f]{64}", thumb)
    reissued = pki.issue_leaf(ca, "svc.thumb", eku=[pki.CLIENT_AUTH], key=leaf.key)
    assert pki.cert_thumbprint(reissued.der) != thumb  # same key, different certificate


def test_write_and_load_round_trip(ca: pki.Issued, tmp_path: Path) -> None:
    ca.write(tmp_path / "ca.pem", tmp_path / "ca.key")
    assert (tmp_path / "ca.key").stat().st_mode & 0o777 == 0o600
    loaded = pki.load_issued(tmp_path / "ca.pem", tmp_path / "ca.key")
    assert loaded.der == ca.der and loaded.pin == ca.pin
    pki.issue_client(loaded, "svc.x").cert.verify_directly_issued_by(ca.cert)
    with pytest.raises(FileExistsError):
        ca.write(tmp_path / "ca2.pem", tmp_path / "ca.key")
