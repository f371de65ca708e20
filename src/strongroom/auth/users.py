"""Users, roles, the password and username rules, and the lockout counter.

Users live in the store (through the barrier) under ``users/<name>``, so every
node and every worker process sees the same accounts and the same failed-login
counters, and both survive restarts. Every change is a conditional commit on the
revision that was read: two workers racing on the same counter cannot lose an
increment.
"""

from __future__ import annotations

import asyncio
import enum
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from strongroom.auth.passwords import PasswordHash, burn_time, hash_password, verify_password
from strongroom.barrier import Barrier, Entry, Remove, Unchanged, Write
from strongroom.errors import (
    CKR,
    ActionProhibited,
    ArgumentsBad,
    HsmError,
    PinIncorrect,
    PinInvalid,
    PinLenRange,
    PinLocked,
)
from strongroom.store.base import ConflictError

PREFIX = "users/"
USERNAME_RE = re.compile(r"^[A-Za-z0-9_]{1,31}\Z")  # \Z, not $: "$" also matches before a final "\n"
PASSWORD_MIN = 7
PASSWORD_MAX = 32
MAX_FAILED_LOGINS = 5
MAX_USERS = 1024
_CONFLICT_RETRIES = 20

#: Called after every check passed and right before the commit: the audit write goes
#: there, so a failed audit write stops the change and a refused change logs no success.
Witness = Callable[[], Awaitable[None]]


async def _no_witness() -> None:
    return None


class Role(str, enum.Enum):
    ADMIN = "admin"
    CRYPTO_USER = "crypto-user"

    @classmethod
    def parse(cls, text: str) -> Role:
        try:
            return cls(text)
        except ValueError:
            raise HsmError(
                f"unknown role {text!r}: use 'admin' or 'crypto-user'", CKR.USER_TYPE_INVALID
            ) from None


class UserExists(HsmError):
    code = CKR.ACTION_PROHIBITED


class UserNotFound(HsmError):
    code = CKR.ARGUMENTS_BAD


def normalize_username(name: object) -> str:
    """Usernames are case-insensitive (as in CloudHSM) and stored in lower case."""
    if not isinstance(name, str) or not USERNAME_RE.match(name):
        raise ArgumentsBad(
            "a username is 1 to 31 characters of letters, digits and '_'"
        )
    return name.lower()


def check_password_rules(password: object) -> str:
    if not isinstance(password, str):
        raise ArgumentsBad("a password is a string")
    if not PASSWORD_MIN <= len(password) <= PASSWORD_MAX:
        raise PinLenRange(f"a password is {PASSWORD_MIN} to {PASSWORD_MAX} characters long")
    if any(not ch.isprintable() for ch in password):
        raise PinInvalid("a password may not contain control characters")
    return password


@dataclass(frozen=True)
class User:
    name: str
    role: Role
    password: PasswordHash | None  # None: the unactivated admin of a fresh cluster
    failed_logins: int
    created: float
    entry: Entry | None = None

    @property
    def locked(self) -> bool:
        return self.failed_logins >= MAX_FAILED_LOGINS

    @property
    def activated(self) -> bool:
        return self.password is not None

    def to_record(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "role": self.role.value,
            "password": None if self.password is None else self.password.to_record(),
            "failed_logins": self.failed_logins,
            "created": self.created,
        }

    @classmethod
    def from_entry(cls, entry: Entry) -> User:
        value = entry.value
        password = value.get("password")
        return cls(
            name=value["name"],
            role=Role(value["role"]),
            password=None if password is None else PasswordHash.from_record(password),
            failed_logins=int(value["failed_logins"]),
            created=float(value["created"]),
            entry=entry,
        )

    def public(self) -> dict[str, Any]:
        return {
            "username": self.name,
            "role": self.role.value,
            "locked": self.locked,
            "activated": self.activated,
            "failed_logins": self.failed_logins,
        }


def key_of(name: str) -> str:
    return PREFIX + name


class UserDirectory:
    """User operations over the barrier; all rules about accounts are enforced here."""

    def __init__(self, barrier: Barrier) -> None:
        self._barrier = barrier

    async def get(self, name: str) -> User | None:
        entry = await self._barrier.get(key_of(name))
        return None if entry is None else User.from_entry(entry)

    async def require(self, name: str) -> User:
        user = await self.get(name)
        if user is None:
            raise UserNotFound(f"no user named {name!r}")
        return user

    async def list(self) -> list[User]:
        entries, _ = await self._barrier.list_prefix(PREFIX)
        return [User.from_entry(entry) for entry in entries]

    def new_user_write(self, name: str, role: Role, password_hash: PasswordHash | None) -> Write:
        user = User(name, role, password_hash, 0, time.time())
        return Write(key_of(name), user.to_record(), None)

    async def create(self, name: str, role: Role, password: str, witness: Witness = _no_witness) -> User:
        name = normalize_username(name)
        check_password_rules(password)
        entries, _ = await self._barrier.list_prefix(PREFIX)
        if any(entry.key == key_of(name) for entry in entries):
            raise UserExists(f"a user named {name!r} already exists")
        if len(entries) >= MAX_USERS:
            raise HsmError(f"the cluster already has the maximum of {MAX_USERS} users", CKR.DEVICE_MEMORY)
        password_hash = await asyncio.to_thread(hash_password, password)
        await witness()
        try:
            await self._barrier.commit([self.new_user_write(name, role, password_hash)])
        except ConflictError:
            raise UserExists(f"a user named {name!r} already exists") from None
        return User(name, role, password_hash, 0, time.time())

    async def delete(self, name: str, *, acting_user: str, witness: Witness = _no_witness) -> User:
        name = normalize_username(name)
        if name == acting_user:
            raise ActionProhibited("you cannot delete the user you are logged in as")
        for _ in range(_CONFLICT_RETRIES):
            users = await self.list()
            target = next((user for user in users if user.name == name), None)
            if target is None:
                raise UserNotFound(f"no user named {name!r}")
            other_admins = [u for u in users if u.role is Role.ADMIN and u.name != name]
            if target.role is Role.ADMIN and not other_admins:
                raise ActionProhibited("the last admin of the cluster cannot be deleted")
            assert target.entry is not None
            # Pin the other admins: a concurrent delete of the last one of them must conflict.
            pins = [Unchanged(u.entry.key, u.entry) for u in other_admins if u.entry is not None]
            await witness()
            witness = _no_witness
            try:
                await self._barrier.commit([Remove(target.entry.key, target.entry), *pins][:64])
                return target
            except ConflictError:
                continue
        raise HsmError("user records keep changing under this operation; try again", CKR.FUNCTION_FAILED)

    async def set_password(self, name: str, password: str, witness: Witness = _no_witness) -> User:
        """Set a password; clears the failed-login counter (this is how an admin unlocks a user)."""
        name = normalize_username(name)
        check_password_rules(password)
        password_hash = await asyncio.to_thread(hash_password, password)
        for _ in range(_CONFLICT_RETRIES):
            user = await self.require(name)
            assert user.entry is not None
            updated = User(user.name, user.role, password_hash, 0, user.created)
            await witness()
            witness = _no_witness
            try:
                await self._barrier.commit([Write(user.entry.key, updated.to_record(), user.entry)])
                return updated
            except ConflictError:
                continue
        raise HsmError("the user record keeps changing; try again", CKR.FUNCTION_FAILED)

    async def authenticate(self, name: object, password: object) -> User:
        """Check a login; counts failures and locks after :data:`MAX_FAILED_LOGINS` in a row.

        Unknown users and wrong passwords give the same error after the same work.
        """
        if not isinstance(password, str) or not isinstance(name, str) or not USERNAME_RE.match(name):
            raise PinIncorrect("wrong username or password")
        name = name.lower()
        user = await self.get(name)
        if user is None or user.password is None:
            await asyncio.to_thread(burn_time, password)
            raise PinIncorrect("wrong username or password")
        # Count the attempt *before* checking the password, so parallel guesses cannot
        # get more than MAX_FAILED_LOGINS tries in before the lock takes effect.
        failures = await self._update_counter(name, reset=False)
        if await asyncio.to_thread(verify_password, password, user.password):
            await self._update_counter(name, reset=True)
            return user
        if failures >= MAX_FAILED_LOGINS:
            raise PinIncorrect(f"wrong username or password; user {name!r} is now locked")
        raise PinIncorrect("wrong username or password")

    async def _update_counter(self, name: str, *, reset: bool) -> int:
        for _ in range(_CONFLICT_RETRIES):
            user = await self.require(name)
            assert user.entry is not None
            if not reset and user.locked:
                raise PinLocked(
                    f"user {name!r} is locked after {MAX_FAILED_LOGINS} failed logins; "
                    "an admin must reset its password"
                )
            if reset and user.failed_logins == 0:
                return 0
            failures = 0 if reset else user.failed_logins + 1
            updated = User(user.name, user.role, user.password, failures, user.created)
            try:
                await self._barrier.commit([Write(user.entry.key, updated.to_record(), user.entry)])
                return failures
            except ConflictError:
                continue
        raise HsmError("the user record keeps changing; try again", CKR.FUNCTION_FAILED)
