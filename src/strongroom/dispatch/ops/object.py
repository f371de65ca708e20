"""``object.*``: object management (PKCS#11 chapter "Object management functions") and sharing.

C_CreateObject makes public keys, certificates and data objects, and — as the standard has it —
secret and private keys from their values in clear (audited as such; the cluster policy
``plaintext_import`` = ``forbidden`` refuses them: keys then enter only wrapped, ``key.unwrap``). Who
may touch an existing object is decided by :func:`strongroom.objects.access.authorize`, through
:func:`object_for` here, for every handler of this module and of ``key.*`` and ``crypto.*``.

A caller that is not logged in (an anonymous PKCS#11 session, role ``public``) reaches public objects
and makes session objects only, never private ones (:func:`new_object`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

from strongroom.auth.public import GATE
from strongroom.auth.users import Role, normalize_username
from strongroom.constants import CKA, CKK, CKO
from strongroom.dispatch import quorum as q
from strongroom.dispatch.auditing import audited, witness
from strongroom.dispatch.call import Call
from strongroom.dispatch.table import operation
from strongroom.errors import (
    CKR,
    ActionProhibited,
    ArgumentsBad,
    AttributeValueInvalid,
    CurveNotSupported,
    HsmError,
    ObjectHandleInvalid,
    TemplateIncomplete,
    TemplateInconsistent,
    UserNotLoggedIn,
)
from strongroom.mechanisms.base import legacy_algorithms
from strongroom.mechanisms.ec import is_legacy_curve
from strongroom.objects import builder, templates
from strongroom.objects.access import Access, Action, Actor, authorize, may
from strongroom.objects.attributes import Op, coerce_template
from strongroom.objects.builder import Maker
from strongroom.objects.keys import build_key, public_key_from_attributes
from strongroom.objects.model import StoredObject
from strongroom.services import policy
from strongroom.services.policy import Policies

CRYPTO_USER = (Role.CRYPTO_USER.value,)
ANY_ROLE = (Role.ADMIN.value, Role.CRYPTO_USER.value)
#: A crypto user, or a session that is not logged in (public objects and its own session objects only).
USER_OR_PUBLIC = (Role.CRYPTO_USER.value, Role.PUBLIC.value)
#: Every login and the anonymous one.
ANY_OR_PUBLIC = (*ANY_ROLE, Role.PUBLIC.value)
IMPORTABLE = (CKO.PUBLIC_KEY, CKO.CERTIFICATE, CKO.DATA)
KEYS_IN_CLEAR = (CKO.SECRET_KEY, CKO.PRIVATE_KEY)


def is_admin(call: Call) -> bool:
    return call.login.role is Role.ADMIN


def is_public(call: Call) -> bool:
    return call.login.role is Role.PUBLIC


def p11_session_of(call: Call, session: int | None, template: dict[int, Any]) -> int | None:
    """Session objects need the PKCS#11 session that will hold them."""
    if template.get(CKA.TOKEN, False):
        return None
    if session is None:
        raise ArgumentsBad("a session object (CKA_TOKEN false) needs the 'session' argument")
    call.services.sessions.p11.get(session, call.login.token)
    return session


async def policies(call: Call) -> Policies:
    return await policy.current(call.services.keyring.barrier)


async def actor_of(call: Call) -> Actor:
    """The caller as the access rule sees it (an anonymous session's requests are counted against its rate)."""
    session = call.login
    p11, token = call.services.sessions.p11, session.token
    sees_public = (await policies(call)).public_visible
    if session.role is Role.PUBLIC:
        check_public_rate(call)
        return Actor.anonymous(lambda handle: p11.belongs(handle, token), sees_public)
    return Actor(session.username, session.user_id, session.role is Role.ADMIN,
                 lambda handle: p11.belongs(handle, token), sees_public=sees_public)


def check_public_rate(call: Call) -> None:
    """An anonymous session over its request rate gets CKR_FUNCTION_FAILED (:mod:`strongroom.auth.public`)."""
    if call.login.role is Role.PUBLIC and not GATE.may_request(call.login.token):
        raise HsmError("too many requests from this anonymous session; slow down", CKR.FUNCTION_FAILED)


def new_object(call: Call, attributes: dict[int, Any], **fields: Any) -> StoredObject:
    """An object the caller makes: it owns it (its account, not only its name)."""
    session = call.login
    obj = StoredObject(0, session.username, attributes, owner_id=session.user_id, **fields)
    check_maker(call, [obj])
    return obj


def check_maker(call: Call, objects: list[StoredObject]) -> None:
    """A session that is not logged in makes public session objects only (PKCS#11 v2.40 §6.7: a public
    session has read/write access to public session objects; a token object needs an owner account)."""
    if call.login.role is not Role.PUBLIC:
        return
    for obj in objects:
        if obj.token:
            raise UserNotLoggedIn("token objects are made after a login: this session is public")
        if obj.attributes.get(CKA.PRIVATE, True):
            raise UserNotLoggedIn("a session that is not logged in makes only public objects (CKA_PRIVATE false)")


async def object_for(call: Call, handle: int, action: Action) -> StoredObject:
    """The object ``handle`` if the caller may do ``action`` with it, else the error PKCS#11 names."""
    objects = call.services.keyring.require_objects()
    # Another worker or node may have changed sharing or attributes a moment ago: catch up first.
    await objects.sync()
    actor = await actor_of(call)
    try:
        obj = await objects.get(handle)
    except ObjectHandleInvalid:
        raise action.not_found(handle) from None
    authorize(obj, actor, action)
    return obj


def describe(obj: StoredObject) -> dict[str, Any]:
    return {"handle": obj.handle, "class": obj.object_class.name, "label": obj.label(), "token": obj.token}


# --- C_CreateObject -----------------------------------------------------------------------


@dataclass
class CreateArgs:
    template: list[Any]
    session: int | None = None


@operation("object.create", args=CreateArgs, roles=USER_OR_PUBLIC, quorum=q.makes_keys("template"))
async def create(call: Call, args: CreateArgs) -> dict[str, Any]:
    template = coerce_template(args.template)
    object_class = template.get(CKA.CLASS)
    if object_class is None:
        raise TemplateIncomplete("CKA_CLASS is required")
    if object_class in KEYS_IN_CLEAR:
        return await _import_key(call, args, template)
    if object_class not in IMPORTABLE:
        raise AttributeValueInvalid(f"objects of class {object_class} are not supported")
    object_class = CKO(object_class)
    computed: dict[int, Any] = {}
    if object_class is CKO.PUBLIC_KEY:
        key_type = template.get(CKA.KEY_TYPE)
        if key_type is None:
            raise TemplateIncomplete("CKA_KEY_TYPE is required for a public key")
        public = public_key_from_attributes(CKK(key_type), template)  # validates modulus/point before storing
        if key_type == CKK.RSA:
            computed[CKA.MODULUS_BITS] = public.key_size
        if isinstance(public, ec.EllipticCurvePublicKey) and is_legacy_curve(public.curve):
            if not (await policies(call)).legacy:
                raise CurveNotSupported("curve P-192 needs the cluster policy legacy_algorithms = on")
    if object_class is CKO.CERTIFICATE:
        _check_certificate(template)
    session = p11_session_of(call, args.session, template)
    attributes = templates.build(Op.CREATE, object_class, template, computed, is_admin=False)
    obj = new_object(call, attributes, p11_session=session)
    details = {"class": object_class.name, "label": obj.label(), "token": obj.token}
    async with audited(call, "object.create", details):
        (obj,) = await call.services.keyring.require_objects().add([obj], witness(call, "object.create", details))
    return {"handle": obj.handle}


async def _import_key(call: Call, args: CreateArgs, template: dict[int, Any]) -> dict[str, Any]:
    """C_CreateObject of a secret or private key, its value in clear (PKCS#11 v2.40 §4.8-§4.10)."""
    rules = await policies(call)
    object_class = CKO(template[CKA.CLASS])
    details: dict[str, Any] = {"class": object_class.name, "in_clear": True}
    async with audited(call, "object.create", details):
        if not rules.import_allowed:
            # §4.1.1: "a template with an attribute that violates some token specific requirement".
            raise TemplateInconsistent("the cluster policy plaintext_import is forbidden: keys enter only wrapped "
                                       "(C_UnwrapKey)")
        session = p11_session_of(call, args.session, template)
        with legacy_algorithms(rules.legacy):
            obj = builder.imported_key(Maker(call.login.username, call.login.user_id), template, session,
                                       rules.legacy)
            if obj.object_class is CKO.PRIVATE_KEY:
                build_key(obj)  # a curve or size the policy refuses is refused now, not at first use
        check_maker(call, [obj])
        details.update(label=obj.label(), token=obj.token, key_type=CKK(obj.attributes[CKA.KEY_TYPE]).name)
        (obj,) = await call.services.keyring.require_objects().add([obj], witness(call, "object.create", details))
    return {"handle": obj.handle}


def _check_certificate(template: dict[int, Any]) -> None:
    from cryptography import x509

    if template.get(CKA.CERTIFICATE_TYPE, 0) != 0:  # CKC_X_509
        raise AttributeValueInvalid("only X.509 certificates (CKC_X_509) are supported")
    value = template.get(CKA.VALUE)
    if not value:
        raise TemplateIncomplete("a certificate needs CKA_VALUE (the DER certificate)")
    try:
        x509.load_der_x509_certificate(value)
    except ValueError:
        raise AttributeValueInvalid("CKA_VALUE is not a DER X.509 certificate") from None
    template.setdefault(CKA.CERTIFICATE_TYPE, 0)


# --- C_FindObjects ---------------------------------------------------------------------------


@dataclass
class FindArgs:
    template: list[Any]
    limit: int = 100_000


@operation("object.find", args=FindArgs, roles=ANY_OR_PUBLIC)
async def find(call: Call, args: FindArgs) -> dict[str, Any]:
    """The caller's own objects (and those shared with it) come first, then other users' public objects, each
    group oldest first. Applications take the first match: pkcs11-tool pairs a private key with the first
    public key of its CKA_ID (of any ID when it has none), and another user's public key under the same ID
    must not come first (in CloudHSM a crypto user sees only its own and shared keys; SoftHSMv2 has one
    user per token). Handles are random: in handle order the first match changed from cluster to cluster."""
    template = coerce_template(args.template)
    actor = await actor_of(call)
    own = replace(actor, sees_public=False)
    handles = await call.services.keyring.require_objects().search(
        template, lambda obj: may(obj, actor, Access.SEE), first=lambda obj: may(obj, own, Access.SEE))
    return {"handles": handles[: max(0, args.limit)]}


@operation("object.list", args=FindArgs, roles=ANY_ROLE)
async def list_objects(call: Call, args: FindArgs) -> dict[str, Any]:
    """A readable listing for people (the CLI): public facts only, never key material."""
    found = await find(call, args)
    objects = call.services.keyring.require_objects()
    return {"objects": [(await objects.get(h)).public_view() for h in found["handles"]]}


# --- C_GetAttributeValue / C_SetAttributeValue ---------------------------------------------------


@dataclass
class GetAttributesArgs:
    handle: int
    types: list[int]


@operation("object.get_attributes", args=GetAttributesArgs, roles=ANY_OR_PUBLIC)
async def get_attributes(call: Call, args: GetAttributesArgs) -> dict[str, Any]:
    obj = await object_for(call, args.handle, Action.READ)
    # A non-sensitive, extractable key's value goes to whoever may use the key (its owner, its users).
    reveal = obj.revealable() and may(obj, await actor_of(call), Access.USE)
    values, error = templates.read(obj, args.types, reveal=reveal)
    return {"attributes": values, "error": error}


@dataclass
class SetAttributesArgs:
    handle: int
    template: list[Any]


@operation("object.set_attributes", args=SetAttributesArgs, roles=ANY_OR_PUBLIC, quorum=q.manages())
async def set_attributes(call: Call, args: SetAttributesArgs) -> dict[str, Any]:
    changes = coerce_template(args.template)
    objects = call.services.keyring.require_objects()
    admin = is_admin(call)
    # An admin marks keys trusted (and may change nothing else: templates.check_set); an owner the rest.
    action = Action.SET_TRUST if admin else Action.SET_ATTRIBUTES
    obj = await object_for(call, args.handle, action)
    details = {"handle": obj.handle, "attributes": sorted(f"CKA_{CKA(k).name}" for k in changes)}
    async with audited(call, "object.set_attributes", details):
        obj = await objects.fresh(obj)
        authorize(obj, await actor_of(call), action)
        updated_attributes = templates.check_set(obj, changes, is_admin=admin)
        await objects.replace(obj, obj.with_changes(attributes=updated_attributes),
                              witness(call, "object.set_attributes", details))
    call.services.keyring.keys.forget(obj.handle)
    return {}


# --- C_DestroyObject / C_CopyObject ---------------------------------------------------------------


@dataclass
class HandleArgs:
    handle: int


@operation("object.destroy", args=HandleArgs, roles=USER_OR_PUBLIC, quorum=q.manages())
async def destroy(call: Call, args: HandleArgs) -> dict[str, Any]:
    objects = call.services.keyring.require_objects()
    details: dict[str, Any] = {"handle": args.handle}
    async with audited(call, "object.destroy", details):
        obj = await objects.fresh(await object_for(call, args.handle, Action.DESTROY))
        details["label"] = obj.label()
        if not obj.flag(CKA.DESTROYABLE):
            raise ActionProhibited(f"object {args.handle} has CKA_DESTROYABLE false")
        await objects.destroy(obj, witness(call, "object.destroy", details))
    call.services.keyring.keys.forget(args.handle)
    return {}


@dataclass
class CopyArgs:
    handle: int
    template: list[Any]
    session: int | None = None


@operation("object.copy", args=CopyArgs, roles=USER_OR_PUBLIC, quorum=q.manages(templates=("template",)))
async def copy(call: Call, args: CopyArgs) -> dict[str, Any]:
    changes = coerce_template(args.template)
    details: dict[str, Any] = {"source": args.handle, "attributes": sorted(f"CKA_{CKA(k).name}" for k in changes)}
    async with audited(call, "object.copy", details):
        source = await object_for(call, args.handle, Action.COPY)
        attributes = templates.copy_attributes(source, changes)
        session = p11_session_of(call, args.session, attributes)
        new = new_object(call, attributes, material=source.material, p11_session=session)
        details["token"] = new.token
        (new,) = await call.services.keyring.require_objects().add([new], witness(call, "object.copy", details))
    return {"handle": new.handle}


# --- sharing (CloudHSM's key share / unshare) ----------------------------------------------------------


@dataclass
class ShareArgs:
    handle: int
    username: str


async def _change_sharing(call: Call, args: ShareArgs, share: bool) -> dict[str, Any]:
    event = "object.share" if share else "object.unshare"
    services = call.services
    objects = services.keyring.require_objects()
    username = normalize_username(args.username)
    details = {"handle": args.handle, "username": username}
    async with audited(call, event, details):
        obj = await objects.fresh(await object_for(call, args.handle, Action.SHARE))
        if not obj.token:
            raise ActionProhibited("session objects cannot be shared")
        share_ids = dict(obj.share_ids)
        if share:
            target = await services.keyring.require_users().require(username)
            if target.role is not Role.CRYPTO_USER:
                raise ActionProhibited("keys can only be shared with crypto users")
            if username == obj.owner:
                raise ActionProhibited("the owner already has the key")
            shared = obj.shared | {username}
            share_ids[username] = target.uid  # that account, not whoever holds the name later
        else:
            if username not in obj.shared:
                raise ActionProhibited(f"object {args.handle} is not shared with {username!r}")
            shared = obj.shared - {username}
            share_ids.pop(username, None)
        await objects.replace(obj, obj.with_changes(shared=frozenset(shared), share_ids=share_ids),
                              witness(call, event, details))
    return {"handle": args.handle, "shared_with": sorted(shared)}


@operation("object.share", args=ShareArgs, roles=CRYPTO_USER, quorum=q.manages(sharing="share"))
async def share(call: Call, args: ShareArgs) -> dict[str, Any]:
    return await _change_sharing(call, args, share=True)


@operation("object.unshare", args=ShareArgs, roles=CRYPTO_USER, quorum=q.manages(sharing="unshare"))
async def unshare(call: Call, args: ShareArgs) -> dict[str, Any]:
    return await _change_sharing(call, args, share=False)
