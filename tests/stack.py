"""A real deployment under test: `ztb init` files, the recording sample upstream and the broker,
running on their own event loop in a background thread, on free loopback ports.

Tests talk to it over real TLS sockets with `ztb.client.Caller` or raw `ssl` sockets, read what
the upstream received (`upstream.received`) and read the audit log from disk.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

from ztb.client import Caller
from ztb.deploy import init_deployment
from ztb.runtime import RunningBroker
from ztb.sample.upstream import SampleUpstream

T = TypeVar("T")
UPSTREAM = "orders.api.internal"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LoopThread:
    """An asyncio loop in a daemon thread; `run` executes a coroutine there and waits, bounded."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)


class Stack:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.upstream_port = free_port()
        init_deployment(root, broker_port=0, admin_port=0, upstream_port=self.upstream_port)
        self.loop = LoopThread()
        up = root / "upstreams" / UPSTREAM
        self.upstream = SampleUpstream(up / "cert.pem", up / "key.pem", root / "ca" / "ca.pem", port=self.upstream_port)
        self.loop.run(self.upstream.start())
        self.broker: RunningBroker | None = None
        self.start_broker()

    # -- lifecycle ---------------------------------------------------------------------------

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
        assert self.broker is not None
        return self.broker.port

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def caller(self, identity: str = "svc.checkout") -> Caller:
        return Caller.for_identity(self.root, identity, self.url)

    # -- the audit log -----------------------------------------------------------------------

    @property
    def log_dir(self) -> Path:
        return self.root / "audit" / "broker-a"

    def entries(self) -> list[dict[str, Any]]:
        lines: list[dict[str, Any]] = []
        for segment in sorted(self.log_dir.glob("*.jsonl")):
            lines.extend(json.loads(line) for line in segment.read_bytes().splitlines())
        return lines

    def wait_for(self, predicate: Any, timeout: float = 5.0) -> list[dict[str, Any]]:
        """Entries matching `predicate`, waiting (bounded) for the group commit that writes them."""
        deadline = time.monotonic() + timeout
        while True:
            found = [entry for entry in self.entries() if predicate(entry)]
            if found or time.monotonic() > deadline:
                return found
            time.sleep(0.01)

    def entry_of(self, call_id: str, kind: str = "call") -> dict[str, Any]:
        found = self.wait_for(lambda e: e.get("call_id") == call_id and e["kind"] == kind)
        assert len(found) == 1, f"expected one {kind} entry for {call_id}, found {len(found)}"
        return found[0]
