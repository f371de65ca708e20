"""Object management functions (PKCS#11 v2.40 §5.7).

Token objects are reachable through any node; session objects live in the node worker
that holds the application's node sessions (its home link), so calls naming them are
sent there. Find cursors are kept here: C_FindObjectsInit fetches every matching handle
at once (``object.find``) and C_FindObjects hands them out, so a cursor survives a
node reconnect.

Decisions:

- In a public session (nobody logged in, PKCS#11 v2.40 §6.7) the node shows public objects
  (CKA_PRIVATE false) and the application's own public session objects, through its anonymous
  login; it makes public session objects only (a token object needs C_Login:
  CKR_USER_NOT_LOGGED_IN). While the cluster policy ``public_objects`` is ``hidden`` it shows
  nothing: finds return no handle, reads of an object answer CKR_OBJECT_HANDLE_INVALID.
- C_GetObjectSize answers CKR_OK with CK_UNAVAILABLE_INFORMATION for an object the
  caller can see (the size of an encrypted, replicated record says nothing useful
  about token memory), CKR_OBJECT_HANDLE_INVALID otherwise.
- C_FindObjectsInit with an attribute the node does not know finds nothing (no object
  has it) instead of failing.
"""

from __future__ import annotations

from typing import Any

from strongroom.agent.attrcodec import CodecError, decode_template, read_values, template_flag
from strongroom.agent.functions.common import no_token_objects_in_public, stateless, with_session_object
from strongroom.agent.functions.registry import ATTRIBUTE_REQUESTS, TEMPLATE, ULONG, Context, Result, function
from strongroom.agent.nodes import NodeError
from strongroom.agent.returns import AgentError
from strongroom.agent.state import FindCursor, is_session_object
from strongroom.constants import CKA, CKU
from strongroom.errors import CKR


def _read_only(session_rw: bool, token: bool) -> None:
    if token and not session_rw:
        raise AgentError(CKR.SESSION_READ_ONLY, "token objects change only in read/write sessions")


def _not_for_the_so(ctx: Context) -> None:
    """The SO (an admin) makes and changes no objects but the CKA_TRUSTED flag (C_SetAttributeValue)."""
    if ctx.app.user_type == CKU.SO:
        raise AgentError(CKR.USER_NOT_LOGGED_IN, "objects are made by the normal user (CKU_USER)")


@function("C_CreateObject", ULONG, TEMPLATE)
async def create_object(ctx: Context, handle: int, template: list[Any]) -> list[Any]:
    session = ctx.session(handle)
    app = ctx.app
    _not_for_the_so(ctx)
    typed = decode_template(template, ctx.layout)
    token = template_flag(typed, CKA.TOKEN)
    _read_only(session.rw, token)
    no_token_objects_in_public(app, token)
    if token:
        body = await stateless(ctx, "object.create", {"template": typed}, idempotent=False)
    else:
        async with session.lock:
            body = await with_session_object(ctx, session, "object.create", {"template": typed})
        app.session_objects[int(body["handle"])] = session.handle
    return [int(body["handle"])]


@function("C_CopyObject", ULONG, ULONG, TEMPLATE)
async def copy_object(ctx: Context, handle: int, source: int, template: list[Any]) -> list[Any]:
    session = ctx.session(handle)
    app = ctx.app
    _not_for_the_so(ctx)
    typed = decode_template(template, ctx.layout)
    token = template_flag(typed, CKA.TOKEN, default=not is_session_object(source))
    _read_only(session.rw, token)
    no_token_objects_in_public(app, token)
    args = {"handle": source, "template": typed}
    if token:
        body = await stateless(ctx, "object.copy", args, handles=(source,), idempotent=False)
    else:
        async with session.lock:
            body = await with_session_object(ctx, session, "object.copy", args)
        app.session_objects[int(body["handle"])] = session.handle
    return [int(body["handle"])]


@function("C_DestroyObject", ULONG, ULONG)
async def destroy_object(ctx: Context, handle: int, target: int) -> list[Any]:
    session = ctx.session(handle)
    _read_only(session.rw, not is_session_object(target))
    await stateless(ctx, "object.destroy", {"handle": target}, handles=(target,), idempotent=False)
    ctx.app.session_objects.pop(target, None)
    return []


@function("C_GetObjectSize", ULONG, ULONG)
async def get_object_size(ctx: Context, handle: int, target: int) -> list[Any]:
    ctx.session(handle)
    await stateless(ctx, "object.get_attributes", {"handle": target, "types": [int(CKA.CLASS)]},
                    handles=(target,), view=True)
    return [ctx.layout.unavailable]


@function("C_GetAttributeValue", ULONG, ULONG, ATTRIBUTE_REQUESTS)
async def get_attribute_value(ctx: Context, handle: int, target: int, requests: list[tuple[int, int]]) -> Result:
    ctx.session(handle)
    body = await stateless(ctx, "object.get_attributes",
                           {"handle": target, "types": [cka for cka, _cap in requests]}, handles=(target,), view=True)
    values = [value for _cka, value in body["attributes"]]
    if len(values) != len(requests):
        raise AgentError(CKR.GENERAL_ERROR, "the node answered another number of attributes")
    rv, outputs = read_values(requests, values, body.get("error"), ctx.layout)
    return Result(rv, [outputs])


@function("C_SetAttributeValue", ULONG, ULONG, TEMPLATE)
async def set_attribute_value(ctx: Context, handle: int, target: int, template: list[Any]) -> list[Any]:
    session = ctx.session(handle)
    _read_only(session.rw, not is_session_object(target))
    typed = decode_template(template, ctx.layout)
    await stateless(ctx, "object.set_attributes", {"handle": target, "template": typed}, handles=(target,),
                    view=True)
    return []


# --- finding ---------------------------------------------------------------------------------------


@function("C_FindObjectsInit", ULONG, TEMPLATE)
async def find_objects_init(ctx: Context, handle: int, template: list[Any]) -> list[Any]:
    session = ctx.session(handle)
    if session.find is not None:
        raise AgentError(CKR.OPERATION_ACTIVE, "a search is already active in this session")
    try:
        typed = decode_template(template, ctx.layout)
    except CodecError as exc:
        if exc.code != CKR.TEMPLATE_INCONSISTENT:
            raise
        session.find = FindCursor([])  # a template that contradicts itself matches nothing
        return []
    try:
        body = await stateless(ctx, "object.find", {"template": typed}, any_session_objects=True, view=True)
        handles = [int(h) for h in body["handles"]]
    except NodeError as exc:
        # An attribute no object has; or nobody logged in while the cluster hides public objects.
        if exc.code not in (CKR.ATTRIBUTE_TYPE_INVALID, CKR.USER_NOT_LOGGED_IN):
            raise
        handles = []
    session.find = FindCursor(handles)
    return []


@function("C_FindObjects", ULONG, ULONG)
async def find_objects(ctx: Context, handle: int, max_count: int) -> list[Any]:
    session = ctx.session(handle)
    cursor = session.find
    if cursor is None:
        raise AgentError(CKR.OPERATION_NOT_INITIALIZED, "call C_FindObjectsInit first")
    chunk = cursor.handles[cursor.position:cursor.position + max_count]
    cursor.position += len(chunk)
    return [chunk]


@function("C_FindObjectsFinal", ULONG)
async def find_objects_final(ctx: Context, handle: int) -> list[Any]:
    session = ctx.session(handle)
    if session.find is None:
        raise AgentError(CKR.OPERATION_NOT_INITIALIZED, "no search is active")
    session.find = None
    return []
