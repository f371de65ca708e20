"""The PKCS#11 3.x interface of the C module (issue 17), under AddressSanitizer + UBSan with leak detection,
driven by pkcs11/tests/p11v3.c:

* ``interfaces`` (no agent): C_GetFunctionList keeps answering the 2.40 list (clients break on a version-3 one);
  C_GetInterfaceList / C_GetInterface give "PKCS 11" 3.2 (the default), 3.0 and 2.40, before C_Initialize.
* ``v3`` (the real agent of a `strongroom up` cluster): C_LoginUser, message-based AES-GCM (generated IVs and
  tags written back, a message in parts, tampering refused, the same ciphertext through v2.40 C_Decrypt),
  C_SessionCancel, the 3.x functions not offered.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest

from .conftest import PKCS11_DIR, Pkcs11Module, Pkcs11Target

SANITIZER_ENV = {
    "ASAN_OPTIONS": "detect_leaks=1:halt_on_error=1:abort_on_error=0:detect_stack_use_after_return=1",
    "UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1",
}


@pytest.fixture(scope="module")
def driver() -> str:
    if shutil.which("make") is None or shutil.which("cc") is None:
        pytest.fail("building the PKCS#11 module needs make and a C compiler (apt-get install gcc make)")
    result = subprocess.run(["make", "-C", str(PKCS11_DIR), "asan", "test-bin"], capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    return str(PKCS11_DIR / "build" / "asan" / "p11v3")


def run(driver: str, scenario: str, *, socket_path: str | None = None, pin: str = "-") -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STRONGROOM_", "ASAN_", "UBSAN_", "LSAN_"))}
    env.update(SANITIZER_ENV)
    if socket_path is not None:
        env["STRONGROOM_AGENT_SOCKET"] = socket_path
    module = str(PKCS11_DIR / "build" / "asan" / "libstrongroom-pkcs11.so")
    result = subprocess.run([driver, module, pin, scenario], capture_output=True, text=True, env=env, timeout=240)
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"p11v3 {scenario} exited {result.returncode}:\n{output}"
    assert not re.search(r"^FAIL ", result.stdout, re.M), output
    assert "Sanitizer" not in result.stderr and "runtime error" not in result.stderr, output
    assert f"{scenario}: 0 failure(s)" in output, output
    return output


def test_interfaces_and_the_function_list_staying_2_40(driver: str) -> None:
    output = run(driver, "interfaces")
    assert "ok C_GetFunctionList answers the 2.40 list" in output
    assert output.count('ok interface "PKCS 11" in order 3.2, 3.0, 2.40') == 3


@pytest.mark.timeout(300)
def test_login_user_message_aead_and_cancel_against_the_agent(driver: str, pkcs11: Pkcs11Target) -> None:
    pin = pkcs11.crypto_user("p11v3_user", "password1")
    output = run(driver, "v3", socket_path=pkcs11.socket, pin=pin)
    assert "ok the IV and the tag are written back" in output
    assert "ok v2.40 GCM agrees with the message functions" in output


def test_plain_build_exports_the_3x_functions(pkcs11_module: Pkcs11Module) -> None:
    nm = subprocess.run(["nm", "-D", "--defined-only", str(pkcs11_module.path)], capture_output=True, text=True,
                        check=True)
    symbols = {line.split()[-1] for line in nm.stdout.splitlines() if line.strip()}
    for name in ("C_GetInterfaceList", "C_GetInterface", "C_LoginUser", "C_SessionCancel", "C_EncryptMessage",
                 "C_DecryptMessageNext", "C_EncapsulateKey", "C_DecapsulateKey", "C_UnwrapKeyAuthenticated"):
        assert name in symbols, name
    assert len(symbols) == 68 + 24 + 12  # v2.40, the 3.0 additions, the 3.2 additions
