"""PKCS#11 3.0 / 3.2 functions besides the message-based ones (:mod:`message`): C_LoginUser, C_SessionCancel,
C_EncapsulateKey and C_DecapsulateKey.

* ``C_LoginUser`` takes the user name and the password apart; it logs in as ``C_Login`` does with the PIN
  ``username:password`` (the module keeps that form for reopening the application after an agent restart).
* ``C_SessionCancel`` ends the session's active operations the flags name (CKF_ENCRYPT, CKF_DECRYPT,
  CKF_DIGEST, CKF_SIGN, CKF_VERIFY, CKF_FIND_OBJECTS, CKF_MESSAGE_ENCRYPT, CKF_MESSAGE_DECRYPT), here and on
  the node; a flag naming nothing active is no error.
* ``C_EncapsulateKey`` makes a secret-key object from the caller's template out of a fresh shared secret
  (the node's ``key.encapsulate``) and answers its ciphertext. A size query (or a buffer too small) is
  answered from the public key's parameter set without encapsulating anything, so no key is made for it; a
  buffer that holds any ML-KEM ciphertext goes straight to the node.
  ``C_DecapsulateKey`` is the node's ``key.decapsulate``.
"""

from __future__ import annotations

from typing import Any

from strongroom.agent.functions import message
from strongroom.agent.functions.common import stateless
from strongroom.agent.functions.crypto import _abort
from strongroom.agent.functions.keys import make_key, new_key_template
from strongroom.agent.functions.registry import BYTES, CAP, MECHANISM, TEMPLATE, ULONG, Context, Result, function
from strongroom.agent.functions.session import login
from strongroom.agent.returns import AgentError
from strongroom.constants import CKA, CKK
from strongroom.errors import CKR

# C_SessionCancel's flags (the CKF_ mechanism-usage bits, PKCS#11 3.0 §5.6.x) -> the operations they end.
CKF_FIND_OBJECTS = 0x40
CKF_MESSAGE_ENCRYPT, CKF_MESSAGE_DECRYPT = 0x2, 0x4
_OPERATION_FLAGS = {0x100: "encrypt", 0x200: "decrypt", 0x400: "digest", 0x800: "sign", 0x2000: "verify"}
_MESSAGE_FLAGS = {CKF_MESSAGE_ENCRYPT: "encrypt", CKF_MESSAGE_DECRYPT: "decrypt"}

#: ML-KEM ciphertext lengths by CKA_PARAMETER_SET (CKP_ML_KEM_512/768/1024; FIPS 203 Table 3).
ML_KEM_CIPHERTEXT = {1: 768, 2: 1088, 3: 1568}
MAX_CIPHERTEXT = max(ML_KEM_CIPHERTEXT.values())


@function("C_LoginUser", ULONG, ULONG, BYTES, BYTES)
async def login_user(ctx: Context, handle: int, user_type: int, pin: bytes, username: bytes) -> list[Any]:
    if b":" in username:
        raise AgentError(CKR.PIN_INCORRECT, "a Strongroom user name has no ':'")
    done: list[Any] = await login(ctx, handle, user_type, username + b":" + pin)
    return done


@function("C_SessionCancel", ULONG, ULONG)
async def session_cancel(ctx: Context, handle: int, flags: int) -> list[Any]:
    session = ctx.session(handle)
    if flags & CKF_FIND_OBJECTS:
        session.find = None
    for bit, kind in _MESSAGE_FLAGS.items():
        if flags & bit:
            await message.cancel(ctx, session, kind)
    async with session.lock:
        for bit, kind in _OPERATION_FLAGS.items():
            op = session.operations.get(kind)
            if flags & bit and op is not None:
                await _abort(ctx, session, op)
    return []


async def _ciphertext_length(ctx: Context, public_key: int) -> int:
    body = await stateless(ctx, "object.get_attributes",
                           {"handle": public_key, "types": [int(CKA.KEY_TYPE), int(CKA.PARAMETER_SET)]},
                           handles=(public_key,))
    values = dict((int(t), v) for t, v in body.get("attributes") or [])
    parameter_set = values.get(CKA.PARAMETER_SET)
    length = (ML_KEM_CIPHERTEXT.get(parameter_set) if isinstance(parameter_set, int) and
              values.get(CKA.KEY_TYPE) == CKK.ML_KEM else None)
    if length is None:
        raise AgentError(CKR.KEY_TYPE_INCONSISTENT, f"key {public_key} is not an ML-KEM key of a known parameter set")
    return length


@function("C_EncapsulateKey", ULONG, MECHANISM, ULONG, TEMPLATE, CAP)
async def encapsulate_key(ctx: Context, handle: int, mechanism: tuple[int, Any], public_key: int,
                          template: list[Any], cap: int) -> Result | list[Any]:
    session = ctx.session(handle)
    typed, token = new_key_template(ctx, session, template)
    length = MAX_CIPHERTEXT
    if cap < MAX_CIPHERTEXT:  # a buffer that holds any ciphertext needs no look-up first
        length = await _ciphertext_length(ctx, public_key)
        if cap < 0:
            return [length, None, None]
        if cap < length:
            return Result(CKR.BUFFER_TOO_SMALL, [length, None, None])
    ckm, params = mechanism
    args = {"mechanism": ckm, "public_key": public_key, "template": typed, "params": params}
    key, body = await make_key(ctx, session, "key.encapsulate", args, token, (public_key,))
    ciphertext = bytes(body["ciphertext"])
    if len(ciphertext) > cap:  # the parameter set said otherwise: the key exists, say so rather than lose it
        raise AgentError(CKR.GENERAL_ERROR, f"the ciphertext is {len(ciphertext)} bytes, not {length}")
    return [len(ciphertext), ciphertext, key]


@function("C_DecapsulateKey", ULONG, MECHANISM, ULONG, TEMPLATE, BYTES)
async def decapsulate_key(ctx: Context, handle: int, mechanism: tuple[int, Any], private_key: int,
                          template: list[Any], ciphertext: bytes) -> list[Any]:
    session = ctx.session(handle)
    typed, token = new_key_template(ctx, session, template)
    ckm, params = mechanism
    args = {"mechanism": ckm, "private_key": private_key, "ciphertext": ciphertext, "template": typed,
            "params": params}
    key, _ = await make_key(ctx, session, "key.decapsulate", args, token, (private_key,))
    return [key]
