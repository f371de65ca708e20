"""Applying the attribute rules: making objects, changing them, reading them."""

from __future__ import annotations

from typing import Any

from strongroom.constants import CKA, CKK, CKO
from strongroom.errors import (
    ActionProhibited,
    AttributeReadOnly,
    AttributeSensitive,
    AttributeTypeInvalid,
    AttributeValueInvalid,
    TemplateIncomplete,
    TemplateInconsistent,
)
from strongroom.objects.attributes import RULES, Copy, Direction, Op, copy_rule, rule_for
from strongroom.objects.model import StoredObject

_CIPHER_USES = (CKA.ENCRYPT, CKA.DECRYPT, CKA.WRAP, CKA.UNWRAP)
_UNABLE: dict[int, tuple[int, ...]] = {
    CKK.EC: _CIPHER_USES,
    CKK.EC_EDWARDS: (*_CIPHER_USES, CKA.DERIVE),
    CKK.GENERIC_SECRET: _CIPHER_USES,
    CKK.ML_DSA: (*_CIPHER_USES, CKA.DERIVE),
    CKK.ML_KEM: (*_CIPHER_USES, CKA.SIGN, CKA.VERIFY, CKA.DERIVE),
    # Typed HMAC keys (PKCS#11 v2.40, 3.0) only MAC; CKK_HKDF keys (3.0) only derive.
    **{key_type: _CIPHER_USES for key_type in (CKK.SHA_1_HMAC, CKK.SHA224_HMAC, CKK.SHA256_HMAC, CKK.SHA384_HMAC,
                                               CKK.SHA512_HMAC, CKK.SHA3_224_HMAC, CKK.SHA3_256_HMAC,
                                               CKK.SHA3_384_HMAC, CKK.SHA3_512_HMAC)},
    CKK.HKDF: (*_CIPHER_USES, CKA.SIGN, CKA.VERIFY),
}

#: The usage a key type exists for, per class, where the attribute has no default of its own: true unless the
#: template says false, however the key was made (generated, unwrapped, imported), as key generation sets it.
_ABLE: dict[int, dict[CKO, tuple[int, ...]]] = {
    CKK.ML_KEM: {CKO.PUBLIC_KEY: (CKA.ENCAPSULATE,), CKO.PRIVATE_KEY: (CKA.DECAPSULATE,)},
}

#: Attributes that describe what an object is; a caller may repeat them but not contradict them.
IDENTITY = (CKA.CLASS, CKA.KEY_TYPE)

#: Classes whose objects are public (CKA_PRIVATE false) unless the template says otherwise.
PUBLIC_BY_DEFAULT = frozenset({CKO.PUBLIC_KEY, CKO.CERTIFICATE})

_RSA = frozenset({CKK.RSA})
_CURVES = frozenset({CKK.EC, CKK.EC_EDWARDS, 0x41})  # 0x41: CKK_EC_MONTGOMERY (PKCS#11 3.0)
#: Key attributes of one key type family (PKCS#11 v2.40 current mechanisms §2.1.2, §2.3.3): in a template for
#: another key type they are CKR_TEMPLATE_INCONSISTENT (§4.1.1), not stored beside the key.
KEY_TYPE_ONLY: dict[int, frozenset[int]] = {
    **{cka: _RSA for cka in (CKA.MODULUS, CKA.MODULUS_BITS, CKA.PUBLIC_EXPONENT, CKA.PRIVATE_EXPONENT,
                             CKA.PRIME_1, CKA.PRIME_2, CKA.EXPONENT_1, CKA.EXPONENT_2, CKA.COEFFICIENT)},
    CKA.EC_PARAMS: _CURVES,
    CKA.EC_POINT: _CURVES,
}


def check_key_type_attributes(key_type: int, supplied: dict[int, Any]) -> None:
    """TemplateInconsistent when ``supplied`` has an attribute of another key type's family (§4.1.1)."""
    for cka in supplied:
        types = KEY_TYPE_ONLY.get(cka)
        if types is not None and key_type not in types:
            raise TemplateInconsistent(f"{_name(cka)} does not apply to keys of type {_key_type_name(key_type)}")


def _name(cka: int) -> str:
    try:
        return "CKA_" + CKA(cka).name
    except ValueError:
        return hex(cka)


def check_supplied(op: Op, object_class: int, supplied: dict[int, Any], *, is_admin: bool) -> None:
    """Refuse attributes the caller may not give in this call (before anything is computed)."""
    for cka, value in supplied.items():
        rule = rule_for(cka)
        if object_class not in rule.classes:
            # PKCS#11 v2.40 §4.1.1: "trying to create a secret key object with an attribute which is
            # appropriate for various types of public keys or private keys, but not for secret keys".
            raise TemplateInconsistent(f"{_name(cka)} does not apply to {CKO(object_class).name} objects")
        if rule.maintained:
            raise AttributeReadOnly(f"{_name(cka)} is maintained by the HSM and cannot be set")
        if rule.admin_only and value != rule.default and not is_admin:
            raise AttributeReadOnly(f"only an admin may set {_name(cka)}")
        if not (rule.settable & op):
            raise AttributeReadOnly(f"{_name(cka)} cannot be given when the object is made this way ({op.name})")


def build(
    op: Op,
    object_class: CKO,
    supplied: dict[int, Any],
    computed: dict[int, Any],
    *,
    is_admin: bool = False,
    key_gen_mechanism: int | None = None,
) -> dict[int, Any]:
    """The attributes of a new object: caller's values, rule defaults, computed and maintained ones.

    ``computed`` are values the node determined (key type, public values of a generated
    key, lengths); a supplied value that contradicts one is TEMPLATE_INCONSISTENT.
    """
    supplied = _check_value_given(supplied, computed)
    check_supplied(op, object_class, {k: v for k, v in supplied.items() if k not in computed or k in IDENTITY},
                   is_admin=is_admin)
    if supplied.get(CKA.CLASS, object_class) != object_class:
        raise TemplateInconsistent(f"the template names another class than the {object_class.name} this call makes")
    for cka, value in computed.items():
        if cka in supplied and supplied[cka] != value:
            raise TemplateInconsistent(f"{_name(cka)} contradicts what the HSM determined for this object")
    key_type = computed.get(CKA.KEY_TYPE, supplied.get(CKA.KEY_TYPE))
    if key_type is not None:
        check_key_type_attributes(key_type, {k: v for k, v in supplied.items() if k not in computed})
    attributes: dict[int, Any] = {}
    for cka, rule in RULES.items():
        if object_class not in rule.classes:
            continue
        if cka in computed:
            attributes[cka] = computed[cka]
        elif cka in supplied:
            attributes[cka] = supplied[cka]
        elif rule.default is not None:
            attributes[cka] = rule.default
    attributes[CKA.CLASS] = object_class
    if object_class in PUBLIC_BY_DEFAULT and CKA.PRIVATE not in supplied:
        # As SoftHSMv2 and the clients expect: public keys and certificates are public objects unless
        # their maker says otherwise (keys to keep secret, data: private).
        attributes[CKA.PRIVATE] = False
    if object_class in (CKO.SECRET_KEY, CKO.PUBLIC_KEY, CKO.PRIVATE_KEY):
        if CKA.KEY_TYPE not in attributes:
            raise TemplateIncomplete("CKA_KEY_TYPE is required")
        # A usage the key type cannot perform defaults to false (an EC key never "decrypts").
        unable = _UNABLE.get(attributes[CKA.KEY_TYPE], ())
        for cka in unable:
            if cka in attributes and cka not in supplied and cka not in computed:
                attributes[cka] = False
        for cka in _ABLE.get(attributes[CKA.KEY_TYPE], {}).get(object_class, ()):
            attributes.setdefault(cka, True)
        local = op is Op.GENERATE
        attributes[CKA.LOCAL] = local
        if key_gen_mechanism is not None:
            attributes[CKA.KEY_GEN_MECHANISM] = key_gen_mechanism
        else:
            attributes.setdefault(CKA.KEY_GEN_MECHANISM, 0xFFFFFFFFFFFFFFFF)  # CK_UNAVAILABLE_INFORMATION
    if object_class in (CKO.SECRET_KEY, CKO.PRIVATE_KEY):
        # A key made outside the HSM (unwrapped, derived from one that was not) was not always
        # sensitive and may have been extractable at some point.
        fresh = op is Op.GENERATE
        attributes[CKA.ALWAYS_SENSITIVE] = fresh and attributes[CKA.SENSITIVE]
        attributes[CKA.NEVER_EXTRACTABLE] = fresh and not attributes[CKA.EXTRACTABLE]
    return attributes


def _check_value_given(supplied: dict[int, Any], computed: dict[int, Any]) -> dict[int, Any]:
    """CKA_CHECK_VALUE in a template is "allowed but never necessary" (PKCS#11 v2.40 §4.6.1, §4.10): one that
    differs from the value the HSM computed is CKR_ATTRIBUTE_VALUE_INVALID; where the HSM computes none (a
    generic secret, a certificate) it is ignored. The rest of the template goes on."""
    if CKA.CHECK_VALUE not in supplied:
        return supplied
    given = supplied[CKA.CHECK_VALUE]
    rest = {k: v for k, v in supplied.items() if k != CKA.CHECK_VALUE}
    expected = computed.get(CKA.CHECK_VALUE)
    if expected is not None and given != expected:
        raise AttributeValueInvalid("CKA_CHECK_VALUE does not match the key's value")
    return rest


def _key_type_name(key_type: Any) -> str:
    try:
        return "CKK_" + CKK(key_type).name
    except ValueError:
        return hex(key_type)


def copy_attributes(source: StoredObject, supplied: dict[int, Any]) -> dict[int, Any]:
    """C_CopyObject: the source's attributes with the allowed changes applied (each attribute's
    :class:`~strongroom.objects.attributes.Copy` rule; a copy never loosens its source)."""
    if not source.flag(CKA.COPYABLE):
        raise ActionProhibited("the object has CKA_COPYABLE false")
    attributes = dict(source.attributes)
    for cka, rule in RULES.items():
        if copy_rule(rule) is Copy.RESET and cka in attributes:
            attributes[cka] = rule.default
    modifiable = source.flag(CKA.MODIFIABLE)
    for cka, value in supplied.items():
        rule = rule_for(cka)
        if source.object_class not in rule.classes:
            raise AttributeTypeInvalid(f"{_name(cka)} does not apply to {source.object_class.name} objects")
        current = attributes.get(cka)
        if value == current:
            continue  # repeating a value is no change
        policy = copy_rule(rule)
        if policy in (Copy.KEEP, Copy.RESET):
            raise AttributeReadOnly(f"{_name(cka)} cannot be changed in a copy")
        if policy is Copy.ONE_WAY:
            _check_direction(cka, current, value)
        elif policy is Copy.SUBSET:
            if current and (not value or not set(value) <= set(current)):
                raise AttributeReadOnly(f"{_name(cka)} of a copy may only leave out mechanisms its source allows")
        elif policy is Copy.NARROW:
            if value is True and not modifiable:
                raise AttributeReadOnly(f"{_name(cka)} cannot be switched on in a copy of an object whose "
                                        "CKA_MODIFIABLE is false")
        elif policy is Copy.AS_SET and not modifiable:
            raise AttributeReadOnly(f"{_name(cka)} cannot be changed in a copy of an object whose CKA_MODIFIABLE "
                                    "is false")
        attributes[cka] = value
    return attributes


def check_set(obj: StoredObject, changes: dict[int, Any], *, is_admin: bool) -> dict[int, Any]:
    """C_SetAttributeValue: who may change what, and in which direction."""
    if not obj.flag(CKA.MODIFIABLE):
        raise ActionProhibited("the object has CKA_MODIFIABLE false")
    for cka, value in changes.items():
        rule = rule_for(cka)
        if obj.object_class not in rule.classes:
            raise AttributeTypeInvalid(f"{_name(cka)} does not apply to {obj.object_class.name} objects")
        if rule.maintained or not (rule.settable & Op.SET) or cka in IDENTITY:
            raise AttributeReadOnly(f"{_name(cka)} cannot be changed")
        if rule.admin_only != is_admin:
            if is_admin:
                raise ActionProhibited(f"an admin may change only CKA_TRUSTED, not {_name(cka)}")
            raise AttributeReadOnly(f"only an admin may set {_name(cka)}")
        _check_direction(cka, obj.attributes.get(cka), value)
    updated = dict(obj.attributes)
    updated.update(changes)
    return updated


def _check_direction(cka: int, current: Any, new: Any) -> None:
    rule = RULES[cka]
    if rule.direction is Direction.TO_TRUE and current is True and new is False:
        raise AttributeReadOnly(f"{_name(cka)} can only change from false to true")
    if rule.direction is Direction.TO_FALSE and current is False and new is True:
        raise AttributeReadOnly(f"{_name(cka)} can only change from true to false")


def read(obj: StoredObject, types: list[int], *, reveal: bool = False) -> tuple[list[list[Any]], int | None]:
    """C_GetAttributeValue: [type, value-or-None] per type, and the error code of the call if any.

    As the spec asks, every attribute is processed even after an error; an unreadable
    one comes back as None and the call reports the (last) error.

    Key material (a key's CKA_VALUE, an RSA key's private components) is sensitive unless the key has
    CKA_SENSITIVE false and CKA_EXTRACTABLE true (PKCS#11 v2.40 §4.9, §4.10) and ``reveal`` says the
    caller may have it (it may use the key: :mod:`strongroom.objects.access`).
    """
    from strongroom.errors import CKR
    from strongroom.objects.keys import clear_value

    values: list[list[Any]] = []
    error: int | None = None
    key_type = obj.attributes.get(CKA.KEY_TYPE)
    for cka in types:
        rule = RULES.get(cka)
        only = KEY_TYPE_ONLY.get(cka)
        if rule is None or obj.object_class not in rule.classes or (only is not None and key_type not in only):
            values.append([cka, None])
            error = CKR.ATTRIBUTE_TYPE_INVALID
        elif not obj.readable(cka):
            clear = clear_value(obj, cka) if reveal and obj.revealable() else None
            if clear is not None:
                values.append([cka, clear])
                continue
            values.append([cka, None])
            error = CKR.ATTRIBUTE_SENSITIVE
        else:
            value = obj.attributes.get(cka)
            if value is None and rule.kind.value in ("bool", "ulong"):
                # A number or flag the object does not carry: the spec's "invalid for this object".
                values.append([cka, None])
                error = CKR.ATTRIBUTE_TYPE_INVALID
                continue
            if value is None:
                value = [] if rule.kind.value in ("mechanisms", "template") else b""
            values.append([cka, _wire(value)])
    return values, error


def _wire(value: Any) -> Any:
    if isinstance(value, dict):
        return [[k, _wire(v)] for k, v in value.items()]
    return value


def matches(obj: StoredObject, template: dict[int, Any]) -> bool:
    """C_FindObjects: every attribute of the template is present with that exact value (secrets never match)."""
    for cka, value in template.items():
        if not obj.readable(cka) or obj.attributes.get(cka) != value:
            return False
    return True


def require_sensitive_readable(obj: StoredObject, cka: int) -> None:
    if not obj.readable(cka):
        raise AttributeSensitive(f"{_name(cka)} of a key is never revealed")
