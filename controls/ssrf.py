#!/usr/bin/env python3
"""Control: SSRF targets are refused. With a valid token in hand, a caller tries to make the
broker reach an address of its choosing: URLs in the path, absolute-form and authority-form
targets, a forged Host, dot segments literal and encoded, encoded slashes, userinfo tricks and
raw addresses. Each is refused by the allowlist gate, recorded, and never reaches any upstream."""

from __future__ import annotations

from ztb.evidence.controls import SAMPLE_UPSTREAM as UP
from ztb.evidence.controls import Control

CANON = ("allowlist", "non_canonical_target", 400)
NO_ROUTE = ("allowlist", "no_route", 404)
TARGETS = [
    ("a URL in the path", "GET", "/http://169.254.169.254/latest/meta-data/", {}, CANON),
    ("absolute-form request target", "GET", "http://169.254.169.254/latest/meta-data/", {}, CANON),
    ("absolute-form naming the upstream", "GET", f"https://{UP}/v1/orders", {}, CANON),
    ("a forged Host header", "GET", "/latest/meta-data/iam", {"Host": "169.254.169.254"}, NO_ROUTE),
    ("dot segments out of the upstream", "GET", f"/{UP}/../169.254.169.254/latest", {}, CANON),
    ("percent-encoded dot segments", "GET", f"/{UP}/v1/orders/%2E%2E/%2E%2E/admin", {}, CANON),
    ("a percent-encoded slash", "GET", f"/{UP}%2F..%2F127.0.0.1/v1/orders", {}, CANON),
    ("a backslash", "GET", f"/{UP}\\..\\admin", {}, CANON),
    ("userinfo in the upstream name", "GET", f"/{UP}@169.254.169.254/v1/orders", {}, NO_ROUTE),
    ("a raw address as the upstream", "GET", "/127.0.0.1:22/etc/passwd", {}, NO_ROUTE),
    ("a metadata host as the upstream", "GET", "/169.254.169.254/latest/meta-data", {}, NO_ROUTE),
]


def probe(c: Control) -> None:
    ctx = c.ctx
    with ctx.run_upstream() as upstream:
        checkout = ctx.caller("svc.checkout")
        for name, method, target, headers, (gate, reason, status) in TARGETS:
            token = checkout.mint(UP, "orders:read")
            before = len(upstream.received)
            response = checkout.request(method, target, None, {**headers, "Authorization": f"Bearer {token}"})
            c.refused(
                f"{name}: {method} {target}", response, gate, reason, status=status, received_before=before
            )
        checkout.close()


if __name__ == "__main__":
    Control("ssrf", "SSRF targets are refused").run(probe)
