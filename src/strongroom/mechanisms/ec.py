"""Elliptic-curve keys on P-256, P-384, P-521 and secp256k1: key pairs, ECDSA, ECDH; and P-192 under the
cluster policy legacy_algorithms = on (:func:`strongroom.mechanisms.base.legacy_allowed`).

Mechanisms: CKM_EC_KEY_PAIR_GEN (= CKM_ECDSA_KEY_PAIR_GEN), CKM_ECDSA (the caller hashes),
CKM_ECDSA_SHA1/SHA224/SHA256/SHA384/SHA512 (the node hashes, in parts) and CKM_ECDH1_DERIVE.

The encodings (``CKA_EC_PARAMS`` as a namedCurve OID or PrintableString name, ``CKA_EC_POINT``
bare or DER-wrapped, signatures as ``r || s``) are :mod:`strongroom.encoding.ec`'s: the KMS
gateway and the CLI describe keys the same way without importing the node's mechanisms.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, utils
from cryptography.hazmat.primitives.kdf.x963kdf import X963KDF

from strongroom.constants import CKA, CKD, CKK, CKM

# The encodings (curves, points, attributes) live in strongroom.encoding.ec; the object layer and
# the tests still name params_for_curve, key_attributes and public_key_from_attributes through here.
from strongroom.encoding.der import as_bytes
from strongroom.encoding.ec import (
    LEGACY_MIN_BITS,
    MAX_BITS,
    MIN_BITS,
    check_curve,
    curve_from_params,
    decode_point,
    encode_point,
    order_len,
    signature_from_der,
    signature_to_der,
)
from strongroom.encoding.ec import key_attributes as key_attributes
from strongroom.encoding.ec import params_for_curve as params_for_curve
from strongroom.encoding.ec import public_key_from_attributes as public_key_from_attributes
from strongroom.errors import (
    CKR,
    ArgumentsBad,
    CurveNotSupported,
    DataLenRange,
    DeviceError,
    HsmError,
    KeySizeRange,
    KeyTypeInconsistent,
    MechanismParamInvalid,
    OperationNotInitialized,
    PublicKeyInvalid,
    SignatureInvalid,
    SignatureLenRange,
    TemplateIncomplete,
    TemplateInconsistent,
)
from strongroom.mechanisms.base import (
    Capability,
    GeneratedPair,
    Key,
    Mechanism,
    SignOperation,
    Stream,
    VerifyOperation,
    check_part,
    legacy_allowed,
    register,
)
from strongroom.mechanisms.hashes import HASHES

# -- keys handed to the mechanisms ---------------------------------------------------------


def is_legacy_curve(curve: ec.EllipticCurve) -> bool:
    """P-192: offered only under the cluster policy legacy_algorithms = on."""
    return curve.name == ec.SECP192R1.name


def _check_policy(curve: ec.EllipticCurve) -> None:
    if is_legacy_curve(curve) and not legacy_allowed():
        raise KeySizeRange("keys on curve P-192 need the cluster policy legacy_algorithms = on")


def _private(key: Key, what: str) -> ec.EllipticCurvePrivateKey:
    key.require_type(CKK.EC)
    if not isinstance(key.private, ec.EllipticCurvePrivateKey):
        raise KeyTypeInconsistent(f"{what} needs an EC private key")
    check_curve(key.private.curve)
    _check_policy(key.private.curve)
    return key.private


def _public(key: Key, what: str) -> ec.EllipticCurvePublicKey:
    key.require_type(CKK.EC)
    if isinstance(key.public, ec.EllipticCurvePublicKey):
        public = key.public
    elif isinstance(key.private, ec.EllipticCurvePrivateKey):
        public = key.private.public_key()
    else:
        raise KeyTypeInconsistent(f"{what} needs an EC public key")
    check_curve(public.curve)
    _check_policy(public.curve)
    return public


# -- key pair generation -------------------------------------------------------------------

_PROBE = b"strongroom pairwise consistency test"


def pairwise_test(private: ec.EllipticCurvePrivateKey, public: ec.EllipticCurvePublicKey) -> None:
    """FIPS 140 pairwise consistency test: a fresh pair must sign and verify."""
    try:
        signature = private.sign(_PROBE, ec.ECDSA(hashes.SHA256()))
        public.verify(signature, _PROBE, ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, ValueError, UnsupportedAlgorithm):
        raise DeviceError("EC key pair failed its pairwise consistency test") from None


class EcKeyPairGen(Mechanism):
    ckm = CKM.EC_KEY_PAIR_GEN
    capabilities = Capability.GENERATE_KEY_PAIR
    key_types = frozenset({CKK.EC})
    min_key_size = MIN_BITS
    max_key_size = MAX_BITS
    legacy_min_key_size = LEGACY_MIN_BITS

    def generate_key_pair(
        self, params: Any, public_template: dict[int, Any], private_template: dict[int, Any]
    ) -> GeneratedPair:
        self.parse_params(params)
        if CKA.EC_PARAMS not in public_template:
            raise TemplateIncomplete("the public key template needs CKA_EC_PARAMS to choose the curve")
        ec_params = public_template[CKA.EC_PARAMS]
        curve = curve_from_params(ec_params)
        if is_legacy_curve(curve) and not legacy_allowed():
            raise CurveNotSupported("curve P-192 needs the cluster policy legacy_algorithms = on")
        # PKCS#11 puts the curve in the public template; a private template that names
        # another curve contradicts it (the same curve in another encoding is fine).
        if CKA.EC_PARAMS in private_template:
            if curve_from_params(private_template[CKA.EC_PARAMS]).name != curve.name:
                raise TemplateInconsistent("the public and private templates name different curves")
        private = ec.generate_private_key(curve)
        public = private.public_key()
        pairwise_test(private, public)
        # Keep the caller's encoding of CKA_EC_PARAMS: it is what they set on the objects.
        stored = bytes(ec_params)
        return GeneratedPair(
            private,
            CKK.EC,
            public_attributes={CKA.EC_PARAMS: stored, CKA.EC_POINT: encode_point(public)},
            private_attributes={CKA.EC_PARAMS: stored},
        )


# -- ECDSA ----------------------------------------------------------------------------------


def _raw_digest(curve: ec.EllipticCurve, data: bytes) -> tuple[bytes, hashes.HashAlgorithm]:
    """CKM_ECDSA input as (digest, algorithm) for cryptography's Prehashed.

    Accepted: 1..MAX_DATA bytes. PKCS#11 takes data of any length and FIPS 186-5 §6.4.1
    uses the leftmost min(N, 8*len) bits, N the bit length of the order n. We cut to nLen
    bytes here; OpenSSL removes the remaining low bits itself when 8*nLen > N (P-521: it
    keeps the leftmost 521 of 528 bits), so the integer signed is exactly FIPS's e.
    Shorter inputs are used whole, as their integer value. Empty input is refused: no
    digest is zero bytes long, so it can only be a caller's mistake.

    Prehashed only checks that the digest is ``algorithm.digest_size`` bytes long: an
    ECDSA signature does not bind the hash identity (unlike RSA's DigestInfo) and
    OpenSSL signs the bytes it is given. A SHA-2 object cannot stand for every length
    (P-521 needs 65 or 66 bytes, and zero-padding to a SHA-2 size would change e once
    8*size > N), so SHAKE256 with digest_size = len(digest) serves as the length carrier.
    """
    if not data:
        raise DataLenRange("CKM_ECDSA needs a digest of at least 1 byte")
    digest = data[: order_len(curve)]
    return digest, hashes.SHAKE256(digest_size=len(digest))


def _sign_digest(private: ec.EllipticCurvePrivateKey, digest: bytes, algorithm: hashes.HashAlgorithm) -> bytes:
    try:
        der = private.sign(digest, ec.ECDSA(utils.Prehashed(algorithm)))
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise HsmError(f"ECDSA signing failed: {exc}", CKR.FUNCTION_FAILED) from None
    raw = signature_from_der(der, private.curve)
    if raw is None:  # the library's own signature is always one
        raise HsmError("ECDSA signing produced no r || s", CKR.FUNCTION_FAILED)
    return raw


def _verify_digest(
    public: ec.EllipticCurvePublicKey, digest: bytes, algorithm: hashes.HashAlgorithm, signature: object
) -> None:
    raw = as_bytes(signature)
    if raw is None:
        raise ArgumentsBad(f"signature must be bytes, not {type(signature).__name__}")
    size = order_len(public.curve)
    # PKCS#11 v2.40 §2.3.1: r and s of equal length, at most nLen each; shorter (but
    # even-length) signatures from older encoders must be accepted.
    if not raw or len(raw) % 2 or len(raw) > 2 * size:
        raise SignatureLenRange(f"an ECDSA signature on {public.curve.name} is r||s of {2 * size} bytes")
    try:
        public.verify(signature_to_der(raw), digest, ec.ECDSA(utils.Prehashed(algorithm)))
    except (InvalidSignature, ValueError, UnsupportedAlgorithm):
        raise SignatureInvalid("the ECDSA signature does not verify") from None


class _HashStream(Stream):
    """The running hash of ECDSA_SHA*; ends itself after final or a failed update."""

    def __init__(self, algorithm: hashes.HashAlgorithm) -> None:
        super().__init__(hashes.Hash(algorithm), "ECDSA")
        self.algorithm = algorithm


class _HashSign(SignOperation):
    def __init__(self, private: ec.EllipticCurvePrivateKey, stream: _HashStream) -> None:
        self._private = private
        self._stream = stream

    def update(self, data: bytes) -> None:
        self._stream.update(data)

    def final(self) -> bytes:
        return _sign_digest(self._private, self._stream.finish(), self._stream.algorithm)


class _HashVerify(VerifyOperation):
    def __init__(self, public: ec.EllipticCurvePublicKey, stream: _HashStream) -> None:
        self._public = public
        self._stream = stream

    def update(self, data: bytes) -> None:
        self._stream.update(data)

    def final(self, signature: bytes) -> None:
        _verify_digest(self._public, self._stream.finish(), self._stream.algorithm, signature)


class _OneShot:
    """Single-part state: exactly one call, then the operation is over."""

    def __init__(self) -> None:
        self._used = False

    def _consume(self) -> None:
        if self._used:
            raise OperationNotInitialized("the ECDSA operation has ended")
        self._used = True


class _RawSign(SignOperation, _OneShot):
    def __init__(self, private: ec.EllipticCurvePrivateKey) -> None:
        _OneShot.__init__(self)
        self._private = private

    def one_shot(self, data: bytes) -> bytes:
        self._consume()
        digest, algorithm = _raw_digest(self._private.curve, check_part(data))
        return _sign_digest(self._private, digest, algorithm)


class _RawVerify(VerifyOperation, _OneShot):
    def __init__(self, public: ec.EllipticCurvePublicKey) -> None:
        _OneShot.__init__(self)
        self._public = public

    def one_shot(self, data: bytes, signature: bytes) -> None:
        self._consume()
        digest, algorithm = _raw_digest(self._public.curve, check_part(data))
        _verify_digest(self._public, digest, algorithm, signature)


class EcdsaMechanism(Mechanism):
    """CKM_ECDSA (hash is None: single-part, caller-hashed) or CKM_ECDSA_SHA* (multi-part)."""

    capabilities = Capability.SIGN | Capability.VERIFY
    key_types = frozenset({CKK.EC})
    min_key_size = MIN_BITS
    max_key_size = MAX_BITS
    legacy_min_key_size = LEGACY_MIN_BITS

    def __init__(self, ckm: CKM, hash_ckm: CKM | None) -> None:
        self.ckm = ckm
        self._hash = HASHES[hash_ckm] if hash_ckm is not None else None
        self.multipart = hash_ckm is not None

    def sign(self, key: Key, params: Any) -> SignOperation:
        self.parse_params(params)
        private = _private(key, self.ckm.name)
        if self._hash is None:
            return _RawSign(private)
        return _HashSign(private, _HashStream(self._hash()))

    def verify(self, key: Key, params: Any) -> VerifyOperation:
        self.parse_params(params)
        public = _public(key, self.ckm.name)
        if self._hash is None:
            return _RawVerify(public)
        return _HashVerify(public, _HashStream(self._hash()))


# -- ECDH -----------------------------------------------------------------------------------

#: X9.63 KDFs by CKD; CKD_NULL (None) hands out the shared secret itself.
_KDFS: dict[int, type[hashes.HashAlgorithm] | None] = {
    CKD.NULL: None,
    CKD.SHA1_KDF: hashes.SHA1,
    CKD.SHA224_KDF: hashes.SHA224,
    CKD.SHA256_KDF: hashes.SHA256,
    CKD.SHA384_KDF: hashes.SHA384,
    CKD.SHA512_KDF: hashes.SHA512,
}

#: Longest key derived through a KDF, in bytes. The result becomes a secret key's
#: CKA_VALUE, and no secret key type the node keeps is longer than 512 bytes (generic
#: secrets stop there); the cap also bounds the hashing one request can ask for.
MAX_DERIVED_LEN = 512
#: Longest shared info. It carries party identifiers and algorithm ids, tens of bytes in
#: practice; the cap keeps one request from hashing megabytes per output block.
MAX_SHARED_DATA = 4096
#: Longest public_data accepted as a parameter: a DER-wrapped uncompressed P-521 point is
#: 136 bytes, so anything near this is not a point.
MAX_PUBLIC_DATA = 1024

_ECDH_FIELDS = ("kdf", "shared_data", "public_data")
_ECDH_EXPECTED = '{"kdf": CKD_NULL|CKD_SHA*_KDF, "shared_data": bytes, "public_data": bytes (EC point)}'


@dataclass(frozen=True)
class EcdhParams:
    """Parsed CK_ECDH1_DERIVE_PARAMS."""

    kdf: CKD
    shared_data: bytes
    public_data: bytes


class Ecdh1Derive(Mechanism):
    """CKM_ECDH1_DERIVE. All four curves have cofactor 1, so this is also cofactor ECDH."""

    ckm = CKM.ECDH1_DERIVE
    capabilities = Capability.DERIVE
    key_types = frozenset({CKK.EC})
    min_key_size = MIN_BITS
    max_key_size = MAX_BITS
    legacy_min_key_size = LEGACY_MIN_BITS

    def default_derive_length(self, base_key: Key, params: Any) -> int | None:
        """Without CKA_VALUE_LEN and without a KDF: the whole shared secret (the field's length), as Java's
        SunPKCS11 key agreement asks for it (its template names only the class and CKK_GENERIC_SECRET)."""
        parsed = params if isinstance(params, EcdhParams) else self.parse_params(params)
        if parsed.kdf != CKD.NULL:
            return None
        return order_len(_private(base_key, self.ckm.name).curve)

    def parse_params(self, params: Any) -> EcdhParams:
        name = self.ckm.name
        if not isinstance(params, dict):
            raise MechanismParamInvalid(f"{name} needs {_ECDH_EXPECTED}, not {type(params).__name__}")
        unknown = [field for field in params if field not in _ECDH_FIELDS]
        if unknown:
            raise MechanismParamInvalid(f"{name} needs {_ECDH_EXPECTED}; unknown fields {unknown!r}")
        kdf = params.get("kdf")
        if not isinstance(kdf, int) or isinstance(kdf, bool) or kdf not in _KDFS:
            raise MechanismParamInvalid(f"{name} needs {_ECDH_EXPECTED}; kdf {kdf!r} is not supported")
        shared = params.get("shared_data")
        shared_data = b"" if shared is None else as_bytes(shared)
        if shared_data is None:
            raise MechanismParamInvalid(f"{name} needs {_ECDH_EXPECTED}; shared_data is {type(shared).__name__}")
        if len(shared_data) > MAX_SHARED_DATA:
            raise MechanismParamInvalid(f"{name}: shared_data is limited to {MAX_SHARED_DATA} bytes")
        # PKCS#11 v2.40 §2.3.8: with CKD_NULL, pSharedData must be NULL.
        if kdf == CKD.NULL and shared_data:
            raise MechanismParamInvalid(f"{name}: CKD_NULL takes no shared_data")
        public = params.get("public_data")
        public_data = as_bytes(public)
        if public_data is None or not public_data or len(public_data) > MAX_PUBLIC_DATA:
            raise MechanismParamInvalid(f"{name} needs {_ECDH_EXPECTED}; public_data must be the peer's EC point")
        return EcdhParams(CKD(kdf), shared_data, public_data)

    def derive(self, base_key: Key, params: Any, key_length: int) -> bytes:
        parsed = params if isinstance(params, EcdhParams) else self.parse_params(params)
        private = _private(base_key, self.ckm.name)
        algorithm = _KDFS[parsed.kdf]
        limit = order_len(private.curve) if algorithm is None else MAX_DERIVED_LEN
        if not isinstance(key_length, int) or isinstance(key_length, bool):
            raise ArgumentsBad(f"key length must be an integer, not {type(key_length).__name__}")
        if not 1 <= key_length <= limit:
            raise KeySizeRange(f"{self.ckm.name} with CKD_{parsed.kdf.name} derives 1..{limit} bytes, not {key_length}")
        peer = decode_point(private.curve, parsed.public_data)
        try:
            secret = private.exchange(ec.ECDH(), peer)
        except (ValueError, UnsupportedAlgorithm):
            raise PublicKeyInvalid("ECDH with this public point failed") from None
        if algorithm is None:
            # PKCS#11 v2.40 §2.3.9: truncation removes bytes from the leading end.
            return secret[len(secret) - key_length :]
        sharedinfo = parsed.shared_data or None
        return X963KDF(algorithm=algorithm(), length=key_length, sharedinfo=sharedinfo).derive(secret)


# -- registration ---------------------------------------------------------------------------

EC_KEY_PAIR_GEN = register(EcKeyPairGen())
ECDSA: dict[CKM, EcdsaMechanism] = {
    ckm: EcdsaMechanism(ckm, hash_ckm)
    for ckm, hash_ckm in (
        (CKM.ECDSA, None),
        (CKM.ECDSA_SHA1, CKM.SHA_1),
        (CKM.ECDSA_SHA224, CKM.SHA224),
        (CKM.ECDSA_SHA256, CKM.SHA256),
        (CKM.ECDSA_SHA384, CKM.SHA384),
        (CKM.ECDSA_SHA512, CKM.SHA512),
    )
}
for _mechanism in ECDSA.values():
    register(_mechanism)
ECDH1_DERIVE = register(Ecdh1Derive())
