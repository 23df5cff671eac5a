"""The asynchronous caller: the same library on aiohttp, safe to share between tasks.

`AsyncClient` mints on demand per (upstream, scope), lives on ZTB-Next-Token rotation and
raises the typed exceptions of ztb.client.response, exactly like the synchronous `Client`;
its connections are pooled (keep-alive) by aiohttp. Request targets are sent as given
(`encoded=True`), but aiohttp frames the request itself: for byte-exact hostile requests use
the synchronous `Caller.request`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiohttp
from yarl import URL

from ztb.client.response import (
    BrokerError,
    BrokerUnavailable,
    CertificateRefused,
    Response,
    refusal,
    tls_refusal,
)
from ztb.client.sync import STALE_TOKEN_REASONS, TOKEN_PATH, client_context, encode_body, parse_broker_url
from ztb.client.tokens import Key, TokenCache

_SKIP_AUTO = frozenset({"User-Agent", "Accept", "Accept-Encoding", "Content-Type"})


class AsyncClient:
    """One caller identity talking to one broker from async code.

    async with AsyncClient("https://broker:8443", cert, key, ca) as client:
        answer = await client.get("orders.api.internal", "/v1/orders", scope="orders:read")
    """

    def __init__(
        self,
        broker_url: str,
        cert: Path | None,
        key: Path | None,
        ca: Path,
        *,
        timeout_s: float = 15,
        max_connections: int = 32,
    ) -> None:
        self.host, self.port = parse_broker_url(broker_url)
        self._ctx = client_context(cert, key, ca)
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None
        self.tokens = TokenCache()

    @classmethod
    def for_identity(cls, deployment: Path, identity: str, broker_url: str) -> AsyncClient:
        """A client using the development certificate `ztb init` made for `identity`."""
        folder = deployment / "callers" / identity
        return cls(broker_url, folder / "cert.pem", folder / "key.pem", deployment / "ca" / "ca.pem")

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(ssl=self._ctx, limit=self._max_connections)
            self._session = aiohttp.ClientSession(
                connector=connector, timeout=self._timeout, auto_decompress=False
            )
        return self._session

    # -- the low level -------------------------------------------------------------------------

    async def request(
        self, method: str, target: str, body: bytes | None = None, headers: dict[str, str] | None = None
    ) -> Response:
        """Send one request (target as given) and read the whole response; a pooled connection the
        broker closed before answering is replaced once. BrokerUnavailable if undeliverable."""
        url = URL(f"https://{self.host}:{self.port}{target}", encoded=True)
        session = self._get_session()
        for attempt in (1, 2):
            try:
                async with session.request(
                    method,
                    url,
                    data=body,
                    headers=headers,
                    allow_redirects=False,
                    skip_auto_headers=_SKIP_AUTO,
                ) as answer:
                    data = await answer.read()
                    return Response(answer.status, {k.lower(): v for k, v in answer.headers.items()}, data)
            except aiohttp.ClientConnectorCertificateError:
                raise  # the broker's certificate is not trusted: a configuration error, not an outage
            except aiohttp.ClientConnectorError as exc:
                refused = _certificate_refused(exc)
                if refused is not None:
                    raise refused from exc
                raise BrokerUnavailable(
                    f"cannot connect to the broker at {self.host}:{self.port}: {exc}"
                ) from exc
            except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
                refused = _certificate_refused(exc)
                if refused is not None:  # TLS 1.3: the alert comes on the first read
                    raise refused from exc
                if attempt == 2:
                    raise BrokerUnavailable(
                        f"the broker at {self.host}:{self.port} closed the connection before answering "
                        "(draining, restarting, or refusing this client certificate)"
                    ) from exc
        raise AssertionError("unreachable")

    async def mint(self, upstream: str, scope: str) -> str:
        """A fresh single-use token for `scope` on `upstream`; ScopeRefused if not granted."""
        body = json.dumps({"upstream": upstream, "scope": scope}).encode()
        response = await self.request("POST", TOKEN_PATH, body, {"Content-Type": "application/json"})
        return self._minted((upstream, scope), response)

    def _minted(self, key: Key, response: Response) -> str:
        if response.status != 200:
            raise refusal(response) or BrokerError(response.status, "", "unexpected_answer", response.call_id)
        answer = response.json()
        token = answer["access_token"]
        assert isinstance(token, str)
        self.tokens.learn_ttl(key, float(answer["expires_in"]))
        return token

    async def call(
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
        return await self.request(method, f"/{upstream}{path}", body, all_headers)

    # -- the library -----------------------------------------------------------------------------

    async def send(
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
        """Make a brokered call with a rotation token if one is held, else a fresh mint; raises
        a BrokerError subclass when the broker refuses (see `Client.send`)."""
        key = (upstream, scope)
        data = encode_body(body, json)
        while True:
            token = self.tokens.take(key)
            cached = token is not None
            if token is None:
                token = await self.mint(upstream, scope)
            response = await self.call(method, upstream, path, token=token, body=data, headers=headers)
            if response.next_token is not None:
                self.tokens.put(key, response.next_token)
            refused = refusal(response)
            if refused is None:
                return response
            if not (cached and refused.reason in STALE_TOKEN_REASONS):
                raise refused
            self.tokens.drop(key)  # the next round mints, so this loop runs at most twice

    async def get(
        self, upstream: str, path: str, *, scope: str, headers: dict[str, str] | None = None
    ) -> Response:
        return await self.send("GET", upstream, path, scope=scope, headers=headers)

    async def delete(
        self, upstream: str, path: str, *, scope: str, headers: dict[str, str] | None = None
    ) -> Response:
        return await self.send("DELETE", upstream, path, scope=scope, headers=headers)

    async def post(
        self,
        upstream: str,
        path: str,
        *,
        scope: str,
        json: Any = None,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> Response:
        return await self.send("POST", upstream, path, scope=scope, json=json, body=body, headers=headers)

    async def put(
        self,
        upstream: str,
        path: str,
        *,
        scope: str,
        json: Any = None,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> Response:
        return await self.send("PUT", upstream, path, scope=scope, json=json, body=body, headers=headers)

    async def patch(
        self,
        upstream: str,
        path: str,
        *,
        scope: str,
        json: Any = None,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> Response:
        return await self.send("PATCH", upstream, path, scope=scope, json=json, body=body, headers=headers)


def _certificate_refused(exc: aiohttp.ClientError) -> CertificateRefused | None:
    """The broker's handshake alert inside aiohttp's wrapping of it, if that is what this is."""
    for cause in (getattr(exc, "os_error", None), exc.__cause__, exc):
        refused = tls_refusal(cause) if isinstance(cause, BaseException) else None
        if refused is not None:
            return refused
    return None
