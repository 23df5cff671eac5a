#!/usr/bin/env python3
"""Control: no certificate, no conversation. A connection without a client certificate, or with
one from an untrusted CA, gets no HTTP answer at all (data plane and token endpoint alike), the
broker records an `identity` entry for each kind of refusal, and nothing reaches the upstream."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from ztb import pki
from ztb.evidence.controls import SAMPLE_UPSTREAM as UP
from ztb.evidence.controls import Check, Control, summary

REQUESTS = {
    "data plane": f"GET /{UP}/v1/orders HTTP/1.1\r\nHost: broker\r\n\r\n".encode(),
    "token endpoint": b"POST /.ztb/token HTTP/1.1\r\nHost: broker\r\nContent-Length: 2\r\n\r\n{}",
}


def probe(c: Control) -> None:
    ctx = c.ctx
    start_seq = max((e.get("seq", -1) for e in ctx.entries()), default=-1)
    with ctx.run_upstream() as upstream, tempfile.TemporaryDirectory() as spare:
        rogue_ca = pki.new_ca("not the deployment's CA")
        rogue = pki.issue_client(rogue_ca, "svc.checkout")  # the right name, the wrong CA
        cert, key = Path(spare) / "cert.pem", Path(spare) / "key.pem"
        rogue.write(cert, key)
        for who, (cert_file, key_file) in (
            ("no client certificate", (None, None)),
            ("a certificate from an untrusted CA", (cert, key)),
        ):
            for where, request in REQUESTS.items():
                got = ctx.tls_attempt(cert_file, key_file, request)
                c.record(
                    Check(
                        f"{who}, {where}",
                        "no HTTP answer (TLS refused or closed)",
                        got,
                        ctx.refused_without_answer(got),
                    )
                )
        for reason in ("no_client_certificate", "untrusted_certificate"):

            def refusal(e: dict[str, Any], reason: str = reason) -> bool:
                return (
                    e.get("kind") == "identity" and e.get("reason") == reason and e.get("seq", -1) > start_seq
                )

            entry = ctx.wait_entry(refusal)
            c.record(
                Check(
                    f"the broker recorded the refusal ({reason})",
                    f"an identity entry DENY {reason}",
                    "found" if entry else "none",
                    entry is not None,
                    entry=None if entry is None else summary(entry),
                )
            )
        c.record(
            Check(
                "nothing reached the upstream",
                "0 requests",
                f"{len(upstream.received)} requests",
                not upstream.received,
            )
        )


if __name__ == "__main__":
    Control("no_certificate", "no certificate, no conversation").run(probe)
