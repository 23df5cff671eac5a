#!/usr/bin/env python3
"""Control: the chain and anchors verify. The broker's audit log is verified as an auditor does
(`ztb audit verify`): every line canonical, signed by the deployment's audit key, hash-chained,
`seq` continuous; and against its checkpoints (off-host anchors): each signed by the deployment's
checkpoint key, the Merkle root matching at every checkpointed size, the log no shorter than an
anchored size, and cosigned by every witness the deployment sends checkpoints to."""

from __future__ import annotations

from ztb.audit.anchor import deployment_checkpoint_keys
from ztb.audit.keys import kid_of, load_public_key
from ztb.audit.note import COSIGNATURE_V1, Verifier
from ztb.audit.reader import find_logs
from ztb.audit.verify import Anchors, verify_logs
from ztb.config.broker import FileSink, WitnessSink
from ztb.evidence.controls import Check, Control


def anchors_of(c: Control) -> Anchors | None:
    """The auditor's trust for checkpoints, read from the deployment: None when it has no key."""
    config = c.ctx.config
    log_keys = deployment_checkpoint_keys(config)
    if not log_keys:
        return None
    witnesses = []
    notes = []
    for sink in config.anchor.sinks:
        if isinstance(sink, WitnessSink):
            witness = Verifier.parse(config.path(sink.vkey).read_text(encoding="ascii"))
            assert witness.signature_type == COSIGNATURE_V1
            witnesses.append(witness)
        elif isinstance(sink, FileSink) and config.path(sink.file).is_file():
            notes.append(config.path(sink.file))
    return Anchors(tuple(log_keys), tuple(witnesses), tuple(notes))


def probe(c: Control) -> None:
    ctx = c.ctx
    pub = ctx.config.path(ctx.config.audit.signing_key).with_suffix(".pub")
    public = load_public_key(str(pub))
    anchors = anchors_of(c)
    report = verify_logs(find_logs(ctx.root), {kid_of(public): public}, anchors)
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
                f"the audit log of {log.broker} verifies against {pub.name} (kid {kid_of(public)})"
                + (" and its checkpoints" if anchors is not None else ""),
                "intact",
                got,
                log.ok,
                f"{log.entries} entries in {len(log.segments)} segment(s): {kinds}",
            )
        )
        if anchors is None:
            c.record(Check("anchors", "checked", "no checkpoint key in this deployment", False))
            continue
        found = log.anchors
        witnesses = ", ".join(w.name for w in anchors.witness_keys) or "no witness configured"
        cosigned = (
            ", ".join(f"{name} up to size {size}" for name, size in sorted(found.cosigned.items()))
            if found
            else ""
        )
        c.record(
            Check(
                f"the checkpoints of {log.broker} (witnesses: {witnesses})",
                "signed, roots match, cosigned by every configured witness",
                "no checkpoint yet (a log younger than anchor.every_s)"
                if found is None or not found.checked
                else f"{found.checked} checked, anchored up to size {found.largest}"
                + (f"; cosigned by {cosigned}" if cosigned else ""),
                # A configured witness that cosigned nothing breaks the log (bad_cosignature).
                log.ok,
            )
        )


if __name__ == "__main__":
    Control("audit_chain", "the chain and anchors verify").run(probe)
