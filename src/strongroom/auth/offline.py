"""Logins while the store cannot be written (etcd without quorum): a per-node lockout, reconciled later.

A login counts the attempt in the user's record before it answers (:mod:`strongroom.auth.users`);
without a store majority nothing can be written, and every new login failed though the keys were
cached on every node. So when the store refuses, a node authenticates against the user's record as
it last saw it (the users watch keeps a copy, :meth:`UserDirectory.remember`) and counts failures in
**its own** counter, held by its supervisor so that all its workers share it:

* a user is refused on this node (the same answer as a wrong password) once the failures the store
  knew plus this node's offline failures reach :data:`~strongroom.auth.users.MAX_FAILED_LOGINS`:
  a node allows at most that many wrong guesses per user while it cannot write, so a cluster of N
  nodes at most N times that, for as long as the outage lasts;
* a right password without quorum does not reset the stored counter (nothing can be written); it only
  takes back its own attempt;
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
    """The counters themselves: (username, uid) -> failures not yet written to the store.

    Lives in the node's supervisor (one per node); a worker without a supervisor keeps its own.
    """

    def __init__(self) -> None:
        self._counts: dict[tuple[str, str], int] = {}

    def count(self, name: str, uid: str) -> int:
        """Count one attempt; the failures counted before it."""
        key = (name, uid)
        before = self._counts.get(key, 0)
        if key not in self._counts and len(self._counts) >= MAX_OFFLINE_USERS:
            return before  # not counted (and refused by the caller's limit check only if already over)
        self._counts[key] = before + 1
        return before

    def undo(self, name: str, uid: str) -> None:
        """The attempt was a right password: it is not a failure."""
        key = (name, uid)
        left = self._counts.get(key, 0) - 1
        if left > 0:
            self._counts[key] = left
        else:
            self._counts.pop(key, None)

    def pending(self) -> list[tuple[str, str, int]]:
        return [(name, uid, n) for (name, uid), n in self._counts.items()]

    def settled(self, name: str, uid: str, n: int) -> None:
        """``n`` failures of this user are in the store now."""
        key = (name, uid)
        left = self._counts.get(key, 0) - n
        if left > 0:
            self._counts[key] = left
        else:
            self._counts.pop(key, None)

    def answer(self, kind: str, message: dict[str, Any]) -> dict[str, Any] | None:
        """The supervisor's side of the channel requests (None: not one of these)."""
        name, uid = str(message.get("name", "")), str(message.get("uid", ""))
        if kind == "lockout_count":
            return {"before": self.count(name, uid)}
        if kind == "lockout_undo":
            self.undo(name, uid)
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

    async def count(self, name: str, uid: str) -> int:
        channel = self._remote()
        if channel is None:
            return self._local.count(name, uid)
        return int((await channel.request("lockout_count", name=name, uid=uid))["before"])

    async def undo(self, name: str, uid: str) -> None:
        channel = self._remote()
        if channel is None:
            self._local.undo(name, uid)
        else:
            await channel.request("lockout_undo", name=name, uid=uid)

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
