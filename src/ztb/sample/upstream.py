"""The sample upstream `orders.api.internal`: a small orders API behind mTLS, for demo and tests.

It speaks TLS 1.3 only and requires a client certificate chaining to the given CA, so only the
broker's egress certificate gets a conversation. Every request is recorded, exactly as it
arrived, before it is answered, so tests can see what the broker forwarded. Its responses carry
headers the broker must strip (`x-internal-debug`, `server`). It must never be more than a
clean sample: no test-only behaviours, no broker logic.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import re
import ssl
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web
from cryptography import x509

from ztb import pki

_ORDER = re.compile(r"/v1/orders/([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})")


@dataclass(frozen=True, slots=True)
class ReceivedRequest:
    method: str
    raw_path: str
    headers: tuple[tuple[str, str], ...]  # as received, in order, decoded latin-1
    body: bytes
    peer_cn: str | None  # subject CN of the client certificate

    def header(self, name: str) -> str | None:
        """The first value of header `name` (case-insensitive), or None."""
        lowered = name.lower()
        return next((v for k, v in self.headers if k.lower() == lowered), None)


RequestHook = Callable[[ReceivedRequest], Awaitable[None] | None]


class SampleUpstream:
    """An HTTPS orders API that requires mTLS from clients of `client_ca`."""

    def __init__(
        self,
        cert: Path,
        key: Path,
        client_ca: Path,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        on_request: RequestHook | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.on_request = on_request
        self.received: list[ReceivedRequest] = []
        self._ssl = server_context(cert, key, client_ca)
        self._runner: web.AppRunner | None = None

    async def start(self) -> int:
        """Start listening; returns the bound port (a free one when constructed with port 0)."""
        if self._runner is not None:
            raise RuntimeError("SampleUpstream is already started")
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        try:
            site = web.TCPSite(runner, self.host, self.port, ssl_context=self._ssl)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self.port = int(runner.addresses[0][1])
        return self.port

    async def stop(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        peer_cn = _peer_cn(request)  # before reading the body: the transport may go away after
        received = ReceivedRequest(
            method=request.method,
            raw_path=request.raw_path,
            headers=tuple((k.decode("latin-1"), v.decode("latin-1")) for k, v in request.raw_headers),
            body=await request.read(),
            peer_cn=peer_cn,
        )
        self.received.append(received)
        if self.on_request is not None:
            pending = self.on_request(received)
            if inspect.isawaitable(pending):
                await pending
        status, body = _answer(request.method, request.path)
        response = web.json_response(body, status=status)
        response.headers["x-internal-debug"] = "secret"
        response.headers["server"] = "sample"
        request_id = request.headers.get("x-request-id")
        if request_id is not None:
            response.headers["x-request-id"] = request_id
        return response


def server_context(cert: Path, key: Path, client_ca: Path) -> ssl.SSLContext:
    """TLS 1.3 server context that requires a client certificate chaining to `client_ca`."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cafile=str(client_ca))
    ctx.load_cert_chain(str(cert), str(key))
    return ctx


def _answer(method: str, path: str) -> tuple[int, Any]:
    if method == "POST" and path == "/v1/orders/create":
        return 201, {"order_id": str(uuid.uuid4()), "status": "created"}
    if method == "GET" and path == "/v1/orders":
        return 200, {"orders": [_order(str(uuid.uuid4())), _order(str(uuid.uuid4()))], "next_cursor": None}
    match = _ORDER.fullmatch(path)
    if method == "GET" and match is not None:
        return 200, _order(match.group(1))
    return 404, {"error": "not_found"}


def _order(order_id: str) -> dict[str, Any]:
    return {
        "order_id": order_id,
        "status": "created",
        "currency": "EUR",
        "total_cents": 5245,
        "items": [{"sku": "BOOK-0451-PB", "qty": 2, "unit_price_cents": 1299}],
    }


def _peer_cn(request: web.Request) -> str | None:
    transport = request.transport
    ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
    if not isinstance(ssl_object, ssl.SSLObject):
        return None
    der = ssl_object.getpeercert(binary_form=True)
    return pki.common_name(x509.load_der_x509_certificate(der)) if der else None


async def _serve_deployment(root: Path) -> None:
    """Run the sample upstream of a `ztb init` deployment on the port its registry names."""
    from ztb.config import load_registry

    upstream = load_registry(root).upstreams["orders.api.internal"]
    folder = root / "upstreams" / "orders.api.internal"
    server = SampleUpstream(
        folder / "cert.pem", folder / "key.pem", root / "ca" / "ca.pem", port=upstream.port
    )
    port = await server.start()
    print(f"sample upstream orders.api.internal on https://127.0.0.1:{port} (mTLS)", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await server.stop()


if __name__ == "__main__":
    import sys

    if len(sys.argv) != 2:
        sys.exit("usage: python -m ztb.sample.upstream DEPLOYMENT_DIR")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve_deployment(Path(sys.argv[1])))
