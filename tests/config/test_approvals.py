"""Reviewed registry (SPEC section 8): a registry without enough approvals is refused whole, on
every load path (start, `ztb registry check`, SIGHUP reload), with one line naming what is missing."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from ztb.audit.keys import SigningKey
from ztb.config import ConfigError, load_registry
from ztb.config.approvals import APPROVERS_FILE, SIGNATURES_FILE, message, registry_sha256
from ztb.control import BrokerNotRunning, read_run_file
from ztb.deploy import init_deployment, sign_registry_with_dev_keys
from ztb.runtime import RunningBroker
from ztb.sample.local import free_port

KEY1 = "approvers/dev-approver-1.key"
KEY2 = "approvers/dev-approver-2.key"


def ztb(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ztb", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("approvals") / "dep"
    init_deployment(root, broker_port=0, admin_port=0, upstream_port=free_port())
    return root


@pytest.fixture
def dep(pristine: Path, tmp_path: Path) -> Path:
    root = tmp_path / "dep"
    shutil.copytree(pristine, root)
    return root


def line_by(root: Path, key_file: str, registry_bytes: bytes) -> str:
    key = SigningKey.load(root / key_file)
    return f"{key.kid} {key.sign(message(registry_sha256(registry_bytes))).hex()}\n"


def widen_grant(root: Path) -> None:
    """Give svc.reports orders:create: the change nobody approved."""
    path = root / "registry.yaml"
    data = yaml.safe_load(path.read_text())
    data["grants"]["svc.reports"]["orders.api.internal"].append("orders:create")
    path.write_text(yaml.safe_dump(data))


def unsigned(root: Path) -> None:
    (root / SIGNATURES_FILE).unlink()


def one_short(root: Path) -> None:
    lines = (root / SIGNATURES_FILE).read_text().splitlines(keepends=True)
    (root / SIGNATURES_FILE).write_text(lines[0])


def non_approver(root: Path) -> None:
    outsider = SigningKey.generate()
    data = (root / "registry.yaml").read_bytes()
    lines = (root / SIGNATURES_FILE).read_text().splitlines(keepends=True)
    forged = f"{outsider.kid} {outsider.sign(message(registry_sha256(data))).hex()}\n"
    (root / SIGNATURES_FILE).write_text(lines[0] + forged)


def older_registry(root: Path) -> None:
    """Approver 2's signature is over the previous version; approver 1 signed the new one."""
    old_line_2 = (root / SIGNATURES_FILE).read_text().splitlines(keepends=True)[1]
    widen_grant(root)
    new = (root / "registry.yaml").read_bytes()
    (root / SIGNATURES_FILE).write_text(line_by(root, KEY1, new) + old_line_2)


def edited_after_signing(root: Path) -> None:
    with (root / "registry.yaml").open("a") as f:
        f.write("# a comment is an edit too: every byte is approved\n")


def key_listed_twice(root: Path) -> None:
    path = root / APPROVERS_FILE
    data = yaml.safe_load(path.read_text())
    data["approvers"].append({"name": "dev-approver-1-again", "key": "approvers/dev-approver-1.pub"})
    data["threshold"] = 2
    path.write_text(yaml.safe_dump(data))


SCENARIOS: dict[str, tuple[Callable[[Path], None], str]] = {
    "unsigned": (
        unsigned,
        "has 0 of 2 required approvals; not yet signed by: dev-approver-1, dev-approver-2",
    ),
    "one signature short": (one_short, "has 1 of 2 required approvals; not yet signed by: dev-approver-2"),
    "signed by a non-approver": (non_approver, "is not an approver"),
    "signature over an older registry": (
        older_registry,
        "dev-approver-2's signature is not over this registry",
    ),
    "edited after signing": (edited_after_signing, "has 0 of 2 required approvals"),
    "approvers lists a key twice": (key_listed_twice, "is already listed as 'dev-approver-1'"),
}


@pytest.mark.parametrize("name", SCENARIOS)
def test_refused_by_the_loader(dep: Path, name: str) -> None:
    breakage, expected = SCENARIOS[name]
    breakage(dep)
    with pytest.raises(ConfigError) as refused:
        load_registry(dep)
    assert expected in str(refused.value)
    assert "\n" not in str(refused.value)


@pytest.mark.parametrize("name", SCENARIOS)
def test_refused_on_start(dep: Path, name: str) -> None:
    breakage, expected = SCENARIOS[name]
    breakage(dep)
    with pytest.raises(ConfigError) as refused:
        asyncio.run(RunningBroker.start(dep, port=0, admin_port=0))
    assert expected in str(refused.value)
    assert not (dep / "audit").exists()  # refused before the log was even opened


@pytest.mark.parametrize("name", SCENARIOS)
def test_refused_by_registry_check(dep: Path, name: str) -> None:
    breakage, expected = SCENARIOS[name]
    breakage(dep)
    result = ztb("registry", "check", dep)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.startswith("ztb: error: ") and result.stderr.count("\n") == 1, result.stderr
    assert expected in result.stderr


def test_approved_registry_loads_and_names_its_approvers(dep: Path) -> None:
    registry = load_registry(dep)
    assert registry.approval is not None and registry.approval.ok
    kids = {SigningKey.load(dep / k).kid for k in (KEY1, KEY2)}
    assert set(registry.approval.kids) == kids
    result = ztb("registry", "check", dep)
    assert result.returncode == 0, result.stderr
    assert "approved by 2 of 2 required" in result.stdout


def test_threshold_bounds_and_duplicate_names(dep: Path) -> None:
    path = dep / APPROVERS_FILE
    original = yaml.safe_load(path.read_text())
    for threshold in (0, 3):
        path.write_text(yaml.safe_dump({**original, "threshold": threshold}))
        with pytest.raises(ConfigError, match="threshold: must be from 1 to the number of approvers"):
            load_registry(dep)
    twice = [*original["approvers"], {**original["approvers"][0], "key": "00" * 32}]
    path.write_text(yaml.safe_dump({**original, "approvers": twice}))
    with pytest.raises(ConfigError, match="listed twice"):
        load_registry(dep)
    path.unlink()
    with pytest.raises(ConfigError, match=r"approvers\.yaml: no such file"):
        load_registry(dep)


def test_malformed_signature_file(dep: Path) -> None:
    (dep / SIGNATURES_FILE).write_text("not a signature\n")
    with pytest.raises(ConfigError, match="line 1: not '<16 hex kid> <128 hex Ed25519 signature>'"):
        load_registry(dep)


def test_a_second_signature_by_one_approver_counts_once(dep: Path) -> None:
    data = (dep / "registry.yaml").read_bytes()
    line = line_by(dep, KEY1, data)
    (dep / SIGNATURES_FILE).write_text(line + line)
    with pytest.raises(ConfigError, match=r"1 of 2 required approvals.*a second signature by dev-approver-1"):
        load_registry(dep)


def test_sign_command_approves_a_change_in_two_steps(dep: Path) -> None:
    widen_grant(dep)
    first = ztb("registry", "sign", dep, "--key", dep / KEY1)
    assert first.returncode == 0, first.stderr
    assert "1 of 2 required approvals (not yet in effect)" in first.stdout
    assert "dropped from registry.sig" in first.stdout  # the stale approvals of the old version
    with pytest.raises(ConfigError, match="1 of 2"):
        load_registry(dep)
    second = ztb("registry", "sign", dep, "--key", dep / KEY2)
    assert second.returncode == 0, second.stderr
    assert "2 of 2 required approvals" in second.stdout
    assert load_registry(dep).is_granted("svc.reports", "orders.api.internal", "orders:create")


def test_sign_refuses_a_non_approver_key_and_an_invalid_registry(dep: Path) -> None:
    before = (dep / SIGNATURES_FILE).read_bytes()
    result = ztb("registry", "sign", dep, "--key", dep / "keys/audit.key")
    assert result.returncode == 1 and "is not an approver" in result.stderr
    path = dep / "registry.yaml"
    data = yaml.safe_load(path.read_text())
    data["routes"].append(
        {**data["routes"][0], "id": "orders.bulk", "path": "/v1/orders/bulk", "schema": None}
    )
    path.write_text(yaml.safe_dump(data))
    result = ztb("registry", "sign", dep, "--key", dep / KEY1)
    assert result.returncode == 1 and "a POST route needs a schema" in result.stderr
    assert (dep / SIGNATURES_FILE).read_bytes() == before


def test_registry_entry_records_the_approvals(dep: Path) -> None:
    async def start_stop() -> None:
        running = await RunningBroker.start(dep, port=0, admin_port=0)
        await running.stop(drain_s=1)

    asyncio.run(start_stop())
    entries = [
        json.loads(line)
        for line in next((dep / "audit" / "broker-a").glob("*.jsonl")).read_text().splitlines()
    ]
    (registry_entry,) = [e for e in entries if e["kind"] == "registry"]
    approval = load_registry(dep).approval
    assert approval is not None
    assert registry_entry["registry_sha256"] == registry_sha256((dep / "registry.yaml").read_bytes())
    assert registry_entry["approvers"] == list(approval.kids)
    assert registry_entry["threshold"] == 2
    assert registry_entry["signatures"] == (dep / SIGNATURES_FILE).read_text().splitlines()


# -- SIGHUP: the running broker keeps its last good registry ------------------------------------


@pytest.fixture
def served(dep: Path) -> Iterator[tuple[Path, subprocess.Popen[bytes]]]:
    path = dep / "broker.yaml"
    config = yaml.safe_load(path.read_text())
    config["listen"]["port"], config["admin"]["port"] = free_port(), free_port()
    path.write_text(yaml.safe_dump(config))
    sign_registry_with_dev_keys(dep)
    log = (dep.parent / "broker.stderr").open("wb")  # what the broker said, for a failure's message
    process = subprocess.Popen(
        [sys.executable, "-m", "ztb", "serve", str(dep)], stdout=subprocess.DEVNULL, stderr=log
    )
    try:
        # Up, not merely starting: the run file exists from the first instant, but holds the
        # broker's facts only once it listens. Until then it has not read the registry the test
        # is about to break, and would refuse to start on the broken one.
        deadline = time.monotonic() + 20
        while True:
            try:
                read_run_file(dep)
                break
            except BrokerNotRunning:
                assert process.poll() is None and time.monotonic() < deadline, "the broker did not start"
                time.sleep(0.05)
        yield dep, process
    finally:
        process.terminate()
        process.wait(10)
        log.close()


def test_sighup_refuses_each_unapproved_registry_and_keeps_serving(
    served: tuple[Path, subprocess.Popen[bytes]],
) -> None:
    from ztb.client import BrokerError, Caller

    root, process = served
    url = f"https://127.0.0.1:{yaml.safe_load((root / 'broker.yaml').read_text())['listen']['port']}"
    good = {name: (root / name).read_bytes() for name in ("registry.yaml", SIGNATURES_FILE, APPROVERS_FILE)}
    for name, (breakage, expected) in SCENARIOS.items():
        for file, data in good.items():
            (root / file).write_bytes(data)
        widen_grant(root)  # the new registry would widen a grant; approved, then broken:
        sign_registry_with_dev_keys(root)
        breakage(root)
        reload = subprocess.run(  # SIGHUP, then the outcome as the running broker reports it
            [sys.executable, "-m", "ztb", "reload", str(root)],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        said = (root.parent / "broker.stderr").read_text(errors="replace")[-2000:]
        assert reload.returncode == 1, (name, reload.stderr, said)
        assert expected in reload.stderr, (name, reload.stderr, said)
        assert process.poll() is None, name
        caller = Caller.for_identity(root, "svc.reports", url)
        with pytest.raises(BrokerError) as refused:  # the previous registry is still in force
            caller.mint("orders.api.internal", "orders:create")
        assert refused.value.reason == "not_granted", name
        assert caller.mint("orders.api.internal", "orders:read")
        caller.close()
