"""Finding logs in a deployment, an audit folder or one log folder; reading lines and entries."""

from __future__ import annotations

from pathlib import Path

import pytest
from auditlog_builder import make_lines, write_deployment, write_log

from ztb.audit.keys import SigningKey
from ztb.audit.reader import LogNotFound, LogReadError, find_logs, read_entries, read_lines
from ztb.config import ConfigError

KEY = SigningKey.generate()
LINES = make_lines(KEY, calls=1)


def test_audit_folder(tmp_path: Path) -> None:
    a = write_log(tmp_path / "broker-a", LINES, segments=2)
    b = write_log(tmp_path / "broker-b", LINES)
    (tmp_path / "notes").mkdir()
    assert find_logs(tmp_path) == {"broker-a": a, "broker-b": b}


def test_one_log_folder(tmp_path: Path) -> None:
    segments = write_log(tmp_path / "broker-a", LINES, segments=3)
    assert find_logs(tmp_path / "broker-a") == {"broker-a": segments}


def test_segments_are_read_in_name_order(tmp_path: Path) -> None:
    folder = tmp_path / "broker-a"
    folder.mkdir()
    for name in ("000010.jsonl", "000002.jsonl", "000001.jsonl"):
        (folder / name).write_bytes(b"")
    (folder / "000001.jsonl.torn-12").write_bytes(b"x")
    assert [path.name for path in find_logs(folder)["broker-a"]] == [
        "000001.jsonl",
        "000002.jsonl",
        "000010.jsonl",
    ]


@pytest.mark.parametrize("audit_dir", [None, "logs"])
def test_deployment_folder(tmp_path: Path, audit_dir: str | None) -> None:
    write_deployment(tmp_path, audit_dir)
    segments = write_log(tmp_path / (audit_dir or "audit") / "broker-a", LINES)
    assert find_logs(tmp_path) == {"broker-a": [path.resolve() for path in segments]}


def test_nothing_found(tmp_path: Path) -> None:
    with pytest.raises(LogNotFound, match="no such folder"):
        find_logs(tmp_path / "missing")
    with pytest.raises(LogNotFound, match="no audit logs"):
        find_logs(tmp_path)
    write_deployment(tmp_path, None)
    with pytest.raises(LogNotFound, match="no audit folder"):
        find_logs(tmp_path)
    (tmp_path / "broker.yaml").write_text("broker_id: [\n")
    with pytest.raises(ConfigError):
        find_logs(tmp_path)


def test_torn_tail_is_set_apart(tmp_path: Path) -> None:
    segments = write_log(tmp_path / "b", [*LINES, b'{"v":"ztb-1","ki'], segments=2)
    lines, torn = read_lines(segments)
    assert len(lines) == len(LINES)
    assert torn is not None and (torn.segment, torn.number, torn.size) == (segments[1], 3, 16)
    assert [entry["seq"] for entry in read_entries(segments)] == list(range(len(LINES)))


def test_unreadable_line(tmp_path: Path) -> None:
    segments = write_log(tmp_path / "b", [LINES[0], b"[1]\n"])
    with pytest.raises(LogReadError, match=r"000001\.jsonl:2: not a JSON object"):
        list(read_entries(segments))
