"""GetKeyLastUsage: the last successful cryptographic operation of a key (:mod:`strongroom.kms.usage`).

AWS's members: ``KeyLastUsage`` (empty when the key was not used since tracking began; else
``Operation``, ``Timestamp`` and ``KmsRequestId`` — the ``x-amzn-RequestId`` of that request;
``CloudTrailEventId`` is left out: there is no CloudTrail, the cluster's audit log records
management events), ``TrackingStartDate``, ``KeyCreationDate`` and ``KeyId``. Key ids and key
ARNs only, as AWS; any key state.
"""

from __future__ import annotations

from typing import Any

from strongroom.kms.context import Context, kms_operation
from strongroom.kms.ops.common import KEY_ID_MAX, resolve_key


@kms_operation("GetKeyLastUsage")
async def get_key_last_usage(ctx: Context) -> dict[str, Any]:
    key_id = ctx.params.string("KeyId", required=True, max_len=KEY_ID_MAX) or ""
    ctx.params.check()
    key = await resolve_key(ctx, key_id, allow_alias=False)
    tracker = ctx.services.usage
    last = await tracker.last(key.key_id)
    usage: dict[str, Any] = {}
    if last is not None:
        usage = {"Operation": last.operation, "Timestamp": last.timestamp}
        if last.request_id:
            usage["KmsRequestId"] = last.request_id
    return {"KeyId": key.key_id, "KeyLastUsage": usage,
            "TrackingStartDate": max(key.created, await tracker.tracking_start()), "KeyCreationDate": key.created}
