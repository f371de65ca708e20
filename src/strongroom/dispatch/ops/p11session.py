"""``p11session.*``: PKCS#11 sessions (C_OpenSession / C_CloseSession) of a login."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from strongroom.auth.users import Role
from strongroom.dispatch.call import Call
from strongroom.dispatch.table import operation

#: Every login, and the anonymous one of a session that is not logged in (dispatch/ops/session.py).
ANY_ROLE = (Role.ADMIN.value, Role.CRYPTO_USER.value, Role.PUBLIC.value)


@operation("p11session.open", roles=ANY_ROLE)
async def open_session(call: Call, _args: None) -> dict[str, Any]:
    login = call.login
    session = call.services.sessions.p11.open(login.token, login.username)
    return {"session": session.handle}


@dataclass
class CloseArgs:
    session: int


@operation("p11session.close", args=CloseArgs, roles=ANY_ROLE)
async def close_session(call: Call, args: CloseArgs) -> dict[str, Any]:
    services = call.services
    services.sessions.p11.get(args.session, call.login.token)  # only your own sessions
    services.sessions.close_p11(args.session)
    return {}
