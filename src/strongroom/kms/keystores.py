"""Custom key stores (AWS CloudHSM key stores) over the gateway's own cluster.

A key store is a record (``keystores/<cks-id>``, barrier-encrypted like every KMS record, with
a name index ``keystore-names/<name>`` committed with it, so names are unique) that holds the
cluster id, the trust anchor, the password of the key store's crypto user (``kmsuser`` as in
AWS; ``[cluster] key_store_user`` in the configuration) and the **desired** connection state:
``DISCONNECTED`` (never connected, or DisconnectCustomKeyStore), ``CONNECTED``
(ConnectCustomKeyStore) or ``FAILED`` with a ``ConnectionErrorCode``.

Connections are per gateway process: :class:`KeyStores` keeps, for every store whose record
says CONNECTED, a second :class:`~strongroom.kms.backend.Backend` logged in as the key store's
crypto user. A gateway that finds a CONNECTED record without a connection of its own (at start,
or another gateway connected the store) connects by itself; the answer meanwhile is
``CONNECTING``. A failed connection (wrong password, locked or missing user, cluster not
reachable) is written back as ``FAILED`` + code, so no other gateway retries a wrong password
(which would lock the user); AWS's way out is DisconnectCustomKeyStore, then Connect.

Keys of a store name it in their record (``custom_key_store_id``). Their material is an
AES-256 token key generated through the store's session: owned by the key store's crypto user,
sensitive and never extractable, invisible to the gateway's service user. While the store is
not CONNECTED in this gateway the keys show ``KeyState: Unavailable`` and refuse cryptography
with ``KMSInvalidStateException``; their records and material are untouched, so after
reconnecting everything works again.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import secrets
import time
from dataclasses import dataclass
from typing import Any

from cryptography import x509

from strongroom.errors import CKR
from strongroom.kms.backend import Backend, ClusterError
from strongroom.kms.config import GatewayConfig
from strongroom.kms.errors import InvalidState, KmsError
from strongroom.pki import fingerprint_sha256

log = logging.getLogger("strongroom.kms")

STORES = "keystores/"
NAMES = "keystore-names/"
#: AWS's name for the key store's crypto user.
KMSUSER = "kmsuser"
CONNECTED, CONNECTING, DISCONNECTED, DISCONNECTING, FAILED = (
    "CONNECTED", "CONNECTING", "DISCONNECTED", "DISCONNECTING", "FAILED")
#: ConnectionErrorCode values (AWS names) this gateway can report.
INVALID_CREDENTIALS, CLUSTER_NOT_FOUND, NETWORK_ERRORS, INTERNAL_ERROR = (
    "INVALID_CREDENTIALS", "CLUSTER_NOT_FOUND", "NETWORK_ERRORS", "INTERNAL_ERROR")
USER_LOCKED_OUT, USER_NOT_FOUND, USER_LOGGED_IN = "USER_LOCKED_OUT", "USER_NOT_FOUND", "USER_LOGGED_IN"
#: How long a store record read by the key path is trusted (changes made through this gateway
#: are seen at once; another gateway's Disconnect within this many seconds).
CACHE_SECONDS = 2.0
CONFLICT_RETRIES = 20


def new_store_id() -> str:
    return "cks-" + secrets.token_hex(9)[:17]


def trust_anchor_fingerprint(pem: str) -> str | None:
    """SHA-256 fingerprint (``AB:CD:…``) of the first certificate of ``pem``; None if it is no certificate."""
    try:
        return fingerprint_sha256(x509.load_pem_x509_certificate(pem.encode()))
    except (ValueError, TypeError):
        return None


@dataclass
class KeyStore:
    store_id: str
    name: str
    cluster_id: str
    trust_anchor: str
    password: str
    created: float
    state: str = DISCONNECTED  # the desired state: DISCONNECTED, CONNECTED or FAILED
    error_code: str | None = None
    revision: int = 0

    def to_record(self) -> dict[str, Any]:
        return {"v": 1, "id": self.store_id, "name": self.name, "cluster_id": self.cluster_id,
                "trust_anchor": self.trust_anchor, "password": self.password, "created": self.created,
                "state": self.state, "error_code": self.error_code, "type": "AWS_CLOUDHSM"}

    @classmethod
    def from_record(cls, value: dict[str, Any], revision: int) -> KeyStore:
        return cls(value["id"], value["name"], value["cluster_id"], value["trust_anchor"], value["password"],
                   float(value["created"]), value.get("state", DISCONNECTED), value.get("error_code"), revision)


class StoreBackend(Backend):
    """The key store's session (logged in as its crypto user). A cluster that cannot be reached
    or a login the cluster refuses makes the request fail with KMSInvalidStateException (AWS's
    general custom-key-store failure) instead of a retryable fault, and the store FAILED
    (NETWORK_ERRORS, INVALID_CREDENTIALS or USER_LOCKED_OUT)."""

    def __init__(self, config: GatewayConfig, password: str, store_id: str, manager: KeyStores) -> None:
        super().__init__(config, password)
        self.store_id = store_id
        self.manager = manager

    async def call(self, op: str, args: dict[str, Any] | None = None) -> Any:
        try:
            return await super().call(op, args)
        except ClusterError as exc:
            if exc.code in (CKR.PIN_INCORRECT, CKR.PIN_LOCKED):
                self.manager.lost(self.store_id, INVALID_CREDENTIALS if exc.code == CKR.PIN_INCORRECT
                                  else USER_LOCKED_OUT)
            elif exc.unreachable:
                self.manager.lost(self.store_id, NETWORK_ERRORS)
            else:
                raise
            raise InvalidState(f"The custom key store {self.store_id} cannot use its cluster: {exc.message}") from None


def _fail(store: KeyStore, code: str) -> None:
    if store.state == CONNECTED:
        store.state, store.error_code = FAILED, code


@dataclass
class _Connection:
    state: str  # CONNECTING, CONNECTED or FAILED (this process)
    backend: StoreBackend | None = None
    error_code: str | None = None
    task: asyncio.Task[None] | None = None


class KeyStores:
    """This gateway's view of the key stores: records (cached briefly) and its own connections."""

    def __init__(self, config: GatewayConfig, backend: Backend) -> None:
        self.config = config
        self.backend = backend
        self.user = getattr(config.cluster, "key_store_user", KMSUSER) or KMSUSER
        self._connections: dict[str, _Connection] = {}
        self._cache: dict[str, tuple[float, KeyStore | None]] = {}
        self._closed = False

    # --- records -------------------------------------------------------------------------------------

    async def get(self, store_id: str, *, fresh: bool = True) -> KeyStore | None:
        cached = self._cache.get(store_id)
        if not fresh and cached is not None and time.monotonic() - cached[0] < CACHE_SECONDS:
            return cached[1]
        try:
            value, revision = await self.backend.record_get(STORES + store_id)
        except ClusterError as exc:
            # The key path keeps answering (KMSInvalidStateException) from the last record read.
            if exc.unreachable and not fresh and cached is not None:
                return cached[1]
            raise
        store = None if value is None else KeyStore.from_record(value, revision)
        self._cache[store_id] = (time.monotonic(), store)
        await self._follow(store_id, store)
        return store

    async def all(self) -> list[KeyStore]:
        stores: list[KeyStore] = []
        cursor = ""
        while True:
            records, more = await self.backend.record_list(STORES, STORES + cursor if cursor else "", 1000)
            for name, value, revision in records:
                cursor = name[len(STORES):]
                store = KeyStore.from_record(value, revision)
                self._cache[store.store_id] = (time.monotonic(), store)
                await self._follow(store.store_id, store)
                stores.append(store)
            if not more or not records:
                return stores

    async def by_name(self, name: str) -> KeyStore | None:
        value, _ = await self.backend.record_get(NAMES + name)
        if value is None:
            return None
        return await self.get(value["id"])

    async def commit(self, changes: list[dict[str, Any]]) -> bool:
        ok = await self.backend.record_commit(changes)
        for change in changes:
            if change["key"].startswith(STORES):
                self._cache.pop(change["key"][len(STORES):], None)
        return ok

    async def update(self, store_id: str, change: Any) -> KeyStore | None:
        """Read, apply ``change(store)`` (may raise KMS errors), write back; retried on conflicts."""
        from strongroom.kms.model import put

        for _ in range(CONFLICT_RETRIES):
            store = await self.get(store_id)
            if store is None:
                return None
            extra = change(store) or []
            if await self.commit([put(STORES + store_id, store.to_record(), store.revision), *extra]):
                self._cache[store_id] = (time.monotonic(), dataclasses.replace(store, revision=store.revision + 1))
                await self._follow(store_id, store)
                return store
        raise KmsError("the key store's record keeps changing; try again")

    # --- connection state --------------------------------------------------------------------------------

    def connection_state(self, store: KeyStore) -> tuple[str, str | None]:
        """(ConnectionState, ConnectionErrorCode) as DescribeCustomKeyStores reports them."""
        if store.state == FAILED:
            return FAILED, store.error_code or INTERNAL_ERROR
        if store.state != CONNECTED:
            return DISCONNECTED, None
        connection = self._connections.get(store.store_id)
        if connection is None:
            return CONNECTING, None
        if connection.state == FAILED:
            return FAILED, connection.error_code
        return connection.state, None

    async def _follow(self, store_id: str, store: KeyStore | None) -> None:
        """Make this process's connection follow the record's desired state."""
        if self._closed:
            return
        connection = self._connections.get(store_id)
        if store is None or store.state != CONNECTED:
            if connection is not None:
                await self._drop(store_id)
            return
        if connection is None:
            self.connect(store)

    def connect(self, store: KeyStore) -> None:
        """Start connecting (in the background) unless already connected or connecting."""
        if store.store_id in self._connections or self._closed:
            return
        connection = _Connection(CONNECTING)
        self._connections[store.store_id] = connection
        connection.task = asyncio.get_running_loop().create_task(self._connect(store, connection))

    async def _connect(self, store: KeyStore, connection: _Connection) -> None:
        code = await self._try_connect(store, connection)
        if self._connections.get(store.store_id) is not connection:
            if connection.backend is not None:
                await connection.backend.close()
            return  # disconnected meanwhile
        if code is None:
            connection.state = CONNECTED
            log.info("custom key store %s connected (as %s)", store.store_id, self.user)
            return
        connection.state, connection.error_code = FAILED, code
        log.warning("custom key store %s could not connect: %s", store.store_id, code)
        await self._record_failure(store.store_id, code)

    async def _try_connect(self, store: KeyStore, connection: _Connection) -> str | None:
        if self.user.lower() == self.config.cluster.username.lower():
            # The store's keys must be the store's: never logged in as the gateway's own service user.
            log.error("custom key store %s: [cluster] key_store_user is the gateway's own service user %s; "
                      "configure a crypto user of its own (AWS: kmsuser)", store.store_id, self.user)
            return USER_LOGGED_IN
        try:
            status = await self.backend.cluster.cluster_status()
            if status.get("cluster_id") != store.cluster_id:
                return CLUSTER_NOT_FOUND
            users = await self.backend.cluster.user_list()
            user = next((u for u in users if u["username"] == self.user.lower()), None)
            if user is None or user.get("role") != "crypto-user":
                return USER_NOT_FOUND
            if user.get("locked"):
                return USER_LOCKED_OUT
            config = dataclasses.replace(self.config, cluster=dataclasses.replace(self.config.cluster,
                                                                                    username=self.user))
            backend = StoreBackend(config, store.password, store.store_id, self)
            try:
                await Backend.start(backend)
            except BaseException:
                await backend.close()
                raise
            connection.backend = backend
            return None
        except ClusterError as exc:
            if exc.unreachable:
                return NETWORK_ERRORS
            if exc.code == CKR.PIN_INCORRECT:
                return INVALID_CREDENTIALS
            if exc.code == CKR.PIN_LOCKED:
                return USER_LOCKED_OUT
            log.warning("custom key store %s: %s", store.store_id, exc.message)
            return INTERNAL_ERROR
        except asyncio.CancelledError:
            raise
        except Exception:  # reported as the store's state
            log.exception("custom key store %s: connecting failed", store.store_id)
            return INTERNAL_ERROR

    async def _record_failure(self, store_id: str, code: str) -> None:
        try:
            await self.update(store_id, lambda store: _fail(store, code))
        except Exception as exc:  # noqa: BLE001 - the process-local state already says FAILED
            log.warning("could not record the failure of custom key store %s: %s", store_id, exc)

    def lost(self, store_id: str, code: str) -> None:
        """The store's session was refused by the cluster (password changed, user locked) or the
        cluster cannot be reached (NETWORK_ERRORS): FAILED here at once, and in the store's record
        as soon as the cluster can be written (retried until then). As AWS, a FAILED store stays
        FAILED: DisconnectCustomKeyStore, then ConnectCustomKeyStore."""
        connection = self._connections.get(store_id)
        if connection is None or connection.state != CONNECTED:
            return
        connection.state, connection.error_code = FAILED, code
        log.warning("custom key store %s failed: %s", store_id, code)
        with contextlib.suppress(RuntimeError):
            asyncio.get_running_loop().create_task(self._record_failure_until_written(store_id, code, connection))

    def unreachable(self, key: Any) -> None:
        """Metadata hook: the cluster cannot be reached and ``key`` (a store key) was answered
        from its last-known record: it is unavailable and its store has lost its cluster."""
        store_id = key.custom_key_store_id
        key.store_unavailable = f"its custom key store {store_id} cannot reach its cluster"
        self.lost(store_id, NETWORK_ERRORS)

    async def _record_failure_until_written(self, store_id: str, code: str, connection: _Connection) -> None:
        delay = 0.5
        while not self._closed and self._connections.get(store_id) is connection:
            try:
                await self.update(store_id, lambda store: _fail(store, code))
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - cluster unreachable: try again later
                log.debug("custom key store %s: FAILED not recorded yet: %s", store_id, exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    async def _drop(self, store_id: str) -> None:
        connection = self._connections.pop(store_id, None)
        if connection is None:
            return
        if (connection.task is not None and not connection.task.done()
                and connection.task is not asyncio.current_task()):
            connection.task.cancel()
            await asyncio.gather(connection.task, return_exceptions=True)
        if connection.backend is not None:
            await connection.backend.close()

    async def disconnect(self, store_id: str) -> None:
        await self._drop(store_id)

    async def start(self) -> None:
        """At gateway start: reconnect every store whose record says CONNECTED."""
        try:
            await self.all()
        except Exception as exc:  # noqa: BLE001 - the next read of a store retries
            log.warning("could not read the custom key stores at start: %s", exc)

    async def close(self) -> None:
        self._closed = True
        for store_id in list(self._connections):
            await self._drop(store_id)

    # --- keys ------------------------------------------------------------------------------------------

    async def connected_backend(self, store_id: str, *, fresh: bool = False) -> StoreBackend | None:
        store = await self.get(store_id, fresh=fresh)
        if store is None or store.state != CONNECTED:
            return None
        connection = self._connections.get(store_id)
        if connection is None or connection.state != CONNECTED:
            return None
        return connection.backend

    async def annotate(self, key: Any) -> None:
        """Metadata hook: mark a key of a store that is not CONNECTED here as unavailable."""
        store_id = getattr(key, "custom_key_store_id", None)
        if not store_id:
            return
        key.store_unavailable = None
        if await self.connected_backend(store_id) is None:
            store = await self.get(store_id, fresh=False)
            state = "deleted" if store is None else self.connection_state(store)[0]
            key.store_unavailable = f"its custom key store {store_id} is {state}"

    async def backend_for(self, key: Any) -> Backend:
        """The session a key's material is used through."""
        store_id = getattr(key, "custom_key_store_id", None)
        if not store_id:
            return self.backend
        backend = await self.connected_backend(store_id)
        if backend is None:
            raise InvalidState(f"{key.key_id} is unavailable: its custom key store {store_id} is not connected.")
        return backend

    async def destroy_material(self, key: Any, handle: int) -> None:
        """Best effort for store keys (as AWS): a disconnected store leaves the cluster key behind."""
        store_id = getattr(key, "custom_key_store_id", None)
        if not store_id:
            await self.backend.destroy_object(handle)
            return
        backend = await self.connected_backend(store_id, fresh=True)
        if backend is None:
            log.warning("key %s deleted while its custom key store %s is not connected: its cluster key %s "
                        "(label kms/%s/…) stays in the cluster; delete it as %s", key.key_id, store_id, handle,
                        key.key_id, self.user)
            return
        try:
            await backend.destroy_object(handle)
        except KmsError as exc:
            log.warning("could not destroy the cluster key %s of %s: %s", handle, key.key_id, exc.message)
