"""Hostile framing: protocol versions, Upgrade, Transfer-Encoding and Content-Length games,
Content-Encoding, malformed heads and pipelining, over real mTLS against a running broker.

A refusal of framing is decided on the raw head bytes before h11 interprets them: 400 with an
audited `call` entry, and the connection closed (after bad framing nothing on it can be trusted).
"""

from __future__ import annotations

import gzip
from collections.abc import Callable

import pytest

from hostile import Canary, Conn, Invariant, mint, order_body, send_raw, tls_context
from stack import Stack

LIST = "/orders.api.internal/v1/orders?limit=5"
CREATE = "/orders.api.internal/v1/orders/create"
MALFORMED = (400, "malformed_request")
BAD_TE = (400, "malformed_request")  # bad framing: refused at the edge, before any gate
CE_REFUSED = (415, "content_encoding_refused")
BODY = order_body()


def chunked(body: bytes) -> bytes:
    return f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n"


def head(first: bytes, lines: list[bytes], token: str) -> bytes:
    return (
        b"\r\n".join([first, b"Host: 127.0.0.1", f"Authorization: Bearer {token}".encode(), *lines])
        + b"\r\n\r\n"
    )


JSON = b"Content-Type: application/json"
CL = f"Content-Length: {len(BODY)}".encode()
POST = f"POST {CREATE} HTTP/1.1".encode()
Build = Callable[[str], bytes]  # token -> the raw request


def whole(raw: bytes) -> Build:
    """A request given whole (its own request line)."""
    return lambda token: raw.replace(b"{t}", token.encode())


def post(*lines: bytes) -> Build:
    """A POST of a valid order with these header lines; Content-Length added unless framing is given,
    the body chunked when Transfer-Encoding is."""

    def build(token: str) -> bytes:
        text = b"\n".join(lines).lower()
        framed = b"content-length" in text or b"transfer-encoding" in text
        body = chunked(BODY) if b"transfer-encoding" in text else BODY
        return head(POST, [JSON, *lines, *([] if framed else [CL])], token) + body

    return build


FRAMING: dict[str, list[tuple[str, Build, tuple[int, str]]]] = {
    "HTTP/1.0, 0.9 and other versions": [
        ("HTTP/1.0", whole(f"GET {LIST} HTTP/1.0\r\nHost: x\r\n\r\n".encode()), MALFORMED),
        (
            "HTTP/1.0 keep-alive",
            whole(f"GET {LIST} HTTP/1.0\r\nConnection: keep-alive\r\n\r\n".encode()),
            MALFORMED,
        ),
        ("HTTP/0.9", whole(f"GET {LIST}\r\n".encode()), MALFORMED),
        ("HTTP/0.9 bare", whole(b"GET /\r\n"), MALFORMED),
        ("HTTP/2 preface", whole(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), MALFORMED),
        ("HTTP/1.2", whole(f"GET {LIST} HTTP/1.2\r\nHost: x\r\n\r\n".encode()), MALFORMED),
        ("lowercase version", whole(f"GET {LIST} http/1.1\r\nHost: x\r\n\r\n".encode()), MALFORMED),
        ("double space", whole(f"GET  {LIST} HTTP/1.1\r\nHost: x\r\n\r\n".encode()), MALFORMED),
        ("lowercase method", whole(f"get {LIST} HTTP/1.1\r\nHost: x\r\n\r\n".encode()), MALFORMED),
        (
            "TLS in TLS",
            whole(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 32 + b"\r\n"),
            MALFORMED,
        ),
    ],
    "Upgrade": [
        (
            "h2c",
            post(
                b"Connection: Upgrade, HTTP2-Settings",
                b"Upgrade: h2c",
                b"HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA",
            ),
            MALFORMED,
        ),
        (
            "websocket",
            post(
                b"Connection: Upgrade",
                b"Upgrade: websocket",
                b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
                b"Sec-WebSocket-Version: 13",
            ),
            MALFORMED,
        ),
        ("Upgrade alone", post(b"Upgrade: HTTP/2.0"), MALFORMED),
        ("empty Upgrade", post(b"Upgrade:"), MALFORMED),
    ],
    "Transfer-Encoding variants": [
        ("leading comma", post(b"Transfer-Encoding: ,chunked"), BAD_TE),
        ("upper case", post(b"Transfer-Encoding: CHUNKED"), BAD_TE),
        ("mixed case", post(b"Transfer-Encoding: Chunked"), BAD_TE),
        ("chunked, identity", post(b"Transfer-Encoding: chunked, identity"), BAD_TE),
        ("identity, chunked", post(b"Transfer-Encoding: identity, chunked"), BAD_TE),
        ("gzip, chunked", post(b"Transfer-Encoding: gzip, chunked"), BAD_TE),
        ("identity", post(b"Transfer-Encoding: identity"), BAD_TE),
        ("duplicate", post(b"Transfer-Encoding: chunked", b"Transfer-Encoding: chunked"), BAD_TE),
        ("quoted", post(b'Transfer-Encoding: "chunked"'), BAD_TE),
        ("space before colon", post(b"Transfer-Encoding : chunked"), MALFORMED),
        ("vertical tab", post(b"Transfer-Encoding:\x0bchunked"), MALFORMED),
        ("folded", post(b"Transfer-Encoding:", b" chunked"), MALFORMED),
    ],
    "Content-Length with Transfer-Encoding": [
        ("CL then TE", post(CL, b"Transfer-Encoding: chunked"), BAD_TE),
        ("TE then CL", post(b"Transfer-Encoding: chunked", CL), BAD_TE),
        ("CL 0 and TE", post(b"Content-Length: 0", b"Transfer-Encoding: chunked"), BAD_TE),
    ],
    "duplicate or malformed Content-Length": [
        ("same twice", post(CL, CL), MALFORMED),
        ("two values", post(CL, b"Content-Length: 4"), MALFORMED),
        ("list", post(CL + b", " + CL[16:]), MALFORMED),
        ("plus sign", post(b"Content-Length: +" + CL[16:]), MALFORMED),
        ("negative", post(b"Content-Length: -1"), MALFORMED),
        ("hex", post(b"Content-Length: 0x1a5"), MALFORMED),
        ("exponent", post(b"Content-Length: 4e2"), MALFORMED),
        ("inner space", post(b"Content-Length: 4 21"), MALFORMED),
        ("empty", post(b"Content-Length:"), MALFORMED),
        ("20 digits", post(b"Content-Length: 99999999999999999999"), MALFORMED),
    ],
    "malformed heads": [
        ("bare LF", whole(b"\n".join([POST, b"Host: x", JSON, CL]) + b"\n\n" + BODY), MALFORMED),
        ("bare CR", post(b"X-Request-Id: a\rX-B: c"), MALFORMED),
        ("obs-fold", post(b"X-Request-Id: a", b" b"), MALFORMED),
        ("no Host", whole(b"\r\n".join([POST, JSON, CL]) + b"\r\n\r\n" + BODY), MALFORMED),
        ("two Hosts", post(b"Host: 127.0.0.1"), MALFORMED),
        ("leading empty line", lambda t: b"\r\n" + post()(t), MALFORMED),
        ("NUL in a value", post(b"X-Request-Id: a\x00b"), MALFORMED),
        ("non-ASCII value", post("X-Request-Id: ärger".encode()), MALFORMED),
        ("name with space", post(b"X Request: a"), MALFORMED),
        ("no colon", post(b"X-Request-Id"), MALFORMED),
    ],
}
CASES = [
    pytest.param(build, expected, id=f"{cls}:{name}")
    for cls, cases in FRAMING.items()
    for name, build, expected in cases
]


@pytest.mark.parametrize(("build", "expected"), CASES)
def test_bad_framing_is_refused_and_closes(
    stack: Stack, canary: Canary, build: Build, expected: tuple[int, str]
) -> None:
    check = Invariant(stack, canary)
    answer = send_raw(stack.port, tls_context(stack.root), build(mint(stack)), wait_close=True)
    check.refused(answer, *expected)
    assert answer.closed
    assert check.forwarded() == []


GZIPPED = gzip.compress(BODY)
CONTENT_ENCODING = {
    "gzip": (b"Content-Encoding: gzip", GZIPPED),
    "gzip, plain body": (b"Content-Encoding: gzip", BODY),
    "deflate": (b"Content-Encoding: deflate", BODY),
    "br": (b"Content-Encoding: br", BODY),
    "identity": (b"Content-Encoding: identity", BODY),
    "gzip, chunked": (b"Content-Encoding: gzip\r\nTransfer-Encoding: chunked", GZIPPED),
}


@pytest.mark.parametrize("case", list(CONTENT_ENCODING), ids=list(CONTENT_ENCODING))
def test_content_encoding_is_refused_never_decompressed(stack: Stack, canary: Canary, case: str) -> None:
    check = Invariant(stack, canary)
    line, body = CONTENT_ENCODING[case]
    chunked_body = b"chunked" in line
    framing = b"Transfer-Encoding: chunked" if chunked_body else f"Content-Length: {len(body)}".encode()
    lines = [JSON, *line.split(b"\r\n")]
    if not chunked_body:
        lines.append(framing)
    raw = head(POST, lines, mint(stack)) + (chunked(body) if chunked_body else body)
    answer = send_raw(stack.port, tls_context(stack.root), raw)
    entry = check.refused(answer, *CE_REFUSED)
    assert entry["shape"] is None  # refused before a byte of the body was read
    assert check.forwarded() == []


def test_bytes_past_a_chunked_body_are_judged_as_a_new_head(stack: Stack, canary: Canary) -> None:
    """The chunked body ends at its last chunk and trailer; what follows is the next request, judged
    by the raw-head check again (here HTTP/1.0: refused, closed), never part of the first."""
    check = Invariant(stack, canary, validated=[BODY])
    tail = b"GET /orders.api.internal/v1/orders HTTP/1.0\r\nHost: x\r\n\r\n"
    raw = head(POST, [JSON, b"Transfer-Encoding: chunked"], mint(stack))
    raw += chunked(BODY)[:-2] + b"X-Trailer: t\r\n\r\n" + tail
    with Conn(stack.port, tls_context(stack.root)) as conn:
        conn.send(raw)
        first, second = conn.answer(), conn.answer(wait_close=True)
    assert first.status == 201, first.body
    check.refused(second, *MALFORMED)
    assert second.closed
    [forwarded] = check.forwarded()
    assert forwarded.body == BODY


def test_expect_100_continue_is_answered_only_when_the_body_is_wanted(stack: Stack, canary: Canary) -> None:
    check = Invariant(stack, canary, validated=[BODY])
    expect = [JSON, f"Content-Length: {len(BODY)}".encode(), b"Expect: 100-continue"]
    with Conn(stack.port, tls_context(stack.root)) as conn:
        conn.send(head(POST, expect, mint(stack)))
        assert conn.poll(5.0), "no 100 Continue while the broker waits for the body"
        interim = conn.response()
        conn.send(BODY)
        final = conn.answer()
    assert (interim.status, final.status) == (100, 201), final.body
    # refused before the body is wanted: the final answer comes first, and no 100 at all
    target = f"POST http://{canary.authority}/ HTTP/1.1".encode()
    with Conn(stack.port, tls_context(stack.root)) as conn:
        conn.send(head(target, expect, mint(stack)))
        refused = conn.response()
    check.refused(refused, 400, "non_canonical_target")
    assert len(check.forwarded()) == 1


def test_exact_chunked_is_accepted_and_reframed(stack: Stack, canary: Canary) -> None:
    """The control case: `Transfer-Encoding: chunked` exactly, with a trailer, goes upstream with
    the broker's own Content-Length framing and the very bytes that were validated."""
    check = Invariant(stack, canary, validated=[BODY])
    body = b"10;ext=1\r\n" + BODY[:16] + b"\r\n" + f"{len(BODY) - 16:x}\r\n".encode() + BODY[16:]
    body += b"\r\n0\r\nX-Trailer: smuggled\r\n\r\n"
    raw = head(POST, [JSON, b"Transfer-Encoding: chunked"], mint(stack)) + body
    answer = send_raw(stack.port, tls_context(stack.root), raw)
    assert answer.status == 201, answer.body
    [forwarded] = check.forwarded()
    assert forwarded.body == BODY
    assert forwarded.header("transfer-encoding") is None and forwarded.header("x-trailer") is None
    check.clean()


def get(token: str, target: str = LIST) -> bytes:
    return head(f"GET {target} HTTP/1.1".encode(), [], token)


def test_pipelined_requests_are_each_gated_in_order(stack: Stack, canary: Canary) -> None:
    check = Invariant(stack, canary)
    tokens = [mint(stack, "orders:read") for _ in range(3)]
    with Conn(stack.port, tls_context(stack.root)) as conn:
        conn.send(get(tokens[0]) + get(tokens[1], "/orders.api.internal/v1/orders?limit=2") + get(tokens[0]))
        first, second, replay = conn.answer(), conn.answer(), conn.answer()
    assert (first.status, second.status) == (200, 200)
    assert [r.raw_path for r in check.forwarded()] == ["/v1/orders?limit=5", "/v1/orders?limit=2"]
    check.refused(replay, 403, "token_replayed")


def test_pipelined_hostile_request_is_refused_after_a_good_one(stack: Stack, canary: Canary) -> None:
    check = Invariant(stack, canary)
    good, bad = mint(stack, "orders:read"), mint(stack, "orders:read")
    absolute = f"GET http://{canary.authority}/ HTTP/1.1".encode()
    with Conn(stack.port, tls_context(stack.root)) as conn:
        conn.send(get(good) + head(absolute, [], bad))
        first, second = conn.answer(), conn.answer()
    assert first.status == 200
    check.refused(second, 400, "non_canonical_target")
    assert len(check.forwarded()) == 1


def test_smuggled_request_after_a_good_one_is_refused_and_closes(stack: Stack, canary: Canary) -> None:
    """CL.TE: a front end honouring Content-Length would see one request, one honouring chunked two."""
    check = Invariant(stack, canary)
    good = mint(stack, "orders:read")
    smuggled = b"0\r\n\r\nGET http://" + canary.authority.encode() + b"/ HTTP/1.1\r\nHost: x\r\n\r\n"
    smuggle = head(
        POST, [JSON, f"Content-Length: {len(smuggled)}".encode(), b"Transfer-Encoding: chunked"], good
    )
    with Conn(stack.port, tls_context(stack.root)) as conn:
        conn.send(get(good) + smuggle + smuggled)
        first, second = conn.answer(), conn.answer(wait_close=True)
    assert first.status == 200
    check.refused(second, *BAD_TE)
    assert second.closed
    assert len(check.forwarded()) == 1


def test_request_hidden_in_a_body_is_only_ever_body(stack: Stack, canary: Canary) -> None:
    """A body that is an HTTP request is a body: refused by the shape gate, never parsed as a request."""
    check = Invariant(stack, canary)
    inner = f"GET http://{canary.authority}/ HTTP/1.1\r\nHost: {canary.authority}\r\n\r\n".encode()
    raw = head(POST, [JSON, f"Content-Length: {len(inner)}".encode()], mint(stack)) + inner
    answer = send_raw(stack.port, tls_context(stack.root), raw)
    check.refused(answer, 400, "invalid_json")
    assert check.forwarded() == []


def test_bytes_past_content_length_are_a_new_request_from_the_same_caller(
    stack: Stack, canary: Canary
) -> None:
    """Content-Length shorter than what is sent: the rest is parsed as the caller's next request and
    goes through every gate again (here: refused as non-canonical), never appended to the first."""
    check = Invariant(stack, canary)
    first_token, second_token = mint(stack), mint(stack, "orders:read")
    tail = head(f"GET http://{canary.authority}/v1/orders HTTP/1.1".encode(), [], second_token)
    raw = head(POST, [JSON, f"Content-Length: {len(BODY)}".encode()], first_token) + BODY + tail
    check.validated.append(BODY)
    with Conn(stack.port, tls_context(stack.root)) as conn:
        conn.send(raw)
        first, second = conn.answer(), conn.answer()
    assert first.status == 201
    check.refused(second, 400, "non_canonical_target")
    [forwarded] = check.forwarded()
    assert forwarded.body == BODY
