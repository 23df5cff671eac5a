"""`ztb explain`: a request run through the gates' own logic against a registry, never sent.

For a developer asking "why was my call refused, and what would I need?". It uses the same
pieces the broker uses (the target lookup, `Registry.is_granted`, strict JSON, the route's
compiled schema, the header allowlist) and assumes what only a live call can show: a client
certificate of the named identity under the client CA, and a fresh token for the scope the route
needs. It checks every gate even after the first refusal, so one run lists everything to fix;
the first refusal is the broker's answer. Pure: no files, no network, no token store.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import fastjsonschema

from ztb.config.registry import Registry, Route
from ztb.gates.strict_json import JSONRefused, parse
from ztb.gates.target import lookup
from ztb.reasons import Gate, Reason, status_of

Verdict = Literal["pass", "refuse", "assumed", "not reached"]


@dataclass(frozen=True, slots=True)
class Step:
    gate: Gate
    verdict: Verdict
    detail: str
    reason: Reason | None = None

    def to_json(self) -> dict[str, object]:
        return {
            "gate": self.gate.value,
            "verdict": self.verdict,
            "reason": None if self.reason is None else self.reason.value,
            "status": None if self.reason is None else status_of(self.reason),
            "detail": self.detail,
        }


@dataclass(frozen=True, slots=True)
class Explanation:
    identity: str
    method: str
    target: str
    steps: tuple[Step, ...]
    needs: tuple[str, ...] = field(default=())  # what would have to change, in registry terms

    @property
    def refusal(self) -> Step | None:
        return next((s for s in self.steps if s.verdict == "refuse"), None)

    @property
    def allowed(self) -> bool:
        return self.refusal is None

    def to_json(self) -> dict[str, object]:
        first = self.refusal
        return {
            "identity": self.identity,
            "method": self.method,
            "target": self.target,
            "allowed": self.allowed,
            "refused_by": None
            if first is None or first.reason is None
            else {"gate": first.gate.value, "reason": first.reason.value, "status": status_of(first.reason)},
            "steps": [s.to_json() for s in self.steps],
            "needs": list(self.needs),
        }

    def to_text(self) -> str:
        lines = [f"explain: {self.identity} {self.method} {self.target}"]
        for number, step in enumerate(self.steps, start=1):
            mark = step.verdict.upper() if step.verdict == "refuse" else step.verdict
            code = f"{status_of(step.reason)} {step.gate.value}/{step.reason.value}: " if step.reason else ""
            lines.append(f"  {number} {step.gate.value:<9} {mark:<11} {code}{step.detail}")
        first = self.refusal
        if first is None or first.reason is None:
            lines.append("verdict: would be allowed (given a valid certificate and a fresh token)")
        else:
            lines.append(
                f"verdict: refused by the {first.gate.value} gate: "
                f"{status_of(first.reason)} {first.gate.value}/{first.reason.value}"
            )
        lines.extend(f"needs: {need}" for need in self.needs)
        return "\n".join(lines)


def explain(
    registry: Registry,
    identity: str,
    method: str,
    target: str,
    body: bytes | None = None,
    headers: tuple[tuple[str, str], ...] = (),
) -> Explanation:
    """What the gates would decide for `identity` sending this request under `registry`."""
    steps: list[Step] = []
    needs: list[str] = []

    # 1 identity
    if identity in registry.identities:
        steps.append(
            Step(
                Gate.IDENTITY,
                "pass",
                f"{identity} is a registered identity (assuming it presents its pinned certificate)",
            )
        )
    else:
        steps.append(
            Step(Gate.IDENTITY, "refuse", f"no identity {identity!r} in registry.yaml", Reason.UNKNOWN_SPKI)
        )
        needs.append(f"identities: {identity}: spki: [the SHA-256 pin of its certificate's key]")

    found = lookup(registry, method, target)
    route = found.route

    # 2 scope (the token is assumed fresh and minted for this certificate)
    if route is None:
        steps.append(
            Step(Gate.SCOPE, "assumed", "no route matched, so no scope applies; the token is consumed anyway")
        )
    elif registry.is_granted(identity, route.upstream, route.scope):
        steps.append(
            Step(
                Gate.SCOPE,
                "pass",
                f"route {route.id} needs scope {route.scope} on {route.upstream}; {identity} is granted it "
                f'(mint with POST /.ztb/token {{"upstream": "{route.upstream}", "scope": "{route.scope}"}})',
            )
        )
    else:
        steps.append(
            Step(
                Gate.SCOPE,
                "refuse",
                f"route {route.id} needs scope {route.scope} on {route.upstream}, and {identity} is not granted it "
                "(a token for it cannot even be minted)",
                Reason.NOT_GRANTED,
            )
        )
        needs.append(f"grants: {identity}: {route.upstream}: [{route.scope}]  (a reviewed registry change)")

    # 3 allowlist
    if found.error is Reason.NON_CANONICAL_TARGET:
        steps.append(
            Step(
                Gate.ALLOWLIST,
                "refuse",
                "the target is not in canonical origin form (/<upstream>/<path>, no dot or empty segments, "
                "no encoded / \\ . or NUL, ASCII only); it is refused, never repaired",
                Reason.NON_CANONICAL_TARGET,
            )
        )
    elif route is None:
        steps.append(
            Step(
                Gate.ALLOWLIST, "refuse", _no_route_detail(registry, method, found.upstream), Reason.NO_ROUTE
            )
        )
        needs.append("a route in registry.yaml for this method and path (a reviewed registry change)")
    else:
        steps.append(
            Step(
                Gate.ALLOWLIST,
                "pass",
                f"matches route {route.id} ({route.method} {route.template.text}); forwarded path {found.path}",
            )
        )

    # 4 shape
    if route is None:
        steps.append(Step(Gate.SHAPE, "not reached", "no route, so no shape to check"))
    else:
        steps.append(_shape(route, body, headers))

    # 5 egress
    if route is None:
        steps.append(Step(Gate.EGRESS, "not reached", "nothing would be forwarded"))
    else:
        upstream = registry.upstreams[route.upstream]
        steps.append(
            Step(
                Gate.EGRESS,
                "assumed",
                f"the entry is made durable, then {route.method} {found.path} goes to "
                f"https://{upstream.authority} over mTLS, its certificate pinned to "
                f"{len(upstream.pins)} key(s); not sent by explain",
            )
        )
    return Explanation(identity, method, target, tuple(steps), tuple(needs))


def _no_route_detail(registry: Registry, method: str, upstream: str | None) -> str:
    routes = registry.routes.get(upstream or "")
    if routes is None:
        return "no registered upstream or route matches (the broker gives one answer for both)"
    listed = ", ".join(f"{r.method} {r.template.text}" for r in routes)
    return f"{upstream} has no route for {method} with this path and query; its routes: {listed}"


def _shape(route: Route, body: bytes | None, headers: tuple[tuple[str, str], ...]) -> Step:
    names = {name.lower() for name, _ in headers}
    dropped = sorted(names - route.request_headers - {"content-type", "authorization", "host"})
    note = f"; headers dropped before forwarding: {', '.join(dropped)}" if dropped else ""
    if "content-encoding" in names:
        return Step(
            Gate.SHAPE, "refuse", "Content-Encoding is refused on requests", Reason.CONTENT_ENCODING_REFUSED
        )
    if route.validator is None:
        if body:
            return Step(Gate.SHAPE, "refuse", f"route {route.id} takes no body", Reason.BODY_NOT_ALLOWED)
        return Step(Gate.SHAPE, "pass", f"no body, as route {route.id} requires{note}")
    if body is None:
        return Step(
            Gate.SHAPE,
            "refuse",
            f"route {route.id} needs a JSON body valid against schema {route.schema}; an empty body is not JSON "
            "(pass --body FILE to check one)",
            Reason.INVALID_JSON,
        )
    if len(body) > route.max_bytes:
        return Step(
            Gate.SHAPE,
            "refuse",
            f"body is {len(body)} bytes, route {route.id} allows {route.max_bytes}",
            Reason.BODY_TOO_LARGE,
        )
    try:
        document = parse(body)
    except JSONRefused as refused:
        return Step(Gate.SHAPE, "refuse", "the body is refused by the strict JSON parse", refused.reason)
    try:
        route.validator(document)
    except fastjsonschema.JsonSchemaValueException as exc:
        return Step(Gate.SHAPE, "refuse", f"schema {route.schema}: {exc.message}", Reason.SCHEMA_VIOLATION)
    return Step(Gate.SHAPE, "pass", f"{len(body)} bytes of JSON valid against schema {route.schema}{note}")
