#!/usr/bin/env python3
"""Control: the entry is durable before the upstream sees the call. This control's upstream reads
the broker's audit log from disk at the moment each request arrives, before answering: the
`call` entry for that request (named by the ztb-call-id header the broker sends) must already be
in the log file, allow the call, carry a valid signature by the broker's audit key, and describe
exactly what arrived (path, and the SHA-256 of the body)."""

from __future__ import annotations

import hashlib
import json
import uuid
from typing import Any

from ztb.audit.entry import check_seal
from ztb.audit.keys import load_public_key
from ztb.deploy import sample_order
from ztb.evidence.controls import CREATE, Check, Control, summary
from ztb.evidence.controls import SAMPLE_UPSTREAM as UP
from ztb.sample.upstream import ReceivedRequest

CALLS = 6


def probe(c: Control) -> None:
    ctx = c.ctx
    public = load_public_key(str(ctx.config.path(ctx.config.audit.signing_key).with_suffix(".pub")))
    seen_at_arrival: dict[str, dict[str, Any] | None] = {}
    arrived: dict[str, ReceivedRequest] = {}

    def at_arrival(request: ReceivedRequest) -> None:
        call_id = request.header("ztb-call-id") or ""
        arrived[call_id] = request
        seen_at_arrival[call_id] = next(
            (e for e in ctx.entries() if e.get("kind") == "call" and e.get("call_id") == call_id), None
        )

    with ctx.run_upstream(at_arrival):
        checkout = ctx.caller("svc.checkout")
        for i in range(CALLS):
            if i % 2:
                order = {**sample_order(), "note": f"control entry_before_egress {uuid.uuid4()}"}
                token = checkout.mint(UP, "orders:create")
                response = checkout.request(
                    "POST",
                    f"/{UP}{CREATE}",
                    json.dumps(order).encode(),
                    {"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
                )
            else:
                token = checkout.mint(UP, "orders:read")
                response = checkout.request(
                    "GET", f"/{UP}/v1/orders/{uuid.uuid4()}", None, {"Authorization": f"Bearer {token}"}
                )
            call_id = response.headers.get("ztb-call-id", "")
            entry = seen_at_arrival.get(call_id)
            request = arrived.get(call_id)
            problems = []
            if request is None:
                problems.append("the request never reached the upstream")
            if entry is None:
                problems.append("no call entry in the log when the request arrived")
            else:
                if entry.get("decision") != "ALLOW":
                    problems.append(f"the entry's decision is {entry.get('decision')}")
                seal = check_seal(entry, public)
                if seal is not None:
                    problems.append(f"the entry's seal does not hold: {seal}")
                if request is not None:
                    if (entry.get("upstream") or {}).get("path") != request.raw_path:
                        problems.append("the entry's path is not the path that arrived")
                    digest = "sha256:" + hashlib.sha256(request.body).hexdigest()
                    if (entry.get("shape") or {}).get("sha256") != digest:
                        problems.append("the entry's body hash is not the body that arrived")
            what = f"{request.method} {request.raw_path}" if request is not None else f"call {call_id}"
            c.record(
                Check(
                    f"call {i + 1}: {what}",
                    "signed ALLOW entry on disk at arrival, matching path and body hash",
                    "; ".join(problems) or "as expected",
                    response.status in (200, 201) and not problems,
                    "read from the log file by the upstream before it answered",
                    call_id,
                    None if entry is None else summary(entry),
                )
            )
        checkout.close()


if __name__ == "__main__":
    Control("entry_before_egress", "the entry is durable before the upstream sees the call").run(probe)
