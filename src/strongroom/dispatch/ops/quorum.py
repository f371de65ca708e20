"""``quorum.*``: quorum tokens (M of N approvals), approval keys and the MFA second factor.

CloudHSM CLI's ``quorum token-sign generate|list|delete|list-quorum-values|set-quorum-value``, ``user
change-quorum token-sign register``, ``user change-mfa token-sign`` and the challenge of ``login ...
mfa-token-sign``. The records are the cluster's (:mod:`strongroom.services.quorum`); the enforcement is in
the pipeline (:mod:`strongroom.dispatch.quorum`). Every generated, approved, used, expired and deleted token
is audited (``quorum.token.*``), as is every registration and every MFA challenge.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Any

from strongroom.auth.users import WRONG_CREDENTIALS, Role, User, normalize_username
from strongroom.dispatch import table
from strongroom.dispatch.auditing import audited, witness
from strongroom.dispatch.call import Call
from strongroom.dispatch.quorum import (
    MANAGE,
    MFA_OF_OTHERS,
    QUORUM_KEY_OF_OTHERS,
    QUORUM_OPS,
    UNBOUND,
    USE,
    bound_arguments,
    check_departure,
    may_approve,
    quorum_store,
    valid_approvals,
)
from strongroom.dispatch.table import operation
from strongroom.errors import CKR, ActionProhibited, ArgumentsBad, HsmError, ObjectHandleInvalid, PinIncorrect
from strongroom.objects.access import Access, Actor, may
from strongroom.objects.model import StoredObject
from strongroom.pki import approvals
from strongroom.services import registry
from strongroom.services.quorum import (
    ADMIN_SERVICES,
    KEY_MANAGEMENT,
    KEY_SERVICES,
    KEY_USAGE,
    MAX_APPROVALS,
    MAX_TIMEOUT,
    MAX_VALUE,
    MIN_TIMEOUT,
    PENDING,
    REGISTRATION,
    SERVICES,
    TOKEN_SERVICES,
    USED,
    Approval,
    Claims,
    OtherCluster,
    QuorumError,
    QuorumStore,
    Token,
    clamp_uses,
    key_handle,
    key_subject,
    load_key,
    verify_with,
)
from strongroom.store.base import ConflictError

ADMIN = (Role.ADMIN.value,)
ANY_ROLE = (Role.ADMIN.value, Role.CRYPTO_USER.value)
#: What a key-usage token may approve.
USES = ("sign", "decrypt", "encrypt", "verify", "derive", "decapsulate")


def _short(token: Token) -> str:
    return token.hex[:16]


async def _audit_purged(call: Call, purged: list[Token]) -> None:
    """Audit tokens removed to make room or after their keeping time: an expiry the sweep had not recorded yet
    (``quorum.token.expire``), else the removal of a used or expired token (``quorum.token.purge``)."""
    for token in purged:
        event = "quorum.token.expire" if token.state == PENDING else "quorum.token.purge"
        await call.services.audit.record(event, actor=call.actor, details=dict(token.audit_details(), purged=True))


async def _key(call: Call, handle: int, access: Access) -> StoredObject:
    login = call.login
    objects = call.services.keyring.require_objects()
    await objects.sync()
    p11 = call.services.sessions.p11
    try:
        obj = await objects.get(handle)
    except ObjectHandleInvalid:
        obj = None
    actor = Actor(login.username, login.user_id, login.role is Role.ADMIN, lambda h: p11.belongs(h, login.token))
    if obj is None or not may(obj, actor, Access.SEE):
        raise HsmError(f"no key with handle {handle}", CKR.KEY_HANDLE_INVALID)
    if not obj.token:
        raise ArgumentsBad("a quorum token names a token key (a session key lives on one node only)")
    if not may(obj, actor, access):
        who = "the owner" if access is Access.OWN else "its owner or a user it is shared with"
        raise ActionProhibited(f"only {who} may ask approvals for key {handle}")
    return obj


def _key_approvers(obj: StoredObject) -> dict[str, str | None]:
    return {obj.owner: obj.owner_id, **{name: obj.share_ids.get(name) for name in obj.shared}}


async def _required(call: Call, store: QuorumStore, token: Token) -> tuple[int, dict[str, str | None]]:
    """How many approvals ``token`` needs now, and (key services) who may give them."""
    service = token.claims.service
    if service == REGISTRATION:
        return 1, {}
    if service in ADMIN_SERVICES:
        return (await store.settings()).value(service), {}
    try:
        obj = await call.services.keyring.require_objects().get(key_handle(token.claims.subject))
    except (ObjectHandleInvalid, ValueError):
        return MAX_VALUE + 1, {}  # the key is gone: nothing can approve
    value = int(obj.attributes.get(USE if service == KEY_USAGE else MANAGE, 0) or 0)
    return max(1, value), _key_approvers(obj)


# --- generate ------------------------------------------------------------------------------------


@dataclass
class GenerateArgs:
    service: str
    #: The operation approved (admin and key-management services), e.g. "user.delete", and its arguments.
    operation: str | None = None
    arguments: dict[str, Any] | None = None
    #: Key usage: the key, what it may be used for, the window once approved (seconds) and how many uses.
    key: int | None = None
    uses: list[str] | None = None
    window: int | None = None
    count: int = 1
    #: Seconds to collect the approvals (at most the service's timeout).
    timeout: int | None = None


def _bound_arguments(name: str, raw: dict[str, Any], key: int | None = None) -> tuple[table.OperationSpec,
                                                                                     dict[str, Any]]:
    """The arguments a request of ``name`` would bind: parsed as the operation parses them (so the binding is
    the one the request will compute), fields never bound filled with placeholders."""
    spec = table.lookup(name)
    if spec.quorum is None or spec.quorum.service is None:
        raise ArgumentsBad(f"{name} needs no approval")
    given = dict(raw)
    if key is not None and spec.quorum.key is not None:
        given.setdefault(spec.quorum.key, key)
    if spec.args is not None:
        for field in dataclasses.fields(spec.args):
            no_default = field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING
            if field.name in (*UNBOUND, *spec.quorum.unbound) and field.name not in given and no_default:
                given[field.name] = ""
    return spec, bound_arguments(spec.quorum, table.parse_args(spec.args, given))


@operation("quorum.token_generate", args=GenerateArgs, roles=ANY_ROLE)
async def token_generate(call: Call, args: GenerateArgs) -> dict[str, Any]:
    """A pending approval in the cluster (CloudHSM's ``quorum token-sign generate``), bound to one request."""
    login = call.login
    if args.service not in TOKEN_SERVICES:
        raise ArgumentsBad(f"service is one of {', '.join(TOKEN_SERVICES)}")
    store = quorum_store(call)
    settings = await store.settings()
    timeout = settings.timeout(args.service)
    if args.timeout is not None:
        if not 1 <= args.timeout <= timeout:
            raise ArgumentsBad(f"timeout is 1 to {timeout} s (the {args.service} service's; quorum set-timeout)")
        timeout = args.timeout
    details: dict[str, Any] = {"service": args.service}
    async with audited(call, "quorum.token.generate", details):
        window, uses, subject, operation_name = 0, 1, args.service, args.service
        arguments: dict[str, Any] = {}
        if args.service == REGISTRATION:
            operation_name = "registration"
        elif args.service in ADMIN_SERVICES:
            if login.role is not Role.ADMIN:
                raise ActionProhibited(f"only admins ask for {args.service}-service approvals")
            spec, arguments = _bound_arguments(args.operation or "", args.arguments or {})
            assert spec.quorum is not None
            if spec.quorum.service != args.service:
                raise ArgumentsBad(f"{spec.name} is approved under the {spec.quorum.service} service, "
                                   f"not {args.service}")
            operation_name = spec.name
        elif args.service == KEY_MANAGEMENT:
            spec, arguments = _bound_arguments(args.operation or "", args.arguments or {}, args.key)
            assert spec.quorum is not None
            if spec.quorum.service != KEY_MANAGEMENT or spec.quorum.key is None:
                raise ArgumentsBad(f"{spec.name} is not a key-management operation")
            handle = arguments.get(spec.quorum.key)
            if not isinstance(handle, int):
                raise ArgumentsBad(f"{spec.name} names its key in {spec.quorum.key!r}")
            await _key(call, handle, Access.OWN)
            subject, operation_name = key_subject(handle), spec.name
        else:  # key usage
            if args.key is None:
                raise ArgumentsBad("a key-usage token names its key (key)")
            kinds = sorted(set(args.uses or ["sign"]))
            if not kinds or any(kind not in USES for kind in kinds):
                raise ArgumentsBad(f"uses is a list of {', '.join(USES)}")
            window, uses = clamp_uses(args.window if args.window is not None else timeout, args.count)
            await _key(call, args.key, Access.USE)
            subject, operation_name = key_subject(args.key), "key-usage"
            arguments = {"key": args.key, "uses": kinds}
        claims = store.new_claims(service=args.service, operation=operation_name, arguments=arguments,
                                  subject=subject, requester=login.username, requester_uid=login.user_id or "",
                                  timeout=timeout, window=window, uses=uses)
        if args.service == KEY_USAGE:
            claims = dataclasses.replace(claims, arguments={**claims.arguments, "key": args.key,
                                                            "uses": arguments["uses"]})
        details.update(operation=operation_name, arguments=claims.arguments)
        token, purged = await store.create(claims, witness(call, "quorum.token.generate", details))
        details["token"] = token.hex
    await _audit_purged(call, purged)
    required, _ = await _required(call, store, token)
    return {"file": token.file().to_json(), **token.public(store.clock(), required)}


# --- approve -------------------------------------------------------------------------------------


@dataclass
class ApproveArgs:
    #: The token's approval data (from the token file).
    token: bytes
    #: The approver (not necessarily the caller: a requester may upload the signatures it collected).
    username: str
    signature: bytes


async def _token_for(store: QuorumStore, data: bytes) -> Token:
    claims = Claims.decode(data)
    if claims.cluster != store.cluster_id:
        raise OtherCluster(f"this token was issued by cluster {claims.cluster}, not by this one ({store.cluster_id})")
    token = await store.find(approvals.token_of(data))
    if token is None:
        raise QuorumError(f"no token {approvals.token_of(data).hex()[:16]} in this cluster (deleted, or purged "
                          "after it expired)")
    return token


@operation("quorum.token_approve", args=ApproveArgs, roles=ANY_ROLE)
async def token_approve(call: Call, args: ApproveArgs) -> dict[str, Any]:
    """Record an approver's signature over a token, checked now against the approver's registered key."""
    store = quorum_store(call)
    username = normalize_username(args.username)
    details: dict[str, Any] = {"approver": username}
    async with audited(call, "quorum.token.approve", details):
        for _ in range(10):
            token = await _token_for(store, args.token)
            details.update(token=token.hex, service=token.claims.service, operation=token.claims.operation)
            if token.claims.service == REGISTRATION:
                raise ArgumentsBad("a registration token is not approved: sign it and register your key with it")
            now = store.clock()
            if token.state == USED:
                raise QuorumError(f"token {_short(token)} is spent already")
            if token.expired(now):
                raise QuorumError(f"token {_short(token)} expired {int(now - token.deadline())} s ago")
            user = await call.services.keyring.require_users().get(username)
            if user is None:
                raise ActionProhibited(f"no user {username!r} may approve: there is no such user")
            required, key_approvers = await _required(call, store, token)
            why = may_approve(user, token.claims.service, key_approvers)
            if why is not None:
                raise ActionProhibited(why)
            key = await store.registered(user.name, user.uid)
            if key is None or not key.quorum:
                raise ActionProhibited(f"user {username!r} has no registered approval key (user change-quorum "
                                       "token-sign register)")
            try:
                scheme = verify_with(key, token.digest, args.signature)
            except HsmError as exc:
                raise HsmError(f"the signature of {username!r} over token {_short(token)} does not verify with "
                               f"their registered {key.algorithm} key (tampered, or made with another key)",
                               exc.code) from None
            others = [a for a in token.approvals if a.uid != user.uid]
            if len(others) >= MAX_APPROVALS:
                raise HsmError(f"token {_short(token)} already holds {MAX_APPROVALS} approvals", CKR.DEVICE_MEMORY)
            token.approvals = [*others, Approval(user.name, user.uid, args.signature, scheme, now)]
            if token.usable_until is None and len(token.approvals) >= required:
                # Complete: usable for the key-usage window, or (CloudHSM's approved timeout) the cluster's
                # time for an approved token to be used, whatever was left of the time to collect approvals.
                if token.claims.service == KEY_USAGE:
                    if token.claims.window:
                        token.usable_until = now + token.claims.window
                else:
                    token.usable_until = now + (await store.settings()).approved
            details["scheme"] = scheme
            try:
                await store.write(token, witness(call, "quorum.token.approve", details))
            except ConflictError:
                continue
            valid = await valid_approvals(call, store, token, token.claims.service, key_approvers)
            return {**token.public(now, required), "valid-approvals": len(valid)}
        raise HsmError("the token keeps changing; try again", CKR.FUNCTION_FAILED)


# --- list, get, delete ---------------------------------------------------------------------------


def _visible(call: Call, token: Token, key_approvers: dict[str, str | None]) -> bool:
    login = call.login
    if token.claims.requester_uid == login.user_id:
        return True
    if token.claims.service in ADMIN_SERVICES:
        return login.role is Role.ADMIN
    if token.claims.service in KEY_SERVICES:
        return key_approvers.get(login.username, "absent") in (login.user_id, None)
    return False


@operation("quorum.token_list", roles=ANY_ROLE)
async def token_list(call: Call, _args: None) -> dict[str, Any]:
    """The tokens the caller asked for or may approve (CloudHSM's ``quorum token-sign list``)."""
    store = quorum_store(call)
    purged = await store.purge()
    await _audit_purged(call, purged)
    now = store.clock()
    rows = []
    for token in await store.tokens():
        required, key_approvers = await _required(call, store, token)
        if _visible(call, token, key_approvers):
            row = token.public(now, required)
            row["valid-approvals"] = len(await valid_approvals(call, store, token, token.claims.service,
                                                               key_approvers))
            rows.append(row)
    return {"tokens": rows}


@dataclass
class TokenIdArgs:
    token_id: str


async def _by_id(call: Call, store: QuorumStore, token_id: str) -> Token:
    try:
        digest = bytes.fromhex(token_id)
    except ValueError:
        raise ArgumentsBad("token_id is the token's SHA-256 in hex") from None
    token = await store.find(digest) if len(digest) == 32 else None
    if token is None:
        raise QuorumError(f"no token {token_id[:16]} in this cluster")
    _required_approvers = (await _required(call, store, token))[1]
    if not _visible(call, token, _required_approvers):
        raise QuorumError(f"no token {token_id[:16]} in this cluster")
    return token


@operation("quorum.token_get", args=TokenIdArgs, roles=ANY_ROLE)
async def token_get(call: Call, args: TokenIdArgs) -> dict[str, Any]:
    """One token and its file (an approver fetches it here to sign it from any host)."""
    store = quorum_store(call)
    token = await _by_id(call, store, args.token_id)
    required, _ = await _required(call, store, token)
    return {"file": token.file().to_json(), **token.public(store.clock(), required)}


@dataclass
class DeleteArgs:
    token_id: str | None = None
    #: CloudHSM's ``--scope``: ``user`` (the caller's tokens) or ``all`` (admins: every admin-service token too).
    scope: str | None = None


@operation("quorum.token_delete", args=DeleteArgs, roles=ANY_ROLE)
async def token_delete(call: Call, args: DeleteArgs) -> dict[str, Any]:
    login = call.login
    store = quorum_store(call)
    if (args.token_id is None) == (args.scope is None):
        raise ArgumentsBad("give token_id, or scope user|all")
    if args.token_id is not None:
        doomed = [await _by_id(call, store, args.token_id)]
    else:
        if args.scope not in ("user", "all"):
            raise ArgumentsBad("scope is user or all")
        if args.scope == "all" and login.role is not Role.ADMIN:
            raise ActionProhibited("only admins delete every token (scope all)")
        doomed = [t for t in await store.tokens()
                  if t.claims.requester_uid == login.user_id
                  or (args.scope == "all" and t.claims.service in ADMIN_SERVICES)]
    for token in doomed:
        if token.claims.requester_uid != login.user_id and not (
                login.role is Role.ADMIN and token.claims.service in ADMIN_SERVICES):
            raise ActionProhibited(f"token {_short(token)} is {token.claims.requester}'s: only its requester "
                                   "(or an admin, for admin services) deletes it")
    deleted = []
    for token in doomed:
        details = {"token": token.hex, "service": token.claims.service, "operation": token.claims.operation,
                   "requester": token.claims.requester}
        async with audited(call, "quorum.token.delete", details):
            try:
                await store.remove(token, witness(call, "quorum.token.delete", details))
            except ConflictError:
                raise HsmError(f"token {_short(token)} changed meanwhile; try again", CKR.FUNCTION_FAILED) from None
        deleted.append(token.hex)
    return {"deleted": deleted}


# --- values and timeouts -------------------------------------------------------------------------


@operation("quorum.values")
async def values(call: Call, _args: None) -> dict[str, Any]:
    """CloudHSM's ``list-quorum-values`` (no login, as there), with the token timeouts."""
    settings = await quorum_store(call).settings()
    return {**{s: settings.value(s) for s in ADMIN_SERVICES},
            "timeouts": {s: settings.timeout(s) for s in (*SERVICES, REGISTRATION)}, "approved": settings.approved}


async def _admin_approvers(call: Call) -> int:
    store = quorum_store(call)
    users = {u.name: u for u in await call.services.keyring.require_users().list()}
    count = 0
    for key in await store.all_registered():
        user = users.get(key.username)
        if key.quorum and user is not None and user.uid == key.uid and user.role is Role.ADMIN:
            count += 1
    return count


@dataclass
class SetValueArgs:
    service: str
    value: int


@operation("quorum.set_value", args=SetValueArgs, roles=ADMIN, quorum=QUORUM_OPS)
async def set_value(call: Call, args: SetValueArgs) -> dict[str, Any]:
    """Set an admin service's quorum value: 1 (none) or 2 to 8, and never more than the admins with a
    registered approval key (the cluster could not be administered any more)."""
    if args.service not in ADMIN_SERVICES:
        raise ArgumentsBad(f"service is one of {', '.join(ADMIN_SERVICES)} (a key's values are set when the key is "
                           "made)")
    if not 1 <= args.value <= MAX_VALUE:
        raise ArgumentsBad(f"a quorum value is 1 (no quorum) to {MAX_VALUE}")
    details: dict[str, Any] = {"service": args.service, "value": args.value}
    async with audited(call, "quorum.set_value", details):
        approvers = await _admin_approvers(call)
        if args.value > 1 and args.value > approvers:
            raise ActionProhibited(f"only {approvers} admin(s) have a registered approval key: a quorum of "
                                   f"{args.value} could never be met")
        store = quorum_store(call)

        def change(settings: Any) -> None:
            details["previous"] = settings.value(args.service)
            settings.values[args.service] = args.value

        await store.change_settings(change, witness(call, "quorum.set_value", details))
    return {"service": args.service, "value": args.value}


@dataclass
class SetTimeoutArgs:
    #: One service's time to collect approvals ...
    service: str | None = None
    seconds: int | None = None
    #: ... or CloudHSM's: every service's time to collect approvals, and the time to use an approved token.
    generated: int | None = None
    approved: int | None = None


def _seconds(value: int | None, what: str) -> None:
    if value is not None and not MIN_TIMEOUT <= value <= MAX_TIMEOUT:
        raise ArgumentsBad(f"{what} is {MIN_TIMEOUT} to {MAX_TIMEOUT} seconds")


@operation("quorum.set_timeout", args=SetTimeoutArgs, roles=ADMIN, quorum=QUORUM_OPS)
async def set_timeout(call: Call, args: SetTimeoutArgs) -> dict[str, Any]:
    """How long a token may wait for its approvals (per service, or ``generated``: every service) and how long an
    approved token stays usable (``approved``), as CloudHSM's ``quorum token-sign set-timeout``."""
    if (args.service is None) != (args.seconds is None):
        raise ArgumentsBad("give service and seconds together")
    if args.service is None and args.generated is None and args.approved is None:
        raise ArgumentsBad("give service and seconds, generated, or approved")
    if args.service is not None and args.service not in TOKEN_SERVICES:
        raise ArgumentsBad(f"service is one of {', '.join(TOKEN_SERVICES)}")
    _seconds(args.seconds, "a token timeout")
    _seconds(args.generated, "generated")
    _seconds(args.approved, "approved")
    details: dict[str, Any] = {k: v for k, v in dataclasses.asdict(args).items() if v is not None}
    async with audited(call, "quorum.set_timeout", details):

        def change(settings: Any) -> None:
            details["previous"] = {"timeouts": dict(settings.timeouts), "approved": settings.approved}
            if args.generated is not None:
                settings.timeouts.update(dict.fromkeys(TOKEN_SERVICES, args.generated))
            if args.service is not None and args.seconds is not None:
                settings.timeouts[args.service] = args.seconds
            if args.approved is not None:
                settings.approved = args.approved

        settings = await quorum_store(call).change_settings(change, witness(call, "quorum.set_timeout", details))
    return {"timeouts": {s: settings.timeout(s) for s in TOKEN_SERVICES}, "approved": settings.approved}


# --- registration ----------------------------------------------------------------------------------


async def _registration(call: Call, store: QuorumStore, data: bytes, signature: bytes, key_pem: str | None,
                        registered_pem: str | None) -> tuple[Token, Any]:
    """Check a signed registration token of the caller: the key (given, or the one registered) signed it."""
    token = await _token_for(store, data)
    if token.claims.service != REGISTRATION:
        raise ArgumentsBad(f"token {_short(token)} is a {token.claims.service}-service token, not a registration "
                           "token (quorum token-sign generate --service registration)")
    now = store.clock()
    if token.state == USED:
        raise QuorumError(f"registration token {_short(token)} was used already")
    if token.expired(now):
        raise QuorumError(f"registration token {_short(token)} expired {int(now - token.deadline())} s ago")
    if token.claims.requester_uid != call.login.user_id:
        raise QuorumError(f"registration token {_short(token)} was generated by {token.claims.requester}")
    pem = key_pem or registered_pem
    if pem is None:
        raise ArgumentsBad("give the public key (PEM) that signed the token")
    public = load_key(pem)
    try:
        verify_with(public, token.digest, signature)
    except HsmError as exc:
        raise HsmError("the registration token's signature does not verify with that public key: sign the "
                       "token's 'unsigned' bytes with the matching private key", exc.code) from None
    return token, public


async def _spend_registration(store: QuorumStore, token: Token) -> None:
    token.state, token.used_at, token.uses_left = USED, store.clock(), 0
    try:
        await store.write(token)
    except ConflictError:
        raise QuorumError(f"registration token {_short(token)} was used meanwhile") from None


@dataclass
class RegisterArgs:
    public_key: str | None = None
    registration: bytes | None = None
    signature: bytes | None = None
    deregister: bool = False
    #: Another user's key (admins, under the user service's quorum); None: the caller's own.
    username: str | None = None


@operation("quorum.register", args=RegisterArgs, roles=ANY_ROLE, quorum=QUORUM_KEY_OF_OTHERS)
async def register(call: Call, args: RegisterArgs) -> dict[str, Any]:
    """``user change-quorum token-sign register``: a user registers its approval key (RSA-2048+, ECDSA
    P-256/P-384, Ed25519), proving it holds the private key by signing a registration token. An admin may
    register (the user signed the admin's registration token) or remove another user's key: that is a
    change-quorum of another user, under the user service's quorum. A removal never leaves a quorum no one
    can meet (:func:`check_departure`)."""
    login = call.login
    name = login.username if args.username is None else normalize_username(args.username)
    if name != login.username and login.role is not Role.ADMIN:
        raise ActionProhibited("a crypto user changes only its own approval key")
    target = await call.services.keyring.require_users().require(name)
    store = quorum_store(call)
    current = await store.registered(target.name, target.uid)
    yours = "your" if name == login.username else f"{name}'s"
    details: dict[str, Any] = {"username": name, "deregister": args.deregister}
    async with audited(call, "quorum.register", details):
        if args.deregister:
            await check_departure(call, target)
            saved = await store.save_key(target.name, target.uid, None, quorum=False,
                                         witness=witness(call, "quorum.register", details))
            return {"username": name, **({} if saved is None else saved.status())}
        if args.registration is None or args.signature is None or args.public_key is None:
            raise ArgumentsBad("give public_key, the registration token and its signature")
        token, public = await _registration(call, store, args.registration, args.signature, args.public_key, None)
        if current is not None and current.mfa and current.fingerprint != approvals.fingerprint(public):
            raise ActionProhibited(f"{yours} MFA key is another key and one key serves both (as in CloudHSM): "
                                   "change both with user change-mfa token-sign --change-quorum")
        details.update(token=token.hex, fingerprint=approvals.fingerprint(public),
                       algorithm=approvals.describe_key(public))
        await _spend_registration(store, token)
        saved = await store.save_key(target.name, target.uid, public, quorum=True,
                                     witness=witness(call, "quorum.register", details))
    assert saved is not None
    return {"username": name, **saved.status()}


@dataclass
class MfaRegisterArgs:
    username: str
    public_key: str | None = None
    registration: bytes | None = None
    signature: bytes | None = None
    #: Replace the quorum key too when it differs (CloudHSM's --change-quorum).
    change_quorum: bool = False
    deregister: bool = False


@operation("quorum.mfa_register", args=MfaRegisterArgs, roles=ANY_ROLE, quorum=MFA_OF_OTHERS)
async def mfa_register(call: Call, args: MfaRegisterArgs) -> dict[str, Any]:
    """``user change-mfa token-sign``: a user's second factor (its own; an admin's for another user, with the
    user service's quorum). The key signed a registration token; deregister turns MFA off."""
    login = call.login
    name = normalize_username(args.username)
    if name != login.username and login.role is not Role.ADMIN:
        raise ActionProhibited("a crypto user changes only its own MFA")
    target = await call.services.keyring.require_users().require(name)
    store = quorum_store(call)
    current = await store.registered(target.name, target.uid)
    details: dict[str, Any] = {"username": name, "deregister": args.deregister}
    async with audited(call, "quorum.mfa_register", details):
        if args.deregister:
            saved = await store.save_key(target.name, target.uid, None, mfa=False,
                                         witness=witness(call, "quorum.mfa_register", details))
            return {"username": name, "role": target.role.value, **({} if saved is None else saved.status())}
        if args.registration is None or args.signature is None:
            raise ArgumentsBad("give the registration token and its signature (and the public key)")
        token, public = await _registration(call, store, args.registration, args.signature, args.public_key,
                                            None if current is None else current.public_key_pem)
        changes_quorum_key = (current is not None and current.quorum
                              and current.fingerprint != approvals.fingerprint(public))
        if changes_quorum_key and not args.change_quorum:
            raise ActionProhibited(f"{name} approves quorum tokens with another key and one key serves both (as in "
                                   "CloudHSM): pass change_quorum (--change-quorum) to replace it too")
        details.update(token=token.hex, fingerprint=approvals.fingerprint(public),
                       algorithm=approvals.describe_key(public))
        await _spend_registration(store, token)
        saved = await store.save_key(target.name, target.uid, public, mfa=True,
                                     witness=witness(call, "quorum.mfa_register", details))
    assert saved is not None
    return {"username": name, "role": target.role.value, **saved.status()}


@operation("quorum.users", roles=ANY_ROLE)
async def users(call: Call, _args: None) -> dict[str, Any]:
    """Who has a registered approval key and MFA (``user list``'s ``quorum`` and ``mfa`` columns)."""
    store = quorum_store(call)
    accounts = {u.name: u for u in await call.services.keyring.require_users().list()}
    rows = []
    for key in await store.all_registered():
        user = accounts.get(key.username)
        if user is not None and user.uid == key.uid:
            rows.append({"username": key.username, **key.status()})
    return {"users": rows}


# --- MFA login challenge ----------------------------------------------------------------------------


@dataclass
class ChallengeArgs:
    username: str
    password: str
    role: str | None = None


def _source(call: Call) -> str:
    serial = getattr(call.peer, "serial", None)
    return f"serial:{serial:x}" if serial is not None else f"peer:{call.peer_name}"


@operation("quorum.mfa_challenge", args=ChallengeArgs)
async def mfa_challenge(call: Call, args: ChallengeArgs) -> dict[str, Any]:
    """The first step of an MFA login: the password is checked (and counted, as a login), then one fresh
    challenge per node of the cluster is issued, valid a few minutes and once, to be signed with the
    registered key and handed to session.login (``mfa``)."""
    services = call.services
    throttle = services.sessions.throttle
    source = _source(call)
    attempted = args.username.lower()[:31]
    details: dict[str, Any] = {"peer": call.peer_name}
    try:
        wanted = None if args.role is None else Role.parse(args.role)
        wait = throttle.wait_seconds(source)
        if wait > 0 and wanted is Role.ADMIN:
            raise HsmError(f"too many failed admin logins from this client; try again in {wait:.0f} s",
                           CKR.FUNCTION_FAILED)
        user: User = await services.keyring.require_users().authenticate(args.username, args.password)
        if wanted is not None and user.role is not wanted:
            raise PinIncorrect(WRONG_CREDENTIALS)
        if wait > 0 and user.role is Role.ADMIN:
            raise HsmError(f"too many failed admin logins from this client; try again in {wait:.0f} s",
                           CKR.FUNCTION_FAILED)
        store = quorum_store(call)
        key = await store.registered(user.name, user.uid)
        if key is None or not key.mfa:
            raise ArgumentsBad(f"user {user.name!r} has no MFA: log in with the password alone")
        nodes = {str(n["id"]) for n in await registry.nodes(services.keyring.require_barrier())}
        nodes.add(services.config.node_id)
        challenges = await store.new_challenges(user.name, user.uid, nodes)
    except HsmError as exc:
        if exc.code in (CKR.PIN_INCORRECT, CKR.PIN_LOCKED):
            throttle.failed(source)
        await services.audit.record("auth.mfa_challenge", actor=attempted, outcome=exc.code.spec_name,
                                    details=details)
        raise
    details["nodes"] = sorted(c.node for c in challenges)
    await services.audit.record("auth.mfa_challenge", actor=user.name, details=details)
    entries = [approvals.Challenge(c.digest, None, c.approval_data, c.node) for c in challenges]
    return {"file": approvals.registration_file(entries).to_json(), "expires": min(c.expires for c in challenges),
            "username": user.name, "role": user.role.value, "issued": time.time()}
