"""Controlling a serving broker from outside: find it, ask it to reload, read the answer.

The run file DIR/run/broker.json is how `ztb reload DIR` finds the broker: `ztb serve` creates it, holds an exclusive lock on it for as long as it runs (so a second
broker cannot serve the same deployment and its audit log), and removes it on exit. A file
that nobody holds locked is stale: its broker is gone. It holds the process id and the bound
ports; nothing secret. A reload is SIGHUP to that process (only its owner or root can send
it); its outcome is read back from the admin plane's read-only GET /registry.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ztb.config.errors import ConfigError

RUN_FILE = Path("run") / "broker.json"


class BrokerNotRunning(Exception):
    """No broker serves this deployment; str() is the whole one-line message."""


@dataclass(frozen=True, slots=True)
class RunInfo:
    pid: int
    port: int
    admin: str  # host:port of the admin plane


class RunFile:
    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd = fd

    @classmethod
    @contextlib.contextmanager
    def claim(cls, deployment: Path) -> Iterator[RunFile]:
        """Create and lock the run file for this process; ConfigError if a broker already runs."""
        path = deployment / RUN_FILE
        try:
            path.parent.mkdir(mode=0o700, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise ConfigError(f"{path}: cannot create the run file: {exc.strerror or exc}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise ConfigError(
                f"{path}: another broker is already serving this deployment ({_describe(path)})"
            ) from None
        try:
            os.ftruncate(fd, 0)
            yield cls(path, fd)
        finally:
            with contextlib.suppress(OSError):
                path.unlink()
            os.close(fd)

    def write(self, port: int, admin: str) -> None:
        data = json.dumps({"pid": os.getpid(), "port": port, "admin": admin}).encode() + b"\n"
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, data, 0)


def read_run_file(deployment: Path) -> RunInfo:
    """The serving broker's run facts; BrokerNotRunning when there is none."""
    path = deployment / RUN_FILE
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise BrokerNotRunning(f"no broker is serving {deployment} (no {RUN_FILE})") from None
    except OSError as exc:
        raise BrokerNotRunning(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            pass  # held: the broker is alive
        else:
            raise BrokerNotRunning(f"no broker is serving {deployment} ({path} is stale)")
        try:
            raw = json.loads(os.read(fd, 4096))
            return RunInfo(int(raw["pid"]), int(raw["port"]), str(raw["admin"]))
        except (ValueError, KeyError, TypeError):
            raise BrokerNotRunning(f"{path}: the broker is still starting or the file is damaged") from None
    finally:
        os.close(fd)


def _describe(path: Path) -> str:
    try:
        return f"pid {json.loads(path.read_bytes())['pid']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "still starting"


def admin_get(admin: str, path: str, timeout_s: float = 2.0) -> dict[str, object]:
    """GET a JSON document from the admin plane at host:port (a wildcard host means loopback)."""
    host, _, port = admin.rpartition(":")
    if host in ("0.0.0.0", "::", "[::]", ""):  # noqa: S104 (a wildcard bind is reached on loopback)
        host = "127.0.0.1"
    url = f"http://{host}:{port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as answer:
            data = json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        data = json.loads(exc.read())
    if not isinstance(data, dict):
        raise ValueError(f"{url}: not a JSON object")
    return data


def request_reload(deployment: Path, timeout_s: float = 10.0) -> dict[str, object]:
    """SIGHUP the broker serving `deployment` and wait for the outcome of that reload:
    GET /registry's `last_reload` (applied, sha256, error). BrokerNotRunning, TimeoutError."""
    info = read_run_file(deployment)
    try:
        before = admin_get(info.admin, "/registry")
    except (OSError, ValueError) as exc:
        raise BrokerNotRunning(f"the broker's admin plane at {info.admin} does not answer: {exc}") from None
    seen = before.get("reloads")
    os.kill(info.pid, signal.SIGHUP)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        time.sleep(0.05)
        status = admin_get(info.admin, "/registry")
        last = status.get("last_reload")
        if status.get("reloads") != seen and isinstance(last, dict):
            return last
    raise TimeoutError(f"the broker (pid {info.pid}) did not report a reload within {timeout_s:g} s")
