"""Encryption, decryption, message digesting, signing and verifying (PKCS#11 v2.40 §5.8–5.13).

``C_<Kind>Init`` becomes ``crypto.<kind>_init`` on the session's node p11session
(opened on first use), the single-part call ``crypto.<kind>_single``, and
``C_<Kind>Update`` / ``C_<Kind>Final`` ``crypto.<kind>_update`` / ``_final`` (the names are
spelled out in :data:`NODE_OPERATIONS`). An init whose user, key, mechanism and parameter
shape the node accepted before is only recorded here, and its single-part call goes as one
stateless ``crypto.<kind>`` request (:attr:`~strongroom.agent.state.Operation.deferred`).

Output capacity (§5.2): a computed output is kept across a size query (cap -1) or a
too-small buffer, so the operation is neither repeated nor ended; the next call of the
same function with the same input hands it over. Errors end the operation as the spec
says: any error of a single-part or final call but CKR_BUFFER_TOO_SMALL, any error of
an update call (for encrypt/decrypt updates, but CKR_BUFFER_TOO_SMALL).

Node-side state that vanished (the node restarted, the connection was re-opened, the
login expired) is re-created when nothing was lost with it: an operation that has
taken no update yet is initialized again on a new node session and the call goes on,
transparently. An operation that has taken updates cannot be rebuilt (the node held
its intermediate state): the call answers CKR_FUNCTION_FAILED and the operation ends;
the application starts it again with C_<Kind>Init.

A key with CKA_ALWAYS_AUTHENTICATE: the node's init says so (``context_login``), the operation is
never deferred nor re-created, and C_Login(CKU_CONTEXT_SPECIFIC) is forwarded to the node that
holds it (:func:`context_login`), which checks the password, counts a failure towards the user's
lockout and audits the attempt. The agent keeps no copy of that password.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from strongroom.agent.functions.common import deliver, ensure_binding, in_session, require_user, stateless
from strongroom.agent.functions.registry import BYTES, CAP, MECHANISM, ULONG, Context, Result, function
from strongroom.agent.nodes import NodeError, StateLost
from strongroom.agent.returns import AgentError
from strongroom.agent.state import Operation, Pending, Session, fingerprint
from strongroom.constants import CKM
from strongroom.errors import CKR

log = logging.getLogger("strongroom.agent")



@dataclass(frozen=True)
class NodeOperations:
    """The node operations behind one kind of PKCS#11 operation, spelled out so that a grep for one
    (``crypto.sign_init``) finds where the agent calls it."""

    init: str
    single: str
    update: str
    final: str
    #: The stateless form that carries mechanism, key and data in one request (see Operation.deferred).
    one_request: str
    #: The key of the reply that holds the output (verify answers none).
    output: str


NODE_OPERATIONS: dict[str, NodeOperations] = {
    "encrypt": NodeOperations("crypto.encrypt_init", "crypto.encrypt_single", "crypto.encrypt_update",
                              "crypto.encrypt_final", "crypto.encrypt", "data"),
    "decrypt": NodeOperations("crypto.decrypt_init", "crypto.decrypt_single", "crypto.decrypt_update",
                              "crypto.decrypt_final", "crypto.decrypt", "data"),
    "sign": NodeOperations("crypto.sign_init", "crypto.sign_single", "crypto.sign_update",
                           "crypto.sign_final", "crypto.sign", "signature"),
    "verify": NodeOperations("crypto.verify_init", "crypto.verify_single", "crypto.verify_update",
                             "crypto.verify_final", "crypto.verify", ""),
    "digest": NodeOperations("crypto.digest_init", "crypto.digest_single", "crypto.digest_update",
                             "crypto.digest_final", "crypto.digest", "digest"),
}


class OperationLost(AgentError):
    def __init__(self, kind: str) -> None:
        super().__init__(CKR.FUNCTION_FAILED,
                         f"the node that held this {kind} operation's state was lost; start it again")


# --- node side ----------------------------------------------------------------------------------


async def _node_init(ctx: Context, session: Session, op: Operation) -> None:
    args: dict[str, Any] = {"mechanism": op.mechanism, "params": op.params}
    if op.key is not None:
        args["key"] = op.key
    for attempt in (1, 2):
        binding = await ensure_binding(ctx, session)
        try:
            body = await in_session(ctx, session, binding, NODE_OPERATIONS[op.kind].init, args)
        except StateLost:
            if attempt == 2:
                raise
            continue
        op.binding = binding
        op.context_login = bool(isinstance(body, dict) and body.get("context_login"))
        return


async def _node_step(ctx: Context, session: Session, op: Operation, node_op: str, args: dict[str, Any]) -> Any:
    """One update/final/single call (``node_op``) of ``op``, re-initializing it on a new node session if the old
    one is gone and the operation has taken no update yet."""
    if op.context_login and not op.authenticated:
        raise AgentError(CKR.USER_NOT_LOGGED_IN, f"the key of this {op.kind} has CKA_ALWAYS_AUTHENTICATE: call "
                                                 "C_Login(CKU_CONTEXT_SPECIFIC) right after the init")
    logins = ctx.app.logins
    for attempt in (1, 2):
        if op.binding is None or op.binding is not session.binding or not op.binding.valid(logins):
            op.binding = None
            if op.parts or op.context_login:  # a context login cannot be re-created for the application
                raise OperationLost(op.kind)
            if op.deferred:
                op.deferred = False  # going multi-part: the node needs the operation after all
            else:
                log.info("%s: re-creating the %s operation on a new node session", ctx.function, op.kind)
            await _node_init(ctx, session, op)
        assert op.binding is not None
        try:
            return await in_session(ctx, session, op.binding, node_op, args)
        except NodeError:
            op.binding = None  # a failed call ends the operation on the node
            raise
        except StateLost:
            op.binding = None
            if op.parts or op.context_login or attempt == 2:
                raise OperationLost(op.kind) from None
    raise AssertionError("unreachable")


async def _abort(ctx: Context, session: Session, op: Operation) -> None:
    """End ``op`` here and, if the node still runs it, there too."""
    if session.operations.get(op.kind) is op:
        del session.operations[op.kind]
    binding, op.binding = op.binding, None
    if binding is not None and binding.valid(ctx.app.logins):
        try:
            await in_session(ctx, session, binding, "crypto.cancel", {"kind": op.kind})
        except Exception:  # noqa: BLE001 - best effort: the node ends it with the session anyway
            pass


def _current(session: Session, kind: str) -> Operation:
    op = session.operations.get(kind)
    if op is None:
        raise AgentError(CKR.OPERATION_NOT_INITIALIZED, f"no {kind} operation is active")
    return op


def _deliver(session: Session, op: Operation, pending: Pending, cap: int) -> Result | list[Any]:
    result = deliver(op, "pending", pending, cap)
    if op.pending is None and pending.finishes and session.operations.get(op.kind) is op:
        del session.operations[op.kind]
    return result


def _ends_operation(exc: BaseException) -> bool:
    return not (isinstance(exc, AgentError) and exc.code == CKR.BUFFER_TOO_SMALL)


# --- generic shapes ---------------------------------------------------------------------------------


async def _init(ctx: Context, handle: int, kind: str, mechanism: tuple[int, Any], key: int | None) -> list[Any]:
    session = ctx.session(handle)
    async with session.lock:
        if kind in session.operations:
            raise AgentError(CKR.OPERATION_ACTIVE, f"a {kind} operation is already active in this session")
        require_user(ctx)
        ckm, params = mechanism
        if kind == "encrypt" and ckm == CKM.AES_GCM and isinstance(params, dict) and not params.get("iv"):
            # The node would choose the IV, but PKCS#11 v2.40 has no way to hand it back.
            raise AgentError(CKR.MECHANISM_PARAM_INVALID, "AES_GCM encryption needs an IV (pIv/ulIvLen)")
        op = Operation(kind, ckm, params, key, None)
        shape = _validation_key(ctx, kind, ckm, params, key)
        logins = ctx.app.logins
        if shape in ctx.app.validated and logins is not None and logins.closed is None:
            op.deferred = True  # checked by the node before: the single-part call goes alone
        else:
            await _node_init(ctx, session, op)
            if not op.context_login:  # such a key never goes the one-request way
                ctx.app.validated.add(shape)
        session.operations[kind] = op
    return []


def _validation_key(ctx: Context, kind: str, ckm: int, params: Any, key: int | None) -> tuple[Any, ...]:
    """What makes an init valid: IV, AAD and label contents do not, their lengths may."""
    def shape(value: Any) -> Any:
        if isinstance(value, bytes):
            return ("bytes", len(value))
        if isinstance(value, dict):
            return tuple(sorted((k, shape(v)) for k, v in value.items()))
        return value

    identity = ctx.app.identity
    # The Logins object too: a new C_Login (or logout) starts a fresh set of checks.
    return (id(ctx.app.logins), None if identity is None else identity.username, kind, key, ckm, shape(params))


async def _deferred_single(ctx: Context, op: Operation, data: bytes, signature: bytes | None = None) -> Any:
    """The one-request path: the node's stateless ``crypto.<kind>`` with everything in it."""
    args: dict[str, Any] = {"mechanism": op.mechanism, "data": data}
    if op.params is not None:
        args["params"] = op.params
    if op.key is not None:
        args["key"] = op.key
    if signature is not None:
        args["signature"] = signature
    return await stateless(ctx, NODE_OPERATIONS[op.kind].one_request, args,
                           handles=() if op.key is None else (op.key,))


async def _single(ctx: Context, handle: int, kind: str, data: bytes, cap: int) -> Result | list[Any]:
    session = ctx.session(handle)
    async with session.lock:
        op = _current(session, kind)
        stamp = fingerprint(ctx.function, data)
        try:
            if op.pending is not None:
                if op.pending.function != ctx.function:
                    raise AgentError(CKR.OPERATION_ACTIVE, "finish the output of the previous call first")
                if op.pending.fingerprint != stamp:
                    raise AgentError(CKR.ARGUMENTS_BAD, "call again with the same input to get the kept output")
                return _deliver(session, op, op.pending, cap)
            if op.parts:
                raise AgentError(CKR.OPERATION_ACTIVE, f"a multi-part {kind} is in progress: finish it with "
                                                       f"C_{kind.capitalize()}Final")
            if op.deferred:
                body = await _deferred_single(ctx, op, data)
            else:
                body = await _node_step(ctx, session, op, NODE_OPERATIONS[kind].single, {"data": data})
            op.binding = None  # the node ended it
            return _deliver(session, op, Pending(ctx.function, stamp, body[NODE_OPERATIONS[kind].output], True), cap)
        except BaseException as exc:
            if _ends_operation(exc):
                await _abort(ctx, session, op)
            raise


async def _update(ctx: Context, handle: int, kind: str, data: bytes, cap: int | None) -> Result | list[Any]:
    session = ctx.session(handle)
    async with session.lock:
        op = _current(session, kind)
        stamp = fingerprint(ctx.function, data)
        try:
            if op.pending is not None:
                if op.pending.function != ctx.function:
                    raise AgentError(CKR.OPERATION_ACTIVE, "finish the output of the previous call first")
                if op.pending.fingerprint != stamp:
                    raise AgentError(CKR.ARGUMENTS_BAD, "call again with the same input to get the kept output")
                return _deliver(session, op, op.pending, cap if cap is not None else -1)
            body = await _node_step(ctx, session, op, NODE_OPERATIONS[kind].update, {"data": data})
            op.parts += 1
            if cap is None:
                return []
            return _deliver(session, op, Pending(ctx.function, stamp, body.get("data", b""), False), cap)
        except BaseException as exc:
            if _ends_operation(exc):
                await _abort(ctx, session, op)
            raise


async def _final(ctx: Context, handle: int, kind: str, cap: int) -> Result | list[Any]:
    session = ctx.session(handle)
    async with session.lock:
        op = _current(session, kind)
        stamp = fingerprint(ctx.function)
        try:
            if op.pending is not None:
                if op.pending.function != ctx.function:
                    raise AgentError(CKR.OPERATION_ACTIVE, "finish the output of the previous call first")
                return _deliver(session, op, op.pending, cap)
            body = await _node_step(ctx, session, op, NODE_OPERATIONS[kind].final, {})
            op.binding = None
            return _deliver(session, op, Pending(ctx.function, stamp, body[NODE_OPERATIONS[kind].output], True), cap)
        except BaseException as exc:
            if _ends_operation(exc):
                await _abort(ctx, session, op)
            raise


async def _verify(ctx: Context, handle: int, *, data: bytes | None = None, signature: bytes) -> list[Any]:
    """C_Verify (``data`` given) or C_VerifyFinal: both end the operation, whatever the outcome."""
    session = ctx.session(handle)
    async with session.lock:
        op = _current(session, "verify")
        try:
            if data is not None and op.parts:
                raise AgentError(CKR.OPERATION_ACTIVE, "a multi-part verification is in progress")
            if data is not None and op.deferred:
                await _deferred_single(ctx, op, data, signature)
            elif data is not None:
                await _node_step(ctx, session, op, NODE_OPERATIONS["verify"].single,
                                 {"data": data, "signature": signature})
            else:
                await _node_step(ctx, session, op, NODE_OPERATIONS["verify"].final, {"signature": signature})
            op.binding = None
        finally:
            await _abort(ctx, session, op)
    return []


# --- the functions ------------------------------------------------------------------------------------


@function("C_EncryptInit", ULONG, MECHANISM, ULONG)
async def encrypt_init(ctx: Context, handle: int, mechanism: tuple[int, Any], key: int) -> list[Any]:
    return await _init(ctx, handle, "encrypt", mechanism, key)


@function("C_Encrypt", ULONG, BYTES, CAP)
async def encrypt(ctx: Context, handle: int, data: bytes, cap: int) -> Result | list[Any]:
    return await _single(ctx, handle, "encrypt", data, cap)


@function("C_EncryptUpdate", ULONG, BYTES, CAP)
async def encrypt_update(ctx: Context, handle: int, data: bytes, cap: int) -> Result | list[Any]:
    return await _update(ctx, handle, "encrypt", data, cap)


@function("C_EncryptFinal", ULONG, CAP)
async def encrypt_final(ctx: Context, handle: int, cap: int) -> Result | list[Any]:
    return await _final(ctx, handle, "encrypt", cap)


@function("C_DecryptInit", ULONG, MECHANISM, ULONG)
async def decrypt_init(ctx: Context, handle: int, mechanism: tuple[int, Any], key: int) -> list[Any]:
    return await _init(ctx, handle, "decrypt", mechanism, key)


@function("C_Decrypt", ULONG, BYTES, CAP)
async def decrypt(ctx: Context, handle: int, data: bytes, cap: int) -> Result | list[Any]:
    return await _single(ctx, handle, "decrypt", data, cap)


@function("C_DecryptUpdate", ULONG, BYTES, CAP)
async def decrypt_update(ctx: Context, handle: int, data: bytes, cap: int) -> Result | list[Any]:
    return await _update(ctx, handle, "decrypt", data, cap)


@function("C_DecryptFinal", ULONG, CAP)
async def decrypt_final(ctx: Context, handle: int, cap: int) -> Result | list[Any]:
    return await _final(ctx, handle, "decrypt", cap)


@function("C_SignInit", ULONG, MECHANISM, ULONG)
async def sign_init(ctx: Context, handle: int, mechanism: tuple[int, Any], key: int) -> list[Any]:
    return await _init(ctx, handle, "sign", mechanism, key)


@function("C_Sign", ULONG, BYTES, CAP)
async def sign(ctx: Context, handle: int, data: bytes, cap: int) -> Result | list[Any]:
    return await _single(ctx, handle, "sign", data, cap)


@function("C_SignUpdate", ULONG, BYTES)
async def sign_update(ctx: Context, handle: int, data: bytes) -> Result | list[Any]:
    return await _update(ctx, handle, "sign", data, None)


@function("C_SignFinal", ULONG, CAP)
async def sign_final(ctx: Context, handle: int, cap: int) -> Result | list[Any]:
    return await _final(ctx, handle, "sign", cap)


@function("C_VerifyInit", ULONG, MECHANISM, ULONG)
async def verify_init(ctx: Context, handle: int, mechanism: tuple[int, Any], key: int) -> list[Any]:
    return await _init(ctx, handle, "verify", mechanism, key)


@function("C_Verify", ULONG, BYTES, BYTES)
async def verify(ctx: Context, handle: int, data: bytes, signature: bytes) -> list[Any]:
    return await _verify(ctx, handle, data=data, signature=signature)


@function("C_VerifyUpdate", ULONG, BYTES)
async def verify_update(ctx: Context, handle: int, data: bytes) -> Result | list[Any]:
    return await _update(ctx, handle, "verify", data, None)


@function("C_VerifyFinal", ULONG, BYTES)
async def verify_final(ctx: Context, handle: int, signature: bytes) -> list[Any]:
    return await _verify(ctx, handle, signature=signature)


@function("C_DigestInit", ULONG, MECHANISM)
async def digest_init(ctx: Context, handle: int, mechanism: tuple[int, Any]) -> list[Any]:
    return await _init(ctx, handle, "digest", mechanism, None)


@function("C_Digest", ULONG, BYTES, CAP)
async def digest(ctx: Context, handle: int, data: bytes, cap: int) -> Result | list[Any]:
    return await _single(ctx, handle, "digest", data, cap)


@function("C_DigestUpdate", ULONG, BYTES)
async def digest_update(ctx: Context, handle: int, data: bytes) -> Result | list[Any]:
    return await _update(ctx, handle, "digest", data, None)


@function("C_DigestFinal", ULONG, CAP)
async def digest_final(ctx: Context, handle: int, cap: int) -> Result | list[Any]:
    return await _final(ctx, handle, "digest", cap)


async def context_login(ctx: Context, session: Session, password: str) -> None:
    """C_Login(CKU_CONTEXT_SPECIFIC) for the operations of ``session`` whose key asks for it."""
    async with session.lock:
        waiting = [op for op in session.operations.values() if op.context_login]
        if not waiting:
            # PKCS#11 v2.40 §5.6: a context-specific login without a context. No password is checked.
            raise AgentError(CKR.OPERATION_NOT_INITIALIZED, "no operation in this session needs a context login")
        binding = waiting[0].binding
        if binding is None or binding is not session.binding or not binding.valid(ctx.app.logins):
            for op in waiting:
                await _abort(ctx, session, op)
            raise OperationLost(waiting[0].kind)
        await in_session(ctx, session, binding, "session.context_login", {"password": password})
        for op in waiting:
            op.authenticated = True
