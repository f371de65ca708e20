"""strongroom.encoding: the curve table by name, and ECDSA signatures between PKCS#11's r || s and
DER (the KMS gateway's Sign/Verify and the node's ECDSA use the same two functions)."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature

from strongroom.encoding.der import der_oid
from strongroom.encoding.ec import (
    curve_from_params,
    curve_named,
    order_len,
    params_for_curve,
    signature_from_der,
    signature_to_der,
)
from strongroom.errors import CurveNotSupported

# The four curves the cluster supports, by every name OpenSSL gives them, with the OIDs of RFC 5480/SEC 2.
NAMES = {"prime256v1": ("secp256r1", "1.2.840.10045.3.1.7"), "secp256r1": ("secp256r1", "1.2.840.10045.3.1.7"),
         "secp384r1": ("secp384r1", "1.3.132.0.34"), "secp521r1": ("secp521r1", "1.3.132.0.35"),
         "secp256k1": ("secp256k1", "1.3.132.0.10")}
ORDER_BYTES = {"secp256r1": 32, "secp384r1": 48, "secp521r1": 66, "secp256k1": 32}


@pytest.mark.parametrize("name", sorted(NAMES))
def test_curve_named(name: str) -> None:
    curve = curve_named(name)
    canonical, oid = NAMES[name]
    assert curve.name == canonical
    assert params_for_curve(curve) == der_oid(oid)
    assert curve_from_params(der_oid(oid)).name == canonical
    assert order_len(curve) == ORDER_BYTES[canonical]


@pytest.mark.parametrize("name", ["secp224r1", "ed25519", "", "SECP256R1"])
def test_curve_named_refuses_others(name: str) -> None:
    with pytest.raises(CurveNotSupported):
        curve_named(name)


@pytest.mark.parametrize("name", sorted(ORDER_BYTES))
def test_signature_round_trip(name: str) -> None:
    curve = curve_named(name)
    private = ec.generate_private_key(curve)
    der = private.sign(b"message", ec.ECDSA(hashes.SHA256()))
    raw = signature_from_der(der, curve)
    assert raw is not None and len(raw) == 2 * ORDER_BYTES[name]
    r, s = decode_dss_signature(der)
    assert raw == r.to_bytes(ORDER_BYTES[name], "big") + s.to_bytes(ORDER_BYTES[name], "big")
    assert signature_to_der(raw) == der
    private.public_key().verify(signature_to_der(raw), b"message", ec.ECDSA(hashes.SHA256()))


def test_signature_from_der_pads_to_the_order() -> None:
    size = ORDER_BYTES["secp521r1"]
    raw = signature_from_der(encode_dss_signature(5, 7), curve_named("secp521r1"))
    assert raw == (5).to_bytes(size, "big") + (7).to_bytes(size, "big")


@pytest.mark.parametrize("der", [b"\x30\x00", b"not der", b"", encode_dss_signature(1 << 256, 1),
                                 encode_dss_signature(1, 1 << 256), encode_dss_signature(0, 1),
                                 encode_dss_signature(1, 0)])
def test_signature_from_der_refuses(der: bytes) -> None:
    """Not an ECDSA-Sig-Value, or r/s that no P-256 signature can have: no r || s (it cannot verify)."""
    assert signature_from_der(der, curve_named("secp256r1")) is None
