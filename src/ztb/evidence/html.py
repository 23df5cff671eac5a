"""report.html: the evidence report for a person, rendered from report.json.

Self-contained: inline CSS, no scripts, no fonts, images or links that a browser would fetch,
so it reads the same offline, in any browser, years from now. Every value from the report is
escaped. It shows what report.json holds, never more: the controls with pass/fail and the
evidence behind each, the log verification, the registry hash and approvers, anchors, versions.
"""

from __future__ import annotations

from html import escape
from typing import Any

_CSS = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1b1f24;margin:0;background:#f6f7f9}
main{max-width:1100px;margin:0 auto;padding:28px 24px 60px}
h1{font-size:24px;margin:0 0 4px}h2{font-size:18px;margin:32px 0 10px;border-bottom:1px solid #d5d9e0;padding-bottom:4px}
.sub{color:#555;margin:0 0 18px}
.verdict{display:inline-block;font-weight:700;padding:6px 14px;border-radius:6px;font-size:17px}
.pass{background:#dff3e4;color:#14532d}.fail{background:#fde2e1;color:#8a1c1c}
table{border-collapse:collapse;width:100%;background:#fff;border:1px solid #d5d9e0}
th,td{text-align:left;padding:7px 10px;border-bottom:1px solid #e6e9ee;vertical-align:top}
th{background:#eef1f5;font-weight:600}
td.state{font-weight:700;white-space:nowrap}td.state.pass,td.state.fail{text-align:center}
code,.mono{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:13px;word-break:break-all}
details{background:#fff;border:1px solid #d5d9e0;border-radius:6px;margin:10px 0;padding:0 12px}
summary{cursor:pointer;padding:10px 0;font-weight:600}
details table{margin-bottom:12px}
.small{color:#555;font-size:13px}
dl{display:grid;grid-template-columns:max-content 1fr;gap:4px 16px;background:#fff;border:1px solid #d5d9e0;padding:12px;margin:0}
dt{font-weight:600}dd{margin:0}
"""


def _state(ok: bool) -> str:
    return f'<td class="state {"pass" if ok else "fail"}">{"PASS" if ok else "FAIL"}</td>'


def _entry(entry: dict[str, Any] | None) -> str:
    if not entry:
        return '<span class="small">-</span>'
    parts = [f"seq {entry.get('seq')}", str(entry.get("kind"))]
    for key in ("decision", "gate", "reason", "error", "status"):
        if entry.get(key) is not None:
            parts.append(f"{key}={entry[key]}")
    return f'<span class="mono">{escape(" ".join(parts))}<br>{escape(str(entry.get("hash", "")))}</span>'


def _control(control: dict[str, Any]) -> str:
    rows = []
    for check in control.get("checks") or []:
        detail = escape(str(check.get("detail") or ""))
        call = check.get("call_id")
        if call:
            detail += f'<br><span class="small">call <code>{escape(str(call))}</code></span>'
        rows.append(
            "<tr>"
            + _state(bool(check.get("ok")))
            + f"<td>{escape(str(check.get('name')))}</td>"
            + f"<td>{escape(str(check.get('expected')))}</td>"
            + f"<td>{escape(str(check.get('got')))}</td>"
            + f"<td>{detail}</td><td>{_entry(check.get('entry'))}</td></tr>"
        )
    error = control.get("error")
    if error:
        rows.append(
            f'<tr><td class="state fail">FAIL</td><td colspan="5">could not finish: {escape(str(error))}</td></tr>'
        )
    script = escape(str(control.get("script", "")))
    digest = escape(str(control.get("script_sha256", "")))
    return (
        f'<details id="{escape(str(control.get("control")))}"{"" if control.get("ok") else " open"}>'
        f"<summary>{'PASS' if control.get('ok') else 'FAIL'}: {escape(str(control.get('title')))}</summary>"
        f'<p class="small">script <code>{script}</code> sha256 <code>{digest}</code>, exit {escape(str(control.get("exit_code")))},'
        f" {escape(str(control.get('seconds')))} s</p>"
        "<table><tr><th>verdict</th><th>check</th><th>expected</th><th>observed</th><th>evidence</th>"
        "<th>audit entry</th></tr>" + "".join(rows) + "</table></details>"
    )


def render_html(report: dict[str, Any]) -> str:
    controls = report.get("controls") or []
    audit = report.get("audit") or {}
    registry = report.get("registry") or {}
    anchors = report.get("anchors") or {}
    broker = report.get("broker") or {}
    ok = bool(report.get("ok"))
    summary_rows = "".join(
        "<tr>"
        + _state(bool(c.get("ok")))
        + f'<td><a href="#{escape(str(c.get("control")))}">{escape(str(c.get("title")))}</a></td>'
        + f"<td>{sum(1 for k in c.get('checks') or [] if k.get('ok'))} of {len(c.get('checks') or [])}</td>"
        + f"<td><code>{escape(str(c.get('script', '')))}</code></td></tr>"
        for c in controls
    )
    log_rows = "".join(
        "<tr>"
        + _state(bool(log.get("ok")))
        + f"<td>{escape(str(log.get('broker')))}</td><td>{escape(str(log.get('entries')))}</td>"
        + f"<td>{escape(', '.join(f'{k} {n}' for k, n in (log.get('kinds') or {}).items()))}</td>"
        + f"<td>{escape(str((log.get('first_break') or {}).get('detail', 'none')))}</td>"
        + f"<td>{'yes' if log.get('sealed') else 'no (live log)'}</td></tr>"
        for log in audit.get("logs") or []
    )
    approver_rows = "".join(
        f"<tr><td>{escape(str(a.get('name')))}</td><td><code>{escape(str(a.get('kid')))}</code></td>"
        f"<td><code>{escape(str(a.get('public_key')))}</code></td>"
        f"<td>{'signed' if a.get('kid') in (registry.get('approved_by') or []) else 'no valid signature'}</td></tr>"
        for a in registry.get("approvers") or []
    )
    versions = report.get("versions") or {}
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{escape(str(report.get("title")))}</title>
<style>{_CSS}</style></head>
<body><main>
<h1>{escape(str(report.get("title")))}</h1>
<p class="sub">Generated {escape(str(report.get("generated_at")))} by ztb {escape(str(versions.get("ztb")))}.
Every verdict below can be re-derived from this bundle alone: see <code>VERIFY.md</code>.</p>
<p><span class="verdict {"pass" if ok else "fail"}">Overall: {"PASS" if ok else "FAIL"}</span></p>

<h2>Controls</h2>
<table id="controls"><tr><th>verdict</th><th>control</th><th>checks held</th><th>script</th></tr>
{summary_rows}</table>

<h2>Audit log verification</h2>
<table><tr><th>verdict</th><th>broker</th><th>entries</th><th>kinds</th><th>first break</th><th>sealed</th></tr>
{log_rows or '<tr><td class="state fail">FAIL</td><td colspan="5">' + escape(str(audit.get("error", "no log"))) + "</td></tr>"}
</table>
<p class="small">Verified against <code>{escape(str(audit.get("public_key")))}</code> (kid <code>{escape(str(audit.get("kid")))}</code>)
with the same code as <code>ztb audit verify</code>, on the copies in <code>log/</code>.</p>

<h2>Registry and approvers</h2>
<dl><dt>verdict</dt><dd><span class="verdict {"pass" if registry.get("ok") else "fail"}">{"approved" if registry.get("ok") else "NOT approved"}</span></dd>
<dt>registry.yaml SHA-256</dt><dd><code>{escape(str(registry.get("sha256")))}</code></dd>
<dt>threshold</dt><dd>{escape(str(registry.get("threshold")))} of {len(registry.get("approvers") or [])} approvers</dd>
<dt>problem</dt><dd>{escape(str(registry.get("problem") or "none"))}</dd></dl>
<table><tr><th>approver</th><th>kid</th><th>public key</th><th>this registry</th></tr>{approver_rows}</table>

<h2>Anchors</h2>
<p>{escape(str(anchors.get("note")))}</p>

<h2>Broker and versions</h2>
<dl><dt>broker</dt><dd>{escape(str(broker.get("id")))} of deployment {escape(str(broker.get("deployment")))}</dd>
<dt>probed at</dt><dd><code>{escape(str(broker.get("url")))}</code> ({"started for this run" if broker.get("started_for_this_run") else "a live broker given"})</dd>
<dt>broker error</dt><dd>{escape(str(broker.get("error") or "none"))}</dd>
<dt>ztb</dt><dd>{escape(str(versions.get("ztb")))}</dd><dt>python</dt><dd>{escape(str(versions.get("python")))}</dd>
<dt>platform</dt><dd>{escape(str(versions.get("platform")))}</dd></dl>

<h2>Evidence by control</h2>
{"".join(_control(c) for c in controls)}
</main></body></html>
"""
