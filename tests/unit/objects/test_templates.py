"""Making objects (templates.build): defaults per class and key type, what the HSM sets, conflicts.

PKCS#11 v2.40 §4.1.1: a template that, with the defaults and what the call contributes, does not
fully specify the object is CKR_TEMPLATE_INCOMPLETE; one whose values cannot all hold at once is
CKR_TEMPLATE_INCONSISTENT; a value for a read-only attribute is CKR_ATTRIBUTE_READ_ONLY.
"""

from __future__ import annotations

from typing import Any

import pytest

from strongroom.constants import CKA, CKK, CKM, CKO
from strongroom.errors import AttributeReadOnly, AttributeValueInvalid, TemplateIncomplete, TemplateInconsistent
from strongroom.objects import templates
from strongroom.objects.attributes import Op

from .builders import COMPUTED, computed_for, key_attributes, make_object

UNAVAILABLE = (1 << 64) - 1  # CK_UNAVAILABLE_INFORMATION
USAGES = (CKA.ENCRYPT, CKA.DECRYPT, CKA.SIGN, CKA.VERIFY, CKA.WRAP, CKA.UNWRAP, CKA.DERIVE, CKA.SIGN_RECOVER,
          CKA.VERIFY_RECOVER)

#: The usages a key gets when its template names none: what its key type can do (Strongroom's
#: token-specific default, footnote 9). "-": the attribute does not exist for the class.
T, F, X = True, False, "-"
DEFAULT_USAGE: dict[tuple[CKO, CKK], tuple[Any, ...]] = {
    #                                  ENC DEC SIGN VER WRAP UNWR DER SREC VREC
    (CKO.SECRET_KEY, CKK.AES): (T, T, T, T, T, T, F, X, X),
    (CKO.SECRET_KEY, CKK.GENERIC_SECRET): (F, F, T, T, F, F, F, X, X),  # HMAC keys: no cipher
    (CKO.PUBLIC_KEY, CKK.RSA): (T, X, X, T, T, X, F, X, F),
    (CKO.PRIVATE_KEY, CKK.RSA): (X, T, T, X, X, T, F, F, X),
    (CKO.PUBLIC_KEY, CKK.EC): (F, X, X, T, F, X, F, X, F),  # ECDSA keys never encrypt or wrap
    (CKO.PRIVATE_KEY, CKK.EC): (X, F, T, X, X, F, F, F, X),
    (CKO.PUBLIC_KEY, CKK.EC_EDWARDS): (F, X, X, T, F, X, F, X, F),
    (CKO.PRIVATE_KEY, CKK.EC_EDWARDS): (X, F, T, X, X, F, F, F, X),
}


@pytest.mark.parametrize(("object_class", "key_type"), list(DEFAULT_USAGE), ids=lambda v: v.name)
def test_default_usages_follow_the_key_type(object_class: CKO, key_type: CKK) -> None:
    attributes = key_attributes(object_class, {}, key_type=key_type)
    got = tuple(attributes.get(cka, X) for cka in USAGES)
    assert got == DEFAULT_USAGE[(object_class, key_type)]


@pytest.mark.parametrize(("object_class", "key_type"), list(DEFAULT_USAGE), ids=lambda v: v.name)
def test_a_usage_asked_for_is_kept_and_one_refused_is_refused(object_class: CKO, key_type: CKK) -> None:
    """The key-type default never overrides the caller: asked for, a usage is on; refused, it is off."""
    present = [cka for cka, value in zip(USAGES, DEFAULT_USAGE[(object_class, key_type)], strict=True)
               if value is not X]
    on = key_attributes(object_class, dict.fromkeys(present, True), key_type=key_type)
    off = key_attributes(object_class, dict.fromkeys(present, False), key_type=key_type)
    assert all(on[cka] is True for cka in present) and all(off[cka] is False for cka in present)


@pytest.mark.parametrize("object_class", [CKO.SECRET_KEY, CKO.PUBLIC_KEY, CKO.PRIVATE_KEY], ids=lambda c: c.name)
@pytest.mark.parametrize("op", [Op.GENERATE, Op.UNWRAP, Op.DERIVE, Op.CREATE], ids=lambda o: o.name)
def test_local_and_key_gen_mechanism(object_class: CKO, op: Op) -> None:
    """§4.7: CKA_LOCAL only for keys generated on the token; CKA_KEY_GEN_MECHANISM the generating mechanism,
    CK_UNAVAILABLE_INFORMATION for a key that was not generated here."""
    attributes = key_attributes(object_class, {}, op=op)
    assert attributes[CKA.LOCAL] is (op is Op.GENERATE)
    expected = {CKO.SECRET_KEY: CKM.AES_KEY_GEN}.get(object_class, CKM.RSA_PKCS_KEY_PAIR_GEN)
    assert attributes[CKA.KEY_GEN_MECHANISM] == (expected if op is Op.GENERATE else UNAVAILABLE)


SENSITIVITY = [  # (SENSITIVE, EXTRACTABLE) given -> (ALWAYS_SENSITIVE, NEVER_EXTRACTABLE) of a generated key
    ({}, (True, True)),
    ({CKA.SENSITIVE: True, CKA.EXTRACTABLE: False}, (True, True)),
    ({CKA.SENSITIVE: False}, (False, True)),
    ({CKA.EXTRACTABLE: True}, (True, False)),
    ({CKA.SENSITIVE: False, CKA.EXTRACTABLE: True}, (False, False)),
]


@pytest.mark.parametrize("object_class", [CKO.SECRET_KEY, CKO.PRIVATE_KEY], ids=lambda c: c.name)
@pytest.mark.parametrize(("supplied", "expected"), SENSITIVITY)
def test_always_sensitive_and_never_extractable(object_class: CKO, supplied: dict[int, Any],
                                                expected: tuple[bool, bool]) -> None:
    """§4.9/§4.10: CKA_ALWAYS_SENSITIVE "if key has always had the CKA_SENSITIVE attribute set to CK_TRUE",
    CKA_NEVER_EXTRACTABLE "if key has never had the CKA_EXTRACTABLE attribute set to CK_TRUE". A key made
    outside the HSM (unwrapped, created) had its value outside: neither holds. (C_DeriveKey inherits them
    from the base key in the dispatcher; here, from nothing, neither holds.)"""
    generated = key_attributes(object_class, supplied)
    assert (generated[CKA.ALWAYS_SENSITIVE], generated[CKA.NEVER_EXTRACTABLE]) == expected
    for op in (Op.UNWRAP, Op.DERIVE):
        made = key_attributes(object_class, supplied, op=op)
        assert (made[CKA.ALWAYS_SENSITIVE], made[CKA.NEVER_EXTRACTABLE]) == (False, False)


def test_history_survives_later_changes_and_copies() -> None:
    """Making a key sensitive later does not make it "always sensitive"; a copy keeps its source's history."""
    key = make_object(CKO.SECRET_KEY, {CKA.SENSITIVE: False, CKA.EXTRACTABLE: True})
    changed = templates.check_set(key, {CKA.SENSITIVE: True, CKA.EXTRACTABLE: False}, is_admin=False)
    assert changed[CKA.ALWAYS_SENSITIVE] is False and changed[CKA.NEVER_EXTRACTABLE] is False
    copy = templates.copy_attributes(key, {CKA.SENSITIVE: True, CKA.EXTRACTABLE: False})
    assert (copy[CKA.SENSITIVE], copy[CKA.ALWAYS_SENSITIVE], copy[CKA.NEVER_EXTRACTABLE]) == (True, False, False)
    generated = make_object(CKO.SECRET_KEY)
    copy = templates.copy_attributes(generated, {CKA.TOKEN: False})
    assert copy[CKA.LOCAL] is True and copy[CKA.ALWAYS_SENSITIVE] is True  # §4.7: a copy of a local key is local
    for maintained in (CKA.LOCAL, CKA.ALWAYS_SENSITIVE, CKA.NEVER_EXTRACTABLE, CKA.KEY_GEN_MECHANISM,
                       CKA.CHECK_VALUE):
        with pytest.raises(AttributeReadOnly):
            templates.copy_attributes(generated, {maintained: not generated.attributes[maintained]}
                                      if isinstance(generated.attributes[maintained], bool)
                                      else {maintained: b"\x00" if maintained == CKA.CHECK_VALUE else 0})


# --- incomplete and inconsistent templates --------------------------------------------------------------------


@pytest.mark.parametrize("object_class", [CKO.SECRET_KEY, CKO.PUBLIC_KEY, CKO.PRIVATE_KEY], ids=lambda c: c.name)
def test_a_key_without_a_key_type_is_incomplete(object_class: CKO) -> None:
    """Footnotes 1 and 5 on CKA_KEY_TYPE."""
    with pytest.raises(TemplateIncomplete):
        templates.build(Op.CREATE, object_class, {CKA.LABEL: b"no type"}, {})
    templates.build(Op.CREATE, CKO.DATA, {CKA.LABEL: b"data has none"}, {})


@pytest.mark.parametrize(("object_class", "key_type"), list(COMPUTED), ids=lambda v: v.name)
def test_what_the_hsm_computed_may_be_repeated_but_not_contradicted(object_class: CKO, key_type: CKK) -> None:
    computed = computed_for(object_class, key_type)
    assert templates.build(Op.GENERATE, object_class, dict(computed), computed) == \
        templates.build(Op.GENERATE, object_class, {}, computed)
    for cka, value in computed.items():
        other: Any = (value + 1) if isinstance(value, int) else value + b"\x00"
        # A check value that is not the key's is an invalid value (§4.10); anything else contradicts the key.
        with pytest.raises(AttributeValueInvalid if cka == CKA.CHECK_VALUE else TemplateInconsistent):
            templates.build(Op.GENERATE, object_class, {cka: other}, computed)


@pytest.mark.parametrize("op", [Op.CREATE, Op.GENERATE, Op.UNWRAP, Op.DERIVE], ids=lambda o: o.name)
def test_a_template_naming_another_class_is_inconsistent(op: Op) -> None:
    """CKA_CLASS describes what the call makes: repeating it is fine, contradicting it is
    CKR_TEMPLATE_INCONSISTENT, whichever call makes the object."""
    computed = computed_for(CKO.SECRET_KEY)
    made = templates.build(op, CKO.SECRET_KEY, {CKA.CLASS: CKO.SECRET_KEY}, computed)
    assert made[CKA.CLASS] == CKO.SECRET_KEY
    for other in (CKO.PUBLIC_KEY, CKO.PRIVATE_KEY, CKO.DATA):
        with pytest.raises(TemplateInconsistent):
            templates.build(op, CKO.SECRET_KEY, {CKA.CLASS: other}, computed)


def test_a_template_naming_another_key_type_is_inconsistent() -> None:
    with pytest.raises(TemplateInconsistent):
        templates.build(Op.GENERATE, CKO.SECRET_KEY, {CKA.KEY_TYPE: CKK.GENERIC_SECRET},
                        computed_for(CKO.SECRET_KEY, CKK.AES))
    assert templates.build(Op.CREATE, CKO.PUBLIC_KEY, {CKA.KEY_TYPE: CKK.EC, CKA.EC_POINT: b"p"},
                           {})[CKA.KEY_TYPE] == CKK.EC  # given, not computed: the caller's


def test_a_user_cannot_make_a_trusted_key_even_by_repeating_the_default() -> None:
    with pytest.raises(AttributeReadOnly):
        key_attributes(CKO.SECRET_KEY, {CKA.TRUSTED: True})
    assert key_attributes(CKO.SECRET_KEY, {CKA.TRUSTED: False})[CKA.TRUSTED] is False
    trusted = templates.build(Op.GENERATE, CKO.SECRET_KEY, {CKA.TRUSTED: True}, computed_for(CKO.SECRET_KEY),
                              is_admin=True)
    assert trusted[CKA.TRUSTED] is True


def test_key_material_is_never_supplied_in_clear() -> None:
    """Secret and private keys enter only wrapped: CKA_VALUE (footnotes 4, 6) and the RSA private components
    are read-only to every call that makes a key, including C_UnwrapKey's template."""
    for object_class in (CKO.SECRET_KEY, CKO.PRIVATE_KEY):
        for op in (Op.GENERATE, Op.UNWRAP, Op.DERIVE):
            with pytest.raises(AttributeReadOnly):
                templates.build(op, object_class, {CKA.VALUE: b"\x00" * 32}, computed_for(object_class))
    for component in (CKA.PRIVATE_EXPONENT, CKA.PRIME_1, CKA.COEFFICIENT):
        with pytest.raises(AttributeReadOnly):
            templates.build(Op.UNWRAP, CKO.PRIVATE_KEY, {component: b"\x01"}, computed_for(CKO.PRIVATE_KEY))


# --- matching (C_FindObjects, CKA_WRAP_TEMPLATE) -------------------------------------------------------------


def test_matching() -> None:
    key = make_object(CKO.SECRET_KEY, {CKA.LABEL: b"k", CKA.ID: b"\x01", CKA.ALLOWED_MECHANISMS: [CKM.AES_GCM],
                                       CKA.WRAP_TEMPLATE: {CKA.EXTRACTABLE: True}})
    assert templates.matches(key, {})
    assert templates.matches(key, {CKA.LABEL: b"k", CKA.CLASS: CKO.SECRET_KEY, CKA.KEY_TYPE: CKK.AES})
    assert templates.matches(key, {CKA.ALLOWED_MECHANISMS: [CKM.AES_GCM]})
    assert templates.matches(key, {CKA.WRAP_TEMPLATE: {CKA.EXTRACTABLE: True}})
    assert not templates.matches(key, {CKA.LABEL: b"k", CKA.ID: b"\x02"})
    assert not templates.matches(key, {CKA.LABEL: b"K"})
    assert not templates.matches(key, {CKA.MODULUS: b""})  # an attribute the object does not have
    assert not templates.matches(key, {CKA.SIGN: False})
    # Key material never matches, not even its true value: a search is no oracle for it.
    assert key.material is not None and not templates.matches(key, {CKA.VALUE: key.material})
    key.attributes[CKA.VALUE] = key.material
    assert not templates.matches(key, {CKA.VALUE: key.material})
