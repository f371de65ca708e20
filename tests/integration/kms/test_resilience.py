"""The gateway outlives its cluster connection (node restart), serves HTTPS, and refuses a bad set-up."""

from __future__ import annotations

import subprocess
import sys
import time
from typing import Any

import pytest
from botocore.exceptions import ClientError

from strongroom import pki
from strongroom.kms.config import GatewayConfig
from strongroom.local.gateway import gateway_status, start_gateway, stop_gateway
from strongroom.ports import free_port
from tests.integration.kms.conftest import KmsEnv, stop_nodes_and_agent

pytestmark = pytest.mark.slow


def test_node_restart_is_survived_without_a_gateway_restart(kms: KmsEnv) -> None:
    client = kms.client()
    key_id = client.create_key()["KeyMetadata"]["KeyId"]
    blob = client.encrypt(KeyId=key_id, Plaintext=b"before")["CiphertextBlob"]
    gateway_pid = kms.info["kms_pid"]
    stop_nodes_and_agent(kms.cluster)  # not the gateway
    try:
        with pytest.raises(ClientError) as caught:
            client.list_keys()
        assert caught.value.response["Error"]["Code"] == "DependencyTimeoutException"
        assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503
    finally:
        kms.cluster.up()
    # The gateway reconnects and logs in again on its own.
    assert client.decrypt(CiphertextBlob=blob)["Plaintext"] == b"before"
    assert gateway_status(kms.cluster.dir) == {"pid": gateway_pid, "endpoint": kms.endpoint, "health": "running"}
    # start_gateway on a running gateway returns it unchanged (up --kms run twice).
    again = start_gateway(kms.cluster.dir)
    assert (again["kms_pid"], again["kms_access_key_id"]) == (gateway_pid, kms.access_key_id)


def server_certificate(ca_key: Any, ca_cert: Any, hosts: list[str]) -> tuple[Any, Any]:
    """A serverAuth-only certificate for ``hosts`` (what a customer's CA would issue for the gateway)."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kms")]))
           .add_extension(x509.SubjectAlternativeName(names), critical=False)
           .sign(key, hashes.SHA256()))
    cert = pki.sign_csr(ca_key, ca_cert, csr.public_bytes(serialization.Encoding.PEM), days=30, server=True,
                        client=False)
    return key, cert


def test_https_with_a_certificate_from_another_ca(kms: KmsEnv, tmp_path: Any) -> None:
    """kms.toml may name any certificate (say, from the customer's public CA); clients then trust that CA."""
    ca_key, ca_cert = pki.create_ca("kms test CA")
    key, cert = server_certificate(ca_key, ca_cert, ["127.0.0.1", "localhost"])
    pki.write_cert(tmp_path / "ca.crt", ca_cert)
    pki.write_cert(tmp_path / "tls.crt", cert)
    pki.write_private_key(tmp_path / "tls.key", key)
    config = GatewayConfig.load(kms.cluster.dir / "kms.toml")
    config.kms.port = free_port()
    config.kms.tls_cert, config.kms.tls_key = str(tmp_path / "tls.crt"), str(tmp_path / "tls.key")
    config.write(kms.cluster.dir / "kms-tls.toml")
    process = subprocess.Popen([sys.executable, "-m", "strongroom", "kms", "serve", "--config",
                                str(kms.cluster.dir / "kms-tls.toml")], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        import boto3

        client = boto3.client("kms", endpoint_url=f"https://127.0.0.1:{config.kms.port}", region_name="us-east-1",
                              aws_access_key_id=kms.access_key_id, aws_secret_access_key=kms.secret,
                              verify=str(tmp_path / "ca.crt"))
        deadline = time.monotonic() + 30
        while True:
            try:
                client.list_keys(Limit=1)
                break
            except Exception:  # noqa: BLE001 - not up yet (refused, reset, TLS): poll until the deadline
                assert time.monotonic() < deadline and process.poll() is None
                time.sleep(0.1)
        key_id = client.create_key()["KeyMetadata"]["KeyId"]
        blob = client.encrypt(KeyId=key_id, Plaintext=b"over tls")["CiphertextBlob"]
        assert client.decrypt(CiphertextBlob=blob)["Plaintext"] == b"over tls"
    finally:
        process.terminate()
        process.wait(10)


def test_a_wrong_service_password_stops_the_start(kms: KmsEnv, tmp_path: Any) -> None:
    config = GatewayConfig.load(kms.cluster.dir / "kms.toml")
    config.kms.port = free_port()
    (tmp_path / "wrong.password").write_text("not-the-password\n")
    (tmp_path / "wrong.password").chmod(0o600)
    config.cluster.password_file = str(tmp_path / "wrong.password")
    config.cluster.profile = str(kms.cluster.dir / "client.json")
    if config.kms.tls_cert is not None:  # the copy lives elsewhere: its relative paths would not resolve
        config.kms.tls_cert, config.kms.tls_key = str(config.path(config.kms.tls_cert)), str(config.path(
            config.kms.tls_key))
    config.write(tmp_path / "kms.toml")
    serve = [sys.executable, "-m", "strongroom", "kms", "serve", "--config", str(tmp_path / "kms.toml")]
    result = subprocess.run(serve, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and "refused" in result.stderr
    (tmp_path / "wrong.password").chmod(0o644)
    serve = [sys.executable, "-m", "strongroom", "kms", "serve", "--config", str(tmp_path / "kms.toml")]
    result = subprocess.run(serve, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "chmod 600" in result.stderr
    # The wrong password counted one failed login of the service user; the real gateway logs in again fine.
    assert kms.client().list_keys()["Truncated"] in (True, False)


def test_stop_gateway(kms: KmsEnv) -> None:
    pid = stop_gateway(kms.cluster.dir)
    assert pid == kms.info["kms_pid"] or pid is not None
    assert gateway_status(kms.cluster.dir)["health"] == "stopped"
    assert stop_gateway(kms.cluster.dir) is None
    kms.info.update(start_gateway(kms.cluster.dir))
    assert kms.client().list_keys()["Truncated"] in (True, False)
