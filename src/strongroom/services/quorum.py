"""Quorum approvals (M of N) and the second login factor, kept in the cluster through the barrier.

CloudHSM keeps quorum tokens in each HSM's memory, tied to the CLI login that asked for them. Here a
token is a record of the cluster: any approver signs it from any host, any node checks it, and the
requester uses it from the CLI, the SDK or (key usage) a PKCS#11 application. Records:

==============================  =====================================================================
``quorum/settings``             the quorum value of each admin service and the token timeouts
``quorum/keys/<username>``      a user's registered approval key (quorum approvals and MFA share it,
                                as in CloudHSM), bound to the account (``uid``)
``quorum/tokens/<subject>/<t>`` a token: ``t`` is its SHA-256 hex; ``subject`` is the service, or
                                ``k<handle>`` for the key services (a key's lookups read its own only)
``quorum/mfa/<t>``              one node's MFA login challenge
==============================  =====================================================================

A token's ``approval_data`` is canonical JSON naming the cluster, the service, the operation, the bound
arguments (and their SHA-256 ``binding``), the requester and the expiry: an approver signs what they can
read, a signature made for one cluster or one request fits no other, and a token presented to another
cluster is recognized as such. The rules (who may ask, who may approve, how many) are applied by
:mod:`strongroom.dispatch.quorum`; this module keeps the records and checks signatures.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import msgpack
from cryptography.exceptions import InvalidSignature

from strongroom.barrier import Barrier, Change, Entry, Remove, Write
from strongroom.errors import CKR, ArgumentsBad, HsmError
from strongroom.pki import approvals as pki
from strongroom.pki.approvals import ApprovalKeyError, PublicKey
from strongroom.services.auditor import Auditor
from strongroom.store.base import MAX_COMMIT_OPERATIONS, ConflictError, StoreError

log = logging.getLogger(__name__)

PREFIX = "quorum/"
SETTINGS_KEY = "quorum/settings"
KEYS_PREFIX = "quorum/keys/"
TOKENS_PREFIX = "quorum/tokens/"
MFA_PREFIX = "quorum/mfa/"

USER = "user"
QUORUM = "quorum"
CLUSTER = "cluster"
KEY_MANAGEMENT = "key-management"
KEY_USAGE = "key-usage"
REGISTRATION = "registration"
ADMIN_SERVICES = (USER, QUORUM, CLUSTER)
KEY_SERVICES = (KEY_MANAGEMENT, KEY_USAGE)
SERVICES = (*ADMIN_SERVICES, *KEY_SERVICES)
#: What a token may be generated for.
TOKEN_SERVICES = (*SERVICES, REGISTRATION)

#: A quorum value: 1 (or 0 for a key) means no quorum; CloudHSM's range is 2 to 8.
MAX_VALUE = 8
#: Tokens the cluster keeps at most (CloudHSM: per HSM); when full, expired ones are purged.
MAX_TOKENS = 1024
MAX_MFA_CHALLENGES = 1024
#: Distinct approvals one token collects at most (more than any quorum value needs).
MAX_APPROVALS = 16
DEFAULT_TIMEOUT = 600
MIN_TIMEOUT = 60
MAX_TIMEOUT = 86_400
#: A key-usage approval's window and use count (a PKCS#11 application uses a key many times).
MAX_USES = 1_000_000
MFA_SECONDS = 300
#: Used and expired tokens stay this long after their expiry (a replay is told "already used"), unless
#: the cluster needs the room.
KEEP_AFTER_EXPIRY = 3600
TOKEN_KIND = "strongroom-approval/1"
MFA_KIND = "strongroom-mfa/1"
_RETRIES = 10

Witness = Callable[[], Awaitable[None]]


async def _no_witness() -> None:
    return None


class QuorumError(HsmError):
    """No valid approval: the operation is refused (the code is the gate's, see dispatch/quorum.py)."""

    code = CKR.FUNCTION_REJECTED


class OtherCluster(QuorumError):
    pass


# --- canonical forms --------------------------------------------------------------------------------


def _normal(value: Any) -> Any:
    if isinstance(value, dict):
        return ["\x00map", sorted(([str(k), _normal(v)] for k, v in value.items()), key=lambda kv: kv[0])]
    if isinstance(value, list | tuple):
        return [_normal(v) for v in value]
    if isinstance(value, bytes | str | int | float | bool) or value is None:
        return value
    return repr(value)


def binding(operation: str, arguments: dict[str, Any]) -> str:
    """SHA-256 (hex) over the operation and its bound arguments, in one canonical encoding."""
    packed = msgpack.packb(_normal({"operation": operation, "arguments": arguments}), use_bin_type=True)
    return hashlib.sha256(packed).hexdigest()


def summary(arguments: dict[str, Any]) -> dict[str, Any]:
    """The bound arguments as an approver reads them: short values in full, long ones by digest."""
    shown: dict[str, Any] = {}
    for name, value in sorted(arguments.items()):
        if isinstance(value, bool | int) or value is None:
            shown[name] = value
        elif isinstance(value, str) and len(value) <= 80:
            shown[name] = value
        else:
            packed = msgpack.packb(_normal(value), use_bin_type=True)
            size = len(value) if isinstance(value, bytes | str | list | dict) else len(packed)
            shown[name] = f"({type(value).__name__}, {size} long, sha256 {hashlib.sha256(packed).hexdigest()[:16]})"
    return shown


def _canonical_json(value: dict[str, Any]) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def key_subject(handle: int) -> str:
    return f"k{handle:08x}"


def key_handle(subject: str) -> int:
    """The key a key-service token's subject names (ValueError for another subject)."""
    if not subject.startswith("k"):
        raise ValueError(subject)
    return int(subject[1:], 16)


# --- settings --------------------------------------------------------------------------------------


@dataclass
class Settings:
    values: dict[str, int] = field(default_factory=lambda: dict.fromkeys(ADMIN_SERVICES, 1))
    #: Seconds a token has to collect its approvals, per service (token services).
    timeouts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TOKEN_SERVICES, DEFAULT_TIMEOUT))
    #: Seconds an approved token (admin and key-management services) stays usable once its approvals are
    #: complete (CloudHSM's ``set-timeout --approved``); key-usage tokens have their own window.
    approved: int = DEFAULT_TIMEOUT
    entry: Entry | None = None

    def value(self, service: str) -> int:
        return int(self.values.get(service, 1))

    def timeout(self, service: str) -> int:
        return int(self.timeouts.get(service, DEFAULT_TIMEOUT))

    def to_record(self) -> dict[str, Any]:
        return {"values": dict(self.values), "timeouts": dict(self.timeouts), "approved": self.approved}


# --- registered keys -------------------------------------------------------------------------------


@dataclass
class RegisteredKey:
    username: str
    uid: str
    public_key_pem: str
    fingerprint: str
    algorithm: str
    #: Registered as a quorum approver (``user change-quorum token-sign register``) / as the MFA factor.
    quorum: bool
    mfa: bool
    registered: float
    entry: Entry | None = None

    @property
    def public_key(self) -> PublicKey:
        return pki.load_public_key(self.public_key_pem)

    def to_record(self) -> dict[str, Any]:
        return {"username": self.username, "uid": self.uid, "public_key": self.public_key_pem,
                "fingerprint": self.fingerprint, "algorithm": self.algorithm, "quorum": self.quorum,
                "mfa": self.mfa, "registered": self.registered}

    @classmethod
    def from_entry(cls, entry: Entry) -> RegisteredKey:
        v = entry.value
        return cls(str(v["username"]), str(v["uid"]), str(v["public_key"]), str(v["fingerprint"]),
                   str(v["algorithm"]), bool(v.get("quorum")), bool(v.get("mfa")), float(v["registered"]), entry)

    def status(self) -> dict[str, Any]:
        return {"algorithm": self.algorithm, "fingerprint": self.fingerprint,
                "quorum": [{"strategy": "token-sign", "status": "enabled"}] if self.quorum else [],
                "mfa": [{"strategy": "token-sign", "status": "enabled"}] if self.mfa else []}


# --- tokens ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Claims:
    """What a token's approval_data says (and so what every approver signed)."""

    cluster: str
    service: str
    operation: str
    arguments: dict[str, Any]
    binding: str
    subject: str
    requester: str
    requester_uid: str
    created: float
    expires: float
    nonce: str
    #: Key usage: seconds the approval stays usable once complete, and how many uses (0: any number).
    window: int = 0
    uses: int = 1

    def encode(self) -> bytes:
        return _canonical_json({"kind": TOKEN_KIND, **asdict(self)})

    @classmethod
    def decode(cls, data: bytes) -> Claims:
        """Parse approval_data; ArgumentsBad for anything that is not a Strongroom token."""
        if len(data) > pki.MAX_APPROVAL_DATA:
            raise ArgumentsBad(f"approval data is at most {pki.MAX_APPROVAL_DATA} bytes")
        try:
            value = json.loads(data)
        except (ValueError, UnicodeDecodeError):
            value = None
        if not isinstance(value, dict) or value.get("kind") != TOKEN_KIND:
            raise ArgumentsBad("the approval data is not a Strongroom approval token (was it made by another "
                               "product, or edited?)")
        try:
            return cls(
                cluster=str(value["cluster"]), service=str(value["service"]), operation=str(value["operation"]),
                arguments=dict(value["arguments"]), binding=str(value["binding"]), subject=str(value["subject"]),
                requester=str(value["requester"]), requester_uid=str(value["requester_uid"]),
                created=float(value["created"]), expires=float(value["expires"]), nonce=str(value["nonce"]),
                window=int(value.get("window", 0)), uses=int(value.get("uses", 1)))
        except (KeyError, TypeError, ValueError):
            raise ArgumentsBad("the approval data lacks a field of a Strongroom approval token") from None


@dataclass
class Approval:
    username: str
    uid: str
    signature: bytes
    scheme: str
    at: float

    def to_record(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_record(cls, value: dict[str, Any]) -> Approval:
        return cls(str(value["username"]), str(value["uid"]), bytes(value["signature"]), str(value["scheme"]),
                   float(value["at"]))


PENDING = "pending"
USED = "used"
#: Marked by the sweep when its deadline passed unused (so the expiry is audited once, by one node).
EXPIRED = "expired"


@dataclass
class Token:
    approval_data: bytes
    claims: Claims
    approvals: list[Approval] = field(default_factory=list)
    state: str = PENDING
    #: Key usage: uses left (None: unlimited until ``usable_until``); admin and key-management tokens: 1.
    uses_left: int | None = 1
    #: Set when the approvals became complete (key usage: the window starts then).
    usable_until: float | None = None
    used_at: float | None = None
    entry: Entry | None = None

    @property
    def digest(self) -> bytes:
        return pki.token_of(self.approval_data)

    @property
    def hex(self) -> str:
        return self.digest.hex()

    @property
    def key(self) -> str:
        return f"{TOKENS_PREFIX}{self.claims.subject}/{self.hex}"

    def expired(self, now: float) -> bool:
        if self.state == EXPIRED:  # a node whose clock is behind still sees it expired
            return True
        if self.usable_until is not None:
            return now >= self.usable_until
        return now >= self.claims.expires

    def deadline(self) -> float:
        return self.usable_until if self.usable_until is not None else self.claims.expires

    def approver_names(self) -> list[str]:
        return [a.username for a in self.approvals]

    def audit_details(self) -> dict[str, Any]:
        """What the audit records of a token's end (expired, purged, deleted) say about it."""
        c = self.claims
        return {"token": self.hex, "service": c.service, "operation": c.operation, "arguments": c.arguments,
                "requester": c.requester, "state": self.state, "approvers": self.approver_names()}

    def to_record(self) -> dict[str, Any]:
        return {"approval_data": self.approval_data, "approvals": [a.to_record() for a in self.approvals],
                "state": self.state, "uses_left": self.uses_left, "usable_until": self.usable_until,
                "used_at": self.used_at}

    @classmethod
    def from_entry(cls, entry: Entry) -> Token:
        v = entry.value
        data = bytes(v["approval_data"])
        return cls(data, Claims.decode(data), [Approval.from_record(a) for a in v.get("approvals") or []],
                   str(v.get("state", PENDING)), v.get("uses_left"), v.get("usable_until"), v.get("used_at"), entry)

    def file(self) -> pki.TokenFile:
        """The CloudHSM-format file of this token, with the signatures the cluster holds."""
        if self.claims.service == REGISTRATION:
            return pki.registration_file([pki.Challenge(self.digest, None, self.approval_data)],
                                               service=REGISTRATION)
        return pki.quorum_file(self.approval_data,
                                     [pki.Signature(a.username, a.signature) for a in self.approvals],
                                     service=self.claims.service, operation=self.claims.operation,
                                     arguments=self.claims.arguments)

    def public(self, now: float, required: int | None = None) -> dict[str, Any]:
        c = self.claims
        state = self.state if self.state == USED else (EXPIRED if self.expired(now) else PENDING)
        if state == PENDING and required is not None and len(self.approvals) >= required:
            state = "approved"
        row: dict[str, Any] = {
            "token": pki.b64(self.digest), "token_id": self.hex, "username": c.requester, "service": c.service,
            "operation": c.operation, "arguments": c.arguments, "number-of-approvals": len(self.approvals),
            "approvers": self.approver_names(), "token-timeout-seconds": max(0, int(self.deadline() - now)),
            "state": state, "cluster-coverage": "full",
        }
        if required is not None:
            row["approvals-required"] = required
        if c.service == KEY_USAGE:
            row.update(window_seconds=c.window, uses=c.uses, uses_left=self.uses_left)
        return row


# --- MFA challenges ---------------------------------------------------------------------------------


@dataclass
class MfaChallenge:
    approval_data: bytes
    username: str
    uid: str
    node: str
    expires: float
    entry: Entry | None = None
    #: The other nodes' challenges of the same file (hex digests): one signed file is one login, on any node.
    siblings: tuple[str, ...] = ()

    @property
    def digest(self) -> bytes:
        return pki.token_of(self.approval_data)

    @property
    def key(self) -> str:
        return MFA_PREFIX + self.digest.hex()

    def to_record(self) -> dict[str, Any]:
        return {"approval_data": self.approval_data, "username": self.username, "uid": self.uid, "node": self.node,
                "expires": self.expires, "siblings": list(self.siblings)}

    @classmethod
    def from_entry(cls, entry: Entry) -> MfaChallenge:
        v = entry.value
        return cls(bytes(v["approval_data"]), str(v["username"]), str(v["uid"]), str(v["node"]),
                   float(v["expires"]), entry, tuple(str(d) for d in v.get("siblings") or ()))


# --- the store -------------------------------------------------------------------------------------


class QuorumStore:
    """The quorum records of one cluster, over its barrier."""

    def __init__(self, barrier: Barrier, cluster_id: str, *, clock: Callable[[], float] = time.time) -> None:
        self._barrier = barrier
        self.cluster_id = cluster_id
        self.clock = clock

    # --- settings ------------------------------------------------------------------------------
    async def settings(self) -> Settings:
        entry = await self._barrier.get(SETTINGS_KEY)
        settings = Settings()
        if entry is not None:
            settings.values.update({str(k): int(v) for k, v in (entry.value.get("values") or {}).items()})
            settings.timeouts.update({str(k): int(v) for k, v in (entry.value.get("timeouts") or {}).items()})
            settings.approved = int(entry.value.get("approved") or DEFAULT_TIMEOUT)
            settings.entry = entry
        return settings

    async def change_settings(self, change: Callable[[Settings], None], witness: Witness = _no_witness) -> Settings:
        for _ in range(_RETRIES):
            settings = await self.settings()
            change(settings)
            await witness()
            witness = _no_witness
            try:
                await self._barrier.commit([Write(SETTINGS_KEY, settings.to_record(), settings.entry)])
                return settings
            except ConflictError:
                continue
        raise HsmError("the quorum settings keep changing; try again", CKR.FUNCTION_FAILED)

    # --- registered keys -----------------------------------------------------------------------
    async def registered(self, username: str, uid: str | None = None) -> RegisteredKey | None:
        """The key registered by this account (a record of a deleted account of the same name is not it)."""
        entry = await self._barrier.get(KEYS_PREFIX + username)
        if entry is None:
            return None
        key = RegisteredKey.from_entry(entry)
        if uid is not None and key.uid != uid:
            return None
        return key

    async def all_registered(self) -> list[RegisteredKey]:
        entries, _ = await self._barrier.list_prefix(KEYS_PREFIX)
        return [RegisteredKey.from_entry(e) for e in entries]

    async def save_key(self, username: str, uid: str, public_key: PublicKey | None, *, quorum: bool | None = None,
                       mfa: bool | None = None, witness: Witness = _no_witness) -> RegisteredKey | None:
        """Set (or, with ``public_key`` None and both flags false, remove) an account's approval key. A flag
        left None keeps its value; a record of an older account of the same name is replaced."""
        for _ in range(_RETRIES):
            entry = await self._barrier.get(KEYS_PREFIX + username)
            current = None if entry is None else RegisteredKey.from_entry(entry)
            if current is not None and current.uid != uid:
                current = None  # left by a deleted account of the same name: inert, replaced
            use_quorum = (current.quorum if current is not None else False) if quorum is None else quorum
            use_mfa = (current.mfa if current is not None else False) if mfa is None else mfa
            change: Change
            result: RegisteredKey | None
            if not use_quorum and not use_mfa:
                if entry is None:
                    return None
                change, result = Remove(entry.key, entry), None
            else:
                if public_key is not None:
                    pem, fp, algorithm = (pki.public_pem(public_key), pki.fingerprint(public_key),
                                          pki.describe_key(public_key))
                elif current is not None:
                    pem, fp, algorithm = current.public_key_pem, current.fingerprint, current.algorithm
                else:
                    raise ArgumentsBad(f"user {username!r} has no registered key: give one")
                result = RegisteredKey(username, uid, pem, fp, algorithm, use_quorum, use_mfa, self.clock())
                change = Write(KEYS_PREFIX + username, result.to_record(), entry)
            await witness()
            witness = _no_witness
            try:
                await self._barrier.commit([change])
                return result
            except ConflictError:
                continue
        raise HsmError("the key registration keeps changing; try again", CKR.FUNCTION_FAILED)

    # --- tokens --------------------------------------------------------------------------------
    def new_claims(self, *, service: str, operation: str, arguments: dict[str, Any], subject: str, requester: str,
                   requester_uid: str, timeout: int, window: int = 0, uses: int = 1) -> Claims:
        now = self.clock()
        return Claims(self.cluster_id, service, operation, summary(arguments), binding(operation, arguments),
                      subject, requester, requester_uid, round(now, 3), round(now + timeout, 3),
                      secrets.token_hex(16), window, uses)

    async def create(self, claims: Claims, witness: Witness = _no_witness) -> tuple[Token, list[Token]]:
        """Store a new token; returns it and the expired tokens purged to make room (at most 1,024 are kept)."""
        data = claims.encode()
        if len(data) > pki.MAX_APPROVAL_DATA:
            raise ArgumentsBad("the request's bound arguments are too long for a token")
        token = Token(data, claims, uses_left=None if claims.service == KEY_USAGE and claims.uses == 0
                      else claims.uses)
        purged: list[Token] = []
        if await self._barrier.count_prefix(TOKENS_PREFIX) >= MAX_TOKENS:
            purged = await self.purge(force=True)
            if await self._barrier.count_prefix(TOKENS_PREFIX) >= MAX_TOKENS:
                raise HsmError(f"the cluster already holds {MAX_TOKENS} unexpired quorum tokens; delete some "
                               "(strongroom quorum token-sign delete) or wait for them to expire", CKR.DEVICE_MEMORY)
        await witness()
        await self._barrier.commit([Write(token.key, token.to_record(), None)])
        token.entry = await self._barrier.get(token.key)
        return token, purged

    async def find(self, digest: bytes) -> Token | None:
        """The token whose SHA-256 is ``digest`` (reads only that record)."""
        suffix = "/" + digest.hex()
        listing = await self._barrier.store.list_prefix(TOKENS_PREFIX)
        for record in listing.records:
            if record.key.endswith(suffix):
                return Token.from_entry(self._barrier.decode(record))
        return None

    async def tokens(self, subject: str | None = None) -> list[Token]:
        prefix = TOKENS_PREFIX if subject is None else f"{TOKENS_PREFIX}{subject}/"
        entries, _ = await self._barrier.list_prefix(prefix)
        return [Token.from_entry(e) for e in entries]

    async def reread(self, token: Token) -> Token | None:
        entry = await self._barrier.get(token.key)
        return None if entry is None else Token.from_entry(entry)

    async def write(self, token: Token, witness: Witness = _no_witness) -> Token:
        """Write a changed token over the one it was read as (ConflictError if it changed meanwhile)."""
        await witness()
        await self._barrier.commit([Write(token.key, token.to_record(), token.entry)])
        token.entry = await self._barrier.get(token.key)
        return token

    async def remove(self, token: Token, witness: Witness = _no_witness) -> None:
        if token.entry is None:
            return
        await witness()
        await self._barrier.commit([Remove(token.key, token.entry)])

    async def purge(self, *, force: bool = False) -> list[Token]:
        """Remove tokens that expired (or were used) more than KEEP_AFTER_EXPIRY ago, or, with ``force`` (the
        cluster is full), every expired or used one. Returns what went. A token changed meanwhile (the sweep
        marked it expired, a request spent it) is read again and removed then."""
        removed: list[Token] = []
        for _ in range(_RETRIES):
            now = self.clock()
            doomed = []
            for token in await self.tokens():
                done = token.state == USED or token.expired(now)
                if done and token.entry is not None and (force or now - token.deadline() > KEEP_AFTER_EXPIRY):
                    doomed.append(token)
            conflicted = False
            for start in range(0, len(doomed), MAX_COMMIT_OPERATIONS):
                batch = doomed[start:start + MAX_COMMIT_OPERATIONS]
                try:
                    await self._barrier.commit([Remove(t.key, t.entry) for t in batch if t.entry is not None])
                except ConflictError:
                    conflicted = True
                    continue
                removed += batch
            if not conflicted:
                break
        return removed

    # --- MFA challenges ------------------------------------------------------------------------
    async def new_challenges(self, username: str, uid: str, nodes: Iterable[str]) -> list[MfaChallenge]:
        """One fresh challenge per node, valid MFA_SECONDS; the node a login reaches checks its own, and taking it
        spends the whole file (:meth:`take_challenge`)."""
        now = self.clock()
        listing = await self._barrier.store.list_prefix(MFA_PREFIX)
        if len(listing.records) >= MAX_MFA_CHALLENGES:
            await self.purge_challenges(now)
            if await self._barrier.count_prefix(MFA_PREFIX) >= MAX_MFA_CHALLENGES:
                raise HsmError("too many MFA logins are waiting for their signature; try again in a few minutes",
                               CKR.DEVICE_MEMORY)
        challenges = []
        for node in sorted(set(nodes))[:pki.MAX_TOKENS_PER_FILE]:
            data = _canonical_json({"kind": MFA_KIND, "cluster": self.cluster_id, "node": node, "username": username,
                                    "uid": uid, "created": round(now, 3), "nonce": secrets.token_hex(16)})
            challenges.append(MfaChallenge(data, username, uid, node, now + MFA_SECONDS))
        digests = [c.digest.hex() for c in challenges]
        for challenge in challenges:
            challenge.siblings = tuple(d for d in digests if d != challenge.digest.hex())
        for start in range(0, len(challenges), MAX_COMMIT_OPERATIONS):
            batch = challenges[start:start + MAX_COMMIT_OPERATIONS]
            await self._barrier.commit([Write(c.key, c.to_record(), None) for c in batch])
        return challenges

    async def challenge(self, digest: bytes) -> MfaChallenge | None:
        entry = await self._barrier.get(MFA_PREFIX + digest.hex())
        return None if entry is None else MfaChallenge.from_entry(entry)

    async def take_challenge(self, digest: bytes) -> MfaChallenge | None:
        """Remove and return the challenge ``digest`` with its siblings, in one commit (one signed file logs in
        once, whichever node it reaches). None if there is none, or if a sibling was taken already (the file
        was used on another node: it is removed too)."""
        for _ in range(_RETRIES):
            entry = await self._barrier.get(MFA_PREFIX + digest.hex())
            if entry is None:
                return None
            challenge = MfaChallenge.from_entry(entry)
            removes = [Remove(entry.key, entry)]
            spent = False
            for sibling in challenge.siblings:
                other = await self._barrier.get(MFA_PREFIX + sibling)
                if other is None:
                    spent = True
                else:
                    removes.append(Remove(other.key, other))
            try:
                for start in range(0, len(removes), MAX_COMMIT_OPERATIONS):
                    await self._barrier.commit(removes[start:start + MAX_COMMIT_OPERATIONS])
            except ConflictError:
                continue
            return None if spent else challenge
        return None

    async def purge_challenges(self, now: float | None = None) -> None:
        """Remove the MFA challenges that expired unused."""
        now = self.clock() if now is None else now
        entries, _ = await self._barrier.list_prefix(MFA_PREFIX)
        stale = [e for e in entries if float(e.value.get("expires", 0)) <= now]
        for start in range(0, len(stale), MAX_COMMIT_OPERATIONS):
            try:
                await self._barrier.commit([Remove(e.key, e) for e in stale[start:start + MAX_COMMIT_OPERATIONS]])
            except ConflictError:
                continue


# --- signatures -------------------------------------------------------------------------------------


def verify_with(key: RegisteredKey | PublicKey, token: bytes, signature: bytes) -> str:
    """The scheme the signature verifies under with this key; SignatureInvalid-coded HsmError otherwise."""
    try:
        public = key.public_key if isinstance(key, RegisteredKey) else key
    except ApprovalKeyError as exc:  # a stored key that no longer meets the policy
        raise HsmError(f"the registered key cannot be used: {exc}", CKR.SIGNATURE_INVALID) from None
    if len(signature) > pki.MAX_SIGNATURE:
        raise HsmError(f"a signature is at most {pki.MAX_SIGNATURE} bytes", CKR.SIGNATURE_LEN_RANGE)
    try:
        return pki.verify_token(public, token, signature)
    except InvalidSignature:
        raise HsmError("the signature does not verify", CKR.SIGNATURE_INVALID) from None


def load_key(pem: str) -> PublicKey:
    try:
        return pki.load_public_key(pem)
    except ApprovalKeyError as exc:
        raise HsmError(str(exc), CKR.PUBLIC_KEY_INVALID) from None


def clamp_uses(window: int, uses: int) -> tuple[int, int]:
    if not 0 <= uses <= MAX_USES:
        raise ArgumentsBad(f"uses is 0 (any number within the window) to {MAX_USES}")
    if not 0 <= window <= MAX_TIMEOUT:
        raise ArgumentsBad(f"a key-usage window is 0 to {MAX_TIMEOUT} seconds")
    return window, uses


# --- the sweep ----------------------------------------------------------------------------------------

#: How often worker 0 of each node looks for tokens that expired (their expiry is audited within this).
SWEEP_SECONDS = 10.0


class _Keys(Protocol):
    """What the sweep needs of the keyring (the barrier and cluster id once the node holds the key)."""

    barrier: Barrier | None
    cluster_id: str | None


async def sweep(store: QuorumStore, audit: Auditor) -> tuple[list[Token], list[Token]]:
    """Mark each token whose deadline passed unused as expired and audit it (``quorum.token.expire``): the
    mark is a conditional write, so with every node sweeping one node records each expiry. Then remove the
    tokens kept long enough after their end (``quorum.token.purge``) and stale MFA challenges. Returns
    (expired, purged)."""
    now = store.clock()
    expired: list[Token] = []
    for token in await store.tokens():
        if token.state != PENDING or not token.expired(now):
            continue
        token.state = EXPIRED
        details = token.audit_details()
        intent = await audit.intent("quorum.token.expire", actor=None, details=details)
        error: BaseException | None = None
        try:
            await store.write(token)
            expired.append(token)
        except (ConflictError, StoreError, HsmError) as exc:  # another node marked it, or it was used meanwhile
            error = exc
        await audit.settle(intent, error)
    purged = await store.purge()
    for token in purged:
        await audit.record("quorum.token.purge", actor=None, details=token.audit_details())
    await store.purge_challenges()
    return expired, purged


async def run_sweep(keys: _Keys, audit: Auditor, seconds: float = SWEEP_SECONDS) -> None:
    """Sweep for as long as the worker runs (nothing while the node holds no cluster key)."""
    while True:
        await asyncio.sleep(seconds)
        if keys.barrier is None or keys.cluster_id is None:
            continue
        try:
            await sweep(QuorumStore(keys.barrier, keys.cluster_id), audit)
        except (StoreError, HsmError, ConflictError) as exc:  # the next sweep tries again
            log.info("quorum sweep: %s", exc)
        except Exception:  # a record the sweep cannot read must not end the sweep for good
            log.exception("quorum sweep failed; trying again in %.0f s", seconds)
