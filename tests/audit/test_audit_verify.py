"""The verifier against real logs: intact logs pass, and every kind of tampering is caught at
the right entry with the right category."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from auditlog_builder import entry_bodies, make_lines, sealed_lines, write_log

from ztb.audit.entry import body_of, seal
from ztb.audit.jcs import canonicalize
from ztb.audit.keys import SigningKey
from ztb.audit.reader import find_logs
from ztb.audit.verify import VerifyReport, verify_logs

KEY = SigningKey.generate()
TRUSTED = {KEY.kid: KEY.public_raw}
LINES = make_lines(KEY)  # seq 0 start, 1..6 three calls and results, 7 denied call, 8 stop


def verify(folder: Path, trusted: dict[str, bytes] = TRUSTED) -> VerifyReport:
    return verify_logs(find_logs(folder), trusted)


def assert_break(report: VerifyReport, seq: int, category: str) -> None:
    assert not report.ok
    (log,) = report.logs
    assert log.first_break is not None
    assert (log.first_break.seq, log.first_break.category) == (seq, category), log.first_break


def test_intact_log(tmp_path: Path) -> None:
    write_log(tmp_path / "broker-a", LINES, segments=3)
    report = verify(tmp_path)
    assert report.ok
    (log,) = report.logs
    assert log.broker == "broker-a"
    assert log.entries == 9
    assert len(log.segments) == 3
    assert log.kinds == {"start": 1, "call": 4, "result": 3, "stop": 1}
    assert log.sealed
    assert log.torn_tail is None
    assert log.unknown_outcome == ()
    assert "broker-a: 9 entries in 3 segments: ok" in report.to_text()
    assert report.to_json()["ok"] is True


def test_several_brokers(tmp_path: Path) -> None:
    write_log(tmp_path / "broker-a", LINES)
    write_log(tmp_path / "broker-b", make_lines(KEY, calls=1, broker="broker-b"))
    tampered = [*LINES]
    del tampered[4]
    write_log(tmp_path / "broker-c", tampered)
    report = verify(tmp_path)
    assert [log.broker for log in report.logs] == ["broker-a", "broker-b", "broker-c"]
    assert [log.ok for log in report.logs] == [True, True, False]
    assert not report.ok


def test_no_logs_is_not_ok() -> None:
    assert not VerifyReport(()).ok


@pytest.mark.parametrize("position", range(len(LINES[4])))
def test_every_single_byte_flip_is_caught(tmp_path: Path, position: int) -> None:
    line = bytearray(LINES[4])
    line[position] ^= 0x01
    write_log(tmp_path / "broker-a", [*LINES[:4], bytes(line), *LINES[5:]])
    report = verify(tmp_path)
    assert not report.ok
    (log,) = report.logs
    assert log.first_break is not None and log.first_break.seq == 4


def retamper(line: bytes, change: dict[str, object]) -> bytes:
    entry = json.loads(line)
    entry.update(change)
    return canonicalize(entry) + b"\n"


@pytest.mark.parametrize(
    ("change", "detail"),
    [
        ({"reason": "tampered"}, "hash does not match"),
        ({"decision": "DENY"}, "hash does not match"),
        ({"hash": "sha256:" + "0" * 64}, "hash does not match"),
        ({"sig": "ed25519:" + "00" * 64}, "signature does not verify"),
    ],
)
def test_field_hash_and_sig_changes_are_modified(
    tmp_path: Path, change: dict[str, object], detail: str
) -> None:
    write_log(tmp_path / "b", [*LINES[:3], retamper(LINES[3], change), *LINES[4:]])
    report = verify(tmp_path)
    assert_break(report, 3, "modified")
    assert detail in report.to_text()


def test_unparseable_line_is_modified(tmp_path: Path) -> None:
    write_log(tmp_path / "b", [*LINES[:3], b"not json\n", *LINES[3:]])
    assert_break(verify(tmp_path), 3, "modified")


def test_deleted_middle_entry(tmp_path: Path) -> None:
    write_log(tmp_path / "b", [*LINES[:5], *LINES[6:]])
    report = verify(tmp_path)
    assert_break(report, 5, "deleted")
    assert "first break: seq 5 (000001.jsonl:6): deleted — seq 5 missing" in report.to_text()
    assert "audit log BROKEN" in report.to_text()


def test_deleted_last_entries_leave_an_unsealed_but_intact_log(tmp_path: Path) -> None:
    write_log(tmp_path / "b", LINES[:6])  # the result of the third call and what follows are gone
    report = verify(tmp_path)
    assert report.ok
    (log,) = report.logs
    assert not log.sealed
    assert log.unknown_outcome == ((5, "call-0002"),)
    assert "tail not sealed" in report.to_text()
    assert "outcome unknown for call call-0002 (seq 5)" in report.to_text()


def test_inserted_duplicate_entry(tmp_path: Path) -> None:
    write_log(tmp_path / "b", [*LINES[:4], LINES[3], *LINES[4:]])
    assert_break(verify(tmp_path), 4, "inserted")


def test_inserted_copy_ahead_of_its_place(tmp_path: Path) -> None:
    write_log(tmp_path / "b", [*LINES[:3], LINES[5], *LINES[3:]])
    assert_break(verify(tmp_path), 3, "inserted")


def test_duplicate_of_the_last_entry(tmp_path: Path) -> None:
    write_log(tmp_path / "b", [*LINES, LINES[-1]])
    assert_break(verify(tmp_path), 9, "inserted")


def test_swapped_entries(tmp_path: Path) -> None:
    write_log(tmp_path / "b", [*LINES[:3], LINES[4], LINES[3], *LINES[5:]])
    assert_break(verify(tmp_path), 3, "reordered")


def test_forked_entry_with_the_same_seq(tmp_path: Path) -> None:
    # A validly signed alternative history from seq 4 on: seq 4 appears twice with different hashes.
    bodies = entry_bodies(3, "broker-a", KEY)
    bodies[4] = {**bodies[4], "status": 500}
    fork = sealed_lines(bodies, KEY)
    assert fork[:4] == LINES[:4] and fork[4] != LINES[4]
    write_log(tmp_path / "b", [*LINES[:5], fork[4], *LINES[5:]])
    assert_break(verify(tmp_path), 5, "forked")


def test_prev_hash_from_another_history_is_forked(tmp_path: Path) -> None:
    # Entries 4.. re-chained from a different entry 3: seq continues, but the link does not.
    bodies = entry_bodies(3, "broker-a", KEY)
    bodies[3] = {**bodies[3], "status": 500}
    other = sealed_lines(bodies, KEY)
    write_log(tmp_path / "b", [*LINES[:4], *other[4:]])
    assert_break(verify(tmp_path), 4, "forked")


def test_removed_middle_segment(tmp_path: Path) -> None:
    paths = write_log(tmp_path / "b", LINES, segments=3)
    paths[1].unlink()
    assert_break(verify(tmp_path), 3, "deleted")


def test_removed_first_segment_is_truncated(tmp_path: Path) -> None:
    paths = write_log(tmp_path / "b", LINES, segments=3)
    paths[0].unlink()
    assert_break(verify(tmp_path), 0, "truncated")


def test_duplicated_segment(tmp_path: Path) -> None:
    paths = write_log(tmp_path / "b", LINES, segments=3)
    (tmp_path / "b" / "000004.jsonl").write_bytes(paths[1].read_bytes())
    assert_break(verify(tmp_path), 9, "inserted")


def test_segments_out_of_order(tmp_path: Path) -> None:
    paths = write_log(tmp_path / "b", LINES, segments=3)
    first, second = paths[0].read_bytes(), paths[1].read_bytes()
    paths[0].write_bytes(second)
    paths[1].write_bytes(first)
    assert_break(verify(tmp_path), 0, "reordered")


def test_forged_entry_with_an_unknown_key(tmp_path: Path) -> None:
    forger = SigningKey.generate()
    original = json.loads(LINES[6])
    forged = seal({**body_of(original), "kid": forger.kid, "status": 200}, forger)[0]
    write_log(tmp_path / "b", [*LINES[:6], forged, *LINES[7:]])
    report = verify(tmp_path)
    assert_break(report, 6, "unknown_key")
    assert forger.kid in report.to_text()


def test_forged_entry_claiming_a_trusted_key(tmp_path: Path) -> None:
    forger = SigningKey.generate()
    forged = seal({**body_of(json.loads(LINES[6])), "status": 200}, forger)[0]
    write_log(tmp_path / "b", [*LINES[:6], forged, *LINES[7:]])
    assert_break(verify(tmp_path), 6, "modified")


def test_log_resigned_with_another_key(tmp_path: Path) -> None:
    other = SigningKey.generate()
    write_log(tmp_path / "b", make_lines(other))
    assert_break(verify(tmp_path), 0, "unknown_key")
    assert verify(tmp_path, {other.kid: other.public_raw}).ok


def spaced(line: bytes) -> bytes:
    return json.dumps(json.loads(line), sort_keys=True, ensure_ascii=False).encode() + b"\n"


def keys_reversed(line: bytes) -> bytes:
    entry = json.loads(line)
    reordered = dict(reversed(list(entry.items())))
    return json.dumps(reordered, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"


def crlf(line: bytes) -> bytes:
    return line.replace(b"\n", b"\r\n")


def needless_escape(line: bytes) -> bytes:
    return line.replace(b'"ztb-1"', b'"\\u007atb-1"')


@pytest.mark.parametrize("rewrite", [spaced, keys_reversed, crlf, needless_escape])
def test_non_canonical_line(tmp_path: Path, rewrite: Callable[[bytes], bytes]) -> None:
    tampered = rewrite(LINES[2])
    assert tampered != LINES[2] and json.loads(tampered) == json.loads(LINES[2])
    write_log(tmp_path / "b", [*LINES[:2], tampered, *LINES[3:]])
    assert_break(verify(tmp_path), 2, "non_canonical")


def test_torn_tail_is_a_warning(tmp_path: Path) -> None:
    write_log(tmp_path / "b", [*LINES[:-1], LINES[-1][:40]], segments=2)
    report = verify(tmp_path)
    assert report.ok
    (log,) = report.logs
    assert log.torn_tail is not None
    assert (log.torn_tail.segment.name, log.torn_tail.number, log.torn_tail.size) == ("000002.jsonl", 4, 40)
    assert not log.sealed
    assert "torn tail (000002.jsonl:4, 40 bytes)" in report.to_text()
    assert report.to_json()["logs"][0]["torn_tail"]["bytes"] == 40  # type: ignore[index]


def test_unterminated_line_inside_the_log_is_broken(tmp_path: Path) -> None:
    paths = write_log(tmp_path / "b", LINES, segments=3)
    paths[0].write_bytes(paths[0].read_bytes()[:-1])
    assert_break(verify(tmp_path), 2, "non_canonical")


def test_empty_log_is_truncated(tmp_path: Path) -> None:
    write_log(tmp_path / "b", [])
    assert_break(verify(tmp_path), 0, "truncated")


def test_first_entry_must_be_start(tmp_path: Path) -> None:
    bodies = entry_bodies(1, "broker-a", KEY)[1:]
    write_log(tmp_path / "b", sealed_lines(bodies, KEY))
    assert_break(verify(tmp_path), 0, "modified")


def test_entry_of_another_broker(tmp_path: Path) -> None:
    bodies = entry_bodies(1, "broker-a", KEY)
    lines = sealed_lines(bodies[:2], KEY)
    # Same chain position and link, but written by another broker.
    spliced = sealed_lines(bodies, KEY, broker="broker-b")
    prev = json.loads(lines[1])["hash"]
    line, _, _ = seal({**body_of(json.loads(spliced[2])), "prev_hash": prev}, KEY)
    write_log(tmp_path / "b", [*lines, line])
    assert_break(verify(tmp_path), 2, "inserted")


def test_json_report_shape(tmp_path: Path) -> None:
    write_log(tmp_path / "b", [*LINES[:5], *LINES[6:]])
    data = verify(tmp_path).to_json()
    assert data["ok"] is False
    (log,) = data["logs"]  # type: ignore[misc]
    assert log["first_break"] == {
        "seq": 5,
        "segment": str(tmp_path / "b" / "000001.jsonl"),
        "line": 6,
        "category": "deleted",
        "detail": "seq 5 missing",
    }
    json.dumps(data)
