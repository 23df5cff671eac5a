"""The audit writer's group commit: entries made durable per second under 1, 8 and 64
concurrent writers, next to this machine's single-fsync rate measured in the same run.

    python -m bench.writer_bench [--seconds 3] [--dir bench/results/cache/writer]

Each writer appends a realistic `call` entry and waits until it is durable (as the egress gate
does), then the next. With one writer every entry costs an fsync; with many, one fsync covers
every entry queued meanwhile, so durable entries per second rise far above fsyncs per second.
The folder must be on the disk the broker would use (fsync on a tmpfs costs nothing).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import time
from pathlib import Path

from ztb.audit.keys import SigningKey
from ztb.audit.writer import AuditWriter

DEFAULT_DIR = Path(__file__).parent / "results" / "cache" / "writer"


def fsync_rate(folder: Path, seconds: float) -> float:
    """Appends of one 1 KiB line, each followed by its own fsync, per second."""
    path = folder / "fsync-probe"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    line = b"x" * 1023 + b"\n"
    count, offset, started = 0, 0, time.perf_counter()
    try:
        while time.perf_counter() - started < seconds:
            os.pwrite(fd, line, offset)
            os.fsync(fd)
            offset += len(line)
            count += 1
    finally:
        os.close(fd)
        path.unlink()
    return count / (time.perf_counter() - started)


def call_fields(number: int) -> dict[str, object]:
    return {
        "call_id": f"01HX9GZ6P7B2WMK0RT{number:08d}",
        "caller": {"spki": "sha256:" + "b1f4" * 16, "identity": "svc.checkout", "addr": "127.0.0.1"},
        "upstream": {
            "name": "orders.api.internal",
            "route": "orders.create",
            "method": "POST",
            "path": "/v1/orders/create",
        },
        "token": {"id": f"{number:016x}", "scope": ["orders:create"], "exp_in_s": 60, "next_id": None},
        "shape": {"schema": "order.create.v3", "bytes": 412, "sha256": "sha256:" + f"{number:064x}"},
        "decision": "ALLOW",
        "gate": None,
        "reason": None,
        "latency_ms": 3,
    }


async def durable_rate(folder: Path, writers: int, seconds: float) -> tuple[float, float]:
    """(durable entries per second, mean entries per group commit) with `writers` concurrent writers."""
    writer = AuditWriter(folder, "bench-a", SigningKey.generate())
    await writer.open(version="bench", registry_sha256="sha256:" + "0" * 64)
    done = 0
    stop = time.perf_counter() + seconds

    async def one() -> None:
        nonlocal done
        while time.perf_counter() < stop:
            entry = writer.append("call", call_fields(done))
            assert await writer.durable(entry.seq, 10.0), writer.last_error
            done += 1

    batches_before, entries_before = writer.batches, writer.batch_sizes_total
    started = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(writers)))
    elapsed = time.perf_counter() - started
    batches = writer.batches - batches_before
    per_batch = (writer.batch_sizes_total - entries_before) / max(batches, 1)
    await writer.close()
    return done / elapsed, per_batch


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR)
    args = parser.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    fsyncs = fsync_rate(args.dir, args.seconds)
    print(f"folder: {args.dir}")
    print(f"single fsync (1 KiB append + fsync): {fsyncs:10,.0f} /s")
    for writers in (1, 8, 64):
        folder = args.dir / f"log-{writers}"
        shutil.rmtree(folder, ignore_errors=True)
        rate, per_batch = asyncio.run(durable_rate(folder, writers, args.seconds))
        shutil.rmtree(folder, ignore_errors=True)
        print(
            f"{writers:3d} concurrent writers: {rate:10,.0f} durable entries/s  "
            f"({rate / fsyncs:5.1f} x the fsync rate, {per_batch:5.1f} entries per group commit)"
        )


if __name__ == "__main__":
    main()
