"""The Redis token store against real Redis servers: the same answers as the in-process store,
one winner when many processes take one token at once, expiry, failures answered fast, and the
server configurations that could bring a consumed token back refused."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import redis

from redis_server import RedisServer, namespace
from ztb.tokens.format import new_token, token_hash
from ztb.tokens.memory import GRACE_S, MemoryTokenStore
from ztb.tokens.redis import RedisTokenStore, UnsafeRedis
from ztb.tokens.store import StoreUnavailable, Taken, TokenRecord, TokenStore

pytestmark = pytest.mark.redis


def _record(expires_in: float = 60) -> TokenRecord:
    return TokenRecord(
        "svc.checkout", "orders.api.internal", "orders:read", time.time() + expires_in, "ab" * 32
    )


def _keys(url: str, space: str) -> dict[bytes, bytes]:
    client = redis.Redis.from_url(url)
    try:
        return {key: client.get(key) for key in client.scan_iter(f"ztb:{space}:*")}
    finally:
        client.close()


async def _answers(store: TokenStore) -> list[Taken]:
    """The outcomes the store gives for the life of a token and for one it never saw."""
    live, stale = token_hash(new_token()), token_hash(new_token())
    await store.put(live, _record())
    await store.put(stale, _record(expires_in=0.05))
    now = time.time() + 0.1
    return [
        (await store.take(live, now)).outcome,
        (await store.take(live, now)).outcome,
        (await store.take(stale, now)).outcome,
        (await store.take(stale, now)).outcome,
        (await store.take(token_hash(new_token()), now)).outcome,
    ]


def test_same_answers_as_the_memory_store(redis_url: str) -> None:
    async def scenario() -> None:
        store = RedisTokenStore(redis_url, namespace())
        try:
            expected = await _answers(MemoryTokenStore())
            assert expected == [Taken.OK, Taken.REPLAYED, Taken.EXPIRED, Taken.REPLAYED, Taken.UNKNOWN]
            assert await _answers(store) == expected
        finally:
            await store.close()

    asyncio.run(scenario())


def test_keys_hold_only_hashes_and_expire_with_the_token(redis_url: str) -> None:
    space = namespace()
    token = new_token()
    digest = token_hash(token)
    record = _record(expires_in=30)

    async def scenario() -> None:
        store = RedisTokenStore(redis_url, space)
        try:
            await store.put(digest, record)
            taken = await store.take(digest, time.time())
            assert taken.outcome is Taken.OK and taken.record == record
        finally:
            await store.close()

    asyncio.run(scenario())
    keys = _keys(redis_url, space)
    assert list(keys) == [f"ztb:{space}:t:{digest.hex()}".encode()]
    assert keys[f"ztb:{space}:t:{digest.hex()}".encode()] == b"c"  # consumed marker, no record left
    client = redis.Redis.from_url(redis_url)
    try:
        ttl_ms = client.pttl(f"ztb:{space}:t:{digest.hex()}")
        client.delete(f"ztb:{space}:t:{digest.hex()}")
    finally:
        client.close()
    # Remembered until expiry + grace, then Redis forgets it (the key carries a TTL).
    assert (30 + GRACE_S - 2) * 1000 < ttl_ms <= (30 + GRACE_S) * 1000
    assert token.encode() not in b"".join(keys) + b"".join(keys.values())


def test_a_live_record_never_holds_the_token(redis_url: str) -> None:
    space = namespace()
    token = new_token()

    async def scenario() -> None:
        store = RedisTokenStore(redis_url, space)
        try:
            await store.put(token_hash(token), _record())
        finally:
            await store.close()

    asyncio.run(scenario())
    keys = _keys(redis_url, space)
    redis.Redis.from_url(redis_url).delete(*keys)
    assert len(keys) == 1
    dump = b"".join(keys) + b"".join(keys.values())
    assert token.encode() not in dump and token[4:47].encode() not in dump


_RACER = textwrap.dedent(
    """
    import asyncio, sys, time
    from ztb.tokens.redis import RedisTokenStore
    url, space, digest = sys.argv[1], sys.argv[2], bytes.fromhex(sys.argv[3])
    async def main():
        store = RedisTokenStore(url, space)
        await store.ping()  # connected before the start signal
        print("ready", flush=True)
        sys.stdin.readline()
        results = await asyncio.gather(*(store.take(digest, time.time()) for _ in range(25)))
        print(" ".join(result.outcome.value for result in results))
        await store.close()
    asyncio.run(main())
    """
)


def test_many_processes_race_for_one_token_and_exactly_one_wins(redis_url: str) -> None:
    space = namespace()
    digest = token_hash(new_token())

    async def mint() -> None:
        store = RedisTokenStore(redis_url, space)
        try:
            await store.put(digest, _record())
        finally:
            await store.close()

    asyncio.run(mint())
    racers = [
        subprocess.Popen(
            [sys.executable, "-c", _RACER, redis_url, space, digest.hex()],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    for racer in racers:  # a barrier: every racer connected before any of them takes
        assert racer.stdout is not None and racer.stdout.readline() == "ready\n"
    outcomes = [word for racer in racers for word in racer.communicate("go\n", timeout=30)[0].split()]
    redis.Redis.from_url(redis_url).delete(f"ztb:{space}:t:{digest.hex()}")
    assert all(racer.returncode == 0 for racer in racers)
    assert len(outcomes) == 100
    assert outcomes.count("ok") == 1
    assert outcomes.count("replayed") == 99


def test_an_unreachable_store_is_refused_fast_and_found_again(own_redis: RedisServer) -> None:
    async def scenario() -> None:
        store = RedisTokenStore(own_redis.url, namespace())
        try:
            before = token_hash(new_token())
            await store.put(before, _record())
            own_redis.stop()
            started = time.monotonic()
            with pytest.raises(StoreUnavailable):
                await store.take(before, time.time())
            with pytest.raises(StoreUnavailable):
                await store.put(token_hash(new_token()), _record())
            assert not await store.ping()
            assert time.monotonic() - started < 1.0  # refused, not hung
            own_redis.start()  # no persistence: everything it knew is gone
            # The same client reconnects by itself.
            assert await store.ping()
            assert (await store.take(before, time.time())).outcome is Taken.UNKNOWN
            after = token_hash(new_token())
            await store.put(after, _record())
            assert (await store.take(after, time.time())).outcome is Taken.OK
        finally:
            await store.close()

    asyncio.run(scenario())


def test_a_stalled_store_is_refused_in_bounded_time_and_the_take_still_counts(
    own_redis: RedisServer,
) -> None:
    async def scenario() -> None:
        store = RedisTokenStore(own_redis.url, namespace())
        try:
            digest, warm = token_hash(new_token()), token_hash(new_token())
            await store.put(digest, _record())
            await store.take(warm, time.time())  # the take script is loaded on the server
            own_redis.pause()
            started = time.monotonic()
            with pytest.raises(StoreUnavailable):
                await store.take(digest, time.time())
            assert time.monotonic() - started < 1.5
            own_redis.resume()
            # The stalled take reached Redis and runs once it resumes: the token stays consumed.
            assert (await store.take(digest, time.time())).outcome is Taken.REPLAYED
        finally:
            await store.close()

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        (("--save", "3600 1", "--appendonly", "no"), "RDB snapshots"),
        (("--save", "", "--appendonly", "yes", "--appendfsync", "everysec"), "appendfsync everysec"),
    ],
)
def test_persistence_that_could_restore_consumed_tokens_is_refused(
    tmp_path: Path, args: tuple[str, ...], problem: str
) -> None:
    server = RedisServer(tmp_path / "redis", *args)

    async def scenario() -> None:
        store = RedisTokenStore(server.url, namespace())
        try:
            with pytest.raises(UnsafeRedis, match=problem):
                await store.check_server()
            with pytest.raises(StoreUnavailable, match=problem):
                await store.put(token_hash(new_token()), _record())
            assert not await store.ping()
        finally:
            await store.close()

    try:
        asyncio.run(scenario())
    finally:
        server.stop()


def test_fsync_always_is_accepted(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis", "--appendonly", "yes", "--appendfsync", "always")

    async def scenario() -> None:
        store = RedisTokenStore(server.url, namespace())
        try:
            await store.check_server()
            digest = token_hash(new_token())
            await store.put(digest, _record())
            assert (await store.take(digest, time.time())).outcome is Taken.OK
        finally:
            await store.close()

    try:
        asyncio.run(scenario())
    finally:
        server.stop()


def test_min_replicas_honours_a_take_only_once_a_replica_has_it(tmp_path: Path) -> None:
    primary = RedisServer(
        tmp_path / "primary", "--save", "", "--appendonly", "no", "--repl-diskless-sync-delay", "0"
    )
    replica = RedisServer(tmp_path / "replica", "--save", "", "--appendonly", "no")

    async def scenario() -> None:
        store = RedisTokenStore(primary.url, namespace(), min_replicas=1)
        try:
            alone = token_hash(new_token())
            await store.put(alone, _record())
            with pytest.raises(StoreUnavailable, match="acknowledged by 0 of 1"):
                await store.take(alone, time.time())
            assert (await store.take(alone, time.time())).outcome is Taken.REPLAYED  # refused, yet consumed
            client = redis.asyncio.Redis(port=replica.port)
            await client.replicaof("127.0.0.1", primary.port)
            await client.aclose()
            # Bounded wait until the primary sees the replica online and acknowledging writes.
            watcher = redis.asyncio.Redis(port=primary.port)
            deadline = time.monotonic() + 10
            while await watcher.set("ztb-test-ack", 1) and await watcher.wait(1, 200) < 1:
                assert time.monotonic() < deadline, "the replica did not acknowledge within 10 s"
            await watcher.aclose()
            backed = token_hash(new_token())
            await store.put(backed, _record())
            assert (await store.take(backed, time.time())).outcome is Taken.OK
        finally:
            await store.close()

    try:
        asyncio.run(scenario())
    finally:
        replica.stop()
        primary.stop()
