"""`ztb evidence` end to end: on a healthy deployment every control passes and the bundle re-checks
anywhere; break one thing at a time and the matching control fails, saying why."""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from stack import Stack
from ztb.audit.keys import SigningKey
from ztb.config.approvals import SIGNATURES_FILE, message, registry_sha256
from ztb.deploy import init_deployment
from ztb.evidence.bundle import CONTROLS
from ztb.sample.local import free_port
from ztb.witness.config import init_witness

BIN = Path(sys.executable).parent


def ztb(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ztb", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=cwd,
    )


def evidence(root: Path, out: Path, broker: str | None = None) -> dict[str, Any]:
    result = ztb("evidence", root, "--out", out, *(("--broker", broker) if broker else ()))
    assert result.returncode in (0, 1), result.stderr
    report: dict[str, Any] = json.loads((out / "report.json").read_text())
    assert result.returncode == (0 if report["ok"] else 1)
    return report


def run_control(name: str, root: Path, broker: str) -> dict[str, Any]:
    """One control script on its own, as an auditor runs it."""
    script = Path(__file__).resolve().parents[2] / "controls" / f"{name}.py"
    done = subprocess.run(
        [sys.executable, str(script), "--deployment", str(root), "--broker", broker, "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    result: dict[str, Any] = json.loads(done.stdout)
    assert done.returncode == (0 if result["ok"] else 1), done.stderr
    return result


def failed_checks(result: dict[str, Any]) -> str:
    return json.dumps([c for c in result["checks"] if not c["ok"]]) + str(result.get("error"))


def verdicts(report: dict[str, Any]) -> dict[str, bool]:
    return {c["control"]: c["ok"] for c in report["controls"]}


def failing_text(report: dict[str, Any], control: str) -> str:
    (found,) = [c for c in report["controls"] if c["control"] == control]
    return json.dumps([c for c in found["checks"] if not c["ok"]]) + str(found.get("error"))


@pytest.fixture(scope="session")
def healthy(tmp_path_factory: pytest.TempPathFactory, worker_id: str) -> tuple[Path, dict[str, Any]]:
    """One healthy deployment and its bundle, made once and shared by the xdist workers (the
    workers' temp folders share a parent; a lock file makes the first one build it)."""
    shared = (
        tmp_path_factory.getbasetemp() if worker_id == "master" else tmp_path_factory.getbasetemp().parent
    )
    base = shared / "evidence-healthy"
    with (shared / "evidence-healthy.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (base / "bundle" / "manifest.json").is_file():
            shutil.rmtree(base, ignore_errors=True)
            root = base / "dep"
            init_deployment(root, broker_port=0, admin_port=0, upstream_port=free_port())
            evidence(root, base / "bundle")
    return base / "bundle", json.loads((base / "bundle" / "report.json").read_text())


def test_healthy_deployment_passes_every_control(healthy: tuple[Path, dict[str, Any]]) -> None:
    bundle, report = healthy
    assert verdicts(report) == dict.fromkeys(CONTROLS, True), [failing_text(report, c) for c in CONTROLS]
    assert report["ok"] and report["audit"]["ok"] and report["registry"]["ok"]
    assert len(report["registry"]["approved_by"]) == report["registry"]["threshold"] == 2
    for name in (
        "report.json",
        "report.html",
        "manifest.json",
        "VERIFY.md",
        "SHA256SUMS",
        "keys/audit.pub",
        "registry/registry.yaml",
        "registry/registry.sig",
        "registry/approvers.yaml",
    ):
        assert (bundle / name).is_file(), name
    assert list((bundle / "log").glob("*/*.jsonl"))
    assert not [p for p in bundle.rglob("*") if p.name.endswith(".key") or "PRIVATE KEY" in _text(p)]
    manifest = json.loads((bundle / "manifest.json").read_text())["files"]
    files = {str(p.relative_to(bundle)) for p in bundle.rglob("*") if p.is_file()}
    assert set(manifest) == files - {"manifest.json", "SHA256SUMS"}


def _text(path: Path) -> str:
    return path.read_text(errors="replace") if path.is_file() else ""


def test_verify_md_reproduces_every_verdict_elsewhere(
    healthy: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    """Every command in VERIFY.md, run in a copy of the bundle somewhere else, succeeds."""
    bundle, _ = healthy
    elsewhere = tmp_path / "auditor" / "bundle"
    shutil.copytree(bundle, elsewhere)
    blocks = re.findall(r"```sh\n(.*?)```", (elsewhere / "VERIFY.md").read_text(), re.S)
    commands = [line for block in blocks for line in block.splitlines() if line and not line.startswith("#")]
    assert any(c.startswith("ztb evidence check") for c in commands)
    assert any(c.startswith("openssl pkeyutl -verify") for c in commands)
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}
    for command in commands:
        done = subprocess.run(
            ["bash", "-o", "pipefail", "-c", command],
            cwd=elsewhere,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, (command, done.stdout[-2000:], done.stderr[-2000:])
        if command.startswith("openssl pkeyutl"):
            assert "Signature Verified Successfully" in done.stdout
        if "| sha256sum | cut -c1-16" in command:
            assert done.stdout.strip() == command.rsplit("expect ", 1)[1].strip()


def test_manifest_detects_a_changed_bundle_file(healthy: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    bundle, _ = healthy
    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy)
    assert ztb("evidence", "check", copy).returncode == 0
    html = copy / "report.html"
    html.write_text(html.read_text().replace("checks held", "checks  held"))  # a doctored report
    (copy / "extra.txt").write_text("not in the manifest")
    result = ztb("evidence", "check", copy)
    assert result.returncode == 1
    assert "FAIL manifest: report.html has changed since the bundle was written" in result.stdout
    assert "FAIL manifest: extra.txt is not in the manifest" in result.stdout
    assert "NOT intact" in result.stdout


# -- break one thing at a time ---------------------------------------------------------------


@pytest.fixture
def live(fresh_stack: Stack) -> Iterator[Stack]:
    """A running broker whose sample upstream is stopped: the controls bring their own."""
    fresh_stack.loop.run(fresh_stack.upstream.stop())
    yield fresh_stack


def sign_as_approvers(root: Path) -> None:
    """Both approvers sign the registry bytes as they are, whatever they contain (people can
    approve a mistake; the controls must still catch it)."""
    data = (root / "registry.yaml").read_bytes()
    lines = []
    for n in (1, 2):
        key = SigningKey.load(root / "approvers" / f"dev-approver-{n}.key")
        lines.append(f"{key.kid} {key.sign(message(registry_sha256(data))).hex()}\n")
    (root / SIGNATURES_FILE).write_text("".join(lines))


def edit_registry(root: Path, change: Any) -> None:
    path = root / "registry.yaml"
    data = yaml.safe_load(path.read_text())
    change(data)
    path.write_text(yaml.safe_dump(data))


def test_route_added_without_schema_fails_shape(live: Stack, tmp_path: Path) -> None:
    def add(r: dict[str, Any]) -> None:
        r["routes"].append({**r["routes"][0], "id": "orders.bulk", "path": "/v1/orders/bulk", "schema": None})

    edit_registry(live.root, add)
    sign_as_approvers(live.root)
    assert run_control("registry_approved", live.root, live.url)["ok"]  # approved, and still wrong
    shape = run_control("shape", live.root, live.url)
    assert not shape["ok"]
    assert "routes.3.schema: a POST route needs a schema for its body" in failed_checks(shape)


def test_grant_widened_without_approval_fails_registry(live: Stack, tmp_path: Path) -> None:
    edit_registry(
        live.root, lambda r: r["grants"]["svc.reports"]["orders.api.internal"].append("orders:create")
    )
    report = evidence(live.root, tmp_path / "bundle", live.url)
    assert verdicts(report) == {**dict.fromkeys(CONTROLS, True), "registry_approved": False}
    assert "has 0 of 2 required approvals" in failing_text(report, "registry_approved")
    assert not report["registry"]["ok"]
    check = ztb("evidence", "check", tmp_path / "bundle")
    assert check.returncode == 1 and "bundle: intact and consistent" in check.stdout
    assert "verdict: FAIL" in check.stdout


def test_a_changed_log_byte_fails_the_chain(live: Stack) -> None:
    assert run_control("audit_chain", live.root, live.url)["ok"]
    segment = next(live.log_dir.glob("*.jsonl"))
    data = bytearray(segment.read_bytes())
    first = data.index(b'"ts":"') + len(b'"ts":"2')  # a digit of seq 0's timestamp
    data[first] = ord("1") if data[first] != ord("1") else ord("2")
    segment.write_bytes(bytes(data))
    chain = run_control("audit_chain", live.root, live.url)
    assert not chain["ok"]
    assert "broken at seq 0" in failed_checks(chain) and "modified" in failed_checks(chain)


def test_witness_unreachable_fails_the_anchors(tmp_path: Path) -> None:
    """The deployment sends checkpoints to a witness that never answers: the checkpoints kept
    beside the log carry no cosignature of it, and the chain-and-anchors control fails."""
    root = tmp_path / "dep"
    init_deployment(root, broker_port=0, admin_port=0, upstream_port=free_port())
    witness = tmp_path / "witness"
    init_witness(
        witness,
        name="witness.test/w1",
        port=free_port(),  # nothing is ever started there
        client_ca=root / "ca" / "ca.pem",
        logs=(root / "keys" / "checkpoint.vkey",),
    )
    path = root / "broker.yaml"
    config = yaml.safe_load(path.read_text())
    config["anchor"] = {
        "every_s": 0.2,
        "sinks": [
            {
                "witness": f"https://127.0.0.1:{yaml.safe_load((witness / 'witness.yaml').read_text())['listen']['port']}",
                "ca": str(witness / "tls" / "ca.pem"),
                "vkey": str(witness / "keys" / "witness.vkey"),
                "timeout_s": 0.5,
            }
        ],
    }
    path.write_text(yaml.safe_dump(config))
    report = evidence(root, tmp_path / "bundle")
    assert verdicts(report)["audit_chain"] is False
    text = failing_text(report, "audit_chain")
    assert "witness.test/w1" in text and "cosignature" in text


# -- report.html in a real headless browser ----------------------------------------------------

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
_EXTERNAL = re.compile(
    r"""(?:src|href|action|poster|data)\s*=\s*["']?\s*(?:https?:|//|ftp:)|@import|url\(\s*["']?\s*(?:https?:|//)""",
    re.I,
)


def _chromium(html: Path, out: Path) -> tuple[Path, set[str]]:
    """Screenshot `html` and return the URLs the page itself asked for (from a net log; the
    browser's own background traffic has no page initiator and is left out)."""
    if CHROMIUM is None:
        if os.environ.get("CI") == "true":
            pytest.fail("chromium is required in CI (.ci/run installs Debian's chromium)")
        pytest.skip("chromium is not installed (apt-get install -y chromium); required when CI=true")
    shot, netlog = out / f"{html.stem}.png", out / f"{html.stem}.netlog.json"
    done = subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={out / ('profile-' + html.stem)}",
            f"--log-net-log={netlog}",
            f"--screenshot={shot}",
            "--window-size=1280,2000",
            html.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    log = json.loads(netlog.read_text())
    names = {v: k for k, v in log["constants"]["logEventTypes"].items()}
    asked = {
        str(e["params"]["url"])
        for e in log["events"]
        if names.get(e["type"]) == "URL_REQUEST_START_JOB"
        and e.get("params", {}).get("initiator", "not an origin") != "not an origin"
    }
    return shot, asked


def test_report_html_renders_in_a_real_browser_without_external_requests(
    healthy: tuple[Path, dict[str, Any]], tmp_path_factory: pytest.TempPathFactory
) -> None:
    bundle, report = healthy
    html = (bundle / "report.html").read_text()
    assert not _EXTERNAL.findall(html)
    assert "<script" not in html.lower()
    table = html[
        html.index('<table id="controls">') : html.index("</table>", html.index('<table id="controls">'))
    ]
    assert table.count('<td class="state pass">PASS</td>') == len(CONTROLS)
    for control in report["controls"]:
        assert control["title"] in table

    out = tmp_path_factory.mktemp("browser")  # the screenshot is kept here as a CI artefact
    shot, asked = _chromium(bundle / "report.html", out)
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000, len(data)
    assert int.from_bytes(data[16:20], "big") == 1280  # the PNG's width
    assert asked == set(), asked

    # The same checks catch a page that does fetch something (so they cannot pass vacuously).
    leaky = out / "leaky.html"
    leaky.write_text(html.replace("</main>", '<img src="http://127.0.0.1:9/pixel.png"></main>'))
    assert _EXTERNAL.findall(leaky.read_text())
    _, leaked = _chromium(leaky, out)
    assert leaked == {"http://127.0.0.1:9/pixel.png"}
