"""ztb against a bare mTLS reverse proxy, measured side by side in the same run.

Sets everything up itself: a deployment from `ztb init`, the sample upstream, the broker
(`ztb serve`) and the reference proxy (bench/reference_proxy.py), each its own process. A load
generator in this process sends the demo's ~400-byte order over keep-alive mTLS connections; for
the broker every call carries a fresh single-use token (the first minted, then each response's
`ZTB-Next-Token`), so every call is fully gated. Runs alternate broker and reference (A B A B …)
at concurrency 1 and 32 after a warm-up, and the table reports medians over the pairs:
requests per second, p50/p99 latency, and server CPU µs per call from the kernel's accounting.
Afterwards the broker's own log must verify and hold one ALLOW entry per successful call.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from ztb.audit.reader import find_logs, read_entries
from ztb.deploy import init_deployment, sample_order
from ztb.sample.local import free_port

TARGET = "/orders.api.internal/v1/orders/create"
TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class Run:
    system: str
    concurrency: int
    calls: int
    errors: int
    seconds: float
    rps: float
    p50_ms: float
    p99_ms: float
    cpu_us_per_call: float


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


def client_context(root: Path, identity: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_verify_locations(root / "ca" / "ca.pem")
    ctx.load_cert_chain(root / "callers" / identity / "cert.pem", root / "callers" / identity / "key.pem")
    return ctx


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            name, value = line.split(":", 1)
            headers[name.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return status, headers, body


def request_bytes(target: str, body: bytes, token: str | None) -> bytes:
    head = [
        f"POST {target} HTTP/1.1",
        "Host: localhost",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
    ]
    if token is not None:
        head.append(f"Authorization: Bearer {token}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


async def mint(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> str:
    body = b'{"upstream":"orders.api.internal","scope":"orders:create"}'
    writer.write(request_bytes("/.ztb/token", body, None))
    status, _, answer = await read_response(reader)
    if status != 200:
        raise RuntimeError(f"mint refused: {status} {answer!r}")
    return str(json.loads(answer)["access_token"])


async def connection(
    port: int, ctx: ssl.SSLContext, gated: bool, deadline: float, latencies: list[float]
) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname="localhost")
    body = json.dumps(sample_order()).encode()
    errors = 0
    token = await mint(reader, writer) if gated else None
    try:
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            writer.write(request_bytes(TARGET, body, token))
            status, headers, _ = await read_response(reader)
            latencies.append(time.perf_counter() - started)
            if status != 201:
                errors += 1
            if gated:
                token = headers.get("ztb-next-token") or await mint(reader, writer)
    finally:
        writer.close()
    return errors


async def load(
    port: int, ctx: ssl.SSLContext, gated: bool, concurrency: int, seconds: float
) -> tuple[list[float], int]:
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds
    errors = await asyncio.gather(
        *(connection(port, ctx, gated, deadline, latencies) for _ in range(concurrency))
    )
    return latencies, sum(errors)


def measure(
    system: str, pid: int, port: int, ctx: ssl.SSLContext, gated: bool, concurrency: int, seconds: float
) -> Run:
    cpu_before = cpu_seconds(pid)
    started = time.perf_counter()
    latencies, errors = asyncio.run(load(port, ctx, gated, concurrency, seconds))
    elapsed = time.perf_counter() - started
    cpu = cpu_seconds(pid) - cpu_before
    latencies.sort()
    calls = len(latencies)
    return Run(
        system,
        concurrency,
        calls,
        errors,
        round(elapsed, 3),
        round(calls / elapsed, 1),
        round(latencies[calls // 2] * 1000, 3),
        round(latencies[min(calls - 1, int(calls * 0.99))] * 1000, 3),
        round(cpu / max(calls, 1) * 1e6, 1),
    )


def spawn(args: list[str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def wait_listening(port: int, proc: subprocess.Popen[bytes], timeout: float = 20) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited early with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {port}")


def median_row(runs: list[Run]) -> dict[str, float]:
    return {
        key: statistics.median(getattr(r, key) for r in runs)
        for key in ("rps", "p50_ms", "p99_ms", "cpu_us_per_call")
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="length of each measured run")
    parser.add_argument("--pairs", type=int, default=5, help="broker/reference pairs per concurrency (>= 3)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--out", type=Path, default=Path("bench/results/proxy.json"))
    args = parser.parse_args(argv)

    scratch = Path(tempfile.mkdtemp(prefix="ztb-bench-"))
    root = scratch / "deployment"
    broker_port, ref_port, upstream_port, nginx_port = free_port(), free_port(), free_port(), free_port()
    init_deployment(root, broker_port=broker_port, admin_port=free_port(), upstream_port=upstream_port)
    python = sys.executable
    procs = {
        "upstream": spawn([python, "-m", "ztb.sample.upstream", str(root)]),
        "broker": spawn([python, "-m", "ztb", "serve", str(root)]),
        "reference": spawn([python, "-m", "bench.reference_proxy", str(root), str(ref_port)]),
    }
    nginx = shutil.which("nginx")
    if nginx is not None:  # for context only: the targets compare the broker with the reference
        procs["nginx"] = spawn([python, "-m", "bench.nginx_proxy", str(root), str(nginx_port)])
    try:
        wait_listening(upstream_port, procs["upstream"])
        wait_listening(broker_port, procs["broker"])
        wait_listening(ref_port, procs["reference"])
        ctx = client_context(root, "svc.checkout")
        systems = {
            "broker": (procs["broker"].pid, broker_port, True),
            "reference": (procs["reference"].pid, ref_port, False),
        }
        if "nginx" in procs:
            wait_listening(nginx_port, procs["nginx"])
            systems["nginx"] = (procs["nginx"].pid, nginx_port, False)
        warm_ups = [  # pools, caches; counted against the log below like every other call
            measure(name, pid, port, ctx, gated, 4, 1.0) for name, (pid, port, gated) in systems.items()
        ]
        runs: list[Run] = []
        for concurrency in args.concurrency:
            for _ in range(max(3, args.pairs)):
                for name, (pid, port, gated) in systems.items():
                    run = measure(name, pid, port, ctx, gated, concurrency, args.seconds)
                    runs.append(run)
                    print(
                        f"  {name:9} c={concurrency:<3} {run.rps:8.1f} req/s  p50 {run.p50_ms:7.3f} ms  "
                        f"p99 {run.p99_ms:7.3f} ms  cpu {run.cpu_us_per_call:7.1f} us/call  errors {run.errors}",
                        flush=True,
                    )
        procs["broker"].terminate()
        procs["broker"].wait(15)
        # The log must hold one `call` entry per request sent, and an ALLOW for each one answered 201.
        broker_runs = [r for r in [*warm_ups, *runs] if r.system == "broker"]
        sent = sum(r.calls for r in broker_runs)
        answered = sum(r.calls - r.errors for r in broker_runs)
        entries = [e for segs in find_logs(root).values() for e in read_entries(segs)]
        calls = [e for e in entries if e.get("kind") == "call"]
        allowed = sum(1 for e in calls if e.get("decision") == "ALLOW")
        verify = subprocess.run(
            [python, "-m", "ztb", "audit", "verify", str(root)], check=False, capture_output=True, text=True
        )
        summary = report(runs, args.concurrency, list(systems))
        result = {
            "runs": [asdict(r) for r in runs],
            "summary": summary,
            "log": {
                "verify_exit": verify.returncode,
                "call_entries": len(calls),
                "requests_sent": sent,
                "allow_entries": allowed,
                "requests_answered_201": answered,
            },
            "nginx": "not installed" if nginx is None else f"measured ({nginx})",
            "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2))
        print(
            f"\nbroker log: verify exit {verify.returncode}; {len(calls)} call entries for {sent} requests sent "
            f"(warm-up included), {allowed} ALLOW for {answered} answered 201"
        )
        print(f"nginx: {result['nginx']}")
        print(f"JSON written to {args.out}")
        return 0 if verify.returncode == 0 and len(calls) == sent and allowed == answered else 1
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in procs.values():
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(scratch, ignore_errors=True)


def report(runs: list[Run], concurrencies: list[int], systems: list[str]) -> dict[str, dict[str, float]]:
    print("\n| concurrency | system | req/s | p50 ms | p99 ms | CPU us/call |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    summary: dict[str, dict[str, float]] = {}
    for concurrency in concurrencies:
        rows = {
            name: median_row([r for r in runs if r.system == name and r.concurrency == concurrency])
            for name in systems
        }
        for name, row in rows.items():
            print(
                f"| {concurrency} | {name} | {row['rps']:.0f} | {row['p50_ms']:.3f} | {row['p99_ms']:.3f} | "
                f"{row['cpu_us_per_call']:.0f} |"
            )
        ratio = {
            key: rows["broker"][key] / rows["reference"][key]
            for key in rows["broker"]
            if rows["reference"][key]
        }
        print(
            f"| {concurrency} | broker/reference | {ratio['rps']:.2f}x | {ratio['p50_ms']:.2f}x | "
            f"{ratio['p99_ms']:.2f}x | {ratio['cpu_us_per_call']:.2f}x |"
        )
        # Each broker run next to the reference run that followed it: the machine's drift over a
        # whole bench cancels out within a round, so this median is the steadier figure.
        rounds = zip(
            [r for r in runs if r.system == "broker" and r.concurrency == concurrency],
            [r for r in runs if r.system == "reference" and r.concurrency == concurrency],
            strict=True,
        )
        per_round = statistics.median(b.cpu_us_per_call / r.cpu_us_per_call for b, r in rounds)
        summary[f"c{concurrency}"] = {
            **{f"{name}_{k}": v for name, row in rows.items() for k, v in row.items()},
            **{f"ratio_{k}": round(v, 3) for k, v in ratio.items()},
            "ratio_cpu_per_round_median": round(per_round, 3),
            "added_p50_ms": round(rows["broker"]["p50_ms"] - rows["reference"]["p50_ms"], 3),
        }
    print("\nTargets (issue 5), medians over the pairs:")
    for concurrency in concurrencies:
        row = summary[f"c{concurrency}"]
        cpu = row["ratio_cpu_us_per_call"]
        print(
            f"  c={concurrency}: CPU per call {cpu:.2f}x the reference (median of the ratios of each "
            f"round: {row['ratio_cpu_per_round_median']:.2f}x; target <= 1.5x): {_verdict(cpu <= 1.5)}"
        )
    if 1 in concurrencies:
        added = summary["c1"]["added_p50_ms"]
        print(f"  c=1: added p50 {added:+.3f} ms (target <= +0.5 ms): {_verdict(added <= 0.5)}")
    return summary


def _verdict(met: bool) -> str:
    return "met" if met else "MISSED"


if __name__ == "__main__":
    sys.exit(main())
