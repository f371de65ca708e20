"""CKM_ML_DSA_KEY_PAIR_GEN and CKM_ML_DSA (mechanisms/mldsa.py): key objects, signatures checked by
pyca/cryptography outside the node, FIPS 204 vectors, the external μ, parts, and every refusal."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, mldsa
from cryptography_vectors import open_vector_file

from strongroom.constants import CKA, CKK, CKM, CKO
from strongroom.errors import (
    AttributeValueInvalid,
    DataLenRange,
    KeyTypeInconsistent,
    MechanismParamInvalid,
    OperationNotInitialized,
    PublicKeyInvalid,
    SignatureInvalid,
    SignatureLenRange,
    TemplateIncomplete,
    TemplateInconsistent,
    WrappedKeyInvalid,
)
from strongroom.mechanisms import mldsa as mech_mldsa
from strongroom.mechanisms.base import Capability, Key, lookup
from strongroom.objects import builder
from strongroom.objects.keys import build_key, private_to_der

SETS = sorted(mech_mldsa.PARAMETER_SETS.values(), key=lambda p: p.ckp)
SET_IDS = [p.name for p in SETS]


def generate(ckp: int) -> tuple[Key, Key, Any]:
    """(private Key, public Key built from the public object's attributes, the pyca private key)."""
    pair = lookup(CKM.ML_DSA_KEY_PAIR_GEN).generate_key_pair(None, {CKA.PARAMETER_SET: ckp}, {})
    public = mech_mldsa.public_key_from_attributes(pair.public_attributes)
    private_key = Key(CKK.ML_DSA, CKO.PRIVATE_KEY, private=pair.private, public=pair.private.public_key())
    return private_key, Key(CKK.ML_DSA, CKO.PUBLIC_KEY, public=public), pair.private


def sign(key: Key, data: bytes, params: Any = None) -> bytes:
    return lookup(CKM.ML_DSA).sign(key, params).one_shot(data)


def verify(key: Key, data: bytes, signature: bytes, params: Any = None) -> None:
    lookup(CKM.ML_DSA).verify(key, params).one_shot(data, signature)


def mu_of(public: Any, message: bytes, context: bytes | None = None) -> bytes:
    hasher = mldsa.MLDSAMuHasher(public, context)
    hasher.update(message)
    return bytes(hasher.finalize())


def test_registered_table() -> None:
    gen = lookup(CKM.ML_DSA_KEY_PAIR_GEN)
    assert gen.capabilities == Capability.GENERATE_KEY_PAIR and gen.key_types == {CKK.ML_DSA}
    mech = lookup(CKM.ML_DSA)
    assert mech.capabilities == Capability.SIGN | Capability.VERIFY and mech.multipart
    # PKCS#11 3.2: ML-DSA mechanism info names the parameter sets (CKP_ML_DSA_44 .. CKP_ML_DSA_87).
    assert (mech.min_key_size, mech.max_key_size) == (1, 3) == (gen.min_key_size, gen.max_key_size)


# -- key pairs ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("chosen", SETS, ids=SET_IDS)
def test_generated_pair_attributes(chosen: mech_mldsa.ParameterSet) -> None:
    pair = lookup(CKM.ML_DSA_KEY_PAIR_GEN).generate_key_pair(None, {CKA.PARAMETER_SET: chosen.ckp}, {})
    assert pair.key_type is CKK.ML_DSA and isinstance(pair.private, chosen.private_class)
    public = pair.private.public_key()
    raw = public.public_bytes_raw()
    assert pair.public_attributes[CKA.PARAMETER_SET] == chosen.ckp == pair.private_attributes[CKA.PARAMETER_SET]
    assert pair.public_attributes[CKA.VALUE] == raw and len(raw) == chosen.public_len
    spki = public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert pair.public_attributes[CKA.PUBLIC_KEY_INFO] == spki == pair.private_attributes[CKA.PUBLIC_KEY_INFO]
    assert CKA.VALUE not in pair.private_attributes and CKA.SEED not in pair.private_attributes
    # The parameter set may come from the private template, and may be repeated.
    lookup(CKM.ML_DSA_KEY_PAIR_GEN).generate_key_pair(None, {}, {CKA.PARAMETER_SET: chosen.ckp})
    lookup(CKM.ML_DSA_KEY_PAIR_GEN).generate_key_pair(None, {CKA.PARAMETER_SET: chosen.ckp},
                                                      {CKA.PARAMETER_SET: chosen.ckp})


def test_generation_refusals() -> None:
    gen = lookup(CKM.ML_DSA_KEY_PAIR_GEN)
    with pytest.raises(TemplateIncomplete):
        gen.generate_key_pair(None, {}, {})
    for bad in (0, 4, 0x1D):
        with pytest.raises(AttributeValueInvalid):
            gen.generate_key_pair(None, {CKA.PARAMETER_SET: bad}, {})
    with pytest.raises(TemplateInconsistent):
        gen.generate_key_pair(None, {CKA.PARAMETER_SET: 1}, {CKA.PARAMETER_SET: 2})
    with pytest.raises(MechanismParamInvalid):
        gen.generate_key_pair({"context": b""}, {CKA.PARAMETER_SET: 1}, {})


def test_public_key_from_attributes_refusals() -> None:
    _, _, private = generate(mech_mldsa.CKP_ML_DSA_65)
    raw = private.public_key().public_bytes_raw()
    with pytest.raises(PublicKeyInvalid):  # ML-DSA-65's key named as ML-DSA-44
        mech_mldsa.public_key_from_attributes({CKA.PARAMETER_SET: 1, CKA.VALUE: raw})
    with pytest.raises(PublicKeyInvalid):
        mech_mldsa.public_key_from_attributes({CKA.PARAMETER_SET: 2, CKA.VALUE: raw[:-1]})
    with pytest.raises(AttributeValueInvalid):
        mech_mldsa.public_key_from_attributes({CKA.VALUE: raw})
    assert mech_mldsa.public_key_from_attributes({CKA.PARAMETER_SET: 2, CKA.VALUE: raw}) == private.public_key()


def test_stored_objects_load_and_unwrap() -> None:
    """The object layer keeps the private key as PKCS#8 (the seed form) and rebuilds both halves; an
    unwrapped ML-DSA private key gets its type, parameter set and public key info."""
    pair = lookup(CKM.ML_DSA_KEY_PAIR_GEN).generate_key_pair(None, {CKA.PARAMETER_SET: 2}, {})
    maker = builder.Maker("alice", "uid-alice")
    public_obj, private_obj = builder.generated_pair(maker, {CKA.TOKEN: True}, {CKA.TOKEN: True}, pair,
                                                     int(CKM.ML_DSA_KEY_PAIR_GEN), None, None)
    assert public_obj.attributes[CKA.VERIFY] and not public_obj.attributes[CKA.ENCRYPT]
    assert private_obj.attributes[CKA.SIGN] and not private_obj.attributes[CKA.DECRYPT]
    assert len(private_obj.material or b"") == 54  # PKCS#8 of the 32-byte seed
    private_key, public_key = build_key(private_obj), build_key(public_obj)
    signature = sign(private_key, b"stored")
    verify(public_key, b"stored", signature)
    unwrapped = builder.unwrapped_key(maker, {CKA.CLASS: CKO.PRIVATE_KEY, CKA.KEY_TYPE: CKK.ML_DSA},
                                      private_to_der(pair.private))
    assert unwrapped.attributes[CKA.PARAMETER_SET] == 2
    assert unwrapped.attributes[CKA.PUBLIC_KEY_INFO] == pair.public_attributes[CKA.PUBLIC_KEY_INFO]
    with pytest.raises(WrappedKeyInvalid, match="ML_DSA"):
        builder.unwrapped_key(maker, {CKA.CLASS: CKO.PRIVATE_KEY, CKA.KEY_TYPE: CKK.EC}, private_to_der(pair.private))


# -- signatures --------------------------------------------------------------------------------------


@pytest.mark.parametrize("chosen", SETS, ids=SET_IDS)
def test_signatures_verify_outside_the_node(chosen: mech_mldsa.ParameterSet) -> None:
    private_key, public_key, private = generate(chosen.ckp)
    outside = chosen.public_from_bytes(private.public_key().public_bytes_raw())
    for message in (b"", b"m", bytes(range(256)) * 16):
        signature = sign(private_key, message)
        assert len(signature) == chosen.signature_len
        outside.verify(signature, message)
        verify(public_key, message, signature)
        with pytest.raises(InvalidSignature):
            outside.verify(signature, message + b"x")
    # Hedged: two signatures of one message differ, both verify.
    assert sign(private_key, b"m") != sign(private_key, b"m")


def test_context_binds_the_signature() -> None:
    private_key, public_key, private = generate(mech_mldsa.CKP_ML_DSA_44)
    context = {"context": b"strongroom", "hedge": mech_mldsa.CKH_HEDGE_REQUIRED}
    signature = sign(private_key, b"msg", context)
    private.public_key().verify(signature, b"msg", b"strongroom")
    verify(public_key, b"msg", signature, context)
    with pytest.raises(SignatureInvalid):
        verify(public_key, b"msg", signature)
    with pytest.raises(SignatureInvalid):
        verify(public_key, b"msg", signature, {"context": b"other"})


def test_external_mu_gives_the_raw_message_signature() -> None:
    """AWS KMS's EXTERNAL_MU: the node signs a 64-byte μ; the signature verifies as one over the message."""
    private_key, public_key, private = generate(mech_mldsa.CKP_ML_DSA_65)
    message = b"a message too large to send" * 1000
    mu = mu_of(private.public_key(), message)
    signature = sign(private_key, mu, {"external_mu": True})
    private.public_key().verify(signature, message)
    verify(public_key, message, signature)
    verify(public_key, mu, signature, {"external_mu": True})
    with pytest.raises(SignatureInvalid):
        verify(public_key, bytes(64), signature, {"external_mu": True})
    for bad in (mu[:-1], mu + b"\0", b""):
        with pytest.raises(DataLenRange):
            sign(private_key, bad, {"external_mu": True})
        with pytest.raises(DataLenRange):
            verify(public_key, bad, signature, {"external_mu": True})


def test_signing_in_parts_equals_one_part() -> None:
    private_key, public_key, private = generate(mech_mldsa.CKP_ML_DSA_87)
    mech = lookup(CKM.ML_DSA)
    for params, context in ((None, None), ({"context": b"ctx"}, b"ctx")):
        signer = mech.sign(private_key, params)
        for part in (b"one ", b"two ", b"", b"three"):
            signer.update(part)
        signature = signer.final()
        private.public_key().verify(signature, b"one two three", context)
        verifier = mech.verify(public_key, params)
        verifier.update(b"one two")
        verifier.update(b" three")
        verifier.final(signature)
        verifier = mech.verify(public_key, params)
        verifier.update(b"one two three!")
        with pytest.raises(SignatureInvalid):
            verifier.final(signature)
    # No part at all: the empty message.
    signer = mech.sign(private_key, None)
    private.public_key().verify(signer.final(), b"")


def test_an_operation_is_used_once() -> None:
    private_key, public_key, _ = generate(mech_mldsa.CKP_ML_DSA_44)
    signer = lookup(CKM.ML_DSA).sign(private_key, None)
    signature = signer.one_shot(b"m")
    with pytest.raises(OperationNotInitialized):
        signer.one_shot(b"m")
    verifier = lookup(CKM.ML_DSA).verify(public_key, None)
    verifier.one_shot(b"m", signature)
    with pytest.raises(OperationNotInitialized):
        verifier.one_shot(b"m", signature)
    signer = lookup(CKM.ML_DSA).sign(private_key, {"external_mu": True})
    with pytest.raises(DataLenRange):
        signer.update(b"short")
    with pytest.raises(OperationNotInitialized):  # a failed part ends the operation
        signer.final()


def test_signature_refusals() -> None:
    private_key, public_key, _ = generate(mech_mldsa.CKP_ML_DSA_44)
    signature = sign(private_key, b"m")
    with pytest.raises(SignatureLenRange):
        verify(public_key, b"m", signature[:-1])
    with pytest.raises(SignatureLenRange):
        verify(public_key, b"m", signature + b"\0")
    with pytest.raises(SignatureInvalid):
        verify(public_key, b"m", bytes([signature[0] ^ 1]) + signature[1:])


@pytest.mark.parametrize("params", [
    {"hedge": mech_mldsa.CKH_DETERMINISTIC_REQUIRED},  # the library signs hedged only
    {"hedge": 3}, {"hedge": True}, {"context": b"x" * 256}, {"context": "text"},
    {"external_mu": True, "context": b"ctx"}, {"external_mu": 1}, b"\0", 1,
    # the agreed wire form (notes/prompts2/pkcs11-3-params.md) names the field "hedge"; "hash" belongs to
    # CKM_HASH_ML_DSA, which is not offered
    {"hedge_variant": 0}, {"hash": int(CKM.SHA256)},
])
def test_parameter_refusals(params: Any) -> None:
    private_key, public_key, _ = generate(mech_mldsa.CKP_ML_DSA_44)
    with pytest.raises(MechanismParamInvalid):
        lookup(CKM.ML_DSA).sign(private_key, params)
    with pytest.raises(MechanismParamInvalid):
        lookup(CKM.ML_DSA).verify(public_key, params)


def test_key_type_checks() -> None:
    ec_private = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(KeyTypeInconsistent):
        lookup(CKM.ML_DSA).sign(Key(CKK.EC, CKO.PRIVATE_KEY, private=ec_private), None)
    with pytest.raises(KeyTypeInconsistent):
        lookup(CKM.ML_DSA).sign(Key(CKK.ML_DSA, CKO.PRIVATE_KEY, private=ec_private), None)
    with pytest.raises(KeyTypeInconsistent):
        lookup(CKM.ML_DSA).verify(Key(CKK.ML_DSA, CKO.PUBLIC_KEY, public=ec_private.public_key()), None)


# -- FIPS 204 vectors ---------------------------------------------------------------------------------


def _vectors(name: str, count: int) -> Iterator[dict[str, str]]:
    record: dict[str, str] = {}
    with open_vector_file(f"asymmetric/MLDSA/{name}", "r") as f:
        for line in f:
            key, sep, value = line.strip().partition(" = ")
            if not sep:
                continue
            if key == "count" and record:
                yield record
                count -= 1
                if count == 0:
                    return
                record = {}
            record[key] = value


@pytest.mark.parametrize("chosen", SETS, ids=SET_IDS)
def test_fips204_vectors(chosen: mech_mldsa.ParameterSet) -> None:
    """Key generation from ξ gives the published key; the node verifies the published signatures."""
    for record in _vectors(f"kat_MLDSA_{chosen.name[-2:]}_det_pure.rsp", 5):
        private = chosen.private_from_seed(bytes.fromhex(record["xi"]))
        assert private.public_key().public_bytes_raw().hex() == record["pk"]
        public_key = Key(CKK.ML_DSA, CKO.PUBLIC_KEY, public=mech_mldsa.public_key_from_attributes(
            {CKA.PARAMETER_SET: chosen.ckp, CKA.VALUE: bytes.fromhex(record["pk"])}))
        signature = bytes.fromhex(record["sm"])[:chosen.signature_len]
        message, context = bytes.fromhex(record["msg"]), bytes.fromhex(record["ctx"])
        verify(public_key, message, signature, {"context": context})
        verify(public_key, mu_of(public_key.public, message, context), signature, {"external_mu": True})
