"""How handlers audit management events: a success is written just before the commit
(the "witness", so a failed audit write stops the change), a refusal afterwards with its CKR
(:class:`audited` around the part of a handler whose refusals are audited)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from types import TracebackType
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


def audited(call: Call, event: str, details: dict[str, Any]) -> AuditedRefusals:
    """``async with audited(call, event, details): ...``: a refusal (an HsmError) raised in the block is
    audited as ``event`` with its CKR as the outcome, then reaches the caller unchanged. ``details`` may be
    filled in within the block: the record holds it as it is when the refusal happens."""
    return AuditedRefusals(call, event, details)


class AuditedRefusals:
    """The context manager :func:`audited` returns."""

    __slots__ = ("_call", "_event", "_details")

    def __init__(self, call: Call, event: str, details: dict[str, Any]) -> None:
        self._call = call
        self._event = event
        self._details = details

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        traceback: TracebackType | None) -> None:
        # Returns None: the exception, if any, goes on.
        if isinstance(exc, HsmError):
            await audit_refusal(self._call, self._event, exc, self._details)
