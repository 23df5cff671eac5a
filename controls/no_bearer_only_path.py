#!/usr/bin/env python3
"""Control: no bearer-only path. A valid token is useless without the certificate it was minted
for: presented without a certificate it gets no answer, from another identity's certificate it
is refused; and nothing but `Authorization: Bearer` is a credential (query, cookie, Basic)."""

from __future__ import annotations

from ztb.evidence.controls import SAMPLE_UPSTREAM as UP
from ztb.evidence.controls import Check, Control

ORDERS = f"/{UP}/v1/orders"


def probe(c: Control) -> None:
    ctx = c.ctx
    with ctx.run_upstream() as upstream:
        checkout, reports = ctx.caller("svc.checkout"), ctx.caller("svc.reports")
        token = checkout.mint(UP, "orders:read")
        request = f"GET {ORDERS} HTTP/1.1\r\nHost: broker\r\nAuthorization: Bearer {token}\r\n\r\n".encode()
        got = ctx.tls_attempt(None, None, request)
        c.record(
            Check(
                "svc.checkout's valid token, presented without a certificate",
                "no HTTP answer (TLS refused or closed)",
                got,
                ctx.refused_without_answer(got),
            )
        )
        before = len(upstream.received)
        response = reports.request("GET", ORDERS, None, {"Authorization": f"Bearer {token}"})
        c.refused(
            "the same token from svc.reports's certificate (svc.reports is granted orders:read)",
            response,
            "scope",
            "wrong_certificate",
            status=403,
            received_before=before,
        )
        for name, target, headers, reason in (
            ("a fresh token in the query string", ORDERS + "?access_token={t}", {}, "missing_token"),
            ("a fresh token in a cookie", ORDERS, {"Cookie": "access_token={t}"}, "missing_token"),
            ("a fresh token as Basic credentials", ORDERS, {"Authorization": "Basic {t}"}, "malformed_token"),
        ):
            fresh = checkout.mint(UP, "orders:read")
            before = len(upstream.received)
            response = checkout.request(
                "GET", target.format(t=fresh), None, {k: v.format(t=fresh) for k, v in headers.items()}
            )
            c.refused(name, response, "scope", reason, status=401, received_before=before)
        checkout.close()
        reports.close()


if __name__ == "__main__":
    Control("no_bearer_only_path", "no bearer-only path: a token needs its certificate").run(probe)
