"""``cluster.*``: the life cycle of the cluster (initialize -> activate) and its status."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from dataclasses import dataclass
from typing import Any

from strongroom.auth.passwords import hash_password
from strongroom.auth.users import Role, check_password_rules, key_of, normalize_username
from strongroom.barrier import Write
from strongroom.barrier.seal import CLUSTER_KEY_BYTES, SealedIdentity, SealError, seal_cluster_key
from strongroom.dispatch.table import ACTIVE, ALL_STATES, INITIALIZED, UNINITIALIZED, operation
from strongroom.errors import ActionProhibited, ArgumentsBad, PinIncorrect
from strongroom.node import registry
from strongroom.node.services import CLUSTER_META_KEY
from strongroom.store.base import ConflictError

#: The first admin exists from initialization on, without a password, until activation.
FIRST_ADMIN = "admin"


@dataclass
class InitializeArgs:
    cluster_name: str = "strongroom"


@operation("cluster.initialize", args=InitializeArgs, states=(UNINITIALIZED,))
async def initialize(call: Any, args: InitializeArgs) -> dict[str, Any]:
    """Create the cluster key inside this node and the unactivated first admin.

    Anyone holding a certificate of the customer's CA may initialize: it is the
    operator's act of creating a cluster, and it grants no access to keys.
    """
    services = call.services
    if not 1 <= len(args.cluster_name) <= 32 or not args.cluster_name.isprintable():
        raise ArgumentsBad("a cluster name is 1 to 32 printable characters")
    cluster_id = str(uuid.uuid4())
    key = bytearray(os.urandom(CLUSTER_KEY_BYTES))
    try:
        seal_cluster_key(services.config.node_dir, SealedIdentity(cluster_id, services.config.node_id), key)
    except SealError:
        raise ActionProhibited("this node already holds a cluster key") from None
    services.install_cluster_key(cluster_id, key)
    barrier = services.require_barrier()
    now = time.time()
    meta = {"cluster_id": cluster_id, "name": args.cluster_name, "state": INITIALIZED, "created": now}
    admin = {"name": FIRST_ADMIN, "role": Role.ADMIN.value, "password": None, "failed_logins": 0, "created": now}
    await services.audit("cluster.initialize", actor=None, details={"cluster_id": cluster_id})
    try:
        await barrier.commit([Write(CLUSTER_META_KEY, meta), Write(key_of(FIRST_ADMIN), admin)])
    except BaseException:
        # No cluster was created: the key sealed above belongs to nothing, destroy it.
        services.forget_cluster_key()
        raise
    await services.register_node()
    return {"cluster_id": cluster_id, "state": INITIALIZED, "admin_username": FIRST_ADMIN}


@dataclass
class ActivateArgs:
    password: str
    username: str = FIRST_ADMIN


@operation("cluster.activate", args=ActivateArgs, states=(INITIALIZED,))
async def activate(call: Any, args: ActivateArgs) -> dict[str, Any]:
    """The unactivated admin sets its password; the cluster becomes active."""
    services = call.services
    barrier = services.require_barrier()
    username = normalize_username(args.username)
    check_password_rules(args.password)
    meta = await barrier.get(CLUSTER_META_KEY)
    admin = await barrier.get(key_of(username))
    if meta is None or admin is None or admin.value.get("password") is not None:
        await services.audit("cluster.activate", actor=username, outcome="CKR_PIN_INCORRECT")
        raise PinIncorrect(f"{username!r} is not the unactivated admin of this cluster")
    password_hash = await asyncio.to_thread(hash_password, args.password)
    await services.audit("cluster.activate", actor=username)
    new_admin = dict(admin.value, password=password_hash.to_record())
    try:
        await barrier.commit(
            [Write(CLUSTER_META_KEY, dict(meta.value, state=ACTIVE, activated=time.time()), meta),
             Write(admin.key, new_admin, admin)]
        )
    except ConflictError:
        raise ActionProhibited("the cluster was activated concurrently") from None
    return {"cluster_id": services.cluster_id, "state": ACTIVE}


@operation("cluster.status", states=ALL_STATES)
async def status(call: Any, _args: None) -> dict[str, Any]:
    services = call.services
    state = await services.cluster_state()
    result: dict[str, Any] = {"state": state, "cluster_id": services.cluster_id, "name": None}
    if services.barrier is not None:
        meta = await services.barrier.get(CLUSTER_META_KEY)
        if meta is not None:
            result["name"] = meta.value.get("name")
            result["created"] = meta.value.get("created")
            result["activated"] = meta.value.get("activated")
    config = services.config
    known = [] if services.barrier is None else await registry.nodes(services.barrier)
    if not any(n["id"] == config.node_id for n in known):
        known.append({"id": config.node_id, "zone": config.zone, "address": config.address})
    result["nodes"] = known
    result["answered_by"] = config.node_id
    return result
