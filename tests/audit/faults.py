"""Real faults for the audit tests: a small tmpfs of the test's own, a deployment whose audit
folder lives there, allowed calls with unique bodies, and the checks every fault test ends with
(the chain verifies; every request the upstream received has its `call` entry with the hash of
the bytes it received).

Mounting needs root (CI runs as root). Elsewhere the tests skip with the reason, unless
ZTB_REQUIRE_FAULTS=1 asks for a failure instead (set in CI so a fault test can never silently
stop running there).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from ztb.audit.keys import kid_of, load_public_key
from ztb.audit.reader import find_logs
from ztb.audit.verify import VerifyReport, verify_logs
from ztb.audit.writer import AuditWriter
from ztb.client import Caller, Response
from ztb.deploy import sample_order
from ztb.sample.local import SAMPLE_UPSTREAM, LocalDeployment
from ztb.sample.upstream import ReceivedRequest

CREATE = "/v1/orders/create"


def unavailable(reason: str) -> None:
    """Skip (or, under ZTB_REQUIRE_FAULTS=1, fail) a test the machine cannot run."""
    if os.environ.get("ZTB_REQUIRE_FAULTS") == "1":
        pytest.fail(f"ZTB_REQUIRE_FAULTS=1 but {reason}")
    pytest.skip(reason)


@contextlib.contextmanager
def tmpfs(where: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size` mounted at `where` for the duration."""
    where.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        unavailable("mounting a tmpfs needs root (CI runs the fault tests as root)")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(where)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        unavailable(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True, check=False)


def fill(folder: Path) -> Path:
    """Fill the filesystem of `folder` to the last byte; returns the filler file."""
    filler = folder / "filler"
    with filler.open("wb", buffering=0) as handle:
        for chunk in (1 << 20, 1 << 12, 1):
            while True:
                try:
                    handle.write(b"\0" * chunk)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    break
    return filler


class FaultStack(LocalDeployment):
    """A deployment whose audit folder is `audit_dir` (e.g. on a tmpfs of the test's own)."""

    def __init__(self, root: Path, audit_dir: Path) -> None:
        super().__init__(root, start=False)
        config = root / "broker.yaml"
        settings = yaml.safe_load(config.read_text())
        settings["audit"]["dir"] = str(audit_dir)
        config.write_text(yaml.safe_dump(settings))
        self.audit_dir = audit_dir
        self.loop.run(self.upstream.start())
        self.start_broker()
        self._numbers = iter(range(1_000_000))

    @property
    def log_dir(self) -> Path:
        return self.audit_dir / "broker-a"

    def ready(self) -> tuple[int, dict[str, Any]]:
        assert self.broker is not None
        url = f"http://127.0.0.1:{self.broker.admin_port}/readyz"
        try:
            with urllib.request.urlopen(url, timeout=5) as answer:
                return answer.status, json.loads(answer.read())
        except urllib.error.HTTPError as refused:
            return refused.code, json.loads(refused.read())

    def wait_ready(self, ready: bool, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while (self.ready()[0] == 200) != ready:
            assert time.monotonic() < deadline, f"broker readiness did not become {ready}: {self.ready()}"
            time.sleep(0.02)

    def allowed_call(self, caller: Caller) -> Response:
        """Mint and make one orders.create call with a body no other call has."""
        token = caller.mint(SAMPLE_UPSTREAM, "orders:create")
        order = {**sample_order(), "note": f"order {next(self._numbers)}"}
        return caller.call("POST", SAMPLE_UPSTREAM, CREATE, token=token, body=json.dumps(order).encode())

    def entries(self) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        for segment in sorted(self.log_dir.glob("*.jsonl")):
            found.extend(json.loads(line) for line in segment.read_bytes().splitlines())
        return found

    def wait_entry(self, match: Callable[[dict[str, Any]], bool], timeout: float = 10.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            found = [entry for entry in self.entries() if match(entry)]
            if found:
                assert len(found) == 1, found
                return found[0]
            assert time.monotonic() < deadline, "entry never became durable"
            time.sleep(0.02)


def refused_unavailable(response: Response) -> str:
    """The call id of a 503 egress/audit_unavailable refusal (asserting that is what it is)."""
    assert response.status == 503, (response.status, response.body)
    error = response.error
    assert error is not None and (error["gate"], error["reason"]) == ("egress", "audit_unavailable")
    return error["call_id"]


def verify_deployment(root: Path) -> VerifyReport:
    """What `ztb audit verify` says about the deployment, with the auditor's key given."""
    public = load_public_key(str(root / "keys" / "audit.pub"))
    return verify_logs(find_logs(root), {kid_of(public): public})  # broker.yaml names the audit folder


def assert_received_were_logged(received: list[ReceivedRequest], entries: list[dict[str, Any]]) -> None:
    """Every request the upstream received has an ALLOW `call` entry for the exact bytes."""
    calls = {entry["call_id"]: entry for entry in entries if entry["kind"] == "call"}
    for request in received:
        call_id = request.header("ztb-call-id")
        assert call_id in calls, f"upstream received call {call_id} without a call entry on disk"
        entry = calls[call_id]
        assert entry["decision"] == "ALLOW"
        assert entry["shape"]["sha256"] == "sha256:" + hashlib.sha256(request.body).hexdigest()
        assert entry["shape"]["bytes"] == len(request.body)


class StallingWriter(AuditWriter):
    """The test build of the writer: `stall()` makes every fsync block until `release()`, the
    fault-injection point for 'an fsync that does not return' where no slow device exists. It
    exists only here, never in the broker: tests swap it in for ztb.runtime.AuditWriter."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._flowing = threading.Event()
        self._flowing.set()
        self.stuck = threading.Event()  # set while an fsync is being held

    def stall(self) -> None:
        self._flowing.clear()

    def release(self) -> None:
        self._flowing.set()

    def _sync(self, fd: int) -> None:
        if not self._flowing.is_set():
            self.stuck.set()
            self._flowing.wait(60)
            self.stuck.clear()
        super()._sync(fd)
