"""Custom key stores (AWS CloudHSM key stores): CreateCustomKeyStore, DescribeCustomKeyStores,
ConnectCustomKeyStore, DisconnectCustomKeyStore, UpdateCustomKeyStore, DeleteCustomKeyStore, and
the key-store part of CreateKey (:func:`new_store_key`). The records and the connections are
:mod:`strongroom.kms.keystores`.

Cluster ids: the cluster's UUID (what ``strongroom status`` shows) and its AWS-shaped id
(``cluster-`` + 16 base32 characters, :func:`strongroom.kms.arn.aws_cluster_id`, what AWS's model
pattern ``cluster-[2-7a-zA-Z]{11,16}`` allows) are both accepted; records keep the UUID; answers
(DescribeCustomKeyStores, DescribeKey) give the AWS-shaped id."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from strongroom.kms.arn import aws_cluster_id, names_cluster
from strongroom.kms.backend import Backend
from strongroom.kms.context import Context, kms_operation
from strongroom.kms.errors import (
    CloudHsmClusterInUse,
    CloudHsmClusterNotActive,
    CloudHsmClusterNotFound,
    CustomKeyStoreHasCMKs,
    CustomKeyStoreInvalidState,
    CustomKeyStoreNameInUse,
    CustomKeyStoreNotFound,
    IncorrectTrustAnchor,
    UnsupportedOperation,
    Validation,
)
from strongroom.kms.keystores import (
    CONNECTED,
    DISCONNECTED,
    FAILED,
    NAMES,
    STORES,
    KeyStore,
    new_store_id,
    trust_anchor_fingerprint,
)
from strongroom.kms.model import delete, put
from strongroom.kms.ops.common import page, parse_marker, read_marker

STORE_TYPES = ("AWS_CLOUDHSM", "EXTERNAL_KEY_STORE")
NAME_MAX = 256
STORE_ID_MAX = 64
CLUSTER_ID_MAX = 64  # AWS ids are 19-24 characters; a cluster's UUID (36) is accepted too
TRUST_ANCHOR_MAX = 5000
PASSWORD_MIN, PASSWORD_MAX = 7, 32
XKS_MEMBERS = ("XksProxyUriEndpoint", "XksProxyUriPath", "XksProxyVpcEndpointServiceName",
               "XksProxyAuthenticationCredential", "XksProxyConnectivity")


def _keyless(ctx: Context) -> None:
    ctx.authorize("*")


async def _cluster(ctx: Context) -> dict[str, Any]:
    return await ctx.backend.cluster.cluster_status()


async def _require_cluster(ctx: Context, cluster_id: str) -> dict[str, Any]:
    """The cluster's status, if ``cluster_id`` (UUID or AWS-shaped) names the cluster this endpoint serves."""
    status = await _cluster(ctx)
    served = str(status.get("cluster_id") or "")
    if not served or not names_cluster(cluster_id, served):
        raise CloudHsmClusterNotFound(f"Cluster '{cluster_id}' not found: this endpoint serves cluster "
                                      f"{aws_cluster_id(served)} ({served}).")
    if status.get("state") != "active":
        raise CloudHsmClusterNotActive(f"Cluster '{cluster_id}' is {status.get('state')}, not active.")
    return status


async def _store(ctx: Context, store_id: str) -> KeyStore:
    store = await ctx.keystores.get(store_id)
    if store is None:
        raise CustomKeyStoreNotFound(f"Custom key store '{store_id}' does not exist.")
    return store


def _refuse_xks(ctx: Context) -> None:
    given = [m for m in XKS_MEMBERS if ctx.params.body.get(m) is not None]
    if given:
        raise UnsupportedOperation(f"External key stores are not supported by this endpoint ({given[0]}).")


@kms_operation("CreateCustomKeyStore", keyless=True)
async def create_custom_key_store(ctx: Context) -> dict[str, Any]:
    p = ctx.params
    name = p.string("CustomKeyStoreName", required=True, max_len=NAME_MAX) or ""
    cluster_id = p.string("CloudHsmClusterId", min_len=19, max_len=CLUSTER_ID_MAX)
    trust_anchor = p.string("TrustAnchorCertificate", max_len=TRUST_ANCHOR_MAX)
    password = p.string("KeyStorePassword", min_len=PASSWORD_MIN, max_len=PASSWORD_MAX)
    store_type = p.string("CustomKeyStoreType", enum=STORE_TYPES) or "AWS_CLOUDHSM"
    p.check()
    if store_type != "AWS_CLOUDHSM":
        raise UnsupportedOperation("External key stores (EXTERNAL_KEY_STORE) are not supported by this endpoint.")
    _refuse_xks(ctx)
    for member, value in (("CloudHsmClusterId", cluster_id), ("TrustAnchorCertificate", trust_anchor),
                          ("KeyStorePassword", password)):
        if value is None:
            raise Validation(f"{member} is required for a custom key store of type AWS_CLOUDHSM.")
    assert cluster_id is not None and trust_anchor is not None and password is not None
    status = await _require_cluster(ctx, cluster_id)
    cluster_id = str(status["cluster_id"])  # records keep the UUID
    fingerprint = trust_anchor_fingerprint(trust_anchor)
    if fingerprint is None or fingerprint != status.get("trust_anchor_fingerprint"):
        raise IncorrectTrustAnchor(f"The trust anchor certificate in the request is not the trust anchor of "
                                   f"cluster '{cluster_id}'.")
    keystores = ctx.keystores
    existing = await keystores.by_name(name)
    if existing is not None:
        if (existing.cluster_id, existing.trust_anchor, existing.password, existing.state) == (
                cluster_id, trust_anchor, password, DISCONNECTED):
            return {"CustomKeyStoreId": existing.store_id}  # a retry: AWS returns the same store
        raise CustomKeyStoreNameInUse(f"Custom key store name '{name}' is already in use.")
    for store in await keystores.all():
        if store.cluster_id == cluster_id:
            raise CloudHsmClusterInUse(f"Cluster '{aws_cluster_id(cluster_id)}' is already associated with custom "
                                       f"key store '{store.store_id}'.")
    store = KeyStore(new_store_id(), name, cluster_id, trust_anchor, password, time.time())
    if not await keystores.commit([put(STORES + store.store_id, store.to_record(), 0),
                                   put(NAMES + name, {"id": store.store_id}, 0)]):
        raise CustomKeyStoreNameInUse(f"Custom key store name '{name}' is already in use.")
    return {"CustomKeyStoreId": store.store_id}


def _entry(ctx: Context, store: KeyStore) -> dict[str, Any]:
    state, code = ctx.keystores.connection_state(store)
    entry: dict[str, Any] = {
        "CustomKeyStoreId": store.store_id,
        "CustomKeyStoreName": store.name,
        "CloudHsmClusterId": aws_cluster_id(store.cluster_id),
        "TrustAnchorCertificate": store.trust_anchor,
        "ConnectionState": state,
        "CreationDate": store.created,
        "CustomKeyStoreType": "AWS_CLOUDHSM",
    }
    if state == FAILED and code:
        entry["ConnectionErrorCode"] = code
    return entry


@kms_operation("DescribeCustomKeyStores", keyless=True)
async def describe_custom_key_stores(ctx: Context) -> dict[str, Any]:
    p = ctx.params
    store_id = p.string("CustomKeyStoreId", max_len=STORE_ID_MAX)
    name = p.string("CustomKeyStoreName", max_len=NAME_MAX)
    limit = p.integer("Limit", minimum=1, maximum=1000)
    marker = read_marker(p)
    p.check()
    if store_id is not None and name is not None:
        raise Validation("Specify either CustomKeyStoreId or CustomKeyStoreName, not both.")
    keystores = ctx.keystores
    if store_id is not None or name is not None:
        store = await (keystores.get(store_id) if store_id is not None else keystores.by_name(name or ""))
        if store is None:
            raise CustomKeyStoreNotFound(f"Custom key store '{store_id or name}' does not exist.")
        return {"CustomKeyStores": [_entry(ctx, store)], "Truncated": False}
    after = parse_marker(marker, "keystores")
    stores = [s for s in await keystores.all() if s.store_id > after]
    size = limit or 1000
    shown, more = stores[:size], len(stores) > size
    return page([_entry(ctx, s) for s in shown], "CustomKeyStores", more, "keystores",
                shown[-1].store_id if shown else after)


def _store_id(ctx: Context) -> str:
    store_id = ctx.params.string("CustomKeyStoreId", required=True, max_len=STORE_ID_MAX) or ""
    return store_id


@kms_operation("ConnectCustomKeyStore", keyless=True)
async def connect_custom_key_store(ctx: Context) -> dict[str, Any]:
    store_id = _store_id(ctx)
    ctx.params.check()
    keystores = ctx.keystores
    store = await _store(ctx, store_id)
    state, _ = keystores.connection_state(store)
    if state == FAILED:
        raise CustomKeyStoreInvalidState(f"Custom key store '{store_id}' is FAILED: disconnect it "
                                         "(DisconnectCustomKeyStore), then connect it.")
    if store.state == CONNECTED:
        return {}  # connected or connecting already

    def connect(current: KeyStore) -> None:
        if current.state == FAILED:
            raise CustomKeyStoreInvalidState(f"Custom key store '{store_id}' is FAILED.")
        current.state, current.error_code = CONNECTED, None

    updated = await keystores.update(store_id, connect)
    if updated is None:
        raise CustomKeyStoreNotFound(f"Custom key store '{store_id}' does not exist.")
    keystores.connect(updated)
    return {}


@kms_operation("DisconnectCustomKeyStore", keyless=True)
async def disconnect_custom_key_store(ctx: Context) -> dict[str, Any]:
    store_id = _store_id(ctx)
    ctx.params.check()
    keystores = ctx.keystores

    def disconnect(current: KeyStore) -> None:
        if current.state == DISCONNECTED:
            raise CustomKeyStoreInvalidState(f"Custom key store '{store_id}' is already DISCONNECTED.")
        current.state, current.error_code = DISCONNECTED, None

    await _store(ctx, store_id)
    if await keystores.update(store_id, disconnect) is None:
        raise CustomKeyStoreNotFound(f"Custom key store '{store_id}' does not exist.")
    await keystores.disconnect(store_id)
    return {}


def _require_disconnected(store: KeyStore, operation: str) -> None:
    if store.state != DISCONNECTED:
        state = "FAILED" if store.state == FAILED else "not disconnected"
        raise CustomKeyStoreInvalidState(f"{operation} needs custom key store '{store.store_id}' to be "
                                         f"DISCONNECTED; it is {state}.")


@kms_operation("UpdateCustomKeyStore", keyless=True)
async def update_custom_key_store(ctx: Context) -> dict[str, Any]:
    p = ctx.params
    store_id = _store_id(ctx)
    new_name = p.string("NewCustomKeyStoreName", max_len=NAME_MAX)
    password = p.string("KeyStorePassword", min_len=PASSWORD_MIN, max_len=PASSWORD_MAX)
    cluster_id = p.string("CloudHsmClusterId", min_len=19, max_len=CLUSTER_ID_MAX)
    p.check()
    _refuse_xks(ctx)
    keystores = ctx.keystores
    store = await _store(ctx, store_id)
    _require_disconnected(store, "UpdateCustomKeyStore")
    if cluster_id is not None and not names_cluster(cluster_id, store.cluster_id):
        cluster_id = str((await _require_cluster(ctx, cluster_id))["cluster_id"])
    elif cluster_id is not None:
        cluster_id = store.cluster_id
    if new_name is not None and new_name != store.name and await keystores.by_name(new_name) is not None:
        raise CustomKeyStoreNameInUse(f"Custom key store name '{new_name}' is already in use.")
    changes: list[dict[str, Any]] = []
    if new_name is not None and new_name != store.name:
        old_value, old_revision = await ctx.backend.record_get(NAMES + store.name)
        if old_value is not None and old_value.get("id") == store_id:
            changes.append(delete(NAMES + store.name, old_revision))
        changes.append(put(NAMES + new_name, {"id": store_id}, 0))
        store.name = new_name
    if password is not None:
        store.password = password
    if cluster_id is not None:
        store.cluster_id = cluster_id
    if not await keystores.commit([put(STORES + store_id, store.to_record(), store.revision), *changes]):
        current = await keystores.get(store_id)
        if current is None:
            raise CustomKeyStoreNotFound(f"Custom key store '{store_id}' does not exist.")
        _require_disconnected(current, "UpdateCustomKeyStore")
        if new_name is not None and await keystores.by_name(new_name) is not None:
            raise CustomKeyStoreNameInUse(f"Custom key store name '{new_name}' is already in use.")
        raise CustomKeyStoreInvalidState(f"Custom key store '{store_id}' changed meanwhile; try again.")
    return {}


@kms_operation("DeleteCustomKeyStore", keyless=True)
async def delete_custom_key_store(ctx: Context) -> dict[str, Any]:
    store_id = _store_id(ctx)
    ctx.params.check()
    keystores = ctx.keystores
    store = await _store(ctx, store_id)
    _require_disconnected(store, "DeleteCustomKeyStore")
    cursor = ""
    while True:
        keys, more = await ctx.metadata.list_keys(cursor, 1000)
        if any(k.custom_key_store_id == store_id for k in keys):
            raise CustomKeyStoreHasCMKs(f"Custom key store '{store_id}' still has KMS keys; schedule their "
                                        "deletion and wait until they are deleted.")
        if not more or not keys:
            break
        cursor = keys[-1].key_id
    name_value, name_revision = await ctx.backend.record_get(NAMES + store.name)
    changes = [delete(STORES + store_id, store.revision)]
    if name_value is not None and name_value.get("id") == store_id:
        changes.append(delete(NAMES + store.name, name_revision))
    if not await keystores.commit(changes):
        raise CustomKeyStoreInvalidState(f"Custom key store '{store_id}' changed meanwhile; try again.")
    return {}


# --- CreateKey in a key store ----------------------------------------------------------------------------


@dataclass
class NewStoreKey:
    """What CreateKey needs for a key in a custom key store."""

    store_id: str
    cluster_id: str
    backend: Backend
    #: Committed with the key's record: the store record unchanged since it was found CONNECTED
    #: (so a key never lands in a store that was disconnected and deleted meanwhile).
    guard: list[dict[str, Any]] = field(default_factory=list)

    def stamp(self, key: Any) -> None:
        key.custom_key_store_id = self.store_id
        key.cloud_hsm_cluster_id = self.cluster_id


async def new_store_key(ctx: Context, origin: str, store_id: str | None, spec: Any, usage: str,
                        multi_region: bool | None) -> NewStoreKey | None:
    """None for a key outside key stores; else the store's session for an AWS_CLOUDHSM key."""
    if origin != "AWS_CLOUDHSM" and store_id is None:
        return None
    if origin != "AWS_CLOUDHSM":
        raise Validation(f"CustomKeyStoreId requires Origin AWS_CLOUDHSM (the request has Origin {origin}).")
    if store_id is None:
        raise Validation("Origin AWS_CLOUDHSM requires a CustomKeyStoreId.")
    if not spec.symmetric or usage != "ENCRYPT_DECRYPT":
        raise UnsupportedOperation(f"KeySpec {spec.name} is not supported for KMS keys in a custom key store: "
                                   "only SYMMETRIC_DEFAULT encryption keys are.")
    if multi_region:
        raise UnsupportedOperation("Multi-Region keys cannot be created in a custom key store.")
    keystores = ctx.keystores
    store = await _store(ctx, store_id)
    backend = await keystores.connected_backend(store_id)
    if store.state != CONNECTED or backend is None:
        state, _ = keystores.connection_state(store)
        raise CustomKeyStoreInvalidState(f"Custom key store '{store_id}' is {state}; CreateKey needs it "
                                         "CONNECTED.")
    return NewStoreKey(store_id, store.cluster_id, backend,
                       [put(STORES + store_id, store.to_record(), store.revision)])


async def store_random(ctx: Context, store_id: str, length: int) -> bytes:
    """GenerateRandom with CustomKeyStoreId: random bytes through the store's session."""
    keystores = ctx.keystores
    store = await _store(ctx, store_id)
    backend = await keystores.connected_backend(store_id)
    if store.state != CONNECTED or backend is None:
        state, _ = keystores.connection_state(store)
        raise CustomKeyStoreInvalidState(f"Custom key store '{store_id}' is {state}; GenerateRandom needs it "
                                         "CONNECTED.")
    return await backend.cluster.generate_random(length)
