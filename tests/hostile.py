"""Shared tools of the hostile-input suites (tests/edge/test_hostile_*.py and friends).

- `Canary`: a TCP listener no route points at; hostile requests aim at it (absolute-form targets,
  Host, X-Forwarded-Host, redirects...). Any connection it sees is a failure.
- `raw_request` / `send_raw`: bytes in over real mTLS, the broker's answer (or the closed
  connection) out, every wait bounded.
- `Invariant`: the pass condition of every hostile case. The caller got the expected 4xx with the
  matching audited DENY (or the connection was closed), the canary saw nothing, and every request
  the recording upstream did see is a registered route's canonical path with broker-written
  framing and a body byte-identical to one that was validated (its ALLOW entry hashes it).
- `hostile_deployment`: a fresh deployment with test limits and extra upstreams in registry.yaml.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import select
import socket
import ssl
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from stack import Stack
from ztb.client import client_context
from ztb.config import load_registry
from ztb.deploy import sign_registry_with_dev_keys
from ztb.gates.target import lookup
from ztb.sample.local import LoopThread

IO_TIMEOUT_S = 10.0
BROKER_WRITTEN = frozenset({"host", "content-length", "content-type", "ztb-call-id", "ztb-caller"})


class Canary:
    """A listener that must never be contacted: it records every connection and its first bytes."""

    def __init__(self, loop: LoopThread) -> None:
        self._loop = loop
        self.hits: list[bytes] = []
        self._server: asyncio.Server | None = None
        self.port = loop.run(self._start())

    async def _start(self) -> int:
        self._server = await asyncio.start_server(self._seen, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    async def _seen(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            data = await asyncio.wait_for(reader.read(4096), 1.0)
        except (TimeoutError, ConnectionError):
            data = b""
        self.hits.append(data or b"<connected>")
        writer.close()

    @property
    def authority(self) -> str:
        return f"127.0.0.1:{self.port}"

    def close(self) -> None:
        if self._server is not None:
            self._server.close()


@dataclass
class Answer:
    """What came back on one connection: a parsed response, or nothing (closed / TLS refused)."""

    status: int | None
    headers: list[tuple[str, str]]
    body: bytes
    closed: bool  # the broker closed the connection after answering (or without answering)
    elapsed_s: float
    tls_error: str | None = None

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k == name), None)

    @property
    def error(self) -> dict[str, str]:
        payload = json.loads(self.body)
        error = payload["error"]
        assert isinstance(error, dict)
        return error


def request_bytes(
    method: str,
    target: str | bytes,
    headers: Sequence[tuple[str, str]] = (),
    body: bytes = b"",
    *,
    host: str = "127.0.0.1",
    version: bytes = b"HTTP/1.1",
) -> bytes:
    """A request as raw bytes, Host first, Content-Length added for a non-empty body."""
    raw_target = target if isinstance(target, bytes) else target.encode("latin-1")
    lines = [method.encode("ascii") + b" " + raw_target + b" " + version]
    lines.append(b"Host: " + host.encode("latin-1"))
    lines += [f"{k}: {v}".encode("latin-1") for k, v in headers]
    if body and not any(k.lower() in ("content-length", "transfer-encoding") for k, _ in headers):
        lines.append(f"Content-Length: {len(body)}".encode())
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def tls_context(root: Path, identity: str | None = "svc.checkout") -> ssl.SSLContext:
    if identity is None:
        return client_context(None, None, root / "ca" / "ca.pem")
    folder = root / "callers" / identity
    return client_context(folder / "cert.pem", folder / "key.pem", root / "ca" / "ca.pem")


def connect(port: int, ctx: ssl.SSLContext) -> ssl.SSLSocket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=IO_TIMEOUT_S)
    try:
        return ctx.wrap_socket(sock, server_hostname="127.0.0.1")
    except BaseException:
        sock.close()
        raise


class Conn:
    """One mTLS connection to the broker, with a read buffer so pipelined answers are not lost."""

    def __init__(self, port: int, ctx: ssl.SSLContext) -> None:
        self.started = time.monotonic()
        self.tls = connect(port, ctx)
        self._buffer = b""
        self.closed = False
        self.tls_error: str | None = None  # the TLS error that ended the connection, if one did

    def __enter__(self) -> Conn:
        return self

    def __exit__(self, *exc: object) -> None:
        self.tls.close()

    def send(self, data: bytes) -> bool:
        """False when the broker has already closed the connection."""
        try:
            self.tls.sendall(data)
        except (ssl.SSLError, ConnectionError, TimeoutError):
            return False
        return True

    def poll(self, timeout_s: float) -> bool:
        """True when the broker sent something (or closed) within `timeout_s`. TLS records that
        carry no application data (TLS 1.3 session tickets) do not count."""
        deadline = time.monotonic() + timeout_s
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            readable, _, _ = select.select([self.tls], [], [], remaining)
            if not readable:
                return False
            self.tls.setblocking(False)
            try:
                return self._fill()
            except ssl.SSLWantReadError:
                continue
            finally:
                self.tls.setblocking(True)
                self.tls.settimeout(IO_TIMEOUT_S)

    def _fill(self) -> bool:
        try:
            chunk = self.tls.recv(65536)
        except ssl.SSLWantReadError:
            raise
        except (ssl.SSLError, ConnectionError) as exc:
            self.tls_error = repr(exc)
            chunk = b""
        if not chunk:
            self.closed = True
        self._buffer += chunk
        return True

    def answer(self, *, wait_close: bool = False) -> Answer:
        """The next final response (by its Content-Length; 1xx skipped); with `wait_close`, then
        wait for the close."""
        while True:
            answer = self._one(wait_close=wait_close)
            if answer.status is None or answer.status >= 200:
                return answer

    def response(self) -> Answer:
        """The next response as it comes, a 1xx included."""
        return self._one(wait_close=False)

    def _one(self, *, wait_close: bool) -> Answer:
        while b"\r\n\r\n" not in self._buffer and not self.closed:
            self._fill()
        if b"\r\n\r\n" not in self._buffer:
            return Answer(None, [], self._buffer, True, time.monotonic() - self.started, self.tls_error)
        head, _, rest = self._buffer.partition(b"\r\n\r\n")
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = [(k.strip().lower(), v.strip()) for k, _, v in (line.partition(":") for line in lines)]
        length = int(next((v for k, v in headers if k == "content-length"), "0"))
        while len(rest) < length and not self.closed:
            self._fill()
            rest = self._buffer.partition(b"\r\n\r\n")[2]
        self._buffer = rest[length:]
        status = int(status_line.split(" ")[1])
        if wait_close and status >= 200:
            try:
                while not self.closed:
                    self._fill()
            except TimeoutError:
                pass
        return Answer(status, headers, rest[:length], self.closed, time.monotonic() - self.started)


def send_raw(
    port: int,
    ctx: ssl.SSLContext,
    parts: bytes | Iterable[bytes],
    *,
    pause_s: float = 0.0,
    wait_close: bool = False,
) -> Answer:
    """Connect over mTLS, send `parts` (with `pause_s` between them) and read the answer."""
    started = time.monotonic()
    try:
        conn = Conn(port, ctx)
    except (ssl.SSLError, ConnectionError) as exc:
        return Answer(None, [], b"", True, time.monotonic() - started, tls_error=repr(exc))
    with conn:
        for i, part in enumerate([parts] if isinstance(parts, bytes) else parts):
            if i and pause_s:
                time.sleep(pause_s)
            if not conn.send(part):
                break  # the broker may close before all is sent: its answer (if any) is still read
        try:
            return conn.answer(wait_close=wait_close)
        except ssl.SSLError as exc:  # TLS 1.3: a refused client certificate shows on the first read
            return Answer(None, [], b"", True, time.monotonic() - started, tls_error=repr(exc))


@dataclass
class Invariant:
    """The pass condition of a hostile case, checked against the deployment after it ran."""

    stack: Stack
    canary: Canary
    validated: list[bytes] = field(default_factory=list)  # bodies the test sent on allowed calls
    recorders: list[Any] = field(default_factory=list)  # recording upstreams beside the sample one
    seen_before: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.recorders = [self.stack.upstream, *self.recorders]
        self.seen_before = [len(r.received) for r in self.recorders]

    def forwarded(self) -> list[Any]:
        """Every request any recording upstream received since this case began."""
        return [req for r, n in zip(self.recorders, self.seen_before, strict=True) for req in r.received[n:]]

    def refused(self, answer: Answer, status: int, reason: str) -> dict[str, Any]:
        """The caller got `status`/`reason`, the connection state is sane, and the DENY is audited."""
        assert answer.status == status, (answer.status, answer.body)
        error = answer.error
        assert error["reason"] == reason, error
        assert answer.header("content-type") == "application/json"
        entry = self.stack.entry_of(error["call_id"])
        assert entry["decision"] == "DENY"
        assert (entry["gate"], entry["reason"]) == (error["gate"], reason)
        self.clean()
        return entry

    def clean(self) -> None:
        """Nothing reached the canary; whatever reached the upstream was canonical and validated."""
        assert self.canary.hits == [], self.canary.hits
        registry = load_registry(self.stack.root)
        for request in self.forwarded():
            upstream = self._upstream_of(request, registry)
            found = lookup(registry, request.method, f"/{upstream}{request.raw_path}")
            assert found.route is not None and found.path == request.raw_path, request.raw_path
            names = [name.lower() for name, _ in request.headers]
            assert len(names) == len(set(names)), names
            assert set(names) <= BROKER_WRITTEN | found.route.request_headers, names
            assert request.header("host") == registry.upstreams[upstream].authority
            if request.body or request.method in ("POST", "PUT", "PATCH"):
                assert request.header("content-length") == str(len(request.body))
            assert request.body in self.validated or request.body == b""
            call_id = request.header("ztb-call-id")
            entry = self.stack.entry_of(call_id)
            assert entry["decision"] == "ALLOW"
            assert entry["upstream"]["path"] == request.raw_path
            if entry["shape"] is not None:
                assert entry["shape"]["sha256"] == "sha256:" + hashlib.sha256(request.body).hexdigest()

    def _upstream_of(self, request: Any, registry: Any) -> str:
        call_id = request.header("ztb-call-id")
        assert call_id is not None, "the broker writes ztb-call-id on every forwarded request"
        name = self.stack.entry_of(call_id)["upstream"]["name"]
        assert name in registry.upstreams
        return str(name)


def mint(stack: Stack, scope: str = "orders:create", upstream: str = "orders.api.internal") -> str:
    caller = stack.caller()
    try:
        return caller.mint(upstream, scope)
    finally:
        caller.close()


def order_body() -> bytes:
    from ztb.deploy import sample_order

    return json.dumps(sample_order(), separators=(",", ":")).encode()


def write_limits(root: Path, **limits: float) -> None:
    path = root / "broker.yaml"
    config = yaml.safe_load(path.read_text(encoding="utf-8"))
    config.setdefault("limits", {}).update(limits)
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")


def add_to_registry(
    root: Path, *, upstreams: dict[str, Any], routes: list[Any], grants: dict[str, Any]
) -> None:
    path = root / "registry.yaml"
    registry = yaml.safe_load(path.read_text(encoding="utf-8"))
    registry["upstreams"].update(upstreams)
    registry["routes"].extend(routes)
    for identity, per_upstream in grants.items():
        registry["grants"].setdefault(identity, {}).update(per_upstream)
    path.write_text(yaml.safe_dump(registry, sort_keys=False), encoding="utf-8")
    sign_registry_with_dev_keys(root)  # a changed registry takes effect only once approved again


class HostileUpstream:
    """An mTLS upstream that misbehaves on purpose, by path: redirects to the canary, leaks headers,
    answers too much or too late. It records every request exactly as it arrived."""

    def __init__(self, cert: Path, key: Path, client_ca: Path, canary: str, big_bytes: int) -> None:
        from ztb.sample.upstream import server_context

        self.received: list[Any] = []
        self._ssl = server_context(cert, key, client_ca)
        self._canary = canary
        self._big = big_bytes
        self._runner: Any = None
        self._released: asyncio.Event | None = None
        self.port = 0

    async def start(self) -> int:
        from aiohttp import web

        self._released = asyncio.Event()
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=self._ssl)
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        return self.port

    async def stop(self) -> None:
        if self._released is not None:
            self._released.set()  # a late answer still pending ends now, not after the loop stops
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: Any) -> Any:
        from aiohttp import web

        from ztb.sample.upstream import ReceivedRequest

        self.received.append(
            ReceivedRequest(
                method=request.method,
                raw_path=request.raw_path,
                headers=tuple((k.decode("latin-1"), v.decode("latin-1")) for k, v in request.raw_headers),
                body=await request.read(),
                peer_cn=None,
            )
        )
        leaks = {
            "X-Internal-Debug": "secret",
            "Set-Cookie": "session=stolen; Path=/",
            "Server": "hostile/1.0",
            "X-Powered-By": "hostile",
            "Access-Control-Allow-Origin": "*",
            "WWW-Authenticate": 'Basic realm="internal"',
            "Strict-Transport-Security": "max-age=0",
            "Location": f"http://{self._canary}/leak",
            "Refresh": f"0; url=http://{self._canary}/",
            "Link": f"<http://{self._canary}/>; rel=preload",
        }
        path = request.path
        if path in ("/redirect", "/redirect-allowed"):
            return web.Response(status=302, headers=leaks, content_type="application/json", text="{}")
        if path == "/headers":
            return web.Response(
                status=200, headers=leaks, content_type="application/json", text='{"ok":true}'
            )
        if path == "/big":
            return web.Response(
                status=200, content_type="application/json", body=b'"' + b"a" * self._big + b'"'
            )
        if path == "/slow":
            assert self._released is not None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._released.wait(), 2.5)
            return web.json_response({"late": True})
        return web.json_response({"ok": True})


def hostile_deployment(root: Path) -> Stack:
    """A deployment that is built but not started: tests edit its files, then call `start`."""
    return Stack(root, start=False)


def start(stack: Stack) -> None:
    stack.loop.run(stack.upstream.start())
    stack.start_broker()
