"""``p11session.*``: PKCS#11 sessions (C_OpenSession / C_CloseSession) of a login."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from strongroom.auth.users import Role
from strongroom.dispatch.table import operation

ANY_ROLE = (Role.ADMIN.value, Role.CRYPTO_USER.value)


@operation("p11session.open", roles=ANY_ROLE)
async def open_session(call: Any, _args: None) -> dict[str, Any]:
    session = call.services.p11.open(call.session.token, call.session.username)
    return {"session": session.handle}


@dataclass
class CloseArgs:
    session: int


@operation("p11session.close", args=CloseArgs, roles=ANY_ROLE)
async def close_session(call: Any, args: CloseArgs) -> dict[str, Any]:
    services = call.services
    services.p11.get(args.session, call.session.token)  # only your own sessions
    services.close_p11_session(args.session)
    return {}
