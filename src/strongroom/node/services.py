"""What one worker process of a node holds, and the request pipeline through it.

:class:`NodeServices` wires the layers together (store -> barrier -> auth ->
dispatch) and :meth:`NodeServices.handle` is the path of every request:
error state -> operation lookup -> cluster state -> session and role -> argument
check -> handler. Handlers receive a :class:`Call`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from strongroom.audit import AuditLog, AuditWriteError
from strongroom.auth.sessions import Session, SessionTable
from strongroom.auth.users import PREFIX as USERS_PREFIX
from strongroom.auth.users import UserDirectory
from strongroom.barrier import Barrier
from strongroom.barrier.barrier import STORE_INTEGRITY_PURPOSE, derive_subkey
from strongroom.auth.throttle import LoginThrottle
from strongroom.node.channel import SupervisorLink
from strongroom.seal import destroy_seal, mark_zeroized
from strongroom.dispatch import table
from strongroom.dispatch.auditing import audit_refusal
from strongroom.dispatch.table import ACTIVE, INITIALIZED, UNINITIALIZED
from strongroom.errors import CKR, CryptokiNotInitialized, DeviceError, HsmError
from strongroom.services.config import NodeConfig
from strongroom.objects.keys import KeyLoader
from strongroom.objects.p11sessions import P11SessionTable
from strongroom.objects.repository import ObjectRepository
from strongroom.node.selftest import SelfTestReport
from strongroom.store.base import CompactedError, Store
from strongroom.transport.protocol import Request

log = logging.getLogger(__name__)

CLUSTER_META_KEY = "cluster/meta"
#: How long a request waits for the cluster key a sibling worker or the supervisor is handing over.
KEY_WAIT_SECONDS = 1.0
#: ``revoked/<certificate serial, lowercase hex>``: certificates taken out of the cluster (hsm remove).
REVOKED_PREFIX = "revoked/"


@dataclass
class Call:
    """One request being served: who asks, through which connection, in which session."""

    services: NodeServices
    request: Request
    connection_id: int
    peer_name: str
    session: Session | None
    #: The verified peer certificate (a transport.server.ConnectionPeer; None when not known).
    peer: Any = None

    @property
    def actor(self) -> str | None:
        return None if self.session is None else self.session.username


class NodeServices:
    def __init__(
        self,
        config: NodeConfig,
        store: Store,
        selftest: SelfTestReport,
        boot: int,
        error: str | None = None,
        supervisor: SupervisorLink | None = None,
    ) -> None:
        self.config = config
        #: The channel to this node's supervisor (which holds the seal); detached in unit tests.
        self.supervisor = supervisor or SupervisorLink(None)
        self.supervisor.on_key = self.adopt_key
        #: Called (as a task) once this worker holds the cluster key: freshness check, registration.
        self.on_key_installed: Callable[[], Awaitable[None]] | None = None
        self._key_arrived = asyncio.Event()
        self.store = store
        self.selftest = selftest
        self.boot = boot
        self.started = time.time()
        self.error = error  # set when the node must refuse everything (self-test failure)
        self.barrier: Barrier | None = None
        self.users: UserDirectory | None = None
        self.cluster_id: str | None = None
        self._state: str | None = None
        self.sessions = SessionTable(
            idle_timeout=config.limits.session_idle_seconds,
            max_per_user=config.limits.max_sessions_per_user,
            max_total=config.limits.max_sessions,
        )
        self._audit = AuditLog(config.audit_path, node_id=config.node_id, boot=boot)
        self.counters: dict[str, int] = {"requests": 0, "errors": 0}
        self.objects: ObjectRepository | None = None
        self.keys = KeyLoader()
        self.p11 = P11SessionTable(max_per_login=config.limits.max_p11_sessions_per_login)
        #: Crypto operations per key handle (metrics; crypto operations are counted, not audited).
        self.key_use: Counter[int] = Counter()
        self._background: list[asyncio.Task[None]] = []
        # hsm join: the cluster key itself, held ONLY so that hsm.clone_key can give it to a joining
        # node (encrypted to that node's ephemeral key). Set in install_cluster_key, wiped in
        # forget_cluster_key; nothing else may read it.
        self.cluster_key: bytearray | None = None
        #: HMAC key of this node's store high-water mark (services/freshness.py), derived from the cluster key.
        self.freshness_key: bytes | None = None
        self.login_throttle = LoginThrottle(config.limits.admin_login_failures_per_source,
                                            config.limits.admin_login_backoff_seconds)
        #: Set by the worker: stops this node (every worker) after the current replies went out.
        self.shutdown: Callable[[], None] = lambda: None
        #: backup.create: backups made and not yet read out, by backup id (see dispatch/ops/backup.py).
        self.pending_backups: dict[str, Any] = {}

    # --- cluster key and state ---------------------------------------------------

    def adopt_key(self, cluster_id: str, key: bytearray) -> None:
        """The supervisor handed this worker the cluster key (from the seal, a peer, or the custodians)."""
        if self.barrier is not None:
            key[:] = bytes(len(key))
            return
        self.install_cluster_key(cluster_id, key)
        if self.on_key_installed is not None:
            self._background.append(asyncio.get_running_loop().create_task(self.on_key_installed()))

    def share_new_key(self, cluster_id: str, key: bytearray) -> None:
        """This worker made the cluster key (cluster.initialize): install it and give it to the supervisor,
        which keeps it for the sibling workers."""
        self.supervisor.give_key(cluster_id, key)
        self.install_cluster_key(cluster_id, key)

    def install_cluster_key(self, cluster_id: str, key: bytearray) -> None:
        self.barrier = Barrier(self.store, key)
        # A store that can authenticate its own bookkeeping (SQLite: versions, history) gets its key.
        self.store.enable_integrity(derive_subkey(key, STORE_INTEGRITY_PURPOSE, cluster_id))
        from strongroom.services.freshness import derive_key

        self.freshness_key = derive_key(key, cluster_id, self.config.node_id)
        self._wipe_cluster_key()  # hsm join
        self.cluster_key = bytearray(key)  # hsm join: see __init__
        key[:] = bytes(len(key))  # the AEAD object keeps its own copy; wipe ours
        self.users = UserDirectory(self.barrier)
        self.objects = ObjectRepository(self.barrier, max_objects=self.config.limits.max_objects)
        self.cluster_id = cluster_id
        self._background.append(asyncio.get_running_loop().create_task(self.objects.follow()))
        self._key_arrived.set()

    async def stop_background(self) -> None:
        """Stop the tasks that use the store, before the store closes."""
        tasks, self._background = self._background, []
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def forget_cluster_key(self) -> None:
        """Drop the cluster key from memory and destroy this node's sealed copy (zeroize)."""
        destroy_seal(self.config.node_dir)
        self._wipe_cluster_key()  # hsm join
        self.freshness_key = None
        for task in self._background:
            task.cancel()
        self._background.clear()
        self.barrier = None
        self.users = None
        self.objects = None
        self.cluster_id = None
        self._state = None
        self._key_arrived.clear()
        self.supervisor.forget_key()

    def zeroize(self) -> None:
        """hsm.zeroize: destroy the sealed key and the secrets in memory, mark the node, then stop it."""
        self.forget_cluster_key()
        self.keys = KeyLoader()  # cached key objects hold key material
        mark_zeroized(self.config.node_dir)
        self.error = "this node was zeroized"
        log.warning("zeroized: the sealed cluster key is destroyed; stopping every worker of this node")
        # Give the reply a moment to leave, then stop every worker (they hold the key in memory too).
        asyncio.get_running_loop().call_later(0.2, self.shutdown)

    async def heartbeat(self) -> None:
        """Keep this node's registry record fresh (``cluster.status`` reports health from it)."""
        from strongroom.services import registry
        from strongroom.services.peers import remember_peers

        while True:
            await asyncio.sleep(registry.HEARTBEAT_SECONDS)
            if self.error is not None or not self.has_cluster_key():
                continue
            try:
                await registry.register(self.barrier, self.config.node_id, self.config.zone, self.config.address,
                                        self.boot, heartbeat=True)
                # Where to ask for the key after a restart (a shares seal), beside node.toml's peers.
                addresses = [n["address"] for n in await registry.nodes(self.barrier) if n.get("address")]
                await asyncio.to_thread(remember_peers, self.config, addresses)
            except Exception as exc:  # noqa: BLE001 - a missed heartbeat shows as "unreachable", no more
                log.debug("heartbeat not recorded: %s", exc)

    def _wipe_cluster_key(self) -> None:  # hsm join
        if self.cluster_key is not None:
            self.cluster_key[:] = bytes(len(self.cluster_key))
            self.cluster_key = None

    # --- certificate revocation (hsm remove) -------------------------------------------

    async def is_revoked(self, serial: int) -> bool:
        """Whether the certificate with this serial was revoked (a direct read: connections are rare).

        The record is read through the barrier, so a forged one is refused; False while this
        worker holds no cluster key (there is no cluster to be revoked from).
        """
        if self.barrier is None:
            return False
        return await self.barrier.get(f"{REVOKED_PREFIX}{serial:x}") is not None

    async def admit_connection(self, peer: Any) -> str | None:
        """The listener's admission hook: why a new connection must be closed, or None."""
        if getattr(peer, "role", None) is None:
            return ("its certificate carries no Strongroom role (a SAN URI urn:strongroom:<node|agent|operator>:"
                    "<name>; see the README's certificate section)")
        if await self.is_revoked(peer.serial):
            return "its certificate is revoked"
        return None

    def has_cluster_key(self) -> bool:
        """Whether this worker holds the cluster key (the supervisor hands it over when it has it)."""
        return self.barrier is not None

    async def seal_status(self) -> dict[str, Any]:
        """The seal as the supervisor sees it (type, sealed or not, why, unseal progress)."""
        if not self.supervisor.attached:
            return {"type": self.config.seal.type, "state": "unsealed" if self.barrier else "sealed", "detail": ""}
        try:
            return dict((await self.supervisor.request("status"))["seal"])
        except Exception as exc:  # noqa: BLE001 - status must describe, not fail
            return {"type": self.config.seal.type, "state": "unknown", "detail": str(exc)}

    async def cluster_state(self) -> str:
        # Once active a cluster stays active, so only the set-up phase reads the store per call.
        if self._state == ACTIVE:
            return ACTIVE
        if self.barrier is None:
            if await self.store.get(CLUSTER_META_KEY) is not None:
                # Initialized here a moment ago (on a sibling worker), or sealed: give the key a moment.
                try:
                    async with asyncio.timeout(KEY_WAIT_SECONDS):
                        await self._key_arrived.wait()
                except TimeoutError:
                    seal = await self.seal_status()
                    raise DeviceError(
                        f"this node is sealed: {seal.get('detail') or 'it has no cluster key'} "
                        f"(a new node receives the key from a running node once an admin enrolled it; "
                        f"a shares seal needs `strongroom unseal`)"
                    ) from None
                return await self.cluster_state()
            self._state = UNINITIALIZED
            return UNINITIALIZED
        meta = await self.barrier.get(CLUSTER_META_KEY)
        if meta is None:
            raise DeviceError("this node has a cluster key but the store holds no cluster; wrong store?")
        if meta.value.get("cluster_id") != self.cluster_id:
            raise DeviceError("the store belongs to another cluster than this node's sealed key")
        self._state = str(meta.value["state"])
        return self._state

    def require_barrier(self) -> Barrier:
        if self.barrier is None:
            raise CryptokiNotInitialized("the cluster is not initialized")
        return self.barrier

    async def register_node(self) -> None:
        """Record this node's address in the cluster (agents discover nodes from it)."""
        if self.barrier is None:
            return
        from strongroom.services import registry

        try:
            await registry.register(self.barrier, self.config.node_id, self.config.zone, self.config.address,
                                    self.boot)
        except Exception as exc:  # noqa: BLE001 - serving matters more than being listed
            log.warning("could not record this node in the cluster registry: %s", exc)

    def require_objects(self) -> ObjectRepository:
        if self.objects is None:
            raise CryptokiNotInitialized("the cluster is not initialized")
        return self.objects

    def close_user_sessions(self, username: str) -> None:
        for token in self.sessions.close_user(username):
            self.end_login(token)

    def end_login(self, token: bytes) -> None:
        """A login ended: its PKCS#11 sessions and their session objects go with it."""
        for handle in self.p11.of_login(token):
            self.close_p11_session(handle)

    def close_p11_session(self, handle: int) -> None:
        self.p11.close(handle)
        if self.objects is not None:
            self.objects.drop_session_objects(handle)

    async def reap_sessions(self) -> None:
        """Background task: idle logins expire; their PKCS#11 sessions and session objects go too."""
        while True:
            await asyncio.sleep(min(30.0, self.config.limits.session_idle_seconds / 2))
            self.sessions.expire_idle()
            for handle in self.p11.reap(self.sessions.tokens()):
                if self.objects is not None:
                    self.objects.drop_session_objects(handle)

    def require_users(self) -> UserDirectory:
        if self.users is None:
            raise CryptokiNotInitialized("the cluster is not initialized")
        return self.users

    async def watch_users(self) -> None:
        """Close this worker's sessions of users deleted anywhere (another worker or node)."""
        prefix = USERS_PREFIX
        revision: int | None = None
        while True:
            try:
                if revision is None:
                    revision = await self.store.revision() + 1
                async for event in self.store.watch(prefix, revision):
                    revision = event.revision + 1
                    if event.deleted:
                        self.close_user_sessions(event.record.key[len(prefix):])
            except asyncio.CancelledError:
                raise
            except CompactedError:
                # Missed events: the sessions to drop are those whose user no longer exists.
                revision = None
                try:
                    listing = await self.store.list_prefix(prefix)
                except Exception:  # noqa: BLE001 - retried below
                    await asyncio.sleep(1)
                    continue
                existing = {record.key[len(prefix):] for record in listing.records}
                for name in self.sessions.usernames() - existing:
                    self.close_user_sessions(name)
            except Exception as exc:  # noqa: BLE001 - the watch must outlive store hiccups
                log.warning("user watch failed (%s); resuming", exc)
                await asyncio.sleep(1)

    # --- audit -------------------------------------------------------------------

    async def audit(
        self, event: str, *, actor: str | None, outcome: str = "ok", details: dict[str, Any] | None = None
    ) -> None:
        """Append to the audit log before the caller acknowledges; failure fails the operation."""
        try:
            await asyncio.to_thread(self._audit.append, event, actor=actor, outcome=outcome, details=details or {})
        except AuditWriteError as exc:
            log.error("audit log write failed: %s", exc)
            raise DeviceError(f"the audit log cannot be written ({exc}); the operation was not performed") from None

    # --- the request pipeline ------------------------------------------------------

    async def handle(self, request: Request, connection_id: int, peer: Any) -> tuple[int, Any]:
        """``peer``: the listener's ConnectionPeer, or just a name (str)."""
        self.counters["requests"] += 1
        spec = None
        try:
            spec = table.lookup(request.op)
            if isinstance(peer, str):
                call = Call(self, request, connection_id, peer, None)
            else:
                call = Call(self, request, connection_id, peer.name, None, peer)
            await self._check_peer(spec, call)
            if self.error is not None and not spec.in_error_state:
                raise HsmError(f"the node is in the error state: {self.error}", CKR.DEVICE_ERROR)
            if self.error is None and spec.states != table.ALL_STATES:
                state = await self.cluster_state()
                if state not in spec.states:
                    raise _state_error(state, spec.name, spec.states)
            if spec.roles is not None:
                call.session = self.sessions.resolve(request.session)
                table.check_role(spec, call.session.role.value)
            args = table.parse_args(spec.args, request.args)
            result = await spec.handler(call, args)
            return CKR.OK, result
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # noqa: BLE001 - every failure must become a reply
            self.counters["errors"] += 1
            return table.error_reply(exc, request.op)

    async def _check_peer(self, spec: table.OperationSpec, call: Call) -> None:
        """The certificate's role must be one the operation names; a refusal of a privileged
        operation (one an application host may not call) is audited."""
        try:
            table.check_peer(spec, getattr(call.peer, "role", None))
        except HsmError as exc:
            if table.AGENT not in spec.peers:
                await audit_refusal(call, spec.name, exc, {"peer": call.peer_name, "peer_role": getattr(
                    call.peer, "role", None), "peer_fingerprint": getattr(call.peer, "fingerprint_sha256", None)})
            raise


def _state_error(state: str, op: str, allowed: frozenset[str]) -> HsmError:
    if all(table.LIFE_CYCLE.index(s) < table.LIFE_CYCLE.index(state) for s in allowed):
        return HsmError(f"{op}: the cluster is already {state}", CKR.ACTION_PROHIBITED)
    if state == UNINITIALIZED:
        return CryptokiNotInitialized(f"{op}: the cluster is not initialized (run cluster.initialize first)")
    if state == table.INITIALIZE_IN_PROGRESS:
        return CryptokiNotInitialized(
            f"{op}: the cluster's certificate is not installed yet; sign the cluster CSR with your CA and run "
            "strongroom cluster initialize --signed-cert CERT --trust-anchor CA"
        )
    if state == INITIALIZED:
        return CryptokiNotInitialized(
            f"{op}: the cluster is initialized but not activated; "
            "only activation works now (strongroom cluster activate)"
        )
    return HsmError(f"{op} is not available while the cluster is {state}", CKR.ACTION_PROHIBITED)
