"""EC mechanisms: CKA_EC_PARAMS/CKA_EC_POINT helpers, key pair generation, ECDSA, ECDH.

Known answers come from cryptography-vectors (NIST FIPS 186-3 SigVer, secp256k1 SigGen,
NIST KAS ECC CDH); everything else is cross-checked against pyca/cryptography directly.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterator

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa, utils
from cryptography.hazmat.primitives.kdf.x963kdf import X963KDF
from cryptography_vectors import open_vector_file

from strongroom.constants import CKA, CKD, CKK, CKM, CKO
from strongroom.encoding import der
from strongroom.encoding import ec as eec
from strongroom.errors import (
    ArgumentsBad,
    AttributeValueInvalid,
    CurveNotSupported,
    DataLenRange,
    DeviceError,
    FunctionNotSupported,
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
from strongroom.mechanisms import ec as ecm
from strongroom.mechanisms.base import MAX_DATA, Capability, Key, lookup

CURVES = [ec.SECP256R1(), ec.SECP384R1(), ec.SECP521R1(), ec.SECP256K1()]
CURVE_IDS = [c.name for c in CURVES]
NLEN = {"secp256r1": 32, "secp384r1": 48, "secp521r1": 66, "secp256k1": 32}
HASHED = {
    CKM.ECDSA_SHA1: hashes.SHA1,
    CKM.ECDSA_SHA224: hashes.SHA224,
    CKM.ECDSA_SHA256: hashes.SHA256,
    CKM.ECDSA_SHA384: hashes.SHA384,
    CKM.ECDSA_SHA512: hashes.SHA512,
}
KDFS = {
    CKD.SHA1_KDF: hashes.SHA1,
    CKD.SHA224_KDF: hashes.SHA224,
    CKD.SHA256_KDF: hashes.SHA256,
    CKD.SHA384_KDF: hashes.SHA384,
    CKD.SHA512_KDF: hashes.SHA512,
}

_KEYS: dict[str, ec.EllipticCurvePrivateKey] = {}


def private_key(curve: ec.EllipticCurve) -> ec.EllipticCurvePrivateKey:
    if curve.name not in _KEYS:
        _KEYS[curve.name] = ec.generate_private_key(curve)
    return _KEYS[curve.name]


def priv_key(private: ec.EllipticCurvePrivateKey) -> Key:
    return Key(CKK.EC, CKO.PRIVATE_KEY, private=private, size_bits=private.curve.key_size)


def pub_key(public: ec.EllipticCurvePublicKey) -> Key:
    return Key(CKK.EC, CKO.PUBLIC_KEY, public=public, size_bits=public.curve.key_size)


def raw_point(public: ec.EllipticCurvePublicKey, compressed: bool = False) -> bytes:
    fmt = serialization.PublicFormat.CompressedPoint if compressed else serialization.PublicFormat.UncompressedPoint
    return public.public_bytes(serialization.Encoding.X962, fmt)


def to_der(signature: bytes) -> bytes:
    half = len(signature) // 2
    return utils.encode_dss_signature(int.from_bytes(signature[:half], "big"), int.from_bytes(signature[half:], "big"))


def from_der(der: bytes, n_len: int) -> bytes:
    r, s = utils.decode_dss_signature(der)
    return r.to_bytes(n_len, "big") + s.to_bytes(n_len, "big")


def mech_sign(ckm: CKM, private: ec.EllipticCurvePrivateKey, data: bytes) -> bytes:
    return lookup(ckm).sign(priv_key(private), None).one_shot(data)


def mech_verify(ckm: CKM, public: ec.EllipticCurvePublicKey, data: bytes, signature: bytes) -> None:
    lookup(ckm).verify(pub_key(public), None).one_shot(data, signature)


# -- registry -------------------------------------------------------------------------------


def test_registered_table() -> None:
    gen = lookup(CKM.EC_KEY_PAIR_GEN)
    assert lookup(CKM.ECDSA_KEY_PAIR_GEN) is gen
    assert gen.capabilities == Capability.GENERATE_KEY_PAIR
    assert gen.key_types == {CKK.EC}
    assert (gen.min_key_size, gen.max_key_size) == (256, 521)
    raw = lookup(CKM.ECDSA)
    assert raw.capabilities == Capability.SIGN | Capability.VERIFY and not raw.multipart
    for ckm in HASHED:
        mech = lookup(ckm)
        assert mech.multipart and mech.key_types == {CKK.EC}
        assert (mech.min_key_size, mech.max_key_size) == (256, 521)
    derive = lookup(CKM.ECDH1_DERIVE)
    assert derive.capabilities == Capability.DERIVE and derive.key_types == {CKK.EC}


# -- CKA_EC_PARAMS --------------------------------------------------------------------------


@pytest.mark.parametrize("curve", CURVES, ids=CURVE_IDS)
def test_params_oid_matches_spki(curve: ec.EllipticCurve) -> None:
    # The library's SubjectPublicKeyInfo carries the namedCurve OID: an independent DER source.
    spki = (
        private_key(curve)
        .public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    params = eec.params_for_curve(curve)
    assert params[0] == 0x06 and params in spki
    assert eec.curve_from_params(params).name == curve.name
    assert eec.curve_from_params(bytearray(params)).name == curve.name


@pytest.mark.parametrize(
    "name, curve",
    [
        ("prime256v1", "secp256r1"),
        ("secp256r1", "secp256r1"),
        ("secp384r1", "secp384r1"),
        ("secp521r1", "secp521r1"),
        ("secp256k1", "secp256k1"),
    ],
)
def test_params_printable_names(name: str, curve: str) -> None:
    der = bytes([0x13, len(name)]) + name.encode()
    assert eec.curve_from_params(der).name == curve


@pytest.mark.parametrize(
    "der",
    [
        bytes.fromhex("06052b81040021"),  # secp224r1
        bytes.fromhex("06092b2403030208010107"),  # brainpoolP256r1
        bytes.fromhex("06032b6570"),  # Ed25519 is not an EC (Weierstrass) curve
        bytes.fromhex("0500"),  # implicitlyCA
        bytes.fromhex("3081f7020101302c06072a8648ce3d0101022100ff"),  # explicit parameters (start)
        bytes.fromhex("06082a8648ce3d03010700"),  # trailing byte
        bytes.fromhex("0681082a8648ce3d030107"),  # non-minimal length
        b"\x13\x0aPRIME256V1",
        b"\x0c\x0aprime256v1",  # UTF8String, not PrintableString
        b"prime256v1",
        b"",
    ],
)
def test_params_unsupported(der: bytes) -> None:
    with pytest.raises(CurveNotSupported):
        eec.curve_from_params(der)


def test_p192_is_known_and_left_to_the_legacy_policy() -> None:
    """P-192 parses (issue 13 item 8): whether a key on it may be made or used is the cluster policy
    legacy_algorithms' decision in mechanisms/ec.py (tests/unit/mechanisms/test_des.py), not the encoding's."""
    assert eec.curve_from_params(bytes.fromhex("06082a8648ce3d030101")).name == "secp192r1"
    with pytest.raises(CurveNotSupported, match="legacy_algorithms"):
        ecm.EC_KEY_PAIR_GEN.generate_key_pair(None, {CKA.EC_PARAMS: bytes.fromhex("06082a8648ce3d030101")}, {})


def _tlvs(data: bytes) -> Iterator[bytes]:
    """Split concatenated DER values (test-side parsing of a library-made SPKI)."""
    at = 0
    while at < len(data):
        first = data[at + 1]
        if first < 0x80:
            size = 2 + first
        else:
            n = first & 0x7F
            size = 2 + n + int.from_bytes(data[at + 2 : at + 2 + n], "big")
        yield data[at : at + size]
        at += size


def _content(tlv: bytes) -> bytes:
    return der.der_decode(tlv[0], tlv)


def test_params_explicit_from_vectors() -> None:
    with open_vector_file("asymmetric/EC/secp256r1-pub-explicit-seed.pem", "rb") as f:
        pem = f.read()
    spki = base64.b64decode(b"".join(line for line in pem.splitlines() if not line.startswith(b"-----")))
    (outer,) = _tlvs(spki)
    algorithm, _bits = _tlvs(_content(outer))
    _oid, explicit = _tlvs(_content(algorithm))
    assert explicit[0] == 0x30  # SEQUENCE: ECParameters, not a named curve
    with pytest.raises(CurveNotSupported):
        eec.curve_from_params(explicit)


def test_params_type() -> None:
    with pytest.raises(AttributeValueInvalid):
        eec.curve_from_params("prime256v1")
    with pytest.raises(AttributeValueInvalid):
        eec.curve_from_params(None)
    with pytest.raises(CurveNotSupported):
        eec.params_for_curve(ec.SECP224R1())


# -- DER helpers ----------------------------------------------------------------------------


def test_der_roundtrip_and_strictness() -> None:
    for size in (0, 1, 127, 128, 255, 256, 1000):
        content = bytes(range(256)) * 4
        content = content[:size]
        assert der.der_decode(0x04, der.der_encode(0x04, content)) == content
    assert der.der_encode(0x04, b"\x00" * 133)[:3] == b"\x04\x81\x85"
    for bad in (
        b"",
        b"\x04",
        b"\x05\x01\x00",  # wrong tag
        b"\x04\x02\x00",  # short
        b"\x04\x01\x00\x00",  # trailing
        b"\x04\x80\x00\x00",  # indefinite
        b"\x04\x81\x05abcde",  # non-minimal long form
        b"\x04\x82\x00\x85" + b"\x00" * 0x85,  # leading zero in length
        b"\x04\x83\x00\x00\x01\x00",  # too long a length field
    ):
        with pytest.raises(ValueError):
            der.der_decode(0x04, bad)


# -- CKA_EC_POINT ---------------------------------------------------------------------------


@pytest.mark.parametrize("curve", CURVES, ids=CURVE_IDS)
def test_point_forms(curve: ec.EllipticCurve) -> None:
    public = private_key(curve).public_key()
    uncompressed = raw_point(public)
    compressed = raw_point(public, compressed=True)
    encoded = eec.encode_point(public)
    assert der.der_decode(0x04, encoded) == uncompressed
    for form in (encoded, uncompressed, compressed, der.der_encode(0x04, compressed), bytearray(encoded)):
        assert eec.decode_point(curve, form) == public


def test_point_p521_uses_long_form_length() -> None:
    encoded = eec.encode_point(private_key(ec.SECP521R1()).public_key())
    assert encoded[:3] == b"\x04\x81\x85" and len(encoded) == 136


@pytest.mark.parametrize("curve", CURVES, ids=CURVE_IDS)
def test_point_invalid(curve: ec.EllipticCurve) -> None:
    public = private_key(curve).public_key()
    point = raw_point(public)
    off_curve = point[:-1] + bytes([point[-1] ^ 1])
    other = next(c for c in CURVES if NLEN[c.name] != NLEN[curve.name])
    bad = [
        off_curve,
        der.der_encode(0x04, off_curve),
        b"\x00",  # point at infinity
        der.der_encode(0x04, b"\x00"),
        b"\x05" + point[1:],  # unknown point form
        b"\x02" + point[1:],  # compressed tag, uncompressed length
        point[:-1],
        eec.encode_point(public) + b"\x00",
        raw_point(private_key(other).public_key()),
        b"",
    ]
    for data in bad:
        with pytest.raises(PublicKeyInvalid):
            eec.decode_point(curve, data)
    with pytest.raises(PublicKeyInvalid):
        eec.decode_point(curve, point.hex())


def test_attributes_roundtrip() -> None:
    for curve in CURVES:
        private = private_key(curve)
        attrs = eec.key_attributes(private)
        assert attrs == eec.key_attributes(private.public_key())
        assert set(attrs) == {CKA.EC_PARAMS, CKA.EC_POINT}
        assert eec.public_key_from_attributes(attrs) == private.public_key()
        assert eec.key_size_bits(private) == curve.key_size
    with pytest.raises(TemplateIncomplete):
        eec.public_key_from_attributes({CKA.EC_PARAMS: eec.params_for_curve(ec.SECP256R1())})
    with pytest.raises(TemplateIncomplete):
        eec.public_key_from_attributes({CKA.EC_POINT: b"\x04"})
    with pytest.raises(CurveNotSupported):
        eec.public_key_from_attributes(
            {CKA.EC_PARAMS: bytes.fromhex("06052b81040021"), CKA.EC_POINT: attrs[CKA.EC_POINT]}
        )


# -- key pair generation --------------------------------------------------------------------


@pytest.mark.parametrize("curve", CURVES, ids=CURVE_IDS)
def test_generate_key_pair(curve: ec.EllipticCurve) -> None:
    params = eec.params_for_curve(curve)
    pair = lookup(CKM.EC_KEY_PAIR_GEN).generate_key_pair(None, {CKA.EC_PARAMS: params}, {})
    assert pair.key_type == CKK.EC
    assert isinstance(pair.private, ec.EllipticCurvePrivateKey)
    assert pair.private.curve.name == curve.name
    assert pair.public_attributes == {CKA.EC_PARAMS: params, CKA.EC_POINT: eec.encode_point(pair.private.public_key())}
    assert pair.private_attributes == {CKA.EC_PARAMS: params}
    # The pair works with the library directly.
    signature = pair.private.sign(b"m", ec.ECDSA(hashes.SHA256()))
    eec.public_key_from_attributes(pair.public_attributes).verify(signature, b"m", ec.ECDSA(hashes.SHA256()))


def test_generate_key_pair_keeps_callers_encoding() -> None:
    name = b"\x13\x0aprime256v1"
    pair = lookup(CKM.EC_KEY_PAIR_GEN).generate_key_pair(None, {CKA.EC_PARAMS: name}, {CKA.EC_PARAMS: name})
    assert pair.public_attributes[CKA.EC_PARAMS] == name
    assert pair.private.curve.name == "secp256r1"
    # Same curve in the other encoding is consistent.
    lookup(CKM.EC_KEY_PAIR_GEN).generate_key_pair(
        None, {CKA.EC_PARAMS: name}, {CKA.EC_PARAMS: eec.params_for_curve(ec.SECP256R1())}
    )


def test_generate_key_pair_errors() -> None:
    gen = lookup(CKM.EC_KEY_PAIR_GEN)
    p256 = eec.params_for_curve(ec.SECP256R1())
    with pytest.raises(TemplateIncomplete):
        gen.generate_key_pair(None, {}, {CKA.EC_PARAMS: p256})
    with pytest.raises(CurveNotSupported):
        gen.generate_key_pair(None, {CKA.EC_PARAMS: bytes.fromhex("06052b81040021")}, {})
    with pytest.raises(AttributeValueInvalid):
        gen.generate_key_pair(None, {CKA.EC_PARAMS: 7}, {})
    with pytest.raises(TemplateInconsistent):
        gen.generate_key_pair(None, {CKA.EC_PARAMS: p256}, {CKA.EC_PARAMS: eec.params_for_curve(ec.SECP384R1())})
    with pytest.raises(MechanismParamInvalid):
        gen.generate_key_pair(b"\x01", {CKA.EC_PARAMS: p256}, {})


def test_pairwise_test_detects_mismatch() -> None:
    a = ec.generate_private_key(ec.SECP256R1())
    b = ec.generate_private_key(ec.SECP256R1())
    ecm.pairwise_test(a, a.public_key())
    with pytest.raises(DeviceError):
        ecm.pairwise_test(a, b.public_key())


# -- ECDSA with hashing ---------------------------------------------------------------------


@pytest.mark.parametrize("curve", CURVES, ids=CURVE_IDS)
@pytest.mark.parametrize("ckm", list(HASHED), ids=[m.name for m in HASHED])
def test_ecdsa_hash_cross_check(curve: ec.EllipticCurve, ckm: CKM) -> None:
    private = private_key(curve)
    public = private.public_key()
    algorithm = HASHED[ckm]()
    message = b"strongroom ecdsa " * 37

    signature = mech_sign(ckm, private, message)
    assert len(signature) == 2 * NLEN[curve.name]
    public.verify(to_der(signature), message, ec.ECDSA(algorithm))

    # Multi-part gives a signature over the concatenation.
    op = lookup(ckm).sign(priv_key(private), None)
    for i in range(0, len(message), 100):
        op.update(message[i : i + 100])
    public.verify(to_der(op.final()), message, ec.ECDSA(algorithm))

    # The reverse: the library signs, the mechanism verifies (one-shot and in parts).
    theirs = from_der(private.sign(message, ec.ECDSA(algorithm)), NLEN[curve.name])
    mech_verify(ckm, public, message, theirs)
    vop = lookup(ckm).verify(pub_key(public), None)
    vop.update(message[:5])
    vop.update(message[5:])
    vop.final(theirs)
    with pytest.raises(SignatureInvalid):
        mech_verify(ckm, public, message + b"x", theirs)


def _sigver_vectors() -> Iterator[tuple[str, str, dict[str, str]]]:
    section = ""
    record: dict[str, str] = {}
    with open_vector_file("asymmetric/ECDSA/FIPS_186-3/SigVer.rsp", "r") as f:
        for line in f:
            line = line.strip()
            if line.startswith("[") and "," in line:
                section = line[1:-1]
            elif " = " in line:
                key, value = line.split(" = ", 1)
                record[key] = value
                if key == "Result":
                    curve, hash_name = section.split(",")
                    yield curve, hash_name, record
                    record = {}


_NIST_CURVES = {"P-256": ec.SECP256R1(), "P-384": ec.SECP384R1(), "P-521": ec.SECP521R1()}
_NIST_HASHES = {
    "SHA-1": (CKM.ECDSA_SHA1, hashlib.sha1),
    "SHA-224": (CKM.ECDSA_SHA224, hashlib.sha224),
    "SHA-256": (CKM.ECDSA_SHA256, hashlib.sha256),
    "SHA-384": (CKM.ECDSA_SHA384, hashlib.sha384),
    "SHA-512": (CKM.ECDSA_SHA512, hashlib.sha512),
}


def test_ecdsa_fips_186_3_sigver() -> None:
    """Known answers, including digests longer than the order (P-256 with SHA-512 …)."""
    checked = 0
    for curve_name, hash_name, v in _sigver_vectors():
        if curve_name not in _NIST_CURVES:
            continue
        curve = _NIST_CURVES[curve_name]
        n_len = NLEN[curve.name]
        expected = v["Result"].startswith("P")
        point = b"\x04" + int(v["Qx"], 16).to_bytes(n_len, "big") + int(v["Qy"], 16).to_bytes(n_len, "big")
        try:
            public = eec.decode_point(curve, point)
        except PublicKeyInvalid:
            assert not expected
            continue
        signature = int(v["R"], 16).to_bytes(n_len, "big") + int(v["S"], 16).to_bytes(n_len, "big")
        message = bytes.fromhex(v["Msg"])
        ckm, hash_fn = _NIST_HASHES[hash_name]
        for mech, data in ((ckm, message), (CKM.ECDSA, hash_fn(message).digest())):
            if expected:
                mech_verify(mech, public, data, signature)
            else:
                with pytest.raises(SignatureInvalid):
                    mech_verify(mech, public, data, signature)
        checked += 1
    assert checked > 200


def test_ecdsa_secp256k1_vectors() -> None:
    hashes_by_name = {name: ckm for name, (ckm, _) in _NIST_HASHES.items()}
    section = ""
    record: dict[str, str] = {}
    count: dict[str, int] = {}
    with open_vector_file("asymmetric/ECDSA/SECP256K1/SigGen.txt", "r") as f:
        for line in f:
            line = line.strip()
            if line.startswith("["):
                section = line[1:-1].split(",")[1]
            elif " = " in line:
                key, value = line.split(" = ", 1)
                record[key] = value
                if key == "S":
                    count[section] = count.get(section, 0) + 1
                    if count[section] <= 10:
                        point = b"\x04" + _fixed(record["Qx"], 32) + _fixed(record["Qy"], 32)
                        public = eec.decode_point(ec.SECP256K1(), point)
                        sig = int(record["R"], 16).to_bytes(32, "big") + int(record["S"], 16).to_bytes(32, "big")
                        mech_verify(hashes_by_name[section], public, bytes.fromhex(record["Msg"]), sig)
                    record = {}
    assert len(count) == 5


def test_ecdsa_hash_operation_ends() -> None:
    private = private_key(ec.SECP256R1())
    op = lookup(CKM.ECDSA_SHA256).sign(priv_key(private), None)
    op.update(b"abc")
    op.final()
    with pytest.raises(OperationNotInitialized):
        op.update(b"more")
    with pytest.raises(OperationNotInitialized):
        op.final()

    op = lookup(CKM.ECDSA_SHA256).sign(priv_key(private), None)
    with pytest.raises(DataLenRange):
        op.update(b"\x00" * (MAX_DATA + 1))
    with pytest.raises(OperationNotInitialized):
        op.update(b"abc")

    vop = lookup(CKM.ECDSA_SHA256).verify(pub_key(private.public_key()), None)
    with pytest.raises(SignatureLenRange):
        vop.one_shot(b"abc", b"\x00" * 63)
    with pytest.raises(OperationNotInitialized):
        vop.final(b"\x00" * 64)

    op = lookup(CKM.ECDSA_SHA256).sign(priv_key(private), None)
    with pytest.raises(ArgumentsBad):
        op.update("text")  # type: ignore[arg-type]


# -- raw ECDSA ------------------------------------------------------------------------------

_STANDARD = {20: hashes.SHA1, 28: hashes.SHA224, 32: hashes.SHA256, 48: hashes.SHA384, 64: hashes.SHA512}


@pytest.mark.parametrize("curve", CURVES, ids=CURVE_IDS)
@pytest.mark.parametrize("size", sorted(_STANDARD))
def test_ecdsa_raw_standard_lengths(curve: ec.EllipticCurve, size: int) -> None:
    private = private_key(curve)
    public = private.public_key()
    digest = hashlib.sha512(b"digest %d" % size).digest()[:size]
    prehashed = ec.ECDSA(utils.Prehashed(_STANDARD[size]()))

    signature = mech_sign(CKM.ECDSA, private, digest)
    assert len(signature) == 2 * NLEN[curve.name]
    public.verify(to_der(signature), digest, prehashed)
    mech_verify(CKM.ECDSA, public, digest, from_der(private.sign(digest, prehashed), NLEN[curve.name]))


@pytest.mark.parametrize("curve", CURVES, ids=CURVE_IDS)
def test_ecdsa_raw_short_input_is_its_integer_value(curve: ec.EllipticCurve) -> None:
    # Any input up to nLen bytes is used as the integer it encodes: left-padding with
    # zeros to the curve size gives the same e (no truncation happens below N bits).
    private = private_key(curve)
    public = private.public_key()
    padded_size = 32  # <= N bits on every supported curve
    for size in (1, 7, 19, 31):
        data = bytes(range(1, size + 1))
        signature = mech_sign(CKM.ECDSA, private, data)
        padded = data.rjust(padded_size, b"\x00")
        public.verify(to_der(signature), padded, ec.ECDSA(utils.Prehashed(hashes.SHA256())))


def test_ecdsa_raw_long_input_truncates_to_order_bytes() -> None:
    for curve, size in ((ec.SECP256R1(), 32), (ec.SECP256K1(), 32), (ec.SECP384R1(), 48)):
        private = private_key(curve)
        data = hashlib.sha512(b"long").digest() + b"ignored tail"
        signature = mech_sign(CKM.ECDSA, private, data)
        algorithm = _STANDARD[size]()
        private.public_key().verify(to_der(signature), data[:size], ec.ECDSA(utils.Prehashed(algorithm)))
        # Only the first nLen bytes count.
        mech_verify(CKM.ECDSA, private.public_key(), data[:size] + b"other tail", signature)


def test_ecdsa_raw_p521_bit_truncation() -> None:
    """P-521: FIPS 186 keeps the leftmost 521 bits of a longer digest (e = int(first 66 bytes) >> 7)."""
    private = private_key(ec.SECP521R1())
    public = private.public_key()
    # First 9 bits zero, so e = int(data[:66]) >> 7 fits in 512 bits and SHA-512 can carry it.
    data = b"\x00\x7f" + hashlib.sha512(b"p521").digest() + b"\xa5\x5a\x33" + b"tail beyond nLen"
    e = int.from_bytes(data[:66], "big") >> 7
    assert e < 1 << 512
    expected_digest = e.to_bytes(64, "big")

    signature = mech_sign(CKM.ECDSA, private, data)
    assert len(signature) == 132
    public.verify(to_der(signature), expected_digest, ec.ECDSA(utils.Prehashed(hashes.SHA512())))
    # The reverse, and the 7 discarded low bits of byte 66 really do not matter.
    theirs = from_der(private.sign(expected_digest, ec.ECDSA(utils.Prehashed(hashes.SHA512()))), 66)
    mech_verify(CKM.ECDSA, public, data, theirs)
    flipped = data[:65] + bytes([data[65] ^ 0x7F]) + data[66:]
    mech_verify(CKM.ECDSA, public, flipped, theirs)
    with pytest.raises(SignatureInvalid):
        mech_verify(CKM.ECDSA, public, data[:65] + bytes([data[65] ^ 0x80]), theirs)
    # 65- and 66-byte inputs (no SHA-2 has these sizes) sign and verify with themselves.
    for size in (65, 66, 200):
        blob = hashlib.shake_256(b"x").digest(size)
        mech_verify(CKM.ECDSA, public, blob, mech_sign(CKM.ECDSA, private, blob))


def test_ecdsa_raw_is_single_part_and_bounded() -> None:
    private = private_key(ec.SECP256R1())
    op = lookup(CKM.ECDSA).sign(priv_key(private), None)
    with pytest.raises(FunctionNotSupported):
        op.update(b"\x00" * 32)
    with pytest.raises(FunctionNotSupported):
        op.final()
    with pytest.raises(DataLenRange):
        mech_sign(CKM.ECDSA, private, b"")
    with pytest.raises(DataLenRange):
        mech_sign(CKM.ECDSA, private, b"\x00" * (MAX_DATA + 1))
    with pytest.raises(DataLenRange):
        mech_verify(CKM.ECDSA, private.public_key(), b"", b"\x00" * 64)
    op = lookup(CKM.ECDSA).sign(priv_key(private), None)
    op.one_shot(b"\x01" * 32)
    with pytest.raises(OperationNotInitialized):
        op.one_shot(b"\x01" * 32)


# -- signature encoding ---------------------------------------------------------------------


@pytest.mark.parametrize("curve", CURVES, ids=CURVE_IDS)
def test_signature_lengths_and_tampering(curve: ec.EllipticCurve) -> None:
    private = private_key(curve)
    public = private.public_key()
    n_len = NLEN[curve.name]
    signature = mech_sign(CKM.ECDSA_SHA256, private, b"msg")
    assert len(signature) == 2 * n_len
    for bad_len in (b"", signature[:-1], signature + b"\x00\x00", signature + b"\x00", b"\x00"):
        with pytest.raises(SignatureLenRange):
            mech_verify(CKM.ECDSA_SHA256, public, b"msg", bad_len)
    for i in (0, n_len - 1, n_len, 2 * n_len - 1):
        tampered = bytearray(signature)
        tampered[i] ^= 0x01
        with pytest.raises(SignatureInvalid):
            mech_verify(CKM.ECDSA_SHA256, public, b"msg", bytes(tampered))
    with pytest.raises(SignatureInvalid):
        mech_verify(CKM.ECDSA_SHA256, public, b"msg", b"\x00" * (2 * n_len))  # r = s = 0
    with pytest.raises(SignatureInvalid):
        mech_verify(CKM.ECDSA_SHA256, public, b"msg", b"\xff" * (2 * n_len))  # r, s >= n
    with pytest.raises(SignatureInvalid):
        mech_verify(CKM.ECDSA_SHA256, public, b"msg", signature[2:n_len] + signature[n_len + 2 :])
    with pytest.raises(ArgumentsBad):
        mech_verify(CKM.ECDSA_SHA256, public, b"msg", signature.hex())  # type: ignore[arg-type]


def test_shorter_signature_accepted_as_spec_allows() -> None:
    # PKCS#11 §2.3.1: a verifier takes r||s of equal halves shorter than nLen. On P-521 the
    # top byte of r and s is 0 about half the time, so such a signature turns up quickly.
    private = private_key(ec.SECP521R1())
    for _ in range(200):
        signature = mech_sign(CKM.ECDSA_SHA512, private, b"short")
        if signature[0] == 0 and signature[66] == 0:
            break
    else:
        pytest.fail("no signature with two leading zero bytes")
    mech_verify(CKM.ECDSA_SHA512, private.public_key(), b"short", signature[1:66] + signature[67:])


# -- key checks -----------------------------------------------------------------------------


def test_ecdsa_key_checks() -> None:
    private = private_key(ec.SECP256R1())
    mech = lookup(CKM.ECDSA_SHA256)
    with pytest.raises(KeyTypeInconsistent):
        mech.sign(Key(CKK.RSA, CKO.PRIVATE_KEY, private=rsa.generate_private_key(65537, 1024)), None)
    with pytest.raises(KeyTypeInconsistent):
        mech.sign(Key(CKK.EC_EDWARDS, CKO.PRIVATE_KEY, private=ed25519.Ed25519PrivateKey.generate()), None)
    with pytest.raises(KeyTypeInconsistent):
        mech.sign(Key(CKK.EC, CKO.PRIVATE_KEY, private=ed25519.Ed25519PrivateKey.generate()), None)
    with pytest.raises(KeyTypeInconsistent):
        mech.sign(pub_key(private.public_key()), None)
    with pytest.raises(KeyTypeInconsistent):
        mech.verify(Key(CKK.EC, CKO.PUBLIC_KEY), None)
    with pytest.raises(CurveNotSupported):
        mech.sign(priv_key(ec.generate_private_key(ec.SECP224R1())), None)
    with pytest.raises(CurveNotSupported):
        mech.verify(pub_key(ec.generate_private_key(ec.SECP224R1()).public_key()), None)
    with pytest.raises(MechanismParamInvalid):
        mech.sign(priv_key(private), {"hash": CKM.SHA256})
    with pytest.raises(MechanismParamInvalid):
        lookup(CKM.ECDSA).verify(pub_key(private.public_key()), b"\x01")
    # A private key object verifies with its own public half.
    sig = mech_sign(CKM.ECDSA_SHA256, private, b"m")
    mech.verify(priv_key(private), None).one_shot(b"m", sig)


# -- ECDH -----------------------------------------------------------------------------------


def ecdh_params(kdf: CKD, public: bytes, shared: bytes | None = b"") -> dict[str, object]:
    return {"kdf": kdf, "shared_data": shared, "public_data": public}


def derive(private: ec.EllipticCurvePrivateKey, params: object, length: int) -> bytes:
    return lookup(CKM.ECDH1_DERIVE).derive(priv_key(private), params, length)


@pytest.mark.parametrize("curve", CURVES, ids=CURVE_IDS)
@pytest.mark.parametrize("kdf", list(KDFS), ids=[k.name for k in KDFS])
def test_ecdh_kdf_cross_check(curve: ec.EllipticCurve, kdf: CKD) -> None:
    alice = private_key(curve)
    bob = ec.generate_private_key(curve)
    shared = b"shared info"
    for length in (16, 32, 100):
        ours = derive(alice, ecdh_params(kdf, eec.encode_point(bob.public_key()), shared), length)
        z = bob.exchange(ec.ECDH(), alice.public_key())
        theirs = X963KDF(algorithm=KDFS[kdf](), length=length, sharedinfo=shared).derive(z)
        assert ours == theirs
        # The other party through the mechanism too, with the bare and compressed point.
        assert derive(bob, ecdh_params(kdf, raw_point(alice.public_key()), shared), length) == ours
        assert derive(bob, ecdh_params(kdf, raw_point(alice.public_key(), True), shared), length) == ours
    no_info = derive(alice, ecdh_params(kdf, raw_point(bob.public_key()), None), 32)
    z = alice.exchange(ec.ECDH(), bob.public_key())
    assert no_info == X963KDF(algorithm=KDFS[kdf](), length=32, sharedinfo=None).derive(z)
    assert derive(alice, ecdh_params(kdf, raw_point(bob.public_key()), b""), 32) == no_info
    assert derive(alice, ecdh_params(kdf, raw_point(bob.public_key()), b"other"), 32) != no_info
    assert len(derive(alice, ecdh_params(kdf, raw_point(bob.public_key())), ecm.MAX_DERIVED_LEN)) == 512


@pytest.mark.parametrize("curve", CURVES, ids=CURVE_IDS)
def test_ecdh_null_kdf(curve: ec.EllipticCurve) -> None:
    alice = private_key(curve)
    bob = ec.generate_private_key(curve)
    z = bob.exchange(ec.ECDH(), alice.public_key())
    n_len = NLEN[curve.name]
    assert len(z) == n_len
    params = ecdh_params(CKD.NULL, eec.encode_point(bob.public_key()), None)
    assert derive(alice, params, n_len) == z
    # PKCS#11 §2.3.9: truncation removes bytes from the leading end.
    assert derive(alice, params, 16) == z[-16:]
    assert derive(alice, {"kdf": CKD.NULL, "public_data": raw_point(bob.public_key())}, 1) == z[-1:]
    with pytest.raises(KeySizeRange):
        derive(alice, params, n_len + 1)


def _kas_vectors() -> Iterator[tuple[str, dict[str, str]]]:
    section = ""
    record: dict[str, str] = {}
    with open_vector_file("asymmetric/ECDH/KASValidityTest_ECCStaticUnified_NOKC_ZZOnly_init.fax", "r") as f:
        for line in f:
            line = line.strip()
            if line.startswith("[E") and " - " in line:
                section = line[1:3]
            elif " = " in line:
                key, value = line.split(" = ", 1)
                record[key] = value
                if key == "Result":
                    yield section, record
                    record = {}


def _fixed(hex_value: str, size: int) -> bytes:
    # The vectors pad P-521 values to 68 bytes; the protocol encoding is nLen bytes.
    return int(hex_value, 16).to_bytes(size, "big")


def test_ecdh_null_kdf_known_answers() -> None:
    curves = {"EC": ec.SECP256R1(), "ED": ec.SECP384R1(), "EE": ec.SECP521R1()}
    checked = 0
    for section, v in _kas_vectors():
        if section not in curves or not v["Result"].startswith("P"):
            continue
        curve = curves[section]
        n_len = NLEN[curve.name]
        private = ec.derive_private_key(int(v["dsIUT"], 16), curve)
        peer = b"\x04" + _fixed(v["QsCAVSx"], n_len) + _fixed(v["QsCAVSy"], n_len)
        z = _fixed(v["Z"], n_len)
        assert derive(private, ecdh_params(CKD.NULL, peer, None), n_len) == z
        checked += 1
    assert checked >= 15


def test_ecdh_param_errors() -> None:
    alice = private_key(ec.SECP256R1())
    point = raw_point(ec.generate_private_key(ec.SECP256R1()).public_key())
    mech = lookup(CKM.ECDH1_DERIVE)
    bad = [
        None,
        b"",
        point,
        [CKD.NULL, b"", point],
        {},
        {"kdf": CKD.NULL},
        {"public_data": point},
        {"kdf": True, "public_data": point},
        {"kdf": CKD.SHA1_KDF_ASN1, "public_data": point},
        {"kdf": CKD.SHA1_KDF_CONCATENATE, "public_data": point},
        {"kdf": 0, "public_data": point},
        {"kdf": "CKD_NULL", "public_data": point},
        {"kdf": CKD.NULL, "public_data": point, "shared_data": b"x"},  # CKD_NULL takes no shared data
        {"kdf": CKD.SHA256_KDF, "public_data": point, "shared_data": "text"},
        {"kdf": CKD.SHA256_KDF, "public_data": point, "shared_data": b"x" * (ecm.MAX_SHARED_DATA + 1)},
        {"kdf": CKD.SHA256_KDF, "public_data": b""},
        {"kdf": CKD.SHA256_KDF, "public_data": None},
        {"kdf": CKD.SHA256_KDF, "public_data": point.hex()},
        {"kdf": CKD.SHA256_KDF, "public_data": b"\x04" * 2000},
        {"kdf": CKD.SHA256_KDF, "public_data": point, "other": 1},
    ]
    for params in bad:
        with pytest.raises(MechanismParamInvalid):
            mech.parse_params(params)
        with pytest.raises(MechanismParamInvalid):
            derive(alice, params, 16)
    parsed = mech.parse_params(ecdh_params(CKD.SHA256_KDF, point, b"s"))
    assert parsed == ecm.EcdhParams(CKD.SHA256_KDF, b"s", point)
    assert derive(alice, parsed, 16) == derive(alice, ecdh_params(CKD.SHA256_KDF, point, b"s"), 16)


def test_ecdh_public_and_length_errors() -> None:
    alice = private_key(ec.SECP256R1())
    point = raw_point(ec.generate_private_key(ec.SECP256R1()).public_key())
    off_curve = point[:-1] + bytes([point[-1] ^ 1])
    for public in (
        off_curve,
        der.der_encode(0x04, off_curve),
        raw_point(private_key(ec.SECP384R1()).public_key()),
        b"\x00",
        b"garbage",
    ):
        for kdf in (CKD.NULL, CKD.SHA256_KDF):
            with pytest.raises(PublicKeyInvalid):
                derive(alice, ecdh_params(kdf, public, None), 16)
    params = ecdh_params(CKD.SHA256_KDF, point)
    for length in (0, -1, ecm.MAX_DERIVED_LEN + 1):
        with pytest.raises(KeySizeRange):
            derive(alice, params, length)
    with pytest.raises(ArgumentsBad):
        derive(alice, params, True)
    with pytest.raises(ArgumentsBad):
        derive(alice, params, "16")  # type: ignore[arg-type]


def test_ecdh_key_checks() -> None:
    alice = private_key(ec.SECP256R1())
    params = ecdh_params(CKD.NULL, raw_point(alice.public_key()))
    mech = lookup(CKM.ECDH1_DERIVE)
    with pytest.raises(KeyTypeInconsistent):
        mech.derive(pub_key(alice.public_key()), params, 16)
    with pytest.raises(KeyTypeInconsistent):
        mech.derive(Key(CKK.GENERIC_SECRET, CKO.SECRET_KEY, value=b"k" * 32), params, 16)
    with pytest.raises(CurveNotSupported):
        mech.derive(priv_key(ec.generate_private_key(ec.SECP224R1())), params, 16)
