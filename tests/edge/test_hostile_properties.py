"""Property-based hostile input (hypothesis): generated request heads, targets, headers and bodies.

Two levels, as in h11's own tests:
- sans-I/O: whatever head bytes `hygiene.check_head` accepts, h11 parses to the very same request
  (method, target, headers, framing), so the check and the parser can never disagree about
  where a request or its body ends;
- over real mTLS: every generated request gets an answer that is never a 5xx, within bounds; a
  refusal is audited with the reason the caller saw; nothing reaches the canary; and whatever
  reaches the upstream is a registered route's canonical path with broker-written framing and a
  body byte-identical to the one that was validated.
"""

from __future__ import annotations

import json

import h11
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hostile import Canary, Invariant, mint, order_body, request_bytes, send_raw, tls_context
from stack import Stack
from ztb.edge import hygiene

# -- sans-I/O: the raw-head check never disagrees with h11 ------------------------------------

METHODS = st.sampled_from([b"GET", b"POST", b"PUT", b"get", b"CONNECT", b"OPTIONS", b"PRI", b"G\tET", b""])
TARGET_PIECES = st.sampled_from(
    [
        b"/",
        b"a",
        b"orders.api.internal",
        b"%2E",
        b"%2F",
        b"..",
        b".",
        b"\\",
        b"?",
        b"#",
        b"%00",
        b"%25",
        b";",
        b"*",
        b"http://x",
        b"\x00",
        b"\x7f",
        b"\xc3\xa9",
        b" ",
        b"\t",
        b"@",
        b":443",
    ]
)
TARGETS = st.lists(TARGET_PIECES, min_size=0, max_size=8).map(b"".join)
VERSIONS = st.sampled_from([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0", b"http/1.1", b"HTTP/1.1 ", b""])
NAMES = st.sampled_from(
    [
        b"Host",
        b"host",
        b"Content-Length",
        b"Transfer-Encoding",
        b"transfer-encoding",
        b"Upgrade",
        b"Connection",
        b"X-Request-Id",
        b"Expect",
        b"Content-Type",
        b"X A",
        b"",
        b"Host ",
        b"TE",
    ]
)
VALUES = st.sampled_from(
    [
        b"chunked",
        b"CHUNKED",
        b",chunked",
        b"chunked, identity",
        b"0",
        b"5",
        b"5, 5",
        b"+5",
        b"-1",
        b"x",
        b"",
        b" a ",
        b"a\x00b",
        b"\xff",
        b"h2c",
        b"100-continue",
        b"close",
        b"a\tb",
        b"\x0b",
    ]
)
EOLS = st.sampled_from([b"\r\n", b"\r\n", b"\r\n", b"\n", b"\r"])
HEADER_LINES = st.lists(
    st.tuples(NAMES, VALUES, EOLS, st.booleans()).map(
        lambda t: (b" " if t[3] else b"") + t[0] + b": " + t[1] + t[2]
    ),
    max_size=8,
)


@st.composite
def heads(draw: st.DrawFn) -> bytes:
    line = draw(METHODS) + b" " + draw(TARGETS) + b" " + draw(VERSIONS) + draw(EOLS)
    return line + b"".join(draw(HEADER_LINES)) + draw(EOLS)


@settings(max_examples=3000, deadline=None)
@given(heads())
def test_what_the_check_accepts_h11_parses_identically(head: bytes) -> None:
    end = hygiene.head_end(head)
    if end is None:
        return
    head = head[:end]
    verdict = hygiene.check_head(head, 64)
    if verdict.problem is not None:
        return
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(head)
    event = conn.next_event()
    assert isinstance(event, h11.Request), event
    assert event.method.decode() == verdict.method and event.target.decode() == verdict.target
    assert event.http_version == b"1.1"
    lines = head[:-4].split(b"\r\n")[1:]
    assert len(event.headers) == len(lines)
    ours = {line.split(b":", 1)[0].lower(): line.split(b":", 1)[1].strip() for line in lines}
    theirs = dict(event.headers)
    for name in (b"content-length", b"transfer-encoding"):
        assert ours.get(name) == theirs.get(name)


@settings(max_examples=2000, deadline=None)
@given(st.binary(max_size=300))
def test_check_never_raises_on_any_bytes(data: bytes) -> None:
    line = hygiene.first_line(data)
    if line is not None:
        hygiene.check_request_line(line)
    end = hygiene.head_end(data)
    if end is not None:
        hygiene.check_head(data[:end], 64)


# -- over real mTLS: the invariant on every example --------------------------------------------

ALLOWED_STATUS = {200, 201, 400, 401, 403, 404, 408, 413, 415, 431}
UP = "/orders.api.internal"
PATH_PIECES = st.sampled_from(
    [
        "/v1",
        "/orders",
        "/create",
        "/",
        "//",
        "/.",
        "/..",
        "%2E",
        "%2e",
        "%2F",
        "%5C",
        "%00",
        "%252E",
        "\\",
        ";x=1",
        "?limit=5",
        "?limit=1&limit=2",
        "?cursor=a",
        "?x=1",
        "#f",
        "6f1c2a9e-4b7d-4e1a-9c3f-2d8b5e0a7c41",
        "%C0%AE",
        "\u00e9",
        "\x01",
        "@127.0.0.1",
        ":80",
        "ORDERS",
        ".",
    ]
)
REQUEST_TARGETS = st.one_of(
    st.lists(PATH_PIECES, max_size=6).map(lambda parts: UP + "".join(parts)),
    st.lists(PATH_PIECES, max_size=6).map("".join),
    st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=40).map(lambda t: "/" + t),
)
EXTRA_HEADERS = st.lists(
    st.sampled_from(
        [
            ("X-Forwarded-Host", "{canary}"),
            ("Forwarded", "host={canary}"),
            ("X-Original-URL", "http://{canary}/"),
            ("X-Request-Id", "abc"),
            ("Content-Encoding", "gzip"),
            ("Connection", "close"),
            ("TE", "trailers"),
            ("Expect", "100-continue"),
            ("Cookie", "a=b"),
            ("X-Rewrite-URL", "/admin"),
            ("Max-Forwards", "0"),
        ]
    ),
    max_size=4,
    unique=True,
)
JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**60), 2**60)
    | st.floats(allow_nan=False)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=10,
)
BODIES = st.one_of(
    st.just(order_body()),
    JSON_VALUES.map(lambda v: json.dumps(v).encode()),
    st.builds(
        lambda key, value: json.dumps({**json.loads(order_body()), key: value}).encode(),
        st.sampled_from(["note", "currency", "items"]),
        JSON_VALUES,
    ),
    st.binary(max_size=200),
)
NETWORK = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def exchange(
    stack: Stack, canary: Canary, method: str, target: str, headers: list[tuple[str, str]], body: bytes
) -> None:
    check = Invariant(stack, canary, validated=[body])
    scope = "orders:create" if method == "POST" else "orders:read"
    filled = [(k, v.replace("{canary}", canary.authority)) for k, v in headers]
    if body:
        filled.append(("Content-Type", "application/json"))
    raw = request_bytes(
        method, target.encode("utf-8"), [("Authorization", f"Bearer {mint(stack, scope)}"), *filled], body
    )
    answer = send_raw(stack.port, tls_context(stack.root), raw)
    assert answer.status in ALLOWED_STATUS, (answer.status, answer.body)
    if answer.status >= 400:
        check.refused(answer, answer.status, answer.error["reason"])
    check.clean()


@NETWORK
@given(
    method=st.sampled_from(["GET", "POST", "DELETE", "OPTIONS", "CONNECT"]),
    target=REQUEST_TARGETS,
    headers=EXTRA_HEADERS,
)
def test_generated_targets_and_headers_keep_the_invariant(
    stack: Stack, canary: Canary, method: str, target: str, headers: list[tuple[str, str]]
) -> None:
    exchange(stack, canary, method, target, headers, b"")


@NETWORK
@given(body=BODIES, headers=EXTRA_HEADERS)
def test_generated_bodies_keep_the_invariant(
    stack: Stack, canary: Canary, body: bytes, headers: list[tuple[str, str]]
) -> None:
    exchange(stack, canary, "POST", UP + "/v1/orders/create", headers, body)
