"""Elliptic-curve keys as PKCS#11 describes them (v2.40 §2.3.3): curves, points, signatures.

* ``CKA_EC_PARAMS`` is the DER of an X9.62 ``Parameters`` choice. We accept the
  ``namedCurve`` OID and, because some tools send it, the PrintableString curve name
  ("prime256v1"/"secp256r1", "secp384r1", "secp521r1", "secp256k1"); explicit domain
  parameters, ``implicitlyCA`` and every other curve are CKR_CURVE_NOT_SUPPORTED. We
  write the OID form.
* ``CKA_EC_POINT`` is the DER OCTET STRING wrapping the X9.62 point (uncompressed when
  we write it). Some applications send the bare point instead; on input we take both,
  which is unambiguous because a bare point and a wrapped one never have the same
  length on these curves (see :func:`decode_point`).
* Signatures are ``r || s``, each left-padded to the byte length of the group order;
  X.509, TLS and AWS KMS use the DER ``ECDSA-Sig-Value`` instead (:func:`signature_to_der`,
  :func:`signature_from_der`).

Pure encoding, shared by the mechanisms (node), the KMS gateway and the CLI.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, utils

from strongroom.constants import CKA
from strongroom.encoding.der import TAG_OCTET_STRING, as_bytes, der_decode, der_encode, der_oid, der_printable
from strongroom.errors import AttributeValueInvalid, CurveNotSupported, PublicKeyInvalid, TemplateIncomplete

# -- curves -----------------------------------------------------------------------------


@dataclass(frozen=True)
class _CurveInfo:
    curve: type[ec.EllipticCurve]
    oid: str
    names: tuple[str, ...]


# For these curves the bit length of the group order n equals the field size that
# cryptography reports as key_size, so key_size serves for both nLen and the field length.
# P-192 is here for the node's legacy-algorithms policy, which decides where it may be used.
_CURVE_INFO = (
    _CurveInfo(ec.SECP256R1, "1.2.840.10045.3.1.7", ("prime256v1", "secp256r1")),
    _CurveInfo(ec.SECP384R1, "1.3.132.0.34", ("secp384r1",)),
    _CurveInfo(ec.SECP521R1, "1.3.132.0.35", ("secp521r1",)),
    _CurveInfo(ec.SECP256K1, "1.3.132.0.10", ("secp256k1",)),
    _CurveInfo(ec.SECP192R1, "1.2.840.10045.3.1.1", ("prime192v1", "secp192r1")),
)

#: cryptography curve name -> CKA_EC_PARAMS we write (the namedCurve OID).
_PARAMS_BY_NAME: dict[str, bytes] = {info.curve().name: der_oid(info.oid) for info in _CURVE_INFO}
#: Every CKA_EC_PARAMS encoding we accept -> curve class.
_CURVE_BY_PARAMS: dict[bytes, type[ec.EllipticCurve]] = {}
for _info in _CURVE_INFO:
    _CURVE_BY_PARAMS[der_oid(_info.oid)] = _info.curve
    for _name in _info.names:
        _CURVE_BY_PARAMS[der_printable(_name)] = _info.curve

MIN_BITS = 256
MAX_BITS = 521
#: P-192 (the node's legacy-algorithms policy).
LEGACY_MIN_BITS = 192


def curve_named(name: str) -> ec.EllipticCurve:
    """The supported curve that OpenSSL (and AWS KMS's key specs) call ``name`` ("secp256r1", …)."""
    for info in _CURVE_INFO:
        if name in info.names:
            return info.curve()
    raise CurveNotSupported(f"curve {name!r} is not supported")


def curve_from_params(der: object) -> ec.EllipticCurve:
    """The curve a CKA_EC_PARAMS value names (CurveNotSupported for anything else)."""
    data = as_bytes(der)
    if data is None:
        raise AttributeValueInvalid(f"CKA_EC_PARAMS must be bytes, not {type(der).__name__}")
    curve = _CURVE_BY_PARAMS.get(data)
    if curve is None:
        raise CurveNotSupported("CKA_EC_PARAMS must name P-256, P-384, P-521, secp256k1 (or P-192) by OID")
    return curve()


def params_for_curve(curve: ec.EllipticCurve) -> bytes:
    """CKA_EC_PARAMS (DER namedCurve OID) for a curve."""
    params = _PARAMS_BY_NAME.get(getattr(curve, "name", ""))
    if params is None:
        raise CurveNotSupported(f"curve {getattr(curve, 'name', curve)!r} is not supported")
    return params


def check_curve(curve: ec.EllipticCurve) -> None:
    """CurveNotSupported unless the cluster supports ``curve``."""
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
    its DER wrapping adds 2 or 3 header bytes, so for f >= 24 the lengths never collide
    and the length alone says which form we have (both start with 0x04 otherwise).
    The library checks that the point lies on the curve.
    """
    raw = as_bytes(data)
    if raw is None:
        raise PublicKeyInvalid(f"an EC point must be bytes, not {type(data).__name__}")
    check_curve(curve)
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


# -- signatures -----------------------------------------------------------------------------


def signature_to_der(raw: bytes) -> bytes:
    """PKCS#11's ``r || s`` (two halves of equal length) as a DER ``ECDSA-Sig-Value``."""
    half = len(raw) // 2
    return utils.encode_dss_signature(int.from_bytes(raw[:half], "big"), int.from_bytes(raw[half:], "big"))


def signature_from_der(der: bytes, curve: ec.EllipticCurve) -> bytes | None:
    """A DER ``ECDSA-Sig-Value`` as ``r || s`` for ``curve``; None when it is not one, or r or s
    is out of range (such a signature cannot verify)."""
    try:
        r, s = utils.decode_dss_signature(der)
    except ValueError:
        return None
    size = order_len(curve)
    if r <= 0 or s <= 0 or r.bit_length() > 8 * size or s.bit_length() > 8 * size:
        return None
    return r.to_bytes(size, "big") + s.to_bytes(size, "big")
