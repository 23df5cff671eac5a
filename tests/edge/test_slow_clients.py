"""Slow and large clients: dribbled heads, stalled bodies, header floods, idle connections and the
connection cap, on a deployment whose broker.yaml sets short limits (1 s) so nothing sleeps the
real 10/30/75 s. Each hostile connection is closed within its limit (plus scheduling slack) while
a normal caller on another connection is still served.
"""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Iterator

import pytest

from hostile import (
    Canary,
    Conn,
    Invariant,
    hostile_deployment,
    mint,
    order_body,
    start,
    tls_context,
    write_limits,
)
from stack import Stack

LIMIT_S = 1.0
SLACK_S = 2.0  # two busy cores: generous, and still far below the SPEC defaults
MAX_CONNECTIONS = 16
LIST = "/orders.api.internal/v1/orders?limit=5"
CREATE = "/orders.api.internal/v1/orders/create"
BODY = order_body()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    running = hostile_deployment(tmp_path_factory.mktemp("slow") / "dep")
    write_limits(
        running.root,
        header_timeout_s=LIMIT_S,
        body_timeout_s=LIMIT_S,
        idle_timeout_s=LIMIT_S,
        max_connections=MAX_CONNECTIONS,
    )
    try:
        start(running)
        yield running
    finally:
        running.close()


def normal_call(stack: Stack) -> int:
    """A well-behaved caller on its own connection: mint, call, done."""
    caller = stack.caller()
    try:
        token = caller.mint("orders.api.internal", "orders:read")
        return caller.call("GET", "orders.api.internal", "/v1/orders", token=token).status
    finally:
        caller.close()


def dribble(conn: Conn, data: bytes, pause_s: float, *, during: Stack | None = None) -> None:
    """Send `data` a byte at a time until the broker answers (or closes); optionally serve a
    normal caller once the dribble is under way."""
    for i, byte in enumerate(data):
        if not conn.send(bytes([byte])):
            return
        if i == 3 and during is not None:
            assert normal_call(during) == 200
        if conn.poll(pause_s):
            return


def head(token: str, *lines: bytes, target: str = LIST, method: str = "GET") -> bytes:
    first = f"{method} {target} HTTP/1.1".encode()
    return (
        b"\r\n".join([first, b"Host: 127.0.0.1", f"Authorization: Bearer {token}".encode(), *lines])
        + b"\r\n\r\n"
    )


def assert_within_limit(elapsed: float) -> None:
    assert LIMIT_S * 0.9 <= elapsed <= LIMIT_S + SLACK_S, elapsed


def test_head_dribbled_byte_by_byte_gets_408_within_the_limit(stack: Stack, canary: Canary) -> None:
    check = Invariant(stack, canary)
    with Conn(stack.port, tls_context(stack.root)) as conn:
        conn.started = time.monotonic()
        dribble(conn, head(mint(stack, "orders:read")), 0.05, during=stack)
        answer = conn.answer(wait_close=True)
    check.refused(answer, 408, "header_timeout")
    assert answer.closed
    assert_within_limit(answer.elapsed_s)
    assert len(check.forwarded()) == 1  # the normal call, and only it


@pytest.mark.parametrize(
    "partial",
    [
        b"GET /orders.api.in",
        b"GET " + LIST.encode() + b" HTTP/1.1\r\nHost: x\r\nX-A: b",
        b"GET " + LIST.encode() + b" HTTP/1.1\r\n",
    ],
    ids=["half a request line", "head without its blank line", "request line only"],
)
def test_head_that_never_ends_gets_408(stack: Stack, canary: Canary, partial: bytes) -> None:
    check = Invariant(stack, canary)
    with Conn(stack.port, tls_context(stack.root)) as conn:
        conn.started = time.monotonic()
        conn.send(partial)
        answer = conn.answer(wait_close=True)
    entry = check.refused(answer, 408, "header_timeout")
    assert answer.closed
    assert_within_limit(answer.elapsed_s)
    assert entry["upstream"]["method"] == ("GET" if b"\r\n" in partial else None)


@pytest.mark.parametrize("framing", ["content-length", "chunked", "dribbled"])
def test_body_that_stalls_gets_408_within_the_limit(stack: Stack, canary: Canary, framing: str) -> None:
    check = Invariant(stack, canary)
    json_type = b"Content-Type: application/json"
    with Conn(stack.port, tls_context(stack.root)) as conn:
        if framing == "chunked":
            conn.send(
                head(mint(stack), json_type, b"Transfer-Encoding: chunked", method="POST", target=CREATE)
            )
            conn.started = time.monotonic()
            conn.send(f"{len(BODY):x}\r\n".encode() + BODY[:100])
        else:
            length = f"Content-Length: {len(BODY)}".encode()
            conn.send(head(mint(stack), json_type, length, method="POST", target=CREATE))
            conn.started = time.monotonic()
            if framing == "dribbled":
                dribble(conn, BODY, 0.05)
            else:
                conn.send(BODY[:100])
        answer = conn.answer(wait_close=True)
    check.refused(answer, 408, "body_timeout")
    assert answer.closed
    assert_within_limit(answer.elapsed_s)
    assert normal_call(stack) == 200


def test_too_many_headers_get_431(stack: Stack, canary: Canary) -> None:
    check = Invariant(stack, canary)
    token = mint(stack, "orders:read")
    # Host and Authorization plus 62 more is the default cap of 64: served.
    ok = [f"X-H{i}: v".encode() for i in range(62)]
    with Conn(stack.port, tls_context(stack.root)) as conn:
        conn.send(head(token, *ok))
        assert conn.answer().status == 200
    answer = Conn(stack.port, tls_context(stack.root))
    with answer as conn:
        conn.send(head(mint(stack, "orders:read"), *ok, b"X-One-Too-Many: v"))
        refused = conn.answer(wait_close=True)
    check.refused(refused, 431, "headers_too_large")
    assert refused.closed


@pytest.mark.parametrize(
    "build",
    [
        pytest.param(lambda t: head(t, b"X-Big: " + b"a" * 17000), id="one 17 KiB header"),
        pytest.param(
            lambda t: head(t, *[f"X-H{i}: ".encode() + b"b" * 500 for i in range(40)]),
            id="40 headers of 500 bytes",
        ),
        pytest.param(lambda t: b"GET /" + b"a" * 20000, id="20 KiB request line, no line end"),
        pytest.param(
            lambda t: head(t, target="/orders.api.internal/" + "x/" * 9000 + "y"), id="18 KiB target"
        ),
    ],
)
def test_header_block_too_large_gets_431(stack: Stack, canary: Canary, build: object) -> None:
    check = Invariant(stack, canary)
    assert callable(build)
    with Conn(stack.port, tls_context(stack.root)) as conn:
        conn.send(build(mint(stack, "orders:read")))
        answer = conn.answer(wait_close=True)
    check.refused(answer, 431, "headers_too_large")
    assert answer.closed


def closed_within(sock: socket.socket, limit_s: float) -> float:
    """Seconds until the broker closed `sock` (EOF, reset or TLS close); fails past `limit_s`."""
    started = time.monotonic()
    sock.settimeout(limit_s)
    try:
        while sock.recv(4096):
            pass
    except (ssl.SSLError, ConnectionError):
        pass
    except TimeoutError:
        pytest.fail(f"connection still open after {limit_s} s")
    return time.monotonic() - started


def test_idle_connections_are_closed_while_a_normal_caller_is_served(stack: Stack, canary: Canary) -> None:
    check = Invariant(stack, canary)
    started = time.monotonic()
    idle_tls = [Conn(stack.port, tls_context(stack.root)).tls for _ in range(8)]  # handshaken, then silent
    idle_tcp = [
        socket.create_connection(("127.0.0.1", stack.port), timeout=5) for _ in range(4)
    ]  # no TLS at all
    try:
        assert normal_call(stack) == 200
        for sock in [*idle_tls, *idle_tcp]:
            closed_within(sock, LIMIT_S + SLACK_S)
        assert time.monotonic() - started <= LIMIT_S + SLACK_S + 1.0
    finally:
        for sock in [*idle_tls, *idle_tcp]:
            sock.close()
    # The silent TCP connections never finished a handshake: audited as identity rejections.
    assert stack.wait_for(lambda e: e["kind"] == "identity" and e["reason"] == "tls_handshake_failed")
    check.clean()


def test_connection_cap_refuses_the_flood_not_the_callers_after_it(stack: Stack, canary: Canary) -> None:
    check = Invariant(stack, canary)
    flood = [socket.create_connection(("127.0.0.1", stack.port), timeout=5) for _ in range(MAX_CONNECTIONS)]
    try:
        time.sleep(0.2)  # let the broker accept them all (accept is asynchronous)
        extra = socket.create_connection(("127.0.0.1", stack.port), timeout=5)
        with extra:
            assert closed_within(extra, 0.9 * LIMIT_S) < 0.9 * LIMIT_S  # closed at once, not by a timer
        refused = stack.wait_for(lambda e: e["kind"] == "identity" and e["reason"] == "too_many_connections")
        assert sum(e["count"] for e in refused) >= 1
        for sock in flood:
            closed_within(sock, LIMIT_S + SLACK_S)
    finally:
        for sock in flood:
            sock.close()
    assert normal_call(stack) == 200
    check.clean()
