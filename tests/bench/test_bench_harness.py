"""`make bench` and `make bench-core` keep working: each harness runs end to end, briefly, on this
machine, and its own correctness checks hold. The figures themselves are not judged here (speed
is measured by the benchmarks, never asserted by a test)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=100, check=False
    )


def test_the_proxy_bench_runs_and_its_log_holds_one_entry_per_request(tmp_path: Path) -> None:
    out = tmp_path / "proxy.json"
    done = run("bench", "--seconds", "0.2", "--pairs", "3", "--concurrency", "1", "4", "--out", str(out))
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    result = json.loads(out.read_text())
    log = result["log"]
    assert log["verify_exit"] == 0
    assert log["call_entries"] == log["requests_sent"] > 0
    assert log["allow_entries"] == log["requests_answered_201"] == log["requests_sent"]
    assert {run["system"] for run in result["runs"]} >= {"broker", "reference"}
    for concurrency in ("c1", "c4"):
        summary = result["summary"][concurrency]
        assert summary["broker_cpu_us_per_call"] > 0 and summary["reference_cpu_us_per_call"] > 0
        assert summary["ratio_cpu_per_round_median"] > 0
    assert "Targets (issue 5)" in done.stdout and "| 4 | broker/reference |" in done.stdout


def test_the_core_bench_runs() -> None:
    done = run("bench.core_bench", "--calls", "256", "--concurrency", "8")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "us CPU/call" in done.stdout and "2 x Ed25519 signature" in done.stdout
