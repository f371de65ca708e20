"""What the agent holds for the applications on its host: their logins, sessions and operations.

An :class:`App` is one ``app_id`` (one C_Initialize of one process): all its
connections share its login state, as PKCS#11 wants for all sessions of an
application. A :class:`Session` is a PKCS#11 session; the agent opens its node-side
counterpart (a ``p11session`` on one node connection, a :class:`Binding`) only when
the session first needs node state: a multi-part operation or a session object.

All node-side state of an application lives on one link, its ``home`` (one connection,
so one worker process of one node): every binding, and so every session object, is on
that link, so that session objects are visible to all the application's sessions as
PKCS#11 requires. Stateless calls of an application (single-part crypto sent as one
request, token-object reads and writes) that name none of its session objects go to
the least loaded link, which may be another worker of the same node.

An application that is not logged in is a *public* one (PKCS#11 v2.40 §6.7): its calls reach
the nodes through anonymous logins (:class:`PublicLogins`, ``session.open_public``), which see
public objects and make public session objects only. The node decides what they may do; while
the cluster policy ``public_objects`` is ``hidden`` a node opens none and the application gets
what it got before a login always did (no objects, CKR_USER_NOT_LOGGED_IN).
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from strongroom.agent.attrcodec import Layout
from strongroom.agent.nodes import Identity, Logins, NodeError, NodeLink, NodeUnavailable
from strongroom.constants import CKF, CKS, CKU
from strongroom.errors import CKR

log = logging.getLogger("strongroom.agent")

#: Node handles of session objects are at or above this (objects/model.py).
SESSION_OBJECT_BASE = 1 << 30
MAX_SESSIONS_PER_APP = 1024  # the node's PKCS#11 sessions per login
#: Failed logins after which a node locks the account (strongroom.auth.users.MAX_FAILED_LOGINS; a unit test
#: checks they agree): the token flags CKF_USER_PIN_FINAL_TRY / _LOCKED follow it.
LOCKOUT_AFTER = 5
#: While a node refuses anonymous logins (policy public_objects = hidden), ask again after this long.
PUBLIC_REFUSAL_SECONDS = 2.0
PUBLIC_NAME = "(public)"


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


class PublicLogins(Logins):
    """The anonymous logins of an application that is not logged in: one per link, made lazily with
    ``session.open_public`` (no credentials). A node that refuses them (the policy hides public objects)
    is answered CKR_USER_NOT_LOGGED_IN, as every call before a login was before public sessions."""

    def __init__(self) -> None:
        super().__init__(Identity(PUBLIC_NAME, bytearray(), "public", -1))
        self._refused_until = 0.0
        self._refusal = ""

    async def token(self, link: NodeLink) -> tuple[bytes, int]:
        state = self._state(link)
        async with state.lock:
            live = self.current(link)
            if live is not None:
                return live
            if time.monotonic() < self._refused_until:
                raise NodeError(CKR.USER_NOT_LOGGED_IN, self._refusal)
            epoch = link.epoch
            reply = await link.request("session.open_public", {}, None)
            if not reply.ok:
                if reply.code in (CKR.ACTION_PROHIBITED, CKR.FUNCTION_NOT_SUPPORTED, CKR.USER_TYPE_INVALID):
                    self._refusal = f"not logged in, and the cluster serves no public session: {reply.body}"
                    self._refused_until = time.monotonic() + PUBLIC_REFUSAL_SECONDS
                    raise NodeError(CKR.USER_NOT_LOGGED_IN, self._refusal)
                raise NodeError(reply.code, reply.body)
            if link.epoch != epoch:
                raise NodeUnavailable(f"node {link.name}: the connection changed while opening a public session")
            body = reply.body if isinstance(reply.body, dict) else {}
            return body["session"], self.adopt(link, body["session"], epoch)

    def clear(self) -> list[tuple[str, bytes, int]]:
        held = [(name, s.token, s.epoch) for name, s in self._states.items() if s.token is not None]
        self._states.clear()
        return held


@dataclass
class PinFailures:
    """Wrong PINs this application saw per user since that user's last good login (the token flags
    CKF_*_PIN_COUNT_LOW / FINAL_TRY / LOCKED). The node never tells a caller without the password how
    many failures an account has (it would tell which accounts exist), so these are what the agent saw."""

    counts: dict[str, int] = field(default_factory=dict)
    locked: set[str] = field(default_factory=set)
    #: (username, user type) of the last login attempted: whose PIN the token flags describe.
    last: tuple[str, int] | None = None

    def failed(self, username: str, user_type: int, locked: bool) -> None:
        self.last = (username, user_type)
        self.counts[username] = self.counts.get(username, 0) + 1
        if locked:
            self.locked.add(username)

    def succeeded(self, username: str, user_type: int) -> None:
        self.last = (username, user_type)
        self.counts.pop(username, None)
        self.locked.discard(username)

    def flags(self) -> int:
        if self.last is None:
            return 0
        username, user_type = self.last
        count = self.counts.get(username, 0)
        low, final, locked = ((CKF.SO_PIN_COUNT_LOW, CKF.SO_PIN_FINAL_TRY, CKF.SO_PIN_LOCKED) if user_type == CKU.SO
                              else (CKF.USER_PIN_COUNT_LOW, CKF.USER_PIN_FINAL_TRY, CKF.USER_PIN_LOCKED))
        flags = 0
        if count:
            flags |= low
        if username in self.locked or count >= LOCKOUT_AFTER:
            flags |= locked
        elif count == LOCKOUT_AFTER - 1:
            flags |= final
        return int(flags)


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
    #: Message-based operations (PKCS#11 3.0 §5.x: C_MessageEncryptInit ...), by kind: see functions/message.py.
    messages: dict[str, Any] = field(default_factory=dict)
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
    #: (link key, connection, login) the session objects above were made under.
    node_generation: tuple[str, int, int] | None = None
    login_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    finalized: bool = False
    #: (user, kind, key, mechanism, parameter shape) the node accepted at an init (see Operation.deferred).
    validated: set[tuple[Any, ...]] = field(default_factory=set)
    #: Anonymous node logins for what the application does while it is not logged in (made on first use).
    public: PublicLogins | None = None
    pin_failures: PinFailures = field(default_factory=PinFailures)

    @property
    def identity(self) -> Identity | None:
        return None if self.logins is None else self.logins.identity

    @property
    def user_type(self) -> int | None:
        identity = self.identity
        return None if identity is None else identity.user_type

    def public_logins(self) -> PublicLogins:
        if self.public is None:
            self.public = PublicLogins()
        return self.public

    @property
    def crypto_logins(self) -> Logins:
        """Whose node login runs cryptography, makes objects and holds node sessions: the normal user's, else
        (nobody, or the SO — an admin uses no keys) the anonymous one."""
        if self.logins is not None and self.user_type == CKU.USER:
            return self.logins
        return self.public_logins()

    @property
    def view_logins(self) -> Logins:
        """Whose node login finds and reads objects: whoever is logged in (the SO sees token objects and marks
        keys trusted), else the anonymous one."""
        return self.logins if self.logins is not None else self.public_logins()

    def new_session(self, slot: int, rw: bool, handle: int | None = None) -> Session:
        """A session; ``handle`` given when the module reopens its sessions after an agent restart."""
        if handle is None:
            handle = next_session_handle()
            while handle in self.sessions:  # a resumed application may hold any handle
                handle = next_session_handle()
        session = Session(handle, slot, rw, self)
        self.sessions[session.handle] = session
        return session
