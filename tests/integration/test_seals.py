"""Seals at the node level: real clusters started with ``strongroom up --seal TYPE --seal-option K=V``.

* ``kms``: the KEK comes from the KMS gateway of a *second* cluster; the sealed cluster survives
  ``down`` + ``up`` with its keys usable, refuses to start while its KMS key is disabled, and waits
  sealed (then opens by itself) while the gateway is unreachable.
* ``pkcs11``: the KEK is wrapped by a key in a SoftHSMv2 token; the cluster survives a restart, and
  refuses to start once that key is deleted from the token.
* ``tpm``: the KEK is sealed by a software TPM; the node directory copied beside *another* TPM does
  not open, and the original opens again beside its own TPM.

Each test proves the cluster key came back by using a crypto user's key made before the restart.
"""

from __future__ import annotations

import json
import shutil
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from strongroom.client import Client, ClientError
from strongroom.constants import CKA, CKM, CKO
from strongroom.mechanisms import ec as ec_mech
from tests.seal_devices import SOFTHSM_MODULE, KmsCluster, SoftHsm, kms_cluster, swtpm

from .conftest import LocalCluster

SIGNER, SIGNER_PASSWORD = "signer", "password1"
MESSAGE = b"signed after the restart"


class SealedCluster(LocalCluster):
    """A one-node cluster whose first ``up`` passes ``--seal``/``--seal-option`` (node.toml keeps them)."""

    def __init__(self, directory: Path, seal: str, options: dict[str, Any], env: dict[str, str] | None = None):
        super().__init__(directory, workers=1)
        self.seal = seal
        self.seal_options = options
        self.env = env or {}

    def up(self, check: bool = True) -> Any:
        args = ["up", "--workers", str(self.workers)]
        if not (self.dir / "cluster.json").exists():
            args += ["--seal", self.seal]
            for name, value in self.seal_options.items():
                args += ["--seal-option", f"{name}={value}"]
        result = self.run(*args, env=self.env)
        if check:
            assert result.returncode == 0, result.stdout + result.stderr
            # Later `up`s may print less (the admin password is printed once): keep what the first said.
            self.summary = {**self.summary, **json.loads(result.stdout)}
        return result

    def seal_status(self) -> dict[str, Any]:
        """What node1's ``node.status`` says about its seal (``{}`` while it does not answer)."""
        try:
            with Client.from_dir(self.dir, timeout=10) as client:
                return dict(client.node_status().get("seal") or {})
        except ClientError:
            return {}

    def seal_document(self) -> dict[str, Any]:
        return json.loads((self.node_dir / "cluster.seal").read_text())


def make_signing_key(cluster: SealedCluster) -> tuple[int, int]:
    user = cluster.crypto_user(SIGNER, SIGNER_PASSWORD)
    params = ec_mech.params_for_curve(ec.SECP256R1())
    public, private = user.generate_key_pair(CKM.EC_KEY_PAIR_GEN,
                                             {CKA.TOKEN: True, CKA.LABEL: b"sealed-signer", CKA.EC_PARAMS: params},
                                             {CKA.TOKEN: True, CKA.LABEL: b"sealed-signer"})
    user.verify(public, CKM.ECDSA_SHA256, b"before", user.sign(private, CKM.ECDSA_SHA256, b"before"))
    return public, private


def sign_with_the_old_key(cluster: SealedCluster, handles: tuple[int, int]) -> None:
    """The crypto user logs in again and signs with the key made before the restart."""
    public, private = handles
    user: Client = cluster.client()
    user.login(SIGNER, SIGNER_PASSWORD)
    (found,) = user.find_objects({CKA.LABEL: b"sealed-signer", CKA.CLASS: CKO.PRIVATE_KEY})
    assert found == private
    user.verify(public, CKM.ECDSA_SHA256, MESSAGE, user.sign(private, CKM.ECDSA_SHA256, MESSAGE))


def assert_sealed_with(cluster: SealedCluster, seal_type: str) -> dict[str, Any]:
    config = tomllib.loads(cluster.config_path.read_text())
    assert config["seal"]["type"] == seal_type
    document = cluster.seal_document()
    assert document["type"] == seal_type
    assert not (cluster.node_dir / "seal.key").exists()  # no key-encryption key beside the seal
    status = cluster.seal_status()
    assert status.get("type") == seal_type and status.get("state") == "unsealed", status
    return document


def wait_for_seal_state(cluster: SealedCluster, state: str, timeout: float = 90) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        status = cluster.seal_status()
        if status.get("state") == state:
            return status
        assert time.monotonic() < deadline, f"the seal stayed {status}"
        time.sleep(0.5)


def refused_to_start(result: Any, cluster: SealedCluster, *needles: str) -> None:
    """`up` failed because the node refused its seal (tamper response), and nothing serves."""
    assert result.returncode != 0, result.stdout
    output = result.stdout + result.stderr + (cluster.node_dir / "node.log").read_text(errors="replace")
    assert "tamper response" in output, output[-3000:]
    for needle in needles:
        assert needle in output, output[-3000:]
    with pytest.raises(ClientError):
        cluster.client().call("session.login", username=SIGNER, password=SIGNER_PASSWORD)


# --- kms -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def kms(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KmsCluster]:
    with kms_cluster(tmp_path_factory.mktemp("seal-kms")) as cluster:
        yield cluster


@pytest.fixture
def kms_sealed(kms: KmsCluster, tmp_path: Path) -> Iterator[tuple[SealedCluster, str]]:
    key_id = kms.new_key()
    cluster = SealedCluster(tmp_path / "sealed", "kms", kms.options(key_id))
    cluster.up()
    try:
        yield cluster, key_id
    finally:
        cluster.down()


def test_a_kms_sealed_cluster_survives_a_restart_and_stops_with_its_kms_key(kms, kms_sealed):
    cluster, key_id = kms_sealed
    document = assert_sealed_with(cluster, "kms")
    assert document["kek"]["key_id"] == key_id
    assert kms.info["kms_secret_access_key"] not in cluster.config_path.read_text()
    assert kms.info["kms_secret_access_key"] not in (cluster.node_dir / "cluster.seal").read_text()
    handles = make_signing_key(cluster)

    cluster.down()
    cluster.up()
    assert_sealed_with(cluster, "kms")
    sign_with_the_old_key(cluster, handles)

    # The KMS key disabled (access revoked): the node refuses to start; enabled again, it starts.
    cluster.down()
    kms.client().disable_key(KeyId=key_id)
    refused_to_start(cluster.up(check=False), cluster, "DisabledException")
    kms.client().enable_key(KeyId=key_id)
    cluster.up()
    sign_with_the_old_key(cluster, handles)


def test_a_kms_sealed_node_waits_sealed_while_the_kms_is_unreachable(kms, kms_sealed):
    cluster, _ = kms_sealed
    handles = make_signing_key(cluster)
    cluster.down()
    kms.gateway("stop")
    try:
        cluster.up(check=False)  # the node starts sealed and retries; `up` may or may not wait for it
        status = wait_for_seal_state(cluster, "sealed")
        assert kms.endpoint in str(status.get("detail")), status
    finally:
        kms.gateway("start")
    wait_for_seal_state(cluster, "unsealed")
    sign_with_the_old_key(cluster, handles)


# --- pkcs11 ----------------------------------------------------------------------------------------


def test_a_pkcs11_sealed_cluster_survives_a_restart_and_stops_without_its_token_key(tmp_path):
    import pkcs11
    from pkcs11 import Attribute, ObjectClass

    token, pin = "node-kek", "4711-pin"
    hsm = SoftHsm(tmp_path / "softhsm")
    hsm.init_token(token, pin)
    options = {"module": SOFTHSM_MODULE, "token_label": token, "key_label": "cluster-kek",
               "pin_file": str(hsm.pin_file(pin))}
    cluster = SealedCluster(tmp_path / "sealed", "pkcs11", options, env=hsm.env)
    cluster.up()
    try:
        document = assert_sealed_with(cluster, "pkcs11")
        assert document["kek"]["key_label"] == "cluster-kek"
        assert pin not in cluster.config_path.read_text() and pin not in json.dumps(document)
        handles = make_signing_key(cluster)

        cluster.down()
        cluster.up()
        assert_sealed_with(cluster, "pkcs11")
        sign_with_the_old_key(cluster, handles)

        # The token's key deleted: the node refuses to start.
        cluster.down()
        with hsm.activate():
            lib = pkcs11.lib(SOFTHSM_MODULE)
            try:
                with lib.get_token(token_label=token).open(rw=True, user_pin=pin) as session:
                    (key,) = session.get_objects({Attribute.CLASS: ObjectClass.SECRET_KEY,
                                                  Attribute.LABEL: "cluster-kek"})
                    key.destroy()
            finally:
                lib.finalize()
        refused_to_start(cluster.up(check=False), cluster, "cluster-kek")
    finally:
        cluster.down()


# --- tpm -------------------------------------------------------------------------------------------


def copy_cluster(source: Path, target: Path) -> None:
    """The whole cluster directory copied elsewhere (a disk image restored on another host)."""
    shutil.copytree(source, target, symlinks=True,
                    ignore=shutil.ignore_patterns("*.sock", "*.pid", "*.lock"))
    for path in target.rglob("*"):
        if path.is_file() and path.suffix in (".toml", ".json", ".env"):
            path.write_text(path.read_text().replace(str(source), str(target)))


def test_a_tpm_sealed_node_copied_beside_another_tpm_does_not_open(tmp_path):
    with swtpm(tmp_path / "tpm-a" / "state") as own, swtpm(tmp_path / "tpm-b" / "state") as other:
        cluster = SealedCluster(tmp_path / "sealed", "tpm", {"tcti": own.tcti})
        cluster.up()
        try:
            assert_sealed_with(cluster, "tpm")
            handles = make_signing_key(cluster)
            cluster.down()

            stolen = SealedCluster(tmp_path / "stolen", "tpm", {})
            copy_cluster(cluster.dir, stolen.dir)
            config = stolen.config_path.read_text()
            assert own.tcti in config
            stolen.config_path.write_text(config.replace(own.tcti, other.tcti))  # the other host's TPM
            try:
                refused_to_start(stolen.up(check=False), stolen, "TPM")
            finally:
                stolen.down()
            assert other.loaded_handles() == []

            # The original directory beside its own TPM, after that TPM restarted: it opens.
            own.restart()
            cluster.up()
            assert_sealed_with(cluster, "tpm")
            sign_with_the_old_key(cluster, handles)
        finally:
            cluster.down()

