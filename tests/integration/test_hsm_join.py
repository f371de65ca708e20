"""`strongroom hsm add / remove` on a local cluster: a node joins through the key exchange and serves;
a removed node is stopped, zeroized and locked out.

Two nodes of one `up` directory share its SQLite store (several processes may open it).
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import time

import pytest

from strongroom.client import Client, ClientError, ClientProfile, Connection
from strongroom.constants import CKA, CKM
from strongroom.errors import CKR
from strongroom.seal import KEK_FILE, SEAL_FILE, unseal_cluster_key
from strongroom.services.join import JoinKeyPair
from strongroom.transport.tls import client_context

from .conftest import LocalCluster, group_members

pytestmark = pytest.mark.slow


def store_records(cluster: LocalCluster) -> dict[str, bytes]:
    with sqlite3.connect(cluster.dir / "store" / "strongroom.db") as db:
        return {key: bytes(value) for key, value in db.execute("SELECT key, value FROM kv")}


def store_bytes(cluster: LocalCluster) -> bytes:
    return b"".join(p.read_bytes() for p in sorted((cluster.dir / "store").iterdir()) if p.is_file())


def node_client(cluster: LocalCluster, node_id: str) -> Client:
    profile = ClientProfile.load(cluster.dir)
    (node,) = [n for n in profile.nodes if n.node_id == node_id]
    client = Client(profile, node, timeout=30)
    cluster._clients.append(client)
    return client


def add_node(cluster: LocalCluster, *extra: str) -> dict:
    # Adding a node is enrolling its certificate: an admin's act.
    rc, out = cluster.cli("hsm", "add", *extra, pin=cluster.admin_pin)
    assert rc == 0, out
    return out["data"]


def test_adding_a_node_needs_an_admin(cluster: LocalCluster) -> None:
    rc, out = cluster.cli("hsm", "add")
    assert rc != 0 and "STRONGROOM_PIN" in out["error"]
    rc, out = cluster.cli("hsm", "add", pin="admin:wrong-password")
    assert rc != 0 and "could not enroll" in out["error"]
    assert [n["id"] for n in json.loads((cluster.dir / "client.json").read_text())["nodes"]] == ["node1"]


def test_added_node_receives_the_key_and_serves(cluster: LocalCluster) -> None:
    user = cluster.crypto_user("alice")
    public, _private = user.generate_key_pair(
        CKM.EC_KEY_PAIR_GEN,
        {CKA.TOKEN: True, CKA.VERIFY: True, CKA.EC_PARAMS: bytes.fromhex("06082a8648ce3d030107")},
        {CKA.TOKEN: True, CKA.SIGN: True, CKA.LABEL: b"joined"},
    )
    before = store_records(cluster)

    node = add_node(cluster, "--zone", "b")
    assert node["id"] == "node2" and node["zone"] == "b" and group_members(os.getpgid(node["pid"]))

    # The key never went through the store: only node2's enrollment and registry entry are new (besides
    # the records every node keeps moving: the store epoch and its audit head), nothing else changed, and
    # the cluster key's bytes appear nowhere in the store's files.
    after = store_records(cluster)
    # (and the admin who enrolled node2 logged in: their user record notes it)
    # (node1's registry record is rewritten by its heartbeat every 10 s, and audit intents come and go as
    # requests settle: on a loaded machine the join spans both)
    moving = {"cluster/epoch", "audit/heads/node1", "audit/heads/node2", "users/admin", "nodes/node1"}

    def kept(key: str) -> bool:
        return key not in moving and not key.startswith("audit/intents/")

    assert {k: v for k, v in after.items() if k in before and kept(k)} == {
        k: v for k, v in before.items() if kept(k)}
    assert {k for k in set(after) - set(before) if kept(k)} <= {"nodes/node2", "enrolled/node2"}
    assert "enrolled/node2" in after
    node1_dir, node2_dir = cluster.dir / "nodes" / "node1", cluster.dir / "nodes" / "node2"
    identity1, key1 = unseal_cluster_key(node1_dir)
    identity2, key2 = unseal_cluster_key(node2_dir)
    assert key1 == key2 and identity1.cluster_id == identity2.cluster_id and identity2.node_id == "node2"
    assert bytes(key1) not in store_bytes(cluster)
    # Each node seals under its own key-encryption key.
    assert (node1_dir / SEAL_FILE).read_bytes() != (node2_dir / SEAL_FILE).read_bytes()
    assert (node1_dir / KEK_FILE).read_bytes() != (node2_dir / KEK_FILE).read_bytes()
    assert bytes(key1) not in (node2_dir / SEAL_FILE).read_bytes()

    # The CLI and the agent learn the node from client.json; a key made through node1 signs through node2.
    profile = json.loads((cluster.dir / "client.json").read_text())
    assert [n["id"] for n in profile["nodes"]] == ["node1", "node2"]
    on_node2 = node_client(cluster, "node2")
    assert on_node2.node_status()["state"] == "active"
    on_node2.login("alice", "password1")
    (found,) = on_node2.find_objects({CKA.LABEL: b"joined"})
    signature = on_node2.sign(found, CKM.ECDSA_SHA256, b"from node2")
    user.verify(public, CKM.ECDSA_SHA256, b"from node2", signature)

    rc, status = cluster.cli("status")
    assert rc == 0 and [n["id"] for n in status["data"]["nodes"]] == ["node1", "node2"], status
    events = [json.loads(line) for line in (node1_dir / "audit.log").read_text().splitlines()]
    clones = [e for e in events if e["event"] == "hsm.clone_key"]
    assert clones and clones[-1]["outcome"] == "ok" and clones[-1]["details"]["node_id"] == "node2"


def test_a_client_certificate_cannot_clone_the_key(cluster: LocalCluster) -> None:
    client = cluster.client()
    with pytest.raises(ClientError) as refused:
        client.call("hsm.clone_key", node_id="strongroom-cli", ephemeral_public=JoinKeyPair.generate().public)
    assert refused.value.code == CKR.ACTION_PROHIBITED
    assert "node role" in refused.value.message
    # Nor may it claim to be a node.
    with pytest.raises(ClientError) as refused:
        client.call("hsm.clone_key", node_id="node1", ephemeral_public=JoinKeyPair.generate().public)
    assert refused.value.code == CKR.ACTION_PROHIBITED


def test_removed_node_is_stopped_zeroized_and_locked_out(cluster: LocalCluster) -> None:
    rc, out = cluster.cli("hsm", "remove", "--id", "node1")
    assert rc != 0 and "last node" in out["error"]
    # Removal revokes through the operator's certificate; the application host's may not.
    node1 = ClientProfile.load(cluster.dir).nodes[0]
    with pytest.raises(ClientError) as refused:
        cluster.client().call("hsm.revoke", node_id="node1", serial="1234")
    assert refused.value.code == CKR.ACTION_PROHIBITED and "operator role" in refused.value.message
    del node1

    node = add_node(cluster)
    assert node["zone"] == "b"
    pgid = os.getpgid(node["pid"])
    node2_dir = cluster.dir / "nodes" / "node2"
    rc, out = cluster.cli("hsm", "remove", "--id", "node2")
    assert rc == 0, out
    assert out["data"]["id"] == "node2" and out["data"]["seal_destroyed"]

    deadline = time.monotonic() + 10
    while group_members(pgid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert group_members(pgid) == set()
    assert not (node2_dir / SEAL_FILE).exists() and not (node2_dir / KEK_FILE).exists()
    assert (node2_dir / "audit.log").exists()  # evidence stays
    profile = json.loads((cluster.dir / "client.json").read_text())
    assert [n["id"] for n in profile["nodes"]] == ["node1"]
    assert "node2" not in [n["id"] for n in cluster.admin().cluster_status()["nodes"]]

    # node1 closes a connection made with node2's certificate; the operator's still works.
    node1 = ClientProfile.load(cluster.dir).nodes[0]
    context = client_context(node2_dir / "tls" / "node.crt", node2_dir / "tls" / "node.key",
                             cluster.dir / "ca" / "ca.crt")
    with pytest.raises(ClientError) as refused:
        with Connection(node1.host, node1.port, context, timeout=10) as impostor:
            impostor.call("node.status")
    assert refused.value.code == CKR.DEVICE_REMOVED
    assert "revoked" in (cluster.dir / "nodes" / "node1" / "node.log").read_text()
    assert cluster.client().node_status()["state"] == "active"

    # Removing again is refused; a new node gets a new id and joins.
    rc, out = cluster.cli("hsm", "remove", "--id", "node2")
    assert rc != 0 and "no node 'node2'" in out["error"]
    assert add_node(cluster)["id"] == "node3"


def test_the_agent_learns_added_and_removed_nodes_without_a_restart(cluster: LocalCluster) -> None:
    agent_pid = cluster.summary["agent_pid"]
    log = cluster.dir / "agent.log"
    node = add_node(cluster, "--zone", "b")

    def wait_for(text: str) -> None:
        deadline = time.monotonic() + 30
        while text not in log.read_text():
            assert time.monotonic() < deadline, f"the agent never logged {text!r}"
            time.sleep(0.1)

    wait_for(f"learned about node {node['id']}")
    # The agent now routes around node1: stop it and the SDK (through the agent) still gets answers.
    node1_pid = int((cluster.dir / "nodes" / "node1" / "node.pid").read_text())
    os.killpg(os.getpgid(node1_pid), signal.SIGKILL)
    status = Client.from_agent(cluster.summary["agent_socket"], timeout=30).node_status()
    assert status["node_id"] == node["id"]
    cluster.up()  # node1 back
    rc, removed = cluster.cli("hsm", "remove", "--id", node["id"])
    assert rc == 0, removed
    wait_for(f"node {node['id']} left the cluster")
    assert int((cluster.dir / "agent.pid").read_text()) == agent_pid  # never restarted
