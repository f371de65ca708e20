"""Users, roles, the password and username rules, and the lockout counter.

Users live in the store (through the barrier) under ``users/<name>``, so every
node and every worker process sees the same accounts and the same failed-login
counters, and both survive restarts. Every change is a conditional commit on the
revision that was read: two workers racing on the same counter cannot lose an
increment.

Each account has a random ``uid`` drawn when it is created: a user deleted and
created again under the same name is another account, and whatever named the old
one (a key's owner, a share) does not reach the new one.

What a login tells the caller. CloudHSM publishes usernames and lock state to anyone
(``user list`` needs no login there); Strongroom does not (``user.list`` needs a
login), so a login must not tell them either. Every refused login answers
``CKR_PIN_INCORRECT`` "wrong username or password" after one Argon2id computation
with the same parameters: an unknown user, a wrong password, an unactivated account
and a locked account alike. Only a caller who gives the *right* password of a locked
account learns that it is locked (``CKR_PIN_LOCKED``): that caller knows the password
already. So that this answer is no unlimited guessing oracle, a locked account checks
its real password for :data:`LOCKED_CHECKS` more attempts only; after them every
attempt is answered as a wrong password (and costs the same) until an admin resets it.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import os
import re
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from strongroom.auth.offline import OfflineLockout
from strongroom.auth.passwords import PasswordHash, burn_time, hash_password, verify_password
from strongroom.barrier import Barrier, Change, Entry, Remove, Unchanged, Write
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
from strongroom.metrics import node as node_metrics
from strongroom.store.base import MAX_COMMIT_OPERATIONS, ConflictError, OutcomeUnknownError, Record, UnavailableError

log = logging.getLogger(__name__)

PREFIX = "users/"
USERNAME_RE = re.compile(r"^[A-Za-z0-9_]{1,31}\Z")  # \Z, not $: "$" also matches before a final "\n"
PASSWORD_MIN = 7
PASSWORD_MAX = 32
MAX_FAILED_LOGINS = 5
#: Password checks a locked account still makes, so that its holder can learn it is locked.
LOCKED_CHECKS = 5
MAX_USERS = 1024
#: The one answer of every refused login (see the module docstring).
WRONG_CREDENTIALS = "wrong username or password"
_CONFLICT_RETRIES = 20
#: The store cannot take the attempt's count: no quorum (etcd), or it did not answer (auth/offline.py).
_STORE_DOWN = (UnavailableError, OutcomeUnknownError)
#: How long a login without the store waits for a place while other attempts of its user are checked.
OFFLINE_WAIT_SECONDS = 10.0

#: Called after every check passed and right before the commit: the audit write goes
#: there, so a failed audit write stops the change and a refused change logs no success.
Witness = Callable[[], Awaitable[None]]
#: What else must change when a user goes (``user.delete``): the changes still needed for that name.
Also = Callable[[str], Awaitable[Sequence[Change]]]


async def _no_witness() -> None:
    return None


class Role(enum.StrEnum):
    ADMIN = "admin"
    CRYPTO_USER = "crypto-user"
    #: Not a user's role: an anonymous PKCS#11 session's (``session.open_public``, dispatch/ops/session.py).
    PUBLIC = "public"

    @classmethod
    def parse(cls, text: str) -> Role:
        """A user's role (never PUBLIC: no account has it)."""
        try:
            role = cls(text)
        except ValueError:
            role = cls.PUBLIC
        if role is cls.PUBLIC:
            raise HsmError(f"unknown role {text!r}: use 'admin' or 'crypto-user'", CKR.USER_TYPE_INVALID)
        return role


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


def new_uid() -> str:
    return secrets.token_hex(16)


#: An attempt whose verdict never came (see :class:`Attempt`) stops counting after this long, whichever node made it.
ABANDONED_AFTER_SECONDS = 300.0


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return ""


_BOOT = _boot_id()


def _sibling_alive(pid: int) -> bool:
    """Is ``pid`` a live process with this process's parent (another worker of this node, or this one)?"""
    if pid == os.getpid():
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return False
    return len(fields) > 1 and fields[1] == str(os.getppid())


@dataclass(frozen=True)
class Attempt:
    """A login attempt counted before its password was checked, named in the user's record until its verdict.

    An attempt is counted first so that parallel guesses get no more answers than the limit allows; a worker
    killed between the count and the verdict (kill -9 mid-login, issue 14) left that count behind as if it
    were a failure, and a few such kills locked an account whose every password was right. An attempt whose
    worker is gone (a worker of the same node, whose death the next login there sees) or whose verdict has
    not come for :data:`ABANDONED_AFTER_SECONDS` is taken off the counter at the next attempt: it was no
    failure. A wrong password removes its attempt from the record and leaves the count (a failure)."""

    id: str
    boot: str
    ppid: int
    pid: int
    at: float

    @classmethod
    def new(cls, now: float) -> Attempt:
        return cls(secrets.token_hex(8), _BOOT, os.getppid(), os.getpid(), now)

    def abandoned(self, now: float) -> bool:
        if now - self.at > ABANDONED_AFTER_SECONDS:
            return True
        return self.boot == _BOOT and self.ppid == os.getppid() and not _sibling_alive(self.pid)

    def to_record(self) -> list[Any]:
        return [self.id, self.boot, self.ppid, self.pid, self.at]

    @classmethod
    def from_record(cls, value: Any) -> Attempt:
        return cls(str(value[0]), str(value[1]), int(value[2]), int(value[3]), float(value[4]))


@dataclass(frozen=True)
class User:
    name: str
    role: Role
    password: PasswordHash | None  # None: the unactivated admin of a fresh cluster
    failed_logins: int
    created: float
    entry: Entry | None = None
    #: This account (see the module docstring); records written before it existed get a stable stand-in.
    uid: str = ""
    #: Attempts counted in ``failed_logins`` whose verdict has not come (:class:`Attempt`).
    pending: tuple[Attempt, ...] = ()

    @property
    def failures(self) -> int:
        """Failed logins in a row, without the attempts still being checked."""
        return self.failed_logins - len(self.pending)

    @property
    def locked(self) -> bool:
        return self.failures >= MAX_FAILED_LOGINS

    def still_pending(self, now: float) -> tuple[Attempt, ...]:
        return tuple(a for a in self.pending if not a.abandoned(now))

    def counted(self, now: float) -> int:
        """``failed_logins`` without the attempts abandoned by now."""
        return self.failed_logins - (len(self.pending) - len(self.still_pending(now)))

    @property
    def activated(self) -> bool:
        return self.password is not None

    def with_counter(self, failed_logins: int, password: PasswordHash | None = None,
                     pending: tuple[Attempt, ...] = ()) -> User:
        return User(self.name, self.role, password or self.password, failed_logins, self.created, uid=self.uid,
                    pending=pending)

    def to_record(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "role": self.role.value,
            "password": None if self.password is None else self.password.to_record(),
            "failed_logins": self.failed_logins,
            "created": self.created,
            "uid": self.uid,
            **({"pending": [a.to_record() for a in self.pending]} if self.pending else {}),
        }

    @classmethod
    def from_entry(cls, entry: Entry) -> User:
        value = entry.value
        password = value.get("password")
        created = float(value["created"])
        return cls(
            name=value["name"],
            role=Role(value["role"]),
            password=None if password is None else PasswordHash.from_record(password),
            failed_logins=int(value["failed_logins"]),
            created=created,
            entry=entry,
            uid=str(value.get("uid") or f"legacy-{created!r}"),
            pending=tuple(Attempt.from_record(a) for a in value.get("pending") or ()),
        )

    def public(self) -> dict[str, Any]:
        return {
            "username": self.name,
            "role": self.role.value,
            "locked": self.locked,
            "activated": self.activated,
            "failed_logins": self.failures,
        }


def key_of(name: str) -> str:
    return PREFIX + name


class UserDirectory:
    """User operations over the barrier; all rules about accounts are enforced here."""

    def __init__(self, barrier: Barrier, offline: OfflineLockout | None = None) -> None:
        self._barrier = barrier
        self._offline = offline or OfflineLockout(None)
        #: Every user record as last seen (reads, the users watch): what a login is checked against while
        #: the store cannot count it (auth/offline.py).
        self._seen: dict[str, User] = {}

    def remember(self, user: User) -> None:
        self._seen[user.name] = user

    def observe(self, record: Record, deleted: bool) -> None:
        """A change the users watch saw (services/sessions.py)."""
        name = record.key[len(PREFIX):]
        if deleted:
            self._seen.pop(name, None)
        else:
            self.remember(User.from_entry(self._barrier.decode(record)))

    async def get(self, name: str) -> User | None:
        entry = await self._barrier.get(key_of(name))
        if entry is None:
            self._seen.pop(name, None)
            return None
        user = User.from_entry(entry)
        self.remember(user)
        return user

    async def require(self, name: str) -> User:
        user = await self.get(name)
        if user is None:
            raise UserNotFound(f"no user named {name!r}")
        return user

    async def list(self) -> list[User]:
        entries, _ = await self._barrier.list_prefix(PREFIX)
        users = [User.from_entry(entry) for entry in entries]
        self._seen = {user.name: user for user in users}
        return users

    def new_user_write(self, name: str, role: Role, password_hash: PasswordHash | None) -> Write:
        user = User(name, role, password_hash, 0, time.time(), uid=new_uid())
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
        write = self.new_user_write(name, role, password_hash)
        try:
            await self._barrier.commit([write])
        except ConflictError:
            raise UserExists(f"a user named {name!r} already exists") from None
        return User(name, role, password_hash, 0, write.value["created"], uid=write.value["uid"])

    async def delete(self, name: str, *, acting_user: str | None, witness: Witness = _no_witness,
                     also: Also | None = None) -> User:
        """Delete a user. ``also(name)`` gives the changes that must go with it (its names in share lists):
        as many as the store's commit limit allows go in the same transaction as the removal, the rest
        in bounded batches right after (``also`` is asked again for what remains). A batch that has not
        landed yet is inert: it names the deleted account's uid, which no new account ever has."""
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
            removal: list[Change] = [Remove(target.entry.key, target.entry), *pins]
            if len(removal) > MAX_COMMIT_OPERATIONS:
                raise HsmError("too many admins to pin in one transaction", CKR.FUNCTION_FAILED)
            extra = [] if also is None else await also(name)
            await witness()
            witness = _no_witness
            try:
                await self._barrier.commit([*removal, *extra[:MAX_COMMIT_OPERATIONS - len(removal)]])
            except ConflictError:
                continue
            if also is not None and len(extra) > MAX_COMMIT_OPERATIONS - len(removal):
                await self._in_batches(also, name)
            return target
        raise HsmError("user records keep changing under this operation; try again", CKR.FUNCTION_FAILED)

    async def set_password(self, name: str, password: str, witness: Witness = _no_witness) -> User:
        """Set a password; clears the failed-login counter (this is how an admin unlocks a user)."""
        name = normalize_username(name)
        check_password_rules(password)
        password_hash = await asyncio.to_thread(hash_password, password)
        for _ in range(_CONFLICT_RETRIES):
            user = await self.require(name)
            assert user.entry is not None
            updated = user.with_counter(0, password_hash)
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

        Every refusal is the same ``PinIncorrect`` after the same work, except a right password
        of a locked account (see the module docstring).
        """
        if not isinstance(password, str) or not isinstance(name, str) or not USERNAME_RE.match(name):
            raise PinIncorrect(WRONG_CREDENTIALS)
        name = name.lower()
        try:
            user = await self.get(name)
        except _STORE_DOWN as down:
            return await self._authenticate_offline(name, password, down)
        if user is None or user.password is None or user.counted(time.time()) >= MAX_FAILED_LOGINS + LOCKED_CHECKS:
            # Nothing to check against (or nothing more to tell): the same Argon2id work, the same answer.
            await asyncio.to_thread(burn_time, password)
            raise PinIncorrect(WRONG_CREDENTIALS)
        # The attempt is counted (committed) before its outcome is told, so parallel guesses cannot get
        # more answers than the limits allow. The hash runs meanwhile: a known user then costs what an
        # unknown one does (the Argon2id time), not that plus a store write.
        check = asyncio.ensure_future(asyncio.to_thread(verify_password, password, user.password))
        try:
            attempt = await self._count_attempt(name)
        except _STORE_DOWN as down:
            await check
            return await self._authenticate_offline(name, password, down)
        finally:
            right = await check
        if attempt is None:  # the last check of a locked account went to another attempt meanwhile
            raise PinIncorrect(WRONG_CREDENTIALS)
        counted, mine = attempt
        if counted.password is None:  # the name went to a user not yet given a password in between
            await self._settle(name, mine)
            raise PinIncorrect(WRONG_CREDENTIALS)
        if counted.password != user.password:  # an admin set a new password in between
            right = await asyncio.to_thread(verify_password, password, counted.password)
        if not right:
            await self._settle(name, mine)
            node_metrics.count_lockout(counted.failures + 1 == MAX_FAILED_LOGINS)
            raise PinIncorrect(WRONG_CREDENTIALS)
        # Locked before this attempt: the counts of other attempts in flight (parallel logins with the right
        # password: a restarted agent's) are not failures, and attempts whose worker died were none.
        if counted.failures >= MAX_FAILED_LOGINS:
            await self._settle(name, mine)
            raise PinLocked(
                f"user {name!r} is locked after {MAX_FAILED_LOGINS} failed logins; an admin must reset its password"
            )
        try:
            await self._reset_counter(name)
        except _STORE_DOWN:
            pass  # the count stays one up until the next login: on the side of caution
        return counted

    async def _authenticate_offline(self, name: str, password: str, reason: Exception) -> User:
        """The store cannot count this attempt: check it against the record last seen, counting failures in
        this node's own counter (auth/offline.py)."""
        user = self._seen.get(name)
        if user is None or user.password is None or user.failed_logins >= MAX_FAILED_LOGINS:
            await asyncio.to_thread(burn_time, password)
            raise PinIncorrect(WRONG_CREDENTIALS)
        deadline = time.monotonic() + OFFLINE_WAIT_SECONDS
        while (verdict := await self._offline.reserve(name, user.uid, user.failed_logins, MAX_FAILED_LOGINS)) != "ok":
            if verdict == "locked" or time.monotonic() > deadline:
                # This node's share of the limit is used up: the same answer (and work) as a wrong password.
                await asyncio.to_thread(burn_time, password)
                raise PinIncorrect(WRONG_CREDENTIALS)
            await asyncio.sleep(0.05)  # other attempts of this user are being checked: wait for a place
        right = False
        try:
            right = await asyncio.to_thread(verify_password, password, user.password)
        finally:
            await self._offline.release(name, user.uid, failed=not right)
        if not right:
            raise PinIncorrect(WRONG_CREDENTIALS)
        # The store's own reason (etcd: no leader; SQLite: disk full), not a guess at it (issue 14 item 8).
        log.warning("login of %s while the store cannot count it (%s): checked against its record as last "
                    "seen; failures are counted on this node and added to the record later", name, reason)
        return user

    async def reconcile(self) -> int:
        """Add this node's offline failures to the users' records (the store takes writes again); how many
        users' were written. Raises the store's error while it still cannot."""
        written = 0
        for name, uid, failures in await self._offline.pending():
            for _ in range(_CONFLICT_RETRIES):
                user = await self.get(name)
                if user is None or user.uid != uid or user.entry is None:
                    break  # deleted (or another account of that name) meanwhile: nothing to count against
                counted = user.with_counter(user.failed_logins + failures, pending=user.pending)
                try:
                    await self._barrier.commit([Write(user.entry.key, counted.to_record(), user.entry)])
                except ConflictError:
                    continue
                log.warning("%d failed login(s) of %s made while the store could not count them are now in its record "
                            "(%d in a row)", failures, name, counted.failed_logins)
                written += 1
                break
            await self._offline.settled(name, uid, failures)
        return written

    async def _count_attempt(self, name: str) -> tuple[User, Attempt] | None:
        """Add one to the counter, naming the attempt (and take off attempts abandoned by dead workers); the
        user as counted and the attempt, or None once a locked account has no check left."""
        for _ in range(_CONFLICT_RETRIES):
            user = await self.get(name)
            if user is None or user.password is None:
                return None
            now = time.time()
            live, failed = user.still_pending(now), user.counted(now)
            if failed >= MAX_FAILED_LOGINS + LOCKED_CHECKS:
                return None
            assert user.entry is not None
            mine = Attempt.new(now)
            counted = user.with_counter(failed + 1, pending=(*live, mine))
            try:
                await self._barrier.commit([Write(user.entry.key, counted.to_record(), user.entry)])
                return counted, mine
            except ConflictError:
                continue
        raise HsmError("the user record keeps changing; try again", CKR.FUNCTION_FAILED)

    async def _settle(self, name: str, attempt: Attempt) -> None:
        """A checked attempt that was no success: it stays counted, and no longer pending. If this cannot be
        written, the attempt stops counting after ABANDONED_AFTER_SECONDS (see :class:`Attempt`)."""
        try:
            for _ in range(_CONFLICT_RETRIES):
                user = await self.get(name)
                if user is None or user.entry is None or attempt not in user.pending:
                    return  # reset by a right password meanwhile, or the account is gone
                left = tuple(a for a in user.pending if a != attempt)
                try:
                    await self._barrier.commit(
                        [Write(user.entry.key, user.with_counter(user.failed_logins, pending=left).to_record(),
                               user.entry)])
                    return
                except ConflictError:
                    continue
        except _STORE_DOWN:
            log.warning("a failed login of %s could not be settled in its record (the store is unavailable)", name)

    async def _reset_counter(self, name: str) -> None:
        for _ in range(_CONFLICT_RETRIES):
            user = await self.require(name)
            assert user.entry is not None
            if user.failed_logins == 0:
                return
            try:
                await self._barrier.commit([Write(user.entry.key, user.with_counter(0).to_record(), user.entry)])
                return
            except ConflictError:
                continue
        raise HsmError("the user record keeps changing; try again", CKR.FUNCTION_FAILED)

    async def _in_batches(self, also: Also, name: str) -> None:
        """Commit what ``also(name)`` still asks for, at most the store's limit at a time."""
        for _ in range(1024):  # 16,000 objects 64 at a time, with room for conflicts
            remaining = await also(name)
            if not remaining:
                return
            try:
                await self._barrier.commit(remaining[:MAX_COMMIT_OPERATIONS])
            except ConflictError:
                continue
        raise HsmError(f"user {name!r} is deleted but some share lists still name it; they name its old account "
                       "only, which no new user has", CKR.FUNCTION_FAILED)
