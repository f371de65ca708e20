"""Generic secret keys: CKM_GENERIC_SECRET_KEY_GEN, the key source for HMAC.

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
    ckm = CKM.GENERIC_SECRET_KEY_GEN
    capabilities = Capability.GENERATE
    key_types = frozenset({CKK.GENERIC_SECRET})
    min_key_size = MIN_SECRET_LEN
    max_key_size = MAX_SECRET_LEN

    def generate_key(self, params: Any, template: dict[int, Any]) -> GeneratedSecret:
        self.parse_params(params)
        length = _value_len(template)
        # The mechanism only makes CKK_GENERIC_SECRET; a template asking it for another
        # type contradicts the mechanism rather than selecting a different key.
        key_type = template.get(CKA.KEY_TYPE, CKK.GENERIC_SECRET)
        if isinstance(key_type, bool) or key_type != CKK.GENERIC_SECRET:
            raise TemplateInconsistent(f"{self.ckm.name} makes CKK_GENERIC_SECRET keys only")
        value = os.urandom(length)
        return GeneratedSecret(value, CKK.GENERIC_SECRET, secret_key_attributes(value))


def _value_len(template: dict[int, Any]) -> int:
    if CKA.VALUE_LEN not in template:
        raise TemplateIncomplete("CKA_VALUE_LEN is required to generate a generic secret key")
    length = template[CKA.VALUE_LEN]
    if not isinstance(length, int) or isinstance(length, bool):
        raise AttributeValueInvalid(f"CKA_VALUE_LEN must be an integer, not {type(length).__name__}")
    if not MIN_SECRET_LEN <= length <= MAX_SECRET_LEN:
        raise KeySizeRange(f"CKA_VALUE_LEN must be {MIN_SECRET_LEN}..{MAX_SECRET_LEN} bytes, not {length}")
    return length


register(GenericSecretKeyGen())
