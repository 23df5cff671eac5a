#!/usr/bin/env python3
"""Control: default deny. Whatever the registry does not list is refused: an identity asking for a
scope it was not granted, an unknown route, an unknown upstream (one answer for both), an
unregistered method or query parameter, and a certificate from the right CA that no identity is
pinned to. Each refusal is checked in the answer, in the audit log, and at the upstream."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from ztb import pki
from ztb.client import Caller
from ztb.config.registry import REGISTRY_FILE, read_spec
from ztb.evidence.controls import SAMPLE_UPSTREAM as UP
from ztb.evidence.controls import Check, Context, Control


def ungranted(ctx: Context) -> tuple[str, str]:
    """A sample caller and a scope of the upstream's routes it is not granted in registry.yaml
    (or a scope no route has, which no one can be granted)."""
    spec = read_spec(ctx.root / REGISTRY_FILE)
    scopes = sorted({r.scope for r in spec.routes if r.upstream == UP})
    for identity in ("svc.reports", "svc.checkout"):
        granted = set(spec.grants.get(identity, {}).get(UP, []))
        for scope in scopes:
            if scope not in granted:
                return identity, scope
    return "svc.reports", "orders:ztb-control-no-such-scope"


def probe(c: Control) -> None:
    ctx = c.ctx
    with ctx.run_upstream() as upstream:
        identity, scope = ungranted(ctx)
        asking, checkout = ctx.caller(identity), ctx.caller("svc.checkout")
        body = json.dumps({"upstream": UP, "scope": scope}).encode()
        mint = asking.request("POST", "/.ztb/token", body, {"Content-Type": "application/json"})
        c.refused(
            f"{identity} asks for a token for {scope} on {UP} (not granted)",
            mint,
            "scope",
            "not_granted",
            status=403,
        )
        unknown: list[bytes] = []
        for name, method, target in (
            ("a path no route lists", "GET", f"/{UP}/v1/admin/users"),
            ("an upstream the registry does not know", "GET", "/billing.internal/v1/invoices"),
            ("a method no route lists", "DELETE", f"/{UP}/v1/orders"),
            ("a query parameter the route does not allow", "GET", f"/{UP}/v1/orders?debug=true"),
        ):
            before = len(upstream.received)
            token = checkout.mint(UP, "orders:read")
            response = checkout.request(method, target, None, {"Authorization": f"Bearer {token}"})
            c.refused(
                f"svc.checkout with a valid token: {method} {name}",
                response,
                "allowlist",
                "no_route",
                status=404,
                received_before=before,
            )
            error = response.error or {}
            unknown.append(response.body.replace(str(error.get("call_id", "")).encode(), b"<call_id>"))
        c.record(
            Check(
                "unknown upstream and unknown route get the same answer (nothing to enumerate)",
                "identical bodies apart from the call id",
                "identical" if len(set(unknown)) == 1 else f"{len(set(unknown))} different bodies",
                len(set(unknown)) == 1,
            )
        )
        with tempfile.TemporaryDirectory() as spare:
            ca = pki.load_issued(ctx.root / "ca" / "ca.pem", ctx.root / "ca" / "ca.key")
            stranger = pki.issue_client(ca, "svc.stranger")
            cert, key = Path(spare) / "cert.pem", Path(spare) / "key.pem"
            stranger.write(cert, key)
            outsider = Caller(ctx.url, cert, key, ctx.ca)
            before = len(upstream.received)
            response = outsider.request("GET", f"/{UP}/v1/orders", None, {"Authorization": "Bearer x"})
            c.refused(
                "a certificate from the trusted CA whose key no identity is pinned to",
                response,
                "identity",
                "unknown_spki",
                status=403,
                received_before=before,
            )
            outsider.close()
        asking.close()
        checkout.close()


if __name__ == "__main__":
    Control("default_deny", "default deny: whatever the registry does not grant is refused").run(probe)
