"""Scale benchmark: one worker against two on one port with the Redis token store, and the CPU a
call costs the broker with the Redis store against the in-process store.

Everything is real and local: `ztb serve` (its supervisor and workers as their own processes), a
private `redis-server` without persistence, the sample upstream in a process of its own, and
load-generator processes that each keep connections open and follow `ZTB-Next-Token`, so every
call presents a fresh, single-use token (one mint per connection, then none). CPU is read from
/proc (utime + stime) of the broker processes and of Redis over the measured window only.

Run: `python -m bench.scale_bench [--seconds S] [--connections C] [--loaders L]`.
All figures come from the same run on the same machine; compare rows, not machines.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from ztb.deploy import init_deployment

UPSTREAM = "orders.api.internal"
CALL_PATH = f"/{UPSTREAM}/v1/orders"
TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """utime + stime of one process (all its threads) so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def machine_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far, every process included."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return (sum(values) - idle) / TICKS, sum(values) / TICKS


def children(pid: int) -> list[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return [int(child) for child in text.split()]


# -- the load generator (its own processes) -------------------------------------------------------


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, dict[bytes, bytes], bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers.get(b"content-length", b"0")))
    return status, headers, body


async def _connection(port: int, ctx: ssl.SSLContext, until: float, counts: list[int]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname="127.0.0.1")
    mint = b'{"upstream": "' + UPSTREAM.encode() + b'", "scope": "orders:read"}'
    writer.write(
        b"POST /.ztb/token HTTP/1.1\r\nHost: broker\r\nContent-Type: application/json\r\n"
        b"Content-Length: " + str(len(mint)).encode() + b"\r\n\r\n" + mint
    )
    status, _, body = await _read_response(reader)
    if status != 200:
        raise RuntimeError(f"mint refused: {status} {body!r}")
    token = body.split(b'"access_token":"', 1)[1].split(b'"', 1)[0]
    while time.time() < until:
        writer.write(
            b"GET "
            + CALL_PATH.encode()
            + b" HTTP/1.1\r\nHost: broker\r\nAuthorization: Bearer "
            + token
            + b"\r\n\r\n"
        )
        status, headers, _ = await _read_response(reader)
        counts[0 if status == 200 else 1] += 1
        next_token = headers.get(b"ztb-next-token")
        if next_token is None:
            raise RuntimeError(f"call refused without a next token: {status}")
        token = next_token
    writer.close()


def load_main(deployment: Path, port: int, connections: int, start: float, until: float) -> None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(deployment / "ca" / "ca.pem")
    caller = deployment / "callers" / "svc.checkout"
    ctx.load_cert_chain(caller / "cert.pem", caller / "key.pem")
    counts = [0, 0]

    async def run() -> None:
        await asyncio.sleep(max(0.0, start - time.time()))
        await asyncio.gather(*(_connection(port, ctx, until, counts) for _ in range(connections)))

    asyncio.run(run())
    print(f"{counts[0]} {counts[1]}", flush=True)


def upstream_main(deployment: Path, port: int) -> None:
    from ztb.sample.upstream import SampleUpstream

    folder = deployment / "upstreams" / UPSTREAM

    async def run() -> None:
        upstream = SampleUpstream(
            folder / "cert.pem", folder / "key.pem", deployment / "ca" / "ca.pem", port=port
        )
        upstream.received = _Discard()  # a long run must not keep every request
        await upstream.start()
        print("ready", flush=True)
        await asyncio.Event().wait()

    asyncio.run(run())


class _Discard(list):  # type: ignore[type-arg]
    def append(self, item: object) -> None:
        pass


# -- the scenarios ---------------------------------------------------------------------------------


@dataclass
class Result:
    name: str
    workers: int
    store: str
    calls: int
    refused: int
    seconds: float
    broker_cpu_s: float
    redis_cpu_s: float
    loader_cpu_s: float
    upstream_cpu_s: float
    machine_busy: float  # share of all CPUs busy in the window, every process of the machine included

    @property
    def rate(self) -> float:
        return self.calls / self.seconds

    def per_call_us(self, cpu_s: float) -> float:
        return cpu_s / max(1, self.calls) * 1e6


def _wait_line(process: subprocess.Popen[str], text: str, count: int, timeout: float = 30) -> list[str]:
    assert process.stdout is not None
    found: list[str] = []
    deadline = time.monotonic() + timeout
    while len(found) < count:
        if time.monotonic() > deadline:
            raise RuntimeError(f"no {count} lines with {text!r} within {timeout} s")
        line = process.stdout.readline()
        if not line:
            raise RuntimeError(f"process ended before {text!r}")
        found.extend([line] * line.count(text))
    return found


def scenario(
    name: str, workers: int, store: str, work: Path, redis_url: str, redis_pid: int, args: argparse.Namespace
) -> Result:
    deployment = work / name
    upstream_port, broker_port = free_port(), free_port()
    init_deployment(
        deployment, broker_port=broker_port, admin_port=0, upstream_port=upstream_port, deployment=name
    )
    config = (deployment / "broker.yaml").read_text()
    token_store = redis_url if store == "redis" else "memory"
    config = config.replace("token_store: memory", f"token_store: {token_store}\nworkers: {workers}")
    (deployment / "broker.yaml").write_text(config)
    python = sys.executable
    upstream = subprocess.Popen(
        [python, "-m", "bench.scale_bench", "--role", "upstream", str(deployment), str(upstream_port)],
        stdout=subprocess.PIPE,
        text=True,
    )
    broker = subprocess.Popen(
        [python, "-m", "ztb", "serve", str(deployment)], stdout=subprocess.PIPE, text=True
    )
    try:
        _wait_line(upstream, "ready", 1)
        _wait_line(broker, " serving https://", workers)
        pids = [broker.pid, *children(broker.pid)] if workers > 1 else [broker.pid]
        start = time.time() + 2.0  # loaders started, connected, minted
        warmup = 1.0
        until = start + warmup + args.seconds
        loaders = [
            subprocess.Popen(
                [
                    python,
                    "-m",
                    "bench.scale_bench",
                    "--role",
                    "load",
                    str(deployment),
                    str(broker_port),
                    str(args.connections),
                    str(start),
                    str(until),
                ],
                stdout=subprocess.PIPE,
                text=True,
            )
            for _ in range(args.loaders)
        ]
        # The window: after the warm-up, until the loaders stop; calls counted by the audit log.
        time.sleep(max(0.0, start + warmup - time.time()))
        audit_before = _allowed_calls(deployment)
        broker_before = sum(cpu_seconds(pid) for pid in pids)
        redis_before = cpu_seconds(redis_pid)
        loader_before = sum(cpu_seconds(loader.pid) for loader in loaders)
        upstream_before = cpu_seconds(upstream.pid)
        busy_before, total_before = machine_busy()
        began = time.monotonic()
        time.sleep(max(0.0, until - time.time() - 0.05))
        broker_cpu = sum(cpu_seconds(pid) for pid in pids) - broker_before
        redis_cpu = cpu_seconds(redis_pid) - redis_before
        loader_cpu = sum(cpu_seconds(loader.pid) for loader in loaders) - loader_before
        upstream_cpu = cpu_seconds(upstream.pid) - upstream_before
        busy_after, total_after = machine_busy()
        busy = (busy_after - busy_before) / max(1e-9, total_after - total_before)
        elapsed = time.monotonic() - began
        refused = 0
        for loader in loaders:
            out, _ = loader.communicate(timeout=60)
            if loader.returncode != 0:
                raise RuntimeError(f"a load generator failed ({loader.returncode})")
            refused += int(out.split()[1])
        calls = _allowed_calls(deployment) - audit_before
    finally:
        broker.send_signal(signal.SIGTERM)
        broker.wait(30)
        upstream.terminate()
        upstream.wait(10)
    if store == "memory":
        redis_cpu = 0.0
    return Result(
        name, workers, store, calls, refused, elapsed, broker_cpu, redis_cpu, loader_cpu, upstream_cpu, busy
    )


def _allowed_calls(deployment: Path) -> int:
    """ALLOW `call` entries in every log of the deployment (each worker keeps its own)."""
    total = 0
    for segment in (deployment / "audit").glob("*/*.jsonl"):
        with segment.open("rb") as lines:
            total += sum(1 for line in lines if b'"decision":"ALLOW"' in line and b'"kind":"call"' in line)
    return total


def start_redis(work: Path) -> tuple[subprocess.Popen[bytes], str]:
    if shutil.which("redis-server") is None:
        raise SystemExit("scale bench: redis-server is not installed")
    port = free_port()
    process = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(work),
            "--logfile",
            str(work / "redis.log"),
        ],
        stdout=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                if sock.recv(16).startswith(b"+PONG"):
                    break
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit("scale bench: redis-server did not start")
        time.sleep(0.05)
    return process, f"redis://127.0.0.1:{port}/0"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="measured seconds per scenario")
    parser.add_argument("--connections", type=int, default=32, help="connections per load process")
    parser.add_argument("--loaders", type=int, default=2, help="load-generator processes")
    parser.add_argument(
        "--role", choices=["bench", "load", "upstream"], default="bench", help=argparse.SUPPRESS
    )
    args, rest = parser.parse_known_args()
    if args.role == "load":
        load_main(Path(rest[0]), int(rest[1]), int(rest[2]), float(rest[3]), float(rest[4]))
        return
    if args.role == "upstream":
        upstream_main(Path(rest[0]), int(rest[1]))
        return
    work = Path(tempfile.mkdtemp(prefix="ztb-scale-bench-"))
    redis, redis_url = start_redis(work)
    try:
        results = [
            scenario("memory-1", 1, "memory", work, redis_url, redis.pid, args),
            scenario("redis-1", 1, "redis", work, redis_url, redis.pid, args),
            scenario("redis-2", 2, "redis", work, redis_url, redis.pid, args),
        ]
    finally:
        redis.terminate()
        redis.wait(10)
        shutil.rmtree(work, ignore_errors=True)
    print(
        f"scale bench: {os.cpu_count()} CPUs, {args.loaders} load processes x {args.connections} connections, "
        f"{args.seconds:g} s measured per row; every call a fresh single-use token, audited and forwarded"
    )
    header = (
        "scenario",
        "workers",
        "store",
        "calls/s",
        "broker CPU µs/call",
        "Redis µs/call",
        "upstream µs/call",
        "loaders µs/call",
        "machine busy",
        "refused",
    )
    rows = [header] + [
        (
            r.name,
            str(r.workers),
            r.store,
            f"{r.rate:.0f}",
            f"{r.per_call_us(r.broker_cpu_s):.0f}",
            f"{r.per_call_us(r.redis_cpu_s):.0f}" if r.store == "redis" else "-",
            f"{r.per_call_us(r.upstream_cpu_s):.0f}",
            f"{r.per_call_us(r.loader_cpu_s):.0f}",
            f"{r.machine_busy:.0%}",
            str(r.refused),
        )
        for r in results
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    for row in rows:
        print("  ".join(cell.rjust(width) for cell, width in zip(row, widths, strict=True)))
    base = results[0]
    redis1, redis2 = results[1], results[2]
    print(
        f"Redis store vs in-process store (1 worker): {redis1.per_call_us(redis1.broker_cpu_s) - base.per_call_us(base.broker_cpu_s):+.0f} µs "
        f"broker CPU per call; 2 workers vs 1 (Redis): x{redis2.rate / redis1.rate:.2f} calls/s"
    )


if __name__ == "__main__":
    main()
