"""Gate 1, identity: the TLS layer proved the caller holds a certificate under the client CA;
this gate requires that certificate's SPKI to be pinned to a registered identity.

Refusals at the TLS level (no certificate, untrusted chain, wrong purpose, a CA as leaf) happen
before any request exists and are audited by the edge as `identity` entries.
"""

from __future__ import annotations

from ztb.gates.base import Call, Deny
from ztb.reasons import Gate, Reason


class IdentityGate:
    name = Gate.IDENTITY

    async def check(self, call: Call) -> Deny | None:
        identity = call.registry.identity_for(call.peer.spki)
        if identity is None:
            return Deny(Reason.UNKNOWN_SPKI)
        call.identity = identity
        return None
