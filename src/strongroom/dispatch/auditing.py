"""How handlers audit management events.

A change is audited in two records (:mod:`strongroom.audit.outcomes`): the *intent*, written by the
``witness`` right before the commit (a failed write stops the change), and the *outcome*, written
when the ``audited`` block around it ends: ``ok`` naming what the commit created, updated or
removed, or the failure's CKR. A refusal before any witness is one record with its CKR, as it always
was. So the log never says ``ok`` for a change that did not happen: a commit that failed, or whose
answer was lost, or whose worker died, gets the outcome the store proves
(:mod:`strongroom.services.auditor`).

Every ``witness`` must run inside an ``audited`` block (that is what writes its outcome).
"""

from __future__ import annotations

import contextvars
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from strongroom.dispatch.call import Call
from strongroom.errors import HsmError
from strongroom.services.auditor import Intent, outcome_of
from strongroom.store.base import StoreError


@dataclass(eq=False)
class _Scope:
    call: Call
    event: str
    details: dict[str, Any]
    intent: Intent | None = None


_SCOPE: contextvars.ContextVar[_Scope | None] = contextvars.ContextVar("strongroom_audited", default=None)


def witness(call: Call, event: str, details: dict[str, Any]) -> Callable[[], Awaitable[None]]:
    """What a handler hands to the layer that commits: called right before the commit, it writes the intent
    (once per block: retries of the same change share it)."""

    async def write() -> None:
        scope = _SCOPE.get()
        if scope is None or scope.call is not call:
            raise RuntimeError(f"witness of {event} outside an audited block: its outcome would never be written")
        auditor = call.services.audit
        if scope.intent is not None:
            if not scope.intent.committed:
                return  # the same change tried again (a conflict, a new handle): one intent
            await auditor.settle(scope.intent, None)  # a second change in the same block
        scope.intent = await auditor.intent(event, actor=call.actor, details=details)

    return write


async def audit_refusal(call: Call, event: str, exc: HsmError, details: dict[str, Any]) -> None:
    # If even this write fails, the original error still reaches the caller.
    try:
        await call.services.audit.record(event, actor=call.actor, outcome=exc.code.spec_name, details=details)
    except HsmError:
        pass


def audited(call: Call, event: str, details: dict[str, Any]) -> AuditedRefusals:
    """``async with audited(call, event, details): ...``: the block of a handler that changes something.

    A witness called inside it announces the change (the intent); when the block ends, the outcome is
    written. A refusal (an HsmError, or a store failure) raised before any witness is audited as ``event``
    with its CKR. The exception, if any, then reaches the caller unchanged. ``details`` may be filled in
    within the block: a refusal's record holds it as it is when the refusal happens."""
    return AuditedRefusals(call, event, details)


class AuditedRefusals:
    """The context manager :func:`audited` returns."""

    __slots__ = ("_scope", "_token")

    def __init__(self, call: Call, event: str, details: dict[str, Any]) -> None:
        self._scope = _Scope(call, event, details)
        self._token: contextvars.Token[_Scope | None] | None = None

    async def __aenter__(self) -> None:
        self._token = _SCOPE.set(self._scope)

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        traceback: TracebackType | None) -> None:
        # Returns None: the exception, if any, goes on.
        scope = self._scope
        if self._token is not None:
            _SCOPE.reset(self._token)
        call = scope.call
        if scope.intent is not None:
            await call.services.audit.settle(scope.intent, exc)
        elif isinstance(exc, HsmError):
            await audit_refusal(call, scope.event, exc, scope.details)
        elif isinstance(exc, StoreError):
            try:
                await call.services.audit.record(scope.event, actor=call.actor, outcome=outcome_of(exc),
                                                 details=scope.details)
            except HsmError:
                pass
