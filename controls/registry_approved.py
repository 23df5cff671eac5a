#!/usr/bin/env python3
"""Control: the registry carries its approvals. registry.yaml on disk has at least M valid
signatures by distinct approvers of approvers.yaml; and every registry the broker has loaded (its
`registry` audit entries) carries at least M valid approver signatures over its SHA-256, so the
policy in force was approved, whatever is on disk now."""

from __future__ import annotations

from ztb.audit.keys import verify_signature
from ztb.config.approvals import (
    SIGNATURES_FILE,
    judge,
    load_approvers,
    message,
    read_signatures,
    registry_sha256,
)
from ztb.config.registry import REGISTRY_FILE
from ztb.evidence.controls import Check, Control, summary


def probe(c: Control) -> None:
    ctx = c.ctx
    approvers = load_approvers(ctx.root)
    names = ", ".join(f"{a.name} ({kid})" for kid, a in approvers.by_kid.items())
    disk_sha = registry_sha256((ctx.root / REGISTRY_FILE).read_bytes())
    approval = judge(approvers, disk_sha, read_signatures(ctx.root / SIGNATURES_FILE))
    c.record(
        Check(
            f"registry.yaml on disk ({disk_sha[:16]}) is approved",
            f"at least {approvers.threshold} of: {names}",
            f"{len(approval.approved)} valid: {', '.join(approval.kids) or 'none'}"
            if approval.ok
            else approval.problem(),
            approval.ok,
        )
    )
    loaded = [e for e in ctx.entries() if e.get("kind") == "registry"]
    if not loaded:
        c.record(
            Check(
                "the broker's log records the registry it loaded",
                "at least one registry entry",
                "none",
                False,
            )
        )
    for entry in loaded:
        sha = str(entry.get("registry_sha256"))
        valid = set()
        for line in entry.get("signatures") or []:
            kid, _, sig = str(line).partition(" ")
            approver = approvers.by_kid.get(kid)
            if approver is not None and verify_signature(
                approver.public_raw, message(sha), bytes.fromhex(sig)
            ):
                valid.add(kid)
        ok = len(valid) >= approvers.threshold
        c.record(
            Check(
                f"registry loaded at seq {entry.get('seq')} ({sha[:16]}) carries its approvals",
                f"at least {approvers.threshold} valid approver signatures in the entry",
                f"{len(valid)} valid: {', '.join(sorted(valid)) or 'none'}",
                ok,
                "the registry on disk" if sha == disk_sha else "not the registry on disk now",
                entry=summary(entry),
            )
        )


if __name__ == "__main__":
    Control("registry_approved", "the registry carries its approvals").run(probe)
