"""The sample upstream over real TLS: mTLS required, every request recorded before it is answered."""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from ztb import pki
from ztb.deploy import init_deployment
from ztb.sample.upstream import ReceivedRequest, SampleUpstream

UPSTREAM = "upstreams/orders.api.internal"


@pytest.fixture(scope="module")
def dep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("upstream") / "dev"
    init_deployment(root)
    return root


def _upstream(
    dep: Path, on_request: Callable[[ReceivedRequest], Awaitable[None] | None] | None = None
) -> SampleUpstream:
    return SampleUpstream(
        dep / UPSTREAM / "cert.pem", dep / UPSTREAM / "key.pem", dep / "ca/ca.pem", on_request=on_request
    )


def _client_context(dep: Path, cert: Path | None, key: Path | None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(dep / "ca/ca.pem"))
    if cert is not None and key is not None:
        ctx.load_cert_chain(str(cert), str(key))
    return ctx


async def _call(port: int, ctx: ssl.SSLContext, request: bytes) -> tuple[int, dict[str, str], bytes]:
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=ctx, server_hostname="orders.api.internal"
    )
    try:
        writer.write(request)
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), timeout=5)
    finally:
        writer.close()
        with contextlib.suppress(ssl.SSLError, ConnectionError):
            await writer.wait_closed()
    if not raw:
        raise ConnectionError("connection closed without an answer")
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(lines[0].split()[1]), headers, body


def _egress(dep: Path) -> ssl.SSLContext:
    return _client_context(dep, dep / "broker/egress.pem", dep / "broker/egress.key")


CREATE = (
    b"POST /v1/orders/create HTTP/1.1\r\n"
    b"Host: orders.api.internal\r\n"
    b"X-Request-Id: req-1\r\n"
    b"content-type: application/json\r\n"
    b"Content-Length: 11\r\n"
    b"Connection: close\r\n"
    b"\r\n"
    b'{"a": true}'
)


def test_egress_cert_gets_201_and_request_is_recorded(dep: Path) -> None:
    async def run() -> None:
        up = _upstream(dep)
        port = await up.start()
        try:
            assert port > 0
            status, headers, body = await _call(port, _egress(dep), CREATE)
            assert status == 201
            answer = json.loads(body)
            assert answer["status"] == "created" and len(answer["order_id"]) == 36
            assert headers["x-request-id"] == "req-1"
            assert headers["x-internal-debug"] == "secret"
            assert headers["server"] == "sample"
            (got,) = up.received
            assert got.method == "POST" and got.raw_path == "/v1/orders/create"
            assert got.body == b'{"a": true}'
            assert got.peer_cn == "ztb-broker-egress"
            # Names keep their case and order as sent.
            assert [k for k, _ in got.headers] == [
                "Host",
                "X-Request-Id",
                "content-type",
                "Content-Length",
                "Connection",
            ]
            assert got.header("x-request-id") == "req-1"
        finally:
            await up.stop()

    asyncio.run(run())


def test_routes(dep: Path) -> None:
    order_id = "6f1c2a9e-4b7d-4e1a-9c3f-2d8b5e0a7c41"

    def get(target: str) -> bytes:
        return f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()

    async def run() -> None:
        up = _upstream(dep)
        port = await up.start()
        try:
            status, _, body = await _call(port, _egress(dep), get(f"/v1/orders/{order_id}"))
            assert status == 200 and json.loads(body)["order_id"] == order_id
            status, _, body = await _call(port, _egress(dep), get("/v1/orders?limit=2"))
            assert status == 200 and len(json.loads(body)["orders"]) == 2
            status, _, body = await _call(port, _egress(dep), get("/v1/admin"))
            assert status == 404 and json.loads(body) == {"error": "not_found"}
            status, _, _ = await _call(port, _egress(dep), get("/v1/orders/create"))
            assert status == 404
            assert [r.raw_path for r in up.received] == [
                f"/v1/orders/{order_id}",
                "/v1/orders?limit=2",
                "/v1/admin",
                "/v1/orders/create",
            ]
        finally:
            await up.stop()

    asyncio.run(run())


def test_hook_runs_before_the_answer(dep: Path) -> None:
    seen: list[int] = []

    async def run() -> None:
        up: SampleUpstream

        async def hook(request: ReceivedRequest) -> None:
            await asyncio.sleep(0)
            seen.append(len(up.received))  # already recorded when the hook runs

        up = _upstream(dep, on_request=hook)
        port = await up.start()
        try:
            status, _, _ = await _call(port, _egress(dep), CREATE)
            assert status == 201
        finally:
            await up.stop()

    asyncio.run(run())
    assert seen == [1]


async def _refused(dep: Path, ctx: ssl.SSLContext) -> None:
    up = _upstream(dep)
    port = await up.start()
    try:
        # TLS 1.3: the client may finish its side of the handshake before the server rejects its
        # certificate, so the failure can surface on connect, on write or on the first read.
        with pytest.raises((ssl.SSLError, ConnectionError)):
            await _call(port, ctx, CREATE)
        assert up.received == []
    finally:
        await up.stop()


def test_no_client_certificate_fails_the_handshake(dep: Path) -> None:
    asyncio.run(_refused(dep, _client_context(dep, None, None)))


def test_certificate_from_another_ca_fails_the_handshake(dep: Path, tmp_path: Path) -> None:
    stranger = pki.issue_client(pki.new_ca("another CA"), "ztb-broker-egress")
    stranger.write(tmp_path / "cert.pem", tmp_path / "key.pem")
    asyncio.run(_refused(dep, _client_context(dep, tmp_path / "cert.pem", tmp_path / "key.pem")))


def test_tls_12_is_refused(dep: Path) -> None:
    ctx = _egress(dep)
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    asyncio.run(_refused(dep, ctx))


def test_picks_a_free_port_and_stops(dep: Path) -> None:
    async def run() -> None:
        first, second = _upstream(dep), _upstream(dep)
        a, b = await first.start(), await second.start()
        assert a != b
        await first.stop()
        await second.stop()
        with pytest.raises(OSError):
            await asyncio.open_connection("127.0.0.1", a)

    asyncio.run(run())
