"""`ztb audit verify` and `ztb audit show` as a user runs them: a real process, real files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from auditlog_builder import make_lines, write_deployment, write_log

from ztb.audit.keys import SigningKey

KEY = SigningKey.generate()
LINES = make_lines(KEY, calls=2)  # 0 start, 1-4 two calls and results, 5 denied call, 6 stop


def ztb(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ztb", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture
def audit_dir(tmp_path: Path) -> Path:
    write_log(tmp_path / "audit" / "broker-a", LINES, segments=2)
    KEY.save(tmp_path / "audit.key")
    return tmp_path / "audit"


def assert_usage_error(result: subprocess.CompletedProcess[str], message: str) -> None:
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.startswith("ztb: error: ") and result.stderr.count("\n") == 1, result.stderr
    assert message in result.stderr


def test_verify_intact(audit_dir: Path) -> None:
    result = ztb("audit", "verify", audit_dir, "--pubkey", audit_dir.parent / "audit.pub")
    assert result.returncode == 0, result.stderr
    assert "broker-a: 7 entries in 2 segments: ok" in result.stdout
    assert "audit log intact" in result.stdout


def test_verify_tampered_and_json(audit_dir: Path) -> None:
    segment = audit_dir / "broker-a" / "000001.jsonl"
    segment.write_bytes(segment.read_bytes().replace(b'"status":201', b'"status":200', 1))
    result = ztb("audit", "verify", audit_dir, "--pubkey", KEY.public_hex)
    assert result.returncode == 1
    assert "first break: seq 2 (000001.jsonl:3): modified" in result.stdout
    result = ztb("audit", "verify", audit_dir, "--pubkey", KEY.public_hex, "--json")
    assert result.returncode == 1
    report = json.loads(result.stdout)
    assert report["ok"] is False
    assert report["logs"][0]["first_break"]["seq"] == 2
    assert report["logs"][0]["first_break"]["category"] == "modified"


def test_verify_with_several_keys(audit_dir: Path) -> None:
    other = SigningKey.generate()
    result = ztb(
        "audit", "verify", audit_dir, "--pubkey", other.public_hex, "--pubkey", KEY.public_hex, "--json"
    )
    assert result.returncode == 0
    assert json.loads(result.stdout)["ok"] is True
    result = ztb("audit", "verify", audit_dir, "--pubkey", other.public_hex)
    assert result.returncode == 1
    assert "unknown_key" in result.stdout


def test_verify_deployment_uses_its_public_key(tmp_path: Path) -> None:
    write_deployment(tmp_path, None)
    write_log(tmp_path / "audit" / "broker-a", LINES)
    (tmp_path / "keys").mkdir()
    KEY.save(tmp_path / "keys" / "audit.key")
    result = ztb("audit", "verify", tmp_path)
    assert result.returncode == 0, result.stderr


def test_verify_usage_errors(audit_dir: Path, tmp_path: Path) -> None:
    assert_usage_error(ztb("audit", "verify", audit_dir), "--pubkey")
    assert_usage_error(ztb("audit", "verify", audit_dir, "--pubkey", "nonsense"), "not 64 hex digits")
    assert_usage_error(
        ztb("audit", "verify", tmp_path / "missing", "--pubkey", KEY.public_hex), "no such folder"
    )
    (tmp_path / "empty").mkdir()
    assert_usage_error(
        ztb("audit", "verify", tmp_path / "empty", "--pubkey", KEY.public_hex), "no audit logs"
    )
    write_deployment(tmp_path / "deployment", None)
    write_log(tmp_path / "deployment" / "audit" / "broker-a", LINES)
    assert_usage_error(ztb("audit", "verify", tmp_path / "deployment"), "audit.pub: no such file")
    assert ztb("audit", "verify").returncode == 2


def test_show_table_tail_and_json(audit_dir: Path) -> None:
    result = ztb("audit", "show", audit_dir)
    assert result.returncode == 0, result.stderr
    header, *rows = result.stdout.splitlines()
    assert header.split() == [
        "broker",
        "seq",
        "ts",
        "kind",
        "decision",
        "gate",
        "reason",
        "identity",
        "route",
        "call_id",
    ]
    assert len(rows) == 7
    assert rows[5].split() == [
        "broker-a", "5", "2026-05-04T11:42:05.317Z", "call", "DENY", "scope", "scope_not_granted",
        "svc.reports", "orders.create", "call-denied",
    ]  # fmt: skip
    result = ztb("audit", "show", audit_dir, "--tail", "2", "--json")
    assert result.returncode == 0
    entries = [json.loads(line) for line in result.stdout.splitlines()]
    assert [entry["seq"] for entry in entries] == [5, 6]


def test_show_call_id(audit_dir: Path) -> None:
    result = ztb("audit", "show", audit_dir, "--call-id", "call-0001", "--json")
    assert result.returncode == 0
    entries = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(entry["kind"], entry["seq"]) for entry in entries] == [("call", 3), ("result", 4)]
    result = ztb("audit", "show", audit_dir, "--call-id", "call-0001")
    assert [row.split()[3:5] for row in result.stdout.splitlines()[1:]] == [
        ["call", "ALLOW"],
        ["result", "201"],
    ]
    result = ztb("audit", "show", audit_dir, "--call-id", "no-such-call")
    assert result.returncode == 1
    assert result.stderr == f"ztb: error: no entry with call_id no-such-call in {audit_dir}\n"
