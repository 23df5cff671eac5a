"""The verifier's checkpoint mode on a log anchored by a real broker and witness: intact, cut,
rewritten with the stolen audit key, and with checkpoints or cosignatures that do not verify."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from auditlog_builder import forge

from stack import UPSTREAM, AnchoredStack
from ztb.audit.anchor import CHECKPOINTS_DIR, COSIGNED_NOTES, LOG_NOTES
from ztb.audit.keys import SigningKey, kid_of, load_public_key
from ztb.audit.note import Verifier
from ztb.audit.reader import find_logs
from ztb.audit.verify import Anchors, LogReport, verify_logs


@pytest.fixture(scope="module")
def anchored(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AnchoredStack]:
    stack = AnchoredStack(tmp_path_factory.mktemp("anchored") / "dep", every_entries=4, every_s=3600)
    caller = stack.caller()
    for _ in range(4):
        token = caller.mint(UPSTREAM, "orders:read")
        assert caller.call("GET", UPSTREAM, "/v1/orders?limit=5", token=token).status == 200
    caller.close()
    stack.stop_broker()  # the last checkpoint covers `stop`, cosigned
    try:
        yield stack
    finally:
        stack.close()


@pytest.fixture
def copy(anchored: AnchoredStack, tmp_path: Path) -> Path:
    target = tmp_path / "broker-a"
    shutil.copytree(anchored.log_dir, target)
    return target


def check(
    stack: AnchoredStack, log_dir: Path, *, witness: bool = True, extra: tuple[Path, ...] = ()
) -> LogReport:
    audit_key = load_public_key(str(stack.root / "keys/audit.pub"))
    anchors = Anchors(
        (Verifier.parse((stack.root / "keys/checkpoint.vkey").read_text()),),
        (Verifier.parse(stack.witness_vkey),) if witness else (),
        extra,
    )
    (report,) = verify_logs(find_logs(log_dir), {kid_of(audit_key): audit_key}, anchors).logs
    return report


def lines_of(log_dir: Path) -> list[bytes]:
    return (log_dir / "000001.jsonl").read_bytes().splitlines(keepends=True)


def test_an_anchored_log_is_intact(anchored: AnchoredStack, copy: Path) -> None:
    report = check(anchored, copy, extra=(anchored.offhost,))
    assert report.ok, report.to_text()
    assert report.anchors is not None
    assert report.anchors.largest == report.entries
    assert report.anchors.cosigned == {"witness.test/w1": report.entries}
    assert "cosigned by witness.test/w1 up to size" in report.to_text()


def test_cutting_the_tail_is_truncated(anchored: AnchoredStack, copy: Path) -> None:
    lines = lines_of(copy)
    (copy / "000001.jsonl").write_bytes(b"".join(lines[:-4]))
    report = check(anchored, copy)
    assert report.first_break is not None
    assert (report.first_break.category, report.first_break.seq) == ("truncated", len(lines) - 4)
    assert "cosigned by witness.test/w1" in report.first_break.detail
    # Without checkpoints the cut log looks whole: that is the hole anchoring closes.
    audit_key = load_public_key(str(anchored.root / "keys/audit.pub"))
    assert verify_logs(find_logs(copy), {kid_of(audit_key): audit_key}).ok


def test_cutting_the_tail_and_the_local_checkpoints_is_still_caught(
    anchored: AnchoredStack, copy: Path
) -> None:
    (copy / "000001.jsonl").write_bytes(b"".join(lines_of(copy)[:-4]))
    shutil.rmtree(copy / CHECKPOINTS_DIR)
    report = check(anchored, copy)  # the witness key is required: no cosigned checkpoint left
    assert report.first_break is not None and report.first_break.category == "bad_cosignature"
    (state,) = (anchored.witness_dir / "state").glob("*.json")
    report = check(anchored, copy, extra=(state,))  # the witness's own copy
    assert report.first_break is not None and report.first_break.category == "truncated"
    report = check(anchored, copy, witness=False, extra=(anchored.offhost,))  # the file sink
    assert report.first_break is not None and report.first_break.category == "truncated"


def test_a_history_rewritten_with_the_stolen_audit_key_mismatches_the_root(
    anchored: AnchoredStack, copy: Path
) -> None:
    key = SigningKey.load(anchored.root / "keys/audit.key")
    forged = forge(lines_of(copy), 5, key, lambda body: body.update(latency_ms=0, identity_note="forged"))
    (copy / "000001.jsonl").write_bytes(b"".join(forged))
    report = check(anchored, copy)
    assert report.first_break is not None
    assert report.first_break.category == "root_mismatch"
    assert report.first_break.seq <= 5


def test_a_bad_checkpoint_signature(anchored: AnchoredStack, copy: Path) -> None:
    notes = copy / CHECKPOINTS_DIR / LOG_NOTES
    text = notes.read_text()
    marker = "\u2014 dev/broker-a "
    at = text.index(marker) + len(marker) + 10
    notes.write_text(text[:at] + ("A" if text[at] != "A" else "B") + text[at + 1 :])
    report = check(anchored, copy)
    assert report.first_break is not None and report.first_break.category == "bad_checkpoint_signature"


def test_a_bad_cosignature(anchored: AnchoredStack, copy: Path) -> None:
    notes = copy / CHECKPOINTS_DIR / COSIGNED_NOTES
    text = notes.read_text()
    marker = "\u2014 witness.test/w1 "
    at = text.rindex(marker) + len(marker) + 20
    notes.write_text(text[:at] + ("A" if text[at] != "A" else "B") + text[at + 1 :])
    report = check(anchored, copy)
    assert report.first_break is not None and report.first_break.category == "bad_cosignature"


def test_a_checkpoint_key_for_another_log_checks_nothing_and_says_so(
    anchored: AnchoredStack, copy: Path
) -> None:
    audit_key = load_public_key(str(anchored.root / "keys/audit.pub"))
    other = Verifier("dev/broker-z", 1, SigningKey.generate().public_raw)
    anchors = Anchors((other,))
    (report,) = verify_logs(find_logs(copy), {kid_of(audit_key): audit_key}, anchors).logs
    assert report.first_break is not None and report.first_break.category == "bad_checkpoint_signature"
    assert "no trusted checkpoint key" in report.first_break.detail
