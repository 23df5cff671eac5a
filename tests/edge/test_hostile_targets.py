"""Hostile request targets and routing confusion, over real mTLS against a running broker.

Every target that is not a registered route's canonical origin form is refused (400 when it is not
canonical, 404 when it is canonical but names no route), with an audited DENY; nothing reaches the
upstream or the canary. Headers that name another host never change where a call goes.
"""

from __future__ import annotations

import pytest

from hostile import Canary, Invariant, mint, request_bytes, send_raw, tls_context
from stack import Stack

UP = "/orders.api.internal"
CANARY = "127.0.0.1:{canary}"  # filled in with the canary's port

NON_CANONICAL = (400, "non_canonical_target")
NO_ROUTE = (404, "no_route")
MALFORMED = (400, "malformed_request")

# (method, raw target, expected status and reason); "{canary}" becomes the canary's port.
TARGETS: dict[str, list[tuple[str, bytes, tuple[int, str]]]] = {
    "absolute-form": [
        ("GET", b"http://169.254.169.254/latest/meta-data/", NON_CANONICAL),
        ("GET", b"http://127.0.0.1:{canary}/v1/orders", NON_CANONICAL),
        ("GET", b"https://orders.api.internal/v1/orders", NON_CANONICAL),
        ("POST", b"http://orders.api.internal:443/v1/orders/create", NON_CANONICAL),
        ("GET", b"//169.254.169.254/latest/meta-data/", NON_CANONICAL),
    ],
    "authority-form and CONNECT": [
        ("CONNECT", b"169.254.169.254:80", NON_CANONICAL),
        ("CONNECT", b"127.0.0.1:{canary}", NON_CANONICAL),
        ("CONNECT", b"orders.api.internal:443", NON_CANONICAL),
        ("GET", b"127.0.0.1:{canary}", NON_CANONICAL),
    ],
    "asterisk-form": [
        ("OPTIONS", b"*", NON_CANONICAL),
        ("GET", b"*", NON_CANONICAL),
        ("OPTIONS", b"*/orders.api.internal/v1/orders", NON_CANONICAL),
    ],
    "dot segments, literal": [
        ("GET", UP.encode() + b"/v1/../v1/orders", NON_CANONICAL),
        ("GET", UP.encode() + b"/v1/./orders", NON_CANONICAL),
        ("GET", UP.encode() + b"/v1/orders/..", NON_CANONICAL),
        ("GET", b"/../orders.api.internal/v1/orders", NON_CANONICAL),
        ("GET", b"/./orders.api.internal/v1/orders", NON_CANONICAL),
    ],
    "dot segments, percent-encoded": [
        ("GET", UP.encode() + b"/v1/%2E%2E/v1/orders", NON_CANONICAL),
        ("GET", UP.encode() + b"/v1/%2e%2e/v1/orders", NON_CANONICAL),
        ("GET", UP.encode() + b"/v1/.%2E/v1/orders", NON_CANONICAL),
        ("GET", UP.encode() + b"/v1/%2E/orders", NON_CANONICAL),
    ],
    "dot segments, double-encoded": [
        # %25 is a literal percent: canonical, but no route template or typed value holds "%".
        ("GET", UP.encode() + b"/v1/%252E%252E/orders", NO_ROUTE),
        ("GET", UP.encode() + b"/%252E%252E/%252E%252E/latest", NO_ROUTE),
        ("GET", UP.encode() + b"/v1/orders/%252e%252e", NO_ROUTE),
    ],
    "empty segments": [
        ("GET", UP.encode() + b"//v1/orders", NON_CANONICAL),
        ("GET", UP.encode() + b"/v1/orders/", NON_CANONICAL),
        ("GET", b"//orders.api.internal/v1/orders", NON_CANONICAL),
        ("GET", b"/", NON_CANONICAL),
        ("GET", UP.encode() + b"/v1/orders?", NON_CANONICAL),
    ],
    "encoded slash, backslash and NUL": [
        ("GET", UP.encode() + b"/v1%2Forders", NON_CANONICAL),
        ("GET", UP.encode() + b"/v1%2forders", NON_CANONICAL),
        ("GET", UP.encode() + b"/v1/orders%5C..%5C", NON_CANONICAL),
        ("GET", UP.encode() + b"/v1/orders%00", NON_CANONICAL),
        ("GET", UP.encode() + b"/v1/orders?cursor=%00", NON_CANONICAL),
    ],
    "raw backslashes": [
        ("GET", b"/orders.api.internal\\v1\\orders", NON_CANONICAL),
        ("GET", UP.encode() + b"/v1/orders\\..\\..\\admin", NON_CANONICAL),
        ("GET", b"\\\\169.254.169.254\\latest", NON_CANONICAL),
    ],
    "; parameters": [
        ("GET", UP.encode() + b"/v1/orders;jsessionid=1", NO_ROUTE),
        ("GET", UP.encode() + b"/v1;x=..;/orders", NO_ROUTE),
        ("GET", b"/orders.api.internal;a=b/v1/orders", NO_ROUTE),
    ],
    "fragments": [
        ("GET", UP.encode() + b"/v1/orders#frag", NON_CANONICAL),
        ("GET", UP.encode() + b"/v1/orders?limit=1#x", NON_CANONICAL),
        ("GET", UP.encode() + b"#/v1/orders", NON_CANONICAL),
    ],
    "control characters": [
        ("GET", UP.encode() + b"/v1/orders\x01", MALFORMED),
        ("GET", UP.encode() + b"/v1/orders\x7f", MALFORMED),
        ("GET", UP.encode() + b"/v1/\torders", MALFORMED),
        ("GET", UP.encode() + b"/v1/orders\x00", MALFORMED),
        ("GET", UP.encode() + b"/v1/orders%0D%0AHost:%20x", NON_CANONICAL),
        ("GET", UP.encode() + b"/v1/orders%7F", NON_CANONICAL),
    ],
    "non-ASCII": [
        ("GET", UP.encode() + "/v1/ördérs".encode(), MALFORMED),
        ("GET", "/orders.api.internal\u3002/v1/orders".encode(), MALFORMED),
        ("GET", UP.encode() + b"/v1/orders\xff", MALFORMED),
        ("GET", UP.encode() + b"/v1/%C3%B6rders", NO_ROUTE),  # encoded: ASCII, but never a route
    ],
    "overlong UTF-8": [
        ("GET", UP.encode() + b"/v1/\xc0\xae\xc0\xae/orders", MALFORMED),
        ("GET", UP.encode() + b"/v1/%C0%AE%C0%AE/orders", NO_ROUTE),
        ("GET", UP.encode() + b"/v1%C0%AForders", NO_ROUTE),
        ("GET", UP.encode() + b"/v1/%E0%80%AE/orders", NO_ROUTE),
    ],
    "upstream names: case, trailing dot, encoding": [
        ("GET", b"/ORDERS.API.INTERNAL/v1/orders", NO_ROUTE),
        ("GET", b"/Orders.api.internal/v1/orders", NO_ROUTE),
        ("GET", b"/orders.api.internal./v1/orders", NO_ROUTE),
        ("GET", b"/orders%2Eapi.internal/v1/orders", NON_CANONICAL),
        ("GET", b"/%6Frders.api.internal/v1/orders", NON_CANONICAL),
        ("GET", b"/orders.api.internal%00/v1/orders", NON_CANONICAL),
        ("GET", b"/127.0.0.1:{canary}/v1/orders", NO_ROUTE),
        ("GET", b"/orders.api.internal@127.0.0.1:{canary}/v1/orders", NO_ROUTE),
        ("GET", b"/.ztb/v1/orders", NO_ROUTE),
    ],
}
CASES = [
    pytest.param(method, target, expected, id=f"{cls}:{method} {target[:48]!r}")
    for cls, cases in TARGETS.items()
    for method, target, expected in cases
]


@pytest.mark.parametrize(("method", "target", "expected"), CASES)
def test_hostile_target_is_refused(
    stack: Stack, canary: Canary, method: str, target: bytes, expected: tuple[int, str]
) -> None:
    check = Invariant(stack, canary)
    token = mint(stack, "orders:read")
    raw = request_bytes(
        method, target.replace(b"{canary}", str(canary.port).encode()), [("Authorization", f"Bearer {token}")]
    )
    edge = expected == MALFORMED  # refused before h11 parsed anything: the connection must close
    answer = send_raw(stack.port, tls_context(stack.root), raw, wait_close=edge)
    check.refused(answer, *expected)
    assert answer.closed or not edge
    assert check.forwarded() == []


# Headers that try to move a call elsewhere; the call is allowed, and goes where the registry says.
STEERING = {
    "Host": [("Host", "{canary}")],
    "X-Forwarded-Host": [("X-Forwarded-Host", "{canary}"), ("X-Forwarded-Proto", "http")],
    "Forwarded": [("Forwarded", "for=1.2.3.4;host={canary};proto=http")],
    "X-Original-URL": [("X-Original-URL", "/admin"), ("X-Rewrite-URL", "http://{canary}/admin")],
    "X-Forwarded-For and X-Real-IP": [("X-Forwarded-For", "169.254.169.254"), ("X-Real-IP", "127.0.0.1")],
    "all at once": [
        ("X-Forwarded-Host", "{canary}"),
        ("Forwarded", "host={canary}"),
        ("X-Original-URL", "http://{canary}/"),
        ("X-HTTP-Method-Override", "DELETE"),
    ],
}


@pytest.mark.parametrize("steer", list(STEERING), ids=list(STEERING))
def test_steering_headers_never_change_where_a_call_goes(stack: Stack, canary: Canary, steer: str) -> None:
    check = Invariant(stack, canary)
    token = mint(stack, "orders:read")
    headers = [(k, v.replace("{canary}", canary.authority)) for k, v in STEERING[steer]]
    host = next((v for k, v in headers if k == "Host"), "127.0.0.1")
    headers = [(k, v) for k, v in headers if k != "Host"]
    raw = request_bytes(
        "GET", UP + "/v1/orders?limit=5", [("Authorization", f"Bearer {token}"), *headers], host=host
    )
    answer = send_raw(stack.port, tls_context(stack.root), raw)
    assert answer.status == 200, answer.body
    [forwarded] = check.forwarded()
    assert forwarded.raw_path == "/v1/orders?limit=5"
    check.clean()  # Host is the registered authority; none of the steering headers went through
