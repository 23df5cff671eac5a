"""A running broker: loads a deployment, assembles the parts, serves, reloads and stops cleanly.

Start order: configuration and registry (refused whole if invalid), signing keys, the anchor
(the Merkle tree rebuilt from the log, checked against the checkpoints already signed), audit log
(`start`, then `recover` if a torn tail was set aside, then `registry`), token store, upstream
pool, data-plane listener, admin plane. Stop order is the reverse: stop accepting, let calls in
flight finish within the drain deadline, then end the log with `stop` and a last checkpoint that
covers it.

Reload (SIGHUP, or `ztb reload DIR`) goes through `load_registry`, exactly like start: a valid
registry is put in force for calls arriving from then on, with a `registry` entry; an invalid
one is refused whole and the broker keeps serving the one it has.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from ztb import __version__
from ztb.audit.anchor import Anchor, FileSink, Sink
from ztb.audit.checkpoint import origin_of
from ztb.audit.keys import SigningKey
from ztb.audit.note import COSIGNATURE_V1, Verifier
from ztb.audit.writer import AuditWriter
from ztb.broker import Broker
from ztb.config import BrokerConfig, ConfigError, load_broker_config, load_registry
from ztb.config.broker import BROKER_FILE
from ztb.config.broker import FileSink as FileSinkConfig
from ztb.control import RunFile
from ztb.edge.admin import AdminPlane
from ztb.edge.listener import Listener
from ztb.edge.tls import egress_context, server_context
from ztb.edge.upstream import UpstreamPool
from ztb.edge.witness_client import WitnessSink
from ztb.metrics import Metrics
from ztb.oplog import configure, event
from ztb.tokens.memory import MemoryTokenStore
from ztb.tokens.redis import RedisTokenStore, UnsafeRedis
from ztb.tokens.store import TokenStore

log = logging.getLogger("ztb.runtime")
STORE_PING_TIMEOUT_S = 1.0


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


@dataclass(frozen=True, slots=True)
class ReloadResult:
    generation: int  # reload attempts so far, this one included
    applied: bool
    sha256: str  # the registry in force after the attempt
    error: str | None  # why the new registry was refused
    at: float  # wall clock

    def to_json(self) -> dict[str, Any]:
        return {
            "generation": self.generation,
            "applied": self.applied,
            "sha256": self.sha256,
            "error": self.error,
            "at": round(self.at, 3),
        }


def make_anchor(config: BrokerConfig, broker_id: str, log_dir: Path, metrics: Metrics) -> Anchor:
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
        origin_of(config.deployment, broker_id),
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
    broker_id: str  # config.broker_id, suffixed with the worker number when there are several
    broker: Broker
    writer: AuditWriter
    anchor: Anchor
    listener: Listener
    admin: AdminPlane
    metrics: Metrics
    port: int
    admin_port: int
    accepting: bool = True
    last_reload: ReloadResult | None = None
    _reload_lock: asyncio.Lock = field(default_factory=asyncio.Lock)

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
        metrics = Metrics()
        log_dir = config.path(config.audit.dir) / broker_id
        writer = AuditWriter(
            log_dir,
            broker_id,
            key,
            segment_bytes=config.audit.segment_bytes,
            on_batch=metrics.audit_batch,
        )
        anchor = make_anchor(config, broker_id, log_dir, metrics)
        await anchor.start(writer.next_seq)
        writer.on_durable = anchor.on_durable
        await writer.open(version=__version__, registry_sha256=registry.sha256)
        store = await open_store(config)
        pool = UpstreamPool(
            config.path(config.egress.cert),
            config.path(config.egress.key),
            config.tls.min_version,
            config.limits.max_response_bytes,
        )
        broker = Broker(config, registry, store, writer, pool, metrics)
        broker.announce_registry(previous=None)
        listener = Listener(broker, ssl_context, config.limits)
        bound = await listener.start(
            config.listen.host, config.listen.port if port is None else port, reuse_port=config.workers > 1
        )
        running = cls(config, broker_id, broker, writer, anchor, listener, AdminPlane(), metrics, bound, 0)
        running.admin_port = await running.admin.start(config.admin.host, admin_port, running)
        event(
            log,
            logging.INFO,
            "broker_started",
            broker_id=broker_id,
            version=__version__,
            listen=f"{config.listen.host}:{bound}",
            admin=f"{config.admin.host}:{running.admin_port}",
            registry_sha256=registry.sha256,
            audit_seq=writer.next_seq,
        )
        return running

    # -- the admin plane's views ---------------------------------------------------------------

    async def readiness(self) -> dict[str, bool]:
        store = self.broker.store
        try:
            store_ok = await asyncio.wait_for(store.ping(), STORE_PING_TIMEOUT_S)
        except Exception:
            store_ok = False
        if not store_ok:
            self.metrics.store_errors.labels("ping").inc()
        checks = {
            "audit_writable": self.writer.writable,
            "registry_loaded": self.broker.registry is not None,
            "token_store": store_ok,
            "accepting": self.accepting,
            "anchored": self.anchor.ready,
        }
        for check, ok in checks.items():
            self.metrics.ready.labels(check).set(1 if ok else 0)
        return checks

    def render_metrics(self) -> bytes:
        metrics, writer = self.metrics, self.writer
        metrics.audit_writable.set(1 if writer.writable else 0)
        metrics.audit_next_seq.set(writer.next_seq)
        metrics.audit_segment.set(writer.segment)
        metrics.anchor_tree_size.set(self.anchor.tree.size)
        for status in self.anchor.status():
            metrics.anchor_size.labels(status.name).set(status.anchored_size)
            metrics.anchor_lag.labels(status.name).set(status.lag_s)
        return metrics.render()

    def registry_status(self) -> dict[str, Any]:
        last = self.last_reload
        return {
            "sha256": self.broker.registry.sha256,
            "reloads": 0 if last is None else last.generation,
            "last_reload": None if last is None else last.to_json(),
        }

    # -- reload and stop -----------------------------------------------------------------------

    async def reload(self) -> ReloadResult:
        """Load the deployment's registry again; in force for new calls if valid, else refused."""
        async with self._reload_lock:
            generation = 1 if self.last_reload is None else self.last_reload.generation + 1
            current = self.broker.registry
            try:
                registry = await asyncio.to_thread(load_registry, self.config.root)
            except ConfigError as exc:
                self.metrics.reloads.labels("refused").inc()
                event(
                    log,
                    logging.ERROR,
                    "registry_reload_refused",
                    error=str(exc),
                    registry_sha256=current.sha256,
                )
                result = ReloadResult(generation, False, current.sha256, str(exc), time.time())
            else:
                self.broker.use_registry(registry)
                self.metrics.reloads.labels("applied").inc()
                event(
                    log,
                    logging.INFO,
                    "registry_reloaded",
                    registry_sha256=registry.sha256,
                    previous_sha256=current.sha256,
                )
                result = ReloadResult(generation, True, registry.sha256, None, time.time())
            self.last_reload = result
            return result

    async def stop(self, drain_s: float | None = None) -> bool:
        """Stop accepting, finish calls in flight within the deadline, write `stop`; True when
        every call finished and `stop` is durable."""
        deadline = self.config.drain_timeout_s if drain_s is None else drain_s
        self.accepting = False
        event(
            log,
            logging.INFO,
            "broker_draining",
            in_flight=self.broker.in_flight,
            deadline_s=deadline,
        )
        await self.listener.stop_accepting()
        cancelled = await self.listener.drain(deadline)
        await self.broker.upstreams.close()
        await self.broker.store.close()
        sealed = await self.writer.close()
        await self.anchor.close(final=True)
        await self.admin.stop()
        event(
            log,
            logging.INFO if sealed and not cancelled else logging.ERROR,
            "broker_stopped",
            cancelled_calls=cancelled,
            stop_entry_durable=sealed,
            audit_seq=self.writer.next_seq,
        )
        return sealed and not cancelled


async def serve_forever(deployment: Path, *, worker: int | None = None, port: int | None = None) -> bool:
    """Run until SIGTERM or SIGINT (graceful drain); SIGHUP reloads the registry. True when the
    broker stopped cleanly. A worker of `workers: N` (`worker` given) leaves the run file to its
    supervisor, which forwards signals to it."""
    configure(load_broker_config(deployment).log_level)
    claim = RunFile.claim(deployment) if worker is None else contextlib.nullcontext(None)
    with claim as run_file:
        running = await RunningBroker.start(deployment, worker=worker or 0, port=port)
        if run_file is not None:
            run_file.write(running.port, f"{running.config.admin.host}:{running.admin_port}")
        say(
            f"ztb: broker {running.broker_id} serving https://{running.config.listen.host}:{running.port} "
            f"(admin http://{running.config.admin.host}:{running.admin_port})"
        )
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        reloads: set[asyncio.Task[ReloadResult]] = set()

        def on_hup() -> None:
            task = loop.create_task(running.reload())
            reloads.add(task)
            task.add_done_callback(reloads.discard)

        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stopping.set)
        loop.add_signal_handler(signal.SIGHUP, on_hup)
        try:
            await stopping.wait()
        finally:
            for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                with contextlib.suppress(Exception):
                    loop.remove_signal_handler(signum)
            clean = await running.stop()
    say(
        f"ztb: broker {running.broker_id} stopped"
        if clean
        else f"ztb: broker {running.broker_id} stopped, but not cleanly (see the log lines above)"
    )
    return clean


def say(line: str, stream: TextIO | None = None) -> None:
    """One line in one write, so the lines of workers sharing a terminal or pipe never interleave
    (print writes the text and the newline apart when Python runs unbuffered)."""
    out = sys.stdout if stream is None else stream
    out.write(line + "\n")
    out.flush()
