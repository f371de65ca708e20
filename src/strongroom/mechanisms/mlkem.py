"""ML-KEM (FIPS 203) keys and key encapsulation: CKM_ML_KEM_KEY_PAIR_GEN and CKM_ML_KEM (PKCS#11 3.2).

Parameter sets (``CKA_PARAMETER_SET``): CKP_ML_KEM_768 = 2 and CKP_ML_KEM_1024 = 3.
CKP_ML_KEM_512 (1) is refused with CKR_ATTRIBUTE_VALUE_INVALID: pyca/cryptography (51.0.1) does
not offer it, and this module adds it the day the library does.

Key objects (PKCS#11 3.2 §6.66):

* public key: ``CKA_PARAMETER_SET``, ``CKA_VALUE`` (the raw encapsulation key: 1184 / 1568
  bytes), ``CKA_PUBLIC_KEY_INFO``, ``CKA_ENCAPSULATE`` (true unless the template says false);
* private key: ``CKA_PARAMETER_SET``, ``CKA_PUBLIC_KEY_INFO``, ``CKA_DECAPSULATE`` (likewise);
  the key itself is the object's material (PKCS#8, the 64-byte seed form d || z), never readable.

CKM_ML_KEM takes no parameters. :meth:`MlKemMechanism.encapsulate` returns (ciphertext,
32-byte shared secret); :meth:`MlKemMechanism.decapsulate` returns the shared secret. A
ciphertext of the wrong length is CKR_ENCRYPTED_DATA_LEN_RANGE; one of the right length that
was not made for this key decapsulates to a pseudo-random secret (FIPS 203 implicit rejection),
never an error, so the caller learns nothing from the answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import mlkem

from strongroom.constants import CKA, CKK, CKM
from strongroom.encoding.der import as_bytes
from strongroom.errors import (
    ArgumentsBad,
    AttributeValueInvalid,
    DeviceError,
    EncryptedDataLenRange,
    KeyTypeInconsistent,
    PublicKeyInvalid,
)
from strongroom.mechanisms.base import Capability, GeneratedPair, Key, Mechanism, register
from strongroom.mechanisms.mldsa import template_parameter_set

MLKEMPrivateKey = mlkem.MLKEM768PrivateKey | mlkem.MLKEM1024PrivateKey
MLKEMPublicKey = mlkem.MLKEM768PublicKey | mlkem.MLKEM1024PublicKey

CKP_ML_KEM_512, CKP_ML_KEM_768, CKP_ML_KEM_1024 = 1, 2, 3
SHARED_SECRET_LEN = 32


@dataclass(frozen=True)
class ParameterSet:
    ckp: int
    name: str
    private_class: type[MLKEMPrivateKey]
    public_class: type[MLKEMPublicKey]
    public_len: int
    ciphertext_len: int

    def generate(self) -> MLKEMPrivateKey:
        return self.private_class.generate()

    def private_from_seed(self, seed: bytes) -> MLKEMPrivateKey:
        return self.private_class.from_seed_bytes(seed)

    def public_from_bytes(self, raw: bytes) -> MLKEMPublicKey:
        return self.public_class.from_public_bytes(raw)


PARAMETER_SETS: dict[int, ParameterSet] = {p.ckp: p for p in (
    ParameterSet(CKP_ML_KEM_768, "ML-KEM-768", mlkem.MLKEM768PrivateKey, mlkem.MLKEM768PublicKey, 1184, 1088),
    ParameterSet(CKP_ML_KEM_1024, "ML-KEM-1024", mlkem.MLKEM1024PrivateKey, mlkem.MLKEM1024PublicKey, 1568, 1568),
)}


def parameter_set(value: object) -> ParameterSet:
    """The parameter set a CKA_PARAMETER_SET value names (else CKR_ATTRIBUTE_VALUE_INVALID)."""
    found = PARAMETER_SETS.get(value) if isinstance(value, int) and not isinstance(value, bool) else None
    if found is not None:
        return found
    if value == CKP_ML_KEM_512:
        raise AttributeValueInvalid("ML-KEM-512 (CKP_ML_KEM_512) is not available: the cryptographic library "
                                    "offers ML-KEM-768 (2) and ML-KEM-1024 (3)")
    raise AttributeValueInvalid(f"CKA_PARAMETER_SET {value!r} is not an ML-KEM parameter set "
                                "(CKP_ML_KEM_768 = 2, CKP_ML_KEM_1024 = 3)")


def parameter_set_of(key: MLKEMPrivateKey | MLKEMPublicKey) -> ParameterSet:
    for candidate in PARAMETER_SETS.values():
        if isinstance(key, candidate.private_class | candidate.public_class):
            return candidate
    raise KeyTypeInconsistent(f"{type(key).__name__} is not an ML-KEM key")


# -- key objects ------------------------------------------------------------------------------------


def spki(public: MLKEMPublicKey) -> bytes:
    return public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def key_attributes(public: MLKEMPublicKey) -> dict[int, Any]:
    """The attributes an ML-KEM public key object's key fixes."""
    return {CKA.PARAMETER_SET: parameter_set_of(public).ckp, CKA.VALUE: public.public_bytes_raw(),
            CKA.PUBLIC_KEY_INFO: spki(public)}


def private_attributes(public: MLKEMPublicKey) -> dict[int, Any]:
    """The public attributes an ML-KEM private key object carries."""
    return {CKA.PARAMETER_SET: parameter_set_of(public).ckp, CKA.PUBLIC_KEY_INFO: spki(public)}


def public_key_from_attributes(attributes: dict[int, Any]) -> MLKEMPublicKey:
    chosen = parameter_set(attributes.get(CKA.PARAMETER_SET))
    raw = as_bytes(attributes.get(CKA.VALUE))
    if raw is None or len(raw) != chosen.public_len:
        raise PublicKeyInvalid(f"an {chosen.name} public key (CKA_VALUE) is {chosen.public_len} bytes")
    try:
        return chosen.public_from_bytes(raw)
    except (ValueError, UnsupportedAlgorithm):
        raise PublicKeyInvalid(f"CKA_VALUE is not a valid {chosen.name} public key") from None


def pairwise_test(private: MLKEMPrivateKey) -> None:
    """FIPS 140 pairwise consistency test: a fresh pair must agree on an encapsulated secret."""
    try:
        secret, ciphertext = private.public_key().encapsulate()
        agreed = private.decapsulate(ciphertext) == secret
    except (ValueError, UnsupportedAlgorithm):
        agreed = False
    if not agreed:
        raise DeviceError("ML-KEM key pair failed its pairwise consistency test")


class MlKemKeyPairGen(Mechanism):
    ckm = CKM.ML_KEM_KEY_PAIR_GEN
    capabilities = Capability.GENERATE_KEY_PAIR
    key_types = frozenset({CKK.ML_KEM})
    #: PKCS#11 3.2 reports ML-KEM "key sizes" as the parameter sets supported.
    min_key_size = CKP_ML_KEM_768
    max_key_size = CKP_ML_KEM_1024

    def generate_key_pair(
        self, params: Any, public_template: dict[int, Any], private_template: dict[int, Any]
    ) -> GeneratedPair:
        self.parse_params(params)
        chosen = parameter_set(template_parameter_set(public_template, private_template, "ML-KEM"))
        private = chosen.generate()
        pairwise_test(private)
        public = private.public_key()
        # What the key can do, it may do unless the template says otherwise (as for the other usages).
        return GeneratedPair(
            private, CKK.ML_KEM,
            public_attributes=key_attributes(public) | {
                CKA.ENCAPSULATE: public_template.get(CKA.ENCAPSULATE, True)},
            private_attributes=private_attributes(public) | {
                CKA.DECAPSULATE: private_template.get(CKA.DECAPSULATE, True)},
        )


def private_of(key: Key) -> MLKEMPrivateKey:
    key.require_type(CKK.ML_KEM)
    if not isinstance(key.private, mlkem.MLKEM768PrivateKey | mlkem.MLKEM1024PrivateKey):
        raise KeyTypeInconsistent("decapsulation needs an ML-KEM private key")
    return key.private


def public_of(key: Key) -> MLKEMPublicKey:
    key.require_type(CKK.ML_KEM)
    if isinstance(key.public, mlkem.MLKEM768PublicKey | mlkem.MLKEM1024PublicKey):
        return key.public
    if isinstance(key.private, mlkem.MLKEM768PrivateKey | mlkem.MLKEM1024PrivateKey):
        return key.private.public_key()
    raise KeyTypeInconsistent("encapsulation needs an ML-KEM public key")


class MlKemMechanism(Mechanism):
    ckm = CKM.ML_KEM
    capabilities = Capability.ENCAPSULATE | Capability.DECAPSULATE
    key_types = frozenset({CKK.ML_KEM})
    min_key_size = CKP_ML_KEM_768
    max_key_size = CKP_ML_KEM_1024

    def encapsulate(self, public_key: Key, params: Any) -> tuple[bytes, bytes]:
        self.parse_params(params)
        secret, ciphertext = public_of(public_key).encapsulate()
        return bytes(ciphertext), bytes(secret)

    def decapsulate(self, private_key: Key, params: Any, ciphertext: bytes) -> bytes:
        self.parse_params(params)
        private = private_of(private_key)
        raw = as_bytes(ciphertext)
        if raw is None:
            raise ArgumentsBad(f"the ciphertext must be bytes, not {type(ciphertext).__name__}")
        chosen = parameter_set_of(private)
        if len(raw) != chosen.ciphertext_len:
            raise EncryptedDataLenRange(f"an {chosen.name} ciphertext is {chosen.ciphertext_len} bytes, not {len(raw)}")
        try:
            return bytes(private.decapsulate(raw))
        except ValueError:  # the length is checked above; the library may still refuse an encoding
            raise EncryptedDataLenRange(f"the ciphertext is not an {chosen.name} ciphertext") from None


ML_KEM_KEY_PAIR_GEN = register(MlKemKeyPairGen())
ML_KEM = register(MlKemMechanism())
