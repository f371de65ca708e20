"""``session.*``: login, logout and who-am-I. Every login attempt is audited."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from strongroom.auth.users import Role
from strongroom.dispatch.table import operation
from strongroom.errors import HsmError, PinIncorrect

ANY_ROLE = (Role.ADMIN.value, Role.CRYPTO_USER.value)


@dataclass
class LoginArgs:
    username: str
    password: str
    role: str | None = None


@operation("session.login", args=LoginArgs)
async def login(call: Any, args: LoginArgs) -> dict[str, Any]:
    services = call.services
    users = services.require_users()
    attempted = args.username.lower()[:31]
    try:
        wanted = None if args.role is None else Role.parse(args.role)
        user = await users.authenticate(args.username, args.password)
        if wanted is not None and user.role is not wanted:
            # Same answer as a wrong password: a login must not reveal a user's role.
            raise PinIncorrect("wrong username or password")
        session = services.sessions.open(user.name, user.role, call.connection_id)
    except HsmError as exc:
        await services.audit(
            "auth.login", actor=attempted, outcome=exc.code.spec_name, details={"peer": call.peer_name}
        )
        raise
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
