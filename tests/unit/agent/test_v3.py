"""The agent's PKCS#11 3.x functions, what they decide without a node (issue 17): message-based AES-GCM's IV
generation and parameter checks, the rules of message contexts, C_LoginUser's user name, C_SessionCancel,
C_EncapsulateKey without a key to ask about."""

from __future__ import annotations

from typing import Any

import pytest

from strongroom.agent.functions.message import (
    CKG_GENERATE,
    CKG_GENERATE_COUNTER,
    CKG_GENERATE_COUNTER_XOR,
    CKG_GENERATE_RANDOM,
    CKG_NO_GENERATE,
    MESSAGE_PARAMS,
    MessageContext,
    MessageParams,
    next_iv,
)
from strongroom.agent.returns import AgentError
from strongroom.constants import CKF, CKM, CKU
from strongroom.errors import CKR

from .test_functions import SERIAL_RW, Harness

IV = bytes.fromhex("a1b2c3d4e5f60718293a4b5c")


def params(generator: int, fixed_bits: int = 0, iv: bytes = IV) -> MessageParams:
    return MessageParams(iv, fixed_bits, generator, 128, None)


def wire(**changes: Any) -> dict[str, Any]:
    value: dict[str, Any] = {"iv": IV, "iv_fixed_bits": 0, "generator": 0, "tag_bits": 128, "tag": None}
    value.update(changes)
    return value


def test_iv_generators() -> None:
    context = MessageContext("encrypt", CKM.AES_GCM, 5)
    assert next_iv(context, params(CKG_NO_GENERATE)) == IV
    first, second = next_iv(context, params(CKG_GENERATE_RANDOM)), next_iv(context, params(CKG_GENERATE))
    assert len(first) == len(second) == 12 and first != second != IV
    # Fixed bits are kept: 28 bits = three bytes and the high nibble of the fourth.
    kept = next_iv(context, params(CKG_GENERATE_RANDOM, 28))
    assert kept[:3] == IV[:3] and kept[3] >> 4 == IV[3] >> 4
    counting = MessageContext("encrypt", CKM.AES_GCM, 5)
    ivs = [next_iv(counting, params(CKG_GENERATE_COUNTER, 32)) for _ in range(3)]
    assert [iv[:4] for iv in ivs] == [IV[:4]] * 3
    assert [int.from_bytes(iv[4:], "big") for iv in ivs] == [0, 1, 2]
    xor = MessageContext("encrypt", CKM.AES_GCM, 5)
    assert next_iv(xor, params(CKG_GENERATE_COUNTER_XOR)) == IV
    assert next_iv(xor, params(CKG_GENERATE_COUNTER_XOR)) == IV[:-1] + bytes([IV[-1] ^ 1])


def test_iv_generators_refuse_what_cannot_be_unique() -> None:
    context = MessageContext("encrypt", CKM.AES_GCM, 5)
    with pytest.raises(AgentError) as refused:  # 96 fixed bits: nothing random left
        next_iv(context, params(CKG_GENERATE_RANDOM, 96))
    assert refused.value.code == CKR.MECHANISM_PARAM_INVALID
    tiny = MessageContext("encrypt", CKM.AES_GCM, 5)
    one_byte_left = params(CKG_GENERATE_COUNTER, 88)
    for _ in range(256):
        next_iv(tiny, one_byte_left)
    with pytest.raises(AgentError):  # the counter would repeat an IV
        next_iv(tiny, one_byte_left)
    with pytest.raises(AgentError):
        next_iv(context, params(9))


def test_message_parameters_are_checked() -> None:
    assert MESSAGE_PARAMS(wire()).tag_len == 16
    cases: list[tuple[Any, CKR]] = [
        (wire(tag_bits=100), CKR.MECHANISM_PARAM_INVALID), (wire(iv=b""), CKR.MECHANISM_PARAM_INVALID),
        (wire(iv_fixed_bits=97), CKR.MECHANISM_PARAM_INVALID), (wire(tag=b"short"), CKR.ARGUMENTS_BAD),
        (wire(generator=True), CKR.ARGUMENTS_BAD), ({"iv": IV}, CKR.ARGUMENTS_BAD), ([], CKR.ARGUMENTS_BAD),
    ]
    for bad, code in cases:
        with pytest.raises(AgentError) as refused:
            MESSAGE_PARAMS(bad)
        assert refused.value.code == code, bad


@pytest.fixture
def h() -> Harness:
    return Harness()


def test_message_calls_need_their_context(h: Harness) -> None:
    h.init()
    _, (s,) = h.call("C_OpenSession", 3, SERIAL_RW)
    h.log_in_locally(CKU.USER)
    assert h.call("C_EncryptMessage", s, wire(), b"", b"data", 64)[0] == CKR.OPERATION_NOT_INITIALIZED
    assert h.call("C_DecryptMessageNext", s, wire(), b"data", 64, 1)[0] == CKR.OPERATION_NOT_INITIALIZED
    assert h.call("C_MessageEncryptFinal", s)[0] == CKR.OPERATION_NOT_INITIALIZED
    assert h.call("C_EncryptMessage", s, wire(tag_bits=7), b"", b"x", 64)[0] == CKR.MECHANISM_PARAM_INVALID
    # Only AES-GCM, refused before any node is asked.
    assert h.call("C_MessageEncryptInit", s, [CKM.AES_CBC_PAD, None], 5)[0] == CKR.MECHANISM_INVALID
    # A context in place: sizes are answered here, without a node and without using an IV.
    session = h.conn.app.sessions[s]
    session.messages["encrypt"] = MessageContext("encrypt", CKM.AES_GCM, 5)
    assert h.call("C_MessageEncryptInit", s, [CKM.AES_GCM, None], 5)[0] == CKR.OPERATION_ACTIVE
    assert h.call("C_EncryptMessage", s, wire(generator=CKG_GENERATE_COUNTER), b"", b"12345", -1) == (
        CKR.OK, [5, None, None, None])
    assert h.call("C_EncryptMessage", s, wire(), b"", b"12345", 4) == (CKR.BUFFER_TOO_SMALL, [5, None, None, None])
    assert session.messages["encrypt"].counter == 0
    assert h.call("C_EncryptMessageNext", s, wire(), b"x", 64, 0)[0] == CKR.OPERATION_NOT_INITIALIZED
    assert h.call("C_SessionCancel", s, 0x2)[0] == CKR.OK  # CKF_MESSAGE_ENCRYPT
    assert "encrypt" not in session.messages


def test_login_user_and_cancel_rules(h: Harness) -> None:
    h.init()
    _, (s,) = h.call("C_OpenSession", 3, SERIAL_RW)
    assert h.call("C_LoginUser", s, CKU.USER, b"pw", b"al:ice")[0] == CKR.PIN_INCORRECT
    assert h.call("C_LoginUser", s, 7, b"pw", b"alice")[0] == CKR.USER_TYPE_INVALID
    assert h.call("C_LoginUser", s + 99, CKU.USER, b"pw", b"alice")[0] == CKR.SESSION_HANDLE_INVALID
    h.log_in_locally(CKU.USER)
    assert h.call("C_LoginUser", s, CKU.USER, b"pw", b"alice")[0] == CKR.USER_ALREADY_LOGGED_IN
    assert h.call("C_SessionCancel", s, CKF.ENCRYPT | CKF.SIGN | 0x40) == (CKR.OK, [])  # nothing active: no error
    assert h.call("C_SessionCancel", s + 99, CKF.ENCRYPT)[0] == CKR.SESSION_HANDLE_INVALID
    _, (ro,) = h.call("C_OpenSession", 3, CKF.SERIAL_SESSION)
    token = [[1, b"\x01"]]  # CKA_TOKEN true
    assert h.call("C_EncapsulateKey", ro, [CKM.ML_KEM, None], 5, token, -1)[0] == CKR.SESSION_READ_ONLY
    assert h.call("C_DecapsulateKey", ro, [CKM.ML_KEM, None], 5, token, b"ct")[0] == CKR.SESSION_READ_ONLY
