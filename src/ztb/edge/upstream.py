"""The egress edge: the broker's own mTLS connections to registered upstreams.

Addresses come only from the registry's `Upstream` objects. Every new connection's certificate
is checked against the upstream's SPKI pins (and must carry serverAuth) before it carries a
request; idle connections are pooled per upstream as registered (address, CA and pins), so
a reloaded registry that changes an upstream never reuses a connection checked under the old
entry. The broker writes its own request bytes (request line, headers, body: nothing of the
caller's framing) and parses the response with llhttp (httptools, strict mode). It never
follows a redirect, never retries a request that may have been sent, caps the response head
and body and bounds every wait. It knows nothing of tokens or gates.

A connection returns to the pool only when its exchange ended cleanly: the whole response was
read, it is HTTP/1.1 keep-alive, and not one byte arrived after it. llhttp cannot be told that
a response answers a HEAD request (httptools does not expose llhttp's skip-body return), so a
HEAD exchange ends at the final response's head; body bytes the parser then reports mark the
connection spent.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import re
import ssl
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import httptools

from ztb.config.registry import Upstream
from ztb.edge.tls import MinVersion, egress_context, upstream_cert_facts
from ztb.reasons import Reason

MAX_IDLE_PER_UPSTREAM = 64
IDLE_TTL_S = 30.0
MAX_RESPONSE_HEADER_BYTES = 64 * 1024  # response heads, 1xx ones included

# What the broker writes is its own (validated method, canonical path, allowlisted headers): a
# CR, LF or NUL in any of it is a bug upstream of here, refused rather than written.
_UNSAFE = re.compile(r"[\r\n\x00]")
_NO_BODY_STATUS = (204, 304)


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


class _Conn(asyncio.Protocol):
    """One connection to an upstream. Its bytes go straight to the current exchange's parser;
    a byte that arrives when no exchange is waiting for it (after a response, or while idle)
    spends the connection, as do end of file and a lost connection."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.idle_since = time.monotonic()
        self.spent = False
        self._response: _Response | None = None
        self._waiter: asyncio.Future[None] | None = None

    def usable(self) -> bool:
        return (
            not self.spent
            and self.transport is not None
            and not self.transport.is_closing()
            and time.monotonic() - self.idle_since < IDLE_TTL_S
        )

    def close(self) -> None:
        self.spent = True
        if self.transport is not None:
            with contextlib.suppress(Exception):
                self.transport.close()

    async def exchange(self, request: bytes, response: _Response) -> None:
        """Write the request and wait (the caller bounds the wait) until its response is complete."""
        if self.spent or self.transport is None or self.transport.is_closing():
            raise _Failed(Reason.UPSTREAM_BAD_RESPONSE, "connection closed before the request")
        waiter = asyncio.get_running_loop().create_future()
        self._response, self._waiter = response, waiter
        try:
            self.transport.write(request)
            await waiter
        finally:
            self._waiter = None

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        response = self._response
        if response is None or response.done or self._waiter is None:
            if response is not None:
                response.leftover = True
            self.close()
            return
        self._feed(response, data)

    def eof_received(self) -> bool:
        self.spent = True
        if self._response is not None and self._waiter is not None:
            self._feed(self._response, b"")
        return False  # the transport closes itself

    def connection_lost(self, exc: Exception | None) -> None:
        self.spent = True
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            if exc is None and self._response is not None:
                self._feed(self._response, b"")
            else:
                waiter.set_exception(_Failed(Reason.UPSTREAM_UNREACHABLE, str(exc or "connection lost")))

    def _feed(self, response: _Response, data: bytes) -> None:
        waiter = self._waiter
        if waiter is None or waiter.done():
            return
        try:
            response.feed(data)
        except _Failed as failed:
            self.close()
            waiter.set_exception(failed)
            return
        if response.done:
            waiter.set_result(None)


class _Failed(Exception):
    def __init__(self, reason: Reason, detail: str = "") -> None:
        super().__init__(detail or reason.value)
        self.reason = reason
        self.detail = detail


def request_bytes(method: str, path: str, headers: Iterable[tuple[str, str]], body: bytes) -> bytes:
    """The request as written to the upstream; ValueError if any part could break its framing."""
    lines = [f"{method} {path} HTTP/1.1"]
    lines += [f"{name}: {value}" for name, value in headers]
    if _UNSAFE.search("".join(lines)) or " " in method or " " in path or not path:
        raise ValueError("refusing to write a request line or header holding CR, LF, NUL or a space")
    lines.append("\r\n")
    return "\r\n".join(lines).encode("latin-1") + body


class _Response:
    """One exchange's response, as llhttp reports it through httptools' callbacks.

    Fed every byte read until `done`; raises `_Failed` on a framing error, an oversize head or
    body, or a connection closed before the response ended. 1xx responses are skipped, trailers
    of a chunked body dropped, header names lowercased and values stripped of trailing blanks.
    """

    __slots__ = (
        "_cl",
        "_head_bytes",
        "_head_only",
        "_header_bytes",
        "_http11",
        "_max_body",
        "_parser",
        "_size",
        "_te",
        "_until_eof",
        "chunks",
        "done",
        "failure",
        "headers",
        "keep_alive",
        "leftover",
        "status",
    )

    def __init__(self, head_only: bool, max_body: int) -> None:
        self._parser = httptools.HttpResponseParser(self)
        self._head_only = head_only
        self._max_body = max_body
        self._head_bytes = 0  # bytes fed while the final head was incomplete
        self._header_bytes = 0  # bytes of the header lines parsed, 1xx heads included
        self._size = 0
        self._te: str | None = None
        self._cl = False
        self._http11 = False
        self._until_eof = False
        self.status = 0  # the final (non-1xx) status, once its head is complete
        self.headers: list[tuple[str, str]] = []
        self.chunks: list[bytes] = []
        self.done = False
        self.keep_alive = False  # llhttp's verdict, taken at completion (it resets after)
        self.leftover = False  # a byte arrived after the response
        self.failure: _Failed | None = None

    def feed(self, data: bytes) -> None:
        if not data:
            if self._until_eof:  # a body framed by the end of the connection
                self.done = True
                return
            raise _Failed(Reason.UPSTREAM_BAD_RESPONSE, "connection closed mid-response")
        if not self.status:
            self._head_bytes += len(data)
        try:
            self._parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            if self.failure is not None:
                raise self.failure from None
            if not self.done:
                raise _Failed(Reason.UPSTREAM_BAD_RESPONSE, str(exc) or type(exc).__name__) from None
            self.leftover = True  # garbage after a complete response
        if not self.status and self._head_bytes > MAX_RESPONSE_HEADER_BYTES:
            raise _Failed(Reason.UPSTREAM_BAD_RESPONSE, "response head too large")

    def _fail(self, reason: Reason, detail: str = "") -> NoReturn:
        self.failure = _Failed(reason, detail)
        raise self.failure

    # httptools callbacks

    def on_message_begin(self) -> None:
        if self.done:
            self.leftover = True

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.status:
            return  # a trailer of a chunked body: not relayed
        self._header_bytes += len(name) + len(value) + 4
        if self._header_bytes > MAX_RESPONSE_HEADER_BYTES:
            self._fail(Reason.UPSTREAM_BAD_RESPONSE, "response head too large")
        lower = name.decode("latin-1").lower()
        text = value.rstrip(b" \t").decode("latin-1")
        if lower == "transfer-encoding":
            self._te = text if self._te is None else f"{self._te}, {text}"
        elif lower == "content-length":
            self._cl = True
        self.headers.append((lower, text))

    def on_headers_complete(self) -> None:
        parser = self._parser
        status = parser.get_status_code()
        if status == 101:
            self._fail(Reason.UPSTREAM_BAD_RESPONSE, "protocol switch not requested")
        if status < 200:  # informational: skipped, the final response follows
            self.headers = []
            self._te = None
            self._cl = False
            return
        version = parser.get_http_version()
        if version not in ("1.1", "1.0"):
            self._fail(Reason.UPSTREAM_BAD_RESPONSE, f"HTTP/{version} response")
        if self._te is not None and self._te.lower() != "chunked":
            self._fail(Reason.UPSTREAM_BAD_RESPONSE, "unsupported Transfer-Encoding")
        self.status = status
        self._http11 = version == "1.1"
        if self._head_only:  # a response to HEAD has no body, whatever its headers say
            self.done = True
            self.keep_alive = self._http11 and parser.should_keep_alive()
        else:
            self._until_eof = self._te is None and not self._cl and status not in _NO_BODY_STATUS

    def on_body(self, body: bytes) -> None:
        if self.done:
            self.leftover = True
            return
        self._size += len(body)
        if self._size > self._max_body:
            self._fail(Reason.UPSTREAM_RESPONSE_TOO_LARGE)
        self.chunks.append(body)

    def on_message_complete(self) -> None:
        if not self.status or self.done:
            return  # a 1xx response ended, or a HEAD response already did at its head
        self.done = True
        self.keep_alive = self._http11 and self._parser.should_keep_alive()


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

        request_headers = [("host", upstream.authority), *headers]
        if body or method in ("POST", "PUT", "PATCH"):
            request_headers.append(("content-length", str(len(body))))
        try:
            request = request_bytes(method, path, request_headers, body)
        except ValueError as exc:  # a bug: nothing is sent
            return UpstreamFailure(Reason.UPSTREAM_BAD_RESPONSE, False, elapsed(), str(exc))
        try:
            async with asyncio.timeout(upstream.timeout_s):
                conn = await self._acquire(upstream)
                forwarded = True
                response = await self._exchange(conn, request, method == "HEAD")
        except _Failed as failed:
            return UpstreamFailure(failed.reason, forwarded, elapsed(), failed.detail)
        except TimeoutError:
            return UpstreamFailure(Reason.UPSTREAM_TIMEOUT, forwarded, elapsed())
        if response.keep_alive and not response.leftover and not conn.spent:
            self._release(upstream, conn)
        else:
            conn.close()
        response_body = b"".join(response.chunks)
        digest = "sha256:" + hashlib.sha256(response_body).hexdigest()
        return UpstreamResponse(response.status, tuple(response.headers), response_body, digest, elapsed())

    async def _acquire(self, upstream: Upstream) -> _Conn:
        idle = self._idle.get(upstream)
        while idle:
            conn = idle.pop()
            if conn.usable():
                return conn
            conn.close()
        return await self._connect(upstream)

    def _release(self, upstream: Upstream, conn: _Conn) -> None:
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
                transport, conn = await asyncio.get_running_loop().create_connection(
                    _Conn, upstream.host, upstream.port, ssl=ctx, server_hostname=upstream.host
                )
        except TimeoutError:
            raise _Failed(Reason.UPSTREAM_TIMEOUT, "connect timed out") from None
        except ssl.SSLError as exc:
            raise _Failed(Reason.UPSTREAM_TLS_FAILED, str(exc)) from None
        except OSError as exc:
            raise _Failed(Reason.UPSTREAM_UNREACHABLE, str(exc)) from None
        self.connections_opened += 1
        ssl_object = transport.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        facts = upstream_cert_facts(der) if der else None
        if facts is None or facts.problem is not None or facts.spki not in upstream.pins:
            conn.close()
            raise _Failed(Reason.UPSTREAM_PIN_MISMATCH, "certificate not pinned for this upstream")
        return conn

    async def _exchange(self, conn: _Conn, request: bytes, head_only: bool) -> _Response:
        response = _Response(head_only, self._max_response)
        try:
            await conn.exchange(request, response)
        except (OSError, ssl.SSLError) as exc:
            conn.close()
            raise _Failed(Reason.UPSTREAM_UNREACHABLE, str(exc)) from None
        except BaseException:
            conn.close()
            raise
        return response
