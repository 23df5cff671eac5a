"""`ztb demo` as a user runs it: every step behaves, including the anchoring step."""

from __future__ import annotations

import subprocess
import sys


def test_demo_behaves_and_shows_anchoring() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "ztb", "demo"], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Everything behaved" in result.stdout
    assert "cosigned up to size" in result.stdout
    assert "proved in the checkpoint of size" in result.stdout
    assert "chain alone says intact; with checkpoints: truncated" in result.stdout
