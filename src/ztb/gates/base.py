"""What a gate sees (`Call`) and what it answers (`Deny` or None).

The `Call` is filled in as it passes the gates: the identity gate names the caller, the scope
gate records the token, the shape gate fixes the exact request that may go upstream. Fields not
yet known stay None, and the audit entry records them as null.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from ztb.config.registry import Registry, Route
from ztb.reasons import Gate, Reason, gate_of, status_of


@dataclass(frozen=True, slots=True)
class Appended:
    """An entry's place in the log, as the writer sealed it."""

    seq: int
    hash: str
    sig: str


class AuditLog(Protocol):
    """The audit log as the gates and the edge see it: append now, wait for durability."""

    def append(self, kind: str, fields: dict[str, Any]) -> Appended:
        """Seal and chain an entry; it becomes durable with the next group commit."""

    async def durable(self, seq: int, timeout_s: float) -> bool:
        """True once the entry `seq` is on disk; False when that does not happen in time."""

    @property
    def writable(self) -> bool:
        """False while writes are failing or an entry is overdue: the broker is then not ready."""

    @property
    def saturated(self) -> bool:
        """True while more is waiting for the disk than the writer's bound: take no new work."""


@dataclass(frozen=True, slots=True)
class Deny:
    reason: Reason

    @property
    def gate(self) -> Gate:
        return gate_of(self.reason)

    @property
    def status(self) -> int:
        return status_of(self.reason)


@dataclass(frozen=True, slots=True)
class Peer:
    """The caller as the TLS layer established it."""

    addr: str
    spki: str  # "sha256:<hex>" of the client certificate's SubjectPublicKeyInfo
    thumbprint: str  # RFC 8705 x5t#S256: hex SHA-256 of the client certificate's DER


@dataclass(frozen=True, slots=True)
class Lookup:
    """The request target looked up in the registry before any gate runs (nothing is resolved)."""

    upstream: str | None  # the target's first segment, when the target is canonical
    route: Route | None
    path: str | None  # the path to forward: rendered from the route's template and values
    error: Reason | None  # NON_CANONICAL_TARGET or NO_ROUTE, for the allowlist gate


@dataclass(frozen=True, slots=True)
class TokenFacts:
    id: str
    scope: str | None = None
    exp_in_s: int | None = None
    next_id: str | None = None


@dataclass(frozen=True, slots=True)
class Forward:
    """Exactly what may go upstream: built by the broker, never copied from the request."""

    path: str
    headers: tuple[tuple[str, str], ...]  # allowlisted request headers only
    body: bytes
    content_type: str | None


@dataclass(frozen=True, slots=True)
class BodyFacts:
    schema: str | None
    size: int
    sha256: str  # "sha256:<hex>" of the body bytes as received (= forwarded, for an allowed call)


class BodyTooLarge(Exception):
    pass


class BodyTimeout(Exception):
    pass


class BodySource(Protocol):
    def declared_length(self) -> int | None:
        """Content-Length, or None for a chunked body."""

    async def read(self, limit: int) -> bytes:
        """The whole body; BodyTooLarge past `limit` bytes, BodyTimeout when it stalls."""


@dataclass(slots=True)
class Call:
    call_id: str
    arrived: float  # time.perf_counter() at arrival, for latency_ms
    now: float  # wall clock at arrival, seconds since the epoch
    peer: Peer
    method: str
    target: str  # the raw request-target, latin-1 decoded
    headers: tuple[tuple[str, str], ...]  # lowercased names, latin-1 values, in order
    lookup: Lookup
    registry: Registry  # the registry in force when the call arrived
    body: BodySource
    identity: str | None = None
    token: TokenFacts | None = None
    body_facts: BodyFacts | None = None
    forward: Forward | None = None
    next_token: str | None = None  # the rotation token handed back with an allowed call's response
    entry: Appended | None = None  # the call's own audit entry, once written
    decided: float | None = None  # time.perf_counter() when gates 1-4 had decided (for metrics)
    durable_wait_s: float | None = None  # how long the egress gate waited for the ALLOW entry

    def header_values(self, name: str) -> list[str]:
        return [value for key, value in self.headers if key == name]


class GateCheck(Protocol):
    name: Gate

    async def check(self, call: Call) -> Deny | None: ...
