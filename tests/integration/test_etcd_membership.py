"""Operating a cluster over etcd (issue 19): membership follows the nodes, restores build several nodes,
operator tooling reaches any node, and status through the agent tells the truth about dead nodes.

One `strongroom up --nodes 2` cluster (etcd members etcd-a and etcd-b, nodes in zones a and b) for
the module; each test leaves it with its two nodes running.
"""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from strongroom.client import Client, ClientProfile
from strongroom.constants import CKA, CKM
from strongroom.local import etcd as local_etcd
from strongroom.services.config import NodeConfig

from .conftest import LocalCluster, group_members

#: A test may start etcd members and nodes, or wait out a frozen node's timeouts.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


class TwoNodes(LocalCluster):
    def __init__(self, directory: Path) -> None:
        super().__init__(directory, workers=1, up_args=("--nodes", "2"))

    def node(self, node_id: str) -> Client:
        profile = ClientProfile.load(self.dir)
        client = Client(profile, next(n for n in profile.nodes if n.node_id == node_id), timeout=30)
        self._clients.append(client)
        return client

    def kill_node(self, node_id: str) -> None:
        pid = int((self.dir / "nodes" / node_id / "node.pid").read_text())
        pgid = os.getpgid(pid)
        os.killpg(pgid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while group_members(pgid) and time.monotonic() < deadline:
            time.sleep(0.05)

    def etcd_members(self) -> list[dict[str, Any]]:
        """The member list as etcd itself answers it (not our members.json)."""
        for member in local_etcd.load(self.dir):
            request = urllib.request.Request(member.client_url + "/v3/cluster/member/list", data=b"{}",
                                             method="POST")
            try:
                with urllib.request.urlopen(request, timeout=5) as answer:
                    members: list[dict[str, Any]] = json.loads(answer.read())["members"]
                    return members
            except OSError:
                continue
        raise AssertionError("no etcd member answered member/list")


@pytest.fixture(scope="module")
def two(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TwoNodes]:
    local_etcd.etcd_binary()  # a missing etcd (Debian etcd-server) fails here, never skips
    cluster = TwoNodes(tmp_path_factory.mktemp("two") / "cluster")
    cluster.up()
    try:
        cluster.admin().user_create("ops", "crypto-user", "password1")
        yield cluster
    finally:
        cluster.down()


def test_status_through_the_agent_never_shows_a_dead_node_as_healthy(two: TwoNodes) -> None:
    """The registry's health is a heartbeat (up to 30 s old): a node killed a moment ago still looks
    healthy there. Asked through the agent, the answer carries what the agent sees of each node."""
    socket = two.summary["agent_socket"]
    assert _healthy_through_agent(socket) == ["healthy", "healthy"]  # the agent is connected to both
    with Client.from_agent(socket, timeout=30) as through_agent:
        before = {n["id"]: n for n in through_agent.cluster_status()["nodes"]}
    assert before["node2"]["health"] == "healthy", before
    two.kill_node("node2")
    killed = time.monotonic()
    seen: list[tuple[float, str]] = []
    deadline = killed + 20  # the registry alone would say "healthy" for 30 s
    while time.monotonic() < deadline:
        with Client.from_agent(socket, timeout=30) as through_agent:
            node2 = next(n for n in through_agent.cluster_status()["nodes"] if n["id"] == "node2")
        seen.append((round(time.monotonic() - killed, 2), node2["health"]))
        if node2["health"] != "healthy":
            break
        time.sleep(0.2)
    registry = next(n for n in two.node("node1").cluster_status()["nodes"] if n["id"] == "node2")
    print(f"\nthrough the agent after the kill: {seen}; the registry meanwhile: {registry['health']}")
    assert seen[-1][1] == "unreachable", seen
    assert before["node2"]["agent"] == "connected" and node2["agent"].startswith("unreachable"), (before, node2)
    # Once the agent lost it, it stays so (no "healthy" from the stale heartbeat in between).
    for _ in range(5):
        with Client.from_agent(socket, timeout=30) as through_agent:
            again = next(n for n in through_agent.cluster_status()["nodes"] if n["id"] == "node2")
        assert again["health"] != "healthy", again
    two.up()


def test_status_through_the_agent_never_shows_a_frozen_node_as_healthy(two: TwoNodes) -> None:
    """A node that stops answering without closing its connections (its host cut off, a frozen process): the
    registry and the agent's last health check both still say healthy. The answer through the agent asks it."""
    socket = two.summary["agent_socket"]
    assert _healthy_through_agent(socket) == ["healthy", "healthy"]  # the agent is connected to both
    with Client.from_agent(socket, timeout=30) as through_agent:
        first = through_agent.cluster_status()
        assert [n["health"] for n in first["nodes"]] == ["healthy", "healthy"], first["nodes"]
        # The client's requests stay on the node that answered; the other one is frozen.
        frozen = "node1" if first["answered_by"] == "node2" else "node2"
        pgid = os.getpgid(int((two.dir / "nodes" / frozen / "node.pid").read_text()))
        os.killpg(pgid, signal.SIGSTOP)
        try:
            now = through_agent.cluster_status()
            entry = next(n for n in now["nodes"] if n["id"] == frozen)
            assert entry["health"] == "unreachable" and entry["agent"].startswith("unreachable"), entry
            registry = next(n for n in two.node(now["answered_by"]).cluster_status()["nodes"] if n["id"] == frozen)
            print(f"\nfrozen {frozen} through the agent: {entry['agent']}; the registry: {registry['health']}")
        finally:
            os.killpg(pgid, signal.SIGCONT)
    # Thawed, it is healthy again through the agent (the agent reconnects if its check dropped it).
    assert _healthy_through_agent(socket) == ["healthy", "healthy"]


def _healthy_through_agent(socket: str, within: float = 60) -> list[str]:
    """The nodes' health through the agent, once all are healthy (or as last seen after ``within`` s)."""
    deadline = time.monotonic() + within
    while True:
        with Client.from_agent(socket, timeout=30) as through_agent:
            healths = [n["health"] for n in through_agent.cluster_status()["nodes"]]
        if all(h == "healthy" for h in healths) or time.monotonic() > deadline:
            return healths
        time.sleep(0.5)


def test_operator_commands_given_dir_use_any_node_that_answers(two: TwoNodes) -> None:
    """client.json lists node1 first; with node1 down, --dir commands go to node2."""
    two.kill_node("node1")
    try:
        rc, out = two.cli("backup", "create")
        assert rc == 0, out
        assert out["data"]["records"] > 0
        rc, out = two.cli("cluster", "status")
        assert rc == 0, out
        assert out["data"]["answered_by"] == "node2"
        rc, out = two.cli("user", "list", pin=two.admin_pin)
        assert rc == 0, out
        assert "ops" in [u["username"] for u in out["data"]["users"]]
    finally:
        two.up()


def test_operator_commands_given_dir_pass_over_a_node_that_accepts_but_never_answers(two: TwoNodes) -> None:
    """A frozen node (a stopped process, a host thrashing) still accepts TCP connections: the kernel completes
    them into the listen backlog. A command must try the next node instead of waiting its whole timeout on it."""
    pgid = os.getpgid(int((two.dir / "nodes" / "node1" / "node.pid").read_text()))
    os.killpg(pgid, signal.SIGSTOP)
    try:
        rc, out = two.cli("cluster", "status")
        assert rc == 0, out
        assert out["data"]["answered_by"] == "node2"
        rc, out = two.cli("user", "list", pin=two.admin_pin)
        assert rc == 0, out
        assert "ops" in [u["username"] for u in out["data"]["users"]]
    finally:
        os.killpg(pgid, signal.SIGCONT)
    rc, out = two.cli("cluster", "status")
    assert rc == 0 and out["data"]["answered_by"] == "node1", out


def test_hsm_add_in_a_new_zone_adds_its_etcd_member_and_remove_removes_it(two: TwoNodes) -> None:
    assert sorted(m["name"] for m in two.etcd_members()) == ["etcd-a", "etcd-b"]
    rc, out = two.cli("hsm", "add", "--zone", "c", pin=two.admin_pin)
    assert rc == 0, out
    added = out["data"]
    assert added["id"] == "node3" and added["zone"] == "c"
    member = added["etcd_member"]
    assert member["id"] == "etcd-c"
    # etcd itself has the new member, started and serving.
    members = {m["name"]: m for m in two.etcd_members()}
    assert sorted(members) == ["etcd-a", "etcd-b", "etcd-c"], members
    assert member["endpoint"] in members["etcd-c"]["clientURLs"]
    with urllib.request.urlopen(member["endpoint"] + "/health", timeout=5) as answer:
        assert json.loads(answer.read())["health"] == "true"
    # The new node uses its zone's member first; the others know it for their next start.
    assert NodeConfig.load(two.dir / "nodes" / "node3" / "node.toml").store_endpoints[0] == member["endpoint"]
    for node_id in ("node1", "node2"):
        assert member["endpoint"] in NodeConfig.load(two.dir / "nodes" / node_id / "node.toml").store_endpoints
    # A key made through the new node (its writes go through etcd-c) is there at once through node1.
    via3 = two.node("node3")
    via3.login("ops", "password1")
    via3.generate_key(CKM.AES_KEY_GEN, {CKA.TOKEN: True, CKA.VALUE_LEN: 32, CKA.LABEL: b"made-in-zone-c"})
    via1 = two.node("node1")
    via1.login("ops", "password1")
    assert via1.find_objects({CKA.LABEL: b"made-in-zone-c"})

    rc, out = two.cli("hsm", "remove", "--id", "node3")
    assert rc == 0, out
    assert out["data"]["etcd_member_removed"] == member["endpoint"]
    assert sorted(m["name"] for m in two.etcd_members()) == ["etcd-a", "etcd-b"]
    assert [m.name for m in local_etcd.load(two.dir)] == ["etcd-a", "etcd-b"]
    assert not (two.dir / "etcd" / "etcd-c").exists()
    for node_id in ("node1", "node2"):
        assert member["endpoint"] not in NodeConfig.load(two.dir / "nodes" / node_id / "node.toml").store_endpoints
    # The cluster writes on with its two members, and status says every part is healthy.
    via1.generate_key(CKM.AES_KEY_GEN, {CKA.TOKEN: True, CKA.VALUE_LEN: 32, CKA.LABEL: b"after-removal"})
    rc, out = two.cli("status")
    assert rc == 0 and out["data"]["healthy"], out


def test_backup_restore_builds_a_cluster_of_several_nodes_over_etcd(two: TwoNodes, tmp_path: Path) -> None:
    owner = two.node("node1")
    owner.login("ops", "password1")
    owner.generate_key(CKM.AES_KEY_GEN, {CKA.TOKEN: True, CKA.VALUE_LEN: 32, CKA.LABEL: b"restored-key"})
    backup = tmp_path / "before.srbk"
    rc, out = two.cli("backup", "create", "--out", str(backup))
    assert rc == 0, out
    restored = TwoNodes(tmp_path / "restored")
    restored.up_args = ()  # its size is the restore's
    rc, out = restored.cli("backup", "restore", "--backup", str(backup), "--from", str(two.dir), "--nodes", "3",
                           "--workers", "1", pin=two.admin_pin)
    try:
        assert rc == 0, out
        summary = out["data"]
        assert [(n["id"], n["zone"], n["state"]) for n in summary["nodes"]] == [
            ("node1", "a", "active"), ("node2", "b", "active"), ("node3", "c", "active")]
        assert sorted(m["name"] for m in restored.etcd_members()) == ["etcd-a", "etcd-b", "etcd-c"]
        for node_id in ("node1", "node2", "node3"):
            config = NodeConfig.load(restored.dir / "nodes" / node_id / "node.toml")
            assert config.store_backend == "etcd"
        # Every node serves the restored keys and users (admins keep their passwords).
        for node_id in ("node1", "node2", "node3"):
            client = restored.node(node_id)
            client.login("ops", "password1")
            assert client.find_objects({CKA.LABEL: b"restored-key"}), node_id
        # The new nodes are enrolled in the restored cluster: a zeroized one rejoins by `up`.
        rc, out = restored.cli("hsm", "zeroize", "--node", "node3", "--operator")
        assert rc == 0, out
        restored.summary = dict(two.summary)
        restored.up()
        assert [n["state"] for n in restored.summary["nodes"]] == ["active", "active", "active"]
        rc, out = restored.cli("status")
        assert rc == 0 and out["data"]["healthy"], out
    finally:
        restored.down()
