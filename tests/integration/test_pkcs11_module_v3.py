"""The PKCS#11 3.x interface of the C module (issue 17), under AddressSanitizer + UBSan with leak detection,
driven by pkcs11/tests/p11v3.c:

* ``interfaces`` (no agent): C_GetFunctionList keeps answering the 2.40 list (clients break on a version-3 one);
  C_GetInterfaceList / C_GetInterface give "PKCS 11" 3.2 (the default), 3.0 and 2.40, before C_Initialize.
* ``v3`` (the real agent of a `strongroom up` cluster): C_LoginUser, message-based AES-GCM (generated IVs and
  tags written back, a message in parts, tampering refused, the same ciphertext through v2.40 C_Decrypt),
  C_SessionCancel, a forked child (not initialized until its own C_Initialize), the 3.x functions not offered.
* ``hostile`` (a peer that answers every 3.x call with a malformed reply): CKR_DEVICE_ERROR, nothing written into
  the caller's buffers.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import struct
import subprocess
import threading
from typing import Any

import msgpack
import pytest

from .conftest import PKCS11_DIR, Pkcs11Module, Pkcs11Target

CKR_BUFFER_TOO_SMALL = 0x150
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


def run_env(driver: str, scenario: str, socket_path: str | None, pin: str, extra: dict[str, str]) -> str:
    return run(driver, scenario, socket_path=socket_path, pin=pin, extra=extra)


def run(driver: str, scenario: str, *, socket_path: str | None = None, pin: str = "-",
        extra: dict[str, str] | None = None) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STRONGROOM_", "ASAN_", "UBSAN_", "LSAN_"))}
    env.update(SANITIZER_ENV)
    env.update(extra or {})
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
    assert "ok child: C_EncryptMessage before its C_Initialize" in output and "ok child: C_EncryptMessage (" in output


def test_plain_build_exports_the_3x_functions(pkcs11_module: Pkcs11Module) -> None:
    nm = subprocess.run(["nm", "-D", "--defined-only", str(pkcs11_module.path)], capture_output=True, text=True,
                        check=True)
    symbols = {line.split()[-1] for line in nm.stdout.splitlines() if line.strip()}
    for name in ("C_GetInterfaceList", "C_GetInterface", "C_LoginUser", "C_SessionCancel", "C_EncryptMessage",
                 "C_DecryptMessageNext", "C_EncapsulateKey", "C_DecapsulateKey", "C_UnwrapKeyAuthenticated"):
        assert name in symbols, name
    assert len(symbols) == 68 + 24 + 12  # v2.40, the 3.0 additions, the 3.2 additions


# --- a hostile peer: malformed replies to the 3.x functions ------------------------------------------------


IV, TAG = b"i" * 12, b"t" * 16


def _hostile_reply(rid: int, fn: str, args: list[Any]) -> bytes:
    """The reply the case (the session handle, args[0]) asks for: each one malformed."""
    k = args[0]
    pack = msgpack.packb
    if fn in ("C_Initialize", "C_Finalize"):
        return pack([1, rid, 0, [True] if fn == "C_Initialize" else []])
    cases: dict[str, dict[int, tuple[int, list[Any]]]] = {
        "C_EncryptMessage": {
            1: (0, [5, b"abcde", b"i" * 11, TAG]),   # IV of another length
            2: (0, [5, b"abcde", IV, b"t" * 15]),    # tag of another length
            3: (0, [5, b"abcde", None, TAG]),        # a whole message without its IV
            4: (0, [5, b"abcde", IV, None]),         # ... without its tag
            5: (0, [6, b"abcde", IV, TAG]),          # needed_len is not the data's
            6: (0, [100, b"x" * 100, IV, TAG]),      # more than the buffer holds
            7: (0, [5, b"abcde"]),                   # two outputs
            8: (0, [5, None, IV, TAG]),              # no data although a buffer was given
            9: (CKR_BUFFER_TOO_SMALL, [5, None, None, None]),  # too small although it fits
            10: (0, [5, b"abcde", "i" * 12, TAG]),   # str where bin is due
            11: (0, [5, b"abcde", None, None]),      # data in reply to a size query
        },
        "C_DecryptMessage": {1: (0, [5, b"abcde", IV, TAG]), 2: (0, [9, b"abc"])},
        "C_EncryptMessageNext": {1: (0, [5, b"abcde", None, None])},  # the last part without the tag
        "C_DecryptMessageNext": {1: (0, [5, b"abcde", None])},
        "C_EncryptMessageBegin": {1: (0, []), 2: (0, [b"i" * 11]), 3: (0, [None]), 4: (0, [IV, IV])},
        "C_EncapsulateKey": {
            1: (0, [5, b"abcde", None]),             # a ciphertext but no key
            2: (0, [5, b"abcde", "7"]),              # a key that is not an integer
            3: (0, [5, None, 7]),                    # a key in reply to a size query
            4: (0, [500, b"x" * 500, 7]),            # more than the buffer holds
        },
    }
    rv, outputs = cases[fn][k]
    return pack([1, rid, rv, outputs])


def _serve_hostile(server: socket.socket, answered: list[str]) -> None:
    def read(conn: socket.socket, n: int) -> bytes | None:
        data = b""
        while len(data) < n:
            chunk = conn.recv(n - len(data))
            if not chunk:
                return None
            data += chunk
        return data

    def serve(conn: socket.socket) -> None:
        with conn:
            while (head := read(conn, 4)) is not None:
                body = read(conn, struct.unpack(">I", head)[0])
                if body is None:
                    return
                _, rid, fn, args = msgpack.unpackb(body, raw=False)
                reply = _hostile_reply(rid, fn, args)
                answered.append(f"{fn} {args[0] if args else ''}")
                conn.sendall(struct.pack(">I", len(reply)) + reply)

    while True:
        try:
            conn, _ = server.accept()
        except OSError:
            return
        threading.Thread(target=serve, args=(conn,), daemon=True).start()


def test_malformed_replies_to_3x_functions_write_nothing(driver: str) -> None:
    path = f"/tmp/sr-p11v3-{os.getpid()}.sock"
    if os.path.exists(path):
        os.unlink(path)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(16)
    answered: list[str] = []
    threading.Thread(target=_serve_hostile, args=(server, answered), daemon=True).start()
    try:
        output = run(driver, "hostile", socket_path=path)
    finally:
        server.close()
        os.unlink(path)
    assert output.count("CKR_DEVICE_ERROR, nothing written") == 15
    # Each case was answered as planned (a peer that failed would close the connection: also a DEVICE_ERROR).
    assert len([a for a in answered if not a.startswith(("C_Initialize", "C_Finalize"))]) == 23, answered


@pytest.mark.timeout(300)
def test_kem_from_c_and_the_timing_scenario(driver: str, pkcs11: Pkcs11Target) -> None:
    """ML-KEM pairs, encapsulation (size query first) and decapsulation made from C, and the numbers the timing
    scenario prints (for the closing note; nothing here depends on them)."""
    pin = pkcs11.crypto_user("p11v3_timing", "password1")
    output = run_env(driver, "timing", pkcs11.socket, pin, {"P11V3_ROUNDS": "20"})
    assert "timing: 1 KiB AES-GCM: C_EncryptMessage" in output


@pytest.mark.timeout(300)
def test_a_login_user_login_survives_an_agent_restart(driver: str, pkcs11: Pkcs11Target) -> None:
    """C_LoginUser's user name and password are kept as C_Login's PIN would be (username:password, in locked
    memory): after an agent restart the module reopens the application logged in."""
    from strongroom.local.agent import start_agent, stop_agent

    pin = pkcs11.crypto_user("p11v3_restart", "password1")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STRONGROOM_", "ASAN_", "UBSAN_", "LSAN_"))}
    env.update(SANITIZER_ENV, STRONGROOM_AGENT_SOCKET=pkcs11.socket)
    module = str(PKCS11_DIR / "build" / "asan" / "libstrongroom-pkcs11.so")
    proc = subprocess.Popen([driver, module, pin, "restart"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env)
    assert proc.stdout is not None and proc.stdin is not None
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("RESTART-AGENT"):
            stop_agent(pkcs11.cluster.dir)
            proc.stdin.write("go\n")  # the calls start while the agent is down: they wait for it
            proc.stdin.flush()
            start_agent(pkcs11.cluster.dir)
    assert proc.wait(timeout=240) == 0, "".join(lines)
    output = "".join(lines)
    assert "restart: 0 failure(s)" in output and "ok still logged in" in output, output
    assert "Sanitizer" not in output and "runtime error" not in output, output
