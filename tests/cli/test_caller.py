"""`ztb token` and `ztb call` against a running broker, run as a user runs them: what a caller
types, what it is told, and that a refused certificate is a one-line error, not a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from stack import UPSTREAM, Stack
from ztb import pki


def ztb(*args: str | Path) -> tuple[int, str, str]:
    done = subprocess.run(
        [sys.executable, "-m", "ztb", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return done.returncode, done.stdout, done.stderr


def as_checkout(stack: Stack, broker: str | None = None) -> list[str | Path]:
    """The options that make a command run as svc.checkout of the stack's deployment."""
    url = broker or f"https://127.0.0.1:{stack.port}"
    return ["-d", stack.root, "--as", "svc.checkout", "--broker", url]


def test_token_prints_a_fresh_token(stack: Stack) -> None:
    code, out, err = ztb("token", *as_checkout(stack), UPSTREAM, "orders:read")
    assert code == 0, err
    assert out.startswith("ztb_") and len(out.strip().split("\n")) == 1


def test_call_mints_and_calls(stack: Stack) -> None:
    before = len(stack.upstream.received)
    code, out, err = ztb("call", *as_checkout(stack), "GET", f"/{UPSTREAM}/v1/orders?limit=5")
    assert code == 0, err
    assert out.startswith("HTTP 200\n") and "ztb-call-id: " in out and "ztb-receipt: " in out
    assert len(stack.upstream.received) == before + 1


def test_a_certificate_the_broker_refuses_is_one_clear_line(stack: Stack, tmp_path: Path) -> None:
    pki.issue_client(pki.new_ca("some other CA"), "svc.checkout").write(
        tmp_path / "c.pem", tmp_path / "k.pem"
    )
    broker = f"https://127.0.0.1:{stack.port}"
    ca = stack.root / "ca" / "ca.pem"
    for command in (
        ["token", UPSTREAM, "orders:read"],
        ["call", "--scope", "orders:read", "GET", f"/{UPSTREAM}/v1/orders"],
    ):
        code, out, err = ztb(
            command[0],
            "--broker",
            broker,
            "--cert",
            tmp_path / "c.pem",
            "--key",
            tmp_path / "k.pem",
            "--ca",
            ca,
            *command[1:],
        )
        assert code == 1 and out == ""
        assert err == (
            "ztb: error: the broker refused this client certificate in the TLS handshake: "
            "TLSV1_ALERT_UNKNOWN_CA (untrusted_certificate)\n"
        ), err


def test_an_unreachable_broker_is_one_clear_line(stack: Stack) -> None:
    code, out, err = ztb("token", *as_checkout(stack, "https://127.0.0.1:1"), UPSTREAM, "orders:read")
    assert code == 1 and out == ""
    assert (
        err.startswith("ztb: error: cannot connect to the broker at 127.0.0.1:1: ") and err.count("\n") == 1
    ), err
