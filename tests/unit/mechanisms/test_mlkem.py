"""CKM_ML_KEM_KEY_PAIR_GEN and CKM_ML_KEM (mechanisms/mlkem.py): key objects, secrets equal on both
sides (one side pyca/cryptography outside the node), FIPS 203 vectors, implicit rejection, refusals."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography_vectors import open_vector_file

from strongroom.constants import CKA, CKK, CKM, CKO
from strongroom.errors import (
    AttributeValueInvalid,
    EncryptedDataLenRange,
    KeyTypeInconsistent,
    MechanismInvalid,
    MechanismParamInvalid,
    PublicKeyInvalid,
    TemplateIncomplete,
)
from strongroom.mechanisms import mlkem as mech_mlkem
from strongroom.mechanisms.base import Capability, Key, lookup
from strongroom.objects import builder
from strongroom.objects.keys import build_key

SETS = sorted(mech_mlkem.PARAMETER_SETS.values(), key=lambda p: p.ckp)
SET_IDS = [p.name for p in SETS]


def test_registered_table() -> None:
    gen = lookup(CKM.ML_KEM_KEY_PAIR_GEN)
    assert gen.capabilities == Capability.GENERATE_KEY_PAIR and gen.key_types == {CKK.ML_KEM}
    mech = lookup(CKM.ML_KEM)
    assert mech.capabilities == Capability.ENCAPSULATE | Capability.DECAPSULATE
    assert (mech.min_key_size, mech.max_key_size) == (2, 3)  # CKP_ML_KEM_768 .. CKP_ML_KEM_1024
    with pytest.raises(MechanismInvalid):  # a KEM neither encrypts nor signs
        mech.encrypt(Key(CKK.ML_KEM, CKO.PUBLIC_KEY), None)


@pytest.mark.parametrize("chosen", SETS, ids=SET_IDS)
def test_generated_pair_and_round_trip(chosen: mech_mlkem.ParameterSet) -> None:
    pair = lookup(CKM.ML_KEM_KEY_PAIR_GEN).generate_key_pair(None, {CKA.PARAMETER_SET: chosen.ckp}, {})
    public = pair.private.public_key()
    assert pair.key_type is CKK.ML_KEM and isinstance(pair.private, chosen.private_class)
    assert pair.public_attributes[CKA.VALUE] == public.public_bytes_raw()
    assert len(pair.public_attributes[CKA.VALUE]) == chosen.public_len
    assert pair.public_attributes[CKA.PUBLIC_KEY_INFO] == public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert pair.public_attributes[CKA.ENCAPSULATE] is True and pair.private_attributes[CKA.DECAPSULATE] is True
    public_key = Key(CKK.ML_KEM, CKO.PUBLIC_KEY, public=mech_mlkem.public_key_from_attributes(pair.public_attributes))
    private_key = Key(CKK.ML_KEM, CKO.PRIVATE_KEY, private=pair.private, public=public)
    mech = lookup(CKM.ML_KEM)
    ciphertext, secret = mech.encapsulate(public_key, None)
    assert len(ciphertext) == chosen.ciphertext_len and len(secret) == mech_mlkem.SHARED_SECRET_LEN
    assert mech.decapsulate(private_key, None, ciphertext) == secret
    # Both directions against pyca/cryptography outside the node.
    outside_secret, outside_ciphertext = chosen.public_from_bytes(public.public_bytes_raw()).encapsulate()
    assert mech.decapsulate(private_key, None, outside_ciphertext) == outside_secret
    assert pair.private.decapsulate(ciphertext) == secret
    # A fresh secret each time.
    assert mech.encapsulate(public_key, None) != (ciphertext, secret)


def test_usage_flags_follow_the_template() -> None:
    pair = lookup(CKM.ML_KEM_KEY_PAIR_GEN).generate_key_pair(
        None, {CKA.PARAMETER_SET: 3, CKA.ENCAPSULATE: False}, {CKA.DECAPSULATE: False})
    assert pair.public_attributes[CKA.ENCAPSULATE] is False and pair.private_attributes[CKA.DECAPSULATE] is False
    maker = builder.Maker("alice", "uid-alice")
    public_obj, private_obj = builder.generated_pair(maker, {CKA.TOKEN: True}, {CKA.TOKEN: True}, pair,
                                                     int(CKM.ML_KEM_KEY_PAIR_GEN), None, None)
    assert public_obj.attributes[CKA.ENCAPSULATE] is False
    # A KEM key can neither encrypt, sign, wrap nor derive by default.
    for cka in (CKA.ENCRYPT, CKA.VERIFY, CKA.WRAP, CKA.DERIVE):
        assert public_obj.attributes.get(cka) is False, cka
    for cka in (CKA.DECRYPT, CKA.SIGN, CKA.UNWRAP, CKA.DERIVE):
        assert private_obj.attributes.get(cka) is False, cka
    assert build_key(public_obj).public == pair.private.public_key()


def test_ml_kem_512_is_not_offered() -> None:
    with pytest.raises(AttributeValueInvalid, match="ML-KEM-512"):
        lookup(CKM.ML_KEM_KEY_PAIR_GEN).generate_key_pair(None, {CKA.PARAMETER_SET: mech_mlkem.CKP_ML_KEM_512}, {})


def test_refusals() -> None:
    gen, mech = lookup(CKM.ML_KEM_KEY_PAIR_GEN), lookup(CKM.ML_KEM)
    with pytest.raises(TemplateIncomplete):
        gen.generate_key_pair(None, {}, {})
    with pytest.raises(AttributeValueInvalid):
        gen.generate_key_pair(None, {CKA.PARAMETER_SET: 7}, {})
    pair = gen.generate_key_pair(None, {CKA.PARAMETER_SET: 2}, {})
    private_key = Key(CKK.ML_KEM, CKO.PRIVATE_KEY, private=pair.private, public=pair.private.public_key())
    ciphertext, _ = mech.encapsulate(private_key, None)  # the private key's public half encapsulates too
    for bad in (ciphertext[:-1], ciphertext + b"\0", b"", bytes(1568)):
        with pytest.raises(EncryptedDataLenRange):
            mech.decapsulate(private_key, None, bad)
    with pytest.raises(MechanismParamInvalid):
        mech.decapsulate(private_key, {"kdf": 1}, ciphertext)
    with pytest.raises(MechanismParamInvalid):
        mech.encapsulate(private_key, b"\x01")
    ec_private = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(KeyTypeInconsistent):
        mech.decapsulate(Key(CKK.EC, CKO.PRIVATE_KEY, private=ec_private), None, ciphertext)
    with pytest.raises(KeyTypeInconsistent):
        mech.encapsulate(Key(CKK.ML_KEM, CKO.PUBLIC_KEY, public=ec_private.public_key()), None)
    raw = pair.public_attributes[CKA.VALUE]
    with pytest.raises(PublicKeyInvalid):
        mech_mlkem.public_key_from_attributes({CKA.PARAMETER_SET: 3, CKA.VALUE: raw})
    with pytest.raises(AttributeValueInvalid):
        mech_mlkem.public_key_from_attributes({CKA.PARAMETER_SET: 1, CKA.VALUE: raw})


def test_implicit_rejection_answers_a_secret_not_an_error() -> None:
    """FIPS 203: a well-formed ciphertext not made for this key decapsulates to a pseudo-random secret."""
    mech = lookup(CKM.ML_KEM)
    pair = lookup(CKM.ML_KEM_KEY_PAIR_GEN).generate_key_pair(None, {CKA.PARAMETER_SET: 2}, {})
    other = lookup(CKM.ML_KEM_KEY_PAIR_GEN).generate_key_pair(None, {CKA.PARAMETER_SET: 2}, {})
    private_key = Key(CKK.ML_KEM, CKO.PRIVATE_KEY, private=pair.private, public=pair.private.public_key())
    other_public = Key(CKK.ML_KEM, CKO.PUBLIC_KEY, public=other.private.public_key())
    ciphertext, secret = mech.encapsulate(other_public, None)
    rejected = mech.decapsulate(private_key, None, ciphertext)
    assert len(rejected) == 32 and rejected != secret
    assert mech.decapsulate(private_key, None, ciphertext) == rejected  # deterministic


def _vectors(name: str, count: int) -> Iterator[dict[str, str]]:
    record: dict[str, str] = {}
    with open_vector_file(f"asymmetric/MLKEM/{name}", "r") as f:
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
def test_fips203_vectors(chosen: mech_mlkem.ParameterSet) -> None:
    mech = lookup(CKM.ML_KEM)
    for record in _vectors(f"kat_MLKEM_{chosen.name[7:]}.rsp", 5):
        private = chosen.private_from_seed(bytes.fromhex(record["d"] + record["z"]))
        assert private.public_key().public_bytes_raw().hex() == record["pk"]
        key = Key(CKK.ML_KEM, CKO.PRIVATE_KEY, private=private, public=private.public_key())
        assert mech.decapsulate(key, None, bytes.fromhex(record["ct"])).hex() == record["ss"]
        assert mech.decapsulate(key, None, bytes.fromhex(record["ct_n"])).hex() == record["ss_n"]
