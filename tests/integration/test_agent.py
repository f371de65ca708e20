"""The agent against real nodes: a cluster from `strongroom up`, the agent as its own process
(`strongroom agent --config DIR/agent.toml`), and a Python client speaking the module's protocol."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from strongroom.constants import CKA, CKK, CKM, CKO, CKS, CKU
from strongroom.errors import CKR
from strongroom.local.agent import stop_agent, write_config
from strongroom.local.processes import process_group_members
from tests.integration.agent_client import AgentApp
from tests.integration.conftest import LocalCluster

PASSWORD = "password1"
UNAVAILABLE = (1 << 64) - 1
GCM = {"iv": b"\x01" * 12, "aad": b"header", "tag_bits": 128}


class AgentProcess:
    """The agent of a cluster directory, run as `strongroom agent` (until `up` starts it)."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.config = write_config(directory)
        self.socket = str(directory / "agent.sock")
        self.log = directory / "agent.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.apps: list[AgentApp] = []

    def start(self) -> None:
        # Once `strongroom up` starts an agent itself, replace it with this one (whose pid goes to
        # DIR/agent.pid, so that a later `up` finds it running and `down` stops it).
        stop_agent(self.dir)
        env = {k: v for k, v in os.environ.items() if not k.startswith("STRONGROOM_")}
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "strongroom", "agent", "--config", str(self.config)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
            )
        (self.dir / "agent.pid").write_text(f"{self.process.pid}\n")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"the agent exited:\n{self.log.read_text()}"
            try:
                with socket.socket(socket.AF_UNIX) as probe:
                    probe.connect(self.socket)
                return
            except OSError:
                time.sleep(0.05)
        raise AssertionError(f"the agent did not start:\n{self.log.read_text()}")

    def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.process is not None
        self.process.send_signal(sig)
        code = self.process.wait(20)
        self.process = None
        (self.dir / "agent.pid").unlink(missing_ok=True)
        return code

    def app(self, **kwargs: Any) -> AgentApp:
        app = AgentApp(self.socket, **kwargs)
        self.apps.append(app)
        return app

    def close(self) -> None:
        for app in self.apps:
            app.close()
        if self.process is not None and self.process.poll() is None:
            self.stop()


def add_user(cluster: LocalCluster, name: str, role: str = "crypto-user") -> str:
    admin = cluster.admin()
    admin.user_create(name, role, PASSWORD)
    admin.logout()
    return f"{name}:{PASSWORD}"


def logged_in(agent: AgentProcess, pin: str, **kwargs: Any) -> tuple[AgentApp, int]:
    app = agent.app(**kwargs)
    session = app.open_session()
    assert app.login(session, pin) == CKR.OK
    return app, session


@pytest.fixture(scope="module")
def shared_agent(shared_cluster: LocalCluster) -> Iterator[AgentProcess]:
    agent = AgentProcess(shared_cluster.dir)
    agent.start()
    try:
        yield agent
    finally:
        agent.close()


@pytest.fixture
def agent(cluster: LocalCluster) -> Iterator[AgentProcess]:
    process = AgentProcess(cluster.dir)
    process.start()
    try:
        yield process
    finally:
        process.close()


# --- keys and helpers -------------------------------------------------------------------------------------


def aes_key(app: AgentApp, session: int, label: bytes, extra: dict[int, Any] | None = None) -> int:
    template = {CKA.TOKEN: True, CKA.LABEL: label, CKA.VALUE_LEN: 32, **(extra or {})}
    return app.ok("C_GenerateKey", session, [CKM.AES_KEY_GEN, None], app.template(template))[0]


def rsa_pair(app: AgentApp, session: int, label: bytes, token: bool = True) -> tuple[int, int]:
    public = {CKA.TOKEN: token, CKA.LABEL: label, CKA.MODULUS_BITS: 2048, CKA.PUBLIC_EXPONENT: b"\x01\x00\x01"}
    private = {CKA.TOKEN: token, CKA.LABEL: label}
    public_key, private_key = app.ok("C_GenerateKeyPair", session, [CKM.RSA_PKCS_KEY_PAIR_GEN, None],
                                     app.template(public), app.template(private))
    return public_key, private_key


def attribute(app: AgentApp, session: int, handle: int, cka: int) -> bytes:
    rv, [[(value, _length)]] = app.call("C_GetAttributeValue", session, handle, [[cka, 4096]])
    assert rv == CKR.OK, hex(rv)
    return value


def public_rsa(app: AgentApp, session: int, handle: int) -> rsa.RSAPublicKey:
    modulus = int.from_bytes(attribute(app, session, handle, CKA.MODULUS), "big")
    exponent = int.from_bytes(attribute(app, session, handle, CKA.PUBLIC_EXPONENT), "big")
    return rsa.RSAPublicNumbers(exponent, modulus).public_key()


def sign(app: AgentApp, session: int, key: int, data: bytes, mechanism: int = CKM.SHA256_RSA_PKCS) -> bytes:
    app.ok("C_SignInit", session, [mechanism, None], key)
    return app.ok("C_Sign", session, data, 4096)[1]


# --- slot, token, mechanisms ----------------------------------------------------------------------------------


def test_slot_and_token(shared_cluster: LocalCluster, shared_agent: AgentProcess) -> None:
    app = shared_agent.app()
    assert app.ok("C_GetSlotList", True) == [[0]]
    (slot,) = app.ok("C_GetSlotInfo", 0)
    assert slot["flags"] & 0x1  # CKF_TOKEN_PRESENT
    (token,) = app.ok("C_GetTokenInfo", 0)
    assert token["label"] == shared_cluster.summary["token_label"].encode()
    cluster_id = shared_cluster.admin().cluster_status()["cluster_id"]
    assert token["serial"] == cluster_id.replace("-", "")[:16].encode()
    # CKF_RNG | CKF_LOGIN_REQUIRED | CKF_USER_PIN_INITIALIZED | CKF_TOKEN_INITIALIZED
    assert token["flags"] == 0x1 | 0x4 | 0x8 | 0x400
    assert len(token["utc_time"]) == 16
    assert app.call("C_GetTokenInfo", 1)[0] == CKR.SLOT_ID_INVALID
    (mechanisms,) = app.ok("C_GetMechanismList", 0)
    assert {CKM.AES_GCM, CKM.SHA256_RSA_PKCS, CKM.ECDSA, CKM.RSA_PKCS_KEY_PAIR_GEN} <= set(mechanisms)
    minimum, maximum, flags = app.ok("C_GetMechanismInfo", 0, CKM.RSA_PKCS_KEY_PAIR_GEN)
    assert (minimum, maximum) == (2048, 4096) and flags & 0x10000  # CKF_GENERATE_KEY_PAIR
    assert app.call("C_GetMechanismInfo", 0, CKM.RSA_X_509)[0] == CKR.MECHANISM_INVALID


# --- login -----------------------------------------------------------------------------------------------------


def test_login_rules(shared_cluster: LocalCluster, shared_agent: AgentProcess) -> None:
    pin = add_user(shared_cluster, "agent_login")
    app = shared_agent.app()
    assert app.call("C_OpenSession", 0, 0x2)[0] == CKR.SESSION_PARALLEL_NOT_SUPPORTED
    session = app.open_session()
    assert app.login(session, "agent_login:wrong-password") == CKR.PIN_INCORRECT
    assert app.login(session, "nobody_here:password1") == CKR.PIN_INCORRECT
    assert app.login(session, pin, CKU.SO) == CKR.PIN_INCORRECT  # a crypto user is not an SO
    assert app.ok("C_GetSessionInfo", session)[1] == CKS.RW_PUBLIC_SESSION
    assert app.login(session, pin) == CKR.OK
    assert app.ok("C_GetSessionInfo", session)[1] == CKS.RW_USER_FUNCTIONS
    assert app.login(session, pin) == CKR.USER_ALREADY_LOGGED_IN
    assert app.login(session, shared_cluster.admin_pin, CKU.SO) == CKR.USER_ANOTHER_ALREADY_LOGGED_IN
    read_only = app.open_session(rw=False)
    assert app.ok("C_GetSessionInfo", read_only)[1] == CKS.RO_USER_FUNCTIONS
    assert app.ok("C_Logout", read_only) == []
    assert app.call("C_Logout", session)[0] == CKR.USER_NOT_LOGGED_IN
    assert app.ok("C_GetSessionInfo", session)[1] == CKS.RW_PUBLIC_SESSION
    # The SO cannot log in while a read-only session is open.
    assert app.login(session, shared_cluster.admin_pin, CKU.SO) == CKR.SESSION_READ_ONLY_EXISTS
    app.ok("C_CloseSession", read_only)
    assert app.login(session, shared_cluster.admin_pin, CKU.SO) == CKR.OK
    assert app.ok("C_GetSessionInfo", session)[1] == CKS.RW_SO_FUNCTIONS
    assert app.call("C_OpenSession", 0, 0x4)[0] == CKR.SESSION_READ_WRITE_SO_EXISTS
    # Random is for every session, a public one too (PKCS#11 §6.7, issue 13 item 1); keys are not for admins.
    assert len(app.ok("C_GenerateRandom", session, 8)[0]) == 8
    assert app.call("C_GenerateKey", session, [CKM.AES_KEY_GEN, None],
                    app.template({CKA.VALUE_LEN: 32, CKA.TOKEN: True}))[0] == CKR.USER_NOT_LOGGED_IN
    app.ok("C_Logout", session)


def test_applications_have_separate_logins_and_connections_share_one(
        shared_cluster: LocalCluster, shared_agent: AgentProcess) -> None:
    pin_a = add_user(shared_cluster, "agent_app_a")
    pin_b = add_user(shared_cluster, "agent_app_b")
    app_a, session_a = logged_in(shared_agent, pin_a)
    key_a = aes_key(app_a, session_a, b"app-a-key")
    app_b = shared_agent.app()
    session_b = app_b.open_session()
    assert app_b.ok("C_GetSessionInfo", session_b)[1] == CKS.RW_PUBLIC_SESSION
    assert app_b.call("C_GetSessionInfo", session_a)[0] == CKR.SESSION_HANDLE_INVALID
    assert app_b.call("C_GetAttributeValue", session_b, key_a, [[CKA.LABEL, -1]])[0] == CKR.OBJECT_HANDLE_INVALID
    assert app_b.login(session_b, pin_b) == CKR.OK
    # B is another user: A's key is not B's.
    assert app_b.call("C_GetAttributeValue", session_b, key_a, [[CKA.LABEL, -1]])[0] == CKR.OBJECT_HANDLE_INVALID
    # A second connection of A (another thread of the same process) shares A's login and sessions.
    assert app_a.ok("C_GetSessionInfo", session_a, conn=1)[1] == CKS.RW_USER_FUNCTIONS
    other = app_a.ok("C_OpenSession", 0, 0x6, conn=1)[0]
    assert app_a.ok("C_GetSessionInfo", other, conn=0)[1] == CKS.RW_USER_FUNCTIONS
    assert attribute(app_a, other, key_a, CKA.LABEL) == b"app-a-key"
    app_a.ok("C_Logout", other, conn=1)
    assert app_a.ok("C_GetSessionInfo", session_a)[1] == CKS.RW_PUBLIC_SESSION
    assert app_b.ok("C_GetSessionInfo", session_b)[1] == CKS.RW_USER_FUNCTIONS


def test_set_pin_changes_the_own_password(shared_cluster: LocalCluster, shared_agent: AgentProcess) -> None:
    pin = add_user(shared_cluster, "agent_setpin")
    app, session = logged_in(shared_agent, pin)
    assert app.call("C_SetPIN", session, b"wrong-old", b"newpassword1")[0] == CKR.PIN_INCORRECT
    assert app.call("C_SetPIN", session, PASSWORD.encode(), b"short")[0] == CKR.PIN_LEN_RANGE
    assert app.ok("C_SetPIN", session, PASSWORD.encode(), b"agent_setpin:newpassword1") == []
    app.ok("C_Logout", session)
    assert app.login(session, pin) == CKR.PIN_INCORRECT
    assert app.login(session, "agent_setpin:newpassword1") == CKR.OK
    app.ok("C_Logout", session)
    # Without a login the old PIN names the user.
    assert app.ok("C_SetPIN", session, b"agent_setpin:newpassword1", PASSWORD.encode()) == []
    assert app.login(session, pin) == CKR.OK


# --- keys, signatures, encryption -------------------------------------------------------------------------------


def test_rsa_sign_with_size_query_and_short_buffer(shared_cluster: LocalCluster,
                                                   shared_agent: AgentProcess) -> None:
    app, session = logged_in(shared_agent, add_user(shared_cluster, "agent_rsa"))
    public_key, private_key = rsa_pair(app, session, b"rsa-signing")
    data = b"the message"
    app.ok("C_SignInit", session, [CKM.SHA256_RSA_PKCS, None], private_key)
    assert app.call("C_SignInit", session, [CKM.SHA256_RSA_PKCS, None], private_key)[0] == CKR.OPERATION_ACTIVE
    assert app.ok("C_Sign", session, data, -1) == [256, None]  # size query: the operation goes on
    assert app.call("C_Sign", session, data, 100) == (CKR.BUFFER_TOO_SMALL, [256, None])
    length, signature = app.ok("C_Sign", session, data, 256)
    assert length == 256 and len(signature) == 256
    public_rsa(app, session, public_key).verify(signature, data, padding.PKCS1v15(), hashes.SHA256())
    assert app.call("C_Sign", session, data, 256)[0] == CKR.OPERATION_NOT_INITIALIZED  # it ended

    # Multi-part signing gives the same (deterministic) PKCS#1 v1.5 signature.
    app.ok("C_SignInit", session, [CKM.SHA256_RSA_PKCS, None], private_key)
    app.ok("C_SignUpdate", session, b"the ")
    app.ok("C_SignUpdate", session, b"message")
    assert app.call("C_Sign", session, data, 256)[0] == CKR.OPERATION_ACTIVE  # not after an update…
    assert app.call("C_SignFinal", session, 256)[0] == CKR.OPERATION_NOT_INITIALIZED  # …and that ended it
    app.ok("C_SignInit", session, [CKM.SHA256_RSA_PKCS, None], private_key)
    app.ok("C_SignUpdate", session, data)
    assert app.ok("C_SignFinal", session, -1) == [256, None]
    assert app.ok("C_SignFinal", session, 256)[1] == signature

    app.ok("C_VerifyInit", session, [CKM.SHA256_RSA_PKCS, None], public_key)
    assert app.ok("C_Verify", session, data, signature) == []
    app.ok("C_VerifyInit", session, [CKM.SHA256_RSA_PKCS, None], public_key)
    assert app.call("C_Verify", session, b"another message", signature)[0] == CKR.SIGNATURE_INVALID
    assert app.call("C_Verify", session, data, signature)[0] == CKR.OPERATION_NOT_INITIALIZED
    app.ok("C_VerifyInit", session, [CKM.SHA256_RSA_PKCS, None], public_key)
    app.ok("C_VerifyUpdate", session, data)
    assert app.ok("C_VerifyFinal", session, signature) == []
    # The private key signs, it does not verify; a key handle that does not exist is a key handle error.
    assert app.call("C_SignInit", session, [CKM.SHA256_RSA_PKCS, None], public_key)[0] in (
        CKR.KEY_FUNCTION_NOT_PERMITTED, CKR.KEY_TYPE_INCONSISTENT)
    assert app.call("C_SignInit", session, [CKM.SHA256_RSA_PKCS, None], 12345)[0] == CKR.KEY_HANDLE_INVALID


def test_aes_gcm_and_multi_part_cbc(shared_cluster: LocalCluster, shared_agent: AgentProcess) -> None:
    app, session = logged_in(shared_agent, add_user(shared_cluster, "agent_aes"))
    key = aes_key(app, session, b"aes-gcm")
    plaintext = b"a secret row of a database"
    # The map the module builds from a 48-byte CK_GCM_PARAMS (pIv, ulIvLen, ulIvBits, pAAD, ulAADLen, ulTagBits).
    app.ok("C_EncryptInit", session, [CKM.AES_GCM, GCM], key)
    needed, nothing = app.ok("C_Encrypt", session, plaintext, -1)
    assert (needed, nothing) == (len(plaintext) + 16, None)
    assert app.call("C_Encrypt", session, plaintext, needed - 1) == (CKR.BUFFER_TOO_SMALL, [needed, None])
    assert app.call("C_Encrypt", session, b"other input", needed)[0] == CKR.ARGUMENTS_BAD  # not the kept one
    app.ok("C_EncryptInit", session, [CKM.AES_GCM, GCM], key)
    _, ciphertext = app.ok("C_Encrypt", session, plaintext, needed)
    app.ok("C_DecryptInit", session, [CKM.AES_GCM, GCM], key)
    assert app.ok("C_Decrypt", session, ciphertext, 1024) == [len(plaintext), plaintext]
    app.ok("C_DecryptInit", session, [CKM.AES_GCM, GCM], key)
    tampered = ciphertext[:-1] + bytes([ciphertext[-1] ^ 1])
    assert app.call("C_Decrypt", session, tampered, 1024)[0] == CKR.ENCRYPTED_DATA_INVALID
    assert app.call("C_EncryptInit", session, [CKM.AES_GCM, {"iv": b"", "aad": b"", "tag_bits": 128}],
                    key)[0] == CKR.MECHANISM_PARAM_INVALID

    # CBC-PAD in parts, with a size query on an update: an upper bound (input + a block), nothing processed
    # (PKCS#11 v2.40 §5.2 allows "somewhat" more; issue 13 item 3), so the part is processed once, by the next call.
    iv = b"\x02" * 16
    app.ok("C_EncryptInit", session, [CKM.AES_CBC_PAD, iv], key)
    assert app.ok("C_EncryptUpdate", session, b"x" * 20, -1) == [20 + 16, None]
    first = app.ok("C_EncryptUpdate", session, b"x" * 20, 64)[1]
    second = app.ok("C_EncryptUpdate", session, b"y" * 20, 64)[1]
    assert app.call("C_EncryptFinal", session, 4) == (CKR.BUFFER_TOO_SMALL, [16, None])
    last = app.ok("C_EncryptFinal", session, 16)[1]
    ciphertext = first + second + last
    assert len(ciphertext) == 48
    app.ok("C_DecryptInit", session, [CKM.AES_CBC_PAD, iv], key)
    assert app.ok("C_Decrypt", session, ciphertext, 64)[1] == b"x" * 20 + b"y" * 20

    app.ok("C_DigestInit", session, [CKM.SHA256, None])
    app.ok("C_DigestUpdate", session, b"abc")
    import hashlib

    assert app.ok("C_DigestFinal", session, 32)[1] == hashlib.sha256(b"abc").digest()
    random = app.ok("C_GenerateRandom", session, 200_000)[0]
    assert len(random) == 200_000 and len(set(random[:64])) > 16


def test_find_objects_with_a_cursor(shared_cluster: LocalCluster, shared_agent: AgentProcess) -> None:
    app, session = logged_in(shared_agent, add_user(shared_cluster, "agent_find"))
    keys = {aes_key(app, session, b"findme") for _ in range(3)}
    aes_key(app, session, b"not-me")
    search = app.template({CKA.LABEL: b"findme", CKA.CLASS: CKO.SECRET_KEY})
    app.ok("C_FindObjectsInit", session, search)
    assert app.call("C_FindObjectsInit", session, search)[0] == CKR.OPERATION_ACTIVE
    found = []
    while True:
        (chunk,) = app.ok("C_FindObjects", session, 1)
        if not chunk:
            break
        assert len(chunk) == 1
        found += chunk
    assert set(found) == keys and len(found) == 3
    app.ok("C_FindObjectsFinal", session)
    assert app.call("C_FindObjects", session, 1)[0] == CKR.OPERATION_NOT_INITIALIZED
    # An attribute the node does not know matches nothing; a class in 4 bytes is not a CK_ULONG here.
    app.ok("C_FindObjectsInit", session, [[0x80001234, b"x"]])
    assert app.ok("C_FindObjects", session, 10) == [[]]
    app.ok("C_FindObjectsFinal", session)
    assert app.call("C_FindObjectsInit", session, [[CKA.CLASS, b"\x04\x00\x00\x00"]])[0] == \
        CKR.ATTRIBUTE_VALUE_INVALID


def test_dual_function_updates(shared_cluster: LocalCluster, shared_agent: AgentProcess) -> None:
    """C_DigestEncryptUpdate, C_DecryptDigestUpdate, C_SignEncryptUpdate and C_DecryptVerifyUpdate (PKCS#11
    v2.40 §5.13, issue 13 item 9): each gives what its two operations give run apart; a size query processes
    nothing; without both operations active it is CKR_OPERATION_NOT_INITIALIZED."""
    import hashlib

    app, session = logged_in(shared_agent, add_user(shared_cluster, "agent_dual"))
    key = aes_key(app, session, b"dual", {CKA.SIGN: True, CKA.VERIFY: True, CKA.ENCRYPT: True,
                                          CKA.DECRYPT: True})
    iv = b"\x05" * 16
    parts = [b"a" * 32, b"b" * 48]
    data = b"".join(parts)
    app.ok("C_EncryptInit", session, [CKM.AES_CBC, iv], key)
    expected_ct = app.ok("C_Encrypt", session, data, 256)[1]
    app.ok("C_SignInit", session, [CKM.AES_CMAC, None], key)
    expected_mac = app.ok("C_Sign", session, data, 64)[1]
    digest = hashlib.sha256(data).digest()

    def final(name: str) -> bytes:
        return app.ok(name, session, 64)[1] or b""

    app.ok("C_DigestInit", session, [CKM.SHA256, None])
    app.ok("C_EncryptInit", session, [CKM.AES_CBC, iv], key)
    assert app.ok("C_DigestEncryptUpdate", session, parts[0], -1) == [32 + 16, None]  # a size query: a bound
    ciphertext = b"".join(app.ok("C_DigestEncryptUpdate", session, part, 256)[1] for part in parts)
    assert ciphertext + final("C_EncryptFinal") == expected_ct
    assert app.ok("C_DigestFinal", session, 32)[1] == digest

    app.ok("C_DecryptInit", session, [CKM.AES_CBC, iv], key)
    app.ok("C_DigestInit", session, [CKM.SHA256, None])
    plain = b"".join(app.ok("C_DecryptDigestUpdate", session, part, 256)[1]
                     for part in (expected_ct[:32], expected_ct[32:]))
    assert plain + final("C_DecryptFinal") == data
    assert app.ok("C_DigestFinal", session, 32)[1] == digest

    app.ok("C_SignInit", session, [CKM.AES_CMAC, None], key)
    app.ok("C_EncryptInit", session, [CKM.AES_CBC, iv], key)
    ciphertext = b"".join(app.ok("C_SignEncryptUpdate", session, part, 256)[1] for part in parts)
    assert ciphertext + final("C_EncryptFinal") == expected_ct
    assert final("C_SignFinal") == expected_mac

    app.ok("C_DecryptInit", session, [CKM.AES_CBC, iv], key)
    app.ok("C_VerifyInit", session, [CKM.AES_CMAC, None], key)
    plain = b"".join(app.ok("C_DecryptVerifyUpdate", session, part, 256)[1]
                     for part in (expected_ct[:48], expected_ct[48:]))
    assert plain + final("C_DecryptFinal") == data
    assert app.ok("C_VerifyFinal", session, expected_mac) == []

    # the pair must be active: an encryption alone is not a digest-and-encrypt
    app.ok("C_EncryptInit", session, [CKM.AES_CBC, iv], key)
    assert app.call("C_DigestEncryptUpdate", session, parts[0], 256)[0] == CKR.OPERATION_NOT_INITIALIZED
    assert app.call("C_DecryptVerifyUpdate", session, parts[0], 256)[0] == CKR.OPERATION_NOT_INITIALIZED


def test_attributes_sensitive_and_buffers(shared_cluster: LocalCluster, shared_agent: AgentProcess) -> None:
    app, session = logged_in(shared_agent, add_user(shared_cluster, "agent_attrs"))
    key = aes_key(app, session, b"attrs", {CKA.ALLOWED_MECHANISMS: [CKM.AES_GCM, CKM.AES_CBC_PAD]})
    rv, [values] = app.call("C_GetAttributeValue", session, key, [
        [CKA.LABEL, -1], [CKA.VALUE, 64], [CKA.VALUE_LEN, 8], [CKA.KEY_TYPE, 8], [CKA.SENSITIVE, 1],
        [CKA.ALLOWED_MECHANISMS, 16], [CKA.KEY_GEN_MECHANISM, 8],
    ])
    assert rv == CKR.ATTRIBUTE_SENSITIVE
    assert values[0] == [None, 5]
    assert values[1] == [None, UNAVAILABLE]
    assert values[2] == [app.ulong(32), 8]
    assert values[3] == [app.ulong(CKK.AES), 8]
    assert values[4] == [b"\x01", 1]
    assert values[5] == [app.ulong(CKM.AES_GCM) + app.ulong(CKM.AES_CBC_PAD), 16]
    assert values[6] == [app.ulong(CKM.AES_KEY_GEN), 8]
    rv, [values] = app.call("C_GetAttributeValue", session, key, [[CKA.LABEL, 2], [CKA.ID, 10]])
    assert rv == CKR.BUFFER_TOO_SMALL and values == [[None, UNAVAILABLE], [b"", 0]]
    rv, [values] = app.call("C_GetAttributeValue", session, key, [[CKA.MODULUS, 10], [CKA.LABEL, 10]])
    assert rv == CKR.ATTRIBUTE_TYPE_INVALID and values == [[None, UNAVAILABLE], [b"attrs", 5]]
    assert app.call("C_GetAttributeValue", session, 999, [[CKA.LABEL, -1]])[0] == CKR.OBJECT_HANDLE_INVALID
    assert app.ok("C_GetObjectSize", session, key) == [UNAVAILABLE]
    app.ok("C_SetAttributeValue", session, key, app.template({CKA.LABEL: b"renamed"}))
    assert attribute(app, session, key, CKA.LABEL) == b"renamed"
    assert app.call("C_SetAttributeValue", session, key, app.template({CKA.SENSITIVE: False}))[0] == \
        CKR.ATTRIBUTE_READ_ONLY
    # A secret key imported in clear (issue 13 item 7): its value reads back only when its maker made it
    # CKA_SENSITIVE false and CKA_EXTRACTABLE true (PKCS#11 §4.10).
    loose = app.ok("C_CreateObject", session, app.template(
        {CKA.CLASS: CKO.SECRET_KEY, CKA.KEY_TYPE: CKK.AES, CKA.VALUE: b"k" * 16, CKA.SENSITIVE: False,
         CKA.EXTRACTABLE: True}))[0]
    assert attribute(app, session, loose, CKA.VALUE) == b"k" * 16
    tight = app.ok("C_CreateObject", session, app.template(
        {CKA.CLASS: CKO.SECRET_KEY, CKA.KEY_TYPE: CKK.AES, CKA.VALUE: b"t" * 16, CKA.SENSITIVE: True,
         CKA.EXTRACTABLE: True}))[0]
    assert app.call("C_GetAttributeValue", session, tight, [[CKA.VALUE, 64]])[0] == CKR.ATTRIBUTE_SENSITIVE
    app.ok("C_DestroyObject", session, loose)
    app.ok("C_DestroyObject", session, tight)
    app.ok("C_DestroyObject", session, key)
    assert app.call("C_GetAttributeValue", session, key, [[CKA.LABEL, -1]])[0] == CKR.OBJECT_HANDLE_INVALID


def test_narrow_big_endian_application(shared_cluster: LocalCluster, shared_agent: AgentProcess) -> None:
    """A 32-bit big-endian application: CK_ULONG is 4 bytes in network order."""
    app, session = logged_in(shared_agent, add_user(shared_cluster, "agent_narrow"), ulong_size=4,
                             little_endian=False)
    key = aes_key(app, session, b"narrow")
    assert attribute(app, session, key, CKA.VALUE_LEN) == b"\x00\x00\x00\x20"
    assert attribute(app, session, key, CKA.CLASS) == b"\x00\x00\x00\x04"
    assert app.call("C_GenerateKey", session, [CKM.AES_KEY_GEN, None],
                    [[CKA.VALUE_LEN, (32).to_bytes(8, "big")]])[0] == CKR.ATTRIBUTE_VALUE_INVALID


def test_session_objects_and_read_only_sessions(shared_cluster: LocalCluster, shared_agent: AgentProcess) -> None:
    pin = add_user(shared_cluster, "agent_sessobj")
    app, session = logged_in(shared_agent, pin)
    read_only = app.open_session(rw=False)
    template = app.template({CKA.TOKEN: True, CKA.VALUE_LEN: 16})
    assert app.call("C_GenerateKey", read_only, [CKM.AES_KEY_GEN, None], template)[0] == CKR.SESSION_READ_ONLY
    # A session object may be made in a read-only session, and every session of the application sees it.
    key = app.ok("C_GenerateKey", read_only, [CKM.AES_KEY_GEN, None],
                 app.template({CKA.TOKEN: False, CKA.VALUE_LEN: 16, CKA.LABEL: b"ephemeral"}))[0]
    assert key >= 1 << 30
    app.ok("C_FindObjectsInit", session, app.template({CKA.LABEL: b"ephemeral"}))
    assert app.ok("C_FindObjects", session, 10) == [[key]]
    app.ok("C_FindObjectsFinal", session)
    app.ok("C_EncryptInit", session, [CKM.AES_GCM, GCM], key)
    ciphertext = app.ok("C_Encrypt", session, b"data", 100)[1]
    app.ok("C_DecryptInit", read_only, [CKM.AES_GCM, GCM], key)
    assert app.ok("C_Decrypt", read_only, ciphertext, 100)[1] == b"data"
    # Another application of the same user does not see it.
    other, other_session = logged_in(shared_agent, pin)
    assert other.call("C_GetAttributeValue", other_session, key, [[CKA.LABEL, -1]])[0] == \
        CKR.OBJECT_HANDLE_INVALID
    # Closing the session that made it destroys it.
    app.ok("C_CloseSession", read_only)
    assert app.call("C_GetAttributeValue", session, key, [[CKA.LABEL, -1]])[0] == CKR.OBJECT_HANDLE_INVALID


def test_wrap_and_unwrap(shared_cluster: LocalCluster, shared_agent: AgentProcess) -> None:
    app, session = logged_in(shared_agent, add_user(shared_cluster, "agent_wrap"))
    kek = aes_key(app, session, b"kek")
    target = aes_key(app, session, b"exportable", {CKA.EXTRACTABLE: True})
    locked = aes_key(app, session, b"locked")
    mechanism = [CKM.AES_KEY_WRAP, None]
    assert app.ok("C_WrapKey", session, mechanism, kek, target, -1) == [40, None]
    assert app.call("C_WrapKey", session, mechanism, kek, target, 8) == (CKR.BUFFER_TOO_SMALL, [40, None])
    wrapped = app.ok("C_WrapKey", session, mechanism, kek, target, 40)[1]
    assert len(wrapped) == 40
    assert app.call("C_WrapKey", session, mechanism, kek, locked, 64)[0] == CKR.KEY_UNEXTRACTABLE
    assert app.call("C_WrapKey", session, mechanism, 4242, target, 64)[0] == CKR.WRAPPING_KEY_HANDLE_INVALID
    assert app.call("C_WrapKey", session, mechanism, kek, 4242, 64)[0] == CKR.KEY_HANDLE_INVALID
    unwrapped = app.ok("C_UnwrapKey", session, mechanism, kek, wrapped, app.template(
        {CKA.CLASS: CKO.SECRET_KEY, CKA.KEY_TYPE: CKK.AES, CKA.TOKEN: False, CKA.LABEL: b"copy"}))[0]
    assert attribute(app, session, unwrapped, CKA.CHECK_VALUE) == attribute(app, session, target, CKA.CHECK_VALUE)
    assert app.call("C_UnwrapKey", session, mechanism, 4242, wrapped, app.template(
        {CKA.CLASS: CKO.SECRET_KEY, CKA.KEY_TYPE: CKK.AES}))[0] == 0xF0  # CKR_UNWRAPPING_KEY_HANDLE_INVALID


def test_concurrent_connections_of_one_application(shared_cluster: LocalCluster,
                                                   shared_agent: AgentProcess) -> None:
    """Threads of one process each use their own connection of the module's pool, all pipelined
    over the agent's connection to the node."""
    from concurrent.futures import ThreadPoolExecutor

    app, session = logged_in(shared_agent, add_user(shared_cluster, "agent_threads"))
    public_key, private_key = rsa_pair(app, session, b"threads")
    verifier = public_rsa(app, session, public_key)

    def worker(index: int) -> int:
        own = app.ok("C_OpenSession", 0, 0x6, conn=index)[0]
        for round_ in range(5):
            message = f"thread {index} round {round_}".encode()
            app.ok("C_SignInit", own, [CKM.SHA256_RSA_PKCS, None], private_key, conn=index)
            signature = app.ok("C_Sign", own, message, 256, conn=index)[1]
            verifier.verify(signature, message, padding.PKCS1v15(), hashes.SHA256())
        return own

    with ThreadPoolExecutor(8) as pool:
        sessions = list(pool.map(worker, range(1, 9)))
    assert len(set(sessions)) == 8


def requests_per_worker(cluster: LocalCluster, workers: set[int]) -> dict[int, int]:
    """node.status's request counter of every worker, through fresh connections (each one lands
    on a worker the kernel chooses) until every worker has answered."""
    from strongroom.client import Client

    seen: dict[int, int] = {}
    for _ in range(200):
        with Client.from_dir(cluster.dir, timeout=30) as client:
            status = client.node_status()
        seen[int(status["pid"])] = int(status["requests"])
        if set(seen) >= workers:
            return seen
    raise AssertionError(f"only workers {sorted(seen)} of {sorted(workers)} answered")


def test_one_agent_uses_every_worker_of_the_node(shared_cluster: LocalCluster,
                                                 shared_agent: AgentProcess) -> None:
    """The node runs 2 worker processes: the agent keeps a link on each, and the stateless
    single-part calls of one application with several threads are served by both."""
    from concurrent.futures import ThreadPoolExecutor

    supervisor = int((shared_cluster.node_dir / "node.pid").read_text())
    workers = shared_cluster.node_pids() - {supervisor}
    assert len(workers) == shared_cluster.workers == 2
    connected = re.findall(r"\(link (\S+), connection \d+, worker (\d+)\)", shared_agent.log.read_text())
    latest = {key: int(pid) for key, pid in connected}  # the current connection of every link
    assert set(latest.values()) == workers, latest

    app, session = logged_in(shared_agent, add_user(shared_cluster, "agent_workers"))
    private_key = app.ok("C_GenerateKeyPair", session, [CKM.EC_KEY_PAIR_GEN, None],
                         app.template({CKA.TOKEN: True, CKA.EC_PARAMS: bytes.fromhex("06082a8648ce3d030107")}),
                         app.template({CKA.TOKEN: True, CKA.SIGN: True}))[1]
    sign(app, session, private_key, b"\x01" * 32, CKM.ECDSA)  # the node checks the init shape once
    before = requests_per_worker(shared_cluster, workers)
    rounds = 40

    def signer(index: int) -> None:
        own = app.ok("C_OpenSession", 0, 0x6, conn=index)[0]
        for _ in range(rounds):
            app.ok("C_SignInit", own, [CKM.ECDSA, None], private_key, conn=index)
            assert len(app.ok("C_Sign", own, b"\x02" * 32, 64, conn=index)[1]) == 64

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(signer, range(1, 9)))
    after = requests_per_worker(shared_cluster, workers)
    served = {pid: after[pid] - before[pid] for pid in workers}
    # 320 one-request signatures (plus a login per worker, health checks and these probes); each
    # worker took a real share, not just health checks.
    assert sum(served.values()) >= 8 * rounds and min(served.values()) >= 8 * rounds // 10, served


def test_ec_keys(shared_cluster: LocalCluster, shared_agent: AgentProcess) -> None:
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

    app, session = logged_in(shared_agent, add_user(shared_cluster, "agent_ec"))
    p256 = bytes.fromhex("06082a8648ce3d030107")
    public_key, private_key = app.ok("C_GenerateKeyPair", session, [CKM.EC_KEY_PAIR_GEN, None],
                                     app.template({CKA.TOKEN: True, CKA.EC_PARAMS: p256}),
                                     app.template({CKA.TOKEN: True}))
    point = attribute(app, session, public_key, CKA.EC_POINT)
    assert point[0] == 0x04 and point[1] == 65  # DER OCTET STRING around the uncompressed point
    verifier = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point[2:])
    app.ok("C_SignInit", session, [CKM.ECDSA_SHA256, None], private_key)
    assert app.ok("C_Sign", session, b"ec message", -1) == [64, None]
    signature = app.ok("C_Sign", session, b"ec message", 64)[1]
    r, s = int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
    verifier.verify(encode_dss_signature(r, s), b"ec message", ec.ECDSA(hashes.SHA256()))
    *_, flags = app.ok("C_GetMechanismInfo", 0, CKM.ECDSA)
    assert flags & 0x800 and flags & 0x800000  # CKF_SIGN, CKF_EC_NAMEDCURVE


def test_protocol_errors_do_not_hurt_the_agent(shared_agent: AgentProcess) -> None:
    from tests.integration.agent_client import HEADER, AgentConnection

    raw = AgentConnection(shared_agent.socket)
    assert raw.call("C_GetSlotList", True) == (CKR.CRYPTOKI_NOT_INITIALIZED, [])
    # Its one output: whether the agent knew the application (False: a new one; docs/agent-protocol.md).
    assert raw.call("C_Initialize", b"x" * 16, 1, 8, True) == (CKR.OK, [False])
    assert raw.call("C_NoSuchFunction") == (CKR.FUNCTION_NOT_SUPPORTED, [])
    assert raw.call("C_GetSlotInfo") == (CKR.ARGUMENTS_BAD, [])
    assert raw.call("C_CloseSession", 77777) == (CKR.SESSION_HANDLE_INVALID, [])
    import msgpack

    big = msgpack.packb([1, 42, "C_Sign", [1, b"x" * (10 << 20), -1]], use_bin_type=True)  # above 9 MiB
    raw.send_raw(HEADER.pack(len(big)) + big)
    assert raw.read_reply() == (42, CKR.DATA_LEN_RANGE, [])  # answered, then closed
    with pytest.raises(ConnectionError):
        raw.read_reply()
    raw.close()
    garbage = AgentConnection(shared_agent.socket)
    garbage.send_raw(HEADER.pack(2) + b"\xc1\xc1")
    with pytest.raises(ConnectionError):
        garbage.read_reply()
    garbage.close()
    assert shared_agent.app().ok("C_GetSlotList", True) == [[0]]


# --- failures: node restart, login expiry, agent restart ---------------------------------------------------------


def kill_node(cluster: LocalCluster) -> None:
    pid = int((cluster.node_dir / "node.pid").read_text())
    group = os.getpgid(pid)
    os.killpg(group, signal.SIGKILL)
    deadline = time.monotonic() + 15
    while process_group_members(group) and time.monotonic() < deadline:
        time.sleep(0.05)


def test_node_killed_and_restarted(cluster: LocalCluster, agent: AgentProcess) -> None:
    app, session = logged_in(agent, add_user(cluster, "agent_restart"))
    public_key, private_key = rsa_pair(app, session, b"survivor")
    aes = aes_key(app, session, b"aes-survivor")
    verifier = public_rsa(app, session, public_key)
    ephemeral = app.ok("C_GenerateKey", session, [CKM.AES_KEY_GEN, None],
                       app.template({CKA.TOKEN: False, CKA.VALUE_LEN: 16}))[0]
    other = app.open_session()
    app.ok("C_SignInit", session, [CKM.SHA256_RSA_PKCS, None], private_key)  # initialized, no data yet
    app.ok("C_EncryptInit", other, [CKM.AES_CBC_PAD, b"\x00" * 16], aes)
    app.ok("C_EncryptUpdate", other, b"z" * 32, 64)  # a multi-part operation with state on the node
    app.ok("C_FindObjectsInit", session, app.template({CKA.LABEL: b"survivor"}))

    kill_node(cluster)
    # While no node answers, calls fail after a short wait (timeouts.reconnect_wait) with DEVICE_REMOVED.
    started = time.monotonic()
    assert app.call("C_GetAttributeValue", session, public_key, [[CKA.LABEL, -1]])[0] == CKR.DEVICE_REMOVED
    assert time.monotonic() - started < 15
    cluster.up()

    # The next calls succeed after a transparent re-login on a new connection.
    assert attribute(app, session, public_key, CKA.LABEL) == b"survivor"
    assert len(app.ok("C_GenerateRandom", session, 32)[0]) == 32
    # The sign operation had taken no data: it is re-created on the new node session.
    signature = app.ok("C_Sign", session, b"after the restart", 256)[1]
    verifier.verify(signature, b"after the restart", padding.PKCS1v15(), hashes.SHA256())
    # The find cursor lives in the agent.
    assert sorted(app.ok("C_FindObjects", session, 10)[0]) == sorted([public_key, private_key])
    app.ok("C_FindObjectsFinal", session)
    # The multi-part encryption's state died with the node: the call fails and the operation ends.
    assert app.call("C_EncryptUpdate", other, b"z" * 32, 64)[0] == CKR.FUNCTION_FAILED
    assert app.call("C_EncryptFinal", other, 64)[0] == CKR.OPERATION_NOT_INITIALIZED
    # Session objects died with it too.
    assert app.call("C_EncryptInit", other, [CKM.AES_GCM, GCM], ephemeral)[0] == CKR.KEY_HANDLE_INVALID
    assert app.call("C_GetAttributeValue", session, ephemeral, [[CKA.LABEL, -1]])[0] == CKR.OBJECT_HANDLE_INVALID
    # And everything else works as before.
    assert len(sign(app, other, private_key, b"again")) == 256
    assert app.ok("C_GetSessionInfo", session)[1] == CKS.RW_USER_FUNCTIONS


def test_expired_login_is_renewed(cluster: LocalCluster) -> None:
    pin = add_user(cluster, "agent_idle")
    document = tomllib.loads(cluster.config_path.read_text())
    document["limits"]["session_idle_seconds"] = 2.0
    cluster.config_path.write_text(tomli_w.dumps(document))
    cluster.down()
    cluster.up()
    process = AgentProcess(cluster.dir)
    process.start()
    idle = 2.5  # the node forgets an idle login, and its PKCS#11 sessions with it
    try:
        app, session = logged_in(process, pin)
        public_key, private_key = rsa_pair(app, session, b"idle")
        aes = aes_key(app, session, b"idle-aes")
        verifier = public_rsa(app, session, public_key)
        app.ok("C_SignInit", session, [CKM.SHA256_RSA_PKCS, None], private_key)
        time.sleep(idle)
        assert attribute(app, session, public_key, CKA.LABEL) == b"idle"  # stateless: re-login, retry
        time.sleep(idle)
        signature = app.ok("C_Sign", session, b"later", 256)[1]  # stateful: re-login, re-create, go on
        verifier.verify(signature, b"later", padding.PKCS1v15(), hashes.SHA256())

        # The node itself refuses the stale login of a node session the agent still trusts.
        app.ok("C_SignInit", session, [CKM.SHA256_RSA_PKCS, None], private_key)
        other = app.open_session()
        app.ok("C_EncryptInit", other, [CKM.AES_CBC_PAD, b"\x00" * 16], aes)
        app.ok("C_EncryptUpdate", other, b"z" * 32, 64)
        time.sleep(idle)
        signature = app.ok("C_Sign", session, b"even later", 256)[1]
        verifier.verify(signature, b"even later", padding.PKCS1v15(), hashes.SHA256())
        assert app.call("C_EncryptUpdate", other, b"z" * 16, 64)[0] == CKR.FUNCTION_FAILED
        assert app.ok("C_GetSessionInfo", session)[1] == CKS.RW_USER_FUNCTIONS
        log = process.log.read_text()
        assert "forgot the login" in log and "re-creating the sign operation" in log

        # C_SetPIN updates the held password: later transparent logins use the new one.
        app.ok("C_SetPIN", session, PASSWORD.encode(), b"newpassword2")
        time.sleep(idle)
        assert len(app.ok("C_GenerateRandom", session, 8)[0]) == 8

        # A password changed elsewhere: one refused re-login, then no more attempts (no lockout).
        admin = cluster.admin()
        admin.user_change_password("agent_idle", "thirdpassword3")
        time.sleep(idle)
        assert app.call("C_GenerateRandom", session, 8)[0] == CKR.USER_NOT_LOGGED_IN
        assert app.call("C_GetAttributeValue", session, public_key, [[CKA.LABEL, -1]])[0] == \
            CKR.OBJECT_HANDLE_INVALID
        assert app.call("C_SignInit", session, [CKM.SHA256_RSA_PKCS, None], private_key)[0] == \
            CKR.USER_NOT_LOGGED_IN
        users = {u["username"]: u for u in cluster.admin().user_list()}  # (its own login idled out)
        assert users["agent_idle"]["failed_logins"] == 1 and not users["agent_idle"]["locked"]
        app.ok("C_Logout", session)
        assert app.login(session, "agent_idle:thirdpassword3") == CKR.OK
        assert len(app.ok("C_GenerateRandom", session, 8)[0]) == 8
    finally:
        process.close()


def test_agent_restart(cluster: LocalCluster, agent: AgentProcess) -> None:
    pin = add_user(cluster, "agent_gone")
    app, session = logged_in(agent, pin)
    key = aes_key(app, session, b"persists")
    assert agent.stop(signal.SIGTERM) == 0
    assert not Path(agent.socket).exists()  # SIGTERM removes the socket
    agent.start()
    # The agent that held this application's state is gone: the module reports the device removed…
    assert app.call("C_GetSessionInfo", session)[0] == CKR.DEVICE_REMOVED
    assert app.call("C_GetSessionInfo", session)[0] == CKR.CRYPTOKI_NOT_INITIALIZED
    # …until the application initializes again and logs in again.
    app.reinitialize()
    session = app.open_session()
    assert app.login(session, pin) == CKR.OK
    assert attribute(app, session, key, CKA.LABEL) == b"persists"
    # A SIGKILLed agent leaves its socket behind; the next one replaces it.
    agent.stop(signal.SIGKILL)
    assert Path(agent.socket).exists()
    agent.start()
    fresh, fresh_session = logged_in(agent, pin)
    assert attribute(fresh, fresh_session, key, CKA.LABEL) == b"persists"


def test_local_helpers_for_up_down_status(cluster: LocalCluster) -> None:
    """What `strongroom up/down/status` call: start, check and stop the agent of a directory."""
    from strongroom.local.agent import agent_status, start_agent

    stop_agent(cluster.dir)  # in case `up` started one
    assert agent_status(cluster.dir)["health"] == "stopped"
    pid = start_agent(cluster.dir)
    assert start_agent(cluster.dir) == pid  # already running: left alone
    status = agent_status(cluster.dir)
    assert status == {"pid": pid, "socket": str(cluster.dir.resolve() / "agent.sock"), "health": "running"}
    pin = add_user(cluster, "agent_local")
    app = AgentApp(status["socket"])
    session = app.open_session()
    assert app.login(session, pin) == CKR.OK
    assert len(app.ok("C_GenerateRandom", session, 16)[0]) == 16
    app.close()
    assert stop_agent(cluster.dir) == pid
    assert agent_status(cluster.dir)["health"] == "stopped"
    assert not Path(status["socket"]).exists()
    assert stop_agent(cluster.dir) is None
