"""Small files made durable: appended or replaced, then fsync'd with their folder.

The audit writer's segments, the anchor's notes and tree state, and the witness's state all
need the same three steps a crash cannot tear: every byte written, the file fsync'd, and a new
or renamed name fsync'd in its folder. Blocking: run these off the event loop.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def write_all(fd: int, data: bytes) -> None:
    """Write every byte of `data` (os.write may take fewer than it is given)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def fsync_folder(folder: Path) -> None:
    """Make a file's creation, removal or renaming in `folder` durable."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def append_durably(path: Path, data: bytes) -> None:
    """Append `data` to `path` and fsync it (and its folder when the file is new)."""
    created = not path.exists()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    if created:
        fsync_folder(path.parent)


def replace_durably(path: Path, data: bytes, *, mode: int = 0o644) -> None:
    """Replace `path` with `data` atomically: readers see the old bytes or the new, never a mix,
    and after a crash the file holds one of the two whole."""
    temporary = path.with_name(f".tmp-{path.name}-{os.getpid()}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.replace(temporary, path)
    except OSError:
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise
    fsync_folder(path.parent)
