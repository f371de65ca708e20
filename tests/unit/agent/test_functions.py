"""The agent's function table and the rules it applies without asking a node.

A fake agent without node connections: everything here is decided by the agent
itself (arguments, session and login rules, return-value lists).
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import pytest

from strongroom.agent.attrcodec import Layout
from strongroom.agent.config import AgentConfig
from strongroom.agent.functions import FUNCTIONS, dispatch, registry
from strongroom.agent.functions.common import deliver
from strongroom.agent.nodes import Identity, Logins, NodeUnavailable
from strongroom.agent.returns import ALLOWED, UNIVERSAL, allowed, finish, translate
from strongroom.agent.runtime import Agent
from strongroom.agent.state import Pending
from strongroom.client.profile import NodeAddress
from strongroom.constants import CKF, CKS, CKU
from strongroom.errors import CKR

ROOT = Path(__file__).resolve().parents[3]
SERIAL_RW = CKF.SERIAL_SESSION | CKF.RW_SESSION


class FakeConnection:
    def __init__(self, uid: int | None = 1000) -> None:
        self.app = None
        self.peer_uid = uid
        self.peer_pid = 4242


class NoNodes:
    """A node pool whose nodes never answer: what the agent decides alone."""

    def __init__(self) -> None:
        self.links: list[Any] = []

    async def acquire(self, *_args: Any, **_kwargs: Any) -> Any:
        raise NodeUnavailable("no node in this test")


def make_agent() -> Agent:
    config = AgentConfig(socket=Path("/tmp/x.sock"), ca=Path("ca"), cert=Path("c"), key=Path("k"),
                         nodes=(NodeAddress("node1", "127.0.0.1", 1),), slot_id=3)
    return Agent(config, pool=NoNodes())  # type: ignore[arg-type]


class Harness:
    def __init__(self) -> None:
        self.agent = make_agent()
        self.conn = FakeConnection()

    def call(self, function: str, *args: Any, conn: FakeConnection | None = None) -> tuple[int, list[Any]]:
        return asyncio.run(dispatch(self.agent, conn or self.conn, function, list(args)))

    def init(self, app_id: bytes = b"A" * 16, conn: FakeConnection | None = None) -> None:
        rv, _ = self.call("C_Initialize", app_id, 1, 8, True, conn=conn)
        assert rv == CKR.OK

    def log_in_locally(self, user_type: int = CKU.USER) -> None:
        app = self.conn.app
        role = "crypto-user" if user_type == CKU.USER else "admin"
        app.logins = Logins(Identity("alice", bytearray(b"pw"), role, user_type))


@pytest.fixture
def h() -> Harness:
    return Harness()


# --- the table and the return-value lists --------------------------------------------------------


def test_every_forwarded_function_of_the_protocol_is_registered() -> None:
    text = (ROOT / "docs" / "agent-protocol.md").read_text()
    table = text.split("Forwarded (args → outputs):")[1].split("## Limits")[0]
    names: set[str] = set()
    for row in table.splitlines():
        if row.startswith(("| `C_", "| `X_")):  # X_*: the module's own requests
            names |= set(re.findall(r"`([CX]_\w+)`", row.split("|")[1]))
    assert names == set(FUNCTIONS)


def test_every_function_has_a_return_value_list() -> None:
    assert set(FUNCTIONS) <= set(ALLOWED)
    for name in FUNCTIONS:
        assert CKR.OK in allowed(name)


def test_codes_outside_the_list_become_function_failed() -> None:
    assert finish("C_Sign", CKR.KEY_HANDLE_INVALID) == CKR.FUNCTION_FAILED
    assert finish("C_SignInit", CKR.KEY_HANDLE_INVALID) == CKR.KEY_HANDLE_INVALID
    assert finish("C_Encrypt", CKR.USER_NOT_LOGGED_IN) == CKR.FUNCTION_FAILED
    assert finish("C_GetSlotInfo", CKR.DEVICE_REMOVED) == CKR.FUNCTION_FAILED
    assert UNIVERSAL <= allowed("C_DestroyObject")


def test_node_codes_are_translated_per_function() -> None:
    assert translate("C_Login", CKR.CRYPTOKI_NOT_INITIALIZED) == CKR.USER_PIN_NOT_INITIALIZED
    assert translate("C_Sign", CKR.CRYPTOKI_NOT_INITIALIZED) == CKR.DEVICE_ERROR
    assert translate("C_SignInit", CKR.OBJECT_HANDLE_INVALID) == CKR.KEY_HANDLE_INVALID
    assert translate("C_GetAttributeValue", CKR.OBJECT_HANDLE_INVALID) == CKR.OBJECT_HANDLE_INVALID
    assert translate("C_UnwrapKey", CKR.KEY_HANDLE_INVALID) == 0xF0  # UNWRAPPING_KEY_HANDLE_INVALID
    assert translate("C_WrapKey", CKR.KEY_TYPE_INCONSISTENT) == CKR.WRAPPING_KEY_TYPE_INCONSISTENT
    assert translate("C_Decrypt", CKR.DATA_LEN_RANGE) == CKR.ENCRYPTED_DATA_LEN_RANGE
    assert translate("C_CreateObject", CKR.ACTION_PROHIBITED) == CKR.ATTRIBUTE_VALUE_INVALID
    assert translate("C_OpenSession", CKR.SESSION_COUNT) == CKR.DEVICE_MEMORY
    for function, codes in ALLOWED.items():
        for code in codes:  # a code already allowed is never translated into one that is not
            assert finish(function, translate(function, code)) == translate(function, code), (function, code)


# --- dispatch -------------------------------------------------------------------------------------


def test_unknown_function_and_uninitialized_connection(h: Harness) -> None:
    assert h.call("C_Frobnicate") == (CKR.FUNCTION_NOT_SUPPORTED, [])
    assert h.call("C_GetSlotList", True) == (CKR.CRYPTOKI_NOT_INITIALIZED, [])
    h.init()
    assert h.call("C_GetSlotList", True) == (CKR.OK, [[3]])
    assert h.call("C_Initialize", b"A" * 16, 1, 8, True)[0] == CKR.CRYPTOKI_ALREADY_INITIALIZED


def test_argument_checks(h: Harness) -> None:
    assert h.call("C_Initialize", b"short", 1, 8, True)[0] == CKR.ARGUMENTS_BAD
    assert h.call("C_Initialize", b"A" * 16, 1, 2, True)[0] == CKR.ARGUMENTS_BAD
    h.init()
    assert h.call("C_GetSlotList")[0] == CKR.ARGUMENTS_BAD
    assert h.call("C_GetSlotInfo", -1)[0] == CKR.ARGUMENTS_BAD
    assert h.call("C_GetSlotInfo", True)[0] == CKR.ARGUMENTS_BAD
    assert h.call("C_GetSlotInfo", 0)[0] == CKR.SLOT_ID_INVALID
    assert h.call("C_Sign", 1, "text", -1)[0] == CKR.ARGUMENTS_BAD
    assert h.call("C_EncryptInit", 1, [1], 2)[0] == CKR.ARGUMENTS_BAD
    assert h.call("C_EncryptInit", 1, [1, {"iv": 1.5}], 2)[0] == CKR.ARGUMENTS_BAD
    assert h.call("C_GetAttributeValue", 1, 2, [[3, -2]])[0] == CKR.ARGUMENTS_BAD


def test_unexpected_exceptions_become_general_error(h: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    async def broken(ctx: Any, slot: int) -> list[Any]:
        raise RuntimeError("boom")

    spec = FUNCTIONS["C_GetSlotInfo"]
    monkeypatch.setitem(FUNCTIONS, "C_GetSlotInfo", registry.Spec(spec.name, broken, spec.args, True))
    h.init()
    assert h.call("C_GetSlotInfo", 3) == (CKR.GENERAL_ERROR, [])


def test_mechanisms_when_no_node_ever_answered_are_unknown_and_say_so(h: Harness) -> None:
    h.init()
    assert h.call("C_GetMechanismList", 3)[0] == CKR.DEVICE_REMOVED
    assert h.call("C_GetMechanismInfo", 3, 0x1087)[0] == CKR.DEVICE_REMOVED  # CKM_AES_GCM


def test_slot_info(h: Harness) -> None:
    h.init()
    rv, (info,) = h.call("C_GetSlotInfo", 3)
    assert rv == CKR.OK
    assert info["flags"] & CKF.TOKEN_PRESENT
    assert info["description"].startswith(b"Strongroom cluster")


# --- sessions and login state ------------------------------------------------------------------------


def test_open_session_rules(h: Harness) -> None:
    h.init()
    assert h.call("C_OpenSession", 3, CKF.RW_SESSION)[0] == CKR.SESSION_PARALLEL_NOT_SUPPORTED
    assert h.call("C_OpenSession", 0, SERIAL_RW)[0] == CKR.SLOT_ID_INVALID
    rv, (rw,) = h.call("C_OpenSession", 3, SERIAL_RW)
    rv2, (ro,) = h.call("C_OpenSession", 3, CKF.SERIAL_SESSION)
    assert rv == rv2 == CKR.OK and rw != ro
    assert h.call("C_GetSessionInfo", rw) == (CKR.OK, [3, CKS.RW_PUBLIC_SESSION, SERIAL_RW, 0])
    assert h.call("C_GetSessionInfo", ro) == (CKR.OK, [3, CKS.RO_PUBLIC_SESSION, CKF.SERIAL_SESSION, 0])
    assert h.call("C_GetSessionInfo", 999999)[0] == CKR.SESSION_HANDLE_INVALID
    assert h.call("C_CloseSession", ro) == (CKR.OK, [])
    assert h.call("C_CloseSession", ro)[0] == CKR.SESSION_HANDLE_INVALID


def test_login_rules_without_a_node(h: Harness) -> None:
    h.init()
    _, (rw,) = h.call("C_OpenSession", 3, SERIAL_RW)
    _, (ro,) = h.call("C_OpenSession", 3, CKF.SERIAL_SESSION)
    assert h.call("C_Login", rw, 7, b"alice:pw")[0] == CKR.USER_TYPE_INVALID
    assert h.call("C_Login", rw, CKU.USER, b"no-colon")[0] == CKR.PIN_INCORRECT
    assert h.call("C_Login", rw, CKU.USER, b"\xff:x")[0] == CKR.PIN_INCORRECT
    assert h.call("C_Login", rw, CKU.SO, b"admin:pw")[0] == CKR.SESSION_READ_ONLY_EXISTS
    assert h.call("C_Login", rw, CKU.CONTEXT_SPECIFIC, b"x")[0] == CKR.OPERATION_NOT_INITIALIZED
    assert h.call("C_Logout", rw)[0] == CKR.USER_NOT_LOGGED_IN
    h.log_in_locally(CKU.USER)
    assert h.call("C_Login", ro, CKU.USER, b"alice:pw")[0] == CKR.USER_ALREADY_LOGGED_IN
    assert h.call("C_Login", ro, CKU.SO, b"admin:pw")[0] == CKR.USER_ANOTHER_ALREADY_LOGGED_IN
    assert h.call("C_GetSessionInfo", rw)[1][1] == CKS.RW_USER_FUNCTIONS
    assert h.call("C_GetSessionInfo", ro)[1][1] == CKS.RO_USER_FUNCTIONS


def test_so_state(h: Harness) -> None:
    h.init()
    _, (rw,) = h.call("C_OpenSession", 3, SERIAL_RW)
    h.log_in_locally(CKU.SO)
    assert h.call("C_GetSessionInfo", rw)[1][1] == CKS.RW_SO_FUNCTIONS
    assert h.call("C_OpenSession", 3, CKF.SERIAL_SESSION)[0] == CKR.SESSION_READ_WRITE_SO_EXISTS
    # The SO makes no objects (its cryptography is a public session's: the node decides, issue 13).
    assert h.call("C_CreateObject", rw, [])[0] == CKR.USER_NOT_LOGGED_IN
    assert h.call("C_CopyObject", rw, 5, [])[0] == CKR.USER_NOT_LOGGED_IN


def test_public_session_makes_no_token_objects(h: Harness) -> None:
    """What a session that is not logged in may see and use is the node's to say (its anonymous login, issue
    13); the agent itself refuses only token objects (they need an owner account) and calls without their
    operation."""
    h.init()
    _, (s,) = h.call("C_OpenSession", 3, SERIAL_RW)
    assert h.call("C_FindObjects", s, 10)[0] == CKR.OPERATION_NOT_INITIALIZED
    assert h.call("C_FindObjectsFinal", s)[0] == CKR.OPERATION_NOT_INITIALIZED
    token = [[1, b"\x01"]]
    assert h.call("C_CreateObject", s, token)[0] == CKR.USER_NOT_LOGGED_IN
    assert h.call("C_GenerateKey", s, [0x1080, None], token)[0] == CKR.USER_NOT_LOGGED_IN
    assert h.call("C_GenerateKeyPair", s, [0, None], token, token)[0] == CKR.USER_NOT_LOGGED_IN
    assert h.call("C_Sign", s, b"x", -1)[0] == CKR.OPERATION_NOT_INITIALIZED
    assert h.call("C_VerifyFinal", s, b"x")[0] == CKR.OPERATION_NOT_INITIALIZED
    assert h.call("C_GenerateRandom", s, 0) == (CKR.OK, [b""])
    assert h.call("C_SeedRandom", s, b"seed")[0] == CKR.RANDOM_SEED_NOT_SUPPORTED
    assert h.call("C_SeedRandom", s + 1000, b"seed")[0] == CKR.SESSION_HANDLE_INVALID
    # Anything else asks a node (none here).
    assert h.call("C_DigestInit", s, [0x250, None])[0] == CKR.DEVICE_REMOVED


def test_read_only_session_refuses_token_objects(h: Harness) -> None:
    h.init()
    _, (ro,) = h.call("C_OpenSession", 3, CKF.SERIAL_SESSION)
    h.log_in_locally(CKU.USER)
    token = [[1, b"\x01"]]
    assert h.call("C_CreateObject", ro, token)[0] == CKR.SESSION_READ_ONLY
    assert h.call("C_GenerateKey", ro, [0x1080, None], token)[0] == CKR.SESSION_READ_ONLY
    assert h.call("C_GenerateKeyPair", ro, [0, None], [], token)[0] == CKR.SESSION_READ_ONLY
    assert h.call("C_DestroyObject", ro, 12345)[0] == CKR.SESSION_READ_ONLY
    assert h.call("C_SetAttributeValue", ro, 12345, [])[0] == CKR.SESSION_READ_ONLY
    assert h.call("C_SetPIN", ro, b"a:b", b"c")[0] == CKR.SESSION_READ_ONLY


def test_gcm_encryption_needs_an_iv(h: Harness) -> None:
    h.init()
    _, (s,) = h.call("C_OpenSession", 3, SERIAL_RW)
    h.log_in_locally(CKU.USER)
    rv, _ = h.call("C_EncryptInit", s, [0x1087, {"iv": b"", "aad": b"", "tag_bits": 128}], 5)
    assert rv == CKR.MECHANISM_PARAM_INVALID


def test_applications_are_separate_and_connections_share(h: Harness) -> None:
    h.init(b"A" * 16)
    second = FakeConnection()
    h.init(b"A" * 16, conn=second)
    other = FakeConnection()
    h.init(b"B" * 16, conn=other)
    assert h.conn.app is second.app is not other.app
    _, (s,) = h.call("C_OpenSession", 3, SERIAL_RW)
    assert h.call("C_GetSessionInfo", s, conn=second)[0] == CKR.OK
    assert h.call("C_GetSessionInfo", s, conn=other)[0] == CKR.SESSION_HANDLE_INVALID
    # Another user id cannot join an application.
    stranger = FakeConnection(uid=0)
    assert h.call("C_Initialize", b"A" * 16, 1, 8, True, conn=stranger)[0] == CKR.ARGUMENTS_BAD
    # Another CK_ULONG layout cannot either.
    assert h.call("C_Initialize", b"A" * 16, 1, 4, True, conn=FakeConnection())[0] == CKR.ARGUMENTS_BAD
    assert h.call("C_Finalize", conn=second) == (CKR.OK, [])
    assert h.call("C_GetSessionInfo", s)[0] == CKR.CRYPTOKI_NOT_INITIALIZED
    assert h.call("C_GetSessionInfo", s, conn=second)[0] == CKR.CRYPTOKI_NOT_INITIALIZED


def test_close_all_sessions_returns_to_public(h: Harness) -> None:
    h.init()
    _, (s,) = h.call("C_OpenSession", 3, SERIAL_RW)
    h.log_in_locally(CKU.USER)
    assert h.call("C_CloseAllSessions", 3) == (CKR.OK, [])
    assert h.conn.app.logins is None
    _, (s,) = h.call("C_OpenSession", 3, SERIAL_RW)
    assert h.call("C_GetSessionInfo", s)[1][1] == CKS.RW_PUBLIC_SESSION


# --- the output convention ------------------------------------------------------------------------


class Holder:
    pending: Pending | None = None


def test_deliver_keeps_the_output_across_size_queries_and_short_buffers() -> None:
    holder = Holder()
    pending = Pending("C_Sign", b"fp", b"x" * 10, True)
    assert deliver(holder, "pending", pending, -1) == [10, None]
    assert holder.pending is pending
    result = deliver(holder, "pending", pending, 9)
    assert isinstance(result, registry.Result) and result.rv == CKR.BUFFER_TOO_SMALL
    assert result.outputs == [10, None] and holder.pending is pending
    assert deliver(holder, "pending", pending, 10) == [10, b"x" * 10]
    assert holder.pending is None


def test_layout_helpers() -> None:
    assert Layout(4, False).pack(1) == b"\x00\x00\x00\x01"
    assert Layout(8, True).attribute_size == 24
    with pytest.raises(ValueError):
        Layout(2, True)
