"""Power-on self-tests: known-answer tests (KATs) for every algorithm the node uses.

A node runs :func:`run_all` before it serves anything; if any test fails the node
must enter its error state and refuse cryptographic service (FIPS 140-3 §7.10
style). Each KAT feeds a published input to the real primitive and compares the
output byte for byte with the published answer, so a broken or substituted
backend is caught before it touches a key.

Every vector below is copied (as hex) from the source named in the comment next
to it. They were looked up in the ``cryptography_vectors`` package (which mirrors
the NIST CAVP files and the RFC appendices) or in the RFC / NIST publication text
(SP 800-38A, FIPS 180); that package is a look-up aid only and is never imported here.

Mechanism modules add their own KATs with :func:`known_answer_test` or
:func:`register`; a KAT is a zero-argument callable that raises on failure.
"""

from __future__ import annotations

import hmac
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TypeVar

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, mldsa, mlkem, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.cmac import CMAC
from cryptography.hazmat.primitives.hmac import HMAC
from cryptography.hazmat.primitives.kdf.argon2 import Argon2id
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.kdf.x963kdf import X963KDF
from cryptography.hazmat.primitives.keywrap import (
    InvalidUnwrap,
    aes_key_unwrap,
    aes_key_unwrap_with_padding,
    aes_key_wrap,
    aes_key_wrap_with_padding,
)

from strongroom.services.health import SelfTestFailure, SelfTestReport

__all__ = [
    "KnownAnswerTest",
    "SelfTestError",
    "SelfTestFailure",
    "SelfTestReport",
    "known_answer_test",
    "register",
    "registered",
    "run_all",
    "unregister",
]

INJECTED_FAILURE = "injected failure"


class SelfTestError(Exception):
    """Raised by a KAT when the primitive's answer differs from the expected one."""


KnownAnswerTest = Callable[[], None]
_F = TypeVar("_F", bound=KnownAnswerTest)

# Insertion-ordered, so reports list tests in a stable order.
_REGISTRY: dict[str, KnownAnswerTest] = {}


def register(name: str, fn: KnownAnswerTest, *, replace: bool = False) -> None:
    """Add a KAT under ``name``.

    Duplicate names are refused unless ``replace`` is set: two mechanism modules
    silently sharing a name would hide one of the tests.
    """
    if not name:
        raise ValueError("self-test name must be non-empty")
    if name in _REGISTRY and not replace:
        raise ValueError(f"self-test {name!r} is already registered")
    _REGISTRY[name] = fn


def unregister(name: str) -> None:
    """Remove a KAT (for tests that register temporary ones)."""
    _REGISTRY.pop(name, None)


def known_answer_test(name: str) -> Callable[[_F], _F]:
    """Decorator form of :func:`register`: ``@known_answer_test("aes-256-gcm")``."""

    def decorate(fn: _F) -> _F:
        register(name, fn)
        return fn

    return decorate


def registered() -> tuple[str, ...]:
    """Names of every registered KAT, in registration order."""
    return tuple(_REGISTRY)


def run_all(fail: Iterable[str] = frozenset()) -> SelfTestReport:
    """Run every registered KAT and report.

    ``fail`` is TEST-ONLY fault injection: each named test still runs (so its
    cost and side effects are real) but is then recorded as failed with reason
    ``"injected failure"``. It is empty by default; production code must never
    pass it. Unknown names are rejected so that a typo cannot make an
    error-state test pass vacuously.
    """
    inject = frozenset(fail)
    unknown = inject - _REGISTRY.keys()
    if unknown:
        raise ValueError(f"cannot inject failure into unknown self-test(s): {sorted(unknown)}")

    passed: list[str] = []
    failed: list[SelfTestFailure] = []
    timings: dict[str, float] = {}
    start = time.perf_counter()
    for name, fn in list(_REGISTRY.items()):
        t0 = time.perf_counter()
        reason = _run_one(name, fn)
        timings[name] = time.perf_counter() - t0
        if reason is None and name in inject:
            reason = f"{name}: {INJECTED_FAILURE}"
        if reason is None:
            passed.append(name)
        else:
            failed.append(SelfTestFailure(name, reason))
    return SelfTestReport(
        passed=tuple(passed),
        failed=tuple(failed),
        duration=time.perf_counter() - start,
        timings=timings,
    )


def _run_one(name: str, fn: KnownAnswerTest) -> str | None:
    # Any exception is a failure: a backend that raises where it should compute
    # is as unusable as one that computes the wrong answer.
    try:
        fn()
    except Exception as exc:  # noqa: BLE001 - every error must become a report line
        detail = str(exc) or type(exc).__name__
        if not isinstance(exc, SelfTestError):
            detail = f"{type(exc).__name__}: {detail}"
        return f"{name}: {detail}"
    return None


def _expect(algorithm: str, what: str, got: bytes, expected: bytes) -> None:
    # Constant-time compare is not needed for public vectors, but it costs
    # nothing and keeps the pattern safe if someone copies it for secrets.
    if not hmac.compare_digest(got, expected):
        raise SelfTestError(f"{algorithm} {what} differs from the known answer")


def _h(text: str) -> bytes:
    """Hex (whitespace allowed, so long vectors can wrap) to bytes."""
    return bytes.fromhex("".join(text.split()))


# --------------------------------------------------------------------------
# Vectors. Each is a frozen dataclass so a test can corrupt one field with
# dataclasses.replace() and prove the KAT notices.
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class AeadVector:
    key: bytes
    iv: bytes
    plaintext: bytes
    aad: bytes
    ciphertext: bytes
    tag: bytes


# NIST CAVP GCMVS, gcmEncryptExtIV256.rsp, [Keylen = 256] [IVlen = 96]
# [PTlen = 256] [AADlen = 128] [Taglen = 128] Count = 0 (SP 800-38D).
AES_256_GCM_VECTOR = AeadVector(
    key=_h("37ccdba1d929d6436c16bba5b5ff34deec88ed7df3d15d0f4ddf80c0c731ee1f"),
    iv=_h("5c1b21c8998ed6299006d3f9"),
    plaintext=_h("ad4260e3cdc76bcc10c7b2c06b80b3be948258e5ef20c508a81f51e96a518388"),
    aad=_h("22ed235946235a85a45bc5fad7140bfa"),
    ciphertext=_h("3b335f8b08d33ccdcad228a74700f1007542a4d1e7fc1ebe3f447fe71af29816"),
    tag=_h("1fbf49cc46f458bf6e88f6370975e6d4"),
)


@dataclass(frozen=True)
class CipherVector:
    key: bytes
    iv: bytes  # the IV (CBC) or the initial counter block (CTR)
    plaintext: bytes
    ciphertext: bytes


# NIST SP 800-38A Appendix F.2.5 CBC-AES256.Encrypt (F.2.6 CBC-AES256.Decrypt
# is the same vector run backwards): four blocks, so the chaining is exercised.
AES_256_CBC_VECTOR = CipherVector(
    key=_h("603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4"),
    iv=_h("000102030405060708090a0b0c0d0e0f"),
    plaintext=_h(
        "6bc1bee22e409f96e93d7e117393172a ae2d8a571e03ac9c9eb76fac45af8e51"
        " 30c81c46a35ce411e5fbc1191a0a52ef f69f2445df4f9b17ad2b417be66c3710"
    ),
    ciphertext=_h(
        "f58c4c04d6e5f1ba779eabfb5f7bfbd6 9cfc4e967edb808d679f777bc6702c7d"
        " 39f23369a9d9bacfa530e26304231461 b2eb05e2c39be9fcda6c19078c6a9d1b"
    ),
)

# RFC 3686 §6 Test Vector #3 (AES-128, 36 octets; cryptography_vectors
# ciphers/AES/CTR/aes-128-ctr.txt COUNT = 2). The counter block is
# nonce || IV || 00000001. 36 octets = two full blocks and a partial one, so
# the counter increment and the truncated final keystream block are both used.
AES_128_CTR_VECTOR = CipherVector(
    key=_h("7691BE035E5020A8AC6E618529F9A0DC"),
    iv=_h("00E0017B 27777F3F4A1786F0 00000001"),
    plaintext=_h(
        "000102030405060708090A0B0C0D0E0F101112131415161718191A1B1C1D1E1F"
        "20212223"
    ),
    ciphertext=_h(
        "C1CF48A89F2FFDD9CF4652E9EFDB72D74540A42BDE6D7836D59A5CEAAEF31053"
        "25B2072F"
    ),
)


@dataclass(frozen=True)
class KeyWrapVector:
    kek: bytes
    key_data: bytes
    wrapped: bytes


# RFC 3394 §4.6 "Wrap 256 bits of Key Data with a 256-bit KEK".
AES_256_KW_VECTOR = KeyWrapVector(
    kek=_h("000102030405060708090A0B0C0D0E0F101112131415161718191A1B1C1D1E1F"),
    key_data=_h("00112233445566778899AABBCCDDEEFF000102030405060708090A0B0C0D0E0F"),
    wrapped=_h(
        "28C9F404C4B810F4 CBCCB35CFB87F826 3F5786E2D80ED326"
        " CBC7F0E71A99F43B FB988B9B7A02DD21"
    ),
)

# RFC 5649 §6, first example: wrap 20 octets of key data with a 192-bit KEK
# (also cryptography_vectors keywrap/kwp_botan.txt COUNT = 0). 20 octets is not
# a multiple of 8, so the padding and the length in the AIV are exercised.
AES_KWP_VECTOR = KeyWrapVector(
    kek=_h("5840df6e29b02af1 ab493b705bf16ea1 ae8338f4dcc176a8"),
    key_data=_h("c37b7e6492584340 bed1220780894115 5068f738"),
    wrapped=_h(
        "138bdeaa9b8fa7fc 61f97742e72248ee 5ae6ae5360d1ae6a 5f54f373fa543b6a"
    ),
)


@dataclass(frozen=True)
class DigestVector:
    message: bytes
    digest: bytes


# FIPS 180-4 example "abc" (one-block message), as published in NIST's
# "Examples with Intermediate Values" (csrc.nist.gov, SHA1.pdf / SHA224.pdf /
# SHA256.pdf / SHA384.pdf / SHA512.pdf; formerly FIPS 180-2 Appendix A.1 for
# SHA-1, B.1, D.1, C.1, and the FIPS 180-2 Change Notice 1 for SHA-224).
SHA_1_VECTOR = DigestVector(
    message=b"abc",
    digest=_h("a9993e364706816aba3e25717850c26c9cd0d89d"),
)
SHA_224_VECTOR = DigestVector(
    message=b"abc",
    digest=_h("23097d223405d8228642a477bda255b32aadbce4bda0b3f7e36c9da7"),
)
SHA_256_VECTOR = DigestVector(
    message=b"abc",
    digest=_h("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"),
)
SHA_384_VECTOR = DigestVector(
    message=b"abc",
    digest=_h(
        "cb00753f45a35e8bb5a03d699ac65007272c32ab0eded1631a8b605a43ff5bed"
        "8086072ba1e7cc2358baeca134c825a7"
    ),
)
SHA_512_VECTOR = DigestVector(
    message=b"abc",
    digest=_h(
        "ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a"
        "2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f"
    ),
)

# FIPS 202 SHA3-256 example "abc" (NIST "Examples with Intermediate Values", SHA3-256_Msg24; PKCS#11 3.0
# CKM_SHA3_256).
SHA3_256_VECTOR = DigestVector(
    message=b"abc",
    digest=_h("3a985da74fe225b2045c172d6bd390bd855f086e3e9d525b46bfe24511431532"),
)


@dataclass(frozen=True)
class MacVector:
    key: bytes
    message: bytes
    mac: bytes


# RFC 4231 §4.3 Test Case 2 (key "Jefe", data "what do ya want for nothing?"),
# HMAC-SHA-256 output.
HMAC_SHA_256_VECTOR = MacVector(
    key=b"Jefe",
    message=b"what do ya want for nothing?",
    mac=_h("5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"),
)

# RFC 4231 §4.3 Test Case 2, HMAC-SHA-512 output (also cryptography_vectors
# HMAC/rfc-4231-sha512.txt, Len = 224).
HMAC_SHA_512_VECTOR = MacVector(
    key=b"Jefe",
    message=b"what do ya want for nothing?",
    mac=_h(
        "164b7a7bfcf819e2e395fbe73b56e0a387bd64222e831fd610270cd7ea250554"
        "9758bf75c05a994a6d034f65f8f0e6fdcaeab1a34d4a6b4b636e070a38bce737"
    ),
)

# NIST "Examples with Intermediate Values", HMAC_SHA3-256 with a 32-byte key (keylen < blocklen): key
# 00 01 … 1f, message "Sample message for keylen<blocklen" (PKCS#11 3.0 CKM_SHA3_256_HMAC).
HMAC_SHA3_256_VECTOR = MacVector(
    key=bytes(range(32)),
    message=b"Sample message for keylen<blocklen",
    mac=_h("4fe8e202c4f058e8dddc23d8c34e467343e23555e24fc2f025d598f558f67205"),
)

# NIST SP 800-38B Appendix D.1 (AES-128) Example 2, Mlen = 128 (identical to
# RFC 4493 §4 Example 2; cryptography_vectors CMAC/nist-800-38b-aes128.txt
# COUNT = 1).
AES_128_CMAC_VECTOR = MacVector(
    key=_h("2b7e151628aed2a6abf7158809cf4f3c"),
    message=_h("6bc1bee22e409f96e93d7e117393172a"),
    mac=_h("070a16b46b4d4144f79bdd9dd04a287c"),
)


@dataclass(frozen=True)
class HkdfVector:
    ikm: bytes
    salt: bytes
    info: bytes
    okm: bytes


# RFC 5869 Appendix A.1, Test Case 1 (basic test case with SHA-256), L = 42.
HKDF_SHA_256_VECTOR = HkdfVector(
    ikm=_h("0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b"),
    salt=_h("000102030405060708090a0b0c"),
    info=_h("f0f1f2f3f4f5f6f7f8f9"),
    okm=_h(
        "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf"
        "34007208d5b887185865"
    ),
)


@dataclass(frozen=True)
class Argon2Vector:
    password: bytes
    salt: bytes
    secret: bytes
    ad: bytes
    iterations: int
    memory_kib: int
    lanes: int
    tag: bytes


# RFC 9106 §5.3 Argon2id test vector: m = 32 KiB, t = 3, p = 4, tag length 32,
# with the secret (K) and associated data (X) inputs. cryptography >= 44
# exposes both (`secret=`, `ad=`), so the full RFC vector is used as is.
ARGON2ID_VECTOR = Argon2Vector(
    password=_h("01" * 32),
    salt=_h("02" * 16),
    secret=_h("03" * 8),
    ad=_h("04" * 12),
    iterations=3,
    memory_kib=32,
    lanes=4,
    tag=_h("0d640df58d78766c08c037a34a8b53c9d01ef0452d75b65eb52520e96b01e659"),
)


@dataclass(frozen=True)
class EcdsaVector:
    private_value: int
    public_x: int
    public_y: int
    message: bytes
    r: int
    s: int


# RFC 6979 Appendix A.2.5 (ECDSA, 256 bits, prime field = P-256): the key pair
# and the SHA-256 signature of the message "sample".
ECDSA_P256_VECTOR = EcdsaVector(
    private_value=0xC9AFA9D845BA75166B5C215767B1D6934E50C3DB36E89B127B8A622B120F6721,
    public_x=0x60FED4BA255A9D31C961EB74C6356D68C049B8923B61FA6CE669622E60F29FB6,
    public_y=0x7903FE1008B8BC99A41AE9E95628BC64F2F1B20C2D7E9F5177A3C294D4462299,
    message=b"sample",
    r=0xEFD48B2AACB6A8FD1140DD9CD45E81D69D2C877B56AAF991C34D0EA84EAF3716,
    s=0xF7CB1C942D657C41D436C7A1B6E29F65F3E900DBB9AFF4064DC4AB2F843ACDA8,
)


@dataclass(frozen=True)
class EcdhVector:
    private_value: int
    public_x: int
    public_y: int
    peer_x: int
    peer_y: int
    shared_secret: bytes  # Z, the x-coordinate of d * Q_peer


# NIST CAVP KAS ECC (SP 800-56A) DLC primitive test, "zzonlyecc", CAVS 11.0:
# cryptography_vectors asymmetric/ECDH/KASValidityTest_ECCStaticUnified_NOKC_ZZOnly_init.fax,
# [EC - SHA256] (P-256) COUNT = 2, the first case there with Result = P.
# private_value/public_* are dsIUT/QsIUT, peer_* is QsCAVS, shared_secret is Z.
# (The KAS_ECC_CDH_PrimitiveTest.txt file is not shipped in cryptography_vectors;
# this is the same ECC CDH primitive, and P-256 has cofactor 1.)
ECDH_P256_VECTOR = EcdhVector(
    private_value=0x8087AB163864BFA81001C72F736B6D94E7612559AC4C847D06BA2171840684D6,
    public_x=0xE8B020E8C3CC25D3E5E83E76077F3D5CCDABD7AD76121B724A171414E73F793C,
    public_y=0x98DFB6863FBDBC1D2083F6C41E502645AE9B7A0FDB38904F7483EF883BC2A57B,
    peer_x=0x5A3955C54A49645ED818F3774EA10971A1DB88C370D8966C5A6E88234ED5D820,
    peer_y=0x03B13F0DAD73F64532F42B8B2FA6D1450D9AB24896E95C24674298F2DA07CCDA,
    shared_secret=_h("0cb890a0dcc277c3dde0f91b4322a32e6365d7ec85316185d3286b4977849410"),
)


@dataclass(frozen=True)
class X963KdfVector:
    shared_secret: bytes  # Z
    shared_info: bytes
    key_data: bytes


# NIST CAVP ANS X9.63-2001 KDF (SP 800-135 CVL), cryptography_vectors
# KDF/ansx963_2001.txt, [SHA-256] [shared secret length = 192]
# [SharedInfo length = 128] [key data length = 1024] COUNT = 0: four hash
# blocks (counters 1..4) and a non-empty SharedInfo, as CKD_SHA256_KDF uses.
X963_KDF_SHA_256_VECTOR = X963KdfVector(
    shared_secret=_h("22518b10e70f2a3f243810ae3254139efbee04aa57c7af7d"),
    shared_info=_h("75eef81aa3041e33b80971203d2c0c52"),
    key_data=_h(
        "c498af77161cc59f2962b9a713e2b215152d139766ce34a776df11866a69bf2e"
        "52a13d9c7c6fc878c50c5ea0bc7b00e0da2447cfd874f6cf92f30d0097111485"
        "500c90c3af8b487872d04685d14c8d1dc8d7fa08beb0ce0ababc11f0bd496269"
        "142d43525a78e5bc79a17f59676a5706dc54d54d4d1f0bd7e386128ec26afc21"
    ),
)


@dataclass(frozen=True)
class Ed25519Vector:
    secret_key: bytes
    public_key: bytes
    message: bytes
    signature: bytes


# RFC 8032 §7.1 "TEST 1" (empty message).
ED25519_VECTOR = Ed25519Vector(
    secret_key=_h("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60"),
    public_key=_h("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"),
    message=b"",
    signature=_h(
        "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555"
        "fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"
    ),
)


@dataclass(frozen=True)
class RsaVector:
    n: int
    e: int
    d: int
    p: int
    q: int
    message: bytes
    signature: bytes


# NIST CAVP RSA SigGen PKCS#1 v1.5 (FIPS 186-2), SigGen15_186-2.txt,
# [mod = 2048], first SHAAlg = SHA256 case: n, e, d, Msg and S are copied from
# the file (the .txt variant publishes d for testing). p and q are NOT in the
# file: they were derived offline from (n, e, d) with
# cryptography's rsa_recover_prime_factors, so the KAT does not pay ~60 ms for
# that at every boot; the KAT re-checks p * q == n so they stay bound to the
# published modulus.
RSA_2048_VECTOR = RsaVector(
    n=int(
        "e0b14b99cd61cd3db9c2076668841324fa3174f33ce66ffd514394d34178d29a"
        "49493276b6777233e7d46a3e68bc7ca7e899e901d54f6dee0749c3e48ddf6868"
        "5867ee2ae66df88eb563f6db137a9f6b175a112e0eda8368e88e45efe1ce14bc"
        "6016d52639627066af1872c72f60b9161c1d237eeb34b0f841b3f0896f9fe0e1"
        "6b0f74352d101292cc464a7e7861bbeb86f6df6151cb265417c66c565ed8974b"
        "d8fc984d5ddfd4eb91a3d5234ce1b5467f3ade375f802ec07293f1236efa3068"
        "bc91b158551c875c5dc0a9d6fa321bf9421f08deac910e35c1c28549ee8eed83"
        "30cf70595ff70b94b49907e27698a9d911f7ac0706afcb1a4a39feb38b0a8049",
        16,
    ),
    e=0x10001,
    d=int(
        "1dbca92e4245c2d57bfba76210cc06029b502753b7c821a32b799fbd33c98b49"
        "db10226b1eac0143c8574ef652833b96374d034ef84daa5559c693f3f028d497"
        "16b82e87a3f682f25424563bd9409dcf9d08110500f73f74076f28e75e0199b1"
        "f29fa2f70b9a31190dec54e872a740e7a1b1e38c3d11bca8267deb842cef4262"
        "237ac875725068f32563b478aca8d6a99f34cb8876b97145b2e8529ec8adea83"
        "ead4ec63e3ff2d17a2ffefb05c902ca7a92168378c89f75c928fc4f0707e4348"
        "7a4f47df70cae87e24272c136d3e98cf59066d41a3d038857d073d8b4d2c27b8"
        "f0ea6bfa50d263091a4a18c63f446bc9a61e8c4a688347b2435ec8e72eddaea7",
        16,
    ),
    p=int(
        "f55608a0bbf228a3cac2075fcd51cee8dd66fe482592b5bc43052d21f2a585a9"
        "e662c4d2f8c31b9983c56aea0ee6065c2b7dba1b9e4c0b25c258c0ba29f9a20d"
        "832d8140c131778f7a5371cc8d02ea0b0827fa9e48b890446289fb9dc266b0e1"
        "126047d25e68b603e6c7b47070847dc829e431ba4b46f5b0ae47a9f54c6df2ab",
        16,
    ),
    q=int(
        "ea758d47882feccf4826a11d4e808fa02138144caf142e3591d7e25c91b8dec8"
        "69145dd9ce604bdaad61a9d5b59f34ab151741638730ecc38df0711dfa70da6c"
        "b58ddba0bae1fa3561f2f20ae3a85a711a05828288109eb69b1226b12f057c5e"
        "554ad041539df3b5558d59c062a5f22f47c9bc9796a0c604e2f936fa5fb3b8db",
        16,
    ),
    message=_h(
        "6504921a97cd57aa8f3863dc32e1f2d0b57aff63106e59f6afc3f9726b459388"
        "bae16b3e224f6aa7f4f471f13606eda6e1f1ac2b4df9ef8de921c07c2f4c8598"
        "d7a3d6ec4b368cb85ce61a74338221118a303e821c0f277b591af6795f50c402"
        "26127a2efacce4662fd7076c109eb59b18005e7165f6294a6976436ee397774e"
    ),
    signature=_h(
        "335ffadc0b1b8bd2b1eb670dd246e76dcccdc955a1687a15f74aa3e1596ebd43"
        "e607c640525f89dda95809cfd065f1be4e4a249477d24f400d4d4c9438a0af95"
        "b26b28b416e42aa950e2a52851b52132048f1b1ce944322fc99c1aabb49b7fae"
        "4c2f0fef674b50adee3bbb5c6c33822b608e4b9577275ca20c710af9fc41b1c0"
        "1d9c0ff6f0d8324dc08e1a76e232d8feaa06c73bbf64053bea35f1c528b27227"
        "64822ef1ff06246e75a9a22a10da4ea84fc2441bea24b35506f8447fcf69093c"
        "5d21ab0305cce2c7ea9ffac357c664b491fc55f2919ec490c38accbab378c252"
        "ac2df3845acff575ec7524cd2f586cca1497c74f24b299d6d6254c8cdb1d227d"
    ),
)



@dataclass(frozen=True)
class RsaPssVector:
    n: int
    e: int
    message: bytes
    signature: bytes
    salt: bytes  # only its length is an input to verification


# NIST CAVP RSA SigVer PSS (FIPS 186-3), cryptography_vectors
# asymmetric/RSA/FIPS_186-2/SigVerPSS_186-3.rsp, [mod = 2048] SHAAlg = SHA256,
# the case with e = 10001 and Result = P (MGF1 with SHA-256, sLen = 10).
RSA_PSS_VECTOR = RsaPssVector(
    n=int(
        "c6e0ed537a2d85cf1c4effad6419884d824ceabf5200e755691cb7328acd6a75"
        "5fe85798502ccaec9e55d47afd0cf3258ebe920b50c5fd9d72897462bd0e459b"
        "bdf902b63d17195b2ef54908980be12aa7489f8af274b92c0cbc16aed2fa46f7"
        "82d5517b666edfb2e5e5efeaff7e24965e26472e51980b0cfe457d297e6aa5da"
        "cb8e728dc6f58130f925a13275c3cace62f820db1e13cc5274c58ff4d7837671"
        "a1bf5f80d6ad8699c568df8d24dd0f152ded36ef4861f59b354bba96a076913a"
        "25facf4722737e6deed95b69a00fb2bced0feeedea4ff01a92605cfe26a6b395"
        "53d0c74e5650eb3779705e135c4b2fa518a8d4339c53efab4bb0058238def555",
        16,
    ),
    e=0x10001,
    message=_h(
        "81eaf473d40896dbf4deac0f35c63bd1e129147c76e7aa8d0ef921631f55a743"
        "6411079f1bcc7b98714ac2c13b5e7326e60d918db1f05ffb19da767a95bb141a"
        "84c4b73664ccebf844f3601f7c853f009b21becba11af3106f1de5827b14e9fa"
        "c84b2cbf16d18c045622acb260024768e8acc4c0ae2c0bd5f60a98023828cdec"
    ),
    signature=_h(
        "40d59ebc6cb7b960cbda0db353f9b85d77e7c03f84447fb8e91b96a5a7377abc"
        "329d1f55c85e0dbedbc2886ce191d9e2cf3be05b33d6bbd2ba92b85eee2ff89c"
        "d6ee29cd531e42016e6aba1d620fe55e44480c033e8a59c0852dd1caffbc2ce8"
        "2969e3a9f44ceff79f89993b9ebf3741b2ccab0b9516f2e128656a5b2ad5251e"
        "20c6ce0c26a14eef7ee86458942ddbe95ccc1f67b253e43e72117f49595dab5b"
        "a423496ece12825435661112666dbae71aaffd5a8f1d58db9dc02e0d70fe3ac3"
        "6a87b8eeed4f20c00fd4303f9f767d03bca1a619bbe4b08e4e53b5cb69d2ba02"
        "35063e04ca392334d9979a41c42a66ca8b9721edcf76989ba89f3a170bb2e485"
    ),
    salt=_h("11223344555432167890"),
)


@dataclass(frozen=True)
class RsaOaepVector:
    n: int
    e: int
    d: int
    p: int
    q: int
    message: bytes
    ciphertext: bytes


# RSAES-OAEP with SHA-256 and MGF1-SHA-256, empty label: cryptography_vectors
# asymmetric/RSA/oaep-custom/oaep-sha256-sha256.txt, first (2048-bit) key,
# "OAEP Example 1 alg=sha256 mgf1=sha256" (pyca's SHA-2 extension of the
# RSA Laboratories OAEP vectors, cross-checked there against Bouncy Castle).
# This file publishes p and q as well, so nothing is derived offline.
RSA_OAEP_SHA256_VECTOR = RsaOaepVector(
    n=int(
        "b8e814a25ca64c8de16f73849a78c8b13bb086a407301604f674efb588ee7b99"
        "6b1b6a2968625a2548e9ab01ce6a3699907e303c8a02c9e40ea36bd6d8b2a74b"
        "1ee98fa8835a480dfc751fddc490e5a46707095356316587fc339196e4d7db70"
        "c7feae50a1263dedd589bec009624193c7de4793dcdf830be3256c70de1f02f7"
        "a7d3503035fcb9625c40abb7445470203902ea045f337d31fcd28506e46cd655"
        "60949f08cd90fedaabbcb6615b884737d3f5ad01e67cc0c2997af3328b3c80d5"
        "ee0a9aa40a9119bd7594fcfe2324728ea9a8f839e663467a0c44915d0275e34c"
        "f1c9605ad317c4573f57c85fd7e19e82cc6f77314e8db47a908a57e3e4418e45",
        16,
    ),
    e=0x10001,
    d=int(
        "4af58aa7e7776341814a7542247d229ef6dbb1397dd0789cba6cdd60728a7b80"
        "ce72e6aeb2aa6c710105f9555a20a4d1cc49dbb42f1ec249b9c5764a3abef222"
        "f9fd2547e3380e4ddd327e20a1373c61518300bcd00c6664a251258c4e695384"
        "7d0f3a0b65c8e3022fb70fa53a28a2fd0de18692e2cf99889024f3b92dd2d498"
        "70a5de6f11827feade31bdc8889148968fad08b794007f68524a3bbce886dee2"
        "40cb18f0b14e22ebfe5b04a4f1a73c9ed56adc0881b9aca2a02a776a2df2843b"
        "3cca528c8dca70db0a72baa978e8e11ef833f298403003de5820cf6d54d58de1"
        "753aac48aae6911a55f9d393a829fd4169799365b7a4015c5911277937bb1501",
        16,
    ),
    p=int(
        "e7e2f373592c2b9919851f238f1b1b67e9c761bbf252b334d5a12a6ea66974a1"
        "cb5f57dfa0595298f143ef958f7450571c31c682b91ea26a0349383088cbedd8"
        "7e7edc6cb5287a56d7f73c31d02df6e3c58b01c27efdac951e279a3318951520"
        "c44c3903e5dc793c3cdacc40ad06551bd219bd6ecfd1c3f4f8ea513674ab286d",
        16,
    ),
    q=int(
        "cc2279fb888ba03c22c6613bb1466c9e2cd161d99bbec2f75af82cf7f0e43eb1"
        "a8a8bc23c24fc2838bffb94e791811073da55c53e07e1fec63cefd066dc631e2"
        "5e74dae715ab3cc18b5e56ff2a786ddee92d32dc5bd4df849cb8246e3f42c127"
        "9985c5cb6909b0630424dc8a82d5604387e95fbb248720636b8e7208ca1f0639",
        16,
    ),
    message=_h("6628194e12073db03ba94cda9ef9532397d50dba79b987004afefe34"),
    ciphertext=_h(
        "6afdbc76de74458198a9c890cc5abb52580af01c2096036dca104d67f96a05de"
        "682da5c26970a808343527440aa80b9d043045d7983f442a3d376e5b039bcfb9"
        "6c1b5fd0e46b5fff85646273293ced5e7272993850017f24f6133591d5c97887"
        "81a9952873ebfc45ad4d34fff2b4e9ababf49d9f9a3d7726bdce3eb2feb545db"
        "5cfef0b183bd55735a2d356b4278c5580ce0e4cfd21a0a3ad3b225de388fcfd6"
        "88394710f97d5a3933e01d434fcff732542390f8915d5d291780ed63d425c0be"
        "a5bb0ad25aae3a70355e3f45a443ea111b80515b743d5bd226d339dc7516ce6c"
        "41414a0aa978198bc6762f443e957c7be5edbd25fcdd226c5d967fa05d7c9079"
    ),
)

# CSPRNG health check parameters: enough blocks that a stuck or looping source
# is caught, small enough to cost nothing.
RNG_BLOCK_SIZE = 32
RNG_BLOCKS = 8


def _entropy(n: int) -> bytes:
    # Indirection so tests can substitute a broken source.
    return os.urandom(n)


# --------------------------------------------------------------------------
# The KATs. Each reads its vector from the module global at call time so a
# monkeypatched (corrupted) vector is what gets checked.
# --------------------------------------------------------------------------


@known_answer_test("aes-256-gcm")
def _kat_aes_256_gcm() -> None:
    v = AES_256_GCM_VECTOR
    aead = AESGCM(v.key)
    sealed = aead.encrypt(v.iv, v.plaintext, v.aad)
    _expect("AES-256-GCM", "encrypt ciphertext", sealed[: -len(v.tag)], v.ciphertext)
    _expect("AES-256-GCM", "encrypt tag", sealed[-len(v.tag) :], v.tag)
    opened = aead.decrypt(v.iv, v.ciphertext + v.tag, v.aad)
    _expect("AES-256-GCM", "decrypt plaintext", opened, v.plaintext)
    # The barrier relies on tag checking, so prove a forged tag is rejected.
    forged = v.ciphertext + bytes([v.tag[0] ^ 0x01]) + v.tag[1:]
    try:
        aead.decrypt(v.iv, forged, v.aad)
    except InvalidTag:
        return
    raise SelfTestError("AES-256-GCM decrypt accepted a forged tag")


def _crypt(cipher: Cipher[modes.ModeWithInitializationVector | modes.ModeWithNonce], data: bytes, *,
           encrypt: bool) -> bytes:
    ctx = cipher.encryptor() if encrypt else cipher.decryptor()
    return ctx.update(data) + ctx.finalize()


@known_answer_test("aes-256-cbc")
def _kat_aes_256_cbc() -> None:
    v = AES_256_CBC_VECTOR
    cipher = Cipher(algorithms.AES(v.key), modes.CBC(v.iv))
    _expect("AES-256-CBC", "encrypt", _crypt(cipher, v.plaintext, encrypt=True), v.ciphertext)
    _expect("AES-256-CBC", "decrypt", _crypt(cipher, v.ciphertext, encrypt=False), v.plaintext)


@known_answer_test("aes-128-ctr")
def _kat_aes_128_ctr() -> None:
    v = AES_128_CTR_VECTOR
    cipher = Cipher(algorithms.AES(v.key), modes.CTR(v.iv))
    _expect("AES-128-CTR", "encrypt", _crypt(cipher, v.plaintext, encrypt=True), v.ciphertext)
    _expect("AES-128-CTR", "decrypt", _crypt(cipher, v.ciphertext, encrypt=False), v.plaintext)


@known_answer_test("aes-256-kw")
def _kat_aes_256_kw() -> None:
    v = AES_256_KW_VECTOR
    _expect("AES-KW (RFC 3394)", "wrap", aes_key_wrap(v.kek, v.key_data), v.wrapped)
    _expect("AES-KW (RFC 3394)", "unwrap", aes_key_unwrap(v.kek, v.wrapped), v.key_data)


@known_answer_test("aes-kwp")
def _kat_aes_kwp() -> None:
    v = AES_KWP_VECTOR
    _expect("AES-KWP (RFC 5649)", "wrap", aes_key_wrap_with_padding(v.kek, v.key_data), v.wrapped)
    _expect("AES-KWP (RFC 5649)", "unwrap", aes_key_unwrap_with_padding(v.kek, v.wrapped), v.key_data)
    # Unwrap is an integrity check too: a modified wrapping must be refused.
    tampered = v.wrapped[:-1] + bytes([v.wrapped[-1] ^ 0x01])
    try:
        aes_key_unwrap_with_padding(v.kek, tampered)
    except InvalidUnwrap:
        return
    raise SelfTestError("AES-KWP (RFC 5649) unwrap accepted a tampered wrapping")


@known_answer_test("aes-128-cmac")
def _kat_aes_128_cmac() -> None:
    v = AES_128_CMAC_VECTOR
    mac = CMAC(algorithms.AES(v.key))
    mac.update(v.message)
    _expect("AES-128-CMAC", "tag", mac.finalize(), v.mac)


def _digest(algorithm: hashes.HashAlgorithm, data: bytes) -> bytes:
    h = hashes.Hash(algorithm)
    h.update(data)
    return h.finalize()


@known_answer_test("sha-1")
def _kat_sha_1() -> None:
    v = SHA_1_VECTOR
    _expect("SHA-1", "digest", _digest(hashes.SHA1(), v.message), v.digest)


@known_answer_test("sha-224")
def _kat_sha_224() -> None:
    v = SHA_224_VECTOR
    _expect("SHA-224", "digest", _digest(hashes.SHA224(), v.message), v.digest)


@known_answer_test("sha-256")
def _kat_sha_256() -> None:
    v = SHA_256_VECTOR
    _expect("SHA-256", "digest", _digest(hashes.SHA256(), v.message), v.digest)


@known_answer_test("sha-384")
def _kat_sha_384() -> None:
    v = SHA_384_VECTOR
    _expect("SHA-384", "digest", _digest(hashes.SHA384(), v.message), v.digest)


@known_answer_test("sha-512")
def _kat_sha_512() -> None:
    v = SHA_512_VECTOR
    _expect("SHA-512", "digest", _digest(hashes.SHA512(), v.message), v.digest)


@known_answer_test("sha3-256")
def _kat_sha3_256() -> None:
    v = SHA3_256_VECTOR
    _expect("SHA3-256", "digest", _digest(hashes.SHA3_256(), v.message), v.digest)


@known_answer_test("hmac-sha-256")
def _kat_hmac_sha_256() -> None:
    v = HMAC_SHA_256_VECTOR
    mac = HMAC(v.key, hashes.SHA256())
    mac.update(v.message)
    _expect("HMAC-SHA-256", "tag", mac.finalize(), v.mac)


@known_answer_test("hmac-sha-512")
def _kat_hmac_sha_512() -> None:
    v = HMAC_SHA_512_VECTOR
    mac = HMAC(v.key, hashes.SHA512())
    mac.update(v.message)
    _expect("HMAC-SHA-512", "tag", mac.finalize(), v.mac)


@known_answer_test("hmac-sha3-256")
def _kat_hmac_sha3_256() -> None:
    v = HMAC_SHA3_256_VECTOR
    mac = HMAC(v.key, hashes.SHA3_256())
    mac.update(v.message)
    _expect("HMAC-SHA3-256", "tag", mac.finalize(), v.mac)


@known_answer_test("hkdf-sha-256")
def _kat_hkdf_sha_256() -> None:
    v = HKDF_SHA_256_VECTOR
    okm = HKDF(algorithm=hashes.SHA256(), length=len(v.okm), salt=v.salt, info=v.info).derive(v.ikm)
    _expect("HKDF-SHA-256", "OKM", okm, v.okm)


@known_answer_test("argon2id")
def _kat_argon2id() -> None:
    v = ARGON2ID_VECTOR
    kdf = Argon2id(
        salt=v.salt,
        length=len(v.tag),
        iterations=v.iterations,
        lanes=v.lanes,
        memory_cost=v.memory_kib,
        ad=v.ad,
        secret=v.secret,
    )
    _expect("Argon2id", "tag", kdf.derive(v.password), v.tag)


@known_answer_test("ecdsa-p256")
def _kat_ecdsa_p256() -> None:
    v = ECDSA_P256_VECTOR
    private_key = ec.derive_private_key(v.private_value, ec.SECP256R1())
    public_key = private_key.public_key()
    numbers = public_key.public_numbers()
    if (numbers.x, numbers.y) != (v.public_x, v.public_y):
        raise SelfTestError("ECDSA P-256 public key derivation differs from the known answer")

    known = encode_dss_signature(v.r, v.s)
    try:
        public_key.verify(known, v.message, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise SelfTestError("ECDSA P-256 verify rejected the known-good signature") from None
    # A verifier that accepts everything would pass the line above.
    try:
        public_key.verify(known, v.message + b"!", ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        pass
    else:
        raise SelfTestError("ECDSA P-256 verify accepted a signature over the wrong message")

    # Pairwise consistency (signing uses a random nonce, so no fixed answer).
    message = b"strongroom ecdsa pairwise consistency"
    signature = private_key.sign(message, ec.ECDSA(hashes.SHA256()))
    try:
        public_key.verify(signature, message, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise SelfTestError("ECDSA P-256 pairwise sign/verify failed") from None


@known_answer_test("ecdh-p256")
def _kat_ecdh_p256() -> None:
    v = ECDH_P256_VECTOR
    private_key = ec.derive_private_key(v.private_value, ec.SECP256R1())
    numbers = private_key.public_key().public_numbers()
    if (numbers.x, numbers.y) != (v.public_x, v.public_y):
        raise SelfTestError("ECDH P-256 public key derivation differs from the known answer")
    # Building the peer key also runs the on-curve check the node relies on.
    peer = ec.EllipticCurvePublicNumbers(v.peer_x, v.peer_y, ec.SECP256R1()).public_key()
    _expect("ECDH P-256", "shared secret Z", private_key.exchange(ec.ECDH(), peer), v.shared_secret)

    # CKM_ECDH1_DERIVE with a CKD_*_KDF feeds Z through the ANSI X9.63 KDF.
    k = X963_KDF_SHA_256_VECTOR
    kdf = X963KDF(algorithm=hashes.SHA256(), length=len(k.key_data), sharedinfo=k.shared_info)
    _expect("X9.63-KDF SHA-256", "key data", kdf.derive(k.shared_secret), k.key_data)


@known_answer_test("ed25519")
def _kat_ed25519() -> None:
    v = ED25519_VECTOR
    private_key = ed25519.Ed25519PrivateKey.from_private_bytes(v.secret_key)
    public_key = private_key.public_key()
    _expect("Ed25519", "public key", public_key.public_bytes_raw(), v.public_key)
    # Ed25519 is deterministic, so the signature itself is the known answer.
    signature = private_key.sign(v.message)
    _expect("Ed25519", "signature", signature, v.signature)
    try:
        public_key.verify(v.signature, v.message)
    except InvalidSignature:
        raise SelfTestError("Ed25519 verify rejected the known-good signature") from None


def _rsa_private_key(algorithm: str, n: int, e: int, d: int, p: int, q: int) -> rsa.RSAPrivateKey:
    if p * q != n:
        raise SelfTestError(f"{algorithm} test key primes do not match the published modulus")
    return rsa.RSAPrivateNumbers(
        p=p,
        q=q,
        d=d,
        dmp1=rsa.rsa_crt_dmp1(d, p),
        dmq1=rsa.rsa_crt_dmq1(d, q),
        iqmp=rsa.rsa_crt_iqmp(p, q),
        public_numbers=rsa.RSAPublicNumbers(e, n),
        # Skipping OpenSSL's key check saves ~40 ms per key per boot; it is
        # safe here because the keys are fixed public constants and a bad key
        # cannot produce the published answers the KATs compare against.
    ).private_key(unsafe_skip_rsa_key_validation=True)


@known_answer_test("rsa-2048-pkcs1v15-sha256")
def _kat_rsa_2048_pkcs1v15_sha256() -> None:
    v = RSA_2048_VECTOR
    private_key = _rsa_private_key("RSA-2048", v.n, v.e, v.d, v.p, v.q)
    # PKCS#1 v1.5 signing is deterministic, so the signature is the known answer.
    signature = private_key.sign(v.message, padding.PKCS1v15(), hashes.SHA256())
    _expect("RSA-2048 PKCS#1 v1.5 SHA-256", "signature", signature, v.signature)
    try:
        private_key.public_key().verify(v.signature, v.message, padding.PKCS1v15(), hashes.SHA256())
    except InvalidSignature:
        raise SelfTestError("RSA-2048 PKCS#1 v1.5 SHA-256 verify rejected the known-good signature") from None


@known_answer_test("rsa-pss-verify")
def _kat_rsa_pss_verify() -> None:
    v = RSA_PSS_VECTOR
    public_key = rsa.RSAPublicNumbers(v.e, v.n).public_key()
    pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=len(v.salt))
    try:
        public_key.verify(v.signature, v.message, pss, hashes.SHA256())
    except InvalidSignature:
        raise SelfTestError("RSA-PSS SHA-256 verify rejected the known-good signature") from None
    # A verifier that accepts everything would pass the check above.
    tampered = v.signature[:-1] + bytes([v.signature[-1] ^ 0x01])
    for signature, message, what in (
        (tampered, v.message, "a tampered signature"),
        (v.signature, v.message + b"!", "a signature over the wrong message"),
    ):
        try:
            public_key.verify(signature, message, pss, hashes.SHA256())
        except InvalidSignature:
            continue
        raise SelfTestError(f"RSA-PSS SHA-256 verify accepted {what}")


@known_answer_test("rsa-oaep-sha256")
def _kat_rsa_oaep_sha256() -> None:
    v = RSA_OAEP_SHA256_VECTOR
    private_key = _rsa_private_key("RSA-OAEP SHA-256", v.n, v.e, v.d, v.p, v.q)
    oaep = padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)
    try:
        message = private_key.decrypt(v.ciphertext, oaep)
    except ValueError:
        # cryptography reports any OAEP decoding error as a bare ValueError.
        raise SelfTestError("RSA-OAEP SHA-256 decrypt rejected the known ciphertext") from None
    _expect("RSA-OAEP SHA-256", "decrypt", message, v.message)

    # Pairwise consistency for the encrypt side (OAEP encryption is randomised).
    message = b"strongroom rsa-oaep pairwise consistency"
    ciphertext = private_key.public_key().encrypt(message, oaep)
    _expect("RSA-OAEP SHA-256", "pairwise encrypt/decrypt", private_key.decrypt(ciphertext, oaep), message)


@known_answer_test("csprng")
def _kat_csprng() -> None:
    # Randomness has no known answer; this is the continuous-test idea (FIPS
    # 140-2 §4.9.2 CRNGT, SP 800-90B §4.4): a stuck source repeats a block or
    # emits a constant one. It cannot prove quality, only catch gross failure.
    seen: set[bytes] = set()
    for _ in range(RNG_BLOCKS):
        block = _entropy(RNG_BLOCK_SIZE)
        if len(block) != RNG_BLOCK_SIZE:
            raise SelfTestError("CSPRNG (os.urandom) returned a short block")
        if len(set(block)) == 1:
            raise SelfTestError("CSPRNG (os.urandom) returned a constant block")
        if block in seen:
            raise SelfTestError("CSPRNG (os.urandom) repeated an output block")
        seen.add(block)


# --------------------------------------------------------------------------
# Post-quantum: ML-DSA (FIPS 204) and ML-KEM (FIPS 203), the node's CKM_ML_DSA
# and CKM_ML_KEM (strongroom.mechanisms.mldsa / mlkem).
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class MlDsaVector:
    seed: bytes  # ξ, the key generation seed
    public_key_sha256: bytes  # SHA-256 of the published public key (1312 bytes, not repeated here)
    message: bytes
    context: bytes
    signature: bytes


# cryptography_vectors asymmetric/MLDSA/kat_MLDSA_44_det_pure.rsp, count = 0 (the signature is the
# first 2420 bytes of "sm", which is signature || message).
ML_DSA_44_VECTOR = MlDsaVector(
    seed=_h("f696484048ec21f96cf50a56d0759c448f3779752f0383d37449690694cf7a68"),
    public_key_sha256=_h("18288249b90bcbd48d473d2a507cc3c1e95e040f639ac3333a8ed1891de14552"),
    message=_h("6dbbc4375136df3b07f7c70e639e223e"),
    context=_h("480c658c0cb3e040bde084345cef0df7"),
    signature=_h(
        """
        e7c82fca315573ef8cc7160ce95d92fa79ac21521523de0e6700768207e9b7b9fae9cbdbf8f97b06d79ed4f5ea451308
        6c4b065ce9296ae0cd9b133f65c314fcef6d537b1d2d7077e779be24c149d8284c82f4937b0815d656e404ad4ad87d78
        ddbc493c6ace7a2aab9446243f37c64d7c441212307d07a3fbe2573194c0b75ed55c398a2c633984fd397252320feffd
        79d892dd0ab6c9cb661e47fe8d6e76a0ff4e83abed5aea3feff912f7c5a067370ca037d88260fde55b0eb3220d44a12a
        39578b891ce7948db3f389b0ebda721d664e1790c40b9b8167c0d9ca03e359da4ab675ab011b0c57a7ed55cfd8c250e5
        b890471c1e581d3b3eb3a6f3c79223ae0e881886f4feb285442855e106070a5ef40a7a74b5e95bfd316d0fdcf464b3b2
        f708b2d9dcd6cc565d0b54b07e319ee413a2e430bbd855c74e9477fc06ebbdceec9c7a2ac0af875bde016c61742c62f4
        2bbd48a3a51089b30fd5a62bf77091eda29cd722765e24ef2693bf34665cb118d9e07e846c3703461015cf1c37fdeada
        056ad91e67cc77139c8c27c5c6c00895a48a8f3d5bb0b3719edadb9bb666b655e218855e9d19fac78f179bf598f7de24
        37305691aa5b8ec57f2337a7e2d1f007d920090ebf765b98cf784f24da4f19089d1f8dfb03e5ebe676898d4067c5fc51
        238b2fcaccfadd4795d96899b451097d27595928d0fb0b64fb190739a51d7fe063ce0dd99a74510f080c1ef4f61cd11d
        9859e4ed550f6f1e4eb23f164de1d5af8f050f56eabda15e1d54766c3fbdc30f43cfd8174e3c8ca6274865ed7c7a7d1a
        410ab51549b5b736e0c82ed9af8241ad8a266378caa062653283e79085134b4db8917f7c8d4d8ee94b5a42aa8148b69f
        1f719aad9fb315a4678e91f4b4b1268d96e50921c7a68d4832ee1018bcdac84a46aa52021ea1aece7cb85ecb57bb7062
        31df46b6f8d58f3d2880bc9b5d478af82eafb861b6a0f7e266f3ff67c3092ba326e6d827e76f5a34c52bb82c9a06a826
        50c9e0626c3dbe1a0a748bf89bc14dfde33185b063a9247c5997e2e08e8404abc18cfdf7d2fd8870eb8d964fdd97c332
        5be0bbb1a76ec220aa68b400ece8e95abcd94edc0173398d2f6badd23e33b27bf28276d7657681d7e5fc9f1b7414aab0
        f45b8b3149fce89c20019e70de07fc3129dfee35dd01936ab425c3f8ded9d5412aa659c20821b48cfcd7b2add251af41
        de2a89c94147d98de9bc0c1ccb80cbd2202b1c6134f36c3e4b953375f405541987c04c809cdf7ee42645f10ea02f1935
        45ed8b73b48c74965083401a09dcd1c39366aa9f1bf520d19074199f3b842ce9acbc5b63eac8b383cbdfc68513ef3b05
        c701c2e86cd539b4332116c01d99cf3a1e6522814feb8f3e1066a63de6c482a684bf76dc7673ac775342fba58494fd3b
        33fe366e5aa6cd26f5893e0e7bb4a376d48a4f08dc1f23a589d9c4557a76fd7882a2ced9f588b2279bd7e9607525a16d
        1b0707f044237521a1a38a3a956153b99df64fd384b7ad51d3ad7fcabd86c8d1f53cf7fbad27a933ded0fffe77955338
        286c634e88bb1a4eef84a5d5652c01895fd0c1a73dde4200ce11dc356f876642e61a0a382af660c677d6bcbea9c5a14c
        ee8895ff4e5a85c3dfc0a7236ea2b680a7c0e45a17e16a7650c8e9fd6bc15c1292e28f0e5e4ea88b852b6fd19d0564ef
        69963c707d236f51bf8a7b1caed916549e09c77be15398c07fa6efa07a5936dbd6c49826de086d7d9f394169ff4d988d
        ebb32e1a7621c0cf0d65e25c4195c9e10920bd140371978e7433353b10239edf7b3b4bce8799e568399706ea4c3e021e
        8f5b58007b4e8f92a6f627234eec26d7d62b28ac208ed5adf3b7dc087bfacc15800069726b24e51381e8b93dbe2a77af
        1e8117aaa7134c6ee2d415735cced695d0993ef1aef46edde30740f5ae55baaf20b773e05bc2d6a93655cbae36794dc0
        9a497359236d05ce65fd82da17306a51f5c4f97d63581109ba940e7e560b0b8d922576bee0685481ec538be6eae23676
        804d7be1b2775403bc5816add25ef3d48c15ab0eba39910f4294566e0864361d97449c3f1f49bd8c8acafe2b5b8aa481
        0bcd1189af3fbf41c7c5728158bf00b8cb933d15469a9829ebc058c3b76389552e156a857d2428f6040b3a05b0d55f16
        beb426def5b02e1d97741cbd0de1169623b597ea0dc6f2afd8a259d29ae33e6c20940d7906c0999138ca7333b47ff253
        eabaf912153dca52bb201e11e98aa60b253e7f03fc084553885fef8a879094b52c46de225f1315a5464e0b8e6cabd5dc
        4fe7d7fe25f501b7fb129e14ef6753135a4be3885914393504e99159866f5af3e6fe4deb8d965e9ea00641398ec4317f
        3ca8403cfd8442d88894a2e4128464bf57c093198c6ae984024a175ddaedcb31b5c532019fea4f8fd2d3d3dcc6283fb5
        2ca75383a4664777acca3fd158b4d080e3546a8ec33ce3fa794777c03783897876bb5166dc5474547043d62d90ac6f81
        8ebb459d1c6146bb57769327f2b5f366ee07061f49c5d9d5914aca7900162aaa1aaf8fd9ca72ba72a56b1a4ce4006519
        75edc9c206ed4c1e58884e6f24680b64be1a6a611483a72a7cfb7fff85c8365ea880687b468484031f06ab419e76fe3e
        b6bf9448315d781a46b87ab3ebd490e6be17f7804881a0f6c53547698d53d64d8763f35a8e8a45392f43b1a1dbccf8e7
        92adf79d1186f3ae1d5d9e121204b198cc1e48ea855b9715d8aad487dc19708691f41048b73bed0c6f644688a57f9e77
        70c7d0a52c6940e2d8eb9af7101ed5d97f5eb7f22e25dd76117538fc2c08fddfc617810b7646f34c738f29cb63d6faf0
        81aefe34ba44ddb5617bcefd63d08ddd48c43d563d29e6180479f9e5d3eb0d3c06e700ef5535b1a8ac2eec565382ab35
        e6298ea101ffd4a8afd45d642b326d1fb47329d16c5820935ceddd633a01f0b598843f4614fa0dffb82d9af45c69701a
        138dd4008c6bba84e1cb1e0943ac90f8f0e665cfe1a157a075a1d9a5e2f10cf15d01b8c5578cc02056af7c887bd93600
        8581cf8522901122a63c1ff2404dc318d5a3bd407f89351c63a43b12eab9bf2f969abd90df6a347e5918f6a5adcb1c97
        9e6d810e4c334ea1dddaa365120dc0c5c8af142cb3a1578188c6d75b8e3eda715a9f8547dd6e4f1474080532e26e6b6e
        ac6d583520e3e1ff32344ab9ecb505c103569fe8276bc33d1f6ac280b1b5ac09549b8cb06180fd1faf1c7f16f818b1eb
        8151230dee10a108dfd1895a1ae1fbbe6b08b59c526ea69929ae8dc8635a5ea91019768e9dbcbfd9fa0a171b2028494e
        717a96c7d6e3fd062550515277828e8fcbd5e9eaf9fe071221252a3c465062788cacb8bbbdd1dde0e1f0fa0000000000
        000000000000000000000000000000000917263b
        """
    ),
)


@dataclass(frozen=True)
class MlKemVector:
    seed: bytes  # d || z, the key generation seed
    public_key_sha256: bytes  # SHA-256 of the published encapsulation key (1184 bytes)
    ciphertext: bytes
    shared_secret: bytes
    #: A ciphertext not made for the key: FIPS 203 implicit rejection gives this pseudo-random secret.
    rejected_ciphertext: bytes
    rejected_shared_secret: bytes


# cryptography_vectors asymmetric/MLKEM/kat_MLKEM_768.rsp, count = 0 (d, z, pk, ct, ss, ct_n, ss_n).
ML_KEM_768_VECTOR = MlKemVector(
    seed=_h("6dbbc4375136df3b07f7c70e639e223e177e7fd53b161b3f4d57791794f12624"
            "f696484048ec21f96cf50a56d0759c448f3779752f0383d37449690694cf7a68"),
    public_key_sha256=_h("4bec4730f26273c6319ef7387dd4758315240a9394cd89264b148b9113060b61"),
    ciphertext=_h(
        """
        16a61ff84787fd4a5f19ca59b3657db3a106a7329e2d62747a2ef85149163109befff6bcb33df66230b8f6725ce719f5
        8f71196e895befc9754d9f042494648c88a6ed4c4cf13f2faf9f651de79dae077733cb235f9dce448977fd42d5486b7d
        fdf6d7bd9172b14247655d34f10524d469478d9a9639f34d2acde6e3c048d52b308b66245fe9a28cde7983b9d14c03b3
        7715fe3970cd35734771add7aa9b58cfb0adf8c613deafb2b31f6e5c8364d4334e93af8e4943fa947cc67667447cffd0
        36235afaea7f603cb2ea277b97dadf82ea746f6b27396dd08c85cff9304a2e5ce0571fde2e926716bc9f8e4d474b4e8f
        d34b0dc28376204ea306d30e9a6dd88250b79823e77319f2ef3a77704f409dde8beb6db1be4a9f25ae2e15939dedf1b1
        1a5aa51fcff04068b46d42fbbafd2498264cca4fb78b0f2ab162c7ef569875a13148b9a4b0b9da1787ca0a7033e3eca1
        3471dbcbbe15e34f2b5065b995fe221c2b7ac150334d14e68edc5e049663de362fae8d35e24c202c5fad2153cd044ea9
        62a388f030cdc5dec1c3423183b173c32b22f5800ae45e8e89c8ee4617ce24e60f278bfd1ea0f8fa92486b6f849127da
        99be7be4c661e2ba26669d6acf619a33056809683e24a2f29e33be7f5f9ac668697e59488e9b8685956cd87b7c47109d
        603202c201472ec829ea64922e4d0eadd4a4b5a8fb06e0f4bf25a59ced54557388dcd91b387cb6148597edf84a225958
        01851ca4b9e9e096fdfc96f2444ac9f1247a5e640787fca23e3eb21ec1059c42a65803441df01279013c448dfc3eedfc
        3355eee1f510086a115f854c36db797a85ede19a473a33e79a80f6f7f6467e1b0d866fe0e57a8abd379934a6a6a492f5
        f32594d43de2ec2eea81487981bb6394bfa6df5498d74c6db2202a6348a325fbc906b8e820bb00659a2ee12740b14b2e
        36f4c5dab411c0cd096c5e63ba4d48aa9e92b31f44dc97c0fef661bcf4db895f174613d9d5ed9e836657745ec9deec7a
        f273cec87ef0eaf805da1bc8401608810b8a86f952c6326d09fc8d1d7fd83b4e862e05058e877c056cc5465ec3192b03
        a4c33cc6b16558d2482d5f84518cbbc526aae6e8840317efb3a1982c3d1719ef15d10f8b077c5c68680be6d3d92e86aa
        a6eb378cf0559d493257147b55730f49a042325af066b4f9741b9fff5d47972d5acaf52b6bea4e9e354ef9448b62f6d2
        a1317675a922e14e31578d6cab5a09a71ab270d865151b8ab4c612b5fd5dcc97e45419a1cfb6b8b9aec60f62602098f9
        1f07c238186657941c7a18e4d7ee220f022d5fffd291853b9c063e561b7176f7a235ce45bc86ce4718086df9536c5a5f
        0abf04c0a84d82bdf69552ade3135433c10a1ba69d688969e6d9dce54d3b3aae3a7f2ab904e657e3fb05241fac110aa0
        7e62cc3991d7d0d6329b5ab9d69d7336c0d148588c9f0921325b85df5fd30db80a56a3724372153641961aa7e042bf26
        46ff46022c059d5794c3a4b7f90c410de71a5231dd9b83bbd0e6bdab1bf9e62f
        """
    ),
    shared_secret=_h("b408d5d115713f0a93047dbbea832e4340787686d59a9a2d106bd662ba0aa035"),
    rejected_ciphertext=_h(
        """
        96ac6243c9b1272be77b975a4048bf00ff2c48f94a3483362449273880d45e54bda15729682bf591a74382a708beb781
        18cab29ad74ac2f405ba720076dfb57188dc168487cd20081f6bf412f257dea03406b23a6a752e478ba4ef9c7c0f4810
        921fa32545be64dc5d9f18d4e1320efc6508154cda35ab912d059e0291a1150ae0a10da5e3d7bd221a851c598df4d0b1
        8daa920976556099d1c0de4e222d5304d44fa9cb9bd4ffe15769dd6c4793fa809f5264cf0febca4b5975ba287639783a
        a1f4b645ff7a00d46ee7b19fec17b3e83bcaf4361d5349e30ceab60c386b6b0d1b90d8b336ee6a627ad2a38670cb5113
        b0fb4ac2ddc4250097483fefd182670ea40f0f45cce90b9ed58dafaef657d64e25fd6692a69721994e7d00b4949205eb
        e4c4f9c46ee5a1018b220a26d80ae2d2b486372e974d75b20a005b1616ad1e13d162915cc24f274670d1e5e8bd345874
        a7e7c9759c8e43ff33689200739a613395f7ae78d73c6a7b90f65ab511f0df3c5dca85d0b9430b4e97098715ff823b61
        7321799aea0ab9c72234780339ec7b541d5e6f8c1551146c24a65411811b23674c26123356cf233351382c3994cba5dc
        6c25a07e1ba9af33eca18bba3e97935e3abdf07e9fa32cecf241e7cafc6592db4ee487ff2b98a4a47805dee17fd93448
        dc98457b753ed4995ee6b1bfa9ff1d386c91f396ca8f48cab5b09a782ec3b616a87a6448a96236c4655413af755323d3
        6a8db2e16509454489e6ec83629130cd2a54817918af362c83183494b4b590dbaf69cf399d3e2dc3e9c0c1224f148e65
        ef68287341ab72ad58adfc69b28e27e91ebbf830fac53b94f762f01cc9b1561ae35f16edabf51ff164c1309d1fdb52cd
        2bfedb5a492eb65cb9fc86b8f05ed26d13233fb0a3eb33a9dce2cf98e6516cee42fbe1e97e20ab6c9965f58a377dc73e
        530667ab8f45e6a70b23db50f0df411732d8acdabe50c51adb886c0e5a5296d4aa1b13a336f0c17812f79fc69418a7d8
        901c568f410eff2af74baaeb8336f46ca17e14e060ce2d45cdb376286eec8b8befa5ab8025802720a1e7393af579db13
        e8867d43d711e61b2ee395077984a450a8e2513040068a931796bc3d0069b56d1f062fc3dd61b1b194b6e1f1d1c0596d
        453db7b7592a6f9f8ac5576a855906512200234c40fc9bd9de9c3d6291c31b5e6b7ade473a3787aab0c958b3df76188a
        86ecf9e3ab06f96d1ec518c1bf3366bef94465d9e1a69eb26db9e0f0856d27be50a52bb0a3a17075d66080fe1d3bd421
        22d656ccc3a556e04f913faf9641143931a640e72fab9d003038c982cac8142e5613dbaab9d41390577afe73ac623f7c
        1920cbf1feb5c85cc433300c1c5579d020d5491edd6c503117b9c4d598438938831e5c341e9c86cd00dd8d4320b656f9
        aba9f0e552724e3828fc2e00946121663ad3ad98a25e7d308da1a0347c4dcfc798e395270ad07cfdf0ff8e3278dae20a
        b2664cdf30a5d0ebfe7a1e799ec44b514e02f2be9738d4e28036b4776bd40408
        """
    ),
    rejected_shared_secret=_h("e7bcf899feb5db69d11741a8838ecfee253e80b76d6a35af46e220e81dc41daf"),
)


@known_answer_test("ml-dsa-44")
def _kat_ml_dsa_44() -> None:
    v = ML_DSA_44_VECTOR
    private_key = mldsa.MLDSA44PrivateKey.from_seed_bytes(v.seed)
    public_key = private_key.public_key()
    _expect("ML-DSA-44", "key generation (public key)", _digest(hashes.SHA256(), public_key.public_bytes_raw()),
            v.public_key_sha256)
    # The library signs hedged (randomized) only: the published deterministic signature is checked by
    # verification, and signing by a pairwise test (pure and through an external μ).
    try:
        public_key.verify(v.signature, v.message, v.context)
    except InvalidSignature:
        raise SelfTestError("ML-DSA-44 verify rejected the known-good signature") from None
    tampered = v.signature[:-1] + bytes([v.signature[-1] ^ 0x01])
    for signature, message, context, what in (
        (tampered, v.message, v.context, "a tampered signature"),
        (v.signature, v.message + b"!", v.context, "a signature over the wrong message"),
        (v.signature, v.message, b"", "a signature under another context"),
    ):
        try:
            public_key.verify(signature, message, context)
        except InvalidSignature:
            continue
        raise SelfTestError(f"ML-DSA-44 verify accepted {what}")
    hasher = mldsa.MLDSAMuHasher(public_key, v.context)
    hasher.update(v.message)
    mu = hasher.finalize()
    for signature in (private_key.sign(v.message, v.context), private_key.sign_mu(mu)):
        try:
            public_key.verify(signature, v.message, v.context)
            public_key.verify_mu(signature, mu)
        except InvalidSignature:
            raise SelfTestError("ML-DSA-44 pairwise sign/verify failed") from None


@known_answer_test("ml-kem-768")
def _kat_ml_kem_768() -> None:
    v = ML_KEM_768_VECTOR
    private_key = mlkem.MLKEM768PrivateKey.from_seed_bytes(v.seed)
    public_key = private_key.public_key()
    _expect("ML-KEM-768", "key generation (encapsulation key)",
            _digest(hashes.SHA256(), public_key.public_bytes_raw()), v.public_key_sha256)
    _expect("ML-KEM-768", "decapsulation", private_key.decapsulate(v.ciphertext), v.shared_secret)
    _expect("ML-KEM-768", "implicit rejection", private_key.decapsulate(v.rejected_ciphertext),
            v.rejected_shared_secret)
    # Encapsulation is randomized: a pairwise test.
    secret, ciphertext = public_key.encapsulate()
    _expect("ML-KEM-768", "pairwise encapsulate/decapsulate", private_key.decapsulate(ciphertext), secret)
