"""Login sessions of one worker process.

A session is created by ``session.login`` and named by a random 256-bit token the
client sends with each call. Sessions live in the memory of the worker that
served the login: a client (the agent) keeps its connection to that worker and
logs in again transparently when it has to reach another worker or node, so no
secret session state is ever written to the store.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from strongroom.auth.users import Role
from strongroom.errors import SessionCount, SessionHandleInvalid, UserNotLoggedIn

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


class SessionTable:
    def __init__(
        self,
        *,
        idle_timeout: float,
        max_per_user: int,
        max_total: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._sessions: dict[bytes, Session] = {}
        self._idle_timeout = idle_timeout
        self._max_per_user = max_per_user
        self._max_total = max_total
        self._clock = clock

    def __len__(self) -> int:
        return len(self._sessions)

    def open(self, username: str, role: Role, connection_id: int, user_id: str | None = None) -> Session:
        self.expire_idle()
        if len(self._sessions) >= self._max_total:
            raise SessionCount(f"this node already serves the maximum of {self._max_total} sessions")
        if sum(1 for s in self._sessions.values() if s.username == username) >= self._max_per_user:
            raise SessionCount(f"user {username!r} already has the maximum of {self._max_per_user} sessions")
        now = self._clock()
        session = Session(secrets.token_bytes(TOKEN_BYTES), username, role, now, now, connection_id,
                          user_id=user_id)
        self._sessions[session.token] = session
        return session

    def resolve(self, token: bytes | None) -> Session:
        """The live session for ``token``; touching it resets its idle timer."""
        if token is None:
            raise UserNotLoggedIn("this operation needs a login (session.login)")
        session = self._sessions.get(token)
        if session is None:
            raise SessionHandleInvalid("unknown or expired session; log in again")
        now = self._clock()
        if now - session.last_used > self._idle_timeout:
            del self._sessions[token]
            raise SessionHandleInvalid("the session expired after being idle; log in again")
        session.last_used = now
        return session

    def close(self, token: bytes) -> None:
        self._sessions.pop(token, None)

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
        doomed = [t for t, s in self._sessions.items() if now - s.last_used > self._idle_timeout]
        for token in doomed:
            del self._sessions[token]
        return len(doomed)
