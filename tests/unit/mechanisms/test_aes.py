"""AES mechanisms: NIST/RFC known answers, single- vs multi-part agreement, and the PKCS#11 error codes.

Vectors come from the ``cryptography_vectors`` package (NIST CAVP .rsp files, RFC 3686 CTR,
SP 800-38B CMAC, SP 800-38F key wrap, RFC 5649 via kwp_botan.txt).
"""

from __future__ import annotations

import contextlib
import functools
import os
import random
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import keywrap, padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from strongroom.constants import CKA, CKK, CKM, CKO
from strongroom.errors import (
    CKR,
    ArgumentsBad,
    AttributeValueInvalid,
    DataLenRange,
    EncryptedDataInvalid,
    EncryptedDataLenRange,
    FunctionNotSupported,
    HsmError,
    KeySizeRange,
    KeyTypeInconsistent,
    MechanismParamInvalid,
    SignatureInvalid,
    SignatureLenRange,
    TemplateIncomplete,
    WrappedKeyInvalid,
    WrappedKeyLenRange,
)
from strongroom.mechanisms import aes
from strongroom.mechanisms.base import MAX_DATA, Capability, CipherOperation, Key, lookup

cryptography_vectors = pytest.importorskip("cryptography_vectors")
VECTORS = Path(cryptography_vectors.__file__).parent

ECB = lookup(CKM.AES_ECB)
CBC = lookup(CKM.AES_CBC)
CBC_PAD = lookup(CKM.AES_CBC_PAD)
CTR = lookup(CKM.AES_CTR)
GCM = lookup(CKM.AES_GCM)
KW = lookup(CKM.AES_KEY_WRAP)
KWP = lookup(CKM.AES_KEY_WRAP_PAD)
CMAC = lookup(CKM.AES_CMAC)
CMAC_GENERAL = lookup(CKM.AES_CMAC_GENERAL)
KEYGEN = lookup(CKM.AES_KEY_GEN)

HYPOTHESIS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def aes_key(value: bytes) -> Key:
    return Key(CKK.AES, CKO.SECRET_KEY, value=value, size_bits=8 * len(value))


def gcm_params(iv: bytes | None, aad: bytes = b"", tag_bits: int = 128) -> dict:
    return {"iv": iv, "aad": aad, "tag_bits": tag_bits}


# -- vector files -------------------------------------------------------------------------


@functools.cache
def load(relative: str) -> tuple[dict[str, str], ...]:
    """NIST-style ``KEY = value`` records; ``[SECTION]`` / ``[Name = value]`` headers are copied
    into every record below them, a bare ``FAIL`` line marks the record as failing."""
    records: list[dict[str, str]] = []
    section: dict[str, str] = {}
    current: dict[str, str] | None = None
    for raw in (VECTORS / relative).read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            inner = line[1:-1]
            if "=" in inner:
                name, _, value = inner.partition("=")
                section[name.strip().lower()] = value.strip()
            else:
                section = {"op": inner.strip().lower()}
            continue
        if line == "FAIL":
            assert current is not None
            current["fail"] = "1"
            continue
        name, _, value = line.partition("=")
        name, value = name.strip().lower(), value.strip()
        if name == "count":
            current = {**section, "count": value}
            records.append(current)
        else:
            assert current is not None
            current[name] = value
    return tuple(records)


def h(value: str) -> bytes:
    return bytes.fromhex(value)


def chunks(data: bytes, rnd: random.Random) -> Iterator[bytes]:
    pos = 0
    while pos < len(data):
        step = rnd.randint(0, 40)
        yield data[pos : pos + step]
        pos += step


def run_parts(op: CipherOperation, data: bytes, rnd: random.Random) -> bytes:
    return b"".join(op.update(part) for part in chunks(data, rnd)) + op.final()


@contextlib.contextmanager
def raises_code(exc_type: type[HsmError], code: CKR | None = None) -> Iterator[pytest.ExceptionInfo[HsmError]]:
    """pytest.raises that also checks the CKR code carried by the error."""
    with pytest.raises(exc_type) as info:
        yield info
    assert info.value.code == (code if code is not None else exc_type.code)


# -- registry and key generation ------------------------------------------------------------


def test_registry_table() -> None:
    enc_dec = Capability.ENCRYPT | Capability.DECRYPT
    wrap = Capability.WRAP | Capability.UNWRAP
    expected = {
        CKM.AES_KEY_GEN: (Capability.GENERATE, False),
        CKM.AES_ECB: (enc_dec, True),
        CKM.AES_CBC: (enc_dec, True),
        CKM.AES_CBC_PAD: (enc_dec | wrap, True),
        CKM.AES_CTR: (enc_dec, True),
        CKM.AES_GCM: (enc_dec | wrap, True),
        CKM.AES_KEY_WRAP: (enc_dec | wrap, False),
        CKM.AES_KEY_WRAP_PAD: (enc_dec | wrap, False),
        CKM.AES_CMAC: (Capability.SIGN | Capability.VERIFY, True),
        CKM.AES_CMAC_GENERAL: (Capability.SIGN | Capability.VERIFY, True),
    }
    for ckm, (caps, multipart) in expected.items():
        mech = lookup(ckm)
        assert mech.ckm == ckm
        assert mech.capabilities == caps, ckm.name
        assert mech.multipart is multipart, ckm.name
        assert mech.key_types == frozenset({CKK.AES})
        assert (mech.min_key_size, mech.max_key_size) == (16, 32)


@pytest.mark.parametrize("length", [16, 24, 32])
def test_keygen(length: int) -> None:
    a = KEYGEN.generate_key(None, {CKA.VALUE_LEN: length})
    b = KEYGEN.generate_key(None, {CKA.VALUE_LEN: length})
    assert a.key_type == CKK.AES and a.attributes == {CKA.VALUE_LEN: length}
    assert len(a.value) == length and a.value != b.value


def test_keygen_errors() -> None:
    with raises_code(TemplateIncomplete):
        KEYGEN.generate_key(None, {})
    for bad in (0, 8, 20, 33, 64, -16):
        with raises_code(KeySizeRange):
            KEYGEN.generate_key(None, {CKA.VALUE_LEN: bad})
    for bad in (True, "16", 16.0, b"\x10"):
        with raises_code(AttributeValueInvalid):
            KEYGEN.generate_key(None, {CKA.VALUE_LEN: bad})
    with raises_code(MechanismParamInvalid):
        KEYGEN.generate_key(b"\x00" * 16, {CKA.VALUE_LEN: 16})


# -- ECB / CBC known answers ----------------------------------------------------------------


BLOCK_FILES = [
    f"ciphers/AES/{mode}/{mode}{kind}{bits}.rsp"
    for mode in ("ECB", "CBC")
    for kind in ("MMT", "GFSbox", "VarKey")
    for bits in (128, 192, 256)
]


@pytest.mark.parametrize("path", BLOCK_FILES)
def test_ecb_cbc_vectors(path: str) -> None:
    mech = ECB if "/ECB/" in path else CBC
    rnd = random.Random(path)
    records = load(path)
    assert records
    for rec in records:
        key = aes_key(h(rec["key"]))
        params = h(rec["iv"]) if mech is CBC else None
        pt, ct = h(rec["plaintext"]), h(rec["ciphertext"])
        if rec["op"] == "encrypt":
            assert mech.encrypt(key, params).one_shot(pt) == ct
            assert run_parts(mech.encrypt(key, params), pt, rnd) == ct
        else:
            assert mech.decrypt(key, params).one_shot(ct) == pt
            assert run_parts(mech.decrypt(key, params), ct, rnd) == pt


def test_ecb_cbc_length_rules() -> None:
    key = aes_key(os.urandom(16))
    for mech, params in ((ECB, None), (CBC, os.urandom(16))):
        for n in (1, 15, 17, 31):
            with raises_code(DataLenRange):
                mech.encrypt(key, params).one_shot(bytes(n))
            with raises_code(EncryptedDataLenRange):
                mech.decrypt(key, params).one_shot(bytes(n))
        # partial blocks across updates are fine as long as the total is whole blocks
        op = mech.encrypt(key, params)
        out = op.update(bytes(10)) + op.update(bytes(6)) + op.update(bytes(3))
        assert len(out) == 16
        with raises_code(DataLenRange):
            op.final()
        assert mech.encrypt(key, params).one_shot(b"") == b""


def test_cbc_params() -> None:
    key = aes_key(os.urandom(16))
    for mech in (CBC, CBC_PAD):
        for bad in (None, b"", bytes(15), bytes(17), "0" * 16, {"iv": bytes(16)}, bytearray(16)):
            with raises_code(MechanismParamInvalid):
                mech.encrypt(key, bad)
            with raises_code(MechanismParamInvalid):
                mech.decrypt(key, bad)
    with raises_code(MechanismParamInvalid):
        ECB.encrypt(key, bytes(16))


# -- CBC_PAD --------------------------------------------------------------------------------


@given(data=st.binary(max_size=200), seed=st.integers(0, 2**32))
@HYPOTHESIS
def test_cbc_pad_matches_cryptography(data: bytes, seed: int) -> None:
    rnd = random.Random(seed)
    raw, iv = os.urandom(32), os.urandom(16)
    padder = padding.PKCS7(128).padder()
    enc = Cipher(algorithms.AES(raw), modes.CBC(iv)).encryptor()
    expected = enc.update(padder.update(data) + padder.finalize()) + enc.finalize()
    key = aes_key(raw)
    assert CBC_PAD.encrypt(key, iv).one_shot(data) == expected
    assert run_parts(CBC_PAD.encrypt(key, iv), data, rnd) == expected
    assert CBC_PAD.decrypt(key, iv).one_shot(expected) == data
    assert run_parts(CBC_PAD.decrypt(key, iv), expected, rnd) == data


def test_cbc_pad_decrypt_holds_back_last_block() -> None:
    key, iv = aes_key(os.urandom(16)), os.urandom(16)
    pt = os.urandom(40)  # 3 blocks of ciphertext, the last one carrying 8 bytes of padding
    ct = CBC_PAD.encrypt(key, iv).one_shot(pt)
    assert len(ct) == 48
    op = CBC_PAD.decrypt(key, iv)
    assert op.update(ct[:16]) == b""  # could be the padding block: nothing yet
    assert op.update(ct[16:32]) == pt[:16]
    assert op.update(ct[32:]) == pt[16:32]
    assert op.final() == pt[32:]
    # a whole-block message gets a whole block of padding: the data block comes out at once
    ct = CBC_PAD.encrypt(key, iv).one_shot(bytes(16))
    op = CBC_PAD.decrypt(key, iv)
    assert op.update(ct) == bytes(16)
    assert op.final() == b""
    # an empty message is a single padding block, held back and then dropped
    op = CBC_PAD.decrypt(key, iv)
    assert op.update(CBC_PAD.encrypt(key, iv).one_shot(b"")) == b""
    assert op.final() == b""


def test_cbc_pad_errors() -> None:
    raw, iv = os.urandom(16), os.urandom(16)
    key = aes_key(raw)
    for n in (0, 1, 15, 17, 33):
        with raises_code(EncryptedDataLenRange):
            CBC_PAD.decrypt(key, iv).one_shot(bytes(n))
    for last_block in (bytes(16), bytes(15) + b"\x11", bytes(14) + b"\x01\x02", b"\x03" * 14 + b"\x02\x03"):
        enc = Cipher(algorithms.AES(raw), modes.CBC(iv)).encryptor()
        ct = enc.update(os.urandom(16) + last_block) + enc.finalize()
        with raises_code(EncryptedDataInvalid):
            CBC_PAD.decrypt(key, iv).one_shot(ct)
        op = CBC_PAD.decrypt(key, iv)
        op.update(ct)
        with raises_code(EncryptedDataInvalid):
            op.final()


def test_cbc_pad_wrap() -> None:
    kek, iv = aes_key(os.urandom(32)), os.urandom(16)
    for n in (1, 16, 20, 32, 1190):
        secret = os.urandom(n)
        wrapped = CBC_PAD.wrap(kek, iv, secret)
        assert len(wrapped) % 16 == 0 and len(wrapped) > n
        assert CBC_PAD.unwrap(kek, iv, wrapped) == secret
    with raises_code(WrappedKeyLenRange):
        CBC_PAD.unwrap(kek, iv, bytes(20))
    enc = Cipher(algorithms.AES(kek.value), modes.CBC(iv)).encryptor()
    with raises_code(WrappedKeyInvalid):
        CBC_PAD.unwrap(kek, iv, enc.update(bytes(32)) + enc.finalize())
    generic = Key(CKK.GENERIC_SECRET, CKO.SECRET_KEY, value=os.urandom(16))
    with raises_code(KeyTypeInconsistent, CKR.WRAPPING_KEY_TYPE_INCONSISTENT):
        CBC_PAD.wrap(generic, iv, bytes(16))
    with raises_code(KeyTypeInconsistent, CKR.UNWRAPPING_KEY_TYPE_INCONSISTENT):
        CBC_PAD.unwrap(generic, iv, bytes(16))
    with raises_code(KeySizeRange, CKR.WRAPPING_KEY_SIZE_RANGE):
        CBC_PAD.wrap(aes_key(bytes(20)), iv, bytes(16))
    with raises_code(KeySizeRange, CKR.UNWRAPPING_KEY_SIZE_RANGE):
        CBC_PAD.unwrap(aes_key(bytes(20)), iv, bytes(16))


# -- CTR ------------------------------------------------------------------------------------


@pytest.mark.parametrize("bits", [128, 192, 256])
def test_ctr_vectors(bits: int) -> None:
    """RFC 3686 vectors: a 32-bit block counter starting at 1 in the low bits of cb."""
    rnd = random.Random(bits)
    records = load(f"ciphers/AES/CTR/aes-{bits}-ctr.txt")
    assert records
    for rec in records:
        key = aes_key(h(rec["key"]))
        pt, ct = h(rec["plaintext"]), h(rec["ciphertext"])
        for counter_bits in (32, 128):
            params = {"counter_bits": counter_bits, "cb": h(rec["iv"])}
            assert CTR.encrypt(key, params).one_shot(pt) == ct
            assert run_parts(CTR.encrypt(key, params), pt, rnd) == ct
            assert CTR.decrypt(key, params).one_shot(ct) == pt
            assert run_parts(CTR.decrypt(key, params), ct, rnd) == pt


@given(data=st.binary(max_size=300), seed=st.integers(0, 2**32))
@HYPOTHESIS
def test_ctr_matches_cryptography(data: bytes, seed: int) -> None:
    raw, cb = os.urandom(24), os.urandom(8) + bytes(8)  # counter cannot wrap in 64 bits here
    enc = Cipher(algorithms.AES(raw), modes.CTR(cb)).encryptor()
    expected = enc.update(data) + enc.finalize()
    params = {"counter_bits": 64, "cb": cb}
    assert CTR.encrypt(aes_key(raw), params).one_shot(data) == expected
    assert run_parts(CTR.encrypt(aes_key(raw), params), data, random.Random(seed)) == expected


def test_ctr_counter_wrap_refused() -> None:
    key = aes_key(os.urandom(16))
    nonce = os.urandom(15)
    # The spec's example: 2 counter bits starting at 1 allow 3 blocks.
    two_bits = {"counter_bits": 2, "cb": nonce + bytes([0b11111101])}
    assert len(CTR.encrypt(key, two_bits).one_shot(bytes(48))) == 48
    for op_factory in (CTR.encrypt, CTR.decrypt):
        with raises_code(DataLenRange):
            op_factory(key, two_bits).one_shot(bytes(49))
    op = CTR.encrypt(key, two_bits)
    assert len(op.update(bytes(40))) == 40
    with raises_code(DataLenRange):
        op.update(bytes(9))
    # 8 counter bits at 0xff: one block only
    last = {"counter_bits": 8, "cb": nonce + b"\xff"}
    assert len(CTR.encrypt(key, last).one_shot(bytes(16))) == 16
    with raises_code(DataLenRange):
        CTR.encrypt(key, last).one_shot(bytes(17))
    # a full 128-bit counter at its last value: one block, then wrap
    top = {"counter_bits": 128, "cb": b"\xff" * 16}
    assert len(CTR.encrypt(key, top).one_shot(bytes(16))) == 16
    with raises_code(DataLenRange):
        CTR.encrypt(key, top).one_shot(bytes(17))
    # within the limit the output equals plain CTR (no carry into the nonce)
    cb = nonce + b"\x00"
    enc = Cipher(algorithms.AES(key.value), modes.CTR(cb)).encryptor()
    assert CTR.encrypt(key, {"counter_bits": 8, "cb": cb}).one_shot(bytes(4096)) == enc.update(bytes(4096))


def test_ctr_params() -> None:
    key = aes_key(os.urandom(16))
    good = {"counter_bits": 32, "cb": bytes(16)}
    bad_params = [
        None,
        bytes(16),
        {**good, "counter_bits": 0},
        {**good, "counter_bits": 129},
        {**good, "counter_bits": True},
        {**good, "counter_bits": "32"},
        {**good, "cb": bytes(15)},
        {**good, "cb": bytes(17)},
        {**good, "cb": None},
        {**good, "extra": 1},
        {"counter_bits": 32},
        {"cb": bytes(16)},
    ]
    for bad in bad_params:
        with raises_code(MechanismParamInvalid):
            CTR.encrypt(key, bad)
        with raises_code(MechanismParamInvalid):
            CTR.decrypt(key, bad)


# -- GCM ------------------------------------------------------------------------------------


@pytest.mark.parametrize("bits", [128, 192, 256])
def test_gcm_encrypt_vectors(bits: int) -> None:
    rnd = random.Random(bits)
    seen_ivlens = set()
    refused = 0
    for rec in load(f"ciphers/AES/GCM/gcmEncryptExtIV{bits}.rsp"):
        key = aes_key(h(rec["key"]))
        params = gcm_params(h(rec["iv"]), h(rec["aad"]), int(rec["taglen"]))
        if len(h(rec["iv"])) < 8:  # the 8-bit IV groups: below what this node supports
            with raises_code(MechanismParamInvalid):
                GCM.encrypt(key, params)
            refused += 1
            continue
        seen_ivlens.add(int(rec["ivlen"]))
        pt, expected = h(rec["pt"]), h(rec["ct"]) + h(rec["tag"])
        op = GCM.encrypt(key, params)
        assert op.one_shot(pt) == expected
        assert op.iv is None  # caller's IV: nothing to report
        assert run_parts(GCM.encrypt(key, params), pt, rnd) == expected
        assert GCM.decrypt(key, params).one_shot(expected) == pt
        assert run_parts(GCM.decrypt(key, params), expected, rnd) == pt
    assert seen_ivlens == {96, 1024} and refused


@pytest.mark.parametrize("bits", [128, 192, 256])
def test_gcm_decrypt_vectors(bits: int) -> None:
    rnd = random.Random(bits)
    failures = passes = 0
    for rec in load(f"ciphers/AES/GCM/gcmDecrypt{bits}.rsp"):
        if len(h(rec["iv"])) < 8:
            continue
        key = aes_key(h(rec["key"]))
        params = gcm_params(h(rec["iv"]), h(rec["aad"]), int(rec["taglen"]))
        data = h(rec["ct"]) + h(rec["tag"])
        if "fail" in rec:
            failures += 1
            with raises_code(EncryptedDataInvalid):
                GCM.decrypt(key, params).one_shot(data)
            op = GCM.decrypt(key, params)
            assert all(op.update(part) == b"" for part in chunks(data, rnd))
            with raises_code(EncryptedDataInvalid):
                op.final()
        else:
            passes += 1
            assert GCM.decrypt(key, params).one_shot(data) == h(rec["pt"])
            assert run_parts(GCM.decrypt(key, params), data, rnd) == h(rec["pt"])
    assert failures and passes


def test_gcm_generated_iv() -> None:
    raw = os.urandom(16)
    key = aes_key(raw)
    for iv in (None, b""):
        op = GCM.encrypt(key, gcm_params(iv, b"hdr"))
        assert op.iv is not None and len(op.iv) == 12
        out = op.one_shot(b"secret message")
        assert AESGCM(raw).decrypt(op.iv, out, b"hdr") == b"secret message"
        assert GCM.decrypt(key, gcm_params(op.iv, b"hdr")).one_shot(out) == b"secret message"
    params_without_iv = {"aad": b"", "tag_bits": 96}
    op = GCM.encrypt(key, params_without_iv)
    assert op.iv is not None and len(op.one_shot(b"x")) == 1 + 12
    assert GCM.encrypt(key, params_without_iv).iv != op.iv
    for iv in (None, b""):
        with raises_code(MechanismParamInvalid):
            GCM.decrypt(key, gcm_params(iv))
    with raises_code(MechanismParamInvalid):
        GCM.decrypt(key, {"tag_bits": 128})


def test_gcm_cross_check_and_iv_lengths() -> None:
    raw = os.urandom(32)
    key = aes_key(raw)
    for n in (8, 12, 16, 60, 128):
        iv = os.urandom(n)
        enc = Cipher(algorithms.AES(raw), modes.GCM(iv)).encryptor()
        enc.authenticate_additional_data(b"aad")
        expected = enc.update(b"payload") + enc.finalize() + enc.tag
        assert GCM.encrypt(key, gcm_params(iv, b"aad")).one_shot(b"payload") == expected
    iv = os.urandom(12)
    ct = GCM.encrypt(key, gcm_params(iv, b"a")).one_shot(b"p" * 100)
    assert AESGCM(raw).decrypt(iv, ct, b"a") == b"p" * 100
    assert GCM.decrypt(key, gcm_params(iv, b"a")).one_shot(AESGCM(raw).encrypt(iv, b"q", b"a")) == b"q"
    for n in (1, 7, 129, 256):
        for factory in (GCM.encrypt, GCM.decrypt):
            with raises_code(MechanismParamInvalid):
                factory(key, gcm_params(bytes(n)))


def test_gcm_params() -> None:
    key = aes_key(os.urandom(16))
    good = gcm_params(bytes(12))
    bad_params = [
        None,
        bytes(12),
        {**good, "tag_bits": 24},
        {**good, "tag_bits": 136},
        {**good, "tag_bits": 100},
        {**good, "tag_bits": 0},
        {**good, "tag_bits": True},
        {**good, "tag_bits": "128"},
        {**good, "aad": "text"},
        {**good, "aad": bytes(aes.MAX_AAD + 1)},
        {**good, "iv": "text"},
        {**good, "ivbits": 96},
        {"iv": bytes(12), "aad": b""},
    ]
    for bad in bad_params:
        with raises_code(MechanismParamInvalid):
            GCM.encrypt(key, bad)
        with raises_code(MechanismParamInvalid):
            GCM.decrypt(key, bad)
    assert GCM.encrypt(key, {**good, "aad": None}).one_shot(b"") != b""
    assert len(GCM.encrypt(key, {**good, "aad": bytes(aes.MAX_AAD)}).one_shot(b"")) == 16


@pytest.mark.parametrize("tag_bits", [32, 64, 96, 104, 128])
def test_gcm_tamper(tag_bits: int) -> None:
    key, iv = aes_key(os.urandom(16)), os.urandom(12)
    params = gcm_params(iv, b"header", tag_bits)
    msg = os.urandom(50)
    ct = GCM.encrypt(key, params).one_shot(msg)
    assert len(ct) == 50 + tag_bits // 8
    assert GCM.decrypt(key, params).one_shot(ct) == msg
    for pos in (0, 49, 50, len(ct) - 1):  # ciphertext and tag bytes
        bad = bytearray(ct)
        bad[pos] ^= 1
        with raises_code(EncryptedDataInvalid):
            GCM.decrypt(key, params).one_shot(bytes(bad))
    for aad in (b"headeR", b"", b"header\x00"):
        with raises_code(EncryptedDataInvalid):
            GCM.decrypt(key, gcm_params(iv, aad, tag_bits)).one_shot(ct)
    with raises_code(EncryptedDataInvalid):
        GCM.decrypt(key, gcm_params(os.urandom(12), b"header", tag_bits)).one_shot(ct)
    other_tag_bits = tag_bits - 8 if tag_bits > 32 else 40
    with raises_code(EncryptedDataInvalid):  # the same bytes read with another tag length
        GCM.decrypt(key, gcm_params(iv, b"header", other_tag_bits)).one_shot(ct)
    with raises_code(EncryptedDataLenRange):
        GCM.decrypt(key, params).one_shot(ct[: tag_bits // 8 - 1])
    # multi-part: nothing leaves before the tag is checked, also for a genuine message
    op = GCM.decrypt(key, params)
    assert op.update(ct[:30]) == b"" and op.update(ct[30:]) == b""
    assert op.final() == msg


def test_gcm_wrap() -> None:
    kek = aes_key(os.urandom(32))
    iv = os.urandom(12)
    params = gcm_params(iv, b"label", 128)
    secret = os.urandom(32)
    wrapped = GCM.wrap(kek, params, secret)
    assert wrapped == AESGCM(kek.value).encrypt(iv, secret, b"label")
    assert GCM.unwrap(kek, params, wrapped) == secret
    for bad_iv in (None, b""):
        with raises_code(MechanismParamInvalid):
            GCM.wrap(kek, gcm_params(bad_iv), secret)
        with raises_code(MechanismParamInvalid):
            GCM.unwrap(kek, gcm_params(bad_iv), wrapped)
    tampered = bytearray(wrapped)
    tampered[3] ^= 0x80
    with raises_code(WrappedKeyInvalid):
        GCM.unwrap(kek, params, bytes(tampered))
    with raises_code(WrappedKeyLenRange):
        GCM.unwrap(kek, params, wrapped[:15])
    generic = Key(CKK.GENERIC_SECRET, CKO.SECRET_KEY, value=os.urandom(32))
    with raises_code(KeyTypeInconsistent, CKR.WRAPPING_KEY_TYPE_INCONSISTENT):
        GCM.wrap(generic, params, secret)
    with raises_code(KeyTypeInconsistent, CKR.UNWRAPPING_KEY_TYPE_INCONSISTENT):
        GCM.unwrap(generic, params, wrapped)


# -- single- vs multi-part agreement ----------------------------------------------------------


@given(data=st.binary(max_size=160).map(lambda b: b[: len(b) - len(b) % 16]), seed=st.integers(0, 2**32))
@HYPOTHESIS
def test_block_modes_parts_agree(data: bytes, seed: int) -> None:
    key = aes_key(os.urandom(16))
    for mech, params in ((ECB, None), (CBC, os.urandom(16))):
        single = mech.encrypt(key, params).one_shot(data)
        assert run_parts(mech.encrypt(key, params), data, random.Random(seed)) == single
        assert run_parts(mech.decrypt(key, params), single, random.Random(seed + 1)) == data


@given(
    data=st.binary(max_size=300),
    aad=st.binary(max_size=40),
    tag_bits=st.sampled_from([32, 64, 96, 128]),
    seed=st.integers(0, 2**32),
)
@HYPOTHESIS
def test_gcm_parts_agree(data: bytes, aad: bytes, tag_bits: int, seed: int) -> None:
    raw = os.urandom(16)
    params = gcm_params(os.urandom(12), aad, tag_bits)
    single = GCM.encrypt(aes_key(raw), params).one_shot(data)
    assert run_parts(GCM.encrypt(aes_key(raw), params), data, random.Random(seed)) == single
    assert run_parts(GCM.decrypt(aes_key(raw), params), single, random.Random(seed + 1)) == data
    if tag_bits == 128:
        assert AESGCM(raw).encrypt(params["iv"], data, aad) == single


# -- RFC 3394 / RFC 5649 key wrap -------------------------------------------------------------


def test_kw_rfc3394_vectors() -> None:
    # RFC 3394 section 4.1 (128-bit KEK, 128-bit key) and 4.6 (256-bit KEK, 256-bit key)
    cases = [
        (
            "000102030405060708090A0B0C0D0E0F",
            "00112233445566778899AABBCCDDEEFF",
            "1FA68B0A8112B447AEF34BD8FB5A7B829D3E862371D2CFE5",
        ),
        (
            "000102030405060708090A0B0C0D0E0F101112131415161718191A1B1C1D1E1F",
            "00112233445566778899AABBCCDDEEFF000102030405060708090A0B0C0D0E0F",
            "28C9F404C4B810F4CBCCB35CFB87F8263F5786E2D80ED326CBC7F0E71A99F43BFB988B9B7A02DD21",
        ),
    ]
    for kek_hex, key_hex, wrapped_hex in cases:
        kek = aes_key(h(kek_hex))
        assert KW.wrap(kek, None, h(key_hex)) == h(wrapped_hex)
        assert KW.unwrap(kek, None, h(wrapped_hex)) == h(key_hex)
        assert KW.encrypt(kek, None).one_shot(h(key_hex)) == h(wrapped_hex)
        assert KW.decrypt(kek, aes.KW_DEFAULT_IV).one_shot(h(wrapped_hex)) == h(key_hex)


def test_kwp_rfc5649_vectors() -> None:
    records = load("keywrap/kwp_botan.txt")
    assert len(records) >= 2
    for rec in records:
        kek = aes_key(h(rec["key"]))
        assert KWP.wrap(kek, None, h(rec["input"])) == h(rec["output"])
        assert KWP.unwrap(kek, None, h(rec["output"])) == h(rec["input"])
        assert KWP.encrypt(kek, b"").one_shot(h(rec["input"])) == h(rec["output"])
        assert KWP.decrypt(kek, aes.KWP_DEFAULT_AIV).one_shot(h(rec["output"])) == h(rec["input"])


@pytest.mark.parametrize("kind", ["KW", "KWP"])
@pytest.mark.parametrize("bits", [128, 192, 256])
def test_kw_nist_vectors(kind: str, bits: int) -> None:
    mech = KW if kind == "KW" else KWP
    for rec in load(f"keywrap/kwtestvectors/{kind}_AE_{bits}.txt"):
        kek = aes_key(h(rec["k"]))
        assert mech.wrap(kek, None, h(rec["p"])) == h(rec["c"])
        assert mech.encrypt(kek, None).one_shot(h(rec["p"])) == h(rec["c"])
    fails = 0
    for rec in load(f"keywrap/kwtestvectors/{kind}_AD_{bits}.txt"):
        kek = aes_key(h(rec["k"]))
        if "fail" in rec:
            fails += 1
            with raises_code(WrappedKeyInvalid):
                mech.unwrap(kek, None, h(rec["c"]))
            with raises_code(EncryptedDataInvalid):
                mech.decrypt(kek, None).one_shot(h(rec["c"]))
        else:
            assert mech.unwrap(kek, None, h(rec["c"])) == h(rec["p"])
            assert mech.decrypt(kek, None).one_shot(h(rec["c"])) == h(rec["p"])
    assert fails


def test_kw_length_rules() -> None:
    kek = aes_key(os.urandom(16))
    for n in (0, 8, 15, 17, 20):
        with raises_code(KeySizeRange):
            KW.wrap(kek, None, bytes(n))
        with raises_code(DataLenRange):
            KW.encrypt(kek, None).one_shot(bytes(n))
    for n in (0, 8, 16, 23, 25, 30):
        with raises_code(WrappedKeyLenRange):
            KW.unwrap(kek, None, bytes(n))
        with raises_code(EncryptedDataLenRange):
            KW.decrypt(kek, None).one_shot(bytes(n))
    with raises_code(KeySizeRange):
        KWP.wrap(kek, None, b"")
    with raises_code(DataLenRange):
        KWP.encrypt(kek, None).one_shot(b"")
    for n in (0, 8, 15, 17, 20):
        with raises_code(WrappedKeyLenRange):
            KWP.unwrap(kek, None, bytes(n))
        with raises_code(EncryptedDataLenRange):
            KWP.decrypt(kek, None).one_shot(bytes(n))
    # wrapping keys of odd lengths is what the padded variant is for
    for n in (1, 7, 20, 33):
        secret = os.urandom(n)
        wrapped = KWP.wrap(kek, None, secret)
        assert wrapped == keywrap.aes_key_wrap_with_padding(kek.value, secret)
        assert KWP.unwrap(kek, None, wrapped) == secret
    wrapped = KW.wrap(kek, None, bytes(24))
    tampered = bytes([wrapped[0] ^ 1]) + wrapped[1:]
    with raises_code(WrappedKeyInvalid):
        KW.unwrap(kek, None, tampered)
    with raises_code(WrappedKeyInvalid):  # right length, wrong key
        KW.unwrap(aes_key(os.urandom(16)), None, wrapped)


def test_kw_params_and_single_part_only() -> None:
    kek = aes_key(os.urandom(16))
    for mech in (KW, KWP):
        for bad in (bytes(8) if mech is KW else bytes(4), os.urandom(7), b"\xa6" * 16, {"iv": b""}, 8):
            with raises_code(MechanismParamInvalid):
                mech.wrap(kek, bad, bytes(16))
            with raises_code(MechanismParamInvalid):
                mech.encrypt(kek, bad)
        op = mech.encrypt(kek, None)
        with pytest.raises(FunctionNotSupported):
            op.update(bytes(16))
        with pytest.raises(FunctionNotSupported):
            op.final()
    with raises_code(MechanismParamInvalid):  # the 4-byte AIV belongs to KWP only
        KW.wrap(kek, aes.KWP_DEFAULT_AIV, bytes(16))
    with raises_code(MechanismParamInvalid):
        KWP.wrap(kek, aes.KW_DEFAULT_IV, bytes(16))
    for mech in (KW, KWP):
        generic = Key(CKK.GENERIC_SECRET, CKO.SECRET_KEY, value=os.urandom(16))
        with raises_code(KeyTypeInconsistent, CKR.WRAPPING_KEY_TYPE_INCONSISTENT):
            mech.wrap(generic, None, bytes(16))
        with raises_code(KeyTypeInconsistent, CKR.UNWRAPPING_KEY_TYPE_INCONSISTENT):
            mech.unwrap(generic, None, bytes(24))
        with raises_code(KeySizeRange, CKR.WRAPPING_KEY_SIZE_RANGE):
            mech.wrap(aes_key(bytes(20)), None, bytes(16))
        with raises_code(KeySizeRange, CKR.UNWRAPPING_KEY_SIZE_RANGE):
            mech.unwrap(aes_key(bytes(20)), None, bytes(24))
        with raises_code(KeyTypeInconsistent):
            mech.encrypt(generic, None)


# -- CMAC -----------------------------------------------------------------------------------


@pytest.mark.parametrize("bits", [128, 192, 256])
def test_cmac_vectors(bits: int) -> None:
    rnd = random.Random(bits)
    records = load(f"CMAC/nist-800-38b-aes{bits}.txt")
    assert len(records) == 4
    for rec in records:
        key, msg, mac = aes_key(h(rec["key"])), h(rec["message"]), h(rec["output"])
        assert CMAC.sign(key, None).one_shot(msg) == mac
        op = CMAC.sign(key, None)
        for part in chunks(msg, rnd):
            op.update(part)
        assert op.final() == mac
        CMAC.verify(key, None).one_shot(msg, mac)
        vop = CMAC.verify(key, None)
        for part in chunks(msg, rnd):
            vop.update(part)
        vop.final(mac)
        for n in (1, 4, 8, 16):
            params = {"mac_len": n}
            assert CMAC_GENERAL.sign(key, params).one_shot(msg) == mac[:n]
            CMAC_GENERAL.verify(key, params).one_shot(msg, mac[:n])


def test_cmac_errors() -> None:
    key = aes_key(os.urandom(32))
    msg = os.urandom(100)
    mac = CMAC.sign(key, None).one_shot(msg)
    bad = bytes([mac[0] ^ 1]) + mac[1:]
    with raises_code(SignatureInvalid):
        CMAC.verify(key, None).one_shot(msg, bad)
    with raises_code(SignatureInvalid):
        CMAC.verify(key, None).one_shot(msg + b"x", mac)
    for sig in (mac[:15], mac + b"\x00", b""):
        with raises_code(SignatureLenRange):
            CMAC.verify(key, None).one_shot(msg, sig)
    params = {"mac_len": 8}
    with raises_code(SignatureLenRange):
        CMAC_GENERAL.verify(key, params).one_shot(msg, mac)
    with raises_code(SignatureInvalid):
        CMAC_GENERAL.verify(key, params).one_shot(msg, bad[:8])
    for bad_params in (None, {"mac_len": 0}, {"mac_len": 17}, {"mac_len": True}, {"mac_len": 8, "x": 1}, 8, {}):
        with raises_code(MechanismParamInvalid):
            CMAC_GENERAL.sign(key, bad_params)
        with raises_code(MechanismParamInvalid):
            CMAC_GENERAL.verify(key, bad_params)
    with raises_code(MechanismParamInvalid):
        CMAC.sign(key, {"mac_len": 16})
    with raises_code(ArgumentsBad):
        CMAC.verify(key, None).one_shot(msg, None)  # type: ignore[arg-type]


# -- key checks and input limits ---------------------------------------------------------------

CIPHER_CASES = [
    (ECB, None),
    (CBC, bytes(16)),
    (CBC_PAD, bytes(16)),
    (CTR, {"counter_bits": 128, "cb": bytes(16)}),
    (GCM, gcm_params(bytes(12))),
    (KW, None),
    (KWP, None),
]


def test_wrong_key_type_and_size() -> None:
    wrong_keys = [
        Key(CKK.GENERIC_SECRET, CKO.SECRET_KEY, value=bytes(16)),
        Key(CKK.DES3, CKO.SECRET_KEY, value=bytes(24)),
        Key(CKK.AES, CKO.PUBLIC_KEY),
        Key(CKK.AES, CKO.SECRET_KEY, value=None),
    ]
    for mech, params in CIPHER_CASES:
        for wrong in wrong_keys:
            with raises_code(KeyTypeInconsistent):
                mech.encrypt(wrong, params)
            with raises_code(KeyTypeInconsistent):
                mech.decrypt(wrong, params)
        for size in (0, 8, 15, 20, 31, 33, 64):
            with raises_code(KeySizeRange):
                mech.encrypt(aes_key(bytes(size)), params)
            with raises_code(KeySizeRange):
                mech.decrypt(aes_key(bytes(size)), params)
    for mech in (CMAC, CMAC_GENERAL):
        params = {"mac_len": 16} if mech is CMAC_GENERAL else None
        for wrong in wrong_keys:
            with raises_code(KeyTypeInconsistent):
                mech.sign(wrong, params)
            with raises_code(KeyTypeInconsistent):
                mech.verify(wrong, params)
        with raises_code(KeySizeRange):
            mech.sign(aes_key(bytes(20)), params)


def test_oversize_input() -> None:
    big = bytes(MAX_DATA + 16)
    key = aes_key(os.urandom(16))
    for mech, params in CIPHER_CASES:
        for factory in (mech.encrypt, mech.decrypt):
            with raises_code(DataLenRange):
                factory(key, params).one_shot(big)
            if mech.multipart:
                with raises_code(DataLenRange):
                    factory(key, params).update(big)
    for mech, params in CIPHER_CASES:
        with raises_code(ArgumentsBad):
            mech.encrypt(key, params).one_shot("text")  # type: ignore[arg-type]
    # MAX_DATA itself is accepted
    assert len(ECB.encrypt(key, None).one_shot(bytes(MAX_DATA))) == MAX_DATA
    for mech, params in ((CMAC, None), (CMAC_GENERAL, {"mac_len": 4})):
        with raises_code(DataLenRange):
            mech.sign(key, params).update(big)
        with raises_code(DataLenRange):
            mech.verify(key, params).update(big)
    for mech, params in ((KW, None), (KWP, None), (CBC_PAD, bytes(16)), (GCM, gcm_params(bytes(12)))):
        with raises_code(DataLenRange):
            mech.wrap(key, params, big)
        with raises_code(DataLenRange):
            mech.unwrap(key, params, big)


def test_gcm_decrypt_buffer_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(aes, "GCM_DECRYPT_LIMIT", 64)
    key = aes_key(os.urandom(16))
    params = gcm_params(bytes(12))
    ct = GCM.encrypt(key, params).one_shot(bytes(64))
    assert GCM.decrypt(key, params).one_shot(ct) == bytes(64)
    op = GCM.decrypt(key, params)
    op.update(bytes(70))
    with raises_code(DataLenRange):
        op.update(bytes(20))


def test_parse_params_is_idempotent() -> None:
    for mech, params in CIPHER_CASES + [(CMAC_GENERAL, {"mac_len": 5}), (CMAC, None)]:
        parsed = mech.parse_params(params)
        assert mech.parse_params(parsed) == parsed
