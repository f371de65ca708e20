"""SHA-3 digests and HMACs, typed secret key generation and HKDF (PKCS#11 3.0): published vectors (FIPS 202,
RFC 5869) and the standard library's independent SHA-3 (hashlib) as the outside check."""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF, HKDFExpand

import strongroom.mechanisms  # noqa: F401  (registers every mechanism)
from strongroom.constants import CKA, CKK, CKM, CKO
from strongroom.errors import (
    KeySizeRange,
    KeyTypeInconsistent,
    MechanismParamInvalid,
    SignatureInvalid,
    TemplateInconsistent,
)
from strongroom.mechanisms.base import Capability, Key, lookup
from strongroom.mechanisms.hkdf import CKF_HKDF_SALT_DATA, CKF_HKDF_SALT_KEY, CKF_HKDF_SALT_NULL

SHA3 = {CKM.SHA3_224: "sha3_224", CKM.SHA3_256: "sha3_256", CKM.SHA3_384: "sha3_384", CKM.SHA3_512: "sha3_512"}
HMAC = {CKM.SHA3_224_HMAC: ("sha3_224", CKK.SHA3_224_HMAC), CKM.SHA3_256_HMAC: ("sha3_256", CKK.SHA3_256_HMAC),
        CKM.SHA3_384_HMAC: ("sha3_384", CKK.SHA3_384_HMAC), CKM.SHA3_512_HMAC: ("sha3_512", CKK.SHA3_512_HMAC)}

#: FIPS 202 / NIST example values: SHA3-*("abc").
ABC = {
    CKM.SHA3_224: "e642824c3f8cf24ad09234ee7d3c766fc9a3a5168d0c94ad73b46fdf",
    CKM.SHA3_256: "3a985da74fe225b2045c172d6bd390bd855f086e3e9d525b46bfe24511431532",
    CKM.SHA3_384: "ec01498288516fc926459f58e2c6ad8df9b473cb0fc08c2596da7cf0e49be4b298d88cea927ac7f539f1edf228376d25",
    CKM.SHA3_512: "b751850b1a57168a5693cd924b6b096e08f621827444f70d884f5d0240d2712e"
                  "10e116e9192af3c91a7ec57647e3934057340b4cf408d5a56592f8274eec53f0",
}


def secret(value: bytes, key_type: CKK = CKK.GENERIC_SECRET) -> Key:
    return Key(key_type, CKO.SECRET_KEY, value=value, size_bits=8 * len(value))


@pytest.mark.parametrize("ckm", list(SHA3))
def test_sha3_digests(ckm: CKM) -> None:
    mechanism = lookup(ckm)
    assert mechanism.capabilities == Capability.DIGEST
    assert mechanism.digest(None).one_shot(b"abc").hex() == ABC[ckm]
    data = bytes(range(256)) * 41
    operation = mechanism.digest(None)
    for start in range(0, len(data), 1000):
        operation.update(data[start: start + 1000])
    assert operation.final() == hashlib.new(SHA3[ckm], data).digest()
    with pytest.raises(MechanismParamInvalid):
        mechanism.digest(b"\x01")


@pytest.mark.parametrize("ckm", list(HMAC))
def test_sha3_hmacs(ckm: CKM) -> None:
    name, typed = HMAC[ckm]
    value = bytes(range(40))
    expected = hmac.new(value, b"message", name).digest()
    for key in (secret(value), secret(value, typed)):
        assert lookup(ckm).sign(key, None).one_shot(b"message") == expected
        lookup(ckm).verify(key, None).one_shot(b"message", expected)
        with pytest.raises(SignatureInvalid):
            lookup(ckm).verify(key, None).one_shot(b"messagf", expected)
    general = CKM(int(ckm) + 1)  # CKM_SHA3_*_HMAC_GENERAL follows its HMAC
    assert general.name == ckm.name + "_GENERAL"
    assert lookup(general).sign(secret(value), {"mac_len": 10}).one_shot(b"message") == expected[:10]
    # A key typed for another HMAC is not this HMAC's.
    with pytest.raises(KeyTypeInconsistent):
        lookup(ckm).sign(secret(value, CKK.SHA256_HMAC), None)
    with pytest.raises(KeyTypeInconsistent):
        lookup(ckm).sign(secret(value, CKK.AES), None)


@pytest.mark.parametrize(("ckm", "key_type"), [(CKM.SHA3_224_KEY_GEN, CKK.SHA3_224_HMAC),
                                               (CKM.SHA3_256_KEY_GEN, CKK.SHA3_256_HMAC),
                                               (CKM.SHA3_384_KEY_GEN, CKK.SHA3_384_HMAC),
                                               (CKM.SHA3_512_KEY_GEN, CKK.SHA3_512_HMAC),
                                               (CKM.HKDF_KEY_GEN, CKK.HKDF)])
def test_typed_secret_key_generation(ckm: CKM, key_type: CKK) -> None:
    generated = lookup(ckm).generate_key(None, {CKA.VALUE_LEN: 32})
    assert (generated.key_type, len(generated.value), generated.attributes) == (key_type, 32, {CKA.VALUE_LEN: 32})
    assert lookup(ckm).generate_key(None, {CKA.VALUE_LEN: 32, CKA.KEY_TYPE: key_type}).key_type == key_type
    with pytest.raises(TemplateInconsistent):
        lookup(ckm).generate_key(None, {CKA.VALUE_LEN: 32, CKA.KEY_TYPE: CKK.GENERIC_SECRET})


# --- HKDF --------------------------------------------------------------------------------------------

IKM = bytes([0x0B]) * 22
SALT = bytes(range(13))
INFO = bytes(range(0xF0, 0xFA))


def params(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"extract": True, "expand": True, "prf": int(CKM.SHA256), "salt_type": CKF_HKDF_SALT_DATA,
                            "salt": SALT, "salt_key": None, "info": INFO}
    return base | fields


def derive(ckm: CKM, fields: dict[str, Any], length: int, ikm: bytes = IKM,
           key_type: CKK = CKK.GENERIC_SECRET) -> bytes:
    mechanism = lookup(ckm)
    return mechanism.derive(secret(ikm, key_type), mechanism.parse_params(fields), length)


@pytest.mark.parametrize("ckm", [CKM.HKDF_DERIVE, CKM.HKDF_DATA])
def test_rfc5869_vectors(ckm: CKM) -> None:
    # RFC 5869 A.1 (SHA-256) and A.3 (no salt, no info).
    assert derive(ckm, params(), 42).hex() == (
        "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865")
    prk = derive(ckm, params(expand=False), 32)
    assert prk.hex() == "077709362c2e32df0ddc3f0dc47bba6390b6c73bb50f9c3122ec844ad7c2b3e5"
    assert derive(ckm, params(extract=False), 42, ikm=prk, key_type=CKK.HKDF) == derive(ckm, params(), 42)
    assert derive(ckm, params(salt_type=CKF_HKDF_SALT_NULL, salt=None, info=b""), 42).hex() == (
        "8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d9d201395faa4b61a96c8")
    assert lookup(ckm).derives_data == (ckm == CKM.HKDF_DATA)


@pytest.mark.parametrize("prf", [CKM.SHA_1, CKM.SHA384, CKM.SHA512, CKM.SHA3_256, CKM.SHA3_512])
def test_every_prf_against_the_library(prf: CKM) -> None:
    algorithm = {CKM.SHA_1: hashes.SHA1, CKM.SHA384: hashes.SHA384, CKM.SHA512: hashes.SHA512,
                 CKM.SHA3_256: hashes.SHA3_256, CKM.SHA3_512: hashes.SHA3_512}[prf]
    ikm = bytes(range(64))
    assert derive(CKM.HKDF_DERIVE, params(prf=int(prf)), 100, ikm) == HKDF(algorithm(), 100, SALT, INFO).derive(ikm)
    assert derive(CKM.HKDF_DERIVE, params(prf=int(prf), extract=False), 50, ikm) == HKDFExpand(
        algorithm(), 50, INFO).derive(ikm)


def test_salt_key_is_bound_by_the_object_layer() -> None:
    mechanism = lookup(CKM.HKDF_DERIVE)
    parsed = mechanism.parse_params(params(salt_type=CKF_HKDF_SALT_KEY, salt=None, salt_key=77))
    assert mechanism.key_handles(parsed) == (77,)
    with pytest.raises(MechanismParamInvalid):  # never derived with an unresolved salt
        mechanism.derive(secret(IKM), parsed, 32)
    bound = mechanism.with_keys(parsed, [secret(SALT, CKK.HKDF)])
    assert mechanism.key_handles(bound) == ()
    assert mechanism.derive(secret(IKM), bound, 42) == derive(CKM.HKDF_DERIVE, params(), 42)
    with pytest.raises(KeyTypeInconsistent):  # a salt key is a generic secret or HKDF key
        mechanism.with_keys(parsed, [secret(bytes(16), CKK.AES)])


def test_default_length_is_the_prf_output() -> None:
    mechanism = lookup(CKM.HKDF_DATA)
    assert mechanism.default_derive_length(secret(IKM), params(prf=int(CKM.SHA3_384))) == 48


@pytest.mark.parametrize("bad", [
    None, b"", 1, params(extract=False, expand=False), params(prf=int(CKM.MD5)), params(prf=True),
    params(extract=1), params(salt_type=8), params(salt_type=CKF_HKDF_SALT_DATA, salt=b""),
    params(salt_type=CKF_HKDF_SALT_DATA, salt_key=5), params(salt_type=CKF_HKDF_SALT_NULL),
    params(salt_type=CKF_HKDF_SALT_KEY, salt=None), params(salt_type=CKF_HKDF_SALT_KEY, salt=None, salt_key=-1),
    params(salt=b"x" * 4097), params(info=b"x" * 4097), params(info="text"), params(other=1),
])
def test_parameter_refusals(bad: Any) -> None:
    for ckm in (CKM.HKDF_DERIVE, CKM.HKDF_DATA):
        with pytest.raises(MechanismParamInvalid):
            lookup(ckm).parse_params(bad)


def test_lengths_and_key_types() -> None:
    with pytest.raises(KeySizeRange):  # RFC 5869: at most 255 x HashLen
        derive(CKM.HKDF_DERIVE, params(), 255 * 32 + 1)
    assert len(derive(CKM.HKDF_DERIVE, params(), 255 * 32)) == 255 * 32
    with pytest.raises(KeySizeRange):  # extract alone makes the PRK, HashLen bytes
        derive(CKM.HKDF_DERIVE, params(expand=False), 16)
    with pytest.raises(KeyTypeInconsistent):
        derive(CKM.HKDF_DERIVE, params(), 32, key_type=CKK.AES)
    assert derive(CKM.HKDF_DERIVE, params(), 32, key_type=CKK.HKDF) == derive(CKM.HKDF_DERIVE, params(), 32)
