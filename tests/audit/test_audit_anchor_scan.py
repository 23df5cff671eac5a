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

from ztb.audit.anchor import _scan, iter_leaves, read_leaves
from ztb.audit.keys import SigningKey
from ztb.audit.merkle import consistency_proof, subtree_of
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
