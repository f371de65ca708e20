"""The node's post-quantum mechanisms and shared-secret operations through the SDK, on a real cluster
(what the KMS gateway uses, and what the PKCS#11 3.2 path — C_EncapsulateKey, C_DecapsulateKey,
CKM_ML_DSA — will call): keys are objects like any other (ownership, sharing, usage flags,
never-readable private parts), signatures verify outside with pyca/cryptography, and encapsulated
secrets are equal on both sides."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, mldsa, mlkem

from strongroom.client import Client, ClientError
from strongroom.constants import CKA, CKD, CKF, CKK, CKM, CKO
from strongroom.errors import CKR
from tests.integration.conftest import LocalCluster

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def pq_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    cluster = LocalCluster(tmp_path_factory.mktemp("pq") / "cluster", workers=1)
    cluster.up()
    try:
        yield cluster
    finally:
        cluster.down()


@pytest.fixture(scope="module")
def alice(pq_cluster: LocalCluster) -> Client:
    return pq_cluster.crypto_user("alice")


def refused(code: CKR, call: object, *args: object, **kwargs: object) -> None:
    with pytest.raises(ClientError) as caught:
        call(*args, **kwargs)  # type: ignore[operator]
    assert caught.value.code == code, caught.value


def ml_dsa_pair(client: Client, parameter_set: int, **private: object) -> tuple[int, int]:
    return client.generate_key_pair(CKM.ML_DSA_KEY_PAIR_GEN, {CKA.TOKEN: True, CKA.PARAMETER_SET: parameter_set},
                                    {CKA.TOKEN: True, **private})


def ml_kem_pair(client: Client, parameter_set: int = 2) -> tuple[int, int]:
    return client.generate_key_pair(CKM.ML_KEM_KEY_PAIR_GEN, {CKA.TOKEN: True, CKA.PARAMETER_SET: parameter_set},
                                    {CKA.TOKEN: True, CKA.LABEL: b"kem"})


SECRET_TEMPLATE = {CKA.CLASS: CKO.SECRET_KEY, CKA.KEY_TYPE: CKK.GENERIC_SECRET, CKA.TOKEN: True,
                   CKA.SENSITIVE: False, CKA.EXTRACTABLE: True}


def test_mechanism_list_names_the_pq_mechanisms(alice: Client) -> None:
    listed = {m["mechanism"]: m for m in alice.mechanisms()}
    kem = listed[CKM.ML_KEM]
    assert kem["flags"] & CKF.ENCAPSULATE and kem["flags"] & CKF.DECAPSULATE
    assert (kem["min_key_size"], kem["max_key_size"]) == (2, 3)
    assert listed[CKM.ML_DSA]["flags"] & CKF.SIGN and listed[CKM.ML_DSA]["flags"] & CKF.VERIFY
    assert listed[CKM.ML_DSA_KEY_PAIR_GEN]["flags"] & CKF.GENERATE_KEY_PAIR
    assert CKM.ML_KEM_KEY_PAIR_GEN in listed


@pytest.mark.parametrize(("parameter_set", "public_class"), [(1, mldsa.MLDSA44PublicKey), (2, mldsa.MLDSA65PublicKey),
                                                             (3, mldsa.MLDSA87PublicKey)])
def test_ml_dsa_objects_and_signatures(alice: Client, parameter_set: int, public_class: type) -> None:
    public, private = ml_dsa_pair(alice, parameter_set)
    attrs = alice.get_attributes(public, [CKA.KEY_TYPE, CKA.PARAMETER_SET, CKA.VALUE, CKA.PUBLIC_KEY_INFO, CKA.VERIFY])
    assert (attrs[CKA.KEY_TYPE], attrs[CKA.PARAMETER_SET], attrs[CKA.VERIFY]) == (CKK.ML_DSA, parameter_set, True)
    outside = public_class.from_public_bytes(attrs[CKA.VALUE])  # type: ignore[attr-defined]
    assert serialization.load_der_public_key(attrs[CKA.PUBLIC_KEY_INFO]) == outside
    assert alice.get_attributes(private, [CKA.LOCAL, CKA.KEY_GEN_MECHANISM, CKA.SENSITIVE, CKA.PARAMETER_SET]) == {
        CKA.LOCAL: True, CKA.KEY_GEN_MECHANISM: CKM.ML_DSA_KEY_PAIR_GEN, CKA.SENSITIVE: True,
        CKA.PARAMETER_SET: parameter_set}
    for secret_part in (CKA.SEED, CKA.VALUE):  # the private key is never readable
        refused(CKR.ATTRIBUTE_SENSITIVE, alice.get_attributes, private, [secret_part])
    signature = alice.sign(private, CKM.ML_DSA, b"message")
    outside.verify(signature, b"message")
    context = {"context": b"app-v1", "hedge": 1}
    with_context = alice.sign(private, CKM.ML_DSA, b"message", context)
    outside.verify(with_context, b"message", b"app-v1")
    alice.verify(public, CKM.ML_DSA, b"message", with_context, context)
    refused(CKR.SIGNATURE_INVALID, alice.verify, public, CKM.ML_DSA, b"message", with_context)
    refused(CKR.MECHANISM_PARAM_INVALID, alice.sign, private, CKM.ML_DSA, b"m", {"hedge": 2})
    # In parts: the node hashes the parts into the message representative; the signature is the message's.
    session = alice.open_session()
    try:
        parts = alice.multipart("sign", session, CKM.ML_DSA, [b"mes", b"sage"], key=private)["signature"]
        outside.verify(parts, b"message")
        alice.multipart("verify", session, CKM.ML_DSA, [b"me", b"ssage"], key=public, signature=parts)
    finally:
        alice.close_session(session)
    # An ML-DSA key neither encrypts nor derives.
    refused(CKR.KEY_FUNCTION_NOT_PERMITTED, alice.encrypt, public, CKM.AES_GCM, b"m",
            {"iv": None, "aad": b"", "tag_bits": 128})


def test_ml_dsa_generation_refusals(alice: Client) -> None:
    refused(CKR.TEMPLATE_INCOMPLETE, alice.generate_key_pair, CKM.ML_DSA_KEY_PAIR_GEN, {CKA.TOKEN: True},
            {CKA.TOKEN: True})
    refused(CKR.ATTRIBUTE_VALUE_INVALID, ml_dsa_pair, alice, 9)
    refused(CKR.ATTRIBUTE_VALUE_INVALID, ml_kem_pair, alice, 1)  # ML-KEM-512: not in the library


def test_encapsulation_into_key_objects(pq_cluster: LocalCluster, alice: Client) -> None:
    """C_EncapsulateKey / C_DecapsulateKey as node operations: both sides end with the same secret key."""
    public, private = ml_kem_pair(alice)
    raw = alice.get_attribute(public, CKA.VALUE)
    assert isinstance(mlkem.MLKEM768PublicKey.from_public_bytes(raw), mlkem.MLKEM768PublicKey)
    made = alice.call("key.encapsulate", mechanism=int(CKM.ML_KEM), public_key=public,
                      template=[[k, v] for k, v in SECRET_TEMPLATE.items()])
    assert len(made["ciphertext"]) == 1088
    opened = alice.call("key.decapsulate", mechanism=int(CKM.ML_KEM), private_key=private,
                        ciphertext=made["ciphertext"], template=[[k, v] for k, v in SECRET_TEMPLATE.items()])
    sender = alice.get_attributes(made["handle"], [CKA.VALUE, CKA.VALUE_LEN, CKA.KEY_TYPE, CKA.LOCAL])
    receiver = alice.get_attributes(opened["handle"], [CKA.VALUE, CKA.VALUE_LEN])
    assert sender[CKA.VALUE] == receiver[CKA.VALUE] and sender[CKA.VALUE_LEN] == 32
    assert (sender[CKA.KEY_TYPE], sender[CKA.LOCAL]) == (CKK.GENERIC_SECRET, False)
    # An AES-128 key from the secret's leading bytes; a sensitive key stays unreadable.
    aes = {**SECRET_TEMPLATE, CKA.KEY_TYPE: CKK.AES, CKA.VALUE_LEN: 16}
    aes_key = alice.call("key.decapsulate", mechanism=int(CKM.ML_KEM), private_key=private,
                         ciphertext=made["ciphertext"], template=[[k, v] for k, v in aes.items()])["handle"]
    assert alice.get_attribute(aes_key, CKA.VALUE) == sender[CKA.VALUE][:16]
    hidden = {**SECRET_TEMPLATE, CKA.SENSITIVE: True, CKA.EXTRACTABLE: False}
    hidden_key = alice.call("key.decapsulate", mechanism=int(CKM.ML_KEM), private_key=private,
                            ciphertext=made["ciphertext"], template=[[k, v] for k, v in hidden.items()])["handle"]
    refused(CKR.ATTRIBUTE_SENSITIVE, alice.get_attributes, hidden_key, [CKA.VALUE])
    # The secret as data (the KMS path) agrees with pyca/cryptography outside the node.
    secret, ciphertext = mlkem.MLKEM768PublicKey.from_public_bytes(raw).encapsulate()
    assert alice.call("crypto.decapsulate", key=private, mechanism=int(CKM.ML_KEM),
                      ciphertext=ciphertext)["secret"] == secret
    data = alice.call("crypto.encapsulate", key=public, mechanism=int(CKM.ML_KEM))
    assert alice.call("crypto.decapsulate", key=private, mechanism=int(CKM.ML_KEM),
                      ciphertext=data["ciphertext"])["secret"] == data["secret"]
    refused(CKR.ENCRYPTED_DATA_LEN_RANGE, alice.call, "crypto.decapsulate", key=private, mechanism=int(CKM.ML_KEM),
            ciphertext=ciphertext[:-1])
    refused(CKR.KEY_SIZE_RANGE, alice.call, "key.decapsulate", mechanism=int(CKM.ML_KEM), private_key=private,
            ciphertext=ciphertext, template=[[k, v] for k, v in {**aes, CKA.VALUE_LEN: 24}.items()][:-1]
            + [[CKA.VALUE_LEN, 64]])
    # The public half encapsulates, the private half decapsulates, and not the other way round.
    refused(CKR.KEY_FUNCTION_NOT_PERMITTED, alice.call, "crypto.decapsulate", key=public, mechanism=int(CKM.ML_KEM),
            ciphertext=ciphertext)
    refused(CKR.KEY_FUNCTION_NOT_PERMITTED, alice.call, "crypto.encapsulate", key=private, mechanism=int(CKM.ML_KEM))


def test_kem_keys_belong_to_their_owner(pq_cluster: LocalCluster, alice: Client) -> None:
    public, private = ml_kem_pair(alice, 3)
    data = alice.call("crypto.encapsulate", key=public, mechanism=int(CKM.ML_KEM))
    mallory = pq_cluster.crypto_user("mallory")
    refused(CKR.KEY_HANDLE_INVALID, mallory.call, "crypto.decapsulate", key=private, mechanism=int(CKM.ML_KEM),
            ciphertext=data["ciphertext"])
    refused(CKR.KEY_HANDLE_INVALID, mallory.call, "key.decapsulate", mechanism=int(CKM.ML_KEM), private_key=private,
            ciphertext=data["ciphertext"], template=[[k, v] for k, v in SECRET_TEMPLATE.items()])
    # Shared, it may use the key (a use, as unwrapping is), not read it.
    alice.share(private, "mallory")
    assert mallory.call("crypto.decapsulate", key=private, mechanism=int(CKM.ML_KEM),
                        ciphertext=data["ciphertext"])["secret"] == data["secret"]
    refused(CKR.ATTRIBUTE_SENSITIVE, mallory.get_attributes, private, [CKA.VALUE])
    # A key whose CKA_DECAPSULATE is false cannot decapsulate, even for its owner.
    _, locked = alice.generate_key_pair(CKM.ML_KEM_KEY_PAIR_GEN, {CKA.TOKEN: True, CKA.PARAMETER_SET: 2},
                                        {CKA.TOKEN: True, CKA.DECAPSULATE: False})
    refused(CKR.KEY_FUNCTION_NOT_PERMITTED, alice.call, "crypto.decapsulate", key=locked, mechanism=int(CKM.ML_KEM),
            ciphertext=data["ciphertext"][:1088])


def test_raw_ecdh_secret(alice: Client, tmp_path: Path) -> None:
    public, private = alice.generate_key_pair(
        CKM.EC_KEY_PAIR_GEN, {CKA.TOKEN: True, CKA.EC_PARAMS: bytes.fromhex("06082a8648ce3d030107")},
        {CKA.TOKEN: True, CKA.DERIVE: True, CKA.SIGN: False})
    point = alice.get_attribute(public, CKA.EC_POINT)
    node_public = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point[2:])  # DER OCTET STRING
    peer = ec.generate_private_key(ec.SECP256R1())
    peer_point = peer.public_key().public_bytes(serialization.Encoding.X962,
                                                serialization.PublicFormat.UncompressedPoint)
    secret = alice.call("crypto.derive_secret", key=private, mechanism=int(CKM.ECDH1_DERIVE),
                        params={"kdf": int(CKD.NULL), "public_data": peer_point})["secret"]
    assert secret == peer.exchange(ec.ECDH(), node_public)
    refused(CKR.MECHANISM_PARAM_INVALID, alice.call, "crypto.derive_secret", key=private,
            mechanism=int(CKM.ECDH1_DERIVE), params={"kdf": int(CKD.SHA256_KDF), "public_data": peer_point})
