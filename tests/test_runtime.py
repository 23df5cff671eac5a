"""`ztb serve` operated like production: SIGTERM drains under load, `ztb reload` under load, a
refused reload, one broker per deployment. Real processes, real sockets, the real audit log."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from served import UPSTREAM, Served, ztb
from ztb.audit.keys import SigningKey
from ztb.client import BrokerError, BrokerUnavailable, ScopeRefused
from ztb.config.approvals import sign
from ztb.deploy import APPROVERS_DIR, DEV_APPROVERS, sample_order, sign_registry_with_dev_keys
from ztb.sample.upstream import ReceivedRequest

CREATE = "/v1/orders/create"


async def _slow(_: ReceivedRequest) -> None:
    await asyncio.sleep(0.15)  # so that calls are surely in flight when a signal arrives


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    broker = Served(tmp_path / "dep", on_request=_slow)
    try:
        yield broker
    finally:
        broker.close()


@dataclass
class Outcome:
    started: float
    ended: float
    status: int | None = None
    call_id: str | None = None
    error: BaseException | None = None


@dataclass
class Load:
    """Callers in threads, each with its own ztb.client.Client, calling until told to stop."""

    served: Served
    identity: str
    send: str  # "create" or "list"
    outcomes: list[Outcome] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    threads: list[threading.Thread] = field(default_factory=list)

    def start(self, callers: int) -> None:
        for _ in range(callers):
            thread = threading.Thread(target=self._run, daemon=True)
            thread.start()
            self.threads.append(thread)

    def _run(self) -> None:
        with self.served.client(self.identity) as client:
            while not self.stop.is_set():
                outcome = Outcome(time.monotonic(), 0.0)
                try:
                    if self.send == "create":
                        answer = client.post(UPSTREAM, CREATE, scope="orders:create", json=sample_order())
                    else:
                        answer = client.get(UPSTREAM, "/v1/orders?limit=2", scope="orders:read")
                    outcome.status, outcome.call_id = answer.status, answer.call_id
                except (BrokerError, OSError) as exc:
                    outcome.error = exc
                    outcome.call_id = getattr(exc, "call_id", None)
                outcome.ended = time.monotonic()
                self.outcomes.append(outcome)
                if isinstance(outcome.error, BrokerUnavailable):
                    return

    def wait_for(self, count: int, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while len(self.outcomes) < count:
            assert time.monotonic() < deadline, f"only {len(self.outcomes)} calls in {timeout} s"
            time.sleep(0.02)

    def join(self, timeout: float = 20, *, stop: bool = True) -> None:
        """Wait for the callers; with stop=False they end by themselves, on BrokerUnavailable."""
        if stop:
            self.stop.set()
        for thread in self.threads:
            thread.join(timeout)
            assert not thread.is_alive(), "a caller thread hung"


def test_sigterm_under_load_finishes_calls_in_flight_and_seals_the_log(served: Served) -> None:
    served.start()
    load = Load(served, "svc.checkout", "create")
    load.start(4)
    load.wait_for(12)
    code = served.terminate()
    load.join(stop=False)

    assert code == 0, served.stderr_path.read_text()
    # Every call either got its answer or was never delivered (refused at connect): none lost.
    answered = [o for o in load.outcomes if o.error is None]
    undelivered = [o for o in load.outcomes if isinstance(o.error, BrokerUnavailable)]
    others = [o.error for o in load.outcomes if o.error is not None and o not in undelivered]
    assert others == []
    assert all(o.status == 201 for o in answered)
    assert len(undelivered) == 4  # each caller ended on a closed broker
    # The upstream saw exactly the calls whose answers came back.
    assert len(served.upstream.received) == len(answered)
    report = served.verify()
    log = report["logs"][0]
    assert log["ok"] and log["sealed"] and log["unknown_outcome"] == []
    entries = served.entries()
    assert entries[-1]["kind"] == "stop"
    allowed = {e["call_id"] for e in entries if e["kind"] == "call" and e["decision"] == "ALLOW"}
    assert allowed == {o.call_id for o in answered}
    events = [line["event"] for line in served.log_lines()]
    assert events[0] == "broker_started"
    assert events[-2:] == ["broker_draining", "broker_stopped"]
    draining = served.log_lines()[-2]
    assert draining["in_flight"] >= 1  # the drain had calls in flight to finish
    stopped = served.log_lines()[-1]
    assert stopped["level"] == "info" and stopped["cancelled_calls"] == 0 and stopped["stop_entry_durable"]


def _revoke_reports_grant(root: Path) -> None:
    path = root / "registry.yaml"
    text = path.read_text()
    line = f"  svc.reports:  {{{UPSTREAM}: [orders:read]}}\n"
    assert line in text
    path.write_text(text.replace(line, ""))
    sign_registry_with_dev_keys(root)


def test_reload_under_load_changes_decisions_for_new_calls_only(served: Served) -> None:
    served.start()
    before = json.loads(served.admin("/registry")[1])
    load = Load(served, "svc.reports", "list")
    load.start(3)
    load.wait_for(15)
    _revoke_reports_grant(served.root)
    sent = time.monotonic()
    done = ztb("reload", str(served.root))
    confirmed = time.monotonic()
    assert done.returncode == 0, done.stderr
    after = json.loads(served.admin("/registry")[1])
    assert after["sha256"] != before["sha256"]
    assert f"sha256 {after['sha256']} in force" in done.stdout
    count = len(load.outcomes)
    load.wait_for(count + 15)
    load.join()

    finished_before = [o for o in load.outcomes if o.ended < sent]
    started_after = [o for o in load.outcomes if o.started > confirmed]
    assert finished_before and started_after
    assert all(o.status == 200 for o in finished_before)
    for o in started_after:
        assert isinstance(o.error, ScopeRefused) and o.error.reason == "not_granted", o
    # No call lost: every call got an answer (allowed, or refused with a body and a call id).
    assert all(o.status == 200 or isinstance(o.error, ScopeRefused) for o in load.outcomes)
    assert len(served.upstream.received) == sum(o.status == 200 for o in load.outcomes)
    assert all(o.call_id for o in load.outcomes)

    entries = served.entries()
    registry = [e for e in entries if e["kind"] == "registry"]
    assert [e["registry_sha256"] for e in registry] == [before["sha256"], after["sha256"]]
    assert registry[1]["previous_sha256"] == before["sha256"]
    # Calls decided under the new registry come after its entry in the chain.
    denied = [e for e in entries if e["kind"] in ("call", "token") and e.get("reason") == "not_granted"]
    assert denied and min(e["seq"] for e in denied) > registry[1]["seq"]
    assert any(line["event"] == "registry_reloaded" for line in served.log_lines())
    assert served.terminate() == 0
    assert served.verify()["logs"][0]["sealed"]


def test_invalid_registry_is_refused_whole_and_the_old_one_keeps_serving(served: Served) -> None:
    served.start()
    before = json.loads(served.admin("/registry")[1])
    path = served.root / "registry.yaml"
    good = path.read_text()
    path.write_text(good.replace("scope: orders:read", "scope: not a scope", 1))
    approve_as_is(served.root)  # approved, so what is refused is the registry itself

    done = ztb("reload", str(served.root))

    assert done.returncode == 1
    assert done.stderr.startswith("ztb: error: registry refused, still serving sha256 " + before["sha256"])
    assert "registry.yaml: routes.1.scope" in done.stderr and len(done.stderr.splitlines()) == 1
    status = json.loads(served.admin("/registry")[1])
    assert status["sha256"] == before["sha256"] and status["last_reload"]["applied"] is False
    with served.client("svc.reports") as client:
        assert client.get(UPSTREAM, "/v1/orders", scope="orders:read").status == 200
    assert [e["kind"] for e in served.entries()].count("registry") == 1
    refused = [line for line in served.log_lines() if line["event"] == "registry_reload_refused"]
    assert len(refused) == 1 and refused[0]["level"] == "error"
    metrics = served.admin("/metrics")[1].decode()
    assert 'ztb_registry_reloads_total{outcome="refused"} 1.0' in metrics
    assert f'ztb_registry_info{{sha256="{before["sha256"]}"}} 1.0' in metrics
    assert served.terminate() == 0


def test_one_broker_per_deployment_and_reload_needs_a_running_broker(served: Served) -> None:
    done = ztb("reload", str(served.root))
    assert done.returncode == 1 and "no broker is serving" in done.stderr
    served.start()
    second = ztb("serve", str(served.root), timeout=20)
    assert second.returncode == 1
    assert "another broker is already serving this deployment" in second.stderr
    assert served.terminate() == 0
    assert not (served.root / "run" / "broker.json").exists()
    done = ztb("reload", str(served.root))
    assert done.returncode == 1 and "no broker is serving" in done.stderr


def approve_as_is(root: Path) -> None:
    """Both development approvers sign registry.yaml's bytes without validating them first."""
    data = (root / "registry.yaml").read_bytes()
    for name in DEV_APPROVERS:
        sign(root, data, SigningKey.load(root / APPROVERS_DIR / f"{name}.key"))
