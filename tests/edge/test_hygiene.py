"""The raw-head check on bytes alone (sans-I/O): what it refuses that h11, or llhttp (the data
plane's parser, via httptools), would have let through."""

from __future__ import annotations

import h11
import httptools
import pytest

from ztb.config.broker import Limits
from ztb.edge import hygiene
from ztb.reasons import Reason

OK = b"POST /a/b HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n"


def h11_accepts(head: bytes) -> bool:
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(head)
    try:
        return isinstance(conn.next_event(), h11.Request)
    except h11.RemoteProtocolError:
        return False


# Heads h11 accepts (or normalises) and ztb refuses, with the reason ztb gives.
LENIENT_IN_H11 = {
    "TE upper case": (
        b"POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: CHUNKED\r\n\r\n",
        Reason.MALFORMED_REQUEST,
    ),
    "CL+TE": (
        b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
        Reason.MALFORMED_REQUEST,
    ),
    "duplicate CL": (
        b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\n",
        Reason.MALFORMED_REQUEST,
    ),
    "CL list": (b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 2, 2\r\n\r\n", Reason.MALFORMED_REQUEST),
    "bare LF": (b"GET /a HTTP/1.1\nHost: x\n\n", Reason.MALFORMED_REQUEST),
    "obs-fold": (b"GET /a HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n", Reason.MALFORMED_REQUEST),
    "obs-text": (b"GET /a HTTP/1.1\r\nHost: x\r\nX-A: \xe4\r\n\r\n", Reason.MALFORMED_REQUEST),
    "HTTP/1.0": (b"GET /a HTTP/1.0\r\n\r\n", Reason.MALFORMED_REQUEST),
    "Upgrade": (b"GET /a HTTP/1.1\r\nHost: x\r\nUpgrade: h2c\r\n\r\n", Reason.MALFORMED_REQUEST),
}


@pytest.mark.parametrize("name", list(LENIENT_IN_H11))
def test_refuses_what_h11_tolerates(name: str) -> None:
    head, reason = LENIENT_IN_H11[name]
    assert h11_accepts(head), "the case must show an h11 leniency"
    assert hygiene.check_head(head, 64).problem is reason


class _HeadEnd:
    def __init__(self) -> None:
        self.complete = False

    def on_headers_complete(self) -> None:
        self.complete = True


def llhttp_accepts(head: bytes) -> bool:
    """llhttp (strict, as the listener runs it) parses the head, or would switch protocols."""
    seen = _HeadEnd()
    try:
        httptools.HttpRequestParser(seen).feed_data(head)
    except httptools.HttpParserUpgrade:
        return True
    except httptools.HttpParserError:
        return False
    return seen.complete


# Heads llhttp accepts (or would switch protocols on) and ztb refuses, with the reason ztb gives:
# the h11 leniencies llhttp shares, and llhttp's own.
LENIENT_IN_LLHTTP = {
    **{name: LENIENT_IN_H11[name] for name in ("TE upper case", "obs-text", "HTTP/1.0", "Upgrade")},
    "no Host": (b"GET /a HTTP/1.1\r\n\r\n", Reason.MALFORMED_REQUEST),
    "two Hosts": (b"GET /a HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n", Reason.MALFORMED_REQUEST),
    "TE list": (
        b"POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
        Reason.MALFORMED_REQUEST,
    ),
    "TE twice": (
        b"POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n",
        Reason.MALFORMED_REQUEST,
    ),
    "h2c upgrade": (
        b"GET /a HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n",
        Reason.MALFORMED_REQUEST,
    ),
    "HTTP/0.9 line": (b"GET /a\r\n\r\n", Reason.MALFORMED_REQUEST),
}


@pytest.mark.parametrize("name", list(LENIENT_IN_LLHTTP))
def test_refuses_what_llhttp_tolerates(name: str) -> None:
    head, reason = LENIENT_IN_LLHTTP[name]
    assert llhttp_accepts(head), "the case must show an llhttp leniency"
    assert hygiene.check_head(head, 64).problem is reason


def test_accepts_a_plain_head_and_reports_method_and_target() -> None:
    assert hygiene.check_head(OK, 64) == hygiene.Verdict("POST", "/a/b", None)
    assert hygiene.head_end(OK + b"{}") == len(OK)


def test_header_count_is_capped() -> None:
    head = b"GET /a HTTP/1.1\r\nHost: x\r\n" + b"X-A: b\r\n" * 8 + b"\r\n"
    assert hygiene.check_head(head, 9).problem is None
    assert hygiene.check_head(head, 8).problem is Reason.HEADERS_TOO_LARGE


def test_request_line_is_judged_as_soon_as_it_is_complete() -> None:
    assert hygiene.first_line(b"GET /a") is None
    assert hygiene.check_request_line(b"GET /a\r\n") == hygiene.Verdict("GET", "/a", Reason.MALFORMED_REQUEST)
    assert hygiene.check_request_line(b"GET /a HTTP/1.1\r\n").problem is None


@pytest.mark.parametrize("field", ["header_timeout_s", "body_timeout_s", "idle_timeout_s", "max_connections"])
def test_limits_can_be_tuned_never_switched_off(field: str) -> None:
    Limits.model_validate({field: 1 if field.endswith("_s") else 16})
    with pytest.raises(ValueError):
        Limits.model_validate({field: 0})
