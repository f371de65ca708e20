"""Which nodes the cluster has: ``nodes/<id>`` records, through the barrier.

Each node records its address and zone when it starts (and when it initializes a
cluster), so agents learn about added nodes from ``cluster.status`` without being
reconfigured, and ``hsm remove`` deletes the record of a node it takes away.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from strongroom.barrier import Barrier, Remove, Write
from strongroom.services.config import NodeConfig
from strongroom.services.health import Health
from strongroom.services.keyring import ClusterKeyring
from strongroom.services.peers import remember_peers
from strongroom.store.base import ConflictError

log = logging.getLogger(__name__)

PREFIX = "nodes/"


def key_of(node_id: str) -> str:
    return PREFIX + node_id


#: A node rewrites its record this often (one worker of it); one silent for 3 periods is "unreachable".
HEARTBEAT_SECONDS = 10.0


async def register(barrier: Barrier, node_id: str, zone: str, address: str, boot: int,
                   *, heartbeat: bool = False) -> None:
    entry = await barrier.get(key_of(node_id))
    record = {"id": node_id, "zone": zone, "address": address, "boot": boot}
    now = time.time()
    if entry is not None and all(entry.value.get(k) == v for k, v in record.items()):
        if not heartbeat or now - float(entry.value.get("seen", 0)) < HEARTBEAT_SECONDS / 2:
            return  # another worker of this node already wrote it (recently)
    registered = entry.value.get("registered", now) if entry is not None and entry.value.get("boot") == boot else now
    try:
        await barrier.commit([Write(key_of(node_id), dict(record, registered=registered, seen=now), entry)])
    except ConflictError:
        pass  # a sibling worker won the race with the same record


async def unregister(barrier: Barrier, node_id: str) -> bool:
    entry = await barrier.get(key_of(node_id))
    if entry is None:
        return False
    try:
        await barrier.commit([Remove(entry.key, entry)])
    except ConflictError:
        return False
    return True


async def nodes(barrier: Barrier) -> list[dict[str, Any]]:
    """Every registered node with its health: ``healthy`` while its heartbeat is fresh."""
    entries, _ = await barrier.list_prefix(PREFIX)
    now = time.time()
    result = []
    for e in entries:
        seen = float(e.value.get("seen", e.value.get("registered", 0)))
        health = "healthy" if now - seen < 3 * HEARTBEAT_SECONDS else "unreachable"
        result.append({"id": e.value["id"], "zone": e.value["zone"], "address": e.value["address"],
                       "health": health, "last_seen": round(now - seen, 1)})
    return result


def membership(entries: list[dict[str, Any]]) -> list[str]:
    """What identifies the set of members (an automatic backup follows each change of it)."""
    return sorted(f"{n['id']}@{n['address']}" for n in entries)


class Registration:
    """This node's own record: written when it gets the key, kept fresh by one worker's heartbeat."""

    def __init__(self, config: NodeConfig, keyring: ClusterKeyring, health: Health) -> None:
        self._config = config
        self._keyring = keyring
        self._health = health

    async def register(self) -> None:
        """Record this node's address in the cluster (agents discover nodes from it)."""
        barrier = self._keyring.barrier
        if barrier is None:
            return
        config = self._config
        try:
            await register(barrier, config.node_id, config.zone, config.address, self._health.boot)
        except Exception as exc:  # noqa: BLE001 - serving matters more than being listed
            log.warning("could not record this node in the cluster registry: %s", exc)

    async def heartbeat(self) -> None:
        """Keep this node's registry record fresh (``cluster.status`` reports health from it)."""
        config = self._config
        while True:
            await asyncio.sleep(HEARTBEAT_SECONDS)
            barrier = self._keyring.barrier
            if self._health.error is not None or barrier is None:
                continue
            try:
                await register(barrier, config.node_id, config.zone, config.address, self._health.boot,
                               heartbeat=True)
                # Where to ask for the key after a restart (a shares seal), beside node.toml's peers.
                addresses = [n["address"] for n in await nodes(barrier) if n.get("address")]
                await asyncio.to_thread(remember_peers, config, addresses)
            except Exception as exc:  # noqa: BLE001 - a missed heartbeat shows as "unreachable", no more
                log.debug("heartbeat not recorded: %s", exc)
