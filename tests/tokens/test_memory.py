"""The in-process token store: one atomic take per token, replays told apart from unknowns."""

from __future__ import annotations

import asyncio
import hashlib
import time

from ztb.tokens.format import new_token, token_hash
from ztb.tokens.memory import GRACE_S, MemoryTokenStore
from ztb.tokens.store import Taken, TokenRecord


def record(expires_at: float) -> TokenRecord:
    return TokenRecord("svc.checkout", "orders.api.internal", "orders:read", expires_at, "ab" * 32)


def digest() -> bytes:
    return token_hash(new_token())


def test_take_once_then_replayed() -> None:
    async def scenario() -> None:
        store = MemoryTokenStore()
        now = time.time()
        rec = record(now + 60)
        key = digest()
        await store.put(key, rec)
        assert len(store) == 1
        first = await store.take(key, now)
        assert first.outcome is Taken.OK
        assert first.record == rec
        assert len(store) == 0
        second = await store.take(key, now + 1)
        assert second.outcome is Taken.REPLAYED
        assert second.record is None
        third = await store.take(key, now + 59)
        assert third.outcome is Taken.REPLAYED

    asyncio.run(scenario())


def test_unknown() -> None:
    async def scenario() -> None:
        store = MemoryTokenStore()
        await store.put(digest(), record(time.time() + 60))
        result = await store.take(digest(), time.time())
        assert result.outcome is Taken.UNKNOWN
        assert result.record is None
        assert len(store) == 1

    asyncio.run(scenario())


def test_expired_then_replayed() -> None:
    async def scenario() -> None:
        store = MemoryTokenStore()
        now = time.time()
        key = digest()
        await store.put(key, record(now - 1))
        expired = await store.take(key, now)
        assert expired.outcome is Taken.EXPIRED
        assert expired.record is None
        # an expired token is consumed by its presentation too
        assert (await store.take(key, now)).outcome is Taken.REPLAYED

    asyncio.run(scenario())


def test_expiry_boundary() -> None:
    async def scenario() -> None:
        store = MemoryTokenStore()
        now = time.time()
        at_expiry, before_expiry = digest(), digest()
        await store.put(at_expiry, record(now + 10))
        await store.put(before_expiry, record(now + 10))
        assert (await store.take(at_expiry, now + 10)).outcome is Taken.EXPIRED
        assert (await store.take(before_expiry, now + 9.999)).outcome is Taken.OK

    asyncio.run(scenario())


def test_valid_in_the_future_expired_later() -> None:
    async def scenario() -> None:
        store = MemoryTokenStore()
        now = time.time()
        key = digest()
        await store.put(key, record(now + 30))
        assert (await store.take(key, now + 31)).outcome is Taken.EXPIRED

    asyncio.run(scenario())


def test_consumed_hashes_are_forgotten_after_the_grace_period() -> None:
    async def scenario() -> None:
        store = MemoryTokenStore()
        now = time.time()
        key = digest()
        await store.put(key, record(now + 5))
        assert (await store.take(key, now)).outcome is Taken.OK
        assert (await store.take(key, now + 5 + GRACE_S - 1)).outcome is Taken.REPLAYED
        assert (await store.take(key, now + 5 + GRACE_S + 1)).outcome is Taken.UNKNOWN

    asyncio.run(scenario())


def test_store_keeps_only_hashes() -> None:
    async def scenario() -> None:
        store = MemoryTokenStore()
        token = new_token()
        await store.put(token_hash(token), record(time.time() + 60))
        assert list(store._live) == [hashlib.sha256(token.encode()).digest()]
        assert token not in repr(store._live)

    asyncio.run(scenario())


def test_concurrent_takes_of_one_token_succeed_once() -> None:
    async def scenario() -> None:
        store = MemoryTokenStore()
        now = time.time()
        key = digest()
        await store.put(key, record(now + 60))
        results = await asyncio.gather(*(store.take(key, now) for _ in range(100)))
        outcomes = [result.outcome for result in results]
        assert outcomes.count(Taken.OK) == 1
        assert outcomes.count(Taken.REPLAYED) == 99

    asyncio.run(scenario())


def test_many_tokens_each_taken_once() -> None:
    async def scenario() -> None:
        store = MemoryTokenStore()
        now = time.time()
        keys = [digest() for _ in range(50)]
        for key in keys:
            await store.put(key, record(now + 60))
        results = await asyncio.gather(*(store.take(key, now) for key in keys * 2))
        outcomes = [result.outcome for result in results]
        assert outcomes[:50] == [Taken.OK] * 50
        assert outcomes[50:] == [Taken.REPLAYED] * 50

    asyncio.run(scenario())
