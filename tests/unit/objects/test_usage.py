"""The checks before a mechanism touches a key (objects/usage.py): usage flags, CKA_ALLOWED_MECHANISMS,
and the wrapping policy (CKA_EXTRACTABLE, CKA_WRAP_WITH_TRUSTED, CKA_WRAP_TEMPLATE, CKA_UNWRAP_TEMPLATE).

Usage: PKCS#11 v2.40 §4.8-4.10 (CKA_SIGN "CK_TRUE if key supports signatures", …); a key whose
attribute forbids the use gives CKR_KEY_FUNCTION_NOT_PERMITTED, a mechanism outside
CKA_ALLOWED_MECHANISMS (§4.7) CKR_MECHANISM_INVALID. Wrapping: §4.9/§4.10 (a key with CKA_EXTRACTABLE
false "cannot be wrapped": CKR_KEY_UNEXTRACTABLE; CKA_WRAP_WITH_TRUSTED needs a wrapping key with
CKA_TRUSTED; CKA_WRAP_TEMPLATE "keys that do not match cannot be wrapped": CKR_KEY_NOT_WRAPPABLE).
"""

from __future__ import annotations

from typing import Any

import pytest

from strongroom.constants import CKA, CKK, CKM, CKO
from strongroom.errors import (
    AttributeReadOnly,
    KeyFunctionNotPermitted,
    KeyHandleInvalid,
    KeyNotWrappable,
    KeyUnextractable,
    MechanismInvalid,
    TemplateInconsistent,
)
from strongroom.objects import templates
from strongroom.objects.attributes import Op
from strongroom.objects.usage import USAGE_FLAG, check_use, check_wrappable, merge_unwrap_template

from .builders import OWNER, SHARED, STRANGER, computed_for, make_object

MECHANISM = {"encrypt": CKM.AES_GCM, "decrypt": CKM.AES_GCM, "sign": CKM.SHA256_HMAC, "verify": CKM.SHA256_HMAC,
             "wrap": CKM.AES_KEY_WRAP_PAD, "unwrap": CKM.AES_KEY_WRAP_PAD, "derive": CKM.ECDH1_DERIVE,
             "encapsulate": CKM.ML_KEM, "decapsulate": CKM.ML_KEM}
#: Which purposes each key class can serve at all (the flag exists for the class).
PURPOSES = {
    CKO.SECRET_KEY: {"encrypt", "decrypt", "sign", "verify", "wrap", "unwrap", "derive"},
    CKO.PUBLIC_KEY: {"encrypt", "verify", "wrap", "derive", "encapsulate"},
    CKO.PRIVATE_KEY: {"decrypt", "sign", "unwrap", "derive", "decapsulate"},
}


def _key(object_class: CKO, **flags: bool) -> Any:
    return make_object(object_class, {USAGE_FLAG[p]: v for p, v in flags.items()})


@pytest.mark.parametrize("object_class", list(PURPOSES), ids=lambda c: c.name)
@pytest.mark.parametrize("purpose", list(USAGE_FLAG))
def test_a_use_needs_its_flag(object_class: CKO, purpose: str) -> None:
    if purpose not in PURPOSES[object_class]:  # the class has no such flag: never
        with pytest.raises(KeyFunctionNotPermitted):
            check_use(make_object(object_class), OWNER, purpose, MECHANISM[purpose])
        return
    check_use(_key(object_class, **{purpose: True}), OWNER, purpose, MECHANISM[purpose])
    if purpose == "derive":  # a new key from this one's secret: the owner's act (objects/access.py)
        with pytest.raises(KeyFunctionNotPermitted):
            check_use(_key(object_class, **{purpose: True}), SHARED, purpose, MECHANISM[purpose])
    else:
        check_use(_key(object_class, **{purpose: True}), SHARED, purpose, MECHANISM[purpose])
    with pytest.raises(KeyFunctionNotPermitted):
        check_use(_key(object_class, **{purpose: False}), OWNER, purpose, MECHANISM[purpose])


def test_a_flag_permits_only_its_own_use() -> None:
    """Each purpose reads its own attribute: a key that may only sign may not decrypt, wrap, …"""
    for purpose in PURPOSES[CKO.SECRET_KEY]:
        only = _key(CKO.SECRET_KEY, **{p: p == purpose for p in PURPOSES[CKO.SECRET_KEY]})
        for other in PURPOSES[CKO.SECRET_KEY]:
            if other == purpose:
                check_use(only, OWNER, other, MECHANISM[other])
            else:
                with pytest.raises(KeyFunctionNotPermitted):
                    check_use(only, OWNER, other, MECHANISM[other])


def test_a_key_type_that_cannot_encrypt_does_not_by_default() -> None:
    ec_private = make_object(CKO.PRIVATE_KEY, key_type=CKK.EC)
    check_use(ec_private, OWNER, "sign", CKM.ECDSA)
    for purpose in ("decrypt", "unwrap"):
        with pytest.raises(KeyFunctionNotPermitted):
            check_use(ec_private, OWNER, purpose, CKM.RSA_PKCS)


def test_a_usage_switched_off_later_is_off() -> None:
    key = make_object(CKO.SECRET_KEY)
    check_use(key, OWNER, "encrypt", CKM.AES_GCM)
    key = key.with_changes(attributes=templates.check_set(key, {CKA.ENCRYPT: False}, is_admin=False))
    with pytest.raises(KeyFunctionNotPermitted):
        check_use(key, OWNER, "encrypt", CKM.AES_GCM)


@pytest.mark.parametrize(("allowed", "permitted"), [
    (None, {CKM.AES_GCM, CKM.AES_CBC_PAD, CKM.AES_ECB}),
    ([], {CKM.AES_GCM, CKM.AES_CBC_PAD, CKM.AES_ECB}),  # an empty list allows every mechanism
    ([CKM.AES_GCM], {CKM.AES_GCM}),
    ([CKM.AES_GCM, CKM.AES_CBC_PAD], {CKM.AES_GCM, CKM.AES_CBC_PAD}),
])
def test_allowed_mechanisms(allowed: list[int] | None, permitted: set[int]) -> None:
    key = make_object(CKO.SECRET_KEY, {} if allowed is None else {CKA.ALLOWED_MECHANISMS: allowed})
    for mechanism in (CKM.AES_GCM, CKM.AES_CBC_PAD, CKM.AES_ECB):
        if mechanism in permitted:
            check_use(key, OWNER, "encrypt", mechanism)
        else:
            with pytest.raises(MechanismInvalid):
                check_use(key, OWNER, "encrypt", mechanism)
    # The list cannot be widened afterwards (not modifiable; a copy may only narrow it: test_access_and_copy).
    with pytest.raises(AttributeReadOnly):
        templates.check_set(key, {CKA.ALLOWED_MECHANISMS: [CKM.AES_ECB]}, is_admin=False)


@pytest.mark.parametrize("object_class", [CKO.DATA, CKO.CERTIFICATE], ids=lambda c: c.name)
def test_objects_that_are_not_keys_are_no_keys(object_class: CKO) -> None:
    with pytest.raises(KeyHandleInvalid):
        check_use(make_object(object_class), OWNER, "sign", CKM.SHA256_HMAC)


def test_a_stranger_learns_nothing_about_a_key_s_attributes() -> None:
    """Access is checked before the key's flags and mechanisms: to someone who may not see the key, a key that
    may not sign and one that may answer alike (CKR_KEY_HANDLE_INVALID), so its attributes leak no bit."""
    for key in (_key(CKO.SECRET_KEY, sign=False), _key(CKO.SECRET_KEY, sign=True),
                make_object(CKO.SECRET_KEY, {CKA.ALLOWED_MECHANISMS: [CKM.AES_GCM]}), make_object(CKO.DATA)):
        with pytest.raises(KeyHandleInvalid):
            check_use(key, STRANGER, "sign", CKM.SHA256_HMAC)


# --- wrapping ------------------------------------------------------------------------------------------------


def _target(object_class: CKO = CKO.SECRET_KEY, **attributes: Any) -> Any:
    supplied = {CKA.EXTRACTABLE: True, **{getattr(CKA, name): value for name, value in attributes.items()}}
    return make_object(object_class, supplied, handle=20)


def _wrapping(supplied: dict[int, Any] | None = None, *, trusted: bool = False) -> Any:
    key = make_object(CKO.SECRET_KEY, supplied, handle=21)
    if trusted:  # as an admin would mark it
        key = key.with_changes(attributes=templates.check_set(key, {CKA.TRUSTED: True}, is_admin=True))
    return key


@pytest.mark.parametrize("object_class", [CKO.SECRET_KEY, CKO.PRIVATE_KEY], ids=lambda c: c.name)
def test_only_extractable_keys_are_wrapped(object_class: CKO) -> None:
    check_wrappable(_target(object_class), _wrapping(), OWNER)
    with pytest.raises(KeyUnextractable):
        check_wrappable(_target(object_class, EXTRACTABLE=False), _wrapping(), OWNER)
    with pytest.raises(KeyUnextractable):
        check_wrappable(make_object(object_class, handle=20), _wrapping(), OWNER)  # the default: not extractable


@pytest.mark.parametrize("object_class", [CKO.PUBLIC_KEY, CKO.DATA, CKO.CERTIFICATE], ids=lambda c: c.name)
def test_public_objects_are_not_wrapped(object_class: CKO) -> None:
    with pytest.raises(KeyNotWrappable):
        check_wrappable(make_object(object_class, handle=20), _wrapping(), OWNER)


def test_wrap_with_trusted_needs_a_trusted_wrapping_key() -> None:
    target = _target(WRAP_WITH_TRUSTED=True)
    with pytest.raises(KeyNotWrappable):
        check_wrappable(target, _wrapping(), OWNER)
    check_wrappable(target, _wrapping(trusted=True), OWNER)
    # ...and the owner cannot switch it off to get round that (footnote 11), nor in a copy.
    with pytest.raises(AttributeReadOnly):
        templates.check_set(target, {CKA.WRAP_WITH_TRUSTED: False}, is_admin=False)
    with pytest.raises(AttributeReadOnly):
        templates.copy_attributes(target, {CKA.WRAP_WITH_TRUSTED: False})


@pytest.mark.parametrize(("wrap_template", "target", "wrappable"), [
    ({CKA.KEY_TYPE: CKK.AES}, {}, True),
    ({CKA.KEY_TYPE: CKK.GENERIC_SECRET}, {}, False),
    ({CKA.LABEL: b"exportable"}, {"LABEL": b"exportable"}, True),
    ({CKA.LABEL: b"exportable"}, {"LABEL": b"other"}, False),
    ({CKA.CLASS: CKO.SECRET_KEY, CKA.SENSITIVE: True}, {}, True),
    ({CKA.CLASS: CKO.SECRET_KEY, CKA.SENSITIVE: True}, {"SENSITIVE": False}, False),
    ({CKA.MODULUS: b"\x01"}, {}, False),  # an attribute the target does not have
    ({CKA.VALUE: b"k" * 32}, {}, False),  # key material never matches, even when right
])
def test_wrap_template(wrap_template: dict[int, Any], target: dict[str, Any], wrappable: bool) -> None:
    wrapping = _wrapping({CKA.WRAP_TEMPLATE: wrap_template})
    if wrappable:
        check_wrappable(_target(**target), wrapping, OWNER)
    else:
        with pytest.raises(KeyNotWrappable):
            check_wrappable(_target(**target), wrapping, OWNER)


def test_a_wrap_template_cannot_be_removed_or_replaced() -> None:
    wrapping = _wrapping({CKA.WRAP_TEMPLATE: {CKA.KEY_TYPE: CKK.GENERIC_SECRET}})
    for change in ({CKA.WRAP_TEMPLATE: {}}, {CKA.WRAP_TEMPLATE: {CKA.KEY_TYPE: CKK.AES}}):
        with pytest.raises(AttributeReadOnly):
            templates.check_set(wrapping, change, is_admin=False)
        with pytest.raises(AttributeReadOnly):
            templates.copy_attributes(wrapping, change)


def test_only_the_owner_exports_and_a_stranger_sees_nothing() -> None:
    with pytest.raises(KeyNotWrappable):
        check_wrappable(_target(), _wrapping(), SHARED)
    with pytest.raises(KeyHandleInvalid):
        check_wrappable(_target(), _wrapping(), STRANGER)


# --- unwrapping -----------------------------------------------------------------------------------------------

UNWRAPPED = {CKA.CLASS: CKO.SECRET_KEY, CKA.KEY_TYPE: CKK.AES}


def _unwrapping(template: dict[int, Any] | None) -> Any:
    return make_object(CKO.SECRET_KEY, {} if template is None else {CKA.UNWRAP_TEMPLATE: template}, handle=22)


def _unwrap(unwrapping: Any, template: dict[int, Any]) -> dict[int, Any]:
    merged = merge_unwrap_template(unwrapping, template)
    return templates.build(Op.UNWRAP, CKO(merged[CKA.CLASS]), merged, computed_for(CKO.SECRET_KEY))


def test_the_unwrap_template_applies_to_every_key_unwrapped() -> None:
    """CKA_UNWRAP_TEMPLATE: "the attribute template to apply to any keys unwrapped using this wrapping key"."""
    forcing = _unwrapping({CKA.EXTRACTABLE: False, CKA.LABEL: b"from the trusted key"})
    key = _unwrap(forcing, dict(UNWRAPPED))
    assert key[CKA.EXTRACTABLE] is False and key[CKA.LABEL] == b"from the trusted key"
    assert _unwrap(forcing, {**UNWRAPPED, CKA.EXTRACTABLE: False})[CKA.EXTRACTABLE] is False  # repeated: fine
    assert _unwrap(_unwrapping(None), {**UNWRAPPED, CKA.LABEL: b"mine"})[CKA.LABEL] == b"mine"
    assert merge_unwrap_template(_unwrapping({}), {CKA.LABEL: b"x"}) == {CKA.LABEL: b"x"}


@pytest.mark.parametrize("contradiction", [{CKA.EXTRACTABLE: True}, {CKA.LABEL: b"mine"},
                                           {CKA.KEY_TYPE: CKK.GENERIC_SECRET}])
def test_a_template_contradicting_the_unwrap_template_is_inconsistent(contradiction: dict[int, Any]) -> None:
    """As CloudHSM: a caller's value that contradicts the unwrapping key's template fails the unwrap (stricter
    than the spec's "applied after this template as if the object has already been created", which would let
    a caller make a forced non-extractable key extractable only where C_SetAttributeValue could, i.e. never)."""
    forcing = _unwrapping({CKA.EXTRACTABLE: False, CKA.LABEL: b"forced", CKA.KEY_TYPE: CKK.AES})
    with pytest.raises(TemplateInconsistent):
        merge_unwrap_template(forcing, {**UNWRAPPED, **contradiction})


def test_an_unwrap_template_grants_nothing_its_creator_could_not_give() -> None:
    """The forced attributes pass the same rules as the caller's own: a user's unwrap template that says
    CKA_TRUSTED (or a maintained attribute) makes every unwrap with it fail, not a trusted key."""
    for forced in ({CKA.TRUSTED: True}, {CKA.LOCAL: True}, {CKA.NEVER_EXTRACTABLE: True}):
        with pytest.raises(AttributeReadOnly):
            _unwrap(_unwrapping(forced), dict(UNWRAPPED))
