"""What comes back from the broker, and the typed exceptions its refusals become.

A refusal is recognised only when its body is the broker's error body with a gate and a reason
that belong together and the status that reason answers with (ztb.reasons), so an upstream's
own 4xx/5xx answer stays a plain response. Pure code: no I/O.
"""

from __future__ import annotations

import json
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
    Nothing reached an upstream; trying again later is safe. A broker that refuses the client
    certificate at the TLS level (untrusted, expired, no clientAuth) also just closes the
    connection, so this persisting on every attempt points at the certificate."""


_BY_GATE: dict[Gate, type[BrokerError]] = {
    Gate.IDENTITY: IdentityRefused,
    Gate.SCOPE: ScopeRefused,
    Gate.ALLOWLIST: AllowlistRefused,
    Gate.SHAPE: ShapeRefused,
    Gate.EGRESS: EgressFailed,
}


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
