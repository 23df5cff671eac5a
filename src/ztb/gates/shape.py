"""Gate 4, shape: framing, content type, size, strict JSON, the route's schema, and the request
reduced to what may go upstream.

Its output is `call.forward`: the allowlisted headers, the canonical path and the very bytes
that were validated, which are the bytes forwarded, byte for byte.
"""

from __future__ import annotations

import hashlib

import fastjsonschema

from ztb.gates.base import BodyFacts, BodyTimeout, BodyTooLarge, Call, Deny, Forward
from ztb.gates.strict_json import JSONRefused, parse
from ztb.reasons import Gate, Reason

JSON_MEDIA_TYPE = "application/json"


def _media_type_problem(value: str) -> Reason | None:
    media, *params = (part.strip() for part in value.split(";"))
    if media.lower() != JSON_MEDIA_TYPE:
        return Reason.UNSUPPORTED_MEDIA_TYPE
    for param in params:
        key, eq, val = param.partition("=")
        if not eq or key.strip().lower() != "charset":
            return Reason.UNSUPPORTED_MEDIA_TYPE
        if val.strip().strip('"').lower() != "utf-8":
            return Reason.UNSUPPORTED_CHARSET
    return None


def framing_problem(call: Call) -> Reason | None:
    """Transfer-Encoding other than exactly `chunked`, with Content-Length, or duplicated."""
    encodings = call.header_values("transfer-encoding")
    lengths = call.header_values("content-length")
    if encodings and (encodings != ["chunked"] or lengths):
        return Reason.BAD_TRANSFER_ENCODING
    if len(lengths) > 1:
        return Reason.BAD_TRANSFER_ENCODING
    return None


class ShapeGate:
    name = Gate.SHAPE

    async def check(self, call: Call) -> Deny | None:
        route = call.lookup.route
        assert route is not None and call.lookup.path is not None, "the allowlist gate runs first"
        framing = framing_problem(call)
        if framing is not None:
            return Deny(framing)
        if call.header_values("content-encoding"):
            return Deny(Reason.CONTENT_ENCODING_REFUSED)
        declared = call.body.declared_length()
        has_body = declared != 0
        content_type = None
        if route.validator is None:
            if has_body:
                return Deny(Reason.BODY_NOT_ALLOWED)
            body = b""
        else:
            types = call.header_values("content-type")
            if len(types) != 1:
                return Deny(Reason.UNSUPPORTED_MEDIA_TYPE)
            problem = _media_type_problem(types[0])
            if problem is not None:
                return Deny(problem)
            content_type = JSON_MEDIA_TYPE  # the broker writes its own, normalised
            if declared is not None and declared > route.max_bytes:
                return Deny(Reason.BODY_TOO_LARGE)
            try:
                body = await call.body.read(route.max_bytes)
            except BodyTooLarge:
                return Deny(Reason.BODY_TOO_LARGE)
            except BodyTimeout:
                return Deny(Reason.BODY_TIMEOUT)
        call.body_facts = BodyFacts(route.schema, len(body), "sha256:" + hashlib.sha256(body).hexdigest())
        if route.validator is not None:
            try:
                document = parse(body)
            except JSONRefused as refused:
                return Deny(refused.reason)
            try:
                route.validator(document)
            except fastjsonschema.JsonSchemaValueException:
                return Deny(Reason.SCHEMA_VIOLATION)
        allowed = route.request_headers
        headers = tuple((name, value) for name, value in call.headers if name in allowed)
        call.forward = Forward(call.lookup.path, headers, body, content_type)
        return None
