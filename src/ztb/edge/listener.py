"""The data-plane listener: TLS, then HTTP/1.1 framing (h11), then the broker core.

It works from the raw request target and raw body bytes; it never routes on `Host`, never
percent-decodes, never normalises a path and never lets a caller's framing reach an upstream.
TLS is negotiated by the listener itself after accept, so a failed handshake (no certificate,
untrusted certificate) is seen and audited as an `identity` entry, folded per source per second.
The raw head bytes are kept until the head is complete and checked by `hygiene` before h11
interprets them (the request line as soon as it is complete), so h11's leniencies never decide.
Every limit of SPEC §2 is enforced here: header block size and count, header and body time,
idle keep-alive, and a cap on concurrent connections. Anything it cannot parse is refused with
an entry, never a 500.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Callable
from typing import cast

import h11

from ztb.broker import TOKEN_PATH, Broker, Reply
from ztb.config.broker import Limits
from ztb.edge import hygiene
from ztb.edge.tls import client_cert_facts, handshake_reason
from ztb.gates.base import BodyTimeout, BodyTooLarge, Peer
from ztb.reasons import Reason

log = logging.getLogger("ztb.edge")
READ_CHUNK = 65536
MAX_MINT_BODY = 4096


class _Closed(Exception):
    """The peer went away or went silent between requests: nothing to answer."""


class _Refused(Exception):
    def __init__(self, reason: Reason, method: str | None = None, target: str | None = None) -> None:
        super().__init__(reason.value)
        self.reason = reason
        self.method = method
        self.target = target


class _Fold:
    """Folds repeated TLS rejections from one source into one entry a second, with a count."""

    def __init__(self, record: Callable[[str, Reason, int, str], None]) -> None:
        self._record = record
        self._windows: dict[tuple[str, Reason], list[int]] = {}

    def rejected(self, addr: str, reason: Reason, detail: str) -> None:
        key = (addr, reason)
        window = self._windows.get(key)
        if window is not None:
            window[0] += 1
            return
        self._record(addr, reason, 1, detail)
        self._windows[key] = [0]
        asyncio.get_running_loop().call_later(1.0, self._flush, key, detail)

    def _flush(self, key: tuple[str, Reason], detail: str) -> None:
        window = self._windows.pop(key)
        if window[0]:
            self._record(key[0], key[1], window[0], detail)


class _Accepted(asyncio.Protocol):
    """A new TCP connection before TLS. Reading is paused at once, so no byte of the ClientHello
    is consumed by anything but the handshake the listener runs itself (on any event loop)."""

    def __init__(self, spawn: Callable[[asyncio.Transport], None]) -> None:
        self._spawn = spawn

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        stream = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass asyncio's
        stream.pause_reading()
        self._spawn(stream)


class _Body:
    """The request body as the shape gate sees it: read on demand, capped, timed."""

    def __init__(self, conn: _Connection, declared: int | None, timeout_s: float) -> None:
        self._conn = conn
        self._declared = declared
        self._timeout = timeout_s

    def declared_length(self) -> int | None:
        return self._declared

    async def read(self, limit: int) -> bytes:
        conn = self._conn
        if conn.h11.they_are_waiting_for_100_continue:
            conn.writer.write(conn.h11.send(h11.InformationalResponse(status_code=100, headers=[])))
        chunks: list[bytes] = []
        size = 0
        try:
            async with asyncio.timeout(self._timeout):
                while True:
                    event = await conn.next_event()
                    if isinstance(event, h11.Data):
                        size += len(event.data)
                        if size > limit:
                            raise BodyTooLarge
                        chunks.append(bytes(event.data))
                    elif isinstance(event, h11.EndOfMessage):
                        return b"".join(chunks)
                    else:
                        raise BodyTimeout  # the connection ended mid-body
        except TimeoutError:
            raise BodyTimeout from None
        except (_Closed, h11.RemoteProtocolError):
            raise BodyTimeout from None


class _Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, limits: Limits) -> None:
        self.reader = reader
        self.writer = writer
        self.h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=limits.max_header_bytes)

    async def next_event(self) -> object:
        while True:
            event = self.h11.next_event()
            if event is not h11.NEED_DATA:
                return event
            data = await self.reader.read(READ_CHUNK)
            self.h11.receive_data(data)

    async def send(self, reply: Reply, *, close: bool) -> None:
        headers = [*reply.headers, ("content-length", str(len(reply.body)))]
        if close:
            headers.append(("connection", "close"))
        data = self.h11.send(h11.Response(status_code=reply.status, headers=headers))
        if reply.body:
            data += self.h11.send(h11.Data(data=reply.body))
        data += self.h11.send(h11.EndOfMessage())
        self.writer.write(data)
        await self.writer.drain()


class Listener:
    def __init__(self, broker: Broker, ssl_context: ssl.SSLContext, limits: Limits) -> None:
        self._broker = broker
        self._ssl = ssl_context
        self._limits = limits
        self._fold = _Fold(broker.record_tls_rejection)
        self._tasks: set[asyncio.Task[None]] = set()
        self._idle: dict[asyncio.Task[None], asyncio.StreamWriter] = {}  # connections between requests
        self._draining = False
        self.server: asyncio.Server | None = None

    async def start(self, host: str, port: int, *, reuse_port: bool = False) -> int:
        """Listen on host:port; with `reuse_port`, beside the other worker processes of this
        deployment on the same port (SO_REUSEPORT: the kernel spreads connections among them)."""
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(
            lambda: _Accepted(self._spawn), host, port, backlog=1024, reuse_port=reuse_port
        )
        return int(self.server.sockets[0].getsockname()[1])

    def _spawn(self, raw: asyncio.Transport) -> None:
        if len(self._tasks) >= self._limits.max_connections:
            # Refused before TLS: a flood of connections must not starve the callers already in.
            peername = raw.get_extra_info("peername")
            raw.abort()
            addr = str(peername[0]) if peername else "unknown"
            self._fold.rejected(addr, Reason.TOO_MANY_CONNECTIONS, "connection cap reached")
            return
        task = asyncio.get_running_loop().create_task(self._accept(raw))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def stop_accepting(self) -> None:
        if self.server is not None:
            self.server.close()

    async def drain(self, deadline_s: float) -> int:
        """Close idle connections now, wait for calls in flight to finish, then cancel what is
        left; returns how many connections had to be cancelled."""
        self._draining = True
        for writer in list(self._idle.values()):
            writer.transport.abort()  # between requests: nothing is lost
        if self._tasks:
            _, pending = await asyncio.wait(list(self._tasks), timeout=deadline_s)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=1.0)
            return len(pending)
        return 0

    async def _accept(self, raw: asyncio.Transport) -> None:
        """Run the TLS handshake on the raw connection, then serve it; audit a failed handshake."""
        if self._broker.audit.saturated:
            # The log cannot take more: shed the connection before it costs an entry (SPEC §4
            # fail closed; docs/audit-faults.md bounds memory this way).
            raw.abort()
            return
        peername = raw.get_extra_info("peername")
        addr = str(peername[0]) if peername else "unknown"
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=READ_CHUNK, loop=loop)
        protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
        try:
            transport = await loop.start_tls(
                raw,
                protocol,
                self._ssl,
                server_side=True,
                ssl_handshake_timeout=self._limits.header_timeout_s,
            )
        except (ssl.SSLError, ConnectionError, TimeoutError, OSError) as exc:
            raw.abort()
            self._fold.rejected(addr, handshake_reason(exc), str(exc))
            return
        except asyncio.CancelledError:
            raw.abort()
            return
        if transport is None:  # the peer went away during the handshake
            raw.abort()
            self._fold.rejected(addr, Reason.TLS_HANDSHAKE_FAILED, "connection closed during the handshake")
            return
        protocol.connection_made(transport)
        writer = asyncio.StreamWriter(transport, protocol, reader, loop)
        try:
            await self._serve(reader, writer, addr)
        except asyncio.CancelledError:  # only drain cancels a connection task: it ends here
            pass
        except Exception:  # a bug must cost one connection, never the listener
            log.exception("connection failed")
        finally:
            writer.close()
            # Still counted (cap, drain) until closed: a peer that stalls the TLS close holds a slot.
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(writer.wait_closed(), 1.0)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, addr: str) -> None:
        ssl_object = writer.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        if not der:
            self._fold.rejected(addr, Reason.NO_CLIENT_CERTIFICATE, "no certificate after handshake")
            return
        facts = client_cert_facts(der)
        if facts.problem is not None:
            self._fold.rejected(addr, facts.problem, "certificate breaks the client certificate rules")
            return
        peer = Peer(addr, facts.spki, facts.thumbprint)
        conn = _Connection(reader, writer, self._limits)
        while await self._one_request(conn, peer):
            conn.h11.start_next_cycle()

    async def _one_request(self, conn: _Connection, peer: Peer) -> bool:
        """Serve one request; True when the connection may carry another."""
        limits = self._limits
        try:
            request = await self._read_head(conn)
        except _Closed:
            return False
        except _Refused as refused:
            reply = self._broker.refuse_at_edge(peer, refused.reason, refused.method, refused.target)
            await self._send_quietly(conn, reply)
            return False
        method = request.method.decode("ascii")
        target = request.target.decode("ascii")
        headers = tuple((name.decode("latin-1"), value.decode("latin-1")) for name, value in request.headers)
        declared = _declared_length(headers)
        body = _Body(conn, declared, limits.body_timeout_s)
        if target == TOKEN_PATH and method == "POST":
            try:
                data = await body.read(MAX_MINT_BODY)
            except (BodyTooLarge, BodyTimeout):
                data = b"\x00"  # refused by the mint's own parser as a bad token request
            reply = await self._broker.mint(peer, data)
        else:
            call = self._broker.new_call(peer, method, target, headers, body)
            reply = await self._broker.handle(call)
        if conn.h11.their_state is h11.SEND_BODY and declared == 0:
            conn.h11.next_event()  # the empty body's EndOfMessage: no I/O needed
        keep = conn.h11.their_state is h11.DONE and not self._draining and not self._broker.audit.saturated
        await self._send_quietly(conn, reply, close=not keep)
        return keep and conn.h11.our_state is h11.DONE

    async def _read_head(self, conn: _Connection) -> h11.Request:
        limits = self._limits
        raw = bytearray(conn.h11.trailing_data[0])  # a pipelined request may already be here
        # Idle keep-alive: the first byte of the next request must come within idle_timeout_s...
        if not raw:
            task = asyncio.current_task()
            assert task is not None
            if self._draining:
                raise _Closed
            self._idle[task] = conn.writer
            try:
                async with asyncio.timeout(limits.idle_timeout_s):
                    data = await conn.reader.read(READ_CHUNK)
            except (TimeoutError, ConnectionError, ssl.SSLError):
                raise _Closed from None
            finally:
                self._idle.pop(task, None)
            if not data:
                raise _Closed
            raw += data
            conn.h11.receive_data(data)
        # ...and the whole head within header_timeout_s of it, checked on its raw bytes first.
        known: hygiene.Verdict | None = None  # the request line, once it is complete and sound
        end: int | None = None
        try:
            async with asyncio.timeout(limits.header_timeout_s):
                while True:
                    line = hygiene.first_line(raw) if known is None else None
                    if line is not None:
                        known = hygiene.check_request_line(line)
                        if known.problem is not None:
                            raise _Refused(known.problem, known.method, known.target)
                    end = hygiene.head_end(raw) if known is not None else None
                    if end is not None or len(raw) > limits.max_header_bytes:
                        break
                    data = await conn.reader.read(READ_CHUNK)
                    if not data:  # the peer gave up half-way through a head
                        raise _Refused(Reason.MALFORMED_REQUEST, *_known(known))
                    raw += data
                    conn.h11.receive_data(data)
        except TimeoutError:
            raise _Refused(Reason.HEADER_TIMEOUT, *_known(known)) from None
        except (ConnectionError, ssl.SSLError):
            raise _Closed from None
        if end is None or end > limits.max_header_bytes:
            raise _Refused(Reason.HEADERS_TOO_LARGE, *_known(known))
        verdict = hygiene.check_head(bytes(raw[:end]), limits.max_headers)
        if verdict.problem is not None:
            raise _Refused(verdict.problem, verdict.method, verdict.target)
        try:
            event = conn.h11.next_event()
        except h11.RemoteProtocolError:
            raise _Refused(Reason.MALFORMED_REQUEST, verdict.method, verdict.target) from None
        if not isinstance(event, h11.Request):
            raise _Refused(Reason.MALFORMED_REQUEST, verdict.method, verdict.target)
        return event

    async def _send_quietly(self, conn: _Connection, reply: Reply, *, close: bool = True) -> None:
        try:
            if conn.h11.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                await conn.send(reply, close=close)
            else:
                conn.writer.close()
        except (ConnectionError, ssl.SSLError, h11.LocalProtocolError):
            conn.writer.close()


def _known(line: hygiene.Verdict | None) -> tuple[str | None, str | None]:
    return (None, None) if line is None else (line.method, line.target)


def _declared_length(headers: tuple[tuple[str, str], ...]) -> int | None:
    """The Content-Length h11 accepted, 0 when there is no body, None for a chunked body."""
    if any(name == "transfer-encoding" for name, _ in headers):
        return None
    for name, value in headers:
        if name == "content-length":
            return int(value)
    return 0
