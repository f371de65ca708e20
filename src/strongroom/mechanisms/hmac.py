"""HMAC over SHA-1, SHA-2 and SHA-3: CKM_SHA*_HMAC / CKM_SHA3_*_HMAC (full-length MAC) and the
*_HMAC_GENERAL variants.

A generic secret key works with every hash; a key typed for one HMAC (CKK_SHA256_HMAC,
CKK_SHA3_256_HMAC …, made by CKM_SHA3_256_KEY_GEN … or imported) only with that hash, which is
the point of having typed HMAC keys. The _GENERAL variants
take ``{"mac_len": n}`` and produce the leftmost n bytes of the MAC (RFC 2104 §5).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import hmac as crypto_hmac
from cryptography.hazmat.primitives.constant_time import bytes_eq

from strongroom.constants import CKK, CKM
from strongroom.errors import (
    ArgumentsBad,
    KeySizeRange,
    KeyTypeInconsistent,
    MechanismParamInvalid,
    SignatureInvalid,
    SignatureLenRange,
)
from strongroom.mechanisms.base import (
    Capability,
    Key,
    Mechanism,
    SignOperation,
    Stream,
    VerifyOperation,
    register,
)
from strongroom.mechanisms.generic import MAX_SECRET_LEN, MIN_SECRET_LEN
from strongroom.mechanisms.hashes import ALL_HASHES


@dataclass(frozen=True)
class MacParams:
    """Parsed CK_MAC_GENERAL_PARAMS: the MAC length in bytes."""

    mac_len: int


class _MacStream(Stream):
    """The running HMAC shared by sign and verify; ends itself on the first failure."""

    def __init__(self, key: bytes, algorithm: hashes.HashAlgorithm, mac_len: int) -> None:
        super().__init__(crypto_hmac.HMAC(key, algorithm), "HMAC")
        self.mac_len = mac_len

    def finish(self) -> bytes:
        return super().finish()[: self.mac_len]


class _HmacSign(SignOperation):
    def __init__(self, stream: _MacStream) -> None:
        self._stream = stream

    def update(self, data: bytes) -> None:
        self._stream.update(data)

    def final(self) -> bytes:
        return self._stream.finish()


class _HmacVerify(VerifyOperation):
    def __init__(self, stream: _MacStream) -> None:
        self._stream = stream

    def update(self, data: bytes) -> None:
        self._stream.update(data)

    def final(self, signature: bytes) -> None:
        # Finish first: C_Verify(Final) ends the operation whatever the outcome.
        expected = self._stream.finish()
        if not isinstance(signature, bytes | bytearray | memoryview):
            raise ArgumentsBad(f"signature must be bytes, not {type(signature).__name__}")
        if len(signature) != len(expected):
            raise SignatureLenRange(f"an HMAC signature here is {len(expected)} bytes, not {len(signature)}")
        if not bytes_eq(expected, bytes(signature)):
            raise SignatureInvalid("the HMAC does not match")


class HmacMechanism(Mechanism):
    capabilities = Capability.SIGN | Capability.VERIFY
    min_key_size = MIN_SECRET_LEN
    max_key_size = MAX_SECRET_LEN
    multipart = True

    def __init__(self, ckm: CKM, hash_ckm: CKM, hmac_key_type: CKK, *, general: bool) -> None:
        self.ckm = ckm
        self._algorithm = ALL_HASHES[hash_ckm]
        self._accepted = (CKK.GENERIC_SECRET, hmac_key_type)
        self.key_types = frozenset(self._accepted)
        self.general = general
        self.digest_size: int = self._algorithm().digest_size

    def parse_params(self, params: Any) -> MacParams | None:
        if not self.general:
            super().parse_params(params)
            return None
        expected = f'{{"mac_len": int}} with mac_len 1..{self.digest_size} (bytes)'
        if not isinstance(params, dict):
            raise MechanismParamInvalid(f"{self.ckm.name} needs {expected}, not {type(params).__name__}")
        unknown = [name for name in params if name != "mac_len"]
        if unknown:
            raise MechanismParamInvalid(f"{self.ckm.name} needs {expected}; unknown fields {unknown!r}")
        if "mac_len" not in params:
            raise MechanismParamInvalid(f"{self.ckm.name} needs {expected}; mac_len is missing")
        mac_len = params["mac_len"]
        if not isinstance(mac_len, int) or isinstance(mac_len, bool):
            raise MechanismParamInvalid(f"{self.ckm.name} needs {expected}; mac_len is {type(mac_len).__name__}")
        if not 1 <= mac_len <= self.digest_size:
            raise MechanismParamInvalid(f"{self.ckm.name} needs {expected}; mac_len is {mac_len}")
        return MacParams(mac_len)

    def sign(self, key: Key, params: Any) -> SignOperation:
        return _HmacSign(self._start(key, params))

    def verify(self, key: Key, params: Any) -> VerifyOperation:
        return _HmacVerify(self._start(key, params))

    def _start(self, key: Key, params: Any) -> _MacStream:
        # Accept already-parsed params too, so the layer above may validate once at init
        # and pass the result along (base.py leaves open which of the two it hands us).
        parsed = params if self.general and isinstance(params, MacParams) else self.parse_params(params)
        mac_len = parsed.mac_len if parsed is not None else self.digest_size
        return _MacStream(self._secret(key), self._algorithm(), mac_len)

    def _secret(self, key: Key) -> bytes:
        key.require_type(*self._accepted)
        if key.value is None:
            raise KeyTypeInconsistent(f"{self.ckm.name} needs a secret key value")
        if not MIN_SECRET_LEN <= len(key.value) <= MAX_SECRET_LEN:
            raise KeySizeRange(
                f"{self.ckm.name} takes keys of {MIN_SECRET_LEN}..{MAX_SECRET_LEN} bytes, not {len(key.value)}"
            )
        return bytes(key.value)


#: (hash, HMAC, HMAC_GENERAL, the key type reserved for that HMAC)
_FAMILY = (
    (CKM.SHA_1, CKM.SHA_1_HMAC, CKM.SHA_1_HMAC_GENERAL, CKK.SHA_1_HMAC),
    (CKM.SHA224, CKM.SHA224_HMAC, CKM.SHA224_HMAC_GENERAL, CKK.SHA224_HMAC),
    (CKM.SHA256, CKM.SHA256_HMAC, CKM.SHA256_HMAC_GENERAL, CKK.SHA256_HMAC),
    (CKM.SHA384, CKM.SHA384_HMAC, CKM.SHA384_HMAC_GENERAL, CKK.SHA384_HMAC),
    (CKM.SHA512, CKM.SHA512_HMAC, CKM.SHA512_HMAC_GENERAL, CKK.SHA512_HMAC),
    (CKM.SHA3_224, CKM.SHA3_224_HMAC, CKM.SHA3_224_HMAC_GENERAL, CKK.SHA3_224_HMAC),
    (CKM.SHA3_256, CKM.SHA3_256_HMAC, CKM.SHA3_256_HMAC_GENERAL, CKK.SHA3_256_HMAC),
    (CKM.SHA3_384, CKM.SHA3_384_HMAC, CKM.SHA3_384_HMAC_GENERAL, CKK.SHA3_384_HMAC),
    (CKM.SHA3_512, CKM.SHA3_512_HMAC, CKM.SHA3_512_HMAC_GENERAL, CKK.SHA3_512_HMAC),
)

HMACS: dict[CKM, HmacMechanism] = {}
for _hash, _full, _general, _key_type in _FAMILY:
    HMACS[_full] = HmacMechanism(_full, _hash, _key_type, general=False)
    HMACS[_general] = HmacMechanism(_general, _hash, _key_type, general=True)
for _mechanism in HMACS.values():
    register(_mechanism)
