"""Hostile client certificates, over real TLS against a running broker.

Refused at the TLS level (no HTTP answer, connection closed, an `identity` entry folded per source
per second): a CA certificate as leaf, no EKU, serverAuth only, expired, not yet valid, another
CA, self-signed, no certificate, and a client that offers only TLS 1.2. A valid certificate under
the right CA whose SPKI is not pinned gets an HTTP 403 `identity`/`unknown_spki`. A pinned key in
a certificate that breaks a rule is refused all the same: a pin is never enough on its own.
"""

from __future__ import annotations

import datetime as dt
import ssl
from pathlib import Path
from typing import Any

import pytest

from hostile import Canary, Invariant, request_bytes, send_raw, tls_context
from stack import Stack
from ztb import pki
from ztb.client import client_context

LIST = "/orders.api.internal/v1/orders?limit=5"
NOW = dt.datetime.now(dt.UTC)
DAY = dt.timedelta(days=1)


def issue(ca: pki.Issued, case: str, pinned_key: Any) -> pki.Issued:
    uri = {"uris": ["spiffe://ztb.dev/svc.checkout"]}
    key = {"key": pinned_key}
    match case:
        case "CA:TRUE leaf":
            return pki.issue_leaf(ca, "svc.checkout", eku=[pki.CLIENT_AUTH], is_ca=True, **uri)
        case "pinned key, CA:TRUE leaf":
            return pki.issue_leaf(ca, "svc.checkout", eku=[pki.CLIENT_AUTH], is_ca=True, **uri, **key)
        case "no EKU":
            return pki.issue_leaf(ca, "svc.checkout", **uri)
        case "pinned key, no EKU":
            return pki.issue_leaf(ca, "svc.checkout", **uri, **key)
        case "serverAuth only":
            return pki.issue_leaf(ca, "svc.checkout", eku=[pki.SERVER_AUTH], **uri)
        case "expired":
            return pki.issue_leaf(
                ca,
                "svc.checkout",
                eku=[pki.CLIENT_AUTH],
                not_before=NOW - 30 * DAY,
                not_after=NOW - DAY,
                **key,
            )
        case "not yet valid":
            return pki.issue_leaf(
                ca,
                "svc.checkout",
                eku=[pki.CLIENT_AUTH],
                not_before=NOW + DAY,
                not_after=NOW + 30 * DAY,
                **key,
            )
        case "another CA":
            return pki.issue_client(pki.new_ca("ztb dev development CA"), "svc.checkout")
        case "pinned key, another CA":
            return pki.issue_leaf(pki.new_ca("another CA"), "svc.checkout", eku=[pki.CLIENT_AUTH], **key)
        case "self-signed":
            return pki.issue_leaf(None, "svc.checkout", eku=[pki.CLIENT_AUTH], **uri)
        case "pinned key, self-signed":
            return pki.issue_leaf(None, "svc.checkout", eku=[pki.CLIENT_AUTH], **key)
    raise AssertionError(case)


# case -> (the identity entry's reason, the TLS alert the caller receives). OpenSSL refuses the
# first kinds during the handshake, and the listener sends its alert; a CA certificate as a leaf
# and a missing EKU pass OpenSSL and are refused by the listener right after the handshake,
# when no alert can be sent any more: the connection is closed.
TLS_REFUSED = {
    "CA:TRUE leaf": ("client_cert_is_ca", None),
    "pinned key, CA:TRUE leaf": ("client_cert_is_ca", None),
    "no EKU": ("client_cert_not_client_auth", None),
    "pinned key, no EKU": ("client_cert_not_client_auth", None),
    "serverAuth only": ("untrusted_certificate", "ALERT_UNSUPPORTED_CERTIFICATE"),
    "expired": ("untrusted_certificate", "ALERT_CERTIFICATE_EXPIRED"),
    "not yet valid": ("untrusted_certificate", "ALERT_BAD_CERTIFICATE"),
    "another CA": ("untrusted_certificate", "ALERT_UNKNOWN_CA"),
    "pinned key, another CA": ("untrusted_certificate", "ALERT_UNKNOWN_CA"),
    "self-signed": ("untrusted_certificate", "ALERT_UNKNOWN_CA"),
    "pinned key, self-signed": ("untrusted_certificate", "ALERT_UNKNOWN_CA"),
}


def identity_refusals(stack: Stack, reason: str, after_seq: int) -> int:
    """How many TLS refusals with `reason` were audited after `after_seq` (folded entries count)."""
    return sum(
        e["count"]
        for e in stack.entries()
        if e["kind"] == "identity" and e["reason"] == reason and e["seq"] > after_seq
    )


def last_seq(stack: Stack) -> int:
    """The last seq on disk; -1 before the first group commit of a broker just started (the
    module's first case can run before its `start` entry is written)."""
    return max((e["seq"] for e in stack.entries()), default=-1)


def expect_tls_refusal(
    stack: Stack, canary: Canary, ctx: ssl.SSLContext, reason: str, alert: str | None
) -> None:
    check = Invariant(stack, canary)
    before = last_seq(stack)
    answer = send_raw(stack.port, ctx, request_bytes("GET", LIST), wait_close=True)
    assert answer.status is None and answer.closed, (answer.status, answer.body)
    if alert is None:  # refused after the handshake: closed, with no alert and no HTTP answer
        assert "ALERT" not in (answer.tls_error or ""), answer.tls_error
    else:  # the caller is told why, by the handshake failure's own alert (not a bare reset)
        assert alert in (answer.tls_error or ""), answer.tls_error
    # The first refusal of a second is written at once, repeats fold into one entry a second later.
    found = stack.wait_for(
        lambda e: e["kind"] == "identity" and e["reason"] == reason and e["seq"] > before, 3.0
    )
    assert found, f"no identity entry with reason {reason}"
    assert identity_refusals(stack, reason, before) >= 1
    assert found[0]["caller"] == {"addr": "127.0.0.1"} and found[0]["decision"] == "DENY"
    assert check.forwarded() == []
    check.clean()


def write(tmp_path: Path, cert: pki.Issued) -> ssl.SSLContext:
    cert.write(tmp_path / "c.pem", tmp_path / "k.pem")
    return client_context(tmp_path / "c.pem", tmp_path / "k.pem", Path(tmp_path / "ca.pem"))


@pytest.mark.parametrize("case", list(TLS_REFUSED))
def test_bad_client_certificate_is_refused_at_tls(
    stack: Stack, canary: Canary, tmp_path: Path, case: str
) -> None:
    ca = pki.load_issued(stack.root / "ca" / "ca.pem", stack.root / "ca" / "ca.key")
    (tmp_path / "ca.pem").write_bytes((stack.root / "ca" / "ca.pem").read_bytes())
    pinned = pki.load_issued(
        stack.root / "callers" / "svc.checkout" / "cert.pem",
        stack.root / "callers" / "svc.checkout" / "key.pem",
    )
    cert = issue(ca, case, pinned.key)
    if case.startswith("pinned key"):
        assert cert.pin == pinned.pin  # the registry pins this very key
    expect_tls_refusal(stack, canary, write(tmp_path, cert), *TLS_REFUSED[case])


def test_no_client_certificate_is_refused_at_tls(stack: Stack, canary: Canary) -> None:
    expect_tls_refusal(
        stack, canary, tls_context(stack.root, None), "no_client_certificate", "ALERT_CERTIFICATE_REQUIRED"
    )


def test_client_offering_only_tls12_is_refused(stack: Stack, canary: Canary) -> None:
    ctx = tls_context(stack.root)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    expect_tls_refusal(stack, canary, ctx, "tls_handshake_failed", "ALERT_PROTOCOL_VERSION")


def test_valid_certificate_with_unpinned_spki_gets_403(stack: Stack, canary: Canary, tmp_path: Path) -> None:
    check = Invariant(stack, canary)
    ca = pki.load_issued(stack.root / "ca" / "ca.pem", stack.root / "ca" / "ca.key")
    (tmp_path / "ca.pem").write_bytes((stack.root / "ca" / "ca.pem").read_bytes())
    ctx = write(tmp_path, pki.issue_client(ca, "svc.checkout"))  # same name, CA and EKU; another key
    answer = send_raw(stack.port, ctx, request_bytes("GET", LIST))
    entry = check.refused(answer, 403, "unknown_spki")
    assert entry["caller"]["identity"] is None and entry["token"] is None


def test_repeated_refusals_fold_into_counted_entries(stack: Stack, canary: Canary) -> None:
    """A burst of refusals from one source costs one entry at once and one folded entry a second."""
    before = last_seq(stack)
    for _ in range(5):
        answer = send_raw(
            stack.port, tls_context(stack.root, None), request_bytes("GET", LIST), wait_close=True
        )
        assert answer.status is None
    stack.wait_for(lambda e: identity_refusals(stack, "no_client_certificate", before) >= 5, 4.0)
    entries = [
        e
        for e in stack.entries()
        if e["kind"] == "identity" and e["reason"] == "no_client_certificate" and e["seq"] > before
    ]
    assert sum(e["count"] for e in entries) == 5
    assert len(entries) < 5
