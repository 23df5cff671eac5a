"""Real `ztb` processes for the tests that need them (the witness, the broker end to end):
started with the installed interpreter, waited for by their startup line (bounded), stopped with
SIGTERM or killed with SIGKILL, by their own pid only."""

from __future__ import annotations

import http.client
import os
import signal
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path


class ZtbProcess:
    def __init__(self, *args: str | Path, ready: str, timeout_s: float = 20.0) -> None:
        self.args = [sys.executable, "-m", "ztb", *map(str, args)]
        self.proc = subprocess.Popen(
            self.args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
        )
        self.output: list[str] = []
        self._ready = threading.Event()
        self._marker = ready
        threading.Thread(target=self._read, daemon=True).start()
        if not self._ready.wait(timeout_s):
            self.kill()
            raise AssertionError(f"{self.args} did not print {ready!r}: {self.output} {self.stderr()}")

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.output.append(line)
            if self._marker in line:
                self._ready.set()

    def stderr(self) -> str:
        if self.proc.poll() is None or self.proc.stderr is None:
            return ""
        return self.proc.stderr.read()

    def stop(self, timeout_s: float = 15.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout_s)

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)


def wait_until(predicate: object, timeout_s: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


class MtlsClient:
    """A client certificate talking HTTPS to one server (the witness)."""

    def __init__(self, port: int, ca: Path, cert: Path | None, key: Path | None) -> None:
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        self.ctx.load_verify_locations(cafile=ca)
        if cert is not None and key is not None:
            self.ctx.load_cert_chain(cert, key)
        self.port = port

    def post(self, path: str, body: bytes, timeout_s: float = 10.0) -> tuple[int, str, str]:
        conn = http.client.HTTPSConnection("127.0.0.1", self.port, context=self.ctx, timeout=timeout_s)
        try:
            conn.request("POST", path, body, {"Content-Type": "text/plain"})
            response = conn.getresponse()
            return response.status, response.getheader("content-type") or "", response.read().decode()
        finally:
            conn.close()
