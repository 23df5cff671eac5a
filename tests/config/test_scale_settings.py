"""broker.yaml's scale settings: workers and the Redis store, refused whole with a one-line reason."""

from __future__ import annotations

from pathlib import Path

import pytest

from ztb.config import ConfigError, load_broker_config
from ztb.deploy import init_deployment


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("scale") / "dep"
    init_deployment(root, broker_port=0, admin_port=9090, upstream_port=9443)
    return root


def _with(deployment: Path, tmp_path: Path, extra: str) -> Path:
    copy = tmp_path / "dep"
    copy.mkdir()
    text = (deployment / "broker.yaml").read_text().replace("token_store: memory\n", "")
    (copy / "broker.yaml").write_text(text + extra)
    return copy


def test_defaults_are_one_worker_and_the_in_process_store(deployment: Path) -> None:
    config = load_broker_config(deployment)
    assert (config.workers, config.token_store, config.token_store_min_replicas) == (1, "memory", 0)
    assert config.worker_id(0) == "broker-a"


def test_workers_with_redis_are_numbered(deployment: Path, tmp_path: Path) -> None:
    config = load_broker_config(
        _with(deployment, tmp_path, "token_store: redis://127.0.0.1:6379/0\nworkers: 3\n")
    )
    assert [config.worker_id(n) for n in range(3)] == ["broker-a-0", "broker-a-1", "broker-a-2"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("workers: 2\n", "workers: 2 processes need a shared token store: set token_store: redis://"),
        ("token_store: redis://h/0\nworkers: 0\n", "workers: Input should be greater than or equal to 1"),
        ("token_store: redis://h/0\nworkers: 65\n", "workers: Input should be less than or equal to 64"),
        ("token_store_min_replicas: 1\n", "token_store_min_replicas: applies only to a redis:// token_store"),
        ("token_store: redis://h/0\ntoken_store_min_replicas: 9\n", "less than or equal to 8"),
        ("token_store: http://h/\n", "token_store: must be 'memory' or a redis:// URL"),
        (
            "token_store: redis://h/0\nworkers: 2\nadmin: {host: 127.0.0.1, port: 65535}\n",
            "admin: port + workers - 1 must be at most 65535",
        ),
    ],
)
def test_bad_scale_settings_are_refused_in_one_line(
    deployment: Path, tmp_path: Path, extra: str, message: str
) -> None:
    folder = _with(deployment, tmp_path, extra)
    with pytest.raises(ConfigError) as refused:
        load_broker_config(folder)
    assert message in str(refused.value)
    assert "\n" not in str(refused.value) and str(refused.value).startswith(str(folder / "broker.yaml"))
