"""AES: key generation, ECB/CBC/CBC_PAD/CTR/GCM, RFC 3394/5649 key wrap and CMAC.

Everything here computes with pyca/cryptography; this module only enforces the PKCS#11
v2.40 rules around it (lengths, parameter layouts, which ``CKR_*`` a failure becomes)
and the streaming behaviour of multi-part operations:

* ECB/CBC take data in any chunking; a partial block left at ``final`` is a length error.
* CBC_PAD decryption never releases the last block before ``final``: only then do we know
  whether it holds the padding (cryptography's PKCS#7 unpadder keeps it back for us).
* GCM decryption releases nothing before the tag has been checked, so a forged message
  never yields plaintext; the plaintext is buffered up to :data:`GCM_DECRYPT_LIMIT`.
* CTR refuses any input that would take the counter past ``counter_bits`` bits.

Parameters may be handed to an operation raw (as decoded from msgpack) or already
parsed: every ``parse_params`` accepts its own result and returns it unchanged.
"""

from __future__ import annotations

import enum
import hmac
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import keywrap
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.cmac import CMAC

from strongroom.constants import CKA, CKK, CKM, CKO
from strongroom.errors import (
    CKR,
    ArgumentsBad,
    AttributeValueInvalid,
    DataLenRange,
    EncryptedDataInvalid,
    EncryptedDataLenRange,
    HsmError,
    KeySizeRange,
    KeyTypeInconsistent,
    MechanismParamInvalid,
    SignatureInvalid,
    SignatureLenRange,
    TemplateIncomplete,
    WrappedKeyInvalid,
    WrappedKeyLenRange,
)
from strongroom.mechanisms.base import (
    MAX_DATA,
    Capability,
    CipherOperation,
    GeneratedSecret,
    Key,
    Mechanism,
    SignOperation,
    VerifyOperation,
    check_part,
    register,
)
from strongroom.mechanisms.blockmodes import BlockOp, PadDecryptOp, PadEncryptOp

BLOCK = 16
KEY_SIZES = (16, 24, 32)
#: AAD travels inside the mechanism parameters of one request; keep it well below a frame.
MAX_AAD = 64 * 1024
#: GCM decryption holds all plaintext until the tag verifies; this bounds that memory.
GCM_DECRYPT_LIMIT = 16 * MAX_DATA
#: Bounds of modes.GCM in cryptography (8..128 bytes); PKCS#11 allows 1 byte up, but shorter
#: IVs would need a hand-written GHASH, which we do not do.
GCM_IV_MIN, GCM_IV_MAX = 8, 128
GCM_GENERATED_IV = 12
#: RFC 3394 §2.2.3.1 default IV and RFC 5649 §3 alternative IV: the only ones cryptography uses.
KW_DEFAULT_IV = bytes.fromhex("A6A6A6A6A6A6A6A6")
KWP_DEFAULT_AIV = bytes.fromhex("A65959A6")


# -- shared checks ------------------------------------------------------------------------


class _Role(enum.Enum):
    """Which key argument of the PKCS#11 call a key is: C_WrapKey/C_UnwrapKey have their own codes."""

    KEY = (CKR.KEY_TYPE_INCONSISTENT, CKR.KEY_SIZE_RANGE)
    WRAPPING = (CKR.WRAPPING_KEY_TYPE_INCONSISTENT, CKR.WRAPPING_KEY_SIZE_RANGE)
    UNWRAPPING = (CKR.UNWRAPPING_KEY_TYPE_INCONSISTENT, CKR.UNWRAPPING_KEY_SIZE_RANGE)


def _aes_key(key: Key, role: _Role = _Role.KEY) -> bytes:
    type_code, size_code = role.value
    if key.key_type != CKK.AES or key.object_class != CKO.SECRET_KEY or key.value is None:
        raise KeyTypeInconsistent(f"this mechanism needs an AES secret key, not {_describe(key)}", type_code)
    if len(key.value) not in KEY_SIZES:
        raise KeySizeRange(f"an AES key is 16, 24 or 32 bytes, this one is {len(key.value)}", size_code)
    return bytes(key.value)


def _describe(key: Key) -> str:
    try:
        return f"{CKK(key.key_type).name} {CKO(key.object_class).name}"
    except ValueError:
        return f"key type {key.key_type!r}"


def _dict_params(ckm: CKM, params: Any, required: set[str], optional: set[str]) -> dict[str, Any]:
    expected = ", ".join(sorted(required | optional))
    if not isinstance(params, dict):
        raise MechanismParamInvalid(f"{ckm.name} takes a map with {expected}")
    unknown = set(params) - required - optional
    if unknown:
        raise MechanismParamInvalid(
            f"{ckm.name}: unknown parameter(s) {sorted(map(str, unknown))}; expected {expected}")
    missing = required - set(params)
    if missing:
        raise MechanismParamInvalid(f"{ckm.name}: missing parameter(s) {sorted(missing)}")
    return params


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class _AesMechanism(Mechanism):
    key_types = frozenset({CKK.AES})
    min_key_size = 16
    max_key_size = 32


# -- key generation -----------------------------------------------------------------------


class AesKeyGen(_AesMechanism):
    ckm = CKM.AES_KEY_GEN
    capabilities = Capability.GENERATE

    def generate_key(self, params: Any, template: dict[int, Any]) -> GeneratedSecret:
        self.parse_params(params)
        if CKA.VALUE_LEN not in template:
            raise TemplateIncomplete("CKM_AES_KEY_GEN needs CKA_VALUE_LEN (16, 24 or 32 bytes)")
        length = template[CKA.VALUE_LEN]
        if not _is_int(length):
            raise AttributeValueInvalid("CKA_VALUE_LEN must be an integer number of bytes")
        if length not in KEY_SIZES:
            raise KeySizeRange(f"an AES key is 16, 24 or 32 bytes, not {length}")
        return GeneratedSecret(os.urandom(length), CKK.AES, {CKA.VALUE_LEN: length})


# -- cipher operations --------------------------------------------------------------------


class _CtrOp(CipherOperation):
    """CTR in either direction, refusing input that would wrap the counter bits."""

    def __init__(self, key: bytes, params: CtrParams) -> None:
        self._ctx = Cipher(algorithms.AES(key), modes.CTR(params.cb)).encryptor()
        # cryptography increments all 128 bits; as long as the low counter_bits never wrap,
        # no carry reaches the nonce part and both agree.
        self._budget = params.max_blocks * BLOCK
        self._counter_bits = params.counter_bits

    def update(self, data: bytes) -> bytes:
        check_part(data)
        if len(data) > self._budget:
            raise DataLenRange(f"this input would wrap the {self._counter_bits}-bit counter")
        self._budget -= len(data)
        return self._ctx.update(data)

    def final(self) -> bytes:
        return self._ctx.finalize()


#: The nonce lengths cryptography's one-shot AESGCM takes (PKCS#11 allows any from 1 byte).
_AEAD_IV = range(8, 129)
#: The tag AESGCM makes and checks; a shorter tag is its prefix (NIST SP 800-38D §5.2.1.2).
_FULL_TAG = 16


class _GcmEncryptOp(CipherOperation):
    """GCM encryption. A single-part call seals at once with AESGCM (one call into OpenSSL, about a
    sixth of the context API's cost for 1 KiB); parts go through a streaming context made on the first."""

    def __init__(self, key: bytes, params: GcmParams, iv: bytes) -> None:
        self._key, self._iv, self._aad = key, iv, params.aad
        self._tag_len = params.tag_len
        self._stream: Any = None

    def _context(self) -> Any:
        if self._stream is None:
            self._stream = Cipher(algorithms.AES(self._key), modes.GCM(self._iv)).encryptor()
            if self._aad:
                self._stream.authenticate_additional_data(self._aad)
        return self._stream

    def update(self, data: bytes) -> bytes:
        check_part(data)
        try:
            return bytes(self._context().update(data))
        except (ValueError, OverflowError):  # GCM's 2^39-256 bit message limit
            raise DataLenRange("GCM message length limit reached") from None

    def final(self) -> bytes:
        context = self._context()
        context.finalize()
        return bytes(context.tag[: self._tag_len])

    def one_shot(self, data: bytes) -> bytes:
        if self._stream is not None or len(self._iv) not in _AEAD_IV:
            return super().one_shot(data)
        check_part(data)
        sealed = AESGCM(self._key).encrypt(self._iv, bytes(data), self._aad or None)
        return sealed[: len(sealed) - _FULL_TAG + self._tag_len]


class _GcmDecryptOp(CipherOperation):
    """Holds back the trailing tag-length bytes (the tag, if the message ends there) and all
    plaintext; plaintext leaves only from ``final`` and only after the tag verified."""

    def __init__(self, key: bytes, params: GcmParams) -> None:
        self._key, self._iv, self._aad = key, params.iv, params.aad
        self._stream: Any = None  # the streaming context, made by the first part
        self._tag_len = params.tag_len
        self._tail = b""
        self._plain = bytearray()
        self._total = 0

    def _context(self) -> Any:
        if self._stream is None:
            mode = modes.GCM(self._iv, min_tag_length=self._tag_len)
            self._stream = Cipher(algorithms.AES(self._key), mode).decryptor()
            if self._aad:
                self._stream.authenticate_additional_data(self._aad)
        return self._stream

    def update(self, data: bytes) -> bytes:
        check_part(data)
        self._total += len(data)
        if self._total > GCM_DECRYPT_LIMIT + self._tag_len:
            self._plain.clear()
            raise DataLenRange(f"GCM decryption is limited to {GCM_DECRYPT_LIMIT} bytes of plaintext")
        buf = self._tail + bytes(data)
        cut = max(len(buf) - self._tag_len, 0)
        if cut:
            self._plain += self._context().update(buf[:cut])
        self._tail = buf[cut:]
        return b""

    def final(self) -> bytes:
        if len(self._tail) < self._tag_len:
            raise EncryptedDataLenRange(f"GCM ciphertext is shorter than its {self._tag_len}-byte tag")
        try:
            self._context().finalize_with_tag(self._tail)
        except InvalidTag:
            self._plain.clear()
            raise EncryptedDataInvalid("GCM tag does not verify") from None
        plain = bytes(self._plain)
        self._plain.clear()
        return plain

    def one_shot(self, data: bytes) -> bytes:
        # A full tag and a nonce AESGCM takes: one call that checks the tag before any plaintext exists.
        if self._total or self._tag_len != _FULL_TAG or len(self._iv) not in _AEAD_IV:
            return super().one_shot(data)
        check_part(data)
        if len(data) > GCM_DECRYPT_LIMIT + self._tag_len:
            raise DataLenRange(f"GCM decryption is limited to {GCM_DECRYPT_LIMIT} bytes of plaintext")
        if len(data) < self._tag_len:
            raise EncryptedDataLenRange(f"GCM ciphertext is shorter than its {self._tag_len}-byte tag")
        try:
            return AESGCM(self._key).decrypt(self._iv, bytes(data), self._aad or None)
        except InvalidTag:
            raise EncryptedDataInvalid("GCM tag does not verify") from None


class _OneShotOp(CipherOperation):
    """Single-part only (key wrap used through C_Encrypt/C_Decrypt): update/final stay unsupported."""

    def __init__(self, compute: Callable[[bytes], bytes]) -> None:
        self._compute = compute

    def one_shot(self, data: bytes) -> bytes:
        check_part(data)
        return self._compute(bytes(data))


# -- ECB, CBC, CBC_PAD --------------------------------------------------------------------


class AesEcb(_AesMechanism):
    ckm = CKM.AES_ECB
    capabilities = Capability.ENCRYPT | Capability.DECRYPT
    multipart = True

    def _cipher(self, key: Key, params: Any) -> Cipher[Any]:
        self.parse_params(params)
        return Cipher(algorithms.AES(_aes_key(key)), modes.ECB())

    def encrypt(self, key: Key, params: Any) -> CipherOperation:
        return BlockOp(self._cipher(key, params).encryptor(), BLOCK, DataLenRange, "ECB plaintext")

    def decrypt(self, key: Key, params: Any) -> CipherOperation:
        return BlockOp(self._cipher(key, params).decryptor(), BLOCK, EncryptedDataLenRange, "ECB ciphertext")


class _AesCbcBase(_AesMechanism):
    capabilities = Capability.ENCRYPT | Capability.DECRYPT
    multipart = True

    def parse_params(self, params: Any) -> bytes:
        if not isinstance(params, bytes) or len(params) != BLOCK:
            raise MechanismParamInvalid(f"{self.ckm.name} takes a {BLOCK}-byte IV (bytes)")
        return params

    def _cipher(self, key: Key, params: Any) -> Cipher[Any]:
        iv = self.parse_params(params)
        return Cipher(algorithms.AES(_aes_key(key)), modes.CBC(iv))


class AesCbc(_AesCbcBase):
    ckm = CKM.AES_CBC

    def encrypt(self, key: Key, params: Any) -> CipherOperation:
        return BlockOp(self._cipher(key, params).encryptor(), BLOCK, DataLenRange, "CBC plaintext")

    def decrypt(self, key: Key, params: Any) -> CipherOperation:
        return BlockOp(self._cipher(key, params).decryptor(), BLOCK, EncryptedDataLenRange, "CBC ciphertext")


class AesCbcPad(_AesCbcBase):
    """PKCS#7-padded CBC; also wraps keys of any length (the padding carries the length)."""

    ckm = CKM.AES_CBC_PAD
    capabilities = Capability.ENCRYPT | Capability.DECRYPT | Capability.WRAP | Capability.UNWRAP

    def encrypt(self, key: Key, params: Any) -> CipherOperation:
        return PadEncryptOp(self._cipher(key, params).encryptor(), BLOCK)

    def decrypt(self, key: Key, params: Any) -> CipherOperation:
        return PadDecryptOp(self._cipher(key, params).decryptor(), BLOCK)

    def wrap(self, wrapping_key: Key, params: Any, key_bytes: bytes) -> bytes:
        _aes_key(wrapping_key, _Role.WRAPPING)
        check_part(key_bytes)
        return self.encrypt(wrapping_key, params).one_shot(key_bytes)

    def unwrap(self, unwrapping_key: Key, params: Any, wrapped: bytes) -> bytes:
        _aes_key(unwrapping_key, _Role.UNWRAPPING)
        check_part(wrapped)
        try:
            return self.decrypt(unwrapping_key, params).one_shot(wrapped)
        except EncryptedDataLenRange as exc:
            raise WrappedKeyLenRange(exc.message) from None
        except EncryptedDataInvalid as exc:
            raise WrappedKeyInvalid(exc.message) from None


# -- CTR ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class CtrParams:
    counter_bits: int
    cb: bytes

    @property
    def max_blocks(self) -> int:
        """Blocks left before the low ``counter_bits`` of ``cb`` wrap (the last post-increment may)."""
        size = 1 << self.counter_bits
        return size - (int.from_bytes(self.cb, "big") & (size - 1))


class AesCtr(_AesMechanism):
    ckm = CKM.AES_CTR
    capabilities = Capability.ENCRYPT | Capability.DECRYPT
    multipart = True

    def parse_params(self, params: Any) -> CtrParams:
        if isinstance(params, CtrParams):
            return params
        fields = _dict_params(self.ckm, params, {"counter_bits", "cb"}, set())
        bits, cb = fields["counter_bits"], fields["cb"]
        if not _is_int(bits) or not 1 <= bits <= 128:
            raise MechanismParamInvalid("AES_CTR counter_bits must be an integer from 1 to 128")
        if not isinstance(cb, bytes) or len(cb) != BLOCK:
            raise MechanismParamInvalid(f"AES_CTR cb must be a {BLOCK}-byte counter block")
        return CtrParams(bits, cb)

    def encrypt(self, key: Key, params: Any) -> CipherOperation:
        p = self.parse_params(params)
        return _CtrOp(_aes_key(key), p)

    decrypt = encrypt


# -- GCM ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class GcmParams:
    iv: bytes  # empty: the node generates one (encryption only)
    aad: bytes
    tag_len: int  # bytes


class AesGcm(_AesMechanism):
    """GCM with ciphertext||tag output; as a wrap mechanism the caller must give the IV,
    since C_WrapKey has no way to hand a generated one back."""

    ckm = CKM.AES_GCM
    capabilities = Capability.ENCRYPT | Capability.DECRYPT | Capability.WRAP | Capability.UNWRAP
    multipart = True

    def parse_params(self, params: Any) -> GcmParams:
        if isinstance(params, GcmParams):
            return params
        fields = _dict_params(self.ckm, params, {"tag_bits"}, {"iv", "aad"})
        iv = fields.get("iv")
        aad = fields.get("aad")
        tag_bits = fields["tag_bits"]
        if iv is None:
            iv = b""
        if not isinstance(iv, bytes) or (iv and not GCM_IV_MIN <= len(iv) <= GCM_IV_MAX):
            raise MechanismParamInvalid(
                f"AES_GCM iv must be {GCM_IV_MIN} to {GCM_IV_MAX} bytes, or empty/None for a generated one"
            )
        if aad is None:
            aad = b""
        if not isinstance(aad, bytes) or len(aad) > MAX_AAD:
            raise MechanismParamInvalid(f"AES_GCM aad must be bytes, at most {MAX_AAD}")
        if not _is_int(tag_bits) or tag_bits % 8 or not 32 <= tag_bits <= 128:
            raise MechanismParamInvalid("AES_GCM tag_bits must be a multiple of 8 from 32 to 128")
        return GcmParams(iv, aad, tag_bits // 8)

    def encrypt(self, key: Key, params: Any) -> CipherOperation:
        p = self.parse_params(params)
        secret = _aes_key(key)
        if p.iv:
            return _GcmEncryptOp(secret, p, p.iv)
        iv = os.urandom(GCM_GENERATED_IV)
        op = _GcmEncryptOp(secret, p, iv)
        op.iv = iv
        return op

    def decrypt(self, key: Key, params: Any) -> CipherOperation:
        p = self.parse_params(params)
        if not p.iv:
            raise MechanismParamInvalid("AES_GCM decryption needs the iv used to encrypt")
        return _GcmDecryptOp(_aes_key(key), p)

    def _wrap_params(self, params: Any) -> GcmParams:
        p = self.parse_params(params)
        if not p.iv:
            raise MechanismParamInvalid("AES_GCM key wrapping needs a caller-supplied iv")
        return p

    def wrap(self, wrapping_key: Key, params: Any, key_bytes: bytes) -> bytes:
        p = self._wrap_params(params)
        secret = _aes_key(wrapping_key, _Role.WRAPPING)
        check_part(key_bytes)
        return _GcmEncryptOp(secret, p, p.iv).one_shot(key_bytes)

    def unwrap(self, unwrapping_key: Key, params: Any, wrapped: bytes) -> bytes:
        p = self._wrap_params(params)
        secret = _aes_key(unwrapping_key, _Role.UNWRAPPING)
        check_part(wrapped)
        if len(wrapped) < p.tag_len:
            raise WrappedKeyLenRange(f"wrapped key is shorter than its {p.tag_len}-byte tag")
        try:
            return _GcmDecryptOp(secret, p).one_shot(wrapped)
        except EncryptedDataInvalid:
            raise WrappedKeyInvalid("GCM tag of the wrapped key does not verify") from None


# -- RFC 3394 / RFC 5649 key wrap ---------------------------------------------------------


class _KeyWrapBase(_AesMechanism):
    """Single-part only. The 'data' of C_Encrypt and the key bytes of C_WrapKey go through the
    same transform; only the error codes differ between the two calls."""

    capabilities = Capability.ENCRYPT | Capability.DECRYPT | Capability.WRAP | Capability.UNWRAP
    multipart = False
    #: The one IV the mechanism accepts besides "none" (cryptography only does the default).
    default_iv: bytes

    def parse_params(self, params: Any) -> None:
        if params is None or params == b"" or params == {} or params == self.default_iv:
            return None
        raise MechanismParamInvalid(
            f"{self.ckm.name} takes no IV or the default one ({self.default_iv.hex().upper()}); "
            "other IVs are not supported"
        )

    def _plain_len_ok(self, n: int) -> bool:
        raise NotImplementedError

    def _wrapped_len_ok(self, n: int) -> bool:
        raise NotImplementedError

    def _plain_rule(self) -> str:
        raise NotImplementedError

    def _wrapped_rule(self) -> str:
        raise NotImplementedError

    def _do_wrap(self, kek: bytes, data: bytes) -> bytes:
        raise NotImplementedError

    def _do_unwrap(self, kek: bytes, data: bytes) -> bytes:
        raise NotImplementedError

    def _wrap_or_raise(self, kek: bytes, data: bytes, length_error: type[HsmError]) -> bytes:
        if not self._plain_len_ok(len(data)):
            raise length_error(f"{self.ckm.name} input must be {self._plain_rule()}, got {len(data)} bytes")
        return self._do_wrap(kek, data)

    def _unwrap_or_raise(
        self, kek: bytes, data: bytes, length_error: type[HsmError], invalid_error: type[HsmError]
    ) -> bytes:
        if not self._wrapped_len_ok(len(data)):
            raise length_error(f"{self.ckm.name} wrapped data must be {self._wrapped_rule()}, got {len(data)} bytes")
        try:
            return self._do_unwrap(kek, data)
        except keywrap.InvalidUnwrap:
            raise invalid_error(f"{self.ckm.name} integrity check failed") from None

    def encrypt(self, key: Key, params: Any) -> CipherOperation:
        self.parse_params(params)
        kek = _aes_key(key)
        return _OneShotOp(lambda data: self._wrap_or_raise(kek, data, DataLenRange))

    def decrypt(self, key: Key, params: Any) -> CipherOperation:
        self.parse_params(params)
        kek = _aes_key(key)
        return _OneShotOp(
            lambda data: self._unwrap_or_raise(kek, data, EncryptedDataLenRange, EncryptedDataInvalid)
        )

    def wrap(self, wrapping_key: Key, params: Any, key_bytes: bytes) -> bytes:
        self.parse_params(params)
        kek = _aes_key(wrapping_key, _Role.WRAPPING)
        check_part(key_bytes)
        return self._wrap_or_raise(kek, bytes(key_bytes), KeySizeRange)

    def unwrap(self, unwrapping_key: Key, params: Any, wrapped: bytes) -> bytes:
        self.parse_params(params)
        kek = _aes_key(unwrapping_key, _Role.UNWRAPPING)
        check_part(wrapped)
        return self._unwrap_or_raise(kek, bytes(wrapped), WrappedKeyLenRange, WrappedKeyInvalid)


class AesKeyWrap(_KeyWrapBase):
    """RFC 3394: no padding, so input must already be whole 64-bit semiblocks (at least two)."""

    ckm = CKM.AES_KEY_WRAP
    default_iv = KW_DEFAULT_IV

    def _plain_len_ok(self, n: int) -> bool:
        return n >= 16 and n % 8 == 0

    def _wrapped_len_ok(self, n: int) -> bool:
        return n >= 24 and n % 8 == 0

    def _plain_rule(self) -> str:
        return "a multiple of 8 bytes, at least 16"

    def _wrapped_rule(self) -> str:
        return "a multiple of 8 bytes, at least 24"

    def _do_wrap(self, kek: bytes, data: bytes) -> bytes:
        return keywrap.aes_key_wrap(kek, data)

    def _do_unwrap(self, kek: bytes, data: bytes) -> bytes:
        return keywrap.aes_key_unwrap(kek, data)


class AesKeyWrapPad(_KeyWrapBase):
    """RFC 5649 (the 32-bit AIV plus the length makes the 'IV', so only the AIV is accepted)."""

    ckm = CKM.AES_KEY_WRAP_PAD
    default_iv = KWP_DEFAULT_AIV

    def _plain_len_ok(self, n: int) -> bool:
        return n >= 1

    def _wrapped_len_ok(self, n: int) -> bool:
        return n >= 16 and n % 8 == 0

    def _plain_rule(self) -> str:
        return "at least 1 byte"

    def _wrapped_rule(self) -> str:
        return "a multiple of 8 bytes, at least 16"

    def _do_wrap(self, kek: bytes, data: bytes) -> bytes:
        return keywrap.aes_key_wrap_with_padding(kek, data)

    def _do_unwrap(self, kek: bytes, data: bytes) -> bytes:
        return keywrap.aes_key_unwrap_with_padding(kek, data)


# -- CMAC ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class MacParams:
    mac_len: int


class _CmacSignOp(SignOperation):
    def __init__(self, key: bytes, mac_len: int) -> None:
        self._cmac = CMAC(algorithms.AES(key))
        self._mac_len = mac_len

    def update(self, data: bytes) -> None:
        check_part(data)
        self._cmac.update(data)

    def final(self) -> bytes:
        return self._cmac.finalize()[: self._mac_len]


class _CmacVerifyOp(VerifyOperation):
    def __init__(self, key: bytes, mac_len: int) -> None:
        self._cmac = CMAC(algorithms.AES(key))
        self._mac_len = mac_len

    def update(self, data: bytes) -> None:
        check_part(data)
        self._cmac.update(data)

    def final(self, signature: bytes) -> None:
        if not isinstance(signature, (bytes, bytearray, memoryview)):
            raise ArgumentsBad(f"the signature must be bytes, got {type(signature).__name__}")
        if len(signature) != self._mac_len:
            raise SignatureLenRange(f"the MAC is {self._mac_len} bytes, got {len(signature)}")
        # compare_digest: the time taken must not tell how many leading bytes matched.
        if not hmac.compare_digest(self._cmac.finalize()[: self._mac_len], bytes(signature)):
            raise SignatureInvalid("CMAC does not verify")


class AesCmac(_AesMechanism):
    ckm = CKM.AES_CMAC
    capabilities = Capability.SIGN | Capability.VERIFY
    multipart = True

    def _mac_len(self, params: Any) -> int:
        self.parse_params(params)
        return BLOCK

    def sign(self, key: Key, params: Any) -> SignOperation:
        mac_len = self._mac_len(params)
        return _CmacSignOp(_aes_key(key), mac_len)

    def verify(self, key: Key, params: Any) -> VerifyOperation:
        mac_len = self._mac_len(params)
        return _CmacVerifyOp(_aes_key(key), mac_len)


class AesCmacGeneral(AesCmac):
    ckm = CKM.AES_CMAC_GENERAL

    def parse_params(self, params: Any) -> MacParams:
        if isinstance(params, MacParams):
            return params
        fields = _dict_params(self.ckm, params, {"mac_len"}, set())
        mac_len = fields["mac_len"]
        if not _is_int(mac_len) or not 1 <= mac_len <= BLOCK:
            raise MechanismParamInvalid(f"AES_CMAC_GENERAL mac_len must be an integer from 1 to {BLOCK} (bytes)")
        return MacParams(mac_len)

    def _mac_len(self, params: Any) -> int:
        return self.parse_params(params).mac_len


for _mechanism in (
    AesKeyGen(),
    AesEcb(),
    AesCbc(),
    AesCbcPad(),
    AesCtr(),
    AesGcm(),
    AesKeyWrap(),
    AesKeyWrapPad(),
    AesCmac(),
    AesCmacGeneral(),
):
    register(_mechanism)
