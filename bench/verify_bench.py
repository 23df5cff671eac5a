"""The auditor's verifier on a large log: entries verified per second, with every core checking
signatures, next to the raw Ed25519 verify rate of this machine measured in the same run.

    python -m bench.verify_bench [--entries 1000000] [--workers N]

Target: at least 80 % of (raw single-core verify rate x cores). The log (realistic call and
result entries, 64 MiB segments, signed with a bench key) is generated once, on every core, into
bench/results/cache/ and reused by later runs.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import resource
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ztb.audit.entry import SIG_CONTEXT, VERSION, ZERO_HASH, body_of
from ztb.audit.jcs import canonicalize
from ztb.audit.keys import SigningKey
from ztb.audit.reader import find_logs
from ztb.audit.verify import verify_logs

CACHE = Path(__file__).parent / "results" / "cache"
SEGMENT_BYTES = 64 * 1024 * 1024
BATCH = 20_000


def body(seq: int, prev_hash: str, kid: str) -> dict[str, object]:
    """The seq-th entry of a busy broker's log: a start, then allowed calls and their results."""
    common = {"v": VERSION, "seq": seq, "broker": "bench-a", "kid": kid, "prev_hash": prev_hash}
    ts = f"2026-05-04T11:{seq // 60000 % 60:02d}:{seq // 1000 % 60:02d}.{seq % 1000:03d}Z"
    call_id = f"01HX9GZ6P7B2WMK0RT{seq // 2:08d}"
    if seq == 0:
        return {
            **common,
            "kind": "start",
            "ts": ts,
            "version": "bench",
            "registry_sha256": ZERO_HASH,
            "keys": {},
        }
    if seq % 2:
        return {
            **common,
            "kind": "call",
            "ts": ts,
            "call_id": call_id,
            "caller": {"spki": "sha256:" + "b1f4" * 16, "identity": "svc.checkout", "addr": "127.0.0.1"},
            "upstream": {
                "name": "orders.api.internal",
                "route": "orders.create",
                "method": "POST",
                "path": "/v1/orders/create",
            },
            "token": {
                "id": f"{seq:016x}",
                "scope": ["orders:create"],
                "exp_in_s": 60,
                "next_id": f"{seq + 1:016x}",
            },
            "shape": {"schema": "order.create.v3", "bytes": 412, "sha256": "sha256:" + f"{seq:064x}"},
            "decision": "ALLOW",
            "gate": None,
            "reason": None,
            "latency_ms": 3,
        }
    return {
        **common,
        "kind": "result",
        "ts": ts,
        "call_id": call_id,
        "forwarded": True,
        "status": 201,
        "bytes": 57,
        "sha256": "sha256:" + f"{seq:064x}",
        "upstream_ms": 12,
        "error": None,
    }


def _sign(args: tuple[bytes, list[str]]) -> list[str]:
    private = Ed25519PrivateKey.from_private_bytes(args[0])
    return ["ed25519:" + private.sign(SIG_CONTEXT + entry_hash.encode()).hex() for entry_hash in args[1]]


def canonical(value: dict[str, object]) -> bytes:
    # The bench entries are plain ASCII, integers and no floats: orjson's sorted form is JCS.
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


def generate(folder: Path, entries: int, workers: int) -> SigningKey:
    """Write a signed chain of `entries` entries into folder/audit/bench-a (once)."""
    key_file = folder / "audit.key"
    done = folder / "complete"
    if done.exists():
        return SigningKey.load(key_file)
    folder.mkdir(parents=True, exist_ok=True)
    private = Ed25519PrivateKey.generate()
    key = SigningKey(private)
    key.save(key_file)
    private_raw = private.private_bytes_raw()
    log_dir = folder / "audit" / "bench-a"
    log_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    prev_hash, segment, written = ZERO_HASH, 1, 0
    out = (log_dir / f"{segment:06d}.jsonl").open("wb")
    with ProcessPoolExecutor(workers) as pool:
        for first in range(0, entries, BATCH):
            bodies, hashes = [], []
            for seq in range(first, min(first + BATCH, entries)):
                entry = body(seq, prev_hash, key.kid)
                prev_hash = "sha256:" + hashlib.sha256(b"\0" + canonical(entry)).hexdigest()
                bodies.append(entry)
                hashes.append(prev_hash)
            step = -(-len(hashes) // workers)
            parts = [(private_raw, hashes[i : i + step]) for i in range(0, len(hashes), step)]
            sigs = [sig for part in pool.map(_sign, parts) for sig in part]
            for entry, entry_hash, sig in zip(bodies, hashes, sigs, strict=True):
                line = canonical({**entry, "hash": entry_hash, "sig": sig}) + b"\n"
                if written + len(line) > SEGMENT_BYTES:
                    out.close()
                    segment, written = segment + 1, 0
                    out = (log_dir / f"{segment:06d}.jsonl").open("wb")
                out.write(line)
                written += len(line)
    out.close()
    sample = body(1, ZERO_HASH, key.kid)
    assert canonical(sample) == canonicalize(sample) and body_of(sample) == sample
    done.write_text(f"{entries}\n")
    print(f"generated {entries} entries in {time.perf_counter() - started:.1f} s into {log_dir}")
    return key


def _cpu_seconds() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def raw_verify_rate(seconds: float = 3.0) -> tuple[float, float]:
    """Single-core Ed25519 verifications (OpenSSL through cryptography) per second of wall
    time and per CPU-second."""
    private = Ed25519PrivateKey.generate()
    public = private.public_key()
    message = SIG_CONTEXT + b"sha256:" + b"ab" * 32
    signature = private.sign(message)
    count, started, cpu = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - started < seconds:
        for _ in range(500):
            public.verify(signature, message)
        count += 500
    return count / (time.perf_counter() - started), count / (time.process_time() - cpu)


def _raw_for(seconds: float) -> float:
    return raw_verify_rate(seconds)[0]


def raw_verify_rate_all_cores(workers: int, seconds: float = 3.0) -> float:
    """Ed25519 verifications per second with `workers` processes verifying at once: what the
    machine delivers right now, other load included."""
    with ProcessPoolExecutor(workers) as pool:
        list(pool.map(_raw_for, [0.1] * workers))  # started and warm
        return sum(pool.map(_raw_for, [seconds] * workers))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    folder = CACHE / f"verify-{args.entries}"
    key = generate(folder, args.entries, args.workers)

    raw, raw_cpu = raw_verify_rate()
    raw_all = raw_verify_rate_all_cores(args.workers)
    started = time.perf_counter()
    cpu = _cpu_seconds()
    report = verify_logs(find_logs(folder / "audit"), {key.kid: key.public_raw}, workers=args.workers)
    elapsed = time.perf_counter() - started
    cpu = _cpu_seconds() - cpu
    (log,) = report.logs
    assert report.ok and log.entries == args.entries, report.to_text()
    rate = log.entries / elapsed
    target = 0.8 * raw * args.workers
    print(f"log: {log.entries} entries in {len(log.segments)} segments, {args.workers} worker processes")
    print(f"raw Ed25519 verify, one core:     {raw:10,.0f} /s")
    print(f"raw x {args.workers} cores:                  {raw * args.workers:10,.0f} /s")
    print(f"raw, {args.workers} processes at once:        {raw_all:10,.0f} /s  (what this machine gives now)")
    print(f"verifier (ztb audit verify):      {rate:10,.0f} entries/s  ({elapsed:.1f} s)")
    print(f"verifier / raw at once:           {rate / raw_all:10.0%}")
    print(
        f"per CPU-second:                   verifier {log.entries / cpu:,.0f} entries, raw {raw_cpu:,.0f} "
        f"verifies ({log.entries / cpu / raw_cpu:.0%}; {cpu:.1f} CPU-s in all processes)"
    )
    print(
        f"verifier / (raw x cores):         {rate / (raw * args.workers):10.0%}   target >= 80 % "
        f"({target:,.0f} /s): {'met' if rate >= target else 'NOT met'}"
    )


if __name__ == "__main__":
    main()
