"""The anchor inside a running broker, against a real witness over mTLS and a file sink:
checkpoints on the schedule and only over durable entries, cosignatures kept beside the log, a
witness that is down (lag, not-ready, recovery), restarts, and a log cut below what was signed."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from auditlog_builder import forge, make_lines, write_log

from procs import wait_until
from stack import UPSTREAM, AnchoredStack
from ztb.audit.anchor import Anchor, FileSink, read_leaves
from ztb.audit.checkpoint import Checkpoint, parse_notes
from ztb.audit.keys import SigningKey
from ztb.audit.merkle import root_of
from ztb.audit.note import Verifier, open_note
from ztb.config import ConfigError
from ztb.runtime import RunningBroker


def allowed_calls(stack: AnchoredStack, count: int) -> list[str]:
    caller = stack.caller()
    receipts = []
    try:
        for _ in range(count):
            token = caller.mint(UPSTREAM, "orders:read")
            response = caller.call("GET", UPSTREAM, "/v1/orders?limit=5", token=token)
            assert response.status == 200
            receipts.append(response.headers["ztb-receipt"])
    finally:
        caller.close()
    return receipts


def readyz(stack: AnchoredStack) -> dict[str, object]:
    assert stack.broker is not None
    url = f"http://127.0.0.1:{stack.broker.admin_port}/readyz"
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            return json.loads(answer.read())  # type: ignore[no-any-return]
    except urllib.error.HTTPError as refused:
        return json.loads(refused.read())  # type: ignore[no-any-return]


def assert_every_checkpoint_matches_the_log(stack: AnchoredStack) -> None:
    leaves = read_leaves(stack.log_dir)
    log_key = Verifier.parse((stack.root / "keys/checkpoint.vkey").read_text())
    witness = Verifier.parse(stack.witness_vkey)
    for name, keys in (("checkpoints.notes", [log_key]), ("cosigned.notes", [log_key, witness])):
        notes = stack.notes(name)
        assert notes, name
        for note in notes:
            assert open_note(note, keys) == keys
            checkpoint = Checkpoint.from_text(note.text)
            assert checkpoint.origin == "dev/broker-a"
            assert checkpoint.size <= len(leaves)
            assert checkpoint.root == root_of(leaves[: checkpoint.size])


@pytest.fixture
def by_count(tmp_path: Path) -> Iterator[AnchoredStack]:
    stack = AnchoredStack(tmp_path / "dep", every_entries=6, every_s=3600)
    try:
        yield stack
    finally:
        stack.close()


def test_a_checkpoint_every_n_entries_cosigned_and_kept_beside_the_log(by_count: AnchoredStack) -> None:
    allowed_calls(by_count, 4)  # 2 entries at start, 3 per call: 14 entries
    wait_until(lambda: len(by_count.sizes()) >= 2, what="two cosigned checkpoints")
    assert all(size >= 6 for size in by_count.sizes())
    assert by_count.sizes() == sorted(by_count.sizes())
    assert_every_checkpoint_matches_the_log(by_count)
    offhost = by_count.offhost.read_text()
    assert offhost.startswith("dev/broker-a\n") and "\u2014 dev/broker-a " in offhost
    state = json.loads(next((by_count.witness_dir / "state").glob("*.json")).read_text())
    assert state["size"] == max(by_count.sizes())


def test_stop_anchors_the_whole_log(by_count: AnchoredStack) -> None:
    allowed_calls(by_count, 1)
    by_count.stop_broker()
    total = len(read_leaves(by_count.log_dir))
    assert max(by_count.sizes()) == total  # the last checkpoint covers `stop`
    assert_every_checkpoint_matches_the_log(by_count)


def test_a_checkpoint_every_s_seconds(tmp_path: Path) -> None:
    stack = AnchoredStack(tmp_path / "dep", every_entries=1000, every_s=0.2)
    try:
        wait_until(lambda: stack.sizes() == [2], what="the first checkpoint (start, registry)")
        allowed_calls(stack, 1)
        wait_until(lambda: max(stack.sizes()) == 5, what="a checkpoint after one call")
        sizes = stack.sizes()
        assert sizes == sorted(set(sizes))  # never the same size twice
        assert stack.broker is not None
        anchor = stack.broker.anchor
        # The local checkpoint comes first, the sinks take it right after (not at the same instant).
        wait_until(
            lambda: [s.anchored_size for s in anchor.status()] == [5, 5, 5], what="every sink at size 5"
        )
        assert all(s.lag_s == 0.0 for s in anchor.status())
    finally:
        stack.close()


def test_the_schedule_only_signs_when_the_log_grew(tmp_path: Path) -> None:
    """The schedule's rules with a clock the test moves: due by time or by count, never twice
    for one size."""
    key = SigningKey.generate()
    log_dir = tmp_path / "broker-a"
    lines = make_lines(key, calls=2)
    write_log(log_dir, lines)
    now = [1000.0]
    offhost = tmp_path / "offhost.notes"
    anchor = Anchor(
        log_dir, "dev/broker-a", SigningKey.generate(), [FileSink(offhost)],
        every_entries=3, every_s=5, clock=lambda: now[0],
    )  # fmt: skip

    def count() -> int:
        return len(parse_notes(offhost.read_bytes())[0]) if offhost.exists() else 0

    async def scenario() -> list[int]:
        await anchor.start(len(lines))
        anchor._closing = True  # the test runs the rounds itself
        anchor._wake.set()
        assert anchor._task is not None
        await anchor._task
        counts = []
        now[0] += 6
        await anchor._round(force=False)  # due by time: the whole log
        counts.append(count())
        now[0] += 2
        await anchor._round(force=False)  # nothing new: nothing signed
        counts.append(count())
        leaves = read_leaves(log_dir)
        anchor.on_durable([(len(lines), "sha256:" + leaves[0].hex())])
        now[0] += 1
        await anchor._round(force=False)  # one entry, one second: not due
        counts.append(count())
        now[0] += 2
        await anchor._round(force=False)  # five seconds since the last: due by time
        counts.append(count())
        anchor.on_durable([(len(lines) + i, "sha256:" + leaves[i].hex()) for i in range(1, 4)])
        await anchor._round(force=False)  # due by count, at once
        counts.append(count())
        await anchor.close(final=False)
        return counts

    assert asyncio.run(scenario()) == [1, 1, 1, 2, 3]
    sizes = [Checkpoint.from_text(note.text).size for note in parse_notes(offhost.read_bytes())[0]]
    assert sizes == [len(lines), len(lines) + 1, len(lines) + 4]


def test_a_witness_that_is_down_raises_the_lag_then_readiness_then_recovers(tmp_path: Path) -> None:
    stack = AnchoredStack(tmp_path / "dep", every_s=0.1, max_lag_s=1, witness_running=False)
    try:
        assert stack.broker is not None
        allowed_calls(stack, 1)  # calls go on while the witness is down
        wait_until(lambda: readyz(stack)["ready"] is False, what="not ready", timeout_s=10)
        checks = readyz(stack)["checks"]
        assert checks == {
            "audit_writable": True,
            "token_store": True,
            "registry_loaded": True,
            "accepting": True,
            "anchored": False,
        }
        witness_status = stack.broker.anchor.status()[1]
        assert witness_status.failures >= 1 and "cannot reach the witness" in str(witness_status.error)
        assert witness_status.lag_s > 1
        assert stack.broker.anchor.status()[2].lag_s == 0.0  # the file sink took it
        metrics = urllib.request.urlopen(
            f"http://127.0.0.1:{stack.broker.admin_port}/metrics", timeout=5
        ).read()
        assert b'ztb_anchor_lag_seconds{sink="witness:https://127.0.0.1:' in metrics
        assert b'ztb_anchor_failures_total{sink="witness:' in metrics
        stack.start_witness()
        wait_until(lambda: readyz(stack)["ready"] is True, what="ready again", timeout_s=10)
        assert stack.sizes()[-1] == stack.broker.anchor.tree.size
    finally:
        stack.close()


def test_restart_resumes_from_the_cosigned_size(by_count: AnchoredStack) -> None:
    allowed_calls(by_count, 2)
    by_count.stop_broker()
    first = max(by_count.sizes())
    by_count.start_broker()
    allowed_calls(by_count, 2)
    by_count.stop_broker()
    assert max(by_count.sizes()) == len(read_leaves(by_count.log_dir)) > first
    assert_every_checkpoint_matches_the_log(by_count)


def test_a_restart_resumes_from_the_edge_saved_at_the_last_checkpoint(by_count: AnchoredStack) -> None:
    """A start reads only from the saved right edge on, once a checkpoint this key signed vouches
    for it (its root), and the tree it continues is the log's own: every later checkpoint matches."""
    allowed_calls(by_count, 2)
    by_count.stop_broker()  # a last checkpoint of everything, and the edge saved with it
    saved = json.loads((by_count.checkpoints_dir / "tree.json").read_text())
    assert saved["size"] == max(by_count.sizes("checkpoints.notes")) == len(read_leaves(by_count.log_dir))
    by_count.start_broker()
    assert by_count.broker is not None and by_count.broker.anchor.resumed_from == saved["size"]
    allowed_calls(by_count, 2)
    by_count.stop_broker()
    assert max(by_count.sizes()) == len(read_leaves(by_count.log_dir)) > saved["size"]
    assert_every_checkpoint_matches_the_log(by_count)


def test_a_saved_edge_no_signed_checkpoint_vouches_for_is_not_used(by_count: AnchoredStack) -> None:
    allowed_calls(by_count, 2)
    by_count.stop_broker()
    path = by_count.checkpoints_dir / "tree.json"
    saved = json.loads(path.read_text())
    saved["nodes"][0] = "00" * 32  # another tree head: no checkpoint has its root
    path.write_text(json.dumps(saved))
    by_count.start_broker()
    assert by_count.broker is not None and by_count.broker.anchor.resumed_from is None  # read it all
    allowed_calls(by_count, 1)
    by_count.stop_broker()
    assert_every_checkpoint_matches_the_log(by_count)


def test_a_witness_restored_from_an_old_backup_is_caught_up_from_the_log(by_count: AnchoredStack) -> None:
    """The witness answers 409 with a size below the leaves the broker kept: the proof is built
    from the log on disk."""
    allowed_calls(by_count, 1)
    by_count.stop_broker()
    by_count.stop_witness()
    (state,) = (by_count.witness_dir / "state").glob("*.json")
    backup = state.read_bytes()
    by_count.start_witness()
    by_count.start_broker()
    allowed_calls(by_count, 3)
    by_count.stop_broker()
    by_count.stop_witness()
    state.write_bytes(backup)
    by_count.start_witness()
    by_count.start_broker()
    allowed_calls(by_count, 1)
    by_count.stop_broker()
    assert max(by_count.sizes()) == len(read_leaves(by_count.log_dir))
    assert json.loads(state.read_text())["size"] == max(by_count.sizes())


def test_the_broker_refuses_a_log_cut_below_a_signed_checkpoint(by_count: AnchoredStack) -> None:
    allowed_calls(by_count, 2)
    by_count.stop_broker()
    segment = by_count.log_dir / "000001.jsonl"
    lines = segment.read_bytes().splitlines(keepends=True)
    segment.write_bytes(b"".join(lines[:-3]))
    with pytest.raises(ConfigError, match="entries were removed"):
        by_count.loop.run(RunningBroker.start(by_count.root))


def test_the_broker_refuses_a_log_rewritten_below_a_signed_checkpoint(by_count: AnchoredStack) -> None:
    """A thief of the audit key re-seals a changed history: the chain holds, the tree does not."""
    allowed_calls(by_count, 2)
    by_count.stop_broker()
    segment = by_count.log_dir / "000001.jsonl"
    lines = segment.read_bytes().splitlines(keepends=True)
    key = SigningKey.load(by_count.root / "keys/audit.key")
    segment.write_bytes(b"".join(forge(lines, 3, key, lambda body: body.update(latency_ms=999))))
    with pytest.raises(ConfigError, match="do not match the checkpoint"):
        by_count.loop.run(RunningBroker.start(by_count.root))
