"""Two- and three-key Triple-DES (PKCS#11 v2.40 current mechanisms §2.10): CKM_DES2_KEY_GEN,
CKM_DES3_KEY_GEN, CKM_DES3_ECB, CKM_DES3_CBC and CKM_DES3_CBC_PAD.

Legacy algorithms, offered only under the cluster policy ``legacy_algorithms = on``
(:attr:`Mechanism.legacy_only`): otherwise they are not listed and CKR_MECHANISM_INVALID. The cipher is
pyca/cryptography's maintained Triple-DES (``cryptography.hazmat.decrepit``, where the library keeps the
algorithms it no longer recommends), never code of our own. Keys are 16 bytes (DES2: K1 K2 K1) or 24
bytes (DES3), each DES key byte with odd parity as PKCS#11 makes them; the cipher ignores the parity
bits, so an imported key with other parity bits works the same. Multi-part like AES: ECB/CBC take any
chunking (a partial block at ``final`` is a length error), CBC_PAD decryption keeps the last block back
until ``final``.
"""

from __future__ import annotations

import os
from typing import Any

from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives.ciphers import Cipher, modes

from strongroom.constants import CKK, CKM, CKO
from strongroom.errors import (
    DataLenRange,
    EncryptedDataLenRange,
    KeySizeRange,
    KeyTypeInconsistent,
    MechanismParamInvalid,
)
from strongroom.mechanisms.base import (
    Capability,
    CipherOperation,
    GeneratedSecret,
    Key,
    Mechanism,
    register,
)
from strongroom.mechanisms.blockmodes import BlockOp, PadDecryptOp, PadEncryptOp

BLOCK = 8
KEY_LENGTHS = {CKK.DES2: 16, CKK.DES3: 24}


def with_odd_parity(key: bytes) -> bytes:
    """Each byte's low bit set so that the byte has an odd number of 1 bits (FIPS 46-3)."""
    return bytes((b & 0xFE) | (1 - bin(b >> 1).count("1") % 2) for b in key)


def _des_key(key: Key) -> bytes:
    if key.key_type not in KEY_LENGTHS or key.object_class != CKO.SECRET_KEY or key.value is None:
        raise KeyTypeInconsistent("this mechanism needs a DES2 or DES3 secret key")
    if len(key.value) != KEY_LENGTHS[CKK(key.key_type)]:
        raise KeySizeRange(f"a {CKK(key.key_type).name} key is {KEY_LENGTHS[CKK(key.key_type)]} bytes")
    return three_keys(bytes(key.value))


def three_keys(value: bytes) -> bytes:
    """A two-key Triple-DES key K1 K2 as the three-key K1 K2 K1 it is (the library keeps only that form)."""
    return value + value[:8] if len(value) == 16 else value


class _DesMechanism(Mechanism):
    key_types = frozenset(KEY_LENGTHS)
    # C_GetMechanismInfo: key sizes in bytes, as for the other secret keys here (and SoftHSMv2's DES3).
    min_key_size = 16
    max_key_size = 24
    legacy_only = True


class _DesKeyGen(_DesMechanism):
    capabilities = Capability.GENERATE

    def __init__(self, ckm: CKM, key_type: CKK) -> None:
        self.ckm = ckm
        self._key_type = key_type
        self.min_key_size = self.max_key_size = KEY_LENGTHS[key_type]

    def generate_key(self, params: Any, template: dict[int, Any]) -> GeneratedSecret:
        self.parse_params(params)
        return GeneratedSecret(with_odd_parity(os.urandom(KEY_LENGTHS[self._key_type])), self._key_type)


class Des3Ecb(_DesMechanism):
    ckm = CKM.DES3_ECB
    capabilities = Capability.ENCRYPT | Capability.DECRYPT
    multipart = True

    def _cipher(self, key: Key, params: Any) -> Cipher[Any]:
        self.parse_params(params)
        return Cipher(TripleDES(_des_key(key)), modes.ECB())

    def encrypt(self, key: Key, params: Any) -> CipherOperation:
        return BlockOp(self._cipher(key, params).encryptor(), BLOCK, DataLenRange, "DES3_ECB plaintext")

    def decrypt(self, key: Key, params: Any) -> CipherOperation:
        return BlockOp(self._cipher(key, params).decryptor(), BLOCK, EncryptedDataLenRange, "DES3_ECB ciphertext")


class _Des3CbcBase(_DesMechanism):
    capabilities = Capability.ENCRYPT | Capability.DECRYPT
    multipart = True

    def parse_params(self, params: Any) -> bytes:
        if not isinstance(params, bytes) or len(params) != BLOCK:
            raise MechanismParamInvalid(f"{self.ckm.name} takes an {BLOCK}-byte IV (bytes)")
        return params

    def _cipher(self, key: Key, params: Any) -> Cipher[Any]:
        iv = self.parse_params(params)
        return Cipher(TripleDES(_des_key(key)), modes.CBC(iv))


class Des3Cbc(_Des3CbcBase):
    ckm = CKM.DES3_CBC

    def encrypt(self, key: Key, params: Any) -> CipherOperation:
        return BlockOp(self._cipher(key, params).encryptor(), BLOCK, DataLenRange, "DES3_CBC plaintext")

    def decrypt(self, key: Key, params: Any) -> CipherOperation:
        return BlockOp(self._cipher(key, params).decryptor(), BLOCK, EncryptedDataLenRange, "DES3_CBC ciphertext")


class Des3CbcPad(_Des3CbcBase):
    ckm = CKM.DES3_CBC_PAD

    def encrypt(self, key: Key, params: Any) -> CipherOperation:
        return PadEncryptOp(self._cipher(key, params).encryptor(), BLOCK)

    def decrypt(self, key: Key, params: Any) -> CipherOperation:
        return PadDecryptOp(self._cipher(key, params).decryptor(), BLOCK)


DES2_KEY_GEN = register(_DesKeyGen(CKM.DES2_KEY_GEN, CKK.DES2))
DES3_KEY_GEN = register(_DesKeyGen(CKM.DES3_KEY_GEN, CKK.DES3))
DES3_ECB = register(Des3Ecb())
DES3_CBC = register(Des3Cbc())
DES3_CBC_PAD = register(Des3CbcPad())
