"""broker.yaml -> a frozen BrokerConfig: where this instance listens, its keys, its limits.

Deployment facts, not policy. Every limit of SPEC §2 is a setting here with the SPEC's default
and a bounded range: a limit can be tuned, never switched off. Paths are resolved against the
deployment folder at load, so nothing downstream sees a relative path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from ztb.config.errors import ConfigError, from_validation
from ztb.config.model import Frozen
from ztb.oplog import LogLevel

BROKER_FILE = "broker.yaml"


class Listen(Frozen):
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)]


class ServerTLS(Frozen):
    cert: Path
    key: Path
    client_ca: Path
    # TLS 1.2 only with forward-secret AEAD suites; 1.3 is the default and the recommendation.
    min_version: Literal["1.3", "1.2"] = "1.3"


class EgressTLS(Frozen):
    cert: Path
    key: Path


class Audit(Frozen):
    dir: Path = Path("audit")
    signing_key: Path = Path("keys/audit.key")
    durability_timeout_ms: Annotated[int, Field(ge=10, le=10_000)] = 1000
    # A segment is closed and the next one started once a group commit takes it past this size.
    segment_bytes: Annotated[int, Field(ge=16 * 1024, le=1024**3)] = 64 * 1024 * 1024


class FileSink(Frozen):
    """`file:` anchor: every checkpoint is appended to this file (put it on another host or mount)."""

    file: Path


class WitnessSink(Frozen):
    """`witness:` anchor: a C2SP tlog-witness at this https URL prefix, reached over mTLS with the
    broker's egress certificate; its server certificate must chain to `ca`, and its cosignatures
    must verify under the verifier key in the file `vkey`."""

    witness: str
    ca: Path
    vkey: Path
    timeout_s: Annotated[float, Field(gt=0, le=60)] = 5

    @field_validator("witness")
    @classmethod
    def _https_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme != "https" or not parts.hostname or parts.query or parts.fragment:
            raise ValueError("must be an https://host[:port][/prefix] URL")
        return value.rstrip("/")


class Anchor(Frozen):
    """Checkpoints of the log's Merkle tree, signed with their own key and sent to the sinks."""

    checkpoint_key: Path = Path("keys/checkpoint.key")
    every_entries: Annotated[int, Field(ge=1, le=1_000_000)] = 1000
    every_s: Annotated[float, Field(ge=0.05, le=3600)] = 5
    max_lag_s: Annotated[float, Field(ge=1, le=86_400)] = 60
    sinks: tuple[FileSink | WitnessSink, ...] = ()


class Limits(Frozen):
    header_timeout_s: Annotated[float, Field(gt=0, le=60)] = 10
    body_timeout_s: Annotated[float, Field(gt=0, le=120)] = 30
    idle_timeout_s: Annotated[float, Field(gt=0, le=300)] = 75
    max_headers: Annotated[int, Field(ge=8, le=256)] = 64
    max_header_bytes: Annotated[int, Field(ge=1024, le=65536)] = 16384
    max_response_bytes: Annotated[int, Field(ge=1024, le=64 * 1024 * 1024)] = 8 * 1024 * 1024
    # Concurrent data-plane connections; past it a new connection is closed before TLS.
    max_connections: Annotated[int, Field(ge=16, le=65536)] = 1024


class BrokerConfig(Frozen):
    broker_id: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9._-]{0,62}$")]
    deployment: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")]
    listen: Listen
    tls: ServerTLS
    egress: EgressTLS
    audit: Audit = Audit()
    anchor: Anchor = Anchor()
    token_ttl_s: Annotated[int, Field(ge=1, le=60)] = 60
    token_store: str = "memory"
    # Redis only: a take is honoured once this many replicas acknowledged it (Redis WAIT), so a
    # failover to a replica that missed it cannot honour the token again.
    token_store_min_replicas: Annotated[int, Field(ge=0, le=8)] = 0
    # Processes serving this deployment on this host, sharing the listening port (SO_REUSEPORT);
    # each keeps its own audit log as broker `<broker_id>-<n>`. More than one needs Redis.
    workers: Annotated[int, Field(ge=1, le=64)] = 1
    admin: Listen = Listen(port=9090)
    limits: Limits = Limits()
    # SIGTERM: stop accepting, let calls in flight finish within this time, write `stop`, exit 0.
    drain_timeout_s: Annotated[float, Field(gt=0, le=300)] = 10
    log_level: LogLevel = "info"  # operational JSON lines on stderr (never the audit log)
    root: Path = Path(".")  # the deployment folder; set by load_broker_config

    @field_validator("token_store")
    @classmethod
    def _known_store(cls, value: str) -> str:
        if value != "memory" and not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must be 'memory' or a redis:// URL")
        return value

    @model_validator(mode="after")
    def _shared_store_for_workers(self) -> BrokerConfig:
        memory = self.token_store == "memory"
        if self.workers > 1 and memory:
            raise ValueError(
                f"workers: {self.workers} processes need a shared token store: set token_store: "
                "redis://host:port/db (with the in-process store each worker could honour a token once)"
            )
        if self.token_store_min_replicas and memory:
            raise ValueError("token_store_min_replicas: applies only to a redis:// token_store")
        if self.admin.port and self.admin.port + self.workers - 1 > 65535:
            raise ValueError("admin: port + workers - 1 must be at most 65535 (worker n listens on port + n)")
        if len(self.worker_id(self.workers - 1)) > 63:
            raise ValueError("broker_id: too long to be suffixed with the worker number (at most 63)")
        return self

    def worker_id(self, worker: int) -> str:
        """The broker id of worker `worker` (from 0) when several processes serve this host."""
        return self.broker_id if self.workers == 1 else f"{self.broker_id}-{worker}"

    def path(self, relative: Path) -> Path:
        return relative if relative.is_absolute() else self.root / relative


def load_broker_config(deployment: Path) -> BrokerConfig:
    path = deployment / BROKER_FILE
    raw = read_yaml_mapping(path)
    try:
        return BrokerConfig.model_validate({**raw, "root": deployment.resolve()})
    except ValidationError as exc:
        raise from_validation(path, exc) from None


def read_yaml_mapping(path: Path) -> dict[str, object]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from None
    return yaml_mapping(path, text)


def yaml_mapping(path: Path, text: str) -> dict[str, object]:
    """The YAML mapping in `text` (read from `path`, named in errors)."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}: not valid YAML{where}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: (top level): must be a mapping")
    return data
