"""Grants: CreateGrant, ListGrants, ListRetirableGrants, RetireGrant, RevokeGrant.

Records and tokens are :mod:`strongroom.kms.grants`; the gateway consults a key's grants when
its policies do not allow a request (:meth:`strongroom.kms.authorization.Authorizer.authorize_key`).
A grant created by a principal who holds ``kms:CreateGrant`` only through a grant may give at
most that grant's operations, with an encryption-context constraint at least as strict.
"""

from __future__ import annotations

import time
from typing import Any

from strongroom.kms.arn import parse_identifier
from strongroom.kms.context import Context, kms_operation
from strongroom.kms.errors import InvalidGrantId, InvalidGrantToken, NotFound, Validation
from strongroom.kms.grants import (
    Grant,
    get_grant,
    list_grants,
    new_grant_id,
    new_nonce,
    parse_token,
)
from strongroom.kms.model import KmsKey, put
from strongroom.kms.ops.common import (
    GRANT_TOKEN_MAX,
    KEY_ID_MAX,
    dry_run,
    grant_tokens,
    page,
    parse_marker,
    read_limit,
    read_marker,
    refuse_dry_run,
    require_not_pending_deletion,
    resolve_key,
)
from strongroom.kms.policy import ACCOUNT_RE, PRINCIPAL_RE, Request, evaluate

GRANT_OPERATIONS = ["Decrypt", "Encrypt", "GenerateDataKey", "GenerateDataKeyWithoutPlaintext", "ReEncryptFrom",
                    "ReEncryptTo", "Sign", "Verify", "GetPublicKey", "CreateGrant", "RetireGrant", "DescribeKey",
                    "GenerateDataKeyPair", "GenerateDataKeyPairWithoutPlaintext", "GenerateMac", "VerifyMac",
                    "DeriveSharedSecret", "Encapsulate", "Decapsulate"]
#: What a symmetric encryption key's grants may allow.
SYMMETRIC_OPERATIONS = {"Decrypt", "Encrypt", "GenerateDataKey", "GenerateDataKeyWithoutPlaintext", "ReEncryptFrom",
                        "ReEncryptTo", "CreateGrant", "RetireGrant", "DescribeKey", "GenerateDataKeyPair",
                        "GenerateDataKeyPairWithoutPlaintext"}
PRINCIPAL_PATTERN = r"^[\w+=,.@:/-]+$"
NAME_PATTERN = r"^[a-zA-Z0-9:/_-]+$"
GRANT_ID_MAX = 128
CONSTRAINT_PAIRS_MAX = 8
CONSTRAINT_VALUE_MAX = 384


def _principal(ctx: Context, member: str, required: bool = False) -> str | None:
    value = ctx.params.string(member, required=required, max_len=256, pattern=PRINCIPAL_PATTERN)
    return value


def _valid_principal(value: str) -> bool:
    return value == "*" or bool(ACCOUNT_RE.match(value) or PRINCIPAL_RE.match(value))


def _constraints(ctx: Context) -> dict[str, dict[str, str]] | None:
    raw = ctx.params.body.get("Constraints")
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise Validation("Constraints must be a structure")
    found: dict[str, dict[str, str]] = {}
    for member in ("EncryptionContextSubset", "EncryptionContextEquals"):
        value = raw.get(member)
        if value is None:
            continue
        if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
            raise Validation(f"{member} must be a map of strings")
        if len(value) > CONSTRAINT_PAIRS_MAX or any(len(v) > CONSTRAINT_VALUE_MAX for v in value.values()):
            raise Validation(f"{member} takes at most {CONSTRAINT_PAIRS_MAX} pairs, values of at most "
                             f"{CONSTRAINT_VALUE_MAX} characters")
        found[member] = dict(value)
    if len(found) > 1:
        raise Validation("Specify either EncryptionContextEquals or EncryptionContextSubset, not both.")
    if raw.get("SourceArn") is not None:
        raise Validation("The SourceArn grant constraint is not supported by this endpoint.")
    return found or None


def _as_strict(parent: dict[str, dict[str, str]] | None, child: dict[str, dict[str, str]] | None) -> bool:
    """Whether ``child`` constrains at least as much as ``parent`` (keys case-insensitive)."""
    if not parent:
        return True
    if not child:
        return False

    def lower(pairs: dict[str, str]) -> dict[str, str]:
        return {k.lower(): v for k, v in pairs.items()}

    if "EncryptionContextEquals" in parent:
        return lower(child.get("EncryptionContextEquals") or {}) == lower(parent["EncryptionContextEquals"]) \
            and "EncryptionContextEquals" in child
    needed = lower(parent["EncryptionContextSubset"])
    have = lower(child.get("EncryptionContextEquals") or child.get("EncryptionContextSubset") or {})
    return all(have.get(k) == v for k, v in needed.items())


def _entry(ctx: Context, grant: Grant) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "KeyId": ctx.where.key_arn(grant.key_id), "GrantId": grant.grant_id, "CreationDate": grant.created,
        "GranteePrincipal": grant.grantee, "IssuingAccount": grant.issuer, "Operations": list(grant.operations),
    }
    if grant.name:
        entry["Name"] = grant.name
    if grant.retiring:
        entry["RetiringPrincipal"] = grant.retiring
    if grant.constraints:
        entry["Constraints"] = grant.constraints
    return entry


@kms_operation("CreateGrant")
async def create_grant(ctx: Context) -> dict[str, Any]:
    p = ctx.params
    key_id = p.string("KeyId", required=True, max_len=KEY_ID_MAX) or ""
    grantee = _principal(ctx, "GranteePrincipal", required=True) or ""
    retiring = _principal(ctx, "RetiringPrincipal")
    operations = p.string_list("Operations", required=True) or []
    for op in operations:
        if op not in GRANT_OPERATIONS:
            p.violation(f"Value '[{', '.join(operations)}]' at 'operations' failed to satisfy constraint: Member must "
                        f"satisfy constraint: [Member must satisfy enum value set: [{', '.join(GRANT_OPERATIONS)}]]")
            break
    name = p.string("Name", max_len=256, pattern=NAME_PATTERN)
    grant_tokens(p)
    is_dry_run = dry_run(p)
    if p.body.get("GranteeServicePrincipal") is not None or p.body.get("RetiringServicePrincipal") is not None:
        p.check()
        raise Validation("Service principals are not supported by this endpoint.")
    p.check()
    constraints = _constraints(ctx)
    if not operations:
        raise Validation("1 validation error detected: Value '[]' at 'operations' failed to satisfy constraint: "
                         "Member must have length greater than or equal to 1")
    for principal in (grantee, retiring):
        if principal is not None and not _valid_principal(principal):
            raise Validation(f"Invalid principal: {principal}")
    key = await resolve_key(ctx, key_id, allow_alias=False)
    parent: Grant | None = ctx.grant
    require_not_pending_deletion(ctx, key)
    if key.key_spec == "SYMMETRIC_DEFAULT":
        invalid = [op for op in operations if op not in SYMMETRIC_OPERATIONS]
        if invalid:
            raise Validation(f"Grant operations {', '.join(invalid)} are not valid for key spec {key.key_spec}.")
    elif constraints:
        raise Validation("Encryption context grant constraints are not supported for key spec "
                         f"{key.key_spec}.")
    if parent is not None:
        # Allowed only through a grant: no more than that grant, no weaker constraint.
        if not set(operations) <= set(parent.operations) or not _as_strict(parent.constraints, constraints):
            await _refuse(ctx, key, "kms:CreateGrant")
    if is_dry_run:
        refuse_dry_run()
    operations = list(dict.fromkeys(operations))
    if name is not None:
        for existing in await list_grants(ctx.backend, key.key_id):
            if (existing.name == name and existing.grantee == grantee and existing.retiring == retiring
                    and sorted(existing.operations) == sorted(operations) and existing.constraints == constraints):
                return {"GrantToken": existing.token, "GrantId": existing.grant_id}
    grant = Grant(key.key_id, new_grant_id(), grantee, operations, time.time(), new_nonce(),
                  issuer=f"arn:{ctx.where.partition}:iam::{ctx.where.account}:root", retiring=retiring, name=name,
                  constraints=constraints)
    await ctx.metadata.commit([put(grant.record_key, grant.to_record(), 0)])
    return {"GrantToken": grant.token, "GrantId": grant.grant_id}


async def _refuse(ctx: Context, key: KmsKey, action: str) -> None:
    ctx.authorizer.denied(ctx.identity, action, ctx.where.key_arn(key.key_id), "implicit", "resource-based")


@kms_operation("ListGrants")
async def list_grants_op(ctx: Context) -> dict[str, Any]:
    p = ctx.params
    key_id = p.string("KeyId", required=True, max_len=KEY_ID_MAX) or ""
    grant_id = p.string("GrantId", max_len=GRANT_ID_MAX)
    grantee = _principal(ctx, "GranteePrincipal")
    limit = read_limit(p, 50, 100)
    marker = read_marker(p)
    p.check()
    after = parse_marker(marker, "grants")
    key = await resolve_key(ctx, key_id, allow_alias=False)
    grants = [g for g in await list_grants(ctx.backend, key.key_id)
              if (grant_id is None or g.grant_id == grant_id) and (grantee is None or g.grantee == grantee)]
    return _page(ctx, grants, after, limit)


def _page(ctx: Context, grants: list[Grant], after: str, limit: int) -> dict[str, Any]:
    remaining = [g for g in grants if f"{g.key_id}/{g.grant_id}" > after] if after else grants
    shown = remaining[:limit]
    more = len(remaining) > limit
    position = f"{shown[-1].key_id}/{shown[-1].grant_id}" if shown else after or "-"
    return page([_entry(ctx, g) for g in shown], "Grants", more, "grants", position)


@kms_operation("ListRetirableGrants", keyless=True)
async def list_retirable_grants(ctx: Context) -> dict[str, Any]:
    p = ctx.params
    retiring = _principal(ctx, "RetiringPrincipal")
    if p.body.get("RetiringServicePrincipal") is not None:
        p.check()
        raise Validation("Service principals are not supported by this endpoint.")
    limit = read_limit(p, 50, 100)
    marker = read_marker(p)
    p.check()
    if retiring is None:
        retiring = ctx.principal
    after = parse_marker(marker, "grants")
    grants = [g for g in await list_grants(ctx.backend) if g.retiring == retiring]
    return _page(ctx, grants, after, limit)


async def _find_key(ctx: Context, text: str) -> KmsKey:
    ref = parse_identifier(text, ctx.where, allow_alias=False)
    key = await ctx.metadata.get_key(ref.value)
    if key is None:
        raise NotFound(f"Key '{ctx.where.key_arn(ref.value)}' does not exist")
    return key


def _check_grant_id(grant_id: str) -> None:
    if len(grant_id) != 64 or any(c not in "0123456789abcdef" for c in grant_id):
        raise InvalidGrantId(f"Invalid grant ID {grant_id}")


@kms_operation("RetireGrant")
async def retire_grant(ctx: Context) -> dict[str, Any]:
    p = ctx.params
    token = p.string("GrantToken", max_len=GRANT_TOKEN_MAX)
    key_id = p.string("KeyId", max_len=KEY_ID_MAX)
    grant_id = p.string("GrantId", max_len=GRANT_ID_MAX)
    is_dry_run = dry_run(p)
    p.check()
    if token is not None:
        parsed = parse_token(token)
        if parsed is None:
            raise InvalidGrantToken("The grant token is invalid.")
        token_key, token_grant, nonce = parsed
        if (key_id is not None and parse_identifier(key_id, ctx.where, allow_alias=False).value != token_key) or \
                (grant_id is not None and grant_id != token_grant):
            raise InvalidGrantToken("The grant token does not name this grant.")
        key_id, grant_id = token_key, token_grant
    elif key_id is None or grant_id is None:
        raise Validation("Specify a GrantToken, or both a KeyId and a GrantId.")
    else:
        nonce = None
    key = await _find_key(ctx, key_id)
    _check_grant_id(grant_id)
    grant = await get_grant(ctx.backend, key.key_id, grant_id)
    if grant is None:
        raise NotFound(f"Grant ID {grant_id} not found.")
    if nonce is not None and grant.nonce != nonce:
        raise InvalidGrantToken("The grant token is invalid.")
    await ctx.check_grant_tokens()
    principal = ctx.principal
    allowed = principal == grant.retiring or (principal == grant.grantee and "RetireGrant" in grant.operations)
    if not allowed:
        # The account in which the grant was created (principals whose policies allow kms:RetireGrant).
        arn = ctx.where.key_arn(key.key_id)
        request = Request("kms:RetireGrant", arn, principal, ctx.where.account)
        decision, where = evaluate(request, ctx.authorizer.key_policy(key), ctx.identity.policy,
                                   ctx.identity.policy_error is not None)
        if decision != "allow":
            ctx.authorizer.denied(ctx.identity, "kms:RetireGrant", arn, decision, where)
    if is_dry_run:
        refuse_dry_run()
    await _delete(ctx, grant)
    return {}


async def _delete(ctx: Context, grant: Grant) -> None:
    from strongroom.kms.model import Conflict, delete

    try:
        await ctx.metadata.commit([delete(grant.record_key, grant.revision)])
    except Conflict:
        pass  # retired or revoked meanwhile


@kms_operation("RevokeGrant")
async def revoke_grant(ctx: Context) -> dict[str, Any]:
    p = ctx.params
    key_id = p.string("KeyId", required=True, max_len=KEY_ID_MAX) or ""
    grant_id = p.string("GrantId", required=True, max_len=GRANT_ID_MAX) or ""
    is_dry_run = dry_run(p)
    p.check()
    key = await resolve_key(ctx, key_id, allow_alias=False)
    _check_grant_id(grant_id)
    grant = await get_grant(ctx.backend, key.key_id, grant_id)
    if grant is None:
        raise NotFound(f"Grant ID {grant_id} not found.")
    if is_dry_run:
        refuse_dry_run()
    await _delete(ctx, grant)
    return {}
