"""The in-process token store: the default for a single broker process.

A dict of live records and a dict of consumed hashes, both keyed by SHA-256(token) and swept of
expired entries as they age. Everything runs on the event loop thread, so each `take` is atomic
without a lock.
"""

from __future__ import annotations

import heapq
import time

from ztb.tokens.store import Taken, TakeResult, TokenRecord

# A consumed or expired hash is remembered this long past its expiry, so a late replay is still
# reported as a replay (or as expired) rather than as an unknown token.
GRACE_S = 60.0


class MemoryTokenStore:
    def __init__(self) -> None:
        self._live: dict[bytes, TokenRecord] = {}
        self._consumed: dict[bytes, float] = {}  # hash -> forget after
        self._expiry: list[tuple[float, bytes]] = []  # min-heap of (forget after, hash)

    async def put(self, digest: bytes, record: TokenRecord) -> None:
        self._sweep(time.time())
        self._live[digest] = record
        heapq.heappush(self._expiry, (record.expires_at + GRACE_S, digest))

    async def take(self, digest: bytes, now: float) -> TakeResult:
        self._sweep(now)
        record = self._live.pop(digest, None)
        if record is None:
            if digest in self._consumed:
                return TakeResult(Taken.REPLAYED)
            return TakeResult(Taken.UNKNOWN)
        self._consumed[digest] = record.expires_at + GRACE_S
        if record.expires_at <= now:
            return TakeResult(Taken.EXPIRED)
        return TakeResult(Taken.OK, record)

    async def ping(self) -> bool:
        return True

    async def close(self) -> None:
        self._live.clear()
        self._consumed.clear()

    def __len__(self) -> int:
        return len(self._live)

    def _sweep(self, now: float) -> None:
        heap = self._expiry
        while heap and heap[0][0] <= now:
            _, digest = heapq.heappop(heap)
            record = self._live.get(digest)
            if record is not None and record.expires_at + GRACE_S <= now:
                del self._live[digest]
            forget = self._consumed.get(digest)
            if forget is not None and forget <= now:
                del self._consumed[digest]
