"""A running broker: loads a deployment, assembles the parts, serves, and stops cleanly.

Start order: configuration and registry (refused whole if invalid), signing key, audit log
(`start`, then `recover` if a torn tail was set aside), token store, upstream pool, data-plane
listener, admin plane. Stop order is the reverse, ending with the `stop` entry.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from ztb import __version__
from ztb.audit.keys import SigningKey
from ztb.audit.writer import AuditWriter
from ztb.broker import Broker
from ztb.config import BrokerConfig, ConfigError, load_broker_config, load_registry
from ztb.config.broker import BROKER_FILE
from ztb.edge.admin import AdminPlane
from ztb.edge.listener import Listener
from ztb.edge.tls import server_context
from ztb.edge.upstream import UpstreamPool
from ztb.metrics import Metrics
from ztb.tokens.memory import MemoryTokenStore
from ztb.tokens.redis import RedisTokenStore, UnsafeRedis
from ztb.tokens.store import TokenStore


async def open_store(config: BrokerConfig) -> TokenStore:
    """The configured token store. A Redis server that is down is not an error here (calls are
    refused until it answers); one whose persistence could bring back consumed tokens is."""
    if config.token_store == "memory":
        return MemoryTokenStore()
    store = RedisTokenStore(
        config.token_store, config.deployment, min_replicas=config.token_store_min_replicas
    )
    try:
        await store.check_server()
    except UnsafeRedis as exc:
        await store.close()
        raise ConfigError(f"{config.root / BROKER_FILE}: token_store: {exc}") from None
    return store


@dataclass
class RunningBroker:
    config: BrokerConfig
    broker_id: str  # config.broker_id, suffixed with the worker number when there are several
    broker: Broker
    writer: AuditWriter
    listener: Listener
    admin: AdminPlane
    metrics: Metrics
    port: int
    admin_port: int

    @classmethod
    async def start(
        cls, deployment: Path, *, port: int | None = None, admin_port: int | None = None, worker: int = 0
    ) -> RunningBroker:
        """Start the broker of `deployment`; with `workers` > 1 in its broker.yaml, worker number
        `worker` of them: broker id `<broker_id>-<worker>`, admin port + `worker`, and a data
        port shared with the other workers (SO_REUSEPORT)."""
        config = load_broker_config(deployment)
        if not 0 <= worker < config.workers:
            raise ConfigError(f"{deployment / BROKER_FILE}: workers: no worker {worker} of {config.workers}")
        broker_id = config.worker_id(worker)
        if admin_port is None:
            admin_port = config.admin.port + worker if config.admin.port else 0
        registry = load_registry(deployment)
        key = SigningKey.load(config.path(config.audit.signing_key))
        try:
            ssl_context = server_context(
                config.path(config.tls.cert),
                config.path(config.tls.key),
                config.path(config.tls.client_ca),
                config.tls.min_version,
            )
        except (OSError, ValueError) as exc:
            raise ConfigError(
                f"{config.root / 'broker.yaml'}: tls: cannot load certificates: {exc}"
            ) from None
        writer = AuditWriter(config.path(config.audit.dir) / broker_id, broker_id, key)
        await writer.open(version=__version__, registry_sha256=registry.sha256)
        writer.append("registry", {"registry_sha256": registry.sha256, "approvers": None})
        store = await open_store(config)
        pool = UpstreamPool(
            config.path(config.egress.cert),
            config.path(config.egress.key),
            config.tls.min_version,
            config.limits.max_response_bytes,
        )
        metrics = Metrics()
        broker = Broker(config, registry, store, writer, pool, metrics)
        listener = Listener(broker, ssl_context, config.limits)
        bound = await listener.start(
            config.listen.host, config.listen.port if port is None else port, reuse_port=config.workers > 1
        )

        async def readiness() -> dict[str, bool]:
            try:
                store_ok = await asyncio.wait_for(store.ping(), 1.0)
            except Exception:
                store_ok = False
            return {"audit_writable": writer.writable, "token_store": store_ok, "registry_loaded": True}

        def render() -> bytes:
            metrics.audit_writable.set(1 if writer.writable else 0)
            metrics.audit_next_seq.set(writer.next_seq)
            return metrics.render()

        metrics.registry_info.labels(registry.sha256).set(1)
        admin = AdminPlane(readiness, render)
        admin_bound = await admin.start(config.admin.host, admin_port)
        return cls(config, broker_id, broker, writer, listener, admin, metrics, bound, admin_bound)

    async def stop(self, drain_s: float = 10.0) -> None:
        await self.listener.stop_accepting()
        await self.listener.drain(drain_s)
        await self.admin.stop()
        await self.broker.upstreams.close()
        await self.broker.store.close()
        await self.writer.close()


async def serve_forever(deployment: Path, *, worker: int = 0, port: int | None = None) -> None:
    running = await RunningBroker.start(deployment, worker=worker, port=port)
    say(
        f"ztb: broker {running.broker_id} serving https://{running.config.listen.host}:{running.port} "
        f"(admin http://{running.config.admin.host}:{running.admin_port})"
    )
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    try:
        await stopping.wait()
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(signum)
        await running.stop()
    say(f"ztb: broker {running.broker_id} stopped")


def say(line: str, stream: TextIO | None = None) -> None:
    """One line in one write, so the lines of workers sharing a terminal or pipe never interleave
    (print writes the text and the newline apart when Python runs unbuffered)."""
    out = sys.stdout if stream is None else stream
    out.write(line + "\n")
    out.flush()
