"""Edwards-curve keys and EdDSA: CKM_EC_EDWARDS_KEY_PAIR_GEN and CKM_EDDSA (PKCS#11 3.0).

Ed25519 and Ed448, both pure (RFC 8032 §5.1 / §5.2 with an empty context), which is what
CKM_EDDSA means without a CK_EDDSA_PARAMS. Ed448 costs nothing extra because
pyca/cryptography signs it natively. The prehash and context variants (Ed25519ph,
Ed25519ctx, Ed448ph, Ed448 with a context) are not offered by the library, so any
CK_EDDSA_PARAMS is CKR_MECHANISM_PARAM_INVALID.

``CKA_EC_PARAMS`` names the curve by the RFC 8410 OID (1.3.101.112 / 1.3.101.113) or by
the PrintableString "edwards25519" / "edwards448"; we write the OID. ``CKA_EC_POINT`` is
the DER OCTET STRING wrapping the RFC 8032 public key; the bare key is accepted on input.
EdDSA needs the whole message, so it is single-part only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed448, ed25519

from strongroom.constants import CKA, CKK, CKM
from strongroom.errors import (
    ArgumentsBad,
    AttributeValueInvalid,
    CurveNotSupported,
    DeviceError,
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
    VerifyOperation,
    check_part,
    register,
)
from strongroom.mechanisms.ec import TAG_OCTET_STRING, as_bytes, der_decode, der_encode, der_oid, der_printable

EdPrivateKey = ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey
EdPublicKey = ed25519.Ed25519PublicKey | ed448.Ed448PublicKey


@dataclass(frozen=True)
class EdwardsCurve:
    name: str
    oid: str
    #: Field size in bits: what C_GetMechanismInfo and Key.size_bits report.
    size_bits: int
    public_len: int
    signature_len: int
    private_type: type
    public_type: type

    @property
    def params(self) -> bytes:
        """CKA_EC_PARAMS as we write it (DER OID)."""
        return der_oid(self.oid)

    def generate(self) -> EdPrivateKey:
        return self.private_type.generate()

    def load_public(self, raw: bytes) -> EdPublicKey:
        return self.public_type.from_public_bytes(raw)


ED25519 = EdwardsCurve(
    "edwards25519", "1.3.101.112", 255, 32, 64, ed25519.Ed25519PrivateKey, ed25519.Ed25519PublicKey
)
ED448 = EdwardsCurve("edwards448", "1.3.101.113", 448, 57, 114, ed448.Ed448PrivateKey, ed448.Ed448PublicKey)
_CURVES = (ED25519, ED448)

_CURVE_BY_PARAMS: dict[bytes, EdwardsCurve] = {}
for _curve in _CURVES:
    _CURVE_BY_PARAMS[der_oid(_curve.oid)] = _curve
    _CURVE_BY_PARAMS[der_printable(_curve.name)] = _curve


def curve_from_params(der: object) -> EdwardsCurve:
    """The Edwards curve a CKA_EC_PARAMS value names (CurveNotSupported otherwise)."""
    data = as_bytes(der)
    if data is None:
        raise AttributeValueInvalid(f"CKA_EC_PARAMS must be bytes, not {type(der).__name__}")
    curve = _CURVE_BY_PARAMS.get(data)
    if curve is None:
        raise CurveNotSupported("CKA_EC_PARAMS must name edwards25519 or edwards448")
    return curve


def curve_of(key: object) -> EdwardsCurve:
    """The curve of a cryptography Ed25519/Ed448 key, private or public."""
    for curve in _CURVES:
        if isinstance(key, curve.private_type | curve.public_type):
            return curve
    raise KeyTypeInconsistent("not an Ed25519 or Ed448 key")


def key_size_bits(key: EdPrivateKey | EdPublicKey) -> int:
    return curve_of(key).size_bits


def _raw_public(public: EdPublicKey) -> bytes:
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def encode_point(public: EdPublicKey) -> bytes:
    """CKA_EC_POINT: DER OCTET STRING wrapping the RFC 8032 encoded public key."""
    return der_encode(TAG_OCTET_STRING, _raw_public(public))


def decode_point(curve: EdwardsCurve, data: object) -> EdPublicKey:
    """A public key from CKA_EC_POINT, DER-wrapped or bare.

    A bare key has exactly public_len bytes, a wrapped one public_len + 2, so the length
    decides. The library does not check that the bytes decode to a curve point (OpenSSL
    defers that to verification, which then fails), so neither can we here.
    """
    raw = as_bytes(data)
    if raw is None:
        raise PublicKeyInvalid(f"an EdDSA public key must be bytes, not {type(data).__name__}")
    if len(raw) != curve.public_len:
        try:
            raw = der_decode(TAG_OCTET_STRING, raw)
        except ValueError as exc:
            raise PublicKeyInvalid(f"not an {curve.name} public key: {exc}") from None
        if len(raw) != curve.public_len:
            raise PublicKeyInvalid(f"an {curve.name} public key is {curve.public_len} bytes, not {len(raw)}")
    try:
        return curve.load_public(raw)
    except (ValueError, UnsupportedAlgorithm):
        raise PublicKeyInvalid(f"not an {curve.name} public key") from None


def public_key_from_attributes(attrs: dict[int, Any]) -> EdPublicKey:
    """The public key that CKA_EC_PARAMS and CKA_EC_POINT describe."""
    for attr in (CKA.EC_PARAMS, CKA.EC_POINT):
        if attr not in attrs:
            raise TemplateIncomplete(f"an Edwards public key needs CKA_{attr.name}")
    return decode_point(curve_from_params(attrs[CKA.EC_PARAMS]), attrs[CKA.EC_POINT])


def key_attributes(key: EdPrivateKey | EdPublicKey) -> dict[int, Any]:
    """CKA_EC_PARAMS and CKA_EC_POINT for a key (e.g. one unwrapped from PKCS#8)."""
    curve = curve_of(key)
    public = key.public_key() if isinstance(key, curve.private_type) else key
    return {CKA.EC_PARAMS: curve.params, CKA.EC_POINT: encode_point(public)}


# -- key pair generation -------------------------------------------------------------------

_PROBE = b"strongroom pairwise consistency test"


def pairwise_test(private: EdPrivateKey, public: EdPublicKey) -> None:
    """FIPS 140 pairwise consistency test: a fresh pair must sign and verify."""
    try:
        public.verify(private.sign(_PROBE), _PROBE)
    except (InvalidSignature, ValueError, TypeError, UnsupportedAlgorithm):
        raise DeviceError("EdDSA key pair failed its pairwise consistency test") from None


class EdwardsKeyPairGen(Mechanism):
    ckm = CKM.EC_EDWARDS_KEY_PAIR_GEN
    capabilities = Capability.GENERATE_KEY_PAIR
    key_types = frozenset({CKK.EC_EDWARDS})
    min_key_size = ED25519.size_bits
    max_key_size = ED448.size_bits

    def generate_key_pair(
        self, params: Any, public_template: dict[int, Any], private_template: dict[int, Any]
    ) -> GeneratedPair:
        self.parse_params(params)
        if CKA.EC_PARAMS not in public_template:
            raise TemplateIncomplete("the public key template needs CKA_EC_PARAMS to choose the curve")
        ec_params = public_template[CKA.EC_PARAMS]
        curve = curve_from_params(ec_params)
        if CKA.EC_PARAMS in private_template and curve_from_params(private_template[CKA.EC_PARAMS]) != curve:
            raise TemplateInconsistent("the public and private templates name different curves")
        private = curve.generate()
        public = private.public_key()
        pairwise_test(private, public)
        stored = bytes(ec_params)  # the caller's encoding, as they set it
        return GeneratedPair(
            private,
            CKK.EC_EDWARDS,
            public_attributes={CKA.EC_PARAMS: stored, CKA.EC_POINT: encode_point(public)},
            private_attributes={CKA.EC_PARAMS: stored},
        )


# -- EdDSA ----------------------------------------------------------------------------------


class _OneShot:
    def __init__(self) -> None:
        self._used = False

    def _consume(self) -> None:
        if self._used:
            raise OperationNotInitialized("the EdDSA operation has ended")
        self._used = True


class _EdSign(SignOperation, _OneShot):
    def __init__(self, private: EdPrivateKey) -> None:
        _OneShot.__init__(self)
        self._private = private

    def one_shot(self, data: bytes) -> bytes:
        self._consume()
        return self._private.sign(check_part(data, multipart=False))


class _EdVerify(VerifyOperation, _OneShot):
    def __init__(self, public: EdPublicKey) -> None:
        _OneShot.__init__(self)
        self._public = public

    def one_shot(self, data: bytes, signature: bytes) -> None:
        self._consume()
        message = check_part(data, multipart=False)
        raw = as_bytes(signature)
        if raw is None:
            raise ArgumentsBad(f"signature must be bytes, not {type(signature).__name__}")
        curve = curve_of(self._public)
        if len(raw) != curve.signature_len:
            raise SignatureLenRange(f"an {curve.name} signature is {curve.signature_len} bytes, not {len(raw)}")
        try:
            self._public.verify(raw, message)
        except (InvalidSignature, ValueError):
            raise SignatureInvalid("the EdDSA signature does not verify") from None


class EddsaMechanism(Mechanism):
    ckm = CKM.EDDSA
    capabilities = Capability.SIGN | Capability.VERIFY
    key_types = frozenset({CKK.EC_EDWARDS})
    min_key_size = ED25519.size_bits
    max_key_size = ED448.size_bits
    multipart = False

    def parse_params(self, params: Any) -> None:
        if params not in (None, b"", {}):
            raise MechanismParamInvalid(
                "CKM_EDDSA supports pure Ed25519/Ed448 only: pass no parameters "
                "(CK_EDDSA_PARAMS prehash/context variants are not supported)"
            )
        return None

    def sign(self, key: Key, params: Any) -> SignOperation:
        self.parse_params(params)
        key.require_type(CKK.EC_EDWARDS)
        if not isinstance(key.private, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey):
            raise KeyTypeInconsistent("CKM_EDDSA signing needs an Ed25519 or Ed448 private key")
        return _EdSign(key.private)

    def verify(self, key: Key, params: Any) -> VerifyOperation:
        self.parse_params(params)
        key.require_type(CKK.EC_EDWARDS)
        if isinstance(key.public, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
            public = key.public
        elif isinstance(key.private, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey):
            public = key.private.public_key()
        else:
            raise KeyTypeInconsistent("CKM_EDDSA verification needs an Ed25519 or Ed448 public key")
        return _EdVerify(public)


EC_EDWARDS_KEY_PAIR_GEN = register(EdwardsKeyPairGen())
EDDSA = register(EddsaMechanism())
