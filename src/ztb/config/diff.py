"""`ztb registry diff`: what a registry change does, in policy terms, for the people approving it.

Compares two registries' typed content (not their text): who can now call which route, who
gains or loses which scope on which upstream, identities and their pins, upstreams (address,
CA, pins), routes (method, path, scope, schema, query, headers, size cap) and schemas (file and,
when the folders are given, content). Each change is added, removed, widened, narrowed or
changed. `read_side` reads the files; everything else is pure. It never judges whether a change
is approved: it reads unapproved registries on purpose, and yields nothing a broker could enforce.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ztb.config.errors import ConfigError
from ztb.config.registry import REGISTRY_FILE, _RegistrySpec, _RouteSpec, read_spec

Kind = Literal["added", "removed", "widened", "narrowed", "changed"]
AREAS = ("access", "grants", "identities", "upstreams", "routes", "schemas")
_MARK = {"added": "+", "removed": "-", "widened": "+", "narrowed": "-", "changed": "~"}


@dataclass(frozen=True, slots=True)
class Side:
    """One registry as compared: its typed content, its file's SHA-256, and its schema files'
    SHA-256 by schema name (None where the file could not be read)."""

    spec: _RegistrySpec
    sha256: str
    schema_digests: Mapping[str, str | None]


@dataclass(frozen=True, slots=True)
class Change:
    area: str
    kind: Kind
    subject: str
    text: str

    def to_json(self) -> dict[str, str]:
        return {"area": self.area, "kind": self.kind, "subject": self.subject, "text": self.text}


def read_side(path: Path) -> Side:
    """A deployment folder or a registry file, read for comparison (schemas relative to it)."""
    file = path / REGISTRY_FILE if path.is_dir() else path
    try:
        data = file.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{file}: cannot read: {exc.strerror or exc}") from None
    spec = read_spec(file)
    digests: dict[str, str | None] = {}
    for name, schema in spec.schemas.items():
        full = schema if schema.is_absolute() else file.parent / schema
        try:
            digests[name] = hashlib.sha256(full.read_bytes()).hexdigest()
        except OSError:
            digests[name] = None
    return Side(spec, hashlib.sha256(data).hexdigest(), digests)


def diff(old: Side, new: Side) -> list[Change]:
    changes = [
        *_access(old.spec, new.spec),
        *_grants(old.spec, new.spec),
        *_identities(old.spec, new.spec),
        *_upstreams(old.spec, new.spec),
        *_routes(old.spec, new.spec),
        *_schemas(old, new),
    ]
    return sorted(changes, key=lambda c: AREAS.index(c.area))


def to_text(old: Side, new: Side, changes: list[Change]) -> str:
    lines = [f"registry {old.sha256[:16]} -> {new.sha256[:16]}: {_count(len(changes))}"]
    for area in AREAS:
        mine = [c for c in changes if c.area == area]
        if mine:
            lines.append(f"{area}:")
            lines.extend(f"  {_MARK[c.kind]} {c.text}" for c in mine)
    return "\n".join(lines)


def _count(n: int) -> str:
    return "no policy change" if n == 0 else f"{n} change" + ("" if n == 1 else "s")


def _access(old: _RegistrySpec, new: _RegistrySpec) -> Iterable[Change]:
    """Effective access: identity -> route, from grants and the routes' scopes together."""
    before, after = _reach(old), _reach(new)
    routes = {r.id: r for r in (*old.routes, *new.routes)}
    for identity, route_id in sorted(after - before):
        r = routes[route_id]
        yield Change(
            "access",
            "widened",
            f"{identity} {route_id}",
            f"{identity} can now call {route_id} ({r.method} /{r.upstream}{r.path})",
        )
    for identity, route_id in sorted(before - after):
        r = routes[route_id]
        yield Change(
            "access",
            "narrowed",
            f"{identity} {route_id}",
            f"{identity} can no longer call {route_id} ({r.method} /{r.upstream}{r.path})",
        )


def _reach(spec: _RegistrySpec) -> set[tuple[str, str]]:
    return {
        (identity, route.id)
        for identity, per_upstream in spec.grants.items()
        if identity in spec.identities
        for route in spec.routes
        if route.scope in per_upstream.get(route.upstream, [])
    }


def _grant_set(spec: _RegistrySpec) -> set[tuple[str, str, str]]:
    return {
        (identity, upstream, scope)
        for identity, per in spec.grants.items()
        for upstream, scopes in per.items()
        for scope in scopes
    }


def _grants(old: _RegistrySpec, new: _RegistrySpec) -> Iterable[Change]:
    before, after = _grant_set(old), _grant_set(new)
    for identity, upstream, scope in sorted(after - before):
        yield Change(
            "grants", "widened", f"{identity} {upstream} {scope}", f"{identity} gains {scope} on {upstream}"
        )
    for identity, upstream, scope in sorted(before - after):
        yield Change(
            "grants", "narrowed", f"{identity} {upstream} {scope}", f"{identity} loses {scope} on {upstream}"
        )


def _pins(area: str, name: str, old: Iterable[str], new: Iterable[str]) -> Iterable[Change]:
    before, after = set(old), set(new)
    for pin in sorted(after - before):
        yield Change(area, "widened", name, f"{name}: pin added {pin}")
    for pin in sorted(before - after):
        yield Change(area, "narrowed", name, f"{name}: pin removed {pin}")


def _identities(old: _RegistrySpec, new: _RegistrySpec) -> Iterable[Change]:
    for name in sorted(new.identities.keys() - old.identities.keys()):
        pins = ", ".join(new.identities[name].spki)
        yield Change("identities", "added", name, f"{name} added, pinned to {pins}")
    for name in sorted(old.identities.keys() - new.identities.keys()):
        yield Change("identities", "removed", name, f"{name} removed")
    for name in sorted(old.identities.keys() & new.identities.keys()):
        yield from _pins("identities", name, old.identities[name].spki, new.identities[name].spki)


def _upstreams(old: _RegistrySpec, new: _RegistrySpec) -> Iterable[Change]:
    for name in sorted(new.upstreams.keys() - old.upstreams.keys()):
        yield Change("upstreams", "added", name, f"{name} added at {new.upstreams[name].url}")
    for name in sorted(old.upstreams.keys() - new.upstreams.keys()):
        yield Change("upstreams", "removed", name, f"{name} removed")
    for name in sorted(old.upstreams.keys() & new.upstreams.keys()):
        a, b = old.upstreams[name], new.upstreams[name]
        if a.url != b.url:
            yield Change("upstreams", "changed", name, f"{name}: address {a.url} -> {b.url}")
        if a.ca != b.ca:
            yield Change("upstreams", "changed", name, f"{name}: CA {a.ca} -> {b.ca}")
        yield from _pins("upstreams", name, a.spki, b.spki)
        for field in ("connect_timeout_ms", "timeout_ms"):
            x, y = getattr(a, field), getattr(b, field)
            if x != y:
                yield Change("upstreams", "changed", name, f"{name}: {field} {x} -> {y}")


def _describe(r: _RouteSpec) -> str:
    body = f"body {r.schema_} up to {r.max_bytes} bytes" if r.schema_ else "no body"
    return f"{r.method} /{r.upstream}{r.path}, scope {r.scope}, {body}"


def _routes(old: _RegistrySpec, new: _RegistrySpec) -> Iterable[Change]:
    a_by_id = {r.id: r for r in old.routes}
    b_by_id = {r.id: r for r in new.routes}
    for rid in sorted(b_by_id.keys() - a_by_id.keys()):
        yield Change("routes", "added", rid, f"{rid} added: {_describe(b_by_id[rid])}")
    for rid in sorted(a_by_id.keys() - b_by_id.keys()):
        yield Change("routes", "removed", rid, f"{rid} removed (was {_describe(a_by_id[rid])})")
    for rid in sorted(a_by_id.keys() & b_by_id.keys()):
        yield from _route_changes(rid, a_by_id[rid], b_by_id[rid])


def _route_changes(rid: str, a: _RouteSpec, b: _RouteSpec) -> Iterable[Change]:
    for field in ("upstream", "method", "path", "scope"):
        x, y = getattr(a, field), getattr(b, field)
        if x != y:
            yield Change("routes", "changed", rid, f"{rid}: {field} {x} -> {y}")
    if a.schema_ != b.schema_:
        yield Change("routes", "changed", rid, f"{rid}: schema {a.schema_} -> {b.schema_}")
    if a.max_bytes != b.max_bytes:
        kind: Kind = "widened" if b.max_bytes > a.max_bytes else "narrowed"
        yield Change("routes", kind, rid, f"{rid}: max_bytes {a.max_bytes} -> {b.max_bytes}")
    for name in sorted(b.query.keys() - a.query.keys()):
        yield Change(
            "routes", "widened", rid, f"{rid}: query parameter {name} ({b.query[name].type}) allowed"
        )
    for name in sorted(a.query.keys() - b.query.keys()):
        yield Change("routes", "narrowed", rid, f"{rid}: query parameter {name} no longer allowed")
    for name in sorted(a.query.keys() & b.query.keys()):
        if a.query[name] != b.query[name]:
            q, r = a.query[name], b.query[name]
            yield Change(
                "routes",
                "changed",
                rid,
                f"{rid}: query parameter {name} {q.type}{'' if not q.required else ' required'}"
                f" -> {r.type}{'' if not r.required else ' required'}",
            )
    for field, what in (("request_headers", "request header"), ("response_headers", "response header")):
        x, y = set(getattr(a, field)), set(getattr(b, field))
        for header in sorted(y - x):
            yield Change("routes", "widened", rid, f"{rid}: {what} {header} now passed through")
        for header in sorted(x - y):
            yield Change("routes", "narrowed", rid, f"{rid}: {what} {header} now dropped")


def _schemas(old: Side, new: Side) -> Iterable[Change]:
    a, b = old.spec.schemas, new.spec.schemas
    for name in sorted(b.keys() - a.keys()):
        yield Change("schemas", "added", name, f"{name} added ({b[name]})")
    for name in sorted(a.keys() - b.keys()):
        yield Change("schemas", "removed", name, f"{name} removed")
    for name in sorted(a.keys() & b.keys()):
        if a[name] != b[name]:
            yield Change("schemas", "changed", name, f"{name}: file {a[name]} -> {b[name]}")
        x, y = old.schema_digests.get(name), new.schema_digests.get(name)
        if x is not None and y is not None and x != y:
            yield Change("schemas", "changed", name, f"{name}: content changed ({x[:12]} -> {y[:12]})")
