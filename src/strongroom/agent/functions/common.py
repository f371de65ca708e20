"""Helpers the chapter modules share: login checks, routing, node sessions, output capacity."""

from __future__ import annotations

import logging
from typing import Any

from strongroom.agent.functions.registry import Context, Result
from strongroom.agent.nodes import NodeLink, StateLost
from strongroom.agent.returns import AgentError
from strongroom.agent.state import App, Binding, Pending, Session, is_session_object
from strongroom.constants import CKU
from strongroom.errors import CKR

log = logging.getLogger("strongroom.agent")


def require_user(ctx: Context) -> App:
    """Calls that need the normal user (a crypto user) logged in, whatever public objects allow."""
    app = ctx.app
    if app.user_type != CKU.USER:
        raise AgentError(CKR.USER_NOT_LOGGED_IN, "log in as the normal user (CKU_USER) first")
    return app


def is_public(app: App) -> bool:
    """Not logged in as the normal user: the node sees the application's anonymous login (PKCS#11 §6.7)."""
    return app.user_type != CKU.USER


def no_token_objects_in_public(app: App, token: bool) -> None:
    """PKCS#11 §6.7 lets a public session make public session objects; a token object needs an owner account."""
    if token and is_public(app):
        raise AgentError(CKR.USER_NOT_LOGGED_IN, "token objects are made after C_Login (a crypto user)")


def require_login(ctx: Context, code: CKR = CKR.USER_NOT_LOGGED_IN) -> App:
    app = ctx.app
    if app.logins is None:
        raise AgentError(code, "not logged in")
    return app


def route(app: App, handles: tuple[int, ...] = (), *,
          any_session_objects: bool = False) -> tuple[NodeLink | None, bool]:
    """Where a stateless call goes: the application's home link if it names one of its session
    objects (or may see them: finds), else the least loaded link."""
    if app.home is not None and (
        any(is_session_object(h) for h in handles) or (any_session_objects and app.session_objects)
    ):
        return app.home, True
    return None, False


async def stateless(ctx: Context, op: str, args: dict[str, Any], *, handles: tuple[int, ...] = (),
                    idempotent: bool = True, any_session_objects: bool = False, view: bool = False) -> dict[str, Any]:
    """A call that needs the application's login (or its anonymous one) but no node-side session. ``view``:
    a find or a read, made under whoever is logged in (the SO too); otherwise under
    :attr:`App.crypto_logins`."""
    app = ctx.app
    link, pinned = route(app, handles, any_session_objects=any_session_objects)
    logins = app.view_logins if view else app.crypto_logins
    body, _link, _serial = await ctx.agent.pool.call(op, args, logins=logins, link=link, pinned=pinned,
                                                     idempotent=idempotent)
    return body


async def ensure_binding(ctx: Context, session: Session) -> Binding:
    """The node p11session of ``session``, opened now on the application's home link if needed."""
    app = ctx.app
    logins = app.crypto_logins
    if session.binding is not None and session.binding.valid(logins):
        return session.binding
    session.binding = None
    home = await ctx.agent.pool.acquire(app.home)
    body, link, serial = await ctx.agent.pool.call("p11session.open", {}, logins=logins, link=home,
                                                   pinned=True, idempotent=True)
    generation = (link.key, link.epoch, serial)
    if app.node_generation != generation:
        # A new connection or a new login: whatever session objects the old one held are gone.
        app.session_objects.clear()
        app.node_generation = generation
    app.home = link
    session.binding = Binding(link, link.epoch, serial, int(body["session"]))
    return session.binding


async def in_session(ctx: Context, session: Session, binding: Binding, op: str,
                     args: dict[str, Any]) -> dict[str, Any]:
    """A call on the node p11session ``binding``; raises StateLost if the node lost it."""
    try:
        body, _link, _serial = await ctx.agent.pool.call(
            op, {**args, "session": binding.handle}, logins=ctx.app.crypto_logins, link=binding.link,
            stateful=True, serial=binding.serial,
        )
    except StateLost:
        if session.binding is binding:
            session.binding = None
        raise
    return body


async def with_session_object(ctx: Context, session: Session, op: str, args: dict[str, Any]) -> dict[str, Any]:
    """Make a session object: on the session's node p11session. Retried once on a fresh one if the
    node lost it — safe, since anything the lost attempt made was lost with it."""
    for attempt in (1, 2):
        binding = await ensure_binding(ctx, session)
        try:
            return await in_session(ctx, session, binding, op, args)
        except StateLost:
            if attempt == 2:
                raise
            log.info("%s: node session lost; retrying on a new one", ctx.function)
    raise AssertionError("unreachable")


def deliver(holder: Any, attr: str, pending: Pending, cap: int) -> Result | list[Any]:
    """PKCS#11 §5.2 output convention over a computed output kept on ``holder.<attr>``.

    cap -1 (NULL buffer): answer the length, keep the output. A buffer too small:
    CKR_BUFFER_TOO_SMALL with the length, keep it. Otherwise hand it over and forget it.
    """
    length = len(pending.output)
    if cap < 0:
        setattr(holder, attr, pending)
        return [length, None]
    if cap < length:
        setattr(holder, attr, pending)
        return Result(CKR.BUFFER_TOO_SMALL, [length, None])
    setattr(holder, attr, None)
    return [length, pending.output]
