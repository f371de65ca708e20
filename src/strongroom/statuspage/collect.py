"""What the status page shows, gathered from the nodes (operator certificate) and the directory."""

from __future__ import annotations

import json
import time
from collections import deque
from pathlib import Path
from typing import Any

from strongroom.client import Client, ClientError, ClientProfile, ProfileError
from strongroom.metrics.certificates import iso8601, read_all

#: Audit events shown, newest first.
RECENT_EVENTS = 20
#: Bytes read from the end of each node's audit log (enough for RECENT_EVENTS records).
AUDIT_TAIL_BYTES = 64 * 1024
NODE_TIMEOUT = 5.0


class StatusPageError(Exception):
    pass


def _certificates(root: Path, profile: ClientProfile) -> list[tuple[str, Path]]:
    """``profile`` as client.json has it (its ``cert`` is the application host's, the agent's)."""
    found = [("ca", profile.ca)]
    found += [(f"node {p.parent.parent.name}", p) for p in sorted(root.glob("nodes/*/tls/node.crt"))]
    found.append(("agent", profile.cert))
    if profile.operator_cert is not None:
        found.append(("operator", profile.operator_cert))
    kms = root / "kms" / "tls.crt"
    if kms.exists():
        found.append(("kms gateway", kms))
    return found


def _recent_events(root: Path) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    for log in sorted(root.glob("nodes/*/audit.log")):
        try:
            with log.open("rb") as stream:
                size = stream.seek(0, 2)
                stream.seek(max(0, size - AUDIT_TAIL_BYTES))
                tail = stream.read().splitlines()[1 if size > AUDIT_TAIL_BYTES else 0:]
        except OSError:
            continue
        for raw in deque(tail, maxlen=RECENT_EVENTS):
            try:
                record = json.loads(raw)
            except ValueError:
                continue
            if isinstance(record, dict):
                # What happened, to whom, how it ended: never the details (names of keys and users may be there).
                events.append({"time": record.get("time"), "node": record.get("node"), "seq": record.get("seq"),
                               "event": record.get("event"), "actor": record.get("actor"),
                               "outcome": record.get("outcome")})
    events.sort(key=lambda e: str(e.get("time")), reverse=True)
    return events[:RECENT_EVENTS]


def _etcd(root: Path) -> list[dict[str, Any]]:
    from strongroom.local import etcd

    try:
        return [dict(member) for member in etcd.status(root)]
    except Exception:  # noqa: BLE001 - a page without the members beats no page; say so
        return [{"id": "?", "endpoint": "", "health": "unknown (cannot read DIR/etcd)"}]


def collect(directory: Path) -> dict[str, Any]:
    """Everything the page shows, as plain JSON values (times ISO-8601)."""
    root = Path(directory).resolve()
    try:
        listed = ClientProfile.load(root / "client.json")
        profile = listed.as_operator()
    except ProfileError as exc:
        raise StatusPageError(f"{root}: {exc}") from None
    nodes: list[dict[str, Any]] = []
    cluster: dict[str, Any] | None = None
    for node in profile.nodes:
        entry: dict[str, Any] = {"id": node.node_id, "zone": node.zone, "address": node.address}
        try:
            with Client(profile, node, timeout=NODE_TIMEOUT) as client:
                status = client.node_status()
                if cluster is None:
                    cluster = client.cluster_status()
        except ClientError as exc:
            entry.update(health="unreachable", error=exc.message)
            nodes.append(entry)
            continue
        seal = status.get("seal") or {}
        entry.update(health={"error": "error", "sealed": "sealed"}.get(str(status.get("state")), "healthy"),
                     state=status.get("state"), version=status.get("version"), seal=seal.get("type"),
                     seal_state=seal.get("state"), seal_detail=seal.get("detail"), error=status.get("error"))
        nodes.append(entry)
    last = (cluster or {}).get("last_backup") or None
    backup = None
    if last:
        backup = {"backup_id": last.get("backup_id"), "trigger": last.get("trigger"),
                  "created": iso8601(float(last["created"])) if last.get("created") else None,
                  "age_hours": round((time.time() - float(last.get("created") or 0)) / 3600, 1)}
    certificates = [c.to_dict() for c in read_all(_certificates(root, listed))]
    zones: dict[str, list[dict[str, Any]]] = {}
    for entry in nodes:
        zones.setdefault(entry["zone"], []).append(entry)
    return {
        "generated": iso8601(time.time()),
        "dir": str(root),
        "cluster": {"name": (cluster or {}).get("name") or profile.cluster_name,
                    "id": (cluster or {}).get("cluster_id"), "state": (cluster or {}).get("state", "unreachable"),
                    "trust_anchor_fingerprint": (cluster or {}).get("trust_anchor_fingerprint")},
        "healthy": bool(nodes) and all(n["health"] == "healthy" for n in nodes),
        "zones": [{"zone": zone, "nodes": members} for zone, members in sorted(zones.items())],
        "etcd": _etcd(root),
        "last_backup": backup,
        "certificates": certificates,
        "certificates_expiring": [c["name"] for c in certificates if c["expiring"]],
        "recent_events": _recent_events(root),
    }
