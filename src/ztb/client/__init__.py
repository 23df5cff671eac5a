"""ztb.client: the library services use to call upstreams through the broker.

- `Client` (sync, standard library) and `AsyncClient` (aiohttp) hold the caller's certificate,
  mint tokens on demand per (upstream, scope), use ZTB-Next-Token rotation transparently, and
  turn the broker's refusals into typed exceptions carrying status, gate, reason and call id:
  `IdentityRefused`, `ScopeRefused`, `AllowlistRefused`, `ShapeRefused`, `EgressFailed`
  (all `BrokerError`); `CertificateRefused` (an `IdentityRefused`) when the broker's TLS
  handshake refused the client certificate with an alert; `BrokerUnavailable` when a request
  could not be delivered at all.
- `Caller` is the low level under `Client`: requests sent exactly as given, tokens by hand,
  every answer returned as a `Response` (for tools and tests of hostile input).

It never logs, stores or prints a token; tokens live in memory for at most their lifetime.
"""

from ztb.client.aio import AsyncClient
from ztb.client.response import (
    AllowlistRefused,
    BrokerError,
    BrokerUnavailable,
    CertificateRefused,
    EgressFailed,
    IdentityRefused,
    Response,
    ScopeRefused,
    ShapeRefused,
    refusal,
)
from ztb.client.sync import Caller, Client, client_context

__all__ = [
    "AllowlistRefused",
    "AsyncClient",
    "BrokerError",
    "BrokerUnavailable",
    "Caller",
    "CertificateRefused",
    "Client",
    "EgressFailed",
    "IdentityRefused",
    "Response",
    "ScopeRefused",
    "ShapeRefused",
    "client_context",
    "refusal",
]
