"""`strongroom cert rotate`: new node, agent and operator certificates while clients keep working. The
node's workers and the agent load the new pair on SIGHUP (no process restarts); calls through the
agent and new direct TLS connections to the node go on without one failure; certificates expiring
within 30 days then show in `status` and in the metrics."""

from __future__ import annotations

import shutil
import threading
import time
import urllib.request
from pathlib import Path

from cryptography import x509
from prometheus_client.parser import text_string_to_metric_families

from strongroom import pki
from strongroom.client import Client, ClientProfile
from strongroom.constants import CKA, CKM
from strongroom.local.rotate import _served_serial
from tests.integration.conftest import LocalCluster


def test_rotation_replaces_certificates_without_a_failed_call(tmp_path: Path) -> None:
    cluster = LocalCluster(tmp_path / "cluster", workers=2)
    cluster.up()
    try:
        admin = cluster.admin()
        admin.user_create("rotator", "crypto-user", "password1")
        admin.logout()
        # A client identity copied aside: the direct connections below test the node's side of each handshake.
        aside = tmp_path / "aside"
        shutil.copytree(cluster.dir / "client", aside / "client")
        shutil.copytree(cluster.dir / "ca", aside / "ca")
        listed = ClientProfile.load(cluster.dir / "client.json")
        direct = ClientProfile(listed.cluster_name, aside / "ca" / "ca.crt", aside / "client" / "client.crt",
                               aside / "client" / "client.key", listed.nodes)
        old_node = pki.load_certificate(cluster.node_dir / "tls" / "node.crt")
        node_pids, agent_pid = cluster.node_pids(), cluster.summary["agent_pid"]

        stop = threading.Event()
        errors: list[str] = []
        counts = {"agent": 0, "direct": 0}

        def through_agent() -> None:
            with Client.from_agent(cluster.summary["agent_socket"], timeout=30) as client:
                client.login("rotator", "password1")
                key = client.generate_key(CKM.AES_KEY_GEN, {CKA.TOKEN: True, CKA.LABEL: b"rotation", CKA.VALUE_LEN: 32})
                while not stop.is_set():
                    try:
                        client.encrypt(key, CKM.AES_GCM, b"row", {"iv": None, "aad": b"", "tag_bits": 128})
                        counts["agent"] += 1
                    except Exception as exc:  # noqa: BLE001 - every failure is the finding
                        errors.append(f"agent: {exc!r}")

        def new_connections() -> None:
            while not stop.is_set():
                try:
                    with Client(direct, timeout=30) as client:
                        client.node_status()
                    counts["direct"] += 1
                except Exception as exc:  # noqa: BLE001 - every failure is the finding
                    errors.append(f"direct: {exc!r}")
                time.sleep(0.02)

        threads = [threading.Thread(target=through_agent), threading.Thread(target=new_connections)]
        for thread in threads:
            thread.start()
        time.sleep(1.0)
        before = dict(counts)
        rc, out = cluster.cli("cert", "rotate", "--days", "20", pin=cluster.admin_pin)
        time.sleep(1.0)
        stop.set()
        for thread in threads:
            thread.join(60)
        assert rc == 0, out
        assert errors == [], errors[:5]
        assert counts["agent"] > before["agent"] + 10 and counts["direct"] > before["direct"] + 5, (before, counts)

        rotated = {r["name"]: r for r in out["data"]["rotated"]}
        assert set(rotated) == {"node node1", "agent", "operator"}
        node = rotated["node node1"]
        assert node["reloaded"] is True and node["enrolled"] is True and rotated["agent"]["reloaded"] is True
        new_node = pki.load_certificate(cluster.node_dir / "tls" / "node.crt")
        assert f"{new_node.serial_number:x}" == node["serial"] != f"{old_node.serial_number:x}"
        assert pki.certificate_role(new_node) == pki.certificate_role(old_node)
        assert new_node.extensions.get_extension_for_class(x509.SubjectAlternativeName).value == \
            old_node.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        # Every new connection, whichever worker takes it, gets the new certificate; nothing restarted.
        for _ in range(6):
            assert _served_serial(direct, "127.0.0.1", listed.nodes[0].port) == new_node.serial_number
        assert cluster.node_pids() == node_pids
        status = cluster.cli("status")[1]["data"]
        assert status["agent"]["pid"] == agent_pid
        assert (cluster.node_dir / "node.log").read_text().count("loaded for new connections") >= 2  # each worker
        assert "loaded for new connections" in (cluster.dir / "agent.log").read_text()

        # Twenty days left: status and the metrics say so (still healthy).
        assert {"node node1", "agent", "operator"} <= set(status["certificates_expiring"]), status
        assert status["healthy"] is True
        text = cluster.run("status").stdout
        assert "certificates expiring within 30 days" in text and "node node1" in text
        with urllib.request.urlopen(cluster.summary["metrics_urls"]["node1"], timeout=10) as answer:
            families = text_string_to_metric_families(answer.read().decode())
            expiring = {s.labels["certificate"]: s.value for f in families for s in f.samples
                        if s.name == "strongroom_certificate_expiring"}
        assert expiring == {"node node1": 1.0, "ca": 0.0}
    finally:
        cluster.down()


def test_rotation_without_an_admin_says_the_enrollment_is_stale(tmp_path: Path) -> None:
    cluster = LocalCluster(tmp_path / "cluster", workers=1)
    cluster.up()
    try:
        rc, out = cluster.cli("cert", "rotate", "--only", "nodes")
        assert rc == 0, out
        [node] = out["data"]["rotated"]
        assert node["reloaded"] is True and node["enrolled"] is False
        assert "strongroom hsm enroll --id node1" in node["enrollment"]
    finally:
        cluster.down()
