"""Aliases: CreateAlias, UpdateAlias, DeleteAlias, ListAliases."""

from __future__ import annotations

import time
from typing import Any

from strongroom.kms.arn import ALIAS_PATTERN, parse_alias_name
from strongroom.kms.context import Context, kms_operation
from strongroom.kms.errors import AlreadyExists, InvalidAliasName, NotFound, Validation
from strongroom.kms.model import ALIASES, Alias, Conflict, delete, put
from strongroom.kms.ops.common import (
    KEY_ID_MAX,
    page,
    parse_marker,
    read_limit,
    read_marker,
    require_not_pending_deletion,
    resolve_key,
)

ALIAS_MAX = 256
PREFIX = "alias/"
RESERVED = "alias/aws/"
PREFIX_MESSAGE = ('Alias must start with the prefix "alias/". '
                  "Please see https://docs.aws.amazon.com/kms/latest/developerguide/kms-alias.html")


def _alias_name(ctx: Context) -> str:
    return ctx.params.string("AliasName", required=True, max_len=ALIAS_MAX, pattern=ALIAS_PATTERN) or ""


def _check_new_name(name: str) -> None:
    if not name.startswith(PREFIX):
        raise Validation(PREFIX_MESSAGE)
    if name.startswith(RESERVED):
        raise InvalidAliasName(f"Alias {name} cannot begin with the reserved prefix {RESERVED} "
                               "(it is reserved for AWS managed keys).")
    if name == PREFIX:
        raise InvalidAliasName(f"Alias {name} has no name after the prefix {PREFIX}.")
    if ":" in name:
        raise Validation(f"{name} contains invalid characters for an alias")


def _target(ctx: Context) -> str:
    return ctx.params.string("TargetKeyId", required=True, max_len=KEY_ID_MAX) or ""


def _refuse_alias_target(target: str) -> None:
    if target.startswith(PREFIX) or (target.startswith("arn:") and ":alias/" in target):
        raise Validation("Aliases must refer to keys. Not aliases")


@kms_operation("CreateAlias")
async def create_alias(ctx: Context) -> dict[str, Any]:
    name = _alias_name(ctx)
    target = _target(ctx)
    ctx.params.check()
    _check_new_name(name)
    _refuse_alias_target(target)
    where = ctx.where
    ctx.authorize(where.alias_arn(name))
    key = await resolve_key(ctx, target, allow_alias=False)
    require_not_pending_deletion(ctx, key)
    now = time.time()
    alias = Alias(name, key.key_id, now, now)
    try:
        await ctx.metadata.commit([put(ALIASES + name, alias.to_record(), 0)])
    except Conflict:
        raise AlreadyExists(f"An alias with the name {where.alias_arn(name)} already exists") from None
    return {}


@kms_operation("UpdateAlias")
async def update_alias(ctx: Context) -> dict[str, Any]:
    name = _alias_name(ctx)
    target = _target(ctx)
    ctx.params.check()
    where = ctx.where
    if not name.startswith(PREFIX):
        raise Validation(PREFIX_MESSAGE)
    _refuse_alias_target(target)
    ctx.authorize(where.alias_arn(name))
    key = await resolve_key(ctx, target, allow_alias=False)
    require_not_pending_deletion(ctx, key)
    for _ in range(10):
        alias = await ctx.metadata.get_alias(name)
        if alias is None:
            raise NotFound(f"Alias {where.alias_arn(name)} is not found.")
        current = await ctx.metadata.get_key(alias.target)
        if current is not None and (current.key_spec, current.key_usage) != (key.key_spec, key.key_usage):
            raise Validation(f"{where.key_arn(key.key_id)} is not the same type of key as the alias's current "
                             "key (key spec and key usage must match).")
        updated = Alias(name, key.key_id, alias.created, time.time())
        try:
            await ctx.metadata.commit([put(ALIASES + name, updated.to_record(), alias.revision)])
            return {}
        except Conflict:
            continue
    raise Validation("The alias keeps changing; try again.")


@kms_operation("DeleteAlias")
async def delete_alias(ctx: Context) -> dict[str, Any]:
    name = _alias_name(ctx)
    ctx.params.check()
    where = ctx.where
    if not name.startswith(PREFIX):
        raise Validation(PREFIX_MESSAGE)
    ctx.authorize(where.alias_arn(name))
    for _ in range(10):
        alias = await ctx.metadata.get_alias(name)
        if alias is None:
            raise NotFound(f"Alias {where.alias_arn(name)} is not found.")
        await ctx.authorize_key_id(alias.target)
        try:
            await ctx.metadata.commit([delete(ALIASES + name, alias.revision)])
            return {}
        except Conflict:
            continue
    raise Validation("The alias keeps changing; try again.")


@kms_operation("ListAliases", keyless=True)
async def list_aliases(ctx: Context) -> dict[str, Any]:
    p = ctx.params
    key_filter = p.string("KeyId", max_len=KEY_ID_MAX)
    limit = read_limit(p, 50, 100)
    marker = read_marker(p)
    p.check()
    after = parse_marker(marker, "aliases")
    target = None
    if key_filter is not None:
        if key_filter.startswith(PREFIX) or (key_filter.startswith("arn:") and ":alias/" in key_filter):
            parse_alias_name(key_filter, ctx.where)  # region/account checks
            raise NotFound(f"Invalid keyId '{key_filter}'")
        target = (await resolve_key(ctx, key_filter, allow_alias=False, action="kms:ListAliases")).key_id
    where = ctx.where
    chosen: list[Alias] = []
    cursor, more = after, False
    while True:
        batch, batch_more = await ctx.metadata.list_aliases(cursor, 1000)
        for alias in batch:
            cursor = alias.name
            if target is not None and alias.target != target:
                continue
            if len(chosen) == limit:
                more = True
                break
            chosen.append(alias)
        if more or not batch_more or not batch:
            break
    items = [{"AliasName": a.name, "AliasArn": where.alias_arn(a.name), "TargetKeyId": a.target,
              "CreationDate": a.created, "LastUpdatedDate": a.updated} for a in chosen]
    return page(items, "Aliases", more, "aliases", chosen[-1].name if chosen else after)
