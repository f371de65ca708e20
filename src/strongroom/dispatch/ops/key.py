"""``key.*``: key management (PKCS#11 chapter "Key management functions").

C_GenerateKey, C_GenerateKeyPair, C_WrapKey, C_UnwrapKey and C_DeriveKey (a secret key, or with
CKM_HKDF_DATA a data object). Every key
made here is built by :mod:`strongroom.objects.builder`, owned by the crypto user who made it
and audited; key material never
leaves except wrapped, only from extractable keys, and only by their owner (a user a key
is shared with may wrap and unwrap *with* it, not export it: objects/access.py) — or in clear,
as C_GetAttributeValue's CKA_VALUE of a key made with CKA_SENSITIVE false and CKA_EXTRACTABLE true.

A session that is not logged in (role ``public``) makes public session objects only
(:func:`strongroom.dispatch.ops.object.check_maker`). The cluster policy ``legacy_algorithms`` is in
force around every call into a mechanism (:func:`strongroom.mechanisms.base.legacy_algorithms`).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from strongroom.auth.users import Role
from strongroom.constants import CKA, CKO
from strongroom.dispatch import quorum as q
from strongroom.dispatch.auditing import audited, witness
from strongroom.dispatch.call import Call
from strongroom.dispatch.ops.object import actor_of, check_maker, is_public, object_for, p11_session_of, policies
from strongroom.dispatch.table import operation
from strongroom.errors import CKR, HsmError, KeyHandleInvalid, ObjectHandleInvalid
from strongroom.mechanisms.base import Key, Mechanism, legacy_algorithms, lookup
from strongroom.objects import builder
from strongroom.objects.access import Action, Actor
from strongroom.objects.attributes import coerce_template
from strongroom.objects.model import StoredObject
from strongroom.objects.repository import ObjectRepository
from strongroom.objects.usage import check_use, check_wrappable, merge_unwrap_template, refuse_without_context

CRYPTO_USER = (Role.CRYPTO_USER.value,)
#: A crypto user, or a session that is not logged in (public keys, its own public session objects).
USER_OR_PUBLIC = (Role.CRYPTO_USER.value, Role.PUBLIC.value)


async def usable_key(call: Call, handle: int, purpose: str, mechanism: int) -> tuple[StoredObject, Key]:
    """The key ``handle`` if the caller may use it so, from the worker's cache: no store query.

    The cache holds whatever the caller itself wrote (its revision token). A refusal is
    checked again after the strict catch-up (a store query): a key created, shared or
    changed a moment ago by someone else through another worker or node is used at once,
    as before; a change that takes a right away reaches the cache with the store's watch.
    """
    objects = call.services.keyring.require_objects()
    await objects.caught_up(call.request.revision)
    actor = await actor_of(call)
    try:
        obj = await _checked(objects, actor, handle, purpose, mechanism)
    except HsmError:
        await objects.sync()
        obj = await _checked(objects, actor, handle, purpose, mechanism)
    return obj, call.services.keyring.keys.key(obj)


async def _checked(objects: ObjectRepository, actor: Actor, handle: int, purpose: str,
                   mechanism: int) -> StoredObject:
    try:
        obj = await objects.get(handle)
    except ObjectHandleInvalid:
        raise KeyHandleInvalid(f"no key with handle {handle}") from None
    check_use(obj, actor, purpose, mechanism)
    return obj


async def legacy(call: Call) -> bool:
    """The cluster policy legacy_algorithms (for :func:`legacy_algorithms` around a mechanism call)."""
    return (await policies(call)).legacy


def _mechanism(mechanism_id: int, raw_params: Any) -> tuple[Mechanism, Any]:
    mechanism = lookup(mechanism_id)
    return mechanism, mechanism.parse_params(raw_params)


def _template(raw: list[Any], object_class: CKO) -> dict[int, Any]:
    template = coerce_template(raw)
    builder.class_must_be(template, object_class)
    return template


def _maker(call: Call) -> builder.Maker:
    login = call.login
    return builder.Maker(login.username, login.user_id)


async def _add(call: Call, objects: list[StoredObject], event: str, details: dict[str, Any]) -> list[StoredObject]:
    """Store the new objects (one transaction for a pair), witnessed by the audit record ``event``."""
    return await call.services.keyring.require_objects().add(objects, witness(call, event, details))


@dataclass
class GenerateArgs:
    mechanism: int
    template: list[Any]
    params: Any = None
    session: int | None = None


@operation("key.generate", args=GenerateArgs, roles=USER_OR_PUBLIC, quorum=q.makes_keys("template"))
async def generate(call: Call, args: GenerateArgs) -> dict[str, Any]:
    with legacy_algorithms(await legacy(call)):
        mechanism, params = _mechanism(args.mechanism, args.params)
        template = _template(args.template, CKO.SECRET_KEY)
        session = p11_session_of(call, args.session, template)
        generated = await asyncio.to_thread(mechanism.generate_key, params, template)
    obj = builder.generated_secret(_maker(call), template, generated, args.mechanism, session)
    check_maker(call, [obj])
    details = {"mechanism": mechanism.ckm.name, "label": obj.label(), "token": obj.token}
    async with audited(call, "key.generate", details):
        (obj,) = await _add(call, [obj], "key.generate", details)
    return {"handle": obj.handle}


@dataclass
class GeneratePairArgs:
    mechanism: int
    public_template: list[Any]
    private_template: list[Any]
    params: Any = None
    session: int | None = None


@operation("key.generate_pair", args=GeneratePairArgs, roles=USER_OR_PUBLIC,
           quorum=q.makes_keys("public_template", "private_template"))
async def generate_pair(call: Call, args: GeneratePairArgs) -> dict[str, Any]:
    public_template = coerce_template(args.public_template)
    private_template = coerce_template(args.private_template)
    builder.class_must_be(public_template, CKO.PUBLIC_KEY)
    builder.class_must_be(private_template, CKO.PRIVATE_KEY)
    public_session = p11_session_of(call, args.session, public_template)
    private_session = p11_session_of(call, args.session, private_template)
    if is_public(call) and (private_template.get(CKA.PRIVATE, True) or private_template.get(CKA.TOKEN)
                            or public_template.get(CKA.TOKEN)):
        check_maker(call, [StoredObject(0, "", {CKA.CLASS: CKO.PRIVATE_KEY, **private_template}),
                           StoredObject(0, "", {CKA.CLASS: CKO.PUBLIC_KEY, **public_template})])
    with legacy_algorithms(await legacy(call)):
        mechanism, params = _mechanism(args.mechanism, args.params)
        # RSA-4096 generation takes seconds: keep the event loop free for other requests.
        pair = await asyncio.to_thread(mechanism.generate_key_pair, params, public_template, private_template)
    public, private = builder.generated_pair(_maker(call), public_template, private_template, pair, args.mechanism,
                                             public_session, private_session)
    check_maker(call, [public, private])
    details = {"mechanism": mechanism.ckm.name, "label": private.label(), "token": private.token}
    async with audited(call, "key.generate_pair", details):
        await _add(call, [public, private], "key.generate_pair", details)
    return {"public": public.handle, "private": private.handle}


@dataclass
class WrapArgs:
    mechanism: int
    wrapping_key: int
    key: int
    params: Any = None


@operation("key.wrap", args=WrapArgs, roles=USER_OR_PUBLIC, quorum=q.manages("key", code=CKR.KEY_NOT_WRAPPABLE))
async def wrap(call: Call, args: WrapArgs) -> dict[str, Any]:
    with legacy_algorithms(await legacy(call)):
        mechanism, params = _mechanism(args.mechanism, args.params)
    details = {"mechanism": mechanism.ckm.name, "wrapping_key": args.wrapping_key, "key": args.key}
    async with audited(call, "key.wrap", details):
        wrapping, wrapping_key = await usable_key(call, args.wrapping_key, "wrap", args.mechanism)
        target = await object_for(call, args.key, Action.EXPORT)
        try:
            check_wrappable(target, wrapping, await actor_of(call))
        except HsmError:
            # The cache is current for the caller's own writes only: CKA_TRUSTED is set by an admin, maybe a
            # moment ago through another worker. Look again after the strict catch-up (as usable_key does).
            await call.services.keyring.require_objects().sync()
            wrapping, wrapping_key = await usable_key(call, args.wrapping_key, "wrap", args.mechanism)
            target = await object_for(call, args.key, Action.EXPORT)
            check_wrappable(target, wrapping, await actor_of(call))
        with legacy_algorithms(await legacy(call)):
            wrapped = mechanism.wrap(wrapping_key, params, target.material or b"")
        await call.services.audit.record("key.wrap", actor=call.actor, details=details)
    return {"wrapped": wrapped}


@dataclass
class UnwrapArgs:
    mechanism: int
    unwrapping_key: int
    wrapped: bytes
    template: list[Any]
    params: Any = None
    session: int | None = None


@operation("key.unwrap", args=UnwrapArgs, roles=USER_OR_PUBLIC,
           quorum=q.manages("unwrapping_key", templates=("template",)))
async def unwrap(call: Call, args: UnwrapArgs) -> dict[str, Any]:
    allowed = await legacy(call)
    with legacy_algorithms(allowed):
        mechanism, params = _mechanism(args.mechanism, args.params)
    details: dict[str, Any] = {"mechanism": mechanism.ckm.name, "unwrapping_key": args.unwrapping_key}
    async with audited(call, "key.unwrap", details):
        unwrapping, unwrapping_key = await usable_key(call, args.unwrapping_key, "unwrap", args.mechanism)
        refuse_without_context(unwrapping, "unwrap")
        template = merge_unwrap_template(unwrapping, coerce_template(args.template))
        builder.check_unwrap_template(template)
        with legacy_algorithms(allowed):
            key_bytes = mechanism.unwrap(unwrapping_key, params, args.wrapped)
        obj = builder.unwrapped_key(_maker(call), template, key_bytes, allowed)
        obj.p11_session = p11_session_of(call, args.session, template)
        check_maker(call, [obj])
        details.update(label=obj.label(), token=obj.token, **{"class": obj.object_class.name})
        (obj,) = await _add(call, [obj], "key.unwrap", details)
    return {"handle": obj.handle}


@dataclass
class DeriveArgs:
    mechanism: int
    base_key: int
    template: list[Any]
    params: Any = None
    session: int | None = None


@operation("key.derive", args=DeriveArgs, roles=USER_OR_PUBLIC,
           quorum=q.uses("derive", "base_key", templates=("template",)))
async def derive(call: Call, args: DeriveArgs) -> dict[str, Any]:
    allowed = await legacy(call)
    with legacy_algorithms(allowed):
        mechanism, params = _mechanism(args.mechanism, args.params)
    # CKM_HKDF_DATA makes a data object; every other derivation a secret key.
    template = _template(args.template, CKO.DATA if mechanism.derives_data else CKO.SECRET_KEY)
    details: dict[str, Any] = {"mechanism": mechanism.ckm.name, "base_key": args.base_key}
    async with audited(call, "key.derive", details):
        base, base_key = await usable_key(call, args.base_key, "derive", args.mechanism)
        refuse_without_context(base, "derive")
        # Keys the parameters name (HKDF's salt key) pass the same checks as the base key, and are audited.
        handles = mechanism.key_handles(params)
        if handles:
            details["parameter_keys"] = list(handles)
            extra = []
            for handle in handles:
                obj, key = await usable_key(call, handle, "derive", args.mechanism)
                if int(obj.attributes.get(q.USE, 0) or 0) > 1:
                    # Its value shapes the output as much as the base key's (CKM_HKDF_DATA hands that output out):
                    # a use the key's approvers would not have approved. One approval names one key.
                    raise HsmError(f"key {handle} needs approvals for each use (key-usage quorum): it cannot be "
                                   f"{mechanism.ckm.name}'s salt key", CKR.KEY_FUNCTION_NOT_PERMITTED)
                extra.append(key)
            params = mechanism.with_keys(params, extra)
        if mechanism.derives_data:
            natural = mechanism.default_derive_length(base_key, params)
            length, template = builder.derived_data_length(template, natural)
            value = mechanism.derive(base_key, params, length)
            obj = builder.derived_data(_maker(call), template, value)
        else:
            with legacy_algorithms(allowed):
                builder.derived_type(template, allowed)  # before any work: the template names a type we make
                natural = None if CKA.VALUE_LEN in template else mechanism.default_derive_length(base_key, params)
                key_type, length = builder.derived_length(template, natural, allowed)
                value = mechanism.derive(base_key, params, length)
            obj = builder.derived_secret(_maker(call), template, key_type, value, base)
        obj.p11_session = p11_session_of(call, args.session, template)
        check_maker(call, [obj])
        details.update(label=obj.label(), token=obj.token)
        (obj,) = await _add(call, [obj], "key.derive", details)
    return {"handle": obj.handle}
