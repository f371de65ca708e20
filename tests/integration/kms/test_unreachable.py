"""Issue 7: the cluster unreachable. The gateway keeps authenticating with the day's SigV4 signing
keys it holds; keys of a custom key store answer KMSInvalidStateException and their store goes
FAILED / NETWORK_ERRORS, default keys DependencyTimeoutException (503); once the cluster is back
and the store reconnected (Disconnect + Connect, as AWS requires after FAILED), every old
ciphertext decrypts."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.integration.kms.conftest import KmsEnv, error_of, key_store_cluster, stop_nodes_and_agent

pytestmark = pytest.mark.slow

KMSUSER_PASSWORD = "kms-user-pass-7"


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KmsEnv]:
    with key_store_cluster(tmp_path_factory.mktemp("unreachable") / "cluster", KMSUSER_PASSWORD) as kms_env:
        yield kms_env


def error(call: Any, **kwargs: Any) -> tuple[str, str, int]:
    with pytest.raises(ClientError) as caught:
        call(**kwargs)
    code, message = error_of(caught)
    return code, message, caught.value.response["ResponseMetadata"]["HTTPStatusCode"]


def store_entry(kms: Any, store_id: str) -> dict[str, Any]:
    return kms.describe_custom_key_stores(CustomKeyStoreId=store_id)["CustomKeyStores"][0]


def wait_for(probe: Any, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = probe()
        except ClientError as exc:
            value, last = None, exc
        else:
            last = value
        if value:
            return value
        assert time.monotonic() < deadline, last
        time.sleep(0.2)


def test_store_keys_answer_invalid_state_default_keys_503_and_nothing_is_lost(env: KmsEnv) -> None:
    kms = env.client()
    anchor = (env.cluster.dir / "ca" / "ca.crt").read_text()
    store_id = kms.create_custom_key_store(
        CustomKeyStoreName="vault", CloudHsmClusterId=env.cluster.client().cluster_status()["cluster_id"],
        TrustAnchorCertificate=anchor, KeyStorePassword=KMSUSER_PASSWORD)["CustomKeyStoreId"]
    kms.connect_custom_key_store(CustomKeyStoreId=store_id)
    wait_for(lambda: store_entry(kms, store_id)["ConnectionState"] == "CONNECTED")
    store_key = kms.create_key(Origin="AWS_CLOUDHSM", CustomKeyStoreId=store_id)["KeyMetadata"]["Arn"]
    default_key = kms.create_key()["KeyMetadata"]["Arn"]
    context = {"issue": "7"}
    store_blob = kms.encrypt(KeyId=store_key, Plaintext=b"in the store", EncryptionContext=context)["CiphertextBlob"]
    default_blob = kms.encrypt(KeyId=default_key, Plaintext=b"default", EncryptionContext=context)["CiphertextBlob"]

    stop_nodes_and_agent(env.cluster)
    try:
        time.sleep(1.5)  # past the gateway's key-record cache: every answer below comes without the cluster
        # Authenticated locally (the day's signing key is cached); then the key decides.
        for _ in range(2):
            assert error(kms.encrypt, KeyId=store_key, Plaintext=b"x") == \
                ("KMSInvalidStateException", f"{store_key} is unavailable.", 400)
            assert error(kms.decrypt, CiphertextBlob=store_blob, EncryptionContext=context) == \
                ("KMSInvalidStateException", f"{store_key} is unavailable.", 400)
            code, message, status = error(kms.encrypt, KeyId=default_key, Plaintext=b"x")
            assert (code, status) == ("DependencyTimeoutException", 503) and "could not be reached" in message
            code, _, status = error(kms.decrypt, CiphertextBlob=default_blob, EncryptionContext=context)
            assert (code, status) == ("DependencyTimeoutException", 503)
        code, _, status = error(kms.list_keys)
        assert (code, status) == ("DependencyTimeoutException", 503)
    finally:
        env.cluster.up()

    # The cluster is back: default keys work at once, the old ciphertext decrypts.
    assert wait_for(lambda: kms.decrypt(CiphertextBlob=default_blob, EncryptionContext=context))["Plaintext"] == \
        b"default"
    # The store went FAILED / NETWORK_ERRORS (written to its record once the cluster could be written).
    entry = wait_for(lambda: (e := store_entry(kms, store_id))["ConnectionState"] == "FAILED" and e)
    assert entry["ConnectionErrorCode"] == "NETWORK_ERRORS"
    assert kms.describe_key(KeyId=store_key)["KeyMetadata"]["KeyState"] == "Unavailable"
    assert error(kms.decrypt, CiphertextBlob=store_blob, EncryptionContext=context)[0] == "KMSInvalidStateException"
    # As AWS: a FAILED store is not reconnected by itself, and Connect refuses it; Disconnect, then Connect.
    assert error(kms.connect_custom_key_store, CustomKeyStoreId=store_id)[0] == "CustomKeyStoreInvalidStateException"
    kms.disconnect_custom_key_store(CustomKeyStoreId=store_id)
    assert store_entry(kms, store_id)["ConnectionState"] == "DISCONNECTED"
    kms.connect_custom_key_store(CustomKeyStoreId=store_id)
    wait_for(lambda: store_entry(kms, store_id)["ConnectionState"] == "CONNECTED")
    # Nothing was lost: the old ciphertexts of both keys decrypt, and the store key works again.
    assert kms.decrypt(CiphertextBlob=store_blob, EncryptionContext=context)["Plaintext"] == b"in the store"
    assert kms.decrypt(CiphertextBlob=default_blob, EncryptionContext=context)["Plaintext"] == b"default"
    again = kms.encrypt(KeyId=store_key, Plaintext=b"after")["CiphertextBlob"]
    assert kms.decrypt(CiphertextBlob=again)["Plaintext"] == b"after"
    assert kms.describe_key(KeyId=store_key)["KeyMetadata"]["KeyState"] == "Enabled"
