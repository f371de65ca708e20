"""Asymmetric/HMAC tables and helpers: key specs, the algorithm -> mechanism mapping, DigestInfo
prefixes, ECDSA signature encodings, OAEP limits, data key pairs, material records."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import NoDigestInfo

from strongroom.constants import CKG, CKM
from strongroom.kms.keyspecs import KEY_SPECS, SIGNING_ALGORITHMS, rsa_max_plaintext
from strongroom.kms.model import Material, new_pair_material
from strongroom.kms.ops.asymmetric import (
    DIGEST_INFO,
    _mechanism,
    _sign_mechanisms,
    new_key_pair,
    pair_encodings,
)


def test_oaep_plaintext_limits_are_aws_s() -> None:
    expected = {(2048, "RSAES_OAEP_SHA_1"): 214, (2048, "RSAES_OAEP_SHA_256"): 190,
                (3072, "RSAES_OAEP_SHA_1"): 342, (3072, "RSAES_OAEP_SHA_256"): 318,
                (4096, "RSAES_OAEP_SHA_1"): 470, (4096, "RSAES_OAEP_SHA_256"): 446}
    assert {k: rsa_max_plaintext(*k) for k in expected} == expected


def test_specs_implemented_and_their_usages() -> None:
    for name in ("RSA_2048", "RSA_3072", "RSA_4096"):
        assert KEY_SPECS[name].implements("SIGN_VERIFY") and KEY_SPECS[name].implements("ENCRYPT_DECRYPT")
    for name in ("ECC_NIST_P256", "ECC_NIST_P384", "ECC_NIST_P521"):
        assert KEY_SPECS[name].implements("SIGN_VERIFY") and KEY_SPECS[name].implements("KEY_AGREEMENT")
        assert KEY_SPECS[name].algorithms["KEY_AGREEMENT"] == ("ECDH",)
    assert KEY_SPECS["ECC_SECG_P256K1"].implements("SIGN_VERIFY")
    assert "KEY_AGREEMENT" not in KEY_SPECS["ECC_SECG_P256K1"].usages
    for bits in (224, 256, 384, 512):
        spec = KEY_SPECS[f"HMAC_{bits}"]
        assert spec.implements("GENERATE_VERIFY_MAC") and spec.hmac_bytes * 8 == bits
    for name, parameter_set in (("ML_DSA_44", 1), ("ML_DSA_65", 2), ("ML_DSA_87", 3)):
        spec = KEY_SPECS[name]
        assert spec.implements("SIGN_VERIFY") and spec.usages == ("SIGN_VERIFY",) and spec.asymmetric
        assert spec.algorithms["SIGN_VERIFY"] == ("ML_DSA_SHAKE_256",) and spec.parameter_set == parameter_set
    for name, parameter_set in (("ML_KEM_768", 2), ("ML_KEM_1024", 3)):
        spec = KEY_SPECS[name]
        assert spec.implements("ENCAPSULATE_DECAPSULATE") and spec.parameter_set == parameter_set
        assert spec.algorithms["ENCAPSULATE_DECAPSULATE"] == ("ML_KEM",)
    edwards = KEY_SPECS["ECC_NIST_EDWARDS25519"]
    assert edwards.implements("SIGN_VERIFY") and edwards.usages == ("SIGN_VERIFY",)
    assert edwards.algorithms["SIGN_VERIFY"] == ("ED25519_SHA_512", "ED25519_PH_SHA_512")
    # SM2 is China-only; ML-KEM-512 is not in the cryptographic library.
    for name in ("SM2", "ML_KEM_512"):
        assert not KEY_SPECS[name].supported
    assert KEY_SPECS["ECC_NIST_P384"].algorithms["SIGN_VERIFY"] == ("ECDSA_SHA_384",)
    # The deprecated CustomerMasterKeySpec member exists only for the specs of its enum.
    assert KEY_SPECS["RSA_2048"].legacy and KEY_SPECS["SM2"].legacy
    assert not any(KEY_SPECS[n].legacy for n in ("ML_DSA_65", "ECC_NIST_EDWARDS25519", "ML_KEM_768"))


@pytest.mark.parametrize("name", ["sha256", "sha384", "sha512"])
def test_digest_info_prefixes_are_what_pkcs1_signs(name: str) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    algorithm = {"sha256": hashes.SHA256, "sha384": hashes.SHA384, "sha512": hashes.SHA512}[name]()
    signature = key.sign(b"m", padding.PKCS1v15(), algorithm)
    recovered = key.public_key().recover_data_from_signature(signature, padding.PKCS1v15(), NoDigestInfo())
    digest = hashes.Hash(algorithm)
    digest.update(b"m")
    assert recovered == DIGEST_INFO[name] + digest.finalize()


def test_mechanisms_for_every_algorithm() -> None:
    pss = SIGNING_ALGORITHMS["RSASSA_PSS_SHA_384"]
    assert _mechanism(pss, "RAW", b"m") == (int(CKM.SHA384_RSA_PKCS_PSS),
                                             {"hash": int(CKM.SHA384), "mgf": int(CKG.MGF1_SHA384), "salt_len": 48},
                                             b"m")
    assert _mechanism(pss, "DIGEST", b"d")[0] == int(CKM.RSA_PKCS_PSS)
    pkcs1 = SIGNING_ALGORITHMS["RSASSA_PKCS1_V1_5_SHA_256"]
    assert _mechanism(pkcs1, "RAW", b"m") == (int(CKM.SHA256_RSA_PKCS), None, b"m")
    assert _mechanism(pkcs1, "DIGEST", b"d") == (int(CKM.RSA_PKCS), None, DIGEST_INFO["sha256"] + b"d")
    ecdsa = SIGNING_ALGORITHMS["ECDSA_SHA_512"]
    assert _mechanism(ecdsa, "RAW", b"m")[0] == int(CKM.ECDSA_SHA512)
    assert _mechanism(ecdsa, "DIGEST", b"d")[0] == int(CKM.ECDSA)
    assert sorted(_sign_mechanisms(KEY_SPECS["ECC_NIST_P256"])) == sorted([int(CKM.ECDSA_SHA256), int(CKM.ECDSA)])
    assert len(_sign_mechanisms(KEY_SPECS["RSA_2048"])) == 8
    # ML-DSA: pure ML-DSA over the message, or the node's external-mu form over a 64-byte mu.
    ml_dsa = SIGNING_ALGORITHMS["ML_DSA_SHAKE_256"]
    assert ml_dsa.message_types == ("RAW", "EXTERNAL_MU") and ml_dsa.digest_size == 64
    assert _mechanism(ml_dsa, "RAW", b"m") == (int(CKM.ML_DSA), None, b"m")
    assert _mechanism(ml_dsa, "EXTERNAL_MU", b"u" * 64) == (int(CKM.ML_DSA), {"external_mu": True}, b"u" * 64)
    assert _sign_mechanisms(KEY_SPECS["ML_DSA_87"]) == [int(CKM.ML_DSA)]
    # Ed25519: pure over RAW; Ed25519ph over the 64-byte digest given (the node hashes it again, as AWS).
    pure, prehash = SIGNING_ALGORITHMS["ED25519_SHA_512"], SIGNING_ALGORITHMS["ED25519_PH_SHA_512"]
    assert (pure.message_types, prehash.message_types) == (("RAW",), ("DIGEST",))
    assert _mechanism(pure, "RAW", b"m") == (int(CKM.EDDSA), None, b"m")
    assert _mechanism(prehash, "DIGEST", b"d" * 64) == (int(CKM.EDDSA), {"ph_flag": True, "context_data": b""},
                                                          b"d" * 64)
    assert _sign_mechanisms(KEY_SPECS["ECC_NIST_EDWARDS25519"]) == [int(CKM.EDDSA)]


@pytest.mark.parametrize("spec", ["ECC_NIST_P521", "ECC_SECG_P256K1", "ECC_NIST_EDWARDS25519", "RSA_2048",
                                  "ML_KEM_768", "ML_KEM_1024"])
def test_data_key_pairs_encode_as_pkcs8_and_spki(spec: str) -> None:
    pkcs8, spki = pair_encodings(new_key_pair(spec))
    private = serialization.load_der_private_key(pkcs8, None)
    assert private.public_key().public_bytes(serialization.Encoding.DER,
                                             serialization.PublicFormat.SubjectPublicKeyInfo) == spki
    if spec.startswith("ECC_NIST_P"):
        assert isinstance(private, ec.EllipticCurvePrivateKey) and private.curve.name == "secp521r1"


def test_material_records_keep_the_public_handle() -> None:
    material = new_pair_material(1, 10, 11)
    again = Material.from_record(material.to_record())
    assert again == material and again.handles == [10, 11]
    symmetric = Material(1, 5, "ab" * 32, 0.0)
    assert "public_handle" not in symmetric.to_record()
    assert Material.from_record(symmetric.to_record()).handles == [5]
