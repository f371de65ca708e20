"""Logins while the store cannot be written (etcd without quorum): a per-node lockout, reconciled later.

A login counts the attempt in the user's record before it answers (:mod:`strongroom.auth.users`);
without a store majority nothing can be written, and every new login failed though the keys were
cached on every node. So when the store refuses, a node authenticates against the user's record as
it last saw it (the users watch keeps a copy, :meth:`UserDirectory.remember`) and counts failures in
**its own** counter, held by its supervisor so that all its workers share it:

* a user is refused on this node (the same answer as a wrong password) once the failures the store
  knew plus this node's offline failures reach :data:`~strongroom.auth.users.MAX_FAILED_LOGINS`:
  a node allows at most that many wrong guesses per user while it cannot write, so a cluster of N
  nodes at most N times that, for as long as the outage lasts. An attempt takes a place before its
  password is checked, so parallel guesses get no more answers than that (:class:`OfflineCounts`);
* a right password without quorum does not reset the stored counter (nothing can be written); it is
  simply not a failure;
* once the store takes writes again, worker 0 of each node adds its offline failures to the users'
  records (:meth:`UserDirectory.reconcile`): a user who reached the limit across nodes is then
  locked as if every attempt had been counted online.

What a node cannot know while cut off: a password changed or a user deleted on the majority side (when
only this node is cut off) takes effect here when it reconnects, as it already does for the logins it
holds; while no majority exists anywhere nothing can change anywhere.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

log = logging.getLogger(__name__)

#: Users a node counts offline failures for at once (a flood of names cannot grow it without bound).
MAX_OFFLINE_USERS = 4096


class SupervisorChannel(Protocol):
    @property
    def attached(self) -> bool: ...

    async def request(self, kind: str, **fields: Any) -> dict[str, Any]: ...


class OfflineCounts:
    """The counters themselves, per (username, uid): failures not yet written to the store, and attempts
    whose password is being checked now. Lives in the node's supervisor (one per node); a worker without a
    supervisor keeps its own.

    An attempt takes a place before its password is checked (:meth:`reserve`) and gives it back with its
    verdict (:meth:`release`): a node checks at most ``limit`` minus the failures known passwords of one
    user at once, so parallel guesses get no more answers than sequential ones, and parallel logins with
    the right password are never taken for failures (they wait for a place instead).
    """

    def __init__(self) -> None:
        self._failures: dict[tuple[str, str], int] = {}
        self._checking: dict[tuple[str, str], int] = {}

    def reserve(self, name: str, uid: str, known: int, limit: int) -> str:
        """``ok`` (a place taken), ``busy`` (every place is being checked: try again shortly) or ``locked``
        (the failures alone reached ``limit``). ``known``: the failures the store counted."""
        key = (name, uid)
        failures = self._failures.get(key, 0)
        if known + failures >= limit:
            return "locked"
        checking = self._checking.get(key, 0)
        if known + failures + checking >= limit:
            return "busy"
        if key not in self._checking and len(self._checking) + len(self._failures) >= MAX_OFFLINE_USERS:
            return "busy"
        self._checking[key] = checking + 1
        return "ok"

    def release(self, name: str, uid: str, failed: bool) -> None:
        key = (name, uid)
        left = self._checking.get(key, 0) - 1
        if left > 0:
            self._checking[key] = left
        else:
            self._checking.pop(key, None)
        if failed:
            self._failures[key] = self._failures.get(key, 0) + 1

    def pending(self) -> list[tuple[str, str, int]]:
        """The failures not yet in the store."""
        return [(name, uid, n) for (name, uid), n in self._failures.items()]

    def settled(self, name: str, uid: str, n: int) -> None:
        """``n`` failures of this user are in the store now."""
        key = (name, uid)
        left = self._failures.get(key, 0) - n
        if left > 0:
            self._failures[key] = left
        else:
            self._failures.pop(key, None)

    def answer(self, kind: str, message: dict[str, Any]) -> dict[str, Any] | None:
        """The supervisor's side of the channel requests (None: not one of these)."""
        name, uid = str(message.get("name", "")), str(message.get("uid", ""))
        if kind == "lockout_reserve":
            return {"verdict": self.reserve(name, uid, int(message.get("known", 0)), int(message.get("limit", 0)))}
        if kind == "lockout_release":
            self.release(name, uid, bool(message.get("failed")))
            return {}
        if kind == "lockout_pending":
            return {"pending": [list(item) for item in self.pending()]}
        if kind == "lockout_settled":
            self.settled(name, uid, int(message.get("n", 0)))
            return {}
        return None


class OfflineLockout:
    """A worker's view of its node's offline counters (through the supervisor when it has one)."""

    def __init__(self, channel: SupervisorChannel | None) -> None:
        self._channel = channel
        self._local = OfflineCounts()

    def _remote(self) -> SupervisorChannel | None:
        channel = self._channel
        return channel if channel is not None and channel.attached else None

    async def reserve(self, name: str, uid: str, known: int, limit: int) -> str:
        channel = self._remote()
        if channel is None:
            return self._local.reserve(name, uid, known, limit)
        answer = await channel.request("lockout_reserve", name=name, uid=uid, known=known, limit=limit)
        return str(answer["verdict"])

    async def release(self, name: str, uid: str, failed: bool) -> None:
        channel = self._remote()
        if channel is None:
            self._local.release(name, uid, failed)
        else:
            await channel.request("lockout_release", name=name, uid=uid, failed=failed)

    async def pending(self) -> list[tuple[str, str, int]]:
        channel = self._remote()
        if channel is None:
            return self._local.pending()
        return [(str(n), str(u), int(c)) for n, u, c in (await channel.request("lockout_pending"))["pending"]]

    async def settled(self, name: str, uid: str, n: int) -> None:
        channel = self._remote()
        if channel is None:
            self._local.settled(name, uid, n)
        else:
            await channel.request("lockout_settled", name=name, uid=uid, n=n)
