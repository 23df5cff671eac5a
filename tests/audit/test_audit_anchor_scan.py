"""How the anchor reads a log at start and for a lagging witness (`anchor._scan`): one pass, one
segment in memory at a time, the tree's right edge and only the leaves a proof may need.

Checked against the whole tree held in memory (`subtree_of` over every leaf): the size, the root
at a signed size, and every consistency proof the kept window can give, including when the window
had to fold leaves into its edge to stay within its bound.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from auditlog_builder import make_lines, write_log

from ztb.audit.anchor import (
    _NoResume,
    _resume,
    _scan,
    iter_leaves,
    largest_signed,
    load_tree_state,
    read_leaves,
    read_recent_notes,
    save_tree_state,
)
from ztb.audit.checkpoint import Checkpoint, sign_checkpoint
from ztb.audit.keys import SigningKey
from ztb.audit.merkle import CompactRange, consistency_proof, subtree_of
from ztb.audit.note import ED25519, Verifier
from ztb.config.errors import ConfigError


@pytest.fixture(scope="module")
def log(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[bytes]]:
    folder = tmp_path_factory.mktemp("log") / "broker-a"
    write_log(folder, make_lines(SigningKey.generate(), calls=60), segments=4)  # 123 entries
    leaves = read_leaves(folder)
    assert len(leaves) == 123
    return folder, leaves


@pytest.mark.parametrize("keep_from", [0, 1, 50, 122, 123, 500])
@pytest.mark.parametrize("max_window", [None, 4, 16, 1000])
def test_one_pass_gives_the_tree_the_root_and_the_window(
    log: tuple[Path, list[bytes]], keep_from: int, max_window: int | None
) -> None:
    folder, leaves = log
    whole = subtree_of(leaves)
    scan = _scan(folder, 77, keep_from, max_window)
    assert scan.tree.size == len(leaves) and scan.tree.root() == whole(0, len(leaves))
    assert scan.root_at == whole(0, 77)
    window = scan.window
    assert window.end == len(leaves)
    if max_window is None:
        assert window.base == min(keep_from, len(leaves))  # everything from keep_from is kept
    else:  # never more than twice the bound, and never from before keep_from
        assert min(keep_from, len(leaves)) <= window.base and window.end - window.base <= 2 * max_window
    assert window.edge.root() == whole(0, window.base)
    for old in range(max(window.base, 1), window.end + 1, 7):  # no proof from the empty tree
        for new in (old, (old + window.end) // 2, window.end):
            assert window.consistency(old, new) == consistency_proof(old, new, whole)


def test_a_root_asked_beyond_the_log_is_none(log: tuple[Path, list[bytes]]) -> None:
    folder, _ = log
    assert _scan(folder, 124, 0, None).root_at is None
    assert _scan(folder, 0, 0, None).root_at == subtree_of([])(0, 0)


def test_a_damaged_line_stops_the_scan_with_a_clear_error(tmp_path: Path) -> None:
    lines = make_lines(SigningKey.generate(), calls=3)
    lines[4] = b'["not", "an", "entry"]\n'
    folder = tmp_path / "broker-a"
    write_log(folder, lines)
    with pytest.raises(ConfigError, match="entry 4 is damaged"):
        list(iter_leaves(folder))
    lines[4] = b"{not json\n"
    write_log(tmp_path / "broker-b", lines)
    with pytest.raises(ConfigError, match="broker-b"):
        list(iter_leaves(tmp_path / "broker-b"))


# -- resuming from a saved right edge (`anchor._resume`) ------------------------------------------


def _saved(folder: Path, leaves: list[bytes], size: int) -> tuple[CompactRange, str]:
    edge = CompactRange()
    edge.extend(leaves[:size])
    return edge, "sha256:" + leaves[size - 1].hex()


@pytest.mark.parametrize("size", [1, 2, 30, 31, 32, 33, 61, 62, 100, 122, 123])
def test_resuming_gives_what_a_whole_pass_gives(log: tuple[Path, list[bytes]], size: int) -> None:
    """From every kind of place: the first entry, a segment's first or last line, the log's end
    (123 entries in 4 segments of 31, 31, 31 and 30 lines)."""
    folder, leaves = log
    edge, tail = _saved(folder, leaves, size)
    resumed = _resume(folder, edge, tail, 123, max(size, 110))
    whole = _scan(folder, 123, max(size, 110), 1 << 20)
    assert resumed.tree.root() == whole.tree.root() and resumed.tree.size == 123
    assert resumed.root_at == whole.root_at == subtree_of(leaves)(0, 123)
    assert (resumed.window.base, resumed.window.data) == (whole.window.base, whole.window.data)
    assert resumed.tail_hash == whole.tail_hash == "sha256:" + leaves[-1].hex()


def test_a_saved_state_the_log_does_not_continue_is_not_resumed(log: tuple[Path, list[bytes]]) -> None:
    folder, leaves = log
    edge, _ = _saved(folder, leaves, 40)
    with pytest.raises(_NoResume):
        _resume(folder, edge, "sha256:" + "00" * 32, 123, 123)  # entry 39 is another one
    beyond, _ = _saved(folder, [*leaves, b"\x07" * 32], 124)
    with pytest.raises(_NoResume):
        _resume(folder, beyond, "sha256:" + "07" * 32, 123, 124)  # the log stops before it


def test_a_damaged_line_before_the_resume_point_gives_up_resuming(tmp_path: Path) -> None:
    lines = make_lines(SigningKey.generate(), calls=10)
    folder = tmp_path / "broker-a"
    write_log(folder, lines)
    leaves = read_leaves(folder)
    lines[3] = b"{damaged\n"  # in the segment the resume point lies in, before it
    write_log(folder, lines)
    edge, tail = _saved(folder, leaves, 10)
    with pytest.raises(_NoResume):
        _resume(folder, edge, tail, 10, 10)


def test_the_tree_state_file_round_trips_and_refuses_what_is_not_one(tmp_path: Path) -> None:
    edge = CompactRange()
    edge.extend([bytes([n]) * 32 for n in range(13)])
    path = tmp_path / "tree.json"
    save_tree_state(path, edge, "sha256:" + "ab" * 32)
    loaded = load_tree_state(path)
    assert loaded is not None and loaded[0].nodes == edge.nodes and loaded[0].size == 13
    assert loaded[1] == "sha256:" + "ab" * 32
    for broken in (b"", b"{}", b'{"size": 13, "nodes": ["00"], "tail_hash": "x"}', b"[1]"):
        path.write_bytes(broken)
        assert load_tree_state(path) is None
    assert load_tree_state(tmp_path / "absent.json") is None


# -- what a start reads of a notes file (`anchor.read_recent_notes`) -------------------------------


def test_a_start_reads_only_the_end_of_a_long_notes_file(tmp_path: Path) -> None:
    key = SigningKey.generate()
    verifier = Verifier("dev/broker-a", ED25519, key.public_raw)
    path = tmp_path / "checkpoints.notes"
    notes = [
        sign_checkpoint(Checkpoint("dev/broker-a", size, bytes([size % 256]) * 32), key)
        for size in range(1, 2001)
    ]
    path.write_text("".join(note.encode() + "\n" for note in notes))
    assert len(read_recent_notes(path)) == 2000  # a small file: all of it
    for tail in (4096, 4097, 5000, 20_000):  # cuts anywhere: inside a note, inside the "—"
        recent = read_recent_notes(path, tail)
        assert recent and recent == notes[-len(recent) :]  # whole notes, the last ones
        assert len(recent) < 2000
        latest = largest_signed(recent, verifier)
        assert latest is not None and latest.size == 2000
    assert read_recent_notes(tmp_path / "absent.notes") == []
