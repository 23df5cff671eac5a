"""Several broker processes and instances serving one deployment through one Redis token store:
a token is honoured once by whichever process sees it first, an outage of the store is refused
fast (503 scope/token_store_unavailable) and healed without a restart, every worker keeps its
own log, and `ztb audit verify` checks them all."""

from __future__ import annotations

import json
import random
import shutil
import socket
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
import yaml

from redis_server import RedisServer, namespace
from stack import UPSTREAM, Stack
from ztb.client import Caller, Response
from ztb.deploy import sign_registry_with_dev_keys
from ztb.runtime import RunningBroker
from ztb.tokens.format import token_hash, token_id

pytestmark = pytest.mark.redis
SCOPE = "orders:read"
PATH = "/v1/orders"


def configure(root: Path, **settings: str) -> None:
    """Set top-level broker.yaml settings (replacing the line `ztb init` wrote, or adding one)."""
    path = root / "broker.yaml"
    lines = path.read_text().splitlines()
    for name, value in settings.items():
        line = f"{name}: {value}"
        at = [n for n, text in enumerate(lines) if text.startswith(f"{name}:")]
        if at:
            lines[at[0]] = line
        else:
            lines.append(line)
    path.write_text("\n".join(lines) + "\n")


def error_of(response: Response) -> tuple[int, str | None, str | None]:
    error = response.error or {}
    return response.status, error.get("gate"), error.get("reason")


def readiness(admin_port: int) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/readyz", timeout=5) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as refused:
        return refused.code, json.loads(refused.read())


@pytest.fixture
def stack_on(tmp_path: Path) -> Iterator[Stack]:
    """A deployment whose broker the test configures, then starts with `launch`."""
    stack = Stack(tmp_path / "dep", start=False)
    try:
        yield stack
    finally:
        stack.close()


def launch(stack: Stack) -> None:
    stack.loop.run(stack.upstream.start())
    stack.start_broker()


def test_a_store_outage_is_refused_fast_audited_and_healed_without_a_restart(
    stack_on: Stack, own_redis: RedisServer
) -> None:
    stack = stack_on
    configure(stack.root, token_store=own_redis.url, deployment=namespace())
    launch(stack)
    assert stack.broker is not None
    caller = stack.caller()
    used, kept = caller.mint(UPSTREAM, SCOPE), caller.mint(UPSTREAM, SCOPE)
    assert caller.call("GET", UPSTREAM, PATH, token=used).status == 200
    forwarded = len(stack.upstream.received)

    own_redis.stop()
    started = time.monotonic()
    refused = caller.call("GET", UPSTREAM, PATH, token=kept)
    assert time.monotonic() - started < 2.0  # refused fast, never hung
    assert error_of(refused) == (503, "scope", "token_store_unavailable")
    assert refused.error is not None
    entry = stack.entry_of(refused.error["call_id"])
    assert (entry["decision"], entry["gate"], entry["reason"]) == ("DENY", "scope", "token_store_unavailable")
    assert entry["token"]["id"] == token_id(token_hash(kept))
    assert len(stack.upstream.received) == forwarded  # nothing reached the upstream
    with pytest.raises(Exception, match="503 scope/token_store_unavailable"):
        caller.mint(UPSTREAM, SCOPE)
    status, body = readiness(stack.broker.admin_port)
    assert status == 503 and body["checks"]["token_store"] is False

    own_redis.start()  # no persistence: the restarted Redis knows no token
    deadline = time.monotonic() + 10
    while readiness(stack.broker.admin_port)[0] != 200:  # the broker reconnects by itself
        assert time.monotonic() < deadline, "the broker did not find Redis again within 10 s"
        time.sleep(0.05)
    # Neither the token consumed before the restart nor the one that was live is honoured.
    for token in (used, kept):
        assert error_of(caller.call("GET", UPSTREAM, PATH, token=token)) == (401, "scope", "unknown_token")
    fresh = caller.mint(UPSTREAM, SCOPE)
    assert caller.call("GET", UPSTREAM, PATH, token=fresh).status == 200
    assert error_of(caller.call("GET", UPSTREAM, PATH, token=fresh)) == (403, "scope", "token_replayed")
    assert len(stack.upstream.received) == forwarded + 1
    caller.close()


def test_a_stalled_store_is_refused_within_the_deadline(stack_on: Stack, own_redis: RedisServer) -> None:
    stack = stack_on
    configure(stack.root, token_store=own_redis.url, deployment=namespace())
    launch(stack)
    caller = stack.caller()
    warm, stalled = caller.mint(UPSTREAM, SCOPE), caller.mint(UPSTREAM, SCOPE)
    assert caller.call("GET", UPSTREAM, PATH, token=warm).status == 200
    forwarded = len(stack.upstream.received)
    own_redis.pause()
    try:
        started = time.monotonic()
        refused = caller.call("GET", UPSTREAM, PATH, token=stalled)
        assert time.monotonic() - started < 2.0
        assert error_of(refused) == (503, "scope", "token_store_unavailable")
    finally:
        own_redis.resume()
    # The take sent during the stall ran when Redis resumed: the token is spent, never honoured.
    assert error_of(caller.call("GET", UPSTREAM, PATH, token=stalled)) == (403, "scope", "token_replayed")
    assert len(stack.upstream.received) == forwarded
    caller.close()


def test_two_instances_sharing_one_redis_honour_a_token_once_between_them(
    stack_on: Stack, redis_url: str
) -> None:
    stack = stack_on
    configure(stack.root, token_store=redis_url, deployment=namespace())
    other_root = stack.root.parent / "dep-b"
    shutil.copytree(stack.root, other_root)  # the same CA, callers and registry; its own folder
    configure(other_root, broker_id="broker-b")
    launch(stack)
    other = stack.loop.run(RunningBroker.start(other_root))
    try:
        at_a = stack.caller()
        at_b = Caller.for_identity(stack.root, "svc.checkout", f"https://127.0.0.1:{other.port}")
        for minter, first in ((at_a, at_b), (at_b, at_a)):
            token = minter.mint(UPSTREAM, SCOPE)
            forwarded = len(stack.upstream.received)
            assert first.call("GET", UPSTREAM, PATH, token=token).status == 200
            for later in (at_a, at_b, first):
                replay = later.call("GET", UPSTREAM, PATH, token=token)
                assert error_of(replay) == (403, "scope", "token_replayed")
            assert len(stack.upstream.received) == forwarded + 1
        at_a.close()
        at_b.close()
    finally:
        stack.loop.run(other.stop(drain_s=2))
    # Each instance logged its own decisions in its own log.
    a_log = [e for e in stack.entries() if e["kind"] == "call"]
    b_log = [
        json.loads(line)
        for segment in sorted((other_root / "audit" / "broker-b").glob("*.jsonl"))
        for line in segment.read_bytes().splitlines()
    ]
    b_calls = [e for e in b_log if e["kind"] == "call"]
    assert {e["broker"] for e in a_log} == {"broker-a"} and {e["broker"] for e in b_calls} == {"broker-b"}
    assert sorted(e["decision"] for e in a_log) == ["ALLOW", "DENY", "DENY", "DENY"]
    assert sorted(e["decision"] for e in b_calls) == ["ALLOW", "DENY", "DENY", "DENY"]


def test_more_workers_without_redis_are_refused_at_start(tmp_path: Path) -> None:
    stack = Stack(tmp_path / "dep", start=False)
    stack.close()
    configure(stack.root, workers="2")
    done = subprocess.run(
        [sys.executable, "-m", "ztb", "serve", str(stack.root)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert "workers: 2 processes need a shared token store: set token_store: redis://" in done.stderr


class Supervised:
    """`ztb serve` of a deployment with several workers, its output collected as it comes."""

    def __init__(self, root: Path) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "ztb", "serve", str(root)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, text: str, count: int = 1, timeout: float = 30) -> list[str]:
        deadline = time.monotonic() + timeout
        while len(found := [line for line in self.lines if text in line]) < count:
            assert self.process.poll() is None, f"ztb serve ended: {self.lines}"
            assert time.monotonic() < deadline, f"no {count} lines with {text!r} in {timeout} s: {self.lines}"
            time.sleep(0.02)
        return found

    def stop(self) -> int:
        self.process.terminate()
        code = self.process.wait(30)
        self._reader.join(5)
        return code


def test_workers_share_one_port_honour_a_token_once_and_keep_verifiable_logs(
    stack_on: Stack, redis_url: str
) -> None:
    stack = stack_on
    configure(stack.root, token_store=redis_url, deployment=namespace(), workers="2")
    stack.loop.run(stack.upstream.start())
    served = Supervised(stack.root)
    try:
        port = int(served.wait_for("supervisor started 2 workers")[0].rsplit(":", 1)[1])
        served.wait_for(" serving https://", count=2)
        url = f"https://127.0.0.1:{port}"
        callers = [Caller.for_identity(stack.root, "svc.checkout", url) for _ in range(16)]
        for caller in callers:  # each on its own connection; the kernel spreads them over the workers
            caller.mint(UPSTREAM, SCOPE)
        token = callers[0].mint(UPSTREAM, SCOPE)
        barrier = threading.Barrier(len(callers))
        answers: list[tuple[int, str | None, str | None]] = []

        def present(caller: Caller) -> None:
            barrier.wait(10)
            answers.append(error_of(caller.call("GET", UPSTREAM, PATH, token=token)))

        threads = [threading.Thread(target=present, args=(caller,)) for caller in callers]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        for caller in callers:
            caller.close()
    finally:
        code = served.stop()
    assert code == 0, served.lines
    assert sorted(answers) == [(200, None, None)] + [(403, "scope", "token_replayed")] * 15
    assert len(stack.upstream.received) == 1
    # One log per worker; between them, one entry per presentation, and one ALLOW.
    logs = {
        folder.name: [
            json.loads(line) for s in sorted(folder.glob("*.jsonl")) for line in s.read_bytes().splitlines()
        ]
        for folder in (stack.root / "audit").iterdir()
    }
    assert sorted(logs) == ["broker-a-0", "broker-a-1"]
    presented = {
        name: [e for e in entries if e["kind"] == "call" and e["token"]["id"] == token_id(token_hash(token))]
        for name, entries in logs.items()
    }
    assert all(presented.values()), "both workers took part in the race"
    decisions = sorted(e["decision"] for entries in presented.values() for e in entries)
    assert decisions == ["ALLOW"] + ["DENY"] * 15
    verify = subprocess.run(
        [sys.executable, "-m", "ztb", "audit", "verify", str(stack.root)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert "broker-a-0: " in verify.stdout and "broker-a-1: " in verify.stdout
    assert verify.stdout.rstrip().endswith("audit log intact")


def free_port_pair() -> int:
    """A port p with p and p + 1 free, below the kernel's ephemeral range (32768-60999 here), so
    outgoing connections of tests running alongside can never take p + 1 in the meantime."""
    for _ in range(200):
        port = random.randrange(20000, 32000)
        with socket.socket() as first, socket.socket() as second:
            try:
                first.bind(("127.0.0.1", port))
                second.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise AssertionError("no two consecutive free ports below the ephemeral range")


def test_reload_reaches_every_worker_through_the_supervisor(stack_on: Stack, redis_url: str) -> None:
    stack = stack_on
    admin_port = free_port_pair()
    configure(stack.root, token_store=redis_url, deployment=namespace(), workers="2")
    settings = yaml.safe_load((stack.root / "broker.yaml").read_text())
    settings["admin"]["port"] = admin_port  # worker n answers on admin port + n
    (stack.root / "broker.yaml").write_text(yaml.safe_dump(settings))
    stack.loop.run(stack.upstream.start())
    served = Supervised(stack.root)
    try:
        served.wait_for(" serving https://", count=2)
        registry = stack.root / "registry.yaml"
        text = registry.read_text()
        line = f"  svc.reports:  {{{UPSTREAM}: [orders:read]}}\n"
        assert line in text
        registry.write_text(text.replace(line, ""))
        sign_registry_with_dev_keys(stack.root)
        done = subprocess.run(
            [sys.executable, "-m", "ztb", "reload", str(stack.root)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        new_sha = done.stdout.split("sha256 ")[1].split()[0]
        for worker in range(2):  # each worker's admin plane reports the new registry in force
            deadline = time.monotonic() + 10
            while True:
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{admin_port + worker}/registry", timeout=5
                ) as r:
                    if json.loads(r.read())["sha256"] == new_sha:
                        break
                assert time.monotonic() < deadline, f"worker {worker} never took the new registry"
                time.sleep(0.05)
    finally:
        code = served.stop()
    assert code == 0, served.lines
    for worker in ("broker-a-0", "broker-a-1"):
        entries = [
            json.loads(line)
            for segment in sorted((stack.root / "audit" / worker).glob("*.jsonl"))
            for line in segment.read_bytes().splitlines()
        ]
        registries = [e["registry_sha256"] for e in entries if e["kind"] == "registry"]
        assert registries[-1] == new_sha and len(registries) == 2, worker
