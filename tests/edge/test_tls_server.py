"""The listener's own server-side TLS (`edge/tls_server.py`), over real sockets on 127.0.0.1.

A server here accepts TCP, pauses reading and runs `TLSServer.handshake` exactly as the listener
does, then serves an asyncio stream on its transport. Clients are blocking `ssl` sockets in
threads. What is proven: the alert of a refused handshake reaches the client, even when the
client's first request is already in flight (the bytes are drained, not answered with a reset);
a handshake that stalls or a peer that leaves mid-handshake ends within its bound; data flows
both ways in both directions' flow control (an 8 MiB echo, a reader that pauses); the end of the
stream arrives after the last bytes, with or without close_notify; a corrupt record aborts.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import struct
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import pytest
from cryptography.hazmat.primitives import serialization

from ztb import pki
from ztb.edge.tls import server_context
from ztb.edge.tls_server import Lingering, TLSServer

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@dataclass
class Certs:
    server: ssl.SSLContext
    client: ssl.SSLContext
    stranger: ssl.SSLContext  # a client certificate from another CA
    anonymous: ssl.SSLContext  # no client certificate
    client_der: bytes  # the certificate `client` presents


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    folder = tmp_path_factory.mktemp("tls")
    ca = pki.new_ca("tls test CA")
    (folder / "ca.pem").write_bytes(ca.cert_pem())
    pki.issue_server(ca, ["localhost"], ["127.0.0.1"]).write(folder / "s.pem", folder / "s.key")
    caller = pki.issue_client(ca, "svc.test")
    caller.write(folder / "c.pem", folder / "c.key")
    pki.issue_client(pki.new_ca("another CA"), "svc.test").write(folder / "x.pem", folder / "x.key")

    def client(cert: str | None) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(folder / "ca.pem")
        if cert is not None:
            ctx.load_cert_chain(folder / f"{cert}.pem", folder / f"{cert}.key")
        return ctx

    server = server_context(folder / "s.pem", folder / "s.key", folder / "ca.pem", "1.3")
    der = caller.cert.public_bytes(serialization.Encoding.DER)
    return Certs(server, client("c"), client("x"), client(None), der)


@dataclass
class Outcome:
    handshake_error: BaseException | None = None
    handshake_s: float = 0.0
    received: bytes = b""
    ended_by: str = ""  # "eof" or the exception that ended the app's stream
    done: threading.Event = field(default_factory=threading.Event)


class _Paused(asyncio.Protocol):
    def __init__(self, serve: Callable[[asyncio.Transport], None]) -> None:
        self._serve = serve

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        transport.pause_reading()
        self._serve(transport)


class Server:
    """An asyncio server on its own thread that runs TLSServer like the listener does."""

    def __init__(
        self, ctx: ssl.SSLContext, handler: Handler | None, timeout_s: float = 5.0, linger_limit: int = 256
    ) -> None:
        self.ctx, self.handler, self.timeout_s = ctx, handler, timeout_s
        self.lingering = Lingering(linger_limit)
        self.outcomes: list[Outcome] = []
        self.loop = asyncio.new_event_loop()
        self.port = 0
        started = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(started,), daemon=True)
        self.thread.start()
        assert started.wait(10)

    def _run(self, started: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        server = self.loop.run_until_complete(
            self.loop.create_server(lambda: _Paused(self._spawn), "127.0.0.1", 0)
        )
        self.port = server.sockets[0].getsockname()[1]
        started.set()
        self.loop.run_forever()
        server.close()

    def _spawn(self, raw: asyncio.Transport) -> None:
        outcome = Outcome()
        self.outcomes.append(outcome)
        self.loop.create_task(self._connection(raw, outcome))

    async def _connection(self, raw: asyncio.Transport, outcome: Outcome) -> None:
        reader = asyncio.StreamReader(limit=65536)
        protocol = asyncio.StreamReaderProtocol(reader)
        tls = TLSServer(self.ctx, protocol, self.lingering)
        started = time.monotonic()
        try:
            await tls.handshake(raw, self.timeout_s)
        except (ssl.SSLError, ConnectionError, TimeoutError, OSError) as exc:
            outcome.handshake_error = exc
            outcome.handshake_s = time.monotonic() - started
            outcome.done.set()
            return
        writer = asyncio.StreamWriter(tls.transport, protocol, reader, self.loop)
        try:
            if self.handler is not None:
                await self.handler(reader, writer)
            while data := await reader.read(65536):
                outcome.received += data
            outcome.ended_by = "eof"
        except (ConnectionError, ssl.SSLError) as exc:
            outcome.ended_by = type(exc).__name__
        finally:
            writer.close()
            outcome.done.set()

    def wait(self, index: int = 0, timeout_s: float = 10.0) -> Outcome:
        deadline = time.monotonic() + timeout_s
        while len(self.outcomes) <= index and time.monotonic() < deadline:
            time.sleep(0.01)
        assert self.outcomes[index].done.wait(max(0.0, deadline - time.monotonic()))
        return self.outcomes[index]

    def close(self) -> None:
        def stop() -> None:
            for task in asyncio.all_tasks(self.loop):
                task.cancel()
            self.loop.call_later(0.05, self.loop.stop)

        self.loop.call_soon_threadsafe(stop)
        self.thread.join(10)


@pytest.fixture
def serve(certs: Certs):  # type: ignore[no-untyped-def]
    servers: list[Server] = []

    def start(handler: Handler | None = None, timeout_s: float = 5.0, linger_limit: int = 256) -> Server:
        server = Server(certs.server, handler, timeout_s, linger_limit)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


def connect(port: int, ctx: ssl.SSLContext) -> ssl.SSLSocket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    return ctx.wrap_socket(sock, server_hostname="localhost")


def read_all(tls: ssl.SSLSocket) -> tuple[bytes, str | None]:
    """Everything until the connection ends, and the TLS error that ended it, if any."""
    data = b""
    while True:
        try:
            chunk = tls.recv(65536)
        except (ssl.SSLError, ConnectionError) as exc:
            return data, repr(exc)
        if not chunk:
            return data, None
        data += chunk


# -- refusals ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("client", "alert"),
    [("stranger", "ALERT_UNKNOWN_CA"), ("anonymous", "ALERT_CERTIFICATE_REQUIRED")],
)
def test_a_refused_handshake_sends_its_alert(serve, certs: Certs, client: str, alert: str) -> None:  # type: ignore[no-untyped-def]
    server = serve()
    tls = connect(server.port, getattr(certs, client))  # TLS 1.3: the client finishes first
    tls.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    _, error = read_all(tls)
    assert error is not None and alert in error, error
    outcome = server.wait()
    assert isinstance(outcome.handshake_error, ssl.SSLError)
    assert outcome.received == b""  # the app never saw a byte


def test_the_alert_survives_a_request_already_in_flight(serve, certs: Certs) -> None:  # type: ignore[no-untyped-def]
    """The refused client's first request (here 1 MiB, sent at once) is read and dropped, not
    left unread in the socket, where closing would answer it with a reset that destroys the alert."""
    server = serve()
    tls = connect(server.port, certs.stranger)
    body = b"x" * (1 << 20)
    sent = 0
    with pytest.raises((ssl.SSLError, ConnectionError)) as raised:
        while sent < len(body):
            sent += tls.send(body[sent : sent + 65536])
        tls.recv(1)
    assert "ALERT_UNKNOWN_CA" in repr(raised.value), repr(raised.value)


def test_a_stalled_handshake_ends_within_its_bound(serve, certs: Certs) -> None:  # type: ignore[no-untyped-def]
    server = serve(timeout_s=0.5)
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"\x16\x03\x01")  # the start of a record, and then nothing
        outcome = server.wait()
        assert isinstance(outcome.handshake_error, TimeoutError)
        assert 0.4 < outcome.handshake_s < 3.0
        sock.settimeout(3)
        assert sock.recv(100) == b""  # the broker's side is gone


def test_a_peer_leaving_mid_handshake_is_a_connection_error(serve) -> None:  # type: ignore[no-untyped-def]
    server = serve()
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"\x16\x03\x01\x02\x00")
    outcome = server.wait()
    assert isinstance(outcome.handshake_error, ConnectionError), outcome.handshake_error


def test_a_malformed_client_hello_is_refused_with_an_alert(serve) -> None:  # type: ignore[no-untyped-def]
    server = serve()
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"\x16\x03\x01\x00\x08" + b"\x01\x00\x00\x04" + b"\xff" * 4)  # a ClientHello of noise
        sock.settimeout(5)
        reply = b""
        while chunk := sock.recv(100):
            reply += chunk
    assert reply[:1] == b"\x15"  # a TLS alert record
    assert isinstance(server.wait().handshake_error, ssl.SSLError)


# -- the established connection ---------------------------------------------------------------


BUFFERED_AFTER_DRAIN: list[int] = []


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()  # the client reads slowly: the server's writes must wait for it
        BUFFERED_AFTER_DRAIN.append(writer.transport.get_write_buffer_size())


def test_eight_mebibytes_echo_both_ways_with_flow_control(serve, certs: Certs) -> None:  # type: ignore[no-untyped-def]
    server = serve(echo)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32768)  # little room on the client's side
    sock.settimeout(30)
    sock.connect(("127.0.0.1", server.port))
    tls = certs.client.wrap_socket(sock, server_hostname="localhost")
    payload = bytes(range(256)) * (8 * 4096)
    received = bytearray()

    def reader() -> None:
        time.sleep(0.5)  # reads nothing at first: the echo must back up to the server's app
        while len(received) < len(payload):
            chunk = tls.recv(65536)
            if not chunk:
                return
            received.extend(chunk)

    thread = threading.Thread(target=reader)
    thread.start()
    tls.sendall(payload)
    thread.join(30)
    assert bytes(received) == payload
    # Back-pressure reached the app: each drain waited until the socket's buffer fell below its
    # high-water mark (64 KiB), instead of the whole echo piling up in memory.
    assert BUFFERED_AFTER_DRAIN and max(BUFFERED_AFTER_DRAIN) <= 65536, max(BUFFERED_AFTER_DRAIN)
    tls.close()
    assert server.wait().ended_by in ("eof", "ConnectionResetError")


def test_a_reader_that_pauses_gets_every_byte_in_order(serve, certs: Certs) -> None:  # type: ignore[no-untyped-def]
    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(0.5)  # 1 MiB arrives meanwhile: the stream's limit pauses reading

    server = serve(slow)
    tls = connect(server.port, certs.client)
    payload = bytes(range(251)) * 4200
    tls.sendall(payload)
    tls.unwrap()  # close_notify after the last byte
    outcome = server.wait()
    assert outcome.received == payload and outcome.ended_by == "eof"


def test_a_fin_without_close_notify_still_ends_the_stream_after_the_data(serve, certs: Certs) -> None:  # type: ignore[no-untyped-def]
    server = serve()
    tls = connect(server.port, certs.client)
    tls.sendall(b"last words")
    time.sleep(0.1)
    tls.shutdown(socket.SHUT_WR)  # TCP FIN only
    outcome = server.wait()
    assert outcome.received == b"last words" and outcome.ended_by == "eof"
    # The peer had ended its side: the close does not linger for it (no place taken, no wait).
    assert server.lingering.count == 0
    tls.settimeout(2)  # (after shutdown() the SSLSocket reads raw bytes: the close_notify record)
    assert read_all(tls)[1] is None  # the broker's side closed at once: EOF, not a 2 s timeout
    tls.close()


def test_a_corrupt_record_aborts_the_connection(serve, certs: Certs) -> None:  # type: ignore[no-untyped-def]
    server = serve()
    tls = connect(server.port, certs.client)
    tls.sendall(b"fine")
    time.sleep(0.1)
    raw = socket.socket(fileno=tls.detach())  # below TLS: an application-data record of noise
    raw.sendall(b"\x17\x03\x03\x00\x20" + b"\x00" * 32)
    outcome = server.wait()
    assert outcome.received == b"fine"
    assert outcome.ended_by != "eof"  # an error, never mistaken for a clean end
    raw.close()


def test_the_app_sees_the_peer_certificate(serve, certs: Certs) -> None:  # type: ignore[no-untyped-def]
    seen: list[bytes | None] = []

    async def look(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        ssl_object = writer.get_extra_info("ssl_object")
        seen.append(ssl_object.getpeercert(binary_form=True))
        assert writer.get_extra_info("peername")[0] == "127.0.0.1"
        writer.write(b"hello")
        await writer.drain()

    server = serve(look)
    tls = connect(server.port, certs.client)
    assert tls.recv(5) == b"hello"
    assert seen == [certs.client_der]


def test_lingering_refusals_are_bounded_and_counted_back(serve, certs: Certs) -> None:  # type: ignore[no-untyped-def]
    server = serve(linger_limit=2)
    clients = [connect(server.port, certs.stranger) for _ in range(4)]
    for tls in clients:
        tls.sendall(b"GET / HTTP/1.1\r\n\r\n")
    for index in range(4):
        assert isinstance(server.wait(index).handshake_error, ssl.SSLError)
    assert server.lingering.count == 2  # two linger, the other two were closed at once
    for index, tls in enumerate(clients):
        data, error = read_all(tls)
        assert data == b""
        if index < 2:  # the lingering ones are sure to get their alert; the others may see a reset
            assert error is not None and "ALERT_UNKNOWN_CA" in error, error
        tls.close()
    deadline = time.monotonic() + 5
    while server.lingering.count and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.lingering.count == 0  # each lingering connection gave its place back when it closed


def test_a_reply_then_close_reaches_a_client_still_sending(serve, certs: Certs) -> None:  # type: ignore[no-untyped-def]
    """The app answers and closes without reading the body the client is still sending (a 413,
    or a 401 before the body is wanted). The client must read that answer, not a reset."""

    async def refuse_unread(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 413 Content Too Large\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
        await writer.drain()
        writer.close()

    server = serve(refuse_unread)
    tls = connect(server.port, certs.client)
    body = b"y" * (4 << 20)
    # The whole body goes out (it is read and dropped after the answer): an HTTP client that
    # only reads the answer once it has sent everything (http.client does) would otherwise see
    # its send fail, take the call for undelivered and send it again.
    tls.sendall(b"POST /big HTTP/1.1\r\nHost: x\r\ncontent-length: %d\r\n\r\n" % len(body) + body)
    reply, error = read_all(tls)
    assert reply.startswith(b"HTTP/1.1 413 ") and error is None, (reply, error)
    tls.close()


def test_shutting_a_connection_the_peer_reset_raises_nothing(serve, certs: Certs) -> None:  # type: ignore[no-untyped-def]
    """FIN on a socket the peer has reset fails (ENOTCONN) when the reset was not read yet; the
    close must still happen, quietly (seen under load: a close racing a caller's reset)."""
    raised: list[BaseException] = []
    reached: list[bool] = []

    async def shut_late(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readexactly(5)
        writer.transport.pause_reading()  # so the reset is not noticed by a read first
        writer.write(b"ready")
        await writer.drain()
        await asyncio.sleep(0.3)  # meanwhile the peer resets the connection
        reached.append(True)
        tls = writer.transport._tls  # type: ignore[attr-defined]  # the step under test, alone
        try:
            tls._shut_then_close(tls._raw, 1.0)
        except BaseException as exc:
            raised.append(exc)

    server = serve(shut_late)
    tls = connect(server.port, certs.client)
    tls.sendall(b"hello")
    assert tls.recv(5) == b"ready"
    sock = socket.socket(fileno=tls.detach())
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()  # RST
    server.wait()
    assert reached and raised == []
