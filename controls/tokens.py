#!/usr/bin/env python3
"""Control: tokens are single-use, short-lived, scoped and cert-bound. A token works once and is
then refused as replayed; it lives at most 60 s (the answer, the configuration and the audit
entry agree); it opens only its route's scope; it works only from the certificate it was minted
for; a mistyped token is refused by its checksum."""

from __future__ import annotations

import json

from ztb.deploy import sample_order
from ztb.evidence.controls import CREATE, Check, Control, summary
from ztb.evidence.controls import SAMPLE_UPSTREAM as UP

ORDERS = f"/{UP}/v1/orders"


def probe(c: Control) -> None:
    ctx = c.ctx
    with ctx.run_upstream() as upstream:
        checkout, reports = ctx.caller("svc.checkout"), ctx.caller("svc.reports")
        answer = checkout.request(
            "POST",
            "/.ztb/token",
            json.dumps({"upstream": UP, "scope": "orders:read"}).encode(),
            {"Content-Type": "application/json"},
        )
        minted = answer.json() if answer.status == 200 else {}
        token = str(minted.get("access_token", ""))
        entry = ctx.wait_entry(
            lambda e: e.get("kind") == "token" and e.get("call_id") == answer.headers.get("ztb-call-id")
        )
        lifetime = (
            minted.get("expires_in"),
            ctx.config.token_ttl_s,
            None if entry is None else entry.get("exp_in_s"),
        )
        c.record(
            Check(
                "short-lived: expires_in, broker.yaml token_ttl_s and the token entry's exp_in_s",
                "all present and at most 60 s",
                f"{lifetime[0]} / {lifetime[1]} / {lifetime[2]}",
                all(isinstance(v, int) and 0 < v <= 60 for v in lifetime),
                entry=None if entry is None else summary(entry),
            )
        )
        first = checkout.request("GET", ORDERS, None, {"Authorization": f"Bearer {token}"})
        call = ctx.entry_of(first.headers.get("ztb-call-id"))
        c.record(
            Check(
                "first use of the token",
                "200, an ALLOW entry",
                f"{first.status}",
                first.status == 200 and call is not None and call.get("decision") == "ALLOW",
                call_id=first.headers.get("ztb-call-id"),
                entry=None if call is None else summary(call),
            )
        )
        before = len(upstream.received)
        replay = checkout.request("GET", ORDERS, None, {"Authorization": f"Bearer {token}"})
        c.refused(
            "single-use: the same token again, same certificate",
            replay,
            "scope",
            "token_replayed",
            status=403,
            received_before=before,
        )
        read_token = checkout.mint(UP, "orders:read")
        before = len(upstream.received)
        wrong_scope = checkout.request(
            "POST",
            f"/{UP}{CREATE}",
            json.dumps(sample_order()).encode(),
            {"Authorization": f"Bearer {read_token}", "Content-Type": "application/json"},
        )
        c.refused(
            "scoped: an orders:read token on orders.create",
            wrong_scope,
            "scope",
            "scope_mismatch",
            status=403,
            received_before=before,
        )
        bound = checkout.mint(UP, "orders:read")
        before = len(upstream.received)
        stolen = reports.request("GET", ORDERS, None, {"Authorization": f"Bearer {bound}"})
        c.refused(
            "cert-bound: svc.checkout's token used by svc.reports (granted the same scope)",
            stolen,
            "scope",
            "wrong_certificate",
            status=403,
            received_before=before,
        )
        typo = checkout.mint(UP, "orders:read")
        typo = typo[:10] + ("A" if typo[10] != "A" else "B") + typo[11:]
        before = len(upstream.received)
        mistyped = checkout.request("GET", ORDERS, None, {"Authorization": f"Bearer {typo}"})
        c.refused(
            "a token with one character changed (checksum)",
            mistyped,
            "scope",
            "malformed_token",
            status=401,
            received_before=before,
        )
        checkout.close()
        reports.close()


if __name__ == "__main__":
    Control("tokens", "tokens are single-use, short-lived, scoped and cert-bound").run(probe)
