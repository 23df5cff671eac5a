#!/usr/bin/env python3
"""Control: shape enforced (schema, size, headers stripped). The registry gives every route that
takes a body a schema and a size cap; bodies that break the schema, the size cap, the content
type or strict JSON are refused before the upstream; and an allowed call reaches the upstream
with only the route's allowlisted headers and the very bytes that were validated, while the
upstream's own headers are stripped from the answer."""

from __future__ import annotations

import hashlib
import json

from ztb.config import ConfigError, load_registry
from ztb.config.registry import validate_registry
from ztb.deploy import sample_order
from ztb.evidence.controls import CREATE, Check, Control, received_note, summary
from ztb.evidence.controls import SAMPLE_UPSTREAM as UP

SENT_HEADERS = {
    "X-Request-Id": "control-shape-1",
    "X-Forwarded-For": "203.0.113.7",
    "Cookie": "session=stolen",
    "X-Internal-Admin": "true",
    "Forwarded": "for=203.0.113.7",
}
MAY_ARRIVE = {"host", "content-length", "content-type", "x-request-id", "ztb-call-id", "ztb-caller"}


def registry_routes(c: Control) -> None:
    try:
        validate_registry(c.ctx.root)
    except ConfigError as exc:
        c.record(
            Check(
                "every route that takes a body has a schema and a size cap (registry.yaml on disk)",
                "the registry passes the loader's checks",
                f"refused: {exc}",
                False,
            )
        )
        return
    described = []
    try:
        routes = [r for rs in load_registry(c.ctx.root).routes.values() for r in rs]
    except ConfigError:  # not approved: the approvals are another control's business
        routes = []
    for r in routes:
        described.append(
            f"{r.id} {r.method} {'schema ' + str(r.schema) + ' max ' + str(r.max_bytes) if r.schema else 'no body'}"
        )
    c.record(
        Check(
            "every route that takes a body has a schema and a size cap (registry.yaml on disk)",
            "the registry passes the loader's checks",
            "it does",
            True,
            "; ".join(described),
        )
    )


def probe(c: Control) -> None:
    ctx = c.ctx
    registry_routes(c)
    order = json.dumps(sample_order()).encode()
    with ctx.run_upstream() as upstream:
        checkout = ctx.caller("svc.checkout")
        bad = {**sample_order(), "currency": "JPY", "debug": True}
        for name, body, content_type, (status, reason) in (
            (
                "a body that breaks the schema",
                json.dumps(bad).encode(),
                "application/json",
                (400, "schema_violation"),
            ),
            ("a body that is not JSON by content type", order, "text/plain", (415, "unsupported_media_type")),
            (
                "JSON with a duplicate key",
                b'{"currency": "EUR", "currency": "USD"}',
                "application/json",
                (400, "duplicate_key"),
            ),
        ):
            token = checkout.mint(UP, "orders:create")
            before = len(upstream.received)
            response = checkout.request(
                "POST",
                f"/{UP}{CREATE}",
                body,
                {"Authorization": f"Bearer {token}", "Content-Type": content_type},
            )
            c.refused(name, response, "shape", reason, status=status, received_before=before)
        token = checkout.mint(UP, "orders:create")
        before = len(upstream.received)
        head = (
            f"POST /{UP}{CREATE} HTTP/1.1\r\nHost: broker\r\nAuthorization: Bearer {token}\r\n"
            "Content-Type: application/json\r\nContent-Length: 1048576\r\n\r\n"
        )
        response = ctx.send_head("svc.checkout", head.encode())
        c.refused(
            "a body over the route's size cap (1 MiB announced)",
            response,
            "shape",
            "body_too_large",
            status=413,
            received_before=before,
        )
        token = checkout.mint(UP, "orders:create")
        before = len(upstream.received)
        response = checkout.request(
            "POST",
            f"/{UP}{CREATE}",
            order,
            {**SENT_HEADERS, "Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        )
        call_id = response.headers.get("ztb-call-id")
        entry = ctx.entry_of(call_id)
        arrived = upstream.received[before:]
        if len(arrived) != 1:
            c.record(
                Check(
                    "an allowed call with extra headers",
                    "201 and one request at the upstream",
                    f"{response.status} and {len(arrived)} requests",
                    False,
                    call_id=call_id,
                )
            )
            return
        seen = arrived[0]
        names = {name.lower() for name, _ in seen.headers}
        c.record(
            Check(
                "headers stripped on the way up (sent: " + ", ".join(SENT_HEADERS) + ", Authorization)",
                "only " + ", ".join(sorted(MAY_ARRIVE)),
                ", ".join(sorted(names)),
                names <= MAY_ARRIVE and seen.header("x-request-id") == "control-shape-1",
                received_note(seen),
                call_id,
                None if entry is None else summary(entry),
            )
        )
        digest = "sha256:" + hashlib.sha256(seen.body).hexdigest()
        logged = (entry or {}).get("shape") or {}
        c.record(
            Check(
                "the bytes validated are the bytes forwarded",
                "upstream body = sent body, sha256 in the entry",
                f"{len(seen.body)} bytes, {digest[:23]}",
                seen.body == order and logged.get("sha256") == digest,
                f"entry shape: {logged}",
                call_id,
            )
        )
        leaked = sorted({"x-internal-debug", "server"} & set(response.headers))
        c.record(
            Check(
                "the upstream's internal headers are stripped from the answer",
                "no x-internal-debug, no server",
                ", ".join(leaked) or "none of them",
                response.status == 201 and not leaked,
                call_id=call_id,
            )
        )
        checkout.close()


if __name__ == "__main__":
    Control("shape", "shape enforced: schema, size, headers stripped").run(probe)
