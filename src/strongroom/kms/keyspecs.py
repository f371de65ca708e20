"""Key specs as a table: what each spec allows, and whether this endpoint implements it.

Every enum lists AWS's values in the order of the AWS model, because ValidationException
messages name the whole set. The tables below also say how each spec and algorithm maps to
the cluster: RSA keys are CKK_RSA pairs, ECC keys CKK_EC pairs on the named curve (signing with
ECDSA or, for KEY_AGREEMENT, CKM_ECDH1_DERIVE), ECC_NIST_EDWARDS25519 a CKK_EC_EDWARDS pair
(CKM_EDDSA, pure or Ed25519ph), ML_DSA_* CKK_ML_DSA pairs (CKM_ML_DSA), ML_KEM_* CKK_ML_KEM pairs
(CKM_ML_KEM), HMAC keys CKK_GENERIC_SECRET keys restricted to one CKM_SHA*_HMAC.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TypedDict, Unpack

KEY_USAGES = ("SIGN_VERIFY", "ENCRYPT_DECRYPT", "GENERATE_VERIFY_MAC", "KEY_AGREEMENT", "ENCAPSULATE_DECAPSULATE")
ORIGINS = ("AWS_KMS", "EXTERNAL", "AWS_CLOUDHSM", "EXTERNAL_KEY_STORE")
ENCRYPTION_ALGORITHMS = ("SYMMETRIC_DEFAULT", "RSAES_OAEP_SHA_1", "RSAES_OAEP_SHA_256", "SM2PKE")
SIGNING_ALGORITHM_NAMES = (
    "RSASSA_PSS_SHA_256", "RSASSA_PSS_SHA_384", "RSASSA_PSS_SHA_512",
    "RSASSA_PKCS1_V1_5_SHA_256", "RSASSA_PKCS1_V1_5_SHA_384", "RSASSA_PKCS1_V1_5_SHA_512",
    "ECDSA_SHA_256", "ECDSA_SHA_384", "ECDSA_SHA_512", "SM2DSA", "ML_DSA_SHAKE_256",
    "ED25519_SHA_512", "ED25519_PH_SHA_512",
)
MAC_ALGORITHM_NAMES = ("HMAC_SHA_224", "HMAC_SHA_256", "HMAC_SHA_384", "HMAC_SHA_512")
MESSAGE_TYPES = ("RAW", "DIGEST", "EXTERNAL_MU")
DATA_KEY_SPECS = {"AES_256": 32, "AES_128": 16}
#: ENCAPSULATE_DECAPSULATE and KEY_AGREEMENT algorithms (the AWS enums).
ENCAPSULATION_ALGORITHMS = ("ML_KEM",)
KEY_AGREEMENT_ALGORITHMS = ("ECDH",)
#: GenerateDataKeyPair's KeyPairSpec (the AWS enum, in its order).
DATA_KEY_PAIR_SPECS = ("RSA_2048", "RSA_3072", "RSA_4096", "ECC_NIST_P256", "ECC_NIST_P384", "ECC_NIST_P521",
                       "ECC_SECG_P256K1", "SM2", "ECC_NIST_EDWARDS25519", "ML_KEM_512", "ML_KEM_768",
                       "ML_KEM_1024")
#: The key pair specs this endpoint generates (SM2 is China-only; ML_KEM_512 is not in the library).
SUPPORTED_DATA_KEY_PAIR_SPECS = ("RSA_2048", "RSA_3072", "RSA_4096", "ECC_NIST_P256", "ECC_NIST_P384",
                                 "ECC_NIST_P521", "ECC_SECG_P256K1", "ECC_NIST_EDWARDS25519", "ML_KEM_768",
                                 "ML_KEM_1024")

_RSA_ENCRYPT = ("RSAES_OAEP_SHA_1", "RSAES_OAEP_SHA_256")
_RSA_SIGN = ("RSASSA_PSS_SHA_256", "RSASSA_PSS_SHA_384", "RSASSA_PSS_SHA_512",
             "RSASSA_PKCS1_V1_5_SHA_256", "RSASSA_PKCS1_V1_5_SHA_384", "RSASSA_PKCS1_V1_5_SHA_512")

RSA, ECC, HMAC, SYMMETRIC = "rsa", "ecc", "hmac", "symmetric"
ED25519, ML_DSA, ML_KEM = "ed25519", "ml-dsa", "ml-kem"
#: Kinds whose keys are pairs (a private key object and a public key object in the cluster).
PAIR_KINDS = (RSA, ECC, ED25519, ML_DSA, ML_KEM)


@dataclass(frozen=True)
class KeySpec:
    name: str
    usages: tuple[str, ...]
    #: Algorithms per usage, as DescribeKey lists them.
    algorithms: dict[str, tuple[str, ...]] = field(default_factory=dict)
    supported: bool = False
    #: Symmetric AES keys: the key length in the cluster.
    aes_bytes: int = 0
    #: "rsa", "ecc", "ed25519", "ml-dsa", "ml-kem", "hmac", "symmetric" ("" for specs this endpoint does
    #: not implement).
    kind: str = ""
    #: RSA: the modulus length.
    rsa_bits: int = 0
    #: ECC: the curve's name in pyca/cryptography ("secp256r1" …).
    curve: str = ""
    #: HMAC: the key length in bytes (AWS: HMAC_224 is a 224-bit key, and so on).
    hmac_bytes: int = 0
    #: ML-DSA / ML-KEM: CKA_PARAMETER_SET (CKP_ML_DSA_44 = 1 ...; CKP_ML_KEM_768 = 2 ...).
    parameter_set: int = 0
    #: The usages this endpoint implements for the spec (empty: all of ``usages``).
    implemented_usages: tuple[str, ...] = ()

    @property
    def symmetric(self) -> bool:
        return self.name == "SYMMETRIC_DEFAULT"

    @property
    def asymmetric(self) -> bool:
        return self.kind in PAIR_KINDS

    @property
    def legacy(self) -> bool:
        """Whether the deprecated CustomerMasterKeySpec enum has this spec (AWS answers it only then)."""
        return self.name in CUSTOMER_MASTER_KEY_SPECS

    def implements(self, usage: str) -> bool:
        return self.supported and (not self.implemented_usages or usage in self.implemented_usages)


class _Options(TypedDict, total=False):
    """The keyword fields of :class:`KeySpec` after its usages."""

    supported: bool
    aes_bytes: int
    kind: str
    rsa_bits: int
    curve: str
    hmac_bytes: int
    parameter_set: int
    implemented_usages: tuple[str, ...]


def _spec(name: str, usages: dict[str, tuple[str, ...]], **kw: Unpack[_Options]) -> KeySpec:
    return KeySpec(name, tuple(usages), dict(usages), **kw)


def _rsa(bits: int) -> KeySpec:
    return _spec(f"RSA_{bits}", {"ENCRYPT_DECRYPT": _RSA_ENCRYPT, "SIGN_VERIFY": _RSA_SIGN},
                 supported=True, kind=RSA, rsa_bits=bits)


def _ecc(name: str, algorithm: str, curve: str, *, agreement: bool = True) -> KeySpec:
    usages: dict[str, tuple[str, ...]] = {"SIGN_VERIFY": (algorithm,)}
    if agreement:
        usages["KEY_AGREEMENT"] = KEY_AGREEMENT_ALGORITHMS
    return _spec(name, usages, supported=True, kind=ECC, curve=curve)


def _ml_dsa(bits: int, parameter_set: int) -> KeySpec:
    return _spec(f"ML_DSA_{bits}", {"SIGN_VERIFY": ("ML_DSA_SHAKE_256",)}, supported=True, kind=ML_DSA,
                 parameter_set=parameter_set)


def _ml_kem(bits: int, parameter_set: int, *, supported: bool = True) -> KeySpec:
    return _spec(f"ML_KEM_{bits}", {"ENCAPSULATE_DECAPSULATE": ENCAPSULATION_ALGORITHMS}, supported=supported,
                 kind=ML_KEM, parameter_set=parameter_set)


def _hmac(bits: int) -> KeySpec:
    return _spec(f"HMAC_{bits}", {"GENERATE_VERIFY_MAC": (f"HMAC_SHA_{bits}",)}, supported=True, kind=HMAC,
                 hmac_bytes=bits // 8)


KEY_SPECS: dict[str, KeySpec] = {s.name: s for s in (
    _rsa(2048),
    _rsa(3072),
    _rsa(4096),
    _ecc("ECC_NIST_P256", "ECDSA_SHA_256", "secp256r1"),
    _ecc("ECC_NIST_P384", "ECDSA_SHA_384", "secp384r1"),
    _ecc("ECC_NIST_P521", "ECDSA_SHA_512", "secp521r1"),
    _ecc("ECC_SECG_P256K1", "ECDSA_SHA_256", "secp256k1", agreement=False),
    _spec("SYMMETRIC_DEFAULT", {"ENCRYPT_DECRYPT": ("SYMMETRIC_DEFAULT",)}, supported=True, aes_bytes=32,
          kind=SYMMETRIC),
    _hmac(224),
    _hmac(256),
    _hmac(384),
    _hmac(512),
    _spec("SM2", {"ENCRYPT_DECRYPT": ("SM2PKE",), "SIGN_VERIFY": ("SM2DSA",), "KEY_AGREEMENT": ("ECDH",)}),
    _ml_dsa(44, 1),
    _ml_dsa(65, 2),
    _ml_dsa(87, 3),
    _spec("ECC_NIST_EDWARDS25519", {"SIGN_VERIFY": ("ED25519_SHA_512", "ED25519_PH_SHA_512")}, supported=True,
          kind=ED25519),
    # ML-KEM-512: not offered by pyca/cryptography (51.0.1); CreateKey answers UnsupportedOperationException.
    _ml_kem(512, 1, supported=False),
    _ml_kem(768, 2),
    _ml_kem(1024, 3),
)}

#: The deprecated CustomerMasterKeySpec enum (AWS's model: the specs that existed before it was deprecated).
CUSTOMER_MASTER_KEY_SPECS = ("RSA_2048", "RSA_3072", "RSA_4096", "ECC_NIST_P256", "ECC_NIST_P384", "ECC_NIST_P521",
                             "ECC_SECG_P256K1", "SYMMETRIC_DEFAULT", "HMAC_224", "HMAC_256", "HMAC_384", "HMAC_512",
                             "SM2")

#: KeyMetadata member that lists a usage's algorithms.
ALGORITHM_MEMBERS = {
    "ENCRYPT_DECRYPT": "EncryptionAlgorithms",
    "SIGN_VERIFY": "SigningAlgorithms",
    "GENERATE_VERIFY_MAC": "MacAlgorithms",
    "KEY_AGREEMENT": "KeyAgreementAlgorithms",
    "ENCAPSULATE_DECAPSULATE": "EncapsulationAlgorithms",
}

#: Hash names (pyca/cryptography's) and their digest sizes.
HASH_SIZES = {"sha1": 20, "sha224": 28, "sha256": 32, "sha384": 48, "sha512": 64, "shake256": 64}


@dataclass(frozen=True)
class SigningAlgorithm:
    name: str
    #: "PSS", "PKCS1", "ECDSA", "EDDSA" (pure Ed25519), "EDDSA_PH" (Ed25519ph) or "MLDSA".
    scheme: str
    #: The hash (cryptography's name: "sha256" …; "shake256" for ML-DSA, whose DIGEST is the 64-byte μ).
    hash: str

    @property
    def digest_size(self) -> int:
        return HASH_SIZES[self.hash]

    @property
    def message_types(self) -> tuple[str, ...]:
        """The MessageType values AWS accepts with the algorithm."""
        if self.scheme == "MLDSA":
            return ("RAW", "EXTERNAL_MU")
        if self.scheme == "EDDSA":
            return ("RAW",)
        if self.scheme == "EDDSA_PH":
            return ("DIGEST",)
        return ("RAW", "DIGEST")


SIGNING_ALGORITHMS: dict[str, SigningAlgorithm] = {a.name: a for a in (
    SigningAlgorithm("RSASSA_PSS_SHA_256", "PSS", "sha256"),
    SigningAlgorithm("RSASSA_PSS_SHA_384", "PSS", "sha384"),
    SigningAlgorithm("RSASSA_PSS_SHA_512", "PSS", "sha512"),
    SigningAlgorithm("RSASSA_PKCS1_V1_5_SHA_256", "PKCS1", "sha256"),
    SigningAlgorithm("RSASSA_PKCS1_V1_5_SHA_384", "PKCS1", "sha384"),
    SigningAlgorithm("RSASSA_PKCS1_V1_5_SHA_512", "PKCS1", "sha512"),
    SigningAlgorithm("ECDSA_SHA_256", "ECDSA", "sha256"),
    SigningAlgorithm("ECDSA_SHA_384", "ECDSA", "sha384"),
    SigningAlgorithm("ECDSA_SHA_512", "ECDSA", "sha512"),
    SigningAlgorithm("ML_DSA_SHAKE_256", "MLDSA", "shake256"),
    SigningAlgorithm("ED25519_SHA_512", "EDDSA", "sha512"),
    SigningAlgorithm("ED25519_PH_SHA_512", "EDDSA_PH", "sha512"),
)}

#: RSAES_OAEP_*: the OAEP hash (MGF1 uses the same hash, as AWS does).
RSA_ENCRYPTION_HASHES = {"RSAES_OAEP_SHA_1": "sha1", "RSAES_OAEP_SHA_256": "sha256"}

#: HMAC_SHA_*: the hash (the MAC is the hash's full length).
MAC_ALGORITHMS = {"HMAC_SHA_224": "sha224", "HMAC_SHA_256": "sha256", "HMAC_SHA_384": "sha384",
                  "HMAC_SHA_512": "sha512"}


def rsa_max_plaintext(bits: int, algorithm: str) -> int:
    """RFC 8017 7.1.1: an OAEP message is at most k - 2 hLen - 2 bytes (AWS: 2048/SHA-256 -> 190)."""
    return bits // 8 - 2 * HASH_SIZES[RSA_ENCRYPTION_HASHES[algorithm]] - 2
