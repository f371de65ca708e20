"""HMAC, digest and generic-secret mechanisms: RFC 4231 / RFC 2202 / NIST CAVP known answers,
single vs multi-part equality, and the PKCS#11 error codes for misuse."""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import hmac as crypto_hmac
from cryptography_vectors import open_vector_file

from strongroom.constants import CKA, CKK, CKM, CKO
from strongroom.errors import (
    ArgumentsBad,
    AttributeValueInvalid,
    DataLenRange,
    KeySizeRange,
    KeyTypeInconsistent,
    MechanismInvalid,
    MechanismParamInvalid,
    OperationNotInitialized,
    SignatureInvalid,
    SignatureLenRange,
    TemplateIncomplete,
    TemplateInconsistent,
)
from strongroom.mechanisms.base import MAX_DATA, Capability, Key, lookup
from strongroom.mechanisms.digest import DIGESTS
from strongroom.mechanisms.generic import GenericSecretKeyGen, secret_key_attributes
from strongroom.mechanisms.hmac import HMACS, MacParams

# hash mechanism -> (HMAC, HMAC_GENERAL, typed HMAC key, cryptography hash, digest size)
FAMILY = {
    CKM.SHA_1: (CKM.SHA_1_HMAC, CKM.SHA_1_HMAC_GENERAL, CKK.SHA_1_HMAC, hashes.SHA1, 20),
    CKM.SHA224: (CKM.SHA224_HMAC, CKM.SHA224_HMAC_GENERAL, CKK.SHA224_HMAC, hashes.SHA224, 28),
    CKM.SHA256: (CKM.SHA256_HMAC, CKM.SHA256_HMAC_GENERAL, CKK.SHA256_HMAC, hashes.SHA256, 32),
    CKM.SHA384: (CKM.SHA384_HMAC, CKM.SHA384_HMAC_GENERAL, CKK.SHA384_HMAC, hashes.SHA384, 48),
    CKM.SHA512: (CKM.SHA512_HMAC, CKM.SHA512_HMAC_GENERAL, CKK.SHA512_HMAC, hashes.SHA512, 64),
}
HASH_IDS = [ckm.name for ckm in FAMILY]
ALL_HMACS = [ckm for full, general, *_ in FAMILY.values() for ckm in (full, general)]


def secret(value: bytes | None, key_type: CKK = CKK.GENERIC_SECRET) -> Key:
    return Key(key_type, CKO.SECRET_KEY, value=value, size_bits=8 * len(value or b""))


def read_vectors(*paths: str) -> Iterator[dict[str, str]]:
    """Records of ``Name = hex`` lines (RFC and CAVP layouts alike), one per ``MD`` line."""
    for path in paths:
        record: dict[str, str] = {}
        with open_vector_file(path, "r") as handle:
            for raw in handle:
                line = raw.strip()
                if not line or line.startswith(("#", "[")) or "=" not in line:
                    continue
                name, value = (part.strip() for part in line.split("=", 1))
                record[name] = value
                if name == "MD":
                    yield record
                    record = {}


def message(record: dict[str, str]) -> bytes:
    # CAVP writes the empty message as Msg = 00 with Len = 0 (bits).
    return bytes.fromhex(record["Msg"])[: int(record["Len"]) // 8]


def sign(ckm: CKM, key: Key, data: bytes, params: object = None) -> bytes:
    return HMACS[ckm].sign(key, params).one_shot(data)


def verify(ckm: CKM, key: Key, data: bytes, signature: bytes, params: object = None) -> None:
    HMACS[ckm].verify(key, params).one_shot(data, signature)


def chunks(data: bytes, rng: random.Random) -> list[bytes]:
    """Random split including empty parts, so update(b"") is exercised too."""
    parts, at = [], 0
    while at < len(data):
        step = rng.choice((0, 1, rng.randint(1, 200), rng.randint(1, len(data))))
        parts.append(data[at : at + step])
        at += step
    return parts


# -- known answers --------------------------------------------------------------------------

RFC4231_FILES = {
    CKM.SHA224: "HMAC/rfc-4231-sha224.txt",
    CKM.SHA256: "HMAC/rfc-4231-sha256.txt",
    CKM.SHA384: "HMAC/rfc-4231-sha384.txt",
    CKM.SHA512: "HMAC/rfc-4231-sha512.txt",
}


@pytest.mark.parametrize("hash_ckm", list(RFC4231_FILES), ids=[c.name for c in RFC4231_FILES])
def test_rfc4231_full_length(hash_ckm: CKM) -> None:
    full, general, typed, _, size = FAMILY[hash_ckm]
    records = list(read_vectors(RFC4231_FILES[hash_ckm]))
    assert len(records) == 6  # test cases 1-4, 6, 7 (5 is the truncation case below)
    for record in records:
        data, expected = bytes.fromhex(record["Msg"]), bytes.fromhex(record["MD"])
        for key_type in (CKK.GENERIC_SECRET, typed):
            key = secret(bytes.fromhex(record["Key"]), key_type)
            assert sign(full, key, data) == expected
            verify(full, key, data, expected)
            assert sign(general, key, data, {"mac_len": size}) == expected
            verify(general, key, data, expected, {"mac_len": size})


# RFC 4231 §4.6, test case 5: HMAC output truncated to 128 bits.
RFC4231_CASE5 = {
    CKM.SHA224: "0e2aea68a90c8d37c988bcdb9fca6fa8",
    CKM.SHA256: "a3b6167473100ee06e0c796c2955552b",
    CKM.SHA384: "3abf34c3503b2a23a46efc619baef897",
    CKM.SHA512: "415fad6271580a531d4179bc891d87a6",
}


@pytest.mark.parametrize("hash_ckm", list(RFC4231_CASE5), ids=[c.name for c in RFC4231_CASE5])
def test_rfc4231_truncated_output(hash_ckm: CKM) -> None:
    _, general, typed, _, _ = FAMILY[hash_ckm]
    key, data = secret(b"\x0c" * 20, typed), b"Test With Truncation"
    expected = bytes.fromhex(RFC4231_CASE5[hash_ckm])
    assert sign(general, key, data, {"mac_len": 16}) == expected
    verify(general, key, data, expected, {"mac_len": 16})


def test_rfc2202_sha1() -> None:
    records = list(read_vectors("HMAC/rfc-2202-sha1.txt"))
    assert len(records) == 7
    for record in records:
        key = secret(bytes.fromhex(record["Key"]), CKK.SHA_1_HMAC)
        data, expected = bytes.fromhex(record["Msg"]), bytes.fromhex(record["MD"])
        assert sign(CKM.SHA_1_HMAC, key, data) == expected
        verify(CKM.SHA_1_HMAC, key, data, expected)
    # Test case 5 as the RFC states it: HMAC-SHA-1-96.
    key = secret(b"\x0c" * 20)
    truncated = bytes.fromhex("4c1a03424b55e07fe7f27be1")
    assert sign(CKM.SHA_1_HMAC_GENERAL, key, b"Test With Truncation", {"mac_len": 12}) == truncated
    verify(CKM.SHA_1_HMAC_GENERAL, key, b"Test With Truncation", truncated, {"mac_len": 12})


CAVP_FILES = {
    CKM.SHA_1: ("hashes/SHA1/SHA1ShortMsg.rsp", "hashes/SHA1/SHA1LongMsg.rsp"),
    **{
        ckm: (f"hashes/SHA2/SHA{bits}ShortMsg.rsp", f"hashes/SHA2/SHA{bits}LongMsg.rsp")
        for ckm, bits in ((CKM.SHA224, 224), (CKM.SHA256, 256), (CKM.SHA384, 384), (CKM.SHA512, 512))
    },
}


@pytest.mark.parametrize("hash_ckm", list(CAVP_FILES), ids=HASH_IDS)
def test_digest_cavp(hash_ckm: CKM) -> None:
    mechanism = lookup(hash_ckm)
    rng = random.Random(int(hash_ckm))
    records = list(read_vectors(*CAVP_FILES[hash_ckm]))
    assert len(records) > 100
    for record in records:
        data, expected = message(record), bytes.fromhex(record["MD"])
        assert mechanism.digest(None).one_shot(data) == expected
        operation = mechanism.digest(None)
        for part in chunks(data, rng):
            operation.update(part)
        assert operation.final() == expected


# -- single vs multi-part -------------------------------------------------------------------


@pytest.mark.parametrize("hash_ckm", list(FAMILY), ids=HASH_IDS)
def test_hmac_multipart_matches_single_part(hash_ckm: CKM) -> None:
    full, general, typed, algorithm, size = FAMILY[hash_ckm]
    rng = random.Random(1000 + int(hash_ckm))
    for _ in range(25):
        key = secret(rng.randbytes(rng.randint(1, 200)), rng.choice((CKK.GENERIC_SECRET, typed)))
        data = rng.randbytes(rng.randint(0, 5000))
        reference = crypto_hmac.HMAC(key.value, algorithm())  # type: ignore[arg-type]
        reference.update(data)
        expected = reference.finalize()
        assert sign(full, key, data) == expected

        mac_len = rng.randint(1, size)
        for ckm, params, want in ((full, None, expected), (general, {"mac_len": mac_len}, expected[:mac_len])):
            signer = HMACS[ckm].sign(key, params)
            for part in chunks(data, rng):
                signer.update(part)
            assert signer.final() == want
            verifier = HMACS[ckm].verify(key, params)
            for part in chunks(data, rng):
                verifier.update(part)
            verifier.final(want)


@pytest.mark.parametrize("hash_ckm", list(FAMILY), ids=HASH_IDS)
def test_digest_multipart_matches_library(hash_ckm: CKM) -> None:
    algorithm = FAMILY[hash_ckm][3]
    rng = random.Random(2000 + int(hash_ckm))
    for _ in range(25):
        data = rng.randbytes(rng.randint(0, 20000))
        reference = hashes.Hash(algorithm())
        reference.update(data)
        expected = reference.finalize()
        operation = DIGESTS[hash_ckm].digest(None)
        for part in chunks(data, rng):
            operation.update(part)
        assert operation.final() == expected
        assert DIGESTS[hash_ckm].digest(b"").one_shot(data) == expected


def test_largest_single_call_is_accepted() -> None:
    data = bytes(MAX_DATA)
    assert sign(CKM.SHA256_HMAC, secret(b"k"), data) == crypto_hmac_sha256(b"k", data)
    assert DIGESTS[CKM.SHA256].digest(None).one_shot(data) == hashes_sha256(data)


def crypto_hmac_sha256(key: bytes, data: bytes) -> bytes:
    mac = crypto_hmac.HMAC(key, hashes.SHA256())
    mac.update(data)
    return mac.finalize()


def hashes_sha256(data: bytes) -> bytes:
    digest = hashes.Hash(hashes.SHA256())
    digest.update(data)
    return digest.finalize()


# -- registry and mechanism info ------------------------------------------------------------


def test_registered_mechanisms() -> None:
    for hash_ckm, (full, general, typed, _, _) in FAMILY.items():
        assert lookup(hash_ckm) is DIGESTS[hash_ckm]
        assert DIGESTS[hash_ckm].capabilities == Capability.DIGEST
        for ckm in (full, general):
            mechanism = lookup(ckm)
            assert mechanism is HMACS[ckm]
            assert mechanism.capabilities == Capability.SIGN | Capability.VERIFY
            assert mechanism.key_types == {CKK.GENERIC_SECRET, typed}
            assert (mechanism.min_key_size, mechanism.max_key_size, mechanism.multipart) == (1, 512, True)
    keygen = lookup(CKM.GENERIC_SECRET_KEY_GEN)
    assert isinstance(keygen, GenericSecretKeyGen)
    assert (keygen.capabilities, keygen.min_key_size, keygen.max_key_size) == (Capability.GENERATE, 1, 512)


def test_capabilities_not_offered_are_refused() -> None:
    with pytest.raises(MechanismInvalid):
        DIGESTS[CKM.SHA256].sign(secret(b"k"), None)
    with pytest.raises(MechanismInvalid):
        HMACS[CKM.SHA256_HMAC].digest(None)
    with pytest.raises(MechanismInvalid):
        HMACS[CKM.SHA256_HMAC].encrypt(secret(b"k"), None)


# -- key errors -----------------------------------------------------------------------------


@pytest.mark.parametrize("ckm", ALL_HMACS, ids=[c.name for c in ALL_HMACS])
def test_wrong_key_type(ckm: CKM) -> None:
    mechanism = HMACS[ckm]
    params = {"mac_len": 10} if mechanism.general else None
    own = next(typed for full, general, typed, *_ in FAMILY.values() if ckm in (full, general))
    others = [typed for *_, typed, _, _ in FAMILY.values() if typed != own] + [CKK.AES, CKK.DES3, CKK.MD5_HMAC]
    for key_type in others:
        for start in (mechanism.sign, mechanism.verify):
            with pytest.raises(KeyTypeInconsistent):
                start(secret(b"k" * 32, key_type), params)
    private = Key(CKK.EC, CKO.PRIVATE_KEY)
    with pytest.raises(KeyTypeInconsistent):
        mechanism.sign(private, params)
    with pytest.raises(KeyTypeInconsistent):
        mechanism.sign(secret(None), params)
    # Its own typed key and a generic secret are both fine.
    expected_len = 10 if mechanism.general else mechanism.digest_size
    assert len(mechanism.sign(secret(b"k", own), params).one_shot(b"x")) == expected_len
    mechanism.sign(secret(b"k"), params)


@pytest.mark.parametrize("length", [0, 513, 4096])
def test_key_size_out_of_range(length: int) -> None:
    for ckm in (CKM.SHA256_HMAC, CKM.SHA512_HMAC):
        for start in (HMACS[ckm].sign, HMACS[ckm].verify):
            with pytest.raises(KeySizeRange):
                start(secret(b"\x01" * length), None)


def test_key_size_bounds_are_inclusive() -> None:
    for length in (1, 512):
        key = secret(b"\x5a" * length)
        verify(CKM.SHA384_HMAC, key, b"data", sign(CKM.SHA384_HMAC, key, b"data"))


# -- parameter errors -----------------------------------------------------------------------


@pytest.mark.parametrize("hash_ckm", list(FAMILY), ids=HASH_IDS)
def test_general_mac_len_range(hash_ckm: CKM) -> None:
    _, general, _, _, size = FAMILY[hash_ckm]
    mechanism = HMACS[general]
    assert mechanism.parse_params({"mac_len": 1}) == MacParams(1)
    assert mechanism.parse_params({"mac_len": size}) == MacParams(size)
    for bad in (0, -1, size + 1, 1 << 64):
        with pytest.raises(MechanismParamInvalid, match="mac_len"):
            mechanism.parse_params({"mac_len": bad})
        with pytest.raises(MechanismParamInvalid):
            mechanism.sign(secret(b"k"), {"mac_len": bad})
        with pytest.raises(MechanismParamInvalid):
            mechanism.verify(secret(b"k"), {"mac_len": bad})


@pytest.mark.parametrize(
    "params",
    [
        None,
        b"",
        {},
        16,
        b"\x10",
        [16],
        {"mac_len": True},
        {"mac_len": "16"},
        {"mac_len": 16.0},
        {"mac_len": None},
        {"mac_len": 16, "extra": 1},
        {"maclen": 16},
        {b"mac_len": 16},
    ],
)
def test_general_params_are_strict(params: object) -> None:
    with pytest.raises(MechanismParamInvalid, match="mac_len"):
        HMACS[CKM.SHA256_HMAC_GENERAL].parse_params(params)
    with pytest.raises(MechanismParamInvalid):
        HMACS[CKM.SHA256_HMAC_GENERAL].sign(secret(b"k"), params)


@pytest.mark.parametrize("params", [{"mac_len": 16}, MacParams(16), 16, b"\x00", [None]])
def test_full_length_hmac_and_digest_take_no_params(params: object) -> None:
    with pytest.raises(MechanismParamInvalid):
        HMACS[CKM.SHA256_HMAC].sign(secret(b"k"), params)
    with pytest.raises(MechanismParamInvalid):
        DIGESTS[CKM.SHA256].digest(params)


def test_empty_params_are_accepted_where_none_are_taken() -> None:
    expected = sign(CKM.SHA256_HMAC, secret(b"k"), b"m")
    params: object
    for params in (None, b"", {}):
        assert sign(CKM.SHA256_HMAC, secret(b"k"), b"m", params) == expected
        assert DIGESTS[CKM.SHA256].digest(params).one_shot(b"m") == hashes_sha256(b"m")


def test_parsed_params_are_accepted() -> None:
    key = secret(b"k")
    parsed = HMACS[CKM.SHA256_HMAC_GENERAL].parse_params({"mac_len": 7})
    assert sign(CKM.SHA256_HMAC_GENERAL, key, b"m", parsed) == crypto_hmac_sha256(b"k", b"m")[:7]


# -- signature errors -----------------------------------------------------------------------


@pytest.mark.parametrize("hash_ckm", list(FAMILY), ids=HASH_IDS)
def test_wrong_signature_length(hash_ckm: CKM) -> None:
    full, general, _, _, size = FAMILY[hash_ckm]
    key, data = secret(b"key"), b"message"
    good = sign(full, key, data)
    for bad in (b"", good[:-1], good + b"\x00", good * 2):
        with pytest.raises(SignatureLenRange):
            verify(full, key, data, bad)
    params = {"mac_len": 12}
    # A full-length MAC offered to a 12-byte verification is the wrong length, not "wrong".
    for bad in (good, good[:11], good[:13]):
        with pytest.raises(SignatureLenRange):
            verify(general, key, data, bad, params)
    verify(general, key, data, good[:12], params)


@pytest.mark.parametrize("ckm", ALL_HMACS, ids=[c.name for c in ALL_HMACS])
def test_bad_signature(ckm: CKM) -> None:
    mechanism = HMACS[ckm]
    params = {"mac_len": 16} if mechanism.general else None
    key, data = secret(b"key"), b"message"
    good = sign(ckm, key, data, params)
    for position in (0, len(good) // 2, len(good) - 1):
        tampered = bytearray(good)
        tampered[position] ^= 0x01
        with pytest.raises(SignatureInvalid):
            verify(ckm, key, data, bytes(tampered), params)
    with pytest.raises(SignatureInvalid):
        verify(ckm, key, data + b"!", good, params)
    with pytest.raises(SignatureInvalid):
        verify(ckm, secret(b"kez"), data, good, params)


def test_signature_must_be_bytes() -> None:
    with pytest.raises(ArgumentsBad):
        verify(CKM.SHA256_HMAC, secret(b"k"), b"m", "00" * 32)  # type: ignore[arg-type]


# -- data errors and operation lifetime -----------------------------------------------------


OVERSIZE = bytes(MAX_DATA + 1)


def test_oversize_input_ends_the_operation() -> None:
    key = secret(b"k")
    signers = (HMACS[CKM.SHA256_HMAC].sign(key, None), HMACS[CKM.SHA256_HMAC_GENERAL].sign(key, {"mac_len": 8}))
    for operation in (*signers, DIGESTS[CKM.SHA256].digest(None)):
        operation.update(b"fine")
        with pytest.raises(DataLenRange):
            operation.update(OVERSIZE)
        with pytest.raises(OperationNotInitialized):
            operation.update(b"more")
        with pytest.raises(OperationNotInitialized):
            operation.final()

    verifier = HMACS[CKM.SHA256_HMAC].verify(key, None)
    with pytest.raises(DataLenRange):
        verifier.update(OVERSIZE)
    with pytest.raises(OperationNotInitialized):
        verifier.final(crypto_hmac_sha256(b"k", b""))

    # Single-part calls go through the same check.
    with pytest.raises(DataLenRange):
        HMACS[CKM.SHA_1_HMAC_GENERAL].sign(key, {"mac_len": 4}).one_shot(OVERSIZE)
    with pytest.raises(DataLenRange):
        HMACS[CKM.SHA512_HMAC].verify(key, None).one_shot(OVERSIZE, bytes(64))
    with pytest.raises(DataLenRange):
        DIGESTS[CKM.SHA_1].digest(None).one_shot(OVERSIZE)


@pytest.mark.parametrize("data", ["text", 5, None, [1, 2]])
def test_data_must_be_bytes(data: object) -> None:
    with pytest.raises(ArgumentsBad):
        HMACS[CKM.SHA_1_HMAC].sign(secret(b"k"), None).update(data)  # type: ignore[arg-type]
    with pytest.raises(ArgumentsBad):
        HMACS[CKM.SHA_1_HMAC].verify(secret(b"k"), None).update(data)  # type: ignore[arg-type]
    with pytest.raises(ArgumentsBad):
        DIGESTS[CKM.SHA_1].digest(None).update(data)  # type: ignore[arg-type]


def test_bytes_like_inputs_are_accepted() -> None:
    signer = HMACS[CKM.SHA256_HMAC].sign(secret(bytearray(b"k")), None)  # type: ignore[arg-type]
    signer.update(bytearray(b"a"))  # type: ignore[arg-type]
    signer.update(memoryview(b"bc"))  # type: ignore[arg-type]
    assert signer.final() == crypto_hmac_sha256(b"k", b"abc")


def test_operations_end_at_final() -> None:
    signer = HMACS[CKM.SHA256_HMAC].sign(secret(b"k"), None)
    signer.final()
    with pytest.raises(OperationNotInitialized):
        signer.update(b"x")
    with pytest.raises(OperationNotInitialized):
        signer.final()

    # A failed verification ends the operation too (C_VerifyFinal always terminates it).
    verifier = HMACS[CKM.SHA256_HMAC].verify(secret(b"k"), None)
    with pytest.raises(SignatureLenRange):
        verifier.final(b"short")
    with pytest.raises(OperationNotInitialized):
        verifier.final(crypto_hmac_sha256(b"k", b""))

    digest = DIGESTS[CKM.SHA512].digest(None)
    digest.final()
    with pytest.raises(OperationNotInitialized):
        digest.update(b"x")


# -- generic secret key generation ----------------------------------------------------------


GENERATOR = lookup(CKM.GENERIC_SECRET_KEY_GEN)


@pytest.mark.parametrize("length", [1, 16, 32, 64, 512])
def test_generate_generic_secret(length: int) -> None:
    generated = GENERATOR.generate_key(None, {CKA.VALUE_LEN: length})
    assert generated.key_type == CKK.GENERIC_SECRET
    assert len(generated.value) == length
    assert generated.attributes == {CKA.VALUE_LEN: length}
    # Usable straight away as an HMAC key.
    key = secret(generated.value)
    verify(CKM.SHA256_HMAC, key, b"m", sign(CKM.SHA256_HMAC, key, b"m"))


def test_generated_secrets_differ() -> None:
    values = {GENERATOR.generate_key(None, {int(CKA.VALUE_LEN): 32}).value for _ in range(16)}
    assert len(values) == 16


def test_generate_needs_value_len() -> None:
    with pytest.raises(TemplateIncomplete):
        GENERATOR.generate_key(None, {})
    with pytest.raises(TemplateIncomplete):
        GENERATOR.generate_key(None, {CKA.KEY_TYPE: CKK.GENERIC_SECRET})


@pytest.mark.parametrize("length", [0, -1, 513, 1 << 40])
def test_generate_value_len_out_of_range(length: int) -> None:
    with pytest.raises(KeySizeRange):
        GENERATOR.generate_key(None, {CKA.VALUE_LEN: length})


@pytest.mark.parametrize("length", [True, "32", 32.0, b"\x20", None])
def test_generate_value_len_must_be_int(length: object) -> None:
    with pytest.raises(AttributeValueInvalid):
        GENERATOR.generate_key(None, {CKA.VALUE_LEN: length})


def test_generate_rejects_other_key_types_and_params() -> None:
    for key_type in (CKK.AES, CKK.SHA256_HMAC, True):
        with pytest.raises(TemplateInconsistent):
            GENERATOR.generate_key(None, {CKA.VALUE_LEN: 32, CKA.KEY_TYPE: key_type})
    assert GENERATOR.generate_key(None, {CKA.VALUE_LEN: 8, CKA.KEY_TYPE: CKK.GENERIC_SECRET}).value
    with pytest.raises(MechanismParamInvalid):
        GENERATOR.generate_key({"len": 32}, {CKA.VALUE_LEN: 32})


def test_secret_key_attributes() -> None:
    assert secret_key_attributes(b"\x00" * 24) == {CKA.VALUE_LEN: 24}
    assert secret_key_attributes(b"") == {CKA.VALUE_LEN: 0}
