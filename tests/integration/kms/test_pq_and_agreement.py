"""ML-DSA, Ed25519, ML-KEM and KEY_AGREEMENT keys through boto3 and the AWS CLI, unchanged, with every
signature and secret checked outside the gateway (pyca/cryptography, pycryptodome for Ed25519ph),
and GetKeyLastUsage. (The AWS CLI of the test extra, 1.46.3, has no encapsulate/decapsulate commands
yet: ML-KEM is driven through boto3 only.)"""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError
from Crypto.Hash import SHA512
from Crypto.Signature import eddsa as pycryptodome_eddsa
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, mldsa, mlkem

from tests.integration.kms.conftest import KmsEnv, error_of

pytestmark = pytest.mark.slow

ML_DSA = {"ML_DSA_44": (mldsa.MLDSA44PublicKey, 2420), "ML_DSA_65": (mldsa.MLDSA65PublicKey, 3309),
          "ML_DSA_87": (mldsa.MLDSA87PublicKey, 4627)}
ML_KEM = {"ML_KEM_768": (mlkem.MLKEM768PublicKey, 1088), "ML_KEM_1024": (mlkem.MLKEM1024PublicKey, 1568)}


def code_of(call: Any, **kwargs: Any) -> tuple[str, str]:
    with pytest.raises(ClientError) as caught:
        call(**kwargs)
    return error_of(caught)


def public_key(client: Any, key_id: str) -> Any:
    return serialization.load_der_public_key(client.get_public_key(KeyId=key_id)["PublicKey"])


def mu_of(public: Any, message: bytes) -> bytes:
    """FIPS 204 §6.2's external μ, computed by the caller from the public key alone."""
    hasher = mldsa.MLDSAMuHasher(public)
    hasher.update(message)
    return bytes(hasher.finalize())


# --- ML-DSA ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", list(ML_DSA))
def test_ml_dsa_keys_sign_as_aws_and_verify_offline(kms: KmsEnv, client: Any, spec: str) -> None:
    public_class, signature_len = ML_DSA[spec]
    meta = client.create_key(KeySpec=spec, KeyUsage="SIGN_VERIFY", Description=spec)["KeyMetadata"]
    key_id = meta["KeyId"]
    assert (meta["KeySpec"], meta["KeyUsage"], meta["SigningAlgorithms"]) == (spec, "SIGN_VERIFY",
                                                                              ["ML_DSA_SHAKE_256"])
    assert "CustomerMasterKeySpec" not in meta  # not in that deprecated member's enum
    answer = client.get_public_key(KeyId=key_id)
    assert (answer["KeySpec"], answer["SigningAlgorithms"], answer["KeyId"]) == (spec, ["ML_DSA_SHAKE_256"],
                                                                                 kms.arn(key_id))
    public = serialization.load_der_public_key(answer["PublicKey"])
    assert isinstance(public, public_class)

    message = b"post-quantum " * 300  # 3,900 bytes: RAW up to 4,096
    signed = client.sign(KeyId=key_id, Message=message, MessageType="RAW", SigningAlgorithm="ML_DSA_SHAKE_256")
    assert (signed["KeyId"], signed["SigningAlgorithm"]) == (kms.arn(key_id), "ML_DSA_SHAKE_256")
    assert len(signed["Signature"]) == signature_len
    public.verify(signed["Signature"], message)  # pure ML-DSA, empty context: what AWS signs
    assert client.verify(KeyId=key_id, Message=message, Signature=signed["Signature"],
                         SigningAlgorithm="ML_DSA_SHAKE_256")["SignatureValid"] is True

    # EXTERNAL_MU: a message of any size, hashed by the caller; the signature is the message's own.
    large = b"x" * 100_000
    mu = mu_of(public, large)
    by_mu = client.sign(KeyId=key_id, Message=mu, MessageType="EXTERNAL_MU", SigningAlgorithm="ML_DSA_SHAKE_256")
    public.verify(by_mu["Signature"], large)
    assert client.verify(KeyId=key_id, Message=mu, MessageType="EXTERNAL_MU", Signature=by_mu["Signature"],
                         SigningAlgorithm="ML_DSA_SHAKE_256")["SignatureValid"]
    # The message type need not be the one used for signing: a RAW signature verifies through its μ.
    assert client.verify(KeyId=key_id, Message=mu_of(public, message), MessageType="EXTERNAL_MU",
                         Signature=signed["Signature"], SigningAlgorithm="ML_DSA_SHAKE_256")["SignatureValid"]

    # Refusals, as AWS answers them.
    tampered = bytes([signed["Signature"][0] ^ 1]) + signed["Signature"][1:]
    assert code_of(client.verify, KeyId=key_id, Message=message, Signature=tampered,
                   SigningAlgorithm="ML_DSA_SHAKE_256")[0] == "KMSInvalidSignatureException"
    assert code_of(client.verify, KeyId=key_id, Message=message, Signature=signed["Signature"][:-1],
                   SigningAlgorithm="ML_DSA_SHAKE_256")[0] == "KMSInvalidSignatureException"
    for kwargs in ({"Message": b"m" * 4097}, {"Message": mu[:63], "MessageType": "EXTERNAL_MU"},
                   {"Message": hashlib.sha256(b"m").digest(), "MessageType": "DIGEST"}):
        assert code_of(client.sign, KeyId=key_id, SigningAlgorithm="ML_DSA_SHAKE_256",
                       **kwargs)[0] == "ValidationException", kwargs
    assert code_of(client.sign, KeyId=key_id, Message=b"m",
                   SigningAlgorithm="ECDSA_SHA_256")[0] == "InvalidKeyUsageException"
    assert code_of(client.encrypt, KeyId=key_id, Plaintext=b"m")[0] == "InvalidKeyUsageException"
    assert code_of(client.create_key, KeySpec=spec, KeyUsage="ENCRYPT_DECRYPT")[0] == "ValidationException"


def test_external_mu_is_for_ml_dsa_keys_only(client: Any) -> None:
    key_id = client.create_key(KeySpec="ECC_NIST_P256", KeyUsage="SIGN_VERIFY")["KeyMetadata"]["KeyId"]
    code, message = code_of(client.sign, KeyId=key_id, Message=b"u" * 64, MessageType="EXTERNAL_MU",
                            SigningAlgorithm="ECDSA_SHA_256")
    assert code == "ValidationException" and "EXTERNAL_MU" in message


def test_ml_dsa_with_the_aws_cli(kms: KmsEnv, tmp_path: Path) -> None:
    meta = kms.aws_json("create-key", "--key-spec", "ML_DSA_65", "--key-usage", "SIGN_VERIFY")["KeyMetadata"]
    message = tmp_path / "message.bin"
    message.write_bytes(b"signed by the AWS CLI")
    signed = kms.aws_json("sign", "--key-id", meta["Arn"], "--message", f"fileb://{message}", "--message-type", "RAW",
                          "--signing-algorithm", "ML_DSA_SHAKE_256")
    signature = tmp_path / "signature.bin"
    signature.write_bytes(base64.b64decode(signed["Signature"]))
    verified = kms.aws_json("verify", "--key-id", meta["KeyId"], "--message", f"fileb://{message}",
                            "--signature", f"fileb://{signature}", "--signing-algorithm", "ML_DSA_SHAKE_256")
    assert verified["SignatureValid"] is True
    der = base64.b64decode(kms.aws_json("get-public-key", "--key-id", meta["KeyId"])["PublicKey"])
    public = serialization.load_der_public_key(der)
    assert isinstance(public, mldsa.MLDSA65PublicKey)
    public.verify(signature.read_bytes(), message.read_bytes())


# --- Ed25519 ---------------------------------------------------------------------------------------------------


def test_ed25519_pure_and_prehash(client: Any) -> None:
    meta = client.create_key(KeySpec="ECC_NIST_EDWARDS25519", KeyUsage="SIGN_VERIFY")["KeyMetadata"]
    key_id = meta["KeyId"]
    assert meta["SigningAlgorithms"] == ["ED25519_SHA_512", "ED25519_PH_SHA_512"]
    public = public_key(client, key_id)
    assert isinstance(public, ed25519.Ed25519PublicKey)
    message = b"an Ed25519 message"
    pure = client.sign(KeyId=key_id, Message=message, MessageType="RAW", SigningAlgorithm="ED25519_SHA_512")
    assert len(pure["Signature"]) == 64
    public.verify(pure["Signature"], message)
    # ED25519_PH_SHA_512 takes the SHA-512 digest and prehashes it once more (AWS's documented behaviour):
    # Ed25519ph (RFC 8032) over the 64 bytes given.
    digest = hashlib.sha512(message).digest()
    prehashed = client.sign(KeyId=key_id, Message=digest, MessageType="DIGEST",
                            SigningAlgorithm="ED25519_PH_SHA_512")["Signature"]
    verifier = pycryptodome_eddsa.new(pycryptodome_eddsa.import_public_key(
        public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)), "rfc8032")
    verifier.verify(SHA512.new(digest), prehashed)
    assert prehashed != pure["Signature"]
    assert client.verify(KeyId=key_id, Message=digest, MessageType="DIGEST", Signature=prehashed,
                         SigningAlgorithm="ED25519_PH_SHA_512")["SignatureValid"]
    assert code_of(client.verify, KeyId=key_id, Message=message, MessageType="RAW", Signature=prehashed,
                   SigningAlgorithm="ED25519_SHA_512")[0] == "KMSInvalidSignatureException"
    # Each algorithm has its message type; a digest is exactly 64 bytes.
    for kwargs in ({"MessageType": "DIGEST", "Message": digest, "SigningAlgorithm": "ED25519_SHA_512"},
                   {"MessageType": "RAW", "Message": message, "SigningAlgorithm": "ED25519_PH_SHA_512"},
                   {"MessageType": "DIGEST", "Message": digest[:32], "SigningAlgorithm": "ED25519_PH_SHA_512"}):
        assert code_of(client.sign, KeyId=key_id, **kwargs)[0] == "ValidationException", kwargs
    assert code_of(client.create_key, KeySpec="ECC_NIST_EDWARDS25519",
                   KeyUsage="KEY_AGREEMENT")[0] == "ValidationException"


# --- ML-KEM ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", list(ML_KEM))
def test_ml_kem_encapsulate_and_decapsulate(client: Any, spec: str) -> None:
    public_class, ciphertext_len = ML_KEM[spec]
    meta = client.create_key(KeySpec=spec, KeyUsage="ENCAPSULATE_DECAPSULATE")["KeyMetadata"]
    key_id = meta["KeyId"]
    assert (meta["KeyUsage"], meta["EncapsulationAlgorithms"]) == ("ENCAPSULATE_DECAPSULATE", ["ML_KEM"])
    answer = client.get_public_key(KeyId=key_id)
    assert answer["EncapsulationAlgorithms"] == ["ML_KEM"]
    public = serialization.load_der_public_key(answer["PublicKey"])
    assert isinstance(public, public_class)
    # A peer encapsulates with the public key outside KMS; KMS decapsulates: the same secret.
    secret, ciphertext = public.encapsulate()
    opened = client.decapsulate(KeyId=key_id, SharedSecretCiphertextBlob=ciphertext, EncapsulationAlgorithm="ML_KEM")
    assert (opened["SharedSecret"], opened["KeyId"], opened["EncapsulationAlgorithm"]) == (
        secret, answer["KeyId"], "ML_KEM")
    # KMS encapsulates; KMS decapsulates.
    made = client.encapsulate(KeyId=key_id, EncapsulationAlgorithm="ML_KEM")
    assert len(made["SharedSecret"]) == 32 and len(made["SharedSecretCiphertextBlob"]) == ciphertext_len
    assert client.decapsulate(KeyId=key_id, SharedSecretCiphertextBlob=made["SharedSecretCiphertextBlob"],
                              EncapsulationAlgorithm="ML_KEM")["SharedSecret"] == made["SharedSecret"]
    # Implicit rejection: an altered ciphertext gives another secret, never an error; a wrong length is.
    altered = bytes([ciphertext[0] ^ 1]) + ciphertext[1:]
    rejected = client.decapsulate(KeyId=key_id, SharedSecretCiphertextBlob=altered, EncapsulationAlgorithm="ML_KEM")
    assert len(rejected["SharedSecret"]) == 32 and rejected["SharedSecret"] != secret
    assert code_of(client.decapsulate, KeyId=key_id, SharedSecretCiphertextBlob=ciphertext[:-1],
                   EncapsulationAlgorithm="ML_KEM")[0] == "InvalidCiphertextException"
    assert code_of(client.encrypt, KeyId=key_id, Plaintext=b"m")[0] == "InvalidKeyUsageException"
    assert code_of(client.sign, KeyId=key_id, Message=b"m",
                   SigningAlgorithm="ML_DSA_SHAKE_256")[0] == "InvalidKeyUsageException"
    client.disable_key(KeyId=key_id)
    assert code_of(client.encapsulate, KeyId=key_id, EncapsulationAlgorithm="ML_KEM")[0] == "DisabledException"


def test_kem_refusals(client: Any) -> None:
    code, _ = code_of(client.create_key, KeySpec="ML_KEM_512", KeyUsage="ENCAPSULATE_DECAPSULATE")
    assert code == "UnsupportedOperationException"  # not in the cryptographic library
    symmetric = client.create_key()["KeyMetadata"]["KeyId"]
    code, message = code_of(client.encapsulate, KeyId=symmetric, EncapsulationAlgorithm="ML_KEM")
    assert code == "InvalidKeyUsageException" and "ENCRYPT_DECRYPT" in message
    assert code_of(client.create_key, KeySpec="ML_KEM_768", KeyUsage="SIGN_VERIFY")[0] == "ValidationException"


@pytest.mark.parametrize("spec", list(ML_KEM))
def test_ml_kem_data_key_pairs(client: Any, spec: str) -> None:
    wrapping = client.create_key()["KeyMetadata"]["KeyId"]
    pair = client.generate_data_key_pair(KeyId=wrapping, KeyPairSpec=spec)
    private = serialization.load_der_private_key(pair["PrivateKeyPlaintext"], None)
    assert isinstance(private, mlkem.MLKEM768PrivateKey | mlkem.MLKEM1024PrivateKey)
    assert private.public_key().public_bytes(serialization.Encoding.DER,
                                             serialization.PublicFormat.SubjectPublicKeyInfo) == pair["PublicKey"]
    assert client.decrypt(CiphertextBlob=pair["PrivateKeyCiphertextBlob"])["Plaintext"] == pair["PrivateKeyPlaintext"]
    assert code_of(client.generate_data_key_pair, KeyId=wrapping,
                   KeyPairSpec="ML_KEM_512")[0] == "UnsupportedOperationException"


# --- KEY_AGREEMENT ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("spec", "curve"), [("ECC_NIST_P256", ec.SECP256R1()), ("ECC_NIST_P384", ec.SECP384R1()),
                                             ("ECC_NIST_P521", ec.SECP521R1())])
def test_derive_shared_secret(client: Any, spec: str, curve: ec.EllipticCurve) -> None:
    meta = client.create_key(KeySpec=spec, KeyUsage="KEY_AGREEMENT")["KeyMetadata"]
    key_id = meta["KeyId"]
    assert meta["KeyAgreementAlgorithms"] == ["ECDH"] and "SigningAlgorithms" not in meta
    kms_public = public_key(client, key_id)
    assert client.get_public_key(KeyId=key_id)["KeyAgreementAlgorithms"] == ["ECDH"]
    peer = ec.generate_private_key(curve)
    peer_spki = peer.public_key().public_bytes(serialization.Encoding.DER,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
    derived = client.derive_shared_secret(KeyId=key_id, KeyAgreementAlgorithm="ECDH", PublicKey=peer_spki)
    assert derived["SharedSecret"] == peer.exchange(ec.ECDH(), kms_public)
    assert (derived["KeyAgreementAlgorithm"], derived["KeyOrigin"], derived["KeyId"]) == ("ECDH", "AWS_KMS",
                                                                                          meta["Arn"])
    # The peer must be on the key's curve; a signing key cannot agree; an agreement key cannot sign.
    other_curve = ec.SECP384R1() if spec != "ECC_NIST_P384" else ec.SECP256R1()
    stranger = ec.generate_private_key(other_curve).public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert code_of(client.derive_shared_secret, KeyId=key_id, KeyAgreementAlgorithm="ECDH",
                   PublicKey=stranger)[0] == "ValidationException"
    assert code_of(client.derive_shared_secret, KeyId=key_id, KeyAgreementAlgorithm="ECDH",
                   PublicKey=b"not DER")[0] == "ValidationException"
    assert code_of(client.sign, KeyId=key_id, Message=b"m",
                   SigningAlgorithm="ECDSA_SHA_256")[0] == "InvalidKeyUsageException"
    signing = client.create_key(KeySpec=spec, KeyUsage="SIGN_VERIFY")["KeyMetadata"]["KeyId"]
    assert code_of(client.derive_shared_secret, KeyId=signing, KeyAgreementAlgorithm="ECDH",
                   PublicKey=peer_spki)[0] == "InvalidKeyUsageException"


def test_two_kms_keys_agree(client: Any, kms: KmsEnv, tmp_path: Path) -> None:
    alice = client.create_key(KeySpec="ECC_NIST_P256", KeyUsage="KEY_AGREEMENT")["KeyMetadata"]["KeyId"]
    bob = client.create_key(KeySpec="ECC_NIST_P256", KeyUsage="KEY_AGREEMENT")["KeyMetadata"]["KeyId"]
    alice_public = client.get_public_key(KeyId=alice)["PublicKey"]
    bob_public = tmp_path / "bob.der"
    bob_public.write_bytes(client.get_public_key(KeyId=bob)["PublicKey"])
    # Bob's side through the AWS CLI (fileb:// for the DER public key, as AWS's documentation says).
    alice_side = kms.aws_json("derive-shared-secret", "--key-id", alice, "--key-agreement-algorithm", "ECDH",
                              "--public-key", f"fileb://{bob_public}")
    bob_side = client.derive_shared_secret(KeyId=bob, KeyAgreementAlgorithm="ECDH", PublicKey=alice_public)
    assert base64.b64decode(alice_side["SharedSecret"]) == bob_side["SharedSecret"]
    assert code_of(client.create_key, KeySpec="ECC_SECG_P256K1", KeyUsage="KEY_AGREEMENT")[0] == "ValidationException"


# --- GetKeyLastUsage -------------------------------------------------------------------------------------------


def test_get_key_last_usage(client: Any) -> None:
    meta = client.create_key()["KeyMetadata"]
    key_id = meta["KeyId"]
    fresh = client.get_key_last_usage(KeyId=key_id)
    assert fresh["KeyLastUsage"] == {} and fresh["KeyId"] == key_id
    assert fresh["KeyCreationDate"] == meta["CreationDate"] and fresh["TrackingStartDate"] >= meta["CreationDate"]
    encrypted = client.encrypt(KeyId=key_id, Plaintext=b"data")
    used = client.get_key_last_usage(KeyId=meta["Arn"])["KeyLastUsage"]
    assert used["Operation"] == "Encrypt" and used["KmsRequestId"] == encrypted["ResponseMetadata"]["RequestId"]
    assert used["Timestamp"] >= meta["CreationDate"]
    # Failures are not uses; metadata operations are not either.
    assert code_of(client.decrypt, CiphertextBlob=encrypted["CiphertextBlob"][:-1])[0] == "InvalidCiphertextException"
    client.describe_key(KeyId=key_id)
    assert client.get_key_last_usage(KeyId=key_id)["KeyLastUsage"]["Operation"] == "Encrypt"
    # ReEncrypt uses both keys.
    destination = client.create_key()["KeyMetadata"]["KeyId"]
    moved = client.re_encrypt(CiphertextBlob=encrypted["CiphertextBlob"], DestinationKeyId=destination)
    for key in (key_id, destination):
        last = client.get_key_last_usage(KeyId=key)["KeyLastUsage"]
        assert (last["Operation"], last["KmsRequestId"]) == ("ReEncrypt", moved["ResponseMetadata"]["RequestId"])
    signing = client.create_key(KeySpec="ML_DSA_44", KeyUsage="SIGN_VERIFY")["KeyMetadata"]["KeyId"]
    client.sign(KeyId=signing, Message=b"m", SigningAlgorithm="ML_DSA_SHAKE_256")
    assert client.get_key_last_usage(KeyId=signing)["KeyLastUsage"]["Operation"] == "Sign"
    # Key ids and ARNs only, as AWS.
    client.create_alias(AliasName="alias/last-usage", TargetKeyId=key_id)
    assert code_of(client.get_key_last_usage, KeyId="alias/last-usage")[0] == "NotFoundException"
