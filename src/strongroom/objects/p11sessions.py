"""PKCS#11 sessions held by a worker: the home of session objects and multi-part operations.

A PKCS#11 session belongs to one login session (the token ``session.login``
returned); it lives in the memory of the worker that opened it, like the login.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

from strongroom.errors import OperationActive, OperationNotInitialized, SessionCount, SessionHandleInvalid

OPERATION_KINDS = ("encrypt", "decrypt", "sign", "verify", "digest")


@dataclass(eq=False)  # one running operation: compared and hashed by identity (dispatch/quorum.py keeps a WeakSet)
class ActiveOperation:
    kind: str
    operation: Any  # a mechanisms.base *Operation
    mechanism: int
    key_handle: int | None
    parts: int = 0  # updates so far: a single-part call after one is CKR_OPERATION_ACTIVE
    #: The key has CKA_ALWAYS_AUTHENTICATE: a context-specific login must come before the first step.
    context_login: bool = False
    authenticated: bool = False


@dataclass
class P11Session:
    handle: int
    login_token: bytes
    username: str
    operations: dict[str, ActiveOperation] = field(default_factory=dict)

    def start(self, active: ActiveOperation) -> None:
        if active.kind in self.operations:
            raise OperationActive(f"a {active.kind} operation is already active in this session")
        self.operations[active.kind] = active

    def current(self, kind: str) -> ActiveOperation:
        active = self.operations.get(kind)
        if active is None:
            raise OperationNotInitialized(f"no {kind} operation was initialized in this session")
        return active

    def end(self, kind: str) -> None:
        self.operations.pop(kind, None)


class P11SessionTable:
    def __init__(self, max_per_login: int) -> None:
        self._sessions: dict[int, P11Session] = {}
        self._ids = itertools.count(1)
        self._max_per_login = max_per_login

    def __len__(self) -> int:
        return len(self._sessions)

    def open(self, login_token: bytes, username: str) -> P11Session:
        if sum(1 for s in self._sessions.values() if s.login_token == login_token) >= self._max_per_login:
            raise SessionCount(f"at most {self._max_per_login} PKCS#11 sessions per login")
        session = P11Session(next(self._ids), login_token, username)
        self._sessions[session.handle] = session
        return session

    def get(self, handle: int, login_token: bytes) -> P11Session:
        session = self._sessions.get(handle)
        if session is None or session.login_token != login_token:
            raise SessionHandleInvalid(f"no PKCS#11 session {handle} in this login")
        return session

    def belongs(self, handle: int, login_token: bytes) -> bool:
        session = self._sessions.get(handle)
        return session is not None and session.login_token == login_token

    def of_login(self, login_token: bytes) -> set[int]:
        return {h for h, s in self._sessions.items() if s.login_token == login_token}

    def close(self, handle: int) -> P11Session | None:
        return self._sessions.pop(handle, None)

    def reap(self, live_tokens: set[bytes]) -> list[int]:
        """Close the sessions whose login ended (logout, idle expiry, user deleted)."""
        doomed = [h for h, s in self._sessions.items() if s.login_token not in live_tokens]
        for handle in doomed:
            del self._sessions[handle]
        return doomed
