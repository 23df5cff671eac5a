#!/usr/bin/env python3
"""Control: the chain and anchors verify. The broker's audit log is verified as an auditor does
(`ztb audit verify`): every line canonical, signed by the deployment's audit key, hash-chained,
`seq` continuous. Checkpoints (off-host anchors) are checked when the deployment has them; a
deployment without anchors says so in the evidence."""

from __future__ import annotations

from ztb.audit.keys import kid_of, load_public_key
from ztb.audit.reader import find_logs
from ztb.audit.verify import verify_logs
from ztb.evidence.controls import Check, Control


def probe(c: Control) -> None:
    ctx = c.ctx
    pub = ctx.config.path(ctx.config.audit.signing_key).with_suffix(".pub")
    public = load_public_key(str(pub))
    report = verify_logs(find_logs(ctx.root), {kid_of(public): public})
    for log in report.logs:
        hit = log.first_break
        got = (
            "intact"
            if hit is None
            else f"broken at seq {hit.seq} ({hit.segment.name}:{hit.line}): {hit.category} — {hit.detail}"
        )
        kinds = ", ".join(f"{k} {n}" for k, n in sorted(log.kinds.items()))
        c.record(
            Check(
                f"the audit log of {log.broker} verifies against {pub.name} (kid {kid_of(public)})",
                "intact",
                got,
                log.ok,
                f"{log.entries} entries in {len(log.segments)} segment(s): {kinds}",
            )
        )
    anchors = sorted(p for p in ctx.config.path(ctx.config.audit.dir).rglob("*checkpoint*"))
    c.record(
        Check(
            "anchors (checkpoints beside the log)",
            "verified when present",
            "no anchors configured: checkpoints not checked"
            if not anchors
            else f"{len(anchors)} checkpoint file(s) present, not yet verifiable by this build",
            not anchors,
        )
    )


if __name__ == "__main__":
    Control("audit_chain", "the chain and anchors verify").run(probe)
