"""The page: one self-contained HTML document (no script, no external resource), every value escaped."""

from __future__ import annotations

from html import escape
from typing import Any

REFRESH_SECONDS = 15

STYLE = """
body { font: 14px/1.45 system-ui, 'DejaVu Sans', sans-serif; margin: 0; background: #f4f5f7; color: #1d2430; }
header { background: #1d2430; color: #fff; padding: 18px 32px; display: flex; align-items: baseline; gap: 18px; }
header h1 { font-size: 20px; margin: 0; }
header .meta { color: #aab3c2; font-size: 13px; margin-left: auto; }
main { padding: 20px 32px; display: grid; grid-template-columns: repeat(auto-fit, minmax(420px, 1fr)); gap: 18px; }
section { background: #fff; border-radius: 8px; padding: 14px 18px; box-shadow: 0 1px 2px rgba(0,0,0,.08); }
section.wide { grid-column: 1 / -1; }
h2 { font-size: 15px; margin: 0 0 10px; color: #3a4556; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: 5px 8px; border-bottom: 1px solid #e7e9ee; font-size: 13px; }
th { color: #6b7587; font-weight: 600; }
.badge { display: inline-block; padding: 1px 9px; border-radius: 10px; font-size: 12px; font-weight: 600; }
.ok { background: #dff3e4; color: #1b6b34; }
.warn { background: #fff1d6; color: #8a5a00; }
.bad { background: #fbe0e0; color: #9b1c1c; }
.info { background: #e6ecf5; color: #34506e; }
.zone { margin-bottom: 10px; }
.zone h3 { font-size: 13px; margin: 6px 0; color: #6b7587; }
code { font-size: 12px; word-break: break-all; }
"""


#: An audit outcome's colour: ok, an intent (a change about to be committed), or a refusal (CKR_*).
_OUTCOME_KIND = {"ok": "ok", "intent": "info"}


def _outcome(row: dict[str, Any]) -> str:
    return _badge(row.get("outcome"), _OUTCOME_KIND.get(str(row.get("outcome")), "bad"))


def _badge(text: object, kind: str) -> str:
    return f'<span class="badge {kind}">{escape(str(text))}</span>'


def _health(value: object) -> str:
    kind = {"healthy": "ok", "active": "ok", "unsealed": "ok", "sealed": "warn"}.get(str(value), "bad")
    return _badge(value, kind)


def _cell(value: object) -> str:
    return "-" if value is None or value == "" else escape(str(value))


def _table(rows: list[dict[str, Any]], columns: list[tuple[str, str]], testid: str,
           special: dict[str, Any] | None = None) -> str:
    if not rows:
        return f'<p data-testid="{testid}">none</p>'
    special = special or {}
    head = "".join(f"<th>{escape(title)}</th>" for _key, title in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{special[key](row) if key in special else _cell(row.get(key))}</td>"
                         for key, _title in columns) + "</tr>"
        for row in rows)
    return f'<table data-testid="{testid}"><tr>{head}</tr>{body}</table>'


def render(status: dict[str, Any]) -> str:
    cluster = status["cluster"]
    overall = _badge("healthy", "ok") if status["healthy"] else _badge("NOT healthy", "bad")
    zones = "".join(
        f'<div class="zone"><h3>zone {escape(str(z["zone"]))}</h3>'
        + _table(z["nodes"], [("id", "node"), ("health", "health"), ("state", "state"), ("seal", "seal"),
                              ("seal_state", "seal state"), ("version", "version"), ("address", "address"),
                              ("error", "error")], f"zone-{z['zone']}",
                 {"health": lambda r: _health(r.get("health")),
                  "seal_state": lambda r: _health(r.get("seal_state")) if r.get("seal_state") else "-"})
        + "</div>" for z in status["zones"])
    backup = status.get("last_backup")
    backup_html = ('<p data-testid="last-backup">none yet</p>' if not backup else
                   f'<p data-testid="last-backup"><b>{_cell(backup["created"])}</b> ({_cell(backup["age_hours"])} h '
                   f'ago, {_cell(backup["trigger"])})<br><code>{_cell(backup["backup_id"])}</code></p>')
    certs = _table(status["certificates"], [("name", "certificate"), ("not_after", "expires"),
                                            ("days_left", "days left"), ("subject", "subject")], "certificates",
                   {"days_left": lambda r: _badge(r["days_left"], "bad" if r["expired"] else
                                                  "warn" if r["expiring"] else "ok")})
    expiring = status["certificates_expiring"]
    warning = (f'<p>{_badge("expiring within 30 days: " + ", ".join(expiring), "warn")}</p>' if expiring else "")
    events = _table(status["recent_events"], [("time", "time"), ("node", "node"), ("seq", "seq"),
                                              ("event", "event"), ("actor", "actor"), ("outcome", "outcome")],
                    "recent-events", {"outcome": _outcome})
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="refresh" content="{REFRESH_SECONDS}">
<title>Strongroom {escape(str(cluster["name"]))}: status</title>
<style>{STYLE}</style></head>
<body>
<header><h1>Strongroom cluster <span data-testid="cluster-name">{escape(str(cluster["name"]))}</span></h1>
<span data-testid="cluster-state">{_health(cluster["state"])}</span> <span data-testid="overall">{overall}</span>
<span class="meta">read-only · generated {escape(status["generated"])} · refreshes every {REFRESH_SECONDS} s</span>
</header>
<main>
<section class="wide"><h2>Nodes by zone</h2>{zones or "<p>no nodes</p>"}</section>
<section><h2>etcd members</h2>{_table(status["etcd"], [("id", "member"), ("health", "health"),
                                                      ("endpoint", "endpoint")], "etcd",
                                      {"health": lambda r: _health(r.get("health"))})}
<p>{"" if status["etcd"] else "one node: embedded SQLite store"}</p></section>
<section><h2>Last backup</h2>{backup_html}
<h2>Cluster</h2><p>id <code>{_cell(cluster["id"])}</code><br>trust anchor
<code>{_cell(cluster["trust_anchor_fingerprint"])}</code></p></section>
<section class="wide"><h2>Certificates</h2>{warning}{certs}</section>
<section class="wide"><h2>Recent audit events</h2>{events}</section>
</main></body></html>
"""
