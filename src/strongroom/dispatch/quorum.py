"""Quorum in the request pipeline: an operation declares the service whose approvals it needs
(``@operation(..., quorum=...)``) and :func:`enforce` runs before its handler.

Services (CloudHSM's names) and who approves:

==================  ================================================  ====================================
service             operations                                        approvers (registered keys)
==================  ================================================  ====================================
``user``            user create, delete, change-password of another   admins
                    user, change-mfa of another user
``quorum``          set-quorum-value, set-timeout                     admins
``cluster``         hsm.enroll, an admin's hsm.zeroize,               admins
                    cluster.set_policy
``key-management``  wrap (the key wrapped), unwrap (the unwrapping    the key's owner and the users it is
                    key), share, unshare, set-attribute, copy,        shared with
                    destroy — of a key whose manage value is > 1
``key-usage``       sign, decrypt, encrypt, verify, derive,           the key's owner and the users it is
                    decapsulate with a key whose use value is > 1     shared with
==================  ================================================  ====================================

The admin services' values are the cluster's (``quorum token-sign set-quorum-value``); a key's are its
vendor attributes CKA_STRONGROOM_MANAGE_KEY_QUORUM / CKA_STRONGROOM_USE_KEY_QUORUM, set when it is made.

A request carries its approval as the argument ``approval`` (the token's approval_data, read from the
token file by the CLI) or none: then the requester's own complete token for exactly this request is
found in the cluster. That is how a PKCS#11 application, which cannot pass one, uses a key whose use
value is > 1: a ``key-usage`` token names the key, the uses (sign …), a window in seconds and a use count;
once approved, each use within the window spends one. Refusals carry CKR_FUNCTION_REJECTED (C_Sign's
"rejected by the user"), CKR_KEY_FUNCTION_NOT_PERMITTED at a C_*Init, CKR_ACTION_PROHIBITED for object
management; each refusal is audited (``quorum.refused``) and each use (``quorum.token.use``).
"""

from __future__ import annotations

import dataclasses
import time
import weakref
from dataclasses import dataclass
from typing import Any

from strongroom.auth.users import Role, User
from strongroom.constants import CKA
from strongroom.dispatch.auditing import audit_refusal, audited, witness
from strongroom.dispatch.call import Call
from strongroom.errors import CKR, ArgumentsBad, AttributeValueInvalid, HsmError, ObjectHandleInvalid
from strongroom.objects.access import Access, Actor, may
from strongroom.objects.attributes import coerce_template
from strongroom.objects.model import StoredObject
from strongroom.objects.p11sessions import ActiveOperation
from strongroom.pki import approvals
from strongroom.services import quorum as store_module
from strongroom.services.quorum import (
    ADMIN_SERVICES,
    CLUSTER,
    KEY_MANAGEMENT,
    KEY_USAGE,
    MAX_VALUE,
    QUORUM,
    USED,
    USER,
    Claims,
    OtherCluster,
    QuorumError,
    QuorumStore,
    Token,
    binding,
    key_subject,
)
from strongroom.store.base import ConflictError

MANAGE = CKA.STRONGROOM_MANAGE_KEY_QUORUM
USE = CKA.STRONGROOM_USE_KEY_QUORUM
#: Arguments never bound into a token: a password (the approvers approve "reset bob's password", the
#: requester chooses it; binding its hash would hand approvers an offline guessing target) and a PKCS#11
#: session handle (it differs per connection).
UNBOUND = ("password", "session")


@dataclass(frozen=True)
class QuorumRule:
    """What an operation declares. ``service`` None: only the key quorum values its templates give are checked."""

    service: str | None
    #: Key services: the argument naming the key (a handle).
    key: str | None = None
    #: Key usage in a multi-part step: the operation kind whose key is found in the PKCS#11 session.
    session_kind: str | None = None
    #: Key usage: what the key is used for (sign, decrypt ...).
    kind: str | None = None
    #: A C_*Init: a complete approval must exist, it is spent by the first step that follows.
    check_only: bool = False
    #: User service: the argument naming the user acted on; acting on one's own account needs no quorum.
    of_others: str | None = None
    #: Only a logged-in caller's request (hsm.zeroize: the operator's certificate is an emergency stop).
    logged_in_only: bool = False
    #: Arguments not bound into the token besides UNBOUND (proofs the request carries, e.g. a signature).
    unbound: tuple[str, ...] = ()
    #: Arguments holding templates whose key quorum values are checked (at most 8, at most the approvers).
    templates: tuple[str, ...] = ()
    #: object.share: the owner may share freely while fewer users than the key's values are associated
    #: (that is how the approvers are named, as CloudHSM's --share-crypto-users at generation); unshare
    #: may never leave fewer.
    sharing: str | None = None
    code: CKR = CKR.FUNCTION_REJECTED


# The declarations the operations use.
USER_OPS = QuorumRule(USER)
USER_OF_OTHERS = QuorumRule(USER, of_others="username")
#: quorum.mfa_register: approvers approve the user and the key, not the registration token's proof.
MFA_OF_OTHERS = QuorumRule(USER, of_others="username", unbound=("registration", "signature"))
#: quorum.register of another user (an admin registers or removes someone's approval key): the same.
QUORUM_KEY_OF_OTHERS = QuorumRule(USER, of_others="username", unbound=("registration", "signature"))
QUORUM_OPS = QuorumRule(QUORUM)
CLUSTER_OPS = QuorumRule(CLUSTER)
CLUSTER_LOGGED_IN = QuorumRule(CLUSTER, logged_in_only=True)


def manages(key: str = "handle", *, templates: tuple[str, ...] = (), sharing: str | None = None,
            code: CKR = CKR.ACTION_PROHIBITED) -> QuorumRule:
    return QuorumRule(KEY_MANAGEMENT, key=key, templates=templates, sharing=sharing, code=code)


def uses(kind: str, key: str = "key", *, templates: tuple[str, ...] = ()) -> QuorumRule:
    """A one-request use of a key (crypto.sign ...): spends one use of an approval."""
    return QuorumRule(KEY_USAGE, key=key, kind=kind, templates=templates)


def starts(kind: str) -> QuorumRule:
    """A multi-part init: an approval must be there (C_*Init answers CKR_KEY_FUNCTION_NOT_PERMITTED)."""
    return QuorumRule(KEY_USAGE, key="key", kind=kind, check_only=True, code=CKR.KEY_FUNCTION_NOT_PERMITTED)


def continues(kind: str) -> QuorumRule:
    """A multi-part step: the first one after the init spends the use."""
    return QuorumRule(KEY_USAGE, session_kind=kind, kind=kind)


def makes_keys(*templates: str) -> QuorumRule:
    return QuorumRule(None, templates=templates)


def split(rule: QuorumRule | None, raw: dict[str, Any]) -> tuple[dict[str, Any], bytes | None]:
    """The request's arguments without ``approval``, and the approval (only operations with a rule take one)."""
    if rule is None or "approval" not in raw:
        return raw, None
    rest = dict(raw)
    approval = rest.pop("approval")
    if approval is not None and (not isinstance(approval, bytes) or len(approval) > approvals.MAX_APPROVAL_DATA):
        raise ArgumentsBad(f"approval is the token's approval data: at most {approvals.MAX_APPROVAL_DATA} bytes")
    return rest, approval


def bound_arguments(rule: QuorumRule, args: Any) -> dict[str, Any]:
    """The arguments of a request a token binds (every argument but the unbound ones)."""
    if args is None:
        return {}
    skip = (*UNBOUND, *rule.unbound)
    return {k: v for k, v in dataclasses.asdict(args).items() if k not in skip}


def quorum_store(call: Call) -> QuorumStore:
    keyring = call.services.keyring
    cluster_id, _key = keyring.require_cluster_key()
    return QuorumStore(keyring.require_barrier(), cluster_id)


#: Multi-part operations whose use was spent already (the first step after the init spends it).
_SPENT: weakref.WeakSet[ActiveOperation] = weakref.WeakSet()


@dataclass
class _Request:
    """What one request asks of the quorum: the service, the subject, what the token must bind."""

    service: str
    required: int
    subject: str
    operation: str
    arguments: dict[str, Any]
    #: Key services: the key and the accounts that may approve (name -> uid, None when unknown).
    key: StoredObject | None = None
    approvers: dict[str, str | None] = dataclasses.field(default_factory=dict)
    #: A multi-part step: the operation whose use this spends.
    active: ActiveOperation | None = None


async def enforce(call: Call, name: str, rule: QuorumRule, args: Any, approval: bytes | None) -> None:
    """Refuse the request unless its quorum is met; spend the approval that meets it."""
    if rule.logged_in_only and call.session is None:
        if call.request.session is None:
            return
        call.session = call.services.sessions.logins.resolve(call.request.session)
    if call.session is None:
        return
    if rule.templates:
        await _check_key_values(call, args, rule.templates)
    if rule.service is None:
        return
    details: dict[str, Any] = {"operation": name, "service": rule.service}
    try:
        request = await _request(call, name, rule, args)
        if request is None:
            return
        details.update(required=request.required, subject=request.subject)
        await _approve_and_spend(call, rule, request, approval, details)
    except HsmError as exc:
        if isinstance(exc, QuorumError):
            exc = HsmError(exc.message, rule.code)
        await audit_refusal(call, "quorum.refused", exc, details)
        raise exc from None


async def _request(call: Call, name: str, rule: QuorumRule, args: Any) -> _Request | None:
    """The quorum this request needs, or None when it needs none."""
    login = call.login
    if rule.service in ADMIN_SERVICES:
        if rule.of_others is not None:
            target = getattr(args, rule.of_others)
            if target is None or (isinstance(target, str) and target.lower() == login.username):
                return None  # one's own account (no username: the caller's)
        if login.role is not Role.ADMIN:
            return None  # the handler refuses a crypto user anyway
        required = (await quorum_store(call).settings()).value(rule.service)
        if required <= 1:
            return None
        return _Request(rule.service, required, rule.service, name, bound_arguments(rule, args))
    found = await _key_object(call, rule, args)
    if found is None:
        return None
    obj, active = found
    # The fast path of every cryptographic call: a key without quorum values costs one attribute lookup.
    value = int(obj.attributes.get(USE if rule.service == KEY_USAGE else MANAGE, 0) or 0)
    if rule.sharing is not None:
        value = max(value, int(obj.attributes.get(USE, 0) or 0))
    if value <= 1 or not _may_act(call, rule, obj):
        return None
    if rule.sharing is not None:
        value = await _sharing_value(obj, rule.sharing, args)
        if value <= 1:
            return None
    bound = bound_arguments(rule, args)
    approvers = {obj.owner: obj.owner_id, **{n: obj.share_ids.get(n) for n in obj.shared}}
    if rule.service == KEY_USAGE:
        return _Request(KEY_USAGE, value, key_subject(obj.handle), "key-usage", {"key": obj.handle}, obj, approvers,
                        active)
    return _Request(KEY_MANAGEMENT, value, key_subject(obj.handle), name, bound, obj, approvers)


async def _sharing_value(obj: StoredObject, sharing: str, args: Any) -> int:
    """Share: no approval while the key still has fewer users than its values (naming its approvers).
    Unshare: never below its values (the key could not be approved any more)."""
    needed = max(int(obj.attributes.get(MANAGE, 0) or 0), int(obj.attributes.get(USE, 0) or 0))
    associated = 1 + len(obj.shared)
    if sharing == "share":
        return 0 if associated < needed else int(obj.attributes.get(MANAGE, 0) or 0)
    username = getattr(args, "username", "")
    if needed > 1 and isinstance(username, str) and username.lower() in obj.shared and associated - 1 < needed:
        raise HsmError(f"key {obj.handle} needs {needed} approvers and has {associated} users: unsharing "
                       f"{username.lower()!r} would leave it impossible to approve", CKR.ACTION_PROHIBITED)
    return int(obj.attributes.get(MANAGE, 0) or 0)


async def _key_object(call: Call, rule: QuorumRule, args: Any) -> tuple[StoredObject, ActiveOperation | None] | None:
    """The key the request names, and the multi-part operation a step continues."""
    login = call.login
    p11 = call.services.sessions.p11
    active: ActiveOperation | None = None
    if rule.session_kind is not None:
        try:
            session = p11.get(int(args.session), login.token)
        except HsmError:
            return None
        active = session.operations.get(rule.session_kind)
        if active is None or active.key_handle is None or active in _SPENT:
            return None
        handle: Any = active.key_handle
    else:
        handle = getattr(args, rule.key or "", None)
    if not isinstance(handle, int):
        return None
    try:
        obj = await call.services.keyring.require_objects().get(handle)
    except ObjectHandleInvalid:
        return None
    return obj, active


def _may_act(call: Call, rule: QuorumRule, obj: StoredObject) -> bool:
    """May the caller use (key usage) or manage the key? If not, the handler gives its own refusal (and a caller
    who may not see the key learns nothing of its quorum)."""
    login = call.login
    p11 = call.services.sessions.p11
    actor = Actor(login.username, login.user_id, login.role is Role.ADMIN, lambda h: p11.belongs(h, login.token))
    return may(obj, actor, Access.USE if rule.service == KEY_USAGE else Access.OWN)


async def _check_key_values(call: Call, args: Any, names: tuple[str, ...]) -> None:
    """A new key's quorum values: 0 to 8, and never more than the crypto users who could approve it."""
    limit: int | None = None
    for name in names:
        raw = getattr(args, name, None)
        if not raw:
            continue
        template = coerce_template(raw)
        for cka in (MANAGE, USE):
            value = template.get(cka)
            if value is None or value <= 1:
                continue
            if value > MAX_VALUE:
                raise AttributeValueInvalid(f"CKA_{CKA(cka).name} is a quorum value: 0 (none) to {MAX_VALUE}")
            if limit is None:
                limit = await _possible_key_approvers(call)
            if value > limit:
                raise AttributeValueInvalid(
                    f"CKA_{CKA(cka).name} {value} is more than the {limit} crypto user(s) with a registered "
                    "approval key who could approve it (register keys first: strongroom user change-quorum "
                    "token-sign register)")


async def _possible_key_approvers(call: Call) -> int:
    users = {u.name: u for u in await call.services.keyring.require_users().list()}
    count = 0
    for key in await quorum_store(call).all_registered():
        user = users.get(key.username)
        if key.quorum and user is not None and user.uid == key.uid and user.role is Role.CRYPTO_USER:
            count += 1
    return count


# --- approvals ------------------------------------------------------------------------------------


async def _approve_and_spend(call: Call, rule: QuorumRule, request: _Request, approval: bytes | None,
                             details: dict[str, Any]) -> None:
    store = quorum_store(call)
    login = call.login
    for _ in range(10):
        if approval is not None:
            token = await _explicit(store, approval)
        else:
            token = await _implicit(call, store, request, rule)
        details["token"] = token.hex
        _matches(token, request, rule, login.user_id, store.clock())
        valid = await valid_approvals(call, store, token, request.service, request.approvers)
        details["approvers"] = [a for a, _scheme in valid]
        if len(valid) < request.required:
            have = ", ".join(a for a, _ in valid) or "none"
            raise QuorumError(f"quorum not met: {request.operation} needs {request.required} approvals "
                              f"({request.service} service); token {token.hex[:16]} has {len(valid)} ({have})")
        if rule.check_only:
            return
        try:
            await _spend(call, store, token, details)
        except ConflictError:
            continue  # another request spent it meanwhile: look again
        if request.active is not None:
            _SPENT.add(request.active)
        return
    raise HsmError("the approval keeps changing under this request; try again", CKR.FUNCTION_FAILED)


async def _explicit(store: QuorumStore, approval: bytes) -> Token:
    claims = Claims.decode(approval)
    if claims.cluster != store.cluster_id:
        raise OtherCluster(f"this token was issued by cluster {claims.cluster}, not by this one "
                           f"({store.cluster_id}): a token is good only in the cluster that made it")
    token = await store.find(approvals.token_of(approval))
    if token is None:
        raise QuorumError(f"no token {approvals.token_of(approval).hex()[:16]} in this cluster "
                          "(deleted, or purged after it expired)")
    return token


async def _implicit(call: Call, store: QuorumStore, request: _Request, rule: QuorumRule) -> Token:
    """The requester's own token for exactly this request: a complete one first."""
    now = store.clock()
    login = call.login
    mine = [t for t in await store.tokens(request.subject)
            if t.claims.requester_uid == login.user_id and t.state != USED and not t.expired(now)
            and _fits(t, request, rule)]
    best: Token | None = None
    for token in mine:
        valid = await valid_approvals(call, store, token, request.service, request.approvers)
        if len(valid) >= request.required:
            return token
        best = best or token
    if best is not None:
        return best
    what = (f"{rule.kind} with key {request.key.handle}" if request.service == KEY_USAGE and request.key is not None
            else request.operation)
    raise QuorumError(f"quorum approval required: {what} needs {request.required} approvals ({request.service} "
                      f"service). Get a token (strongroom quorum token-sign generate --service {request.service} "
                      "...), have approvers sign it, then run the request again (with --approval FILE)")


def _fits(token: Token, request: _Request, rule: QuorumRule) -> bool:
    c = token.claims
    if c.service != request.service or c.subject != request.subject:
        return False
    if request.service == KEY_USAGE:
        return rule.kind in (c.arguments.get("uses") or [])
    return c.operation == request.operation and c.binding == binding(request.operation, request.arguments)


def _matches(token: Token, request: _Request, rule: QuorumRule, requester_uid: str | None, now: float) -> None:
    """Refuse, with the reason, a token that is not a live approval of this very request by this requester."""
    c, short = token.claims, token.hex[:16]
    if c.service != request.service:
        raise QuorumError(f"token {short} is for the {c.service} service; this request needs a {request.service} "
                          "token")
    if token.state == USED:
        spent = "its uses are spent" if c.service == KEY_USAGE and c.uses != 1 else "it was used already"
        raise QuorumError(f"token {short} is spent: {spent} (a token approves one request)")
    if token.expired(now):
        raise QuorumError(f"token {short} expired {int(now - token.deadline())} s ago")
    if c.requester_uid != requester_uid:
        raise QuorumError(f"token {short} was generated by {c.requester}; only its requester may use it")
    if request.service == KEY_USAGE:
        if c.subject != request.subject:
            raise QuorumError(f"token {short} approves the use of another key ({c.arguments.get('key')}), "
                              f"not key {request.arguments.get('key')}")
        if rule.kind not in (c.arguments.get("uses") or []):
            raise QuorumError(f"token {short} approves {', '.join(c.arguments.get('uses') or [])} with this key, "
                              f"not {rule.kind}")
        return
    if c.operation != request.operation or c.binding != binding(request.operation, request.arguments):
        raise QuorumError(f"token {short} approves {c.operation} {c.arguments}, not this request "
                          f"({request.operation} with other arguments)")


async def valid_approvals(call: Call, store: QuorumStore, token: Token, service: str,
                          key_approvers: dict[str, str | None]) -> list[tuple[str, str]]:
    """The approvals of ``token`` that still count: (username, scheme) of distinct accounts that may approve
    this service, whose registered key still verifies the signature."""
    users = call.services.keyring.require_users()
    counted: list[tuple[str, str]] = []
    seen: set[str] = set()
    for approval in token.approvals:
        if approval.uid in seen:
            continue
        user = await users.get(approval.username)
        if user is None or user.uid != approval.uid or may_approve(user, service, key_approvers) is not None:
            continue
        key = await store.registered(user.name, user.uid)
        if key is None or not key.quorum:
            continue
        try:
            scheme = store_module.verify_with(key, token.digest, approval.signature)
        except HsmError:
            continue
        seen.add(approval.uid)
        counted.append((user.name, scheme))
    return counted


def may_approve(user: User, service: str, key_approvers: dict[str, str | None]) -> str | None:
    """Why ``user`` may not approve a token of ``service`` (None: it may)."""
    if service in ADMIN_SERVICES:
        if user.role is not Role.ADMIN:
            return f"{user.role.value} {user.name} may not approve {service}-service tokens: only admins approve them"
        return None
    if user.name not in key_approvers:
        return (f"user {user.name} may not approve: only the key's owner and the users it is shared with approve "
                f"its {service} tokens")
    uid = key_approvers[user.name]
    if uid is not None and uid != user.uid:
        return f"user {user.name} is another account than the one the key names"
    return None


async def _spend(call: Call, store: QuorumStore, token: Token, details: dict[str, Any]) -> None:
    """Spend one use of ``token`` (a conditional write: two requests never spend the same use)."""
    now = store.clock()
    if token.uses_left is None:  # a key-usage window with no count: nothing to write
        await call.services.audit.record("quorum.token.use", actor=call.actor, details=dict(details, uses_left=None))
        return
    token.uses_left -= 1
    if token.uses_left <= 0:
        token.state, token.used_at = USED, now
    if token.claims.service == KEY_USAGE and token.usable_until is None:
        token.usable_until = now + (token.claims.window or max(0, token.claims.expires - now))
    used = dict(details, uses_left=token.uses_left)
    async with audited(call, "quorum.token.use", used):
        await store.write(token, witness(call, "quorum.token.use", used))


# --- the second login factor ------------------------------------------------------------------------


async def check_login_factor(call: Call, user: User, factor: list[Any] | None) -> bool:
    """session.login's second step: nothing for a user without MFA; otherwise a signature over this node's
    fresh challenge (``quorum.mfa_challenge``) with the user's registered key. True when one was checked."""
    services = call.services
    store = quorum_store(call)
    key = await store.registered(user.name, user.uid)
    if key is None or not key.mfa:
        return False
    node = services.config.node_id
    if not factor:
        raise HsmError(f"user {user.name!r} logs in with multi-factor authentication: ask for a challenge "
                       "(strongroom login ... mfa-token-sign --token FILE, or the SDK's mfa_challenge), sign it "
                       "with the registered key and log in with the signed file. PKCS#11 applications cannot "
                       "do this: they log in as service users without MFA", CKR.FUNCTION_REJECTED)
    if not isinstance(factor, list) or len(factor) > approvals.MAX_TOKENS_PER_FILE:
        raise ArgumentsBad("mfa is a list of {token, signature} entries")
    entries = []
    for item in factor:
        if (not isinstance(item, dict) or not isinstance(item.get("token"), bytes)
                or not isinstance(item.get("signature"), bytes)):
            raise ArgumentsBad("each mfa entry is {token: 32 bytes, signature: bytes}")
        entries.append((item["token"], item["signature"]))
    now = time.time()
    for digest, signature in entries:
        pending = await store.challenge(digest)
        if pending is None or pending.node != node:
            continue
        challenge = await store.take_challenge(digest)
        if challenge is None:
            break
        if challenge.uid != user.uid:
            raise HsmError("the MFA challenge was issued to another user", CKR.FUNCTION_REJECTED)
        if challenge.expires <= now:
            raise HsmError(f"the MFA challenge expired {int(now - challenge.expires)} s ago: ask for a fresh one",
                           CKR.FUNCTION_REJECTED)
        try:
            store_module.verify_with(key, challenge.digest, signature)
        except HsmError:
            raise HsmError("the MFA signature does not verify with the user's registered key",
                           CKR.FUNCTION_REJECTED) from None
        return True
    raise HsmError(f"the signed MFA file holds no unused challenge of node {node}: challenges are single-use "
                   "and expire after a few minutes; ask for a fresh one", CKR.FUNCTION_REJECTED)



# --- approvers who leave ------------------------------------------------------------------------------


async def check_departure(call: Call, user: User) -> None:
    """Refuse to delete ``user`` or remove its approval key when that leaves a quorum no one can meet: an admin
    service whose value the remaining admins with keys cannot reach, or a key whose remaining users with keys
    cannot reach its values (a quorum that could be met before; the cluster or the key would be locked)."""
    store = quorum_store(call)
    departing = await store.registered(user.name, user.uid)
    if departing is None or not departing.quorum:
        return
    accounts = {u.name: u for u in await call.services.keyring.require_users().list()}
    with_keys = {k.username for k in await store.all_registered()
                 if k.quorum and k.username in accounts and accounts[k.username].uid == k.uid}
    if user.role is Role.ADMIN:
        admins = sum(1 for name in with_keys if accounts[name].role is Role.ADMIN)
        settings = await store.settings()
        for service in ADMIN_SERVICES:
            value = settings.value(service)
            if admins - 1 < value <= admins:
                raise HsmError(f"the {service} service needs {value} admin approvals and {admins} admins have an "
                               f"approval key: without {user.name}'s it could never be met (lower the value "
                               "first: quorum token-sign set-quorum-value)", CKR.ACTION_PROHIBITED)
        return
    objects = call.services.keyring.require_objects()
    await objects.sync()
    for obj in objects.tokens.by_handle.values():
        needed = max(int(obj.attributes.get(MANAGE, 0) or 0), int(obj.attributes.get(USE, 0) or 0))
        if needed <= 1 or (user.name != obj.owner and user.name not in obj.shared):
            continue
        able = sum(1 for name in (obj.owner, *obj.shared) if name in with_keys)
        if able - 1 < needed <= able:
            raise HsmError(f"key {obj.handle} needs {needed} approvals and {able} of its users have an approval "
                           f"key: without {user.name}'s it could never be approved again", CKR.ACTION_PROHIBITED)
