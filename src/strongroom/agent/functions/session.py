"""Session management functions (PKCS#11 v2.40 §5.6).

Login state belongs to the application (its ``app_id``), shared by all its sessions and
connections. The PIN is ``username:password``; CKU_USER logs in a crypto user, CKU_SO
an admin. The agent keeps the credentials in memory to log in again on other node
connections and after a node forgot the login (see :mod:`strongroom.agent.nodes`).

C_InitPIN: the logged-in SO (an admin) sets a user's password, ``username:password``, as
``strongroom user change-password`` does for an admin (which also unlocks the account).

After an agent restart the module reopens its application (``X_Resume``): the same app_id,
its sessions under the same handles, and its login from the PIN the module kept (the
first node call logs in with it, as after a node forgot a login).
"""

from __future__ import annotations

from typing import Any

from strongroom.agent.functions.crypto import context_login
from strongroom.agent.functions.registry import BYTES, OPTIONAL_LOGIN, SESSIONS, ULONG, Context, function
from strongroom.agent.nodes import Identity, Logins, NodeError
from strongroom.agent.returns import AgentError
from strongroom.agent.state import MAX_SESSIONS_PER_APP
from strongroom.constants import CKF, CKU
from strongroom.errors import CKR

ROLES = {CKU.USER: "crypto-user", CKU.SO: "admin"}


def _parse_pin(pin: bytes) -> tuple[str, str] | None:
    """``username:password`` (the password may itself contain ':'); None if malformed."""
    try:
        text = pin.decode("utf-8")
    except UnicodeDecodeError:
        return None
    username, sep, password = text.partition(":")
    if not sep or not username or not password:
        return None
    return username, password


@function("C_OpenSession", ULONG, ULONG)
async def open_session(ctx: Context, slot: int, flags: int) -> list[Any]:
    ctx.check_slot(slot)
    app = ctx.app
    if not flags & CKF.SERIAL_SESSION:
        raise AgentError(CKR.SESSION_PARALLEL_NOT_SUPPORTED, "CKF_SERIAL_SESSION must be set")
    rw = bool(flags & CKF.RW_SESSION)
    if not rw and app.user_type == CKU.SO:
        raise AgentError(CKR.SESSION_READ_WRITE_SO_EXISTS, "the SO is logged in: only R/W sessions")
    if len(app.sessions) >= MAX_SESSIONS_PER_APP:
        raise AgentError(CKR.SESSION_COUNT, f"at most {MAX_SESSIONS_PER_APP} sessions per application")
    return [app.new_session(slot, rw).handle]


@function("C_CloseSession", ULONG)
async def close_session(ctx: Context, handle: int) -> list[Any]:
    session = ctx.session(handle)
    await ctx.agent.close_session(ctx.app, session)
    return []


@function("C_CloseAllSessions", ULONG)
async def close_all_sessions(ctx: Context, slot: int) -> list[Any]:
    ctx.check_slot(slot)
    app = ctx.app
    for session in list(app.sessions.values()):
        await ctx.agent.close_session(app, session)
    if app.logins is not None:
        await ctx.agent.logout(app)
    return []


@function("C_GetSessionInfo", ULONG)
async def get_session_info(ctx: Context, handle: int) -> list[Any]:
    session = ctx.session(handle)
    return [session.slot, int(session.state), int(session.flags), 0]


@function("C_Login", ULONG, ULONG, BYTES)
async def login(ctx: Context, handle: int, user_type: int, pin: bytes) -> list[Any]:
    session = ctx.session(handle)
    app = ctx.app
    if user_type == CKU.CONTEXT_SPECIFIC:
        # Re-authentication for a CKA_ALWAYS_AUTHENTICATE key. The node checks it (lockout, audit):
        # the agent only passes it on, and keeps nothing of it.
        identity = app.identity
        if identity is None or identity.user_type != CKU.USER:
            raise AgentError(CKR.OPERATION_NOT_INITIALIZED, "no operation needs a context-specific login")
        parsed = _parse_pin(pin)
        if parsed is not None and parsed[0].lower() == identity.username:
            password = parsed[1]  # the PIN as C_Login(CKU_USER) takes it, "username:password"
        else:
            try:
                password = pin.decode("utf-8")
            except UnicodeDecodeError:
                raise AgentError(CKR.PIN_INCORRECT, "the PIN is not UTF-8") from None
        await context_login(ctx, session, password)
        return []
    if user_type not in ROLES:
        raise AgentError(CKR.USER_TYPE_INVALID, f"unknown user type {user_type}")
    async with app.login_lock:
        if app.identity is not None:
            if app.identity.user_type == user_type:
                raise AgentError(CKR.USER_ALREADY_LOGGED_IN, "already logged in")
            raise AgentError(CKR.USER_ANOTHER_ALREADY_LOGGED_IN, "another user type is logged in")
        if user_type == CKU.SO and any(not s.rw for s in app.sessions.values()):
            raise AgentError(CKR.SESSION_READ_ONLY_EXISTS, "close the read-only sessions before the SO logs in")
        parsed = _parse_pin(pin)
        if parsed is None:
            raise AgentError(CKR.PIN_INCORRECT, "the PIN is not in username:password form (a Strongroom PIN names "
                                                "the user: for example alice:her-password)")
        username, password = parsed
        role = ROLES[CKU(user_type)]
        link = await ctx.agent.pool.acquire(app.home)
        epoch = link.epoch
        reply = await link.request("session.login", {"username": username, "password": password, "role": role},
                                   None)
        if not reply.ok:
            if reply.code in (CKR.PIN_INCORRECT, CKR.PIN_LOCKED):
                app.pin_failures.failed(username.lower(), user_type, reply.code == CKR.PIN_LOCKED)
            raise NodeError(reply.code, f"the cluster refused the login of {username!r}: {reply.body}")
        if app.finalized:
            raise AgentError(CKR.CRYPTOKI_NOT_INITIALIZED, "the application was finalized meanwhile")
        logins = Logins(Identity(str(reply.body["username"]), bytearray(password.encode()), role, user_type))
        logins.adopt(link, reply.body["session"], epoch)
        app.pin_failures.succeeded(username.lower(), user_type)
        await ctx.agent.leave_public(app)
        app.logins = logins
        app.home = link
        for other in app.sessions.values():
            other.find = None  # finds started in the public state would see too little
    return []


@function("C_InitPIN", ULONG, BYTES)
async def init_pin(ctx: Context, handle: int, pin: bytes) -> list[Any]:
    """The SO sets the normal user's PIN: ``username:password`` names the crypto user (a token has many) and
    its new password; the node changes it as an admin's ``user.change_password`` (which also unlocks it)."""
    session = ctx.session(handle)
    app = ctx.app
    if app.user_type != CKU.SO or app.logins is None:
        raise AgentError(CKR.USER_NOT_LOGGED_IN, "C_InitPIN is the SO's: log in with CKU_SO (an admin)")
    if not session.rw:
        raise AgentError(CKR.SESSION_READ_ONLY, "C_InitPIN needs a read/write session")
    parsed = _parse_pin(pin)
    if parsed is None:
        raise AgentError(CKR.PIN_INVALID, "the PIN is username:password (the user whose password to set)")
    username, password = parsed
    await ctx.agent.pool.call("user.change_password", {"username": username, "password": password},
                              logins=app.logins, idempotent=False)
    return []


@function("X_Resume", SESSIONS, OPTIONAL_LOGIN)
async def resume(ctx: Context, sessions: list[tuple[int, int, int]], login: tuple[int, bytes] | None) -> list[Any]:
    """The module's application after an agent restart: its sessions again under their handles, and its login
    from the PIN the module kept (logged in on the nodes at the first call that needs it)."""
    app = ctx.app
    if app.sessions or app.logins is not None:
        raise AgentError(CKR.OPERATION_ACTIVE, "this application already has sessions here")
    for handle, slot, flags in sessions:
        ctx.check_slot(slot)
        if not handle or handle in app.sessions:
            raise AgentError(CKR.ARGUMENTS_BAD, f"session handle {handle} is not new")
        app.new_session(slot, bool(flags & CKF.RW_SESSION), handle)
    if login is None:
        return []
    user_type, pin = login
    parsed = _parse_pin(pin)
    if user_type not in ROLES or parsed is None:
        raise AgentError(CKR.ARGUMENTS_BAD, "a resumed login is CKU_USER or CKU_SO with username:password")
    username, password = parsed
    app.logins = Logins(Identity(username.lower(), bytearray(password.encode()), ROLES[CKU(user_type)], user_type))
    return []


@function("C_Logout", ULONG)
async def logout(ctx: Context, handle: int) -> list[Any]:
    ctx.session(handle)
    app = ctx.app
    async with app.login_lock:
        if app.logins is None:
            raise AgentError(CKR.USER_NOT_LOGGED_IN, "not logged in")
        await ctx.agent.logout(app)
    return []


@function("C_SetPIN", ULONG, BYTES, BYTES)
async def set_pin(ctx: Context, handle: int, old: bytes, new: bytes) -> list[Any]:
    """Change the caller's own password: old ``user:pass`` (or ``pass`` when logged in),
    new ``pass`` (or ``user:pass`` naming the same user)."""
    session = ctx.session(handle)
    app = ctx.app
    if not session.rw:
        raise AgentError(CKR.SESSION_READ_ONLY, "C_SetPIN needs a read/write session")
    identity = app.identity
    parsed_old = _parse_pin(old)
    if parsed_old is not None and (identity is None or parsed_old[0].lower() == identity.username):
        username, old_password = parsed_old
    elif identity is not None:
        try:
            username, old_password = identity.username, old.decode("utf-8")
        except UnicodeDecodeError:
            raise AgentError(CKR.PIN_INCORRECT, "the old PIN is not UTF-8") from None
    else:
        raise AgentError(CKR.PIN_INCORRECT, "not logged in: give the old PIN as username:password")
    try:
        new_text = new.decode("utf-8")
    except UnicodeDecodeError:
        raise AgentError(CKR.PIN_INVALID, "the new PIN is not UTF-8") from None
    new_user, sep, new_password = new_text.partition(":")
    if sep and new_user and new_user.lower() == username.lower():
        new_text = new_password
    role = identity.role if identity is not None and identity.username == username.lower() else None
    pool = ctx.agent.pool
    link = await pool.acquire(app.home)
    # A fresh login with the old password proves it (and counts a failure towards lockout,
    # like any login); the change is made under it and it is ended right after.
    args: dict[str, Any] = {"username": username, "password": old_password}
    if role is not None:
        args["role"] = role
    reply = await link.request("session.login", args, None)
    if not reply.ok:
        code = reply.code if reply.code in (CKR.PIN_INCORRECT, CKR.PIN_LOCKED) else CKR.PIN_INCORRECT
        if reply.code in (CKR.DEVICE_ERROR, CKR.CRYPTOKI_NOT_INITIALIZED):
            code = reply.code
        raise NodeError(code, reply.body)
    token = reply.body["session"]
    try:
        change = await link.request("user.change_password",
                                    {"username": reply.body["username"], "password": new_text}, token)
    finally:
        try:
            await link.request("session.logout", {}, token, timeout=5)
        except Exception:  # noqa: BLE001 - the change is done or failed already
            pass
    if not change.ok:
        raise NodeError(change.code, change.body)
    if identity is not None and identity.username == reply.body["username"]:
        identity.replace_password(new_text)  # later transparent logins use the new password
    return []
