"""The `call` entry of a decision: one canonical record per data-plane request (Smokescreen's
one-decision-one-line), built from what the call knew when it was decided.
"""

from __future__ import annotations

import time
from typing import Any

from ztb.gates.base import Call, Deny

MAX_RECORDED_TARGET = 1024


def caller_fields(addr: str, spki: str | None, identity: str | None) -> dict[str, Any]:
    return {"spki": spki, "identity": identity, "addr": addr}


def call_fields(call: Call, deny: Deny | None) -> dict[str, Any]:
    lookup = call.lookup
    route = lookup.route
    token = call.token
    body = call.body_facts
    target = call.target
    if len(target) > MAX_RECORDED_TARGET:
        target = target[:MAX_RECORDED_TARGET] + "..."
    return {
        "call_id": call.call_id,
        "caller": caller_fields(call.peer.addr, call.peer.spki, call.identity),
        "upstream": {
            "name": route.upstream if route is not None else lookup.upstream,
            "route": route.id if route is not None else None,
            "method": call.method,
            "path": lookup.path,
            "target": target,
        },
        "token": None
        if token is None
        else {
            "id": token.id,
            "scope": [token.scope] if token.scope is not None else None,
            "exp_in_s": token.exp_in_s,
            "next_id": token.next_id,
        },
        "shape": None if body is None else {"schema": body.schema, "bytes": body.size, "sha256": body.sha256},
        "decision": "DENY" if deny is not None else "ALLOW",
        "gate": deny.gate.value if deny is not None else None,
        "reason": deny.reason.value if deny is not None else None,
        "latency_ms": int((time.perf_counter() - call.arrived) * 1000),
    }
