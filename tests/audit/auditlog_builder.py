"""Builds real, validly signed audit logs on disk for the audit tests (no mocks)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ztb.audit.entry import VERSION, ZERO_HASH, body_of, seal
from ztb.audit.keys import SigningKey


def entry_bodies(calls: int, broker: str, key: SigningKey) -> list[dict[str, object]]:
    """A start, `calls` allowed calls with their results, one denied call, and a stop."""
    bodies: list[dict[str, object]] = [
        {
            "kind": "start",
            "version": "0.1.0",
            "registry_sha256": "sha256:" + "ab" * 32,
            "keys": {key.kid: key.public_hex},
        }
    ]
    for number in range(calls):
        call_id = f"call-{number:04d}"
        bodies.append(
            {
                "kind": "call",
                "call_id": call_id,
                "caller": {"spki": "sha256:" + "b1" * 32, "identity": "svc.checkout", "addr": "127.0.0.1"},
                "upstream": {
                    "name": "orders.api.internal",
                    "route": "orders.create",
                    "method": "POST",
                    "path": "/v1/orders/create",
                },
                "token": {"id": f"tok{number:013d}", "scope": ["orders:create"], "exp_in_s": 60},
                "shape": {"schema": "order.create.v3", "bytes": 412, "sha256": "sha256:" + "4a" * 32},
                "decision": "ALLOW",
                "gate": None,
                "reason": None,
                "latency_ms": 3,
            }
        )
        bodies.append(
            {
                "kind": "result",
                "call_id": call_id,
                "forwarded": True,
                "status": 201,
                "bytes": 57,
                "sha256": "sha256:" + "c3" * 32,
                "upstream_ms": 12,
                "error": None,
            }
        )
    bodies.append(
        {
            "kind": "call",
            "call_id": "call-denied",
            "caller": {"spki": "sha256:" + "d4" * 32, "identity": "svc.reports", "addr": "127.0.0.1"},
            "upstream": {"name": "orders.api.internal", "route": "orders.create", "method": "POST"},
            "token": None,
            "shape": None,
            "decision": "DENY",
            "gate": "scope",
            "reason": "scope_not_granted",
            "latency_ms": 1,
        }
    )
    bodies.append({"kind": "stop"})
    return bodies


def sealed_lines(
    bodies: list[dict[str, object]], key: SigningKey, broker: str = "broker-a", first_seq: int = 0
) -> list[bytes]:
    """Seal bodies into a chain: common fields, seq from `first_seq`, prev_hash links."""
    lines: list[bytes] = []
    prev_hash = ZERO_HASH
    for offset, fields in enumerate(bodies):
        body: dict[str, object] = {
            "v": VERSION,
            "seq": first_seq + offset,
            "ts": f"2026-05-04T11:42:{offset % 60:02d}.317Z",
            "broker": broker,
            "kid": key.kid,
            "prev_hash": prev_hash,
            **fields,
        }
        line, prev_hash, _ = seal(body, key)
        lines.append(line)
    return lines


def make_lines(key: SigningKey, calls: int = 3, broker: str = "broker-a") -> list[bytes]:
    return sealed_lines(entry_bodies(calls, broker, key), key, broker)


def write_log(folder: Path, lines: list[bytes], segments: int = 1) -> list[Path]:
    """Write lines as `segments` consecutive segment files (as even as possible)."""
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.jsonl"):
        old.unlink()
    size = -(-len(lines) // segments)
    paths = []
    for number in range(segments):
        path = folder / f"{number + 1:06d}.jsonl"
        path.write_bytes(b"".join(lines[number * size : (number + 1) * size]))
        paths.append(path)
    return paths


def write_deployment(folder: Path, audit_dir: str | None) -> None:
    """A minimal broker.yaml; `audit_dir` None leaves audit.dir at its default."""
    folder.mkdir(parents=True, exist_ok=True)
    audit = f"audit: {{dir: {audit_dir}}}\n" if audit_dir else ""
    (folder / "broker.yaml").write_text(
        "broker_id: broker-a\n"
        "deployment: test\n"
        "listen: {port: 8443}\n"
        "tls: {cert: broker/server.crt, key: broker/server.key, client_ca: ca/ca.crt}\n"
        "egress: {cert: broker/egress.crt, key: broker/egress.key}\n" + audit
    )


def forge(
    lines: list[bytes], seq: int, key: SigningKey, change: Callable[[dict[str, Any]], None]
) -> list[bytes]:
    """What a thief of the audit key can do: change entry `seq`, then re-seal it and every later
    entry so that every hash, signature and link of the chain holds again."""
    entries = [json.loads(line) for line in lines]
    forged = list(lines[:seq])
    prev_hash = entries[seq - 1]["hash"] if seq else ZERO_HASH
    for index in range(seq, len(entries)):
        body = body_of(entries[index])
        if index == seq:
            change(body)
        body["prev_hash"] = prev_hash
        line, prev_hash, _ = seal(body, key)
        forged.append(line)
    return forged
