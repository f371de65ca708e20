"""Between stored objects and mechanisms: key material in, :class:`~strongroom.mechanisms.base.Key` out.

Private keys are kept (above the barrier) as PKCS#8 DER; loading one costs far more
than using it, so loaded keys are cached per worker by handle and record revision.
"""

from __future__ import annotations

from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, mldsa, mlkem, rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

from strongroom.constants import CKA, CKK, CKO
from strongroom.errors import CKR, HsmError, KeyTypeInconsistent, TemplateInconsistent, WrappedKeyInvalid
from strongroom.mechanisms import ec as ec_mech
from strongroom.mechanisms import eddsa as eddsa_mech
from strongroom.mechanisms import mldsa as mldsa_mech
from strongroom.mechanisms import mlkem as mlkem_mech
from strongroom.mechanisms import rsa as rsa_mech
from strongroom.mechanisms.base import Key
from strongroom.objects.model import StoredObject

_CACHE_LIMIT = 4096


class KeyLoader:
    def __init__(self) -> None:
        self._cache: dict[tuple[int, int], Key] = {}

    def key(self, obj: StoredObject) -> Key:
        cache_key = (obj.handle, obj.revision)
        cached = self._cache.get(cache_key)
        if cached is not None:
            return cached
        key = build_key(obj)
        if len(self._cache) >= _CACHE_LIMIT:
            self._cache.pop(next(iter(self._cache)))
        self._cache[cache_key] = key
        return key

    def forget(self, handle: int) -> None:
        for cache_key in [k for k in self._cache if k[0] == handle]:
            del self._cache[cache_key]


def build_key(obj: StoredObject) -> Key:
    object_class = obj.object_class
    key_type = obj.key_type
    if key_type is None:
        raise KeyTypeInconsistent(f"object {obj.handle} is not a key")
    if object_class is CKO.SECRET_KEY:
        value = obj.material or b""
        return Key(key_type, object_class, value=value, size_bits=8 * len(value))
    if object_class is CKO.PRIVATE_KEY:
        private = load_private(obj.material or b"")
        return Key(key_type, object_class, private=private, public=private.public_key(), size_bits=_bits(private))
    public = public_key_from_attributes(key_type, obj.attributes)
    return Key(key_type, object_class, public=public, size_bits=_bits(public))


def load_private(der: bytes) -> PrivateKeyTypes:
    try:
        return serialization.load_der_private_key(der, password=None)
    except (ValueError, TypeError):
        raise WrappedKeyInvalid("the key material is not a valid PKCS#8 private key") from None


def private_to_der(private: PrivateKeyTypes) -> bytes:
    return private.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption())


def _bits(key: Any) -> int:
    if isinstance(key, (rsa.RSAPrivateKey, rsa.RSAPublicKey, ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey)):
        return int(key.key_size)
    if isinstance(key, (ed25519.Ed25519PrivateKey, ed25519.Ed25519PublicKey)):
        return 256
    return 0


def public_key_from_attributes(key_type: CKK, attributes: dict[int, Any]) -> Any:
    if key_type is CKK.RSA:
        return rsa_mech.public_key_from_attributes(attributes)
    if key_type is CKK.EC:
        return ec_mech.public_key_from_attributes(attributes)
    if key_type is CKK.EC_EDWARDS:
        return eddsa_mech.public_key_from_attributes(attributes)
    if key_type is CKK.ML_DSA:
        return mldsa_mech.public_key_from_attributes(attributes)
    if key_type is CKK.ML_KEM:
        return mlkem_mech.public_key_from_attributes(attributes)
    raise KeyTypeInconsistent(f"public keys of type {key_type.name} are not supported")


def asymmetric_attributes(private: PrivateKeyTypes) -> tuple[CKK, dict[int, Any], dict[int, Any]]:
    """Key type, public-key-object attributes and private-key-object attributes of a private key.

    The private key object carries CKA_PUBLIC_KEY_INFO (PKCS#11 3.0: its SubjectPublicKeyInfo), so the
    public half of an unwrapped private key can be read and made into a public key object."""
    info: dict[int, Any] = {CKA.PUBLIC_KEY_INFO: private.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)}
    if isinstance(private, rsa.RSAPrivateKey):
        public = rsa_mech.key_attributes(private.public_key())
        private_attrs = {k: v for k, v in public.items() if k in (CKA.MODULUS, CKA.PUBLIC_EXPONENT)}
        return CKK.RSA, public, private_attrs | info
    if isinstance(private, ec.EllipticCurvePrivateKey):
        public = ec_mech.key_attributes(private.public_key())
        return CKK.EC, public, {CKA.EC_PARAMS: public[CKA.EC_PARAMS]} | info
    if isinstance(private, ed25519.Ed25519PrivateKey):
        public = eddsa_mech.key_attributes(private.public_key())
        return CKK.EC_EDWARDS, public, {CKA.EC_PARAMS: public[CKA.EC_PARAMS]} | info
    if isinstance(private, mldsa.MLDSA44PrivateKey | mldsa.MLDSA65PrivateKey | mldsa.MLDSA87PrivateKey):
        return CKK.ML_DSA, mldsa_mech.key_attributes(private.public_key()), mldsa_mech.private_attributes(
            private.public_key())
    if isinstance(private, mlkem.MLKEM768PrivateKey | mlkem.MLKEM1024PrivateKey):
        return CKK.ML_KEM, mlkem_mech.key_attributes(private.public_key()), mlkem_mech.private_attributes(
            private.public_key())
    raise HsmError(f"unsupported private key type {type(private).__name__}", CKR.KEY_TYPE_INCONSISTENT)


def check_key_type(expected: object, actual: CKK) -> None:
    if expected is not None and expected != actual:
        raise TemplateInconsistent(f"the key is {actual.name}, the template says {expected}")


def check_value(key_type: CKK, value: bytes) -> bytes | None:
    """CKA_CHECK_VALUE of an AES key: the first 3 bytes of a zero block encrypted with it (PKCS#11 v2.40)."""
    if key_type is not CKK.AES or len(value) not in (16, 24, 32):
        return None
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    encryptor = Cipher(algorithms.AES(value), modes.ECB()).encryptor()
    return (encryptor.update(bytes(16)) + encryptor.finalize())[:3]
