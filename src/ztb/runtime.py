"""A running broker: loads a deployment, assembles the parts, serves, and stops cleanly.

Start order: configuration and registry (refused whole if invalid), signing keys, the anchor
(the Merkle tree rebuilt from the log, checked against the checkpoints already signed), audit log
(`start`, then `recover` if a torn tail was set aside), token store, upstream pool, data-plane
listener, admin plane. Stop order is the reverse, ending with the `stop` entry and a last
checkpoint that covers it.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from dataclasses import dataclass
from pathlib import Path

from ztb import __version__
from ztb.audit.anchor import Anchor, FileSink, Sink
from ztb.audit.checkpoint import origin_of
from ztb.audit.keys import SigningKey
from ztb.audit.note import COSIGNATURE_V1, Verifier
from ztb.audit.writer import AuditWriter
from ztb.broker import Broker
from ztb.config import BrokerConfig, ConfigError, load_broker_config, load_registry
from ztb.config.broker import FileSink as FileSinkConfig
from ztb.edge.admin import AdminPlane
from ztb.edge.listener import Listener
from ztb.edge.tls import egress_context, server_context
from ztb.edge.upstream import UpstreamPool
from ztb.edge.witness_client import WitnessSink
from ztb.metrics import Metrics
from ztb.tokens.memory import MemoryTokenStore
from ztb.tokens.store import TokenStore


def make_store(config: BrokerConfig) -> TokenStore:
    if config.token_store == "memory":
        return MemoryTokenStore()
    raise ConfigError(
        f"{config.root / 'broker.yaml'}: token_store: the Redis store is not available in this build"
    )


def make_anchor(config: BrokerConfig, log_dir: Path, metrics: Metrics) -> Anchor:
    """The anchor of this broker's log, with the sinks of broker.yaml's `anchor` section."""
    where = f"{config.root / 'broker.yaml'}: anchor"
    sinks: list[Sink] = []
    for sink in config.anchor.sinks:
        if isinstance(sink, FileSinkConfig):
            sinks.append(FileSink(config.path(sink.file)))
            continue
        vkey_path = config.path(sink.vkey)
        try:
            verifier = Verifier.parse(vkey_path.read_text(encoding="ascii"))
            context = egress_context(
                config.path(config.egress.cert),
                config.path(config.egress.key),
                config.path(sink.ca),
                config.tls.min_version,
            )
        except (OSError, ValueError) as exc:  # NoteError is a ValueError
            raise ConfigError(f"{where}: witness {sink.witness}: {exc}") from None
        if verifier.signature_type != COSIGNATURE_V1:
            raise ConfigError(f"{where}: witness {sink.witness}: {vkey_path} is not a cosignature/v1 key")
        sinks.append(WitnessSink(sink.witness, context, verifier, sink.timeout_s))
    return Anchor(
        log_dir,
        origin_of(config.deployment, config.broker_id),
        SigningKey.load(config.path(config.anchor.checkpoint_key)),
        sinks,
        every_entries=config.anchor.every_entries,
        every_s=config.anchor.every_s,
        max_lag_s=config.anchor.max_lag_s,
        on_failure=lambda name: metrics.anchor_failures.labels(name).inc(),
    )


@dataclass
class RunningBroker:
    config: BrokerConfig
    broker: Broker
    writer: AuditWriter
    anchor: Anchor
    listener: Listener
    admin: AdminPlane
    metrics: Metrics
    port: int
    admin_port: int

    @classmethod
    async def start(
        cls, deployment: Path, *, port: int | None = None, admin_port: int | None = None
    ) -> RunningBroker:
        config = load_broker_config(deployment)
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
        log_dir = config.path(config.audit.dir) / config.broker_id
        writer = AuditWriter(log_dir, config.broker_id, key)
        metrics = Metrics()
        anchor = make_anchor(config, log_dir, metrics)
        await anchor.start(writer.next_seq)
        writer.on_durable = anchor.on_durable
        await writer.open(version=__version__, registry_sha256=registry.sha256)
        writer.append("registry", {"registry_sha256": registry.sha256, "approvers": None})
        store = make_store(config)
        pool = UpstreamPool(
            config.path(config.egress.cert),
            config.path(config.egress.key),
            config.tls.min_version,
            config.limits.max_response_bytes,
        )
        broker = Broker(config, registry, store, writer, pool, metrics)
        listener = Listener(broker, ssl_context, config.limits)
        bound = await listener.start(config.listen.host, config.listen.port if port is None else port)

        async def readiness() -> dict[str, bool]:
            try:
                store_ok = await asyncio.wait_for(store.ping(), 1.0)
            except Exception:
                store_ok = False
            return {
                "audit_writable": writer.writable,
                "token_store": store_ok,
                "registry_loaded": True,
                "anchored": anchor.ready,
            }

        def render() -> bytes:
            metrics.audit_writable.set(1 if writer.writable else 0)
            metrics.audit_next_seq.set(writer.next_seq)
            metrics.anchor_tree_size.set(anchor.tree.size)
            for status in anchor.status():
                metrics.anchor_size.labels(status.name).set(status.anchored_size)
                metrics.anchor_lag.labels(status.name).set(status.lag_s)
            return metrics.render()

        metrics.registry_info.labels(registry.sha256).set(1)
        admin = AdminPlane(readiness, render)
        admin_bound = await admin.start(
            config.admin.host, config.admin.port if admin_port is None else admin_port
        )
        return cls(config, broker, writer, anchor, listener, admin, metrics, bound, admin_bound)

    async def stop(self, drain_s: float = 10.0) -> None:
        await self.listener.stop_accepting()
        await self.listener.drain(drain_s)
        await self.admin.stop()
        await self.broker.upstreams.close()
        await self.broker.store.close()
        await self.writer.close()
        await self.anchor.close(final=True)


async def serve_forever(deployment: Path) -> None:
    running = await RunningBroker.start(deployment)
    print(
        f"ztb: broker {running.config.broker_id} serving https://{running.config.listen.host}:{running.port} "
        f"(admin http://{running.config.admin.host}:{running.admin_port})",
        flush=True,
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
    print("ztb: stopped", flush=True)
