"""``key.*``: key management (PKCS#11 chapter "Key management functions").

C_GenerateKey, C_GenerateKeyPair, C_WrapKey, C_UnwrapKey and C_DeriveKey. Every key
made here is owned by the crypto user who made it and is audited; key material never
leaves except wrapped, only from extractable keys, and only by their owner (a user a key
is shared with may wrap and unwrap *with* it, not export it: objects/access.py).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from strongroom.auth.users import Role
from strongroom.constants import CKA, CKK, CKO
from strongroom.dispatch.auditing import audited, witness
from strongroom.dispatch.call import Call
from strongroom.dispatch.ops.object import actor_of, new_object, object_for, p11_session_of
from strongroom.dispatch.table import operation
from strongroom.errors import (
    KeyHandleInvalid,
    KeySizeRange,
    ObjectHandleInvalid,
    TemplateIncomplete,
    TemplateInconsistent,
    WrappedKeyInvalid,
)
from strongroom.mechanisms.base import Key, lookup
from strongroom.objects import templates
from strongroom.objects.access import Action
from strongroom.objects.attributes import Op, coerce_template
from strongroom.objects.keys import asymmetric_attributes, check_value, load_private, private_to_der
from strongroom.objects.model import StoredObject
from strongroom.objects.usage import check_use, check_wrappable, merge_unwrap_template, refuse_without_context

CRYPTO_USER = (Role.CRYPTO_USER.value,)
SECRET_LENGTHS = {CKK.AES: (16, 24, 32), CKK.GENERIC_SECRET: tuple(range(1, 513))}


async def usable_key(call: Call, handle: int, purpose: str, mechanism: int) -> tuple[StoredObject, Key]:
    objects = call.services.keyring.require_objects()
    await objects.sync()  # sharing may have changed through another worker a moment ago
    try:
        obj = await objects.get(handle)
    except ObjectHandleInvalid:
        raise KeyHandleInvalid(f"no key with handle {handle}") from None
    check_use(obj, actor_of(call), purpose, mechanism)
    return obj, call.services.keyring.keys.key(obj)


def _secret_computed(key_type: CKK, value: bytes) -> dict[int, Any]:
    computed: dict[int, Any] = {CKA.KEY_TYPE: key_type, CKA.VALUE_LEN: len(value)}
    check = check_value(key_type, value)
    if check is not None:
        computed[CKA.CHECK_VALUE] = check
    return computed


def _class_must_be(template: dict[int, Any], expected: CKO) -> None:
    if CKA.CLASS in template and template[CKA.CLASS] != expected:
        raise TemplateInconsistent(f"this call makes a {expected.name} object")


@dataclass
class GenerateArgs:
    mechanism: int
    template: list[Any]
    params: Any = None
    session: int | None = None


@operation("key.generate", args=GenerateArgs, roles=CRYPTO_USER)
async def generate(call: Call, args: GenerateArgs) -> dict[str, Any]:
    mechanism = lookup(args.mechanism)
    params = mechanism.parse_params(args.params)
    template = coerce_template(args.template)
    _class_must_be(template, CKO.SECRET_KEY)
    session = p11_session_of(call, args.session, template)
    generated = await asyncio.to_thread(mechanism.generate_key, params, template)
    computed = _secret_computed(generated.key_type, generated.value) | generated.attributes
    attributes = templates.build(Op.GENERATE, CKO.SECRET_KEY, template, computed,
                                 key_gen_mechanism=args.mechanism)
    obj = new_object(call, attributes, material=generated.value, p11_session=session)
    details = {"mechanism": mechanism.ckm.name, "label": obj.label(), "token": obj.token}
    async with audited(call, "key.generate", details):
        (obj,) = await call.services.keyring.require_objects().add([obj], witness(call, "key.generate", details))
    return {"handle": obj.handle}


@dataclass
class GeneratePairArgs:
    mechanism: int
    public_template: list[Any]
    private_template: list[Any]
    params: Any = None
    session: int | None = None


@operation("key.generate_pair", args=GeneratePairArgs, roles=CRYPTO_USER)
async def generate_pair(call: Call, args: GeneratePairArgs) -> dict[str, Any]:
    mechanism = lookup(args.mechanism)
    params = mechanism.parse_params(args.params)
    public_template = coerce_template(args.public_template)
    private_template = coerce_template(args.private_template)
    _class_must_be(public_template, CKO.PUBLIC_KEY)
    _class_must_be(private_template, CKO.PRIVATE_KEY)
    public_session = p11_session_of(call, args.session, public_template)
    private_session = p11_session_of(call, args.session, private_template)
    # RSA-4096 generation takes seconds: keep the event loop free for other requests.
    pair = await asyncio.to_thread(mechanism.generate_key_pair, params, public_template, private_template)
    key_type = {CKA.KEY_TYPE: pair.key_type}
    public_attributes = templates.build(Op.GENERATE, CKO.PUBLIC_KEY, public_template,
                                        key_type | pair.public_attributes, key_gen_mechanism=args.mechanism)
    private_attributes = templates.build(Op.GENERATE, CKO.PRIVATE_KEY, private_template,
                                         key_type | pair.private_attributes, key_gen_mechanism=args.mechanism)
    public = new_object(call, public_attributes, p11_session=public_session)
    private = new_object(call, private_attributes, material=private_to_der(pair.private),
                         p11_session=private_session)
    details = {"mechanism": mechanism.ckm.name, "label": private.label(), "token": private.token}
    async with audited(call, "key.generate_pair", details):
        objects = call.services.keyring.require_objects()
        await objects.add([public, private], witness(call, "key.generate_pair", details))
    return {"public": public.handle, "private": private.handle}


@dataclass
class WrapArgs:
    mechanism: int
    wrapping_key: int
    key: int
    params: Any = None


@operation("key.wrap", args=WrapArgs, roles=CRYPTO_USER)
async def wrap(call: Call, args: WrapArgs) -> dict[str, Any]:
    mechanism = lookup(args.mechanism)
    params = mechanism.parse_params(args.params)
    details = {"mechanism": mechanism.ckm.name, "wrapping_key": args.wrapping_key, "key": args.key}
    async with audited(call, "key.wrap", details):
        wrapping, wrapping_key = await usable_key(call, args.wrapping_key, "wrap", args.mechanism)
        target = await object_for(call, args.key, Action.EXPORT)
        check_wrappable(target, wrapping, actor_of(call))
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


@operation("key.unwrap", args=UnwrapArgs, roles=CRYPTO_USER)
async def unwrap(call: Call, args: UnwrapArgs) -> dict[str, Any]:
    mechanism = lookup(args.mechanism)
    params = mechanism.parse_params(args.params)
    details: dict[str, Any] = {"mechanism": mechanism.ckm.name, "unwrapping_key": args.unwrapping_key}
    async with audited(call, "key.unwrap", details):
        unwrapping, unwrapping_key = await usable_key(call, args.unwrapping_key, "unwrap", args.mechanism)
        refuse_without_context(unwrapping, "unwrap")
        template = merge_unwrap_template(unwrapping, coerce_template(args.template))
        object_class = template.get(CKA.CLASS)
        if object_class not in (CKO.SECRET_KEY, CKO.PRIVATE_KEY) or CKA.KEY_TYPE not in template:
            raise TemplateIncomplete("unwrap needs CKA_CLASS (secret or private key) and CKA_KEY_TYPE")
        key_bytes = mechanism.unwrap(unwrapping_key, params, args.wrapped)
        object_class = CKO(object_class)
        obj = _unwrapped_object(call, object_class, CKK(template[CKA.KEY_TYPE]), template, key_bytes)
        obj.p11_session = p11_session_of(call, args.session, template)
        details.update(label=obj.label(), token=obj.token, **{"class": object_class.name})
        (obj,) = await call.services.keyring.require_objects().add([obj], witness(call, "key.unwrap", details))
    return {"handle": obj.handle}


def _unwrapped_object(call: Call, object_class: CKO, key_type: CKK, template: dict[int, Any],
                      key_bytes: bytes) -> StoredObject:
    if object_class is CKO.SECRET_KEY:
        if key_type not in SECRET_LENGTHS:
            raise TemplateInconsistent(f"secret keys of type {key_type.name} are not supported")
        if len(key_bytes) not in SECRET_LENGTHS[key_type]:
            raise WrappedKeyInvalid(f"the unwrapped value is not a valid {key_type.name} key ({len(key_bytes)} bytes)")
        computed = _secret_computed(key_type, key_bytes)
        material = key_bytes
    else:
        private = load_private(key_bytes)
        actual_type, _public, private_attributes = asymmetric_attributes(private)
        if actual_type is not key_type:
            raise WrappedKeyInvalid(f"the wrapped key is {actual_type.name}, the template says {key_type.name}")
        computed = {CKA.KEY_TYPE: key_type} | private_attributes
        material = private_to_der(private)
    attributes = templates.build(Op.UNWRAP, object_class, template, computed)
    return new_object(call, attributes, material=material)


@dataclass
class DeriveArgs:
    mechanism: int
    base_key: int
    template: list[Any]
    params: Any = None
    session: int | None = None


@operation("key.derive", args=DeriveArgs, roles=CRYPTO_USER)
async def derive(call: Call, args: DeriveArgs) -> dict[str, Any]:
    mechanism = lookup(args.mechanism)
    params = mechanism.parse_params(args.params)
    template = coerce_template(args.template)
    _class_must_be(template, CKO.SECRET_KEY)
    details: dict[str, Any] = {"mechanism": mechanism.ckm.name, "base_key": args.base_key}
    async with audited(call, "key.derive", details):
        base, base_key = await usable_key(call, args.base_key, "derive", args.mechanism)
        refuse_without_context(base, "derive")
        key_type = template.get(CKA.KEY_TYPE)
        if key_type not in SECRET_LENGTHS:
            raise TemplateIncomplete("derive needs CKA_KEY_TYPE: CKK_AES or CKK_GENERIC_SECRET")
        key_type = CKK(key_type)
        length = template.get(CKA.VALUE_LEN)
        if length is None:
            raise TemplateIncomplete("derive needs CKA_VALUE_LEN")
        if length not in SECRET_LENGTHS[key_type]:
            raise KeySizeRange(f"a {key_type.name} key cannot be {length} bytes long")
        value = mechanism.derive(base_key, params, length)
        attributes = templates.build(Op.DERIVE, CKO.SECRET_KEY, template, _secret_computed(key_type, value))
        # PKCS#11: a derived key keeps these only if the base key had them.
        attributes[CKA.ALWAYS_SENSITIVE] = base.flag(CKA.ALWAYS_SENSITIVE) and attributes[CKA.SENSITIVE]
        attributes[CKA.NEVER_EXTRACTABLE] = base.flag(CKA.NEVER_EXTRACTABLE) and not attributes[CKA.EXTRACTABLE]
        obj = new_object(call, attributes, material=value, p11_session=p11_session_of(call, args.session, template))
        details.update(label=obj.label(), token=obj.token)
        (obj,) = await call.services.keyring.require_objects().add([obj], witness(call, "key.derive", details))
    return {"handle": obj.handle}
