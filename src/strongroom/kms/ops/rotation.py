"""Key rotation: EnableKeyRotation, DisableKeyRotation, GetKeyRotationStatus, RotateKeyOnDemand,
ListKeyRotations; automatic rotation runs in the gateway's sweep
(:meth:`strongroom.kms.gateway.Gateway.rotate_due`).

A rotation generates a new non-extractable AES key object in the cluster (label
``kms/<key id>/<version>``), appends it to the key's material versions and makes it current.
Ciphertexts name their material version, so old ones keep decrypting; new encryptions use the
newest version; ReEncrypt moves a blob to it. Deleting the key destroys every version. Only
symmetric encryption keys of origin AWS_KMS outside custom key stores rotate, as AWS. Days are
``deletion.day_seconds`` long (shortened for tests only).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from strongroom.kms.backend import Backend
from strongroom.kms.context import Context, Services, kms_operation
from strongroom.kms.errors import Disabled, InvalidMarker, InvalidState, LimitExceeded, NotFound, UnsupportedOperation
from strongroom.kms.model import DISABLED, PENDING_DELETION, KmsKey, new_material
from strongroom.kms.ops.common import KEY_ID_MAX, page, parse_marker, read_limit, read_marker, resolve_key

ROTATION_MIN, ROTATION_MAX, ROTATION_DEFAULT = 90, 2560, 365
ON_DEMAND_LIMIT = 10
log = logging.getLogger("strongroom.kms")


def _key_id(ctx: Context) -> str:
    return ctx.params.string("KeyId", required=True, max_len=KEY_ID_MAX) or ""


def require_rotatable(where: Any, key: KmsKey) -> None:
    arn = where.key_arn(key.key_id)
    if key.key_spec != "SYMMETRIC_DEFAULT" or key.key_usage != "ENCRYPT_DECRYPT":
        raise UnsupportedOperation(f"{arn} key spec is {key.key_spec} which is not valid for this operation.")
    if key.origin != "AWS_KMS":
        raise UnsupportedOperation(f"{arn} origin is {key.origin} which is not valid for this operation.")
    if getattr(key, "custom_key_store_id", None):
        raise UnsupportedOperation(f"{arn} is in a custom key store; keys in custom key stores cannot be rotated.")


def require_enabled(where: Any, key: KmsKey) -> None:
    arn = where.key_arn(key.key_id)
    if key.state == DISABLED:
        raise Disabled(f"{arn} is disabled.")
    if key.state == PENDING_DELETION:
        raise InvalidState(f"{arn} is pending deletion.")
    if key.state != "Enabled":
        raise InvalidState(f"{arn} is {key.state}.")


def on_demand_count(key: KmsKey) -> int:
    return sum(1 for r in key.rotations if r.get("type") == "ON_DEMAND")


async def rotate(services: Services, key_id: str, kind: str, check: Callable[[KmsKey], Any]) -> KmsKey | None:
    """Add a new material version and make it current. ``check(key)`` runs on every read of the
    record (raising refuses; returning False skips for automatic rotation). None when skipped."""
    where = services.where
    key = await services.metadata.get_key(key_id)
    if key is None:
        raise NotFound(f"Key '{where.key_arn(key_id)}' does not exist")
    if check(key) is False:
        return None
    version = max((m.version for m in key.materials), default=0) + 1
    handle = await services.backend.generate_aes_key(f"kms/{key_id}/{version}", 32)
    skipped = False

    def change(key: KmsKey) -> None:
        nonlocal skipped
        if check(key) is False:
            skipped = True
            raise _Skip()
        now = time.time()
        number = max((m.version for m in key.materials), default=0) + 1
        key.materials.append(new_material(number, handle))
        key.current_material = number
        key.rotations.append({"version": number, "date": now, "type": kind})
        if kind == "AUTOMATIC":
            key.rotation_anchor = now

    try:
        updated = await services.metadata.update_key(key_id, change)
    except BaseException as exc:
        await _destroy(services.backend, handle, key_id)
        if isinstance(exc, _Skip):
            return None
        raise
    if updated is None:
        await _destroy(services.backend, handle, key_id)
        raise NotFound(f"Key '{where.key_arn(key_id)}' does not exist")
    log.info("rotated KMS key %s (%s) to key material version %d", key_id, kind, updated.current_material)
    return updated


class _Skip(Exception):
    pass


async def _destroy(backend: Backend, handle: int, key_id: str) -> None:
    try:
        await backend.destroy_object(handle)
    except Exception as exc:  # noqa: BLE001 - the original outcome is what matters
        log.warning("could not destroy the unused rotation key %s of %s: %s", handle, key_id, exc)


@kms_operation("EnableKeyRotation")
async def enable_key_rotation(ctx: Context) -> dict[str, Any]:
    key_id = _key_id(ctx)
    period = ctx.params.integer("RotationPeriodInDays", minimum=ROTATION_MIN, maximum=ROTATION_MAX)
    ctx.params.check()
    key = await resolve_key(ctx, key_id, allow_alias=False)
    days = ROTATION_DEFAULT if period is None else period

    def change(key: KmsKey) -> None:
        require_enabled(ctx.where, key)
        require_rotatable(ctx.where, key)
        if key.rotation_period is None or key.rotation_anchor is None:
            key.rotation_anchor = time.time()
        key.rotation_period = days

    require_rotatable(ctx.where, key)
    if await ctx.metadata.update_key(key.key_id, change) is None:
        raise NotFound(f"Key '{ctx.where.key_arn(key.key_id)}' does not exist")
    return {}


@kms_operation("DisableKeyRotation")
async def disable_key_rotation(ctx: Context) -> dict[str, Any]:
    key_id = _key_id(ctx)
    ctx.params.check()
    key = await resolve_key(ctx, key_id, allow_alias=False)

    def change(key: KmsKey) -> None:
        require_enabled(ctx.where, key)
        require_rotatable(ctx.where, key)
        key.rotation_period = None
        key.rotation_anchor = None

    require_rotatable(ctx.where, key)
    if await ctx.metadata.update_key(key.key_id, change) is None:
        raise NotFound(f"Key '{ctx.where.key_arn(key.key_id)}' does not exist")
    return {}


@kms_operation("GetKeyRotationStatus")
async def get_key_rotation_status(ctx: Context) -> dict[str, Any]:
    key_id = _key_id(ctx)
    ctx.params.check()
    key = await resolve_key(ctx, key_id, allow_alias=False)
    require_rotatable(ctx.where, key)
    result: dict[str, Any] = {"KeyId": ctx.where.key_arn(key.key_id),
                              "KeyRotationEnabled": key.rotation_period is not None}
    if key.rotation_period is not None and key.rotation_anchor is not None:
        result["RotationPeriodInDays"] = key.rotation_period
        result["NextRotationDate"] = key.rotation_anchor + key.rotation_period * ctx.config.deletion.day_seconds
    return result


@kms_operation("RotateKeyOnDemand")
async def rotate_key_on_demand(ctx: Context) -> dict[str, Any]:
    key_id = _key_id(ctx)
    ctx.params.check()
    key = await resolve_key(ctx, key_id, allow_alias=False)
    arn = ctx.where.key_arn(key.key_id)

    def check(key: KmsKey) -> None:
        require_enabled(ctx.where, key)
        require_rotatable(ctx.where, key)
        if on_demand_count(key) >= ON_DEMAND_LIMIT:
            raise LimitExceeded("The on-demand rotations limit has been reached for the given keyId. "
                                f"No more on-demand rotations can be performed for this key: {arn}")

    await rotate(ctx.services, key.key_id, "ON_DEMAND", check)
    return {"KeyId": arn}


@kms_operation("ListKeyRotations")
async def list_key_rotations(ctx: Context) -> dict[str, Any]:
    key_id = _key_id(ctx)
    include = ctx.params.string("IncludeKeyMaterial", enum=["ALL_KEY_MATERIAL", "ROTATIONS_ONLY"])
    limit = read_limit(ctx.params, 100, 1000)
    marker = read_marker(ctx.params)
    ctx.params.check()
    after = parse_marker(marker, "rotations")
    key = await resolve_key(ctx, key_id, allow_alias=False)
    require_rotatable(ctx.where, key)
    rotated = {int(r["version"]): r for r in key.rotations}
    entries = []
    for material in sorted(key.materials, key=lambda m: m.version):
        rotation = rotated.get(material.version)
        if rotation is None and include != "ALL_KEY_MATERIAL":
            continue
        entry: dict[str, Any] = {
            "KeyId": key.key_id, "KeyMaterialId": material.material_id,
            "KeyMaterialState": "CURRENT" if material.version == key.current_material else "NON_CURRENT",
        }
        if rotation is not None:
            entry["RotationDate"] = rotation["date"]
            entry["RotationType"] = rotation["type"]
        entries.append((material.version, entry))
    try:
        start = int(after) if after else 0
    except ValueError:
        raise InvalidMarker("Invalid marker") from None
    remaining = [(v, e) for v, e in entries if v > start]
    shown = remaining[:limit]
    more = len(remaining) > limit
    return page([e for _, e in shown], "Rotations", more, "rotations", str(shown[-1][0] if shown else start))
