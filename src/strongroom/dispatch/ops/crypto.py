"""``crypto.*``: encryption, decryption, signing, verification and digests.

Crypto users, and sessions that are not logged in (role ``public``: digests, and operations with public
keys and with their own public session objects, as :mod:`strongroom.objects.access` rules).

Single-part calls (``crypto.sign`` …) carry everything and keep no state: the fast
path. Multi-part calls (``crypto.sign_init`` / ``_update`` / ``_final``) keep their
state in a PKCS#11 session of the worker that serves the connection. As the spec
says, a failed call ends the operation, and an operation of a kind that is already
active in the session is ``CKR_OPERATION_ACTIVE``.

Every failed step ends its operation here too, wherever the failure is found (PKCS#11 v2.40 §5.2: all
but CKR_BUFFER_TOO_SMALL, which only the agent answers, and a size query). ``crypto.digest_key``
(C_DigestKey) digests a secret key's value into a running digest without the value leaving the node.

A key with CKA_ALWAYS_AUTHENTICATE signs and decrypts only in a multi-part operation whose
init was followed by a context-specific login (``session.context_login``), valid for that one
operation; its init answers ``context_login: true`` so the caller knows. Without the login the
next step fails with CKR_USER_NOT_LOGGED_IN and ends the operation; the single calls refuse
such a key outright (PKCS#11 v2.40 §4.9, §5.6).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from strongroom.auth.users import Role
from strongroom.constants import CKA, CKO
from strongroom.dispatch import quorum as q
from strongroom.dispatch.call import Call
from strongroom.dispatch.ops.key import legacy, usable_key
from strongroom.dispatch.ops.object import check_public_rate, object_for
from strongroom.dispatch.table import operation
from strongroom.errors import CKR, ArgumentsBad, HsmError, OperationActive, UserNotLoggedIn
from strongroom.mechanisms.base import Mechanism, legacy_algorithms, lookup
from strongroom.objects.access import Action
from strongroom.objects.p11sessions import ActiveOperation, P11Session
from strongroom.objects.usage import needs_context_login, refuse_without_context

#: Crypto users, and sessions that are not logged in (what they may use is the access rule's to say).
CRYPTO_USER = (Role.CRYPTO_USER.value, Role.PUBLIC.value)


@dataclass
class OneShotArgs:
    key: int
    mechanism: int
    data: bytes
    params: Any = None


@dataclass
class VerifyArgs:
    key: int
    mechanism: int
    data: bytes
    signature: bytes
    params: Any = None


@dataclass
class DigestArgs:
    mechanism: int
    data: bytes
    params: Any = None


async def _start(call: Call, kind: str, key_handle: int, mechanism_id: int, raw_params: Any,
                 *, single: bool = True) -> tuple[Any, bool]:
    """The mechanism's operation object, and whether it needs a context-specific login first."""
    with legacy_algorithms(await legacy(call)):
        mechanism: Mechanism = lookup(mechanism_id)
        params = mechanism.parse_params(raw_params)
        obj, key = await usable_key(call, key_handle, kind, mechanism_id)
        if single:
            refuse_without_context(obj, kind)
        call.services.health.key_use[obj.handle] += 1
        return getattr(mechanism, kind)(key, params), needs_context_login(obj, kind)


async def _digest_mechanism(call: Call, mechanism_id: int, raw_params: Any) -> Any:
    check_public_rate(call)
    with legacy_algorithms(await legacy(call)):
        mechanism = lookup(mechanism_id)
        return mechanism.digest(mechanism.parse_params(raw_params))


def _cipher_result(operation: Any, data: bytes) -> dict[str, Any]:
    result: dict[str, Any] = {"data": data}
    if getattr(operation, "iv", None) is not None:
        result["iv"] = operation.iv
    return result


@operation("crypto.encrypt", args=OneShotArgs, roles=CRYPTO_USER, quorum=q.uses("encrypt"))
async def encrypt(call: Call, args: OneShotArgs) -> dict[str, Any]:
    cipher, _ = await _start(call, "encrypt", args.key, args.mechanism, args.params)
    return _cipher_result(cipher, cipher.one_shot(args.data))


@operation("crypto.decrypt", args=OneShotArgs, roles=CRYPTO_USER, quorum=q.uses("decrypt"))
async def decrypt(call: Call, args: OneShotArgs) -> dict[str, Any]:
    cipher, _ = await _start(call, "decrypt", args.key, args.mechanism, args.params)
    return {"data": cipher.one_shot(args.data)}


@operation("crypto.sign", args=OneShotArgs, roles=CRYPTO_USER, quorum=q.uses("sign"))
async def sign(call: Call, args: OneShotArgs) -> dict[str, Any]:
    signer, _ = await _start(call, "sign", args.key, args.mechanism, args.params)
    return {"signature": signer.one_shot(args.data)}


@operation("crypto.verify", args=VerifyArgs, roles=CRYPTO_USER, quorum=q.uses("verify"))
async def verify(call: Call, args: VerifyArgs) -> dict[str, Any]:
    verifier, _ = await _start(call, "verify", args.key, args.mechanism, args.params)
    verifier.one_shot(args.data, args.signature)
    return {"valid": True}


@operation("crypto.digest", args=DigestArgs, roles=CRYPTO_USER)
async def digest(call: Call, args: DigestArgs) -> dict[str, Any]:
    return {"digest": (await _digest_mechanism(call, args.mechanism, args.params)).one_shot(args.data)}


# --- multi-part ---------------------------------------------------------------------------------


@dataclass
class InitArgs:
    session: int
    mechanism: int
    key: int | None = None
    params: Any = None


@dataclass
class UpdateArgs:
    session: int
    data: bytes


@dataclass
class FinalArgs:
    session: int


@dataclass
class SingleArgs:
    session: int
    data: bytes
    signature: bytes | None = None


@dataclass
class VerifyFinalArgs:
    session: int
    signature: bytes


@dataclass
class DigestKeyArgs:
    session: int
    key: int


def _p11(call: Call, handle: int) -> P11Session:
    return call.services.sessions.p11.get(handle, call.login.token)


def _authenticated(session: P11Session, active: ActiveOperation) -> None:
    """A step of an operation whose key asks the password each time: the context login came first?"""
    if active.context_login and not active.authenticated:
        session.end(active.kind)  # a failed call ends the operation
        raise UserNotLoggedIn(f"key {active.key_handle} has CKA_ALWAYS_AUTHENTICATE: log in for this "
                              f"{active.kind} (session.context_login) right after its init")


class MultiPart:
    """The steps of one kind of multi-part operation (``encrypt``, ``decrypt``, ``sign``, ``verify``, ``digest``):
    its handlers, registered below under their names (``crypto.sign_init`` …)."""

    __slots__ = ("kind",)

    def __init__(self, kind: str) -> None:
        self.kind = kind

    async def init(self, call: Call, args: InitArgs) -> dict[str, Any]:
        kind = self.kind
        session = _p11(call, args.session)
        if kind in session.operations:
            raise OperationActive(f"a {kind} operation is already active in this session")
        context_login = False
        if kind == "digest":
            state = await _digest_mechanism(call, args.mechanism, args.params)
        else:
            if args.key is None:
                raise ArgumentsBad(f"{kind}_init needs a key")
            state, context_login = await _start(call, kind, args.key, args.mechanism, args.params, single=False)
        session.start(ActiveOperation(kind, state, args.mechanism, args.key, context_login=context_login))
        iv = getattr(state, "iv", None)  # an encryption whose IV the node made (AES-GCM without one)
        reply: dict[str, Any] = {} if iv is None else {"iv": iv}
        if context_login:
            reply["context_login"] = True
        return reply

    async def update(self, call: Call, args: UpdateArgs) -> dict[str, Any]:
        kind = self.kind
        session = _p11(call, args.session)
        active = session.current(kind)
        _authenticated(session, active)
        active.parts += 1
        try:
            check_public_rate(call)
            output = active.operation.update(args.data)
        except BaseException:
            session.end(kind)  # a failed call ends the operation
            raise
        return {"data": output} if kind in ("encrypt", "decrypt") else {}

    async def digest_key(self, call: Call, args: DigestKeyArgs) -> dict[str, Any]:
        """C_DigestKey: the value of a secret key the caller may use goes into the running digest, inside the
        node. Only an extractable key (PKCS#11 v2.40 §5.10 lets a token refuse: CKR_KEY_INDIGESTIBLE): a
        digest of a key's value can be compared with a guess, which a key that may never leave must not allow."""
        session = _p11(call, args.session)
        active = session.current("digest")
        try:
            obj = await object_for(call, args.key, Action.USE_KEY)
            if obj.object_class is not CKO.SECRET_KEY:
                raise HsmError(f"object {args.key} is not a secret key", CKR.KEY_INDIGESTIBLE)
            if not obj.flag(CKA.EXTRACTABLE):
                raise HsmError(f"key {args.key} is not extractable: its value cannot be digested", CKR.KEY_INDIGESTIBLE)
            active.parts += 1
            active.operation.update(obj.material or b"")
        except BaseException:
            session.end("digest")
            raise
        return {}

    async def final(self, call: Call, args: FinalArgs) -> dict[str, Any]:
        kind = self.kind
        session = _p11(call, args.session)
        active = session.current(kind)
        _authenticated(session, active)
        try:
            output = active.operation.final()
        finally:
            session.end(kind)
        name = {"encrypt": "data", "decrypt": "data", "sign": "signature", "digest": "digest"}[kind]
        return {name: output}

    async def verify_final(self, call: Call, args: VerifyFinalArgs) -> dict[str, Any]:
        kind = self.kind
        session = _p11(call, args.session)
        active = session.current(kind)
        _authenticated(session, active)
        try:
            active.operation.final(args.signature)
        finally:
            session.end(kind)
        return {"valid": True}

    async def single(self, call: Call, args: SingleArgs) -> dict[str, Any]:
        """C_Encrypt/C_Sign/… after C_*Init: the whole input at once, then the operation ends."""
        kind = self.kind
        session = _p11(call, args.session)
        active = session.current(kind)
        _authenticated(session, active)
        try:
            if active.parts:
                raise OperationActive(f"a multi-part {kind} is in progress; finish it with {kind}_final")
            if kind == "verify":
                if args.signature is None:
                    raise ArgumentsBad("verify needs the signature")
                active.operation.one_shot(args.data, args.signature)
                return {"valid": True}
            output = active.operation.one_shot(args.data)
        finally:
            session.end(kind)
        if kind in ("encrypt", "decrypt"):
            return _cipher_result(active.operation, output)
        return {"signature" if kind == "sign" else "digest": output}


ENCRYPT = MultiPart("encrypt")
DECRYPT = MultiPart("decrypt")
SIGN = MultiPart("sign")
VERIFY = MultiPart("verify")
DIGEST = MultiPart("digest")

operation("crypto.encrypt_init", args=InitArgs, roles=CRYPTO_USER, quorum=q.starts("encrypt"))(ENCRYPT.init)
operation("crypto.encrypt_single", args=SingleArgs, roles=CRYPTO_USER, quorum=q.continues("encrypt"))(ENCRYPT.single)
operation("crypto.encrypt_update", args=UpdateArgs, roles=CRYPTO_USER, quorum=q.continues("encrypt"))(ENCRYPT.update)
operation("crypto.encrypt_final", args=FinalArgs, roles=CRYPTO_USER, quorum=q.continues("encrypt"))(ENCRYPT.final)

operation("crypto.decrypt_init", args=InitArgs, roles=CRYPTO_USER, quorum=q.starts("decrypt"))(DECRYPT.init)
operation("crypto.decrypt_single", args=SingleArgs, roles=CRYPTO_USER, quorum=q.continues("decrypt"))(DECRYPT.single)
operation("crypto.decrypt_update", args=UpdateArgs, roles=CRYPTO_USER, quorum=q.continues("decrypt"))(DECRYPT.update)
operation("crypto.decrypt_final", args=FinalArgs, roles=CRYPTO_USER, quorum=q.continues("decrypt"))(DECRYPT.final)

operation("crypto.sign_init", args=InitArgs, roles=CRYPTO_USER, quorum=q.starts("sign"))(SIGN.init)
operation("crypto.sign_single", args=SingleArgs, roles=CRYPTO_USER, quorum=q.continues("sign"))(SIGN.single)
operation("crypto.sign_update", args=UpdateArgs, roles=CRYPTO_USER, quorum=q.continues("sign"))(SIGN.update)
operation("crypto.sign_final", args=FinalArgs, roles=CRYPTO_USER, quorum=q.continues("sign"))(SIGN.final)

operation("crypto.verify_init", args=InitArgs, roles=CRYPTO_USER, quorum=q.starts("verify"))(VERIFY.init)
operation("crypto.verify_single", args=SingleArgs, roles=CRYPTO_USER, quorum=q.continues("verify"))(VERIFY.single)
operation("crypto.verify_update", args=UpdateArgs, roles=CRYPTO_USER, quorum=q.continues("verify"))(VERIFY.update)
operation("crypto.verify_final", args=VerifyFinalArgs, roles=CRYPTO_USER,
          quorum=q.continues("verify"))(VERIFY.verify_final)

operation("crypto.digest_init", args=InitArgs, roles=CRYPTO_USER)(DIGEST.init)
operation("crypto.digest_single", args=SingleArgs, roles=CRYPTO_USER)(DIGEST.single)
operation("crypto.digest_update", args=UpdateArgs, roles=CRYPTO_USER)(DIGEST.update)
operation("crypto.digest_final", args=FinalArgs, roles=CRYPTO_USER)(DIGEST.final)
operation("crypto.digest_key", args=DigestKeyArgs, roles=CRYPTO_USER)(DIGEST.digest_key)


@dataclass
class CancelArgs:
    session: int
    kind: str


@operation("crypto.cancel", args=CancelArgs, roles=CRYPTO_USER)
async def cancel(call: Call, args: CancelArgs) -> dict[str, Any]:
    """End an active operation without finishing it (C_*Final with a NULL buffer is not this)."""
    _p11(call, args.session).end(args.kind)
    return {}
