"""Gate 5, egress: the call's ALLOW entry is signed, chained and durable before anything leaves.

This gate mints the rotation token (its id goes into the entry), writes the entry and waits,
within a bounded time, for the group commit that makes it durable. If that does not happen the
call is refused (503 audit_unavailable) and never forwarded: failing closed means refusing
fast, never hanging. The forwarding itself is the edge's job and happens only after this gate.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from ztb.gates.base import AuditLog, Call, Deny, TokenFacts
from ztb.gates.record import call_fields
from ztb.reasons import Gate, Reason

# Mints the next token for the call's identity, upstream, scope and certificate: (token, id),
# or None when the store cannot take it (the call then goes ahead without a rotation token).
Rotate = Callable[[Call], Awaitable[tuple[str, str] | None]]


class EgressGate:
    name = Gate.EGRESS

    def __init__(self, audit: AuditLog, rotate: Rotate, durability_timeout_s: float) -> None:
        self._audit = audit
        self._rotate = rotate
        self._timeout = durability_timeout_s

    async def check(self, call: Call) -> Deny | None:
        rotated = await self._rotate(call)
        if rotated is not None and call.token is not None:
            call.next_token = rotated[0]
            token = call.token
            call.token = TokenFacts(token.id, token.scope, token.exp_in_s, rotated[1])
        writable = self._audit.writable
        call.entry = self._audit.append("call", call_fields(call, None))
        if not writable:
            return Deny(Reason.AUDIT_UNAVAILABLE)
        started = time.perf_counter()
        durable = await self._audit.durable(call.entry.seq, self._timeout)
        call.durable_wait_s = time.perf_counter() - started
        return None if durable else Deny(Reason.AUDIT_UNAVAILABLE)
