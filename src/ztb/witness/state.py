"""The witness's memory: the latest cosigned checkpoint of each log, on disk, replaced atomically.

One JSON file per origin (named by the SHA-256 of the origin). A new state is written to a
temporary file, fsync'd, renamed over the old one and the folder fsync'd, so a crash or SIGKILL
at any instant leaves either the old state or the new one, never a mix. Compare-and-swap is
completed by the server, which holds one lock across the check of the stored size and the write
of the new state (the race tlog-witness warns about); a lock file keeps a second witness process
off the same folder. It never decides what to cosign (service.py does).
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from ztb.config.errors import ConfigError
from ztb.durable import replace_durably

__all__ = ["StateStore", "Stored"]

LOCK_FILE = ".lock"


@dataclass(frozen=True, slots=True)
class Stored:
    origin: str
    size: int
    root: bytes
    checkpoint: str  # the whole note the witness cosigned, with the log's signature and its own

    def to_json(self) -> dict[str, object]:
        return {
            "origin": self.origin,
            "size": self.size,
            "root": base64.b64encode(self.root).decode("ascii"),
            "checkpoint": self.checkpoint,
        }


class StateStore:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._lock_fd = -1

    def open(self) -> None:
        """Take the folder for this process (ConfigError if another witness holds it) and clear
        temporary files a killed process left behind."""
        self.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.folder / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise ConfigError(f"{self.folder}: another witness process uses this state folder") from None
        self._lock_fd = fd
        for leftover in self.folder.glob(".tmp-*"):
            leftover.unlink(missing_ok=True)
        for path in self.folder.glob("*.json"):
            self._load(path)  # refuse to start on a state that cannot be read

    def close(self) -> None:
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1

    def _path(self, origin: str) -> Path:
        return self.folder / (hashlib.sha256(origin.encode("utf-8")).hexdigest()[:32] + ".json")

    def read(self, origin: str) -> Stored | None:
        path = self._path(origin)
        if not path.exists():
            return None
        stored = self._load(path)
        if stored.origin != origin:
            raise ConfigError(f"{path}: holds the state of {stored.origin!r}, not {origin!r}")
        return stored

    def _load(self, path: Path) -> Stored:
        try:
            data = json.loads(path.read_bytes())
            return Stored(
                str(data["origin"]),
                int(data["size"]),
                base64.b64decode(data["root"]),
                str(data["checkpoint"]),
            )
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"{path}: unreadable witness state: {exc}") from None

    def write(self, stored: Stored) -> None:
        """Replace the state of `stored.origin`, durably and atomically (blocking: run it off the loop)."""
        path = self._path(stored.origin)
        data = json.dumps(stored.to_json(), indent=2).encode("utf-8") + b"\n"
        replace_durably(path, data, mode=0o600)
