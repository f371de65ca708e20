"""`strongroom up/down/status`, cluster states, restarts, self-tests and sealed state."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from strongroom import pki
from strongroom.client import Client, ClientError
from strongroom.errors import CKR
from strongroom.local import cluster as local_cluster
from strongroom.local import nodes as local_nodes
from strongroom.local.layout import Layout

from .conftest import LocalCluster, group_members


def test_up_prints_the_documented_json_and_down_leaves_nothing(tmp_path: Path) -> None:
    local = LocalCluster(tmp_path / "c", workers=2)
    local.up()
    summary = local.summary
    for key in ("agent_socket", "pkcs11_module", "token_label", "admin_user", "admin_password", "env_file", "nodes"):
        assert key in summary
    (node,) = summary["nodes"]
    assert {"id", "address", "pid"} <= set(node)
    env = Path(summary["env_file"]).read_text()
    assert f"export STRONGROOM_AGENT_SOCKET={summary['agent_socket']}" in env
    assert f"export STRONGROOM_PKCS11_MODULE={summary['pkcs11_module']}" in env
    assert Path(summary["pkcs11_module"]).is_file() and Path(summary["agent_socket"]).exists()
    pgid = os.getpgid(node["pid"])
    agent_pgid = os.getpgid(summary["agent_pid"])
    assert len(group_members(pgid)) == 3  # supervisor + 2 workers
    assert local.admin().cluster_status()["state"] == "active"
    stopped = local.down()
    assert sorted(n["id"] for n in stopped["stopped"]) == ["agent", "node1"]
    deadline = time.monotonic() + 5
    while (group_members(pgid) or group_members(agent_pgid)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert group_members(pgid) == set() and group_members(agent_pgid) == set()
    assert not Path(summary["agent_socket"]).exists()
    rc, status = local.cli("status")
    assert rc == 1 and status["data"]["nodes"][0]["health"] == "stopped"


def test_restart_keeps_users_and_cluster_without_reinitializing(cluster: LocalCluster) -> None:
    admin = cluster.admin()
    cluster_id = admin.cluster_status()["cluster_id"]
    admin.user_create("survivor", "crypto-user", "password1")
    old_pid = cluster.summary["nodes"][0]["pid"]
    cluster.down()
    cluster.up()
    assert cluster.summary["nodes"][0]["pid"] != old_pid
    admin = cluster.admin()
    assert admin.cluster_status()["cluster_id"] == cluster_id
    assert "survivor" in [u["username"] for u in admin.user_list()]
    user = cluster.client()
    user.login("survivor", "password1")
    assert len(user.generate_random(16)) == 16
    # A second `up` while running changes nothing and reports the same processes.
    pid = cluster.summary["nodes"][0]["pid"]
    cluster.up()
    assert cluster.summary["nodes"][0]["pid"] == pid


def test_only_activation_works_before_the_cluster_is_active(tmp_path: Path) -> None:
    layout = Layout((tmp_path / "fresh").resolve())
    local_cluster.create(layout, nodes=1, workers=1, cluster_name="fresh")
    pid = local_nodes.start_node(layout, "node1")
    try:
        client = Client.from_dir(layout.root)
        local_nodes.wait_ready(layout, client.node, pid)
        assert client.cluster_status()["state"] == "uninitialized"
        for op, args in [("session.login", {"username": "admin", "password": "password1"}),
                         ("user.list", {}), ("cluster.activate", {"password": "password1",
                                                                   "activation_secret": "x"})]:
            with pytest.raises(ClientError) as failure:
                client.call(op, **args)
            assert failure.value.code == CKR.CRYPTOKI_NOT_INITIALIZED, op
        made = client.cluster_initialize("fresh")
        assert made["state"] == "initialize_in_progress" and "BEGIN CERTIFICATE REQUEST" in made["csr"]
        assert client.cluster_status()["state"] == "initialize_in_progress"
        with pytest.raises(ClientError) as failure:
            client.cluster_initialize("again")
        assert failure.value.code == CKR.ACTION_PROHIBITED
        with pytest.raises(ClientError) as failure:
            client.cluster_activate("first-admin-pw", "no secret yet")
        assert failure.value.code == CKR.CRYPTOKI_NOT_INITIALIZED  # the certificate comes first
        ca_key, ca_cert = pki.load_private_key(layout.ca_key), pki.load_certificate(layout.ca_cert)
        cert = pki.sign_csr(ca_key, ca_cert, made["csr"].encode(), days=30, server=False, client=True)
        installed = client.cluster_install_certificate(pki.cert_to_pem(cert).decode(),
                                                       pki.cert_to_pem(ca_cert).decode())
        secret = installed["activation_secret"]
        assert client.cluster_status()["state"] == "initialized"
        with pytest.raises(ClientError) as failure:
            client.login("admin", "password1")
        assert failure.value.code == CKR.CRYPTOKI_NOT_INITIALIZED
        with pytest.raises(ClientError) as failure:
            client.cluster_activate("short", secret)
        assert failure.value.code == CKR.PIN_LEN_RANGE
        # Whoever reaches a node first without the secret initialization printed does not become the admin.
        for wrong in ("", secret[:-1], secret + "x", "A" * len(secret)):
            with pytest.raises(ClientError) as failure:
                client.cluster_activate("first-admin-pw", wrong)
            assert failure.value.code == CKR.PIN_INCORRECT
        assert client.cluster_status()["state"] == "initialized"
        client.cluster_activate("first-admin-pw", secret)
        assert client.cluster_status()["state"] == "active"
        with pytest.raises(ClientError) as failure:
            client.cluster_activate("another-pw", secret)
        assert failure.value.code == CKR.ACTION_PROHIBITED
        client.login("admin", "first-admin-pw")
        assert client.user_list()[0]["username"] == "admin"
        client.close()
    finally:
        local_cluster.down(layout.root)


def test_self_test_failure_keeps_the_node_in_the_error_state(cluster: LocalCluster) -> None:
    cluster.down()
    config = cluster.config_path.read_text()
    cluster.config_path.write_text(config + '\n[testing]\nfail_selftests = ["aes-256-gcm"]\n')
    result = cluster.up(check=False)
    assert result.returncode != 0
    assert "self-test" in result.stderr and "aes-256-gcm" in result.stderr
    client = cluster.client()
    status = client.node_status()
    assert status["state"] == "error"
    assert [f["name"] for f in status["self_tests"]["failed"]] == ["aes-256-gcm"]
    for op, args in [("cluster.status", {}), ("session.login", {"username": "admin", "password": "x" * 8})]:
        with pytest.raises(ClientError) as failure:
            client.call(op, **args)
        assert failure.value.code == CKR.DEVICE_ERROR
        assert "self-test" in failure.value.message
    rc, status_json = cluster.cli("status")
    assert rc == 1 and status_json["data"]["nodes"][0]["health"] == "error"
    assert "aes-256-gcm" in (cluster.node_dir / "node.log").read_text()
    cluster.down()
    cluster.config_path.write_text(config)
    cluster.up()
    assert cluster.admin().cluster_status()["state"] == "active"


def test_a_tampered_seal_file_stops_the_node(cluster: LocalCluster) -> None:
    cluster.down()
    seal = cluster.node_dir / "cluster.seal"
    document = json.loads(seal.read_text())
    ciphertext = bytearray(document["ciphertext"].encode())
    ciphertext[5] = ord("A") if ciphertext[5] != ord("A") else ord("B")
    document["ciphertext"] = ciphertext.decode()
    seal.write_text(json.dumps(document))
    result = cluster.up(check=False)
    assert result.returncode != 0
    assert "cluster.seal" in result.stderr and "failed authentication" in result.stderr
    assert "tamper response" in result.stderr
    # The node refused to start at all: nothing listens, so nothing can be asked of it.
    with pytest.raises(ClientError) as failure:
        cluster.client().call("session.login", username="admin", password="whatever1")
    assert failure.value.code == CKR.DEVICE_REMOVED
    assert "refusing to start: tamper response" in (cluster.node_dir / "node.log").read_text()


def test_seal_and_key_files_are_private(cluster: LocalCluster) -> None:
    for path in [cluster.node_dir / "cluster.seal", cluster.node_dir / "seal.key",
                 cluster.node_dir / "tls" / "node.key", cluster.dir / "ca" / "ca.key",
                 cluster.dir / "client" / "client.key", cluster.dir / "operator" / "operator.key",
                 cluster.dir / "cluster.json"]:
        assert path.stat().st_mode & 0o077 == 0, path
    # The first admin's password was printed once by `up`; it rests nowhere in the directory.
    password = cluster.summary["admin_password"].encode()
    for path in cluster.dir.rglob("*"):
        if path.is_file() and not path.is_socket():
            assert password not in path.read_bytes(), path
    # The store holds ciphertext only: no username or the cluster name appears in clear values.
    admin = cluster.admin()
    admin.user_create("plaintextprobe", "crypto-user", "password1")
    import sqlite3

    db = sqlite3.connect(cluster.dir / "store" / "strongroom.db")
    values = b"".join(row[0] for row in db.execute("SELECT value FROM kv"))
    db.close()
    assert b"plaintextprobe" not in values and b"argon2id" not in values


def test_a_corrupted_store_file_is_reported_not_used(cluster: LocalCluster) -> None:
    cluster.down()
    store = cluster.dir / "store" / "strongroom.db"
    original = store.read_bytes()
    with open(store, "r+b") as handle:
        handle.write(b"not a database" * 8)
    result = cluster.up(check=False)
    assert result.returncode == 1
    assert "strongroom.db" in result.stderr and "corrupted" in result.stderr
    client = cluster.client()
    assert client.node_status()["state"] == "error"
    with pytest.raises(ClientError) as failure:
        client.login("admin", cluster.summary["admin_password"])
    assert failure.value.code == CKR.DEVICE_ERROR and "strongroom.db" in failure.value.message
    cluster.down()
    store.write_bytes(original)
    cluster.up()
    assert cluster.admin().cluster_status()["state"] == "active"
