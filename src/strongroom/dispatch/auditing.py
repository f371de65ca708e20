"""How handlers audit management events: a success is written just before the commit
(the "witness", so a failed audit write stops the change), a refusal afterwards with its CKR."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from strongroom.dispatch.call import Call
from strongroom.errors import HsmError


def witness(call: Call, event: str, details: dict[str, Any]) -> Callable[[], Awaitable[None]]:
    async def write() -> None:
        await call.services.audit.record(event, actor=call.actor, details=details)

    return write


async def audit_refusal(call: Call, event: str, exc: HsmError, details: dict[str, Any]) -> None:
    # If even this write fails, the original error still reaches the caller.
    try:
        await call.services.audit.record(event, actor=call.actor, outcome=exc.code.spec_name, details=details)
    except HsmError:
        pass
