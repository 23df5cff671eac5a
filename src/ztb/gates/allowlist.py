"""Gate 3, allowlist: the target names a registered upstream and fits one of its routes.

The lookup itself ran before the gates (`target.lookup`); this gate turns its verdict into the
decision. One answer (404 no_route) for an unknown upstream and an unknown route, so nothing can
be enumerated; 400 for a target that is not in canonical origin form.
"""

from __future__ import annotations

from ztb.gates.base import Call, Deny
from ztb.reasons import Gate


class AllowlistGate:
    name = Gate.ALLOWLIST

    async def check(self, call: Call) -> Deny | None:
        if call.lookup.error is not None:
            return Deny(call.lookup.error)
        return None
