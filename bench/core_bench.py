"""What the broker's core costs per call without any network: the floor under `make bench`.

    python -m bench.core_bench [--calls 6400] [--concurrency 32]

A deployment from `ztb init`, its registry, the in-process token store and a real audit writer
(group commit, fsync) in a scratch folder. Each call is built as the listener builds it (the
demo's order as its body), goes through all five gates (the token taken, the rotation token
minted, the `call` entry signed and made durable), then its `result` entry is written and made
durable, as after an upstream answered. Only the two network edges are left out: no TLS, no
HTTP, no upstream. CPU is the process's (both threads, kernel time included) over the run.

Printed beside it, measured in the same run: the primitives a call cannot do without (two
Ed25519 signatures, two canonical forms and leaf hashes, the strict JSON parse and the schema,
the token hash and a new token), so the part of the core that is the audit promise itself is
plain to see. Compare the total with the reference proxy's CPU per call in `make bench`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import tempfile
import time
import timeit
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from ztb.audit.entry import SIG_CONTEXT, canonical_entry, leaf_hash
from ztb.audit.keys import SigningKey
from ztb.audit.writer import AuditWriter
from ztb.broker import Broker, _result_fields
from ztb.config import load_broker_config, load_registry
from ztb.deploy import init_deployment, sample_order
from ztb.edge.upstream import UpstreamPool, UpstreamResponse
from ztb.gates.base import Peer
from ztb.gates.strict_json import parse
from ztb.metrics import Metrics
from ztb.pki import cert_thumbprint, spki_pin
from ztb.sample.local import free_port
from ztb.tokens.format import new_token, token_hash
from ztb.tokens.memory import MemoryTokenStore
from ztb.tokens.store import TokenRecord

TARGET = "/orders.api.internal/v1/orders/create"
UPSTREAM = "orders.api.internal"


class BytesBody:
    """A body that has fully arrived with its head (the usual case for a small JSON body)."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    def declared_length(self) -> int | None:
        return len(self._data)

    async def read(self, limit: int) -> bytes:
        return self._data


async def core_cost(root: Path, calls: int, concurrency: int) -> float:
    """CPU µs per fully gated call (both entries durable), over `calls` calls."""
    config = load_broker_config(root)
    registry = load_registry(root)
    key = SigningKey.load(config.path(config.audit.signing_key))
    metrics = Metrics()
    writer = AuditWriter(root / "core-bench-log", "core-bench", key, on_batch=metrics.audit_batch)
    await writer.open(version="bench", registry_sha256=registry.sha256)
    store = MemoryTokenStore()
    pool = UpstreamPool(config.path(config.egress.cert), config.path(config.egress.key), "1.3", 1 << 20)
    broker = Broker(config, registry, store, writer, pool, metrics)
    cert = x509.load_pem_x509_certificate((root / "callers" / "svc.checkout" / "cert.pem").read_bytes())
    peer = Peer("127.0.0.1", spki_pin(cert), cert_thumbprint(cert.public_bytes(Encoding.DER)))
    identity = registry.identity_for(peer.spki)
    assert identity is not None
    body = json.dumps(sample_order()).encode()
    head = (("host", "localhost"), ("content-type", "application/json"), ("content-length", str(len(body))))
    answered = UpstreamResponse(
        201, (("content-type", "application/json"),), b'{"id":"1"}', "sha256:" + "0" * 64, 1
    )

    async def caller(count: int) -> None:
        token = new_token()
        record = TokenRecord(identity, UPSTREAM, "orders:create", time.time() + 300, peer.thumbprint)
        await store.put(token_hash(token), record)
        for _ in range(count):
            headers = (*head, ("authorization", f"Bearer {token}"))
            call = broker.new_call(peer, "POST", TARGET, headers, BytesBody(body))
            deny = await broker.pipeline.run(call)
            if deny is not None or call.next_token is None:
                raise RuntimeError(f"the core refused a well-formed call: {deny}")
            broker._count(call, deny)
            result = writer.append("result", _result_fields(call.call_id, answered))
            if not await writer.durable(result.seq, 1.0):
                raise RuntimeError("the result entry was not made durable")
            token = call.next_token

    await caller(64)  # warm-up
    per_caller = max(1, calls // concurrency)
    started = time.process_time()
    await asyncio.gather(*(caller(per_caller) for _ in range(concurrency)))
    cost = (time.process_time() - started) / (per_caller * concurrency) * 1e6
    await writer.close()
    return cost


def primitives(root: Path) -> dict[str, float]:
    """µs of the unavoidable pieces of one call, each timed alone in this process."""
    config = load_broker_config(root)
    key = SigningKey.load(config.path(config.audit.signing_key))
    route = load_registry(root).routes[UPSTREAM][0]
    validator = route.validator
    assert validator is not None
    body = json.dumps(sample_order()).encode()
    document = parse(body)
    entry = {"v": "ztb-1", "kind": "call", "seq": 1, "call_id": "0" * 26, "shape": {"bytes": len(body)}}
    hashed = leaf_hash(canonical_entry(entry)).encode()

    def timed(function: object, number: int = 5000) -> float:
        return timeit.timeit(function, number=number) / number * 1e6  # type: ignore[arg-type]

    return {
        "2 x Ed25519 signature": 2 * timed(lambda: key.sign(SIG_CONTEXT + hashed)),
        "4 x canonical form + SHA-256 (two per entry)": 4 * timed(lambda: leaf_hash(canonical_entry(entry))),
        "strict JSON parse": timed(lambda: parse(body)),
        "JSON Schema validation": timed(lambda: validator(document)),
        "token hash + new rotation token": timed(lambda: token_hash(new_token())),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.core_bench", description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=6400)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args(argv)
    scratch = Path(tempfile.mkdtemp(prefix="ztb-core-bench-"))
    try:
        root = scratch / "deployment"
        init_deployment(root, broker_port=free_port(), admin_port=free_port(), upstream_port=free_port())
        cost = asyncio.run(core_cost(root, args.calls, args.concurrency))
        parts = primitives(root)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print(
        f"core, five gates + both entries durable, no network (c={args.concurrency}): {cost:7.1f} us CPU/call"
    )
    print("of which, timed alone in the same run:")
    for name, micros in parts.items():
        print(f"  {name:48} {micros:7.1f} us")
    print(f"  {'sum of the above':48} {sum(parts.values()):7.1f} us")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
