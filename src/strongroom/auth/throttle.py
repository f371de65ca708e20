"""Tamper response for admin logins: a source that keeps failing is logged and slowed down.

Per-user lockout (:mod:`strongroom.auth.users`) protects one account; this protects
the admin role from a source that tries many accounts or passwords. A *source* is
the client certificate of the connection (through an agent, every application of
that host counts as one source). Every failed login of the source counts, whatever
the name it tried: counting only the names that turn out to be admins would tell the
caller which names are admins (the pause would show). After ``limit`` consecutive
failures the source waits ``backoff`` seconds before its next *admin* login, doubling
with each further failure up to :data:`MAX_BACKOFF`; a successful login clears it (any
account's: so a source that holds one valid account can keep clearing it, and the bound on
guessing one account stays its own lockout, :data:`strongroom.auth.users.MAX_FAILED_LOGINS`).
Counts live in the worker's memory: a node with W workers allows up to W times
the limit before every worker has slowed the source down.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

MAX_BACKOFF = 900.0
#: Sources remembered at most (oldest forgotten first), so a flood of certificates cannot exhaust memory.
MAX_SOURCES = 4096


@dataclass
class _Source:
    failures: int = 0
    blocked_until: float = 0.0


class LoginThrottle:
    def __init__(self, limit: int, backoff: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = max(1, limit)
        self.backoff = max(0.0, backoff)
        self._clock = clock
        self._sources: dict[str, _Source] = {}

    def wait_seconds(self, source: str) -> float:
        """How long ``source`` must still wait before it may try an admin login (0: it may now)."""
        entry = self._sources.get(source)
        if entry is None:
            return 0.0
        return max(0.0, entry.blocked_until - self._clock())

    def failed(self, source: str) -> float:
        """Count a failure; returns the pause now imposed (0 while under the limit)."""
        entry = self._sources.pop(source, None) or _Source()
        self._sources[source] = entry  # most recent last
        while len(self._sources) > MAX_SOURCES:
            del self._sources[next(iter(self._sources))]
        entry.failures += 1
        if entry.failures < self.limit:
            return 0.0
        pause = min(MAX_BACKOFF, self.backoff * 2.0 ** (entry.failures - self.limit))
        entry.blocked_until = self._clock() + pause
        return pause

    def succeeded(self, source: str) -> None:
        self._sources.pop(source, None)
