"""registry.yaml -> a frozen Registry: the policy, and the only thing that decides what may flow.

Parse, don't validate: the file becomes typed, immutable objects once, here; the gates never see
a raw dict. A registry that fails any check is refused whole with a message naming the file,
the field and what is wrong. Whatever is not in the registry is denied.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import fastjsonschema
from pydantic import Field, ValidationError

from ztb.config.approvals import Approval, check_approvals
from ztb.config.broker import read_yaml_mapping, yaml_mapping
from ztb.config.errors import ConfigError, from_validation
from ztb.config.model import Frozen
from ztb.config.templates import ParamType, PathTemplate

REGISTRY_FILE = "registry.yaml"

PIN = r"^sha256:[0-9a-f]{64}$"
# Upstream names are DNS-like: lowercase labels joined by single dots, no leading or trailing dot.
# Names starting with "." are reserved for the broker (/.ztb/...) and can never match.
UPSTREAM_NAME = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$"
IDENTITY_NAME = r"^[a-z0-9][a-z0-9._-]{0,62}$"
SCOPE = r"^[a-z0-9][a-z0-9._-]*:[a-z0-9][a-z0-9._-]*$"
HEADER_NAME = r"^[a-z0-9][a-z0-9-]{0,63}$"
Method = Literal["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]

# Headers the broker writes itself or that carry credentials or framing: never on an allowlist.
FORBIDDEN_HEADERS = frozenset(
    {
        "authorization",
        "proxy-authorization",
        "cookie",
        "set-cookie",
        "host",
        "content-length",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "upgrade",
        "te",
        "trailer",
        "proxy-connection",
        "proxy-authenticate",
        "content-encoding",
        "forwarded",
        "x-forwarded-for",
        "x-forwarded-host",
        "x-forwarded-proto",
        "x-original-url",
        "x-rewrite-url",
        "expect",
    }
)
MAX_BODY_CAP = 8 * 1024 * 1024


class _IdentitySpec(Frozen):
    spki: Annotated[list[Annotated[str, Field(pattern=PIN)]], Field(min_length=1)]


class _UpstreamSpec(Frozen):
    url: str
    ca: Path
    spki: Annotated[list[Annotated[str, Field(pattern=PIN)]], Field(min_length=1)]
    connect_timeout_ms: Annotated[int, Field(ge=10, le=30_000)] = 2000
    timeout_ms: Annotated[int, Field(ge=10, le=120_000)] = 10_000


class QueryRule(Frozen):
    type: ParamType
    required: bool = False


class _RouteSpec(Frozen):
    id: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9._-]{0,62}$")]
    upstream: str
    method: Method
    path: str
    query: dict[Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,31}$")], QueryRule] = {}
    scope: Annotated[str, Field(pattern=SCOPE)]
    schema_: Annotated[str | None, Field(alias="schema")] = None
    request_headers: list[Annotated[str, Field(pattern=HEADER_NAME)]] = []
    response_headers: list[Annotated[str, Field(pattern=HEADER_NAME)]] = ["content-type"]
    max_bytes: Annotated[int, Field(ge=0, le=MAX_BODY_CAP)] = 64 * 1024


class _RegistrySpec(Frozen):
    identities: dict[Annotated[str, Field(pattern=IDENTITY_NAME)], _IdentitySpec]
    upstreams: dict[Annotated[str, Field(pattern=UPSTREAM_NAME)], _UpstreamSpec]
    routes: list[_RouteSpec]
    grants: dict[str, dict[str, list[Annotated[str, Field(pattern=SCOPE)]]]] = {}
    schemas: dict[Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")], Path] = {}


@dataclass(frozen=True, slots=True)
class Upstream:
    name: str
    host: str
    port: int
    ca: Path
    pins: frozenset[str]
    connect_timeout_s: float
    timeout_s: float

    @property
    def authority(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


Validator = Callable[[Any], Any]


@dataclass(frozen=True, slots=True)
class Route:
    id: str
    upstream: str
    method: str
    template: PathTemplate
    query: Mapping[str, QueryRule]
    scope: str
    schema: str | None
    validator: Validator | None
    request_headers: frozenset[str]
    response_headers: frozenset[str]
    max_bytes: int


@dataclass(frozen=True, slots=True)
class Registry:
    sha256: str  # hex SHA-256 of registry.yaml's bytes, as recorded in audit entries
    identities_by_spki: Mapping[str, str]  # "sha256:<hex>" -> identity name
    upstreams: Mapping[str, Upstream]
    routes: Mapping[str, tuple[Route, ...]]  # upstream name -> its routes
    grants: Mapping[str, Mapping[str, frozenset[str]]]  # identity -> upstream -> scopes
    # Who approved these bytes (approvers.yaml, registry.sig); set by load_registry, which
    # refuses a registry without enough approvals. None only for registries built in memory.
    approval: Approval | None = None

    @property
    def identities(self) -> frozenset[str]:
        return frozenset(self.identities_by_spki.values())

    def identity_for(self, spki_pin: str) -> str | None:
        return self.identities_by_spki.get(spki_pin)

    def is_granted(self, identity: str, upstream: str, scope: str) -> bool:
        return scope in self.grants.get(identity, {}).get(upstream, frozenset())


def load_registry(deployment: Path) -> Registry:
    """Load deployment/registry.yaml, the policy in force: its approvals are checked first (no
    unapproved byte is even parsed), then the file and its schemas. There is no other way to get
    a Registry from a file. ConfigError, one line, names what is wrong or which approvals are missing."""
    path, raw_bytes = _read(deployment)
    approval = check_approvals(deployment, raw_bytes)
    return replace(_parse(deployment, path, raw_bytes), approval=approval)


def validate_registry(deployment: Path) -> bytes:
    """Check deployment/registry.yaml as `load_registry` would, except for approvals, and return
    the bytes checked. For reviewers about to sign them; it yields no Registry to enforce."""
    path, raw_bytes = _read(deployment)
    _parse(deployment, path, raw_bytes)
    return raw_bytes


def read_spec(path: Path) -> _RegistrySpec:
    """A registry file's typed content, unapproved and unbuilt: for `ztb registry diff` only."""
    raw = read_yaml_mapping(path)
    try:
        return _RegistrySpec.model_validate(raw)
    except ValidationError as exc:
        raise from_validation(path, exc) from None


def _read(deployment: Path) -> tuple[Path, bytes]:
    path = deployment / REGISTRY_FILE
    try:
        return path, path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from None


def _parse(deployment: Path, path: Path, raw_bytes: bytes) -> Registry:
    try:
        raw = yaml_mapping(path, raw_bytes.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from None
    try:
        spec = _RegistrySpec.model_validate(raw)
    except ValidationError as exc:
        raise from_validation(path, exc) from None
    return _build(spec, deployment.resolve(), path, hashlib.sha256(raw_bytes).hexdigest())


def _build(spec: _RegistrySpec, root: Path, path: Path, sha256: str) -> Registry:
    def fail(where: str, what: str) -> ConfigError:
        return ConfigError(f"{path}: {where}: {what}")

    identities_by_spki: dict[str, str] = {}
    for name, ident in spec.identities.items():
        for pin in ident.spki:
            if pin in identities_by_spki:
                raise fail(
                    f"identities.{name}.spki", f"pin {pin} is already pinned to {identities_by_spki[pin]}"
                )
            identities_by_spki[pin] = name

    upstreams = {name: _upstream(name, up, root, fail) for name, up in spec.upstreams.items()}
    validators = {name: _schema(name, file, root, fail) for name, file in spec.schemas.items()}

    routes: dict[str, list[Route]] = {name: [] for name in upstreams}
    seen_ids: set[str] = set()
    for i, r in enumerate(spec.routes):
        where = f"routes.{i}"
        if r.id in seen_ids:
            raise fail(f"{where}.id", f"route id {r.id!r} is used twice")
        seen_ids.add(r.id)
        if r.upstream not in upstreams:
            raise fail(f"{where}.upstream", f"unknown upstream {r.upstream!r}")
        try:
            template = PathTemplate.parse(r.path)
        except ValueError as exc:
            raise fail(f"{where}.path", str(exc)) from None
        if r.schema_ is not None and r.schema_ not in validators:
            raise fail(f"{where}.schema", f"unknown schema {r.schema_!r}")
        if r.method in ("GET", "HEAD", "DELETE") and r.schema_ is not None:
            raise fail(f"{where}.schema", f"a {r.method} route carries no body, so it takes no schema")
        if r.method in ("POST", "PUT", "PATCH") and r.schema_ is None:
            raise fail(f"{where}.schema", f"a {r.method} route needs a schema for its body")
        for field, names in (
            ("request_headers", r.request_headers),
            ("response_headers", r.response_headers),
        ):
            bad = sorted(set(names) & FORBIDDEN_HEADERS)
            if bad:
                raise fail(f"{where}.{field}", f"{', '.join(bad)} may never be allowlisted")
        for other in routes[r.upstream]:
            if other.method == r.method and other.template.segments == template.segments:
                raise fail(f"{where}.path", f"same method and path as route {other.id!r}")
        routes[r.upstream].append(
            Route(
                id=r.id,
                upstream=r.upstream,
                method=r.method,
                template=template,
                query=dict(r.query),
                scope=r.scope,
                schema=r.schema_,
                validator=validators[r.schema_] if r.schema_ is not None else None,
                request_headers=frozenset(r.request_headers),
                response_headers=frozenset(r.response_headers),
                max_bytes=r.max_bytes if r.schema_ is not None else 0,
            )
        )

    scopes_by_upstream = {name: {route.scope for route in rs} for name, rs in routes.items()}
    grants: dict[str, dict[str, frozenset[str]]] = {}
    for identity, per_upstream in spec.grants.items():
        if identity not in spec.identities:
            raise fail(f"grants.{identity}", "unknown identity")
        grants[identity] = {}
        for upstream, scopes in per_upstream.items():
            if upstream not in upstreams:
                raise fail(f"grants.{identity}.{upstream}", "unknown upstream")
            for scope in scopes:
                if scope not in scopes_by_upstream[upstream]:
                    raise fail(
                        f"grants.{identity}.{upstream}", f"no route of {upstream} uses scope {scope!r}"
                    )
            grants[identity][upstream] = frozenset(scopes)

    return Registry(
        sha256=sha256,
        identities_by_spki=identities_by_spki,
        upstreams=upstreams,
        routes={name: tuple(rs) for name, rs in routes.items()},
        grants=grants,
    )


def _upstream(
    name: str, spec: _UpstreamSpec, root: Path, fail: Callable[[str, str], ConfigError]
) -> Upstream:
    where = f"upstreams.{name}"
    parts = urlsplit(spec.url)
    if parts.scheme != "https":
        raise fail(f"{where}.url", "must be an https:// URL")
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username or parts.password:
        raise fail(f"{where}.url", "must be scheme, host and port only (no path, query, fragment or user)")
    try:
        port = parts.port
    except ValueError:
        raise fail(f"{where}.url", "port is not a number from 1 to 65535") from None
    if parts.hostname is None or not port:
        raise fail(f"{where}.url", "must name a host and an explicit port from 1 to 65535")
    ca = spec.ca if spec.ca.is_absolute() else root / spec.ca
    if not ca.is_file():
        raise fail(f"{where}.ca", f"no such file {ca}")
    return Upstream(
        name=name,
        host=parts.hostname,
        port=port,
        ca=ca,
        pins=frozenset(spec.spki),
        connect_timeout_s=spec.connect_timeout_ms / 1000,
        timeout_s=spec.timeout_ms / 1000,
    )


def _schema(name: str, file: Path, root: Path, fail: Callable[[str, str], ConfigError]) -> Validator:
    where = f"schemas.{name}"
    full = file if file.is_absolute() else root / file
    try:
        schema = json.loads(full.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise fail(where, f"no such file {full}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise fail(where, f"cannot read JSON Schema {full}: {exc}") from None
    if not isinstance(schema, dict):
        raise fail(where, f"{full} is not a JSON Schema object")
    try:
        validator: Validator = fastjsonschema.compile(schema)
    except (fastjsonschema.JsonSchemaDefinitionException, ValueError, TypeError, re.error) as exc:
        raise fail(where, f"{full} is not a valid JSON Schema: {exc}") from None
    return validator
