"""Custom key stores (AWS CloudHSM key stores) against a real cluster and gateway, through boto3.

AWS names the key store's crypto user ``kmsuser``; the local set-up (``kms.local.setup``, what
``up --kms`` runs) makes it, distinct from the gateway's own service user ``kmsgateway``, and the
test's admin gives it a password the test knows, as an AWS customer sets kmsuser's. The gateway's
deletion "day" is 0.05 s here so that scheduled store keys are really deleted within the module.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterator
from typing import Any

import pytest
from botocore.exceptions import ClientError

from strongroom import pki
from strongroom.client import ClientError as SdkError
from strongroom.constants import CKA
from strongroom.kms.arn import aws_cluster_id
from strongroom.local.gateway import start_gateway, stop_gateway
from tests.integration.kms.conftest import KEY_STORE_GATEWAY_USER, KmsEnv, error_of, gateway_login, key_store_cluster

pytestmark = pytest.mark.slow

KMSUSER_PASSWORD = "kms-user-pass-1"


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KmsEnv]:
    with key_store_cluster(tmp_path_factory.mktemp("cks") / "cluster", KMSUSER_PASSWORD, day_seconds=0.05,
                           check_seconds=0.5) as kms_env:
        yield kms_env


@pytest.fixture(scope="module")
def kms(env: KmsEnv) -> Any:
    return env.client()


def trust_anchor(env: KmsEnv) -> str:
    return (env.cluster.dir / "ca" / "ca.crt").read_text()


def cluster_id(env: KmsEnv) -> str:
    client = env.cluster.client()
    return client.cluster_status()["cluster_id"]


def store_of(kms: Any, store_id: str) -> dict[str, Any]:
    return kms.describe_custom_key_stores(CustomKeyStoreId=store_id)["CustomKeyStores"][0]


def wait_state(kms: Any, store_id: str, *states: str, timeout: float = 20) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        entry = store_of(kms, store_id)
        if entry["ConnectionState"] in states:
            return entry
        assert time.monotonic() < deadline, entry
        time.sleep(0.1)


def code_of(call: Any, *args: Any, **kwargs: Any) -> tuple[str, str]:
    with pytest.raises(ClientError) as caught:
        call(*args, **kwargs)
    return error_of(caught)


def test_create_checks_the_cluster_and_its_trust_anchor(env: KmsEnv, kms: Any) -> None:
    good = {"CloudHsmClusterId": cluster_id(env), "TrustAnchorCertificate": trust_anchor(env),
            "KeyStorePassword": KMSUSER_PASSWORD}
    assert code_of(kms.create_custom_key_store, CustomKeyStoreName="x",
                   **{**good, "CloudHsmClusterId": "cluster-234567abcdefg"})[0] == "CloudHsmClusterNotFoundException"
    _, other_ca = pki.create_ca("not the cluster's CA")
    assert code_of(kms.create_custom_key_store, CustomKeyStoreName="x",
                   **{**good, "TrustAnchorCertificate": pki.cert_to_pem(other_ca).decode()}
                   )[0] == "IncorrectTrustAnchorException"
    assert code_of(kms.create_custom_key_store, CustomKeyStoreName="x",
                   **{**good, "TrustAnchorCertificate": "not a certificate"})[0] == "IncorrectTrustAnchorException"
    assert code_of(kms.create_custom_key_store, CustomKeyStoreName="x",
                   CustomKeyStoreType="EXTERNAL_KEY_STORE")[0] == "UnsupportedOperationException"
    assert code_of(kms.describe_custom_key_stores, CustomKeyStoreId="cks-0123456789abcdef0")[0] == \
        "CustomKeyStoreNotFoundException"
    assert code_of(kms.describe_custom_key_stores, CustomKeyStoreName="nope")[0] == "CustomKeyStoreNotFoundException"
    assert code_of(kms.connect_custom_key_store, CustomKeyStoreId="cks-0123456789abcdef0")[0] == \
        "CustomKeyStoreNotFoundException"
    assert kms.describe_custom_key_stores()["CustomKeyStores"] == []


def test_lifecycle_keys_and_connection_states(env: KmsEnv, kms: Any) -> None:
    cid = cluster_id(env)
    aws_cid = aws_cluster_id(cid)  # what AWS's model allows: cluster-[2-7a-zA-Z]{11,16}
    assert re.fullmatch(r"cluster-[2-7a-zA-Z]{11,16}", aws_cid) and aws_cid != cid
    anchor = trust_anchor(env)
    # A wrong password is only found out when connecting: FAILED / INVALID_CREDENTIALS.
    store_id = kms.create_custom_key_store(CustomKeyStoreName="vault", CloudHsmClusterId=cid,
                                           TrustAnchorCertificate=anchor,
                                           KeyStorePassword="wrong-password")["CustomKeyStoreId"]
    assert store_id.startswith("cks-")
    entry = store_of(kms, store_id)
    assert entry == {"CustomKeyStoreId": store_id, "CustomKeyStoreName": "vault", "CloudHsmClusterId": aws_cid,
                     "TrustAnchorCertificate": anchor, "ConnectionState": "DISCONNECTED",
                     "CreationDate": entry["CreationDate"], "CustomKeyStoreType": "AWS_CLOUDHSM"}
    assert "KeyStorePassword" not in str(kms.describe_custom_key_stores())
    assert kms.describe_custom_key_stores(CustomKeyStoreName="vault")["CustomKeyStores"][0]["CustomKeyStoreId"] \
        == store_id
    # Same properties while disconnected: the same store (retries are idempotent); else the name is taken.
    # The cluster's UUID and its AWS-shaped id name the same cluster.
    assert kms.create_custom_key_store(CustomKeyStoreName="vault", CloudHsmClusterId=cid, TrustAnchorCertificate=anchor,
                                       KeyStorePassword="wrong-password")["CustomKeyStoreId"] == store_id
    assert kms.create_custom_key_store(CustomKeyStoreName="vault", CloudHsmClusterId=aws_cid.upper(),
                                       TrustAnchorCertificate=anchor,
                                       KeyStorePassword="wrong-password")["CustomKeyStoreId"] == store_id
    assert code_of(kms.create_custom_key_store, CustomKeyStoreName="vault", CloudHsmClusterId=cid,
                   TrustAnchorCertificate=anchor, KeyStorePassword=KMSUSER_PASSWORD)[0] == \
        "CustomKeyStoreNameInUseException"
    # One store per cluster, as AWS.
    assert code_of(kms.create_custom_key_store, CustomKeyStoreName="other", CloudHsmClusterId=aws_cid,
                   TrustAnchorCertificate=anchor, KeyStorePassword=KMSUSER_PASSWORD)[0] == \
        "CloudHsmClusterInUseException"
    assert code_of(kms.disconnect_custom_key_store, CustomKeyStoreId=store_id)[0] == \
        "CustomKeyStoreInvalidStateException"
    assert code_of(kms.create_key, Origin="AWS_CLOUDHSM", CustomKeyStoreId=store_id)[0] == \
        "CustomKeyStoreInvalidStateException"

    kms.connect_custom_key_store(CustomKeyStoreId=store_id)
    entry = wait_state(kms, store_id, "FAILED", "CONNECTED")
    assert (entry["ConnectionState"], entry["ConnectionErrorCode"]) == ("FAILED", "INVALID_CREDENTIALS")
    assert code_of(kms.connect_custom_key_store, CustomKeyStoreId=store_id)[0] == "CustomKeyStoreInvalidStateException"
    assert code_of(kms.update_custom_key_store, CustomKeyStoreId=store_id, KeyStorePassword=KMSUSER_PASSWORD)[0] \
        == "CustomKeyStoreInvalidStateException"
    assert code_of(kms.delete_custom_key_store, CustomKeyStoreId=store_id)[0] == "CustomKeyStoreInvalidStateException"
    kms.disconnect_custom_key_store(CustomKeyStoreId=store_id)
    assert "ConnectionErrorCode" not in store_of(kms, store_id)
    assert code_of(kms.update_custom_key_store, CustomKeyStoreId=store_id,
                   CloudHsmClusterId="cluster-234567abcdefg")[0] == "CloudHsmClusterNotFoundException"
    kms.update_custom_key_store(CustomKeyStoreId=store_id, KeyStorePassword=KMSUSER_PASSWORD,
                                NewCustomKeyStoreName="vault-1", CloudHsmClusterId=aws_cid)
    assert store_of(kms, store_id)["CustomKeyStoreName"] == "vault-1"
    assert code_of(kms.describe_custom_key_stores, CustomKeyStoreName="vault")[0] == "CustomKeyStoreNotFoundException"

    kms.connect_custom_key_store(CustomKeyStoreId=store_id)
    assert wait_state(kms, store_id, "CONNECTED", "FAILED")["ConnectionState"] == "CONNECTED"
    kms.connect_custom_key_store(CustomKeyStoreId=store_id)  # connecting a connected store: nothing to do
    assert code_of(kms.update_custom_key_store, CustomKeyStoreId=store_id, NewCustomKeyStoreName="x")[0] == \
        "CustomKeyStoreInvalidStateException"
    assert code_of(kms.delete_custom_key_store, CustomKeyStoreId=store_id)[0] == "CustomKeyStoreInvalidStateException"

    # CreateKey: symmetric only, Origin and CustomKeyStoreId go together.
    assert code_of(kms.create_key, Origin="AWS_CLOUDHSM")[0] == "ValidationException"
    assert code_of(kms.create_key, CustomKeyStoreId=store_id)[0] == "ValidationException"
    assert code_of(kms.create_key, Origin="AWS_CLOUDHSM", CustomKeyStoreId=store_id, KeySpec="RSA_2048",
                   KeyUsage="SIGN_VERIFY")[0] == "UnsupportedOperationException"
    assert code_of(kms.create_key, Origin="AWS_CLOUDHSM", CustomKeyStoreId="cks-0123456789abcdef0")[0] == \
        "CustomKeyStoreNotFoundException"
    meta = kms.create_key(Origin="AWS_CLOUDHSM", CustomKeyStoreId=store_id, Description="in the store")["KeyMetadata"]
    key_id = meta["KeyId"]
    assert (meta["Origin"], meta["CustomKeyStoreId"], meta["CloudHsmClusterId"], meta["KeyState"]) == \
        ("AWS_CLOUDHSM", store_id, aws_cid, "Enabled")
    described = kms.describe_key(KeyId=key_id)["KeyMetadata"]
    assert (described["Origin"], described["CustomKeyStoreId"], described["CloudHsmClusterId"]) == \
        ("AWS_CLOUDHSM", store_id, aws_cid)
    kms.create_alias(AliasName="alias/in-store", TargetKeyId=key_id)
    # AWS: no data key pairs under a key of a custom key store (both forms).
    for operation in (kms.generate_data_key_pair, kms.generate_data_key_pair_without_plaintext):
        code, message = code_of(operation, KeyId=key_id, KeyPairSpec="ECC_NIST_P256")
        assert code == "UnsupportedOperationException" and "AWS_CLOUDHSM" in message, message

    blob = kms.encrypt(KeyId="alias/in-store", Plaintext=b"kept in the store",
                       EncryptionContext={"a": "b"})["CiphertextBlob"]
    assert kms.decrypt(CiphertextBlob=blob, EncryptionContext={"a": "b"})["Plaintext"] == b"kept in the store"
    data_key = kms.generate_data_key(KeyId=key_id, KeySpec="AES_256")
    assert kms.decrypt(CiphertextBlob=data_key["CiphertextBlob"])["Plaintext"] == data_key["Plaintext"]
    plain_key = kms.create_key()["KeyMetadata"]["KeyId"]
    moved = kms.re_encrypt(CiphertextBlob=blob, SourceEncryptionContext={"a": "b"},
                           DestinationKeyId=plain_key)["CiphertextBlob"]
    assert kms.decrypt(CiphertextBlob=moved)["Plaintext"] == b"kept in the store"
    assert len(kms.generate_random(NumberOfBytes=16, CustomKeyStoreId=store_id)["Plaintext"]) == 16

    # The key is kmsuser's in the cluster: non-extractable, sensitive; the gateway's user cannot see it.
    owner = env.cluster.client()
    owner.login("kmsuser", KMSUSER_PASSWORD)
    handles = owner.find_objects({CKA.LABEL: f"kms/{key_id}/1".encode()})
    assert len(handles) == 1
    attributes = owner.get_attributes(handles[0], [CKA.SENSITIVE, CKA.EXTRACTABLE, CKA.TOKEN])
    assert attributes == {CKA.SENSITIVE: True, CKA.EXTRACTABLE: False, CKA.TOKEN: True}
    owner.logout()
    service = env.cluster.client()
    assert gateway_login(env.cluster)[0] == KEY_STORE_GATEWAY_USER
    service.login(*gateway_login(env.cluster))
    assert service.find_objects({CKA.LABEL: f"kms/{key_id}/1".encode()}) == []
    service.logout()

    # Disconnected: the keys are Unavailable and refuse cryptography; nothing is lost.
    kms.disconnect_custom_key_store(CustomKeyStoreId=store_id)
    assert store_of(kms, store_id)["ConnectionState"] == "DISCONNECTED"
    unavailable = kms.describe_key(KeyId=key_id)["KeyMetadata"]
    assert (unavailable["KeyState"], unavailable["Enabled"]) == ("Unavailable", False)
    for call, args in ((kms.encrypt, {"KeyId": key_id, "Plaintext": b"x"}),
                       (kms.decrypt, {"CiphertextBlob": blob, "EncryptionContext": {"a": "b"}}),
                       (kms.generate_data_key, {"KeyId": key_id, "KeySpec": "AES_256"}),
                       (kms.re_encrypt, {"CiphertextBlob": moved, "DestinationKeyId": key_id})):
        assert code_of(call, **args)[0] == "KMSInvalidStateException"
    assert code_of(kms.create_key, Origin="AWS_CLOUDHSM", CustomKeyStoreId=store_id)[0] == \
        "CustomKeyStoreInvalidStateException"
    assert code_of(kms.generate_random, NumberOfBytes=8, CustomKeyStoreId=store_id)[0] == \
        "CustomKeyStoreInvalidStateException"
    kms.disable_key(KeyId=key_id)  # accepted while unavailable; takes effect after reconnecting
    assert kms.encrypt(KeyId=plain_key, Plaintext=b"other keys work")["KeyId"].endswith(plain_key)
    # A store with keys cannot be deleted.
    assert code_of(kms.delete_custom_key_store, CustomKeyStoreId=store_id)[0] == "CustomKeyStoreHasCMKsException"

    kms.connect_custom_key_store(CustomKeyStoreId=store_id)
    assert wait_state(kms, store_id, "CONNECTED", "FAILED")["ConnectionState"] == "CONNECTED"
    assert kms.describe_key(KeyId=key_id)["KeyMetadata"]["KeyState"] == "Disabled"
    assert code_of(kms.decrypt, CiphertextBlob=blob, EncryptionContext={"a": "b"})[0] == "DisabledException"
    kms.enable_key(KeyId=key_id)
    assert kms.decrypt(CiphertextBlob=blob, EncryptionContext={"a": "b"})["Plaintext"] == b"kept in the store"

    # A gateway restart reconnects the store by itself (its recorded state is CONNECTED).
    stop_gateway(env.cluster.dir)
    env.info.update(start_gateway(env.cluster.dir))
    assert wait_state(kms, store_id, "CONNECTED", "FAILED")["ConnectionState"] == "CONNECTED"
    assert kms.decrypt(CiphertextBlob=blob, EncryptionContext={"a": "b"})["Plaintext"] == b"kept in the store"

    # Deletion: the key must really be deleted (its cluster key with it) before the store can go.
    kms.schedule_key_deletion(KeyId=key_id, PendingWindowInDays=7)
    deadline = time.monotonic() + 20
    while True:
        try:
            kms.describe_key(KeyId=key_id)
        except ClientError as exc:
            assert exc.response["Error"]["Code"] == "NotFoundException"
            break
        assert time.monotonic() < deadline
        time.sleep(0.2)
    owner = env.cluster.client()
    owner.login("kmsuser", KMSUSER_PASSWORD)
    deadline = time.monotonic() + 10  # the record disappears first, then the sweep destroys the cluster key
    while owner.find_objects({CKA.LABEL: f"kms/{key_id}/1".encode()}):
        assert time.monotonic() < deadline, "the store key's cluster key was not destroyed"
        time.sleep(0.1)
    owner.logout()
    assert code_of(kms.decrypt, CiphertextBlob=blob, EncryptionContext={"a": "b"})[0] == "InvalidCiphertextException"

    # kmsuser locked out, then gone: USER_LOCKED_OUT, USER_NOT_FOUND.
    kms.disconnect_custom_key_store(CustomKeyStoreId=store_id)
    # Logged in first: failed logins from a client certificate pause its admin logins for a while.
    admin = env.cluster.admin()
    locker = env.cluster.client()
    for _ in range(6):
        with pytest.raises(SdkError):
            locker.login("kmsuser", "wrong-password")
    kms.connect_custom_key_store(CustomKeyStoreId=store_id)
    entry = wait_state(kms, store_id, "FAILED", "CONNECTED")
    assert (entry["ConnectionState"], entry["ConnectionErrorCode"]) == ("FAILED", "USER_LOCKED_OUT")
    kms.disconnect_custom_key_store(CustomKeyStoreId=store_id)
    admin.user_delete("kmsuser")
    admin.logout()
    kms.connect_custom_key_store(CustomKeyStoreId=store_id)
    entry = wait_state(kms, store_id, "FAILED", "CONNECTED")
    assert (entry["ConnectionState"], entry["ConnectionErrorCode"]) == ("FAILED", "USER_NOT_FOUND")
    kms.disconnect_custom_key_store(CustomKeyStoreId=store_id)

    kms.delete_custom_key_store(CustomKeyStoreId=store_id)
    assert code_of(kms.describe_custom_key_stores, CustomKeyStoreId=store_id)[0] == "CustomKeyStoreNotFoundException"
    assert code_of(kms.describe_custom_key_stores, CustomKeyStoreName="vault-1")[0] == \
        "CustomKeyStoreNotFoundException"
    assert kms.describe_custom_key_stores()["CustomKeyStores"] == []


def test_connection_error_codes_without_a_cluster() -> None:
    """NETWORK_ERRORS and CLUSTER_NOT_FOUND need a cluster that vanishes between the request
    (authenticated by the cluster) and the connection: driven here on the state machine itself."""
    from strongroom.client import AsyncClient
    from strongroom.errors import CKR
    from strongroom.kms.backend import ClusterError
    from strongroom.kms.config import ClusterSettings, GatewayConfig
    from strongroom.kms.keystores import CONNECTED, KeyStore, KeyStores, _Connection

    class Unreachable:  # the gateway's Backend as the key stores use it: the SDK's calls over one send
        def __init__(self) -> None:
            self.cluster = AsyncClient(self.send, refused=ClusterError)

        async def send(self, op: str, args: Any, session: bytes | None) -> Any:
            raise ClusterError(CKR.DEVICE_REMOVED, "no node answers", unreachable=True)

    class OtherCluster(Unreachable):
        async def send(self, op: str, args: Any, session: bytes | None) -> Any:
            return {"cluster_id": "another"}

    async def attempt(backend: Any) -> str | None:
        config = GatewayConfig(cluster=ClusterSettings(profile="client.json"))
        stores = KeyStores(config, backend)
        store = KeyStore("cks-0123456789abcdef0", "n", "mine", "pem", "password", 0.0, CONNECTED)
        return await stores._try_connect(store, _Connection("CONNECTING"))

    assert asyncio.run(attempt(Unreachable())) == "NETWORK_ERRORS"
    assert asyncio.run(attempt(OtherCluster())) == "CLUSTER_NOT_FOUND"
