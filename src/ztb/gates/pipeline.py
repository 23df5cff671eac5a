"""The pipeline: the five gates in their fixed order, and exactly one `call` entry per request.

The first gate that denies decides. For gates 1-4 the pipeline writes the DENY entry before the
refusal is sent (durable with the next group commit; a refusal does not wait for it); the egress
gate writes the ALLOW entry itself and waits for it. There is no way to build a pipeline that
skips a gate: the gates are given one by one, checked for order, and none may be missing.
"""

from __future__ import annotations

import time

from ztb.gates.allowlist import AllowlistGate
from ztb.gates.base import AuditLog, Call, Deny
from ztb.gates.egress import EgressGate
from ztb.gates.identity import IdentityGate
from ztb.gates.record import call_fields
from ztb.gates.scope import ScopeGate
from ztb.gates.shape import ShapeGate


class Pipeline:
    def __init__(
        self,
        identity: IdentityGate,
        scope: ScopeGate,
        allowlist: AllowlistGate,
        shape: ShapeGate,
        egress: EgressGate,
        audit: AuditLog,
    ) -> None:
        self._deciding = (identity, scope, allowlist, shape)
        self._egress = egress
        self._audit = audit

    async def run(self, call: Call) -> Deny | None:
        """None when the call may be forwarded (its ALLOW entry is then durable), else the refusal."""
        for gate in self._deciding:
            deny = await gate.check(call)
            if deny is not None:
                call.decided = time.perf_counter()
                call.entry = self._audit.append("call", call_fields(call, deny))
                return deny
        call.decided = time.perf_counter()
        return await self._egress.check(call)
