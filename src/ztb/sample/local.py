"""A whole development deployment on this machine: `ztb init` files, the sample upstream and the
broker, on free loopback ports, running on an event loop in a background thread.

Used by `ztb demo`, the tests and the benchmarks, so each of them exercises the same real
parts a user runs. Callers talk to it over real TLS from the foreground thread.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

from ztb.client import AsyncClient, Client
from ztb.deploy import init_deployment
from ztb.runtime import RunningBroker
from ztb.sample.upstream import SampleUpstream

T = TypeVar("T")
SAMPLE_UPSTREAM = "orders.api.internal"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LoopThread:
    """An asyncio loop in a daemon thread; `run` executes a coroutine there and waits, bounded."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="ztb-local", daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)


class LocalDeployment:
    def __init__(self, root: Path, *, start: bool = True) -> None:
        self.root = root
        self.upstream_port = free_port()
        init_deployment(root, broker_port=0, admin_port=0, upstream_port=self.upstream_port)
        self.loop = LoopThread()
        up = root / "upstreams" / SAMPLE_UPSTREAM
        self.upstream = SampleUpstream(
            up / "cert.pem", up / "key.pem", root / "ca" / "ca.pem", port=self.upstream_port
        )
        self.broker: RunningBroker | None = None
        if start:
            self.loop.run(self.upstream.start())
            self.start_broker()

    def start_broker(self) -> None:
        self.broker = self.loop.run(RunningBroker.start(self.root))

    def stop_broker(self) -> None:
        if self.broker is not None:
            self.loop.run(self.broker.stop(drain_s=2))
            self.broker = None

    def close(self) -> None:
        self.stop_broker()
        self.loop.run(self.upstream.stop())
        self.loop.stop()

    @property
    def port(self) -> int:
        assert self.broker is not None, "the broker is not running"
        return self.broker.port

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def log_dir(self) -> Path:
        return self.root / "audit" / "broker-a"

    def caller(self, identity: str = "svc.checkout") -> Client:
        """A `ztb.client.Client` (with the low-level `Caller` API) for a sample identity."""
        return Client.for_identity(self.root, identity, self.url)

    def async_client(self, identity: str = "svc.checkout") -> AsyncClient:
        return AsyncClient.for_identity(self.root, identity, self.url)
