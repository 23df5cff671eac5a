"""Gate 2, scope: a single-use bearer token minted by this broker for this certificate, this
upstream and this route's scope, still granted under the registry in force now.

The presented token is always taken (consumed) first, whatever else is wrong with the call, so
probing burns tokens. Minting decisions live here too, since they apply the same grants.
"""

from __future__ import annotations

import math
from typing import Any

from ztb.config.registry import Registry
from ztb.gates.base import Call, Deny, TokenFacts
from ztb.gates.strict_json import JSONRefused, parse
from ztb.reasons import Gate, Reason
from ztb.tokens.format import is_well_formed, token_hash, token_id
from ztb.tokens.store import StoreUnavailable, Taken, TokenStore

_TAKEN_DENIALS = {
    Taken.UNKNOWN: Reason.UNKNOWN_TOKEN,
    Taken.EXPIRED: Reason.TOKEN_EXPIRED,
    Taken.REPLAYED: Reason.TOKEN_REPLAYED,
}
MAX_MINT_BODY = 1024


def bearer_token(call: Call) -> str | Deny:
    """The presented token, or why there is none: only `Authorization: Bearer <token>` counts."""
    values = call.header_values("authorization")
    if not values:
        return Deny(Reason.MISSING_TOKEN)
    if len(values) > 1:
        return Deny(Reason.MALFORMED_TOKEN)
    scheme, _, token = values[0].partition(" ")
    if scheme.lower() != "bearer" or not is_well_formed(token):
        return Deny(Reason.MALFORMED_TOKEN)
    return token


class ScopeGate:
    name = Gate.SCOPE

    def __init__(self, store: TokenStore) -> None:
        self._store = store

    async def check(self, call: Call) -> Deny | None:
        token = bearer_token(call)
        if isinstance(token, Deny):
            return token
        digest = token_hash(token)
        call.token = TokenFacts(id=token_id(digest))
        try:  # bounded by the store itself (TokenStore)
            taken = await self._store.take(digest, call.now)
        except StoreUnavailable:
            return Deny(Reason.TOKEN_STORE_UNAVAILABLE)
        record = taken.record
        if record is None:
            return Deny(_TAKEN_DENIALS[taken.outcome])
        call.token = TokenFacts(
            id=call.token.id, scope=record.scope, exp_in_s=max(0, math.ceil(record.expires_at - call.now))
        )
        if record.cert_thumbprint != call.peer.thumbprint:
            return Deny(Reason.WRONG_CERTIFICATE)
        route = call.lookup.route
        if route is not None:
            if record.upstream != route.upstream:
                return Deny(Reason.UPSTREAM_MISMATCH)
            if record.scope != route.scope:
                return Deny(Reason.SCOPE_MISMATCH)
        if record.identity != call.identity or not call.registry.is_granted(
            record.identity, record.upstream, record.scope
        ):
            return Deny(Reason.NOT_GRANTED)
        return None


def grant(registry: Registry, identity: str, asked: tuple[str, str] | Deny) -> tuple[str, str] | Deny:
    """(upstream, scope) when `identity` may have a token for them; the same refusal for an
    unknown upstream, an unknown scope and a scope not granted, so nothing can be enumerated."""
    if isinstance(asked, Deny):
        return asked
    if not registry.is_granted(identity, *asked):
        return Deny(Reason.NOT_GRANTED)
    return asked


def parse_mint_request(body: bytes) -> tuple[str, str] | Deny:
    """What a mint asks for: {"upstream": ..., "scope": ...} and nothing else, strictly parsed."""
    if len(body) > MAX_MINT_BODY:
        return Deny(Reason.BAD_TOKEN_REQUEST)
    try:
        request: Any = parse(body)
    except JSONRefused:
        return Deny(Reason.BAD_TOKEN_REQUEST)
    if (
        not isinstance(request, dict)
        or set(request) != {"upstream", "scope"}
        or not isinstance(request["upstream"], str)
        or not isinstance(request["scope"], str)
        or len(request["upstream"]) > 253
        or len(request["scope"]) > 128
    ):
        return Deny(Reason.BAD_TOKEN_REQUEST)
    return request["upstream"], request["scope"]
