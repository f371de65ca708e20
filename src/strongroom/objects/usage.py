"""The rules a key must pass before a mechanism may touch it: who may (:mod:`strongroom.objects.access`),
usage flags, allowed mechanisms, CKA_ALWAYS_AUTHENTICATE, wrapping policy (CKA_WRAP_WITH_TRUSTED,
CKA_WRAP_TEMPLATE)."""

from __future__ import annotations

from typing import Any

from strongroom.constants import CKA, CKO
from strongroom.errors import (
    KeyFunctionNotPermitted,
    KeyHandleInvalid,
    KeyNotWrappable,
    KeyUnextractable,
    MechanismInvalid,
    TemplateInconsistent,
    UserNotLoggedIn,
)
from strongroom.objects.access import Action, Actor, authorize
from strongroom.objects.model import StoredObject
from strongroom.objects.templates import matches

USAGE_FLAG = {
    "encrypt": CKA.ENCRYPT,
    "decrypt": CKA.DECRYPT,
    "sign": CKA.SIGN,
    "verify": CKA.VERIFY,
    "wrap": CKA.WRAP,
    "unwrap": CKA.UNWRAP,
    "derive": CKA.DERIVE,
    "encapsulate": CKA.ENCAPSULATE,
    "decapsulate": CKA.DECAPSULATE,
}


#: What each purpose asks of the caller: deriving makes a new key out of the base key's secret,
#: owned by the caller, so it is the owner's; everything else is a use.
_ACTION = {purpose: Action.USE_KEY for purpose in USAGE_FLAG} | {"derive": Action.DERIVE_FROM}

#: Uses for which CKA_ALWAYS_AUTHENTICATE asks the password each time. PKCS#11 v2.40 §4.9 names
#: "sign or decrypt"; unwrapping and deriving with the private key are decryptions too.
PER_USE_LOGIN = frozenset({"sign", "decrypt", "unwrap", "derive", "decapsulate"})


def check_use(obj: StoredObject, actor: Actor, purpose: str, mechanism: int) -> None:
    """May ``actor`` use ``obj`` for ``purpose`` with ``mechanism``?"""
    authorize(obj, actor, _ACTION[purpose])
    if obj.object_class not in (CKO.SECRET_KEY, CKO.PUBLIC_KEY, CKO.PRIVATE_KEY):
        raise KeyHandleInvalid(f"object {obj.handle} is not a key")
    flag = USAGE_FLAG[purpose]
    if not obj.flag(flag):
        raise KeyFunctionNotPermitted(f"key {obj.handle} has CKA_{CKA(flag).name} false")
    allowed = obj.attributes.get(CKA.ALLOWED_MECHANISMS)
    if allowed and mechanism not in allowed:
        raise MechanismInvalid(f"key {obj.handle} does not allow this mechanism (CKA_ALLOWED_MECHANISMS)")


def needs_context_login(obj: StoredObject, purpose: str) -> bool:
    """Does this use of ``obj`` need a context-specific login (C_Login CKU_CONTEXT_SPECIFIC) first?"""
    return purpose in PER_USE_LOGIN and obj.flag(CKA.ALWAYS_AUTHENTICATE)


def refuse_without_context(obj: StoredObject, purpose: str) -> None:
    """For calls that have no Init to log in after (single calls, C_UnwrapKey, C_DeriveKey)."""
    if needs_context_login(obj, purpose):
        raise UserNotLoggedIn(
            f"key {obj.handle} has CKA_ALWAYS_AUTHENTICATE: each {purpose} needs a context-specific login "
            f"after its init ({purpose}_init, session.context_login, then the operation)"
            if purpose in ("sign", "decrypt") else
            f"key {obj.handle} has CKA_ALWAYS_AUTHENTICATE: it cannot {purpose}, a call with no init to give "
            "the password after"
        )


def check_wrappable(target: StoredObject, wrapping: StoredObject, actor: Actor) -> None:
    """May ``actor`` export ``target`` under ``wrapping`` (which it may already use)?"""
    authorize(target, actor, Action.EXPORT)
    if target.object_class not in (CKO.SECRET_KEY, CKO.PRIVATE_KEY):
        raise KeyNotWrappable("only secret and private keys are wrapped (public objects are read directly)")
    if not target.flag(CKA.EXTRACTABLE):
        raise KeyUnextractable(f"key {target.handle} is not extractable")
    if target.flag(CKA.WRAP_WITH_TRUSTED) and not wrapping.flag(CKA.TRUSTED):
        raise KeyNotWrappable(f"key {target.handle} may only be wrapped by a trusted key (CKA_WRAP_WITH_TRUSTED)")
    template = wrapping.attributes.get(CKA.WRAP_TEMPLATE)
    if template and not matches(target, template):
        raise KeyNotWrappable(f"key {target.handle} does not match the wrapping key's CKA_WRAP_TEMPLATE")


def merge_unwrap_template(unwrapping: StoredObject, template: dict[int, Any]) -> dict[int, Any]:
    """The unwrapping key's CKA_UNWRAP_TEMPLATE is added to the caller's; a contradiction fails."""
    forced = unwrapping.attributes.get(CKA.UNWRAP_TEMPLATE) or {}
    for cka, value in forced.items():
        if cka in template and template[cka] != value:
            raise TemplateInconsistent(
                f"CKA_{CKA(cka).name} contradicts the unwrapping key's CKA_UNWRAP_TEMPLATE"
            )
    return {**template, **forced}
