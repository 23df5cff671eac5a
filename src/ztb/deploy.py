"""`ztb init`: lay out a complete, working development deployment in a new folder.

Owns the shape of a fresh deployment: which certificates and keys exist, where they live, and
the commented broker.yaml and registry.yaml that tie them together. It must never touch an
existing deployment: it refuses any folder that is not empty, and it writes nothing half-way
(everything is built in a temporary sibling folder, checked by the real loaders, then renamed
into place). The CA key is written to disk, so what it makes is for development only.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ztb import pki
from ztb.audit.checkpoint import origin_of
from ztb.audit.keys import SigningKey
from ztb.audit.note import ED25519, Verifier
from ztb.config import ConfigError, load_broker_config, load_registry
from ztb.config.approvals import APPROVERS_FILE, sign
from ztb.config.registry import validate_registry

CALLERS = ("svc.checkout", "svc.reports")
UPSTREAM = "orders.api.internal"
EGRESS_CN = "ztb-broker-egress"
SCHEMA_NAME = "order.create.v3"
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")

# Two development approvers, both needed (M = 2). Their private keys sit in the deployment
# beside their public keys: development only; a real deployment's approvers keep their own keys.
DEV_APPROVERS = ("dev-approver-1", "dev-approver-2")
APPROVERS_DIR = "approvers"

UUID_PATTERN = "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"


def order_create_schema() -> dict[str, Any]:
    """JSON Schema (draft-07) of the sample route orders.create."""

    def text(max_length: int) -> dict[str, Any]:
        return {"type": "string", "minLength": 1, "maxLength": max_length}

    return {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "title": SCHEMA_NAME,
        "description": "Create an order: who buys, what, and where it ships.",
        "type": "object",
        "additionalProperties": False,
        "required": ["customer_id", "currency", "items", "shipping"],
        "properties": {
            "customer_id": {"type": "string", "pattern": UUID_PATTERN},
            "currency": {"type": "string", "enum": ["EUR", "USD", "GBP"]},
            "items": {
                "type": "array",
                "minItems": 1,
                "maxItems": 50,
                "items": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["sku", "qty", "unit_price_cents"],
                    "properties": {
                        "sku": {"type": "string", "pattern": "^[A-Z0-9-]{3,32}$"},
                        "qty": {"type": "integer", "minimum": 1, "maximum": 100},
                        "unit_price_cents": {"type": "integer", "minimum": 0, "maximum": 10_000_000},
                    },
                },
            },
            "shipping": {
                "type": "object",
                "additionalProperties": False,
                "required": ["name", "street", "city", "postcode", "country"],
                "properties": {
                    "name": text(100),
                    "street": text(200),
                    "city": text(100),
                    "postcode": text(16),
                    "country": {"type": "string", "pattern": "^[A-Z]{2}$"},
                },
            },
            "note": {"type": "string", "maxLength": 200},
        },
    }


def sample_order() -> dict[str, Any]:
    """A realistic order (about 400 bytes as compact JSON) that order.create.v3 accepts."""
    return {
        "customer_id": "6f1c2a9e-4b7d-4e1a-9c3f-2d8b5e0a7c41",
        "currency": "EUR",
        "items": [
            {"sku": "BOOK-0451-PB", "qty": 2, "unit_price_cents": 1299},
            {"sku": "MUG-ZTB-BLK", "qty": 1, "unit_price_cents": 1450},
            {"sku": "STICKER-PACK-10", "qty": 3, "unit_price_cents": 399},
        ],
        "shipping": {
            "name": "Ada Lovelace",
            "street": "12 Analytical Engine Lane",
            "city": "London",
            "postcode": "NW1 6XE",
            "country": "GB",
        },
        "note": "Leave the parcel with the concierge, please.",
    }


def init_deployment(
    root: Path,
    *,
    broker_port: int = 8443,
    admin_port: int = 9090,
    upstream_port: int = 9443,
    broker_id: str = "broker-a",
    deployment: str = "dev",
) -> None:
    """Create a development deployment in `root`, which must not exist or be an empty folder."""
    for what, port, low in (
        ("broker", broker_port, 0),
        ("admin", admin_port, 0),
        ("upstream", upstream_port, 1),
    ):
        if not low <= port <= 65535:
            raise ConfigError(f"{what} port {port} is not in {low}..65535")
    for what, value in (("broker id", broker_id), ("deployment name", deployment)):
        if _NAME.fullmatch(value) is None:
            raise ConfigError(f"{what} {value!r} must match {_NAME.pattern}")
    root = root.absolute()
    try:
        _check_target(root)
        root.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{root.name}.init-", dir=root.parent))
        try:
            _write_all(
                staging,
                broker_port=broker_port,
                admin_port=admin_port,
                upstream_port=upstream_port,
                broker_id=broker_id,
                deployment=deployment,
            )
            # Prove the deployment loads before it appears under its real name.
            load_broker_config(staging)
            load_registry(staging)
            _check_target(root)
            # Atomic; replaces `root` only if it is missing or still an empty folder.
            staging.replace(root)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    except OSError as exc:
        raise ConfigError(f"{root}: cannot create the deployment: {exc.strerror or exc}") from None


def _check_target(root: Path) -> None:
    if root.is_symlink() or (root.exists() and not root.is_dir()):
        raise ConfigError(f"{root}: exists and is not a folder; ztb init needs a new or empty folder")
    if root.is_dir() and any(root.iterdir()):
        raise ConfigError(f"{root}: folder is not empty; ztb init only writes into a new or empty folder")


def _write_all(
    d: Path, *, broker_port: int, admin_port: int, upstream_port: int, broker_id: str, deployment: str
) -> None:
    for sub in ("ca", "broker", "keys", "callers", "upstreams", "schemas"):
        (d / sub).mkdir()

    ca = pki.new_ca(f"ztb {deployment} development CA")
    ca.write(d / "ca/ca.pem", d / "ca/ca.key")

    server = pki.issue_server(ca, ["localhost"], ["127.0.0.1", "::1"])
    server.write(d / "broker/server.pem", d / "broker/server.key")
    egress = pki.issue_leaf(ca, EGRESS_CN, eku=[pki.CLIENT_AUTH])
    egress.write(d / "broker/egress.pem", d / "broker/egress.key")

    audit_key = Ed25519PrivateKey.generate()
    pki.write_private(
        d / "keys/audit.key",
        audit_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ),
    )
    (d / "keys/audit.pub").write_bytes(
        audit_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )

    # The checkpoint key signs the tree heads that leave the host; it never signs entries.
    checkpoint_key = SigningKey.generate()
    checkpoint_key.save(d / "keys/checkpoint.key")
    origin = origin_of(deployment, broker_id)
    (d / "keys/checkpoint.vkey").write_text(
        Verifier(origin, ED25519, checkpoint_key.public_raw).vkey() + "\n", encoding="ascii"
    )

    caller_pins: dict[str, str] = {}
    for identity in CALLERS:
        folder = d / "callers" / identity
        folder.mkdir()
        cert = pki.issue_client(ca, identity)
        cert.write(folder / "cert.pem", folder / "key.pem")
        caller_pins[identity] = cert.pin

    folder = d / "upstreams" / UPSTREAM
    folder.mkdir()
    upstream = pki.issue_server(ca, [UPSTREAM, "localhost"], ["127.0.0.1"])
    upstream.write(folder / "cert.pem", folder / "key.pem")

    (d / "schemas" / f"{SCHEMA_NAME}.json").write_text(
        json.dumps(order_create_schema(), indent=2) + "\n", encoding="utf-8"
    )
    (d / "broker.yaml").write_text(
        _broker_yaml(broker_id, deployment, broker_port, admin_port), encoding="utf-8"
    )
    (d / "registry.yaml").write_text(
        _registry_yaml(caller_pins, upstream.pin, upstream_port), encoding="utf-8"
    )
    (d / APPROVERS_DIR).mkdir()
    for name in DEV_APPROVERS:
        SigningKey.generate().save(d / APPROVERS_DIR / f"{name}.key")
    (d / APPROVERS_FILE).write_text(_approvers_yaml(), encoding="utf-8")
    sign_registry_with_dev_keys(d)
    (d / "README.md").write_text(_readme(), encoding="utf-8")
    # mkdtemp made the staging folder 0700; keys inside are 0600 either way.
    os.chmod(d, 0o700)


def sign_registry_with_dev_keys(root: Path) -> None:
    """Approve `root`'s registry.yaml as it is now with the development approver keys `ztb init`
    made (approvers/dev-approver-*.key), after checking it is a valid registry. Development and
    tests only: it stands for two people reviewing the change, which is the whole point."""
    registry_bytes = validate_registry(root)
    for name in DEV_APPROVERS:
        sign(root, registry_bytes, SigningKey.load(root / APPROVERS_DIR / f"{name}.key"))


def _approvers_yaml() -> str:
    entries = "".join(f"  - name: {name}\n    key: {APPROVERS_DIR}/{name}.pub\n" for name in DEV_APPROVERS)
    return f"""\
# approvers.yaml: who must approve registry.yaml before any broker will load it.
# A registry takes effect only with at least `threshold` valid signatures in registry.sig, each
# by a different approver listed here (`ztb registry sign DIR --key FILE` adds one).
# This file is not part of the registry, so a registry can never approve itself.
# DEVELOPMENT ONLY: the two approvers' private keys are in {APPROVERS_DIR}/; in a real deployment each
# approver keeps their own key and only the public keys are listed here.
threshold: 2
approvers:
{entries}"""


def _broker_yaml(broker_id: str, deployment: str, broker_port: int, admin_port: int) -> str:
    # Hand-written so every setting carries its explanation; names are JSON-quoted (valid YAML).
    return f"""\
# broker.yaml: deployment facts for one broker instance (where it listens, its keys, its limits).
# Policy (who may call what) lives in registry.yaml. Paths are relative to this folder.

# Names this instance in every audit entry; replicas of one deployment need distinct ids.
broker_id: {json.dumps(broker_id)}
# The deployment this broker belongs to (the audit log's origin is <deployment>/<broker_id>).
deployment: {json.dumps(deployment)}

# The data plane: mTLS on every connection, https://<host>:<port>/<upstream-name><path>.
listen: {{host: 127.0.0.1, port: {broker_port}}}

# The broker's server certificate, and the CA that caller certificates must chain to.
# TLS 1.3 by default; "1.2" allows only forward-secret AEAD suites.
tls:
  cert: broker/server.pem
  key: broker/server.key
  client_ca: ca/ca.pem
  min_version: "1.3"

# The broker's own client certificate for its mTLS connections to upstreams.
egress: {{cert: broker/egress.pem, key: broker/egress.key}}

# The signed, hash-chained audit log: its folder, the Ed25519 signing key, how long a call may
# wait for its entry to be durable before it is refused (503, never forwarded), and the size at
# which a segment file is closed and the next one begun (the chain continues across segments).
audit:
  dir: audit
  signing_key: keys/audit.key
  durability_timeout_ms: 1000
  segment_bytes: 67108864        # 64 MiB

# Off-host anchoring: a checkpoint (C2SP tlog-checkpoint: origin "<deployment>/<broker_id>", tree
# size, RFC 6962 root) signed with its own key every every_entries entries or every_s seconds,
# whichever comes first, when the log grew. Checkpoints are kept in audit/<broker_id>/checkpoints/
# and sent to each sink: {{file: PATH}} appends them to a file on another host or mount;
# {{witness: https://HOST:PORT, ca: FILE, vkey: FILE}} asks a C2SP tlog-witness (`ztb witness serve`)
# to cosign them. The broker turns not-ready when a sink lags more than max_lag_s.
anchor:
  checkpoint_key: keys/checkpoint.key
  every_entries: 1000
  every_s: 5
  max_lag_s: 60
  sinks: []

# Lifetime of minted tokens in seconds (at most 60).
token_ttl_s: 60
# Where tokens live: "memory" (this process) or redis://host:port/db (shared by several brokers).
token_store: memory

# Health, readiness and metrics; a separate listener that never carries data-plane traffic.
admin: {{host: 127.0.0.1, port: {admin_port}}}

# SIGTERM: stop accepting, let calls in flight finish within this many seconds, write `stop`.
drain_timeout_s: 10
# Operational log lines (JSON on stderr, not the audit log): debug, info, warning or error.
log_level: info

# Request and response limits. Each may be tuned within bounds; none can be switched off.
limits:
  header_timeout_s: 10           # the request head must arrive within this time (else 408)
  body_timeout_s: 30             # the request body must arrive within this time (else 408)
  idle_timeout_s: 75             # an idle keep-alive connection is closed after this time
  max_headers: 64                # more request headers than this: 431
  max_header_bytes: 16384        # a larger request header block: 431
  max_response_bytes: 8388608    # an upstream response larger than this is not relayed (8 MiB)
  max_connections: 1024          # concurrent caller connections; more are closed before TLS
"""


def _registry_yaml(caller_pins: dict[str, str], upstream_pin: str, upstream_port: int) -> str:
    return f"""\
# registry.yaml: the policy, and the only thing that decides what may flow.
# Whatever is not listed here is denied.

# Callers: identity name -> SHA-256 pins of the SubjectPublicKeyInfo of their certificates.
# A certificate from the trusted CA whose key is not pinned here is refused (403 identity).
identities:
  svc.checkout: {{spki: ["{caller_pins["svc.checkout"]}"]}}
  svc.reports:  {{spki: ["{caller_pins["svc.reports"]}"]}}

# Upstreams: the only addresses the broker ever connects to. url is scheme, host and port only;
# the upstream's certificate must chain to ca and its key must match one of the spki pins.
upstreams:
  {UPSTREAM}:
    url: https://127.0.0.1:{upstream_port}
    ca: ca/ca.pem
    spki: ["{upstream_pin}"]
    connect_timeout_ms: 2000
    timeout_ms: 10000

# Routes: what may be called on each upstream. A path parameter is typed ({{name:uuid}},
# int, slug, str); the forwarded path is rebuilt from the template, never copied.
# Request and response headers not listed are dropped; max_bytes caps the request body.
routes:
  - id: orders.create
    upstream: {UPSTREAM}
    method: POST
    path: /v1/orders/create
    scope: orders:create
    schema: {SCHEMA_NAME}            # the body must validate against this JSON Schema
    request_headers: [x-request-id]
    response_headers: [content-type, x-request-id]
    max_bytes: 65536
  - id: orders.get
    upstream: {UPSTREAM}
    method: GET
    path: "/v1/orders/{{order_id:uuid}}"
    scope: orders:read
    response_headers: [content-type]
  - id: orders.list
    upstream: {UPSTREAM}
    method: GET
    path: /v1/orders
    query: {{limit: {{type: int}}, cursor: {{type: str}}}}   # any other query parameter is refused
    scope: orders:read
    response_headers: [content-type]

# Grants: identity -> upstream -> the scopes it may request tokens for.
grants:
  svc.checkout: {{{UPSTREAM}: [orders:create, orders:read]}}
  svc.reports:  {{{UPSTREAM}: [orders:read]}}

# Schemas: name -> JSON Schema file (draft-07), relative to this folder.
schemas:
  {SCHEMA_NAME}: schemas/{SCHEMA_NAME}.json
"""


def _readme() -> str:
    return """\
# ztb development deployment (made by `ztb init`)

DEVELOPMENT ONLY: the CA private key is on disk (ca/ca.key). Never use these certificates in production.

- broker.yaml: where the broker listens, its certificates, audit log and limits. registry.yaml: the policy.
- ca/: the development CA that signs every certificate here; everyone trusts ca/ca.pem.
- broker/: server.* is the broker's TLS server cert (localhost, 127.0.0.1, ::1); egress.* its client cert.
- keys/: audit.key signs the audit log (Ed25519, keep secret); audit.pub is for auditors.
  checkpoint.key signs the log's checkpoints; checkpoint.vkey is for witnesses and auditors.
- approvers.yaml: the two approvers (M = 2) whose signatures in registry.sig make registry.yaml take
  effect; approvers/: their keys (private keys here: development only). After editing registry.yaml:
  `ztb registry diff`, then `ztb registry sign <this folder> --key approvers/dev-approver-1.key` (and -2).
- callers/<identity>/: client certificates of the sample callers svc.checkout and svc.reports.
- upstreams/orders.api.internal/: the sample upstream's server certificate. schemas/: JSON Schemas.
Next: `ztb serve <this folder>`; the audit log appears in audit/.
"""
