"""The caller's token cache: rotation tokens (ZTB-Next-Token) kept per (upstream, scope).

Each allowed call hands back a fresh single-use token for the same upstream and scope, so a
steady caller mints once and then lives on rotation. Tokens are kept newest first, dropped a
safety margin before they expire, and at most `per_key` per (upstream, scope). A token is taken
out before it is used: single use on the broker is single use here too. Pure code: no I/O.
"""

from __future__ import annotations

import time
from collections.abc import Callable

DEFAULT_TTL_S = 60.0
MARGIN_S = 5.0
PER_KEY = 8

Key = tuple[str, str]  # (upstream, scope)


class TokenCache:
    def __init__(
        self,
        *,
        margin_s: float = MARGIN_S,
        per_key: int = PER_KEY,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._margin = margin_s
        self._per_key = per_key
        self._clock = clock
        self._held: dict[Key, list[tuple[float, str]]] = {}  # oldest first: (expires_at, token)
        self._ttl: dict[Key, float] = {}

    def learn_ttl(self, key: Key, ttl_s: float) -> None:
        """The lifetime the broker gives tokens for `key` (from a mint's `expires_in`)."""
        self._ttl[key] = ttl_s

    def put(self, key: Key, token: str) -> None:
        """Keep a token the broker just issued (its lifetime starts now)."""
        held = self._held.setdefault(key, [])
        held.append((self._clock() + self._ttl.get(key, DEFAULT_TTL_S), token))
        del held[: max(0, len(held) - self._per_key)]

    def take(self, key: Key) -> str | None:
        """The newest token still comfortably valid, removed from the cache; None if there is none."""
        held = self._held.get(key)
        now = self._clock()
        while held:
            expires_at, token = held.pop()
            if expires_at - self._margin > now:
                return token
        return None

    def drop(self, key: Key) -> None:
        """Forget every token held for `key` (the broker no longer knows them)."""
        self._held.pop(key, None)
