"""``vaultkv.*``: the cluster's side of the Vault KV version 2 front door (:mod:`strongroom.vaultkv`).

Databases that encrypt themselves (MariaDB's ``hashicorp_key_management`` plugin, Percona's pg_tde)
fetch their keys from a Vault KV v2 engine. The front door is a small HTTPS service that logs in as
a crypto user (the *service user*, ``vaultkv`` by default) and asks the node for everything; the
node decides everything:

* **Tokens** (``vaultkv.token.create/list/revoke``, admins). A token names one service user, one
  *mount*, the key names it reaches (patterns: ``*``, ``1``, ``db-?``), a policy (``read``: fetch
  key versions; ``write``: also make new versions) and an expiry. Its text is ``hvs.`` + a public
  accessor (16) + a secret (32); the record ``vaultkv/tokens/<accessor>`` keeps the secret's
  SHA-256 only (it has 190 random bits: no stretching needed), and the text is returned once.
* **Key versions** are generated here, from the node's CSPRNG (``os.urandom``), never received from
  a client: a write that carries key material is refused. Each key name has a head record
  ``vaultkv/keys/<user>/<mount>/<name>`` (current version, size) and one record per version
  ``vaultkv/versions/<user>/<mount>/<name>/<version>``, all encrypted by the barrier and owned by the
  service user: only a session of that crypto user, presenting a token made for it, reaches them.
  Rotation is writing a new version; old versions stay readable (pages encrypted under them must
  still be read) and are never deleted through this door.
* **Release** (``vaultkv.key.read``): every key version handed out is audited first — the token's
  accessor and name, the service user, the mount, the key name, the version and the requester's
  address as the service saw it — and a failed audit write refuses the release. Refusals (unknown,
  revoked or expired token, a name or mount outside its scope, a read token that tries to write) are
  audited too; the front door rate-limits failures per source and token before they reach the node.

The honest limit: the database receives the key and does the encryption itself. What the cluster
adds is custody (keys at rest only inside the barrier), scoping per database, versioned rotation
and an audit record of every release.
"""

from __future__ import annotations

import fnmatch
import hashlib
import hmac
import os
import re
import secrets
import string
import time
from dataclasses import dataclass, field
from typing import Any

from strongroom.auth.users import Role, normalize_username
from strongroom.barrier import Barrier, Change, Entry, Remove, Write
from strongroom.dispatch.auditing import audited, witness
from strongroom.dispatch.call import Call
from strongroom.dispatch.table import operation
from strongroom.errors import CKR, ArgumentsBad, HsmError, KeyHandleInvalid
from strongroom.store.base import ConflictError

ADMIN = (Role.ADMIN.value,)
CRYPTO_USER = (Role.CRYPTO_USER.value,)

TOKEN_PREFIX = "vaultkv/tokens/"
HEAD_PREFIX = "vaultkv/keys/"
VERSION_PREFIX = "vaultkv/versions/"

#: A mount and a key name: one path segment each (MariaDB's key ids are numbers; pg_tde's names are text).
MOUNT_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}\Z")
NAME_RE = re.compile(r"^[A-Za-z0-9_.@=+,-]{1,128}\Z")
PATTERN_RE = re.compile(r"^[A-Za-z0-9_.@=+,*?-]{1,128}\Z")
DISPLAY_NAME_RE = re.compile(r"^[A-Za-z0-9_.@=+, -]{0,64}\Z")
_ALPHABET = string.ascii_letters + string.digits
ACCESSOR_LENGTH = 16
SECRET_LENGTH = 32
TOKEN_PREFIX_TEXT = "hvs."
TOKEN_RE = re.compile(rf"^hvs\.([A-Za-z0-9]{{{ACCESSOR_LENGTH}}})([A-Za-z0-9]{{{SECRET_LENGTH}}})\Z")
ACCESSOR_RE = re.compile(rf"^[A-Za-z0-9]{{{ACCESSOR_LENGTH}}}\Z")

POLICIES = ("read", "write")
KEY_BITS = (128, 192, 256)
DEFAULT_BITS = 256
MAX_TOKENS = 1000
MAX_PATTERNS = 32
#: Ten years: a token that must outlive that is a token without expiry (ttl 0), said so explicitly.
MAX_TTL_SECONDS = 10 * 366 * 86400
MAX_KEYS = 10_000
MAX_VERSIONS = 1000
MAX_LIST = 1000
SOURCE_MAX = 64
WRITE_ATTEMPTS = 5


class TokenRefused(HsmError):
    """The token is unknown, revoked, expired, or does not reach this mount, name or action.

    The front door answers every kind with Vault's "permission denied"; the reason is in the message
    (its log) and in the audit record."""

    code = CKR.ACTION_PROHIBITED


class KeyLimit(HsmError):
    code = CKR.DEVICE_MEMORY


# --- names and records ---------------------------------------------------------------------------------


def _mount(mount: str) -> str:
    if not MOUNT_RE.match(mount):
        raise ArgumentsBad("a mount is 1 to 64 letters, digits, '_' and '-'")
    return mount


def _name(name: str) -> str:
    if not NAME_RE.match(name) or name in (".", ".."):
        raise ArgumentsBad("a key name is 1 to 128 of letters, digits and _.@=+,- (one path segment)")
    return name


def _accessor_of(token: str) -> str:
    """The public part of a token-shaped text (for the audit record of a refusal); never the secret."""
    found = TOKEN_RE.match(token)
    return found.group(1) if found is not None else "malformed"


def _source(source: str) -> str:
    return source[:SOURCE_MAX] if source and source.isprintable() else "unknown"


def head_key(user: str, mount: str, name: str) -> str:
    return f"{HEAD_PREFIX}{user}/{mount}/{name}"


def version_key(user: str, mount: str, name: str, version: int) -> str:
    # Zero-padded: the store lists keys in text order.
    return f"{VERSION_PREFIX}{user}/{mount}/{name}/{version:010d}"


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _public(record: dict[str, Any]) -> dict[str, Any]:
    return {k: record.get(k) for k in ("accessor", "display_name", "service_user", "mount", "policy", "names",
                                       "created", "expires", "created_by")}


# --- tokens (admins) ------------------------------------------------------------------------------------


@dataclass
class TokenCreateArgs:
    mount: str
    policy: str
    #: Key-name patterns the token reaches (fnmatch: ``*`` any, ``?`` one character).
    names: list[str] = field(default_factory=lambda: ["*"])
    #: Seconds until it expires; 0: never (said explicitly, never a default of the CLI).
    ttl_seconds: int = 0
    service_user: str = "vaultkv"
    display_name: str = ""


@operation("vaultkv.token.create", args=TokenCreateArgs, roles=ADMIN)
async def token_create(call: Call, args: TokenCreateArgs) -> dict[str, Any]:
    """A new token; the reply is the only place its text ever appears."""
    barrier = call.services.keyring.require_barrier()
    details: dict[str, Any] = {"mount": args.mount[:64], "policy": args.policy[:16],
                               "names": [name[:128] for name in args.names[:MAX_PATTERNS]],
                               "service_user": args.service_user[:64], "ttl_seconds": args.ttl_seconds}
    async with audited(call, "vaultkv.token.create", details):
        mount = _mount(args.mount)
        if args.policy not in POLICIES:
            raise ArgumentsBad("a token's policy is read or write")
        if not 1 <= len(args.names) <= MAX_PATTERNS or not all(isinstance(p, str) and PATTERN_RE.match(p)
                                                                for p in args.names):
            raise ArgumentsBad(f"give 1 to {MAX_PATTERNS} key-name patterns of letters, digits, _.@=+,- and * ?")
        if not 0 <= args.ttl_seconds <= MAX_TTL_SECONDS:
            raise ArgumentsBad(f"ttl_seconds is 0 (no expiry) to {MAX_TTL_SECONDS}")
        if not DISPLAY_NAME_RE.match(args.display_name):
            raise ArgumentsBad("a display name is at most 64 of letters, digits, spaces and _.@=+,-")
        service_user = normalize_username(args.service_user)
        user = await call.services.keyring.require_users().get(service_user)
        if user is None or user.role is not Role.CRYPTO_USER:
            raise ArgumentsBad(f"the service user {service_user!r} must be an existing crypto user")
        if await barrier.count_prefix(TOKEN_PREFIX) >= MAX_TOKENS:
            raise KeyLimit(f"the cluster already has the maximum of {MAX_TOKENS} Vault KV tokens; revoke some")
        accessor = "".join(secrets.choice(_ALPHABET) for _ in range(ACCESSOR_LENGTH))
        secret = "".join(secrets.choice(_ALPHABET) for _ in range(SECRET_LENGTH))
        now = time.time()
        record = {
            "accessor": accessor, "digest": _digest(secret), "display_name": args.display_name,
            "service_user": service_user, "mount": mount, "policy": args.policy, "names": list(args.names),
            "created": now, "expires": now + args.ttl_seconds if args.ttl_seconds else 0,
            "created_by": call.actor,
        }
        details["accessor"] = accessor
        await witness(call, "vaultkv.token.create", details)()
        try:
            await barrier.commit([Write(TOKEN_PREFIX + accessor, record)])
        except ConflictError:
            raise HsmError("token accessor collision; try again", CKR.FUNCTION_FAILED) from None
    return dict(_public(record), token=TOKEN_PREFIX_TEXT + accessor + secret)


@operation("vaultkv.token.list", roles=ADMIN)
async def token_list(call: Call, _args: None) -> dict[str, Any]:
    entries, _ = await call.services.keyring.require_barrier().list_prefix(TOKEN_PREFIX)
    return {"tokens": [_public(entry.value) for entry in entries]}


@dataclass
class TokenRevokeArgs:
    accessor: str


@operation("vaultkv.token.revoke", args=TokenRevokeArgs, roles=ADMIN)
async def token_revoke(call: Call, args: TokenRevokeArgs) -> dict[str, Any]:
    barrier = call.services.keyring.require_barrier()
    details = {"accessor": args.accessor[:64]}
    async with audited(call, "vaultkv.token.revoke", details):
        if not ACCESSOR_RE.match(args.accessor):
            raise ArgumentsBad(f"an accessor is {ACCESSOR_LENGTH} letters and digits")
        entry = await barrier.get(TOKEN_PREFIX + args.accessor)
        if entry is None:
            raise KeyHandleInvalid(f"no token with accessor {args.accessor}")
        await witness(call, "vaultkv.token.revoke", details)()
        try:
            await barrier.commit([Remove(entry.key, entry)])
        except ConflictError:
            raise HsmError("the token changed meanwhile; try again", CKR.FUNCTION_FAILED) from None
    return _public(entry.value)


# --- the service user's requests ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Grant:
    """What a checked token allows."""

    accessor: str
    display_name: str
    policy: str
    names: tuple[str, ...]

    def reaches(self, name: str) -> bool:
        return any(fnmatch.fnmatchcase(name, pattern) for pattern in self.names)


async def _authorize(call: Call, barrier: Barrier, token: str, mount: str, *, write: bool = False) -> Grant:
    """The token's grant for ``mount``, or TokenRefused saying why (never which part of the text was wrong)."""
    found = TOKEN_RE.match(token) if isinstance(token, str) else None
    if found is None:
        raise TokenRefused("not a token of this cluster")
    accessor, secret = found.group(1), found.group(2)
    entry = await barrier.get(TOKEN_PREFIX + accessor)
    # The digest is compared even for a token made for another service user: the same work either way.
    digest = entry.value.get("digest", "") if entry is not None else _digest("")
    if entry is None or not hmac.compare_digest(_digest(secret).encode(), str(digest).encode()):
        raise TokenRefused("unknown or revoked token")
    record = entry.value
    if record.get("service_user") != call.actor:
        raise TokenRefused(f"the token was made for another service user ({record.get('service_user')})")
    expires = float(record.get("expires") or 0)
    if expires and expires <= time.time():
        raise TokenRefused("the token expired")
    if record.get("mount") != mount:
        raise TokenRefused(f"the token is for the mount {record.get('mount')!r}, not {mount!r}")
    if write and record.get("policy") != "write":
        raise TokenRefused("the token's policy is read: it cannot write new key versions")
    return Grant(accessor, str(record.get("display_name", "")), str(record.get("policy")),
                 tuple(str(p) for p in record.get("names", ())))


def _reach(grant: Grant, name: str) -> None:
    if not grant.reaches(name):
        raise TokenRefused(f"the token does not reach the key name {name!r}")


@dataclass
class MountArgs:
    token: str
    mount: str
    source: str = ""


@operation("vaultkv.mount.read", args=MountArgs, roles=CRYPTO_USER)
async def mount_read(call: Call, args: MountArgs) -> dict[str, Any]:
    """Check a token against a mount (Vault's ``sys/mounts/<mount>``): releases nothing."""
    barrier = call.services.keyring.require_barrier()
    details: dict[str, Any] = {"mount": args.mount[:64], "source": _source(args.source),
                               "accessor": _accessor_of(args.token)}
    async with audited(call, "vaultkv.mount.read", details):
        mount = _mount(args.mount)
        grant = await _authorize(call, barrier, args.token, mount)
    return {"mount": mount, "accessor": grant.accessor, "policy": grant.policy}


@operation("vaultkv.key.list", args=MountArgs, roles=CRYPTO_USER)
async def key_list(call: Call, args: MountArgs) -> dict[str, Any]:
    """The key names of a mount the token reaches (at most MAX_LIST): names only, no key material."""
    barrier = call.services.keyring.require_barrier()
    details: dict[str, Any] = {"mount": args.mount[:64], "source": _source(args.source),
                               "accessor": _accessor_of(args.token)}
    async with audited(call, "vaultkv.key.list", details):
        mount = _mount(args.mount)
        grant = await _authorize(call, barrier, args.token, mount)
    prefix = head_key(call.login.username, mount, "")
    page, more = await barrier.list_page(prefix, limit=MAX_KEYS)
    names = [entry.key[len(prefix):] for entry in page if grant.reaches(entry.key[len(prefix):])]
    return {"names": names[:MAX_LIST], "more": more or len(names) > MAX_LIST}


@dataclass
class KeyReadArgs:
    token: str
    mount: str
    name: str
    #: 0: the current version.
    version: int = 0
    source: str = ""


@operation("vaultkv.key.read", args=KeyReadArgs, roles=CRYPTO_USER)
async def key_read(call: Call, args: KeyReadArgs) -> dict[str, Any]:
    """Release one key version to a token that reaches it; audited before the reply."""
    barrier = call.services.keyring.require_barrier()
    user = call.login.username
    details: dict[str, Any] = {"mount": args.mount[:64], "name": args.name[:128], "version": args.version,
                               "source": _source(args.source), "accessor": _accessor_of(args.token)}
    async with audited(call, "vaultkv.key.release", details):
        mount, name = _mount(args.mount), _name(args.name)
        grant = await _authorize(call, barrier, args.token, mount)
        details["token_name"] = grant.display_name
        _reach(grant, name)
        if args.version < 0:
            raise ArgumentsBad("a version is 1 or more (0: the current one)")
        head = await barrier.get(head_key(user, mount, name))
        if head is None:
            raise KeyHandleInvalid(f"no key {name!r} in the mount {mount!r}")
        current = int(head.value["current"])
        version = args.version or current
        entry = await barrier.get(version_key(user, mount, name, version)) if version <= current else None
        if entry is None:
            raise KeyHandleInvalid(f"the key {name!r} has no version {version} (current: {current})")
        details["version"] = version
        # A release is an event, not a change: one record, written before the key leaves (a failed write
        # refuses the release).
        await call.services.audit.record("vaultkv.key.release", actor=call.actor, details=details)
    value = entry.value
    return {"key": bytes(value["key"]), "version": version, "current": current, "created": float(value["created"]),
            "head_created": float(head.value.get("created", value["created"]))}


@dataclass
class KeyWriteArgs:
    token: str
    mount: str
    name: str
    #: Key size for the first version (128, 192 or 256; 0: 256, or the size of the versions before).
    bits: int = 0
    #: Vault's check-and-set: -1 none; 0 only if the key does not exist; N only if N is the current version.
    cas: int = -1
    source: str = ""


@operation("vaultkv.key.write", args=KeyWriteArgs, roles=CRYPTO_USER)
async def key_write(call: Call, args: KeyWriteArgs) -> dict[str, Any]:
    """A new version of a key, generated here from the node's CSPRNG (rotation is exactly this)."""
    barrier = call.services.keyring.require_barrier()
    user = call.login.username
    details: dict[str, Any] = {"mount": args.mount[:64], "name": args.name[:128], "source": _source(args.source),
                               "accessor": _accessor_of(args.token)}
    async with audited(call, "vaultkv.key.write", details):
        mount, name = _mount(args.mount), _name(args.name)
        grant = await _authorize(call, barrier, args.token, mount, write=True)
        details["token_name"] = grant.display_name
        _reach(grant, name)
        if args.bits not in (0, *KEY_BITS):
            raise ArgumentsBad("a key is 128, 192 or 256 bits")
        if args.cas < -1:
            raise ArgumentsBad("cas is a version number (0: the key must not exist yet)")
        for _attempt in range(WRITE_ATTEMPTS):
            head = await barrier.get(head_key(user, mount, name))
            written = await _write_version(call, barrier, user, mount, name, head, args, details)
            if written is not None:
                return written
    raise HsmError("the key changed under every attempt; try again", CKR.FUNCTION_FAILED)


async def _write_version(call: Call, barrier: Barrier, user: str, mount: str, name: str, head: Entry | None,
                         args: KeyWriteArgs, details: dict[str, Any]) -> dict[str, Any] | None:
    """One attempt; None when another writer moved the head meanwhile."""
    current = 0 if head is None else int(head.value["current"])
    if args.cas >= 0 and args.cas != current:
        raise ArgumentsBad(f"check-and-set parameter did not match the current version ({current})")
    if head is None and await barrier.count_prefix(f"{HEAD_PREFIX}{user}/") >= MAX_KEYS:
        raise KeyLimit(f"a service user holds at most {MAX_KEYS} keys")
    if current >= MAX_VERSIONS:
        raise KeyLimit(f"a key has at most {MAX_VERSIONS} versions; use a new key name")
    bits = args.bits or (DEFAULT_BITS if head is None else int(head.value.get("bits", DEFAULT_BITS)))
    version = current + 1
    now = time.time()
    material = os.urandom(bits // 8)  # the node's CSPRNG, as random.generate and key.generate use
    new_head = {"current": version, "bits": bits, "created": now if head is None else head.value.get("created", now),
                "updated": now}
    details.update(version=version, bits=bits)
    await witness(call, "vaultkv.key.write", details)()
    changes: list[Change] = [Write(head_key(user, mount, name), new_head, head),
                             Write(version_key(user, mount, name, version),
                                   {"key": material, "created": now, "version": version, "bits": bits})]
    try:
        await barrier.commit(changes)
    except ConflictError:
        return None
    return {"version": version, "created": now, "bits": bits}
