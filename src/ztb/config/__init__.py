"""Deployment files -> typed, frozen objects. The only place raw dicts from YAML live."""

from ztb.config.broker import BrokerConfig, load_broker_config
from ztb.config.errors import ConfigError
from ztb.config.registry import Registry, Route, Upstream, load_registry

__all__ = [
    "BrokerConfig",
    "ConfigError",
    "Registry",
    "Route",
    "Upstream",
    "load_broker_config",
    "load_registry",
]
