"""The cluster policies of issue 13 through the CLI: shown by `strongroom status` and `cluster status`, changed
by an admin only (`cluster set-policy`), refused for a value they do not know, audited with the old value.
What each policy does is tested through PKCS#11 clients (tests/integration/clients/test_conformance.py) and the
SDK (test_objects.py)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from .conftest import LocalCluster

PASSWORD = "password1"
CAROL = f"pcarol:{PASSWORD}"
DEFAULTS = {"public_objects": "visible", "plaintext_import": "allowed", "legacy_algorithms": "off"}


@pytest.fixture(scope="module")
def hsm(shared_cluster: LocalCluster) -> Iterator[LocalCluster]:
    admin = shared_cluster.admin()
    admin.user_create("pcarol", "crypto-user", PASSWORD)
    admin.logout()
    yield shared_cluster


def ok(cluster: LocalCluster, *args: str, pin: str | None) -> dict[str, Any]:
    rc, result = cluster.cli(*args, pin=pin)
    assert rc == 0 and result["error_code"] == 0, result
    return result["data"]


def policies_line(cluster: LocalCluster, *args: str) -> str:
    result = cluster.run(*args, pin=None)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = [line for line in result.stdout.splitlines() if line.startswith("policies: ")]
    assert len(lines) == 1, result.stdout
    return lines[0]


def test_policies_shown_and_changed_by_an_admin_only(hsm: LocalCluster) -> None:
    assert ok(hsm, "status", pin=None)["policies"] == DEFAULTS
    assert ok(hsm, "cluster", "status", pin=None)["policies"] == DEFAULTS
    assert policies_line(hsm, "status") == \
        "policies: legacy_algorithms=off, plaintext_import=allowed, public_objects=visible"

    # a crypto user may not change a policy; nobody may set a value the policy does not have
    rc, refused = hsm.cli("cluster", "set-policy", "legacy_algorithms", "on", pin=CAROL)
    assert rc == 1 and refused["error_code"] != 0, refused
    rc, bad = hsm.cli("cluster", "set-policy", "legacy_algorithms", "sometimes", pin=hsm.admin_pin)
    assert rc == 1 and "sometimes" in bad["error"], bad
    assert ok(hsm, "status", pin=None)["policies"] == DEFAULTS

    try:
        changed = ok(hsm, "cluster", "set-policy", "legacy_algorithms", "on", pin=hsm.admin_pin)
        assert changed["policies"] == {**DEFAULTS, "legacy_algorithms": "on"}
        assert ok(hsm, "cluster", "status", pin=None)["policies"]["legacy_algorithms"] == "on"
        assert policies_line(hsm, "cluster", "status") == \
            "policies: legacy_algorithms=on, plaintext_import=allowed, public_objects=visible"
    finally:
        ok(hsm, "cluster", "set-policy", "legacy_algorithms", "off", pin=hsm.admin_pin)
    assert ok(hsm, "status", pin=None)["policies"] == DEFAULTS

    # audited as an intent (policy, old and new value) that an "ok" record settles
    records = [json.loads(line) for path in hsm.dir.glob("nodes/*/audit.log")
               for line in path.read_text().splitlines() if line.strip()]
    settled = {(r["node"], r["details"].get("intent")) for r in records
               if r.get("event") == "cluster.set_policy" and r.get("outcome") == "ok"}
    changes = [(r["details"]["value"], r["details"]["previous"], r.get("actor"))
               for r in records if r.get("event") == "cluster.set_policy" and r.get("outcome") == "intent"
               and r["details"].get("policy") == "legacy_algorithms" and (r["node"], r["seq"]) in settled]
    admin = hsm.summary["admin_user"]
    assert ("on", "off", admin) in changes and ("off", "on", admin) in changes, changes
