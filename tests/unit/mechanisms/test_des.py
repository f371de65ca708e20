"""Triple-DES (mechanisms/des.py) and the cluster policy legacy_algorithms as the mechanisms see it
(mechanisms/base.py legacy_algorithms(), RSA-1024 in rsa.py, P-192 in ec.py).

The cipher itself is pyca/cryptography's; these tests check what Strongroom adds around it: the policy
gate, key forms (two-key K1 K2 K1, parity), PKCS#11 lengths and errors, multi-part chunking, CBC_PAD."""

from __future__ import annotations

import os

import pytest
from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers import Cipher, modes

from strongroom.constants import CKA, CKK, CKM, CKO
from strongroom.encoding import ec as eec
from strongroom.errors import (
    CurveNotSupported,
    DataLenRange,
    EncryptedDataInvalid,
    EncryptedDataLenRange,
    KeySizeRange,
    KeyTypeInconsistent,
    MechanismInvalid,
    MechanismParamInvalid,
)
from strongroom.mechanisms import des
from strongroom.mechanisms.base import Key, legacy_algorithms, legacy_allowed, lookup
from strongroom.objects.keys import check_value

K1, K2, K3 = bytes.fromhex("0123456789abcdef"), bytes.fromhex("23456789abcdef01"), bytes.fromhex("456789abcdef0123")
IV = bytes.fromhex("1234567890abcdef")
LEGACY = (CKM.DES2_KEY_GEN, CKM.DES3_KEY_GEN, CKM.DES3_ECB, CKM.DES3_CBC, CKM.DES3_CBC_PAD)


def secret(value: bytes, key_type: CKK = CKK.DES3) -> Key:
    return Key(key_type, CKO.SECRET_KEY, value=value, size_bits=len(value) * 8)


def reference(value: bytes, mode: modes.Mode, data: bytes, *, decrypt: bool = False) -> bytes:
    cipher = Cipher(TripleDES(value), mode)
    ctx = cipher.decryptor() if decrypt else cipher.encryptor()
    return ctx.update(data) + ctx.finalize()


def test_triple_des_exists_only_under_the_policy() -> None:
    assert not legacy_allowed()
    for ckm in LEGACY:
        with pytest.raises(MechanismInvalid, match="legacy_algorithms"):
            lookup(ckm)
    with legacy_algorithms(True):
        assert legacy_allowed()
        assert [lookup(ckm).ckm for ckm in LEGACY] == list(LEGACY)
    assert not legacy_allowed()  # the policy is per call, never left behind


@pytest.mark.parametrize(("ckm", "key_type", "length"), [(CKM.DES2_KEY_GEN, CKK.DES2, 16),
                                                          (CKM.DES3_KEY_GEN, CKK.DES3, 24)])
def test_generated_keys_have_odd_parity_and_their_type(ckm: CKM, key_type: CKK, length: int) -> None:
    with legacy_algorithms(True):
        made = lookup(ckm).generate_key(None, {})
    assert made.key_type is key_type and len(made.value) == length
    assert all(bin(b).count("1") % 2 == 1 for b in made.value)
    assert des.with_odd_parity(made.value) == made.value


def test_two_key_triple_des_is_k1_k2_k1() -> None:
    assert des.three_keys(K1 + K2) == K1 + K2 + K1 and des.three_keys(K1 + K2 + K3) == K1 + K2 + K3
    block = os.urandom(8)
    with legacy_algorithms(True):
        two = lookup(CKM.DES3_ECB).encrypt(secret(K1 + K2, CKK.DES2), None).one_shot(block)
        three = lookup(CKM.DES3_ECB).encrypt(secret(K1 + K2 + K1), None).one_shot(block)
    assert two == three == reference(K1 + K2 + K1, modes.ECB(), block)
    assert check_value(CKK.DES2, K1 + K2) == check_value(CKK.DES3, K1 + K2 + K1) \
        == reference(K1 + K2 + K1, modes.ECB(), bytes(8))[:3]


@pytest.mark.parametrize("ckm", [CKM.DES3_ECB, CKM.DES3_CBC])
def test_ecb_and_cbc_in_any_chunks(ckm: CKM) -> None:
    value, data = K1 + K2 + K3, os.urandom(64)
    params = None if ckm is CKM.DES3_ECB else IV
    mode = modes.ECB() if ckm is CKM.DES3_ECB else modes.CBC(IV)
    expected = reference(value, mode, data)
    with legacy_algorithms(True):
        mechanism = lookup(ckm)
        assert mechanism.encrypt(secret(value), params).one_shot(data) == expected
        operation = mechanism.encrypt(secret(value), params)
        pieces = [operation.update(data[a:b]) for a, b in ((0, 3), (3, 20), (20, 64))]
        assert b"".join(pieces) + operation.final() == expected
        assert mechanism.decrypt(secret(value), params).one_shot(expected) == data
        with pytest.raises(DataLenRange):
            mechanism.encrypt(secret(value), params).one_shot(data[:13])
        with pytest.raises(EncryptedDataLenRange):
            mechanism.decrypt(secret(value), params).one_shot(expected[:13])


@pytest.mark.parametrize("size", [0, 1, 7, 8, 9, 100])
def test_cbc_pad_pads_as_pkcs7(size: int) -> None:
    value, data = K1 + K2 + K3, os.urandom(size)
    padder = padding.PKCS7(64).padder()
    expected = reference(value, modes.CBC(IV), padder.update(data) + padder.finalize())
    with legacy_algorithms(True):
        mechanism = lookup(CKM.DES3_CBC_PAD)
        assert mechanism.encrypt(secret(value), IV).one_shot(data) == expected
        operation = mechanism.decrypt(secret(value), IV)
        # Decryption keeps the last block back until final.
        opened = operation.update(expected[:5]) + operation.update(expected[5:]) + operation.final()
        assert opened == data
        tampered = expected[:-1] + bytes([expected[-1] ^ 0x55])
        with pytest.raises(EncryptedDataInvalid):
            mechanism.decrypt(secret(value), IV).one_shot(tampered)


def test_keys_and_parameters_that_do_not_fit() -> None:
    with legacy_algorithms(True):
        ecb, cbc = lookup(CKM.DES3_ECB), lookup(CKM.DES3_CBC)
        with pytest.raises(KeyTypeInconsistent):
            ecb.encrypt(Key(CKK.AES, CKO.SECRET_KEY, value=bytes(24)), None)
        with pytest.raises(KeySizeRange):
            ecb.encrypt(secret(bytes(16), CKK.DES3), None)  # a DES3 key is 24 bytes
        with pytest.raises(MechanismParamInvalid):
            cbc.encrypt(secret(K1 + K2 + K3), b"\x00" * 16)
        with pytest.raises(MechanismParamInvalid):
            cbc.encrypt(secret(K1 + K2 + K3), None)


def test_rsa_1024_and_p192_only_under_the_policy() -> None:
    rsa_gen = lookup(CKM.RSA_PKCS_KEY_PAIR_GEN)
    public = {CKA.MODULUS_BITS: 1024, CKA.PUBLIC_EXPONENT: b"\x01\x00\x01"}
    with pytest.raises(KeySizeRange, match="legacy_algorithms"):
        rsa_gen.generate_key_pair(None, dict(public), {})
    with legacy_algorithms(True):
        pair = rsa_gen.generate_key_pair(None, dict(public), {})
    assert pair.private.key_size == 1024  # type: ignore[union-attr]

    p192 = eec.params_for_curve(ec.SECP192R1())
    ec_gen = lookup(CKM.EC_KEY_PAIR_GEN)
    with pytest.raises(CurveNotSupported, match="legacy_algorithms"):
        ec_gen.generate_key_pair(None, {CKA.EC_PARAMS: p192}, {})
    with legacy_algorithms(True):
        made = ec_gen.generate_key_pair(None, {CKA.EC_PARAMS: p192}, {})
        key = Key(CKK.EC, CKO.PRIVATE_KEY, private=made.private, size_bits=192)
        signature = lookup(CKM.ECDSA_SHA256).sign(key, None).one_shot(b"old")
    assert len(signature) == 48
    with pytest.raises(KeySizeRange, match="P-192"):  # an existing P-192 key is not used once the policy is off
        lookup(CKM.ECDSA_SHA256).sign(key, None)
