"""Real Redis servers for the token-store tests.

`shared_redis_url` is the machine's Redis on 127.0.0.1:6379 (other engineers' tests use it too, so
every test works in a namespace of its own and never stops it). `RedisServer` is a private
`redis-server` on a free port that a test may stop, restart and pause, run without persistence
like the CI Redis unless told otherwise.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path

import pytest

SHARED = ("127.0.0.1", 6379)


def redis_required() -> bool:
    return os.environ.get("ZTB_REQUIRE_REDIS") == "1"


def unavailable(why: str) -> None:
    """Skip, or fail where Redis must be there (CI sets ZTB_REQUIRE_REDIS=1)."""
    if redis_required():
        pytest.fail(f"Redis is required (ZTB_REQUIRE_REDIS=1): {why}")
    pytest.skip(why)


def answers_ping(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def shared_redis_url() -> str:
    if not answers_ping(*SHARED):
        unavailable("no Redis on 127.0.0.1:6379")
    return "redis://127.0.0.1:6379/0"


def namespace() -> str:
    """A deployment name of its own, so parallel tests never share keys."""
    return f"test-{uuid.uuid4().hex[:12]}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    def __init__(self, folder: Path, *args: str) -> None:
        if shutil.which("redis-server") is None:
            unavailable("no redis-server binary")
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.args = args or ("--save", "", "--appendonly", "no")
        self.process: subprocess.Popen[bytes] | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.folder),
                "--logfile",
                str(self.folder / "redis.log"),
                *self.args,
            ],
            stdout=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while not answers_ping("127.0.0.1", self.port):
            assert self.process.poll() is None, f"redis-server exited: {self.folder / 'redis.log'}"
            assert time.monotonic() < deadline, "redis-server did not answer within 10 s"
            time.sleep(0.02)

    def stop(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGCONT)  # in case it was paused
            self.process.terminate()
            self.process.wait(10)
            self.process = None

    def pause(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)
