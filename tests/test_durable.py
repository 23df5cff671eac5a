"""ztb.durable: appends and atomic replacements, on a real folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from ztb.durable import append_durably, replace_durably


def test_append_creates_then_appends(tmp_path: Path) -> None:
    path = tmp_path / "new" / "notes"
    append_durably(path, b"one\n")
    append_durably(path, b"two\n" * 50_000)  # more than one write() may take
    assert path.read_bytes() == b"one\n" + b"two\n" * 50_000


def test_replace_leaves_the_new_bytes_and_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    path.write_bytes(b"old")
    replace_durably(path, b"new" * 100_000, mode=0o600)
    assert path.read_bytes() == b"new" * 100_000
    assert path.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_a_replace_that_fails_keeps_the_old_file_and_cleans_up(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    path.mkdir()  # os.replace cannot put a file over a folder
    with pytest.raises(OSError):
        replace_durably(path, b"new")
    assert path.is_dir() and [p.name for p in tmp_path.iterdir()] == ["state.json"]
