"""The audit log under real faults, on a running broker: a full disk, a segment deleted,
replaced or truncated under it, permissions removed, an fsync that does not return, a slow
device. Each time: allowed calls are refused with 503 egress/audit_unavailable within the
durability bound (SPEC §4), nothing reaches the upstream, the broker reports not-ready, and the
chain stays intact. Where the fault can pass (space or permissions return, the fsync comes
back) the broker serves again without a restart and closes each refused call with a `result`
entry (forwarded: false)."""

from __future__ import annotations

import http.client
import os
import shutil
import ssl
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from faults import (
    FaultStack,
    StallingWriter,
    assert_received_were_logged,
    fill,
    refused_unavailable,
    tmpfs,
    unavailable,
    verify_deployment,
)

import ztb.audit.writer
import ztb.runtime
from ztb.config import ConfigError

BOUND_S = 1.0  # broker.yaml audit.durability_timeout_ms of `ztb init`: the SPEC's default bound
SLACK_S = 1.5  # TLS, minting and a busy 2-core CI machine on top of the bound


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    with tmpfs(tmp_path / "disk", "1m") as mount:
        yield mount


def running(root: Path, audit: Path) -> Iterator[FaultStack]:
    stack = FaultStack(root, audit)
    try:
        yield stack
    finally:
        stack.close()


@pytest.fixture
def on_small_disk(tmp_path: Path, small_disk: Path) -> Iterator[FaultStack]:
    yield from running(tmp_path / "dep", small_disk / "audit")


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[FaultStack]:
    yield from running(tmp_path / "dep", tmp_path / "audit")


def timed_refusal(stack: FaultStack, bound: float) -> str:
    caller = stack.caller()
    started = time.monotonic()
    response = stack.allowed_call(caller)
    elapsed = time.monotonic() - started
    caller.close()
    call_id = refused_unavailable(response)
    assert elapsed < bound, f"refusal took {elapsed:.2f} s"
    return call_id


def assert_closed_unforwarded(stack: FaultStack, call_ids: list[str]) -> None:
    """Each refused call: its ALLOW entry and, once the log took it, a result forwarded: false."""
    for call_id in call_ids:
        call = stack.wait_entry(lambda e, c=call_id: e.get("call_id") == c and e["kind"] == "call")
        assert call["decision"] == "ALLOW"
        result = stack.wait_entry(lambda e, c=call_id: e.get("call_id") == c and e["kind"] == "result")
        assert (result["forwarded"], result["error"]) == (False, "audit_unavailable")


def finish_intact(stack: FaultStack, since: int = 0) -> None:
    """Stop gracefully; the whole log verifies, sealed, and every call forwarded (from the
    `since`-th on) has its entry."""
    stack.stop_broker()
    report = verify_deployment(stack.root)
    assert report.ok, report.to_text()
    (log,) = report.logs
    assert log.sealed and log.unknown_outcome == ()
    assert_received_were_logged(stack.upstream.received[since:], stack.entries())


def test_disk_full_refuses_fast_and_serves_again_without_restart(on_small_disk: FaultStack) -> None:
    stack = on_small_disk
    caller = stack.caller()
    assert stack.allowed_call(caller).status == 201
    broker = stack.broker
    filler = fill(stack.audit_dir)
    refused: list[str] = []
    for _ in range(10):  # the segment's last page may still hold a call or two
        forwarded = len(stack.upstream.received)
        started = time.monotonic()
        response = stack.allowed_call(caller)
        if response.status != 201:
            refused.append(refused_unavailable(response))
            assert time.monotonic() - started < BOUND_S + SLACK_S
            break
    assert refused, "the full disk never refused a call"
    assert len(stack.upstream.received) == forwarded
    status, body = stack.ready()
    assert status == 503 and body["checks"]["audit_writable"] is False
    # While the disk stays full, calls are refused at once, without waiting for the bound.
    refused += [timed_refusal(stack, BOUND_S) for _ in range(3)]
    assert len(stack.upstream.received) == forwarded

    filler.unlink()
    stack.wait_ready(True)
    assert stack.broker is broker
    assert stack.allowed_call(caller).status == 201
    assert_closed_unforwarded(stack, refused)
    finish_intact(stack)


def test_fsync_that_never_returns(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # No slow device here: the writer's test build holds its fsync (see test_slow_device).
    monkeypatch.setattr(ztb.runtime, "AuditWriter", StallingWriter)
    for stack in running(tmp_path / "dep", tmp_path / "audit"):
        writer = stack.broker.writer if stack.broker else None
        assert isinstance(writer, StallingWriter)
        assert stack.allowed_call(stack.caller()).status == 201
        forwarded = len(stack.upstream.received)
        writer.stall()
        try:
            refused = [timed_refusal(stack, BOUND_S + SLACK_S)]
            assert writer.stuck.is_set()
            assert stack.ready()[0] == 503
            refused += [timed_refusal(stack, BOUND_S) for _ in range(2)]
            assert len(stack.upstream.received) == forwarded
        finally:
            writer.release()
        stack.wait_ready(True)
        assert stack.allowed_call(stack.caller()).status == 201
        assert_closed_unforwarded(stack, refused)
        finish_intact(stack)


def test_saturated_log_sheds_new_connections(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ztb.runtime, "AuditWriter", StallingWriter)
    monkeypatch.setattr(ztb.audit.writer, "MAX_PENDING_BYTES", 6000)
    for stack in running(tmp_path / "dep", tmp_path / "audit"):
        writer = stack.broker.writer if stack.broker else None
        assert isinstance(writer, StallingWriter)
        writer.stall()
        try:
            refused: list[str] = []
            shed = (OSError, ssl.SSLError, http.client.HTTPException)
            for _ in range(10):  # refused calls fill the queue until the edge sheds connections
                try:
                    refused.append(timed_refusal(stack, BOUND_S + SLACK_S))
                except shed:
                    break
            assert writer.saturated
            held = writer.next_seq
            with pytest.raises(shed):
                stack.allowed_call(stack.caller())
            assert writer.next_seq == held  # shed before it cost an entry, or memory
            assert stack.upstream.received == []
        finally:
            writer.release()
        stack.wait_ready(True)
        assert not writer.saturated
        assert stack.allowed_call(stack.caller()).status == 201
        assert_closed_unforwarded(stack, refused)
        finish_intact(stack)


def deleted(segment: Path) -> None:
    segment.unlink()


def replaced(segment: Path) -> None:
    copy = segment.with_name("copy")
    copy.write_bytes(segment.read_bytes())  # the same bytes, but not the file the broker holds
    copy.replace(segment)


def truncated(segment: Path) -> None:
    os.truncate(segment, segment.stat().st_size // 2)


@pytest.mark.parametrize("displace", [deleted, replaced, truncated])
def test_segment_displaced_under_a_running_broker(
    stack: FaultStack, displace: Callable[[Path], None]
) -> None:
    assert stack.allowed_call(stack.caller()).status == 201
    segment = stack.log_dir / "000001.jsonl"
    durable = segment.read_bytes()
    displace(segment)
    stack.wait_ready(False)  # noticed while idle, before any call
    assert stack.broker is not None
    assert f"was {displace.__name__}" in (stack.broker.writer.last_error or "")
    timed_refusal(stack, BOUND_S)
    assert len(stack.upstream.received) == 1
    (orphan,) = stack.log_dir.glob("000001.jsonl.orphan-*")
    # The bytes of the file the broker held, kept as evidence: its whole chain when the path was
    # deleted or replaced; what is left of it when the file itself was cut.
    assert orphan.read_bytes() == (durable[: len(durable) // 2] if displace is truncated else durable)

    # Never fork silently: no start until an operator decides what happened.
    stack.stop_broker()
    with pytest.raises(ConfigError, match=r"orphan-\d+: a segment was deleted or replaced"):
        stack.start_broker()
    orphan.replace(segment)  # the decision here: put the broker's own copy back
    if displace is truncated:
        # A cut file lost what was cut, and the checkpoints already signed say so (SPEC §7): the
        # broker will not continue a log shorter than what it anchored.
        with pytest.raises(ConfigError, match="entries were removed"):
            stack.start_broker()
        return
    stack.start_broker()
    assert stack.allowed_call(stack.caller()).status == 201
    finish_intact(stack, since=0)


def test_permissions_removed(stack: FaultStack) -> None:
    segment = stack.log_dir / "000001.jsonl"
    if os.geteuid() == 0:  # root ignores mode bits, not the immutable flag
        lock, unlock = ["chattr", "+i", str(segment)], ["chattr", "-i", str(segment)]
        done = subprocess.run(lock, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            unavailable(f"chattr +i is not supported on this filesystem: {done.stderr.strip()}")
    else:
        segment.chmod(0o440)
    try:
        stack.wait_ready(False)
        refused = [timed_refusal(stack, BOUND_S) for _ in range(2)]
        assert stack.upstream.received == []
    finally:
        if os.geteuid() == 0:
            subprocess.run(unlock, check=True)
        else:
            segment.chmod(0o640)
    stack.wait_ready(True)
    assert stack.allowed_call(stack.caller()).status == 201
    assert_closed_unforwarded(stack, refused)
    finish_intact(stack)


def test_audit_folder_unusable_at_start(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the audit folder should be")
    # Refused at start with one line naming the path: by the anchor, which reads the log's
    # checkpoints first, or by the writer opening the log.
    with pytest.raises(ConfigError, match=r"not-a-folder/.*(cannot open the audit log|cannot read)"):
        FaultStack(tmp_path / "dep", blocker)


# -- a real slow device: device-mapper `delay`, where the kernel has it ----------------------


def _run(*argv: str) -> str:
    return subprocess.run(argv, capture_output=True, text=True, check=True).stdout.strip()


def _device_mapper_problem() -> str | None:
    if os.geteuid() != 0:
        return "device-mapper needs root"
    if (
        shutil.which("dmsetup") is None
        or shutil.which("losetup") is None
        or shutil.which("mkfs.ext4") is None
    ):
        return "dmsetup, losetup or mkfs.ext4 is not installed"
    if shutil.which("modprobe") is not None:
        subprocess.run(["modprobe", "dm-delay"], capture_output=True, check=False)
    targets = subprocess.run(["dmsetup", "targets"], capture_output=True, text=True, check=False)
    if targets.returncode != 0:
        return f"device-mapper is not available in this kernel: {targets.stderr.strip().splitlines()[0]}"
    if "delay" not in targets.stdout.split():
        return "the device-mapper delay target is not available in this kernel"
    return None


@pytest.fixture
def slow_device(tmp_path: Path) -> Iterator[Callable[[int], None]]:
    """An ext4 filesystem on a dm-delay device over a loop device, mounted at tmp_path/slow;
    yields set_delay(ms), which reloads the table with that read and write delay."""
    problem = _device_mapper_problem()
    if problem is not None:
        pytest.skip(
            f"no real slow device on this machine ({problem}); the fsync stall is covered by "
            "test_fsync_that_never_returns through the writer's test build"
        )
    image = tmp_path / "disk.img"
    with image.open("wb") as handle:
        handle.truncate(64 << 20)
    loop = _run("losetup", "-f", "--show", str(image))
    name = f"ztb-slow-{os.getpid()}"
    sectors = _run("blockdev", "--getsz", loop)

    def table(ms: int) -> str:
        return f"0 {sectors} delay {loop} 0 {ms}"

    def set_delay(ms: int) -> None:
        _run("dmsetup", "load", name, "--table", table(ms))
        _run("dmsetup", "resume", name)

    mount = tmp_path / "slow"
    mount.mkdir()
    try:
        _run("dmsetup", "create", name, "--table", table(0))
        _run("mkfs.ext4", "-q", f"/dev/mapper/{name}")
        _run("mount", f"/dev/mapper/{name}", str(mount))
        yield set_delay
    finally:
        subprocess.run(["dmsetup", "resume", name], capture_output=True, check=False)
        subprocess.run(["umount", "-l", str(mount)], capture_output=True, check=False)
        subprocess.run(["dmsetup", "remove", "--retry", name], capture_output=True, check=False)
        subprocess.run(["losetup", "-d", loop], capture_output=True, check=False)


def test_slow_device(tmp_path: Path, slow_device: Callable[[int], None]) -> None:
    for stack in running(tmp_path / "dep", tmp_path / "slow" / "audit"):
        assert stack.allowed_call(stack.caller()).status == 201
        slow_device(5000)  # every write and flush now takes five seconds
        try:
            refused = [timed_refusal(stack, BOUND_S + SLACK_S)]
            assert stack.ready()[0] == 503
            refused.append(timed_refusal(stack, BOUND_S))
            assert len(stack.upstream.received) == 1
        finally:
            slow_device(0)
        stack.wait_ready(True, timeout=30)
        assert stack.allowed_call(stack.caller()).status == 201
        assert_closed_unforwarded(stack, refused)
        finish_intact(stack)
