"""Which nodes the cluster has: ``nodes/<id>`` records, through the barrier.

Each node records its address and zone when it starts (and when it initializes a
cluster), so agents learn about added nodes from ``cluster.status`` without being
reconfigured, and ``hsm remove`` deletes the record of a node it takes away.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from strongroom.barrier import Barrier, Remove, Write
from strongroom.store.base import ConflictError

log = logging.getLogger(__name__)

PREFIX = "nodes/"


def key_of(node_id: str) -> str:
    return PREFIX + node_id


async def register(barrier: Barrier, node_id: str, zone: str, address: str, boot: int) -> None:
    entry = await barrier.get(key_of(node_id))
    record = {"id": node_id, "zone": zone, "address": address, "boot": boot}
    if entry is not None and all(entry.value.get(k) == v for k, v in record.items()):
        return  # another worker of this node already wrote it
    try:
        await barrier.commit([Write(key_of(node_id), dict(record, registered=time.time()), entry)])
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
    entries, _ = await barrier.list_prefix(PREFIX)
    return [{"id": e.value["id"], "zone": e.value["zone"], "address": e.value["address"]} for e in entries]
