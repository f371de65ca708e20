"""EdDSA: RFC 8032 known answers (Ed25519 and Ed448), cross-checks, key pairs, errors."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519
from cryptography_vectors import open_vector_file

from strongroom.constants import CKA, CKK, CKM, CKO
from strongroom.encoding import eddsa as eddsa_enc
from strongroom.encoding.der import der_decode, der_encode
from strongroom.errors import (
    ArgumentsBad,
    AttributeValueInvalid,
    CurveNotSupported,
    DataLenRange,
    DeviceError,
    FunctionNotSupported,
    KeyTypeInconsistent,
    MechanismParamInvalid,
    OperationNotInitialized,
    PublicKeyInvalid,
    SignatureInvalid,
    SignatureLenRange,
    TemplateIncomplete,
    TemplateInconsistent,
)
from strongroom.mechanisms import eddsa
from strongroom.mechanisms.base import MAX_DATA, Capability, Key, lookup

ED25519_OID = bytes.fromhex("06032b6570")
ED448_OID = bytes.fromhex("06032b6571")
PRIVATE_TYPES = {"edwards25519": ed25519.Ed25519PrivateKey, "edwards448": ed448.Ed448PrivateKey}
CURVES = [eddsa_enc.ED25519, eddsa_enc.ED448]
CURVE_IDS = [c.name for c in CURVES]


def priv_key(private: eddsa_enc.EdPrivateKey) -> Key:
    return Key(CKK.EC_EDWARDS, CKO.PRIVATE_KEY, private=private, size_bits=eddsa_enc.key_size_bits(private))


def pub_key(public: eddsa_enc.EdPublicKey) -> Key:
    return Key(CKK.EC_EDWARDS, CKO.PUBLIC_KEY, public=public, size_bits=eddsa_enc.key_size_bits(public))


def sign(private: eddsa_enc.EdPrivateKey, data: bytes) -> bytes:
    return lookup(CKM.EDDSA).sign(priv_key(private), None).one_shot(data)


def verify(public: eddsa_enc.EdPublicKey, data: bytes, signature: bytes) -> None:
    lookup(CKM.EDDSA).verify(pub_key(public), None).one_shot(data, signature)


def raw(public: eddsa_enc.EdPublicKey) -> bytes:
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


# -- registry -------------------------------------------------------------------------------


def test_registered_table() -> None:
    gen = lookup(CKM.EC_EDWARDS_KEY_PAIR_GEN)
    assert gen.capabilities == Capability.GENERATE_KEY_PAIR and gen.key_types == {CKK.EC_EDWARDS}
    assert (gen.min_key_size, gen.max_key_size) == (255, 448)
    mech = lookup(CKM.EDDSA)
    assert mech.capabilities == Capability.SIGN | Capability.VERIFY and not mech.multipart
    assert mech.key_types == {CKK.EC_EDWARDS}


# -- known answers --------------------------------------------------------------------------


def _ed25519_vectors(count: int) -> Iterator[tuple[bytes, bytes, bytes, bytes]]:
    # djb's sign.input, whose first lines are RFC 8032 §7.1 TEST 1, 2, 3 …:
    # secret||public : public : message : signature||message :
    with open_vector_file("asymmetric/Ed25519/sign.input", "r") as f:
        for _, line in zip(range(count), f, strict=False):
            sk_pk, pk, msg, sig_msg, _ = line.split(":")
            yield bytes.fromhex(sk_pk[:64]), bytes.fromhex(pk), bytes.fromhex(msg), bytes.fromhex(sig_msg[:128])


def test_ed25519_rfc8032_test1() -> None:
    # RFC 8032 §7.1 TEST 1 (empty message), spelled out.
    secret = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
    public = bytes.fromhex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
    signature = bytes.fromhex(
        "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e06522490155"
        "5fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"
    )
    private = ed25519.Ed25519PrivateKey.from_private_bytes(secret)
    assert raw(private.public_key()) == public
    assert sign(private, b"") == signature
    verify(eddsa_enc.decode_point(eddsa_enc.ED25519, public), b"", signature)


def test_ed25519_vectors() -> None:
    for secret, public, message, signature in _ed25519_vectors(64):
        private = ed25519.Ed25519PrivateKey.from_private_bytes(secret)
        assert sign(private, message) == signature  # Ed25519 is deterministic
        verify(eddsa_enc.decode_point(eddsa_enc.ED25519, der_encode(0x04, public)), message, signature)


def test_ed448_rfc8032_vectors() -> None:
    record: dict[str, str] = {}
    checked = 0
    with open_vector_file("asymmetric/Ed448/rfc8032.txt", "r") as f:
        lines = [line.strip() for line in f] + [""]
    for line in lines:
        if " = " in line or line.endswith(" ="):
            key, _, value = line.partition(" =")
            record[key] = value.strip()
        elif not line and record:
            if "CONTEXT" not in record:  # pure Ed448 only: contexts are not offered
                private = ed448.Ed448PrivateKey.from_private_bytes(bytes.fromhex(record["SECRET"]))
                public = bytes.fromhex(record["PUBLIC"])
                assert raw(private.public_key()) == public
                message = bytes.fromhex(record["MESSAGE"])
                signature = bytes.fromhex(record["SIGNATURE"])
                assert sign(private, message) == signature
                verify(eddsa_enc.decode_point(eddsa_enc.ED448, public), message, signature)
                checked += 1
            record = {}
    assert checked >= 8


# -- cross-checks ---------------------------------------------------------------------------


@pytest.mark.parametrize("curve", CURVES, ids=CURVE_IDS)
def test_cross_check(curve: eddsa_enc.EdwardsCurve) -> None:
    private = PRIVATE_TYPES[curve.name].generate()
    public = private.public_key()
    for message in (b"", b"m", bytes(range(256)) * 40):
        signature = sign(private, message)
        assert len(signature) == curve.signature_len
        public.verify(signature, message)
        verify(public, message, private.sign(message))
        # A private key object verifies with its own public half.
        lookup(CKM.EDDSA).verify(priv_key(private), None).one_shot(message, signature)


# -- helpers --------------------------------------------------------------------------------


@pytest.mark.parametrize("curve", CURVES, ids=CURVE_IDS)
def test_params_and_points(curve: eddsa_enc.EdwardsCurve) -> None:
    private = PRIVATE_TYPES[curve.name].generate()
    public = private.public_key()
    spki = public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert curve.params in spki  # the library's own encoding of the RFC 8410 OID
    assert eddsa_enc.curve_from_params(curve.params) is curve
    assert eddsa_enc.curve_from_params(bytes([0x13, len(curve.name)]) + curve.name.encode()) is curve
    attrs = eddsa_enc.key_attributes(private)
    assert attrs == eddsa_enc.key_attributes(public) == {CKA.EC_PARAMS: curve.params, CKA.EC_POINT: attrs[CKA.EC_POINT]}
    assert der_decode(0x04, attrs[CKA.EC_POINT]) == raw(public)
    assert eddsa_enc.public_key_from_attributes(attrs) == public
    assert eddsa_enc.decode_point(curve, raw(public)) == public
    assert eddsa_enc.key_size_bits(private) == curve.size_bits
    for bad in (raw(public)[:-1], raw(public) + b"\x00", der_encode(0x04, raw(public)[:-1]), b"", b"\x04\x00"):
        with pytest.raises(PublicKeyInvalid):
            eddsa_enc.decode_point(curve, bad)
    with pytest.raises(PublicKeyInvalid):
        eddsa_enc.decode_point(curve, raw(public).hex())


def test_params_errors() -> None:
    for der in (
        bytes.fromhex("06082a8648ce3d030107"),  # P-256
        bytes.fromhex("06032b656e"),  # X25519
        bytes.fromhex("06032b657000"),
        b"\x13\x0cEDWARDS25519",
        b"\x0c\x0cedwards25519",
        b"edwards25519",
        b"",
    ):
        with pytest.raises(CurveNotSupported):
            eddsa_enc.curve_from_params(der)
    with pytest.raises(AttributeValueInvalid):
        eddsa_enc.curve_from_params("edwards25519")
    with pytest.raises(TemplateIncomplete):
        eddsa_enc.public_key_from_attributes({CKA.EC_PARAMS: ED25519_OID})
    with pytest.raises(KeyTypeInconsistent):
        eddsa_enc.key_attributes(ec.generate_private_key(ec.SECP256R1()))  # type: ignore[arg-type]


# -- key pair generation --------------------------------------------------------------------


@pytest.mark.parametrize(
    "params, curve",
    [
        (ED25519_OID, eddsa_enc.ED25519),
        (b"\x13\x0cedwards25519", eddsa_enc.ED25519),
        (ED448_OID, eddsa_enc.ED448),
        (b"\x13\x0aedwards448", eddsa_enc.ED448),
    ],
)
def test_generate_key_pair(params: bytes, curve: eddsa_enc.EdwardsCurve) -> None:
    pair = lookup(CKM.EC_EDWARDS_KEY_PAIR_GEN).generate_key_pair(None, {CKA.EC_PARAMS: params}, {})
    assert pair.key_type == CKK.EC_EDWARDS
    assert isinstance(pair.private, PRIVATE_TYPES[curve.name])
    point = eddsa_enc.encode_point(pair.private.public_key())
    assert pair.public_attributes == {CKA.EC_PARAMS: params, CKA.EC_POINT: point}
    assert pair.private_attributes == {CKA.EC_PARAMS: params}
    public = eddsa_enc.public_key_from_attributes(pair.public_attributes)
    public.verify(pair.private.sign(b"m"), b"m")


def test_generate_key_pair_errors() -> None:
    gen = lookup(CKM.EC_EDWARDS_KEY_PAIR_GEN)
    with pytest.raises(TemplateIncomplete):
        gen.generate_key_pair(None, {}, {CKA.EC_PARAMS: ED25519_OID})
    with pytest.raises(CurveNotSupported):
        gen.generate_key_pair(None, {CKA.EC_PARAMS: bytes.fromhex("06082a8648ce3d030107")}, {})
    with pytest.raises(TemplateInconsistent):
        gen.generate_key_pair(None, {CKA.EC_PARAMS: ED25519_OID}, {CKA.EC_PARAMS: ED448_OID})
    with pytest.raises(MechanismParamInvalid):
        gen.generate_key_pair({"x": 1}, {CKA.EC_PARAMS: ED25519_OID}, {})
    # The same curve spelt differently in the private template is consistent.
    gen.generate_key_pair(None, {CKA.EC_PARAMS: ED25519_OID}, {CKA.EC_PARAMS: b"\x13\x0cedwards25519"})


def test_pairwise_test_detects_mismatch() -> None:
    a = ed25519.Ed25519PrivateKey.generate()
    eddsa.pairwise_test(a, a.public_key())
    with pytest.raises(DeviceError):
        eddsa.pairwise_test(a, ed25519.Ed25519PrivateKey.generate().public_key())
    with pytest.raises(DeviceError):
        eddsa.pairwise_test(a, ed448.Ed448PrivateKey.generate().public_key())  # type: ignore[arg-type]


# -- errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize("curve", CURVES, ids=CURVE_IDS)
def test_signature_errors(curve: eddsa_enc.EdwardsCurve) -> None:
    private = PRIVATE_TYPES[curve.name].generate()
    public = private.public_key()
    signature = sign(private, b"msg")
    for bad in (b"", signature[:-1], signature + b"\x00"):
        with pytest.raises(SignatureLenRange):
            verify(public, b"msg", bad)
    for i in (0, len(signature) // 2, len(signature) - 1):
        tampered = bytearray(signature)
        tampered[i] ^= 0x04
        with pytest.raises(SignatureInvalid):
            verify(public, b"msg", bytes(tampered))
    with pytest.raises(SignatureInvalid):
        verify(public, b"msG", signature)
    with pytest.raises(SignatureInvalid):
        verify(PRIVATE_TYPES[curve.name].generate().public_key(), b"msg", signature)
    with pytest.raises(ArgumentsBad):
        verify(public, b"msg", signature.hex())  # type: ignore[arg-type]


def test_single_part_and_bounds() -> None:
    private = ed25519.Ed25519PrivateKey.generate()
    op = lookup(CKM.EDDSA).sign(priv_key(private), None)
    with pytest.raises(FunctionNotSupported):
        op.update(b"m")
    with pytest.raises(FunctionNotSupported):
        op.final()
    vop = lookup(CKM.EDDSA).verify(pub_key(private.public_key()), None)
    with pytest.raises(FunctionNotSupported):
        vop.update(b"m")
    with pytest.raises(DataLenRange):
        sign(private, b"\x00" * (MAX_DATA + 1))
    with pytest.raises(DataLenRange):
        verify(private.public_key(), b"\x00" * (MAX_DATA + 1), b"\x00" * 64)
    with pytest.raises(ArgumentsBad):
        sign(private, "text")  # type: ignore[arg-type]
    op = lookup(CKM.EDDSA).sign(priv_key(private), None)
    op.one_shot(b"m")
    with pytest.raises(OperationNotInitialized):
        op.one_shot(b"m")


def test_params_rejected() -> None:
    private = ed25519.Ed25519PrivateKey.generate()
    mech = lookup(CKM.EDDSA)
    for params in (None, b"", {}, {"ph_flag": False, "context_data": b""}, {"ph_flag": True},
                   {"ph_flag": False, "context_data": b"ctx"}):
        mech.sign(priv_key(private), params)
    for params in (
        {"ph_flag": 1, "context_data": b""},
        {"ph_flag": True, "context_data": b"x" * 256},
        {"ph_flag": True, "context": b""},
        {"ph_flag": False, "context_data": "ctx"},
        b"\x00",
        0,
    ):
        with pytest.raises(MechanismParamInvalid):
            mech.sign(priv_key(private), params)
        with pytest.raises(MechanismParamInvalid):
            mech.verify(pub_key(private.public_key()), params)


def test_key_checks() -> None:
    mech = lookup(CKM.EDDSA)
    ec_private = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(KeyTypeInconsistent):
        mech.sign(Key(CKK.EC, CKO.PRIVATE_KEY, private=ec_private), None)
    with pytest.raises(KeyTypeInconsistent):
        mech.sign(Key(CKK.EC_EDWARDS, CKO.PRIVATE_KEY, private=ec_private), None)
    with pytest.raises(KeyTypeInconsistent):
        mech.sign(pub_key(ed25519.Ed25519PrivateKey.generate().public_key()), None)
    with pytest.raises(KeyTypeInconsistent):
        mech.verify(Key(CKK.EC_EDWARDS, CKO.PUBLIC_KEY, public=ec_private.public_key()), None)
    with pytest.raises(KeyTypeInconsistent):
        lookup(CKM.ECDSA_SHA256).sign(priv_key(ed25519.Ed25519PrivateKey.generate()), None)


# RFC 8032 §7.3 "TEST abc" (Ed25519ph): the node's CKM_EDDSA with ph_flag gives the published signature.
ED25519PH_SECRET = bytes.fromhex("833fe62409237b9d62ec77587520911e9a759cec1d19755b7da901b96dca3d42")
ED25519PH_SIGNATURE = bytes.fromhex(
    "98a70222f0b8121aa9d30f813d683f809e462b469c7ff87639499bb94e6dae41"
    "31f85042463c2a355a2003d062adf5aaa10b8c61e636062aaad11c2a26083406")


def test_ed25519ph_is_rfc8032_hash_eddsa() -> None:
    private = ed25519.Ed25519PrivateKey.from_private_bytes(ED25519PH_SECRET)
    mech = lookup(CKM.EDDSA)
    ph = {"ph_flag": True, "context_data": b""}
    signature = mech.sign(priv_key(private), ph).one_shot(b"abc")
    assert signature == ED25519PH_SIGNATURE  # deterministic, so the published answer itself
    mech.verify(pub_key(private.public_key()), ph).one_shot(b"abc", signature)
    # Not a pure signature, and not over another message.
    with pytest.raises(SignatureInvalid):
        mech.verify(pub_key(private.public_key()), None).one_shot(b"abc", signature)
    with pytest.raises(SignatureInvalid):
        mech.verify(pub_key(private.public_key()), ph).one_shot(b"abd", signature)


@pytest.mark.parametrize("generate", [ed25519.Ed25519PrivateKey.generate, ed448.Ed448PrivateKey.generate])
def test_context_and_prehash_variants_are_distinct(generate: Any) -> None:
    private = generate()
    mech = lookup(CKM.EDDSA)
    variants = [None, {"ph_flag": True}, {"context_data": b"ctx"}, {"ph_flag": True, "context_data": b"ctx"}]
    signatures = [mech.sign(priv_key(private), v).one_shot(b"message") for v in variants]
    for variant, signature in zip(variants, signatures, strict=True):
        mech.verify(pub_key(private.public_key()), variant).one_shot(b"message", signature)
        for other in variants:
            if other is not variant:
                with pytest.raises(SignatureInvalid):
                    mech.verify(pub_key(private.public_key()), other).one_shot(b"message", signature)
