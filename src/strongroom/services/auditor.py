"""The node's audit log as the services write it: off the event loop, and a write that fails fails the act."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from strongroom.audit import AuditLog, AuditWriteError
from strongroom.errors import DeviceError

log = logging.getLogger(__name__)


class Auditor:
    def __init__(self, audit_log: AuditLog) -> None:
        self._log = audit_log

    async def record(
        self, event: str, *, actor: str | None, outcome: str = "ok", details: dict[str, Any] | None = None
    ) -> None:
        """Append to the audit log before the caller acknowledges; failure fails the operation."""
        try:
            await asyncio.to_thread(self._log.append, event, actor=actor, outcome=outcome, details=details or {})
        except AuditWriteError as exc:
            log.error("audit log write failed: %s", exc)
            raise DeviceError(f"the audit log cannot be written ({exc}); the operation was not performed") from None
