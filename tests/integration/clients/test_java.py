"""Java 17 JCE through the JDK's own SunPKCS11 provider, over the Strongroom PKCS#11 module and agent.

`java/StrongroomJce.java` is compiled once per session with `javac` and run with `java` against the
module of a real `strongroom up` cluster: SunPKCS11 configured with `name = Strongroom`,
`library = <module>`, `slot = 0` and the two attribute lines ECDH needs (ECDH_ATTRIBUTES), the PKCS11
key store opened with the PIN `user:password` (and refused with a wrong one), RSA-2048 / EC P-256 /
AES-256 generated through the provider, SHA256withRSA, SHA256withECDSA and RSASSA-PSS signatures,
AES/GCM/NoPadding (where the JDK tries the two CK_GCM_PARAMS layouts), AES/CBC/PKCS5Padding, ECDH
(the shared secret read back from a derived key), HMAC and AES with keys the application holds in
clear (imported with C_CreateObject). The program prints one line per check; every line must be OK,
and the signatures are verified again here with pyca/cryptography. Without a PIN (issue 13 item 1)
the program verifies, encrypts with a public key, digests and draws random numbers.
"""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from ..conftest import Pkcs11Module, Pkcs11Target

JAVA_SOURCE = Path(__file__).resolve().parent / "java" / "StrongroomJce.java"
JAVA_TIMEOUT = 120  # the run takes a few seconds; this only bounds a hang
USER, PASSWORD = "jce", "jce-password-1"
TOKEN_AES = "jce-token-aes"

EXPECTED_CHECKS = {
    "provider", "keystore-wrong-pin", "keystore-login", "keystore-aliases", "token-aes-gcm",
    "keygen-rsa-2048", "keygen-ec-p256", "keygen-aes-256", "sign-SHA256withRSA", "sign-SHA256withECDSA",
    "sign-RSASSA-PSS", "aes-gcm", "aes-cbc-pkcs5", "ecdh", "hmac-imported", "aes-imported", "logout",
}
PUBLIC_CHECKS = {"provider", "public-verify", "public-encrypt", "public-digest", "public-random"}


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"this test needs {name} from a JDK 17 (apt-get install openjdk-17-jdk-headless)")
    return path


@pytest.fixture(scope="session")
def jce_classes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """StrongroomJce.java compiled with javac, once per session."""
    javac = _tool("javac")
    out = tmp_path_factory.mktemp("jce-classes")
    result = subprocess.run([javac, "-Xlint:all", "-Werror", "-d", str(out), str(JAVA_SOURCE)],
                            capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (out / "StrongroomJce.class").is_file()
    return out


@pytest.fixture(scope="module")
def jce_user(pkcs11: Pkcs11Target) -> Iterator[str]:
    """A crypto user with one token AES key (made with the CLI) for the key store to list."""
    pin = pkcs11.crypto_user(USER, PASSWORD)
    code, reply = pkcs11.cluster.cli("key", "generate-symmetric", "aes", "--label", TOKEN_AES,
                                     "--key-length-bytes", "32", pin=pin)
    assert code == 0, reply
    yield pin


def _run_java(classes: Path, config: Path, socket_path: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STRONGROOM_", "JAVA_TOOL_OPTIONS", "_JAVA"))}
    env["STRONGROOM_AGENT_SOCKET"] = socket_path
    env["STRONGROOM_PKCS11_TIMEOUT"] = "60"
    # subprocess.run kills the JVM if it outlives the timeout: no java is ever left behind.
    return subprocess.run([_tool("java"), "-cp", str(classes), "StrongroomJce", str(config), *args],
                          capture_output=True, text=True, env=env, timeout=JAVA_TIMEOUT)


#: The two attribute lines an application doing ECDH adds to its SunPKCS11 configuration, here as with
#: SoftHSMv2: the JDK generates an EC key pair with its class, key type and curve only, and PKCS#11's
#: default CKA_DERIVE is false; its key agreement derives a generic secret with its class and key type only
#: and reads CKA_VALUE, which a derived key reveals when CKA_SENSITIVE=false and CKA_EXTRACTABLE=true
#: (Strongroom's defaults for a derived key are sensitive and not extractable, as SoftHSMv2's not extractable).
ECDH_ATTRIBUTES = """attributes(generate, CKO_PRIVATE_KEY, CKK_EC) = {
  CKA_DERIVE = true
}
attributes(generate, CKO_SECRET_KEY, CKK_GENERIC_SECRET) = {
  CKA_SENSITIVE = false
  CKA_EXTRACTABLE = true
}
"""


def _sunpkcs11_config(path: Path, module: Path) -> Path:
    path.write_text(f"name = Strongroom\nlibrary = {module}\nslot = 0\n{ECDH_ATTRIBUTES}")
    return path


def _parse(stdout: str) -> tuple[dict[str, str], dict[str, bytes], list[str]]:
    """(status per check, DATA values, unexpected lines)."""
    checks: dict[str, str] = {}
    data: dict[str, bytes] = {}
    other: list[str] = []
    for line in stdout.splitlines():
        word, _, rest = line.partition(" ")
        if word in ("OK", "FAIL", "SKIP"):
            name = rest.split(":", 1)[0].split(" ", 1)[0]
            checks[name] = word
        elif word == "DATA":
            name, _, value = rest.partition(" ")
            data[name] = base64.b64decode(value)
        elif word != "END":
            other.append(line)
    return checks, data, other


def test_jce_through_sunpkcs11(pkcs11: Pkcs11Target, jce_classes: Path, jce_user: str, tmp_path: Path) -> None:
    config = _sunpkcs11_config(tmp_path / "strongroom-pkcs11.cfg", pkcs11.module)

    result = _run_java(jce_classes, config, pkcs11.socket, jce_user, f"{USER}:not-the-password", TOKEN_AES)
    report = f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"

    checks, data, other = _parse(result.stdout)
    assert not other, report
    failed = sorted(name for name, status in checks.items() if status != "OK")
    assert not failed, f"checks not OK: {failed}\n{report}"
    assert set(checks) == EXPECTED_CHECKS, f"missing: {sorted(EXPECTED_CHECKS - set(checks))}\n{report}"
    assert "END failures=0" in result.stdout and result.returncode == 0, report

    # The same signatures, checked outside the JVM with pyca/cryptography.
    message = data["message"]
    rsa_key = serialization.load_der_public_key(data["rsa-public"])
    assert isinstance(rsa_key, rsa.RSAPublicKey) and rsa_key.key_size == 2048
    rsa_key.verify(data["rsa-signature"], message, padding.PKCS1v15(), hashes.SHA256())
    rsa_key.verify(data["pss-signature"], message,
                   padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32), hashes.SHA256())
    ec_key = serialization.load_der_public_key(data["ec-public"])
    assert isinstance(ec_key, ec.EllipticCurvePublicKey) and ec_key.curve.name == "secp256r1"
    ec_key.verify(data["ec-signature"], message, ec.ECDSA(hashes.SHA256()))
    with pytest.raises(InvalidSignature):
        ec_key.verify(data["ec-signature"], message + b"!", ec.ECDSA(hashes.SHA256()))

    # The key store listed the user's token key by its label.
    alias_line = next(line for line in result.stdout.splitlines() if line.startswith("OK keystore-aliases"))
    assert TOKEN_AES in alias_line.split(" ", 2)[2].split(","), alias_line


def test_jce_without_login(pkcs11: Pkcs11Target, jce_classes: Path, tmp_path: Path) -> None:
    """Issue 13 item 1: SunPKCS11 with nobody logged in verifies (a public key it imports as a public session
    object), encrypts with a public key, digests and draws random numbers."""
    config = _sunpkcs11_config(tmp_path / "strongroom-pkcs11.cfg", pkcs11.module)
    result = _run_java(jce_classes, config, pkcs11.socket, "-")
    report = f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    checks, _data, other = _parse(result.stdout)
    assert not other, report
    assert checks == dict.fromkeys(PUBLIC_CHECKS, "OK"), report
    assert "END failures=0" in result.stdout and result.returncode == 0, report


def test_jce_without_agent_fails_cleanly(jce_classes: Path, pkcs11_module: Pkcs11Module, tmp_path: Path) -> None:
    """No agent behind the socket: the provider cannot initialize and the JVM reports it (no hang, no crash)."""
    config = _sunpkcs11_config(tmp_path / "strongroom-pkcs11.cfg", pkcs11_module.path)
    result = _run_java(jce_classes, config, str(tmp_path / "nobody.sock"), "u:p", "u:q")
    assert result.returncode != 0
    assert result.stdout.splitlines()[1].startswith("FAIL provider:"), result.stdout + result.stderr
    assert "CKR_FUNCTION_FAILED" in result.stderr, result.stderr
    assert "hs_err" not in result.stdout + result.stderr and "SIGSEGV" not in result.stderr
