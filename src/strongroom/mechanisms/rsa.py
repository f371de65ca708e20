"""RSA: key-pair generation, PKCS#1 v1.5 and PSS signatures, PKCS#1 v1.5 and OAEP encryption and key wrapping.

Every primitive comes from pyca/cryptography. Two of its features let this module cover
the raw PKCS#11 mechanisms without writing RSA code:

* ``CKM_RSA_PKCS`` signing takes caller-built input (usually a DigestInfo). It is signed
  with ``utils.NoDigestInfo()`` (cryptography >= 47), which pads the bytes as they are,
  and verified with ``recover_data_from_signature(..., NoDigestInfo())`` plus a
  constant-time comparison.
* ``CKM_RSA_PKCS_PSS`` (caller-hashed) signs and verifies through ``utils.Prehashed``.

``CKM_RSA_X_509`` (raw RSA) is not offered: cryptography has no unpadded RSA operation
and this project does no modular arithmetic of its own.

PKCS#1 v1.5 *decryption* is the one place where cryptography's behaviour is visible to
callers: OpenSSL 3.2 and later use implicit rejection (the Marvin-attack mitigation), so a
ciphertext with bad padding decrypts to a pseudo-random message derived from the key and
the ciphertext instead of failing. Only a ciphertext that is not an RSA value at all
(an integer >= n) fails, with CKR_ENCRYPTED_DATA_INVALID. This is deliberate: a padding
error would be an oracle. Prefer OAEP.

Key sizes: 2048 to 4096 bits for everything that uses a private key and for encryption
and wrapping; verification also accepts public keys from 1024 bits, so that signatures
made by older keys can still be checked (NIST SP 800-131A "legacy use").
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeGuard

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.asymmetric import rsa as crypto_rsa
from cryptography.hazmat.primitives.asymmetric.padding import AsymmetricPadding
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey, RSAPublicKey
from cryptography.hazmat.primitives.asymmetric.utils import NoDigestInfo, Prehashed

from strongroom.constants import CKA, CKK, CKM, CKZ

# The attribute forms and the public-key sizes live in strongroom.encoding.rsa; the object layer
# and the tests still name key_attributes and public_key_from_attributes through here.
from strongroom.encoding.rsa import LEGACY_VERIFY_MIN_BITS, MAX_BITS
from strongroom.encoding.rsa import key_attributes as key_attributes
from strongroom.encoding.rsa import public_key_from_attributes as public_key_from_attributes
from strongroom.errors import (
    CKR,
    AttributeValueInvalid,
    DataLenRange,
    DeviceError,
    EncryptedDataInvalid,
    EncryptedDataLenRange,
    HsmError,
    KeySizeRange,
    KeyTypeInconsistent,
    MechanismParamInvalid,
    OperationNotInitialized,
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
    GeneratedPair,
    Key,
    Mechanism,
    SignOperation,
    VerifyOperation,
    check_part,
    legacy_allowed,
    register,
)
from strongroom.mechanisms.hashes import hash_for, mgf1_for

MIN_BITS = 2048
#: RSA-1024, under the cluster policy legacy_algorithms = on (generation and use).
LEGACY_MIN_BITS = 1024
#: Generated moduli come in steps of this many bits (2048, 2304, … 4096).
GENERATION_STEP_BITS = 256
#: The only public exponent we generate: cryptography offers 3 and 65537, and 3 is too weak.
F4 = 65537

_RSA = frozenset({CKK.RSA})
_PAIRWISE_PROBE = b"strongroom RSA pairwise consistency test"


# -- key checks ------------------------------------------------------------------------


@dataclass(frozen=True)
class _KeyRole:
    """Which CKR codes a wrong key raises: C_WrapKey/C_UnwrapKey name their own."""

    type_error: Callable[[str], HsmError]
    size_error: Callable[[str], HsmError]


_OPERATION_KEY = _KeyRole(KeyTypeInconsistent, KeySizeRange)
_WRAPPING_KEY = _KeyRole(
    lambda m: HsmError(m, CKR.WRAPPING_KEY_TYPE_INCONSISTENT), lambda m: HsmError(m, CKR.WRAPPING_KEY_SIZE_RANGE)
)
_UNWRAPPING_KEY = _KeyRole(
    lambda m: HsmError(m, CKR.UNWRAPPING_KEY_TYPE_INCONSISTENT),
    lambda m: HsmError(m, CKR.UNWRAPPING_KEY_SIZE_RANGE),
)


def min_bits() -> int:
    """The smallest RSA key made or used: 2048 bits, 1024 under the cluster policy legacy_algorithms = on."""
    return LEGACY_MIN_BITS if legacy_allowed() else MIN_BITS


def _check_size(bits: int, role: _KeyRole, least: int | None = None) -> None:
    least = min(least, min_bits()) if least is not None else min_bits()
    if not least <= bits <= MAX_BITS:
        raise role.size_error(f"RSA key of {bits} bits is outside {least}..{MAX_BITS} bits")


def _private_key(key: Key, role: _KeyRole = _OPERATION_KEY) -> RSAPrivateKey:
    if key.key_type != CKK.RSA or not isinstance(key.private, RSAPrivateKey):
        raise role.type_error(f"this operation needs an RSA private key, not a {_describe(key)}")
    _check_size(key.private.key_size, role)
    return key.private


def _public_key(key: Key, role: _KeyRole = _OPERATION_KEY, least: int | None = None) -> RSAPublicKey:
    if key.key_type == CKK.RSA and isinstance(key.public, RSAPublicKey):
        public = key.public
    elif key.key_type == CKK.RSA and isinstance(key.private, RSAPrivateKey):
        public = key.private.public_key()
    else:
        raise role.type_error(f"this operation needs an RSA key, not a {_describe(key)}")
    _check_size(public.key_size, role, least)
    return public


def _describe(key: Key) -> str:
    return f"{getattr(key.key_type, 'name', key.key_type)} {getattr(key.object_class, 'name', key.object_class)}"


def _modulus_len(key: RSAPrivateKey | RSAPublicKey) -> int:
    return (key.key_size + 7) // 8


# -- parameters ------------------------------------------------------------------------


@dataclass(frozen=True)
class PssParams:
    hash: hashes.HashAlgorithm
    mgf: hashes.HashAlgorithm
    salt_len: int

    def padding(self) -> padding.PSS:
        return padding.PSS(mgf=padding.MGF1(self.mgf), salt_length=self.salt_len)


@dataclass(frozen=True)
class OaepParams:
    hash: hashes.HashAlgorithm
    mgf: hashes.HashAlgorithm
    label: bytes | None

    def padding(self) -> padding.OAEP:
        return padding.OAEP(mgf=padding.MGF1(self.mgf), algorithm=self.hash, label=self.label)

    def max_message_len(self, key: RSAPublicKey | RSAPrivateKey) -> int:
        """RFC 8017 7.1.1: mLen <= k - 2hLen - 2."""
        return _modulus_len(key) - 2 * self.hash.digest_size - 2


def _param_map(ckm: CKM, params: Any, required: tuple[str, ...], optional: tuple[str, ...] = ()) -> dict[str, Any]:
    shape = "{" + ", ".join(required + optional) + "}"
    if not isinstance(params, dict):
        raise MechanismParamInvalid(f"{ckm.name} expects a map {shape}, got {type(params).__name__}")
    unknown = sorted(str(k) for k in params if k not in required and k not in optional)
    if unknown:
        raise MechanismParamInvalid(f"{ckm.name} parameters: unknown field(s) {', '.join(unknown)}; expected {shape}")
    missing = [k for k in required if k not in params]
    if missing:
        raise MechanismParamInvalid(f"{ckm.name} parameters: missing {', '.join(missing)}; expected {shape}")
    return params


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def parse_pss_params(ckm: CKM, params: Any) -> PssParams:
    fields = _param_map(ckm, params, ("hash", "mgf", "salt_len"))
    salt_len = fields["salt_len"]
    if not _is_int(salt_len) or salt_len < 0:
        raise MechanismParamInvalid(f"{ckm.name}: salt_len must be a non-negative integer, got {salt_len!r}")
    return PssParams(hash_for(fields["hash"]), mgf1_for(fields["mgf"]), salt_len)


def parse_oaep_params(ckm: CKM, params: Any) -> OaepParams:
    fields = _param_map(ckm, params, ("hash", "mgf"), ("source", "source_data"))
    source = fields.get("source", 0)
    data = fields.get("source_data")
    if not _is_int(source) or source not in (0, CKZ.DATA_SPECIFIED):
        raise MechanismParamInvalid(f"{ckm.name}: source must be 0 or CKZ_DATA_SPECIFIED, got {source!r}")
    if data is not None and not isinstance(data, bytes):
        raise MechanismParamInvalid(f"{ckm.name}: source_data must be bytes, got {type(data).__name__}")
    if data and source != CKZ.DATA_SPECIFIED:
        raise MechanismParamInvalid(f"{ckm.name}: source_data needs source = CKZ_DATA_SPECIFIED")
    if data is not None and len(data) > MAX_DATA:
        raise MechanismParamInvalid(f"{ckm.name}: source_data is longer than {MAX_DATA} bytes")
    # An empty label and no label encode identically (lHash = Hash("")).
    return OaepParams(hash_for(fields["hash"]), mgf1_for(fields["mgf"]), data or None)


def _check_salt(ckm: CKM, params: PssParams, key: RSAPrivateKey | RSAPublicKey) -> None:
    limit = padding.calculate_max_pss_salt_length(key, params.hash)
    if params.salt_len > limit:
        raise MechanismParamInvalid(
            f"{ckm.name}: salt_len {params.salt_len} is too long; a {key.key_size}-bit key with "
            f"{params.hash.name} allows at most {limit}"
        )


# -- operations ------------------------------------------------------------------------


class _Finishable:
    """A finished or failed operation refuses further use instead of reaching a spent library object."""

    _done = False

    def _begin(self) -> None:
        if self._done:
            raise OperationNotInitialized("this operation has already finished")

    def _finish(self) -> None:
        self._done = True


def _sign(private: RSAPrivateKey, data: bytes, pad: AsymmetricPadding, algorithm: Any) -> bytes:
    try:
        return private.sign(data, pad, algorithm)
    except ValueError as exc:  # every length is checked before; this is not expected
        raise HsmError(f"RSA signing failed: {exc}", CKR.FUNCTION_FAILED) from None


def _check_signature_len(public: RSAPublicKey, signature: bytes) -> None:
    if len(signature) != _modulus_len(public):
        raise SignatureLenRange(
            f"an RSA signature under a {public.key_size}-bit key is {_modulus_len(public)} bytes, not {len(signature)}"
        )


def _verify(public: RSAPublicKey, signature: bytes, data: bytes, pad: AsymmetricPadding, algorithm: Any) -> None:
    _check_signature_len(public, signature)
    try:
        public.verify(signature, data, pad, algorithm)
    except (InvalidSignature, ValueError):
        raise SignatureInvalid("the signature does not verify") from None


class _HashSign(_Finishable, SignOperation):
    """SHA*_RSA_PKCS and SHA*_RSA_PKCS_PSS: hash in parts, then sign the digest."""

    def __init__(self, private: RSAPrivateKey, pad: AsymmetricPadding, algorithm: hashes.HashAlgorithm) -> None:
        self._private, self._pad, self._algorithm = private, pad, algorithm
        self._hash = hashes.Hash(algorithm)

    def update(self, data: bytes) -> None:
        self._begin()
        check_part(data)
        self._hash.update(data)

    def final(self) -> bytes:
        self._begin()
        self._finish()
        return _sign(self._private, self._hash.finalize(), self._pad, Prehashed(self._algorithm))


class _HashVerify(_Finishable, VerifyOperation):
    def __init__(self, public: RSAPublicKey, pad: AsymmetricPadding, algorithm: hashes.HashAlgorithm) -> None:
        self._public, self._pad, self._algorithm = public, pad, algorithm
        self._hash = hashes.Hash(algorithm)

    def update(self, data: bytes) -> None:
        self._begin()
        check_part(data)
        self._hash.update(data)

    def final(self, signature: bytes) -> None:
        self._begin()
        self._finish()
        _verify(self._public, signature, self._hash.finalize(), self._pad, Prehashed(self._algorithm))


@dataclass(frozen=True)
class _InputLength:
    """What single-part input a raw mechanism takes: up to k-11 bytes, or exactly one digest."""

    low: int
    high: int

    def check(self, data: bytes) -> None:
        if not self.low <= len(data) <= self.high:
            expected = f"exactly {self.high}" if self.low == self.high else f"at most {self.high}"
            raise DataLenRange(f"input must be {expected} bytes, not {len(data)}")


class _OneShotSign(_Finishable, SignOperation):
    """CKM_RSA_PKCS and CKM_RSA_PKCS_PSS: the caller supplies the (hashed or encoded) input whole."""

    def __init__(self, private: RSAPrivateKey, pad: AsymmetricPadding, algorithm: Any, length: _InputLength) -> None:
        self._private, self._pad, self._algorithm, self._length = private, pad, algorithm, length

    def one_shot(self, data: bytes) -> bytes:
        self._begin()
        self._finish()
        self._length.check(data)
        return _sign(self._private, data, self._pad, self._algorithm)


class _PrehashedVerify(_Finishable, VerifyOperation):
    def __init__(self, public: RSAPublicKey, pad: AsymmetricPadding, algorithm: hashes.HashAlgorithm) -> None:
        self._public, self._pad, self._algorithm = public, pad, algorithm

    def one_shot(self, data: bytes, signature: bytes) -> None:
        self._begin()
        self._finish()
        _InputLength(self._algorithm.digest_size, self._algorithm.digest_size).check(data)
        _verify(self._public, signature, data, self._pad, Prehashed(self._algorithm))


class _RawPkcs1Verify(_Finishable, VerifyOperation):
    """CKM_RSA_PKCS verification: recover the signed bytes and compare them in constant time."""

    def __init__(self, public: RSAPublicKey) -> None:
        self._public = public

    def one_shot(self, data: bytes, signature: bytes) -> None:
        self._begin()
        self._finish()
        _InputLength(0, _modulus_len(self._public) - 11).check(data)
        _check_signature_len(self._public, signature)
        try:
            recovered = self._public.recover_data_from_signature(signature, padding.PKCS1v15(), NoDigestInfo())
        except (InvalidSignature, ValueError):
            raise SignatureInvalid("the signature does not verify") from None
        if not hmac.compare_digest(recovered, data):
            raise SignatureInvalid("the signature does not verify")


class _Encrypt(_Finishable, CipherOperation):
    def __init__(self, public: RSAPublicKey, pad: AsymmetricPadding, max_len: int) -> None:
        self._public, self._pad, self._max_len = public, pad, max_len

    def one_shot(self, data: bytes) -> bytes:
        self._begin()
        self._finish()
        _InputLength(0, self._max_len).check(data)
        return _encrypt(self._public, self._pad, data)


class _Decrypt(_Finishable, CipherOperation):
    def __init__(self, private: RSAPrivateKey, pad: AsymmetricPadding) -> None:
        self._private, self._pad = private, pad

    def one_shot(self, data: bytes) -> bytes:
        self._begin()
        self._finish()
        if len(data) != _modulus_len(self._private):
            raise EncryptedDataLenRange(
                f"RSA ciphertext under a {self._private.key_size}-bit key is {_modulus_len(self._private)} bytes, "
                f"not {len(data)}"
            )
        try:
            return self._private.decrypt(data, self._pad)
        except ValueError:
            # One message for every cause: the reason for a failure must not be an oracle.
            raise EncryptedDataInvalid("decryption failed") from None


def _encrypt(public: RSAPublicKey, pad: AsymmetricPadding, data: bytes) -> bytes:
    try:
        return public.encrypt(data, pad)
    except ValueError as exc:  # lengths are checked before; this is not expected
        raise HsmError(f"RSA encryption failed: {exc}", CKR.FUNCTION_FAILED) from None


def _wrap(public: RSAPublicKey, pad: AsymmetricPadding, max_len: int, key_bytes: bytes) -> bytes:
    if len(key_bytes) > max_len:
        # C_WrapKey names CKR_KEY_SIZE_RANGE for a key the mechanism cannot carry (SoftHSMv2 agrees).
        raise KeySizeRange(f"a {public.key_size}-bit RSA key can wrap at most {max_len} bytes, not {len(key_bytes)}")
    return _encrypt(public, pad, key_bytes)


def _unwrap(unwrapping_key: Key, pad: AsymmetricPadding, wrapped: bytes) -> bytes:
    private = _private_key(unwrapping_key, _UNWRAPPING_KEY)
    if len(wrapped) != _modulus_len(private):
        raise WrappedKeyLenRange(
            f"a key wrapped under a {private.key_size}-bit RSA key is {_modulus_len(private)} bytes, not {len(wrapped)}"
        )
    try:
        return private.decrypt(wrapped, pad)
    except ValueError:
        raise WrappedKeyInvalid("the wrapped key does not decrypt") from None


# -- mechanisms ------------------------------------------------------------------------


class _RsaMechanism(Mechanism):
    key_types = _RSA
    min_key_size = MIN_BITS
    max_key_size = MAX_BITS
    legacy_min_key_size = LEGACY_MIN_BITS


class RsaKeyPairGen(_RsaMechanism):
    """CKM_RSA_PKCS_KEY_PAIR_GEN with a pair-wise consistency test on every new pair."""

    ckm = CKM.RSA_PKCS_KEY_PAIR_GEN
    capabilities = Capability.GENERATE_KEY_PAIR

    def generate_key_pair(
        self, params: Any, public_template: dict[int, Any], private_template: dict[int, Any]
    ) -> GeneratedPair:
        self.parse_params(params)
        bits = _requested_bits(public_template)
        _check_requested_exponent(public_template)
        private = _new_private_key(bits)
        public_attributes = key_attributes(private)
        _pairwise_consistency_test(private, public_key_from_attributes(public_attributes))
        # CKA_MODULUS_BITS belongs to the public key object only (PKCS#11 2.1.2 vs 2.1.3).
        private_attributes: dict[int, Any] = {a: public_attributes[a] for a in (CKA.MODULUS, CKA.PUBLIC_EXPONENT)}
        return GeneratedPair(
            private=private,
            key_type=CKK.RSA,
            public_attributes=public_attributes,
            private_attributes=private_attributes,
        )


def _requested_bits(public_template: dict[int, Any]) -> int:
    if CKA.MODULUS_BITS not in public_template:
        raise TemplateIncomplete("RSA key generation needs CKA_MODULUS_BITS in the public key template")
    bits = public_template[CKA.MODULUS_BITS]
    if not _is_int(bits):
        raise AttributeValueInvalid(f"CKA_MODULUS_BITS must be an integer, got {type(bits).__name__}")
    least = min_bits()
    if not least <= bits <= MAX_BITS or bits % GENERATION_STEP_BITS:
        raise KeySizeRange(
            f"RSA keys are generated with {least}..{MAX_BITS} bits in steps of {GENERATION_STEP_BITS}, not {bits}"
            + ("" if least < MIN_BITS or bits >= MIN_BITS else " (1024 needs the policy legacy_algorithms = on)")
        )
    return bits


def _check_requested_exponent(public_template: dict[int, Any]) -> None:
    if CKA.PUBLIC_EXPONENT not in public_template:
        return
    value = public_template[CKA.PUBLIC_EXPONENT]
    if not isinstance(value, bytes) or not value:
        raise AttributeValueInvalid("CKA_PUBLIC_EXPONENT must be a non-empty big-endian byte string")
    exponent = int.from_bytes(value, "big")
    if exponent == 3:
        raise AttributeValueInvalid("public exponent 3 is too weak; use 65537 (0x010001)")
    if exponent != F4:
        raise AttributeValueInvalid(f"only public exponent 65537 (0x010001) is supported, not {exponent}")


def _new_private_key(bits: int) -> RSAPrivateKey:
    """Separate so tests can substitute a broken generator and watch the consistency test fail."""
    return crypto_rsa.generate_private_key(public_exponent=F4, key_size=bits)


def _pairwise_consistency_test(private: RSAPrivateKey, public: RSAPublicKey) -> None:
    """FIPS 140 pair-wise test: sign/verify and encrypt/decrypt a probe with the two halves as stored."""
    pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)
    oaep = padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)
    try:
        signature = private.sign(_PAIRWISE_PROBE, pss, hashes.SHA256())
        public.verify(signature, _PAIRWISE_PROBE, pss, hashes.SHA256())
        ciphertext = public.encrypt(_PAIRWISE_PROBE, oaep)
        if private.decrypt(ciphertext, oaep) != _PAIRWISE_PROBE:
            raise ValueError("decryption did not return the probe")
    except (InvalidSignature, ValueError) as exc:
        raise DeviceError(f"RSA pair-wise consistency test failed: {exc or type(exc).__name__}") from None


class RsaPkcs(_RsaMechanism):
    """CKM_RSA_PKCS: PKCS#1 v1.5 of caller-built input (sign), encryption and key wrapping; single part."""

    ckm = CKM.RSA_PKCS
    capabilities = (
        Capability.ENCRYPT
        | Capability.DECRYPT
        | Capability.SIGN
        | Capability.VERIFY
        | Capability.WRAP
        | Capability.UNWRAP
    )

    def sign(self, key: Key, params: Any) -> SignOperation:
        self.parse_params(params)
        private = _private_key(key)
        return _OneShotSign(private, padding.PKCS1v15(), NoDigestInfo(), _InputLength(0, _modulus_len(private) - 11))

    def verify(self, key: Key, params: Any) -> VerifyOperation:
        self.parse_params(params)
        return _RawPkcs1Verify(_public_key(key, least=LEGACY_VERIFY_MIN_BITS))

    def encrypt(self, key: Key, params: Any) -> CipherOperation:
        self.parse_params(params)
        public = _public_key(key)
        return _Encrypt(public, padding.PKCS1v15(), _modulus_len(public) - 11)

    def decrypt(self, key: Key, params: Any) -> CipherOperation:
        self.parse_params(params)
        return _Decrypt(_private_key(key), padding.PKCS1v15())

    def wrap(self, wrapping_key: Key, params: Any, key_bytes: bytes) -> bytes:
        self.parse_params(params)
        public = _public_key(wrapping_key, _WRAPPING_KEY)
        return _wrap(public, padding.PKCS1v15(), _modulus_len(public) - 11, key_bytes)

    def unwrap(self, unwrapping_key: Key, params: Any, wrapped: bytes) -> bytes:
        self.parse_params(params)
        return _unwrap(unwrapping_key, padding.PKCS1v15(), wrapped)


#: The hashes of the CKM_SHA*_RSA_PKCS(_PSS) mechanisms.
_SignatureHash = type[hashes.SHA1 | hashes.SHA224 | hashes.SHA256 | hashes.SHA384 | hashes.SHA512]


class RsaPkcsWithHash(_RsaMechanism):
    """CKM_SHA*_RSA_PKCS: hash inside, PKCS#1 v1.5 signature with DigestInfo; multi-part."""

    capabilities = Capability.SIGN | Capability.VERIFY
    multipart = True

    def __init__(self, ckm: CKM, algorithm: _SignatureHash) -> None:
        self.ckm = ckm
        self._algorithm = algorithm

    def sign(self, key: Key, params: Any) -> SignOperation:
        self.parse_params(params)
        return _HashSign(_private_key(key), padding.PKCS1v15(), self._algorithm())

    def verify(self, key: Key, params: Any) -> VerifyOperation:
        self.parse_params(params)
        return _HashVerify(_public_key(key, least=LEGACY_VERIFY_MIN_BITS), padding.PKCS1v15(), self._algorithm())


class RsaPss(_RsaMechanism):
    """CKM_RSA_PKCS_PSS: the caller hashes; the input is exactly one digest of params' hash; single part."""

    ckm = CKM.RSA_PKCS_PSS
    capabilities = Capability.SIGN | Capability.VERIFY

    def parse_params(self, params: Any) -> PssParams:
        if isinstance(params, PssParams):  # already parsed by the layer above
            return params
        return parse_pss_params(self.ckm, params)

    def sign(self, key: Key, params: Any) -> SignOperation:
        pss = self.parse_params(params)
        private = _private_key(key)
        _check_salt(self.ckm, pss, private)
        size = pss.hash.digest_size
        return _OneShotSign(private, pss.padding(), Prehashed(pss.hash), _InputLength(size, size))

    def verify(self, key: Key, params: Any) -> VerifyOperation:
        pss = self.parse_params(params)
        public = _public_key(key, least=LEGACY_VERIFY_MIN_BITS)
        _check_salt(self.ckm, pss, public)
        return _PrehashedVerify(public, pss.padding(), pss.hash)


class RsaPssWithHash(RsaPss):
    """CKM_SHA*_RSA_PKCS_PSS: hash inside (params' hash must be the mechanism's); multi-part."""

    multipart = True

    def __init__(self, ckm: CKM, algorithm: _SignatureHash) -> None:
        self.ckm = ckm
        self._algorithm = algorithm

    def parse_params(self, params: Any) -> PssParams:
        pss = super().parse_params(params)
        if not isinstance(pss.hash, self._algorithm):
            raise MechanismParamInvalid(
                f"{self.ckm.name}: params hash must be {self._algorithm.name}, not {pss.hash.name}"
            )
        return pss

    def sign(self, key: Key, params: Any) -> SignOperation:
        pss = self.parse_params(params)
        private = _private_key(key)
        _check_salt(self.ckm, pss, private)
        return _HashSign(private, pss.padding(), pss.hash)

    def verify(self, key: Key, params: Any) -> VerifyOperation:
        pss = self.parse_params(params)
        public = _public_key(key, least=LEGACY_VERIFY_MIN_BITS)
        _check_salt(self.ckm, pss, public)
        return _HashVerify(public, pss.padding(), pss.hash)


class RsaOaep(_RsaMechanism):
    """CKM_RSA_PKCS_OAEP: encryption and key wrapping; single part."""

    ckm = CKM.RSA_PKCS_OAEP
    capabilities = Capability.ENCRYPT | Capability.DECRYPT | Capability.WRAP | Capability.UNWRAP

    def parse_params(self, params: Any) -> OaepParams:
        if isinstance(params, OaepParams):  # already parsed by the layer above
            return params
        return parse_oaep_params(self.ckm, params)

    def encrypt(self, key: Key, params: Any) -> CipherOperation:
        oaep = self.parse_params(params)
        public = _public_key(key)
        return _Encrypt(public, oaep.padding(), oaep.max_message_len(public))

    def decrypt(self, key: Key, params: Any) -> CipherOperation:
        oaep = self.parse_params(params)
        return _Decrypt(_private_key(key), oaep.padding())

    def wrap(self, wrapping_key: Key, params: Any, key_bytes: bytes) -> bytes:
        oaep = self.parse_params(params)
        public = _public_key(wrapping_key, _WRAPPING_KEY)
        return _wrap(public, oaep.padding(), oaep.max_message_len(public), key_bytes)

    def unwrap(self, unwrapping_key: Key, params: Any, wrapped: bytes) -> bytes:
        oaep = self.parse_params(params)
        return _unwrap(unwrapping_key, oaep.padding(), wrapped)


_HASHED_PKCS1: dict[CKM, _SignatureHash] = {
    CKM.SHA1_RSA_PKCS: hashes.SHA1,
    CKM.SHA224_RSA_PKCS: hashes.SHA224,
    CKM.SHA256_RSA_PKCS: hashes.SHA256,
    CKM.SHA384_RSA_PKCS: hashes.SHA384,
    CKM.SHA512_RSA_PKCS: hashes.SHA512,
}
_HASHED_PSS: dict[CKM, _SignatureHash] = {
    CKM.SHA1_RSA_PKCS_PSS: hashes.SHA1,
    CKM.SHA224_RSA_PKCS_PSS: hashes.SHA224,
    CKM.SHA256_RSA_PKCS_PSS: hashes.SHA256,
    CKM.SHA384_RSA_PKCS_PSS: hashes.SHA384,
    CKM.SHA512_RSA_PKCS_PSS: hashes.SHA512,
}

register(RsaKeyPairGen())
register(RsaPkcs())
register(RsaPss())
register(RsaOaep())
for _ckm, _algorithm in _HASHED_PKCS1.items():
    register(RsaPkcsWithHash(_ckm, _algorithm))
for _ckm, _algorithm in _HASHED_PSS.items():
    register(RsaPssWithHash(_ckm, _algorithm))
del _ckm, _algorithm
