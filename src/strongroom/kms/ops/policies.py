"""Key policies: GetKeyPolicy, PutKeyPolicy, ListKeyPolicies (and the check CreateKey's Policy gets).

Every key has one policy, named ``default``; a key created without one gets AWS's default
(:func:`strongroom.kms.policy.default_key_policy`: the account may do everything, so access
keys' own policies decide). Policies are enforced on every operation on a key by the gateway
(:meth:`strongroom.kms.authorization.Authorizer.authorize_key`). A new policy must parse as the
supported subset (:mod:`strongroom.kms.policy`; anything else is
``MalformedPolicyDocumentException`` naming it), be at most 32 KiB (``LimitExceededException``)
and — unless ``BypassPolicyLockoutSafetyCheck`` — still allow the caller ``kms:PutKeyPolicy``.
"""

from __future__ import annotations

from typing import Any

from strongroom.kms.context import Context, kms_operation
from strongroom.kms.errors import LimitExceeded, MalformedPolicyDocument, NotFound
from strongroom.kms.model import KmsKey
from strongroom.kms.ops.common import (
    KEY_ID_MAX,
    parse_marker,
    read_limit,
    read_marker,
    require_not_pending_deletion,
    resolve_key,
)
from strongroom.kms.policy import PolicyError, Request, default_key_policy, evaluate, parse_policy

POLICY_NAME = "default"
POLICY_BYTES_MAX = 32768
POLICY_MODEL_MAX = 131072
POLICY_PATTERN = r"[\u0009\u000A\u000D\u0020-\u00FF]+"
LOCKOUT_MESSAGE = "The new key policy will not allow you to update the key policy in the future."


def check_new_policy(ctx: Context, text: str, key_arn: str | None, bypass: bool) -> None:
    """Size, syntax (the supported subset) and — unless bypassed — the lockout safety check."""
    if len(text.encode()) > POLICY_BYTES_MAX:
        raise LimitExceeded(f"The key policy exceeds the maximum size of {POLICY_BYTES_MAX} bytes.")
    try:
        policy = parse_policy(text, key_policy=True)
    except PolicyError as exc:
        raise MalformedPolicyDocument(str(exc)) from None
    if bypass:
        return
    resource = key_arn or ctx.where.key_arn("*")
    request = Request("kms:PutKeyPolicy", resource, ctx.principal, ctx.where.account)
    decision, _ = evaluate(request, policy, ctx.identity.policy, ctx.identity.policy_error is not None)
    if decision != "allow":
        raise MalformedPolicyDocument(LOCKOUT_MESSAGE)


def _policy_name(ctx: Context) -> str:
    name = ctx.params.string("PolicyName", max_len=128, pattern=r"[\w]+")
    return POLICY_NAME if name is None else name


def _check_name(name: str) -> None:
    if name != POLICY_NAME:
        raise NotFound(f"No such policy exists: {name}")


def key_policy_text(ctx: Context, key: KmsKey) -> str:
    return key.policy or default_key_policy(ctx.where.partition, ctx.where.account)


@kms_operation("GetKeyPolicy")
async def get_key_policy(ctx: Context) -> dict[str, Any]:
    key_id = ctx.params.string("KeyId", required=True, max_len=KEY_ID_MAX) or ""
    name = _policy_name(ctx)
    ctx.params.check()
    key = await resolve_key(ctx, key_id, allow_alias=False)
    _check_name(name)
    return {"Policy": key_policy_text(ctx, key), "PolicyName": POLICY_NAME}


@kms_operation("PutKeyPolicy")
async def put_key_policy(ctx: Context) -> dict[str, Any]:
    p = ctx.params
    key_id = p.string("KeyId", required=True, max_len=KEY_ID_MAX) or ""
    name = _policy_name(ctx)
    text = p.string("Policy", required=True, max_len=POLICY_MODEL_MAX, pattern=POLICY_PATTERN) or ""
    bypass = bool(p.boolean("BypassPolicyLockoutSafetyCheck"))
    p.check()
    key = await resolve_key(ctx, key_id, allow_alias=False)
    _check_name(name)
    require_not_pending_deletion(ctx, key)
    arn = ctx.where.key_arn(key.key_id)
    check_new_policy(ctx, text, arn, bypass)

    def change(key: KmsKey) -> None:
        require_not_pending_deletion(ctx, key)
        key.policy = text

    if await ctx.metadata.update_key(key.key_id, change) is None:
        raise NotFound(f"Key '{arn}' does not exist")
    return {}


@kms_operation("ListKeyPolicies")
async def list_key_policies(ctx: Context) -> dict[str, Any]:
    key_id = ctx.params.string("KeyId", required=True, max_len=KEY_ID_MAX) or ""
    read_limit(ctx.params, 100, 1000)
    marker = read_marker(ctx.params)
    ctx.params.check()
    parse_marker(marker, "policies")
    await resolve_key(ctx, key_id, allow_alias=False)
    # One policy per key: a marker (necessarily ours, naming the end) leaves nothing.
    return {"PolicyNames": [] if marker else [POLICY_NAME], "Truncated": False}
