from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

sys.path.insert(0, str(Path(__file__).parent))

from redis_server import RedisServer, shared_redis_url
from stack import Stack

# Property tests check what they check whatever the machine's load: on a busy 2-core CI machine
# generation speed and per-example time say nothing about correctness, so neither may fail a run.
# The properties and the number of examples are unchanged.
settings.register_profile("ztb", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("ztb")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """One running deployment per test module (broker + recording upstream on free ports)."""
    running = Stack(tmp_path_factory.mktemp("deployment") / "dep")
    try:
        yield running
    finally:
        running.close()


@pytest.fixture
def fresh_stack(tmp_path: Path) -> Iterator[Stack]:
    """A deployment of its own, for tests that restart or damage it."""
    running = Stack(tmp_path / "dep")
    try:
        yield running
    finally:
        running.close()


@pytest.fixture
def redis_url() -> str:
    """The machine's Redis; skipped when absent, a failure when ZTB_REQUIRE_REDIS=1."""
    return shared_redis_url()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A private redis-server on a free port, without persistence, for tests that stop it."""
    server = RedisServer(tmp_path / "redis")
    try:
        yield server
    finally:
        server.stop()
