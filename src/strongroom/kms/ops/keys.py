"""Key life cycle: CreateKey, DescribeKey, ListKeys, EnableKey, DisableKey, ScheduleKeyDeletion,
CancelKeyDeletion, UpdateKeyDescription."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from strongroom.kms.arn import new_key_id
from strongroom.kms.context import Context, kms_operation
from strongroom.kms.errors import InvalidState, MalformedPolicyDocument, UnsupportedOperation, Validation
from strongroom.kms.keyspecs import CUSTOMER_MASTER_KEY_SPECS, KEY_SPECS, KEY_USAGES, ORIGINS
from strongroom.kms.model import (
    DISABLED,
    ENABLED,
    KEYS,
    PENDING_DELETION,
    PENDING_IMPORT,
    KmsKey,
    Material,
    new_material,
    put,
)
from strongroom.kms.ops.asymmetric import generate_material
from strongroom.kms.ops.common import (
    KEY_ID_MAX,
    page,
    parse_marker,
    read_limit,
    read_marker,
    require_not_pending,
    require_not_pending_deletion,
    resolve_key,
)
from strongroom.kms.ops.keystores import new_store_key
from strongroom.kms.ops.tags import check_new_tags

DESCRIPTION_MAX = 8192
POLICY_MAX = 32768
PENDING_WINDOW_MIN, PENDING_WINDOW_MAX, PENDING_WINDOW_DEFAULT = 7, 30, 30
SPEC_NAMES = list(KEY_SPECS)
log = logging.getLogger("strongroom.kms")


def _key_id_member(ctx: Context) -> str:
    return ctx.params.string("KeyId", required=True, max_len=KEY_ID_MAX) or ""


@kms_operation("CreateKey", keyless=True)
async def create_key(ctx: Context) -> dict[str, Any]:
    p = ctx.params
    policy = p.string("Policy", max_len=POLICY_MAX)
    description = p.string("Description", min_len=0, max_len=DESCRIPTION_MAX) or ""
    usage = p.string("KeyUsage", enum=KEY_USAGES)
    legacy_spec = p.string("CustomerMasterKeySpec", enum=CUSTOMER_MASTER_KEY_SPECS)
    spec_name = p.string("KeySpec", enum=SPEC_NAMES)
    origin = p.string("Origin", enum=ORIGINS) or "AWS_KMS"
    custom_key_store = p.string("CustomKeyStoreId", max_len=64)
    bypass_lockout_check = bool(p.boolean("BypassPolicyLockoutSafetyCheck"))
    tags = p.tags("Tags") or []
    multi_region = p.boolean("MultiRegion")
    p.string("XksKeyId", max_len=128)
    p.check()
    if legacy_spec is not None and spec_name is not None:
        raise Validation("You cannot specify KeySpec and CustomerMasterKeySpec in the same request. "
                         "CustomerMasterKeySpec is deprecated.")
    spec = KEY_SPECS[spec_name or legacy_spec or "SYMMETRIC_DEFAULT"]
    if usage is None:
        if not spec.symmetric:
            raise Validation("You must specify a KeyUsage value for all KMS keys except for symmetric encryption keys.")
        usage = "ENCRYPT_DECRYPT"
    if usage not in spec.usages:
        raise Validation(f"KeyUsage {usage} is not compatible with KeySpec {spec.name}")
    store_key = await new_store_key(ctx, origin, custom_key_store, spec, usage, multi_region)
    if origin not in ("AWS_KMS", "AWS_CLOUDHSM", "EXTERNAL"):
        raise UnsupportedOperation(f"Origin {origin} is not supported by this endpoint.")
    if multi_region:
        raise UnsupportedOperation("Multi-Region keys are not supported by this endpoint.")
    if not spec.supported:
        raise UnsupportedOperation(f"KeySpec {spec.name} is not supported by this endpoint yet.")
    if not spec.implements(usage):
        raise UnsupportedOperation(f"KeyUsage {usage} of KeySpec {spec.name} is not supported by this endpoint yet.")
    if policy is not None:  # key policies: ops/policies.py (syntax, size, lockout safety check)
        from strongroom.kms.ops.policies import check_new_policy

        check_new_policy(ctx, policy, None, bypass_lockout_check)
    if policy is not None:
        try:
            if not isinstance(json.loads(policy), dict):
                raise ValueError
        except ValueError:
            raise MalformedPolicyDocument("The new key policy will not allow you to update the key policy in the "
                                          "future.") from None
    check_new_tags([], tags)
    key_id = new_key_id()
    backend = store_key.backend if store_key is not None else ctx.backend
    materials: list[Material] = []
    if origin == "EXTERNAL":
        pass  # no key material until ImportKeyMaterial (ops/imports.py)
    elif spec.symmetric:
        materials = [new_material(1, await backend.generate_aes_key(f"kms/{key_id}/1", spec.aes_bytes))]
    else:  # asymmetric and HMAC keys (ops/asymmetric.py)
        materials = [await generate_material(ctx, key_id, spec, usage)]
    key = KmsKey(key_id=key_id, created=time.time(), description=description, key_usage=usage,
                 key_spec=spec.name, origin=origin, state=PENDING_IMPORT if origin == "EXTERNAL" else ENABLED,
                 tags=list(tags), policy=policy, materials=materials, current_material=1)
    if store_key is not None:
        store_key.stamp(key)
    try:
        await ctx.metadata.commit([put(KEYS + key_id, key.to_record(), 0), *(store_key.guard if store_key else [])])
    except BaseException:
        try:
            for handle in (h for material in materials for h in material.handles):
                await backend.destroy_object(handle)  # no record names it: do not leave it behind
        except Exception as exc:  # noqa: BLE001 - the original failure is what the client must see
            log.warning("could not destroy the orphaned cluster key %s of %s: %s", handle, key_id, exc)
        raise
    return {"KeyMetadata": key.metadata(ctx.where)}


@kms_operation("DescribeKey")
async def describe_key(ctx: Context) -> dict[str, Any]:
    key_id = _key_id_member(ctx)
    ctx.params.string_list("GrantTokens", max_items=10)
    ctx.params.check()
    key = await resolve_key(ctx, key_id)
    return {"KeyMetadata": key.metadata(ctx.where)}


@kms_operation("ListKeys", keyless=True)
async def list_keys(ctx: Context) -> dict[str, Any]:
    limit = read_limit(ctx.params, 100, 1000)
    marker = read_marker(ctx.params)
    ctx.params.check()
    after = parse_marker(marker, "keys")
    keys, more = await ctx.metadata.list_keys(after, limit)
    items = [{"KeyId": k.key_id, "KeyArn": ctx.where.key_arn(k.key_id)} for k in keys]
    return page(items, "Keys", more, "keys", keys[-1].key_id if keys else after)


async def _change_state(ctx: Context, change: Any) -> KmsKey:
    key_id = _key_id_member(ctx)
    ctx.params.check()
    key = await resolve_key(ctx, key_id, allow_alias=False)
    updated = await ctx.metadata.update_key(key.key_id, change)
    if updated is None:
        raise InvalidState(f"{ctx.where.key_arn(key.key_id)} was deleted meanwhile.")
    return updated


@kms_operation("EnableKey")
async def enable_key(ctx: Context) -> dict[str, Any]:
    def change(key: KmsKey) -> None:
        require_not_pending(ctx, key)
        key.state = ENABLED

    await _change_state(ctx, change)
    return {}


@kms_operation("DisableKey")
async def disable_key(ctx: Context) -> dict[str, Any]:
    def change(key: KmsKey) -> None:
        require_not_pending(ctx, key)
        key.state = DISABLED

    await _change_state(ctx, change)
    return {}


@kms_operation("ScheduleKeyDeletion")
async def schedule_key_deletion(ctx: Context) -> dict[str, Any]:
    p = ctx.params
    window = p.integer("PendingWindowInDays", minimum=1, maximum=365)
    if window is not None:
        # The model allows 1-365; the service allows 7-30.
        p.violation(None if PENDING_WINDOW_MIN <= window else
                    f"Value '{window}' at 'pendingWindowInDays' failed to satisfy constraint: "
                    f"Member must have value greater than or equal to {PENDING_WINDOW_MIN}")
        p.violation(None if window <= PENDING_WINDOW_MAX or window > 365 else
                    f"Value '{window}' at 'pendingWindowInDays' failed to satisfy constraint: "
                    f"Member must have value less than or equal to {PENDING_WINDOW_MAX}")
    days = PENDING_WINDOW_DEFAULT if window is None else window
    day_seconds = ctx.config.deletion.day_seconds

    def change(key: KmsKey) -> None:
        require_not_pending_deletion(ctx, key)
        key.state = PENDING_DELETION
        key.pending_window = days
        key.deletion_date = time.time() + days * day_seconds

    key = await _change_state(ctx, change)
    return {"KeyId": ctx.where.key_arn(key.key_id), "DeletionDate": key.deletion_date,
            "KeyState": PENDING_DELETION, "PendingWindowInDays": days}


@kms_operation("CancelKeyDeletion")
async def cancel_key_deletion(ctx: Context) -> dict[str, Any]:
    def change(key: KmsKey) -> None:
        if key.state != PENDING_DELETION:
            raise InvalidState(f"{ctx.where.key_arn(key.key_id)} is not pending deletion.")
        # An EXTERNAL key whose material is gone goes back to waiting for it.
        key.state = DISABLED if key.has_material else PENDING_IMPORT
        key.deletion_date = None
        key.pending_window = None

    key = await _change_state(ctx, change)
    return {"KeyId": ctx.where.key_arn(key.key_id)}


@kms_operation("UpdateKeyDescription")
async def update_key_description(ctx: Context) -> dict[str, Any]:
    description = ctx.params.string("Description", required=True, min_len=0, max_len=DESCRIPTION_MAX)

    def change(key: KmsKey) -> None:
        require_not_pending_deletion(ctx, key)
        key.description = description or ""

    await _change_state(ctx, change)
    return {}
