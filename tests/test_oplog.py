"""Operational logs: one JSON object per line on stderr, with a level, an event code and fields;
and the broker's own operational events (reload, upstream pin mismatch) as they happen."""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
from pathlib import Path

import pytest

from stack import UPSTREAM, Stack
from ztb.client import EgressFailed
from ztb.config import ConfigError, load_broker_config
from ztb.deploy import init_deployment, sample_order, sign_registry_with_dev_keys

PROGRAM = """
import logging
from ztb.oplog import configure, event
configure("info")
log = logging.getLogger("ztb.test")
event(log, logging.DEBUG, "hidden")
event(log, logging.INFO, "hello", count=3, path="a\\nb")
try:
    1 / 0
except ZeroDivisionError:
    log.exception("failed")
print("stdout is not the log")
"""


def test_each_event_is_one_json_line_on_stderr_with_its_level() -> None:
    done = subprocess.run(
        [sys.executable, "-c", PROGRAM], capture_output=True, text=True, timeout=30, check=True
    )
    assert done.stdout == "stdout is not the log\n"
    lines = [json.loads(line) for line in done.stderr.splitlines()]
    assert len(lines) == 2  # debug is below the configured level; a traceback stays on its line
    hello, failed = lines
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", hello["ts"])
    assert {k: v for k, v in hello.items() if k != "ts"} == {
        "level": "info",
        "logger": "ztb.test",
        "event": "hello",
        "count": 3,
        "path": "a\nb",
    }
    assert failed["level"] == "error" and "ZeroDivisionError" in failed["exception"]


@pytest.mark.parametrize(
    ("old", "new", "field"),
    [
        ("log_level: info", "log_level: verbose", "log_level"),
        ("drain_timeout_s: 10", "drain_timeout_s: 0", "drain_timeout_s"),
        ("drain_timeout_s: 10", "drain_timeout_s: 301", "drain_timeout_s"),
    ],
)
def test_operational_settings_are_bounded(tmp_path: Path, old: str, new: str, field: str) -> None:
    init_deployment(tmp_path / "dep", broker_port=0, admin_port=0)
    path = tmp_path / "dep" / "broker.yaml"
    assert load_broker_config(tmp_path / "dep").drain_timeout_s == 10
    path.write_text(path.read_text().replace(old, new))
    with pytest.raises(ConfigError, match=rf"broker.yaml: {field}: "):
        load_broker_config(tmp_path / "dep")


def test_a_reload_that_changes_an_upstream_pin_is_never_served_by_an_old_connection(
    fresh_stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="ztb")
    with fresh_stack.caller() as client:
        assert (
            client.post(UPSTREAM, "/v1/orders/create", scope="orders:create", json=sample_order()).status
            == 201
        )
        # The pooled upstream connection was checked against the old pin; the new registry pins
        # another key, so the next call needs a new connection, and that one fails the pin.
        path = fresh_stack.root / "registry.yaml"
        text = path.read_text()
        pin = re.search(r'    spki: \["(sha256:[0-9a-f]{64})"\]', text)
        assert pin is not None
        path.write_text(text.replace(pin.group(1), "sha256:" + "ab" * 32))
        sign_registry_with_dev_keys(fresh_stack.root)
        assert fresh_stack.broker is not None
        result = fresh_stack.loop.run(fresh_stack.broker.reload())
        assert result.applied
        before = len(fresh_stack.upstream.received)
        with pytest.raises(EgressFailed) as failed:
            client.post(UPSTREAM, "/v1/orders/create", scope="orders:create", json=sample_order())
    assert (failed.value.status, failed.value.reason) == (502, "upstream_pin_mismatch")
    assert len(fresh_stack.upstream.received) == before
    events = {r.getMessage(): r for r in caplog.records if r.name.startswith("ztb")}
    assert events["registry_reloaded"].levelno == logging.INFO
    mismatch = events["upstream_failed"]
    assert mismatch.levelno == logging.ERROR
    assert mismatch.ztb_fields["reason"] == "upstream_pin_mismatch"  # type: ignore[attr-defined]
    assert mismatch.ztb_fields["upstream"] == UPSTREAM  # type: ignore[attr-defined]
