"""Tags: TagResource, UntagResource, ListResourceTags (and the rules CreateKey shares)."""

from __future__ import annotations

from typing import Any

from strongroom.kms.context import Context, kms_operation
from strongroom.kms.errors import InvalidMarker, TagError
from strongroom.kms.model import KmsKey
from strongroom.kms.ops.common import (
    KEY_ID_MAX,
    page,
    parse_marker,
    read_limit,
    read_marker,
    require_not_pending_deletion,
    resolve_key,
)

MAX_TAGS = 50
RESERVED_PREFIX = "aws:"


def check_new_tags(existing: list[tuple[str, str]], new: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Upsert ``new`` into ``existing`` (order kept) with AWS's TagException rules."""
    keys = [k for k, _ in new]
    if len(set(keys)) != len(keys):
        raise TagError("Duplicate tag keys")
    if any(k.lower().startswith(RESERVED_PREFIX) for k in keys):
        raise TagError("Tags beginning with aws: are reserved")
    merged = dict(existing)
    merged.update(new)
    if len(merged) > MAX_TAGS:
        raise TagError("Too many tags")
    return list(merged.items())


@kms_operation("TagResource")
async def tag_resource(ctx: Context) -> dict[str, Any]:
    p = ctx.params
    key_id = p.string("KeyId", required=True, max_len=KEY_ID_MAX) or ""
    tags = p.tags("Tags", required=True)
    p.check()
    key = await resolve_key(ctx, key_id, allow_alias=False)
    check_new_tags(key.tags, tags or [])

    def change(current: KmsKey) -> None:
        require_not_pending_deletion(ctx, current)
        current.tags = check_new_tags(current.tags, tags or [])

    await ctx.metadata.update_key(key.key_id, change)
    return {}


@kms_operation("UntagResource")
async def untag_resource(ctx: Context) -> dict[str, Any]:
    p = ctx.params
    key_id = p.string("KeyId", required=True, max_len=KEY_ID_MAX) or ""
    tag_keys = p.string_list("TagKeys", required=True, item_min=1, item_max=128) or []
    p.check()
    key = await resolve_key(ctx, key_id, allow_alias=False)
    doomed = set(tag_keys)

    def change(current: KmsKey) -> None:
        require_not_pending_deletion(ctx, current)
        current.tags = [(k, v) for k, v in current.tags if k not in doomed]

    await ctx.metadata.update_key(key.key_id, change)
    return {}


@kms_operation("ListResourceTags")
async def list_resource_tags(ctx: Context) -> dict[str, Any]:
    p = ctx.params
    key_id = p.string("KeyId", required=True, max_len=KEY_ID_MAX) or ""
    limit = read_limit(p, MAX_TAGS, MAX_TAGS)
    marker = read_marker(p)
    p.check()
    start = parse_marker(marker, "tags")
    if start and not start.isdigit():
        raise InvalidMarker("Invalid marker")
    key = await resolve_key(ctx, key_id, allow_alias=False)
    offset = int(start or 0)
    chosen = key.tags[offset: offset + limit]
    more = offset + limit < len(key.tags)
    items = [{"TagKey": k, "TagValue": v} for k, v in chosen]
    return page(items, "Tags", more, "tags", str(offset + len(chosen)))
