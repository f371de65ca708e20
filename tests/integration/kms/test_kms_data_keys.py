"""GenerateDataKey in one node request (issue 15, h15k): ``kms.data_key.generate`` draws the data key in
the node and seals it with crypto.encrypt's own handler. Tried as attacks on a real cluster: whoever may
not encrypt with a key may not make data keys with it either, with the same refusal crypto.encrypt gives."""

from __future__ import annotations

import os
import time
from typing import Any

import pytest

from strongroom.client import Client
from strongroom.client.connection import ClientError as HsmClientError
from strongroom.constants import CKA, CKK, CKM, CKO
from strongroom.errors import CKR
from tests.integration.kms.conftest import KmsEnv, gateway_login

pytestmark = pytest.mark.slow
GCM = {"iv": b"\x01" * 12, "aad": b"aad", "tag_bits": 128}


def refusal(client: Client, op: str, **args: Any) -> int:
    with pytest.raises(HsmClientError) as refused:
        client.call(op, **args)
    return int(refused.value.code)


def material_of(kms: KmsEnv, hsm: Client, key_id: str) -> int:
    (handle,) = hsm.find_objects({CKA.LABEL: f"kms/{key_id}/1".encode()})
    return int(handle)


def test_a_data_key_and_its_blob_come_back_and_decrypt(kms: KmsEnv, client: Any) -> None:
    key_id = client.create_key()["KeyMetadata"]["KeyId"]
    for spec, length in (({"KeySpec": "AES_256"}, 32), ({"KeySpec": "AES_128"}, 16), ({"NumberOfBytes": 1}, 1),
                         ({"NumberOfBytes": 1024}, 1024)):
        made = client.generate_data_key(KeyId=key_id, EncryptionContext={"app": "orders"}, **spec)
        assert len(made["Plaintext"]) == length
        opened = client.decrypt(CiphertextBlob=made["CiphertextBlob"], EncryptionContext={"app": "orders"})
        assert opened["Plaintext"] == made["Plaintext"] and opened["KeyId"] == made["KeyId"]
    blobs = {client.generate_data_key_without_plaintext(KeyId=key_id, KeySpec="AES_256")["CiphertextBlob"]
             for _ in range(3)}
    assert len(blobs) == 3


def test_the_node_checks_a_data_key_request_as_it_checks_crypto_encrypt(kms: KmsEnv, client: Any) -> None:
    key_id = client.create_key()["KeyMetadata"]["KeyId"]
    with Client.from_dir(kms.cluster.dir) as hsm:
        hsm.login(*gateway_login(kms.cluster))
        handle = material_of(kms, hsm, key_id)
        made = hsm.call("kms.data_key.generate", key=handle, length=32, params=GCM)
        assert len(made["plaintext"]) == 32 and len(made["data"]) == 32 + 16
        assert made["plaintext"] != hsm.call("kms.data_key.generate", key=handle, length=32, params=GCM)["plaintext"]
        for length in (0, 1025, -1):
            assert refusal(hsm, "kms.data_key.generate", key=handle, length=length, params=GCM) == CKR.DATA_LEN_RANGE
        # A key of the service user's that may not encrypt: refused as crypto.encrypt refuses it.
        no_encrypt = hsm.generate_key(CKM.AES_KEY_GEN, {
            CKA.CLASS: int(CKO.SECRET_KEY), CKA.KEY_TYPE: int(CKK.AES), CKA.VALUE_LEN: 32, CKA.TOKEN: True,
            CKA.LABEL: b"data-key-test-no-encrypt",
            CKA.ENCRYPT: False, CKA.DECRYPT: True})
        expected = refusal(hsm, "crypto.encrypt", key=no_encrypt, mechanism=int(CKM.AES_GCM), data=b"x", params=GCM)
        assert expected == CKR.KEY_FUNCTION_NOT_PERMITTED
        assert refusal(hsm, "kms.data_key.generate", key=no_encrypt, length=32, params=GCM) == expected
        # Bad GCM parameters: the mechanism's own refusal.
        bad = {"iv": b"\x01" * 12, "aad": b"", "tag_bits": 7}
        expected = refusal(hsm, "crypto.encrypt", key=handle, mechanism=int(CKM.AES_GCM), data=b"x", params=bad)
        assert refusal(hsm, "kms.data_key.generate", key=handle, length=32, params=bad) == expected
        hsm.logout()
    # Another crypto user of the cluster cannot use the service user's key to make data keys.
    other = kms.cluster.crypto_user("mallory_dk", "password-" + os.urandom(4).hex())
    expected = refusal(other, "crypto.encrypt", key=handle, mechanism=int(CKM.AES_GCM), data=b"x", params=GCM)
    assert expected in (CKR.OBJECT_HANDLE_INVALID, CKR.KEY_HANDLE_INVALID)
    assert refusal(other, "kms.data_key.generate", key=handle, length=32, params=GCM) == expected
    # Admins never use the HSM's cryptography.
    admin = kms.cluster.admin()
    assert refusal(admin, "kms.data_key.generate", key=handle, length=32, params=GCM) == refusal(
        admin, "crypto.encrypt", key=handle, mechanism=int(CKM.AES_GCM), data=b"x", params=GCM)


def test_the_gateway_asks_the_node_once_per_data_key(kms: KmsEnv, client: Any) -> None:
    """Before: random.generate, then crypto.encrypt — two node requests per GenerateDataKey."""
    from strongroom.metrics.node import FLUSH_SECONDS
    from tests.integration.test_metrics import scrape, value

    url = kms.cluster.summary["metrics_urls"]["node1"]
    key_id = client.create_key()["KeyMetadata"]["KeyId"]
    client.generate_data_key(KeyId=key_id, KeySpec="AES_256")  # the key's record is read and held

    def counts() -> list[float]:
        samples = scrape(url)
        return [value(samples, "strongroom_requests_total", op=op, outcome="ok") or 0.0
                for op in ("kms.data_key.generate", "random.generate", "crypto.encrypt")]

    time.sleep(2 * FLUSH_SECONDS)  # the workers add their request counts to the shared files this often
    before = counts()
    for _ in range(5):
        client.generate_data_key(KeyId=key_id, KeySpec="AES_256")
    deadline = time.monotonic() + 30
    while (after := counts())[0] < before[0] + 5 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert after[0] >= before[0] + 5
    assert after[1:] == before[1:]
