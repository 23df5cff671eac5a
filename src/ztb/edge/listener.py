"""The data-plane listener: TLS, then HTTP/1.1 framing (llhttp, via httptools), then the broker core.

It works from the raw request target and raw body bytes; it never routes on `Host`, never
percent-decodes, never normalises a path and never lets a caller's framing reach an upstream.
TLS is negotiated by the listener itself after accept, so a failed handshake (no certificate,
untrusted certificate) is seen and audited as an `identity` entry, folded per source per second.
The raw head bytes are kept until the head is complete and checked by `hygiene` before llhttp
interprets any of them (the request line as soon as it is complete), so llhttp's leniencies
never decide. The request line is hygiene's alone: it matched `METHOD SP target SP HTTP/1.1`
exactly, so its method and target are those bytes, and llhttp parses the header block and the
body behind a fixed stand-in line (`_STAND_IN`). llhttp's own request-line grammar (no
authority-form except for CONNECT, a fixed method list, PRI special-cased) is narrower than
hygiene's, and must not turn a target the allowlist gate judges (after identity and scope)
into an edge refusal. llhttp frames one request at a time (`Message`): it is given the head,
then exactly the body bytes that can belong to this request, so bytes after it are the next
request's and are judged by hygiene again before any parser sees them.
Every limit of SPEC §2 is enforced here: header block size and count, header and body time,
idle keep-alive, and a cap on concurrent connections. Anything it cannot parse is refused with
an entry, never a 500. Responses are written as bytes here: status line, the reply's headers,
`content-length`, and `connection: close` when the connection closes after them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import ssl
from collections.abc import Callable
from http import HTTPStatus
from typing import cast

import httptools

from ztb.broker import TOKEN_PATH, Broker, Reply
from ztb.config.broker import Limits
from ztb.edge import hygiene
from ztb.edge.tls import client_cert_facts, handshake_reason
from ztb.edge.tls_server import Lingering, TLSServer
from ztb.gates.base import BodyTimeout, BodyTooLarge, Peer
from ztb.reasons import Reason

log = logging.getLogger("ztb.edge")
READ_CHUNK = 65536
MAX_MINT_BODY = 4096
# What llhttp sees instead of the caller's request line (see the module docstring). For requests
# llhttp frames a body by Content-Length / Transfer-Encoding alone, whatever the method, except
# CONNECT, which this line never is.
_STAND_IN = b"POST / HTTP/1.1\r\n"
_PHRASES = {status.value: status.phrase for status in HTTPStatus}
# Header lines of a reply: token names, visible ASCII values with inner spaces or tabs. A reply
# that breaks this (an upstream's odd header) is not sent: the connection is closed instead.
_REPLY_FIELDS = re.compile(
    r"(?:[!#$%&'*+\-.^_`|~0-9A-Za-z]+: (?:[\x21-\x7e](?:[\x20-\x7e\t]*[\x21-\x7e])?)?\r\n)*"
)
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
# What llhttp raises; an upgrade (CONNECT, or `Upgrade`, which hygiene refuses) is not an
# HttpParserError, and is refused all the same.
PARSER_ERRORS = (httptools.HttpParserError, httptools.HttpParserUpgrade)


class _Closed(Exception):
    """The peer went away or went silent between requests: nothing to answer."""


class _Refused(Exception):
    def __init__(self, reason: Reason, method: str | None = None, target: str | None = None) -> None:
        super().__init__(reason.value)
        self.reason = reason
        self.method = method
        self.target = target


class _Overrun(Exception):
    """llhttp began a second message: the feeding rule of `Message.feed` was broken."""


class _Scout:
    """llhttp's callbacks for a second parser that runs ahead on a chunked body: it only says
    whether (and stops where) the request ends, and copies nothing."""

    def __init__(self) -> None:
        self.begun = False
        self.complete = False

    def on_message_begin(self) -> None:
        if self.begun:
            raise _Overrun  # stops it at once: it is never asked anything past the end
        self.begun = True

    def on_message_complete(self) -> None:
        self.complete = True


class Message:
    """One request as llhttp frames it, sans I/O: the head (already judged by `hygiene`) when it
    is made, then body bytes as they arrive (`feed`). Nothing past the end of this request is
    ever given to its parser, so the bytes after it can be judged as the next request's head.
    Raises one of `PARSER_ERRORS` for anything llhttp refuses."""

    def __init__(self, head: bytes, line_length: int) -> None:
        """`head` is a whole request head; its first `line_length` bytes are the request line."""
        self.headers: list[tuple[bytes, bytes]] = []  # names lowercased, as they came
        self.chunks: list[bytes] = []  # the body so far, chunked framing removed
        self.size = 0
        self.complete = False
        self._begun = False
        self._in_head = True
        self._parser = self._start(self, head, line_length)
        if self._in_head:
            raise httptools.HttpParserError("the head did not end where hygiene saw it end")
        self.declared: int | None = 0  # Content-Length, 0 without a body, None when chunked
        self.close = False  # close after the reply: `Connection: close` sent, or the body too large
        self.expects_continue = False  # the caller sent `Expect: 100-continue`
        for name, value in self.headers:
            if name == b"transfer-encoding":
                self.declared = None
            elif name == b"content-length" and self.declared is not None:
                self.declared = int(value)
            elif name == b"connection":
                self.close = self.close or b"close" in _tokens(value)
            elif name == b"expect":
                self.expects_continue = self.expects_continue or b"100-continue" in _tokens(value)
        self._scout = _Scout()
        self._scouting = self._start(self._scout, head, line_length) if self.declared is None else None

    @staticmethod
    def _start(protocol: object, head: bytes, line_length: int) -> httptools.HttpRequestParser:
        parser = httptools.HttpRequestParser(protocol)
        parser.feed_data(_STAND_IN)
        parser.feed_data(memoryview(head)[line_length:])
        return parser

    def feed(self, data: bytes) -> bytes:
        """Give llhttp the part of `data` that belongs to this request's body; return the rest
        (the start of the next request, or b""). A Content-Length body is fed to its last byte.
        A chunked body is fed whole while the scout, fed the same bytes first, sees it go on;
        where it ends, it is fed up to each LF in turn (it can only end right after one)."""
        if self.complete:
            return data
        view = memoryview(data)
        if self.declared is not None:
            end = min(len(data), self.declared - self.size)
            self._parser.feed_data(view[:end])
            if self.size == self.declared and not self.complete:
                raise httptools.HttpParserError("the body did not end at its Content-Length")
            return data[end:]
        if not self._ends_in(view):
            self._parser.feed_data(view)
            return b""
        pos = 0
        while pos < len(data) and not self.complete:
            end = data.find(b"\n", pos) + 1 or len(data)
            self._parser.feed_data(view[pos:end])
            pos = end
        return data[pos:]

    def _ends_in(self, view: memoryview) -> bool:
        """Whether the chunked body ends (or breaks) within `view`, by the scout."""
        assert self._scouting is not None
        try:
            self._scouting.feed_data(view)
        except PARSER_ERRORS:
            return True  # the parser itself meets the error, line by line
        return self._scout.complete

    # llhttp's callbacks

    def on_message_begin(self) -> None:
        if self._begun:
            raise _Overrun
        self._begun = True

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._in_head:  # after the head: a chunked body's trailer, dropped
            self.headers.append((name.lower(), value.strip(b" \t")))  # OWS, as RFC 9112 §5.1

    def on_headers_complete(self) -> None:
        self._in_head = False

    def on_body(self, data: bytes) -> None:
        self.chunks.append(data)
        self.size += len(data)

    def on_message_complete(self) -> None:
        self.complete = True


def _tokens(value: bytes) -> list[bytes]:
    """The elements of a comma-separated header value, lowercased."""
    return [token.strip(b" \t").lower() for token in value.split(b",")]


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

    def __init__(self, conn: _Connection, message: Message, timeout_s: float) -> None:
        self._conn = conn
        self._message = message
        self._timeout = timeout_s

    def declared_length(self) -> int | None:
        return self._message.declared

    async def read(self, limit: int) -> bytes:
        conn, message = self._conn, self._message
        if message.expects_continue and not message.complete:
            message.expects_continue = False
            conn.writer.write(CONTINUE)  # only now that the body is wanted
        # One deadline for the whole body; only the reads wait (a body that came with its head,
        # the usual case, is framed without any timer).
        deadline = asyncio.get_running_loop().time() + self._timeout
        try:
            while True:
                if conn.pending:
                    conn.pending = message.feed(conn.pending)
                if message.size > limit:
                    message.close = True  # even if it all arrived: not reused after it
                    raise BodyTooLarge
                if message.complete:
                    return b"".join(message.chunks)
                async with asyncio.timeout_at(deadline):
                    conn.pending = await conn.reader.read(READ_CHUNK)
                if not conn.pending:
                    raise BodyTimeout  # the connection ended mid-body
        except TimeoutError:
            raise BodyTimeout from None
        except (*PARSER_ERRORS, ConnectionError, ssl.SSLError):
            raise BodyTimeout from None


class _Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.pending = b""  # received, not yet framed: the rest of a body, or the next request


class Listener:
    def __init__(self, broker: Broker, ssl_context: ssl.SSLContext, limits: Limits) -> None:
        self._broker = broker
        self._ssl = ssl_context
        self._limits = limits
        self._fold = _Fold(broker.record_tls_rejection)
        self._lingering = Lingering()  # connections draining after a refused handshake or a close
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
        tls = TLSServer(self._ssl, protocol, self._lingering)
        try:
            # A refused handshake's alert reaches the caller (see ztb.edge.tls_server).
            await tls.handshake(raw, self._limits.header_timeout_s)
        except TimeoutError:
            limit = self._limits.header_timeout_s
            self._fold.rejected(
                addr, Reason.TLS_HANDSHAKE_FAILED, f"TLS handshake not done within {limit:g} s"
            )
            return
        except (ssl.SSLError, ConnectionError, OSError) as exc:
            self._fold.rejected(addr, handshake_reason(exc), str(exc))
            return
        except asyncio.CancelledError:
            return
        writer = asyncio.StreamWriter(tls.transport, protocol, reader, loop)
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
        conn = _Connection(reader, writer)
        while await self._one_request(conn, peer):
            pass

    async def _one_request(self, conn: _Connection, peer: Peer) -> bool:
        """Serve one request; True when the connection may carry another."""
        try:
            message, method, target = await self._read_head(conn)
        except _Closed:
            return False
        except _Refused as refused:
            reply = self._broker.refuse_at_edge(peer, refused.reason, refused.method, refused.target)
            await self._send_quietly(conn, reply)
            return False
        headers = tuple((name.decode("latin-1"), value.decode("latin-1")) for name, value in message.headers)
        body = _Body(conn, message, self._limits.body_timeout_s)
        if target == TOKEN_PATH and method == "POST":
            try:
                data = await body.read(MAX_MINT_BODY)
            except (BodyTooLarge, BodyTimeout):
                data = b"\x00"  # refused by the mint's own parser as a bad token request
            reply = await self._broker.mint(peer, data)
        else:
            call = self._broker.new_call(peer, method, target, headers, body)
            reply = await self._broker.handle(call)
        # Reused only when this request was read to its end (a body the handler left unread
        # would be taken for the next head), neither the caller nor an oversize body asks to
        # close, and it was no CONNECT (as with h11: a CONNECT never leaves the connection to HTTP).
        keep = (
            message.complete
            and not message.close
            and method != "CONNECT"
            and not self._draining
            and not self._broker.audit.saturated
        )
        sent = await self._send_quietly(conn, reply, close=not keep, head_only=method == "HEAD")
        return keep and sent

    async def _read_head(self, conn: _Connection) -> tuple[Message, str, str]:
        """The next request's head, judged by hygiene, then framed by llhttp; with its method and
        target as the request line has them."""
        limits = self._limits
        raw = bytearray(conn.pending)  # a pipelined request may already be here
        conn.pending = b""
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
        # ...and the whole head within header_timeout_s of it, checked on its raw bytes first.
        known: hygiene.Verdict | None = None  # the request line, once it is complete and sound
        end: int | None = None
        deadline = asyncio.get_running_loop().time() + limits.header_timeout_s  # only reads wait
        try:
            while True:
                line = hygiene.first_line(raw) if known is None else None
                if line is not None:
                    known = hygiene.check_request_line(line)
                    if known.problem is not None:
                        raise _Refused(known.problem, known.method, known.target)
                end = hygiene.head_end(raw) if known is not None else None
                if end is not None or len(raw) > limits.max_header_bytes:
                    break
                async with asyncio.timeout_at(deadline):
                    data = await conn.reader.read(READ_CHUNK)
                if not data:  # the peer gave up half-way through a head
                    raise _Refused(Reason.MALFORMED_REQUEST, *_known(known))
                raw += data
        except TimeoutError:
            raise _Refused(Reason.HEADER_TIMEOUT, *_known(known)) from None
        except (ConnectionError, ssl.SSLError):
            raise _Closed from None
        if end is None or end > limits.max_header_bytes:
            raise _Refused(Reason.HEADERS_TOO_LARGE, *_known(known))
        head = bytes(raw[:end])
        verdict = hygiene.check_head(head, limits.max_headers)
        if verdict.problem is not None:
            raise _Refused(verdict.problem, verdict.method, verdict.target)
        conn.pending = bytes(raw[end:])
        # Only now does a parser see the head. The line is exactly METHOD SP target SP HTTP/1.1.
        line_length = head.index(b"\n") + 1
        method, target, _ = head[: line_length - 2].decode("ascii").split(" ")
        try:
            return Message(head, line_length), method, target
        except PARSER_ERRORS:
            raise _Refused(Reason.MALFORMED_REQUEST, verdict.method, verdict.target) from None

    async def _send_quietly(
        self, conn: _Connection, reply: Reply, *, close: bool = True, head_only: bool = False
    ) -> bool:
        """Write `reply`; False when it could not be (the connection is then closed)."""
        data = _encode(reply, close=close, head_only=head_only)
        if data is None:  # not a reply HTTP/1.1 can carry: close rather than send it
            conn.writer.close()
            return False
        try:
            conn.writer.write(data)
            await conn.writer.drain()
        except (ConnectionError, ssl.SSLError):
            conn.writer.close()
            return False
        return True


def _known(line: hygiene.Verdict | None) -> tuple[str | None, str | None]:
    return (None, None) if line is None else (line.method, line.target)


def _encode(reply: Reply, *, close: bool, head_only: bool) -> bytes | None:
    """The reply as bytes: status line, headers, content-length, `connection: close` when the
    connection closes after it, then the body (none for HEAD, 204 and 304). None for a reply
    HTTP/1.1 cannot carry (a status outside 200-999, a header that is not a token and a value)."""
    if not 200 <= reply.status <= 999:
        return None
    fields = "".join(f"{name}: {value}\r\n" for name, value in reply.headers)
    if _REPLY_FIELDS.fullmatch(fields) is None:
        return None
    status = f"HTTP/1.1 {reply.status} {_PHRASES.get(reply.status, '')}\r\n"
    framing = f"content-length: {len(reply.body)}\r\n" + ("connection: close\r\n" if close else "")
    head = (status + fields + framing + "\r\n").encode("ascii")
    if head_only or reply.status in (204, 304):
        return head
    return head + reply.body
