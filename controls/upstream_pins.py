#!/usr/bin/env python3
"""Control: upstream pins enforced. An impostor at the upstream's registered address, with a
certificate from the same CA for the same names but another key, gets no request: the call is
refused 502 egress/upstream_pin_mismatch and recorded as not forwarded. The real, pinned
upstream at the same address then serves the same call (so the refusal is the pin's doing)."""

from __future__ import annotations

from ztb.evidence.controls import SAMPLE_UPSTREAM as UP
from ztb.evidence.controls import Check, Control, summary

ORDERS = f"/{UP}/v1/orders"


def probe(c: Control) -> None:
    ctx = c.ctx
    checkout = ctx.caller("svc.checkout")
    with ctx.run_upstream(impostor=True) as impostor:
        token = checkout.mint(UP, "orders:read")
        response = checkout.request("GET", ORDERS, None, {"Authorization": f"Bearer {token}"})
        c.refused(
            "a call while an impostor (same CA, same names, other key) holds the upstream's address",
            response,
            "egress",
            "upstream_pin_mismatch",
            status=502,
        )
        call_id = (response.error or {}).get("call_id")
        result = ctx.entry_of(call_id, "result")
        c.record(
            Check(
                "the result entry says the call was not forwarded",
                "forwarded false, error upstream_pin_mismatch",
                "none"
                if result is None
                else f"forwarded {result.get('forwarded')}, error {result.get('error')}",
                result is not None
                and result.get("forwarded") is False
                and result.get("error") == "upstream_pin_mismatch",
                call_id=call_id,
                entry=None if result is None else summary(result),
            )
        )
        c.record(
            Check(
                "the impostor received no request",
                "0 requests",
                f"{len(impostor.received)} requests",
                not impostor.received,
            )
        )
    with ctx.run_upstream() as real:
        token = checkout.mint(UP, "orders:read")
        response = checkout.request("GET", ORDERS, None, {"Authorization": f"Bearer {token}"})
        c.record(
            Check(
                "the same call with the pinned upstream at that address",
                "200, one request upstream",
                f"{response.status}, {len(real.received)} request(s)",
                response.status == 200 and len(real.received) == 1,
                call_id=response.headers.get("ztb-call-id"),
            )
        )
    checkout.close()


if __name__ == "__main__":
    Control("upstream_pins", "upstream pins enforced").run(probe)
