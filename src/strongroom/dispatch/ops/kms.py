"""``kms.*``: what the KMS gateway (:mod:`strongroom.kms`) needs from the cluster besides keys and crypto.

The gateway is an ordinary *client* of the cluster: it logs in as a crypto user (the KMS
service user, ``kmsuser`` by default) and does its cryptography with ``key.generate`` /
``crypto.encrypt`` / ``crypto.decrypt`` / ``random.generate`` under non-extractable keys. What
it cannot do with those operations lives here:

* **Access keys** (``kms.access_key.create/list/delete``, admins only). An access key is an
  AWS-style key id (``AKIA`` + 16) and a 40-character secret, bound to the service user that
  may verify signatures made with it and optionally to a policy document (JSON, evaluated by the
  gateway). The record ``kms/access-keys/<id>`` holds the secret, encrypted by the barrier like
  every record; the secret is returned once, by ``create``, and never again.
* **SigV4 verification** (``kms.sigv4.verify``, crypto users). The gateway parses the request and
  builds the string to sign; the node derives the signing key from the secret (the HMAC-SHA256
  chain of SigV4) and compares signatures in constant time. The answer is yes (the key's name and
  policy) or no: an unknown key (``CKR_KEY_HANDLE_INVALID``) or a mismatch
  (``CKR_SIGNATURE_INVALID``); the derived key and the expected signature never leave the node, so
  the operation is no oracle for the secret. Only the service user an access key is bound to can
  verify with it: another crypto user gets "unknown key".
* **SigV4 signing keys** (``kms.sigv4.signing_key``, crypto users, same binding rule): the
  day-scoped derived key kSigning for (access key, date, region, service), so the gateway can
  verify signatures itself and cache the key (AWS's own front ends work this way). Only dates
  within one day of the node's clock; the secret never leaves the node; a leaked signing key
  signs for that access key, scope and day only. Issuance is audited once per access key and
  day (a small marker record, ``kms/signing-keys-issued/<id>``, remembers the dates audited).
* **Data keys** (``kms.data_key.generate``, crypto users): GenerateDataKey's random bytes and their
  AES-GCM seal in one round trip (``random.generate`` then ``crypto.encrypt``, with crypto.encrypt's
  own handler and checks), so a data key costs the gateway and the node one request, not two.
* **KMS metadata records** (``kms.record.get/list/commit``, crypto users): a small
  compare-and-swap key/value store confined to ``kms/data/<username>/``, values msgpack maps
  of at most :data:`MAX_VALUE_BYTES`, commits of up to :data:`MAX_CHANGES` changes applied
  atomically, each conditional on the revision the gateway read (``expect``; 0 = absent).

Why generic records and not KMS semantics in the node: the node's job is the trust boundary —
key material, access-key secrets, authentication, per-user isolation, atomicity and
authenticated storage — and all of that is here. The KMS semantics (key states, aliases, tags,
deletion windows, and later policies, grants and rotation) are API compatibility that changes
with AWS and with every later operation group; kept in the gateway, they are one place to
change and need no node upgrade, and a bug there cannot reach key material (the gateway never
holds any) or another user's records. A user who holds the service user's password could write
nonsense metadata — but that user can already destroy and use the keys themselves.

Every access-key change and every metadata commit is audited (management events); successful
SigV4 verifications are not (one fsync per KMS request would cap the API at the disk's sync
rate) — as with crypto operations, which the node counts but does not log one by one. Refused
SigV4 verifications and signing-key requests (unknown access key, bad signature) are audited
**aggregated** (:class:`FailureAudit`): the first refusal of a group — the service user, the
event, the outcome, the requester's address as the gateway reports it (``source``) and the
access key id (or ``unknown`` for ids that name no access key) — is written at once; the
following ones within :data:`FAILURE_AUDIT_SECONDS` are counted and written as one record with
the count (``details.count``, the time of the first and last, a few sample ids) when the
interval ends. A flood of bad requests therefore costs two audit records per group and
interval and worker process, not an fsync each. (Counts not yet written are lost if the worker
stops before its interval ends; the first refusal of each group never is.)
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import string
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgpack

from strongroom.auth.users import Role, normalize_username
from strongroom.barrier import Barrier, Change, Remove, Write
from strongroom.constants import CKM
from strongroom.dispatch import quorum as q
from strongroom.dispatch.auditing import audit_refusal, audited, witness
from strongroom.dispatch.call import Call, Services
from strongroom.dispatch.ops.crypto import OneShotArgs
from strongroom.dispatch.ops.crypto import encrypt as crypto_encrypt
from strongroom.dispatch.table import operation
from strongroom.errors import CKR, ArgumentsBad, DataLenRange, HsmError, SignatureInvalid
from strongroom.store.base import ConflictError

log = logging.getLogger("strongroom.dispatch.kms")
ADMIN = (Role.ADMIN.value,)
CRYPTO_USER = (Role.CRYPTO_USER.value,)

ACCESS_KEY_PREFIX = "kms/access-keys/"
DATA_PREFIX = "kms/data/"

ACCESS_KEY_ID_RE = re.compile(r"^AKIA[A-Z0-9]{16}\Z")
ACCESS_KEY_NAME_RE = re.compile(r"^[A-Za-z0-9_.@+=,-]{1,64}\Z")
_ID_ALPHABET = string.ascii_uppercase + string.digits
MAX_ACCESS_KEYS = 1000
#: The node protocol carries strings of at most 4096 characters.
MAX_POLICY_BYTES = 4096

#: Record keys below the user's namespace: printable, no spaces, at most 512 characters.
RECORD_KEY_RE = re.compile(r"^[A-Za-z0-9:/_.@=+,-]{1,512}\Z")
MAX_VALUE_BYTES = 64 * 1024
MAX_CHANGES = 16
MAX_LIST = 1000
#: Records one service user may hold (keys, aliases and what later operation groups add).
MAX_RECORDS = 200_000

SIGV4_ALGORITHM = "AWS4-HMAC-SHA256"
_DATE_RE = re.compile(r"^[0-9]{8}\Z")
_SCOPE_PART_RE = re.compile(r"^[a-z0-9-]{1,64}\Z")
_SIGNATURE_RE = re.compile(r"^[0-9a-f]{64}\Z")
MAX_STRING_TO_SIGN = 1024


class UnknownAccessKey(HsmError):
    """No such access key, or not one this user may verify with (the gateway: UnrecognizedClient)."""

    code = CKR.KEY_HANDLE_INVALID


class RecordLimit(HsmError):
    code = CKR.DEVICE_MEMORY


# --- aggregated audit of refused SigV4 requests ------------------------------------------------------

FAILURE_AUDIT_SECONDS = 60.0
#: Open groups per worker; beyond, refusals are counted in one catch-all group per event and outcome.
FAILURE_AUDIT_MAX_GROUPS = 1024
FAILURE_AUDIT_SAMPLES = 5
UNKNOWN_KEY = "unknown"
SOURCE_MAX = 64

GroupKey = tuple[str, str, str, str, str]  # (actor, event, outcome, source, access key id or "unknown")


def _utc(moment: float) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(moment, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


@dataclass
class _FailureGroup:
    opened: float
    count: int = 0
    first: float = 0.0
    last: float = 0.0
    samples: list[str] = field(default_factory=list)


class FailureAudit:
    """One audit record per group of refusals and interval, with a count (see the module docstring)."""

    def __init__(self, interval: float = FAILURE_AUDIT_SECONDS, max_groups: int = FAILURE_AUDIT_MAX_GROUPS,
                 clock: Callable[[], float] = time.time) -> None:
        self.interval = interval
        self.max_groups = max_groups
        self._clock = clock
        self._groups: dict[GroupKey, _FailureGroup] = {}
        self._closing: set[asyncio.Task[None]] = set()

    def __len__(self) -> int:
        return len(self._groups)

    async def refused(self, call: Call, event: str, exc: HsmError, access_key_id: str, source: str,
                      *, known: bool) -> None:
        """Audit a refusal: at once when it opens a group, else counted into the group's record."""
        outcome = exc.code.spec_name
        source = source[:SOURCE_MAX] if source and source.isprintable() else "unknown"
        key_id = access_key_id[:128] if known else UNKNOWN_KEY
        group_key: GroupKey = (call.actor or "", event, outcome, source, key_id)
        if group_key not in self._groups and len(self._groups) >= self.max_groups:
            group_key = (call.actor or "", event, outcome, "*", "*")
        now = self._clock()
        group = self._groups.get(group_key)
        if group is not None and now - group.opened >= self.interval:
            await self.close(call.services, group_key, group.opened)  # its timer has not run (yet)
            group = None
        if group is None:
            self._groups[group_key] = _FailureGroup(opened=now)
            self._schedule_close(call.services, group_key, now)
            details: dict[str, Any] = {"access_key_id": access_key_id[:128], "source": group_key[3], "count": 1}
            if group_key[3] != source:
                details["first_source"] = source  # the catch-all group
            await audit_refusal(call, event, exc, details)
            return
        if group.count == 0:
            group.first = now
        group.count += 1
        group.last = now
        if not known and len(group.samples) < FAILURE_AUDIT_SAMPLES and access_key_id[:128] not in group.samples:
            group.samples.append(access_key_id[:128])

    def _schedule_close(self, services: Services, group_key: GroupKey, opened: float) -> None:
        loop = asyncio.get_running_loop()

        def close() -> None:
            task = loop.create_task(self.close(services, group_key, opened))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

        loop.call_later(self.interval, close)

    async def close(self, services: Services, group_key: GroupKey, opened: float | None = None) -> None:
        """End a group's interval (``opened``: only the group opened then): one record with the count
        of the refusals not yet written, if any."""
        group = self._groups.get(group_key)
        if group is None or (opened is not None and group.opened != opened):
            return
        del self._groups[group_key]
        if group.count == 0:
            return
        actor, event, outcome, source, key_id = group_key
        details: dict[str, Any] = {"access_key_id": key_id, "source": source, "count": group.count,
                                   "first": _utc(group.first), "last": _utc(group.last),
                                   "interval_seconds": self.interval, "aggregated": True}
        if group.samples:
            details["sample_access_key_ids"] = list(group.samples)
        try:
            await services.audit.record(event, actor=actor or None, outcome=outcome, details=details)
        except HsmError as exc:
            log.error("could not write the aggregated audit record of %d %s refusals: %s", group.count, event, exc)


    async def close_all(self, services: Services) -> None:
        for group_key in list(self._groups):
            await self.close(services, group_key)


#: This worker's aggregation (each worker process audits its own refusals).
FAILURES = FailureAudit()


# --- access keys (admins) -----------------------------------------------------------------------


def _new_access_key_id() -> str:
    return "AKIA" + "".join(secrets.choice(_ID_ALPHABET) for _ in range(16))


def _new_secret() -> str:
    # 30 random bytes -> 40 base64 characters, the shape of an AWS secret access key.
    import base64

    return base64.b64encode(secrets.token_bytes(30)).decode()


def _check_policy(policy: str | None) -> None:
    if policy is None:
        return
    if len(policy.encode()) > MAX_POLICY_BYTES:
        raise ArgumentsBad(f"an access-key policy is at most {MAX_POLICY_BYTES} bytes")
    try:
        document = json.loads(policy)
    except RecursionError:  # brackets nested thousands deep: the parser recurses per level
        raise ArgumentsBad("the access-key policy nests JSON too deep") from None
    except ValueError as exc:
        raise ArgumentsBad(f"the access-key policy is not JSON: {exc}") from None
    if not isinstance(document, dict):
        raise ArgumentsBad("the access-key policy must be a JSON object")


def _public(record: dict[str, Any]) -> dict[str, Any]:
    return {k: record.get(k) for k in ("access_key_id", "name", "service_user", "policy", "created")}


@dataclass
class AccessKeyCreateArgs:
    name: str
    policy: str | None = None
    service_user: str = "kmsuser"


@operation("kms.access_key.create", args=AccessKeyCreateArgs, roles=ADMIN)
async def access_key_create(call: Call, args: AccessKeyCreateArgs) -> dict[str, Any]:
    """A new access key; the reply is the only place its secret ever appears."""
    barrier = call.services.keyring.require_barrier()
    details: dict[str, Any] = {"name": args.name, "service_user": args.service_user}
    async with audited(call, "kms.access_key.create", details):
        if not ACCESS_KEY_NAME_RE.match(args.name):
            raise ArgumentsBad("an access-key name is 1 to 64 of letters, digits and _.@+=,-")
        service_user = normalize_username(args.service_user)
        _check_policy(args.policy)
        if await barrier.count_prefix(ACCESS_KEY_PREFIX) >= MAX_ACCESS_KEYS:
            raise RecordLimit(f"the cluster already has the maximum of {MAX_ACCESS_KEYS} KMS access keys")
        access_key_id = _new_access_key_id()
        record = {
            "access_key_id": access_key_id,
            "name": args.name,
            "service_user": service_user,
            "policy": args.policy,
            "secret": _new_secret(),
            "created": time.time(),
        }
        details["access_key_id"] = access_key_id
        await witness(call, "kms.access_key.create", details)()
        try:
            await barrier.commit([Write(ACCESS_KEY_PREFIX + access_key_id, record)])
        except ConflictError:
            raise HsmError("access key id collision; try again", CKR.FUNCTION_FAILED) from None
    return dict(_public(record), secret_access_key=record["secret"])


@operation("kms.access_key.list", roles=ADMIN)
async def access_key_list(call: Call, _args: None) -> dict[str, Any]:
    entries, _ = await call.services.keyring.require_barrier().list_prefix(ACCESS_KEY_PREFIX)
    return {"access_keys": [_public(entry.value) for entry in entries]}


@dataclass
class AccessKeyDeleteArgs:
    access_key_id: str


@operation("kms.access_key.delete", args=AccessKeyDeleteArgs, roles=ADMIN)
async def access_key_delete(call: Call, args: AccessKeyDeleteArgs) -> dict[str, Any]:
    barrier = call.services.keyring.require_barrier()
    details = {"access_key_id": args.access_key_id}
    async with audited(call, "kms.access_key.delete", details):
        if not ACCESS_KEY_ID_RE.match(args.access_key_id):
            raise ArgumentsBad("an access key id is AKIA followed by 16 capital letters and digits")
        entry = await barrier.get(ACCESS_KEY_PREFIX + args.access_key_id)
        if entry is None:
            raise UnknownAccessKey(f"no access key {args.access_key_id}")
        await witness(call, "kms.access_key.delete", details)()
        try:
            changes: list[Change] = [Remove(entry.key, entry)]
            marker = await barrier.get(SIGNING_KEY_ISSUED_PREFIX + args.access_key_id)
            if marker is not None:
                changes.append(Remove(marker.key, marker))
            await barrier.commit(changes)
        except ConflictError:
            raise HsmError("the access key changed meanwhile; try again", CKR.FUNCTION_FAILED) from None
    return _public(entry.value)


# --- SigV4 (the gateway's service user) ----------------------------------------------------------


def _hmac(key: bytes, message: str) -> bytes:
    return hmac.new(key, message.encode(), hashlib.sha256).digest()


def sigv4_signature(secret: str, date: str, region: str, service: str, string_to_sign: str) -> str:
    """The SigV4 signature (hex) of ``string_to_sign`` under ``secret``, for that date/region/service."""
    key = _hmac(("AWS4" + secret).encode(), date)
    key = _hmac(key, region)
    key = _hmac(key, service)
    key = _hmac(key, "aws4_request")
    return hmac.new(key, string_to_sign.encode(), hashlib.sha256).hexdigest()


@dataclass
class SigV4VerifyArgs:
    access_key_id: str
    date: str
    region: str
    service: str
    string_to_sign: str
    signature: str
    #: The requester's address as the gateway saw it (audit only; at most 64 characters).
    source: str = ""


def _check_sigv4_args(args: SigV4VerifyArgs) -> None:
    if not 1 <= len(args.access_key_id) <= 128 or not args.access_key_id.isprintable():
        raise ArgumentsBad("access_key_id is 1 to 128 printable characters")
    if not _DATE_RE.match(args.date):
        raise ArgumentsBad("date is YYYYMMDD")
    if not _SCOPE_PART_RE.match(args.region) or not _SCOPE_PART_RE.match(args.service):
        raise ArgumentsBad("region and service are 1 to 64 of a-z, 0-9 and -")
    if not _SIGNATURE_RE.match(args.signature):
        raise ArgumentsBad("signature is 64 lowercase hexadecimal digits")
    lines = args.string_to_sign.split("\n")
    scope = f"{args.date}/{args.region}/{args.service}/aws4_request"
    if (len(args.string_to_sign) > MAX_STRING_TO_SIGN or len(lines) != 4 or lines[0] != SIGV4_ALGORITHM
            or lines[2] != scope or not _SIGNATURE_RE.match(lines[3]) or not lines[1].startswith(args.date)):
        raise ArgumentsBad("string_to_sign is not a SigV4 string to sign for this scope")


@operation("kms.sigv4.verify", args=SigV4VerifyArgs, roles=CRYPTO_USER)
async def sigv4_verify(call: Call, args: SigV4VerifyArgs) -> dict[str, Any]:
    """Check a SigV4 signature; answers only with the key's name and policy, or an error."""
    _check_sigv4_args(args)
    barrier = call.services.keyring.require_barrier()
    try:
        entry = (await barrier.get(ACCESS_KEY_PREFIX + args.access_key_id)
                 if ACCESS_KEY_ID_RE.match(args.access_key_id) else None)
        if entry is None or entry.value.get("service_user") != call.actor:
            raise UnknownAccessKey("The security token included in the request is invalid.")
        record = entry.value
        expected = sigv4_signature(record["secret"], args.date, args.region, args.service, args.string_to_sign)
        if not hmac.compare_digest(expected.encode(), args.signature.encode()):
            raise SignatureInvalid("The request signature does not match the access key's secret.")
    except HsmError as exc:
        await FAILURES.refused(call, "kms.sigv4.verify", exc, args.access_key_id, args.source,
                               known=isinstance(exc, SignatureInvalid))
        raise
    return {"access_key_id": record["access_key_id"], "name": record["name"], "policy": record.get("policy")}


#: Signing keys are issued for today (UTC, the node's clock) and the day either side only.
SIGNING_KEY_MAX_DAYS = 1
SIGNING_KEY_ISSUED_PREFIX = "kms/signing-keys-issued/"
#: How many issuance dates the per-access-key marker remembers (enough for yesterday/today/tomorrow).
SIGNING_KEY_ISSUED_DATES = 4


def sigv4_signing_key(secret: str, date: str, region: str, service: str) -> bytes:
    """SigV4's derived key kSigning = HMAC chain of "AWS4"+secret, date, region, service, "aws4_request"."""
    key = _hmac(("AWS4" + secret).encode(), date)
    key = _hmac(key, region)
    key = _hmac(key, service)
    return _hmac(key, "aws4_request")


@dataclass
class SigV4SigningKeyArgs:
    access_key_id: str
    date: str
    region: str
    service: str
    #: The requester's address as the gateway saw it (audit only; at most 64 characters).
    source: str = ""


def _check_signing_date(date: str, now: float | None = None) -> None:
    import datetime as dt

    if not _DATE_RE.match(date):
        raise ArgumentsBad("date is YYYYMMDD")
    try:
        day = dt.datetime.strptime(date, "%Y%m%d").date()
    except ValueError:
        raise ArgumentsBad("date is YYYYMMDD") from None
    today = dt.datetime.fromtimestamp(time.time() if now is None else now, dt.UTC).date()
    if abs((day - today).days) > SIGNING_KEY_MAX_DAYS:
        raise ArgumentsBad(f"a signing key is issued for {today:%Y%m%d} (UTC) and the day either side only")


async def _audit_issuance_once(call: Call, barrier: Barrier, access_key_id: str, date: str) -> None:
    """One audit record per access key and day, not per request: a small marker record
    (``kms/signing-keys-issued/<id>``, the last few dates) says whether today's is already written.
    The audit record is written first (a failed audit write refuses the issuance)."""
    marker_key = SIGNING_KEY_ISSUED_PREFIX + access_key_id
    marker = await barrier.get(marker_key)
    dates = list(marker.value.get("dates", [])) if marker is not None else []
    if date in dates:
        return
    details = {"access_key_id": access_key_id, "date": date}
    dates = sorted(set(dates) | {date})[-SIGNING_KEY_ISSUED_DATES:]
    async with audited(call, "kms.sigv4.signing_key", details):
        await witness(call, "kms.sigv4.signing_key", details)()
        try:
            await barrier.commit([Write(marker_key, {"dates": dates}, marker)])
        except ConflictError:
            pass  # another node wrote the marker meanwhile (at worst one extra audit record that day)


@operation("kms.sigv4.signing_key", args=SigV4SigningKeyArgs, roles=CRYPTO_USER)
async def sigv4_signing_key_op(call: Call, args: SigV4SigningKeyArgs) -> dict[str, Any]:
    """The day-scoped SigV4 signing key of an access key, so the gateway can verify signatures
    itself. Only the service user the key is bound to gets it; only for dates within a day of the
    node's clock; the secret never leaves the node. Issuance is audited once per key and day."""
    barrier = call.services.keyring.require_barrier()
    try:
        if not 1 <= len(args.access_key_id) <= 128 or not args.access_key_id.isprintable():
            raise ArgumentsBad("access_key_id is 1 to 128 printable characters")
        if not _SCOPE_PART_RE.match(args.region) or not _SCOPE_PART_RE.match(args.service):
            raise ArgumentsBad("region and service are 1 to 64 of a-z, 0-9 and -")
        _check_signing_date(args.date)
        entry = (await barrier.get(ACCESS_KEY_PREFIX + args.access_key_id)
                 if ACCESS_KEY_ID_RE.match(args.access_key_id) else None)
        if entry is None or entry.value.get("service_user") != call.actor:
            raise UnknownAccessKey("The security token included in the request is invalid.")
        record = entry.value
        await _audit_issuance_once(call, barrier, record["access_key_id"], args.date)
    except HsmError as exc:
        await FAILURES.refused(call, "kms.sigv4.signing_key", exc, args.access_key_id, args.source, known=False)
        raise
    return {"signing_key": sigv4_signing_key(record["secret"], args.date, args.region, args.service),
            "name": record["name"], "policy": record.get("policy")}


# --- metadata records (the gateway's service user) ----------------------------------------------


def _namespace(call: Call) -> str:
    return f"{DATA_PREFIX}{call.actor}/"


def _record_key(call: Call, key: object) -> str:
    if (not isinstance(key, str) or not RECORD_KEY_RE.match(key)
            or any(part in (".", "..") for part in key.split("/"))):
        raise ArgumentsBad("a record key is 1 to 512 of letters, digits and :/_.@=+,- with no '.' or '..' "
                           "segment")
    return _namespace(call) + key


@dataclass
class RecordGetArgs:
    key: str


@operation("kms.record.get", args=RecordGetArgs, roles=CRYPTO_USER)
async def record_get(call: Call, args: RecordGetArgs) -> dict[str, Any]:
    entry = await call.services.keyring.require_barrier().get(_record_key(call, args.key))
    if entry is None:
        return {"value": None, "revision": 0}
    return {"value": entry.value, "revision": entry.revision}


@dataclass
class RecordListArgs:
    prefix: str = ""
    start_after: str = ""
    limit: int = MAX_LIST


@operation("kms.record.list", args=RecordListArgs, roles=CRYPTO_USER)
async def record_list(call: Call, args: RecordListArgs) -> dict[str, Any]:
    """Records whose key starts with ``prefix`` and sorts after ``start_after``, in key order."""
    if args.prefix and not RECORD_KEY_RE.match(args.prefix):
        raise ArgumentsBad("a record prefix is made of letters, digits and :/_.@=+,-")
    if not 1 <= args.limit <= MAX_LIST:
        raise ArgumentsBad(f"limit is 1 to {MAX_LIST}")
    barrier = call.services.keyring.require_barrier()
    namespace = _namespace(call)
    after = namespace + args.start_after if args.start_after else ""
    page, more = await barrier.list_page(namespace + args.prefix, start_after=after, limit=args.limit)
    records = [{"key": entry.key[len(namespace):], "value": entry.value, "revision": entry.revision} for entry in page]
    return {"records": records, "more": more}


@dataclass
class RecordCommitArgs:
    #: Each change: {"key": str, "expect": int (0 = must be absent), "value": map} or {..., "delete": true}.
    changes: list[dict[str, Any]]


def _parse_change(call: Call, change: Any) -> tuple[str, int, dict[str, Any] | None]:
    if not isinstance(change, dict) or not set(change) <= {"key", "expect", "value", "delete"}:
        raise ArgumentsBad("a change is a map of key, expect and value (or delete)")
    key = _record_key(call, change.get("key"))
    expect = change.get("expect")
    if not isinstance(expect, int) or isinstance(expect, bool) or expect < 0:
        raise ArgumentsBad("expect is the revision read (0: the record must not exist)")
    if change.get("delete") is True:
        if "value" in change or expect == 0:
            raise ArgumentsBad("a delete takes no value and names the revision it deletes")
        return key, expect, None
    value = change.get("value")
    if not isinstance(value, dict):
        raise ArgumentsBad("a record value is a map")
    if len(msgpack.packb(value, use_bin_type=True)) > MAX_VALUE_BYTES:
        raise ArgumentsBad(f"a record value is at most {MAX_VALUE_BYTES} bytes")
    return key, expect, value


@operation("kms.record.commit", args=RecordCommitArgs, roles=CRYPTO_USER)
async def record_commit(call: Call, args: RecordCommitArgs) -> dict[str, Any]:
    """Apply every change or none. A revision that moved on answers ``{"ok": false, "conflict": key}``."""
    if not 1 <= len(args.changes) <= MAX_CHANGES:
        raise ArgumentsBad(f"a commit has 1 to {MAX_CHANGES} changes")
    parsed = [_parse_change(call, change) for change in args.changes]
    if len({key for key, _, _ in parsed}) != len(parsed):
        raise ArgumentsBad("a commit names each record once")
    barrier = call.services.keyring.require_barrier()
    namespace = _namespace(call)
    changes: list[Change] = []
    for key, expect, value in parsed:
        entry = await barrier.get(key)
        current = 0 if entry is None else entry.revision
        if current != expect:
            return {"ok": False, "conflict": key[len(namespace):]}
        if value is None:
            assert entry is not None  # a delete names a revision above 0 (_parse_change), and it matched
            changes.append(Remove(key, entry))
        else:
            changes.append(Write(key, value, entry))
    if any(expect == 0 for _, expect, _ in parsed):
        if await barrier.count_prefix(namespace) + sum(1 for _, e, _ in parsed if e == 0) > MAX_RECORDS:
            raise RecordLimit(f"a KMS service user holds at most {MAX_RECORDS} records")
    details = {"keys": [key[len(namespace):] for key, _, _ in parsed][:MAX_CHANGES]}
    try:
        async with audited(call, "kms.record.commit", details):
            await witness(call, "kms.record.commit", details)()
            revision = await barrier.commit(changes)
    except ConflictError as exc:
        return {"ok": False, "conflict": exc.key[len(namespace):]}
    return {"ok": True, "revision": revision}


# --- data keys --------------------------------------------------------------------------------------

#: GenerateDataKey's NumberOfBytes is 1 to 1024.
MAX_DATA_KEY_BYTES = 1024


@dataclass
class DataKeyArgs:
    key: int
    length: int
    params: Any = None


@operation("kms.data_key.generate", args=DataKeyArgs, roles=CRYPTO_USER, quorum=q.uses("encrypt"))
async def data_key_generate(call: Call, args: DataKeyArgs) -> dict[str, Any]:
    """GenerateDataKey's two calls in one round trip: ``length`` bytes from the node's CSPRNG (as
    ``random.generate``) sealed by ``crypto.encrypt`` with CKM_AES_GCM under ``key`` and ``params``
    (iv, aad, tag_bits) — the same handler, so the same checks: the key is one this user may use, for
    encryption, with AES-GCM among its allowed mechanisms, and a key under quorum spends one approved
    use of ``encrypt`` (``q.uses``). Answers ``{data, plaintext}``: the sealed bytes and the data key."""
    if not 1 <= args.length <= MAX_DATA_KEY_BYTES:
        raise DataLenRange(f"a data key has 1 to {MAX_DATA_KEY_BYTES} bytes")
    plaintext = os.urandom(args.length)
    sealed = await crypto_encrypt(call, OneShotArgs(args.key, int(CKM.AES_GCM), plaintext, args.params))
    return {"data": sealed["data"], "plaintext": plaintext}
