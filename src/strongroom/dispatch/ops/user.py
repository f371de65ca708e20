"""``user.*``: user management (admins), password changes, listing."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from strongroom.auth.users import Role, normalize_username
from strongroom.dispatch import quorum as q
from strongroom.dispatch.auditing import audited, witness
from strongroom.dispatch.call import Call
from strongroom.dispatch.table import operation
from strongroom.errors import ActionProhibited

ADMIN = (Role.ADMIN.value,)
ANY_ROLE = (Role.ADMIN.value, Role.CRYPTO_USER.value)


@dataclass
class CreateArgs:
    username: str
    role: str
    password: str


@operation("user.create", args=CreateArgs, roles=ADMIN, quorum=q.USER_OPS)
async def create(call: Call, args: CreateArgs) -> dict[str, Any]:
    services = call.services
    role = Role.parse(args.role)
    name = normalize_username(args.username)
    users = services.keyring.require_users()
    details = {"username": name, "role": role.value}
    async with audited(call, "user.create", details):
        user = await users.create(name, role, args.password, witness=witness(call, "user.create", details))
    return user.public()


@dataclass
class DeleteArgs:
    username: str


@operation("user.delete", args=DeleteArgs, roles=ADMIN, quorum=q.USER_OPS)
async def delete(call: Call, args: DeleteArgs) -> dict[str, Any]:
    """Delete a user and take it out of every share list (objects/access.py: shares name the account, so
    a new user of the same name never inherits them, even from a list not yet cleaned)."""
    services = call.services
    name = normalize_username(args.username)
    details = {"username": name}
    async with audited(call, "user.delete", details):
        objects = services.keyring.require_objects()
        await objects.sync()
        if objects.owned_count(name):
            raise ActionProhibited(f"user {name!r} owns {objects.owned_count(name)} key(s); delete them first")
        departing = await services.keyring.require_users().get(name)
        if departing is not None:
            await q.check_departure(call, departing)  # never leaves a quorum no one can meet
        user = await services.keyring.require_users().delete(
            name, acting_user=call.actor, witness=witness(call, "user.delete", details), also=objects.unshare_changes
        )
    services.sessions.close_user(name)
    return user.public()


@operation("user.list", roles=ANY_ROLE)
async def list_users(call: Call, _args: None) -> dict[str, Any]:
    users = await call.services.keyring.require_users().list()
    return {"users": [user.public() for user in users]}


@dataclass
class ChangePasswordArgs:
    username: str
    password: str


@operation("user.change_password", args=ChangePasswordArgs, roles=ANY_ROLE, quorum=q.USER_OF_OTHERS)
async def change_password(call: Call, args: ChangePasswordArgs) -> dict[str, Any]:
    """Admins may reset anyone's password (which also unlocks); others only their own."""
    services = call.services
    name = normalize_username(args.username)
    details = {"username": name}
    async with audited(call, "user.change_password", details):
        if call.login.role is not Role.ADMIN and name != call.actor:
            raise ActionProhibited("a crypto user can only change its own password")
        user = await services.keyring.require_users().set_password(
            name, args.password, witness=witness(call, "user.change_password", details)
        )
    return user.public()
