"""The synchronous caller: standard library only (http.client over ssl), one kept-alive
connection per object. Not thread-safe: give each thread its own.

`Caller` is the low level: it sends exactly what it is given (request targets verbatim, any
header), mints when asked and returns every answer as a `Response`. `Client` builds on it:
it mints on demand per (upstream, scope), lives on ZTB-Next-Token rotation, and raises the
typed exceptions of ztb.client.response for the broker's refusals.
"""

from __future__ import annotations

import http.client
import json
import ssl
from pathlib import Path
from typing import Any, Self
from urllib.parse import urlsplit

from ztb.client.response import BrokerError, BrokerUnavailable, Response, refusal, tls_refusal
from ztb.client.tokens import Key, TokenCache
from ztb.reasons import Reason

TOKEN_PATH = "/.ztb/token"
# A cached token the broker no longer knows (it restarted with an in-process store) or that
# aged out: the call was refused by the scope gate, nothing was forwarded, a fresh mint is safe.
STALE_TOKEN_REASONS = frozenset({Reason.UNKNOWN_TOKEN.value, Reason.TOKEN_EXPIRED.value})
# The connection died before any byte of an answer: resending is safe, because the broker never
# forwards a token twice (at worst the retry is refused as a replay).
_NO_ANSWER = (
    http.client.RemoteDisconnected,
    ConnectionResetError,
    BrokenPipeError,
    ConnectionAbortedError,
    ssl.SSLEOFError,
    ssl.SSLZeroReturnError,
)


def client_context(cert: Path | None, key: Path | None, ca: Path) -> ssl.SSLContext:
    """TLS 1.3 client context trusting `ca` for the broker, presenting cert/key if given."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_verify_locations(cafile=ca)
    if cert is not None and key is not None:
        ctx.load_cert_chain(cert, key)
    return ctx


def parse_broker_url(broker_url: str) -> tuple[str, int]:
    parts = urlsplit(broker_url)
    if parts.scheme != "https" or parts.hostname is None or parts.path not in ("", "/"):
        raise ValueError(f"broker URL must be https://host:port, not {broker_url!r}")
    return parts.hostname, parts.port or 443


def encode_body(body: bytes | None, json_body: Any) -> bytes | None:
    if json_body is not None:
        if body is not None:
            raise ValueError("give body or json, not both")
        return json.dumps(json_body, separators=(",", ":"), ensure_ascii=False).encode()
    return body


class Caller:
    """One caller identity talking to one broker; a connection is kept alive between calls."""

    def __init__(
        self, broker_url: str, cert: Path | None, key: Path | None, ca: Path, timeout_s: float = 15
    ) -> None:
        self.host, self.port = parse_broker_url(broker_url)
        self._ctx = client_context(cert, key, ca)
        self._timeout = timeout_s
        self._conn: http.client.HTTPSConnection | None = None
        self.tokens = TokenCache()

    @classmethod
    def for_identity(cls, deployment: Path, identity: str, broker_url: str) -> Self:
        """A caller using the development certificate `ztb init` made for `identity`."""
        folder = deployment / "callers" / identity
        return cls(broker_url, folder / "cert.pem", folder / "key.pem", deployment / "ca" / "ca.pem")

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    # -- the low level -------------------------------------------------------------------------

    def request(
        self, method: str, target: str, body: bytes | None = None, headers: dict[str, str] | None = None
    ) -> Response:
        """Send one request as given (target verbatim) and read the whole response.

        A kept-alive connection the broker closed before answering is replaced and the request
        sent once more; BrokerUnavailable when it cannot be delivered at all."""
        for attempt in (1, 2):
            conn = self._connection()
            try:
                raw = self._send(conn, method, target, body, headers)
            except _NO_ANSWER as exc:
                self.close()
                if attempt == 1:
                    continue
                raise BrokerUnavailable(
                    f"the broker at {self.host}:{self.port} closed the connection before answering "
                    "(draining, restarting, or refusing this client certificate)"
                ) from exc
            except ssl.SSLError as exc:  # TLS 1.3: a refused certificate's alert comes on the first read
                self.close()
                refused = tls_refusal(exc)
                if refused is None:
                    raise
                raise refused from exc
            except BaseException:
                self.close()
                raise
            try:
                data = raw.read()
            except BaseException:
                self.close()
                raise
            response = Response(raw.status, {k.lower(): v for k, v in raw.getheaders()}, data)
            if raw.will_close:
                self.close()
            return response
        raise AssertionError("unreachable")

    def _connection(self) -> http.client.HTTPSConnection:
        if self._conn is None:
            conn = http.client.HTTPSConnection(self.host, self.port, context=self._ctx, timeout=self._timeout)
            try:
                conn.connect()
            except ssl.SSLCertVerificationError:
                raise  # the broker's certificate is not trusted: a configuration error, not an outage
            except OSError as exc:
                refused = tls_refusal(exc)
                if refused is not None:
                    raise refused from exc
                raise BrokerUnavailable(
                    f"cannot connect to the broker at {self.host}:{self.port}: {exc}"
                ) from exc
            self._conn = conn
        return self._conn

    def _send(
        self,
        conn: http.client.HTTPSConnection,
        method: str,
        target: str,
        body: bytes | None,
        headers: dict[str, str] | None,
    ) -> http.client.HTTPResponse:
        all_headers = {"Host": f"{self.host}:{self.port}", **(headers or {})}
        conn.putrequest(method, target, skip_host=True, skip_accept_encoding=True)
        for name, value in all_headers.items():
            conn.putheader(name, value)
        if body is not None:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        return conn.getresponse()

    def mint(self, upstream: str, scope: str) -> str:
        """A fresh single-use token for `scope` on `upstream`; ScopeRefused if not granted."""
        body = json.dumps({"upstream": upstream, "scope": scope}).encode()
        response = self.request("POST", TOKEN_PATH, body, {"Content-Type": "application/json"})
        return self._minted((upstream, scope), response)

    def _minted(self, key: Key, response: Response) -> str:
        if response.status != 200:
            raise refusal(response) or BrokerError(response.status, "", "unexpected_answer", response.call_id)
        answer = response.json()
        token = answer["access_token"]
        assert isinstance(token, str)
        self.tokens.learn_ttl(key, float(answer["expires_in"]))
        return token

    def call(
        self,
        method: str,
        upstream: str,
        path: str,
        *,
        token: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> Response:
        """One brokered call with the given token; every answer, refusals included, is returned."""
        all_headers = {"Authorization": f"Bearer {token}", **(headers or {})}
        if body is not None:
            all_headers.setdefault("Content-Type", "application/json")
        return self.request(method, f"/{upstream}{path}", body, all_headers)


class Client(Caller):
    """The caller's library: tokens are minted and rotated for you, refusals raise.

    with Client("https://broker:8443", cert, key, ca) as client:
        order = client.post("orders.api.internal", "/v1/orders/create",
                            scope="orders:create", json={...}).json()
    """

    def send(
        self,
        method: str,
        upstream: str,
        path: str,
        *,
        scope: str,
        body: bytes | None = None,
        json: Any = None,
        headers: dict[str, str] | None = None,
    ) -> Response:
        """Make a brokered call: a rotation token if one is held, else a fresh mint.

        Returns the upstream's answer (any status); raises a BrokerError subclass when the broker
        refuses, BrokerUnavailable when the request could not be delivered."""
        key = (upstream, scope)
        data = encode_body(body, json)
        while True:
            token = self.tokens.take(key)
            cached = token is not None
            if token is None:
                token = self.mint(upstream, scope)
            response = self.call(method, upstream, path, token=token, body=data, headers=headers)
            if response.next_token is not None:
                self.tokens.put(key, response.next_token)
            refused = refusal(response)
            if refused is None:
                return response
            if not (cached and refused.reason in STALE_TOKEN_REASONS):
                raise refused
            self.tokens.drop(key)  # the next round mints, so this loop runs at most twice

    def get(self, upstream: str, path: str, *, scope: str, headers: dict[str, str] | None = None) -> Response:
        return self.send("GET", upstream, path, scope=scope, headers=headers)

    def delete(
        self, upstream: str, path: str, *, scope: str, headers: dict[str, str] | None = None
    ) -> Response:
        return self.send("DELETE", upstream, path, scope=scope, headers=headers)

    def post(
        self,
        upstream: str,
        path: str,
        *,
        scope: str,
        json: Any = None,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> Response:
        return self.send("POST", upstream, path, scope=scope, json=json, body=body, headers=headers)

    def put(
        self,
        upstream: str,
        path: str,
        *,
        scope: str,
        json: Any = None,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> Response:
        return self.send("PUT", upstream, path, scope=scope, json=json, body=body, headers=headers)

    def patch(
        self,
        upstream: str,
        path: str,
        *,
        scope: str,
        json: Any = None,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> Response:
        return self.send("PATCH", upstream, path, scope=scope, json=json, body=body, headers=headers)
