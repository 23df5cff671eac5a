"""`ztb explain` says what the live broker would decide: each case is explained, then sent for real
through the running broker, and the two answers must agree."""

from __future__ import annotations

import http.client
import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from stack import UPSTREAM, Stack
from ztb.client import BrokerError, Response, client_context
from ztb.config import load_registry
from ztb.deploy import sample_order
from ztb.explain import explain

ORDER = json.dumps(sample_order()).encode()
GET = f"/{UPSTREAM}/v1/orders/6f1c2a9e-4b7d-4e1a-9c3f-2d8b5e0a7c41"
CASES = [
    # identity, method, target, body, explained (gate, reason) or None when allowed
    ("svc.checkout", "POST", f"/{UPSTREAM}/v1/orders/create", ORDER, None),
    ("svc.checkout", "GET", f"/{UPSTREAM}/v1/orders?limit=5", None, None),
    (
        "svc.checkout",
        "POST",
        f"/{UPSTREAM}/v1/orders/create",
        b'{"currency": "JPY"}',
        ("shape", "schema_violation"),
    ),
    (
        "svc.checkout",
        "POST",
        f"/{UPSTREAM}/v1/orders/create",
        b'{"a": 1, "a": 2}',
        ("shape", "duplicate_key"),
    ),
    ("svc.checkout", "POST", f"/{UPSTREAM}/v1/orders/create", b"x" * 70000, ("shape", "body_too_large")),
    ("svc.checkout", "GET", GET, b"{}", ("shape", "body_not_allowed")),
    ("svc.checkout", "GET", f"/{UPSTREAM}/v1/orders?debug=1", None, ("allowlist", "no_route")),
    ("svc.checkout", "GET", f"/{UPSTREAM}/v1/../admin", None, ("allowlist", "non_canonical_target")),
    ("svc.checkout", "GET", "/metadata.internal/latest", None, ("allowlist", "no_route")),
    ("svc.reports", "POST", f"/{UPSTREAM}/v1/orders/create", ORDER, ("scope", "not_granted")),
]


def send_head(stack: Stack, identity: str, request_line: str, token: str, length: int) -> Response:
    folder = stack.root / "callers" / identity
    ctx = client_context(folder / "cert.pem", folder / "key.pem", stack.root / "ca" / "ca.pem")
    head = (
        f"{request_line} HTTP/1.1\r\nHost: broker\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
    )
    with (
        socket.create_connection(("127.0.0.1", stack.port), timeout=10) as raw,
        ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        tls.sendall(head.encode())
        answer = http.client.HTTPResponse(tls)
        answer.begin()
        return Response(answer.status, {k.lower(): v for k, v in answer.getheaders()}, answer.read())


@pytest.mark.parametrize(("identity", "method", "target", "body", "expected"), CASES)
def test_explain_agrees_with_the_broker(
    stack: Stack,
    identity: str,
    method: str,
    target: str,
    body: bytes | None,
    expected: tuple[str, str] | None,
) -> None:
    registry = load_registry(stack.root)
    answer = explain(registry, identity, method, target, body)
    first = answer.refusal
    got = None if first is None or first.reason is None else (first.gate.value, first.reason.value)
    assert got == expected, answer.to_text()

    caller = stack.caller(identity)
    scope = "orders:create" if method == "POST" else "orders:read"  # the route's, or a granted one
    try:
        token = caller.mint(UPSTREAM, scope)
    except BrokerError as refused:
        assert expected == ("scope", "not_granted")
        assert (refused.gate, refused.reason) == expected
        return
    if expected == ("shape", "body_too_large"):
        # Announce the body without sending it: the broker refuses on the declared length, and a
        # client still writing 70 KB into a closed connection would race with that refusal.
        response = send_head(stack, identity, f"{method} {target}", token, len(body or b""))
    else:
        _, upstream, path = target.split("/", 2)
        response = caller.call(method, upstream, "/" + path, token=token, body=body)
    live = None if response.error is None else (response.error["gate"], response.error["reason"])
    assert live == expected
    caller.close()


def test_needs_names_the_missing_grant_and_identity(stack: Stack) -> None:
    answer = explain(load_registry(stack.root), "svc.billing", "POST", f"/{UPSTREAM}/v1/orders/create", ORDER)
    assert not answer.allowed
    assert answer.refusal is not None and answer.refusal.reason is not None
    assert answer.refusal.reason.value == "unknown_spki"
    assert any(n.startswith("identities: svc.billing") for n in answer.needs)
    assert f"grants: svc.billing: {UPSTREAM}: [orders:create]  (a reviewed registry change)" in answer.needs


def test_cli(stack: Stack, tmp_path: Path) -> None:
    body = tmp_path / "order.json"
    body.write_bytes(ORDER)
    run = [sys.executable, "-m", "ztb", "explain", str(stack.root), "--as"]
    refused = subprocess.run(
        [*run, "svc.reports", "POST", f"{UPSTREAM}/v1/orders/create", "--body", str(body)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert refused.returncode == 1, refused.stderr
    assert "verdict: refused by the scope gate: 403 scope/not_granted" in refused.stdout
    assert f"needs: grants: svc.reports: {UPSTREAM}: [orders:create]" in refused.stdout
    allowed = subprocess.run(
        [*run, "svc.checkout", "POST", f"{UPSTREAM}/v1/orders/create", "--body", str(body), "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert allowed.returncode == 0, allowed.stderr
    report = json.loads(allowed.stdout)
    assert report["allowed"] is True and report["refused_by"] is None
    assert [s["gate"] for s in report["steps"]] == ["identity", "scope", "allowlist", "shape", "egress"]
