"""RSA keys as PKCS#11 describes them: CKA_MODULUS, CKA_PUBLIC_EXPONENT (big-endian, no leading
zero bytes) and CKA_MODULUS_BITS.

Pure encoding, shared by the mechanisms (node), the KMS gateway and the CLI; it also holds the
modulus sizes a public key may have, which the mechanisms enforce for their own operations.
"""

from __future__ import annotations

from typing import Any

from cryptography.hazmat.primitives.asymmetric import rsa as crypto_rsa
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey, RSAPublicKey

from strongroom.constants import CKA
from strongroom.errors import AttributeValueInvalid, PublicKeyInvalid, TemplateIncomplete, TemplateInconsistent

MAX_BITS = 4096
#: Smallest public key accepted for verification only (old signatures stay checkable).
LEGACY_VERIFY_MIN_BITS = 1024
#: FIPS 186-4 B.3.1 bounds the public exponent below 2**256; larger ones only cost time.
MAX_PUBLIC_EXPONENT_BITS = 256



def int_to_bytes(value: int) -> bytes:
    """PKCS#11 big integers: big-endian, no leading zero bytes."""
    return value.to_bytes(max(1, (value.bit_length() + 7) // 8), "big")


def _big_integer(attrs: dict[int, Any], attribute: CKA) -> int:
    if attribute not in attrs:
        raise TemplateIncomplete(f"an RSA public key needs CKA_{attribute.name}")
    value = attrs[attribute]
    if not isinstance(value, bytes) or not value:
        raise AttributeValueInvalid(f"CKA_{attribute.name} must be a non-empty big-endian byte string")
    return int.from_bytes(value, "big")


def key_attributes(key: RSAPrivateKey | RSAPublicKey) -> dict[int, Any]:
    """The public values both objects of a pair carry: modulus, public exponent, modulus length."""
    numbers = key.public_key().public_numbers() if isinstance(key, RSAPrivateKey) else key.public_numbers()
    return {
        CKA.MODULUS: int_to_bytes(numbers.n),
        CKA.PUBLIC_EXPONENT: int_to_bytes(numbers.e),
        CKA.MODULUS_BITS: numbers.n.bit_length(),
    }


def private_key_attributes(key: RSAPrivateKey) -> dict[int, Any]:
    """Every component of a private key. Only for serializing an extractable key to be wrapped."""
    numbers = key.private_numbers()
    attributes = key_attributes(key)
    attributes.update(
        {
            CKA.PRIVATE_EXPONENT: int_to_bytes(numbers.d),
            CKA.PRIME_1: int_to_bytes(numbers.p),
            CKA.PRIME_2: int_to_bytes(numbers.q),
            CKA.EXPONENT_1: int_to_bytes(numbers.dmp1),
            CKA.EXPONENT_2: int_to_bytes(numbers.dmq1),
            CKA.COEFFICIENT: int_to_bytes(numbers.iqmp),
        }
    )
    return attributes


def public_key_from_attributes(attrs: dict[int, Any]) -> RSAPublicKey:
    """Build (and check) a public key from CKA_MODULUS and CKA_PUBLIC_EXPONENT."""
    n = _big_integer(attrs, CKA.MODULUS)
    e = _big_integer(attrs, CKA.PUBLIC_EXPONENT)
    bits = n.bit_length()
    if not LEGACY_VERIFY_MIN_BITS <= bits <= MAX_BITS:
        raise AttributeValueInvalid(
            f"RSA modulus of {bits} bits is outside {LEGACY_VERIFY_MIN_BITS}..{MAX_BITS} bits"
        )
    declared = attrs.get(CKA.MODULUS_BITS)
    if declared is not None and declared != bits:
        raise TemplateInconsistent(f"CKA_MODULUS_BITS says {declared!r} but the modulus has {bits} bits")
    # cryptography accepts an even modulus; no product of two odd primes is even.
    if n % 2 == 0:
        raise PublicKeyInvalid("the RSA modulus is even")
    if e.bit_length() > MAX_PUBLIC_EXPONENT_BITS:
        raise PublicKeyInvalid(f"the RSA public exponent is longer than {MAX_PUBLIC_EXPONENT_BITS} bits")
    try:
        return crypto_rsa.RSAPublicNumbers(e, n).public_key()
    except ValueError as exc:  # e even, e < 3 or e >= n
        raise PublicKeyInvalid(f"invalid RSA public key: {exc}") from None
