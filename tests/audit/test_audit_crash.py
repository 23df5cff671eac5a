"""Crash: the real broker (`python -m ztb serve`) killed with SIGKILL at random moments while
several callers send calls, then restarted on the same log, many times over.

The recording upstream runs in the test process, so it outlives every broker. After each
restart: `ztb audit verify` (the auditor's command, given the public key) exits 0; every
request the upstream ever received has an ALLOW `call` entry whose `shape.sha256` is the hash
of the bytes it received; a torn last line (what a power cut leaves of a write that was never
made durable) became a `recover` entry; calls whose outcome the kill left unknown are listed,
not called tampering. ZTB_CRASH_ROUNDS and ZTB_CRASH_SEED run it longer or replay a run.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from faults import CREATE, assert_received_were_logged

from ztb.client import Caller
from ztb.deploy import init_deployment, sample_order
from ztb.sample.local import SAMPLE_UPSTREAM, LoopThread, free_port
from ztb.sample.upstream import SampleUpstream

ROUNDS = int(os.environ.get("ZTB_CRASH_ROUNDS", "8"))
CALLERS = 4


class Deployment:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.port, self.admin_port, upstream_port = free_port(), free_port(), free_port()
        init_deployment(root, broker_port=self.port, admin_port=self.admin_port, upstream_port=upstream_port)
        self.loop = LoopThread()
        up = root / "upstreams" / SAMPLE_UPSTREAM
        self.upstream = SampleUpstream(
            up / "cert.pem", up / "key.pem", root / "ca" / "ca.pem", port=upstream_port
        )
        self.loop.run(self.upstream.start())
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        output = (self.root / f"broker-{self.starts}.out").open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "ztb", "serve", str(self.root)], stdout=output, stderr=subprocess.STDOUT
        )
        output.close()
        deadline = time.monotonic() + 30
        while not self._ready():
            if self.process.poll() is not None:
                pytest.fail(f"broker exited at start: {self.log()}")
            assert time.monotonic() < deadline, f"broker not ready in 30 s: {self.log()}"
            time.sleep(0.05)

    def log(self) -> str:
        return (self.root / f"broker-{self.starts}.out").read_text(errors="replace")

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}/readyz", timeout=2) as answer:
                return bool(answer.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        assert self.process.wait(20) == 0, self.log()

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self.loop.run(self.upstream.stop())
        self.loop.stop()

    @property
    def log_dir(self) -> Path:
        return self.root / "audit" / "broker-a"

    def entries(self) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        for segment in sorted(self.log_dir.glob("*.jsonl")):
            found.extend(json.loads(line) for line in segment.read_bytes().splitlines())
        return found

    def verify(self) -> dict[str, Any]:
        """`ztb audit verify` as an auditor runs it: the log and the public key, nothing else."""
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "ztb",
                "audit",
                "verify",
                str(self.root / "audit"),
                "--json",
                "--pubkey",
                str(self.root / "keys" / "audit.pub"),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        report: dict[str, Any] = json.loads(done.stdout)
        return report


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[Deployment]:
    running = Deployment(tmp_path / "dep")
    try:
        yield running
    finally:
        running.close()


def keep_calling(
    deployment: Deployment, number: int, stop: threading.Event, counter: list[int], wrong: list[str]
) -> None:
    """One caller: mint and call until told to stop or the broker goes away."""
    caller = Caller.for_identity(deployment.root, "svc.checkout", f"https://127.0.0.1:{deployment.port}")
    sent = 0
    try:
        while not stop.is_set():
            token = caller.mint(SAMPLE_UPSTREAM, "orders:create")
            order = {**sample_order(), "note": f"caller {number} broker {deployment.starts} order {sent}"}
            response = caller.call(
                "POST", SAMPLE_UPSTREAM, CREATE, token=token, body=json.dumps(order).encode()
            )
            if response.status != 201:
                wrong.append(f"{response.status} {response.body!r}")
            sent += 1
    except (OSError, http.client.HTTPException):
        pass  # the broker was killed under this call
    finally:
        caller.close()
        counter.append(sent)


def tear(log_dir: Path, rng: random.Random) -> bytes:
    """Leave what a power cut leaves of a write never made durable: part of a line at the end."""
    segment = sorted(log_dir.glob("*.jsonl"))[-1]
    last = segment.read_bytes().splitlines()[-1]
    torn = last[: rng.randrange(1, len(last))]
    with segment.open("ab") as handle:
        handle.write(torn)
    return torn


def open_calls(entries: list[dict[str, Any]]) -> set[str]:
    allowed = {e["call_id"] for e in entries if e["kind"] == "call" and e["decision"] == "ALLOW"}
    return allowed - {e["call_id"] for e in entries if e["kind"] == "result"}


def test_sigkill_at_random_moments(deployment: Deployment) -> None:
    seed = int(os.environ.get("ZTB_CRASH_SEED", str(random.randrange(1 << 32))))
    rng = random.Random(seed)
    print(f"ZTB_CRASH_SEED={seed}")
    unknown_seen = 0
    torn: bytes | None = None
    deployment.start()
    for round_number in range(ROUNDS):
        stop = threading.Event()
        counts: list[int] = []
        wrong: list[str] = []
        callers = [
            threading.Thread(target=keep_calling, args=(deployment, n, stop, counts, wrong), daemon=True)
            for n in range(CALLERS)
        ]
        for thread in callers:
            thread.start()
        time.sleep(rng.uniform(0.05, 0.8))  # the random moment of the crash (not a synchronisation)
        deployment.kill()
        stop.set()
        for thread in callers:
            thread.join(20)
            assert not thread.is_alive()
        assert len(counts) == CALLERS and wrong == []
        torn = tear(deployment.log_dir, rng) if round_number % 3 == 1 else None

        deployment.start()
        report = deployment.verify()
        (log,) = report["logs"]
        assert log["ok"] and log["first_break"] is None and log["torn_tail"] is None
        entries = deployment.entries()
        assert_received_were_logged(deployment.upstream.received, entries)
        assert sum(1 for e in entries if e["kind"] == "start") == deployment.starts
        restart = max(i for i, e in enumerate(entries) if e["kind"] == "start")
        if torn is not None:
            recover = entries[restart + 1]
            assert recover["kind"] == "recover", recover
            assert recover["torn_bytes"] == len(torn)
            assert recover["torn_sha256"] == "sha256:" + hashlib.sha256(torn).hexdigest()
        listed = {call["call_id"] for call in log["unknown_outcome"]}
        assert listed == open_calls(entries)
        unknown_seen = max(unknown_seen, len(listed))

    assert len(deployment.upstream.received) > 0
    assert unknown_seen > 0, f"no kill ever caught a call in flight (seed {seed})"
    deployment.stop()
    report = deployment.verify()
    (log,) = report["logs"]
    assert log["ok"] and log["sealed"]
    assert_received_were_logged(deployment.upstream.received, deployment.entries())
