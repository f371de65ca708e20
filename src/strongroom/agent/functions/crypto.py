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

import functools
import logging
from dataclasses import dataclass
from typing import Any

from strongroom.agent.functions.common import deliver, ensure_binding, in_session, stateless
from strongroom.agent.functions.registry import (
    BYTES,
    CAP,
    KIND,
    MECHANISM,
    ULONG,
    Context,
    Result,
    function,
    on_bad_arguments,
)
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


#: What one node request carries at most (mechanisms.base.MAX_DATA): longer inputs go in parts.
NODE_PART = 1 << 20


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
    logins = ctx.app.crypto_logins
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
    if binding is not None and binding.valid(ctx.app.crypto_logins):
        try:
            await in_session(ctx, session, binding, "crypto.cancel", {"kind": op.kind})
        except Exception:  # noqa: BLE001 - best effort: the node ends it with the session anyway
            pass


def _parts(data: bytes) -> list[bytes]:
    """What one node request may carry (the node takes at most MAX_DATA per call)."""
    return [data[i:i + NODE_PART] for i in range(0, len(data), NODE_PART)] or [b""]


async def _in_parts(ctx: Context, session: Session, op: Operation, data: bytes,
                    signature: bytes | None = None) -> bytes:
    """A single-part call whose input is more than one node request takes: the same operation in parts
    (updates, then the final). A mechanism that has no parts makes it CKR_*_LEN_RANGE."""
    output = b""
    try:
        for part in _parts(data):
            body = await _node_step(ctx, session, op, NODE_OPERATIONS[op.kind].update, {"data": part})
            op.parts += 1
            output += body.get("data", b"") if isinstance(body, dict) else b""
    except NodeError as exc:
        if exc.code != CKR.FUNCTION_NOT_SUPPORTED:
            raise
        raise AgentError(CKR.ENCRYPTED_DATA_LEN_RANGE if op.kind == "decrypt" else CKR.DATA_LEN_RANGE,
                         f"{op.kind} with this mechanism takes at most {NODE_PART} bytes in one part") from None
    if op.kind == "verify":
        await _node_step(ctx, session, op, NODE_OPERATIONS["verify"].final, {"signature": signature or b""})
        return b""
    body = await _node_step(ctx, session, op, NODE_OPERATIONS[op.kind].final, {})
    return output + bytes(body[NODE_OPERATIONS[op.kind].output])


#: Mechanisms whose update outputs exactly its input (stream modes); block modes may add up to a block.
_STREAM_MODES = frozenset({CKM.AES_CTR, CKM.AES_GCM})
_BLOCK = 16


def update_bound(op: Operation, length: int) -> int:
    """An upper bound of what one C_EncryptUpdate/C_DecryptUpdate of ``length`` bytes outputs: the input plus
    what a block mode kept from earlier parts (less than a block; a CBC_PAD decryption keeps one block back).
    AES-GCM decryption outputs nothing before its final; its bound is still the input, so that a caller
    allocates a buffer and the part is processed."""
    if op.mechanism in _STREAM_MODES or not length:
        return length
    return length + _BLOCK


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
        ckm, params = mechanism
        if kind == "encrypt" and ckm == CKM.AES_GCM and isinstance(params, dict) and not params.get("iv"):
            # The node would choose the IV, but PKCS#11 v2.40 has no way to hand it back.
            raise AgentError(CKR.MECHANISM_PARAM_INVALID, "AES_GCM encryption needs an IV (pIv/ulIvLen)")
        op = Operation(kind, ckm, params, key, None)
        shape = _validation_key(ctx, kind, ckm, params, key)
        logins = ctx.app.crypto_logins
        if shape in ctx.app.validated and logins.closed is None:
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
    return (id(ctx.app.crypto_logins), None if identity is None else identity.username, kind, key, ckm,
            shape(params))


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
            if len(data) > NODE_PART:
                output = await _in_parts(ctx, session, op, data)
            elif op.deferred:
                output = (await _deferred_single(ctx, op, data))[NODE_OPERATIONS[kind].output]
            else:
                body = await _node_step(ctx, session, op, NODE_OPERATIONS[kind].single, {"data": data})
                output = body[NODE_OPERATIONS[kind].output]
            op.binding = None  # the node ended it
            return _deliver(session, op, Pending(ctx.function, stamp, output, True), cap)
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
            if cap == -1:
                # A size query: an upper bound, nothing processed (PKCS#11 v2.40 §5.2 allows "somewhat" more
                # than needed). Never 0 for some input: PyKCS11 then passes a NULL buffer again, a second size
                # query, and the input would never be processed (AES-GCM decryption outputs nothing until final).
                return [update_bound(op, len(data)), None]
            output = b""
            for part in _parts(data):
                body = await _node_step(ctx, session, op, NODE_OPERATIONS[kind].update, {"data": part})
                op.parts += 1
                output += body.get("data", b"")
            if cap is None:
                return []
            return _deliver(session, op, Pending(ctx.function, stamp, output, False), cap)
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
            if data is not None and len(data) > NODE_PART:
                await _in_parts(ctx, session, op, data, signature)
            elif data is not None and op.deferred:
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
        if binding is None or binding is not session.binding or not binding.valid(ctx.app.crypto_logins):
            for op in waiting:
                await _abort(ctx, session, op)
            raise OperationLost(waiting[0].kind)
        await in_session(ctx, session, binding, "session.context_login", {"password": password})
        for op in waiting:
            op.authenticated = True


# --- message digesting of a key, dual-function operations (PKCS#11 v2.40 §5.10, §5.13) -------------------


@function("C_DigestKey", ULONG, ULONG)
async def digest_key(ctx: Context, handle: int, key: int) -> list[Any]:
    """The value of a secret key goes into the running digest on the node (``crypto.digest_key``): the node
    refuses a key that may not leave it (CKR_KEY_INDIGESTIBLE). A failure ends the digest, as any part's."""
    session = ctx.session(handle)
    async with session.lock:
        op = _current(session, "digest")
        try:
            if op.pending is not None:
                raise AgentError(CKR.OPERATION_ACTIVE, "finish the output of the previous call first")
            await _node_step(ctx, session, op, "crypto.digest_key", {"key": key})
            op.parts += 1
        except BaseException:
            await _abort(ctx, session, op)
            raise
    return []


async def _dual(ctx: Context, handle: int, first: str, second: str, data: bytes, cap: int,
                second_input: str) -> Result | list[Any]:
    """A dual-function update: ``first``'s update (encrypt/decrypt, with output) and ``second``'s (digest, sign,
    verify) on ``data`` (``second_input`` "input") or on what the first one output ("output": decryption then
    digest/verify, PKCS#11 v2.40 §5.13). The second update runs once the first one's output is handed over,
    so a size query or a too-small buffer changes neither operation."""
    session = ctx.session(handle)
    _current(session, second)  # both must be active (OPERATION_NOT_INITIALIZED otherwise), before anything runs
    result = await _update(ctx, handle, first, data, cap)
    if isinstance(result, Result) or cap < 0:
        return result  # size query / buffer too small: the first operation keeps its output for the next call
    output = result[1]
    try:
        await _update(ctx, handle, second, data if second_input == "input" else bytes(output or b""), None)
    except BaseException:
        # The pair goes on only together: the first operation ends with the second.
        op = session.operations.get(first)
        if op is not None:
            async with session.lock:
                await _abort(ctx, session, op)
        raise
    return result


@function("C_DigestEncryptUpdate", ULONG, BYTES, CAP)
async def digest_encrypt_update(ctx: Context, handle: int, data: bytes, cap: int) -> Result | list[Any]:
    return await _dual(ctx, handle, "encrypt", "digest", data, cap, "input")


@function("C_DecryptDigestUpdate", ULONG, BYTES, CAP)
async def decrypt_digest_update(ctx: Context, handle: int, data: bytes, cap: int) -> Result | list[Any]:
    return await _dual(ctx, handle, "decrypt", "digest", data, cap, "output")


@function("C_SignEncryptUpdate", ULONG, BYTES, CAP)
async def sign_encrypt_update(ctx: Context, handle: int, data: bytes, cap: int) -> Result | list[Any]:
    return await _dual(ctx, handle, "encrypt", "sign", data, cap, "input")


@function("C_DecryptVerifyUpdate", ULONG, BYTES, CAP)
async def decrypt_verify_update(ctx: Context, handle: int, data: bytes, cap: int) -> Result | list[Any]:
    return await _dual(ctx, handle, "decrypt", "verify", data, cap, "output")


# --- for the module: ending an operation it refused itself, output bounds --------------------------------


@function("X_EndOperation", ULONG, KIND)
async def end_operation(ctx: Context, handle: int, kind: str) -> list[Any]:
    """The module refused a call of an active operation itself (a NULL length pointer, an input it cannot
    send): as every failed call but CKR_BUFFER_TOO_SMALL and a size query, it ends the operation (PKCS#11
    v2.40 §5.2), here and on the node. Nothing active: nothing to do."""
    session = ctx.session(handle)
    if kind == "find":
        session.find = None
        return []
    async with session.lock:
        op = session.operations.get(kind)
        if op is not None:
            await _abort(ctx, session, op)
    return []


@function("X_OutputBound", ULONG, KIND, ULONG)
async def output_bound(ctx: Context, handle: int, kind: str, length: int) -> list[Any]:
    """An upper bound of the output of an update of ``length`` bytes of the active ``kind`` (encrypt or decrypt)
    operation: the module asks before it sends an input too large for one request in parts."""
    session = ctx.session(handle)
    if kind not in ("encrypt", "decrypt"):
        raise AgentError(CKR.ARGUMENTS_BAD, "output bounds are for encryption and decryption")
    return [update_bound(_current(session, kind), length)]


async def _end_after_bad_arguments(ctx: Context, args: Any, kind: str) -> None:
    """A call of an active operation whose arguments were malformed fails: the operation ends with it."""
    if not isinstance(args, list) or not args or not isinstance(args[0], int) or isinstance(args[0], bool):
        return
    app = ctx.connection.app
    session = None if app is None else app.sessions.get(args[0])
    if session is None:
        return
    async with session.lock:
        op = session.operations.get(kind)
        if op is not None:
            await _abort(ctx, session, op)


for _name, _kind in {
    "C_Encrypt": "encrypt", "C_EncryptUpdate": "encrypt", "C_EncryptFinal": "encrypt",
    "C_Decrypt": "decrypt", "C_DecryptUpdate": "decrypt", "C_DecryptFinal": "decrypt",
    "C_Sign": "sign", "C_SignUpdate": "sign", "C_SignFinal": "sign",
    "C_Verify": "verify", "C_VerifyUpdate": "verify", "C_VerifyFinal": "verify",
    "C_Digest": "digest", "C_DigestUpdate": "digest", "C_DigestFinal": "digest", "C_DigestKey": "digest",
}.items():
    on_bad_arguments(_name, functools.partial(_end_after_bad_arguments, kind=_kind))
