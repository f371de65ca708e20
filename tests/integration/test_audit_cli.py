"""The audit log of a real node, `strongroom audit verify`, fail-closed auditing, and the CLI."""

from __future__ import annotations

import json

from strongroom.client import ClientError
from strongroom.errors import CKR

from .conftest import LocalCluster


def _records(cluster: LocalCluster) -> list[dict]:
    return [json.loads(line) for line in (cluster.node_dir / "audit.log").read_text().splitlines()]


def test_management_and_authentication_are_audited_and_verify(cluster: LocalCluster) -> None:
    admin = cluster.admin()
    admin.user_create("audited", "crypto-user", "password1")
    admin.user_change_password("audited", "password2")
    admin.user_delete("audited")
    events = [(r["event"], r["actor"], r["outcome"]) for r in _records(cluster)]
    assert events[0] == ("node.start", None, "ok")
    assert ("cluster.initialize", None, "ok") in events
    assert ("cluster.activate", "admin", "ok") in events
    for event in ("user.create", "user.change_password", "user.delete"):
        assert (event, "admin", "ok") in events
    seqs = [r["seq"] for r in _records(cluster)]
    assert seqs == list(range(1, len(seqs) + 1))
    rc, result = cluster.cli("audit", "verify")
    assert rc == 0 and result["data"]["logs"][0]["ok"] is True
    assert result["data"]["logs"][0]["records"] == len(seqs)


def test_a_tampered_audit_log_is_reported_at_the_first_broken_link(cluster: LocalCluster) -> None:
    admin = cluster.admin()
    admin.user_create("evidence", "crypto-user", "password1")
    path = cluster.node_dir / "audit.log"
    lines = path.read_text().splitlines(keepends=True)
    target = next(i for i, line in enumerate(lines) if '"event":"user.create"' in line)
    lines[target] = lines[target].replace('"actor":"admin"', '"actor":"nobody"')
    path.write_text("".join(lines))
    rc, result = cluster.cli("audit", "verify", "--file", str(path))
    assert rc == 1
    broken = result["data"]["logs"][0]["first_break"]
    assert broken["line"] == target + 1
    text = cluster.run("audit", "verify")
    assert text.returncode == 1 and f"BROKEN at line {target + 1}" in text.stdout


def test_an_operation_fails_when_the_audit_log_cannot_be_written(cluster: LocalCluster) -> None:
    admin = cluster.admin()
    path = cluster.node_dir / "audit.log"
    hidden = path.with_name("audit.log.away")
    path.rename(hidden)
    try:
        try:
            admin.user_create("unaudited", "crypto-user", "password1")
            raise AssertionError("user.create succeeded without an audit log")
        except ClientError as exc:
            assert exc.code == CKR.DEVICE_ERROR and "audit" in exc.message
        try:
            cluster.client().login("admin", cluster.summary["admin_password"])
            raise AssertionError("a login succeeded without an audit log")
        except ClientError as exc:
            assert exc.code == CKR.DEVICE_ERROR
    finally:
        hidden.rename(path)
    assert "unaudited" not in [u["username"] for u in admin.user_list()]
    rc, _ = cluster.cli("audit", "verify")
    assert rc == 0


def test_cli_json_envelopes_and_errors(shared_cluster: LocalCluster) -> None:
    pin = shared_cluster.admin_pin
    rc, created = shared_cluster.cli("user", "create", "--username", "clijson", "--role", "crypto-user",
                                     "--password", "password1", pin=pin)
    assert rc == 0 and created == {"error_code": 0, "data": created["data"]}
    assert created["data"]["username"] == "clijson"
    rc, listed = shared_cluster.cli("user", "list", pin=pin)
    assert "clijson" in [u["username"] for u in listed["data"]["users"]]
    rc, duplicate = shared_cluster.cli("user", "create", "--username", "clijson", "--role", "crypto-user",
                                       "--password", "password1", pin=pin)
    assert rc == 1 and duplicate["error_code"] == CKR.ACTION_PROHIBITED and "already exists" in duplicate["error"]
    rc, wrong = shared_cluster.cli("user", "list", pin="admin:wrong-password")
    assert rc == 1 and wrong["error_code"] == CKR.PIN_INCORRECT
    rc, no_pin = shared_cluster.cli("user", "list")
    assert rc == 1 and "STRONGROOM_PIN" in no_pin["error"]
    rc, as_user = shared_cluster.cli("user", "delete", "--username", "admin", pin="clijson:password1")
    assert rc == 1 and as_user["error_code"] == CKR.ACTION_PROHIBITED
    rc, changed = shared_cluster.cli("user", "change-password", "--username", "clijson", "--password", "password2",
                                     pin="clijson:password1")
    assert rc == 0
    rc, status = shared_cluster.cli("cluster", "status")
    assert rc == 0 and status["data"]["state"] == "active"
    text = shared_cluster.run("user", "list", pin=pin)
    assert text.returncode == 0 and "USERNAME" in text.stdout and "clijson" in text.stdout
    bad = shared_cluster.run("user", "create", "--username", "x", "--role", "wizard", "--password", "p" * 8, pin=pin)
    assert bad.returncode == 2 and "invalid choice" in bad.stderr
    assert "Traceback" not in bad.stderr + text.stderr


def test_interactive_shell_keeps_a_login(shared_cluster: LocalCluster) -> None:
    script = "\n".join([
        "user list",  # refused: not logged in
        f"login --username admin --password {shared_cluster.summary['admin_password']}",
        "user create --username shelluser --role crypto-user --password password1",
        "user list --json",
        "logout",
        "quit",
    ]) + "\n"
    result = shared_cluster.run("interactive", stdin=script)
    assert result.returncode == 0, result.stderr
    assert "log in first" in result.stderr
    assert "created crypto-user shelluser" in result.stdout
    assert '"shelluser"' in result.stdout and "logged out" in result.stdout
    assert "Traceback" not in result.stderr
