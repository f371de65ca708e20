"""The rules a key must pass before a mechanism may touch it: visibility, usage flags,
allowed mechanisms, wrapping policy (CKA_WRAP_WITH_TRUSTED, CKA_WRAP_TEMPLATE)."""

from __future__ import annotations

from typing import Any

from strongroom.constants import CKA, CKO
from strongroom.errors import (
    KeyFunctionNotPermitted,
    KeyHandleInvalid,
    KeyNotWrappable,
    KeyUnextractable,
    MechanismInvalid,
    ObjectHandleInvalid,
    TemplateInconsistent,
)
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
}


def check_use(obj: StoredObject, username: str, purpose: str, mechanism: int) -> None:
    """May ``username`` use ``obj`` for ``purpose`` with ``mechanism``?"""
    if not obj.usable_by(username, is_admin=False):
        # Keys not shared with the caller do not exist for them.
        raise KeyHandleInvalid(f"no key with handle {obj.handle}")
    if obj.object_class not in (CKO.SECRET_KEY, CKO.PUBLIC_KEY, CKO.PRIVATE_KEY):
        raise KeyHandleInvalid(f"object {obj.handle} is not a key")
    flag = USAGE_FLAG[purpose]
    if not obj.flag(flag):
        raise KeyFunctionNotPermitted(f"key {obj.handle} has CKA_{CKA(flag).name} false")
    allowed = obj.attributes.get(CKA.ALLOWED_MECHANISMS)
    if allowed and mechanism not in allowed:
        raise MechanismInvalid(f"key {obj.handle} does not allow this mechanism (CKA_ALLOWED_MECHANISMS)")


def check_visible(obj: StoredObject, username: str, is_admin: bool) -> None:
    if not obj.visible_to(username, is_admin):
        raise ObjectHandleInvalid(f"no object with handle {obj.handle}")


def check_wrappable(target: StoredObject, wrapping: StoredObject) -> None:
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
