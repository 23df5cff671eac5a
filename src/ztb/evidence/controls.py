"""What the control scripts in controls/ share: talking to a live broker as a caller, reading
its audit log from disk, running an instrumented upstream at the registry's address, and
recording each check as evidence.

A control is a script, `controls/<name>.py --deployment DIR [--broker URL] [--json]`, that
probes a running broker of DIR from outside, exactly as a caller or an attacker would, and
prints what it saw. Exit 0 pass, 1 fail, 2 cannot run (bad arguments). Controls that must see
what reaches the upstream bind the registry's upstream address themselves for their duration
(the broker only ever connects there), so the sample upstream must not be running then.

This module never decides a verdict for a control: each check is a comparison of what was
expected with what was observed, and a control passes only if it ran at least one check and
every check held (an empty control is a failure, never trivially valid).
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import socket
import ssl
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ztb import pki
from ztb.audit.reader import LogNotFound, LogReadError, find_logs, read_entries
from ztb.client import Caller, Response, client_context
from ztb.config import BrokerConfig, ConfigError, load_broker_config
from ztb.config.registry import REGISTRY_FILE, read_spec
from ztb.sample.local import LoopThread
from ztb.sample.upstream import ReceivedRequest, RequestHook, SampleUpstream

SAMPLE_UPSTREAM = "orders.api.internal"
CREATE = "/v1/orders/create"


@dataclass
class Check:
    """One observation: what was done, what a correct broker does, what this one did."""

    name: str
    expected: str
    got: str
    ok: bool
    detail: str = ""
    call_id: str | None = None
    entry: dict[str, Any] | None = None  # the audit entry that recorded it (seq, kind, decision, ...)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "ok": self.ok,
            "expected": self.expected,
            "got": self.got,
            "detail": self.detail,
            "call_id": self.call_id,
            "entry": self.entry,
        }


@dataclass
class Result:
    control: str
    title: str
    checks: list[Check] = field(default_factory=list)
    error: str | None = None  # the control could not run to the end

    @property
    def ok(self) -> bool:
        return self.error is None and bool(self.checks) and all(c.ok for c in self.checks)

    def to_json(self) -> dict[str, Any]:
        return {
            "control": self.control,
            "title": self.title,
            "ok": self.ok,
            "error": self.error,
            "checks": [c.to_json() for c in self.checks],
        }

    def to_text(self) -> str:
        lines = [f"control {self.control}: {self.title}"]
        for c in self.checks:
            lines.append(f"  {'PASS' if c.ok else 'FAIL'}  {c.name}")
            lines.append(f"        expected {c.expected}; got {c.got}")
            if c.detail:
                lines.append(f"        {c.detail}")
            if c.entry is not None:
                lines.append(f"        audit: {_entry_text(c.entry)}")
        if self.error is not None:
            lines.append(f"  FAIL  the control could not finish: {self.error}")
        passed = sum(c.ok for c in self.checks)
        lines.append(f"verdict: {'PASS' if self.ok else 'FAIL'} ({passed} of {len(self.checks)} checks held)")
        return "\n".join(lines)


def _entry_text(entry: dict[str, Any]) -> str:
    parts = [f"seq {entry.get('seq')}", str(entry.get("kind"))]
    for key in ("decision", "gate", "reason", "error", "status", "count"):
        if entry.get(key) is not None:
            parts.append(f"{key}={entry[key]}")
    parts.append(str(entry.get("hash", ""))[:23])
    return " ".join(parts)


def summary(entry: dict[str, Any]) -> dict[str, Any]:
    """The fields of an audit entry that evidence cites (the whole entry stays in the log)."""
    keep = (
        "seq",
        "kind",
        "ts",
        "call_id",
        "decision",
        "gate",
        "reason",
        "forwarded",
        "status",
        "error",
        "count",
        "hash",
    )
    return {key: entry[key] for key in keep if key in entry}


class Context:
    """A live broker of one deployment, seen from outside."""

    def __init__(self, deployment: Path, broker_url: str | None) -> None:
        self.root = deployment
        self.config: BrokerConfig = load_broker_config(deployment)
        self.url = broker_url or f"https://{self.config.listen.host}:{self.config.listen.port}"
        self.ca = deployment / "ca" / "ca.pem"
        self._loop: LoopThread | None = None
        self.upstream: SampleUpstream | None = None

    # -- callers -------------------------------------------------------------------------------

    def caller(self, identity: str) -> Caller:
        return Caller.for_identity(self.root, identity, self.url)

    def anonymous(self) -> Caller:
        """A caller with no client certificate."""
        return Caller(self.url, None, None, self.ca)

    def tls_attempt(self, cert: Path | None, key: Path | None, request: bytes) -> str:
        """Send `request` over a TLS connection with this client certificate (or none), and say
        what came back: the status line, how the connection was refused, or that there was no
        broker to connect to. `refused_without_answer` tells a refusal from the rest."""
        host, port = self.url.removeprefix("https://").rsplit(":", 1)
        ctx = client_context(cert, key, self.ca)
        try:
            raw = socket.create_connection((host, int(port)), timeout=5)
        except OSError as exc:  # no broker there: nothing was refused, nothing is proved
            return f"cannot connect to the broker ({exc.__class__.__name__})"
        try:
            with raw, ctx.wrap_socket(raw, server_hostname=host) as tls:
                tls.sendall(request)
                data = tls.recv(4096)
        except ssl.SSLError as exc:
            return f"TLS refused ({exc.reason or exc.__class__.__name__})"
        except (ConnectionError, TimeoutError) as exc:
            return f"connection closed ({exc.__class__.__name__})"
        if not data:
            return "connection closed (no response)"
        return data.split(b"\r\n", 1)[0].decode("latin-1")

    def send_head(self, identity: str, head: bytes) -> Response:
        """Send a request head alone (its body announced, never sent) as `identity` and read the
        answer: for refusals the broker decides before any body arrives, without a write race."""
        host, port = self.url.removeprefix("https://").rsplit(":", 1)
        folder = self.root / "callers" / identity
        ctx = client_context(folder / "cert.pem", folder / "key.pem", self.ca)
        with (
            socket.create_connection((host, int(port)), timeout=5) as raw,
            ctx.wrap_socket(raw, server_hostname=host) as tls,
        ):
            tls.sendall(head)
            response = http.client.HTTPResponse(tls)
            response.begin()
            return Response(
                response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
            )

    @staticmethod
    def refused_without_answer(got: str) -> bool:
        return got.startswith(("TLS refused", "connection closed"))

    # -- the audit log -------------------------------------------------------------------------

    def entries(self) -> list[dict[str, Any]]:
        try:
            logs = find_logs(self.root)
        except (LogNotFound, ConfigError):
            return []
        segments = logs.get(self.config.broker_id, [])
        try:
            return list(read_entries(segments))
        except LogReadError:
            return []

    def wait_entry(
        self, match: Callable[[dict[str, Any]], bool], timeout: float = 3.0
    ) -> dict[str, Any] | None:
        """The first entry matching, polling (bounded) for the group commit that writes it."""
        deadline = time.monotonic() + timeout
        while True:
            for entry in self.entries():
                if match(entry):
                    return entry
            if time.monotonic() > deadline:
                return None
            time.sleep(0.02)

    def entry_of(self, call_id: str | None, kind: str = "call") -> dict[str, Any] | None:
        if call_id is None:
            return None
        return self.wait_entry(lambda e: e.get("call_id") == call_id and e.get("kind") == kind)

    # -- the instrumented upstream -------------------------------------------------------------

    def upstream_address(self, name: str = SAMPLE_UPSTREAM) -> tuple[str, int]:
        """Where the broker sends `name`'s calls: the registry file's address for it."""
        spec = read_spec(self.root / REGISTRY_FILE)
        upstream = spec.upstreams.get(name)
        if upstream is None:
            raise ConfigError(
                f"{self.root / REGISTRY_FILE}: no upstream {name!r}; the controls probe ztb's sample routes"
            )
        host, _, port = upstream.url.removeprefix("https://").rstrip("/").rpartition(":")
        return host.strip("[]"), int(port)

    @contextlib.contextmanager
    def run_upstream(
        self, hook: RequestHook | None = None, *, impostor: bool = False
    ) -> Iterator[SampleUpstream]:
        """The sample upstream on the registry's address for the duration: the real certificate,
        or with `impostor` a certificate from the same CA for the same names but another key."""
        host, port = self.upstream_address()
        folder = self.root / "upstreams" / SAMPLE_UPSTREAM
        cert, key = folder / "cert.pem", folder / "key.pem"
        with tempfile.TemporaryDirectory(prefix="ztb-control-") as spare:
            if impostor:
                ca = pki.load_issued(self.root / "ca" / "ca.pem", self.root / "ca" / "ca.key")
                cert, key = Path(spare) / "cert.pem", Path(spare) / "key.pem"
                pki.issue_server(ca, [SAMPLE_UPSTREAM, "localhost"], [host]).write(cert, key)
            with self._upstream_at(host, port, cert, key, hook) as upstream:
                yield upstream

    @contextlib.contextmanager
    def _upstream_at(
        self, host: str, port: int, cert: Path, key: Path, hook: RequestHook | None
    ) -> Iterator[SampleUpstream]:
        if self._loop is None:
            self._loop = LoopThread()
        upstream = SampleUpstream(
            cert, key, self.root / "ca" / "ca.pem", host=host, port=port, on_request=hook
        )
        try:
            self._loop.run(upstream.start())
        except OSError as exc:
            raise ConfigError(
                f"cannot bind the upstream address {host}:{port} ({exc.strerror or exc}): this control runs its "
                "own instrumented upstream there; stop the sample upstream first"
            ) from None
        self.upstream = upstream
        try:
            yield upstream
        finally:
            self._loop.run(upstream.stop())
            self.upstream = None

    def close(self) -> None:
        if self._loop is not None:
            self._loop.stop()
            self._loop = None


class Control:
    """One control script's run: its arguments, its context, its checks, its verdict."""

    def __init__(self, name: str, title: str) -> None:
        parser = argparse.ArgumentParser(prog=f"controls/{name}.py", description=title)
        parser.add_argument("--deployment", required=True, type=Path, help="The deployment folder.")
        parser.add_argument("--broker", help="The live broker's URL (default: broker.yaml's listen address).")
        parser.add_argument("--json", action="store_true", help="Print the evidence as one JSON object.")
        args = parser.parse_args()
        self.as_json: bool = args.json
        self.result = Result(name, title)
        try:
            self.ctx = Context(args.deployment, args.broker)
        except ConfigError as exc:
            print(f"controls/{name}.py: error: {exc}", file=sys.stderr)
            sys.exit(2)

    def record(self, check: Check) -> Check:
        self.result.checks.append(check)
        return check

    def refused(
        self,
        name: str,
        response: Response,
        gate: str,
        reason: str,
        *,
        status: int,
        received_before: int | None = None,
    ) -> Check:
        """A data-plane or token refusal: status, gate and reason in the body, a DENY entry in
        the log for that call id, and (when our upstream runs) nothing reached the upstream."""
        error = response.error or {}
        call_id = error.get("call_id")
        got = f"{response.status} {error.get('gate')}/{error.get('reason')}"
        entry = (
            self.ctx.wait_entry(lambda e: e.get("call_id") == call_id and e.get("kind") in ("call", "token"))
            if call_id
            else None
        )
        ok = got == f"{status} {gate}/{reason}"
        # A `token` entry names no gate (minting is the scope gate's). An egress refusal follows an
        # ALLOW decision: the call entry allows, and its `result` entry records the failure.
        logged = ("ALLOW", None, None) if gate == "egress" else ("DENY", gate, reason)
        notes: list[str] = []
        if entry is None:
            ok = False
            notes.append("no audit entry for this call id")
        elif (entry.get("decision"), entry.get("gate", gate), entry.get("reason")) != logged:
            ok = False
            notes.append("the audit entry does not record this refusal")
        if received_before is not None and self.ctx.upstream is not None:
            reached = len(self.ctx.upstream.received) - received_before
            if reached:
                ok = False
            notes.append(
                "the upstream received nothing"
                if not reached
                else f"the upstream received {reached} request(s)"
            )
        return self.record(
            Check(
                name,
                f"{status} {gate}/{reason}",
                got,
                ok,
                "; ".join(notes),
                call_id,
                None if entry is None else summary(entry),
            )
        )

    def finish(self) -> None:
        self.ctx.close()
        if self.as_json:
            print(json.dumps(self.result.to_json(), indent=2))
        else:
            print(self.result.to_text())
        sys.exit(0 if self.result.ok else 1)

    def run(self, body: Callable[[Control], None]) -> None:
        """Run the control's body; any failure to finish is recorded as the control failing."""
        try:
            body(self)
        except (ConfigError, OSError, ValueError, AssertionError) as exc:
            self.result.error = f"{exc.__class__.__name__}: {exc}"
        self.finish()


def received_note(request: ReceivedRequest) -> str:
    names = sorted({name.lower() for name, _ in request.headers})
    return f"the upstream received {request.method} {request.raw_path} with headers: {', '.join(names)}"
