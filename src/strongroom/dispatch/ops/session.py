"""``session.*``: login, logout, who-am-I and the context-specific login. Every login attempt is audited.

A refused login never says more than "wrong username or password" to a caller who does not
know the password (see :mod:`strongroom.auth.users`), and the per-source pause of admin logins
counts every failure of the source, so that neither tells which names exist or are admins.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from strongroom.auth.public import GATE
from strongroom.auth.users import WRONG_CREDENTIALS, Role, User
from strongroom.dispatch.call import Call
from strongroom.dispatch.quorum import check_login_factor, quorum_store
from strongroom.dispatch.table import operation
from strongroom.errors import CKR, ActionProhibited, HsmError, OperationNotInitialized, PinIncorrect
from strongroom.objects.access import PUBLIC_NAME
from strongroom.services import policy
from strongroom.store.base import OutcomeUnknownError, UnavailableError

log = logging.getLogger(__name__)

ANY_ROLE = (Role.ADMIN.value, Role.CRYPTO_USER.value)
CRYPTO_USER = (Role.CRYPTO_USER.value,)
#: Every login, the anonymous one of a public PKCS#11 session included.
ANY_LOGIN = (*ANY_ROLE, Role.PUBLIC.value)


@dataclass
class LoginArgs:
    username: str
    password: str
    role: str | None = None
    #: Keep the login after its connection closed (until logout or its idle limit); by default it ends with it.
    keep: bool = False
    #: The second factor of a user with MFA: [{token, signature}] over a challenge of quorum.mfa_challenge.
    mfa: list[Any] | None = None


class _MfaAccounts:
    """The accounts with an MFA key as this worker last read them (name -> uid), read again at every login the
    store answers. While the store cannot be read (etcd without quorum, issue 14 item 4; the password is then
    checked against the record last seen, auth/offline.py) a user not among them logs in without a second
    factor, and one among them is refused (its challenge lives in the store). A worker that has not read them
    since it started refuses every login until the store answers: a login never skips a second factor it
    cannot rule out. An MFA key registered since this worker's last login (on the majority side, while only
    this node is cut off) takes effect here when the store answers again, as a password change does."""

    known: dict[str, str] | None = None


async def _second_factor(call: Call, user: User, factor: list[Any] | None) -> bool:
    """:func:`check_login_factor`, and what to do when the store cannot say whether the user has MFA."""
    try:
        checked = await check_login_factor(call, user, factor)
    except (UnavailableError, OutcomeUnknownError) as down:
        known = _MfaAccounts.known
        if known is not None and known.get(user.name) != user.uid and not factor:
            return False
        raise HsmError(f"the store cannot be read ({down}): whether {user.name!r} logs in with a second factor "
                       "is not known on this node; try again once the store answers", CKR.DEVICE_ERROR) from None
    try:
        keys = await quorum_store(call).all_registered()
    except (UnavailableError, OutcomeUnknownError):
        return checked  # the store went away meanwhile: the accounts last read stay
    _MfaAccounts.known = {k.username: k.uid for k in keys if k.mfa}
    return checked


def _source(call: Call) -> str:
    """Who is trying: the client certificate of the connection (its serial), else its name."""
    serial = getattr(call.peer, "serial", None)
    return f"serial:{serial:x}" if serial is not None else f"peer:{call.peer_name}"


def _paused(call: Call, wait: float) -> HsmError:
    return HsmError(f"too many failed admin logins from this client ({call.peer_name}); try again in {wait:.0f} s",
                    CKR.FUNCTION_FAILED)


@operation("session.login", args=LoginArgs)
async def login(call: Call, args: LoginArgs) -> dict[str, Any]:
    services = call.services
    users = services.keyring.require_users()
    attempted = args.username.lower()[:31]
    source = _source(call)
    throttle = services.sessions.throttle
    try:
        wanted = None if args.role is None else Role.parse(args.role)
        # A paused source gets no admin login. Only what the caller said decides this before the
        # password is checked; an account that turns out to be an admin is refused after the check,
        # so only a caller who knows its password learns it is one.
        wait = throttle.wait_seconds(source)
        if wait > 0 and wanted is Role.ADMIN:
            raise _paused(call, wait)
        user = await users.authenticate(args.username, args.password)
        if wanted is not None and user.role is not wanted:
            # Same answer as a wrong password: a login must not reveal a user's role.
            raise PinIncorrect(WRONG_CREDENTIALS)
        if wait > 0 and user.role is Role.ADMIN:
            raise _paused(call, wait)
        mfa = await _second_factor(call, user, args.mfa)
        session = services.sessions.logins.open(user.name, user.role, call.connection_id, user.uid, keep=args.keep)
    except HsmError as exc:
        details: dict[str, Any] = {"peer": call.peer_name}
        if exc.code in (CKR.PIN_INCORRECT, CKR.PIN_LOCKED):
            pause = throttle.failed(source)
            if pause:
                details["source_paused_seconds"] = pause
                log.warning("failed admin logins from %s (%s) reached the limit (every failed login counts); "
                            "pausing its admin logins %.0f s", call.peer_name, source, pause)
        await services.audit.record("auth.login", actor=attempted, outcome=exc.code.spec_name, details=details)
        raise
    throttle.succeeded(source)
    await services.audit.record("auth.login", actor=user.name,
                                details={"peer": call.peer_name, "role": user.role.value, "kept": args.keep,
                                         **({"mfa": "token-sign"} if mfa else {})})
    return {"session": session.token, "username": user.name, "role": user.role.value}


@operation("session.open_public")
async def open_public(call: Call, _args: None) -> dict[str, Any]:
    """An anonymous login for the PKCS#11 sessions of an application that is not logged in (PKCS#11 v2.40
    §6.7): public objects, public-key operations, digests, random, public session objects. Refused while
    the cluster policy ``public_objects`` is ``hidden``; rate-limited and bounded (:mod:`strongroom.auth.public`).
    Not audited: it authenticates nobody and grants nothing private."""
    services = call.services
    if not (await policy.current(services.keyring.barrier)).public_visible:
        raise ActionProhibited("the cluster policy public_objects is hidden: log in first")
    if not GATE.may_open(_source(call)):
        raise HsmError(f"too many anonymous sessions opened by this client ({call.peer_name}); try again shortly",
                       CKR.FUNCTION_FAILED)
    session = services.sessions.logins.open(PUBLIC_NAME, Role.PUBLIC, call.connection_id, None)
    return {"session": session.token, "username": PUBLIC_NAME, "role": Role.PUBLIC.value}


@operation("session.logout", roles=ANY_LOGIN)
async def logout(call: Call, _args: None) -> dict[str, Any]:
    token = call.login.token
    call.services.sessions.logins.close(token)
    call.services.sessions.end_login(token)
    if call.login.role is Role.PUBLIC:
        GATE.forget(token)
        return {}
    await call.services.audit.record("auth.logout", actor=call.actor)
    return {}


@operation("session.info", roles=ANY_LOGIN)
async def info(call: Call, _args: None) -> dict[str, Any]:
    login = call.login
    return {"username": login.username, "role": login.role.value}


@dataclass
class ContextLoginArgs:
    session: int
    password: str


@operation("session.context_login", args=ContextLoginArgs, roles=CRYPTO_USER)
async def context_login(call: Call, args: ContextLoginArgs) -> dict[str, Any]:
    """C_Login(CKU_CONTEXT_SPECIFIC): the password again, for the operations of this PKCS#11 session
    whose key has CKA_ALWAYS_AUTHENTICATE (PKCS#11 v2.40 §4.9, §5.6). Valid for those operations
    only; checked against the session user's password like a login, counted towards its lockout
    and audited (``auth.context_login``)."""
    services = call.services
    login = call.login
    p11 = services.sessions.p11.get(args.session, login.token)
    waiting = [op for op in p11.operations.values() if op.context_login and not op.authenticated]
    if not waiting:
        # As the spec says of a context-specific login without a context. No password is checked.
        raise OperationNotInitialized("no operation in this session needs a context-specific login")
    username = login.username
    details: dict[str, Any] = {"peer": call.peer_name, "session": args.session,
                               "operations": [{"kind": op.kind, "key": op.key_handle} for op in waiting]}
    try:
        user = await services.keyring.require_users().authenticate(username, args.password)
        if user.uid != login.user_id:
            # The account this session logged in as was deleted; a new one of that name is not it.
            raise PinIncorrect(WRONG_CREDENTIALS)
    except HsmError as exc:
        await services.audit.record("auth.context_login", actor=username, outcome=exc.code.spec_name, details=details)
        raise
    await services.audit.record("auth.context_login", actor=username, details=details)
    for op in waiting:
        op.authenticated = True
    return {}
