"""`ztb evidence check BUNDLE`: re-derive a bundle's verdicts on the auditor's own machine.

Needs only the bundle: every file against manifest.json; the audit log against the bundled
public key; the registry's signatures against the bundled approvers; every audit entry a control
cites (seq and hash) found in the verified log with the decision the control claims; and each
control's verdict recomputed from its checks. It trusts nothing in report.json that it can
recompute, and says where the bundle and its report disagree.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ztb.audit.keys import kid_of, load_public_key
from ztb.audit.reader import LogNotFound, LogReadError, find_logs, read_entries
from ztb.audit.verify import verify_logs
from ztb.config import ConfigError
from ztb.config.approvals import SIGNATURES_FILE, judge, load_approvers, read_signatures, registry_sha256
from ztb.config.registry import REGISTRY_FILE
from ztb.evidence.bundle import MANIFEST, SUMS


@dataclass
class BundleCheck:
    findings: list[tuple[bool, str]] = field(default_factory=list)
    verdict_ok: bool = False  # the deployment's verdict, as re-derived here

    @property
    def consistent(self) -> bool:
        return bool(self.findings) and all(ok for ok, _ in self.findings)

    def add(self, ok: bool, text: str) -> None:
        self.findings.append((ok, text))

    def to_text(self) -> str:
        lines = [f"{'ok  ' if ok else 'FAIL'} {text}" for ok, text in self.findings]
        lines.append(
            "bundle: "
            + ("intact and consistent with its report" if self.consistent else "NOT intact or NOT consistent")
        )
        lines.append(f"verdict: {'PASS' if self.verdict_ok else 'FAIL'}")
        return "\n".join(lines)


def check_bundle(bundle: Path) -> BundleCheck:
    result = BundleCheck()
    _manifest(bundle, result)
    try:
        report: dict[str, Any] = json.loads((bundle / "report.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        result.add(False, f"report.json cannot be read: {exc}")
        return result
    entries = _log(bundle, report, result)
    registry_ok = _registry(bundle, report, result)
    controls_ok = _controls(report, entries, result)
    result.verdict_ok = controls_ok and registry_ok and entries is not None
    if bool(report.get("ok")) != result.verdict_ok:
        result.add(False, f"report.json says ok={report.get('ok')}, re-derived {result.verdict_ok}")
    return result


def _manifest(bundle: Path, result: BundleCheck) -> None:
    try:
        listed: dict[str, str] = json.loads((bundle / MANIFEST).read_text(encoding="utf-8"))["files"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        result.add(False, f"{MANIFEST} cannot be read: {exc}")
        return
    present = {str(p.relative_to(bundle)) for p in bundle.rglob("*") if p.is_file()} - {MANIFEST, SUMS}
    changed = sorted(
        name
        for name, digest in listed.items()
        if name in present and hashlib.sha256((bundle / name).read_bytes()).hexdigest() != digest
    )
    missing = sorted(set(listed) - present)
    extra = sorted(present - set(listed))
    for name in changed:
        result.add(False, f"manifest: {name} has changed since the bundle was written")
    for name in missing:
        result.add(False, f"manifest: {name} is missing")
    for name in extra:
        result.add(False, f"manifest: {name} is not in the manifest")
    if not (changed or missing or extra):
        result.add(True, f"manifest: all {len(listed)} files match their SHA-256")


def _log(bundle: Path, report: dict[str, Any], result: BundleCheck) -> dict[int, dict[str, Any]] | None:
    """The bundled log's entries by seq when it verifies, else None."""
    try:
        public = load_public_key(str(bundle / "keys" / "audit.pub"))
        logs = find_logs(bundle / "log")
        verified = verify_logs(logs, {kid_of(public): public})
    except (ValueError, LogNotFound, LogReadError, ConfigError) as exc:
        result.add(False, f"audit log: cannot verify: {exc}")
        return None
    claimed = bool((report.get("audit") or {}).get("ok"))
    texts = [log.to_text().splitlines()[0] for log in verified.logs]
    if not verified.ok:
        breaks = [log.to_text().splitlines()[1].strip() for log in verified.logs if not log.ok]
        texts += breaks
    result.add(
        verified.ok == claimed,
        f"audit log {'intact' if verified.ok else 'BROKEN'} (report says {'intact' if claimed else 'broken'}): "
        + "; ".join(texts),
    )
    if not verified.ok:
        return None
    broker = (report.get("broker") or {}).get("id")
    segments = logs.get(str(broker), [])
    return {int(str(e["seq"])): e for e in read_entries(segments)}


def _registry(bundle: Path, report: dict[str, Any], result: BundleCheck) -> bool:
    folder = bundle / "registry"
    try:
        approvers = load_approvers(folder)
        sha = registry_sha256((folder / REGISTRY_FILE).read_bytes())
        approval = judge(approvers, sha, read_signatures(folder / SIGNATURES_FILE))
    except (ConfigError, OSError) as exc:
        result.add(not (report.get("registry") or {}).get("ok"), f"registry approvals: cannot check: {exc}")
        return False
    claimed = bool((report.get("registry") or {}).get("ok"))
    text = (
        f"{len(approval.approved)} of {approval.threshold} required approvals ({', '.join(approval.kids)})"
        if approval.ok
        else approval.problem()
    )
    result.add(approval.ok == claimed, f"registry {sha[:16]}: {text}")
    return approval.ok


def _controls(report: dict[str, Any], entries: dict[int, dict[str, Any]] | None, result: BundleCheck) -> bool:
    all_ok = True
    for control in report.get("controls") or []:
        checks = control.get("checks") or []
        derived = control.get("error") is None and bool(checks) and all(c.get("ok") is True for c in checks)
        cited = [c["entry"] for c in checks if isinstance(c.get("entry"), dict)]
        name = control.get("control")
        if entries is None:
            missing: list[object] = []
            note = f"the log does not verify: its {len(cited)} cited entries prove nothing"
        else:
            missing = [e.get("seq") for e in cited if not _same(entries.get(int(e.get("seq", -1))), e)]
            note = f"{len(cited)} cited audit entries found in the verified log"
        if missing:
            note = f"cited entries not in the verified log: seq {', '.join(map(str, missing))}"
        consistent = derived == bool(control.get("ok")) and not missing
        result.add(consistent, f"control {name}: {'PASS' if derived else 'FAIL'} ({note})")
        all_ok = all_ok and derived
    return all_ok


def _same(logged: dict[str, Any] | None, cited: dict[str, Any]) -> bool:
    if logged is None:
        return False
    return all(logged.get(key) == value for key, value in cited.items())
