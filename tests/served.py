"""A broker run the way an operator runs it: `python -m ztb serve DIR` as a child process, on free
loopback ports, with the recording sample upstream on a background loop in the test process.

Tests signal it (SIGTERM, SIGHUP, `ztb reload`), read its admin plane over HTTP, read its JSON
operational lines from stderr and check its audit log with `python -m ztb audit verify`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from ztb.client import Client
from ztb.deploy import init_deployment
from ztb.sample.local import SAMPLE_UPSTREAM, LoopThread, free_port
from ztb.sample.upstream import RequestHook, SampleUpstream

UPSTREAM = SAMPLE_UPSTREAM


def ztb(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ztb", *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def set_broker_yaml(root: Path, old: str, new: str) -> None:
    path = root / "broker.yaml"
    text = path.read_text()
    assert old in text, f"{old!r} not in broker.yaml"
    path.write_text(text.replace(old, new))


class Served:
    def __init__(self, root: Path, *, on_request: RequestHook | None = None) -> None:
        self.root = root
        self.port, self.admin_port, upstream_port = free_port(), free_port(), free_port()
        init_deployment(root, broker_port=self.port, admin_port=self.admin_port, upstream_port=upstream_port)
        self.loop = LoopThread()
        up = root / "upstreams" / UPSTREAM
        self.upstream = SampleUpstream(
            up / "cert.pem", up / "key.pem", root / "ca" / "ca.pem", port=upstream_port, on_request=on_request
        )
        self.loop.run(self.upstream.start())
        self.stderr_path = root.parent / "broker.stderr"
        self.proc: subprocess.Popen[bytes] | None = None

    # -- the process -----------------------------------------------------------------------------

    def start(self) -> None:
        with self.stderr_path.open("ab") as stderr:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "ztb", "serve", str(self.root)],
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"broker exited: {self.stderr_path.read_text()}"
            try:
                if self.admin("/readyz")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise AssertionError("broker did not become ready within 20 s")

    def terminate(self, timeout: float = 20) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout)
        self.proc = None
        return code

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.loop.run(self.upstream.stop())
        self.loop.stop()

    # -- looking at it ---------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def client(self, identity: str = "svc.checkout") -> Client:
        return Client.for_identity(self.root, identity, self.url)

    def admin(self, path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}{path}", timeout=5) as answer:
                return answer.status, answer.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def log_lines(self) -> list[dict[str, Any]]:
        """The broker's operational JSON lines (stderr)."""
        lines = []
        for raw in self.stderr_path.read_text().splitlines():
            lines.append(json.loads(raw))  # every stderr line must be one JSON object
        return lines

    def entries(self) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        for segment in sorted((self.root / "audit" / "broker-a").glob("*.jsonl")):
            found.extend(json.loads(line) for line in segment.read_bytes().splitlines())
        return found

    def verify(self) -> dict[str, Any]:
        """`ztb audit verify DIR --json`, which must exit 0."""
        done = ztb("audit", "verify", str(self.root), "--json")
        assert done.returncode == 0, done.stdout + done.stderr
        report: dict[str, Any] = json.loads(done.stdout)
        return report
