"""What the agent holds for the applications on its host: their logins, sessions and operations.

An :class:`App` is one ``app_id`` (one C_Initialize of one process): all its
connections share its login state, as PKCS#11 wants for all sessions of an
application. A :class:`Session` is a PKCS#11 session; the agent opens its node-side
counterpart (a ``p11session`` on one node connection, a :class:`Binding`) only when
the session first needs node state: a multi-part operation or a session object.

All node-side state of an application lives on one link, its ``home``: every
binding, and so every session object, is on that link, so that session objects are
visible to all the application's sessions as PKCS#11 requires. Stateless calls of an
application without session objects go to the least loaded link.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
from dataclasses import dataclass, field
from typing import Any

from strongroom.agent.attrcodec import Layout
from strongroom.agent.nodes import Identity, Logins, NodeLink
from strongroom.constants import CKF, CKS, CKU

#: Node handles of session objects are at or above this (objects/model.py).
SESSION_OBJECT_BASE = 1 << 30
MAX_SESSIONS_PER_APP = 1024  # the node's PKCS#11 sessions per login


def is_session_object(handle: int) -> bool:
    return handle >= SESSION_OBJECT_BASE


def fingerprint(*parts: Any) -> bytes:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(repr(part).encode() if not isinstance(part, bytes) else part)
        digest.update(b"\x00")
    return digest.digest()


@dataclass
class Binding:
    """A node p11session: the node-side half of a PKCS#11 session."""

    link: NodeLink
    epoch: int  # the link's connection it was opened on
    serial: int  # the login it was opened under
    handle: int  # the node's p11session handle

    def valid(self, logins: Logins | None) -> bool:
        if logins is None or not self.link.connected or self.link.epoch != self.epoch:
            return False
        live = logins.current(self.link)
        return live is not None and live[1] == self.serial


@dataclass
class Pending:
    """An output computed but not yet handed over (a size query or a too-small buffer)."""

    function: str
    fingerprint: bytes
    output: bytes
    finishes: bool  # delivering it ends the operation


@dataclass
class Operation:
    kind: str  # encrypt, decrypt, sign, verify, digest
    mechanism: int
    params: Any
    key: int | None
    binding: Binding | None  # None once the node-side operation has ended
    parts: int = 0  # update calls the node has taken
    pending: Pending | None = None
    #: Initialized here only, because the node already accepted this key, mechanism and parameter
    #: shape for this user: a single-part call then costs one stateless node request instead of two.
    deferred: bool = False
    #: The node said the key has CKA_ALWAYS_AUTHENTICATE: C_Login(CKU_CONTEXT_SPECIFIC) goes to the
    #: node for this operation, and it is never re-created behind the application's back.
    context_login: bool = False
    #: ...and the node accepted one for it (the node checks this too; the agent answers first, since
    #: a node's CKR_USER_NOT_LOGGED_IN on a stateful call reads as a lost login to the link layer).
    authenticated: bool = False


@dataclass
class FindCursor:
    handles: list[int]
    position: int = 0


@dataclass
class Session:
    handle: int
    slot: int
    rw: bool
    app: App
    binding: Binding | None = None
    operations: dict[str, Operation] = field(default_factory=dict)
    find: FindCursor | None = None
    #: A computed C_WrapKey output kept across a size query.
    pending_wrap: Pending | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def state(self) -> int:
        identity = self.app.identity
        if identity is None:
            return CKS.RW_PUBLIC_SESSION if self.rw else CKS.RO_PUBLIC_SESSION
        if identity.user_type == CKU.SO:
            return CKS.RW_SO_FUNCTIONS
        return CKS.RW_USER_FUNCTIONS if self.rw else CKS.RO_USER_FUNCTIONS

    @property
    def flags(self) -> int:
        return CKF.SERIAL_SESSION | (CKF.RW_SESSION if self.rw else 0)

    def forget_node_state(self) -> None:
        """The node-side session is gone (logout, lost connection): operations go with it."""
        self.binding = None
        self.operations.clear()
        self.pending_wrap = None


_session_handles = itertools.count(1)


def next_session_handle() -> int:
    return next(_session_handles) & 0xFFFFFFFF or next(_session_handles)


@dataclass
class App:
    app_id: bytes
    pid: int
    uid: int | None
    layout: Layout
    sessions: dict[int, Session] = field(default_factory=dict)
    logins: Logins | None = None
    home: NodeLink | None = None
    connections: set[Any] = field(default_factory=set)
    #: Session objects this application made (node handle -> the agent session holding it).
    #: They all live on ``home``.
    session_objects: dict[int, int] = field(default_factory=dict)
    #: (link, connection, login) the session objects above were made under.
    node_generation: tuple[str, int, int] | None = None
    login_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    finalized: bool = False
    #: (user, kind, key, mechanism, parameter shape) the node accepted at an init (see Operation.deferred).
    validated: set[tuple[Any, ...]] = field(default_factory=set)

    @property
    def identity(self) -> Identity | None:
        return None if self.logins is None else self.logins.identity

    @property
    def user_type(self) -> int | None:
        identity = self.identity
        return None if identity is None else identity.user_type

    def new_session(self, slot: int, rw: bool) -> Session:
        session = Session(next_session_handle(), slot, rw, self)
        self.sessions[session.handle] = session
        return session
