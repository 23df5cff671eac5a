"""Property-based hostile input (hypothesis): generated request heads, targets, headers and bodies.

Two levels, as in h11's own tests:
- sans-I/O: whatever head bytes `hygiene.check_head` accepts, the listener's own framing
  (`listener.Message`: llhttp behind hygiene's request line) gives the very same request as h11
  does (method, target, headers, body, and the bytes left for the next request), so the check and
  the parsers can never disagree about where a request or its body ends; and llhttp, given the
  caller's own request line, either parses the same method, target and headers or refuses the
  line itself (its narrower target grammar, its method list), which is why it never gets it;
- over real mTLS: every generated request gets an answer that is never a 5xx, within bounds; a
  refusal is audited with the reason the caller saw; nothing reaches the canary; and whatever
  reaches the upstream is a registered route's canonical path with broker-written framing and a
  body byte-identical to the one that was validated.
"""

from __future__ import annotations

import json

import h11
import httptools
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hostile import Canary, Invariant, mint, order_body, request_bytes, send_raw, tls_context
from stack import Stack
from ztb.edge import hygiene
from ztb.edge.listener import Message

# -- sans-I/O: the raw-head check never disagrees with h11 or llhttp---------------------------------

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


@st.composite
def plausible_heads(draw: st.DrawFn) -> bytes:
    """Heads that are mostly well formed (one Host, CRLF, HTTP/1.1), so that hygiene accepts a fair
    share of them and the parsers are compared on many heads, not a handful."""
    method = draw(
        st.sampled_from([b"GET", b"POST", b"PUT", b"DELETE", b"CONNECT", b"OPTIONS", b"PRI", b"QUERY"])
    )
    target = draw(st.one_of(TARGETS, TARGETS.map(lambda t: b"/" + t)))
    fields = draw(st.lists(st.tuples(NAMES.filter(lambda n: n.lower() != b"host"), VALUES), max_size=3))
    framing = [(b"Content-Length", b"5"), (b"Content-Length", b"0"), (b"Transfer-Encoding", b"chunked")]
    for field in [(b"Host", b"x"), *draw(st.lists(st.sampled_from(framing), max_size=1))]:
        fields.insert(draw(st.integers(0, len(fields))), field)
    return (
        method
        + b" "
        + target
        + b" HTTP/1.1\r\n"
        + b"".join(n + b": " + v + b"\r\n" for n, v in fields)
        + b"\r\n"
    )


CHUNK_DATA = st.sampled_from(
    [b"a", b"hello", b"\n", b"\r\n", b"\r\n\r\n", b"0\r\n\r\n", b"GET / HTTP/1.1\r\n", b"\x00\xff"]
)
CHUNK_EXTS = st.sampled_from([b"", b"", b";a=b", b";x", b';q="v"'])
TRAILERS = st.sampled_from([b"", b"", b"X-Trailer: smuggled\r\n", b"Host: evil\r\nX-A: b\r\n"])
TAILS = st.sampled_from(
    [b"", b"GET /next HTTP/1.1\r\nHost: x\r\n\r\n", b"\x00garbage\n", b"0\r\n\r\n", b"\r\n"]
)


@st.composite
def chunked_bodies(draw: st.DrawFn) -> tuple[bytes, bytes]:
    """A chunked body on the wire, and what it decodes to."""
    chunks = draw(st.lists(st.lists(CHUNK_DATA, min_size=1, max_size=3).map(b"".join), max_size=4))
    wire = b"".join(f"{len(c):x}".encode() + draw(CHUNK_EXTS) + b"\r\n" + c + b"\r\n" for c in chunks)
    wire += b"0" + draw(CHUNK_EXTS) + b"\r\n" + draw(TRAILERS) + b"\r\n"
    return wire, b"".join(chunks)


class _Recorder:
    """What llhttp reports for a head given with its own request line."""

    def __init__(self) -> None:
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value.strip(b" \t")))


def h11_frames(data: bytes) -> tuple[h11.Request, bytes, bytes]:
    """h11 as the oracle: the request, its body and the bytes it leaves for the next request."""
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(data)
    request = conn.next_event()
    assert isinstance(request, h11.Request), request
    body = b""
    while not isinstance(event := conn.next_event(), h11.EndOfMessage):
        assert isinstance(event, h11.Data), event
        body += event.data
    return request, body, conn.trailing_data[0]


@settings(max_examples=3000, deadline=None)
@given(st.one_of(heads(), plausible_heads()), st.data())
def test_what_the_check_accepts_h11_and_llhttp_frame_identically(head: bytes, data: st.DataObject) -> None:
    assert_framed_alike(head, data)


@st.composite
def framed_heads(draw: st.DrawFn) -> bytes:
    """Sound heads with a body: Content-Length of any size or chunked, kept alive or not."""
    framing = draw(
        st.one_of(
            st.integers(0, 40).map(lambda n: f"Content-Length: {n}".encode()),
            st.just(b"Transfer-Encoding: chunked"),
        )
    )
    extra = draw(
        st.lists(st.sampled_from([b"Connection: close", b"Expect: 100-continue", b"X-A: b"]), max_size=2)
    )
    return b"\r\n".join([b"POST /a HTTP/1.1", b"Host: x", framing, *extra]) + b"\r\n\r\n"


@settings(max_examples=1000, deadline=None)
@given(framed_heads(), st.data())
def test_bodies_and_the_bytes_after_them_are_framed_identically(head: bytes, data: st.DataObject) -> None:
    assert hygiene.check_head(head, 64).problem is None
    assert_framed_alike(head, data)


def assert_framed_alike(head: bytes, data: st.DataObject) -> None:
    """If hygiene accepts `head`: h11 and the listener's llhttp framing agree on it, on a body
    drawn to fit it, and on the bytes after that body, however the bytes arrive."""
    end = hygiene.head_end(head)
    if end is None:
        return
    head = head[:end]
    verdict = hygiene.check_head(head, 64)
    if verdict.problem is not None:
        return
    lines = head[:-4].split(b"\r\n")
    ours = {line.split(b":", 1)[0].lower(): line.split(b":", 1)[1].strip() for line in lines[1:]}
    if b"transfer-encoding" in ours:
        wire, body = data.draw(chunked_bodies())
    else:
        body = data.draw(
            st.binary(
                min_size=int(ours.get(b"content-length", b"0")),
                max_size=int(ours.get(b"content-length", b"0")),
            )
        )
        wire = body
    tail = data.draw(TAILS)
    # h11, the oracle
    request, h11_body, h11_tail = h11_frames(head + wire + tail)
    assert request.method.decode() == verdict.method and request.target.decode() == verdict.target
    assert request.http_version == b"1.1"
    assert len(request.headers) == len(lines) - 1
    theirs = dict(request.headers)
    for name in (b"content-length", b"transfer-encoding"):
        assert ours.get(name) == theirs.get(name)
    assert (h11_body, h11_tail) == (body, tail)
    # the listener's framing: llhttp behind hygiene's request line, fed as the bytes arrive
    message = Message(head, len(lines[0]) + 2)
    assert message.headers == list(request.headers)
    rest = b""
    arrived = wire + tail
    cuts = sorted(data.draw(st.lists(st.integers(0, len(arrived)), max_size=4)))
    for piece in (arrived[a:b] for a, b in zip([0, *cuts], [*cuts, len(arrived)], strict=True)):
        rest = message.feed(rest + piece) if not message.complete else rest + piece
    assert message.complete
    assert (b"".join(message.chunks), rest) == (body, tail)
    # llhttp given the caller's own request line: the same, or it refuses that line itself
    recorder = _Recorder()
    try:
        httptools.HttpRequestParser(recorder).feed_data(head)
    except httptools.HttpParserUpgrade:
        assert verdict.method == "CONNECT"  # llhttp stops at a CONNECT head: no framing to compare
    except httptools.HttpParserError as exc:
        refused_line = isinstance(
            exc, httptools.HttpParserInvalidURLError | httptools.HttpParserInvalidMethodError
        )
        assert refused_line or verdict.method == "PRI", exc  # PRI: llhttp expects an HTTP/2 preface
        assert not recorder.headers
        return
    assert recorder.url.decode() == verdict.target
    assert recorder.headers == list(request.headers)


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
