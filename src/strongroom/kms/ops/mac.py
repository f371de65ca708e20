"""HMAC keys: GenerateMac and VerifyMac.

An HMAC KMS key is a CKK_GENERIC_SECRET token key in the cluster (HMAC_224 is 28 bytes, …,
HMAC_512 64 bytes), sensitive, never extractable, whose CKA_ALLOWED_MECHANISMS is the one
CKM_SHA*_HMAC of its spec; the MAC is computed and compared (constant time) in a node.
"""

from __future__ import annotations

from typing import Any

from strongroom.kms.backend import ClusterError
from strongroom.kms.context import Context, kms_operation
from strongroom.kms.errors import KmsInvalidMac
from strongroom.kms.keyspecs import MAC_ALGORITHM_NAMES, MAC_ALGORITHMS
from strongroom.kms.model import KmsKey
from strongroom.kms.ops.asymmetric import HMAC_MECHANISMS, _unavailable, incompatible, key_spec
from strongroom.kms.ops.common import (
    KEY_ID_MAX,
    PLAINTEXT_MAX,
    b64,
    dry_run,
    grant_tokens,
    refuse_dry_run,
    require_usable,
    require_usage,
    resolve_key,
)

MAC_MAX = 6144


def _request(ctx: Context) -> tuple[str, bytes, str]:
    p = ctx.params
    message = p.blob("Message", required=True, max_len=PLAINTEXT_MAX)
    key_id = p.string("KeyId", required=True, max_len=KEY_ID_MAX) or ""
    algorithm = p.string("MacAlgorithm", required=True, enum=MAC_ALGORITHM_NAMES) or ""
    return key_id, message or b"", algorithm


def _check(ctx: Context, key: KmsKey, operation: str, algorithm: str) -> int:
    require_usable(ctx, key)
    require_usage(ctx, key, "GENERATE_VERIFY_MAC", operation)
    spec = key_spec(key)
    if algorithm not in spec.algorithms.get("GENERATE_VERIFY_MAC", ()):
        raise incompatible(algorithm, spec)
    return int(HMAC_MECHANISMS[MAC_ALGORITHMS[algorithm]])


@kms_operation("GenerateMac")
async def generate_mac(ctx: Context) -> dict[str, Any]:
    key_id, message, algorithm = _request(ctx)
    grant_tokens(ctx.params)
    is_dry_run = dry_run(ctx.params)
    ctx.params.check()
    key = await resolve_key(ctx, key_id)
    mechanism = _check(ctx, key, "GenerateMac", algorithm)
    if is_dry_run:
        refuse_dry_run()
    try:
        mac = await ctx.backend.cluster.sign(key.current.handle, mechanism, message)
    except ClusterError as exc:
        raise _unavailable(ctx, key, exc) from None
    return {"Mac": b64(mac), "MacAlgorithm": algorithm, "KeyId": ctx.where.key_arn(key.key_id)}


@kms_operation("VerifyMac")
async def verify_mac(ctx: Context) -> dict[str, Any]:
    key_id, message, algorithm = _request(ctx)
    mac = ctx.params.blob("Mac", required=True, max_len=MAC_MAX)
    grant_tokens(ctx.params)
    is_dry_run = dry_run(ctx.params)
    ctx.params.check()
    assert mac is not None
    key = await resolve_key(ctx, key_id)
    mechanism = _check(ctx, key, "VerifyMac", algorithm)
    if is_dry_run:
        refuse_dry_run()
    try:
        valid = await ctx.backend.verify(key.current.handle, mechanism, message, mac)
    except ClusterError as exc:
        raise _unavailable(ctx, key, exc) from None
    if not valid:
        raise KmsInvalidMac("")
    return {"KeyId": ctx.where.key_arn(key.key_id), "MacValid": True, "MacAlgorithm": algorithm}
