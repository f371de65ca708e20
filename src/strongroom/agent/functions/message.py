"""Message-based encryption and decryption (PKCS#11 3.0 §5.x): AES-GCM, as OpenSSL's pkcs11-provider uses it.

``C_MessageEncryptInit`` / ``C_MessageDecryptInit`` only record the key (after checking it is an AES key that
may encrypt/decrypt): each message brings its own ``CK_GCM_MESSAGE_PARAMS``, which the module sends as
``{"iv", "iv_fixed_bits", "generator", "tag_bits", "tag"}``.

* A whole message (``C_EncryptMessage`` / ``C_DecryptMessage``) is one stateless node request
  (``crypto.encrypt`` / ``crypto.decrypt`` with the IV, the associated data and the tag length); the node's
  ciphertext||tag is split here, the tag and the IV go back into the application's parameters.
* A message in parts (``..MessageBegin`` / ``..MessageNext``) is a multi-part operation on the session's node
  p11session (``crypto.encrypt_init`` / ``_update`` / ``_final``); ``CKF_END_OF_MESSAGE`` on a part ends it.
  AES-GCM decryption hands over no plaintext before the tag is checked: every part but the last answers no
  output, the last one all of it.

IVs (``ivGenerator``): CKG_NO_GENERATE uses the application's IV; CKG_GENERATE and CKG_GENERATE_RANDOM keep its
first ``ulIvFixedBits`` bits and fill the rest with random bytes; CKG_GENERATE_COUNTER keeps the fixed bits and
puts a per-context counter in the rest, CKG_GENERATE_COUNTER_XOR XORs the counter into the application's IV.
The IV used is written back into the parameters. Output lengths are known before anything runs (GCM's ciphertext
is as long as its plaintext), so a size query or a short buffer costs no node request and consumes no IV.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

from strongroom.agent.functions.common import stateless
from strongroom.agent.functions.crypto import _abort, _node_init, _node_step
from strongroom.agent.functions.registry import BYTES, CAP, MECHANISM, ULONG, Context, Result, _bad, function
from strongroom.agent.returns import AgentError
from strongroom.agent.state import Operation, Session
from strongroom.constants import CKA, CKK, CKM, CKO
from strongroom.errors import CKR

# CK_GENERATOR_FUNCTION (PKCS#11 3.0 §2.13).
CKG_NO_GENERATE, CKG_GENERATE, CKG_GENERATE_COUNTER, CKG_GENERATE_RANDOM, CKG_GENERATE_COUNTER_XOR = 0, 1, 2, 3, 4
CKF_END_OF_MESSAGE = 0x1
#: CKF_MESSAGE_ENCRYPT | CKF_MESSAGE_DECRYPT | CKF_MULTI_MESSAGE: what C_GetMechanismInfo adds for CKM_AES_GCM.
MESSAGE_FLAGS = 0x2 | 0x4 | 0x20
#: What one node request carries at most (mechanisms.base.MAX_DATA): longer messages and parts go in pieces.
MAX_PART = 1 << 20
GCM_IV_MIN, GCM_IV_MAX = 1, 256


@dataclass
class MessageParams:
    iv: bytes
    iv_fixed_bits: int
    generator: int
    tag_bits: int
    tag: bytes | None

    @property
    def tag_len(self) -> int:
        return self.tag_bits // 8


def MESSAGE_PARAMS(value: Any) -> MessageParams:
    """CK_GCM_MESSAGE_PARAMS as the module sends it."""
    if not isinstance(value, dict) or set(value) != {"iv", "iv_fixed_bits", "generator", "tag_bits", "tag"}:
        raise _bad("message parameters are {iv, iv_fixed_bits, generator, tag_bits, tag}")
    iv, fixed, generator, tag_bits, tag = (value[k] for k in ("iv", "iv_fixed_bits", "generator", "tag_bits", "tag"))
    if not isinstance(iv, bytes) or not all(isinstance(v, int) and not isinstance(v, bool)
                                            for v in (fixed, generator, tag_bits)):
        raise _bad("malformed message parameters")
    if not GCM_IV_MIN <= len(iv) <= GCM_IV_MAX or not 0 <= fixed <= 8 * len(iv) or tag_bits not in range(8, 129, 8):
        raise AgentError(CKR.MECHANISM_PARAM_INVALID, "AES-GCM: IV of 1 to 256 bytes, tag of 8 to 128 bits")
    if tag is not None and (not isinstance(tag, bytes) or len(tag) != tag_bits // 8):
        raise _bad("the tag is as long as ulTagBits says")
    return MessageParams(iv, fixed, generator, tag_bits, tag)


@dataclass
class MessagePart:
    """A message in parts: its node operation, how much input it took, its tag length."""

    op: Operation
    tag_len: int
    taken: int = 0


@dataclass
class MessageContext:
    kind: str  # "encrypt" or "decrypt"
    mechanism: int
    key: int
    counter: int = 0
    part: MessagePart | None = None


def _context(session: Session, kind: str) -> MessageContext:
    context = session.messages.get(kind)
    if not isinstance(context, MessageContext):
        raise AgentError(CKR.OPERATION_NOT_INITIALIZED, f"no message-based {kind} operation is active")
    return context


def _with_fixed_bits(given: bytes, fixed_bits: int, rest: bytes) -> bytes:
    """The first ``fixed_bits`` bits of ``given``, the remaining bits from ``rest`` (as long as ``given``)."""
    whole, bits = divmod(fixed_bits, 8)
    out = bytearray(given[:whole] + rest[whole:])
    if bits:
        mask = (0xFF << (8 - bits)) & 0xFF
        out[whole] = (given[whole] & mask) | (rest[whole] & ~mask & 0xFF)
    return bytes(out)


def next_iv(context: MessageContext, params: MessageParams) -> bytes:
    """The IV of the next message encrypted under ``context`` (see the module's docstring)."""
    iv, size = params.iv, len(params.iv)
    free_bits = 8 * size - params.iv_fixed_bits
    if params.generator == CKG_NO_GENERATE:
        return iv
    if params.generator in (CKG_GENERATE, CKG_GENERATE_RANDOM):
        if free_bits < 64:
            raise AgentError(CKR.MECHANISM_PARAM_INVALID, "a random IV needs at least 64 bits that are not fixed")
        return _with_fixed_bits(iv, params.iv_fixed_bits, secrets.token_bytes(size))
    if params.generator in (CKG_GENERATE_COUNTER, CKG_GENERATE_COUNTER_XOR):
        if free_bits <= 0 or context.counter >= 1 << min(free_bits, 64):
            raise AgentError(CKR.MECHANISM_PARAM_INVALID, "the IV counter is exhausted: start a new context")
        counter = context.counter.to_bytes(size, "big")
        context.counter += 1
        if params.generator == CKG_GENERATE_COUNTER:
            return _with_fixed_bits(iv, params.iv_fixed_bits, counter)
        return bytes(a ^ b for a, b in zip(iv, counter, strict=True))
    raise AgentError(CKR.MECHANISM_PARAM_INVALID, f"unknown IV generator {params.generator}")


def _node_params(iv: bytes, aad: bytes, params: MessageParams) -> dict[str, Any]:
    return {"iv": iv, "aad": aad, "tag_bits": params.tag_bits}


# --- init / final ----------------------------------------------------------------------------------------


async def _init(ctx: Context, handle: int, kind: str, mechanism: tuple[int, Any], key: int) -> list[Any]:
    session = ctx.session(handle)
    ckm, _params = mechanism
    if kind in session.messages:
        raise AgentError(CKR.OPERATION_ACTIVE, f"a message-based {kind} operation is already active")
    if ckm != CKM.AES_GCM:
        raise AgentError(CKR.MECHANISM_INVALID, "message-based encryption is offered for CKM_AES_GCM")
    usage = CKA.ENCRYPT if kind == "encrypt" else CKA.DECRYPT
    body = await stateless(ctx, "object.get_attributes",
                           {"handle": key, "types": [int(CKA.CLASS), int(CKA.KEY_TYPE), int(usage)]}, handles=(key,))
    values = dict((int(t), v) for t, v in body.get("attributes") or [])
    if values.get(CKA.CLASS) != CKO.SECRET_KEY or values.get(CKA.KEY_TYPE) != CKK.AES:
        raise AgentError(CKR.KEY_TYPE_INCONSISTENT, f"key {key} is not an AES key")
    if values.get(usage) is not True:
        raise AgentError(CKR.KEY_FUNCTION_NOT_PERMITTED, f"key {key} does not allow {kind}ion ({usage.name})")
    session.messages[kind] = MessageContext(kind, ckm, key)
    return []


async def _final(ctx: Context, handle: int, kind: str) -> list[Any]:
    session = ctx.session(handle)
    context = _context(session, kind)
    del session.messages[kind]
    if context.part is not None:
        async with session.lock:
            await _abort(ctx, session, context.part.op)
    return []


async def cancel(ctx: Context, session: Session, kind: str) -> None:
    """C_SessionCancel of a message-based operation: as its final."""
    if kind in session.messages:
        await _final(ctx, session.handle, kind)


# --- a whole message -----------------------------------------------------------------------------------------


async def _whole(ctx: Context, handle: int, kind: str, params: MessageParams, aad: bytes, data: bytes,
                 cap: int) -> Result | list[Any]:
    session = ctx.session(handle)
    context = _context(session, kind)
    if context.part is not None:
        raise AgentError(CKR.OPERATION_ACTIVE, "a message in parts is in progress: end it first")
    encrypt = kind == "encrypt"
    blank: list[Any] = [None, None] if encrypt else []
    if cap < 0:
        return [len(data), None, *blank]
    if cap < len(data):
        return Result(CKR.BUFFER_TOO_SMALL, [len(data), None, *blank])
    if encrypt:
        iv = next_iv(context, params)
        out = await _one_message(ctx, session, context, _node_params(iv, aad, params), data)
        if len(out) != len(data) + params.tag_len:
            raise AgentError(CKR.GENERAL_ERROR, "the node's AES-GCM output is not ciphertext and tag")
        return [len(data), out[:len(data)], iv, out[len(data):]]
    if params.tag is None:
        raise _bad("decryption needs the tag")
    out = await _one_message(ctx, session, context, _node_params(params.iv, aad, params), data + params.tag)
    return [len(out), out]


async def _one_message(ctx: Context, session: Session, context: MessageContext, node_params: dict[str, Any],
                       data: bytes) -> bytes:
    """One whole message: a stateless request, or (more than one node request takes) the same operation in parts
    on the session's node p11session. Encryption answers ciphertext||tag, decryption the plaintext."""
    kind = context.kind
    if len(data) <= MAX_PART:
        args = {"key": context.key, "mechanism": context.mechanism, "data": data, "params": node_params}
        return bytes((await stateless(ctx, f"crypto.{kind}", args, handles=(context.key,)))["data"])
    if kind in session.operations:
        raise AgentError(CKR.OPERATION_ACTIVE, f"a {kind} operation (C_{kind.capitalize()}Init) is active")
    op = Operation(kind, context.mechanism, node_params, context.key, None)
    async with session.lock:
        try:
            await _node_init(ctx, session, op)
            out = b""
            for piece in _pieces(data):
                body = await _node_step(ctx, session, op, f"crypto.{kind}_update", {"data": piece})
                op.parts += 1
                out += bytes(body.get("data", b"")) if isinstance(body, dict) else b""
            final = await _node_step(ctx, session, op, f"crypto.{kind}_final", {})
            op.binding = None
            return out + bytes(final["data"])
        except BaseException:
            await _abort(ctx, session, op)
            raise


def _pieces(data: bytes) -> list[bytes]:
    """What one node request may carry (the node takes at most MAX_PART per call)."""
    return [data[i:i + MAX_PART] for i in range(0, len(data), MAX_PART)] or [b""]


@function("C_MessageEncryptInit", ULONG, MECHANISM, ULONG)
async def message_encrypt_init(ctx: Context, handle: int, mechanism: tuple[int, Any], key: int) -> list[Any]:
    return await _init(ctx, handle, "encrypt", mechanism, key)


@function("C_EncryptMessage", ULONG, MESSAGE_PARAMS, BYTES, BYTES, CAP)
async def encrypt_message(ctx: Context, handle: int, params: MessageParams, aad: bytes, data: bytes,
                          cap: int) -> Result | list[Any]:
    return await _whole(ctx, handle, "encrypt", params, aad, data, cap)


@function("C_MessageEncryptFinal", ULONG)
async def message_encrypt_final(ctx: Context, handle: int) -> list[Any]:
    return await _final(ctx, handle, "encrypt")


@function("C_MessageDecryptInit", ULONG, MECHANISM, ULONG)
async def message_decrypt_init(ctx: Context, handle: int, mechanism: tuple[int, Any], key: int) -> list[Any]:
    return await _init(ctx, handle, "decrypt", mechanism, key)


@function("C_DecryptMessage", ULONG, MESSAGE_PARAMS, BYTES, BYTES, CAP)
async def decrypt_message(ctx: Context, handle: int, params: MessageParams, aad: bytes, data: bytes,
                          cap: int) -> Result | list[Any]:
    return await _whole(ctx, handle, "decrypt", params, aad, data, cap)


@function("C_MessageDecryptFinal", ULONG)
async def message_decrypt_final(ctx: Context, handle: int) -> list[Any]:
    return await _final(ctx, handle, "decrypt")


# --- a message in parts ------------------------------------------------------------------------------------


async def _begin(ctx: Context, handle: int, kind: str, params: MessageParams, aad: bytes) -> list[Any]:
    session = ctx.session(handle)
    context = _context(session, kind)
    if context.part is not None:
        raise AgentError(CKR.OPERATION_ACTIVE, "a message in parts is in progress: end it first")
    if kind in session.operations:
        raise AgentError(CKR.OPERATION_ACTIVE, f"a {kind} operation (C_{kind.capitalize()}Init) is active")
    iv = next_iv(context, params) if kind == "encrypt" else params.iv
    op = Operation(kind, context.mechanism, _node_params(iv, aad, params), context.key, None)
    async with session.lock:
        await _node_init(ctx, session, op)
    context.part = MessagePart(op, params.tag_len)
    return [iv] if kind == "encrypt" else []


async def _next(ctx: Context, handle: int, kind: str, params: MessageParams, data: bytes, cap: int,
                flags: int) -> Result | list[Any]:
    session = ctx.session(handle)
    context = _context(session, kind)
    part = context.part
    if part is None:
        raise AgentError(CKR.OPERATION_NOT_INITIALIZED, f"call C_{kind.capitalize()}MessageBegin first")
    last = bool(flags & CKF_END_OF_MESSAGE)
    encrypt = kind == "encrypt"
    # GCM encryption outputs each part as it comes; decryption holds everything back until the tag checked.
    needed = len(data) if encrypt else (part.taken + len(data) if last else 0)
    blank: list[Any] = [None, None] if encrypt else []
    if cap < 0:
        return [needed, None, *blank]
    if cap < needed:
        return Result(CKR.BUFFER_TOO_SMALL, [needed, None, *blank])
    if not encrypt and last and params.tag is None:
        raise _bad("the last part of a decryption needs the tag")
    async with session.lock:
        try:
            output = b""
            for piece in _pieces(data if encrypt or not last else data + (params.tag or b"")):
                body = await _node_step(ctx, session, part.op, f"crypto.{kind}_update", {"data": piece})
                part.op.parts += 1
                output += bytes(body.get("data", b"")) if isinstance(body, dict) else b""
            part.taken += len(data)
            tag = None
            if last:
                final = await _node_step(ctx, session, part.op, f"crypto.{kind}_final", {})
                part.op.binding = None
                context.part = None
                if encrypt:
                    tag = bytes(final["data"])
                    if len(tag) != part.tag_len:
                        raise AgentError(CKR.GENERAL_ERROR, "the node's tag is not as long as asked")
                else:
                    output += bytes(final["data"])
        except BaseException:
            # A failed part ends the message (not the context: the next message may begin).
            if context.part is part:
                context.part = None
                await _abort(ctx, session, part.op)
            raise
    return [len(output), output, None, tag] if encrypt else [len(output), output]


@function("C_EncryptMessageBegin", ULONG, MESSAGE_PARAMS, BYTES)
async def encrypt_message_begin(ctx: Context, handle: int, params: MessageParams, aad: bytes) -> list[Any]:
    return await _begin(ctx, handle, "encrypt", params, aad)


@function("C_EncryptMessageNext", ULONG, MESSAGE_PARAMS, BYTES, CAP, ULONG)
async def encrypt_message_next(ctx: Context, handle: int, params: MessageParams, data: bytes, cap: int,
                               flags: int) -> Result | list[Any]:
    return await _next(ctx, handle, "encrypt", params, data, cap, flags)


@function("C_DecryptMessageBegin", ULONG, MESSAGE_PARAMS, BYTES)
async def decrypt_message_begin(ctx: Context, handle: int, params: MessageParams, aad: bytes) -> list[Any]:
    return await _begin(ctx, handle, "decrypt", params, aad)


@function("C_DecryptMessageNext", ULONG, MESSAGE_PARAMS, BYTES, CAP, ULONG)
async def decrypt_message_next(ctx: Context, handle: int, params: MessageParams, data: bytes, cap: int,
                               flags: int) -> Result | list[Any]:
    return await _next(ctx, handle, "decrypt", params, data, cap, flags)
