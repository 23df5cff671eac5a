"""The broker's core service: one data-plane request in, one reply out.

Data flows one way: the edge hands over a parsed request; the pipeline decides (writing the
`call` entry); an allowed call goes out through the upstream pool; its `result` entry is made
durable; the reply goes back to the edge. The token endpoint and the edge's own refusals
(malformed requests, TLS rejections) are recorded here too, so every path ends in an entry.
It also puts a (re)loaded registry in force: atomically for calls arriving from then on, with
a `registry` entry; a call keeps the registry it arrived under. This module never parses HTTP
and never touches a socket directly.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import orjson

from ztb import __version__
from ztb.config.broker import BrokerConfig
from ztb.config.registry import Registry
from ztb.edge.upstream import UpstreamFailure, UpstreamPool, UpstreamResponse
from ztb.gates.allowlist import AllowlistGate
from ztb.gates.base import Appended, AuditLog, BodySource, Call, Deny, Peer
from ztb.gates.egress import EgressGate
from ztb.gates.identity import IdentityGate
from ztb.gates.pipeline import Pipeline
from ztb.gates.record import caller_fields
from ztb.gates.scope import ScopeGate, grant, parse_mint_request
from ztb.gates.shape import ShapeGate
from ztb.gates.target import lookup
from ztb.metrics import Metrics
from ztb.oplog import event
from ztb.reasons import Reason
from ztb.tokens.format import new_token, token_hash, token_id
from ztb.tokens.store import StoreUnavailable, TokenRecord, TokenStore

log = logging.getLogger("ztb.broker")
TOKEN_PATH = "/.ztb/token"
_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


_CROCKFORD_PAIRS = [high + low for high in _CROCKFORD for low in _CROCKFORD]  # 10 bits each
_PAIR_SHIFTS = tuple(range(120, -1, -10))


def new_ulid(now: float) -> str:
    """A ULID: 48-bit millisecond time and 80 random bits, Crockford base32: 26 digits (130 bits,
    the top two zero), written two digits at a time."""
    value = (int(now * 1000) << 80) | secrets.randbits(80)
    return "".join([_CROCKFORD_PAIRS[(value >> shift) & 1023] for shift in _PAIR_SHIFTS])


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes


def receipt_header(entry: Appended) -> str:
    """`ZTB-Receipt: <seq>.<hash hex>.<sig hex>` of an allowed call's `call` entry (SPEC section 7)."""
    return f"{entry.seq}.{entry.hash.removeprefix('sha256:')}.{entry.sig.removeprefix('ed25519:')}"


def error_body(deny: Deny, call_id: str) -> bytes:
    return orjson.dumps({"error": {"gate": deny.gate.value, "reason": deny.reason.value, "call_id": call_id}})


def refusal(deny: Deny, call_id: str, extra: Iterable[tuple[str, str]] = ()) -> Reply:
    headers = (("content-type", "application/json"), ("cache-control", "no-store"), *extra)
    return Reply(deny.status, headers, error_body(deny, call_id))


class Broker:
    def __init__(
        self,
        config: BrokerConfig,
        registry: Registry,
        store: TokenStore,
        audit: AuditLog,
        upstreams: UpstreamPool,
        metrics: Metrics,
    ) -> None:
        self.metrics = metrics
        self.config = config
        self.registry = registry
        self.store = store
        self.audit = audit
        self.upstreams = upstreams
        self.in_flight = 0  # data-plane calls being handled now
        metrics.in_flight.set_function(lambda: self.in_flight)  # read when scraped
        self._ttl = config.token_ttl_s
        self._durability_s = config.audit.durability_timeout_ms / 1000
        self.pipeline = Pipeline(
            IdentityGate(),
            ScopeGate(store),
            AllowlistGate(),
            ShapeGate(),
            EgressGate(audit, self._rotate, self._durability_s),
            audit,
        )

    # -- the data plane ------------------------------------------------------------------------

    def new_call(
        self, peer: Peer, method: str, target: str, headers: tuple[tuple[str, str], ...], body: BodySource
    ) -> Call:
        now = time.time()
        registry = self.registry
        return Call(
            call_id=new_ulid(now),
            arrived=time.perf_counter(),
            now=now,
            peer=peer,
            method=method,
            target=target,
            headers=headers,
            lookup=lookup(registry, method, target),
            registry=registry,
            body=body,
        )

    async def handle(self, call: Call) -> Reply:
        self.in_flight += 1
        try:
            return await self._handle(call)
        finally:
            self.in_flight -= 1

    async def _handle(self, call: Call) -> Reply:
        deny = await self.pipeline.run(call)
        self._count(call, deny)
        if deny is not None:
            if deny.reason is Reason.AUDIT_UNAVAILABLE:
                self._close_unforwarded(call, deny.reason)
            return refusal(deny, call.call_id)
        forward = call.forward
        route = call.lookup.route
        assert forward is not None and route is not None and call.entry is not None
        upstream = call.registry.upstreams[route.upstream]
        headers = [
            *forward.headers,
            ("ztb-call-id", call.call_id),
            ("ztb-caller", call.identity or ""),
        ]
        if forward.content_type is not None:
            headers.append(("content-type", forward.content_type))
        outcome = await self.upstreams.send(upstream, call.method, forward.path, headers, forward.body)
        self.metrics.upstream_time(upstream.name).observe(outcome.elapsed_ms / 1000)
        if isinstance(outcome, UpstreamFailure):
            self._upstream_failed(upstream.name, outcome)
        result = self.audit.append("result", _result_fields(call.call_id, outcome))
        # The upstream has acted: the reply is released even if this wait times out (the writer
        # then reports not-writable and new calls are refused until the log recovers).
        started = time.perf_counter()
        await self.audit.durable(result.seq, self._durability_s)
        self.metrics.durable_result.observe(time.perf_counter() - started)
        extra = [("ztb-call-id", call.call_id), ("ztb-receipt", receipt_header(call.entry))]
        if call.next_token is not None:
            extra.append(("ztb-next-token", call.next_token))
        if isinstance(outcome, UpstreamFailure):
            return refusal(Deny(outcome.reason), call.call_id, extra)
        allowed = route.response_headers
        kept = [(name, value) for name, value in outcome.headers if name.lower() in allowed]
        return Reply(outcome.status, (*kept, *extra), outcome.body)

    def _count(self, call: Call, deny: Deny | None) -> None:
        metrics = self.metrics
        route = call.lookup.route
        upstream = route.upstream if route is not None else ""
        if deny is None:
            metrics.allowed(upstream).inc()
        else:
            metrics.calls.labels("DENY", deny.gate.value, deny.reason.value, upstream).inc()
        if call.decided is not None:
            metrics.gates_seconds.observe(call.decided - call.arrived)
        if call.durable_wait_s is not None:
            metrics.durable_call.observe(call.durable_wait_s)
        token = call.token
        expired = deny is not None and deny.reason is Reason.TOKEN_EXPIRED
        if token is not None and (token.scope is not None or expired):
            metrics.tokens_consumed.inc()
        if deny is not None and deny.reason is Reason.TOKEN_STORE_UNAVAILABLE:
            self._store_failed("take")

    def _store_failed(self, operation: str) -> None:
        self.metrics.store_errors.labels(operation).inc()
        event(log, logging.ERROR, "token_store_error", operation=operation, store=self.config.token_store)

    def _upstream_failed(self, name: str, failure: UpstreamFailure) -> None:
        self.metrics.upstream_failures.labels(name, failure.reason.value).inc()
        level = logging.ERROR if failure.reason is Reason.UPSTREAM_PIN_MISMATCH else logging.WARNING
        event(
            log,
            level,
            "upstream_failed",
            upstream=name,
            reason=failure.reason.value,
            forwarded=failure.forwarded,
            detail=failure.detail[:200],
        )

    def _close_unforwarded(self, call: Call, reason: Reason) -> None:
        """An ALLOW entry that could not be made durable: a `result` closes it once the log can."""
        self.audit.append(
            "result",
            {
                "call_id": call.call_id,
                "forwarded": False,
                "status": None,
                "bytes": None,
                "sha256": None,
                "upstream_ms": None,
                "error": reason.value,
            },
        )

    async def _rotate(self, call: Call) -> tuple[str, str] | None:
        route = call.lookup.route
        if route is None or call.identity is None:
            return None
        return await self._issue(
            call.identity, route.upstream, route.scope, call.peer.thumbprint, call.now, "rotation"
        )

    async def _issue(
        self, identity: str, upstream: str, scope: str, thumbprint: str, now: float, how: str
    ) -> tuple[str, str] | None:
        token = new_token()
        digest = token_hash(token)
        record = TokenRecord(identity, upstream, scope, now + self._ttl, thumbprint)
        try:  # bounded by the store itself (TokenStore)
            await self.store.put(digest, record)
        except StoreUnavailable:
            self._store_failed("put")
            return None
        (self.metrics.minted_rotation if how == "rotation" else self.metrics.tokens_minted.labels(how)).inc()
        return token, token_id(digest)

    # -- the token endpoint -------------------------------------------------------------------

    async def mint(self, peer: Peer, body: bytes) -> Reply:
        now = time.time()
        call_id = new_ulid(now)
        registry = self.registry
        identity = registry.identity_for(peer.spki)
        fields: dict[str, Any] = {
            "call_id": call_id,
            "caller": caller_fields(peer.addr, peer.spki, identity),
            "upstream": None,
            "scope": None,
        }
        asked = parse_mint_request(body)
        if isinstance(asked, tuple):  # recorded as asked, granted or not
            fields["upstream"], fields["scope"] = asked
        decided = Deny(Reason.UNKNOWN_SPKI) if identity is None else grant(registry, identity, asked)
        issued: tuple[str, str] | None = None
        if identity is not None and isinstance(decided, tuple):
            issued = await self._issue(identity, decided[0], decided[1], peer.thumbprint, now, "mint")
            if issued is None:
                decided = Deny(Reason.TOKEN_STORE_UNAVAILABLE)
        if isinstance(decided, Deny) or issued is None:
            reason = decided.reason if isinstance(decided, Deny) else Reason.TOKEN_STORE_UNAVAILABLE
            self.metrics.mint_refused.labels(reason.value).inc()
            self.audit.append("token", {**fields, "decision": "DENY", "reason": reason.value})
            return refusal(Deny(reason), call_id)
        token, tid = issued
        self.audit.append(
            "token", {**fields, "decision": "ALLOW", "reason": None, "id": tid, "exp_in_s": self._ttl}
        )
        answer = {
            "access_token": token,
            "token_type": "Bearer",
            "expires_in": self._ttl,
            "upstream": fields["upstream"],
            "scope": fields["scope"],
        }
        headers = (
            ("content-type", "application/json"),
            ("cache-control", "no-store"),
            ("ztb-call-id", call_id),
        )
        return Reply(200, headers, orjson.dumps(answer))

    # -- refusals decided by the edge ---------------------------------------------------------

    def refuse_at_edge(self, peer: Peer, reason: Reason, method: str | None, target: str | None) -> Reply:
        """A request the HTTP layer could not accept (malformed, headers too large or too slow)."""
        now = time.time()
        call_id = new_ulid(now)
        deny = Deny(reason)
        identity = self.registry.identity_for(peer.spki)
        self.audit.append(
            "call",
            {
                "call_id": call_id,
                "caller": caller_fields(peer.addr, peer.spki, identity),
                "upstream": {
                    "name": None,
                    "route": None,
                    "method": method,
                    "path": None,
                    "target": None if target is None else target[:1024],
                },
                "token": None,
                "shape": None,
                "decision": "DENY",
                "gate": deny.gate.value,
                "reason": reason.value,
                "latency_ms": 0,
            },
        )
        return refusal(deny, call_id)

    def record_tls_rejection(self, addr: str, reason: Reason, count: int, detail: str) -> None:
        self.metrics.tls_rejections.labels(reason.value).inc(count)
        self.audit.append(
            "identity",
            {
                "caller": {"addr": addr},
                "decision": "DENY",
                "gate": "identity",
                "reason": reason.value,
                "count": count,
                "detail": detail[:200],
            },
        )

    def start_fields(self) -> dict[str, str]:
        return {"version": __version__, "registry_sha256": self.registry.sha256}

    # -- the registry in force ----------------------------------------------------------------

    def announce_registry(self, previous: Registry | None) -> None:
        """The `registry` entry for the registry in force (after start, or a reload)."""
        registry = self.registry
        fields: dict[str, Any] = {"registry_sha256": registry.sha256}
        if registry.approval is not None:  # always set for a registry loaded from a deployment
            fields.update(registry.approval.audit_fields())
        if previous is not None:
            fields["previous_sha256"] = previous.sha256
        self.audit.append("registry", fields)
        self.metrics.registry_in_force(registry.sha256)

    def use_registry(self, registry: Registry) -> None:
        """Put `registry` in force for calls arriving from now on; calls in flight keep theirs.

        One assignment on the event loop: no call ever sees half of one registry and half of
        another. Pooled upstream connections of upstreams that changed are not reused.
        """
        previous = self.registry
        self.registry = registry
        self.upstreams.keep_only(registry.upstreams.values())
        self.announce_registry(previous)


def _result_fields(call_id: str, outcome: UpstreamResponse | UpstreamFailure) -> dict[str, Any]:
    if isinstance(outcome, UpstreamFailure):
        return {
            "call_id": call_id,
            "forwarded": outcome.forwarded,
            "status": None,
            "bytes": None,
            "sha256": None,
            "upstream_ms": outcome.elapsed_ms,
            "error": outcome.reason.value,
        }
    return {
        "call_id": call_id,
        "forwarded": True,
        "status": outcome.status,
        "bytes": len(outcome.body),
        "sha256": outcome.sha256,
        "upstream_ms": outcome.elapsed_ms,
        "error": None,
    }
