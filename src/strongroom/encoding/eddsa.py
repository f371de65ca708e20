"""Edwards-curve keys (Ed25519, Ed448) as PKCS#11 3.0 describes them.

``CKA_EC_PARAMS`` names the curve by the RFC 8410 OID (1.3.101.112 / 1.3.101.113) or by
the PrintableString "edwards25519" / "edwards448"; we write the OID. ``CKA_EC_POINT`` is
the DER OCTET STRING wrapping the RFC 8032 public key; the bare key is accepted on input.

Pure encoding, shared by the mechanisms (node), the KMS gateway and the CLI.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed448, ed25519

from strongroom.constants import CKA
from strongroom.encoding.der import TAG_OCTET_STRING, as_bytes, der_decode, der_encode, der_oid, der_printable
from strongroom.errors import (
    AttributeValueInvalid,
    CurveNotSupported,
    KeyTypeInconsistent,
    PublicKeyInvalid,
    TemplateIncomplete,
)

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
    private_type: type[ed25519.Ed25519PrivateKey] | type[ed448.Ed448PrivateKey]
    public_type: type[ed25519.Ed25519PublicKey] | type[ed448.Ed448PublicKey]

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
        if isinstance(key, (curve.private_type, curve.public_type)):
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
    public = key.public_key() if isinstance(key, (ed25519.Ed25519PrivateKey, ed448.Ed448PrivateKey)) else key
    return {CKA.EC_PARAMS: curve.params, CKA.EC_POINT: encode_point(public)}
