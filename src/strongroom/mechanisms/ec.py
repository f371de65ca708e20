"""Elliptic-curve keys on P-256, P-384, P-521 and secp256k1: key pairs, ECDSA, ECDH.

Mechanisms: CKM_EC_KEY_PAIR_GEN (= CKM_ECDSA_KEY_PAIR_GEN), CKM_ECDSA (the caller hashes),
CKM_ECDSA_SHA1/SHA224/SHA256/SHA384/SHA512 (the node hashes, in parts) and CKM_ECDH1_DERIVE.

Encodings (PKCS#11 v2.40 §2.3.3):

* ``CKA_EC_PARAMS`` is the DER of an X9.62 ``Parameters`` choice. We accept the
  ``namedCurve`` OID and, because some tools send it, the PrintableString curve name
  ("prime256v1"/"secp256r1", "secp384r1", "secp521r1", "secp256k1"); explicit domain
  parameters, ``implicitlyCA`` and every other curve are CKR_CURVE_NOT_SUPPORTED. We
  write the OID form.
* ``CKA_EC_POINT`` is the DER OCTET STRING wrapping the X9.62 point (uncompressed when
  we write it). Some applications send the bare point instead; on input we take both,
  which is unambiguous because a bare point and a wrapped one never have the same
  length on these curves (see :func:`decode_point`).
* Signatures are ``r || s``, each left-padded to the byte length of the group order.

pyca/cryptography has no general DER encoder, so the two fixed shapes we need (an OID
or PrintableString as a whole value, an OCTET STRING) go through the small strict TLV
helpers below; that is encoding, all cryptography is the library's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, utils
from cryptography.hazmat.primitives.kdf.x963kdf import X963KDF

from strongroom.constants import CKA, CKD, CKK, CKM
from strongroom.errors import (
    CKR,
    ArgumentsBad,
    AttributeValueInvalid,
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
    register,
)
from strongroom.mechanisms.hashes import HASHES

# -- minimal DER ------------------------------------------------------------------------

TAG_OCTET_STRING = 0x04
TAG_OID = 0x06
TAG_PRINTABLE_STRING = 0x13


def der_encode(tag: int, content: bytes) -> bytes:
    """One DER TLV with a definite, minimal length."""
    size = len(content)
    if size < 0x80:
        return bytes((tag, size)) + content
    length = size.to_bytes((size.bit_length() + 7) // 8, "big")
    return bytes((tag, 0x80 | len(length))) + length + content


def der_decode(tag: int, data: bytes) -> bytes:
    """The content of the single TLV that ``data`` must be, exactly; ValueError otherwise.

    Strict DER: definite minimal length, nothing after the value. Lengths above 0xFFFF
    are refused since no value we parse comes close.
    """
    if len(data) < 2 or data[0] != tag:
        raise ValueError(f"expected a DER value with tag 0x{tag:02x}")
    first = data[1]
    if first < 0x80:
        length, offset = first, 2
    else:
        count = first & 0x7F
        if count == 0 or count > 2:
            raise ValueError("indefinite or oversized DER length")
        field = data[2 : 2 + count]
        if len(field) != count or field[0] == 0:
            raise ValueError("truncated or non-minimal DER length")
        length, offset = int.from_bytes(field, "big"), 2 + count
        if length < 0x80:
            raise ValueError("non-minimal DER length")
    if len(data) - offset != length:
        raise ValueError("DER length does not match the data")
    return bytes(data[offset:])


def der_oid(dotted: str) -> bytes:
    """DER of an OBJECT IDENTIFIER given in dotted form (base-128 arcs, X.690 §8.19)."""
    arcs = [int(arc) for arc in dotted.split(".")]
    body = bytearray()
    for arc in [40 * arcs[0] + arcs[1], *arcs[2:]]:
        chunk = [arc & 0x7F]
        arc >>= 7
        while arc:
            chunk.append(0x80 | (arc & 0x7F))
            arc >>= 7
        body += bytes(reversed(chunk))
    return der_encode(TAG_OID, bytes(body))


def der_printable(name: str) -> bytes:
    return der_encode(TAG_PRINTABLE_STRING, name.encode("ascii"))


def as_bytes(value: object) -> bytes | None:
    return bytes(value) if isinstance(value, bytes | bytearray | memoryview) else None


# -- curves -----------------------------------------------------------------------------


@dataclass(frozen=True)
class _CurveInfo:
    curve: type[ec.EllipticCurve]
    oid: str
    names: tuple[str, ...]


# For these four curves the bit length of the group order n equals the field size that
# cryptography reports as key_size, so key_size serves for both nLen and the field length.
_CURVE_INFO = (
    _CurveInfo(ec.SECP256R1, "1.2.840.10045.3.1.7", ("prime256v1", "secp256r1")),
    _CurveInfo(ec.SECP384R1, "1.3.132.0.34", ("secp384r1",)),
    _CurveInfo(ec.SECP521R1, "1.3.132.0.35", ("secp521r1",)),
    _CurveInfo(ec.SECP256K1, "1.3.132.0.10", ("secp256k1",)),
)

#: cryptography curve name -> CKA_EC_PARAMS we write (the namedCurve OID).
_PARAMS_BY_NAME: dict[str, bytes] = {info.curve.name: der_oid(info.oid) for info in _CURVE_INFO}
#: Every CKA_EC_PARAMS encoding we accept -> curve class.
_CURVE_BY_PARAMS: dict[bytes, type[ec.EllipticCurve]] = {}
for _info in _CURVE_INFO:
    _CURVE_BY_PARAMS[der_oid(_info.oid)] = _info.curve
    for _name in _info.names:
        _CURVE_BY_PARAMS[der_printable(_name)] = _info.curve

MIN_BITS = 256
MAX_BITS = 521


def curve_from_params(der: object) -> ec.EllipticCurve:
    """The curve a CKA_EC_PARAMS value names (CurveNotSupported for anything else)."""
    data = as_bytes(der)
    if data is None:
        raise AttributeValueInvalid(f"CKA_EC_PARAMS must be bytes, not {type(der).__name__}")
    curve = _CURVE_BY_PARAMS.get(data)
    if curve is None:
        raise CurveNotSupported("CKA_EC_PARAMS must name P-256, P-384, P-521 or secp256k1 by OID")
    return curve()


def params_for_curve(curve: ec.EllipticCurve) -> bytes:
    """CKA_EC_PARAMS (DER namedCurve OID) for a curve."""
    params = _PARAMS_BY_NAME.get(getattr(curve, "name", ""))
    if params is None:
        raise CurveNotSupported(f"curve {getattr(curve, 'name', curve)!r} is not supported")
    return params


def _check_curve(curve: ec.EllipticCurve) -> None:
    if curve.name not in _PARAMS_BY_NAME:
        raise CurveNotSupported(f"curve {curve.name} is not supported")


def order_len(curve: ec.EllipticCurve) -> int:
    """nLen: bytes of the group order (and of r, s and the ECDH shared secret here)."""
    return (curve.key_size + 7) // 8


def key_size_bits(key: ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey) -> int:
    """What Key.size_bits and CKA_* size reporting should say for an EC key."""
    return key.curve.key_size


# -- points and attributes ----------------------------------------------------------------


def encode_point(public_key: ec.EllipticCurvePublicKey) -> bytes:
    """CKA_EC_POINT: DER OCTET STRING wrapping the uncompressed X9.62 point (PKCS#11 v2.40)."""
    point = public_key.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    return der_encode(TAG_OCTET_STRING, point)


def decode_point(curve: ec.EllipticCurve, data: object) -> ec.EllipticCurvePublicKey:
    """A public key from a point given bare or DER-wrapped, compressed or uncompressed.

    A bare point is 1+f (compressed) or 1+2f (uncompressed) bytes for a field of f bytes;
    its DER wrapping adds 2 or 3 header bytes, so for f >= 32 the lengths never collide
    and the length alone says which form we have (both start with 0x04 otherwise).
    The library checks that the point lies on the curve.
    """
    raw = as_bytes(data)
    if raw is None:
        raise PublicKeyInvalid(f"an EC point must be bytes, not {type(data).__name__}")
    _check_curve(curve)
    field = order_len(curve)
    bare_sizes = (1 + field, 1 + 2 * field)
    if len(raw) not in bare_sizes:
        try:
            raw = der_decode(TAG_OCTET_STRING, raw)
        except ValueError as exc:
            raise PublicKeyInvalid(f"not a {curve.name} point: {exc}") from None
        if len(raw) not in bare_sizes:
            raise PublicKeyInvalid(f"not a {curve.name} point: {len(raw)} bytes")
    try:
        return ec.EllipticCurvePublicKey.from_encoded_point(curve, raw)
    except (ValueError, UnsupportedAlgorithm):
        raise PublicKeyInvalid(f"the point is not a valid {curve.name} point") from None


def public_key_from_attributes(attrs: dict[int, Any]) -> ec.EllipticCurvePublicKey:
    """The public key that CKA_EC_PARAMS and CKA_EC_POINT describe (imports, unwrap checks)."""
    for attr in (CKA.EC_PARAMS, CKA.EC_POINT):
        if attr not in attrs:
            raise TemplateIncomplete(f"an EC public key needs CKA_{attr.name}")
    return decode_point(curve_from_params(attrs[CKA.EC_PARAMS]), attrs[CKA.EC_POINT])


def key_attributes(key: ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey) -> dict[int, Any]:
    """CKA_EC_PARAMS and CKA_EC_POINT for a key (e.g. one unwrapped from PKCS#8)."""
    public = key.public_key() if isinstance(key, ec.EllipticCurvePrivateKey) else key
    return {CKA.EC_PARAMS: params_for_curve(key.curve), CKA.EC_POINT: encode_point(public)}


# -- keys handed to the mechanisms ---------------------------------------------------------


def _private(key: Key, what: str) -> ec.EllipticCurvePrivateKey:
    key.require_type(CKK.EC)
    if not isinstance(key.private, ec.EllipticCurvePrivateKey):
        raise KeyTypeInconsistent(f"{what} needs an EC private key")
    _check_curve(key.private.curve)
    return key.private


def _public(key: Key, what: str) -> ec.EllipticCurvePublicKey:
    key.require_type(CKK.EC)
    if isinstance(key.public, ec.EllipticCurvePublicKey):
        public = key.public
    elif isinstance(key.private, ec.EllipticCurvePrivateKey):
        public = key.private.public_key()
    else:
        raise KeyTypeInconsistent(f"{what} needs an EC public key")
    _check_curve(public.curve)
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

    def generate_key_pair(
        self, params: Any, public_template: dict[int, Any], private_template: dict[int, Any]
    ) -> GeneratedPair:
        self.parse_params(params)
        if CKA.EC_PARAMS not in public_template:
            raise TemplateIncomplete("the public key template needs CKA_EC_PARAMS to choose the curve")
        ec_params = public_template[CKA.EC_PARAMS]
        curve = curve_from_params(ec_params)
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
    r, s = utils.decode_dss_signature(der)
    size = order_len(private.curve)
    return r.to_bytes(size, "big") + s.to_bytes(size, "big")


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
    half = len(raw) // 2
    r, s = int.from_bytes(raw[:half], "big"), int.from_bytes(raw[half:], "big")
    try:
        public.verify(utils.encode_dss_signature(r, s), digest, ec.ECDSA(utils.Prehashed(algorithm)))
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
