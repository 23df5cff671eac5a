"""The one token store interface: put a minted record, take it back exactly once.

A store keeps SHA-256(token) -> TokenRecord, never the token itself, so a dump of it holds no
usable credential. `take` is one atomic take-and-delete: whatever the call's outcome, the first
presentation consumes the token, and the store remembers consumed hashes until their expiry so
that a replay is told apart from a token that never existed.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Protocol


@dataclass(frozen=True, slots=True)
class TokenRecord:
    identity: str
    upstream: str
    scope: str
    expires_at: float  # wall-clock seconds since the epoch
    cert_thumbprint: str  # RFC 8705 x5t#S256 of the certificate it was minted for, hex


class Taken(Enum):
    OK = "ok"
    UNKNOWN = "unknown"
    EXPIRED = "expired"
    REPLAYED = "replayed"


@dataclass(frozen=True, slots=True)
class TakeResult:
    outcome: Taken
    record: TokenRecord | None = None  # set when outcome is OK


class StoreUnavailable(Exception):
    """The store could not be reached in time; the call must be refused, never let through."""


class TokenStore(Protocol):
    """Every operation is bounded by the store itself: it answers, or raises StoreUnavailable
    within its own deadline (the Redis store's is 1 s), so callers add no timeout of their own."""

    async def put(self, digest: bytes, record: TokenRecord) -> None:
        """Remember a freshly minted token until record.expires_at."""

    async def take(self, digest: bytes, now: float) -> TakeResult:
        """Atomically consume the token with this hash; a second take reports REPLAYED."""

    async def ping(self) -> bool:
        """True when the store is reachable (readiness)."""

    async def close(self) -> None:
        """Release connections."""
