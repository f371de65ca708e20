"""Key management functions (PKCS#11 v2.40 §5.14): generate, generate a pair, wrap, unwrap, derive.

A key made with CKA_TOKEN true is a token object, made through any node; one made with
CKA_TOKEN false is a session object of the calling session, made on its node session. An
application that is not logged in makes public session keys only (PKCS#11 v2.40 §6.7; the node
checks CKA_PRIVATE): a token key needs C_Login, CKR_USER_NOT_LOGGED_IN.
Calls that make token objects are not retried after a lost connection (the outcome is
unknown: the application gets CKR_DEVICE_REMOVED and may look for the key); calls that
make session objects are retried once on a new node session, since whatever the lost
attempt made was lost with the node session. C_WrapKey keeps its output across a size
query (§5.2).
"""

from __future__ import annotations

from typing import Any

from strongroom.agent.attrcodec import decode_template, template_flag
from strongroom.agent.functions.common import (
    deliver,
    no_token_objects_in_public,
    stateless,
    with_session_object,
)
from strongroom.agent.functions.registry import BYTES, CAP, MECHANISM, TEMPLATE, ULONG, Context, function
from strongroom.agent.nodes import NodeError
from strongroom.agent.returns import AgentError
from strongroom.agent.state import Pending, Session, fingerprint
from strongroom.constants import CKA, CKO
from strongroom.errors import CKR


def _read_only(session: Session, token: bool) -> None:
    if token and not session.rw:
        raise AgentError(CKR.SESSION_READ_ONLY, "token objects are made only in read/write sessions")


async def _make(ctx: Context, session: Session, op: str, args: dict[str, Any], token: bool,
                handles: tuple[int, ...]) -> dict[str, Any]:
    if token:
        return await stateless(ctx, op, args, handles=handles, idempotent=False)
    async with session.lock:
        return await with_session_object(ctx, session, op, args)


def new_key_template(ctx: Context, session: Session, template: list[Any]) -> tuple[list[list[Any]], bool]:
    """The new key's template for the node, and whether it makes a token object (which needs a
    read/write session and a login)."""
    typed = decode_template(template, ctx.layout)
    token = template_flag(typed, CKA.TOKEN)
    _read_only(session, token)
    no_token_objects_in_public(ctx.app, token)
    return typed, token


async def make_key(ctx: Context, session: Session, op: str, args: dict[str, Any], token: bool,
                   handles: tuple[int, ...]) -> tuple[int, dict[str, Any]]:
    """Make one key through ``op`` (its template in ``args``); a session object is noted as the
    calling session's. Returns its handle and the node's answer."""
    body = await _make(ctx, session, op, args, token, handles)
    key = int(body["handle"])
    if not token:
        ctx.app.session_objects[key] = session.handle
    return key, body


@function("C_GenerateKey", ULONG, MECHANISM, TEMPLATE)
async def generate_key(ctx: Context, handle: int, mechanism: tuple[int, Any], template: list[Any]) -> list[Any]:
    session = ctx.session(handle)
    typed, token = new_key_template(ctx, session, template)
    ckm, params = mechanism
    key, _ = await make_key(ctx, session, "key.generate", {"mechanism": ckm, "template": typed, "params": params},
                            token, ())
    return [key]


@function("C_GenerateKeyPair", ULONG, MECHANISM, TEMPLATE, TEMPLATE)
async def generate_key_pair(ctx: Context, handle: int, mechanism: tuple[int, Any], public: list[Any],
                            private: list[Any]) -> list[Any]:
    session = ctx.session(handle)
    app = ctx.app
    public_typed = decode_template(public, ctx.layout)
    private_typed = decode_template(private, ctx.layout)
    public_token = template_flag(public_typed, CKA.TOKEN)
    private_token = template_flag(private_typed, CKA.TOKEN)
    _read_only(session, public_token or private_token)
    no_token_objects_in_public(app, public_token or private_token)
    ckm, params = mechanism
    args = {"mechanism": ckm, "public_template": public_typed, "private_template": private_typed,
            "params": params}
    body = await _make(ctx, session, "key.generate_pair", args, public_token and private_token, ())
    public_key, private_key = int(body["public"]), int(body["private"])
    if not public_token:
        app.session_objects[public_key] = session.handle
    if not private_token:
        app.session_objects[private_key] = session.handle
    return [public_key, private_key]


@function("C_WrapKey", ULONG, MECHANISM, ULONG, ULONG, CAP)
async def wrap_key(ctx: Context, handle: int, mechanism: tuple[int, Any], wrapping_key: int, key: int,
                   cap: int) -> Any:
    session = ctx.session(handle)
    ckm, params = mechanism
    stamp = fingerprint("C_WrapKey", ckm, params, wrapping_key, key)
    async with session.lock:
        kept = session.pending_wrap
        if kept is not None and kept.fingerprint == stamp:
            return deliver(session, "pending_wrap", kept, cap)
        session.pending_wrap = None
        args = {"mechanism": ckm, "wrapping_key": wrapping_key, "key": key, "params": params}
        try:
            body = await stateless(ctx, "key.wrap", args, handles=(wrapping_key, key))
        except NodeError as exc:
            if exc.code == CKR.KEY_HANDLE_INVALID and not await _usable_key(ctx, wrapping_key):
                raise AgentError(CKR.WRAPPING_KEY_HANDLE_INVALID, str(exc)) from None
            raise
        return deliver(session, "pending_wrap", Pending("C_WrapKey", stamp, body["wrapped"], True), cap)


async def _usable_key(ctx: Context, handle: int) -> bool:
    """Is ``handle`` a key the caller sees? (Tells C_WrapKey's two key handles apart.)"""
    try:
        body = await stateless(ctx, "object.get_attributes", {"handle": handle, "types": [int(CKA.CLASS)]},
                               handles=(handle,))
    except NodeError:
        return False
    values = body.get("attributes") or [[CKA.CLASS, None]]
    return values[0][1] in (CKO.SECRET_KEY, CKO.PUBLIC_KEY, CKO.PRIVATE_KEY)


@function("C_UnwrapKey", ULONG, MECHANISM, ULONG, BYTES, TEMPLATE)
async def unwrap_key(ctx: Context, handle: int, mechanism: tuple[int, Any], unwrapping_key: int, wrapped: bytes,
                     template: list[Any]) -> list[Any]:
    session = ctx.session(handle)
    typed, token = new_key_template(ctx, session, template)
    ckm, params = mechanism
    args = {"mechanism": ckm, "unwrapping_key": unwrapping_key, "wrapped": wrapped, "template": typed,
            "params": params}
    key, _ = await make_key(ctx, session, "key.unwrap", args, token, (unwrapping_key,))
    return [key]


@function("C_DeriveKey", ULONG, MECHANISM, ULONG, TEMPLATE)
async def derive_key(ctx: Context, handle: int, mechanism: tuple[int, Any], base_key: int,
                     template: list[Any]) -> list[Any]:
    session = ctx.session(handle)
    typed, token = new_key_template(ctx, session, template)
    ckm, params = mechanism
    args = {"mechanism": ckm, "base_key": base_key, "template": typed, "params": params}
    key, _ = await make_key(ctx, session, "key.derive", args, token, (base_key,))
    return [key]
