"""VERIFY.md: the exact commands that re-derive a bundle's verdicts on another machine.

Two routes: with ztb (`ztb evidence check`, `ztb audit verify`), and for what can be, with
standard tools only (`sha256sum`, `openssl`), so an auditor need not trust ztb's own code for
the manifest and the registry signatures. Commands run from inside the bundle folder.
"""

from __future__ import annotations

from typing import Any


def render_verify_md(report: dict[str, Any]) -> str:
    registry = report.get("registry") or {}
    keys = {a.get("kid"): a.get("public_key") for a in registry.get("approvers") or []}
    openssl_lines = []
    for line in registry.get("signature_lines") or []:
        kid, number = line.get("kid"), line.get("line")
        key = keys.get(kid)
        if key is None:
            openssl_lines.append(f"# line {number}: kid {kid} is not an approver in approvers.yaml")
            continue
        openssl_lines.append(
            f"openssl pkeyutl -verify -pubin -inkey {key} -rawin -in registry/registry.msg "
            f"-sigfile registry/signatures/{number}-{kid}.sig   # line {number}, kid {kid}"
        )
    kid_lines = [
        f"openssl pkey -pubin -in {key} -outform DER | tail -c 32 | sha256sum | cut -c1-16   # expect {kid}"
        for kid, key in keys.items()
        if key is not None
    ]
    brokers = [log.get("broker") for log in (report.get("audit") or {}).get("logs") or []]
    threshold = registry.get("threshold")
    nl = "\n"
    return f"""# Verifying this evidence bundle

{report.get("title")}, generated {report.get("generated_at")}. Verdict in the report:
**{"PASS" if report.get("ok") else "FAIL"}**. Run every command below from inside this folder, on any
machine; none of them needs the broker, the deployment or network access.

## 1. With ztb (`pip install ztb` at version {(report.get("versions") or {}).get("ztb")})

```sh
ztb evidence check .
```

It checks every file against `manifest.json`, verifies the audit log in `log/` against
`keys/audit.pub`, checks the registry's approvals in `registry/`, finds every audit entry a
control cites in the verified log, and recomputes every control's verdict from its checks.
Exit 0 only when the bundle is intact, consistent with `report.json`, and the verdict is PASS.

The audit log alone, as in SPEC section 4 (exit 0 intact, 1 broken):

```sh
ztb audit verify log --pubkey keys/audit.pub
```

## 2. With standard tools only

Every file is the one the report was written with (`manifest.json` holds the same digests):

```sh
sha256sum -c SHA256SUMS
```

The registry carries its approvals: `registry/registry.msg` must be exactly the signed
message, `ztb-1/registry` and a newline, then the hex SHA-256 of `registry/registry.yaml`
(recorded as `{registry.get("sha256")}`):

```sh
printf 'ztb-1/registry\\n%s' "$(sha256sum registry/registry.yaml | cut -d' ' -f1)" | cmp - registry/registry.msg
{nl.join(openssl_lines) or "# registry.sig has no signature lines"}
```

Each `Signature Verified Successfully` is one approval; at least {threshold} by different approvers
are required (`registry/approvers.yaml`). Each approver's kid is the first 16 hex digits of the
SHA-256 of their raw public key:

```sh
{nl.join(kid_lines) or "# no approver key files"}
```

## 3. What each part proves

- `controls/*.py` are the scripts that ran (their SHA-256 is in `report.json`), and
  `controls/*.json` their raw output; read them to see exactly what was probed.
- The audit entries each control cites (by `seq` and `hash`) are in `log/{", ".join(map(str, brokers))}/`,
  signed by the broker's key: the broker itself recorded every refusal the controls claim.
- `report.html` is `report.json` for people; if they disagree, `report.json` and the log win.
"""
