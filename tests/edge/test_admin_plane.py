"""The admin plane of a live broker: /healthz, /readyz, /registry and /metrics, whose counters must
match the calls made; readiness follows the audit log's writability on a real, filled tmpfs."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from served import ztb
from stack import UPSTREAM, Stack
from ztb.client import EgressFailed
from ztb.deploy import sample_order
from ztb.sample.local import SAMPLE_UPSTREAM

CREATE = "/v1/orders/create"
ORDER = json.dumps(sample_order()).encode()


def admin(stack: Stack, path: str, method: str = "GET") -> tuple[int, bytes]:
    assert stack.broker is not None
    request = urllib.request.Request(f"http://127.0.0.1:{stack.broker.admin_port}{path}", method=method)
    try:
        with urllib.request.urlopen(request, timeout=5) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def samples(stack: Stack) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    status, body = admin(stack, "/metrics")
    assert status == 200
    found: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def value(found: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return found.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_counters_match_the_calls_made(fresh_stack: Stack) -> None:
    checkout, reports = fresh_stack.caller("svc.checkout"), fresh_stack.caller("svc.reports")
    tokens = [checkout.mint(UPSTREAM, "orders:create") for _ in range(3)]
    for token in tokens:
        assert checkout.call("POST", UPSTREAM, CREATE, token=token, body=ORDER).status == 201
    assert checkout.call("POST", UPSTREAM, CREATE, token=tokens[0], body=ORDER).status == 403
    assert (
        checkout.request("POST", f"/{UPSTREAM}{CREATE}", ORDER, {"Content-Type": "application/json"}).status
        == 401
    )
    no_route = checkout.call("GET", UPSTREAM, "/v1/nothing", token=checkout.mint(UPSTREAM, "orders:read"))
    assert no_route.status == 404
    bad = checkout.call("POST", UPSTREAM, CREATE, token=checkout.mint(UPSTREAM, "orders:create"), body=b"{}")
    assert bad.status == 400
    assert (
        reports.request(
            "POST",
            "/.ztb/token",
            json.dumps({"upstream": UPSTREAM, "scope": "orders:create"}).encode(),
            {"Content-Type": "application/json"},
        ).status
        == 403
    )
    checkout.close()
    reports.close()
    assert fresh_stack.broker is not None
    writer = fresh_stack.broker.writer

    deadline = time.monotonic() + 5
    while True:  # the last entries reach the disk with the next group commit
        found = samples(fresh_stack)
        if value(found, "ztb_audit_batch_entries_sum") == writer.next_seq or time.monotonic() > deadline:
            break
        time.sleep(0.02)

    calls = {key[1]: v for key, v in found.items() if key[0] == "ztb_calls_total"}
    assert calls == {
        (("decision", "ALLOW"), ("gate", ""), ("reason", ""), ("upstream", UPSTREAM)): 3,
        (("decision", "DENY"), ("gate", "scope"), ("reason", "token_replayed"), ("upstream", UPSTREAM)): 1,
        (("decision", "DENY"), ("gate", "scope"), ("reason", "missing_token"), ("upstream", UPSTREAM)): 1,
        (("decision", "DENY"), ("gate", "allowlist"), ("reason", "no_route"), ("upstream", "")): 1,
        (("decision", "DENY"), ("gate", "shape"), ("reason", "schema_violation"), ("upstream", UPSTREAM)): 1,
    }
    assert value(found, "ztb_tokens_minted_total", how="mint") == 5
    assert value(found, "ztb_tokens_minted_total", how="rotation") == 3
    assert value(found, "ztb_tokens_consumed_total") == 5  # 3 allowed, no_route, schema (not the replay)
    assert value(found, "ztb_token_mints_refused_total", reason="not_granted") == 1
    assert value(found, "ztb_gates_seconds_count") == 7
    assert value(found, "ztb_audit_durability_wait_seconds_count", entry="call") == 3
    assert value(found, "ztb_audit_durability_wait_seconds_count", entry="result") == 3
    assert value(found, "ztb_upstream_seconds_count", upstream=UPSTREAM) == 3
    assert value(found, "ztb_calls_in_flight") == 0
    assert (
        value(found, "ztb_audit_batch_entries_sum") == writer.next_seq == value(found, "ztb_audit_next_seq")
    )
    batches = value(found, "ztb_audit_batch_entries_count")
    assert 1 <= batches <= writer.next_seq
    assert value(found, "ztb_audit_fsync_seconds_count") == batches
    sha = fresh_stack.broker.broker.registry.sha256
    assert value(found, "ztb_registry_info", sha256=sha) == 1
    assert value(found, "ztb_audit_writable") == 1
    assert value(found, "ztb_token_store_errors_total", operation="take") == 0
    assert len(fresh_stack.upstream.received) == 3


def test_health_readiness_and_registry_status(stack: Stack) -> None:
    assert admin(stack, "/healthz") == (200, b'{"status": "ok"}')
    status, body = admin(stack, "/readyz")
    assert status == 200
    assert json.loads(body) == {
        "ready": True,
        "checks": {
            "audit_writable": True,
            "registry_loaded": True,
            "token_store": True,
            "accepting": True,
            "anchored": True,
        },
    }
    found = samples(stack)
    assert all(
        value(found, "ztb_ready", check=c) == 1 for c in ("audit_writable", "token_store", "accepting")
    )
    status, body = admin(stack, "/registry")
    assert stack.broker is not None
    assert json.loads(body) == {
        "sha256": stack.broker.broker.registry.sha256,
        "reloads": 0,
        "last_reload": None,
    }


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", f"/{UPSTREAM}/v1/orders"), ("POST", "/.ztb/token"), ("POST", "/registry"), ("GET", "/")],
)
def test_admin_plane_carries_no_data_plane_route(stack: Stack, method: str, path: str) -> None:
    before = len(stack.upstream.received)
    status, _ = admin(stack, path, method)
    assert status in (404, 405)
    assert len(stack.upstream.received) == before


@contextlib.contextmanager
def small_tmpfs(mountpoint: Path, size: str) -> Iterator[Path]:
    if os.geteuid() != 0:
        reason = "needs root to mount a small tmpfs for the audit folder (to fill it for real)"
        if os.environ.get("ZTB_REQUIRE_FAULTS") == "1":
            pytest.fail(f"ZTB_REQUIRE_FAULTS=1 but this {reason}")
        pytest.skip(reason)
    mountpoint.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mountpoint)], check=True)
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], check=False)


def _wait_ready(stack: Stack, ready: bool, timeout: float = 10) -> dict[str, bool]:
    deadline = time.monotonic() + timeout
    while True:
        status, body = admin(stack, "/readyz")
        checks: dict[str, bool] = json.loads(body)["checks"]
        if (status == 200) is ready or time.monotonic() > deadline:
            assert (status == 200) is ready, checks
            return checks
        time.sleep(0.05)


def test_readiness_follows_an_audit_disk_that_fills_and_recovers(tmp_path: Path) -> None:
    with small_tmpfs(tmp_path / "auditfs", "2m") as auditfs:
        stack = Stack(tmp_path / "dep", start=False)
        try:
            text = (stack.root / "broker.yaml").read_text()
            (stack.root / "broker.yaml").write_text(text.replace("  dir: audit\n", f"  dir: {auditfs}\n"))
            stack.loop.run(stack.upstream.start())
            stack.start_broker()
            caller = stack.caller()
            assert caller.post(SAMPLE_UPSTREAM, CREATE, scope="orders:create", body=ORDER).status == 201
            _wait_ready(stack, True)

            filler = auditfs / "filler"
            with filler.open("wb", buffering=0) as handle, contextlib.suppress(OSError):
                while True:  # until ENOSPC: the disk is full for real
                    handle.write(b"\0" * 65536)
            before = len(stack.upstream.received)
            with pytest.raises(EgressFailed) as refused:  # its entry cannot be made durable: 503
                caller.post(SAMPLE_UPSTREAM, CREATE, scope="orders:create", body=ORDER)
            assert (refused.value.status, refused.value.reason) == (503, "audit_unavailable")
            checks = _wait_ready(stack, False)
            assert checks["audit_writable"] is False and checks["token_store"] is True
            assert len(stack.upstream.received) == before  # nothing was forwarded

            filler.unlink()
            _wait_ready(stack, True)
            assert caller.post(SAMPLE_UPSTREAM, CREATE, scope="orders:create", body=ORDER).status == 201
            caller.close()
            stack.stop_broker()
            done = ztb("audit", "verify", str(stack.root), "--json")
            assert done.returncode == 0, done.stdout
            log = json.loads(done.stdout)["logs"][0]
            assert log["sealed"] and log["unknown_outcome"] == []
        finally:
            stack.close()
