"""ztb.client's pure parts: the rotation token cache and how answers become typed refusals."""

from __future__ import annotations

import json
import ssl

import pytest

from ztb.client import (
    AllowlistRefused,
    CertificateRefused,
    EgressFailed,
    IdentityRefused,
    Response,
    ScopeRefused,
    ShapeRefused,
    refusal,
)
from ztb.client.response import tls_refusal
from ztb.client.tokens import TokenCache

KEY = ("orders.api.internal", "orders:create")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_cache_hands_out_newest_first_each_once() -> None:
    cache = TokenCache(clock=Clock())
    cache.put(KEY, "a")
    cache.put(KEY, "b")
    assert cache.take(KEY) == "b"
    assert cache.take(KEY) == "a"
    assert cache.take(KEY) is None
    assert cache.take(("other", "x:y")) is None


def test_cache_drops_tokens_a_margin_before_expiry() -> None:
    clock = Clock()
    cache = TokenCache(clock=clock, margin_s=5)
    cache.learn_ttl(KEY, 30)
    cache.put(KEY, "a")
    clock.now += 24.9
    cache.put(KEY, "b")
    clock.now += 0.2  # "a" has 4.9 s left: inside the margin
    assert cache.take(KEY) == "b"
    assert cache.take(KEY) is None


def test_cache_is_bounded_per_key_and_can_drop_a_key() -> None:
    cache = TokenCache(clock=Clock(), per_key=3)
    for token in "abcde":
        cache.put(KEY, token)
    assert [cache.take(KEY) for _ in range(4)] == ["e", "d", "c", None]
    cache.put(KEY, "f")
    cache.drop(KEY)
    assert cache.take(KEY) is None


def _answer(status: int, gate: str, reason: str, content_type: str = "application/json") -> Response:
    body = json.dumps({"error": {"gate": gate, "reason": reason, "call_id": "01HX"}}).encode()
    return Response(status, {"content-type": content_type}, body)


@pytest.mark.parametrize(
    ("status", "gate", "reason", "kind"),
    [
        (403, "identity", "unknown_spki", IdentityRefused),
        (403, "scope", "token_replayed", ScopeRefused),
        (503, "scope", "token_store_unavailable", ScopeRefused),
        (404, "allowlist", "no_route", AllowlistRefused),
        (413, "shape", "body_too_large", ShapeRefused),
        (503, "egress", "audit_unavailable", EgressFailed),
        (502, "egress", "upstream_pin_mismatch", EgressFailed),
    ],
)
def test_broker_refusals_become_typed_errors(status: int, gate: str, reason: str, kind: type) -> None:
    refused = refusal(_answer(status, gate, reason))
    assert type(refused) is kind
    assert refused is not None
    assert (refused.status, refused.gate, refused.reason, refused.call_id) == (status, gate, reason, "01HX")


@pytest.mark.parametrize(
    "answer",
    [
        _answer(404, "scope", "token_replayed"),  # wrong status for the reason
        _answer(403, "shape", "token_replayed"),  # reason of another gate
        _answer(403, "scope", "made_up"),  # not a reason code
        _answer(403, "scope", "token_replayed", "text/plain"),
        Response(404, {"content-type": "application/json"}, b'{"error": "not_found"}'),
        Response(201, {"content-type": "application/json"}, b"{}"),
    ],
)
def test_anything_else_is_an_upstream_answer(answer: Response) -> None:
    assert refusal(answer) is None


def _ssl_error(reason: str, kind: type[ssl.SSLError] = ssl.SSLError) -> ssl.SSLError:
    error = kind(1, f"[SSL: {reason}] ({reason.lower()})")
    error.reason = reason
    return error


@pytest.mark.parametrize(
    ("alert", "reason"),
    [
        ("TLSV13_ALERT_CERTIFICATE_REQUIRED", "no_client_certificate"),
        ("TLSV1_ALERT_UNKNOWN_CA", "untrusted_certificate"),
        ("SSLV3_ALERT_CERTIFICATE_EXPIRED", "untrusted_certificate"),
        ("SSLV3_ALERT_BAD_CERTIFICATE", "untrusted_certificate"),
        ("SSLV3_ALERT_UNSUPPORTED_CERTIFICATE", "untrusted_certificate"),
        ("TLSV1_ALERT_PROTOCOL_VERSION", "tls_handshake_failed"),
        ("SSLV3_ALERT_HANDSHAKE_FAILURE", "tls_handshake_failed"),
    ],
)
def test_a_handshake_alert_becomes_a_certificate_refusal(alert: str, reason: str) -> None:
    refused = tls_refusal(_ssl_error(alert))
    assert isinstance(refused, CertificateRefused) and isinstance(refused, IdentityRefused)
    assert (refused.status, refused.gate, refused.reason, refused.alert) == (0, "identity", reason, alert)


@pytest.mark.parametrize(
    "error",
    [
        _ssl_error("UNEXPECTED_EOF_WHILE_READING", ssl.SSLEOFError),  # a close, not a refusal
        _ssl_error("CERTIFICATE_VERIFY_FAILED", ssl.SSLCertVerificationError),  # ours of the broker
        _ssl_error("WRONG_VERSION_NUMBER"),  # not TLS on the other side
        _ssl_error("XTLSV1_ALERT_UNKNOWN_CA"),  # not OpenSSL's name for an alert
        ConnectionResetError(104, "reset"),
        OSError("TLSV1_ALERT_UNKNOWN_CA"),  # the words alone, outside a TLS error
    ],
)
def test_anything_else_is_not_a_certificate_refusal(error: BaseException) -> None:
    assert tls_refusal(error) is None
