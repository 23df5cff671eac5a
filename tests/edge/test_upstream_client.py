"""The egress client (`edge/upstream.py`) against upstreams that answer byte for byte as scripted.

Real mTLS over 127.0.0.1 to a raw server started here (and an aiohttp one for HEAD): the
response framing the broker must accept (1xx, chunked with trailers, a response dribbled in
many small writes, HEAD with a Content-Length), the framing it must refuse (502
`upstream_bad_response`, never a relay), and when a connection may be pooled again: only after
a complete HTTP/1.1 keep-alive response that no byte followed.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from ztb import pki
from ztb.config.registry import Upstream
from ztb.edge.upstream import UpstreamFailure, UpstreamPool, UpstreamResponse
from ztb.sample.upstream import server_context

MAX_RESPONSE = 4096
OK = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok"


@dataclass
class Reply:
    writes: list[bytes]  # each written and drained on its own, with `gap_s` between them
    close: bool = False  # close the connection after this reply
    gap_s: float = 0.0
    late: bytes = b""  # written 50 ms after the reply, the connection left open


@dataclass
class Scripted:
    """A raw mTLS upstream: it reads each request and answers it with the next scripted reply."""

    replies: list[Reply]
    requests: list[bytes] = field(default_factory=list)
    connections: int = 0

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while self.replies:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                self.requests.append(head + await asyncio.wait_for(reader.readexactly(length), 5))
                reply = self.replies.pop(0)
                for i, data in enumerate(reply.writes):
                    if i and reply.gap_s:
                        await asyncio.sleep(reply.gap_s)
                    writer.write(data)
                    await writer.drain()
                if reply.late:
                    await asyncio.sleep(0.05)
                    writer.write(reply.late)
                    await writer.drain()
                if reply.close:
                    return
            await asyncio.wait_for(reader.read(1), 5)  # until the client closes
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError, TimeoutError):
            pass
        except ssl.SSLError:
            pass
        finally:
            writer.close()


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    server_pin: str
    client_cert: Path
    client_key: Path


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    folder = tmp_path_factory.mktemp("upstream-client")
    ca = pki.new_ca("upstream client test CA")
    (folder / "ca.pem").write_bytes(ca.cert_pem())
    server = pki.issue_server(ca, ["localhost"], ["127.0.0.1"])
    server.write(folder / "server.pem", folder / "server.key")
    client = pki.issue_client(ca, "ztb-broker")
    client.write(folder / "client.pem", folder / "client.key")
    return Pki(
        folder / "ca.pem",
        folder / "server.pem",
        folder / "server.key",
        server.pin,
        folder / "client.pem",
        folder / "client.key",
    )


def upstream_at(certs: Pki, port: int, timeout_s: float = 2.0) -> Upstream:
    return Upstream(
        name="scripted.api.internal",
        host="127.0.0.1",
        port=port,
        ca=certs.ca,
        pins=frozenset({certs.server_pin}),
        connect_timeout_s=2.0,
        timeout_s=timeout_s,
    )


Outcome = UpstreamResponse | UpstreamFailure
Scenario = Callable[[UpstreamPool, Upstream, Scripted], Awaitable[None]]


def run(certs: Pki, replies: list[Reply], scenario: Scenario) -> Scripted:
    """Start the scripted upstream and a fresh pool, play the scenario, tear both down (bounded)."""
    script = Scripted(list(replies))

    async def main() -> None:
        server = await asyncio.start_server(
            script.serve,
            "127.0.0.1",
            0,
            ssl=server_context(certs.server_cert, certs.server_key, certs.ca),
        )
        pool = UpstreamPool(certs.client_cert, certs.client_key, "1.3", MAX_RESPONSE)
        try:
            upstream = upstream_at(certs, int(server.sockets[0].getsockname()[1]))
            await scenario(pool, upstream, script)
        finally:
            await pool.close()
            server.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(server.wait_closed(), 2)

    asyncio.run(asyncio.wait_for(main(), 30))
    return script


async def get(pool: UpstreamPool, upstream: Upstream, method: str = "GET") -> Outcome:
    return await pool.send(upstream, method, "/v1/thing", [("ztb-call-id", "c1")], b"")


def ok(outcome: Outcome, body: bytes = b"ok") -> UpstreamResponse:
    assert isinstance(outcome, UpstreamResponse), outcome
    assert (outcome.status, outcome.body) == (200, body)
    return outcome


def bad(outcome: Outcome, reason: str = "upstream_bad_response") -> UpstreamFailure:
    assert isinstance(outcome, UpstreamFailure), outcome
    assert outcome.reason.value == reason, outcome
    assert outcome.forwarded is True
    return outcome


def test_keep_alive_connection_is_reused(certs: Pki) -> None:
    async def scenario(pool: UpstreamPool, upstream: Upstream, script: Scripted) -> None:
        ok(await get(pool, upstream))
        ok(await get(pool, upstream))
        assert pool.connections_opened == 1

    script = run(certs, [Reply([OK]), Reply([OK])], scenario)
    assert script.connections == 1
    assert script.requests[0] == (
        b"GET /v1/thing HTTP/1.1\r\nhost: " + upstream_host(script) + b"\r\nztb-call-id: c1\r\n\r\n"
    )


def upstream_host(script: Scripted) -> bytes:
    line = next(line for line in script.requests[0].split(b"\r\n") if line.startswith(b"host: "))
    return line.removeprefix(b"host: ")


def test_post_body_is_written_with_its_length(certs: Pki) -> None:
    async def scenario(pool: UpstreamPool, upstream: Upstream, script: Scripted) -> None:
        ok(await pool.send(upstream, "POST", "/v1/orders", [("content-type", "application/json")], b"{}"))
        ok(await pool.send(upstream, "PUT", "/v1/orders/1", [], b""))

    script = run(certs, [Reply([OK]), Reply([OK])], scenario)
    assert script.requests[0].startswith(b"POST /v1/orders HTTP/1.1\r\nhost: ")
    assert script.requests[0].endswith(b"content-type: application/json\r\ncontent-length: 2\r\n\r\n{}")
    assert script.requests[1].endswith(b"content-length: 0\r\n\r\n")


def test_header_names_are_lowercased_and_values_trimmed(certs: Pki) -> None:
    raw = b"HTTP/1.1 200 OK\r\nContent-Type:   text/plain \t\r\nX-Thing: a b\r\nContent-Length: 2\r\n\r\nok"

    async def scenario(pool: UpstreamPool, upstream: Upstream, script: Scripted) -> None:
        response = ok(await get(pool, upstream))
        assert response.headers == (
            ("content-type", "text/plain"),
            ("x-thing", "a b"),
            ("content-length", "2"),
        )
        assert response.sha256 == "sha256:" + hashlib.sha256(b"ok").hexdigest()

    run(certs, [Reply([raw])], scenario)


def test_informational_responses_are_skipped(certs: Pki) -> None:
    raw = (
        b"HTTP/1.1 100 Continue\r\n\r\n"
        b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    )

    async def scenario(pool: UpstreamPool, upstream: Upstream, script: Scripted) -> None:
        response = ok(await get(pool, upstream))
        assert response.headers == (("content-length", "2"),)
        ok(await get(pool, upstream))  # the connection was clean: reused
        assert pool.connections_opened == 1

    run(certs, [Reply([raw[:30], raw[30:90], raw[90:]], gap_s=0.01), Reply([OK])], scenario)


def test_chunked_response_with_trailers_dribbled_byte_by_byte(certs: Pki) -> None:
    raw = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\nX-Trailer: dropped\r\n\r\n"
    )

    async def scenario(pool: UpstreamPool, upstream: Upstream, script: Scripted) -> None:
        response = ok(await get(pool, upstream), b"hello, world")
        assert response.headers == (("transfer-encoding", "chunked"),)  # the trailer is not relayed
        ok(await get(pool, upstream))
        assert pool.connections_opened == 1

    writes = [raw[i : i + 1] for i in range(len(raw))]
    run(certs, [Reply(writes, gap_s=0.001), Reply([OK])], scenario)


def test_response_split_across_many_small_writes(certs: Pki) -> None:
    body = b"x" * 1000
    raw = b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + body
    writes = [raw[i : i + 7] for i in range(0, len(raw), 7)]

    async def scenario(pool: UpstreamPool, upstream: Upstream, script: Scripted) -> None:
        ok(await get(pool, upstream), body)
        ok(await get(pool, upstream))
        assert pool.connections_opened == 1

    run(certs, [Reply(writes, gap_s=0.001), Reply([OK])], scenario)


def test_head_response_has_no_body_and_the_connection_stays_usable(certs: Pki) -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 1234\r\n\r\n"

    async def scenario(pool: UpstreamPool, upstream: Upstream, script: Scripted) -> None:
        response = await get(pool, upstream, "HEAD")
        assert isinstance(response, UpstreamResponse), response
        assert (response.status, response.body) == (200, b"")
        assert ("content-length", "1234") in response.headers
        ok(await get(pool, upstream))  # the next response on the same connection is read right
        assert pool.connections_opened == 1

    script = run(certs, [Reply([head]), Reply([OK])], scenario)
    assert script.requests[0].startswith(b"HEAD /v1/thing HTTP/1.1\r\n")
    assert b"content-length" not in script.requests[0]


@pytest.mark.parametrize("late", [False, True], ids=["same write", "later write"])
def test_head_response_with_a_body_spends_the_connection(certs: Pki, late: bool) -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"
    reply = Reply([head], late=b"hello") if late else Reply([head + b"hello"])

    async def scenario(pool: UpstreamPool, upstream: Upstream, script: Scripted) -> None:
        response = await get(pool, upstream, "HEAD")
        assert isinstance(response, UpstreamResponse) and response.body == b"", response
        await asyncio.sleep(0.2)  # the late bytes, if any, have arrived
        ok(await get(pool, upstream))  # on a new connection, not misread from the stray body
        assert pool.connections_opened == 2

    run(certs, [reply, Reply([OK])], scenario)


def test_head_against_a_real_upstream(certs: Pki) -> None:
    """aiohttp answers HEAD on a GET route with the GET's Content-Length and no body."""
    from aiohttp import web

    async def handler(request: web.Request) -> web.Response:
        return web.json_response({"ok": True, "pad": "x" * 100})

    async def main() -> None:
        app = web.Application()
        app.router.add_get("/v1/thing", handler)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await runner.setup()
        ctx = server_context(certs.server_cert, certs.server_key, certs.ca)
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ctx)
        await site.start()
        pool = UpstreamPool(certs.client_cert, certs.client_key, "1.3", MAX_RESPONSE)
        try:
            upstream = upstream_at(certs, int(runner.addresses[0][1]))
            head = await get(pool, upstream, "HEAD")
            full = await get(pool, upstream, "GET")
            again = await get(pool, upstream, "HEAD")
            assert isinstance(head, UpstreamResponse) and isinstance(full, UpstreamResponse), (head, full)
            assert isinstance(again, UpstreamResponse), again
            assert (head.status, head.body, again.body) == (200, b"", b"")
            assert full.status == 200 and full.body.startswith(b'{"ok": true')
            assert dict(head.headers)["content-length"] == str(len(full.body))
            assert pool.connections_opened == 1  # HEAD, GET, HEAD on one connection
        finally:
            await pool.close()
            await runner.cleanup()

    asyncio.run(asyncio.wait_for(main(), 30))


@pytest.mark.parametrize(
    "reply",
    [
        Reply([OK + b"garbage"]),
        Reply([OK + b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"]),
        Reply([OK], late=b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"),
        Reply([b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok"]),
        Reply([b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nokMORE"]),
        Reply([b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok"]),
        Reply([b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok"]),
        Reply([b"HTTP/1.1 200 OK\r\n\r\nok"], close=True),  # a body that ends with the connection
    ],
    ids=[
        "trailing garbage",
        "an unasked second response",
        "a late unasked response",
        "connection close",
        "bytes after connection close",
        "HTTP/1.0",
        "HTTP/1.0 keep-alive",
        "body to EOF",
    ],
)
def test_response_is_delivered_but_the_connection_not_reused(certs: Pki, reply: Reply) -> None:
    async def scenario(pool: UpstreamPool, upstream: Upstream, script: Scripted) -> None:
        ok(await get(pool, upstream))
        await asyncio.sleep(0.2)
        ok(await get(pool, upstream))
        assert pool.connections_opened == 2

    script = run(certs, [reply, Reply([OK])], scenario)
    assert script.connections == 2


@pytest.mark.parametrize(
    "reply",
    [
        Reply([b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort"], close=True),
        Reply([b"HTTP/1.1 200 OK\r\nContent-Le"], close=True),
        Reply([b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel"], close=True),
        Reply([], close=True),
        Reply([b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nabc"], close=True),
        Reply([b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n"]),
        Reply([b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n"]),
        Reply([b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok"]),
        Reply([b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\nok"]),
        Reply([b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"]),
        Reply([b"HTTP/2.0 200 OK\r\nContent-Length: 2\r\n\r\nok"]),
        Reply([b"HTTP/1.1 20 OK\r\nContent-Length: 2\r\n\r\nok"]),
        Reply([b"HTTP/1.1 200 OK\nContent-Length: 2\n\nok"]),
        Reply([b"HTTP/1.1 200 OK\r\nX-A: a\r\n folded\r\nContent-Length: 2\r\n\r\nok"]),
        Reply([b"HTTP/1.1 200 OK\r\nX-A: a\x00b\r\nContent-Length: 2\r\n\r\nok"]),
        Reply([b"HTTP/1.1 200 OK\r\nX-A : b\r\nContent-Length: 2\r\n\r\nok"]),
        Reply([b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: upgrade\r\n\r\nxx"]),
        Reply([b"HTTP/1.1 101 Switching Protocols\r\n\r\n"]),
        Reply([b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 70000 + b"\r\n\r\n"]),
        Reply([b"HTTP/1.1 100 Continue\r\n\r\n" * 4000]),
        Reply([b"SSH-2.0-OpenSSH_9.6\r\n"]),
    ],
    ids=[
        "closed mid-body",
        "closed mid-head",
        "closed mid-chunk",
        "closed before answering",
        "transfer-encoding gzip",
        "transfer-encoding gzip, chunked",
        "chunked and content-length",
        "two content-lengths",
        "negative content-length",
        "bad chunk size",
        "HTTP/2.0",
        "two-digit status",
        "bare LF",
        "obs-fold",
        "NUL in a value",
        "space before colon",
        "101 with upgrade",
        "101",
        "oversize head",
        "endless 100 continue",
        "not HTTP",
    ],
)
def test_bad_framing_is_refused_and_the_connection_dropped(certs: Pki, reply: Reply) -> None:
    async def scenario(pool: UpstreamPool, upstream: Upstream, script: Scripted) -> None:
        bad(await get(pool, upstream))
        ok(await get(pool, upstream))  # never retried, never misread: a fresh connection
        assert pool.connections_opened == 2

    run(certs, [reply, Reply([OK])], scenario)


@pytest.mark.parametrize(
    "raw",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n" + b"a" * 5000,
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + (b"400\r\n" + b"a" * 1024 + b"\r\n") * 5,
        b"HTTP/1.1 200 OK\r\n\r\n" + b"a" * 5000,
    ],
    ids=["content-length", "chunked", "to EOF"],
)
def test_oversize_body_is_refused(certs: Pki, raw: bytes) -> None:
    async def scenario(pool: UpstreamPool, upstream: Upstream, script: Scripted) -> None:
        bad(await get(pool, upstream), "upstream_response_too_large")
        ok(await get(pool, upstream))
        assert pool.connections_opened == 2

    run(certs, [Reply([raw]), Reply([OK])], scenario)


def test_body_exactly_at_the_cap_is_delivered(certs: Pki) -> None:
    body = b"a" * MAX_RESPONSE
    raw = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % MAX_RESPONSE + body

    async def scenario(pool: UpstreamPool, upstream: Upstream, script: Scripted) -> None:
        ok(await get(pool, upstream), body)

    run(certs, [Reply([raw])], scenario)


@pytest.mark.parametrize(
    ("method", "path", "headers"),
    [
        ("GET", "/v1/a\r\nX-Injected: 1", []),
        ("GET", "/v1/a\nb", []),
        ("GET", "/v1/a\x00", []),
        ("GET", "/v1/a b", []),
        ("GET", "", []),
        ("GET /x HTTP/1.1\r\n", "/v1/a", []),
        ("GET", "/v1/a", [("x-note", "a\r\nX-Injected: 1")]),
        ("GET", "/v1/a", [("x-note", "a\rb")]),
        ("GET", "/v1/a", [("x-note", "a\x00")]),
        ("GET", "/v1/a", [("x-note\r\nx-injected", "1")]),
    ],
)
def test_request_with_cr_lf_or_nul_is_never_written(
    certs: Pki, method: str, path: str, headers: list[tuple[str, str]]
) -> None:
    async def scenario(pool: UpstreamPool, upstream: Upstream, script: Scripted) -> None:
        outcome = await pool.send(upstream, method, path, headers, b"")
        assert isinstance(outcome, UpstreamFailure), outcome
        assert outcome.forwarded is False and outcome.reason.value == "upstream_bad_response"
        assert pool.connections_opened == 0

    script = run(certs, [Reply([OK])], scenario)
    assert (script.connections, script.requests) == (0, [])


def test_slow_response_times_out_within_the_upstream_timeout(certs: Pki) -> None:
    async def scenario(pool: UpstreamPool, upstream: Upstream, script: Scripted) -> None:
        slow = upstream_at(certs, upstream.port, timeout_s=0.3)
        started = asyncio.get_running_loop().time()
        outcome = await get(pool, slow)
        assert isinstance(outcome, UpstreamFailure) and outcome.reason.value == "upstream_timeout"
        assert outcome.forwarded is True
        assert asyncio.get_running_loop().time() - started < 1.0

    head = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n"
    run(certs, [Reply([head, b"ok"], gap_s=1.0)], scenario)
