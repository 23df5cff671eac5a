"""`ztb evidence`: run every control against a live broker and write a bundle an auditor can check
without trusting us (SPEC section 9).

The bundle holds what each verdict rests on: the controls' own scripts and raw output, the audit
log segments and the broker's public key, the registry with its signatures, approvers and
their public keys, any checkpoints, report.json and a self-contained report.html, VERIFY.md with
the commands that re-derive every verdict, and manifest.json / SHA256SUMS over every file. It
never copies a private key, and it never writes a verdict it did not observe: a control that
cannot run is a failed control.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from ztb import __version__
from ztb.audit.keys import kid_of, load_public_key
from ztb.audit.reader import LogNotFound, find_logs
from ztb.audit.verify import verify_logs
from ztb.config import ConfigError, load_broker_config
from ztb.config.approvals import (
    APPROVERS_FILE,
    SIGNATURES_FILE,
    judge,
    key_files,
    load_approvers,
    read_signatures,
    registry_sha256,
)
from ztb.config.registry import REGISTRY_FILE, read_spec
from ztb.evidence.html import render_html
from ztb.evidence.verify_md import render_verify_md

CONTROLS = (
    "default_deny",
    "no_certificate",
    "no_bearer_only_path",
    "tokens",
    "ssrf",
    "shape",
    "upstream_pins",
    "entry_before_egress",
    "audit_chain",
    "registry_approved",
)
CONTROL_TIMEOUT_S = 120
MANIFEST = "manifest.json"
SUMS = "SHA256SUMS"


def default_controls_dir() -> Path:
    """controls/ of the source tree ztb runs from (the auditor's scripts live beside src/)."""
    return Path(__file__).resolve().parents[3] / "controls"


@dataclass(frozen=True, slots=True)
class Written:
    bundle: Path
    ok: bool
    manifest_sha256: str
    report: dict[str, Any]


@contextlib.contextmanager
def _broker(deployment: Path, url: str | None) -> Iterator[tuple[str | None, str | None]]:
    """(url, error): the given broker, or one started here on free ports and stopped after."""
    if url is not None:
        yield url, None
        return
    from ztb.runtime import RunningBroker
    from ztb.sample.local import LoopThread

    loop = LoopThread()
    try:
        try:
            running = loop.run(RunningBroker.start(deployment, port=0, admin_port=0))
        except (ConfigError, OSError) as exc:
            yield None, str(exc)
            return
        try:
            yield f"https://{running.config.listen.host}:{running.port}", None
        finally:
            loop.run(running.stop(drain_s=2))
    finally:
        loop.stop()


def run_control(script: Path, deployment: Path, url: str) -> dict[str, Any]:
    """Run one control script as its own process; its JSON output, or a failure saying why."""
    started = time.monotonic()
    try:
        done = subprocess.run(  # noqa: S603 - our own interpreter running our own control scripts
            [sys.executable, str(script), "--deployment", str(deployment), "--broker", url, "--json"],
            capture_output=True,
            text=True,
            timeout=CONTROL_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return _failed(script, f"did not finish within {CONTROL_TIMEOUT_S} s", None, started)
    try:
        result: dict[str, Any] = json.loads(done.stdout)
    except ValueError:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return _failed(script, f"exit {done.returncode}: {tail}", done.returncode, started)
    if result.get("ok") is not (done.returncode == 0):
        result["ok"] = False
        result["error"] = f"exit {done.returncode} disagrees with its printed verdict"
    result["exit_code"] = done.returncode
    result["seconds"] = round(time.monotonic() - started, 2)
    return result


def _failed(script: Path, error: str, code: int | None, started: float) -> dict[str, Any]:
    return {
        "control": script.stem,
        "title": script.stem,
        "ok": False,
        "error": error,
        "checks": [],
        "exit_code": code,
        "seconds": round(time.monotonic() - started, 2),
    }


def write_bundle(
    deployment: Path, out: Path, *, broker_url: str | None = None, controls_dir: Path | None = None
) -> Written:
    controls_dir = controls_dir or default_controls_dir()
    scripts = [controls_dir / f"{name}.py" for name in CONTROLS]
    missing = [s for s in scripts if not s.is_file()]
    if missing:
        raise ConfigError(f"{controls_dir}: control scripts missing: {', '.join(s.name for s in missing)}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"{out}: exists and is not an empty folder; evidence goes into a new folder")
    config = load_broker_config(deployment)
    generated = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    results: list[dict[str, Any]] = []
    with _broker(deployment, broker_url) as (url, broker_error):
        target = url or "https://127.0.0.1:1"  # no broker: the live controls fail, saying so
        for script in scripts:
            results.append(run_control(script, deployment, target))
    out.mkdir(parents=True, exist_ok=True)
    _copy_controls(scripts, results, out)
    audit = _copy_and_verify_log(deployment, config.path(config.audit.signing_key).with_suffix(".pub"), out)
    registry = _copy_registry(deployment, out)
    checkpoints = _copy_checkpoints(config.path(config.audit.dir), out)
    report: dict[str, Any] = {
        "title": f"ztb evidence for deployment {config.deployment}, broker {config.broker_id}",
        "generated_at": generated,
        "ok": all(r["ok"] for r in results) and audit["ok"] and registry["ok"],
        "broker": {
            "id": config.broker_id,
            "deployment": config.deployment,
            "url": url,
            "started_for_this_run": broker_url is None,
            "error": broker_error,
        },
        "controls": results,
        "audit": audit,
        "registry": registry,
        "anchors": checkpoints,
        "versions": {
            "ztb": __version__,
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
    }
    (out / "report.json").write_text(
        json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    (out / "report.html").write_text(render_html(report), encoding="utf-8")
    (out / "VERIFY.md").write_text(render_verify_md(report), encoding="utf-8")
    manifest_sha = write_manifest(out)
    return Written(out, bool(report["ok"]), manifest_sha, report)


def _copy_controls(scripts: list[Path], results: list[dict[str, Any]], out: Path) -> None:
    folder = out / "controls"
    folder.mkdir()
    for script, result in zip(scripts, results, strict=True):
        shutil.copy2(script, folder / script.name)
        result["script"] = f"controls/{script.name}"
        result["script_sha256"] = hashlib.sha256(script.read_bytes()).hexdigest()
        (folder / f"{script.stem}.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


def _copy_and_verify_log(deployment: Path, public_key: Path, out: Path) -> dict[str, Any]:
    """Copy the log segments and the public key, then verify the copies: the verdict is about
    the very bytes in the bundle."""
    (out / "keys").mkdir()
    shutil.copy2(public_key, out / "keys" / "audit.pub")
    public = load_public_key(str(out / "keys" / "audit.pub"))
    try:
        logs = find_logs(deployment)
    except (LogNotFound, ConfigError) as exc:
        return {"ok": False, "error": str(exc), "kid": kid_of(public), "logs": []}
    for broker, segments in logs.items():
        folder = out / "log" / broker
        folder.mkdir(parents=True)
        for segment in segments:
            shutil.copy2(segment, folder / segment.name)
    report = verify_logs(find_logs(out / "log"), {kid_of(public): public}).to_json()
    return {**_relative(report, out), "kid": kid_of(public), "public_key": "keys/audit.pub"}


def _relative(value: Any, base: Path) -> Any:
    if isinstance(value, dict):
        return {k: _relative(v, base) for k, v in value.items()}
    if isinstance(value, list):
        return [_relative(v, base) for v in value]
    if isinstance(value, str) and value.startswith(str(base) + "/"):
        return value[len(str(base)) + 1 :]
    return value


def _copy_registry(deployment: Path, out: Path) -> dict[str, Any]:
    """registry.yaml, registry.sig, approvers.yaml, the approvers' public keys and the schemas, at
    the same relative paths, so the approval check runs on the bundle as on the deployment."""
    folder = out / "registry"
    folder.mkdir()
    for name in (REGISTRY_FILE, SIGNATURES_FILE, APPROVERS_FILE):
        if (deployment / name).is_file():
            shutil.copy2(deployment / name, folder / name)
    facts: dict[str, Any] = {
        "ok": False,
        "sha256": None,
        "threshold": None,
        "approvers": [],
        "approved_by": [],
    }
    try:
        data = (folder / REGISTRY_FILE).read_bytes()
        facts["sha256"] = registry_sha256(data)
        for key in key_files(deployment):
            if (deployment / key).is_file():
                (folder / key).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(deployment / key, folder / key)
        for schema in read_spec(folder / REGISTRY_FILE).schemas.values():
            if not schema.is_absolute() and (deployment / schema).is_file():
                (folder / schema).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(deployment / schema, folder / schema)
        approvers = load_approvers(folder)
        lines = read_signatures(folder / SIGNATURES_FILE)
        approval = judge(approvers, facts["sha256"], lines)
        sig_folder = folder / "signatures"
        sig_folder.mkdir()
        for line in lines:  # binary copies, for checking with openssl alone (VERIFY.md)
            (sig_folder / f"{line.number}-{line.kid}.sig").write_bytes(line.signature)
        (folder / "registry.msg").write_bytes(b"ztb-1/registry\n" + facts["sha256"].encode())
        facts.update(
            ok=approval.ok,
            threshold=approvers.threshold,
            approvers=[
                {"name": a.name, "kid": kid, "public_key": _key_file(folder, a.public_raw)}
                for kid, a in approvers.by_kid.items()
            ],
            approved_by=list(approval.kids),
            signature_lines=[{"line": ln.number, "kid": ln.kid} for ln in lines],
            problem=None if approval.ok else approval.problem(),
        )
    except (ConfigError, OSError, ValidationError) as exc:
        facts["problem"] = str(exc).splitlines()[0]
    return facts


def _key_file(folder: Path, public_raw: bytes) -> str | None:
    for path in sorted(folder.rglob("*.pub")):
        with contextlib.suppress(ValueError):
            if load_public_key(str(path)) == public_raw:
                return str(path.relative_to(folder.parent))
    return None


def _copy_checkpoints(audit_dir: Path, out: Path) -> dict[str, Any]:
    found = sorted(p for p in audit_dir.rglob("*checkpoint*") if p.is_file()) if audit_dir.is_dir() else []
    if not found:
        return {
            "configured": False,
            "checkpoints": [],
            "note": "no anchors configured: no checkpoints to verify",
        }
    folder = out / "checkpoints"
    folder.mkdir()
    for path in found:
        shutil.copy2(path, folder / path.name)
    return {
        "configured": True,
        "checkpoints": [f"checkpoints/{p.name}" for p in found],
        "note": "checkpoints copied; their verification arrives with anchoring (SPEC section 7)",
    }


def write_manifest(out: Path) -> str:
    """manifest.json and SHA256SUMS over every other file; returns manifest.json's SHA-256."""
    files = sorted(p for p in out.rglob("*") if p.is_file() and p.name not in (MANIFEST, SUMS))
    digests = {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}
    manifest = {"algorithm": "sha256", "files": digests}
    data = (json.dumps(manifest, indent=2) + "\n").encode()
    (out / MANIFEST).write_bytes(data)
    (out / SUMS).write_text(
        "".join(f"{digest}  {name}\n" for name, digest in digests.items()), encoding="utf-8"
    )
    return hashlib.sha256(data).hexdigest()
