"""The ``kms`` seal against the KMS gateway of a second, real Strongroom cluster (boto3 on both sides).

One cluster (``strongroom up --kms``) per module; each test makes its own KMS key, so the tests
do not depend on one another. A second gateway process of the same cluster serves HTTPS with a
certificate of a CA made here, for the ``ca_bundle`` tests.
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import BotoCoreError, ClientError
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from strongroom.kms.config import GatewayConfig
from strongroom.ports import free_port
from strongroom.seal import (
    SEAL_FILE,
    SealedIdentity,
    SealError,
    SealSettings,
    SealUnavailable,
    provider_for,
    seal_cluster_key,
    unseal_cluster_key,
)
from strongroom.seal.kms import KmsKek, check_endpoint, encryption_context
from tests.seal_devices import KmsCluster, kms_cluster

IDENTITY = SealedIdentity("cluster-7f3a", "node-a")


@pytest.fixture(scope="module")
def second(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KmsCluster]:
    with kms_cluster(tmp_path_factory.mktemp("kms-seal")) as cluster:
        yield cluster


def kms_provider(second: KmsCluster, key_id: str, **more: Any) -> KmsKek:
    return provider_for(SealSettings("kms", second.options(key_id, **more)), second.secret_file.parent)


@pytest.fixture
def node_dir(tmp_path: Path) -> Path:
    path = tmp_path / "node"
    path.mkdir()
    return path


def test_round_trip_through_the_seal(second, node_dir):
    key_id = second.new_key()
    key = bytearray(os.urandom(32))
    seal_cluster_key(node_dir, IDENTITY, bytearray(key), SealSettings("kms", second.options(key_id)))
    assert unseal_cluster_key(node_dir) == (IDENTITY, key)
    text = (node_dir / SEAL_FILE).read_text()
    document = json.loads(text)
    assert document["kek"]["key_id"] == key_id and set(document["kek"]) == {"key_id", "ciphertext"}
    assert second.info["kms_secret_access_key"] not in text  # the options name the secret's file only
    assert sorted(p.name for p in node_dir.iterdir()) == [SEAL_FILE]
    # The blob is a real KMS ciphertext bound to this node: the KMS itself says so.
    blob = base64.b64decode(document["kek"]["ciphertext"])
    plain = second.client().decrypt(CiphertextBlob=blob, EncryptionContext=encryption_context(IDENTITY))
    assert plain["KeyId"] == key_id and len(plain["Plaintext"]) == 32


def test_an_alias_names_the_key_and_the_record_keeps_its_arn(second, tmp_path):
    key_id = second.new_key()
    alias = f"alias/seal-{os.urandom(4).hex()}"
    second.client().create_alias(AliasName=alias, TargetKeyId=key_id)
    kek, stored = kms_provider(second, alias).create(IDENTITY)
    assert stored["key_id"] == key_id  # the alias may move later; the blob stays with its key
    assert kms_provider(second, alias).recover(IDENTITY, stored) == kek


def test_another_nodes_or_clusters_blob_is_refused(second, tmp_path):
    provider = kms_provider(second, second.new_key())
    _, stored = provider.create(IDENTITY)
    for other in (SealedIdentity("cluster-7f3a", "node-b"), SealedIdentity("cluster-other", "node-a")):
        with pytest.raises(SealError, match="InvalidCiphertextException") as excinfo:
            provider.recover(other, stored)
        assert not isinstance(excinfo.value, SealUnavailable)


def test_a_blob_presented_with_another_key_is_refused(second):
    provider = kms_provider(second, second.new_key())
    _, stored = provider.create(IDENTITY)
    with pytest.raises(SealError) as excinfo:
        provider.recover(IDENTITY, dict(stored, key_id=second.new_key()))
    assert not isinstance(excinfo.value, SealUnavailable)
    assert "IncorrectKeyException" in str(excinfo.value)


def test_a_disabled_key_shuts_the_seal_until_it_is_enabled(second):
    key_id = second.new_key()
    provider = kms_provider(second, key_id)
    kek, stored = provider.create(IDENTITY)
    second.client().disable_key(KeyId=key_id)
    with pytest.raises(SealError, match="DisabledException") as excinfo:
        provider.recover(IDENTITY, stored)
    assert not isinstance(excinfo.value, SealUnavailable)
    with pytest.raises(SealError, match="DisabledException"):
        provider.create(IDENTITY)  # no new seal either
    second.client().enable_key(KeyId=key_id)
    assert provider.recover(IDENTITY, stored) == kek


def test_a_key_scheduled_for_deletion_shuts_the_seal(second):
    key_id = second.new_key()
    provider = kms_provider(second, key_id)
    kek, stored = provider.create(IDENTITY)
    second.client().schedule_key_deletion(KeyId=key_id, PendingWindowInDays=7)
    with pytest.raises(SealError, match="pending deletion") as excinfo:
        provider.recover(IDENTITY, stored)
    assert not isinstance(excinfo.value, SealUnavailable)
    second.client().cancel_key_deletion(KeyId=key_id)  # AWS leaves it Disabled
    second.client().enable_key(KeyId=key_id)
    assert provider.recover(IDENTITY, stored) == kek


def test_a_missing_key_and_wrong_credentials_are_refused(second, tmp_path):
    key_id = second.new_key()
    _, stored = kms_provider(second, key_id).create(IDENTITY)
    wrong_secret = tmp_path / "wrong-secret"
    wrong_secret.write_text("x" * 40)
    cases = [
        (kms_provider(second, f"arn:aws:kms:{second.info['kms_region']}:111122223333:key/"
                         "00000000-0000-4000-8000-000000000000"), "NotFoundException", "create"),
        (kms_provider(second, key_id, secret_access_key_file=str(wrong_secret)), "Signature", "recover"),
        (kms_provider(second, key_id, access_key_id="AKIA" + "Z" * 16), "UnrecognizedClientException", "recover"),
        (kms_provider(second, key_id, secret_access_key_file=str(tmp_path / "no-such-file")), "cannot read", "recover"),
    ]
    for provider, message, action in cases:
        with pytest.raises(SealError, match=message) as excinfo:
            provider.create(IDENTITY) if action == "create" else provider.recover(IDENTITY, stored)
        assert not isinstance(excinfo.value, SealUnavailable), excinfo.value
        assert second.info["kms_secret_access_key"] not in str(excinfo.value)


def test_a_damaged_record_is_refused_before_any_request(second):
    provider = kms_provider(second, second.new_key())
    _, stored = provider.create(IDENTITY)
    for damaged in ({}, dict(stored, ciphertext="%%%"), dict(stored, ciphertext=""),
                    dict(stored, ciphertext=base64.b64encode(b"x" * 10_000).decode()), {"ciphertext": "AAAA"}):
        with pytest.raises(SealError, match="record|size"):
            provider.recover(IDENTITY, damaged)


def test_the_gateway_stopped_is_unavailable_with_a_clear_message(second):
    provider = kms_provider(second, second.new_key())
    kek, stored = provider.create(IDENTITY)
    second.gateway("stop")
    try:
        started = time.monotonic()
        with pytest.raises(SealUnavailable) as excinfo:
            provider.recover(IDENTITY, stored)
        elapsed = time.monotonic() - started
        assert elapsed < 30, f"a node start would hang {elapsed:.1f} s on an unreachable KMS"
        assert second.endpoint in str(excinfo.value) and "does not answer" in str(excinfo.value)
        with pytest.raises(SealUnavailable):
            provider.create(IDENTITY)
    finally:
        second.gateway("start")
    assert provider.recover(IDENTITY, stored) == kek  # the node's retry succeeds once the KMS is back


def test_the_kms_cluster_down_behind_a_running_gateway_is_unavailable(second):
    from tests.integration.kms.conftest import stop_nodes_and_agent

    provider = kms_provider(second, second.new_key())
    kek, stored = provider.create(IDENTITY)
    stop_nodes_and_agent(second.cluster)
    try:
        with pytest.raises(SealUnavailable, match="DependencyTimeoutException"):
            provider.recover(IDENTITY, stored)
    finally:
        result = second.cluster.run("up", "--workers", "1", "--kms")
        assert result.returncode == 0, result.stdout + result.stderr
    assert provider.recover(IDENTITY, stored) == kek


# --- HTTPS: ca_bundle ------------------------------------------------------------------------------


def _ca(name: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    return key, cert


def _server_cert(ca_key: ec.EllipticCurvePrivateKey, ca: x509.Certificate,
                 directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kms")]))
            .issuer_name(ca.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    cert_path, key_path = directory / "kms-tls.crt", directory / "kms-tls.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)
    return cert_path, key_path


@pytest.fixture(scope="module")
def https(second: KmsCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path, Path]]:
    """(endpoint, the right CA file, another CA's file): a second gateway of the cluster serving HTTPS."""
    directory = tmp_path_factory.mktemp("kms-https")
    ca_key, ca = _ca("seal test CA")
    ca_file, other_ca_file = directory / "ca.pem", directory / "other-ca.pem"
    ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    other_ca_file.write_bytes(_ca("another CA")[1].public_bytes(serialization.Encoding.PEM))
    cert, key = _server_cert(ca_key, ca, directory)
    root = second.cluster.dir
    config = GatewayConfig.load(root / "kms.toml")
    config.kms.port = free_port()
    config.kms.tls_cert, config.kms.tls_key = str(cert), str(key)
    if hasattr(config.kms, "insecure_http"):
        config.kms.insecure_http = False
    config.write(root / "kms-https.toml")
    with open(directory / "gateway.log", "ab") as log:
        process = subprocess.Popen([sys.executable, "-m", "strongroom", "kms", "serve", "--config",
                                    str(root / "kms-https.toml")], stdout=log, stderr=subprocess.STDOUT)
    endpoint = f"https://127.0.0.1:{config.kms.port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                second.client(endpoint, str(ca_file)).list_keys(Limit=1)
                break
            except (BotoCoreError, ClientError):
                assert process.poll() is None and time.monotonic() < deadline, \
                    (directory / "gateway.log").read_text(errors="replace")
                time.sleep(0.2)
        yield endpoint, ca_file, other_ca_file
    finally:
        process.terminate()
        process.wait(10)


def test_https_with_the_ca_bundle_round_trips(second, https):
    endpoint, ca_file, _ = https
    provider = kms_provider(second, second.new_key(), endpoint=endpoint, ca_bundle=str(ca_file))
    kek, stored = provider.create(IDENTITY)
    assert provider.recover(IDENTITY, stored) == kek


def test_https_against_another_ca_is_refused(second, https):
    endpoint, ca_file, other_ca_file = https
    key_id = second.new_key()
    _, stored = kms_provider(second, key_id, endpoint=endpoint, ca_bundle=str(ca_file)).create(IDENTITY)
    impostor = kms_provider(second, key_id, endpoint=endpoint, ca_bundle=str(other_ca_file))
    for action in (lambda: impostor.recover(IDENTITY, stored), lambda: impostor.create(IDENTITY)):
        with pytest.raises(SealError, match="TLS verification") as excinfo:
            action()
        assert not isinstance(excinfo.value, SealUnavailable)
    with pytest.raises(SealError, match="no such file"):
        kms_provider(second, key_id, endpoint=endpoint, ca_bundle=str(ca_file) + ".missing").recover(IDENTITY, stored)


# --- options (no request is sent) ------------------------------------------------------------------


@pytest.mark.parametrize("endpoint", ["https://kms.example.com", "http://127.0.0.1:8080", "http://127.9.9.9:1",
                                      "http://[::1]:8443", "http://localhost:9", None])
def test_endpoints_accepted(endpoint):
    check_endpoint(endpoint)


@pytest.mark.parametrize("endpoint", ["http://kms.example.com", "http://10.1.2.3:8443", "ftp://127.0.0.1",
                                      "kms.example.com", "http://"])
def test_endpoints_that_would_carry_the_kek_in_clear_are_refused(endpoint, tmp_path):
    with pytest.raises(SealError, match="endpoint"):
        check_endpoint(endpoint)
    provider = KmsKek({"endpoint": endpoint, "key_id": "k", "access_key_id": "AKIAX",
                       "secret_access_key_file": str(tmp_path / "s")}, tmp_path)
    with pytest.raises(SealError, match="endpoint"):
        provider.create(IDENTITY)


def test_incomplete_options_are_refused(tmp_path):
    secret = tmp_path / "secret"
    secret.write_text("s" * 40)
    base = {"endpoint": "http://127.0.0.1:9", "key_id": "k"}
    with pytest.raises(SealError, match="key_id"):
        KmsKek({"endpoint": "http://127.0.0.1:9"}, tmp_path).create(IDENTITY)
    with pytest.raises(SealError, match="go together"):
        KmsKek({**base, "access_key_id": "AKIAX"}, tmp_path).create(IDENTITY)
    with pytest.raises(SealError, match="go together"):
        KmsKek({**base, "secret_access_key_file": str(secret)}, tmp_path).create(IDENTITY)
    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(SealError, match="empty"):
        KmsKek({**base, "access_key_id": "AKIAX", "secret_access_key_file": str(empty)}, tmp_path).create(IDENTITY)
    assert KmsKek({**base, "key_id": "alias/seal"}, tmp_path).describe() == \
        "kms (http://127.0.0.1:9, key alias/seal)"
