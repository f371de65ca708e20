"""Imported key material (Origin EXTERNAL) through boto3 and the AWS CLI: the wrapping key and token of
GetParametersForImport, ImportKeyMaterial with both wrapping families and with expiry, the reimport
rule, DeleteImportedKeyMaterial, and the errors AWS gives. That the imported material is what KMS
uses is checked from outside: a ciphertext blob decrypts with the material we imported, and a
signature verifies with the public half of the private key we imported."""

from __future__ import annotations

import base64
import os
import time
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError
from cryptography.hazmat.primitives import hashes, keywrap, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from strongroom.kms import ciphertext
from tests.integration.kms.conftest import KmsEnv, error_of, short_day_gateway

pytestmark = pytest.mark.slow


def code_of(call: Any, **kwargs: Any) -> tuple[str, str]:
    with pytest.raises(ClientError) as caught:
        call(**kwargs)
    return error_of(caught)


def oaep(algorithm: str = "RSAES_OAEP_SHA_256") -> padding.OAEP:
    digest = hashes.SHA1() if algorithm.endswith("SHA_1") else hashes.SHA256()
    return padding.OAEP(mgf=padding.MGF1(digest), algorithm=digest, label=None)


def wrap(parameters: dict[str, Any], material: bytes, algorithm: str) -> bytes:
    """What a customer does with GetParametersForImport's answer (AWS's documented formats)."""
    public = serialization.load_der_public_key(parameters["PublicKey"])
    if algorithm.startswith("RSAES_OAEP"):
        return public.encrypt(material, oaep(algorithm))  # type: ignore[union-attr]
    ephemeral = os.urandom(32)  # RSA_AES_KEY_WRAP: OAEP(AES key) || AES-KWP (RFC 5649) of the material
    return (public.encrypt(ephemeral, oaep(algorithm.replace("RSA_AES_KEY_WRAP", "RSAES_OAEP")))  # type: ignore[union-attr]
            + keywrap.aes_key_wrap_with_padding(ephemeral, material))


def parameters(client: Any, key_id: str, algorithm: str = "RSAES_OAEP_SHA_256", spec: str = "RSA_3072") -> Any:
    return client.get_parameters_for_import(KeyId=key_id, WrappingAlgorithm=algorithm, WrappingKeySpec=spec)


def import_material(client: Any, key_id: str, material: bytes, algorithm: str = "RSAES_OAEP_SHA_256",
                    **kwargs: Any) -> Any:
    params = parameters(client, key_id, algorithm)
    kwargs.setdefault("ExpirationModel", "KEY_MATERIAL_DOES_NOT_EXPIRE")
    return client.import_key_material(KeyId=key_id, ImportToken=params["ImportToken"],
                                      EncryptedKeyMaterial=wrap(params, material, algorithm), **kwargs)


def decrypt_offline(blob: bytes, material: bytes, context: dict[str, str]) -> bytes:
    parsed = ciphertext.parse(blob)
    return AESGCM(material).decrypt(parsed.iv, parsed.body, ciphertext.aad(parsed.header, context))


def test_symmetric_import_life_cycle(kms: KmsEnv, client: Any) -> None:
    meta = client.create_key(Origin="EXTERNAL", Description="imported")["KeyMetadata"]
    key_id, arn = meta["KeyId"], meta["Arn"]
    assert (meta["Origin"], meta["KeyState"], meta["Enabled"]) == ("EXTERNAL", "PendingImport", False)
    assert "CurrentKeyMaterialId" not in meta
    code, message = code_of(client.encrypt, KeyId=key_id, Plaintext=b"m")
    assert code == "KMSInvalidStateException" and message == f"{arn} is pending import."
    assert code_of(client.enable_key, KeyId=key_id)[0] == "KMSInvalidStateException"

    params = parameters(client, key_id)
    assert params["KeyId"] == arn and params["ParametersValidTo"].timestamp() > time.time() + 3000
    wrapping = serialization.load_der_public_key(params["PublicKey"])
    assert wrapping.key_size == 3072  # type: ignore[union-attr]

    material = os.urandom(32)
    imported = client.import_key_material(KeyId=arn, ImportToken=params["ImportToken"],
                                          EncryptedKeyMaterial=wrap(params, material, "RSAES_OAEP_SHA_256"),
                                          ExpirationModel="KEY_MATERIAL_DOES_NOT_EXPIRE")
    assert imported["KeyId"] == arn and len(imported["KeyMaterialId"]) == 64
    described = client.describe_key(KeyId=key_id)["KeyMetadata"]
    assert (described["KeyState"], described["Enabled"], described["ExpirationModel"]) == (
        "Enabled", True, "KEY_MATERIAL_DOES_NOT_EXPIRE")
    assert described["CurrentKeyMaterialId"] == imported["KeyMaterialId"] and "ValidTo" not in described
    blob = client.encrypt(KeyId=key_id, Plaintext=b"under imported material",
                          EncryptionContext={"a": "b"})["CiphertextBlob"]
    assert decrypt_offline(blob, material, {"a": "b"}) == b"under imported material"  # it is our material

    # Another material is refused; a wrong token, a token of another key, a non-EXTERNAL key too.
    assert code_of(import_material, client=client, key_id=key_id, material=os.urandom(32))[0] == \
        "IncorrectKeyMaterialException"
    assert code_of(client.import_key_material, KeyId=key_id, ImportToken=b"\x01" * 40,
                   EncryptedKeyMaterial=wrap(params, material, "RSAES_OAEP_SHA_256"),
                   ExpirationModel="KEY_MATERIAL_DOES_NOT_EXPIRE")[0] == "InvalidImportTokenException"
    other = client.create_key(Origin="EXTERNAL")["KeyMetadata"]["KeyId"]
    assert code_of(client.import_key_material, KeyId=other, ImportToken=params["ImportToken"],
                   EncryptedKeyMaterial=wrap(params, material, "RSAES_OAEP_SHA_256"),
                   ExpirationModel="KEY_MATERIAL_DOES_NOT_EXPIRE")[0] == "InvalidImportTokenException"
    native = client.create_key()["KeyMetadata"]["KeyId"]
    code, message = code_of(client.get_parameters_for_import, KeyId=native, WrappingAlgorithm="RSAES_OAEP_SHA_256",
                            WrappingKeySpec="RSA_2048")
    assert code == "UnsupportedOperationException" and "origin is AWS_KMS" in message
    assert code_of(client.delete_imported_key_material, KeyId=native)[0] == "UnsupportedOperationException"
    # Material that is not a wrapped key: InvalidCiphertextException.
    fresh = parameters(client, other)
    assert code_of(client.import_key_material, KeyId=other, ImportToken=fresh["ImportToken"],
                   EncryptedKeyMaterial=os.urandom(384),
                   ExpirationModel="KEY_MATERIAL_DOES_NOT_EXPIRE")[0] == "InvalidCiphertextException"
    # Expiry arguments, as AWS checks them.
    for kwargs in ({}, {"ExpirationModel": "KEY_MATERIAL_EXPIRES"},
                   {"ExpirationModel": "KEY_MATERIAL_DOES_NOT_EXPIRE", "ValidTo": time.time() + 3600},
                   {"ExpirationModel": "KEY_MATERIAL_EXPIRES", "ValidTo": time.time() - 60}):
        assert code_of(client.import_key_material, KeyId=other, ImportToken=fresh["ImportToken"],
                       EncryptedKeyMaterial=wrap(fresh, os.urandom(32), "RSAES_OAEP_SHA_256"),
                       **kwargs)[0] == "ValidationException", kwargs
    for kwargs in ({"WrappingAlgorithm": "RSAES_PKCS1_V1_5", "WrappingKeySpec": "RSA_2048"},
                   {"WrappingAlgorithm": "SM2PKE", "WrappingKeySpec": "SM2"},
                   {"WrappingAlgorithm": "RSAES_OAEP_SHA_256", "WrappingKeySpec": "RSA_1024"}):
        assert code_of(client.get_parameters_for_import, KeyId=other, **kwargs)[0] == "ValidationException"

    # Deleted: pending import again, the ciphertext unusable; the same material brings it back.
    deleted = client.delete_imported_key_material(KeyId=key_id)
    assert deleted == {**deleted, "KeyId": arn, "KeyMaterialId": imported["KeyMaterialId"]}
    assert client.describe_key(KeyId=key_id)["KeyMetadata"]["KeyState"] == "PendingImport"
    assert code_of(client.decrypt, CiphertextBlob=blob, EncryptionContext={"a": "b"})[0] == \
        "KMSInvalidStateException"
    again = import_material(client, key_id, material, "RSA_AES_KEY_WRAP_SHA_256")
    assert again["KeyMaterialId"] == imported["KeyMaterialId"]
    assert client.decrypt(CiphertextBlob=blob, EncryptionContext={"a": "b"})["Plaintext"] == \
        b"under imported material"
    # Disabled stays disabled on a reimport (which changes only the expiry).
    client.disable_key(KeyId=key_id)
    import_material(client, key_id, material, KeyMaterialId=imported["KeyMaterialId"],
                    ImportType="EXISTING_KEY_MATERIAL")
    assert client.describe_key(KeyId=key_id)["KeyMetadata"]["KeyState"] == "Disabled"
    # Rotation stays the preserve of AWS_KMS keys here.
    assert code_of(client.enable_key_rotation, KeyId=key_id)[0] == "UnsupportedOperationException"


def test_asymmetric_and_hmac_imports(client: Any) -> None:
    # An ECC signing key: PKCS#8 through RSA_AES_KEY_WRAP; KMS signs with it, we verify with our public key.
    ours = ec.generate_private_key(ec.SECP384R1())
    key_id = client.create_key(Origin="EXTERNAL", KeySpec="ECC_NIST_P384",
                               KeyUsage="SIGN_VERIFY")["KeyMetadata"]["KeyId"]
    pkcs8 = ours.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                               serialization.NoEncryption())
    import_material(client, key_id, pkcs8, "RSA_AES_KEY_WRAP_SHA_256")
    assert client.get_public_key(KeyId=key_id)["PublicKey"] == ours.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    signature = client.sign(KeyId=key_id, Message=b"signed with imported material",
                            SigningAlgorithm="ECDSA_SHA_384")["Signature"]
    ours.public_key().verify(signature, b"signed with imported material", ec.ECDSA(hashes.SHA384()))
    # Another curve's key is not this key's material.
    wrong = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    other = client.create_key(Origin="EXTERNAL", KeySpec="ECC_NIST_P384", KeyUsage="SIGN_VERIFY")["KeyMetadata"]
    assert code_of(import_material, client=client, key_id=other["KeyId"], material=wrong,
                   algorithm="RSA_AES_KEY_WRAP_SHA_256")[0] == "IncorrectKeyMaterialException"
    assert client.describe_key(KeyId=other["KeyId"])["KeyMetadata"]["KeyState"] == "PendingImport"
    # RSA material needs an RSA_AES wrapping algorithm.
    rsa_key = client.create_key(Origin="EXTERNAL", KeySpec="RSA_2048", KeyUsage="SIGN_VERIFY")["KeyMetadata"]
    assert code_of(client.get_parameters_for_import, KeyId=rsa_key["KeyId"], WrappingAlgorithm="RSAES_OAEP_SHA_256",
                   WrappingKeySpec="RSA_4096")[0] == "ValidationException"
    # An HMAC key: its MAC is the MAC of the material we hold.
    import hmac as std_hmac

    hmac_key = client.create_key(Origin="EXTERNAL", KeySpec="HMAC_256",
                                 KeyUsage="GENERATE_VERIFY_MAC")["KeyMetadata"]["KeyId"]
    secret = os.urandom(48)
    import_material(client, hmac_key, secret)
    mac = client.generate_mac(KeyId=hmac_key, Message=b"m", MacAlgorithm="HMAC_SHA_256")["Mac"]
    assert mac == std_hmac.new(secret, b"m", "sha256").digest()
    short = client.create_key(Origin="EXTERNAL", KeySpec="HMAC_256", KeyUsage="GENERATE_VERIFY_MAC")["KeyMetadata"]
    assert code_of(import_material, client=client, key_id=short["KeyId"], material=os.urandom(16))[0] == \
        "IncorrectKeyMaterialException"


def test_import_with_the_aws_cli(kms: KmsEnv, tmp_path: Path) -> None:
    key_id = kms.aws_json("create-key", "--origin", "EXTERNAL")["KeyMetadata"]["KeyId"]
    params = kms.aws_json("get-parameters-for-import", "--key-id", key_id, "--wrapping-algorithm",
                          "RSAES_OAEP_SHA_256", "--wrapping-key-spec", "RSA_4096")
    token, wrapped = tmp_path / "token.bin", tmp_path / "material.bin"
    token.write_bytes(base64.b64decode(params["ImportToken"]))
    decoded = {"PublicKey": base64.b64decode(params["PublicKey"])}
    wrapped.write_bytes(wrap(decoded, os.urandom(32), "RSAES_OAEP_SHA_256"))
    valid_to = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 30 * 86400))
    kms.aws_json("import-key-material", "--key-id", key_id, "--import-token", f"fileb://{token}",
                 "--encrypted-key-material", f"fileb://{wrapped}", "--expiration-model", "KEY_MATERIAL_EXPIRES",
                 "--valid-to", valid_to)
    meta = kms.aws_json("describe-key", "--key-id", key_id)["KeyMetadata"]
    assert (meta["KeyState"], meta["ExpirationModel"]) == ("Enabled", "KEY_MATERIAL_EXPIRES")
    assert abs(meta["ValidTo"] - (time.time() + 30 * 86400)) < 120


def test_expiry_of_material_and_of_import_parameters(kms: KmsEnv) -> None:
    """With a gateway whose "day" is 2 s: parameters expire after it; material at its ValidTo."""
    with short_day_gateway(kms, "imports-short-day", day_seconds=2.0) as fast:
        client = fast.client()
        key_id = client.create_key(Origin="EXTERNAL")["KeyMetadata"]["KeyId"]
        material = os.urandom(32)
        stale = parameters(client, key_id)
        time.sleep(2.5)
        assert code_of(client.import_key_material, KeyId=key_id, ImportToken=stale["ImportToken"],
                       EncryptedKeyMaterial=wrap(stale, material, "RSAES_OAEP_SHA_256"),
                       ExpirationModel="KEY_MATERIAL_DOES_NOT_EXPIRE")[0] == "ExpiredImportTokenException"
        valid_to = time.time() + 3
        import_material(client, key_id, material, ExpirationModel="KEY_MATERIAL_EXPIRES", ValidTo=valid_to)
        meta = client.describe_key(KeyId=key_id)["KeyMetadata"]
        assert meta["KeyState"] == "Enabled" and abs(meta["ValidTo"].timestamp() - valid_to) < 1
        blob = client.encrypt(KeyId=key_id, Plaintext=b"short-lived")["CiphertextBlob"]
        deadline = time.monotonic() + 30
        while client.describe_key(KeyId=key_id)["KeyMetadata"]["KeyState"] != "PendingImport":
            assert time.monotonic() < deadline, "the expired key material was not deleted"
            time.sleep(0.2)
        assert code_of(client.decrypt, CiphertextBlob=blob)[0] == "KMSInvalidStateException"
        # Reimported (the same material): usable again.
        import_material(client, key_id, material)
        assert client.decrypt(CiphertextBlob=blob)["Plaintext"] == b"short-lived"
