"""The Redis token store: one store shared by every broker process and host of a deployment.

One key per token, `ztb:<deployment>:t:<hex SHA-256(token)>`, holding the record's fields while
the token is live and the marker `c` once it is consumed, with a TTL of expiry + grace. Because
live record and consumed marker are the same key, they can never be lost apart: whatever Redis
forgets (a restart without persistence, an eviction), a token that was taken can come back only
as UNKNOWN, never as live. `take` is one Lua script, so it is atomic across every process and
host: exactly one presentation of a token gets its record.

Every command is bounded (socket timeouts and an overall deadline); any failure is
StoreUnavailable, which the scope gate answers with 503, never by letting a call through.
Connections are re-established by the client on the next command. A raw token never reaches
this module or Redis.

Two things Redis can do would bring a consumed token back, and this module refuses both:
- persistence that can restore a state older than the last take (RDB snapshots, or an
  append-only file not fsync'd on every write) — checked before first use when the server
  lets us read its configuration (`CONFIG GET`);
- asynchronous replication losing the last takes in a failover — with `min_replicas` > 0 a
  take is honoured only once that many replicas acknowledged it (`WAIT`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import orjson
from redis import exceptions as redis_errors
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from ztb.tokens.memory import GRACE_S
from ztb.tokens.store import StoreUnavailable, Taken, TakeResult, TokenRecord

log = logging.getLogger("ztb.tokens")
T = TypeVar("T")

TIMEOUT_S = 0.5  # per Redis command; the scope gate's own deadline (1 s) bounds the whole take
CONSUMED = b"c"

# KEYS[1]: the token's key. Returns the live record (and marks it consumed, keeping its TTL),
# or "c" when it was already consumed, or nil when Redis does not know it.
_TAKE = """
local value = redis.call('GET', KEYS[1])
if value and value ~= 'c' then
  redis.call('SET', KEYS[1], 'c', 'KEEPTTL')
end
return value
"""


class UnsafeRedis(Exception):
    """The Redis server is configured so that a restart could bring back consumed tokens."""


class RedisTokenStore:
    def __init__(
        self, url: str, namespace: str, *, min_replicas: int = 0, timeout_s: float = TIMEOUT_S
    ) -> None:
        self._prefix = f"ztb:{namespace}:t:"
        self._min_replicas = min_replicas
        self._timeout = timeout_s
        self._client: Redis = Redis.from_url(
            url,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            # A command that failed on a dead pooled connection is sent once more on a fresh one.
            # Safe for a take: if the first attempt did run, the retry finds the token consumed.
            retry=Retry(NoBackoff(), 1, supported_errors=(redis_errors.ConnectionError,)),
            health_check_interval=0,
        )
        self._take = self._client.register_script(_TAKE)
        self._checked = False
        self.problem: str | None = None  # why the server is refused, once known

    def _key(self, digest: bytes) -> str:
        return self._prefix + digest.hex()

    async def put(self, digest: bytes, record: TokenRecord) -> None:
        value = orjson.dumps(
            [record.identity, record.upstream, record.scope, record.expires_at, record.cert_thumbprint]
        )
        ttl_ms = max(1, round((record.expires_at + GRACE_S - time.time()) * 1000))
        # NX: a key is never overwritten, so a consumed marker can never be replaced by a record.
        stored = await self._run(lambda: self._client.set(self._key(digest), value, px=ttl_ms, nx=True))
        if not stored:
            raise StoreUnavailable("token hash already present")

    async def take(self, digest: bytes, now: float) -> TakeResult:
        key = self._key(digest)
        if self._min_replicas:
            value, acknowledged = await self._run(lambda: self._take_acknowledged(key))
            if value not in (None, CONSUMED) and acknowledged < self._min_replicas:
                # Consumed on the primary but not yet safe from a failover: refuse, never honour.
                raise StoreUnavailable(
                    f"take acknowledged by {acknowledged} of {self._min_replicas} replicas"
                )
        else:
            value = await self._run(lambda: self._take(keys=[key]))
        if value is None:
            return TakeResult(Taken.UNKNOWN)
        if value == CONSUMED:
            return TakeResult(Taken.REPLAYED)
        identity, upstream, scope, expires_at, thumbprint = orjson.loads(value)
        if expires_at <= now:
            return TakeResult(Taken.EXPIRED)
        return TakeResult(Taken.OK, TokenRecord(identity, upstream, scope, float(expires_at), thumbprint))

    async def _take_acknowledged(self, key: str) -> tuple[bytes | None, int]:
        # WAIT counts the writes of its own connection: the script and WAIT share one.
        async with self._client.pipeline(transaction=False) as pipe:
            pipe.eval(_TAKE, 1, key)
            pipe.wait(self._min_replicas, round(self._timeout * 500))
            value, acknowledged = await pipe.execute()
        return value, int(acknowledged)

    async def ping(self) -> bool:
        try:
            await self._run(self._client.ping)
        except StoreUnavailable:
            return False
        return True

    async def close(self) -> None:
        await self._client.aclose()

    async def check_server(self) -> None:
        """At start: refuse (UnsafeRedis) a server whose persistence could restore consumed
        tokens. A server that does not answer yet is checked on first contact instead."""
        try:
            await self._run(self._client.ping)
        except StoreUnavailable:
            if self.problem is not None:
                raise UnsafeRedis(self.problem) from None

    async def _run(self, command: Callable[[], Awaitable[T]]) -> T:
        try:
            async with asyncio.timeout(2 * self._timeout):
                if not self._checked:
                    await self._check_persistence()
                return await command()
        except (redis_errors.RedisError, OSError, TimeoutError) as exc:
            raise StoreUnavailable(f"{type(exc).__name__}: {exc}") from None

    async def _check_persistence(self) -> None:
        try:
            settings: dict[str, str] = {}
            for name in ("save", "appendonly", "appendfsync"):  # one by one: Redis 6 takes one name
                answer = await self._client.config_get(name)
                settings.update({_text(k): _text(v) for k, v in answer.items()})
        except redis_errors.ResponseError as exc:  # CONFIG renamed or not permitted (managed Redis)
            log.warning(
                "token store: cannot read the Redis persistence settings (%s); see docs/deployment.md", exc
            )
            self._checked = True
            return
        self.problem = unsafe_persistence(settings)
        if self.problem is not None:
            log.error("token store refused: %s", self.problem)
            raise StoreUnavailable(self.problem)
        self._checked = True


def unsafe_persistence(settings: dict[str, str]) -> str | None:
    """Why a server with these settings could bring back a consumed token after a restart."""
    if settings.get("appendonly") == "yes":
        if settings.get("appendfsync") != "always":
            return (
                f"Redis runs with appendonly yes and appendfsync {settings.get('appendfsync')}: a restart "
                "can restore tokens consumed in the last second; use appendfsync always, or no persistence"
            )
        return None
    if settings.get("save", ""):
        return (
            f"Redis saves RDB snapshots (save {settings['save']!r}): a restart can restore tokens "
            "consumed since the last snapshot; run it with --save '' (or appendonly yes, appendfsync always)"
        )
    return None


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
