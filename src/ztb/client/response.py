"""What comes back from the broker, and the typed exceptions its refusals become.

A refusal is recognised only when its body is the broker's error body with a gate and a reason
that belong together and the status that reason answers with (ztb.reasons), so an upstream's
own 4xx/5xx answer stays a plain response. Pure code: no I/O.
"""

from __future__ import annotations

import json
import re
import ssl
from dataclasses import dataclass
from typing import Any

from ztb.reasons import Gate, Reason, gate_of, status_of


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    headers: dict[str, str]  # lowercased names
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def call_id(self) -> str | None:
        """The broker's id of this call (its audit entry's `call_id`)."""
        error = self.error
        return self.headers.get("ztb-call-id") or (error or {}).get("call_id")

    @property
    def next_token(self) -> str | None:
        """The rotation token the broker handed back (ZTB-Next-Token), if any."""
        return self.headers.get("ztb-next-token")

    @property
    def error(self) -> dict[str, str] | None:
        """The broker's refusal body, when this is one."""
        if self.status < 400 or self.headers.get("content-type") != "application/json":
            return None
        try:
            payload = json.loads(self.body)
        except ValueError:
            return None
        error = payload.get("error") if isinstance(payload, dict) else None
        return error if isinstance(error, dict) else None


class BrokerError(Exception):
    """The broker refused the call: `status`, `gate`, `reason` (codes of ztb.reasons), `call_id`."""

    def __init__(self, status: int, gate: str, reason: str, call_id: str | None) -> None:
        self.status = status
        self.gate = gate
        self.reason = reason
        self.call_id = call_id
        super().__init__(f"{status} {gate}/{reason} (call {call_id})")


class IdentityRefused(BrokerError):
    """Gate 1: the certificate is valid but pinned to no identity (403 unknown_spki)."""


class CertificateRefused(IdentityRefused):
    """Gate 1 at the TLS level: the broker's handshake refused this client certificate (none,
    untrusted CA, expired, not yet valid, not for client authentication) and said so with a TLS
    alert. There is no HTTP status (`status` is 0) and no call id: the broker's log holds the
    refusal as an `identity` entry with the same `reason`. `alert` is OpenSSL's name for what
    the broker sent, e.g. `TLSV1_ALERT_UNKNOWN_CA`."""

    def __init__(self, reason: str, alert: str) -> None:
        super().__init__(0, Gate.IDENTITY.value, reason, None)
        self.alert = alert
        self.args = (f"the broker refused this client certificate in the TLS handshake: {alert} ({reason})",)


class ScopeRefused(BrokerError):
    """Gate 2: the token is missing, unknown, expired, replayed, for another certificate,
    upstream or scope, or not granted; or the token store is unavailable (503)."""


class AllowlistRefused(BrokerError):
    """Gate 3: the request target is not canonical (400) or matches no registered route (404)."""


class ShapeRefused(BrokerError):
    """Gate 4: body too large, wrong media type, invalid JSON or schema, headers too large."""


class EgressFailed(BrokerError):
    """Gate 5: the audit log could not be made durable (503, not forwarded), or the upstream
    failed (502/504: TLS, pin mismatch, unreachable, timeout). Check `forwarded` semantics in
    the audit `result` entry before retrying a 502/504: the upstream may have acted."""


class BrokerUnavailable(ConnectionError):
    """The request was not delivered: no connection, or the broker closed it before answering.
    Nothing reached an upstream; trying again later is safe. (A certificate the broker refuses
    in the handshake is a `CertificateRefused`; one it refuses right after the handshake, a CA
    certificate used as a leaf or one without any extended key usage, just sees the connection
    closed, so this persisting on every attempt can also point at the certificate.)"""


_BY_GATE: dict[Gate, type[BrokerError]] = {
    Gate.IDENTITY: IdentityRefused,
    Gate.SCOPE: ScopeRefused,
    Gate.ALLOWLIST: AllowlistRefused,
    Gate.SHAPE: ShapeRefused,
    Gate.EGRESS: EgressFailed,
}


# A TLS alert the peer sent, as OpenSSL names it in `ssl.SSLError.reason`.
_ALERT = re.compile(r"(?:SSLV3|TLSV1|TLSV13)_ALERT_([A-Z_]+)")
_ALERT_REASONS = {
    "CERTIFICATE_REQUIRED": Reason.NO_CLIENT_CERTIFICATE,
    "UNKNOWN_CA": Reason.UNTRUSTED_CERTIFICATE,
    "BAD_CERTIFICATE": Reason.UNTRUSTED_CERTIFICATE,
    "CERTIFICATE_EXPIRED": Reason.UNTRUSTED_CERTIFICATE,
    "CERTIFICATE_REVOKED": Reason.UNTRUSTED_CERTIFICATE,
    "CERTIFICATE_UNKNOWN": Reason.UNTRUSTED_CERTIFICATE,
    "UNSUPPORTED_CERTIFICATE": Reason.UNTRUSTED_CERTIFICATE,
    "DECRYPT_ERROR": Reason.UNTRUSTED_CERTIFICATE,  # the certificate's key did not sign the handshake
}


def tls_refusal(exc: BaseException) -> CertificateRefused | None:
    """The typed refusal for a TLS alert the broker sent in its handshake; None for any other
    error (a reset, an EOF, the broker's own certificate failing our verification)."""
    text = str(getattr(exc, "reason", None) or "")
    match = _ALERT.fullmatch(text)
    if not isinstance(exc, ssl.SSLError) or match is None:
        return None
    return CertificateRefused(_ALERT_REASONS.get(match.group(1), Reason.TLS_HANDSHAKE_FAILED).value, text)


def refusal(response: Response) -> BrokerError | None:
    """The typed exception for a broker refusal; None for anything else (an upstream's answer)."""
    error = response.error
    if error is None:
        return None
    try:
        reason = Reason(error.get("reason", ""))
        gate = Gate(error.get("gate", ""))
    except ValueError:
        return None
    if gate_of(reason) is not gate or status_of(reason) != response.status:
        return None
    call_id = error.get("call_id")
    return _BY_GATE[gate](
        response.status, gate.value, reason.value, call_id if isinstance(call_id, str) else None
    )
