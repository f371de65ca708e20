"""The agent's connections to the cluster's nodes, and the logins it holds on them.

:class:`NodeLink` is one pipelined mTLS connection (:class:`AsyncConnection`) to one
node, re-opened when it drops (its ``epoch`` counts the connections it has had: state
the node keeps per connection — logins, PKCS#11 sessions, multi-part operations,
session objects — lives in the worker process that accepted that connection and is
gone when the epoch changes). :class:`NodePool` keeps the links, checks their health
with ``node.status``, reconnects with exponential backoff, and picks the least loaded
link (fewest requests in flight) for a call.

A node runs several worker processes and a connection is served by the one that
accepted it, so the pool keeps ``links_per_node`` links to every node (a
:class:`NodeGroup`) and places them on different workers: a new connection asks
``node.status`` which worker (pid) it reached and, if a sibling link already uses that
worker, is opened again (the kernel hands each new connection to some worker; a few
attempts find another one — see :data:`PLACEMENT_ATTEMPTS`). Every link logs in on its
own (a login lives in one worker). Calls that name node-side state stay on the link
that holds it (``stateful``/``pinned``); the others go to the least loaded link, where
a link the application has no login on yet counts as :data:`LOGIN_COST` requests more,
so that an application logs in on a second worker only when it keeps more than one
busy.

:class:`Logins` holds one application's credentials (memory only) and its login on
each link, made lazily the first time a link is used. :meth:`NodePool.call` is the
single place where node replies meet re-authentication:

- a reply CKR_SESSION_HANDLE_INVALID / CKR_USER_NOT_LOGGED_IN whose login turns out
  to be dead (probe: ``session.info``) means the node forgot the login (idle expiry,
  worker restart): log in again and, for a call that holds no node-side state, retry
  it once — the node refused it before doing anything, so this is safe for any call;
- a connection lost while the call was in flight: retry once, on another link or
  the reconnected one, only if the call is idempotent (reads, single-part crypto,
  find, attributes, random); otherwise the outcome is unknown (CKR_DEVICE_REMOVED);
- a call that depends on node-side state (``stateful=True``: it names a PKCS#11
  session of the node) is never retried here; it raises :class:`StateLost` and the
  caller re-creates what it can (see :mod:`strongroom.agent.functions.crypto`).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from strongroom.agent.config import AgentConfig
from strongroom.client.connection import AsyncConnection, ClientError, RevisionClock
from strongroom.client.profile import NodeAddress
from strongroom.errors import CKR
from strongroom.hardening import wipe
from strongroom.transport.protocol import Reply
from strongroom.transport.tls import client_context

log = logging.getLogger("strongroom.agent.nodes")

#: A call never opens connections more often than this, per link (the health loop backs off further).
MIN_CONNECT_INTERVAL = 0.2
BACKOFF_START = 0.25
BACKOFF_MAX = 10.0
#: The least a health check (node.status) waits for its answer before the connection is suspect.
HEALTH_TIMEOUT = 5.0
LOGIN_CODES = (int(CKR.SESSION_HANDLE_INVALID), int(CKR.USER_NOT_LOGGED_IN))


class NodeUnavailable(Exception):
    """No node could take the call, or the connection was lost while it was in flight."""


class NodeTimeout(Exception):
    """The node did not answer in time; the outcome of the call is unknown."""


class NodeError(Exception):
    """The node answered with an error code."""

    def __init__(self, code: int, message: Any) -> None:
        super().__init__(str(message))
        self.code = int(code)


class StateLost(Exception):
    """Node-side state a call depended on is gone (login forgotten or connection re-opened)."""


# --- one connection -------------------------------------------------------------------------


#: How often the agent asks the cluster which nodes it has.
TOPOLOGY_INTERVAL = 5.0
#: Connections a link opens at most, each time it connects, to reach a worker no sibling link
#: uses yet. The kernel's choice is random but not even (measured with two workers: about 65/35),
#: so sixteen attempts all miss with p ≈ 0.1%. A node with fewer workers than links pays this
#: once per set of worker pids (see NodeGroup.exhausted).
PLACEMENT_ATTEMPTS = 16
#: What a link without a login of the calling application costs in the least-loaded choice,
#: in requests in flight (a login is an Argon2id verification on the node).
LOGIN_COST = 2


class NodeGroup:
    """The links to one node, and the lock under which a new connection of one of them is placed."""

    def __init__(self) -> None:
        self.links: list[NodeLink] = []
        self.placing = asyncio.Lock()
        #: Sets of workers in use beside which a placement found no other worker: the node has no
        #: more (while those processes live), so the next placement beside them does not search.
        self.exhausted: set[frozenset[int]] = set()

    def workers_in_use(self, besides: NodeLink) -> set[int]:
        # A link's worker is set under the placement lock, before its connection is published,
        # and cleared when the connection is dropped or closed.
        return {link.worker for link in self.links if link is not besides and link.worker is not None}


class NodeLink:
    def __init__(self, node: NodeAddress, context: ssl.SSLContext, config: AgentConfig, slot: int = 0,
                 group: NodeGroup | None = None, clock: RevisionClock | None = None) -> None:
        self.node = node
        #: The pool's read-your-writes token, shared by every link (see the protocol's ``revision``).
        self.clock = clock if clock is not None else RevisionClock()
        self.slot = slot
        self.group = group if group is not None else NodeGroup()
        if self not in self.group.links:
            self.group.links.append(self)
        #: pid of the node worker serving the current connection (from node.status), if known.
        self.worker: int | None = None
        self._context = context
        self._timeouts = config.timeouts
        self.conn: AsyncConnection | None = None
        self.epoch = 0
        self.in_flight = 0
        self.healthy = False
        self.status: dict[str, Any] = {}
        #: The node's ``mechanism.list`` as told on this connection (:mod:`strongroom.agent.mechanisms`).
        self.mechanisms: list[dict[str, Any]] | None = None
        self.last_error: str | None = None
        self._lock = asyncio.Lock()
        self._last_attempt = 0.0
        self.next_retry = 0.0
        self.backoff = BACKOFF_START
        self.next_health = 0.0

    def __repr__(self) -> str:
        return f"<NodeLink {self.key} {self.node.address} epoch={self.epoch} worker={self.worker}>"

    @property
    def name(self) -> str:
        """The node's id (several links may share it)."""
        return self.node.node_id

    @property
    def key(self) -> str:
        """This link among all the pool's: ``node1``, ``node1#2``, …"""
        return self.node.node_id if self.slot == 0 else f"{self.node.node_id}#{self.slot + 1}"

    @property
    def connected(self) -> bool:
        return self.conn is not None and self.conn.closed is None

    async def connect(self, *, force: bool = False) -> bool:
        """Make sure a connection is open; False if the node cannot be reached now."""
        if self.connected:
            return True
        async with self._lock:
            if self.conn is not None and self.conn.closed is None:  # connected by another task meanwhile
                return True
            now = time.monotonic()
            if not force and now - self._last_attempt < MIN_CONNECT_INTERVAL:
                return False
            self._last_attempt = now
            try:
                conn = await self._open()
            except (OSError, ssl.SSLError, TimeoutError, ClientError) as exc:
                if self.last_error is None or self.epoch and self.healthy:
                    log.warning("node %s (%s) unreachable: %s", self.name, self.node.address, exc)
                self.last_error = str(exc) or exc.__class__.__name__
                self.healthy = False
                return False
            conn, worker = await self._place(conn)
            old, self.conn = self.conn, conn
            self.worker = worker
            self.epoch += 1
            self.mechanisms = None  # perhaps a node restarted with other software: ask it again
            self.healthy = True  # until the health check says otherwise
            self.last_error = None
            self.backoff = BACKOFF_START
            self.next_retry = 0.0
            log.info("connected to node %s at %s (link %s, connection %d, worker %s)", self.name,
                     self.node.address, self.key, self.epoch, worker)
        if old is not None:
            _in_background(_quiet_close(old))
        return True

    async def _open(self) -> AsyncConnection:
        return await AsyncConnection.open(
            self.node.host, self.node.port, self._context, server_hostname=self.node.host,
            timeout=self._timeouts.connect, clock=self.clock,
        )

    async def _worker_of(self, conn: AsyncConnection) -> int | None:
        """The pid of the node worker serving ``conn`` (None if the node does not say)."""
        try:
            reply = await asyncio.wait_for(conn.send("node.status", {}, None), self._timeouts.connect)
        except (ClientError, TimeoutError, OSError):
            return None
        if not reply.ok or not isinstance(reply.body, dict):
            return None
        pid = reply.body.get("pid")
        return pid if isinstance(pid, int) else None

    async def _place(self, conn: AsyncConnection) -> tuple[AsyncConnection, int | None]:
        """A connection on a worker no sibling link uses, if a few attempts find one; else ``conn``.

        Which worker accepts a connection is the kernel's choice (one shared listening socket),
        so a connection that landed on a sibling's worker is closed and opened again. Placement
        of one node's links is serialized, so siblings connecting together see each other.
        """
        if len(self.group.links) < 2:
            return conn, None
        async with self.group.placing:
            conn, self.worker = await self._search(conn)
            return conn, self.worker

    async def _search(self, conn: AsyncConnection) -> tuple[AsyncConnection, int | None]:
        """Open ``conn`` again until it reaches a worker no sibling uses (bounded)."""
        taken = frozenset(self.group.workers_in_use(self))
        attempts = 1 if taken in self.group.exhausted else PLACEMENT_ATTEMPTS
        for attempt in range(1, attempts + 1):
            worker = await self._worker_of(conn)
            if conn.closed is not None:
                break
            if worker is None or worker not in taken:
                return conn, worker
            if attempt == attempts:
                if taken not in self.group.exhausted:
                    self.group.exhausted.add(taken)
                    log.info("link %s shares worker %s with another link (the node seems to have "
                             "fewer workers than links_per_node)", self.key, worker)
                return conn, worker
            try:
                fresh = await self._open()
            except (OSError, ssl.SSLError, TimeoutError, ClientError):
                return conn, worker
            _in_background(_quiet_close(conn))
            conn = fresh
        return conn, None

    async def request(self, op: str, args: dict[str, Any], token: bytes | None,
                      timeout: float | None = None) -> Reply:
        """One request on the current connection; NodeUnavailable if it is (or gets) lost."""
        if not self.connected and not await self.connect():
            raise NodeUnavailable(f"node {self.name} is not reachable: {self.last_error or 'connection lost'}")
        conn = self.conn
        assert conn is not None
        self.in_flight += 1
        try:
            try:
                future = conn.send(op, args, token)
                await conn.drained()  # back-pressure: a node that reads nothing slows us, never fills memory
            except ClientError as exc:
                raise NodeUnavailable(f"node {self.name}: {exc.message}") from None
            try:
                # asyncio.timeout, not wait_for: wait_for adds a waiter future and callbacks to every request.
                async with asyncio.timeout(timeout or self._timeouts.request):
                    reply = await future
            except TimeoutError:
                raise NodeTimeout(f"node {self.name} did not answer {op} within "
                                  f"{timeout or self._timeouts.request:.0f} s") from None
        finally:
            self.in_flight -= 1
        if reply.code == CKR.DEVICE_REMOVED and conn.closed is not None:
            self.healthy = False
            raise NodeUnavailable(f"node {self.name}: {reply.body}")
        return reply

    def drop(self, why: str) -> None:
        """Forget a connection that failed its health check (the next call reconnects)."""
        conn, self.conn = self.conn, None
        self.worker = None
        self.healthy = False
        self.last_error = why
        if conn is not None:
            log.warning("dropping connection to node %s (link %s): %s", self.name, self.key, why)
            _in_background(_quiet_close(conn))

    async def close(self) -> None:
        conn, self.conn = self.conn, None
        self.worker = None
        if conn is not None:
            await _quiet_close(conn)


_background: set[asyncio.Task[None]] = set()


def _in_background(coro: Any) -> None:
    task = asyncio.get_running_loop().create_task(coro)
    _background.add(task)  # keep a reference until it is done
    task.add_done_callback(_background.discard)


async def _quiet_close(conn: AsyncConnection) -> None:
    try:
        await asyncio.wait_for(conn.close(), 5)
    except (Exception, asyncio.CancelledError):  # noqa: BLE001 - closing must not fail anything
        pass


# --- logins held for an application -----------------------------------------------------------


@dataclass
class Identity:
    """An application's credentials. Held in agent memory only, never written anywhere.

    The password is kept in a bytearray so that logging out wipes it (:meth:`forget_password`);
    the short-lived ``str`` copies a login request makes cannot be wiped (Python's limit).
    """

    username: str
    password: bytearray = field(repr=False)
    role: str  # "crypto-user" (CKU_USER) or "admin" (CKU_SO)
    user_type: int

    def replace_password(self, text: str) -> None:
        self.forget_password()
        self.password = bytearray(text.encode())

    def forget_password(self) -> None:
        wipe(self.password)
        self.password = bytearray()


@dataclass
class LoginState:
    token: bytes | None = None
    epoch: int = -1
    serial: int = 0
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


_serials = iter(range(1, 1 << 62))


class Logins:
    """One application's logins, one per link, made lazily from its :class:`Identity`."""

    def __init__(self, identity: Identity) -> None:
        self.identity = identity
        self._states: dict[str, LoginState] = {}
        #: Set when the login ended (C_Logout) or a re-login was refused: no more attempts are
        #: made with these credentials, so a changed password cannot lock the account.
        self.closed: str | None = None

    def _state(self, link: NodeLink) -> LoginState:
        state = self._states.get(link.key)
        if state is None:
            state = self._states[link.key] = LoginState()
        return state

    def current(self, link: NodeLink) -> tuple[bytes, int] | None:
        """The live login on ``link``'s current connection, if any."""
        state = self._states.get(link.key)
        if state is None or state.token is None or state.epoch != link.epoch:
            return None
        return state.token, state.serial

    def adopt(self, link: NodeLink, token: bytes, epoch: int) -> int:
        state = self._state(link)
        state.token, state.epoch, state.serial = token, epoch, next(_serials)
        return state.serial

    def forget(self, link: NodeLink, token: bytes) -> None:
        state = self._states.get(link.key)
        if state is not None and state.token == token:
            state.token = None

    async def token(self, link: NodeLink) -> tuple[bytes, int]:
        """The login on ``link``, logging in now if its connection has none yet."""
        live = self.current(link)
        if live is not None:
            return live  # the common case, without taking the lock
        state = self._state(link)
        async with state.lock:
            live = self.current(link)
            if live is not None:
                return live
            if self.closed is not None:
                raise NodeError(CKR.USER_NOT_LOGGED_IN, self.closed)
            epoch = link.epoch
            reply = await link.request("session.login", {
                "username": self.identity.username, "password": self.identity.password.decode(),
                "role": self.identity.role,
            }, None)
            if not reply.ok:
                # The password changed elsewhere, the user was deleted or locked: the
                # application's login is no longer valid.
                log.warning("re-login of %s on node %s failed: %s", self.identity.username, link.name, reply.body)
                if reply.code in (CKR.PIN_INCORRECT, CKR.PIN_LOCKED, CKR.USER_TYPE_INVALID):
                    self.closed = f"the node refused the held credentials: {reply.body}; log in again"
                    raise NodeError(CKR.USER_NOT_LOGGED_IN, self.closed)
                raise NodeError(reply.code, reply.body)
            if link.epoch != epoch:
                raise NodeUnavailable(f"node {link.name}: the connection changed during login")
            log.info("logged in %s (%s) on node %s (link %s, worker %s)", self.identity.username,
                     self.identity.role, link.name, link.key, link.worker)
            return reply.body["session"], self.adopt(link, reply.body["session"], epoch)

    def live(self) -> Iterable[tuple[str, bytes]]:
        """(link key, token) of every login held."""
        for key, state in self._states.items():
            if state.token is not None:
                yield key, state.token

    def clear(self) -> list[tuple[str, bytes, int]]:
        """Forget every login; returns (link key, token, epoch) of those held."""
        held = [(key, s.token, s.epoch) for key, s in self._states.items() if s.token is not None]
        self._states.clear()
        self.closed = "logged out"
        self.identity.forget_password()
        return held


# --- the pool ----------------------------------------------------------------------------------


class NodePool:
    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        context = client_context(config.cert, config.key, config.ca)
        self._context = context
        #: What the applications of this agent wrote, they read, whichever node serves them.
        self.clock = RevisionClock()
        self.links: list[NodeLink] = []
        self._by_key: dict[str, NodeLink] = {}
        self._groups: dict[str, NodeGroup] = {}
        for node in config.nodes:
            self._add_node(node)
        self._health_task: asyncio.Task[None] | None = None

    def _add_node(self, node: NodeAddress) -> list[NodeLink]:
        group = self._groups[node.node_id] = NodeGroup()
        for slot in range(self.config.links_per_node):
            link = NodeLink(node, self._context, self.config, slot, group, self.clock)
            self.links.append(link)
            self._by_key[link.key] = link
        return group.links

    def link(self, key: str) -> NodeLink | None:
        """The link named ``key`` (:attr:`NodeLink.key`)."""
        return self._by_key.get(key)

    def node_links(self, node_id: str) -> list[NodeLink]:
        group = self._groups.get(node_id)
        return [] if group is None else list(group.links)

    async def start(self) -> None:
        await asyncio.gather(*(link.connect(force=True) for link in self.links))
        self._health_task = asyncio.get_running_loop().create_task(self._health_loop())

    async def close(self) -> None:
        if self._health_task is not None:
            self._health_task.cancel()
            try:
                await self._health_task
            except asyncio.CancelledError:
                pass
        await asyncio.gather(*(link.close() for link in self.links))

    # --- choosing a link ----------------------------------------------------------------

    @staticmethod
    def _usable(link: NodeLink, stale: dict[int, int]) -> bool:
        return link.connected and stale.get(id(link), -1) != link.epoch

    def _best(self, stale: dict[int, int], logins: Logins | None = None) -> NodeLink | None:
        """The healthy link with the fewest requests in flight (plus :data:`LOGIN_COST` where
        ``logins`` has no login yet); ties go round in turn. ``stale``: id(link) -> an epoch
        (connection) of that link not to use."""
        live = [link for link in self.links if self._usable(link, stale)]
        healthy = [link for link in live if link.healthy] or live
        if not healthy:
            return None
        if len(healthy) == 1:
            return healthy[0]

        def cost(link: NodeLink) -> int:
            if logins is not None and logins.closed is None and logins.current(link) is None:
                return link.in_flight + LOGIN_COST
            return link.in_flight

        # Ties stay on the first link: one thread keeps one worker warm (alternating between workers cost
        # one-thread runs 30%: bench/README.md); under load the least loaded link spreads the calls.
        return min(healthy, key=cost)

    async def acquire(self, preferred: NodeLink | None = None, exclude: Iterable[NodeLink] = (),
                      logins: Logins | None = None) -> NodeLink:
        """A connected link: ``preferred`` if it is up, else the least loaded (counting a missing
        login of ``logins``); waits for one to come back.

        ``exclude``: links whose *current* connections must not be used (they failed, or share
        a node with one that failed); once such a link has reconnected it is usable again.
        """
        stale = {id(link): link.epoch for link in exclude} if exclude else {}
        deadline = time.monotonic() + self.config.timeouts.reconnect_wait
        while True:
            if preferred is not None and self._usable(preferred, stale):
                return preferred
            best = self._best(stale, logins)
            if best is not None:
                return best
            candidates = [link for link in self.links if not self._usable(link, stale)]
            await asyncio.gather(*(link.connect() for link in candidates))
            if any(self._usable(link, stale) for link in self.links):
                continue  # a new connection
            if time.monotonic() >= deadline:
                reasons = "; ".join(f"{link.key}: {link.last_error}" for link in self.links)
                raise NodeUnavailable(f"no node of the cluster is reachable ({reasons})")
            await asyncio.sleep(MIN_CONNECT_INTERVAL)

    # --- calls -----------------------------------------------------------------------------

    async def call(
        self,
        op: str,
        args: dict[str, Any],
        *,
        logins: Logins | None,
        link: NodeLink | None = None,
        pinned: bool = False,
        idempotent: bool = False,
        stateful: bool = False,
        serial: int | None = None,
    ) -> tuple[dict[str, Any], NodeLink, int]:
        """Run ``op`` and return ``(body, link, login serial)``; node errors raise :class:`NodeError`.

        ``link`` is preferred (``pinned``: required — a stateless call on the link that
        holds an application's session objects). ``stateful`` calls name node-side state
        and must run on ``link`` with the login they were made under (``serial``): any
        loss of it raises :class:`StateLost` instead of being retried.
        """
        expected_serial = serial
        tried: list[NodeLink] = []
        attempts = 0
        while True:
            attempts += 1
            if stateful or pinned:
                assert link is not None
                use = link
                if not use.connected and not await use.connect():
                    if stateful:
                        raise StateLost(f"node {use.name} is not reachable")
                    use = await self.acquire(use)
            else:
                use = await self.acquire(link, exclude=tried, logins=logins)
            token: bytes | None = None
            serial = 0
            if logins is not None and stateful:
                live = logins.current(use)
                if live is None or (expected_serial is not None and live[1] != expected_serial):
                    raise StateLost(f"the login on node {use.name} is gone")
                token, serial = live
            sent = False
            try:
                if logins is not None and not stateful:
                    token, serial = await logins.token(use)
                sent = True
                reply = await use.request(op, args, token)
            except NodeUnavailable:
                # The other connections to that node are suspect too (a node that died takes them
                # all; they may not have noticed yet): the retry goes to another node or to a new
                # connection.
                tried.extend(use.group.links)
                if stateful:
                    raise StateLost(f"the connection to node {use.name} was lost") from None
                if (idempotent or not sent) and attempts < 2:
                    log.info("%s: connection to node %s lost; retrying once", op, use.name)
                    continue
                raise
            if reply.ok:
                if not isinstance(reply.body, dict):  # every node operation answers with a map
                    raise NodeError(CKR.DEVICE_ERROR, f"{op}: node {use.name} answered with a "
                                                      f"{type(reply.body).__name__}, not a map")
                return reply.body, use, serial
            if reply.code in LOGIN_CODES and token is not None and logins is not None:
                if await self._login_dead(use, token):
                    logins.forget(use, token)
                    if stateful:
                        raise StateLost(f"node {use.name} forgot the login")
                    if attempts < 2:
                        log.info("%s: node %s (link %s) forgot the login of %s; logging in again", op,
                                 use.name, use.key, logins.identity.username)
                        link = use  # there: other links' logins may have idled out as well
                        continue
                elif stateful and reply.code == CKR.SESSION_HANDLE_INVALID:
                    raise StateLost(f"node {use.name} no longer knows the PKCS#11 session")
                # A live login answered USER_NOT_LOGGED_IN: the operation itself wants a login (a key
                # with CKA_ALWAYS_AUTHENTICATE needs its context-specific one): the application's answer.
            raise NodeError(reply.code, reply.body)

    async def _login_dead(self, link: NodeLink, token: bytes) -> bool:
        try:
            reply = await link.request("session.info", {}, token)
        except (NodeUnavailable, NodeTimeout):
            return True
        return reply.code in LOGIN_CODES

    async def request_any(self, op: str, args: dict[str, Any], token: bytes | None = None) -> dict[str, Any]:
        """A call that needs no login (node.status, cluster.status) on any link, retried once."""
        body, _link, _serial = await self.call(op, args, logins=None, idempotent=True)
        return body

    # --- health ------------------------------------------------------------------------------

    async def _health_loop(self) -> None:
        next_topology = 0.0
        while True:
            await asyncio.sleep(0.25)
            now = time.monotonic()
            await asyncio.gather(*(self._check(link, now) for link in self.links), return_exceptions=True)
            if now >= next_topology:
                next_topology = now + TOPOLOGY_INTERVAL
                try:
                    await self.refresh_topology()
                except Exception as exc:  # noqa: BLE001 - keep serving with the nodes we know
                    log.debug("topology refresh failed: %s", exc)

    async def refresh_topology(self) -> None:
        """Learn added and removed nodes from the cluster's registry (cluster.status), without a restart."""
        live = [link for link in self.links if link.connected]
        if not live:
            return
        reply = await min(live, key=lambda link: link.in_flight).request("cluster.status", {}, None, timeout=10)
        if not reply.ok or not isinstance(reply.body, dict):
            return
        listed = {str(n["id"]): n for n in reply.body.get("nodes", []) if isinstance(n, dict) and "address" in n}
        if not listed:
            return
        for node_id, entry in listed.items():
            if node_id not in self._groups:
                node = NodeAddress.parse(node_id, str(entry["address"]), str(entry.get("zone", "a")))
                log.info("learned about node %s at %s", node_id, node.address)
                added = self._add_node(node)
                await asyncio.gather(*(link.connect(force=True) for link in added))
        for node_id in [node_id for node_id in self._groups if node_id not in listed]:
            log.info("node %s left the cluster; closing its connections", node_id)
            group = self._groups.pop(node_id)
            for link in group.links:
                self.links.remove(link)
                del self._by_key[link.key]
            await asyncio.gather(*(link.close() for link in group.links))

    async def _check(self, link: NodeLink, now: float) -> None:
        if not link.connected:
            if now < link.next_retry:
                return
            if not await link.connect(force=True):
                link.next_retry = time.monotonic() + link.backoff
                link.backoff = min(link.backoff * 2, BACKOFF_MAX)
                return
            link.next_health = 0.0
        if now < link.next_health:
            return
        link.next_health = now + self.config.timeouts.health_interval
        asked = time.monotonic()
        try:
            reply = await link.request("node.status", {}, None,
                                       timeout=max(self.config.timeouts.connect, HEALTH_TIMEOUT))
        except NodeTimeout as exc:
            conn = link.conn
            if conn is not None and conn.last_reply > asked:
                # Slow, not stuck: other requests on this connection were answered meanwhile (a node short of
                # CPU). Dropping it would fail every request in flight and add a handshake and a login to the
                # node's load; the next check asks again.
                log.warning("node %s (link %s) answers, but node.status took longer than %.0f s; keeping the "
                            "connection", link.name, link.key, max(self.config.timeouts.connect, HEALTH_TIMEOUT))
                return
            link.drop(str(exc))
            return
        except NodeUnavailable:
            link.healthy = False
            return
        if not reply.ok:
            link.healthy = False
            return
        status = reply.body if isinstance(reply.body, dict) else {}
        was = link.healthy
        link.status = status
        if isinstance(status.get("pid"), int):
            link.worker = status["pid"]
        link.healthy = status.get("state") == "active"
        if was and not link.healthy:
            log.warning("node %s is not serving: state %s %s", link.name, status.get("state"),
                        status.get("error") or "")
