"""Issue 11, by attack: what a certificate of the customer's CA issued for something else, a shell on an
application host, and the operator can and cannot get from a real cluster.

Each test is an attack that succeeded before the trust boundary was built (certificates with any role
received the cluster key, an application host's certificate made backups and zeroized, the agent
socket activated the cluster, a killed node left its workers serving, a node kept a usable key on
disk whatever happened); it must fail now.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from strongroom import pki
from strongroom.client import Client, ClientError, ClientProfile
from strongroom.constants import CKA, CKM
from strongroom.errors import CKR
from strongroom.services.join import JoinKeyPair

from .conftest import LocalCluster, group_members

pytestmark = pytest.mark.slow

P256 = bytes.fromhex("06082a8648ce3d030107")


def openssl_certificate(cluster: LocalCluster, workdir: Path, name: str, extensions: str | None) -> Path:
    """A key and a certificate made with the openssl command and signed by the cluster's CA, the way a
    customer's PKI team would; ``extensions`` is an openssl extfile body (None: no extensions at all)."""
    workdir.mkdir(parents=True, exist_ok=True)
    key, csr, cert = workdir / f"{name}.key", workdir / f"{name}.csr", workdir / f"{name}.crt"
    subprocess.run(["openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-subj", f"/CN={name}", "-keyout", str(key), "-out", str(csr)], check=True, capture_output=True)
    command = ["openssl", "x509", "-req", "-in", str(csr), "-CA", str(cluster.dir / "ca" / "ca.crt"),
               "-CAkey", str(cluster.dir / "ca" / "ca.key"), "-CAcreateserial", "-days", "2", "-out", str(cert)]
    if extensions is not None:
        extfile = workdir / f"{name}.ext"
        extfile.write_text(extensions)
        command += ["-extfile", str(extfile)]
    subprocess.run(command, check=True, capture_output=True, cwd=workdir)
    return cert


def as_certificate(cluster: LocalCluster, cert: Path) -> Client:
    profile = ClientProfile.load(cluster.dir)
    other = ClientProfile(profile.cluster_name, profile.ca, cert, cert.with_suffix(".key"), profile.nodes)
    client = Client(other, timeout=20)
    cluster._clients.append(client)
    return client


def audit(cluster: LocalCluster, node: str = "node1") -> list[dict[str, Any]]:
    path = cluster.dir / "nodes" / node / "audit.log"
    return [json.loads(line) for line in path.read_text().splitlines() if line]


# --- 1. the cluster key goes only to an enrolled node certificate ---------------------------------------


def test_certificates_of_the_customers_ca_issued_for_something_else_get_no_key(
        shared_cluster: LocalCluster, tmp_path: Path) -> None:
    pair = JoinKeyPair.generate()
    # No extended key usage and no role at all (a web server's certificate): not even admitted.
    intranet = as_certificate(shared_cluster, openssl_certificate(shared_cluster, tmp_path, "intranet-web-17", None))
    with pytest.raises(ClientError) as refused:
        intranet.call("hsm.clone_key", node_id="intranet-web-17", ephemeral_public=pair.public)
    assert refused.value.code == CKR.DEVICE_REMOVED  # the node closed the connection on arrival
    assert "carries no Strongroom role" in (shared_cluster.node_dir / "node.log").read_text()

    # serverAuth + clientAuth, an application host's role, claiming to be a node by name: refused.
    vpn = as_certificate(shared_cluster, openssl_certificate(
        shared_cluster, tmp_path, "vpn-gw",
        "extendedKeyUsage = serverAuth, clientAuth\nsubjectAltName = URI:urn:strongroom:agent:vpn-gw\n"))
    for node_id in ("vpn-gw", "node1"):
        with pytest.raises(ClientError) as refused:
            vpn.call("hsm.clone_key", node_id=node_id, ephemeral_public=pair.public)
        assert refused.value.code == CKR.ACTION_PROHIBITED and "node role" in refused.value.message

    # A proper node certificate (openssl, node role) that no admin enrolled: refused, and audited.
    rogue = as_certificate(shared_cluster, openssl_certificate(
        shared_cluster, tmp_path, "node7",
        "extendedKeyUsage = serverAuth, clientAuth\nsubjectAltName = URI:urn:strongroom:node:node7, IP:127.0.0.1\n"))
    with pytest.raises(ClientError) as refused:
        rogue.call("hsm.clone_key", node_id="node7", ephemeral_public=pair.public)
    assert refused.value.code == CKR.ACTION_PROHIBITED and "not enrolled" in refused.value.message
    refusals = [r for r in audit(shared_cluster) if r["event"] == "hsm.clone_key"]
    assert refusals and all(r["outcome"] == "CKR_ACTION_PROHIBITED" for r in refusals)
    # Two roles in one certificate is no role.
    both = as_certificate(shared_cluster, openssl_certificate(
        shared_cluster, tmp_path, "both",
        "subjectAltName = URI:urn:strongroom:node:node1, URI:urn:strongroom:operator:both\n"))
    with pytest.raises(ClientError) as refused:
        both.node_status()
    assert refused.value.code == CKR.DEVICE_REMOVED


# --- 2. operator acts need the operator's certificate; it cannot log in ------------------------------------


def test_an_application_hosts_certificate_cannot_back_up_or_zeroize(shared_cluster: LocalCluster,
                                                                   tmp_path: Path) -> None:
    laptop_key, laptop_cert = pki.issue_client_certificate(pki.load_private_key(shared_cluster.dir / "ca" / "ca.key"),
                                                           pki.load_certificate(shared_cluster.dir / "ca" / "ca.crt"),
                                                           "laptop-bob")
    pki.write_private_key(tmp_path / "laptop-bob.key", laptop_key)
    pki.write_cert(tmp_path / "laptop-bob.crt", laptop_cert)
    for client in (shared_cluster.client(), as_certificate(shared_cluster, tmp_path / "laptop-bob.crt")):
        for op, args in (("backup.create", {}), ("hsm.zeroize", {"node_id": "node1"}),
                         ("hsm.revoke", {"node_id": "node1", "serial": "abc"})):
            with pytest.raises(ClientError) as refused:
                client.call(op, **args)
            assert refused.value.code == CKR.ACTION_PROHIBITED, op
    assert shared_cluster.client().node_status()["state"] == "active"  # nothing was zeroized
    refused_ops = {r["event"] for r in audit(shared_cluster) if r["outcome"] == "CKR_ACTION_PROHIBITED"}
    assert {"backup.create", "hsm.zeroize", "hsm.revoke"} <= refused_ops
    # The operator's certificate takes the backup, and has no login on the HSM.
    operator = Client(ClientProfile.load(shared_cluster.dir).as_operator(), timeout=60)
    try:
        header, data = operator.backup_create()
        assert data and header["backup_id"]
        with pytest.raises(ClientError) as refused:
            operator.login(shared_cluster.summary["admin_user"], shared_cluster.summary["admin_password"])
        assert refused.value.code == CKR.ACTION_PROHIBITED and "agent role" in refused.value.message
    finally:
        operator.close()


def test_a_server_without_the_node_role_is_not_trusted_as_a_node(shared_cluster: LocalCluster,
                                                                 tmp_path: Path) -> None:
    """An application host's certificate with serverAuth must not impersonate a node and collect PINs."""
    import ssl
    import threading

    cert = openssl_certificate(shared_cluster, tmp_path, "fake-node",
                               "extendedKeyUsage = serverAuth, clientAuth\n"
                               "subjectAltName = URI:urn:strongroom:agent:fake-node, IP:127.0.0.1\n")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, cert.with_suffix(".key"))
    context.load_verify_locations(shared_cluster.dir / "ca" / "ca.crt")
    context.verify_mode = ssl.CERT_REQUIRED
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    received: list[bytes] = []

    def serve() -> None:
        connection, _ = listener.accept()
        try:
            with context.wrap_socket(connection, server_side=True) as tls:
                tls.settimeout(5)
                received.append(tls.recv(65536))
        except (OSError, ssl.SSLError):
            pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    profile = ClientProfile.load(shared_cluster.dir)
    from strongroom.client import NodeAddress

    fake = NodeAddress("fake", "127.0.0.1", listener.getsockname()[1])
    client = Client(profile, fake, timeout=10)
    with pytest.raises(ClientError) as refused:
        client.login("admin", "the-real-password")
    assert "node role" in refused.value.message
    thread.join(10)
    listener.close()
    assert not any(b"the-real-password" in chunk for chunk in received)


# --- 3. activation: only with the secret initialization printed, never through the agent -------------------


def test_activation_needs_the_secret_and_is_refused_through_the_agent(tmp_path: Path) -> None:
    local = LocalCluster(tmp_path / "fresh", workers=1)
    result = local.run("up", "--workers", "1", "--no-initialize")
    assert result.returncode == 0, result.stderr
    local.summary = json.loads(result.stdout)
    try:
        # The customer initializes with their CA (here the throw-away one), straight to a node.
        rc, out = local.cli("cluster", "init", "--out", str(tmp_path / "cluster.csr"))
        assert rc == 0, out
        cert = pki.sign_csr(pki.load_private_key(local.dir / "ca" / "ca.key"),
                            pki.load_certificate(local.dir / "ca" / "ca.crt"),
                            (tmp_path / "cluster.csr").read_bytes(), days=30, server=False, client=True)
        pki.write_cert(tmp_path / "cluster.crt", cert)
        secret_file = tmp_path / "activation.secret"
        rc, out = local.cli("cluster", "initialize", "--signed-cert", str(tmp_path / "cluster.crt"),
                            "--trust-anchor", str(local.dir / "ca" / "ca.crt"),
                            "--activation-secret-file", str(secret_file))
        assert rc == 0, out
        secret = secret_file.read_text().strip()
        assert secret and secret not in json.dumps(out) and oct(secret_file.stat().st_mode & 0o777) == "0o600"

        # Whoever opens the agent socket first: refused even with the right secret.
        via_agent = Client.from_agent(local.summary["agent_socket"], timeout=30)
        for op, args in (("cluster.activate", {"password": "attacker-pw", "activation_secret": secret}),
                         ("cluster.initialize", {}), ("cluster.install_certificate", {})):
            with pytest.raises(ClientError) as refused:
                via_agent.call(op, **args)
            assert refused.value.code == CKR.ACTION_PROHIBITED, op
        via_agent.close()
        # Straight to a node without the secret: refused.
        direct = local.client()
        with pytest.raises(ClientError) as refused:
            direct.cluster_activate("attacker-pw", "not-the-secret")
        assert refused.value.code == CKR.PIN_INCORRECT
        assert direct.cluster_status()["state"] == "initialized"
        # The customer, with the secret.
        rc, out = local.cli("cluster", "activate", "--password", "customer-pw1", "--activation-secret-file",
                            str(secret_file))
        assert rc == 0, out
        direct.login("admin", "customer-pw1")
        assert [r["outcome"] for r in audit(local) if r["event"] == "cluster.activate"] == ["CKR_PIN_INCORRECT", "ok"]
    finally:
        local.down()


# --- 4. a killed node leaves nothing serving -------------------------------------------------------------------


def test_kill_9_of_a_nodes_main_process_leaves_no_worker_serving(tmp_path: Path) -> None:
    local = LocalCluster(tmp_path / "kill", workers=2)
    local.up()
    try:
        main = int((local.node_dir / "node.pid").read_text())
        workers = local.node_pids() - {main}
        assert len(workers) == 2
        address = local.summary["nodes"][0]["address"]
        host, port = address.rsplit(":", 1)
        os.kill(main, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and any(_alive(pid) for pid in workers):
            time.sleep(0.05)
        assert not any(_alive(pid) for pid in workers), "workers outlived their node's main process"
        with pytest.raises(OSError):
            socket.create_connection((host, int(port)), timeout=2).close()
        assert not group_members(main)  # nothing of the node's process group is left for `down` to miss
    finally:
        local.down()


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1][:1]
    except (OSError, IndexError):
        return False
    return state != "Z"


# --- 5. a shares seal: no usable key on disk; a cold start needs M custodians ---------------------------------


def test_a_cold_start_with_the_shares_seal_stays_sealed_with_fewer_than_m_shares(tmp_path: Path) -> None:
    local = LocalCluster(tmp_path / "shares", workers=1, up_args=("--nodes", "2", "--seal", "shares"))
    local.up()
    try:
        summary = local.summary
        assert summary["seal"] == "shares" and len(summary["recovery_shares"]) == 3
        user = local.crypto_user("keeper")
        public, private = user.generate_key_pair(CKM.EC_KEY_PAIR_GEN, {CKA.TOKEN: True, CKA.EC_PARAMS: P256},
                                                 {CKA.TOKEN: True, CKA.SIGN: True, CKA.LABEL: b"cold"})
        user.close()
        # Nothing on a node's disk opens the key: no key-encryption key, only a check value.
        for node in ("node1", "node2"):
            node_dir = local.dir / "nodes" / node
            assert not (node_dir / "seal.key").exists()
            document = json.loads((node_dir / "cluster.seal").read_text())
            assert document["type"] == "shares" and "ciphertext" not in document

        local.down()
        local.up_args = ()
        local.up()  # a cold start: every node is sealed
        assert sorted(local.summary["sealed"]) == ["node1", "node2"]
        with pytest.raises(ClientError) as refused:
            local.client().login("keeper", "password1")
        assert refused.value.code == CKR.DEVICE_ERROR and "sealed" in refused.value.message

        custodians = local.dir / "custodians"
        rc, out = local.cli("unseal", "--node", "node1", "--share", str(custodians / "share-1.json"),
                            "--key", str(custodians / "custodian-1.key"))
        assert rc == 0 and out["data"] == {"unsealed": False, "submitted": 1, "threshold": 2, "node_id": "node1"}
        rc, out = local.cli("seal", "status")
        assert rc == 0 and "1 of 2 shares" in out["data"]["nodes"][0]["detail"], out
        # M-1 shares: still nothing served; the same share again does not count twice.
        rc, out = local.cli("unseal", "--node", "node1", "--share", str(custodians / "share-1.json"),
                            "--key", str(custodians / "custodian-1.key"))
        assert rc == 0 and not out["data"]["unsealed"] and out["data"]["submitted"] == 1
        with pytest.raises(ClientError):
            local.client().login("keeper", "password1")
        # A share decrypted with the wrong custodian key never leaves the custodian's machine.
        rc, out = local.cli("unseal", "--node", "node1", "--share", str(custodians / "share-2.json"),
                            "--key", str(custodians / "custodian-3.key"))
        assert rc != 0
        # The M-th share unseals node1; node2 then receives the key from node1 by itself.
        rc, out = local.cli("unseal", "--node", "node1", "--share", str(custodians / "share-3.json"),
                            "--key", str(custodians / "custodian-3.key"))
        assert rc == 0 and out["data"]["unsealed"], out
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            rc, out = local.cli("seal", "status")
            if all(n["seal_state"] == "unsealed" for n in out["data"]["nodes"]):
                break
            time.sleep(0.5)
        assert all(n["seal_state"] == "unsealed" for n in out["data"]["nodes"]), out
        profile = ClientProfile.load(local.dir)
        for node in profile.nodes:
            with Client(profile, node, timeout=30) as client:
                client.login("keeper", "password1")
                (found,) = client.find_objects({CKA.LABEL: b"cold"})
                client.verify(public, CKM.ECDSA_SHA256, b"after the cold start",
                              client.sign(found, CKM.ECDSA_SHA256, b"after the cold start"))
        events = [(r["event"], r["outcome"]) for r in audit(local)]
        assert ("node.unsealed", "ok") in events and ("node.unseal", "CKR_ARGUMENTS_BAD") not in events

        # Seal migration, one node at a time, the other serving: node2 to file and back to shares.
        rc, out = local.cli("seal", "migrate", "--node", "node2", "--to", "file")
        assert rc == 0 and out["data"]["from"] == "shares" and out["data"]["to"] == "file", out
        assert (local.dir / "nodes" / "node2" / "seal.key").exists()
        rc, out = local.cli("seal", "migrate", "--node", "node2", "--to", "shares")
        assert rc == 0, out
        assert not (local.dir / "nodes" / "node2" / "seal.key").exists()
        assert ("seal.migrate", "ok") in [(r["event"], r["outcome"]) for r in audit(local, "node2")]
    finally:
        local.down()
