"""Between stored objects and mechanisms: key material in, :class:`~strongroom.mechanisms.base.Key` out.

Private keys are kept (above the barrier) as PKCS#8 DER; loading one costs far more
than using it, so loaded keys are cached per worker by handle and record revision.
"""

from __future__ import annotations

from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, mldsa, mlkem, rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

from strongroom.constants import CKA, CKK, CKO
from strongroom.encoding import ec as ec_encoding
from strongroom.encoding import eddsa as eddsa_encoding
from strongroom.encoding.rsa import int_to_bytes
from strongroom.errors import (
    CKR,
    HsmError,
    KeyTypeInconsistent,
    TemplateIncomplete,
    TemplateInconsistent,
    WrappedKeyInvalid,
)
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
    if isinstance(key, (ed448.Ed448PrivateKey, ed448.Ed448PublicKey)):
        return 448
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
    if isinstance(private, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey):
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
    """CKA_CHECK_VALUE of an AES or Triple-DES key: the first 3 bytes of a zero block encrypted with it
    (PKCS#11 v2.40 current mechanisms §2.8, §2.10)."""
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    if key_type is CKK.AES and len(value) in (16, 24, 32):
        encryptor = Cipher(algorithms.AES(value), modes.ECB()).encryptor()
        return (encryptor.update(bytes(16)) + encryptor.finalize())[:3]
    if key_type in (CKK.DES2, CKK.DES3) and len(value) in (16, 24):
        from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES

        des = Cipher(TripleDES(value + value[:8] if len(value) == 16 else value), modes.ECB()).encryptor()
        return (des.update(bytes(8)) + des.finalize())[:3]
    return None


# --- key material in clear (plaintext import, non-sensitive keys) ------------------------------------

#: An RSA private key's components in a template, in the order of rsa.RSAPrivateNumbers.
RSA_PRIVATE_COMPONENTS = (CKA.PRIVATE_EXPONENT, CKA.PRIME_1, CKA.PRIME_2, CKA.EXPONENT_1, CKA.EXPONENT_2,
                          CKA.COEFFICIENT)
#: Every attribute that holds key material (never stored among the attributes: it is the object's material).
MATERIAL_ATTRIBUTES = frozenset({CKA.VALUE, *RSA_PRIVATE_COMPONENTS})


def clear_value(obj: StoredObject, cka: int) -> bytes | None:
    """A key-material attribute of a key in clear (the caller decided it may be revealed), or None when
    the key does not have it."""
    material = obj.material
    if material is None:
        return None
    if obj.object_class is CKO.SECRET_KEY:
        return material if cka == CKA.VALUE else None
    if obj.object_class is not CKO.PRIVATE_KEY:
        return None
    private = load_private(material)
    if isinstance(private, rsa.RSAPrivateKey):
        numbers = private.private_numbers()
        values: dict[int, int] = dict(zip(RSA_PRIVATE_COMPONENTS, (numbers.d, numbers.p, numbers.q, numbers.dmp1,
                                                                   numbers.dmq1, numbers.iqmp), strict=True))
        value = values.get(cka)
        return None if value is None else int_to_bytes(value)
    if cka != CKA.VALUE:
        return None
    if isinstance(private, ec.EllipticCurvePrivateKey):
        return private.private_numbers().private_value.to_bytes((private.curve.key_size + 7) // 8, "big")
    if isinstance(private, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey):
        return private.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                     serialization.NoEncryption())
    return None


def _component(template: dict[int, Any], cka: int) -> int:
    value = template.get(cka)
    if not isinstance(value, bytes) or not value:
        raise TemplateIncomplete(f"an RSA private key needs CKA_{CKA(cka).name}")
    return int.from_bytes(value, "big")


def private_from_template(key_type: CKK, template: dict[int, Any]) -> PrivateKeyTypes:
    """C_CreateObject of a private key: the key its template's values in clear make, checked by the library
    (PKCS#11 v2.40 current mechanisms §2.1.3 RSA, §2.3.4 EC; 3.0 §2.3.7 Edwards)."""
    try:
        if key_type is CKK.RSA:
            n, e = _component(template, CKA.MODULUS), _component(template, CKA.PUBLIC_EXPONENT)
            d, p, q = (_component(template, cka) for cka in RSA_PRIVATE_COMPONENTS[:3])
            # The CRT values may be left out (the spec lets a token compute them).
            dmp1 = _component(template, CKA.EXPONENT_1) if CKA.EXPONENT_1 in template else rsa.rsa_crt_dmp1(d, p)
            dmq1 = _component(template, CKA.EXPONENT_2) if CKA.EXPONENT_2 in template else rsa.rsa_crt_dmq1(d, q)
            iqmp = _component(template, CKA.COEFFICIENT) if CKA.COEFFICIENT in template else rsa.rsa_crt_iqmp(p, q)
            numbers = rsa.RSAPrivateNumbers(p, q, d, dmp1, dmq1, iqmp, rsa.RSAPublicNumbers(e, n))
            return numbers.private_key()
        value = template.get(CKA.VALUE)
        if not isinstance(value, bytes) or not value:
            raise TemplateIncomplete("a private key needs CKA_VALUE (its private value)")
        if CKA.EC_PARAMS not in template:
            raise TemplateIncomplete("an EC private key needs CKA_EC_PARAMS")
        if key_type is CKK.EC:
            curve = ec_encoding.curve_from_params(template[CKA.EC_PARAMS])
            return ec.derive_private_key(int.from_bytes(value, "big"), curve)
        if key_type is CKK.EC_EDWARDS:
            edwards = eddsa_encoding.curve_from_params(template[CKA.EC_PARAMS])
            return edwards.private_type.from_private_bytes(value)
    except (ValueError, TypeError, OverflowError) as exc:
        raise HsmError(f"the template's values are not a valid {key_type.name} private key: {exc}",
                       CKR.ATTRIBUTE_VALUE_INVALID) from None
    raise HsmError(f"private keys of type {key_type.name} cannot be created from their values",
                   CKR.TEMPLATE_INCONSISTENT)
