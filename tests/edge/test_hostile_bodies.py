"""Hostile bodies: charsets, invalid UTF-8, JSON that a lenient parser would accept, numbers that
overflow or lie about being integers, and bodies over the route's cap (with and without
Content-Length), over real mTLS against a running broker.

Each is refused by the shape gate before the upstream sees a byte; the accepted control cases
show that the bytes that were validated are the bytes forwarded.
"""

from __future__ import annotations

import json

import pytest

from hostile import Canary, Conn, Invariant, mint, order_body, send_raw, tls_context
from stack import Stack

CREATE = "/orders.api.internal/v1/orders/create"
BODY = order_body()
MAX_BYTES = 65536  # orders.create's max_bytes in the ztb init registry
JSON_TYPE = "application/json"


def with_field(field: str, raw_value: bytes) -> bytes:
    """BODY with `field` set to `raw_value`, spliced in as raw JSON text."""
    order = json.loads(BODY)
    marker = "\u0000MARK\u0000"
    if field.startswith("items."):
        order["items"][0][field[6:]] = marker
    elif field.startswith("shipping."):
        order["shipping"][field[9:]] = marker
    else:
        order[field] = marker
    text = json.dumps(order, separators=(",", ":")).encode()
    return text.replace(json.dumps(marker).encode(), raw_value)


def nested(depth: int) -> bytes:
    return with_field("note", b"[" * (depth - 1) + b"]" * (depth - 1))


def post(
    token: str, body: bytes, content_type: str | None = JSON_TYPE, extra: list[bytes] | None = None
) -> bytes:
    lines = [
        f"POST {CREATE} HTTP/1.1".encode(),
        b"Host: 127.0.0.1",
        f"Authorization: Bearer {token}".encode(),
    ]
    if content_type is not None:
        lines.append(f"Content-Type: {content_type}".encode())
    lines += extra or []
    lines.append(f"Content-Length: {len(body)}".encode())
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


UTF16 = BODY.decode().encode("utf-16")
# class -> (case name, content type, body, expected status and reason)
BODIES: dict[str, list[tuple[str, str | None, bytes, tuple[int, str]]]] = {
    "charsets": [
        (
            "utf-7",
            "application/json; charset=utf-7",
            b'{"note":"+ADw-script+AD4-"}',
            (415, "unsupported_charset"),
        ),
        ("utf-16", "application/json; charset=utf-16", UTF16, (415, "unsupported_charset")),
        ("utf-16le", "application/json; charset=UTF-16LE", UTF16[2:], (415, "unsupported_charset")),
        ("latin1", "application/json; charset=iso-8859-1", BODY, (415, "unsupported_charset")),
        ("unknown", "application/json; charset=x-unknown", BODY, (415, "unsupported_charset")),
        (
            "utf-8 then utf-7",
            "application/json; charset=utf-8; charset=utf-7",
            BODY,
            (415, "unsupported_charset"),
        ),
        ("text/plain", "text/plain", BODY, (415, "unsupported_media_type")),
        ("form", "application/x-www-form-urlencoded", b"a=b", (415, "unsupported_media_type")),
        ("json-patch", "application/json-patch+json", BODY, (415, "unsupported_media_type")),
        ("other parameter", "application/json; boundary=x", BODY, (415, "unsupported_media_type")),
        ("no content type", None, BODY, (415, "unsupported_media_type")),
    ],
    "invalid UTF-8": [
        ("0xff", JSON_TYPE, with_field("note", b'"\xff"'), (400, "invalid_utf8")),
        ("overlong slash", JSON_TYPE, with_field("note", b'"\xc0\xaf"'), (400, "invalid_utf8")),
        ("overlong dot", JSON_TYPE, with_field("shipping.city", b'"\xe0\x80\xae"'), (400, "invalid_utf8")),
        ("encoded surrogate", JSON_TYPE, with_field("note", b'"\xed\xa0\x80"'), (400, "invalid_utf8")),
        ("truncated", JSON_TYPE, with_field("note", b'"\xe2\x82"'), (400, "invalid_utf8")),
        ("utf-16 with BOM declared utf-8", "application/json; charset=utf-8", UTF16, (400, "invalid_utf8")),
        ("utf-8 BOM", JSON_TYPE, b"\xef\xbb\xbf" + BODY, (400, "invalid_json")),
    ],
    "duplicate keys": [
        ("top level", JSON_TYPE, BODY[:-1] + b',"currency":"USD"}', (400, "duplicate_key")),
        ("same value", JSON_TYPE, BODY[:-1] + b',"currency":"EUR"}', (400, "duplicate_key")),
        ("nested", JSON_TYPE, with_field("shipping.country", b'"GB","country":"US"'), (400, "duplicate_key")),
        ("escaped spelling", JSON_TYPE, BODY[:-1] + b',"curr\\u0065ncy":"USD"}', (400, "duplicate_key")),
    ],
    "NaN and Infinity": [
        ("NaN", JSON_TYPE, with_field("items.qty", b"NaN"), (400, "non_finite_number")),
        ("Infinity", JSON_TYPE, with_field("items.qty", b"Infinity"), (400, "non_finite_number")),
        (
            "-Infinity",
            JSON_TYPE,
            with_field("items.unit_price_cents", b"-Infinity"),
            (400, "non_finite_number"),
        ),
    ],
    "lone surrogates": [
        ("high", JSON_TYPE, with_field("note", b'"\\ud800"'), (400, "lone_surrogate")),
        ("low", JSON_TYPE, with_field("note", b'"\\udfff"'), (400, "lone_surrogate")),
        ("reversed pair", JSON_TYPE, with_field("note", b'"\\ude00\\ud83d"'), (400, "lone_surrogate")),
        ("in a key", JSON_TYPE, BODY[:-1] + b',"\\ud83d":1}', (400, "lone_surrogate")),
    ],
    "nesting beyond the limit": [
        ("33 levels", JSON_TYPE, nested(33), (400, "nesting_too_deep")),
        ("60000 levels", JSON_TYPE, b"[" * 60000 + b"]" * 5000, (400, "nesting_too_deep")),
        ("deep objects", JSON_TYPE, b'{"a":' * 5000 + b"1" + b"}" * 5000, (400, "nesting_too_deep")),
        ("32 levels reach the schema", JSON_TYPE, nested(32), (400, "schema_violation")),
    ],
    "numbers that overflow or lose precision": [
        ("1e400", JSON_TYPE, with_field("items.qty", b"1e400"), (400, "number_out_of_range")),
        ("-1e400", JSON_TYPE, with_field("items.unit_price_cents", b"-1e400"), (400, "number_out_of_range")),
        ("2^53+1", JSON_TYPE, with_field("items.qty", b"9007199254740993"), (400, "number_out_of_range")),
        ("-(2^53+1)", JSON_TYPE, with_field("items.qty", b"-9007199254740993"), (400, "number_out_of_range")),
        (
            "30 digits",
            JSON_TYPE,
            with_field("items.qty", b"123456789012345678901234567890"),
            (400, "number_out_of_range"),
        ),
        ("5000 digits", JSON_TYPE, with_field("items.qty", b"1" + b"0" * 5000), (400, "number_out_of_range")),
        ("2^53+0.5", JSON_TYPE, with_field("items.qty", b"9007199254740992.5"), (400, "schema_violation")),
    ],
    "1.0 where the schema says integer": [
        ("1.0", JSON_TYPE, with_field("items.qty", b"1.0"), (400, "schema_violation")),
        ("2e0", JSON_TYPE, with_field("items.qty", b"2e0"), (400, "schema_violation")),
        ("1E+0", JSON_TYPE, with_field("items.qty", b"1E+0"), (400, "schema_violation")),
        ("1299.00", JSON_TYPE, with_field("items.unit_price_cents", b"1299.00"), (400, "schema_violation")),
        ("-0.0", JSON_TYPE, with_field("items.unit_price_cents", b"-0.0"), (400, "schema_violation")),
    ],
}
CASES = [
    pytest.param(content_type, body, expected, id=f"{cls}:{name}")
    for cls, cases in BODIES.items()
    for name, content_type, body, expected in cases
]


@pytest.mark.parametrize(("content_type", "body", "expected"), CASES)
def test_hostile_body_is_refused(
    stack: Stack, canary: Canary, content_type: str | None, body: bytes, expected: tuple[int, str]
) -> None:
    check = Invariant(stack, canary)
    answer = send_raw(stack.port, tls_context(stack.root), post(mint(stack), body, content_type))
    entry = check.refused(answer, *expected)
    assert check.forwarded() == []
    if expected[0] == 400:  # the body was read and hashed: the entry says exactly which bytes
        assert entry["shape"]["bytes"] == len(body)


def test_two_content_types_are_refused(stack: Stack, canary: Canary) -> None:
    check = Invariant(stack, canary)
    raw = post(mint(stack), BODY, JSON_TYPE, [b"Content-Type: text/plain"])
    check.refused(send_raw(stack.port, tls_context(stack.root), raw), 415, "unsupported_media_type")


def test_body_on_a_get_is_refused(stack: Stack, canary: Canary) -> None:
    check = Invariant(stack, canary)
    token = mint(stack, "orders:read")
    raw = (
        b"GET /orders.api.internal/v1/orders HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
        + token.encode()
        + f"\r\nContent-Type: application/json\r\nContent-Length: {len(BODY)}\r\n\r\n".encode()
        + BODY
    )
    check.refused(send_raw(stack.port, tls_context(stack.root), raw), 400, "body_not_allowed")


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(BODY[:-1] + b" " * (MAX_BYTES - len(BODY)) + b"}", id="exactly max_bytes, padded"),
        pytest.param(json.dumps(json.loads(BODY), indent=3).encode(), id="pretty-printed"),
        pytest.param(with_field("note", b'"caf\\u00e9 \\ud83d\\ude00 \xc3\xa9"'), id="escapes and UTF-8"),
    ],
)
def test_validated_bytes_are_forwarded_byte_for_byte(stack: Stack, canary: Canary, body: bytes) -> None:
    check = Invariant(stack, canary, validated=[body])
    answer = send_raw(
        stack.port, tls_context(stack.root), post(mint(stack), body, "application/json; charset=UTF-8")
    )
    assert answer.status == 201, answer.body
    [forwarded] = check.forwarded()
    assert forwarded.body == body
    assert forwarded.header("content-type") == JSON_TYPE  # the broker writes its own, normalised
    check.clean()


@pytest.mark.parametrize("declared", [MAX_BYTES + 1, 10**15], ids=["max+1", "10^15"])
def test_declared_oversize_body_is_refused_before_it_is_sent(
    stack: Stack, canary: Canary, declared: int
) -> None:
    check = Invariant(stack, canary)
    head = post(mint(stack), b"", JSON_TYPE).replace(
        b"Content-Length: 0", f"Content-Length: {declared}".encode()
    )
    with Conn(stack.port, tls_context(stack.root)) as conn:
        conn.send(head)  # and not one byte of the body
        answer = conn.answer(wait_close=True)
    entry = check.refused(answer, 413, "body_too_large")
    assert entry["shape"] is None and answer.closed


def test_oversize_body_that_all_arrived_still_closes(stack: Stack, canary: Canary) -> None:
    """A chunked body over the cap sent whole, last chunk included: 413, and the connection is not
    reused for what follows."""
    check = Invariant(stack, canary)
    head = post(mint(stack), b"", JSON_TYPE).replace(b"Content-Length: 0", b"Transfer-Encoding: chunked")
    chunk = b"2000\r\n" + b" " * 0x2000 + b"\r\n"
    with Conn(stack.port, tls_context(stack.root)) as conn:
        conn.send(head + chunk * (MAX_BYTES // 0x2000 + 1) + b"0\r\n\r\n")
        answer = conn.answer(wait_close=True)
    check.refused(answer, 413, "body_too_large")
    assert answer.closed


def test_chunked_oversize_body_is_refused_before_it_ends(stack: Stack, canary: Canary) -> None:
    check = Invariant(stack, canary)
    head = post(mint(stack), b"", JSON_TYPE).replace(b"Content-Length: 0", b"Transfer-Encoding: chunked")
    chunk = b"2000\r\n" + b" " * 0x2000 + b"\r\n"
    with Conn(stack.port, tls_context(stack.root)) as conn:
        conn.send(head + chunk * (MAX_BYTES // 0x2000 + 1))  # 8 KiB over the cap, no last chunk
        answer = conn.answer(wait_close=True)
    check.refused(answer, 413, "body_too_large")
    assert answer.closed
