"""Key specs as a table: what each spec allows, and whether this endpoint implements it yet.

Later operation groups (asymmetric keys, HMAC) fill in ``supported`` and their cluster
mechanism; the enum values (all of AWS's, for validation messages) do not change.
"""

from __future__ import annotations

from dataclasses import dataclass, field

KEY_USAGES = ("ENCRYPT_DECRYPT", "SIGN_VERIFY", "GENERATE_VERIFY_MAC", "KEY_AGREEMENT")
ORIGINS = ("AWS_KMS", "EXTERNAL", "AWS_CLOUDHSM", "EXTERNAL_KEY_STORE")
ENCRYPTION_ALGORITHMS = ("SYMMETRIC_DEFAULT", "RSAES_OAEP_SHA_1", "RSAES_OAEP_SHA_256", "SM2PKE")
DATA_KEY_SPECS = {"AES_256": 32, "AES_128": 16}

_RSA_ENCRYPT = ("RSAES_OAEP_SHA_1", "RSAES_OAEP_SHA_256")
_RSA_SIGN = ("RSASSA_PSS_SHA_256", "RSASSA_PSS_SHA_384", "RSASSA_PSS_SHA_512",
             "RSASSA_PKCS1_V1_5_SHA_256", "RSASSA_PKCS1_V1_5_SHA_384", "RSASSA_PKCS1_V1_5_SHA_512")


@dataclass(frozen=True)
class KeySpec:
    name: str
    usages: tuple[str, ...]
    #: Algorithms per usage, as DescribeKey lists them.
    algorithms: dict[str, tuple[str, ...]] = field(default_factory=dict)
    supported: bool = False
    #: Symmetric AES keys: the key length in the cluster.
    aes_bytes: int = 0

    @property
    def symmetric(self) -> bool:
        return self.name == "SYMMETRIC_DEFAULT"


def _spec(name: str, usages: dict[str, tuple[str, ...]], **kw: object) -> KeySpec:
    return KeySpec(name, tuple(usages), dict(usages), **kw)  # type: ignore[arg-type]


KEY_SPECS: dict[str, KeySpec] = {s.name: s for s in (
    _spec("RSA_2048", {"ENCRYPT_DECRYPT": _RSA_ENCRYPT, "SIGN_VERIFY": _RSA_SIGN}),
    _spec("RSA_3072", {"ENCRYPT_DECRYPT": _RSA_ENCRYPT, "SIGN_VERIFY": _RSA_SIGN}),
    _spec("RSA_4096", {"ENCRYPT_DECRYPT": _RSA_ENCRYPT, "SIGN_VERIFY": _RSA_SIGN}),
    _spec("ECC_NIST_P256", {"SIGN_VERIFY": ("ECDSA_SHA_256",), "KEY_AGREEMENT": ("ECDH",)}),
    _spec("ECC_NIST_P384", {"SIGN_VERIFY": ("ECDSA_SHA_384",), "KEY_AGREEMENT": ("ECDH",)}),
    _spec("ECC_NIST_P521", {"SIGN_VERIFY": ("ECDSA_SHA_512",), "KEY_AGREEMENT": ("ECDH",)}),
    _spec("ECC_SECG_P256K1", {"SIGN_VERIFY": ("ECDSA_SHA_256",)}),
    _spec("SYMMETRIC_DEFAULT", {"ENCRYPT_DECRYPT": ("SYMMETRIC_DEFAULT",)}, supported=True, aes_bytes=32),
    _spec("HMAC_224", {"GENERATE_VERIFY_MAC": ("HMAC_SHA_224",)}),
    _spec("HMAC_256", {"GENERATE_VERIFY_MAC": ("HMAC_SHA_256",)}),
    _spec("HMAC_384", {"GENERATE_VERIFY_MAC": ("HMAC_SHA_384",)}),
    _spec("HMAC_512", {"GENERATE_VERIFY_MAC": ("HMAC_SHA_512",)}),
    _spec("SM2", {"ENCRYPT_DECRYPT": ("SM2PKE",), "SIGN_VERIFY": ("SM2DSA",), "KEY_AGREEMENT": ("ECDH",)}),
    _spec("ECC_NIST_EDWARDS25519", {"SIGN_VERIFY": ("ED25519_SHA_512", "ED25519_PH_SHA_512")}),
    _spec("ML_DSA_44", {"SIGN_VERIFY": ("ML_DSA_SHAKE_256",)}),
    _spec("ML_DSA_65", {"SIGN_VERIFY": ("ML_DSA_SHAKE_256",)}),
    _spec("ML_DSA_87", {"SIGN_VERIFY": ("ML_DSA_SHAKE_256",)}),
)}

#: KeyMetadata member that lists a usage's algorithms.
ALGORITHM_MEMBERS = {
    "ENCRYPT_DECRYPT": "EncryptionAlgorithms",
    "SIGN_VERIFY": "SigningAlgorithms",
    "GENERATE_VERIFY_MAC": "MacAlgorithms",
    "KEY_AGREEMENT": "KeyAgreementAlgorithms",
}
