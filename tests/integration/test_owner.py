"""Owning the cluster (issue 6): the customer's CA, backups, restore, recovery shares, zeroize.

Everything runs through the real `strongroom` command and real node processes; the customer's CA
and the custodians' keys are made with the `openssl` command, as a customer would.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding

from strongroom import pki
from strongroom.backup import decode_backup, encode_backup
from strongroom.client import Client, ClientError, ClientProfile
from strongroom.constants import CKA, CKM, CKO
from strongroom.errors import CKR
from strongroom.mechanisms import ec as ec_mech
from strongroom.recovery import decrypt_share, load_custodian_key, split_cluster_key
from strongroom.services.identity import ClusterIdentity

from .conftest import LocalCluster, group_members

pytestmark = pytest.mark.slow

P256 = bytes.fromhex("06082a8648ce3d030107")
ADMIN_PASSWORD = "owner-admin-pw"


def openssl(*args: str, cwd: Path) -> None:
    result = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def customer_ca(directory: Path) -> tuple[Path, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-384", "-nodes",
            "-keyout", "ca.key", "-out", "ca.crt", "-days", "365", "-subj", "/CN=Customer Root CA",
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
            cwd=directory)
    return directory / "ca.crt", directory / "ca.key"


def custodian(directory: Path, name: str, kind: str) -> tuple[Path, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    if kind == "ec":
        openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-384", "-out", f"{name}.key",
                cwd=directory)
    else:
        openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:3072", "-out", f"{name}.key",
                cwd=directory)
    openssl("pkey", "-in", f"{name}.key", "-pubout", "-out", f"{name}.pub", cwd=directory)
    return directory / f"{name}.pub", directory / f"{name}.key"


def fingerprint(cert_path: Path) -> str:
    return pki.fingerprint_sha256(x509.load_pem_x509_certificate(cert_path.read_bytes()))


def wait_for(predicate: Any, timeout: float, what: str, log: Path | None = None) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    tail = "" if log is None or not log.exists() else "\n".join(log.read_text().splitlines()[-30:])
    raise AssertionError(f"timed out waiting for {what}\n{tail}")


def node_stopped(local: LocalCluster, node_id: str = "node1") -> bool:
    pid = int((local.dir / "nodes" / node_id / "node.pid").read_text())
    try:
        return not group_members(os.getpgid(pid))
    except ProcessLookupError:
        return True


def make_signing_keys(user: Client) -> dict[str, Any]:
    """An EC and an RSA key pair; returns their public keys and a message signed by each."""
    ec_public, ec_private = user.generate_key_pair(
        CKM.EC_KEY_PAIR_GEN, {CKA.TOKEN: True, CKA.VERIFY: True, CKA.EC_PARAMS: P256, CKA.LABEL: b"ec-signer"},
        {CKA.TOKEN: True, CKA.SIGN: True, CKA.LABEL: b"ec-signer"})
    rsa_public, rsa_private = user.generate_key_pair(
        CKM.RSA_PKCS_KEY_PAIR_GEN, {CKA.TOKEN: True, CKA.VERIFY: True, CKA.MODULUS_BITS: 2048,
                                    CKA.LABEL: b"rsa-signer"},
        {CKA.TOKEN: True, CKA.SIGN: True, CKA.LABEL: b"rsa-signer"})
    ec_key = ec_mech.public_key_from_attributes(user.get_attributes(ec_public, [CKA.EC_PARAMS, CKA.EC_POINT]))
    attributes = user.get_attributes(rsa_public, [CKA.MODULUS, CKA.PUBLIC_EXPONENT])
    from cryptography.hazmat.primitives.asymmetric import rsa

    rsa_key = rsa.RSAPublicNumbers(int.from_bytes(attributes[CKA.PUBLIC_EXPONENT], "big"),
                                   int.from_bytes(attributes[CKA.MODULUS], "big")).public_key()
    return {"ec": ec_key, "rsa": rsa_key, "handles": (ec_private, rsa_private)}


def check_signing_keys(user: Client, old: dict[str, Any]) -> None:
    """The keys found by label sign, and the signatures verify against the OLD public keys."""
    message = b"signed after recovery"
    (ec_private,) = user.find_objects({CKA.CLASS: CKO.PRIVATE_KEY, CKA.LABEL: b"ec-signer"})
    (rsa_private,) = user.find_objects({CKA.CLASS: CKO.PRIVATE_KEY, CKA.LABEL: b"rsa-signer"})
    raw = user.sign(ec_private, CKM.ECDSA_SHA256, message)
    half = len(raw) // 2
    from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

    der = encode_dss_signature(int.from_bytes(raw[:half], "big"), int.from_bytes(raw[half:], "big"))
    old["ec"].verify(der, message, ec.ECDSA(hashes.SHA256()))
    signature = user.sign(rsa_private, CKM.SHA256_RSA_PKCS, message)
    old["rsa"].verify(signature, message, padding.PKCS1v15(), hashes.SHA256())


def run_cli(local: LocalCluster, *args: str, pin: str | None = None) -> tuple[int, dict[str, Any]]:
    return local.cli(*args, pin=pin)


# --- the full cycle -------------------------------------------------------------------


def test_full_cycle_customer_ca_backup_zeroize_recover_with_shares(tmp_path: Path) -> None:
    ca_cert, ca_key = customer_ca(tmp_path / "customer")
    keys = [custodian(tmp_path / "custodians", "c1", "ec"), custodian(tmp_path / "custodians", "c2", "rsa"),
            custodian(tmp_path / "custodians", "c3", "ec")]
    local = LocalCluster(tmp_path / "cluster", workers=1)
    result = local.run("up", "--workers", "1", "--ca-cert", str(ca_cert), "--ca-key", str(ca_key), "--no-initialize")
    assert result.returncode == 0, result.stderr
    new: LocalCluster | None = None
    try:
        # 1. The cluster CSR, signed by the customer's CA with plain openssl, then installed.
        csr = tmp_path / "cluster.csr"
        rc, out = run_cli(local, "cluster", "init", "--name", "owned", "--out", str(csr))
        assert rc == 0 and out["data"]["state"] == "initialize_in_progress", out
        request = x509.load_pem_x509_csr(csr.read_bytes())
        assert request.is_signature_valid
        openssl("x509", "-req", "-in", str(csr), "-CA", str(ca_cert), "-CAkey", str(ca_key), "-CAcreateserial",
                "-out", "cluster.crt", "-days", "365", cwd=tmp_path)
        # A certificate from another CA is refused, and nothing changes.
        other_ca, other_key = customer_ca(tmp_path / "other")
        openssl("x509", "-req", "-in", str(csr), "-CA", str(other_ca), "-CAkey", str(other_key), "-CAcreateserial",
                "-out", "other.crt", "-days", "365", cwd=tmp_path)
        rc, out = run_cli(local, "cluster", "initialize", "--signed-cert", str(tmp_path / "other.crt"),
                          "--trust-anchor", str(other_ca))
        assert rc != 0 and "trust anchor" in out["error"], out
        shares_dir = tmp_path / "shares"
        rc, out = run_cli(local, "cluster", "initialize", "--signed-cert", str(tmp_path / "cluster.crt"),
                          "--trust-anchor", str(ca_cert), *sum((["--custodian", str(pub)] for pub, _ in keys), []),
                          "--threshold", "2", "--shares-dir", str(shares_dir))
        assert rc == 0, out
        assert out["data"]["recovery"]["threshold"] == 2 and len(out["data"]["share_files"]) == 3
        assert all(oct(Path(f).stat().st_mode & 0o777) == "0o600" for f in out["data"]["share_files"])
        secret = out["data"]["activation_secret"]
        rc, out = run_cli(local, "cluster", "activate", "--password", ADMIN_PASSWORD)
        assert rc != 0 and "activation secret" in out["error"], out
        rc, out = run_cli(local, "cluster", "activate", "--password", ADMIN_PASSWORD, "--activation-secret", "guess")
        assert rc != 0 and out["error_name"] == "CKR_PIN_INCORRECT", out
        rc, out = run_cli(local, "cluster", "activate", "--password", ADMIN_PASSWORD, "--activation-secret", secret)
        assert rc == 0, out
        local.summary = {"admin_user": "admin", "admin_password": ADMIN_PASSWORD}
        status = local.admin().cluster_status()
        assert status["state"] == "active"
        assert status["trust_anchor_fingerprint"] == fingerprint(ca_cert)
        assert [n["health"] for n in status["nodes"]] == ["healthy"]

        # 2. Users and keys.
        admin = local.admin()
        admin.user_create("alice", "crypto-user", "alice-password")
        users_before = sorted(u["username"] for u in admin.user_list())
        alice = local.client()
        alice.login("alice", "alice-password")
        old = make_signing_keys(alice)
        alice.close()

        # 3. Backup by the operator (no credential), verified offline against the trust anchor.
        backup_file = tmp_path / "full.srbk"
        rc, out = run_cli(local, "backup", "create", "--out", str(backup_file))
        assert rc == 0, out
        rc, out = run_cli(local, "backup", "verify", "--backup", str(backup_file), "--trust-anchor", str(ca_cert))
        assert rc == 0 and out["data"]["signature"].startswith("ok"), out
        rc, out = run_cli(local, "backup", "verify", "--backup", str(backup_file), "--trust-anchor", str(other_ca))
        assert rc != 0 and "not issued by the trust anchor" in out["error"]
        assert local.admin().cluster_status()["last_backup"]["backup_id"] == decode_backup(
            backup_file.read_bytes()).header.backup_id

        # 4. Zeroize every node (here: the one node): only the backup and the shares remain.
        rc, out = run_cli(local, "hsm", "zeroize", "--node", "node1", pin=f"admin:{ADMIN_PASSWORD}")
        assert rc == 0 and out["data"]["zeroized"], out
        wait_for(lambda: node_stopped(local), 15, "the zeroized node to stop")
        node_dir = local.dir / "nodes" / "node1"
        assert not (node_dir / "cluster.seal").exists() and not (node_dir / "seal.key").exists()
        result = local.run("up")
        assert result.returncode != 0 and "zeroized" in result.stderr, result.stderr

        # 5. Custodians decrypt their shares on their own machines.
        plain = []
        for index, (_pub, private) in enumerate(keys, start=1):
            target = tmp_path / f"plain-{index}.json"
            (share_file,) = shares_dir.glob(f"share-{index}-of-3.json")
            rc, out = run_cli(local, "recovery", "decrypt-share", "--share", str(share_file), "--key", str(private),
                              "--out", str(target))
            assert rc == 0, out
            plain.append(target)
        # A share opened with another custodian's key fails.
        rc, out = run_cli(local, "recovery", "decrypt-share", "--share", str(shares_dir / "share-1-of-3.json"),
                          "--key", str(keys[2][1]), "--out", str(tmp_path / "wrong.json"))
        assert rc != 0 and not (tmp_path / "wrong.json").exists()

        # 6. Refusals: M-1 shares; a share of another cluster; an altered backup; a forged one.
        def recover(directory: Path, *shares: Path, backup: Path = backup_file) -> tuple[int, dict[str, Any]]:
            return run_cli(LocalCluster(directory), "cluster", "recover", "--backup", str(backup),
                           "--ca-cert", str(ca_cert), "--ca-key", str(ca_key), "--workers", "1",
                           *sum((["--share", str(s)] for s in shares), []))

        rc, out = recover(tmp_path / "r1", plain[0])
        assert rc != 0 and "need 2" in out["error"], out
        assert not (tmp_path / "r1").exists()
        foreign = split_cluster_key(os.urandom(32), "another-cluster", [load_custodian_key(keys[0][0].read_bytes())], 1)
        foreign_plain = decrypt_share(foreign[0], serialization.load_pem_private_key(keys[0][1].read_bytes(), None))
        foreign_file = tmp_path / "foreign.json"
        foreign_file.write_text(foreign_plain.to_json())
        rc, out = recover(tmp_path / "r2", plain[0], foreign_file)
        assert rc != 0 and "another-cluster" in out["error"], out
        altered = bytearray(backup_file.read_bytes())
        altered[len(altered) // 2] ^= 0x01
        (tmp_path / "altered.srbk").write_bytes(bytes(altered))
        rc, out = recover(tmp_path / "r3", plain[0], plain[1], backup=tmp_path / "altered.srbk")
        assert rc != 0 and "checksum" in out["error"], out
        # Forged: a record changed and the file re-made with a valid checksum and some signature.
        backup = decode_backup(backup_file.read_bytes())
        records = list(backup.records)
        victim = next(i for i, r in enumerate(records) if r.key.startswith("users/"))
        value = bytearray(records[victim].value)
        value[-1] ^= 0x01
        records[victim] = type(records[victim])(records[victim].key, bytes(value), records[victim].version)
        forger = ClusterIdentity.generate()
        (tmp_path / "forged.srbk").write_bytes(encode_backup(backup.header, records, forger.sign_digest))
        rc, out = recover(tmp_path / "r4", plain[0], plain[1], backup=tmp_path / "forged.srbk")
        assert rc != 0 and "altered" in out["error"], out
        for directory in ("r2", "r3", "r4"):
            assert not (tmp_path / directory / "nodes" / "node1" / "cluster.seal").exists()

        # 7. Recovery with 2 of 3 shares (custodians 1 and 3): every key signs as before.
        rc, out = recover(tmp_path / "recovered", plain[0], plain[2])
        assert rc == 0, out
        assert out["data"]["restored"]["key_source"] == "recovery shares"
        new = LocalCluster(tmp_path / "recovered", workers=1)
        new.summary = {"admin_user": "admin", "admin_password": ADMIN_PASSWORD}
        admin = new.admin()
        status = admin.cluster_status()
        assert status["cluster_id"] == out["data"]["restored"]["cluster_id"]
        assert status["trust_anchor_fingerprint"] == fingerprint(ca_cert)
        assert sorted(u["username"] for u in admin.user_list()) == users_before
        alice = new.client()
        alice.login("alice", "alice-password")
        check_signing_keys(alice, old)
        # Through the PKCS#11 path too: the agent of the recovered cluster serves the same key.
        via_agent = Client.from_agent(out["data"]["agent_socket"], timeout=30)
        via_agent.login("alice", "alice-password")
        check_signing_keys(via_agent, old)
        via_agent.close()
    finally:
        if new is not None:
            new.down()
        local.down()


# --- backups -------------------------------------------------------------------------------


def test_automatic_backups_after_activation_and_membership_change(cluster: LocalCluster) -> None:
    def backups() -> list[dict[str, Any]]:
        rc, out = cluster.cli("backup", "list")
        assert rc == 0, out
        return out["data"]["backups"]

    log = cluster.node_dir / "node.log"
    first = wait_for(lambda: [b for b in backups() if b["trigger"] == "activation"], 60, "the activation backup", log)
    assert len(first) == 1
    status = cluster.admin().cluster_status()
    assert status["last_backup"]["backup_id"] == first[0]["backup_id"]
    rc, out = cluster.cli("hsm", "add", pin=cluster.admin_pin)
    assert rc == 0, out
    wait_for(lambda: [b for b in backups() if b["trigger"] == "membership"], 60, "a backup after hsm add", log)
    entry = backups()[0]
    rc, out = cluster.cli("backup", "verify", "--backup", entry["file"],
                          "--trust-anchor", str(cluster.dir / "ca" / "ca.crt"))
    assert rc == 0 and out["data"]["signature"].startswith("ok"), out
    rc, out = cluster.cli("backup", "delete", "--backup-id", first[0]["backup_id"][:8])
    assert rc != 0 and "prefix" in out["error"]  # deleting needs the whole id
    rc, out = cluster.cli("backup", "delete", "--backup-id", first[0]["backup_id"])
    assert rc == 0, out
    assert first[0]["backup_id"] not in [b["backup_id"] for b in backups()]


def test_a_backup_taken_while_keys_are_created_is_consistent_and_restores(cluster: LocalCluster,
                                                                         tmp_path: Path) -> None:
    """Each key pair is in a backup whole or not at all; `backup restore --from` rebuilds it."""
    user = cluster.crypto_user("maker")
    stop = threading.Event()
    made: list[int] = []
    errors: list[BaseException] = []

    def create() -> None:
        try:
            while not stop.is_set():
                label = f"pair-{len(made)}".encode()
                user.generate_key_pair(CKM.EC_KEY_PAIR_GEN, {CKA.TOKEN: True, CKA.EC_PARAMS: P256, CKA.LABEL: label},
                                       {CKA.TOKEN: True, CKA.SIGN: True, CKA.LABEL: label})
                made.append(1)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    thread = threading.Thread(target=create)
    thread.start()
    files = []
    try:
        wait_for(lambda: len(made) >= 3, 30, "keys being created")
        for index in range(3):
            target = tmp_path / f"during-{index}.srbk"
            rc, out = cluster.cli("backup", "create", "--out", str(target))
            assert rc == 0, out
            files.append(target)
    finally:
        stop.set()
        thread.join(30)
    assert not errors, errors
    middle = files[1]
    restored = LocalCluster(tmp_path / "restored", workers=1)
    rc, out = restored.cli("backup", "restore", "--backup", str(middle), "--from", str(cluster.dir),
                           "--workers", "1", pin=cluster.admin_pin)
    assert rc == 0, out
    try:
        assert out["data"]["restored"]["key_source"] == "cluster"
        restored.summary = cluster.summary
        check = restored.client()
        check.login("maker", "password1")
        objects = check.list_objects()
        labels: dict[str, list[str]] = {}
        for entry in objects:
            labels.setdefault(str(entry["label"]), []).append(entry["class"])
        assert labels, "the backup holds none of the keys made before it"
        assert all(sorted(classes) == ["PRIVATE_KEY", "PUBLIC_KEY"] for classes in labels.values()), labels
        assert len(labels) < len(made)  # taken while keys were still being made
    finally:
        restored.down()


def test_backups_are_operator_acts_not_reachable_through_the_agent(cluster: LocalCluster) -> None:
    client = Client.from_agent(cluster.summary["agent_socket"], timeout=30)
    try:
        for op in ("backup.create", "hsm.zeroize", "cluster.install_certificate"):
            with pytest.raises(ClientError) as failure:
                client.call(op, node_id="node1") if op == "hsm.zeroize" else client.call(op)
            assert failure.value.code == CKR.ACTION_PROHIBITED, op
    finally:
        client.close()


# --- zeroize ----------------------------------------------------------------------------------


def test_zeroize_takes_one_node_out_and_the_others_keep_serving(cluster: LocalCluster) -> None:
    rc, out = cluster.cli("hsm", "add", pin=cluster.admin_pin)
    assert rc == 0, out
    user = cluster.crypto_user("zed")
    public, private = user.generate_key_pair(CKM.EC_KEY_PAIR_GEN, {CKA.TOKEN: True, CKA.EC_PARAMS: P256},
                                             {CKA.TOKEN: True, CKA.SIGN: True})
    profile = ClientProfile.load(cluster.dir)
    node2 = next(n for n in profile.nodes if n.node_id == "node2")
    # A crypto user may not zeroize; a request that reached another node than named zeroizes nothing.
    on_node2 = Client(profile, node2, timeout=30)
    on_node2.login("zed", "password1")
    with pytest.raises(ClientError) as failure:
        on_node2.zeroize("node2")
    assert failure.value.code == CKR.ACTION_PROHIBITED
    on_node2.close()
    # An application host's certificate without an admin login zeroizes nothing.
    with Client(profile, profile.nodes[0], timeout=30) as on_node1:
        with pytest.raises(ClientError) as failure:
            on_node1.zeroize("node1")
        assert failure.value.code == CKR.ACTION_PROHIBITED
    with Client(profile.as_operator(), profile.nodes[0], timeout=30) as on_node1:
        with pytest.raises(ClientError) as failure:
            on_node1.zeroize("node2")
        assert failure.value.code == CKR.ARGUMENTS_BAD
    # The operator's emergency stop, without any login.
    rc, out = cluster.cli("hsm", "zeroize", "--node", "node2", "--operator")
    assert rc == 0, out
    wait_for(lambda: node_stopped(cluster, "node2"), 15, "node2 to stop")
    assert not (cluster.dir / "nodes" / "node2" / "cluster.seal").exists()
    assert (cluster.dir / "nodes" / "node2" / "zeroized").exists()
    assert len(user.sign(private, CKM.ECDSA, b"\x01" * 32)) == 64  # node1 is unaffected
    status = cluster.admin().cluster_status()
    assert [n["id"] for n in status["nodes"]] == ["node1"]
    audit = (cluster.dir / "nodes" / "node2" / "audit.log").read_text()
    assert '"hsm.zeroize"' in audit
    # `up` brings node2 back: it receives the key again from node1.
    cluster.up()
    assert {n["id"] for n in cluster.summary["nodes"]} == {"node1", "node2"}
    assert not (cluster.dir / "nodes" / "node2" / "zeroized").exists()


def test_failed_admin_logins_from_one_source_are_rate_limited(cluster: LocalCluster) -> None:
    config = cluster.config_path.read_text()
    cluster.down()
    cluster.config_path.write_text(config.replace("admin_login_failures_per_source = 5",
                                                  "admin_login_failures_per_source = 3"))
    cluster.up()
    client = cluster.client()
    for attempt in range(3):
        with pytest.raises(ClientError) as failure:
            client.login(f"nobody{attempt}", "wrong-password", "admin")
        assert failure.value.code == CKR.PIN_INCORRECT
    # Now even the right password is refused from this source, with a message that says why.
    with pytest.raises(ClientError) as failure:
        client.login(cluster.summary["admin_user"], cluster.summary["admin_password"])
    assert failure.value.code == CKR.FUNCTION_FAILED and "too many failed admin logins" in failure.value.message
    # Another client certificate (another source) is not affected.
    ca_key = pki.load_private_key(cluster.dir / "ca" / "ca.key")
    ca_cert = pki.load_certificate(cluster.dir / "ca" / "ca.crt")
    key, cert = pki.issue_client_certificate(ca_key, ca_cert, "second-source")
    other_dir = cluster.dir / "second"
    other_dir.mkdir()
    pki.write_private_key(other_dir / "client.key", key)
    pki.write_cert(other_dir / "client.crt", cert)
    profile = ClientProfile.load(cluster.dir)
    other = ClientProfile(profile.cluster_name, profile.ca, other_dir / "client.crt", other_dir / "client.key",
                          profile.nodes)
    with Client(other, timeout=30) as second:
        second.login(cluster.summary["admin_user"], cluster.summary["admin_password"])
    log = (cluster.node_dir / "node.log").read_text()
    assert "pausing its admin logins" in log
    audit = [json.loads(line) for line in (cluster.node_dir / "audit.log").read_text().splitlines() if line]
    assert any(r.get("details", {}).get("source_paused_seconds") for r in audit if r.get("event") == "auth.login")
