"""The tamper matrix: every change an attacker can make to a log on disk, each detected with the
first broken seq and its category, by the one-process verifier and by the parallel one (lines
checked on worker processes, the chain judged in order) alike."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from auditlog_builder import make_lines, write_log

from ztb.audit import verify as verify_module
from ztb.audit.entry import body_of, seal
from ztb.audit.keys import SigningKey
from ztb.audit.reader import find_logs
from ztb.audit.verify import LogReport, verify_logs

KEY = SigningKey.generate()
TRUSTED = {KEY.kid: KEY.public_raw}
# seq 0 start; calls at odd seq 1..39, their results at even seq 2..40; 41 a denial; 42 stop.
LINES = make_lines(KEY, calls=20)
SEGMENTS = 3  # 15 + 15 + 13 lines


def flip(line: bytes, marker: bytes, offset: int) -> bytes:
    """Change one byte `offset` bytes after `marker` in the line."""
    at = line.index(marker) + len(marker) + offset
    changed = bytearray(line)
    changed[at] = ord("0") if changed[at] != ord("0") else ord("1")
    return bytes(changed)


def with_line(index: int, line: bytes) -> list[bytes]:
    return [*LINES[:index], line, *LINES[index + 1 :]]


def forged_by_stranger() -> list[bytes]:
    stranger = SigningKey.generate()
    forged = seal({**body_of(json.loads(LINES[22])), "kid": stranger.kid, "status": 200}, stranger)[0]
    return with_line(22, forged)


def non_canonical(index: int, rewrite: Callable[[dict[str, object]], bytes]) -> list[bytes]:
    return with_line(index, rewrite(json.loads(LINES[index])) + b"\n")


def write(lines: list[bytes]) -> Callable[[Path], None]:
    def build(folder: Path) -> None:
        write_log(folder, lines, segments=SEGMENTS)

    return build


def segments_then(change: Callable[[list[Path]], None]) -> Callable[[Path], None]:
    def build(folder: Path) -> None:
        change(write_log(folder, LINES, segments=SEGMENTS))

    return build


def duplicate_second(paths: list[Path]) -> None:
    (paths[0].parent / "000004.jsonl").write_bytes(paths[1].read_bytes())


def swap_first_two(paths: list[Path]) -> None:
    first, second = paths[0].read_bytes(), paths[1].read_bytes()
    paths[0].write_bytes(second)
    paths[1].write_bytes(first)


# name -> (how the log is made, (first broken seq, category))
MATRIX: dict[str, tuple[Callable[[Path], None], tuple[int, str]]] = {
    "byte in a field": (write(with_line(9, flip(LINES[9], b'"identity":"svc.', 2))), (9, "modified")),
    "byte in hash": (write(with_line(12, flip(LINES[12], b'"hash":"sha256:', 40))), (12, "modified")),
    "byte in sig": (write(with_line(14, flip(LINES[14], b'"sig":"ed25519:', 77))), (14, "modified")),
    "entry deleted from the middle": (write([*LINES[:20], *LINES[21:]]), (20, "deleted")),
    "entry inserted": (write([*LINES[:11], LINES[5], *LINES[11:]]), (11, "inserted")),
    "two entries swapped": (write([*LINES[:15], LINES[16], LINES[15], *LINES[17:]]), (15, "reordered")),
    "segment removed": (segments_then(lambda paths: paths[1].unlink()), (15, "deleted")),
    "first segment removed": (segments_then(lambda paths: paths[0].unlink()), (0, "truncated")),
    "segment duplicated": (segments_then(duplicate_second), (43, "inserted")),
    "segments reordered": (segments_then(swap_first_two), (0, "reordered")),
    "entry forged with an unknown key": (write(forged_by_stranger()), (22, "unknown_key")),
    "whole log re-signed with another key": (
        write(make_lines(SigningKey.generate(), calls=20)),
        (0, "unknown_key"),
    ),
    "whitespace changed": (
        write(non_canonical(30, lambda e: json.dumps(e, sort_keys=True).encode())),
        (30, "non_canonical"),
    ),
    "key order changed": (
        write(
            non_canonical(31, lambda e: json.dumps(dict(reversed(e.items())), separators=(",", ":")).encode())
        ),
        (31, "non_canonical"),
    ),
}


def only_log(folder: Path, workers: int) -> LogReport:
    report = verify_logs(find_logs(folder), TRUSTED, workers=workers)
    (log,) = report.logs
    return log


@pytest.mark.parametrize("case", MATRIX)
def test_tampering_is_detected_at_its_seq(tmp_path: Path, case: str) -> None:
    build, (seq, category) = MATRIX[case]
    build(tmp_path / "broker-a")
    log = only_log(tmp_path, workers=1)
    assert not log.ok
    assert log.first_break is not None
    assert (log.first_break.seq, log.first_break.category) == (seq, category), log.first_break


def test_last_entries_deleted_leave_the_tail_unsealed(tmp_path: Path) -> None:
    write_log(tmp_path / "broker-a", LINES[:30], segments=SEGMENTS)
    log = only_log(tmp_path, workers=1)
    assert log.ok and not log.sealed
    assert "tail not sealed: the log ends at seq 29 without a stop" in log.to_text()


def test_parallel_verifier_gives_the_same_answers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every case of the matrix, plus intact, unsealed and torn logs, as brokers of one audit
    folder: verified on two worker processes with tiny chunks (so ranges split segments), the
    reports equal the one-process reports field for field."""
    for number, (build, _) in enumerate(MATRIX.values()):
        build(tmp_path / f"case-{number:02d}")
    write_log(tmp_path / "intact", LINES, segments=SEGMENTS)
    write_log(tmp_path / "unsealed", LINES[:30], segments=SEGMENTS)
    write_log(tmp_path / "torn", [*LINES[:-1], LINES[-1][:50]], segments=SEGMENTS)
    logs = find_logs(tmp_path)
    alone = verify_logs(logs, TRUSTED, workers=1)
    monkeypatch.setattr(verify_module, "PARALLEL_FROM_BYTES", 0)
    monkeypatch.setattr(verify_module, "CHUNK_BYTES", 2000)
    parallel = verify_logs(logs, TRUSTED, workers=2)
    assert parallel.to_json() == alone.to_json()
    by_name = {log.broker: log for log in parallel.logs}
    assert by_name["intact"].ok and by_name["unsealed"].ok and by_name["torn"].ok
    assert by_name["torn"].torn_tail is not None
    assert sum(not log.ok for log in parallel.logs) == len(MATRIX)
