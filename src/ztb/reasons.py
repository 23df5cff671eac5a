"""Gates and reason codes: defined once, used by the gates, the audit entries, the error bodies
and the tests alike.

Each reason belongs to exactly one gate and answers with exactly one HTTP status, so a reason
code alone says everything a caller, an operator or an auditor needs to know about a refusal.
This module must never grow a reason that means "allowed anyway".
"""

from __future__ import annotations

from enum import StrEnum


class Gate(StrEnum):
    IDENTITY = "identity"
    SCOPE = "scope"
    ALLOWLIST = "allowlist"
    SHAPE = "shape"
    EGRESS = "egress"


class Reason(StrEnum):
    # gate 1: identity
    NO_CLIENT_CERTIFICATE = "no_client_certificate"  # TLS level: connection refused
    UNTRUSTED_CERTIFICATE = "untrusted_certificate"  # TLS level: chain, validity or purpose failed
    TLS_HANDSHAKE_FAILED = "tls_handshake_failed"  # TLS level: version, cipher or garbage
    CLIENT_CERT_NOT_CLIENT_AUTH = "client_cert_not_client_auth"  # TLS level: EKU lacks clientAuth
    CLIENT_CERT_IS_CA = "client_cert_is_ca"  # TLS level: leaf is a CA certificate
    TOO_MANY_CONNECTIONS = "too_many_connections"  # connection level: the listener's cap is reached
    UNKNOWN_SPKI = "unknown_spki"  # 403: valid certificate, SPKI pinned to no identity

    # gate 2: scope
    MISSING_TOKEN = "missing_token"
    MALFORMED_TOKEN = "malformed_token"
    UNKNOWN_TOKEN = "unknown_token"
    TOKEN_EXPIRED = "token_expired"
    WRONG_CERTIFICATE = "wrong_certificate"
    TOKEN_REPLAYED = "token_replayed"
    UPSTREAM_MISMATCH = "upstream_mismatch"
    SCOPE_MISMATCH = "scope_mismatch"
    NOT_GRANTED = "not_granted"
    BAD_TOKEN_REQUEST = "bad_token_request"
    TOKEN_STORE_UNAVAILABLE = "token_store_unavailable"

    # gate 3: allowlist
    MALFORMED_REQUEST = "malformed_request"
    NON_CANONICAL_TARGET = "non_canonical_target"
    NO_ROUTE = "no_route"

    # gate 4: shape
    BODY_TOO_LARGE = "body_too_large"
    HEADERS_TOO_LARGE = "headers_too_large"
    BODY_TIMEOUT = "body_timeout"
    HEADER_TIMEOUT = "header_timeout"
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"
    UNSUPPORTED_CHARSET = "unsupported_charset"
    CONTENT_ENCODING_REFUSED = "content_encoding_refused"
    BAD_TRANSFER_ENCODING = "bad_transfer_encoding"
    BODY_NOT_ALLOWED = "body_not_allowed"
    INVALID_UTF8 = "invalid_utf8"
    INVALID_JSON = "invalid_json"
    DUPLICATE_KEY = "duplicate_key"
    NON_FINITE_NUMBER = "non_finite_number"
    NUMBER_OUT_OF_RANGE = "number_out_of_range"
    LONE_SURROGATE = "lone_surrogate"
    NESTING_TOO_DEEP = "nesting_too_deep"
    SCHEMA_VIOLATION = "schema_violation"

    # gate 5: egress
    AUDIT_UNAVAILABLE = "audit_unavailable"
    UPSTREAM_UNREACHABLE = "upstream_unreachable"
    UPSTREAM_TLS_FAILED = "upstream_tls_failed"
    UPSTREAM_PIN_MISMATCH = "upstream_pin_mismatch"
    UPSTREAM_BAD_RESPONSE = "upstream_bad_response"
    UPSTREAM_RESPONSE_TOO_LARGE = "upstream_response_too_large"
    UPSTREAM_TIMEOUT = "upstream_timeout"


def _table() -> dict[Reason, tuple[Gate, int]]:
    g = Gate
    r = Reason
    return {
        r.NO_CLIENT_CERTIFICATE: (g.IDENTITY, 0),
        r.UNTRUSTED_CERTIFICATE: (g.IDENTITY, 0),
        r.TLS_HANDSHAKE_FAILED: (g.IDENTITY, 0),
        r.CLIENT_CERT_NOT_CLIENT_AUTH: (g.IDENTITY, 0),
        r.CLIENT_CERT_IS_CA: (g.IDENTITY, 0),
        r.TOO_MANY_CONNECTIONS: (g.IDENTITY, 0),
        r.UNKNOWN_SPKI: (g.IDENTITY, 403),
        r.MISSING_TOKEN: (g.SCOPE, 401),
        r.MALFORMED_TOKEN: (g.SCOPE, 401),
        r.UNKNOWN_TOKEN: (g.SCOPE, 401),
        r.TOKEN_EXPIRED: (g.SCOPE, 401),
        r.WRONG_CERTIFICATE: (g.SCOPE, 403),
        r.TOKEN_REPLAYED: (g.SCOPE, 403),
        r.UPSTREAM_MISMATCH: (g.SCOPE, 403),
        r.SCOPE_MISMATCH: (g.SCOPE, 403),
        r.NOT_GRANTED: (g.SCOPE, 403),
        r.BAD_TOKEN_REQUEST: (g.SCOPE, 400),
        r.TOKEN_STORE_UNAVAILABLE: (g.SCOPE, 503),
        r.MALFORMED_REQUEST: (g.ALLOWLIST, 400),
        r.NON_CANONICAL_TARGET: (g.ALLOWLIST, 400),
        r.NO_ROUTE: (g.ALLOWLIST, 404),
        r.BODY_TOO_LARGE: (g.SHAPE, 413),
        r.HEADERS_TOO_LARGE: (g.SHAPE, 431),
        r.BODY_TIMEOUT: (g.SHAPE, 408),
        r.HEADER_TIMEOUT: (g.SHAPE, 408),
        r.UNSUPPORTED_MEDIA_TYPE: (g.SHAPE, 415),
        r.UNSUPPORTED_CHARSET: (g.SHAPE, 415),
        r.CONTENT_ENCODING_REFUSED: (g.SHAPE, 415),
        r.BAD_TRANSFER_ENCODING: (g.SHAPE, 400),
        r.BODY_NOT_ALLOWED: (g.SHAPE, 400),
        r.INVALID_UTF8: (g.SHAPE, 400),
        r.INVALID_JSON: (g.SHAPE, 400),
        r.DUPLICATE_KEY: (g.SHAPE, 400),
        r.NON_FINITE_NUMBER: (g.SHAPE, 400),
        r.NUMBER_OUT_OF_RANGE: (g.SHAPE, 400),
        r.LONE_SURROGATE: (g.SHAPE, 400),
        r.NESTING_TOO_DEEP: (g.SHAPE, 400),
        r.SCHEMA_VIOLATION: (g.SHAPE, 400),
        r.AUDIT_UNAVAILABLE: (g.EGRESS, 503),
        r.UPSTREAM_UNREACHABLE: (g.EGRESS, 502),
        r.UPSTREAM_TLS_FAILED: (g.EGRESS, 502),
        r.UPSTREAM_PIN_MISMATCH: (g.EGRESS, 502),
        r.UPSTREAM_BAD_RESPONSE: (g.EGRESS, 502),
        r.UPSTREAM_RESPONSE_TOO_LARGE: (g.EGRESS, 502),
        r.UPSTREAM_TIMEOUT: (g.EGRESS, 504),
    }


_GATE_AND_STATUS = _table()
assert set(_GATE_AND_STATUS) == set(Reason), "every reason needs a gate and a status"


def gate_of(reason: Reason) -> Gate:
    return _GATE_AND_STATUS[reason][0]


def status_of(reason: Reason) -> int:
    """The HTTP status a refusal for this reason answers with (0: refused at the TLS or connection level)."""
    return _GATE_AND_STATUS[reason][1]
