"""Asymmetric and HMAC KMS keys through real boto3 against a real gateway and cluster.

Every signature KMS makes is checked outside with pyca/cryptography against the key that
GetPublicKey returns, and ciphertext made outside with that key is decrypted by KMS. RSA key
generation is slow on small machines: each RSA key is created once per module, concurrently.
"""

from __future__ import annotations

import base64
import hashlib
import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from botocore.exceptions import ClientError
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from strongroom.client import Client
from strongroom.client import ClientError as HsmClientError
from strongroom.errors import CKR
from tests.integration.kms.conftest import KmsEnv, error_of, gateway_login

pytestmark = pytest.mark.slow

RSA_SIGNING = ["RSASSA_PSS_SHA_256", "RSASSA_PSS_SHA_384", "RSASSA_PSS_SHA_512",
               "RSASSA_PKCS1_V1_5_SHA_256", "RSASSA_PKCS1_V1_5_SHA_384", "RSASSA_PKCS1_V1_5_SHA_512"]
RSA_ENCRYPTION = ["RSAES_OAEP_SHA_1", "RSAES_OAEP_SHA_256"]
ECC = {"ECC_NIST_P256": ("ECDSA_SHA_256", ec.SECP256R1), "ECC_NIST_P384": ("ECDSA_SHA_384", ec.SECP384R1),
       "ECC_NIST_P521": ("ECDSA_SHA_512", ec.SECP521R1), "ECC_SECG_P256K1": ("ECDSA_SHA_256", ec.SECP256K1)}
HMAC = {"HMAC_224": ("HMAC_SHA_224", 28), "HMAC_256": ("HMAC_SHA_256", 32), "HMAC_384": ("HMAC_SHA_384", 48),
        "HMAC_512": ("HMAC_SHA_512", 64)}
HASHES = {"256": hashes.SHA256, "384": hashes.SHA384, "512": hashes.SHA512}
MESSAGE = b"strongroom asymmetric test message"
#: (KeySpec, KeyUsage) of every key the module creates once.
KEYS = [(f"RSA_{bits}", usage) for bits in (2048, 3072, 4096) for usage in ("SIGN_VERIFY", "ENCRYPT_DECRYPT")]
KEYS += [(spec, "SIGN_VERIFY") for spec in ECC] + [(spec, "GENERATE_VERIFY_MAC") for spec in HMAC]


def expect(code: str, call: Any, *args: Any, message: str | None = None, **kwargs: Any) -> str:
    with pytest.raises(ClientError) as caught:
        call(*args, **kwargs)
    got_code, got_message = error_of(caught)
    assert got_code == code, (got_code, got_message)
    if message is not None:
        assert got_message == message
    return got_message


@pytest.fixture(scope="module")
def keys(client: Any) -> dict[tuple[str, str], dict[str, Any]]:
    """One key per (spec, usage), created concurrently (the RSA-4096 pairs dominate)."""
    def create(item: tuple[str, str]) -> dict[str, Any]:
        return client.create_key(KeySpec=item[0], KeyUsage=item[1], Description=f"{item[0]} {item[1]}")["KeyMetadata"]

    order = sorted(KEYS, key=lambda k: not k[0].startswith("RSA_4096"))  # the slowest first
    with ThreadPoolExecutor(4) as pool:
        return dict(zip(order, pool.map(create, order), strict=True))


@pytest.fixture(scope="module")
def symmetric(client: Any) -> str:
    return client.create_key()["KeyMetadata"]["Arn"]


def public_key(client: Any, meta: dict[str, Any]) -> Any:
    return serialization.load_der_public_key(client.get_public_key(KeyId=meta["Arn"])["PublicKey"])


def hash_of(algorithm: str) -> hashes.HashAlgorithm:
    return HASHES[algorithm[-3:]]()


def verify_outside(public: Any, algorithm: str, signature: bytes, message: bytes) -> None:
    """Raises InvalidSignature unless ``signature`` is AWS's signature of ``message`` under ``algorithm``."""
    digest = hash_of(algorithm)
    if algorithm.startswith("RSASSA_PSS"):
        public.verify(signature, message, padding.PSS(padding.MGF1(digest), digest.digest_size), digest)
    elif algorithm.startswith("RSASSA_PKCS1"):
        public.verify(signature, message, padding.PKCS1v15(), digest)
    else:
        public.verify(signature, message, ec.ECDSA(digest))


# --- CreateKey / DescribeKey / GetPublicKey -------------------------------------------------------------------


@pytest.mark.parametrize("spec,usage", KEYS)
def test_describe_key_lists_what_aws_lists(client: Any, keys: Any, spec: str, usage: str) -> None:
    meta = client.describe_key(KeyId=keys[spec, usage]["KeyId"])["KeyMetadata"]
    assert keys[spec, usage]["KeySpec"] == spec
    assert (meta["KeySpec"], meta["CustomerMasterKeySpec"], meta["KeyUsage"], meta["KeyState"]) == (
        spec, spec, usage, "Enabled")
    lists = {m: meta[m] for m in ("EncryptionAlgorithms", "SigningAlgorithms", "MacAlgorithms",
                                  "KeyAgreementAlgorithms") if m in meta}
    if spec.startswith("RSA"):
        expected = {"SigningAlgorithms": RSA_SIGNING} if usage == "SIGN_VERIFY" else {
            "EncryptionAlgorithms": RSA_ENCRYPTION}
    elif spec in ECC:
        expected = {"SigningAlgorithms": [ECC[spec][0]]}
    else:
        expected = {"MacAlgorithms": [HMAC[spec][0]]}
    assert lists == expected
    assert "CurrentKeyMaterialId" not in meta


@pytest.mark.parametrize("spec,usage", [k for k in KEYS if k[1] != "GENERATE_VERIFY_MAC"])
def test_get_public_key_is_a_der_spki(client: Any, keys: Any, spec: str, usage: str) -> None:
    meta = keys[spec, usage]
    answer = client.get_public_key(KeyId=meta["KeyId"])
    assert answer["KeyId"] == meta["Arn"]
    assert (answer["KeySpec"], answer["CustomerMasterKeySpec"], answer["KeyUsage"]) == (spec, spec, usage)
    public = serialization.load_der_public_key(answer["PublicKey"])
    if spec.startswith("RSA"):
        assert isinstance(public, rsa.RSAPublicKey) and public.key_size == int(spec[4:])
        assert public.public_numbers().e == 65537
        member = "SigningAlgorithms" if usage == "SIGN_VERIFY" else "EncryptionAlgorithms"
        assert answer[member] == (RSA_SIGNING if usage == "SIGN_VERIFY" else RSA_ENCRYPTION)
    else:
        assert isinstance(public, ec.EllipticCurvePublicKey) and isinstance(public.curve, ECC[spec][1])
        assert answer["SigningAlgorithms"] == [ECC[spec][0]]
    assert "MacAlgorithms" not in answer


def test_the_cluster_holds_non_extractable_private_and_hmac_keys(kms: KmsEnv, keys: Any) -> None:
    from strongroom.constants import CKA, CKO

    with Client.from_dir(kms.cluster.dir) as hsm:
        hsm.login(*gateway_login(kms.cluster))
        for spec, usage in (("RSA_2048", "SIGN_VERIFY"), ("ECC_NIST_P256", "SIGN_VERIFY"),
                            ("HMAC_256", "GENERATE_VERIFY_MAC")):
            handles = hsm.find_objects({CKA.LABEL: f"kms/{keys[spec, usage]['KeyId']}/1".encode()})
            secret = [h for h in handles if hsm.get_attribute(h, CKA.CLASS) != CKO.PUBLIC_KEY]
            assert len(handles) == (1 if spec.startswith("HMAC") else 2) and len(secret) == 1
            attrs = hsm.get_attributes(secret[0], [CKA.SENSITIVE, CKA.EXTRACTABLE, CKA.TOKEN])
            assert attrs == {CKA.SENSITIVE: True, CKA.EXTRACTABLE: False, CKA.TOKEN: True}
            with pytest.raises(HsmClientError) as refused:
                hsm.get_attributes(secret[0], [CKA.VALUE])
            assert refused.value.code == CKR.ATTRIBUTE_SENSITIVE
        hmac_id = keys["HMAC_384", "GENERATE_VERIFY_MAC"]["KeyId"]
        hmac_handle = hsm.find_objects({CKA.LABEL: f"kms/{hmac_id}/1".encode()})
        assert hsm.get_attribute(hmac_handle[0], CKA.VALUE_LEN) == 48
        hsm.logout()


# --- Sign / Verify ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", ["RSA_2048", "RSA_3072", "RSA_4096", *ECC])
def test_sign_raw_and_digest_with_every_algorithm_verifies_outside(client: Any, keys: Any, spec: str) -> None:
    meta = keys[spec, "SIGN_VERIFY"]
    public = public_key(client, meta)
    algorithms = RSA_SIGNING if spec.startswith("RSA") else [ECC[spec][0]]
    for algorithm in algorithms:
        raw = client.sign(KeyId=meta["KeyId"], Message=MESSAGE, SigningAlgorithm=algorithm)
        assert (raw["KeyId"], raw["SigningAlgorithm"]) == (meta["Arn"], algorithm)
        verify_outside(public, algorithm, raw["Signature"], MESSAGE)
        digest = hashlib.new(hash_of(algorithm).name, MESSAGE).digest()
        signed = client.sign(KeyId=meta["KeyId"], Message=digest, MessageType="DIGEST",
                             SigningAlgorithm=algorithm)["Signature"]
        verify_outside(public, algorithm, signed, MESSAGE)
        if spec in ECC:
            decode_dss_signature(signed)  # DER, not r || s
        else:
            assert len(signed) == int(spec[4:]) // 8
        if algorithm.startswith("RSASSA_PKCS1"):
            assert signed == raw["Signature"]  # deterministic: DIGEST signs exactly what RAW does
        # KMS Verify: either message type verifies either signature.
        for signature in (raw["Signature"], signed):
            ok = client.verify(KeyId=meta["KeyId"], Message=MESSAGE, Signature=signature, SigningAlgorithm=algorithm)
            assert (ok["SignatureValid"], ok["KeyId"], ok["SigningAlgorithm"]) == (True, meta["Arn"], algorithm)
            assert client.verify(KeyId=meta["KeyId"], Message=digest, MessageType="DIGEST", Signature=signature,
                                 SigningAlgorithm=algorithm)["SignatureValid"] is True
        expect("KMSInvalidSignatureException", client.verify, KeyId=meta["KeyId"], Message=MESSAGE + b"!",
               Signature=raw["Signature"], SigningAlgorithm=algorithm, message="")
        expect("KMSInvalidSignatureException", client.verify, KeyId=meta["KeyId"], Message=MESSAGE,
               Signature=raw["Signature"][:-1] + bytes([raw["Signature"][-1] ^ 1]), SigningAlgorithm=algorithm)


def test_ecdsa_signatures_are_randomized_and_pss_salted(client: Any, keys: Any) -> None:
    for spec, algorithm in (("ECC_NIST_P384", "ECDSA_SHA_384"), ("RSA_2048", "RSASSA_PSS_SHA_256")):
        key_id = keys[spec, "SIGN_VERIFY"]["KeyId"]
        one, two = (client.sign(KeyId=key_id, Message=MESSAGE, SigningAlgorithm=algorithm)["Signature"]
                    for _ in range(2))
        assert one != two


def test_a_pss_signature_has_a_salt_as_long_as_the_hash(client: Any, keys: Any) -> None:
    meta = keys["RSA_3072", "SIGN_VERIFY"]
    public = public_key(client, meta)
    signature = client.sign(KeyId=meta["KeyId"], Message=MESSAGE, SigningAlgorithm="RSASSA_PSS_SHA_512")["Signature"]
    public.verify(signature, MESSAGE, padding.PSS(padding.MGF1(hashes.SHA512()), 64), hashes.SHA512())
    with pytest.raises(InvalidSignature):
        public.verify(signature, MESSAGE, padding.PSS(padding.MGF1(hashes.SHA512()), 32), hashes.SHA512())


def test_signing_refusals(client: Any, keys: Any, symmetric: str) -> None:
    p256 = keys["ECC_NIST_P256", "SIGN_VERIFY"]
    expect("InvalidKeyUsageException", client.sign, KeyId=p256["KeyId"], Message=MESSAGE,
           SigningAlgorithm="ECDSA_SHA_384", message="Algorithm ECDSA_SHA_384 is incompatible with key spec "
                                                     "ECC_NIST_P256.")
    expect("InvalidKeyUsageException", client.sign, KeyId=keys["RSA_2048", "SIGN_VERIFY"]["KeyId"], Message=MESSAGE,
           SigningAlgorithm="ECDSA_SHA_256")
    expect("InvalidKeyUsageException", client.sign, KeyId=keys["ECC_NIST_P521", "SIGN_VERIFY"]["KeyId"],
           Message=MESSAGE, SigningAlgorithm="ECDSA_SHA_256")
    expect("ValidationException", client.sign, KeyId=p256["KeyId"], Message=b"x" * 31, MessageType="DIGEST",
           SigningAlgorithm="ECDSA_SHA_256", message="Digest is invalid length for algorithm ECDSA_SHA_256.")
    expect("ValidationException", client.verify, KeyId=p256["KeyId"], Message=b"x" * 48, MessageType="DIGEST",
           Signature=b"s", SigningAlgorithm="ECDSA_SHA_256")
    expect("ValidationException", client.sign, KeyId=p256["KeyId"], Message=b"x" * 4097,
           SigningAlgorithm="ECDSA_SHA_256",
           message="1 validation error detected: Value at 'message' failed to satisfy constraint: Member must "
                   "have length less than or equal to 4096")
    message = expect("ValidationException", client.sign, KeyId=p256["KeyId"], Message=MESSAGE,
                     SigningAlgorithm="ECDSA_SHA_1")
    assert "Value 'ECDSA_SHA_1' at 'signingAlgorithm' failed to satisfy constraint" in message
    expect("ValidationException", client.sign, KeyId=p256["KeyId"], Message=MESSAGE, MessageType="HASHED",
           SigningAlgorithm="ECDSA_SHA_256")
    # Wrong usage.
    rsa_enc = keys["RSA_2048", "ENCRYPT_DECRYPT"]
    expect("InvalidKeyUsageException", client.sign, KeyId=rsa_enc["KeyId"], Message=MESSAGE,
           SigningAlgorithm="RSASSA_PSS_SHA_256",
           message=f"{rsa_enc['Arn']} key usage is ENCRYPT_DECRYPT which is not valid for Sign.")
    expect("InvalidKeyUsageException", client.verify, KeyId=symmetric, Message=MESSAGE, Signature=b"s",
           SigningAlgorithm="RSASSA_PSS_SHA_256")
    expect("InvalidKeyUsageException", client.sign, KeyId=keys["HMAC_256", "GENERATE_VERIFY_MAC"]["KeyId"],
           Message=MESSAGE, SigningAlgorithm="RSASSA_PSS_SHA_256")
    # A signature that is not DER, or of another key.
    expect("KMSInvalidSignatureException", client.verify, KeyId=p256["KeyId"], Message=MESSAGE, Signature=b"\x30\x00",
           SigningAlgorithm="ECDSA_SHA_256")
    other = client.sign(KeyId=keys["ECC_SECG_P256K1", "SIGN_VERIFY"]["KeyId"], Message=MESSAGE,
                        SigningAlgorithm="ECDSA_SHA_256")["Signature"]
    expect("KMSInvalidSignatureException", client.verify, KeyId=p256["KeyId"], Message=MESSAGE, Signature=other,
           SigningAlgorithm="ECDSA_SHA_256")
    expect("DryRunOperationException", client.sign, KeyId=p256["KeyId"], Message=MESSAGE,
           SigningAlgorithm="ECDSA_SHA_256", DryRun=True)


# --- RSA encryption ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bits", [2048, 3072, 4096])
def test_rsa_oaep_inside_and_outside(client: Any, keys: Any, bits: int) -> None:
    meta = keys[f"RSA_{bits}", "ENCRYPT_DECRYPT"]
    public = public_key(client, meta)
    limits = {"RSAES_OAEP_SHA_1": bits // 8 - 42, "RSAES_OAEP_SHA_256": bits // 8 - 66}
    for algorithm, limit in limits.items():
        digest = hashes.SHA1() if algorithm.endswith("_1") else hashes.SHA256()
        oaep = padding.OAEP(padding.MGF1(digest), digest, None)
        plaintext = bytes(range(256)) * 2
        plaintext = plaintext[:limit]
        outside = public.encrypt(plaintext, oaep)
        answer = client.decrypt(CiphertextBlob=outside, KeyId=meta["KeyId"], EncryptionAlgorithm=algorithm)
        assert (answer["Plaintext"], answer["KeyId"], answer["EncryptionAlgorithm"]) == (
            plaintext, meta["Arn"], algorithm)
        encrypted = client.encrypt(KeyId=meta["KeyId"], Plaintext=plaintext, EncryptionAlgorithm=algorithm)
        assert (encrypted["KeyId"], encrypted["EncryptionAlgorithm"]) == (meta["Arn"], algorithm)
        assert len(encrypted["CiphertextBlob"]) == bits // 8
        assert client.decrypt(CiphertextBlob=encrypted["CiphertextBlob"], KeyId=meta["Arn"],
                              EncryptionAlgorithm=algorithm)["Plaintext"] == plaintext
        expect("ValidationException", client.encrypt, KeyId=meta["KeyId"], Plaintext=plaintext + b"x",
               EncryptionAlgorithm=algorithm,
               message=f"Algorithm {algorithm} and key spec RSA_{bits} cannot encrypt data larger than {limit} bytes.")
    other = "RSAES_OAEP_SHA_1"
    made = client.encrypt(KeyId=meta["KeyId"], Plaintext=b"k", EncryptionAlgorithm="RSAES_OAEP_SHA_256")
    expect("InvalidCiphertextException", client.decrypt, CiphertextBlob=made["CiphertextBlob"],
           KeyId=meta["KeyId"], EncryptionAlgorithm=other, message="")


def test_rsa_encryption_refusals(client: Any, keys: Any, symmetric: str) -> None:
    meta = keys["RSA_2048", "ENCRYPT_DECRYPT"]
    blob = client.encrypt(KeyId=meta["KeyId"], Plaintext=b"secret", EncryptionAlgorithm="RSAES_OAEP_SHA_256")[
        "CiphertextBlob"]
    expect("InvalidKeyUsageException", client.encrypt, KeyId=meta["KeyId"], Plaintext=b"x",
           message="Algorithm SYMMETRIC_DEFAULT is incompatible with key spec RSA_2048.")
    expect("InvalidKeyUsageException", client.encrypt, KeyId=symmetric, Plaintext=b"x",
           EncryptionAlgorithm="RSAES_OAEP_SHA_256",
           message="Algorithm RSAES_OAEP_SHA_256 is incompatible with key spec SYMMETRIC_DEFAULT.")
    # AWS needs KeyId and EncryptionAlgorithm for asymmetric ciphertext.
    expect("InvalidCiphertextException", client.decrypt, CiphertextBlob=blob, EncryptionAlgorithm="RSAES_OAEP_SHA_256")
    expect("IncorrectKeyException", client.decrypt, CiphertextBlob=blob, KeyId=meta["KeyId"])
    expect("InvalidCiphertextException", client.decrypt, CiphertextBlob=blob[:-1], KeyId=meta["KeyId"],
           EncryptionAlgorithm="RSAES_OAEP_SHA_256")
    expect("InvalidCiphertextException", client.decrypt, CiphertextBlob=blob[:-1] + bytes([blob[-1] ^ 1]),
           KeyId=meta["KeyId"], EncryptionAlgorithm="RSAES_OAEP_SHA_256")
    sign_key = keys["RSA_2048", "SIGN_VERIFY"]
    expect("InvalidKeyUsageException", client.encrypt, KeyId=sign_key["KeyId"], Plaintext=b"x",
           EncryptionAlgorithm="RSAES_OAEP_SHA_256",
           message=f"{sign_key['Arn']} key usage is SIGN_VERIFY which is not valid for Encrypt.")
    expect("InvalidKeyUsageException", client.decrypt, CiphertextBlob=blob, KeyId=sign_key["KeyId"],
           EncryptionAlgorithm="RSAES_OAEP_SHA_256")
    expect("ValidationException", client.encrypt, KeyId=meta["KeyId"], Plaintext=b"x",
           EncryptionAlgorithm="RSAES_OAEP_SHA_256", EncryptionContext={"a": "b"})
    expect("InvalidKeyUsageException", client.generate_data_key, KeyId=meta["KeyId"], NumberOfBytes=32)
    expect("InvalidKeyUsageException", client.encrypt, KeyId=keys["HMAC_256", "GENERATE_VERIFY_MAC"]["KeyId"],
           Plaintext=b"x")
    # Symmetric ciphertexts keep working, with and without KeyId.
    sym = client.encrypt(KeyId=symmetric, Plaintext=b"sym")["CiphertextBlob"]
    assert client.decrypt(CiphertextBlob=sym)["Plaintext"] == b"sym"
    assert client.decrypt(CiphertextBlob=sym, KeyId=symmetric)["Plaintext"] == b"sym"
    expect("IncorrectKeyException", client.decrypt, CiphertextBlob=sym, KeyId=meta["KeyId"])


# --- ReEncrypt with RSA keys ----------------------------------------------------------------------------------------

RE_ENCRYPT_MEMBERS = {"CiphertextBlob", "SourceKeyId", "KeyId", "SourceEncryptionAlgorithm",
                      "DestinationEncryptionAlgorithm"}


def fields(answer: dict[str, Any]) -> set[str]:
    return set(answer) - {"ResponseMetadata"}


def test_re_encrypt_every_combination_round_trips(client: Any, keys: Any, symmetric: str) -> None:
    rsa2048, rsa3072 = keys["RSA_2048", "ENCRYPT_DECRYPT"], keys["RSA_3072", "ENCRYPT_DECRYPT"]
    plaintext = bytes(range(190))  # RSA_2048 with OAEP SHA-256 takes at most 190 bytes
    sym_blob = client.encrypt(KeyId=symmetric, Plaintext=plaintext, EncryptionContext={"c": "1"})["CiphertextBlob"]

    # symmetric -> RSA: the source's material id, none for the RSA destination.
    to_rsa = client.re_encrypt(CiphertextBlob=sym_blob, SourceEncryptionContext={"c": "1"},
                               DestinationKeyId=rsa2048["KeyId"], DestinationEncryptionAlgorithm="RSAES_OAEP_SHA_256")
    assert fields(to_rsa) == RE_ENCRYPT_MEMBERS | {"SourceKeyMaterialId"}
    assert (to_rsa["SourceKeyId"], to_rsa["KeyId"], to_rsa["SourceEncryptionAlgorithm"],
            to_rsa["DestinationEncryptionAlgorithm"]) == (symmetric, rsa2048["Arn"], "SYMMETRIC_DEFAULT",
                                                          "RSAES_OAEP_SHA_256")
    assert len(to_rsa["SourceKeyMaterialId"]) == 64 and len(to_rsa["CiphertextBlob"]) == 256
    rsa_blob = to_rsa["CiphertextBlob"]
    assert client.decrypt(CiphertextBlob=rsa_blob, KeyId=rsa2048["KeyId"],
                          EncryptionAlgorithm="RSAES_OAEP_SHA_256")["Plaintext"] == plaintext

    # RSA -> symmetric: SourceKeyId and SourceEncryptionAlgorithm; the destination's material id only.
    to_sym = client.re_encrypt(CiphertextBlob=rsa_blob, SourceKeyId=rsa2048["Arn"],
                               SourceEncryptionAlgorithm="RSAES_OAEP_SHA_256", DestinationKeyId=symmetric,
                               DestinationEncryptionContext={"c": "2"})
    assert fields(to_sym) == RE_ENCRYPT_MEMBERS | {"DestinationKeyMaterialId"}
    assert (to_sym["SourceKeyId"], to_sym["KeyId"], to_sym["SourceEncryptionAlgorithm"],
            to_sym["DestinationEncryptionAlgorithm"]) == (rsa2048["Arn"], symmetric, "RSAES_OAEP_SHA_256",
                                                          "SYMMETRIC_DEFAULT")
    opened = client.decrypt(CiphertextBlob=to_sym["CiphertextBlob"], EncryptionContext={"c": "2"})
    assert (opened["Plaintext"], opened["KeyMaterialId"]) == (plaintext, to_sym["DestinationKeyMaterialId"])

    # RSA -> another RSA key, and -> the same key with the other algorithm: no material ids.
    for destination, algorithm in ((rsa3072, "RSAES_OAEP_SHA_1"), (rsa2048, "RSAES_OAEP_SHA_1")):
        moved = client.re_encrypt(CiphertextBlob=rsa_blob, SourceKeyId=rsa2048["KeyId"],
                                  SourceEncryptionAlgorithm="RSAES_OAEP_SHA_256", DestinationKeyId=destination["Arn"],
                                  DestinationEncryptionAlgorithm=algorithm)
        assert fields(moved) == RE_ENCRYPT_MEMBERS
        assert (moved["SourceKeyId"], moved["KeyId"], moved["SourceEncryptionAlgorithm"],
                moved["DestinationEncryptionAlgorithm"]) == (rsa2048["Arn"], destination["Arn"],
                                                             "RSAES_OAEP_SHA_256", algorithm)
        assert len(moved["CiphertextBlob"]) == int(destination["KeySpec"][4:]) // 8
        assert client.decrypt(CiphertextBlob=moved["CiphertextBlob"], KeyId=destination["KeyId"],
                              EncryptionAlgorithm=algorithm)["Plaintext"] == plaintext
    expect("InvalidCiphertextException", client.decrypt, CiphertextBlob=moved["CiphertextBlob"],
           KeyId=rsa2048["KeyId"], EncryptionAlgorithm="RSAES_OAEP_SHA_256")

    # Ciphertext made outside with GetPublicKey's key moves to a symmetric key.
    outside = public_key(client, rsa3072).encrypt(b"outside", padding.OAEP(padding.MGF1(hashes.SHA1()), hashes.SHA1(),
                                                                         None))
    moved = client.re_encrypt(CiphertextBlob=outside, SourceKeyId=rsa3072["KeyId"],
                              SourceEncryptionAlgorithm="RSAES_OAEP_SHA_1", DestinationKeyId=symmetric)
    assert client.decrypt(CiphertextBlob=moved["CiphertextBlob"])["Plaintext"] == b"outside"

    # symmetric -> symmetric is unchanged (the algorithms may be named).
    for named in ({}, {"SourceEncryptionAlgorithm": "SYMMETRIC_DEFAULT",
                       "DestinationEncryptionAlgorithm": "SYMMETRIC_DEFAULT"}):
        same = client.re_encrypt(CiphertextBlob=sym_blob, SourceEncryptionContext={"c": "1"},
                                 DestinationKeyId=symmetric, **named)
        assert fields(same) == RE_ENCRYPT_MEMBERS | {"SourceKeyMaterialId", "DestinationKeyMaterialId"}
        assert (same["SourceKeyId"], same["KeyId"], same["SourceEncryptionAlgorithm"],
                same["DestinationEncryptionAlgorithm"]) == (symmetric, symmetric, "SYMMETRIC_DEFAULT",
                                                            "SYMMETRIC_DEFAULT")
        assert client.decrypt(CiphertextBlob=same["CiphertextBlob"])["Plaintext"] == plaintext


def test_re_encrypt_rsa_refusals(client: Any, keys: Any, symmetric: str) -> None:
    rsa2048, rsa3072 = keys["RSA_2048", "ENCRYPT_DECRYPT"], keys["RSA_3072", "ENCRYPT_DECRYPT"]
    sign_key = keys["RSA_2048", "SIGN_VERIFY"]
    rsa_blob = client.encrypt(KeyId=rsa2048["KeyId"], Plaintext=b"secret",
                              EncryptionAlgorithm="RSAES_OAEP_SHA_256")["CiphertextBlob"]
    sym_blob = client.encrypt(KeyId=symmetric, Plaintext=b"secret")["CiphertextBlob"]
    source = {"CiphertextBlob": rsa_blob, "SourceKeyId": rsa2048["KeyId"],
              "SourceEncryptionAlgorithm": "RSAES_OAEP_SHA_256"}
    to_sym = {"DestinationKeyId": symmetric}
    to_rsa = {"DestinationKeyId": rsa2048["KeyId"], "DestinationEncryptionAlgorithm": "RSAES_OAEP_SHA_1"}

    # RSA ciphertext needs SourceKeyId (as Decrypt needs KeyId) and SourceEncryptionAlgorithm.
    expect("InvalidCiphertextException", client.re_encrypt, CiphertextBlob=rsa_blob,
           SourceEncryptionAlgorithm="RSAES_OAEP_SHA_256", message="", **to_sym)
    expect("InvalidCiphertextException", client.re_encrypt, CiphertextBlob=rsa_blob, message="", **to_sym)
    expect("IncorrectKeyException", client.re_encrypt, CiphertextBlob=rsa_blob, SourceKeyId=rsa2048["KeyId"],
           **to_sym)
    # The wrong OAEP hash, another RSA key, an altered ciphertext.
    expect("InvalidCiphertextException", client.re_encrypt, **{**source, "SourceEncryptionAlgorithm":
                                                              "RSAES_OAEP_SHA_1"}, **to_sym)
    expect("InvalidCiphertextException", client.re_encrypt, **{**source, "SourceKeyId": rsa3072["KeyId"]}, **to_sym)
    expect("InvalidCiphertextException", client.re_encrypt, **{**source, "CiphertextBlob": rsa_blob[:-1] + bytes(
        [rsa_blob[-1] ^ 1])}, **to_sym)
    # Algorithms that do not fit the key, on either side.
    expect("InvalidKeyUsageException", client.re_encrypt, CiphertextBlob=sym_blob, SourceKeyId=symmetric,
           SourceEncryptionAlgorithm="RSAES_OAEP_SHA_256", **to_sym,
           message="Algorithm RSAES_OAEP_SHA_256 is incompatible with key spec SYMMETRIC_DEFAULT.")
    expect("InvalidKeyUsageException", client.re_encrypt, CiphertextBlob=sym_blob, DestinationKeyId=rsa2048["KeyId"],
           message="Algorithm SYMMETRIC_DEFAULT is incompatible with key spec RSA_2048.")
    expect("InvalidKeyUsageException", client.re_encrypt, CiphertextBlob=sym_blob, DestinationKeyId=rsa2048["KeyId"],
           DestinationEncryptionAlgorithm="SM2PKE", message="Algorithm SM2PKE is incompatible with key spec RSA_2048.")
    expect("InvalidKeyUsageException", client.re_encrypt, **source, DestinationKeyId=symmetric,
           DestinationEncryptionAlgorithm="RSAES_OAEP_SHA_1",
           message="Algorithm RSAES_OAEP_SHA_1 is incompatible with key spec SYMMETRIC_DEFAULT.")
    # Keys of the wrong usage.
    expect("InvalidKeyUsageException", client.re_encrypt, CiphertextBlob=sym_blob, DestinationKeyId=sign_key["KeyId"],
           DestinationEncryptionAlgorithm="RSAES_OAEP_SHA_256",
           message=f"{sign_key['Arn']} key usage is SIGN_VERIFY which is not valid for ReEncrypt.")
    expect("InvalidKeyUsageException", client.re_encrypt, **{**source, "SourceKeyId": sign_key["KeyId"]}, **to_sym,
           message=f"{sign_key['Arn']} key usage is SIGN_VERIFY which is not valid for ReEncrypt.")
    # Encryption contexts are refused with RSA keys, as Encrypt/Decrypt refuse them.
    expect("ValidationException", client.re_encrypt, **source, SourceEncryptionContext={"a": "b"}, **to_sym,
           message="SourceEncryptionContext is not supported with asymmetric KMS keys.")
    expect("ValidationException", client.re_encrypt, CiphertextBlob=sym_blob, DestinationEncryptionContext={"a": "b"},
           **to_rsa, message="DestinationEncryptionContext is not supported with asymmetric KMS keys.")
    # The destination's OAEP plaintext limit applies to the decrypted source.
    big = client.encrypt(KeyId=symmetric, Plaintext=b"x" * 215)["CiphertextBlob"]
    expect("ValidationException", client.re_encrypt, CiphertextBlob=big, **to_rsa,
           message="Algorithm RSAES_OAEP_SHA_1 and key spec RSA_2048 cannot encrypt data larger than 214 bytes.")
    fits = client.encrypt(KeyId=symmetric, Plaintext=b"x" * 214)["CiphertextBlob"]
    assert len(client.re_encrypt(CiphertextBlob=fits, **to_rsa)["CiphertextBlob"]) == 256
    from_3072 = client.encrypt(KeyId=rsa3072["KeyId"], Plaintext=b"y" * 191,
                               EncryptionAlgorithm="RSAES_OAEP_SHA_256")["CiphertextBlob"]
    expect("ValidationException", client.re_encrypt, CiphertextBlob=from_3072, SourceKeyId=rsa3072["KeyId"],
           SourceEncryptionAlgorithm="RSAES_OAEP_SHA_256", DestinationKeyId=rsa2048["KeyId"],
           DestinationEncryptionAlgorithm="RSAES_OAEP_SHA_256",
           message="Algorithm RSAES_OAEP_SHA_256 and key spec RSA_2048 cannot encrypt data larger than 190 bytes.")
    # DryRun, from and to RSA keys.
    expect("DryRunOperationException", client.re_encrypt, **source, **to_sym, DryRun=True)
    expect("DryRunOperationException", client.re_encrypt, CiphertextBlob=sym_blob, **to_rsa, DryRun=True)


def test_re_encrypt_rsa_needs_re_encrypt_from_and_to(kms: KmsEnv, client: Any, keys: Any, symmetric: str,
                                                     tmp_path: Any) -> None:
    rsa2048, rsa3072 = keys["RSA_2048", "ENCRYPT_DECRYPT"], keys["RSA_3072", "ENCRYPT_DECRYPT"]
    document = tmp_path / "policy.json"
    document.write_text(json.dumps({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": "kms:ReEncryptFrom", "Resource": [rsa2048["Arn"], rsa3072["Arn"]]},
        {"Effect": "Allow", "Action": "kms:ReEncryptTo", "Resource": [symmetric, rsa2048["Arn"]]}]}))
    code, out = kms.cluster.cli("kms", "access-key", "create", "--name", "re-encrypt-rsa", "--policy", str(document),
                                pin=kms.cluster.admin_pin)
    assert code == 0, out
    limited = kms.client(out["data"]["access_key_id"], out["data"]["secret_access_key"])
    blob = client.encrypt(KeyId=rsa3072["KeyId"], Plaintext=b"p", EncryptionAlgorithm="RSAES_OAEP_SHA_1")[
        "CiphertextBlob"]
    source = {"CiphertextBlob": blob, "SourceKeyId": rsa3072["KeyId"], "SourceEncryptionAlgorithm": "RSAES_OAEP_SHA_1"}
    moved = limited.re_encrypt(**source, DestinationKeyId=rsa2048["KeyId"],
                               DestinationEncryptionAlgorithm="RSAES_OAEP_SHA_256")
    back = limited.re_encrypt(CiphertextBlob=moved["CiphertextBlob"], SourceKeyId=rsa2048["KeyId"],
                              SourceEncryptionAlgorithm="RSAES_OAEP_SHA_256", DestinationKeyId=symmetric)
    assert client.decrypt(CiphertextBlob=back["CiphertextBlob"])["Plaintext"] == b"p"
    denied = expect("AccessDeniedException", limited.re_encrypt, **source, DestinationKeyId=rsa3072["KeyId"],
                    DestinationEncryptionAlgorithm="RSAES_OAEP_SHA_256")
    assert f"kms:ReEncryptTo on resource: {rsa3072['Arn']}" in denied
    sym_blob = client.encrypt(KeyId=symmetric, Plaintext=b"p")["CiphertextBlob"]
    denied = expect("AccessDeniedException", limited.re_encrypt, CiphertextBlob=sym_blob,
                    DestinationKeyId=rsa2048["KeyId"], DestinationEncryptionAlgorithm="RSAES_OAEP_SHA_256")
    assert f"kms:ReEncryptFrom on resource: {symmetric}" in denied
    expect("AccessDeniedException", limited.decrypt, CiphertextBlob=blob, KeyId=rsa3072["KeyId"],
           EncryptionAlgorithm="RSAES_OAEP_SHA_1")


# --- HMAC ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", list(HMAC))
def test_generate_and_verify_mac(client: Any, keys: Any, spec: str) -> None:
    meta = keys[spec, "GENERATE_VERIFY_MAC"]
    algorithm, size = HMAC[spec]
    answer = client.generate_mac(KeyId=meta["KeyId"], Message=MESSAGE, MacAlgorithm=algorithm)
    assert (answer["KeyId"], answer["MacAlgorithm"], len(answer["Mac"])) == (meta["Arn"], algorithm, size)
    again = client.generate_mac(KeyId=meta["Arn"], Message=MESSAGE, MacAlgorithm=algorithm)["Mac"]
    assert again == answer["Mac"]  # deterministic
    assert client.generate_mac(KeyId=meta["KeyId"], Message=MESSAGE + b"!", MacAlgorithm=algorithm)["Mac"] != again
    ok = client.verify_mac(KeyId=meta["KeyId"], Message=MESSAGE, Mac=answer["Mac"], MacAlgorithm=algorithm)
    assert (ok["MacValid"], ok["KeyId"], ok["MacAlgorithm"]) == (True, meta["Arn"], algorithm)
    expect("KMSInvalidMacException", client.verify_mac, KeyId=meta["KeyId"], Message=MESSAGE + b"!",
           Mac=answer["Mac"], MacAlgorithm=algorithm, message="")
    expect("KMSInvalidMacException", client.verify_mac, KeyId=meta["KeyId"], Message=MESSAGE,
           Mac=answer["Mac"][:-1], MacAlgorithm=algorithm)
    wrong = next(a for a, _ in HMAC.values() if a != algorithm)
    expect("InvalidKeyUsageException", client.generate_mac, KeyId=meta["KeyId"], Message=MESSAGE,
           MacAlgorithm=wrong, message=f"Algorithm {wrong} is incompatible with key spec {spec}.")


def test_mac_refusals_and_key_separation(client: Any, keys: Any, symmetric: str) -> None:
    one = keys["HMAC_256", "GENERATE_VERIFY_MAC"]
    two = client.create_key(KeySpec="HMAC_256", KeyUsage="GENERATE_VERIFY_MAC")["KeyMetadata"]
    mac = client.generate_mac(KeyId=one["KeyId"], Message=MESSAGE, MacAlgorithm="HMAC_SHA_256")["Mac"]
    assert client.generate_mac(KeyId=two["KeyId"], Message=MESSAGE, MacAlgorithm="HMAC_SHA_256")["Mac"] != mac
    expect("KMSInvalidMacException", client.verify_mac, KeyId=two["KeyId"], Message=MESSAGE, Mac=mac,
           MacAlgorithm="HMAC_SHA_256")
    expect("InvalidKeyUsageException", client.generate_mac, KeyId=symmetric, Message=MESSAGE,
           MacAlgorithm="HMAC_SHA_256")
    expect("InvalidKeyUsageException", client.generate_mac, KeyId=keys["ECC_NIST_P256", "SIGN_VERIFY"]["KeyId"],
           Message=MESSAGE, MacAlgorithm="HMAC_SHA_256")
    expect("ValidationException", client.generate_mac, KeyId=one["KeyId"], Message=b"", MacAlgorithm="HMAC_SHA_256")
    expect("ValidationException", client.generate_mac, KeyId=one["KeyId"], Message=b"m" * 4097,
           MacAlgorithm="HMAC_SHA_256")
    expect("ValidationException", client.generate_mac, KeyId=one["KeyId"], Message=b"m", MacAlgorithm="HMAC_MD5")
    expect("UnsupportedOperationException", client.get_public_key, KeyId=one["KeyId"])
    expect("UnsupportedOperationException", client.get_public_key, KeyId=symmetric)
    client.disable_key(KeyId=two["KeyId"])
    expect("DisabledException", client.generate_mac, KeyId=two["KeyId"], Message=MESSAGE, MacAlgorithm="HMAC_SHA_256",
           message=f"{two['Arn']} is disabled.")


# --- GenerateDataKeyPair ---------------------------------------------------------------------------------------------

PAIR_SPECS = ["RSA_2048", "RSA_3072", "RSA_4096", "ECC_NIST_P256", "ECC_NIST_P384", "ECC_NIST_P521",
              "ECC_SECG_P256K1", "ECC_NIST_EDWARDS25519"]


@pytest.mark.parametrize("pair_spec", PAIR_SPECS)
def test_generate_data_key_pair(client: Any, symmetric: str, pair_spec: str) -> None:
    context = {"purpose": "test", "spec": pair_spec}
    answer = client.generate_data_key_pair(KeyId=symmetric, KeyPairSpec=pair_spec, EncryptionContext=context)
    assert (answer["KeyId"], answer["KeyPairSpec"]) == (symmetric, pair_spec)
    assert len(answer["KeyMaterialId"]) == 64
    private = serialization.load_der_private_key(answer["PrivateKeyPlaintext"], None)
    public = serialization.load_der_public_key(answer["PublicKey"])
    if isinstance(private, rsa.RSAPrivateKey):
        assert private.key_size == int(pair_spec[4:])
        signature = private.sign(MESSAGE, padding.PKCS1v15(), hashes.SHA256())
        public.verify(signature, MESSAGE, padding.PKCS1v15(), hashes.SHA256())
    elif isinstance(private, ed25519.Ed25519PrivateKey):
        public.verify(private.sign(MESSAGE), MESSAGE)
    else:
        assert private.curve.name == public.curve.name
        public.verify(private.sign(MESSAGE, ec.ECDSA(hashes.SHA256())), MESSAGE, ec.ECDSA(hashes.SHA256()))
    decrypted = client.decrypt(CiphertextBlob=answer["PrivateKeyCiphertextBlob"], EncryptionContext=context)
    assert decrypted["Plaintext"] == answer["PrivateKeyPlaintext"]
    expect("InvalidCiphertextException", client.decrypt, CiphertextBlob=answer["PrivateKeyCiphertextBlob"])
    without = client.generate_data_key_pair_without_plaintext(KeyId=symmetric, KeyPairSpec=pair_spec)
    assert "PrivateKeyPlaintext" not in without
    assert set(without) - {"ResponseMetadata"} == {"PrivateKeyCiphertextBlob", "PublicKey", "KeyId", "KeyPairSpec",
                                                   "KeyMaterialId"}
    recovered = client.decrypt(CiphertextBlob=without["PrivateKeyCiphertextBlob"])["Plaintext"]
    assert serialization.load_der_private_key(recovered, None).public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo) == without["PublicKey"]


def test_generate_data_key_pair_refusals(client: Any, keys: Any, symmetric: str) -> None:
    expect("InvalidKeyUsageException", client.generate_data_key_pair,
           KeyId=keys["RSA_2048", "ENCRYPT_DECRYPT"]["KeyId"], KeyPairSpec="ECC_NIST_P256")
    expect("InvalidKeyUsageException", client.generate_data_key_pair_without_plaintext,
           KeyId=keys["HMAC_224", "GENERATE_VERIFY_MAC"]["KeyId"], KeyPairSpec="ECC_NIST_P256")
    message = expect("ValidationException", client.generate_data_key_pair, KeyId=symmetric, KeyPairSpec="RSA_1024")
    assert message.startswith("1 validation error detected: Value 'RSA_1024' at 'keyPairSpec' failed to satisfy "
                              "constraint: Member must satisfy enum value set: [RSA_2048, RSA_3072")
    expect("UnsupportedOperationException", client.generate_data_key_pair, KeyId=symmetric, KeyPairSpec="SM2")
    expect("DryRunOperationException", client.generate_data_key_pair, KeyId=symmetric, KeyPairSpec="ECC_NIST_P256",
           DryRun=True)


# --- key states and CreateKey refusals --------------------------------------------------------------------------------


def test_disabled_asymmetric_keys_and_create_refusals(client: Any) -> None:
    meta = client.create_key(KeySpec="ECC_NIST_P256", KeyUsage="SIGN_VERIFY")["KeyMetadata"]
    signature = client.sign(KeyId=meta["KeyId"], Message=MESSAGE, SigningAlgorithm="ECDSA_SHA_256")["Signature"]
    client.disable_key(KeyId=meta["KeyId"])
    for call, kwargs in ((client.sign, {"Message": MESSAGE, "SigningAlgorithm": "ECDSA_SHA_256"}),
                         (client.verify, {"Message": MESSAGE, "Signature": signature,
                                          "SigningAlgorithm": "ECDSA_SHA_256"}),
                         (client.get_public_key, {})):
        expect("DisabledException", call, KeyId=meta["KeyId"], message=f"{meta['Arn']} is disabled.", **kwargs)
    client.enable_key(KeyId=meta["KeyId"])
    client.schedule_key_deletion(KeyId=meta["KeyId"], PendingWindowInDays=7)
    expect("KMSInvalidStateException", client.get_public_key, KeyId=meta["KeyId"])
    expect("ValidationException", client.create_key, KeySpec="HMAC_256", KeyUsage="SIGN_VERIFY")
    expect("ValidationException", client.create_key, KeySpec="ECC_SECG_P256K1", KeyUsage="ENCRYPT_DECRYPT")
    expect("ValidationException", client.create_key, KeySpec="RSA_2048")
    expect("UnsupportedOperationException", client.create_key, KeySpec="SM2", KeyUsage="SIGN_VERIFY")  # China only
    expect("ValidationException", client.create_key, CustomerMasterKeySpec="ML_DSA_65", KeyUsage="SIGN_VERIFY")
    legacy = client.create_key(CustomerMasterKeySpec="ECC_NIST_P256", KeyUsage="SIGN_VERIFY")["KeyMetadata"]
    assert legacy["KeySpec"] == legacy["CustomerMasterKeySpec"] == "ECC_NIST_P256"


def test_aws_cli_sign_and_get_public_key(kms: KmsEnv, keys: Any, tmp_path: Any) -> None:
    meta = keys["ECC_NIST_P256", "SIGN_VERIFY"]
    message = tmp_path / "message"
    message.write_bytes(MESSAGE)
    signed = kms.aws_json("sign", "--key-id", meta["Arn"], "--message", f"fileb://{message}",
                          "--signing-algorithm", "ECDSA_SHA_256")
    signature = tmp_path / "signature"
    signature.write_bytes(base64.b64decode(signed["Signature"]))
    verified = kms.aws_json("verify", "--key-id", meta["Arn"], "--message", f"fileb://{message}",
                            "--signature", f"fileb://{signature}", "--signing-algorithm", "ECDSA_SHA_256")
    assert verified["SignatureValid"] is True
    described = kms.aws_json("get-public-key", "--key-id", meta["KeyId"])
    public = serialization.load_der_public_key(base64.b64decode(described["PublicKey"]))
    public.verify(base64.b64decode(signed["Signature"]), MESSAGE, ec.ECDSA(hashes.SHA256()))
