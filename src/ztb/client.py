"""A caller's side of ztb: hold a client certificate, mint tokens, make brokered calls.

Synchronous, standard library only (http.client over ssl), so it can run anywhere a service
runs. It sends exactly what it is given: callers that want to test the broker with odd request
targets can. Errors from the broker come back as `BrokerError` with gate, reason and call id.
"""

from __future__ import annotations

import http.client
import json
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    headers: dict[str, str]  # lowercased names
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def error(self) -> dict[str, str] | None:
        """The broker's refusal body, when this is one."""
        if self.status < 400 or self.headers.get("content-type") != "application/json":
            return None
        try:
            payload = json.loads(self.body)
        except ValueError:
            return None
        error = payload.get("error") if isinstance(payload, dict) else None
        return error if isinstance(error, dict) else None


class BrokerError(Exception):
    def __init__(self, response: Response) -> None:
        error = response.error or {}
        self.status = response.status
        self.gate = error.get("gate")
        self.reason = error.get("reason")
        self.call_id = error.get("call_id")
        super().__init__(f"{self.status} {self.gate}/{self.reason} (call {self.call_id})")


def client_context(cert: Path | None, key: Path | None, ca: Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_verify_locations(cafile=ca)
    if cert is not None and key is not None:
        ctx.load_cert_chain(cert, key)
    return ctx


class Caller:
    """One caller identity talking to one broker; a connection is kept alive between calls."""

    def __init__(self, broker_url: str, cert: Path | None, key: Path | None, ca: Path, timeout_s: float = 15) -> None:
        parts = urlsplit(broker_url)
        if parts.scheme != "https" or parts.hostname is None:
            raise ValueError(f"broker URL must be https://host:port, not {broker_url!r}")
        self.host = parts.hostname
        self.port = parts.port or 443
        self._ctx = client_context(cert, key, ca)
        self._timeout = timeout_s
        self._conn: http.client.HTTPSConnection | None = None

    @classmethod
    def for_identity(cls, deployment: Path, identity: str, broker_url: str) -> Caller:
        """A caller using the development certificate `ztb init` made for `identity`."""
        folder = deployment / "callers" / identity
        return cls(broker_url, folder / "cert.pem", folder / "key.pem", deployment / "ca" / "ca.pem")

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def request(
        self, method: str, target: str, body: bytes | None = None, headers: dict[str, str] | None = None
    ) -> Response:
        """Send one request as given (target verbatim) and read the whole response."""
        if self._conn is None:
            self._conn = http.client.HTTPSConnection(self.host, self.port, context=self._ctx, timeout=self._timeout)
        conn = self._conn
        all_headers = {"Host": f"{self.host}:{self.port}", **(headers or {})}
        try:
            conn.putrequest(method, target, skip_host=True, skip_accept_encoding=True)
            for name, value in all_headers.items():
                conn.putheader(name, value)
            if body is not None:
                conn.putheader("Content-Length", str(len(body)))
            conn.endheaders(body)
            raw = conn.getresponse()
            data = raw.read()
        except Exception:
            self.close()
            raise
        response = Response(raw.status, {k.lower(): v for k, v in raw.getheaders()}, data)
        if raw.will_close:
            self.close()
        return response

    def mint(self, upstream: str, scope: str) -> str:
        body = json.dumps({"upstream": upstream, "scope": scope}).encode()
        response = self.request("POST", "/.ztb/token", body, {"Content-Type": "application/json"})
        if response.status != 200:
            raise BrokerError(response)
        token = response.json()["access_token"]
        assert isinstance(token, str)
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
        all_headers = {"Authorization": f"Bearer {token}", **(headers or {})}
        if body is not None:
            all_headers.setdefault("Content-Type", "application/json")
        return self.request(method, f"/{upstream}{path}", body, all_headers)
