"""``session.*``: login, logout and who-am-I. Every login attempt is audited."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from strongroom.auth.users import Role
from strongroom.dispatch.table import operation
from strongroom.errors import CKR, HsmError, PinIncorrect

log = logging.getLogger(__name__)

ANY_ROLE = (Role.ADMIN.value, Role.CRYPTO_USER.value)


@dataclass
class LoginArgs:
    username: str
    password: str
    role: str | None = None


def _source(call: Any) -> str:
    """Who is trying: the client certificate of the connection (its serial), else its name."""
    serial = getattr(call.peer, "serial", None)
    return f"serial:{serial:x}" if serial is not None else f"peer:{call.peer_name}"


async def _is_admin_attempt(users: Any, username: str, wanted: Role | None) -> bool:
    if wanted is Role.ADMIN:
        return True
    try:
        user = await users.get(username)
    except HsmError:
        return False
    return user is not None and user.role is Role.ADMIN


@operation("session.login", args=LoginArgs)
async def login(call: Any, args: LoginArgs) -> dict[str, Any]:
    services = call.services
    users = services.require_users()
    attempted = args.username.lower()[:31]
    source = _source(call)
    admin_attempt = False
    try:
        wanted = None if args.role is None else Role.parse(args.role)
        admin_attempt = await _is_admin_attempt(users, attempted, wanted)
        wait = services.login_throttle.wait_seconds(source) if admin_attempt else 0.0
        if wait > 0:
            raise HsmError(f"too many failed admin logins from this client ({call.peer_name}); "
                           f"try again in {wait:.0f} s", CKR.FUNCTION_FAILED)
        user = await users.authenticate(args.username, args.password)
        if wanted is not None and user.role is not wanted:
            # Same answer as a wrong password: a login must not reveal a user's role.
            raise PinIncorrect("wrong username or password")
        session = services.sessions.open(user.name, user.role, call.connection_id)
    except HsmError as exc:
        details: dict[str, Any] = {"peer": call.peer_name}
        if admin_attempt and exc.code in (CKR.PIN_INCORRECT, CKR.PIN_LOCKED):
            pause = services.login_throttle.failed(source)
            if pause:
                details["source_paused_seconds"] = pause
                log.warning("failed admin logins from %s (%s) reached the limit; pausing it %.0f s",
                            call.peer_name, source, pause)
        await services.audit("auth.login", actor=attempted, outcome=exc.code.spec_name, details=details)
        raise
    if user.role is Role.ADMIN:
        services.login_throttle.succeeded(source)
    await services.audit("auth.login", actor=user.name, details={"peer": call.peer_name, "role": user.role.value})
    return {"session": session.token, "username": user.name, "role": user.role.value}


@operation("session.logout", roles=ANY_ROLE)
async def logout(call: Any, _args: None) -> dict[str, Any]:
    call.services.sessions.close(call.session.token)
    call.services.end_login(call.session.token)
    await call.services.audit("auth.logout", actor=call.actor)
    return {}


@operation("session.info", roles=ANY_ROLE)
async def info(call: Any, _args: None) -> dict[str, Any]:
    return {"username": call.session.username, "role": call.session.role.value}
