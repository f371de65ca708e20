"""The cluster's life cycle (as CloudHSM's) and where a worker reads it.

uninitialized -> initialize_in_progress (the cluster key and identity exist, the customer has the
CSR) -> initialized (certificate and trust anchor installed) -> active (the first admin set its
password). ``cluster/meta`` holds the state; once active a cluster stays active.
"""

from __future__ import annotations

from strongroom.errors import DeviceError
from strongroom.services.keyring import ClusterKeyring
from strongroom.store.base import Store

UNINITIALIZED = "uninitialized"
INITIALIZE_IN_PROGRESS = "initialize_in_progress"
INITIALIZED = "initialized"
ACTIVE = "active"
LIFE_CYCLE = (UNINITIALIZED, INITIALIZE_IN_PROGRESS, INITIALIZED, ACTIVE)
ALL_STATES = frozenset(LIFE_CYCLE)

CLUSTER_META_KEY = "cluster/meta"
#: How long a request waits for the cluster key a sibling worker or the supervisor is handing over.
KEY_WAIT_SECONDS = 1.0


class ClusterState:
    def __init__(self, keyring: ClusterKeyring, store: Store) -> None:
        self._keyring = keyring
        self._store = store
        self._state: str | None = None

    async def current(self) -> str:
        # Once active a cluster stays active (while this worker holds its key), so only the set-up
        # phase reads the store per call.
        keyring = self._keyring
        if self._state == ACTIVE and keyring.barrier is not None:
            return ACTIVE
        if keyring.barrier is None:
            if await self._store.get(CLUSTER_META_KEY) is not None:
                # Initialized here a moment ago (on a sibling worker), or sealed: give the key a moment.
                if not await keyring.wait_for_key(KEY_WAIT_SECONDS):
                    seal = await keyring.seal_status()
                    raise DeviceError(
                        f"this node is sealed: {seal.get('detail') or 'it has no cluster key'} "
                        f"(a new node receives the key from a running node once an admin enrolled it; "
                        f"a shares seal needs `strongroom unseal`)"
                    )
                return await self.current()
            self._state = UNINITIALIZED
            return UNINITIALIZED
        meta = await keyring.barrier.get(CLUSTER_META_KEY)
        if meta is None:
            raise DeviceError("this node has a cluster key but the store holds no cluster; wrong store?")
        if meta.value.get("cluster_id") != keyring.cluster_id:
            raise DeviceError("the store belongs to another cluster than this node's sealed key")
        self._state = str(meta.value["state"])
        return self._state
