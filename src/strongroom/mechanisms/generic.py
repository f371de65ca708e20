"""Generic secret keys: CKM_GENERIC_SECRET_KEY_GEN, the key source for HMAC and HKDF, and the typed
secret keys of PKCS#11 3.0 made the same way: CKM_SHA3_*_KEY_GEN (CKK_SHA3_*_HMAC keys, usable by
that one HMAC) and CKM_HKDF_KEY_GEN (CKK_HKDF keys, usable by CKM_HKDF_DERIVE / CKM_HKDF_DATA).

The bytes come straight from the OS CSPRNG (``os.urandom``), the same source
pyca/cryptography uses for its own key generation; there is nothing to derive.
"""

from __future__ import annotations

import os
from typing import Any

from strongroom.constants import CKA, CKK, CKM
from strongroom.errors import AttributeValueInvalid, KeySizeRange, TemplateIncomplete, TemplateInconsistent
from strongroom.mechanisms.base import Capability, GeneratedSecret, Mechanism, register

#: Bounds in bytes (C_GetMechanismInfo reports generic secret sizes in bytes). 512 bytes is
#: far beyond any hash block size; the ceiling only stops absurd requests.
MIN_SECRET_LEN = 1
MAX_SECRET_LEN = 512


def secret_key_attributes(value: bytes) -> dict[int, Any]:
    """The attributes a secret key's CKA_VALUE implies (for imported or unwrapped keys too)."""
    return {CKA.VALUE_LEN: len(value)}


class GenericSecretKeyGen(Mechanism):
    capabilities = Capability.GENERATE
    min_key_size = MIN_SECRET_LEN
    max_key_size = MAX_SECRET_LEN

    def __init__(self, ckm: CKM = CKM.GENERIC_SECRET_KEY_GEN, key_type: CKK = CKK.GENERIC_SECRET) -> None:
        self.ckm = ckm
        self.key_type = key_type
        self.key_types = frozenset({key_type})

    def generate_key(self, params: Any, template: dict[int, Any]) -> GeneratedSecret:
        self.parse_params(params)
        length = _value_len(template)
        # The mechanism makes one key type; a template asking it for another
        # type contradicts the mechanism rather than selecting a different key.
        key_type = template.get(CKA.KEY_TYPE, self.key_type)
        if isinstance(key_type, bool) or key_type != self.key_type:
            raise TemplateInconsistent(f"{self.ckm.name} makes CKK_{self.key_type.name} keys only")
        value = os.urandom(length)
        return GeneratedSecret(value, self.key_type, secret_key_attributes(value))


def _value_len(template: dict[int, Any]) -> int:
    if CKA.VALUE_LEN not in template:
        raise TemplateIncomplete("CKA_VALUE_LEN is required to generate a generic (HMAC, HKDF) secret key")
    length = template[CKA.VALUE_LEN]
    if not isinstance(length, int) or isinstance(length, bool):
        raise AttributeValueInvalid(f"CKA_VALUE_LEN must be an integer, not {type(length).__name__}")
    if not MIN_SECRET_LEN <= length <= MAX_SECRET_LEN:
        raise KeySizeRange(f"CKA_VALUE_LEN must be {MIN_SECRET_LEN}..{MAX_SECRET_LEN} bytes, not {length}")
    return length


#: (mechanism, the key type it makes) of the typed secret keys.
TYPED_KEY_GEN = (
    (CKM.SHA3_224_KEY_GEN, CKK.SHA3_224_HMAC),
    (CKM.SHA3_256_KEY_GEN, CKK.SHA3_256_HMAC),
    (CKM.SHA3_384_KEY_GEN, CKK.SHA3_384_HMAC),
    (CKM.SHA3_512_KEY_GEN, CKK.SHA3_512_HMAC),
    (CKM.HKDF_KEY_GEN, CKK.HKDF),
)

register(GenericSecretKeyGen())
for _ckm, _key_type in TYPED_KEY_GEN:
    register(GenericSecretKeyGen(_ckm, _key_type))
