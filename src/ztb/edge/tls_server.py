"""Server-side TLS over an accepted TCP connection, run by the listener itself.

asyncio's own SSL layer (`loop.start_tls`) drops the TLS alert of a failed handshake: it closes
the connection before writing the alert OpenSSL produced, so a caller whose certificate is
refused (none, untrusted, expired, wrong purpose) sees a bare reset and cannot tell a refusal
from an outage. SPEC §1 answers those calls with a *TLS handshake failure*; this layer delivers
it: the alert is written, our side of the connection is shut down (FIN), and what the peer still
sends is read and dropped for a short while before the socket closes, so the alert is not lost to
a reset caused by unread bytes (the request a TLS 1.3 client sends right after its Finished).
Every close of an established connection ends the same way: close_notify and FIN after the last
reply, then the peer's bytes are dropped until it closes too, so a caller still sending a body
that was refused unread reads its refusal. Lingering connections are bounded (`Lingering`).

`TLSServer` is the raw connection's protocol (an `ssl.SSLObject` over memory BIOs) and, once the
handshake has succeeded, the transport of the application protocol handed to it (the listener's
`asyncio.StreamReaderProtocol`), with the parts of `asyncio.Transport` streams use: write,
flow control both ways, close, abort, extra info. It never interprets the bytes it carries.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from typing import Any

READ_CHUNK = 65536
WRITE_CHUNK = 16384  # one TLS record's worth of plaintext per SSLObject.write
LINGER_S = 1.0  # after a refused handshake: how long the peer's further bytes are read and dropped
CLOSE_LINGER_S = 5.0  # after our close: how long we wait for the peer's, dropping what it sends
MAX_LINGERING = 256  # connections lingering at once, per listener; past it, they close at once


class Lingering:
    """A listener's connections still draining after a refused handshake or a close, and how
    many may at once: a flood of them must not hold more sockets than `limit` beyond the
    connection cap (past it, they close at once)."""

    def __init__(self, limit: int = MAX_LINGERING) -> None:
        self.limit = limit
        self.count = 0


class TLSServer(asyncio.Protocol):
    """One accepted connection's TLS: `handshake()`, then the transport of `app`."""

    def __init__(self, context: ssl.SSLContext, app: asyncio.Protocol, lingering: Lingering) -> None:
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._ssl = context.wrap_bio(self._incoming, self._outgoing, server_side=True)
        self._app = app
        self._raw: asyncio.Transport | None = None
        self._handshake: asyncio.Future[None] | None = None
        self._open = False  # handshake done, app connected, not yet lost
        self._closing = False
        self._lost = False
        self._refused = False  # a failed handshake: bytes are dropped until the socket closes
        self._lingering = lingering
        self._counted = False  # counted in `lingering`
        self._app_paused = False  # the app asked us to stop delivering
        self._peer_eof = False  # the peer sent FIN or close_notify
        self._eof_delivered = False
        self._error: Exception | None = None  # why the connection was aborted, for the app
        self.transport = _AppTransport(self)

    # -- the raw connection's protocol -----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._raw = transport  # type: ignore[assignment]  # a stream transport (asyncio's or uvloop's)

    async def handshake(self, raw: asyncio.Transport, timeout_s: float) -> None:
        """Run the handshake on `raw` (reading paused, no byte consumed yet) within `timeout_s`.
        Raises the handshake's `ssl.SSLError` (its alert already on its way to the peer),
        `ConnectionError` if the peer left, `TimeoutError` if it took too long."""
        self._handshake = asyncio.get_running_loop().create_future()
        raw.set_protocol(self)
        self.connection_made(raw)
        self._step_handshake()  # nothing to read yet: a server waits for the ClientHello
        raw.resume_reading()
        try:
            async with asyncio.timeout(timeout_s):
                await self._handshake
        except BaseException:
            if not self._refused:
                raw.abort()
            raise

    def data_received(self, data: bytes) -> None:
        if self._refused or self._closing or self._lost:
            return  # lingering after a refusal or a close: dropped
        self._incoming.write(data)
        if not self._open:
            if self._handshake is not None and not self._handshake.done():
                self._step_handshake()
            if not self._open:
                return
        self._deliver()

    def eof_received(self) -> bool:
        if self._refused or self._closing:
            return False  # the peer is done too: close now
        if not self._open:
            self._fail_handshake(ConnectionResetError("connection closed during the TLS handshake"))
            return False
        # A FIN, with or without close_notify: the app gets what is left, then the end of its
        # stream (`_deliver`), and decides; the socket stays open for writing until it does.
        self._peer_eof = True
        self._deliver()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        if self._counted:
            self._counted = False
            self._lingering.count -= 1
        if not self._open:
            self._fail_handshake(exc or ConnectionResetError("connection closed during the TLS handshake"))
            return
        self._open = False
        self._app.connection_lost(exc or self._error)

    def pause_writing(self) -> None:
        if self._open:
            self._app.pause_writing()

    def resume_writing(self) -> None:
        if self._open:
            self._app.resume_writing()

    # -- handshake --------------------------------------------------------------------------------

    def _step_handshake(self) -> None:
        try:
            self._ssl.do_handshake()
        except ssl.SSLWantReadError:
            self._flush()
            return
        except ssl.SSLError as exc:
            self._refuse(exc)
            return
        self._flush()  # the server's last flight and session tickets
        self._open = True
        assert self._handshake is not None
        if not self._handshake.done():
            self._handshake.set_result(None)
        self._app.connection_made(self.transport)

    def _refuse(self, exc: ssl.SSLError) -> None:
        """Send the alert, shut our side, drop what still comes, close within LINGER_S."""
        self._refused = True
        raw = self._raw
        assert raw is not None
        self._flush()
        if raw.can_write_eof() and self._linger():
            self._shut_then_close(raw, LINGER_S)
        else:
            raw.close()
        self._fail_handshake(exc)

    def _fail_handshake(self, exc: BaseException) -> None:
        if self._handshake is not None and not self._handshake.done():
            self._handshake.set_exception(exc)

    # -- data ---------------------------------------------------------------------------------------

    def _deliver(self) -> None:
        """Hand the app every whole record's plaintext, unless it asked to pause; then, once the
        peer has ended its side, the end of the stream."""
        while self._open and not self._app_paused:
            try:
                chunk = self._ssl.read(READ_CHUNK)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:  # close_notify: the peer is done sending
                self._peer_eof = True
                break
            except ssl.SSLError as exc:  # a corrupt record: the connection cannot go on
                self._flush()  # OpenSSL's alert for it
                self._abort(exc)
                return
            if not chunk:
                self._peer_eof = True
                break
            self._app.data_received(chunk)
        self._flush()  # a key update's answer, if any
        if self._peer_eof and self._open and not self._app_paused and not self._eof_delivered:
            self._eof_delivered = True
            if not self._app.eof_received():
                self._close()

    def _flush(self) -> None:
        if self._outgoing.pending and self._raw is not None and not self._lost:
            self._raw.write(self._outgoing.read())

    def _write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closing or not self._open:
            return
        view = memoryview(data)
        try:
            for start in range(0, len(view), WRITE_CHUNK):
                self._ssl.write(view[start : start + WRITE_CHUNK])
        except ssl.SSLError as exc:
            self._abort(exc)
            return
        self._flush()

    def _close(self) -> None:
        """close_notify and FIN once what is written has gone; then drop what the peer still
        sends until it closes too (at most CLOSE_LINGER_S): a caller still sending a body the
        broker refused unread must get to read the refusal, not a reset (as asyncio's own SSL
        layer does while it waits for the peer's close_notify)."""
        if self._closing:
            return
        self._closing = True
        raw = self._raw
        if self._open:
            with contextlib.suppress(ssl.SSLError):
                self._ssl.unwrap()  # writes close_notify; the peer's is not awaited
            self._flush()
        if raw is None:
            return
        # Nothing to wait for once the peer has ended its side (its bytes were all read).
        if self._open and not self._lost and not self._peer_eof and raw.can_write_eof() and self._linger():
            self._shut_then_close(raw, CLOSE_LINGER_S)
        else:
            raw.close()

    def _shut_then_close(self, raw: asyncio.Transport, linger_s: float) -> None:
        """FIN now (after what is buffered), the socket closed within `linger_s` at the latest."""
        try:
            raw.write_eof()
        except OSError:  # the peer is already gone (reset): nothing to wait for
            raw.close()
            return
        asyncio.get_running_loop().call_later(linger_s, raw.close)

    def _linger(self) -> bool:
        """Take a place among the lingering connections, if one is free."""
        if self._lingering.count >= self._lingering.limit:
            return False
        self._lingering.count += 1
        self._counted = True
        return True

    def _abort(self, exc: Exception | None = None) -> None:
        self._closing = True
        self._error = self._error or exc
        if self._raw is not None:
            self._raw.abort()

    def _pause_reading(self) -> None:
        self._app_paused = True
        if self._raw is not None and not self._lost:
            self._raw.pause_reading()

    def _resume_reading(self) -> None:
        if not self._app_paused:
            return
        self._app_paused = False
        if self._raw is not None and not self._lost:
            self._raw.resume_reading()
        # Plaintext may wait inside the SSLObject already: deliver it without waiting for bytes.
        asyncio.get_running_loop().call_soon(self._deliver)

    def _extra(self, name: str, default: Any) -> Any:
        if name == "ssl_object":
            return self._ssl
        if name == "peercert":
            return self._ssl.getpeercert() if self._open else default
        if name == "cipher":
            return self._ssl.cipher()
        if name == "sslcontext":
            return self._ssl.context
        return default if self._raw is None else self._raw.get_extra_info(name, default)


class _AppTransport(asyncio.Transport):
    """What the application protocol sees: a stream transport that speaks plaintext."""

    def __init__(self, tls: TLSServer) -> None:
        super().__init__()
        self._tls = tls

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._tls._extra(name, default)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self._tls._write(data)

    def writelines(self, list_of_data: Any) -> None:
        self._tls._write(b"".join(list_of_data))

    def can_write_eof(self) -> bool:
        return False  # TLS has no half-close a peer would honour; close() ends both ways

    def write_eof(self) -> None:
        raise NotImplementedError("TLS connections cannot be half-closed")

    def is_closing(self) -> bool:
        return self._tls._closing or self._tls._lost

    def close(self) -> None:
        self._tls._close()

    def abort(self) -> None:
        self._tls._abort()

    def pause_reading(self) -> None:
        self._tls._pause_reading()

    def resume_reading(self) -> None:
        self._tls._resume_reading()

    def is_reading(self) -> bool:
        return not self._tls._app_paused

    def get_write_buffer_size(self) -> int:
        raw = self._tls._raw
        return 0 if raw is None else raw.get_write_buffer_size()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        raw = self._tls._raw
        if raw is not None:
            raw.set_write_buffer_limits(high, low)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._tls._app

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._tls._app = protocol  # type: ignore[assignment]
