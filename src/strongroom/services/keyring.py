"""The cluster key's life cycle in one worker: received, made, installed, forgotten, zeroized.

A worker holds the cluster key once its supervisor hands it over (from the seal, a peer or the
custodians' shares) or once it made it itself (``cluster.initialize``). Installing it opens the
barrier and, over it, the user directory and the object repository; until then they do not
exist and the operations that need them answer CKR_CRYPTOKI_NOT_INITIALIZED.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

from strongroom.auth.offline import OfflineLockout
from strongroom.auth.users import UserDirectory
from strongroom.barrier import Barrier
from strongroom.barrier.barrier import STORE_INTEGRITY_PURPOSE, derive_subkey
from strongroom.errors import CryptokiNotInitialized
from strongroom.objects.keys import KeyLoader
from strongroom.objects.repository import ObjectRepository
from strongroom.seal import destroy_seal, mark_zeroized
from strongroom.services.auditor import WitnessedBarrier
from strongroom.services.config import NodeConfig
from strongroom.services.freshness import derive_key
from strongroom.services.health import Health
from strongroom.store.base import Store

log = logging.getLogger(__name__)


class SupervisorPort(Protocol):
    """What a worker's services need of the channel to the node's supervisor (strongroom.node.channel)."""

    @property
    def attached(self) -> bool: ...

    async def request(self, kind: str, **fields: Any) -> dict[str, Any]: ...

    def give_key(self, cluster_id: str, key: bytearray) -> None: ...

    def forget_key(self) -> None: ...


class ClusterKeyring:
    def __init__(self, config: NodeConfig, store: Store, supervisor: SupervisorPort, health: Health) -> None:
        self.config = config
        self._store = store
        #: The channel to this node's supervisor (which holds the seal); detached in unit tests.
        self.supervisor = supervisor
        self._health = health
        #: Called (as a task) once this worker holds the cluster key: freshness check, registration.
        self.on_key_installed: Callable[[], Coroutine[Any, Any, None]] | None = None
        self._key_arrived = asyncio.Event()
        self.barrier: Barrier | None = None
        self.users: UserDirectory | None = None
        self.objects: ObjectRepository | None = None
        self.cluster_id: str | None = None
        #: Loaded key objects (they hold key material), by handle and revision.
        self.keys = KeyLoader()
        # hsm join: the cluster key itself, held ONLY so that hsm.clone_key can give it to a joining
        # node (encrypted to that node's ephemeral key). Set in install_cluster_key, wiped in
        # forget_cluster_key; nothing else may read it.
        self.cluster_key: bytearray | None = None
        #: HMAC key of this node's store high-water mark (services/freshness.py), derived from the cluster key.
        self.freshness_key: bytes | None = None
        self._background: list[asyncio.Task[None]] = []

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
        # Commits carry the marker of the audit intent they fulfil (services/auditor.py).
        self.barrier = WitnessedBarrier(self._store, key)
        # A store that can authenticate its own bookkeeping (SQLite: versions, history) gets its key.
        self._store.enable_integrity(derive_subkey(key, STORE_INTEGRITY_PURPOSE, cluster_id))
        self.freshness_key = derive_key(key, cluster_id, self.config.node_id)
        self._wipe_cluster_key()  # hsm join
        self.cluster_key = bytearray(key)  # hsm join: see __init__
        key[:] = bytes(len(key))  # the AEAD object keeps its own copy; wipe ours
        # Logins without a store majority count failures per node, in the supervisor (auth/offline.py).
        self.users = UserDirectory(self.barrier, OfflineLockout(self.supervisor))
        self.objects = ObjectRepository(self.barrier, max_objects=self.config.limits.max_objects)
        self.cluster_id = cluster_id
        self._background.append(asyncio.get_running_loop().create_task(self.objects.follow()))
        self._key_arrived.set()

    async def wait_for_key(self, timeout: float) -> bool:
        """Whether the key arrived within ``timeout`` seconds (from a sibling worker or the supervisor)."""
        try:
            async with asyncio.timeout(timeout):
                await self._key_arrived.wait()
        except TimeoutError:
            return False
        return True

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
        self._key_arrived.clear()
        self.supervisor.forget_key()

    def zeroize(self) -> None:
        """hsm.zeroize: destroy the sealed key and the secrets in memory, mark the node, then stop it."""
        self.forget_cluster_key()
        self.keys = KeyLoader()  # cached key objects hold key material
        mark_zeroized(self.config.node_dir)
        self._health.error = "this node was zeroized"
        log.warning("zeroized: the sealed cluster key is destroyed; stopping every worker of this node")
        # Give the reply a moment to leave, then stop every worker (they hold the key in memory too).
        asyncio.get_running_loop().call_later(0.2, self._health.shutdown)

    def _wipe_cluster_key(self) -> None:  # hsm join
        if self.cluster_key is not None:
            self.cluster_key[:] = bytes(len(self.cluster_key))
            self.cluster_key = None

    def has_cluster_key(self) -> bool:
        """Whether this worker holds the cluster key (the supervisor hands it over when it has it)."""
        return self.barrier is not None

    def require_cluster_key(self) -> tuple[str, bytearray]:
        """The cluster id and the cluster key this node holds (to split it among custodians)."""
        if self.cluster_key is None or self.cluster_id is None:
            raise CryptokiNotInitialized("this node holds no cluster key")
        return self.cluster_id, self.cluster_key

    def require_barrier(self) -> Barrier:
        if self.barrier is None:
            raise CryptokiNotInitialized("the cluster is not initialized")
        return self.barrier

    def require_objects(self) -> ObjectRepository:
        if self.objects is None:
            raise CryptokiNotInitialized("the cluster is not initialized")
        return self.objects

    def require_users(self) -> UserDirectory:
        if self.users is None:
            raise CryptokiNotInitialized("the cluster is not initialized")
        return self.users

    async def workers_status(self) -> list[dict[str, Any]] | None:
        """The node's workers as the supervisor sees them (restarts, last death); None when it cannot tell."""
        if not self.supervisor.attached:
            return None
        try:
            workers = (await self.supervisor.request("status")).get("workers")
        except Exception:  # noqa: BLE001 - status must describe, not fail
            return None
        return list(workers) if isinstance(workers, list) else None

    async def seal_status(self) -> dict[str, Any]:
        """The seal as the supervisor sees it (type, sealed or not, why, unseal progress)."""
        if not self.supervisor.attached:
            return {"type": self.config.seal.type, "state": "unsealed" if self.barrier else "sealed", "detail": ""}
        try:
            return dict((await self.supervisor.request("status"))["seal"])
        except Exception as exc:  # noqa: BLE001 - status must describe, not fail
            return {"type": self.config.seal.type, "state": "unknown", "detail": str(exc)}
