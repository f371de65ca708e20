"""Tamper evidence beyond single records, with real nodes: an older copy of the whole store put
back is refused (store freshness), and an audit log cut short is reported by `audit verify`
(audit heads recorded in the store). Neither fires on a restart or a zeroized node added again.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

import pytest

from strongroom.client import ClientError
from strongroom.constants import CKA, CKM
from strongroom.errors import CKR

from .conftest import LocalCluster, group_members

pytestmark = pytest.mark.slow

ROLLBACK = "the store is older than this node has seen (revision "


def wait_for(predicate: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def copy_store(cluster: LocalCluster, to: Path) -> None:
    to.mkdir()
    for path in (cluster.dir / "store").glob("strongroom.db*"):
        shutil.copy2(path, to / path.name)


def put_store_back(cluster: LocalCluster, copy: Path) -> None:
    for path in (cluster.dir / "store").glob("strongroom.db*"):
        path.unlink()
    for path in copy.iterdir():
        shutil.copy2(path, cluster.dir / "store" / path.name)


def make_key(cluster: LocalCluster, user: str) -> None:
    client = cluster.crypto_user(user)
    client.generate_key(CKM.AES_KEY_GEN, {CKA.TOKEN: True, CKA.VALUE_LEN: 32, CKA.LABEL: user.encode()})


def test_an_older_copy_of_the_whole_store_is_refused(cluster: LocalCluster, tmp_path: Path) -> None:
    cluster.down()
    copy_store(cluster, tmp_path / "old")  # every record in it authenticates
    cluster.up()
    make_key(cluster, "fresh1")
    cluster.down()
    copy_store(cluster, tmp_path / "new")

    put_store_back(cluster, tmp_path / "old")
    result = cluster.up(check=False)
    assert result.returncode != 0
    assert ROLLBACK in result.stderr and "rolled back? refusing to serve" in result.stderr, result.stderr
    rc, status = cluster.cli("status")
    assert rc != 0
    node = status["data"]["nodes"][0]
    assert node["state"] == "error" and node["error"].startswith(ROLLBACK), node
    client = cluster.client()
    assert client.node_status()["error"].startswith(ROLLBACK)
    with pytest.raises(ClientError) as refused:
        client.login(cluster.summary["admin_user"], cluster.summary["admin_password"])
    assert refused.value.code == CKR.DEVICE_ERROR and ROLLBACK in refused.value.message
    audit = (cluster.node_dir / "audit.log").read_text()
    assert '"event":"store.rollback"' in audit
    assert ROLLBACK in (cluster.node_dir / "node.log").read_text()

    # The store as the node last saw it: serving again, nothing lost.
    cluster.down()
    put_store_back(cluster, tmp_path / "new")
    cluster.up()
    assert cluster.admin().cluster_status()["state"] == "active"
    assert "fresh1" in [u["username"] for u in cluster.admin().user_list()]


def _recorded_head(cluster: LocalCluster) -> dict[str, Any] | None:
    heads = cluster.client().call("audit.heads")["heads"]
    return next((h for h in heads if h["node"] == "node1"), None)


def _last_seq(cluster: LocalCluster) -> int:
    import json

    return json.loads((cluster.node_dir / "audit.log").read_text().splitlines()[-1])["seq"]


def test_a_truncated_audit_log_is_reported_by_verify(cluster: LocalCluster) -> None:
    admin = cluster.admin()
    for name in ("cut1", "cut2", "cut3"):
        admin.user_create(name, "crypto-user", "password1")
    # The node records its head every heartbeat; wait until it has recorded the newest record.
    wait_for(lambda: (_recorded_head(cluster) or {}).get("seq") == _last_seq(cluster), 25,
             "the audit head to be recorded")
    last = _last_seq(cluster)
    rc, result = cluster.cli("audit", "verify")
    assert rc == 0, result
    assert result["data"]["heads_checked"] is True
    assert result["data"]["logs"][0]["head_check"]["recorded_seq"] == last

    path = cluster.node_dir / "audit.log"
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(lines[:-2]))  # the newest two records (the last user.create) cut off
    rc, result = cluster.cli("audit", "verify")
    assert rc == 1
    entry = result["data"]["logs"][0]
    assert entry["ok"] is False and "first_break" not in entry  # the chain itself still holds
    assert entry["head_check"]["problem"].startswith(f"truncated: the log ends at seq {last - 2}, "
                                                     f"but its node recorded seq {last}")
    text = cluster.run("audit", "verify")
    assert text.returncode == 1 and "NOT WHAT ITS NODE RECORDED: truncated" in text.stdout

    # Offline, the chain is checked and the output says the tail could not be.
    cluster.down()
    rc, result = cluster.cli("audit", "verify")
    assert rc == 0 and result["data"]["heads_checked"] is False
    assert "NOT checked" in result["data"]["heads_note"]
    # Back online, the node kept the recorded head: still reported after a restart.
    cluster.up()
    rc, result = cluster.cli("audit", "verify")
    problem = result["data"]["logs"][0]["head_check"]["problem"]
    assert rc == 1 and problem.startswith(("rewritten", "truncated")), problem
    assert '"event":"audit.head_mismatch"' in path.read_text()


def _stopped(cluster: LocalCluster, node_id: str) -> bool:
    pid = int((cluster.dir / "nodes" / node_id / "node.pid").read_text())
    try:
        return not group_members(os.getpgid(pid))
    except ProcessLookupError:
        return True


def test_restart_and_a_zeroized_node_added_again_raise_no_alarm(cluster: LocalCluster) -> None:
    rc, out = cluster.cli("hsm", "add", pin=cluster.admin_pin)
    assert rc == 0, out
    make_key(cluster, "steady1")
    cluster.down()
    cluster.up()
    assert {n["id"] for n in cluster.summary["nodes"]} == {"node1", "node2"}
    make_key(cluster, "steady2")

    rc, out = cluster.cli("hsm", "zeroize", "--node", "node2", "--operator")
    assert rc == 0, out
    wait_for(lambda: _stopped(cluster, "node2"), 15, "node2 to stop")
    assert not (cluster.dir / "nodes" / "node2" / "store.freshness").exists()
    make_key(cluster, "steady3")  # the store moves on while node2 is away
    cluster.up()  # node2 receives the key again: a new seal, a new high-water mark
    # Let every worker of both nodes run its periodic check at least once.
    time.sleep(12)
    rc, status = cluster.cli("status")
    assert rc == 0 and status["data"]["healthy"], status
    assert all(n["error"] is None for n in status["data"]["nodes"]), status
    make_key(cluster, "steady4")
    for node in ("node1", "node2"):
        assert "store.rollback" not in (cluster.dir / "nodes" / node / "audit.log").read_text()
        assert (cluster.dir / "nodes" / node / "store.freshness").exists()
    rc, result = cluster.cli("audit", "verify")
    assert rc == 0 and result["data"]["heads_checked"], result
    assert {e["head_check"]["node"] for e in result["data"]["logs"]} == {"node1", "node2"}
    assert all(e["head_check"]["problem"] is None for e in result["data"]["logs"])
