"""Request hygiene on the raw bytes of a request head: what parsers would tolerate and ztb does not.

Parsers are lenient where RFC 9112 allows leniency, each in its own way, and they normalise what
they parse. h11 accepts bare LF line endings and obs-fold continuation lines, lowercases
`Transfer-Encoding` values (so `CHUNKED` passes as `chunked`), merges repeated identical
`Content-Length` headers and accepts obs-text in header values; llhttp (the listener's parser)
accepts `CHUNKED`, `gzip, chunked`, obs-text, no `Host` or two, and HTTP/1.0. A broker that frames
for its upstreams must not depend on any of that, so the head is checked here, byte for byte,
before any parser interprets it:
- the request line is exactly `METHOD SP origin-ish-target SP HTTP/1.1 CRLF` (HTTP/1.0, HTTP/0.9,
  HTTP/2 prefaces and anything else are malformed), checked as soon as it is complete;
- every line ends with CRLF; no obs-fold; header names are tokens; values are printable ASCII;
- exactly one `Host`; no `Upgrade` (h2c, websocket);
- at most one `Content-Length`, digits only; at most one `Transfer-Encoding`, exactly `chunked`
  as sent; never both;
- at most `max_headers` header lines.
Pure code over bytes: no I/O, no parser. Refusals are reason codes; the edge audits and answers them.
Bad framing of any kind is `malformed_request` (SPEC §2), Transfer-Encoding games included.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ztb.reasons import Reason

# Where h11 ends a head (a blank line, with or without CR): the same rule, so both see one head.
_BLANK_LINE = re.compile(rb"\n\r?\n")
_REQUEST_LINE = re.compile(rb"([A-Z]{1,16}) ([\x21-\x7e]+) HTTP/1\.1")
_METHOD = re.compile(rb"[A-Z]{1,16}")
_HEADER = re.compile(rb"([!#$%&'*+\-.^_`|~0-9A-Za-z]+):(.*)")
# Printable ASCII with inner spaces or tabs; leading and trailing whitespace is stripped first.
_VALUE = re.compile(rb"(?:[\x21-\x7e](?:[\x20-\x7e\t]*[\x21-\x7e])?)?")
_CONTENT_LENGTH = re.compile(rb"[0-9]{1,18}")
MAX_RECORDED_TARGET = 1024


@dataclass(frozen=True, slots=True)
class Verdict:
    """What the head said (for the audit entry) and, if it is refused, why."""

    method: str | None
    target: str | None
    problem: Reason | None


def first_line(buffer: bytes | bytearray) -> bytes | None:
    """The request line with its line ending, once it is complete in `buffer`."""
    end = buffer.find(b"\n")
    return None if end < 0 else bytes(buffer[: end + 1])


def head_end(buffer: bytes | bytearray) -> int | None:
    """The length of the request head (through its blank line) once it is complete in `buffer`."""
    match = _BLANK_LINE.search(buffer)
    return None if match is None else match.end()


def _known(line: bytes) -> tuple[str | None, str | None]:
    """Method and target as far as a refused request line shows them, for the audit entry."""
    parts = line.rstrip(b"\r\n").split(b" ")
    method = parts[0].decode("ascii") if _METHOD.fullmatch(parts[0]) else None
    target = parts[1][:MAX_RECORDED_TARGET].decode("latin-1") if len(parts) > 1 and parts[1] else None
    return method, target


def check_request_line(line: bytes) -> Verdict:
    """`line` is the first line of a request, line ending included."""
    method, target = _known(line)
    if not line.endswith(b"\r\n") or _REQUEST_LINE.fullmatch(line[:-2]) is None:
        return Verdict(method, target, Reason.MALFORMED_REQUEST)
    return Verdict(method, target, None)


def check_head(head: bytes, max_headers: int) -> Verdict:
    """`head` is a whole request head, through the blank line that ends it."""
    verdict = check_request_line(first_line(head) or head)
    if verdict.problem is not None:
        return verdict

    def refuse(reason: Reason) -> Verdict:
        return Verdict(verdict.method, verdict.target, reason)

    # Every LF is part of a CRLF and every CR part of one: no bare line endings anywhere.
    crlf = head.count(b"\r\n")
    if head.count(b"\n") != crlf or head.count(b"\r") != crlf or not head.endswith(b"\r\n\r\n"):
        return refuse(Reason.MALFORMED_REQUEST)
    lines = head[:-4].split(b"\r\n")[1:]
    if len(lines) > max_headers:
        return refuse(Reason.HEADERS_TOO_LARGE)
    seen: dict[bytes, list[bytes]] = {}
    for line in lines:
        match = _HEADER.fullmatch(line)  # a leading space or tab (obs-fold) never matches a token
        if match is None:
            return refuse(Reason.MALFORMED_REQUEST)
        value = match.group(2).strip(b" \t")
        if _VALUE.fullmatch(value) is None:
            return refuse(Reason.MALFORMED_REQUEST)
        seen.setdefault(match.group(1).lower(), []).append(value)
    if len(seen.get(b"host", ())) != 1 or b"upgrade" in seen:
        return refuse(Reason.MALFORMED_REQUEST)
    encodings = seen.get(b"transfer-encoding", [])
    lengths = seen.get(b"content-length", [])
    if encodings and (encodings != [b"chunked"] or lengths):
        return refuse(Reason.MALFORMED_REQUEST)
    if len(lengths) > 1 or (lengths and _CONTENT_LENGTH.fullmatch(lengths[0]) is None):
        return refuse(Reason.MALFORMED_REQUEST)
    return verdict
