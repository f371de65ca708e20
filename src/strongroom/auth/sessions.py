"""Login sessions of one worker process.

A session is created by ``session.login`` and named by a random 256-bit token the
client sends with each call. Sessions live in the memory of the worker that
served the login: a client (the agent) keeps its connection to that worker and
logs in again transparently when it has to reach another worker or node, so no
secret session state is ever written to the store.

A session ends with the connection that made it (:meth:`SessionTable.close_connection`)
unless the login asked to keep it (``keep``: it then lasts until logout or its idle
limit). The limits on sessions (per user and per worker) never refuse a login: the
least recently used session of the same user goes instead (and, at the worker's limit,
one of the user who holds the most), so that someone who knows a password cannot lock
its user out by logging in a thousand times. Its holder, if it comes back, gets
``CKR_SESSION_HANDLE_INVALID`` and logs in again (the agent does so by itself).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from strongroom.auth.users import Role
from strongroom.errors import SessionHandleInvalid, UserNotLoggedIn

TOKEN_BYTES = 32


@dataclass
class Session:
    token: bytes
    username: str
    role: Role
    created: float
    last_used: float
    connection_id: int
    data: dict[str, object] = field(default_factory=dict)
    #: The account (``User.uid``) logged in: keys and shares name it, not only the username.
    user_id: str | None = None
    #: Outlives its connection (until logout or the idle limit).
    keep: bool = False


class SessionTable:
    def __init__(
        self,
        *,
        idle_timeout: float,
        max_per_user: int,
        max_total: int,
        clock: Callable[[], float] = time.monotonic,
        on_end: Callable[[Session, str], None] = lambda _session, _why: None,
    ) -> None:
        #: In order of last use (least recent first): what goes first when a limit is reached.
        self._sessions: dict[bytes, Session] = {}
        #: Called for every session that ends other than by ``close`` (evicted, its connection gone, idle).
        self.on_end = on_end
        self._idle_timeout = idle_timeout
        self._max_per_user = max_per_user
        self._max_total = max_total
        self._clock = clock

    def __len__(self) -> int:
        return len(self._sessions)

    def open(self, username: str, role: Role, connection_id: int, user_id: str | None = None,
             *, keep: bool = False) -> Session:
        self.expire_idle()
        mine = [s for s in self._sessions.values() if s.username == username]
        if len(mine) >= self._max_per_user:
            self._end(mine[0], f"user {username!r} reached its {self._max_per_user} sessions: the least recently "
                               "used went")
        if len(self._sessions) >= self._max_total:
            counts: dict[str, int] = {}
            for held in self._sessions.values():
                counts[held.username] = counts.get(held.username, 0) + 1
            busiest = max(counts, key=lambda name: counts[name])
            oldest = next(s for s in self._sessions.values() if s.username == busiest)
            self._end(oldest, f"this worker reached its {self._max_total} sessions: the least recently used of "
                              f"{busiest!r}, who holds the most, went")
        now = self._clock()
        session = Session(secrets.token_bytes(TOKEN_BYTES), username, role, now, now, connection_id,
                          user_id=user_id, keep=keep)
        self._sessions[session.token] = session
        return session

    def _end(self, session: Session, why: str) -> None:
        self._sessions.pop(session.token, None)
        self.on_end(session, why)

    def resolve(self, token: bytes | None) -> Session:
        """The live session for ``token``; touching it resets its idle timer."""
        if token is None:
            raise UserNotLoggedIn("this operation needs a login (session.login)")
        session = self._sessions.get(token)
        if session is None:
            raise SessionHandleInvalid("unknown or expired session; log in again")
        now = self._clock()
        if now - session.last_used > self._idle_timeout:
            self._end(session, "idle")
            raise SessionHandleInvalid("the session expired after being idle; log in again")
        session.last_used = now
        # Most recently used last (dicts keep insertion order): eviction takes the front.
        del self._sessions[token]
        self._sessions[token] = session
        return session

    def close(self, token: bytes) -> None:
        self._sessions.pop(token, None)

    def close_connection(self, connection_id: int) -> list[Session]:
        """The connection is gone: its sessions end, but for those the login asked to keep."""
        doomed = [s for s in self._sessions.values() if s.connection_id == connection_id and not s.keep]
        for session in doomed:
            del self._sessions[session.token]
        return doomed

    def close_user(self, username: str) -> list[bytes]:
        doomed = [t for t, s in self._sessions.items() if s.username == username]
        for token in doomed:
            del self._sessions[token]
        return doomed

    def tokens(self) -> set[bytes]:
        return set(self._sessions)

    def usernames(self) -> set[str]:
        return {s.username for s in self._sessions.values()}

    def expire_idle(self) -> int:
        now = self._clock()
        doomed = [s for s in self._sessions.values() if now - s.last_used > self._idle_timeout]
        for session in doomed:
            self._end(session, "idle")
        return len(doomed)
