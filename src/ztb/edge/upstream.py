"""The egress edge: the broker's own mTLS connections to registered upstreams.

Addresses come only from the registry's `Upstream` objects. Every new connection's certificate
is checked against the upstream's SPKI pins (and must carry serverAuth) before it carries a
request; idle connections are pooled per upstream as registered (address, CA and pins), so
a reloaded registry that changes an upstream never reuses a connection checked under the old
entry. The broker writes its own framing (h11), never follows a
redirect, never retries a request that may have been sent, caps the response body and bounds
every wait. It knows nothing of tokens or gates.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ssl
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import h11

from ztb.config.registry import Upstream
from ztb.edge.tls import MinVersion, egress_context, upstream_cert_facts
from ztb.reasons import Reason

READ_CHUNK = 65536
MAX_IDLE_PER_UPSTREAM = 64
IDLE_TTL_S = 30.0
MAX_RESPONSE_HEADER_BYTES = 64 * 1024


@dataclass(frozen=True, slots=True)
class UpstreamResponse:
    status: int
    headers: tuple[tuple[str, str], ...]  # lowercased names
    body: bytes
    sha256: str
    elapsed_ms: int


@dataclass(frozen=True, slots=True)
class UpstreamFailure:
    reason: Reason
    forwarded: bool  # whether any byte of the request may have reached the upstream
    elapsed_ms: int
    detail: str = ""


@dataclass(slots=True)
class _Conn:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    h11: h11.Connection
    idle_since: float = field(default_factory=time.monotonic)

    def usable(self) -> bool:
        return (
            not self.reader.at_eof()
            and not self.writer.is_closing()
            and time.monotonic() - self.idle_since < IDLE_TTL_S
        )

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()


class _Failed(Exception):
    def __init__(self, reason: Reason, detail: str = "") -> None:
        super().__init__(detail or reason.value)
        self.reason = reason
        self.detail = detail


class UpstreamPool:
    def __init__(self, cert: Path, key: Path, min_version: MinVersion, max_response_bytes: int) -> None:
        self._cert = cert
        self._key = key
        self._min_version = min_version
        self._max_response = max_response_bytes
        self._contexts: dict[Path, ssl.SSLContext] = {}
        self._idle: dict[Upstream, list[_Conn]] = {}
        self.connections_opened = 0

    def _context(self, ca: Path) -> ssl.SSLContext:
        ctx = self._contexts.get(ca)
        if ctx is None:
            ctx = egress_context(self._cert, self._key, ca, self._min_version)
            self._contexts[ca] = ctx
        return ctx

    def keep_only(self, upstreams: Iterable[Upstream]) -> None:
        """Close idle connections of upstreams no longer registered as they were (on reload)."""
        keep = set(upstreams)
        for upstream in [u for u in self._idle if u not in keep]:
            for conn in self._idle.pop(upstream):
                conn.close()

    async def close(self) -> None:
        for conns in self._idle.values():
            for conn in conns:
                conn.close()
        self._idle.clear()

    async def send(
        self,
        upstream: Upstream,
        method: str,
        path: str,
        headers: Iterable[tuple[str, str]],
        body: bytes,
    ) -> UpstreamResponse | UpstreamFailure:
        started = time.perf_counter()
        forwarded = False

        def elapsed() -> int:
            return int((time.perf_counter() - started) * 1000)

        try:
            async with asyncio.timeout(upstream.timeout_s):
                conn = await self._acquire(upstream)
                request_headers = [("host", upstream.authority), *headers]
                if body or method in ("POST", "PUT", "PATCH"):
                    request_headers.append(("content-length", str(len(body))))
                forwarded = True
                response = await self._exchange(conn, method, path, request_headers, body)
        except _Failed as failed:
            return UpstreamFailure(failed.reason, forwarded, elapsed(), failed.detail)
        except TimeoutError:
            return UpstreamFailure(Reason.UPSTREAM_TIMEOUT, forwarded, elapsed())
        status, response_headers, response_body, reusable = response
        if reusable:
            self._release(upstream, conn)
        else:
            conn.close()
        digest = "sha256:" + hashlib.sha256(response_body).hexdigest()
        return UpstreamResponse(status, response_headers, response_body, digest, elapsed())

    async def _acquire(self, upstream: Upstream) -> _Conn:
        idle = self._idle.get(upstream)
        while idle:
            conn = idle.pop()
            if conn.usable():
                return conn
            conn.close()
        return await self._connect(upstream)

    def _release(self, upstream: Upstream, conn: _Conn) -> None:
        conn.h11.start_next_cycle()
        conn.idle_since = time.monotonic()
        idle = self._idle.setdefault(upstream, [])
        if len(idle) < MAX_IDLE_PER_UPSTREAM:
            idle.append(conn)
        else:
            conn.close()

    async def _connect(self, upstream: Upstream) -> _Conn:
        ctx = self._context(upstream.ca)
        try:
            async with asyncio.timeout(upstream.connect_timeout_s):
                reader, writer = await asyncio.open_connection(
                    upstream.host, upstream.port, ssl=ctx, server_hostname=upstream.host
                )
        except TimeoutError:
            raise _Failed(Reason.UPSTREAM_TIMEOUT, "connect timed out") from None
        except ssl.SSLError as exc:
            raise _Failed(Reason.UPSTREAM_TLS_FAILED, str(exc)) from None
        except OSError as exc:
            raise _Failed(Reason.UPSTREAM_UNREACHABLE, str(exc)) from None
        self.connections_opened += 1
        ssl_object = writer.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        facts = upstream_cert_facts(der) if der else None
        if facts is None or facts.problem is not None or facts.spki not in upstream.pins:
            writer.close()
            raise _Failed(Reason.UPSTREAM_PIN_MISMATCH, "certificate not pinned for this upstream")
        return _Conn(
            reader, writer, h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_RESPONSE_HEADER_BYTES)
        )

    async def _exchange(
        self, conn: _Conn, method: str, path: str, headers: list[tuple[str, str]], body: bytes
    ) -> tuple[int, tuple[tuple[str, str], ...], bytes, bool]:
        try:
            data = conn.h11.send(h11.Request(method=method, target=path, headers=headers))
            if body:
                data += conn.h11.send(h11.Data(data=body))
            data += conn.h11.send(h11.EndOfMessage())
            conn.writer.write(data)
            await conn.writer.drain()
            status = 0
            response_headers: tuple[tuple[str, str], ...] = ()
            chunks: list[bytes] = []
            size = 0
            while True:
                event = conn.h11.next_event()
                if event is h11.NEED_DATA:
                    conn.h11.receive_data(await conn.reader.read(READ_CHUNK))
                    continue
                if isinstance(event, h11.InformationalResponse):
                    continue
                if isinstance(event, h11.Response):
                    status = event.status_code
                    response_headers = tuple(
                        (name.decode("latin-1"), value.decode("latin-1")) for name, value in event.headers
                    )
                elif isinstance(event, h11.Data):
                    size += len(event.data)
                    if size > self._max_response:
                        conn.close()
                        raise _Failed(Reason.UPSTREAM_RESPONSE_TOO_LARGE)
                    chunks.append(bytes(event.data))
                elif isinstance(event, h11.EndOfMessage):
                    reusable = conn.h11.our_state is h11.DONE and conn.h11.their_state is h11.DONE
                    return status, response_headers, b"".join(chunks), reusable
                else:  # ConnectionClosed or PAUSED before the response ended
                    conn.close()
                    raise _Failed(Reason.UPSTREAM_BAD_RESPONSE, "connection closed mid-response")
        except (h11.RemoteProtocolError, h11.LocalProtocolError) as exc:
            conn.close()
            raise _Failed(Reason.UPSTREAM_BAD_RESPONSE, str(exc)) from None
        except (OSError, ssl.SSLError) as exc:
            conn.close()
            raise _Failed(Reason.UPSTREAM_UNREACHABLE, str(exc)) from None
        except BaseException:
            conn.close()
            raise
