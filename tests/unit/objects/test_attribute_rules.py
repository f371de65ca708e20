"""Every row of objects/attributes.py's RULES, checked by behaviour against an independent table.

SPEC below is written from PKCS#11 v2.40 (base specification §4: the common footnotes of §4.2
Table 10, storage objects §4.4, data §4.5, certificates §4.6, keys §4.7, public §4.8, private §4.9
and secret keys §4.10; the key types of the current-mechanisms document §2) plus the places where
Strongroom chooses, as the spec allows a token to, something stricter or a token-specific default;
those carry a note. Each row is then exercised through the functions the node calls:
check_supplied (which calls may give it), build (defaults), check_set (C_SetAttributeValue, and
the one-way attributes), read (C_GetAttributeValue: which classes have it, which are never
revealed) and coerce (its type and size).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import pytest

from strongroom.constants import CKA, CKM, CKO
from strongroom.errors import (
    CKR,
    ActionProhibited,
    AttributeReadOnly,
    AttributeTypeInvalid,
    AttributeValueInvalid,
    TemplateInconsistent,
)
from strongroom.objects import templates
from strongroom.objects.attributes import (
    MAX_ATTRIBUTE_BYTES,
    MAX_LABEL_BYTES,
    MAX_TEMPLATE_ATTRIBUTES,
    RULES,
    Kind,
    Op,
    coerce,
    coerce_template,
    is_secret,
    rule_for,
    to_wire,
)
from strongroom.objects.model import from_wire

from .builders import CERTIFICATE_MUST, computed_for, make_object

D, C, S, PU, PR = CKO.DATA, CKO.CERTIFICATE, CKO.SECRET_KEY, CKO.PUBLIC_KEY, CKO.PRIVATE_KEY
EVERY = frozenset({D, C, S, PU, PR})
KEYS = frozenset({S, PU, PR})
ABSENT = object()
OPS = {"C": Op.CREATE, "G": Op.GENERATE, "U": Op.UNWRAP, "D": Op.DERIVE}


@dataclass(frozen=True)
class Spec:
    classes: frozenset[CKO]
    #: The calls that may supply it: C(reate) G(enerate) U(nwrap) D(erive); K: C_CopyObject may change it;
    #: S: C_SetAttributeValue may change it.
    given: str
    default: Any = ABSENT
    #: One-way: "up" only false->true, "down" only true->false, once the object exists.
    one_way: str | None = None
    #: Never revealed (C_GetAttributeValue gives CKR_ATTRIBUTE_SENSITIVE).
    secret: bool = False
    #: Computed by the HSM, never supplied.
    maintained: bool = False
    admin_only: bool = False
    note: str = ""


ALL = "CGUDKS"
SPEC: dict[int, Spec] = {
    # §4.2 Table 11 (footnote 1): given at creation; never changed.
    CKA.CLASS: Spec(EVERY, "CGUD"),
    # §4.4 Table 17: TOKEN, PRIVATE, MODIFIABLE change only in C_CopyObject; LABEL anywhere; COPYABLE can
    # "not be set to TRUE once it is set to FALSE".
    CKA.TOKEN: Spec(EVERY, "CGUDK", default=False),
    CKA.PRIVATE: Spec(EVERY, "CGUDK", default=True, one_way="up",
                      note="default token-specific: false for public keys and certificates, true otherwise, as "
                           "SoftHSMv2 (PUBLIC_BY_DEFAULT); a copy may make an object private, never public"),
    CKA.MODIFIABLE: Spec(EVERY, "CGUDK", default=True, one_way="down"),
    CKA.COPYABLE: Spec(EVERY, ALL, default=True, one_way="down"),
    CKA.DESTROYABLE: Spec(EVERY, ALL, default=True,
                          note="§4.4 says only CKA_LABEL is modifiable; Strongroom, like SoftHSMv2, lets the owner "
                               "change it both ways"),
    CKA.LABEL: Spec(EVERY, ALL, default=b""),
    # §4.5 Table 21.
    CKA.APPLICATION: Spec(frozenset({D}), ALL, default=b""),
    CKA.OBJECT_ID: Spec(frozenset({D}), ALL, default=b""),
    # Data (§4.5), certificates (§4.6.3 footnote 1), keys (footnotes 1,4,6,7: given only to C_CreateObject,
    # never revealed). Secret and private keys enter only wrapped, so CKA_VALUE of a key is never given.
    # PKCS#11 3.2: an ML-DSA or ML-KEM public key is its CKA_VALUE (given to C_CreateObject).
    CKA.VALUE: Spec(frozenset({D, C, S, PR, PU}), "C"),
    # §4.6.1 Table 22.
    CKA.CERTIFICATE_TYPE: Spec(frozenset({C}), "C"),
    CKA.CERTIFICATE_CATEGORY: Spec(frozenset({C}), ALL, default=0),
    CKA.CHECK_VALUE: Spec(frozenset({C, S}), "", maintained=True),
    # §4.6.3 Table 24.
    CKA.ISSUER: Spec(frozenset({C}), ALL, default=b""),
    CKA.SERIAL_NUMBER: Spec(frozenset({C}), ALL, default=b""),
    CKA.URL: Spec(frozenset({C}), ALL, default=b""),
    CKA.HASH_OF_SUBJECT_PUBLIC_KEY: Spec(frozenset({C}), ALL, default=b""),
    CKA.HASH_OF_ISSUER_PUBLIC_KEY: Spec(frozenset({C}), ALL, default=b""),
    CKA.JAVA_MIDP_SECURITY_DOMAIN: Spec(frozenset({C}), ALL, default=0),
    # §4.7 Table 25: KEY_TYPE 1,5; ID, dates, DERIVE 8; LOCAL and KEY_GEN_MECHANISM 2,4,6.
    CKA.KEY_TYPE: Spec(KEYS, "CGUD"),
    CKA.ID: Spec(KEYS | {C}, ALL, default=b""),
    CKA.START_DATE: Spec(KEYS | {C}, ALL, default=b""),
    CKA.END_DATE: Spec(KEYS | {C}, ALL, default=b""),
    CKA.DERIVE: Spec(KEYS, ALL, default=False),
    CKA.LOCAL: Spec(KEYS, "", maintained=True),
    CKA.KEY_GEN_MECHANISM: Spec(KEYS, "", maintained=True),
    CKA.ALLOWED_MECHANISMS: Spec(KEYS, "CGUDK"),
    CKA.SUBJECT: Spec(frozenset({PU, PR, C}), ALL, default=b""),
    # §4.8-4.10: usages 8,9 (default token-specific: Strongroom's is "what the key type can do").
    CKA.ENCRYPT: Spec(frozenset({S, PU}), ALL, default=True),
    CKA.VERIFY: Spec(frozenset({S, PU}), ALL, default=True),
    CKA.WRAP: Spec(frozenset({S, PU}), ALL, default=True),
    CKA.VERIFY_RECOVER: Spec(frozenset({PU}), ALL, default=False),
    CKA.DECRYPT: Spec(frozenset({S, PR}), ALL, default=True),
    CKA.SIGN: Spec(frozenset({S, PR}), ALL, default=True),
    CKA.UNWRAP: Spec(frozenset({S, PR}), ALL, default=True),
    CKA.SIGN_RECOVER: Spec(frozenset({PR}), ALL, default=False),
    # Footnote 10: only the SO sets CKA_TRUSTED to true.
    CKA.TRUSTED: Spec(frozenset({S, PU, C}), "CGUDS", default=False, admin_only=True),
    CKA.WRAP_TEMPLATE: Spec(frozenset({S, PU}), "CGUD"),
    CKA.UNWRAP_TEMPLATE: Spec(frozenset({S, PR}), "CGUD"),
    # Footnotes 11 and 12. §4.10 gives secret keys CKA_SENSITIVE default false; Strongroom defaults to true.
    CKA.SENSITIVE: Spec(frozenset({S, PR}), ALL, default=True, one_way="up",
                        note="§4.10: default CK_FALSE for secret keys"),
    CKA.EXTRACTABLE: Spec(frozenset({S, PR}), ALL, default=False, one_way="down"),
    CKA.WRAP_WITH_TRUSTED: Spec(frozenset({S, PR}), ALL, default=False, one_way="up"),
    CKA.ALWAYS_SENSITIVE: Spec(frozenset({S, PR}), "", maintained=True),
    CKA.NEVER_EXTRACTABLE: Spec(frozenset({S, PR}), "", maintained=True),
    CKA.ALWAYS_AUTHENTICATE: Spec(frozenset({PR}), "CGUDK", default=False, one_way="up"),
    # Key types (current mechanisms §2): AES/generic CKA_VALUE_LEN 2,3; RSA public MODULUS 1,4,
    # MODULUS_BITS 2,3, PUBLIC_EXPONENT 1; EC public EC_PARAMS 1,3, EC_POINT 1,4. A value the node
    # computes may be repeated but not contradicted (test_templates.py).
    CKA.VALUE_LEN: Spec(frozenset({S}), "GUD"),
    CKA.MODULUS: Spec(frozenset({PU, PR}), "C"),
    CKA.MODULUS_BITS: Spec(frozenset({PU}), "G"),
    CKA.PUBLIC_EXPONENT: Spec(frozenset({PU, PR}), "CG"),
    CKA.EC_PARAMS: Spec(frozenset({PU, PR}), "CG"),
    CKA.EC_POINT: Spec(frozenset({PU}), "C"),
    CKA.PUBLIC_KEY_INFO: Spec(frozenset({PU, PR}), "", maintained=True),
    # PKCS#11 3.2 §6.66-6.67 (ML-KEM, ML-DSA): parameter set 1,3 (generate: in the template); the KEM
    # usages (default token-specific: set by the key pair generation); the seed, never revealed.
    CKA.PARAMETER_SET: Spec(frozenset({PU, PR}), "CG"),
    CKA.ENCAPSULATE: Spec(frozenset({PU}), ALL),
    CKA.DECAPSULATE: Spec(frozenset({PR}), ALL),
    CKA.SEED: Spec(frozenset({PR}), "", secret=True),
    # Strongroom's vendor-defined quorum values (docs/quorum.md): given when a key is made, never changed.
    CKA.STRONGROOM_MANAGE_KEY_QUORUM: Spec(frozenset({S, PR}), "CGUD", default=0),
    CKA.STRONGROOM_USE_KEY_QUORUM: Spec(frozenset({S, PR}), "CGUD", default=0),
    **{cka: Spec(frozenset({PR}), "", secret=True)
       for cka in (CKA.PRIVATE_EXPONENT, CKA.PRIME_1, CKA.PRIME_2, CKA.EXPONENT_1, CKA.EXPONENT_2,
                   CKA.COEFFICIENT)},
}

#: A valid value of each kind, and a second one (for changes).
SAMPLE = {Kind.BOOL: (True, False), Kind.ULONG: (1, 2), Kind.BYTES: (b"x", b"y"), Kind.DATE: (b"20250101", b""),
          Kind.MECHANISMS: ([CKM.AES_GCM], [CKM.AES_CBC]), Kind.TEMPLATE: ({CKA.EXTRACTABLE: False}, {})}
CASES = sorted(SPEC, key=int)


def _name(cka: int) -> str:
    return f"CKA_{CKA(cka).name}"


def test_the_table_has_a_row_for_every_rule() -> None:
    assert set(SPEC) == set(RULES)


# --- which objects have it ---------------------------------------------------------------------------------


@pytest.mark.parametrize("cka", CASES, ids=_name)
def test_which_classes_have_it(cka: int) -> None:
    spec, value = SPEC[cka], SAMPLE[rule_for(cka).kind][0]
    for object_class in EVERY:
        obj = make_object(object_class)
        values, error = templates.read(obj, [cka])
        if object_class in spec.classes:
            assert error != CKR.ATTRIBUTE_TYPE_INVALID or cka not in obj.attributes, object_class
            with contextlib.suppress(AttributeReadOnly):  # it applies, perhaps not at creation
                templates.check_supplied(Op.CREATE, object_class, {cka: value}, is_admin=True)
        else:
            assert (values, error) == ([[cka, None]], CKR.ATTRIBUTE_TYPE_INVALID), object_class
            # §4.1.1: making an object with an attribute of another class is an inconsistent template ...
            with pytest.raises(TemplateInconsistent):
                templates.check_supplied(Op.CREATE, object_class, {cka: value}, is_admin=True)
            # ... changing one the object does not have is an invalid attribute type.
            with pytest.raises(AttributeTypeInvalid):
                templates.check_set(obj, {cka: value}, is_admin=False)
            with pytest.raises(AttributeTypeInvalid):
                templates.copy_attributes(obj, {cka: value})


# --- who gives it, and when ---------------------------------------------------------------------------------


@pytest.mark.parametrize("cka", CASES, ids=_name)
def test_which_calls_may_supply_it(cka: int) -> None:
    spec = SPEC[cka]
    kind = rule_for(cka).kind
    # The admin-only flag is exercised at its default here; test_only_an_admin_sets_trusted covers the rest.
    value = False if spec.admin_only else SAMPLE[kind][0]
    for object_class in spec.classes:
        for letter, op in OPS.items():
            supply = {cka: value}
            if letter in spec.given:
                templates.check_supplied(op, object_class, supply, is_admin=False)
            else:
                with pytest.raises(AttributeReadOnly):
                    templates.check_supplied(op, object_class, supply, is_admin=False)


@pytest.mark.parametrize("cka", CASES, ids=_name)
def test_which_can_be_changed_afterwards(cka: int) -> None:
    spec = SPEC[cka]
    kind = rule_for(cka).kind
    for object_class in spec.classes:
        obj = make_object(object_class)
        current = obj.attributes.get(cka)
        # A change in the attribute's allowed direction (or any change for a two-way one).
        if spec.one_way == "up":
            obj = make_object(object_class, {cka: False}) if "C" in spec.given or "G" in spec.given else obj
            new: Any = True
        elif spec.one_way == "down":
            obj = make_object(object_class, {cka: True})
            new = False
        else:
            new = next(v for v in SAMPLE[kind] if v != current)
        admin = spec.admin_only
        if "S" in spec.given:
            updated = templates.check_set(obj, {cka: new}, is_admin=admin)
            assert updated[cka] == new and obj.attributes.get(cka) != new
        else:
            with pytest.raises(AttributeReadOnly):
                templates.check_set(obj, {cka: new}, is_admin=admin)


@pytest.mark.parametrize("cka", [c for c in CASES if SPEC[c].one_way], ids=_name)
def test_one_way_attributes_never_go_back(cka: int) -> None:
    """Footnotes 11 and 12, CKA_COPYABLE (§4.4): once locked, C_SetAttributeValue and C_CopyObject both refuse."""
    spec = SPEC[cka]
    locked = spec.one_way == "up"  # the value after the one-way change
    for object_class in spec.classes:
        obj = make_object(object_class, {cka: locked})
        if "S" in spec.given:
            with pytest.raises(AttributeReadOnly):
                templates.check_set(obj, {cka: not locked}, is_admin=False)
            assert templates.check_set(obj, {cka: locked}, is_admin=False)[cka] is locked  # no change: fine
        if cka == CKA.COPYABLE:  # a copy of an object that cannot be copied: none at all
            with pytest.raises(ActionProhibited):
                templates.copy_attributes(obj, {})
            continue
        with pytest.raises(AttributeReadOnly):
            templates.copy_attributes(obj, {cka: not locked})
        assert templates.copy_attributes(obj, {cka: locked})[cka] is locked


def test_a_read_only_object_changes_nothing_not_even_its_label() -> None:
    obj = make_object(S, {CKA.MODIFIABLE: False})
    for change in ({CKA.LABEL: b"renamed"}, {CKA.SENSITIVE: True}, {CKA.EXTRACTABLE: False}):
        with pytest.raises(ActionProhibited):
            templates.check_set(obj, change, is_admin=False)
    with pytest.raises(ActionProhibited):
        templates.check_set(make_object(PU, {CKA.MODIFIABLE: False}), {CKA.TRUSTED: True}, is_admin=True)


@pytest.mark.parametrize("object_class", sorted(SPEC[CKA.TRUSTED].classes))
def test_only_an_admin_sets_trusted(object_class: CKO) -> None:
    """Footnote 10: CKA_TRUSTED is set to true by the SO only — neither at creation nor afterwards by a user;
    and the admin changes nothing else."""
    for op in (Op.CREATE, Op.GENERATE, Op.UNWRAP, Op.DERIVE):
        with pytest.raises(AttributeReadOnly):
            templates.check_supplied(op, object_class, {CKA.TRUSTED: True}, is_admin=False)
        templates.check_supplied(op, object_class, {CKA.TRUSTED: False}, is_admin=False)
    obj = make_object(object_class)
    with pytest.raises(AttributeReadOnly):
        templates.check_set(obj, {CKA.TRUSTED: True}, is_admin=False)
    trusted = templates.check_set(obj, {CKA.TRUSTED: True}, is_admin=True)
    assert trusted[CKA.TRUSTED] is True
    assert templates.check_set(obj.with_changes(attributes=trusted), {CKA.TRUSTED: False}, is_admin=True)[
        CKA.TRUSTED] is False
    with pytest.raises(ActionProhibited):
        templates.check_set(obj, {CKA.LABEL: b"an admin's label"}, is_admin=True)


@pytest.mark.parametrize("cka", [c for c in CASES if SPEC[c].maintained], ids=_name)
def test_maintained_attributes_are_never_supplied(cka: int) -> None:
    """Footnotes 2, 4, 6: the HSM sets them. Supplied to any call, they are read-only."""
    value = SAMPLE[rule_for(cka).kind][0]
    for object_class in SPEC[cka].classes:
        for op in OPS.values():
            with pytest.raises(AttributeReadOnly):
                templates.check_supplied(op, object_class, {cka: value}, is_admin=True)


# --- defaults ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cka", [c for c in CASES if SPEC[c].default is not ABSENT], ids=_name)
def test_defaults(cka: int) -> None:
    spec = SPEC[cka]
    for object_class in spec.classes:
        # RSA and AES keys can do everything their class can: no usage is switched off by the key type.
        attributes = make_object(object_class, token=None).attributes
        expected = spec.default
        if cka == CKA.PRIVATE and object_class in (PU, C):
            expected = False  # public keys and certificates are public objects unless their maker says otherwise
        assert attributes[cka] == expected, object_class


@pytest.mark.parametrize("cka", [c for c in CASES if SPEC[c].default is ABSENT and not SPEC[c].maintained],
                         ids=_name)
def test_attributes_without_a_default_are_absent_unless_given_or_computed(cka: int) -> None:
    for object_class in SPEC[cka].classes:
        attributes = make_object(object_class, token=None).attributes
        given = {CKA.CLASS, *computed_for(object_class), *(CERTIFICATE_MUST if object_class is C else ())}
        assert (cka in attributes) is (cka in given), object_class


# --- reading -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("object_class", sorted(EVERY))
def test_what_is_never_revealed(object_class: CKO) -> None:
    """Key material never leaves: CKA_VALUE of secret and private keys and the private components read as
    CKR_ATTRIBUTE_SENSITIVE, whatever CKA_SENSITIVE/CKA_EXTRACTABLE say (stricter than footnote 7, which
    would reveal a non-sensitive extractable key's value); everything else an object has is readable."""
    supplied = {CKA.SENSITIVE: False, CKA.EXTRACTABLE: True} if object_class in (S, PR) else {}
    obj = make_object(object_class, supplied)
    if object_class in (S, PR):
        obj.attributes[CKA.VALUE] = b"\x42" * 32  # even a value stored beside the material
    for cka, spec in SPEC.items():
        if object_class not in spec.classes:
            continue
        values, error = templates.read(obj, [cka])
        hidden = spec.secret or (cka == CKA.VALUE and object_class in (S, PR))
        assert is_secret(cka, object_class) is hidden
        if hidden:
            assert (values, error) == ([[cka, None]], CKR.ATTRIBUTE_SENSITIVE), _name(cka)
        elif cka in obj.attributes:
            assert error is None and values[0][1] == to_wire({0: obj.attributes[cka]})[0][1], _name(cka)


def test_read_reports_every_attribute_and_the_last_error() -> None:
    """§5.7 C_GetAttributeValue: every requested attribute is processed; the unreadable ones come back empty."""
    key = make_object(S, {CKA.LABEL: b"k"})
    values, error = templates.read(key, [CKA.LABEL, CKA.VALUE, CKA.MODULUS, CKA.SENSITIVE, 0x7FFF0000])
    assert values == [[CKA.LABEL, b"k"], [CKA.VALUE, None], [CKA.MODULUS, None], [CKA.SENSITIVE, True],
                      [0x7FFF0000, None]]
    assert error == CKR.ATTRIBUTE_TYPE_INVALID
    values, error = templates.read(key, [CKA.VALUE, CKA.LABEL])
    assert error == CKR.ATTRIBUTE_SENSITIVE and values[1] == [CKA.LABEL, b"k"]
    # An array attribute the key does not carry reads as empty, a number or flag as "not possessed".
    values, error = templates.read(key, [CKA.ALLOWED_MECHANISMS, CKA.WRAP_TEMPLATE])
    assert (values, error) == ([[CKA.ALLOWED_MECHANISMS, []], [CKA.WRAP_TEMPLATE, []]], None)
    public = make_object(PU)
    del public.attributes[CKA.MODULUS_BITS]
    assert templates.read(public, [CKA.MODULUS_BITS]) == ([[CKA.MODULUS_BITS, None]], CKR.ATTRIBUTE_TYPE_INVALID)


# --- types and sizes -----------------------------------------------------------------------------------------

WRONG = {
    Kind.BOOL: [1, 0, None, b"\x01", "true"],
    Kind.ULONG: [True, -1, 1 << 64, 1.0, b"\x01", None],
    Kind.BYTES: ["text", 1, None, [1], bytearray(b"x")],
    Kind.DATE: [b"2025010", b"2025-1-1", b"2025010a", "20250101", b"202501011"],
    Kind.MECHANISMS: [CKM.AES_GCM, [True], [-1], [1 << 64], (CKM.AES_GCM,), [b"x"], [0] * 257],
    Kind.TEMPLATE: [b"x", 5, [[1]], [[CKA.TOKEN, True, 1]], [[CKA.TOKEN, True], [CKA.TOKEN, False]],
                    [[CKA.TOKEN, 1]], [[CKA.WRAP_TEMPLATE, []]], [[CKA.LABEL, b"x"]] * 2,
                    [[n, b""] for n in range(MAX_TEMPLATE_ATTRIBUTES + 1)]],
}


@pytest.mark.parametrize("cka", CASES, ids=_name)
def test_values_of_the_wrong_type_or_size_are_invalid(cka: int) -> None:
    """§4.1.1: an invalid value for a valid attribute is CKR_ATTRIBUTE_VALUE_INVALID."""
    rule = rule_for(cka)
    for good in SAMPLE[rule.kind]:
        assert coerce(cka, good) == good
    for bad in WRONG[rule.kind]:
        with pytest.raises(AttributeValueInvalid):
            coerce(cka, bad)
    if rule.kind in (Kind.BYTES, Kind.DATE):
        limit = MAX_LABEL_BYTES if cka in (CKA.LABEL, CKA.ID, CKA.APPLICATION) else MAX_ATTRIBUTE_BYTES
        assert rule.max_bytes == limit
        if rule.kind is Kind.BYTES:
            assert coerce(cka, b"x" * limit)
            with pytest.raises(AttributeValueInvalid):
                coerce(cka, b"x" * (limit + 1))


def test_templates_inside_attributes_are_typed_like_any_other() -> None:
    assert coerce(CKA.UNWRAP_TEMPLATE, [[CKA.EXTRACTABLE, False], [CKA.LABEL, b"u"]]) == {
        CKA.EXTRACTABLE: False, CKA.LABEL: b"u"}
    with pytest.raises(AttributeValueInvalid):
        coerce(CKA.UNWRAP_TEMPLATE, [[CKA.EXTRACTABLE, 0]])  # CK_BBOOL given as a number
    with pytest.raises(AttributeTypeInvalid):
        coerce(CKA.UNWRAP_TEMPLATE, [[0x7FFF0000, b""]])  # an attribute nobody knows


def test_unknown_attribute_types_are_type_invalid() -> None:
    """§4.1.1: an attribute that is not one the spec (or the token) defines is CKR_ATTRIBUTE_TYPE_INVALID."""
    for cka in (0x7FFF0000, CKA.VENDOR_DEFINED, CKA.OTP_FORMAT, CKA.HW_FEATURE_TYPE):
        with pytest.raises(AttributeTypeInvalid):
            rule_for(cka)
        with pytest.raises(AttributeTypeInvalid):
            coerce_template([[cka, b""]])
    with pytest.raises(AttributeTypeInvalid):
        coerce_template([[True, True]])  # a flag is not an attribute type


def test_template_shapes() -> None:
    assert coerce_template([]) == {}
    assert coerce_template([[CKA.TOKEN, True], [CKA.LABEL, b"l"]]) == {CKA.TOKEN: True, CKA.LABEL: b"l"}
    assert coerce_template({CKA.TOKEN: True}) == {CKA.TOKEN: True}
    for bad in (None, b"", [CKA.TOKEN, True], [[CKA.TOKEN]], [[CKA.LABEL, b"a"], [CKA.LABEL, b"a"]],
                [[n, b""] for n in range(MAX_TEMPLATE_ATTRIBUTES + 1)]):
        with pytest.raises(AttributeValueInvalid):
            coerce_template(bad)


def test_stored_form_round_trips_nested_templates() -> None:
    attributes = make_object(S, {CKA.WRAP_TEMPLATE: {CKA.EXTRACTABLE: False, CKA.ALLOWED_MECHANISMS: [1, 2]},
                                 CKA.ALLOWED_MECHANISMS: [CKM.AES_GCM]}).attributes
    assert from_wire(to_wire(attributes)) == attributes
