"""RSA mechanisms: NIST/PKCS#1 known answers, cross-checks with pyca/cryptography used directly, error cases."""

from __future__ import annotations

import functools
import hashlib
import pathlib
from collections.abc import Iterator
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils

from strongroom.constants import CKA, CKG, CKK, CKM, CKO, CKZ
from strongroom.encoding import rsa as rsa_enc
from strongroom.errors import (
    CKR,
    ArgumentsBad,
    AttributeValueInvalid,
    DataLenRange,
    DeviceError,
    EncryptedDataInvalid,
    EncryptedDataLenRange,
    FunctionNotSupported,
    HsmError,
    KeySizeRange,
    KeyTypeInconsistent,
    MechanismInvalid,
    MechanismParamInvalid,
    OperationNotInitialized,
    PublicKeyInvalid,
    SignatureInvalid,
    SignatureLenRange,
    TemplateIncomplete,
    TemplateInconsistent,
    WrappedKeyInvalid,
    WrappedKeyLenRange,
)
from strongroom.mechanisms import rsa as mrsa
from strongroom.mechanisms.base import MAX_DATA, Capability, Key, lookup

# name -> (CKM hash, CKG MGF1, cryptography hash, SHA*_RSA_PKCS, SHA*_RSA_PKCS_PSS)
HASHES: dict[str, tuple[CKM, CKG, type[hashes.HashAlgorithm], CKM, CKM]] = {
    "SHA1": (CKM.SHA_1, CKG.MGF1_SHA1, hashes.SHA1, CKM.SHA1_RSA_PKCS, CKM.SHA1_RSA_PKCS_PSS),
    "SHA224": (CKM.SHA224, CKG.MGF1_SHA224, hashes.SHA224, CKM.SHA224_RSA_PKCS, CKM.SHA224_RSA_PKCS_PSS),
    "SHA256": (CKM.SHA256, CKG.MGF1_SHA256, hashes.SHA256, CKM.SHA256_RSA_PKCS, CKM.SHA256_RSA_PKCS_PSS),
    "SHA384": (CKM.SHA384, CKG.MGF1_SHA384, hashes.SHA384, CKM.SHA384_RSA_PKCS, CKM.SHA384_RSA_PKCS_PSS),
    "SHA512": (CKM.SHA512, CKG.MGF1_SHA512, hashes.SHA512, CKM.SHA512_RSA_PKCS, CKM.SHA512_RSA_PKCS_PSS),
}
NAMES = list(HASHES)
# RFC 8017 9.2 note 1: DigestInfo prefix for SHA-256.
SHA256_DIGEST_INFO = bytes.fromhex("3031300d060960864801650304020105000420")


# -- keys ------------------------------------------------------------------------------


def private_key(private: rsa.RSAPrivateKey) -> Key:
    return Key(CKK.RSA, CKO.PRIVATE_KEY, private=private, public=private.public_key(), size_bits=private.key_size)


def public_key(public: rsa.RSAPublicKey) -> Key:
    return Key(CKK.RSA, CKO.PUBLIC_KEY, public=public, size_bits=public.key_size)


def generate(bits: int, extra: dict[int, Any] | None = None) -> Any:
    return lookup(CKM.RSA_PKCS_KEY_PAIR_GEN).generate_key_pair(None, {CKA.MODULUS_BITS: bits, **(extra or {})}, {})


@pytest.fixture(scope="module")
def pair2048() -> Any:
    return generate(2048)


@pytest.fixture(scope="module")
def pair3072() -> Any:
    return generate(3072)


@pytest.fixture(scope="module")
def priv(pair2048: Any) -> Key:
    return private_key(pair2048.private)


@pytest.fixture(scope="module")
def pub(pair2048: Any) -> Key:
    """The public half as the object layer would rebuild it from its stored attributes."""
    return public_key(rsa_enc.public_key_from_attributes(pair2048.public_attributes))


@pytest.fixture(scope="module")
def raw(pair2048: Any) -> rsa.RSAPrivateKey:
    return pair2048.private


@pytest.fixture(scope="module")
def small() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(65537, 1024)


@pytest.fixture(scope="module")
def ec_key() -> Key:
    k = ec.generate_private_key(ec.SECP256R1())
    return Key(CKK.EC, CKO.PRIVATE_KEY, private=k, public=k.public_key(), size_bits=256)


@pytest.fixture(scope="module")
def aes_key() -> Key:
    return Key(CKK.AES, CKO.SECRET_KEY, value=bytes(32), size_bits=256)


# -- operation helpers -----------------------------------------------------------------


def chunks(data: bytes, size: int = 7) -> Iterator[bytes]:
    return (data[i : i + size] for i in range(0, len(data), size))


def sign(ckm: CKM, key: Key, data: bytes, params: Any = None, parts: bool = False) -> bytes:
    op = lookup(ckm).sign(key, params)
    if not parts:
        return op.one_shot(data)
    for chunk in chunks(data):
        op.update(chunk)
    return op.final()


def verify(ckm: CKM, key: Key, data: bytes, signature: bytes, params: Any = None, parts: bool = False) -> None:
    op = lookup(ckm).verify(key, params)
    if not parts:
        return op.one_shot(data, signature)
    for chunk in chunks(data):
        op.update(chunk)
    op.final(signature)


def encrypt(ckm: CKM, key: Key, data: bytes, params: Any = None) -> bytes:
    return lookup(ckm).encrypt(key, params).one_shot(data)


def decrypt(ckm: CKM, key: Key, data: bytes, params: Any = None) -> bytes:
    return lookup(ckm).decrypt(key, params).one_shot(data)


def pss(name: str, salt_len: int, mgf: str | None = None) -> dict[str, Any]:
    return {"hash": HASHES[name][0], "mgf": HASHES[mgf or name][1], "salt_len": salt_len}


def oaep(name: str, mgf: str | None = None, label: bytes | None = None) -> dict[str, Any]:
    params: dict[str, Any] = {"hash": HASHES[name][0], "mgf": HASHES[mgf or name][1]}
    if label is not None:
        params.update(source=CKZ.DATA_SPECIFIED, source_data=label)
    return params


def crypto_oaep(name: str, mgf: str | None = None, label: bytes | None = None) -> padding.OAEP:
    return padding.OAEP(padding.MGF1(HASHES[mgf or name][2]()), HASHES[name][2](), label)


def flip(data: bytes, index: int = -1) -> bytes:
    b = bytearray(data)
    b[index] ^= 1
    return bytes(b)


# -- test vectors (cryptography_vectors) -------------------------------------------------


@pytest.fixture(scope="module")
def vectors() -> pathlib.Path:
    module = pytest.importorskip("cryptography_vectors")
    return pathlib.Path(module.__file__).parent / "asymmetric" / "RSA"


def nist_records(path: pathlib.Path, trigger: str) -> list[dict[str, str]]:
    """CAVP .rsp/.txt files: 'k = v' lines; a record ends at ``trigger``; [mod = N] starts a group."""
    return _nist_records(str(path), trigger)


@functools.cache
def _nist_records(path: str, trigger: str) -> list[dict[str, str]]:
    records, current = [], {}
    for line in pathlib.Path(path).read_text().splitlines():
        line = line.strip()
        if line.startswith("[mod"):
            current = {"mod": line.strip("[]").split("=")[1].strip()}
        elif " = " in line and not line.startswith("#"):
            k, v = line.split(" = ", 1)
            current[k] = v
            if k == trigger:
                records.append(dict(current))
    return records


def labelled_blocks(path: pathlib.Path) -> Iterator[tuple[str, bytes]]:
    """PKCS#1-style vector files: '# Label:' then hex lines."""
    label, buf = None, []
    for line in path.read_text().splitlines() + ["#"]:
        if line.startswith("#"):
            if label is not None and buf:
                text_hex = "".join(buf)
                yield label, bytes.fromhex(text_hex.zfill(len(text_hex) + len(text_hex) % 2))
            text = line[1:].strip()
            label = text[:-1] if text.endswith(":") else None
            if "alg=" in text:
                yield "params", text.encode()
            buf = []
        elif label is not None and line.strip():
            buf.append(line.replace(" ", "").strip())


def encryption_vectors(path: pathlib.Path) -> Iterator[tuple[rsa.RSAPrivateKey, bytes, bytes, bytes]]:
    """(key, params comment, message, ciphertext) from oaep-custom / pkcs1v15crypt files."""
    key: dict[str, int] = {}
    names = {
        "Prime 1": "p",
        "Prime 2": "q",
        "Prime exponent 1": "dmp1",
        "Prime exponent 2": "dmq1",
        "Public exponent": "e",
    }
    private: rsa.RSAPrivateKey | None = None
    params, message = b"", b""
    for label, value in labelled_blocks(path):
        number = int.from_bytes(value, "big")
        if label == "Modulus":
            key, private = {"n": number}, None
        elif label == "Exponent":
            key["d" if "e" in key else "e"] = number
        elif label in names:
            key[names[label]] = number
        elif label == "Coefficient":
            private = rsa.RSAPrivateNumbers(
                key["p"], key["q"], key["d"], key["dmp1"], key["dmq1"], number,
                rsa.RSAPublicNumbers(key["e"], key["n"]),
            ).private_key(unsafe_skip_rsa_key_validation=True)  # published vectors; checking costs seconds
        elif label == "params":
            params = value
        elif label == "Message":
            message = value
        elif label == "Encryption":
            assert private is not None
            yield private, params, message, value


@functools.cache
def _private_from_ned(n: int, e: int, d: int) -> rsa.RSAPrivateKey:
    p, q = rsa.rsa_recover_prime_factors(n, e, d)
    return rsa.RSAPrivateNumbers(
        p, q, d, rsa.rsa_crt_dmp1(d, p), rsa.rsa_crt_dmq1(d, q), rsa.rsa_crt_iqmp(p, q),
        rsa.RSAPublicNumbers(e, n),
    ).private_key(unsafe_skip_rsa_key_validation=True)


def _public_from_record(record: dict[str, str]) -> Key:
    attrs = {CKA.MODULUS: bytes.fromhex(record["n"]), CKA.PUBLIC_EXPONENT: bytes.fromhex(record["e"])}
    return public_key(rsa_enc.public_key_from_attributes(attrs))


# -- registry ---------------------------------------------------------------------------

SIGN_VERIFY = Capability.SIGN | Capability.VERIFY
ENC_WRAP = Capability.ENCRYPT | Capability.DECRYPT | Capability.WRAP | Capability.UNWRAP


@pytest.mark.parametrize(
    ("ckm", "capabilities", "multipart"),
    [
        (CKM.RSA_PKCS_KEY_PAIR_GEN, Capability.GENERATE_KEY_PAIR, False),
        (CKM.RSA_PKCS, SIGN_VERIFY | ENC_WRAP, False),
        (CKM.RSA_PKCS_PSS, SIGN_VERIFY, False),
        (CKM.RSA_PKCS_OAEP, ENC_WRAP, False),
        *[(HASHES[n][3], SIGN_VERIFY, True) for n in NAMES],
        *[(HASHES[n][4], SIGN_VERIFY, True) for n in NAMES],
    ],
)
def test_registry(ckm: CKM, capabilities: Capability, multipart: bool) -> None:
    mechanism = lookup(ckm)
    assert mechanism.ckm == ckm
    assert mechanism.capabilities == capabilities
    assert mechanism.multipart is multipart
    assert mechanism.key_types == frozenset({CKK.RSA})
    assert (mechanism.min_key_size, mechanism.max_key_size) == (2048, 4096)


def test_raw_rsa_is_not_offered() -> None:
    with pytest.raises(MechanismInvalid):
        lookup(CKM.RSA_X_509)


# -- key-pair generation -----------------------------------------------------------------


@pytest.mark.parametrize("fixture", ["pair2048", "pair3072"])
def test_generated_pair(fixture: str, request: pytest.FixtureRequest) -> None:
    pair = request.getfixturevalue(fixture)
    bits = int(fixture[-4:])
    numbers = pair.private.private_numbers()
    assert pair.key_type == CKK.RSA
    assert pair.private.key_size == bits
    assert pair.public_attributes == {
        CKA.MODULUS: numbers.public_numbers.n.to_bytes(bits // 8, "big"),
        CKA.PUBLIC_EXPONENT: b"\x01\x00\x01",
        CKA.MODULUS_BITS: bits,
    }
    # CKA_MODULUS_BITS is a public-key attribute only.
    assert pair.private_attributes == {
        CKA.MODULUS: pair.public_attributes[CKA.MODULUS],
        CKA.PUBLIC_EXPONENT: b"\x01\x00\x01",
    }
    # The pair works with cryptography used directly.
    public = rsa_enc.public_key_from_attributes(pair.public_attributes)
    signature = sign(CKM.SHA256_RSA_PKCS, private_key(pair.private), b"probe")
    public.verify(signature, b"probe", padding.PKCS1v15(), hashes.SHA256())


def test_generate_4096_with_explicit_exponent() -> None:
    pair = generate(4096, {CKA.PUBLIC_EXPONENT: b"\x00\x01\x00\x01"})
    assert pair.private.key_size == 4096
    assert pair.public_attributes[CKA.PUBLIC_EXPONENT] == b"\x01\x00\x01"


@pytest.mark.parametrize(
    ("template", "error"),
    [
        ({}, TemplateIncomplete),
        ({CKA.PUBLIC_EXPONENT: b"\x01\x00\x01"}, TemplateIncomplete),
        ({CKA.MODULUS_BITS: 1024}, KeySizeRange),
        ({CKA.MODULUS_BITS: 1792}, KeySizeRange),
        ({CKA.MODULUS_BITS: 2049}, KeySizeRange),
        ({CKA.MODULUS_BITS: 3000}, KeySizeRange),
        ({CKA.MODULUS_BITS: 4352}, KeySizeRange),
        ({CKA.MODULUS_BITS: 8192}, KeySizeRange),
        ({CKA.MODULUS_BITS: -2048}, KeySizeRange),
        ({CKA.MODULUS_BITS: True}, AttributeValueInvalid),
        ({CKA.MODULUS_BITS: "2048"}, AttributeValueInvalid),
        ({CKA.MODULUS_BITS: 2048.0}, AttributeValueInvalid),
        ({CKA.MODULUS_BITS: 2048, CKA.PUBLIC_EXPONENT: b"\x03"}, AttributeValueInvalid),
        ({CKA.MODULUS_BITS: 2048, CKA.PUBLIC_EXPONENT: b"\x01\x00\x03"}, AttributeValueInvalid),
        ({CKA.MODULUS_BITS: 2048, CKA.PUBLIC_EXPONENT: b"\x01\x00\x00\x01"}, AttributeValueInvalid),
        ({CKA.MODULUS_BITS: 2048, CKA.PUBLIC_EXPONENT: b""}, AttributeValueInvalid),
        ({CKA.MODULUS_BITS: 2048, CKA.PUBLIC_EXPONENT: 65537}, AttributeValueInvalid),
    ],
)
def test_generate_template_errors(template: dict[int, Any], error: type[HsmError], monkeypatch: Any) -> None:
    monkeypatch.setattr(mrsa, "_new_private_key", lambda bits: pytest.fail("must fail before generating"))
    with pytest.raises(error):
        lookup(CKM.RSA_PKCS_KEY_PAIR_GEN).generate_key_pair(None, template, {})


def test_generate_rejects_parameters() -> None:
    with pytest.raises(MechanismParamInvalid):
        lookup(CKM.RSA_PKCS_KEY_PAIR_GEN).generate_key_pair({"bits": 2048}, {CKA.MODULUS_BITS: 2048}, {})


class FaultyKey(rsa.RSAPrivateKey):
    """A real key whose signing or decryption goes wrong, as a faulty computation would."""

    def __init__(self, key: rsa.RSAPrivateKey, fault: str) -> None:
        self._key, self._fault = key, fault

    def sign(self, data: bytes, pad: Any, algorithm: Any) -> bytes:
        signature = self._key.sign(data, pad, algorithm)
        return flip(signature) if self._fault == "sign" else signature

    def decrypt(self, ciphertext: bytes, pad: Any) -> bytes:
        plaintext = self._key.decrypt(ciphertext, pad)
        return flip(plaintext) if self._fault == "decrypt" else plaintext

    @property
    def key_size(self) -> int:
        return self._key.key_size

    def public_key(self) -> rsa.RSAPublicKey:
        return self._key.public_key() if self._fault != "public" else rsa.generate_private_key(65537, 2048).public_key()

    def private_numbers(self) -> rsa.RSAPrivateNumbers:
        return self._key.private_numbers()

    def private_bytes(self, *args: Any) -> bytes:
        return self._key.private_bytes(*args)

    def __copy__(self) -> FaultyKey:
        return self

    def __deepcopy__(self, memo: dict[Any, Any]) -> FaultyKey:
        return self


@pytest.mark.parametrize("fault", ["sign", "decrypt", "public"])
def test_pairwise_consistency_test_fails_a_bad_pair(fault: str, raw: rsa.RSAPrivateKey, monkeypatch: Any) -> None:
    monkeypatch.setattr(mrsa, "_new_private_key", lambda bits: FaultyKey(raw, fault))
    with pytest.raises(DeviceError) as info:
        generate(2048)
    assert info.value.code == CKR.DEVICE_ERROR
    assert "pair-wise" in info.value.message


def test_pairwise_consistency_test_passes_a_good_pair(raw: rsa.RSAPrivateKey, monkeypatch: Any) -> None:
    monkeypatch.setattr(mrsa, "_new_private_key", lambda bits: FaultyKey(raw, "none"))
    assert generate(2048).private.key_size == 2048


# -- attribute helpers ----------------------------------------------------------------------


def test_key_attributes_round_trip(raw: rsa.RSAPrivateKey) -> None:
    public = raw.public_key()
    attrs = rsa_enc.key_attributes(public)
    assert attrs == rsa_enc.key_attributes(raw)
    assert attrs[CKA.MODULUS_BITS] == 2048 and len(attrs[CKA.MODULUS]) == 256
    assert rsa_enc.public_key_from_attributes(attrs) == public
    # Leading zeros are tolerated; MODULUS_BITS may be absent.
    padded = {CKA.MODULUS: b"\x00" + attrs[CKA.MODULUS], CKA.PUBLIC_EXPONENT: b"\x00\x01\x00\x01"}
    assert rsa_enc.public_key_from_attributes(padded) == public


def test_private_key_attributes(raw: rsa.RSAPrivateKey) -> None:
    n = raw.private_numbers()
    attrs = rsa_enc.private_key_attributes(raw)
    as_int = {k: int.from_bytes(v, "big") for k, v in attrs.items() if isinstance(v, bytes)}
    assert as_int == {
        CKA.MODULUS: n.public_numbers.n,
        CKA.PUBLIC_EXPONENT: n.public_numbers.e,
        CKA.PRIVATE_EXPONENT: n.d,
        CKA.PRIME_1: n.p,
        CKA.PRIME_2: n.q,
        CKA.EXPONENT_1: n.dmp1,
        CKA.EXPONENT_2: n.dmq1,
        CKA.COEFFICIENT: n.iqmp,
    }
    assert attrs[CKA.MODULUS_BITS] == 2048


def test_public_key_from_attributes_accepts_legacy_sizes(small: rsa.RSAPrivateKey) -> None:
    attrs = rsa_enc.key_attributes(small)
    assert rsa_enc.public_key_from_attributes(attrs).key_size == 1024


def _attrs(n: int, e: int = 65537, extra: dict[int, Any] | None = None) -> dict[int, Any]:
    return {
        CKA.MODULUS: n.to_bytes((n.bit_length() + 7) // 8, "big"),
        CKA.PUBLIC_EXPONENT: e.to_bytes(4, "big"),
        **(extra or {}),
    }


ODD_2048 = (1 << 2047) | 1


@pytest.mark.parametrize(
    ("attrs", "error"),
    [
        ({CKA.PUBLIC_EXPONENT: b"\x01\x00\x01"}, TemplateIncomplete),
        ({CKA.MODULUS: ODD_2048.to_bytes(256, "big")}, TemplateIncomplete),
        ({CKA.MODULUS: ODD_2048, CKA.PUBLIC_EXPONENT: b"\x01\x00\x01"}, AttributeValueInvalid),
        ({CKA.MODULUS: b"", CKA.PUBLIC_EXPONENT: b"\x01\x00\x01"}, AttributeValueInvalid),
        ({CKA.MODULUS: ODD_2048.to_bytes(256, "big"), CKA.PUBLIC_EXPONENT: "65537"}, AttributeValueInvalid),
        (_attrs((1 << 511) | 1), AttributeValueInvalid),
        (_attrs((1 << 1022) | 1), AttributeValueInvalid),
        (_attrs((1 << 4096) | 1), AttributeValueInvalid),
        (_attrs(ODD_2048 + 1), PublicKeyInvalid),
        (_attrs(ODD_2048, e=1), PublicKeyInvalid),
        (_attrs(ODD_2048, e=65538), PublicKeyInvalid),
        ({**_attrs(ODD_2048), CKA.PUBLIC_EXPONENT: ((1 << 256) | 1).to_bytes(33, "big")}, PublicKeyInvalid),
        (_attrs(ODD_2048, extra={CKA.MODULUS_BITS: 2056}), TemplateInconsistent),
    ],
)
def test_public_key_from_attributes_errors(attrs: dict[int, Any], error: type[HsmError]) -> None:
    with pytest.raises(error):
        rsa_enc.public_key_from_attributes(attrs)


# -- PKCS#1 v1.5 signatures with hashing --------------------------------------------------

MESSAGE = bytes(range(256)) * 3 + b"tail"


@pytest.mark.parametrize("name", NAMES)
def test_hashed_pkcs1_cross_check(name: str, priv: Key, pub: Key, raw: rsa.RSAPrivateKey) -> None:
    ckm, algorithm = HASHES[name][3], HASHES[name][2]
    signature = sign(ckm, priv, MESSAGE)
    assert sign(ckm, priv, MESSAGE, parts=True) == signature  # deterministic
    raw.public_key().verify(signature, MESSAGE, padding.PKCS1v15(), algorithm())
    theirs = raw.sign(MESSAGE, padding.PKCS1v15(), algorithm())
    assert theirs == signature
    verify(ckm, pub, MESSAGE, theirs)
    verify(ckm, pub, MESSAGE, theirs, parts=True)
    verify(ckm, priv, MESSAGE, theirs)  # a private key object verifies with its public half
    with pytest.raises(SignatureInvalid):
        verify(ckm, pub, MESSAGE + b"!", theirs, parts=True)
    with pytest.raises(SignatureInvalid):
        verify(ckm, pub, MESSAGE, flip(theirs, 100))
    with pytest.raises(SignatureLenRange):
        verify(ckm, pub, MESSAGE, theirs[:-1])
    with pytest.raises(SignatureLenRange):
        verify(ckm, pub, MESSAGE, theirs + b"\x00")


def test_hashed_pkcs1_known_answers(vectors: pathlib.Path) -> None:
    """FIPS 186-2 SigGen15: PKCS#1 v1.5 signing is deterministic, so signatures must match exactly."""
    checked = 0
    for record in nist_records(vectors / "FIPS_186-2" / "SigGen15_186-2.txt", "S"):
        key = _private_from_ned(*(int(record[f], 16) for f in ("n", "e", "d")))
        ckm = HASHES[record["SHAAlg"]][3]
        message, expected = bytes.fromhex(record["Msg"]), bytes.fromhex(record["S"])
        if int(record["mod"]) < 2048:
            with pytest.raises(KeySizeRange):
                sign(ckm, private_key(key), message)
            continue
        assert sign(ckm, private_key(key), message) == expected
        verify(ckm, public_key(key.public_key()), message, expected)
        checked += 1
    assert checked == 150


def test_hashed_pkcs1_verify_known_answers(vectors: pathlib.Path) -> None:
    """FIPS 186-3 SigVer15, all moduli from 1024 bits (legacy verification), pass and fail cases."""
    results = {"P": 0, "F": 0}
    for record in nist_records(vectors / "FIPS_186-2" / "SigVer15_186-3.rsp", "Result"):
        expected = record["Result"][0]
        try:
            key = _public_from_record(record)
            verify(HASHES[record["SHAAlg"]][3], key, bytes.fromhex(record["Msg"]), bytes.fromhex(record["S"]))
            outcome = "P"
        except (SignatureInvalid, PublicKeyInvalid):
            outcome = "F"
        assert outcome == expected, record
        results[outcome] += 1
    assert results == {"P": 75, "F": 375}


# -- CKM_RSA_PKCS signatures (caller-built input) -------------------------------------------


def test_raw_pkcs1_sign_digest_info_matches_hashed_mechanism(priv: Key, raw: rsa.RSAPrivateKey) -> None:
    digest_info = SHA256_DIGEST_INFO + hashlib.sha256(MESSAGE).digest()
    signature = sign(CKM.RSA_PKCS, priv, digest_info)
    assert signature == sign(CKM.SHA256_RSA_PKCS, priv, MESSAGE)
    raw.public_key().verify(signature, MESSAGE, padding.PKCS1v15(), hashes.SHA256())


@pytest.mark.parametrize("length", [0, 1, 36, 245])
def test_raw_pkcs1_cross_check(length: int, priv: Key, pub: Key, raw: rsa.RSAPrivateKey) -> None:
    data = bytes(range(1, 256))[:length]
    signature = sign(CKM.RSA_PKCS, priv, data)
    assert raw.public_key().recover_data_from_signature(signature, padding.PKCS1v15(), utils.NoDigestInfo()) == data
    theirs = raw.sign(data, padding.PKCS1v15(), utils.NoDigestInfo())
    assert theirs == signature
    verify(CKM.RSA_PKCS, pub, data, theirs)
    with pytest.raises(SignatureInvalid):
        verify(CKM.RSA_PKCS, pub, b"x" + data[1:], theirs)
    with pytest.raises(SignatureInvalid):
        verify(CKM.RSA_PKCS, pub, data, flip(theirs, 7))


def test_raw_pkcs1_length_limits(priv: Key, pub: Key) -> None:
    with pytest.raises(DataLenRange):
        sign(CKM.RSA_PKCS, priv, bytes(246))  # k - 10
    with pytest.raises(DataLenRange):
        verify(CKM.RSA_PKCS, pub, bytes(246), bytes(256))
    signature = sign(CKM.RSA_PKCS, priv, b"abc")
    with pytest.raises(SignatureLenRange):
        verify(CKM.RSA_PKCS, pub, b"abc", signature[1:])
    with pytest.raises(SignatureInvalid):  # not a value below the modulus
        verify(CKM.RSA_PKCS, pub, b"abc", b"\xff" * 256)


def test_single_part_mechanisms_refuse_parts(priv: Key, pub: Key) -> None:
    for ckm, params in ((CKM.RSA_PKCS, None), (CKM.RSA_PKCS_PSS, pss("SHA256", 32))):
        with pytest.raises(FunctionNotSupported):
            lookup(ckm).sign(priv, params).update(b"x")
        with pytest.raises(FunctionNotSupported):
            lookup(ckm).verify(pub, params).update(b"x")


# -- PSS ------------------------------------------------------------------------------------


def _salts(name: str, key_bits: int = 2048) -> list[int]:
    h = HASHES[name][2].digest_size
    return [0, h, key_bits // 8 - h - 2]


@pytest.mark.parametrize("name", NAMES)
def test_pss_prehashed_cross_check(name: str, priv: Key, pub: Key, raw: rsa.RSAPrivateKey) -> None:
    algorithm = HASHES[name][2]
    digest = hashes.Hash(algorithm())
    digest.update(MESSAGE)
    hashed = digest.finalize()
    for salt in _salts(name):
        for mgf in (name, "SHA1"):
            params = pss(name, salt, mgf)
            crypto_pss = padding.PSS(padding.MGF1(HASHES[mgf][2]()), salt)
            signature = sign(CKM.RSA_PKCS_PSS, priv, hashed, params)
            raw.public_key().verify(signature, MESSAGE, crypto_pss, algorithm())
            verify(CKM.RSA_PKCS_PSS, pub, hashed, signature, params)
            theirs = raw.sign(hashed, crypto_pss, utils.Prehashed(algorithm()))
            verify(CKM.RSA_PKCS_PSS, pub, hashed, theirs, params)
            with pytest.raises(SignatureInvalid):
                verify(CKM.RSA_PKCS_PSS, pub, flip(hashed), theirs, params)
    # The salt length is part of what is verified.
    signature = sign(CKM.RSA_PKCS_PSS, priv, hashed, pss(name, 0))
    with pytest.raises(SignatureInvalid):
        verify(CKM.RSA_PKCS_PSS, pub, hashed, signature, pss(name, 1))


@pytest.mark.parametrize("name", NAMES)
def test_pss_hashed_cross_check(name: str, priv: Key, pub: Key, raw: rsa.RSAPrivateKey) -> None:
    ckm, algorithm = HASHES[name][4], HASHES[name][2]
    for salt in _salts(name):
        params = pss(name, salt, "SHA256")
        crypto_pss = padding.PSS(padding.MGF1(hashes.SHA256()), salt)
        signature = sign(ckm, priv, MESSAGE, params, parts=True)
        raw.public_key().verify(signature, MESSAGE, crypto_pss, algorithm())
        theirs = raw.sign(MESSAGE, crypto_pss, algorithm())
        verify(ckm, pub, MESSAGE, theirs, params, parts=True)
        verify(ckm, pub, MESSAGE, theirs, params)
        with pytest.raises(SignatureInvalid):
            verify(ckm, pub, MESSAGE[:-1], theirs, params, parts=True)
        with pytest.raises(SignatureLenRange):
            verify(ckm, pub, MESSAGE, theirs[:-2], params)


def test_pss_on_3072_bit_key(pair3072: Any) -> None:
    priv3072 = private_key(pair3072.private)
    params = pss("SHA384", 3072 // 8 - 48 - 2)
    signature = sign(CKM.SHA384_RSA_PKCS_PSS, priv3072, MESSAGE, params)
    pair3072.private.public_key().verify(
        signature, MESSAGE, padding.PSS(padding.MGF1(hashes.SHA384()), params["salt_len"]), hashes.SHA384()
    )


def test_pss_verify_known_answers(vectors: pathlib.Path) -> None:
    """FIPS 186-3 SigVerPSS (salt 10 bytes) and FIPS 186-2 SigGenPSS signatures (salt 20 bytes)."""
    results = {"P": 0, "F": 0}
    for record in nist_records(vectors / "FIPS_186-2" / "SigVerPSS_186-3.rsp", "Result"):
        name, salt = record["SHAAlg"], len(bytes.fromhex(record["SaltVal"]))
        try:
            key = _public_from_record(record)
            verify(HASHES[name][4], key, bytes.fromhex(record["Msg"]), bytes.fromhex(record["S"]), pss(name, salt))
            outcome = "P"
        except (SignatureInvalid, PublicKeyInvalid):
            outcome = "F"
        assert outcome == record["Result"][0], record
        results[outcome] += 1
    assert results == {"P": 75, "F": 375}
    checked = 0
    for record in nist_records(vectors / "FIPS_186-2" / "SigGenPSS_186-2.txt", "S"):
        if int(record["mod"]) < 2048:
            continue
        name, salt = record["SHAAlg"], len(bytes.fromhex(record["SaltVal"]))
        key = _public_from_record(record)
        verify(HASHES[name][4], key, bytes.fromhex(record["Msg"]), bytes.fromhex(record["S"]), pss(name, salt))
        checked += 1
    assert checked == 150


def test_pss_length_and_salt_errors(priv: Key, pub: Key) -> None:
    with pytest.raises(DataLenRange):
        sign(CKM.RSA_PKCS_PSS, priv, bytes(31), pss("SHA256", 32))
    with pytest.raises(DataLenRange):
        sign(CKM.RSA_PKCS_PSS, priv, bytes(33), pss("SHA256", 32))
    with pytest.raises(DataLenRange):
        verify(CKM.RSA_PKCS_PSS, pub, bytes(20), bytes(256), pss("SHA256", 32))
    too_long = 256 - 32 - 2 + 1
    for ckm in (CKM.RSA_PKCS_PSS, CKM.SHA256_RSA_PKCS_PSS):
        with pytest.raises(MechanismParamInvalid):
            lookup(ckm).sign(priv, pss("SHA256", too_long))
        with pytest.raises(MechanismParamInvalid):
            lookup(ckm).verify(pub, pss("SHA256", too_long))


def test_pss_hash_must_match_mechanism() -> None:
    with pytest.raises(MechanismParamInvalid):
        lookup(CKM.SHA256_RSA_PKCS_PSS).parse_params(pss("SHA384", 32))
    assert lookup(CKM.SHA256_RSA_PKCS_PSS).parse_params(pss("SHA256", 32, "SHA512")).salt_len == 32


def test_parsed_params_are_accepted(priv: Key, pub: Key) -> None:
    mechanism = lookup(CKM.SHA256_RSA_PKCS_PSS)
    parsed = mechanism.parse_params(pss("SHA256", 32))
    verify(CKM.SHA256_RSA_PKCS_PSS, pub, b"m", sign(CKM.SHA256_RSA_PKCS_PSS, priv, b"m", parsed), parsed)


@pytest.mark.parametrize(
    "params",
    [
        None,
        b"",
        {},
        b"\x00" * 24,
        [CKM.SHA256, CKG.MGF1_SHA256, 32],
        {"hash": CKM.SHA256, "mgf": CKG.MGF1_SHA256},
        {"hash": CKM.SHA256, "salt_len": 32},
        {"hash": CKM.SHA256, "mgf": CKG.MGF1_SHA256, "salt_len": 32, "extra": 1},
        {"hash": CKM.SHA256, "mgf": CKG.MGF1_SHA256, "salt_len": True},
        {"hash": CKM.SHA256, "mgf": CKG.MGF1_SHA256, "salt_len": -1},
        {"hash": CKM.SHA256, "mgf": CKG.MGF1_SHA256, "salt_len": "32"},
        {"hash": CKM.SHA256, "mgf": CKG.MGF1_SHA256, "salt_len": 32.0},
        {"hash": CKM.MD5, "mgf": CKG.MGF1_SHA256, "salt_len": 32},
        {"hash": True, "mgf": CKG.MGF1_SHA256, "salt_len": 32},
        {"hash": CKM.SHA256, "mgf": 99, "salt_len": 32},
        {"hash": CKM.SHA256, "mgf": CKM.SHA256, "salt_len": 32},
    ],
)
@pytest.mark.parametrize("ckm", [CKM.RSA_PKCS_PSS, CKM.SHA256_RSA_PKCS_PSS])
def test_pss_param_errors(ckm: CKM, params: Any, priv: Key) -> None:
    with pytest.raises(MechanismParamInvalid):
        lookup(ckm).parse_params(params)
    with pytest.raises(MechanismParamInvalid):
        lookup(ckm).sign(priv, params)


@pytest.mark.parametrize("ckm", [CKM.RSA_PKCS, CKM.SHA256_RSA_PKCS, CKM.RSA_PKCS_KEY_PAIR_GEN])
def test_parameterless_mechanisms_reject_parameters(ckm: CKM) -> None:
    assert lookup(ckm).parse_params(None) is None
    with pytest.raises(MechanismParamInvalid):
        lookup(ckm).parse_params(pss("SHA256", 32))


# -- OAEP -------------------------------------------------------------------------------------


@pytest.mark.parametrize("label", [None, b"", b"context label \x00\xff"])
@pytest.mark.parametrize("mgf", NAMES)
@pytest.mark.parametrize("name", NAMES)
def test_oaep_cross_check(
    name: str, mgf: str, label: bytes | None, priv: Key, pub: Key, raw: rsa.RSAPrivateKey
) -> None:
    params, theirs = oaep(name, mgf, label), crypto_oaep(name, mgf, label or None)
    message = b"secret key material"
    ciphertext = encrypt(CKM.RSA_PKCS_OAEP, pub, message, params)
    assert len(ciphertext) == 256
    assert raw.decrypt(ciphertext, theirs) == message
    assert decrypt(CKM.RSA_PKCS_OAEP, priv, raw.public_key().encrypt(message, theirs), params) == message


@pytest.mark.parametrize("name", NAMES)
def test_oaep_length_limit(name: str, priv: Key, pub: Key) -> None:
    limit = 256 - 2 * HASHES[name][2].digest_size - 2
    params = oaep(name)
    message = bytes(range(256))[:limit]
    assert decrypt(CKM.RSA_PKCS_OAEP, priv, encrypt(CKM.RSA_PKCS_OAEP, pub, message, params), params) == message
    with pytest.raises(DataLenRange):
        encrypt(CKM.RSA_PKCS_OAEP, pub, message + b"x", params)


def test_oaep_decrypt_errors(priv: Key, pub: Key) -> None:
    params = oaep("SHA256", label=b"right")
    ciphertext = encrypt(CKM.RSA_PKCS_OAEP, pub, b"data", params)
    for bad_params in (oaep("SHA256", label=b"wrong"), oaep("SHA256"), oaep("SHA384", "SHA256", b"right"),
                       oaep("SHA256", "SHA1", b"right")):
        with pytest.raises(EncryptedDataInvalid):
            decrypt(CKM.RSA_PKCS_OAEP, priv, ciphertext, bad_params)
    for position in (0, 1, 100, -1):
        with pytest.raises(EncryptedDataInvalid):
            decrypt(CKM.RSA_PKCS_OAEP, priv, flip(ciphertext, position), params)
    with pytest.raises(EncryptedDataInvalid):
        decrypt(CKM.RSA_PKCS_OAEP, priv, b"\xff" * 256, params)
    for length in (0, 255, 257, 512):
        with pytest.raises(EncryptedDataLenRange):
            decrypt(CKM.RSA_PKCS_OAEP, priv, (ciphertext * 2)[:length], params)


def test_oaep_source_forms(priv: Key, pub: Key) -> None:
    message = b"m"
    equivalent = [
        {"hash": CKM.SHA256, "mgf": CKG.MGF1_SHA256},
        {"hash": CKM.SHA256, "mgf": CKG.MGF1_SHA256, "source": 0, "source_data": b""},
        {"hash": CKM.SHA256, "mgf": CKG.MGF1_SHA256, "source": 0, "source_data": None},
        {"hash": CKM.SHA256, "mgf": CKG.MGF1_SHA256, "source": CKZ.DATA_SPECIFIED, "source_data": None},
        {"hash": CKM.SHA256, "mgf": CKG.MGF1_SHA256, "source": CKZ.DATA_SPECIFIED},
    ]
    ciphertext = encrypt(CKM.RSA_PKCS_OAEP, pub, message, equivalent[0])
    for params in equivalent:
        assert decrypt(CKM.RSA_PKCS_OAEP, priv, ciphertext, params) == message


@pytest.mark.parametrize(
    "params",
    [
        None,
        b"",
        {},
        {"hash": CKM.SHA256},
        {"mgf": CKG.MGF1_SHA256},
        {"hash": CKM.SHA256, "mgf": CKG.MGF1_SHA256, "label": b"x"},
        {"hash": CKM.SHA256, "mgf": CKG.MGF1_SHA256, "source": 2},
        {"hash": CKM.SHA256, "mgf": CKG.MGF1_SHA256, "source": True},
        {"hash": CKM.SHA256, "mgf": CKG.MGF1_SHA256, "source": "data"},
        {"hash": CKM.SHA256, "mgf": CKG.MGF1_SHA256, "source": 0, "source_data": b"x"},
        {"hash": CKM.SHA256, "mgf": CKG.MGF1_SHA256, "source": CKZ.DATA_SPECIFIED, "source_data": "x"},
        {"hash": CKM.SHA256, "mgf": CKG.MGF1_SHA256, "source": CKZ.DATA_SPECIFIED, "source_data": bytes(MAX_DATA + 1)},
        {"hash": CKM.RIPEMD160, "mgf": CKG.MGF1_SHA256},
        {"hash": CKM.SHA256, "mgf": CKM.SHA256},
        {"hash": False, "mgf": CKG.MGF1_SHA256},
    ],
)
def test_oaep_param_errors(params: Any, pub: Key, priv: Key) -> None:
    mechanism = lookup(CKM.RSA_PKCS_OAEP)
    with pytest.raises(MechanismParamInvalid):
        mechanism.parse_params(params)
    with pytest.raises(MechanismParamInvalid):
        mechanism.encrypt(pub, params)
    with pytest.raises(MechanismParamInvalid):
        mechanism.unwrap(priv, params, bytes(256))


def test_oaep_known_answers(vectors: pathlib.Path) -> None:
    """pyca's OAEP SHA-2 vectors (every hash/MGF1 pair), 2048-bit keys only."""
    checked = 0
    for path in sorted((vectors / "oaep-custom").glob("oaep-*.txt")):
        for key, comment, message, ciphertext in encryption_vectors(path):
            if key.key_size != 2048:
                continue
            fields = dict(part.split("=") for part in comment.decode().split() if "=" in part)
            params = oaep(fields["alg"].upper(), fields["mgf1"].upper())
            assert decrypt(CKM.RSA_PKCS_OAEP, private_key(key), ciphertext, params) == message
            checked += 1
    assert checked == 1440


def test_oaep_label_known_answer(vectors: pathlib.Path) -> None:
    record = nist_records(vectors / "oaep-label.txt", "Output")[0]
    key = serialization.load_der_private_key(bytes.fromhex(record["KEY"]), None)
    assert isinstance(key, rsa.RSAPrivateKey)
    params = oaep(record["OAEPDigest"], label=bytes.fromhex(record["OAEPLabel"]))
    assert decrypt(CKM.RSA_PKCS_OAEP, private_key(key), bytes.fromhex(record["Input"]), params) == b"Hello World"


# -- PKCS#1 v1.5 encryption ---------------------------------------------------------------------


@pytest.mark.parametrize("length", [0, 1, 32, 245])
def test_pkcs1_encryption_cross_check(length: int, priv: Key, pub: Key, raw: rsa.RSAPrivateKey) -> None:
    message = bytes(range(1, 256))[:length]
    ciphertext = encrypt(CKM.RSA_PKCS, pub, message)
    assert raw.decrypt(ciphertext, padding.PKCS1v15()) == message
    assert decrypt(CKM.RSA_PKCS, priv, raw.public_key().encrypt(message, padding.PKCS1v15())) == message


def test_pkcs1_encryption_errors(priv: Key, pub: Key) -> None:
    with pytest.raises(DataLenRange):
        encrypt(CKM.RSA_PKCS, pub, bytes(246))
    ciphertext = encrypt(CKM.RSA_PKCS, pub, b"data")
    with pytest.raises(EncryptedDataLenRange):
        decrypt(CKM.RSA_PKCS, priv, ciphertext[:-1])
    with pytest.raises(EncryptedDataInvalid):  # not below the modulus
        decrypt(CKM.RSA_PKCS, priv, b"\xff" * 256)
    # Implicit rejection: bad padding yields a pseudo-random message, not an error (no padding oracle).
    tampered = flip(ciphertext, 10)
    first = decrypt(CKM.RSA_PKCS, priv, tampered)
    assert first != b"data"
    assert decrypt(CKM.RSA_PKCS, priv, tampered) == first


def test_pkcs1_decrypt_known_answers(vectors: pathlib.Path) -> None:
    """RSA's PKCS#1 v1.5 encryption vectors, Example 15 (the 2048-bit key)."""
    checked = 0
    for key, _, message, ciphertext in encryption_vectors(vectors / "pkcs1v15crypt-vectors.txt"):
        if key.key_size == 2048:
            assert decrypt(CKM.RSA_PKCS, private_key(key), ciphertext) == message
            checked += 1
    assert checked == 20


# -- wrapping ---------------------------------------------------------------------------------------

WRAP_CASES = [
    (CKM.RSA_PKCS_OAEP, oaep("SHA256", label=b"wrap"), crypto_oaep("SHA256", label=b"wrap"), 256 - 66),
    (CKM.RSA_PKCS_OAEP, oaep("SHA1"), crypto_oaep("SHA1"), 256 - 42),
    (CKM.RSA_PKCS, None, padding.PKCS1v15(), 256 - 11),
]


@pytest.mark.parametrize(("ckm", "params", "theirs", "limit"), WRAP_CASES)
def test_wrap_unwrap(
    ckm: CKM, params: Any, theirs: Any, limit: int, priv: Key, pub: Key, raw: rsa.RSAPrivateKey
) -> None:
    mechanism = lookup(ckm)
    for secret in (bytes(range(16)), bytes(range(32)), bytes(limit)):
        for wrapping in (pub, priv):
            wrapped = mechanism.wrap(wrapping, params, secret)
            assert len(wrapped) == 256
            assert raw.decrypt(wrapped, theirs) == secret
            assert mechanism.unwrap(priv, params, wrapped) == secret
        assert mechanism.unwrap(priv, params, raw.public_key().encrypt(secret, theirs)) == secret
    with pytest.raises(KeySizeRange):
        mechanism.wrap(pub, params, bytes(limit + 1))
    wrapped = mechanism.wrap(pub, params, bytes(32))
    for length in (0, 255, 257):
        with pytest.raises(WrappedKeyLenRange):
            mechanism.unwrap(priv, params, (wrapped * 2)[:length])
    with pytest.raises(WrappedKeyInvalid):
        mechanism.unwrap(priv, params, b"\xff" * 256)
    if ckm == CKM.RSA_PKCS_OAEP:
        with pytest.raises(WrappedKeyInvalid):
            mechanism.unwrap(priv, params, flip(wrapped, 3))


@pytest.mark.parametrize("ckm", [CKM.RSA_PKCS_OAEP, CKM.RSA_PKCS])
def test_wrap_key_errors(ckm: CKM, priv: Key, pub: Key, ec_key: Key, aes_key: Key, small: rsa.RSAPrivateKey) -> None:
    mechanism, params = lookup(ckm), (oaep("SHA256") if ckm == CKM.RSA_PKCS_OAEP else None)
    for wrong in (ec_key, aes_key):
        with pytest.raises(HsmError) as info:
            mechanism.wrap(wrong, params, bytes(16))
        assert info.value.code == CKR.WRAPPING_KEY_TYPE_INCONSISTENT
    for wrong in (ec_key, aes_key, pub):
        with pytest.raises(HsmError) as info:
            mechanism.unwrap(wrong, params, bytes(256))
        assert info.value.code == CKR.UNWRAPPING_KEY_TYPE_INCONSISTENT
    with pytest.raises(HsmError) as info:
        mechanism.wrap(public_key(small.public_key()), params, bytes(16))
    assert info.value.code == CKR.WRAPPING_KEY_SIZE_RANGE
    with pytest.raises(HsmError) as info:
        mechanism.unwrap(private_key(small), params, bytes(128))
    assert info.value.code == CKR.UNWRAPPING_KEY_SIZE_RANGE


# -- key checks shared by every operation --------------------------------------------------------

SIGNERS = [
    (CKM.RSA_PKCS, None),
    (CKM.SHA256_RSA_PKCS, None),
    (CKM.RSA_PKCS_PSS, pss("SHA256", 32)),
    (CKM.SHA256_RSA_PKCS_PSS, pss("SHA256", 32)),
]
CIPHERS = [(CKM.RSA_PKCS, None), (CKM.RSA_PKCS_OAEP, oaep("SHA256"))]


@pytest.mark.parametrize(("ckm", "params"), SIGNERS)
def test_signing_key_checks(
    ckm: CKM, params: Any, pub: Key, ec_key: Key, aes_key: Key, small: rsa.RSAPrivateKey
) -> None:
    mechanism = lookup(ckm)
    mismatched = Key(CKK.RSA, CKO.PRIVATE_KEY, private=ec_key.private)
    for wrong in (pub, ec_key, aes_key, mismatched):
        with pytest.raises(KeyTypeInconsistent):
            mechanism.sign(wrong, params)
    for wrong in (ec_key, aes_key):
        with pytest.raises(KeyTypeInconsistent):
            mechanism.verify(wrong, params)
    with pytest.raises(KeySizeRange):
        mechanism.sign(private_key(small), params)
    # Verification accepts legacy 1024-bit keys, but nothing above 4096 bits.
    mechanism.verify(public_key(small.public_key()), params)
    huge = rsa.RSAPublicNumbers(65537, (1 << 4103) | 1).public_key()
    with pytest.raises(KeySizeRange):
        mechanism.verify(public_key(huge), params)


def test_legacy_1024_bit_verification(small: rsa.RSAPrivateKey) -> None:
    key = public_key(small.public_key())
    verify(CKM.SHA256_RSA_PKCS, key, b"m", small.sign(b"m", padding.PKCS1v15(), hashes.SHA256()))
    params = pss("SHA256", 32)
    verify(CKM.SHA256_RSA_PKCS_PSS, key, b"m", small.sign(b"m", padding.PSS(padding.MGF1(hashes.SHA256()), 32),
                                                         hashes.SHA256()), params)
    verify(CKM.RSA_PKCS, key, b"m", small.sign(b"m", padding.PKCS1v15(), utils.NoDigestInfo()))
    with pytest.raises(SignatureLenRange):
        verify(CKM.SHA256_RSA_PKCS, key, b"m", bytes(256))


@pytest.mark.parametrize(("ckm", "params"), CIPHERS)
def test_cipher_key_checks(
    ckm: CKM, params: Any, pub: Key, ec_key: Key, aes_key: Key, small: rsa.RSAPrivateKey
) -> None:
    mechanism = lookup(ckm)
    for wrong in (ec_key, aes_key):
        with pytest.raises(KeyTypeInconsistent):
            mechanism.encrypt(wrong, params)
    for wrong in (pub, ec_key, aes_key):
        with pytest.raises(KeyTypeInconsistent):
            mechanism.decrypt(wrong, params)
    with pytest.raises(KeySizeRange):
        mechanism.encrypt(public_key(small.public_key()), params)
    with pytest.raises(KeySizeRange):
        mechanism.decrypt(private_key(small), params)


def test_encrypt_with_private_key_object_uses_its_public_half(priv: Key, raw: rsa.RSAPrivateKey) -> None:
    only_private = Key(CKK.RSA, CKO.PRIVATE_KEY, private=raw, size_bits=2048)
    ciphertext = encrypt(CKM.RSA_PKCS_OAEP, only_private, b"m", oaep("SHA256"))
    assert decrypt(CKM.RSA_PKCS_OAEP, priv, ciphertext, oaep("SHA256")) == b"m"


# -- multi-part limits and life cycle ------------------------------------------------------------


def test_oversize_parts(priv: Key, pub: Key) -> None:
    big = bytes(MAX_DATA + 1)
    for ckm, params in ((CKM.SHA256_RSA_PKCS, None), (CKM.SHA256_RSA_PKCS_PSS, pss("SHA256", 32))):
        with pytest.raises(DataLenRange):
            lookup(ckm).sign(priv, params).update(big)
        with pytest.raises(DataLenRange):
            lookup(ckm).verify(pub, params).update(big)
        # The shared input check (mechanisms.base.check_part): a value that is not bytes is the
        # caller's error, not the hash library's TypeError.
        with pytest.raises(ArgumentsBad):
            lookup(ckm).sign(priv, params).update("text")  # type: ignore[arg-type]
        with pytest.raises(ArgumentsBad):
            lookup(ckm).verify(pub, params).update("text")  # type: ignore[arg-type]
        op = lookup(ckm).sign(priv, params)
        op.update(bytes(MAX_DATA))  # exactly the limit is fine
        op.update(bytes(MAX_DATA))
        op.final()
    with pytest.raises(DataLenRange):
        sign(CKM.RSA_PKCS, priv, big)
    with pytest.raises(DataLenRange):
        encrypt(CKM.RSA_PKCS_OAEP, pub, big, oaep("SHA256"))


def test_finished_operations_cannot_be_reused(priv: Key, pub: Key) -> None:
    op = lookup(CKM.SHA256_RSA_PKCS).sign(priv, None)
    op.update(b"m")
    signature = op.final()
    with pytest.raises(OperationNotInitialized):
        op.update(b"m")
    with pytest.raises(OperationNotInitialized):
        op.final()
    check = lookup(CKM.SHA256_RSA_PKCS).verify(pub, None)
    check.one_shot(b"m", signature)
    with pytest.raises(OperationNotInitialized):
        check.final(signature)
    one = lookup(CKM.RSA_PKCS).sign(priv, None)
    with pytest.raises(DataLenRange):
        one.one_shot(bytes(300))
    with pytest.raises(OperationNotInitialized):  # a failed operation is over too
        one.one_shot(b"m")
    cipher = lookup(CKM.RSA_PKCS_OAEP).decrypt(priv, oaep("SHA256"))
    with pytest.raises(EncryptedDataLenRange):
        cipher.one_shot(b"short")
    with pytest.raises(OperationNotInitialized):
        cipher.one_shot(bytes(256))


def test_library_errors_never_escape(priv: Key, pub: Key) -> None:
    """Garbage of every length goes in; only HsmError subclasses may come out."""
    garbage = [b"", b"\x00", bytes(255), bytes(256), b"\xff" * 256, bytes(257)]
    for data in garbage:
        for signature in garbage:
            for ckm, params in SIGNERS:
                try:
                    verify(ckm, pub, data, signature, params)
                except HsmError:
                    pass
            for ckm, params in CIPHERS:
                try:
                    decrypt(ckm, priv, signature, params)
                except HsmError:
                    pass
