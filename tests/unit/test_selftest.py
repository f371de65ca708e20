"""Power-on self-tests (KATs) and process hardening."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

import strongroom
from strongroom import hardening
from strongroom.hardening import wipe
from strongroom.node import selftest
from strongroom.node.selftest import (
    INJECTED_FAILURE,
    SelfTestError,
    known_answer_test,
    register,
    registered,
    run_all,
    unregister,
)

BUILTIN_KATS = (
    "aes-256-gcm",
    "aes-256-cbc",
    "aes-128-ctr",
    "aes-256-kw",
    "aes-kwp",
    "aes-128-cmac",
    "sha-1",
    "sha-224",
    "sha-256",
    "sha-384",
    "sha-512",
    "sha3-256",
    "hmac-sha-256",
    "hmac-sha-512",
    "hmac-sha3-256",
    "hkdf-sha-256",
    "argon2id",
    "ecdsa-p256",
    "ecdh-p256",
    "ed25519",
    "rsa-2048-pkcs1v15-sha256",
    "rsa-pss-verify",
    "rsa-oaep-sha256",
    "csprng",
    "ml-dsa-44",
    "ml-kem-768",
)

# KATs with no published vector to corrupt (randomness has no known answer).
KATS_WITHOUT_VECTORS = frozenset({"csprng"})


def _flip_first_byte(value: bytes) -> bytes:
    return bytes([value[0] ^ 0x01]) + value[1:]


# For each corruption case: the KAT that must fail, the module constant holding
# its vector, the field to corrupt, and the algorithm label the failure reason
# must mention. A KAT that checks more than one vector (or both directions of
# one) has a case per vector so each check is proven to be live.
CORRUPTIONS: tuple[tuple[str, str, str, str], ...] = (
    ("aes-256-gcm", "AES_256_GCM_VECTOR", "ciphertext", "AES-256-GCM"),
    ("aes-256-cbc", "AES_256_CBC_VECTOR", "ciphertext", "AES-256-CBC encrypt"),
    ("aes-256-cbc", "AES_256_CBC_VECTOR", "plaintext", "AES-256-CBC"),
    ("aes-128-ctr", "AES_128_CTR_VECTOR", "ciphertext", "AES-128-CTR encrypt"),
    ("aes-128-ctr", "AES_128_CTR_VECTOR", "iv", "AES-128-CTR"),
    ("aes-256-kw", "AES_256_KW_VECTOR", "wrapped", "AES-KW"),
    ("aes-kwp", "AES_KWP_VECTOR", "wrapped", "AES-KWP (RFC 5649) wrap"),
    ("aes-kwp", "AES_KWP_VECTOR", "key_data", "AES-KWP"),
    ("aes-128-cmac", "AES_128_CMAC_VECTOR", "mac", "AES-128-CMAC"),
    ("aes-128-cmac", "AES_128_CMAC_VECTOR", "message", "AES-128-CMAC"),
    ("sha-1", "SHA_1_VECTOR", "digest", "SHA-1"),
    ("sha-224", "SHA_224_VECTOR", "digest", "SHA-224"),
    ("sha-256", "SHA_256_VECTOR", "digest", "SHA-256"),
    ("sha-384", "SHA_384_VECTOR", "digest", "SHA-384"),
    ("sha-512", "SHA_512_VECTOR", "digest", "SHA-512"),
    ("hmac-sha-256", "HMAC_SHA_256_VECTOR", "mac", "HMAC-SHA-256"),
    ("hmac-sha-512", "HMAC_SHA_512_VECTOR", "mac", "HMAC-SHA-512"),
    ("sha3-256", "SHA3_256_VECTOR", "digest", "SHA3-256"),
    ("hmac-sha3-256", "HMAC_SHA3_256_VECTOR", "mac", "HMAC-SHA3-256"),
    ("hkdf-sha-256", "HKDF_SHA_256_VECTOR", "okm", "HKDF-SHA-256"),
    ("argon2id", "ARGON2ID_VECTOR", "tag", "Argon2id"),
    ("ecdsa-p256", "ECDSA_P256_VECTOR", "s", "ECDSA P-256"),
    ("ecdh-p256", "ECDH_P256_VECTOR", "shared_secret", "ECDH P-256 shared secret"),
    ("ecdh-p256", "ECDH_P256_VECTOR", "private_value", "ECDH P-256 public key derivation"),
    ("ecdh-p256", "X963_KDF_SHA_256_VECTOR", "key_data", "X9.63-KDF SHA-256"),
    ("ecdh-p256", "X963_KDF_SHA_256_VECTOR", "shared_info", "X9.63-KDF SHA-256"),
    ("ed25519", "ED25519_VECTOR", "signature", "Ed25519"),
    ("rsa-2048-pkcs1v15-sha256", "RSA_2048_VECTOR", "signature", "RSA-2048"),
    ("rsa-pss-verify", "RSA_PSS_VECTOR", "signature", "RSA-PSS SHA-256 verify rejected"),
    ("rsa-pss-verify", "RSA_PSS_VECTOR", "message", "RSA-PSS SHA-256 verify rejected"),
    ("rsa-oaep-sha256", "RSA_OAEP_SHA256_VECTOR", "ciphertext", "RSA-OAEP SHA-256 decrypt rejected"),
    ("rsa-oaep-sha256", "RSA_OAEP_SHA256_VECTOR", "message", "RSA-OAEP SHA-256 decrypt"),
    ("rsa-oaep-sha256", "RSA_OAEP_SHA256_VECTOR", "q", "RSA-OAEP SHA-256 test key primes"),
    ("ml-dsa-44", "ML_DSA_44_VECTOR", "seed", "ML-DSA-44 key generation"),
    ("ml-dsa-44", "ML_DSA_44_VECTOR", "public_key_sha256", "ML-DSA-44 key generation"),
    ("ml-dsa-44", "ML_DSA_44_VECTOR", "signature", "ML-DSA-44 verify rejected"),
    ("ml-dsa-44", "ML_DSA_44_VECTOR", "message", "ML-DSA-44 verify rejected"),
    ("ml-dsa-44", "ML_DSA_44_VECTOR", "context", "ML-DSA-44 verify rejected"),
    ("ml-kem-768", "ML_KEM_768_VECTOR", "seed", "ML-KEM-768 key generation"),
    ("ml-kem-768", "ML_KEM_768_VECTOR", "ciphertext", "ML-KEM-768 decapsulation"),
    ("ml-kem-768", "ML_KEM_768_VECTOR", "shared_secret", "ML-KEM-768 decapsulation"),
    ("ml-kem-768", "ML_KEM_768_VECTOR", "rejected_ciphertext", "ML-KEM-768 implicit rejection"),
    ("ml-kem-768", "ML_KEM_768_VECTOR", "rejected_shared_secret", "ML-KEM-768 implicit rejection"),
)


@pytest.fixture
def temporary_kats() -> Iterator[list[str]]:
    """Names registered here are removed afterwards so tests don't leak KATs."""
    names: list[str] = []
    yield names
    for name in names:
        unregister(name)


# --------------------------------------------------------------------------- KATs


def test_all_builtin_kats_pass_quickly() -> None:
    report = run_all()
    assert report.ok, report.failed
    assert report.failed == ()
    assert set(BUILTIN_KATS) <= set(report.passed)
    assert report.duration < 0.3


def test_builtin_kats_are_registered_in_a_stable_order() -> None:
    assert registered()[: len(BUILTIN_KATS)] == BUILTIN_KATS


@pytest.mark.parametrize("name", BUILTIN_KATS)
def test_injected_failure_is_reported_by_name(name: str) -> None:
    report = run_all(fail={name})
    assert not report.ok
    assert report.failed_names == (name,)
    reason = report.reason(name)
    assert reason is not None and name in reason and INJECTED_FAILURE in reason
    assert name not in report.passed
    assert set(report.passed) == set(registered()) - {name}


def test_injecting_several_failures() -> None:
    report = run_all(fail=frozenset({"sha-256", "csprng"}))
    assert set(report.failed_names) == {"sha-256", "csprng"}


def test_fault_injection_is_off_by_default() -> None:
    assert run_all().failed == ()


def test_injecting_an_unknown_name_is_refused() -> None:
    with pytest.raises(ValueError, match="no-such-test"):
        run_all(fail={"no-such-test"})


def test_every_vector_kat_has_a_corruption_case() -> None:
    covered = {name for name, *_ in CORRUPTIONS}
    assert covered == set(BUILTIN_KATS) - KATS_WITHOUT_VECTORS


@pytest.mark.parametrize(
    ("name", "constant", "field", "label"),
    CORRUPTIONS,
    ids=[f"{name}:{constant}.{field}" for name, constant, field, _ in CORRUPTIONS],
)
def test_corrupted_vector_makes_the_kat_fail(
    name: str, constant: str, field: str, label: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    vector = getattr(selftest, constant)
    original = getattr(vector, field)
    # Flip the low bit of an integer (q ^ 1 is even, so no longer a prime factor).
    corrupted = original ^ 1 if isinstance(original, int) else _flip_first_byte(original)
    monkeypatch.setattr(selftest, constant, dataclasses.replace(vector, **{field: corrupted}))

    report = run_all()

    assert report.failed_names == (name,)
    reason = report.reason(name)
    assert reason is not None and label in reason


@pytest.mark.parametrize(
    ("name", "source", "message"),
    [
        ("stuck", lambda n: b"\x00" * n, "constant"),
        ("repeating", lambda n: bytes(range(n)), "repeated"),
        ("short", lambda n: os.urandom(n - 1), "short"),
    ],
)
def test_csprng_health_check_catches_broken_sources(
    name: str, source: object, message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(selftest, "_entropy", source)
    report = run_all()
    assert report.failed_names == ("csprng",), name
    reason = report.reason("csprng")
    assert reason is not None and "CSPRNG" in reason and message in reason


def test_rsa_pss_kat_checks_the_salt_length(monkeypatch: pytest.MonkeyPatch) -> None:
    # Only the salt's length is a verification input, so flipping a byte of it
    # proves nothing; a wrong length must make the known-good signature fail
    # (i.e. the KAT pins sLen rather than letting the verifier recover it).
    vector = selftest.RSA_PSS_VECTOR
    monkeypatch.setattr(selftest, "RSA_PSS_VECTOR", dataclasses.replace(vector, salt=vector.salt[:-1]))
    report = run_all()
    assert report.failed_names == ("rsa-pss-verify",)
    reason = report.reason("rsa-pss-verify")
    assert reason is not None and "RSA-PSS SHA-256 verify rejected" in reason


def test_exception_inside_a_kat_is_a_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    # A forged tag that decrypts means the AEAD check is broken; a wrong IV
    # length makes the backend raise. Both must become report lines, not crashes.
    vector = selftest.AES_256_GCM_VECTOR
    monkeypatch.setattr(selftest, "AES_256_GCM_VECTOR", dataclasses.replace(vector, iv=b""))
    report = run_all()
    assert report.failed_names == ("aes-256-gcm",)
    reason = report.reason("aes-256-gcm")
    assert reason is not None and reason.startswith("aes-256-gcm: ValueError")


def test_registered_extra_kat_runs(temporary_kats: list[str]) -> None:
    calls: list[str] = []

    @known_answer_test("extra-decorated")
    def _extra() -> None:
        calls.append("decorated")

    temporary_kats.append("extra-decorated")

    def _failing() -> None:
        raise SelfTestError("EXTRA-ALG tag differs from the known answer")

    register("extra-failing", _failing)
    temporary_kats.append("extra-failing")

    report = run_all()
    assert calls == ["decorated"]
    assert "extra-decorated" in report.passed
    assert report.failed_names == ("extra-failing",)
    assert report.reason("extra-failing") == "extra-failing: EXTRA-ALG tag differs from the known answer"
    assert "extra-decorated" in report.timings

    # Injection also works for tests registered later by mechanism modules.
    assert run_all(fail={"extra-decorated"}).reason("extra-decorated") is not None


def test_duplicate_registration_is_refused(temporary_kats: list[str]) -> None:
    with pytest.raises(ValueError, match="already registered"):
        register("sha-256", lambda: None)
    register("extra-dup", lambda: None)
    temporary_kats.append("extra-dup")
    register("extra-dup", lambda: None, replace=True)


def test_selftest_module_does_not_import_the_vectors_package() -> None:
    source = Path(selftest.__file__).read_text()
    assert "import cryptography_vectors" not in source
    assert "from cryptography_vectors" not in source


# --------------------------------------------------------------------------- hardening

_HARDEN_PROBE = textwrap.dedent(
    """
    import ctypes, json, os, resource
    from strongroom.hardening import get_dumpable, harden_process

    before = get_dumpable()
    report = harden_process()
    libc = ctypes.CDLL(None, use_errno=True)
    # Read back with a fresh prctl call, independent of the module under test.
    dumpable = libc.prctl(3, 0, 0, 0, 0)  # PR_GET_DUMPABLE
    print(json.dumps({
        "before": before,
        "dumpable": dumpable,
        "rlimit_core": list(resource.getrlimit(resource.RLIMIT_CORE)),
        "ok": report.ok,
        "succeeded": list(report.succeeded),
        "again_ok": harden_process().ok,
    }))
    """
)


def _run_probe(script: str) -> dict[str, object]:
    src_dir = str(Path(strongroom.__file__).resolve().parents[1])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [src_dir, env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60, check=True
    )
    return json.loads(proc.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl is Linux-only")
def test_harden_process_in_a_subprocess() -> None:
    result = _run_probe(_HARDEN_PROBE)
    assert result["before"] == 1  # sanity: the probe starts dumpable
    assert result["dumpable"] == 0
    assert result["rlimit_core"] == [0, 0]
    assert result["ok"] is True
    assert set(result["succeeded"]) == {hardening.STEP_RLIMIT_CORE, hardening.STEP_NOT_DUMPABLE}
    assert result["again_ok"] is True  # idempotent


def test_harden_process_reports_rather_than_raises_without_prctl(monkeypatch: pytest.MonkeyPatch) -> None:
    # Simulate a platform without prctl; run in a subprocess so the real
    # RLIMIT_CORE of the test runner is left alone.
    script = textwrap.dedent(
        """
        import json, sys
        sys.platform = "darwin"
        from strongroom import hardening
        report = hardening.harden_process()
        step = report.step(hardening.STEP_NOT_DUMPABLE)
        print(json.dumps({"ok": report.ok, "step_ok": step.ok, "detail": step.detail,
                          "dumpable": hardening.get_dumpable()}))
        """
    )
    result = _run_probe(script)
    assert result["ok"] is False
    assert result["step_ok"] is False
    assert "prctl unavailable" in str(result["detail"])
    assert result["dumpable"] is None


def test_wipe_zeroes_in_place() -> None:
    secret = bytearray(b"correct horse battery staple")
    alias = memoryview(secret)  # same storage: proves no copy was made
    wipe(secret)
    assert secret == bytearray(len(b"correct horse battery staple"))
    assert bytes(alias) == b"\x00" * len(secret)
    alias.release()
    secret.extend(b"!")  # the buffer export was released, so resizing still works
    assert secret[-1:] == b"!"


def test_wipe_handles_empty_and_refuses_immutable() -> None:
    empty = bytearray()
    wipe(empty)
    assert empty == bytearray()
    with pytest.raises(TypeError):
        wipe(b"immutable")  # type: ignore[arg-type]
