"""One rule per attribute: which classes have it, its type, default, who may set it and when.

This is SoftHSMv2's attribute-per-class idea as a table instead of a class per
attribute: each :class:`Rule` answers, for one ``CKA_*``, the questions the spec asks
— required? defaulted? settable at create / generate / unwrap / copy / derive?
modifiable later, and in which direction? ever readable? — and the functions in
:mod:`strongroom.objects.templates` apply them.

Values above the wire are typed: ``bool`` for CK_BBOOL, ``int`` for CK_ULONG,
``bytes`` for byte arrays (labels are UTF-8 bytes), ``list[int]`` for
CKA_ALLOWED_MECHANISMS and a nested ``{cka: value}`` map for the *_TEMPLATE attributes.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from strongroom.constants import CKA, CKO
from strongroom.errors import AttributeTypeInvalid, AttributeValueInvalid

MAX_ATTRIBUTE_BYTES = 64 * 1024
MAX_LABEL_BYTES = 256
MAX_TEMPLATE_ATTRIBUTES = 256  # as the module-agent protocol allows


class Kind(enum.Enum):
    BOOL = "bool"
    ULONG = "ulong"
    BYTES = "bytes"
    DATE = "date"  # CK_DATE: 8 ASCII digits YYYYMMDD, or empty
    MECHANISMS = "mechanisms"
    TEMPLATE = "template"


class Op(enum.Flag):
    """The calls through which a caller may supply an attribute."""

    CREATE = enum.auto()
    GENERATE = enum.auto()
    UNWRAP = enum.auto()
    COPY = enum.auto()
    DERIVE = enum.auto()
    SET = enum.auto()  # C_SetAttributeValue on an existing object
    NONE = 0


ALL_MAKE = Op.CREATE | Op.GENERATE | Op.UNWRAP | Op.DERIVE
ANY = ALL_MAKE | Op.COPY | Op.SET
MAKE_COPY = ALL_MAKE | Op.COPY


class Direction(enum.Enum):
    ANY = "any"
    TO_TRUE = "false->true"  # CKA_SENSITIVE, CKA_WRAP_WITH_TRUSTED
    TO_FALSE = "true->false"  # CKA_EXTRACTABLE


class Copy(enum.Enum):
    """What C_CopyObject may do to an attribute. PKCS#11 v2.40 §5.7 lets its template give new
    values "for any attributes of the object that can ordinarily be modified" (CKA_EXTRACTABLE
    true->false but not back, CKA_SENSITIVE to true) and for CKA_TOKEN and CKA_PRIVATE; a token
    may refuse more. Strongroom's rule: a copy can never do what its source cannot. A value equal
    to the source's is no change and always accepted."""

    FREE = "any value"  # CKA_TOKEN: where the copy lives
    AS_SET = "as C_SetAttributeValue could change the source (it must be CKA_MODIFIABLE)"
    NARROW = "a usage may be switched off; on only where the source could be switched on (CKA_MODIFIABLE)"
    ONE_WAY = "only in the attribute's direction"
    SUBSET = "may only shrink (an empty list allows every mechanism)"
    KEEP = "never changes"
    RESET = "not carried: the copy gets the default"  # CKA_TRUSTED: set by an admin, per key


KEY_CLASSES = frozenset({CKO.SECRET_KEY, CKO.PUBLIC_KEY, CKO.PRIVATE_KEY})
ALL_CLASSES = frozenset({CKO.DATA, CKO.CERTIFICATE, *KEY_CLASSES})
SECRET_OR_PRIVATE = frozenset({CKO.SECRET_KEY, CKO.PRIVATE_KEY})
SECRET_OR_PUBLIC = frozenset({CKO.SECRET_KEY, CKO.PUBLIC_KEY})


@dataclass(frozen=True)
class Rule:
    cka: CKA
    kind: Kind
    classes: frozenset[CKO]
    settable: Op = ANY
    default: Any = None  # None: the attribute is absent unless given
    direction: Direction = Direction.ANY
    #: Never returned to anyone (key material); reads give CKR_ATTRIBUTE_SENSITIVE.
    secret: bool = False
    #: Only an admin (security officer) may set it (CKA_TRUSTED).
    admin_only: bool = False
    #: Set by the node, never by a caller (CKA_LOCAL, CKA_ALWAYS_SENSITIVE …).
    maintained: bool = False
    max_bytes: int = MAX_ATTRIBUTE_BYTES
    #: C_CopyObject's rule; None: follows from the rest of the row (see :func:`copy_rule`).
    copy: Copy | None = None


def _r(cka: CKA, kind: Kind, classes: frozenset[CKO], **kw: Any) -> Rule:
    return Rule(cka, kind, classes, **kw)


_B, _U, _Y, _D = Kind.BOOL, Kind.ULONG, Kind.BYTES, Kind.DATE
FIXED = MAKE_COPY & ~Op.COPY  # given when the object is made, never changed afterwards
_USAGE = Copy.NARROW

RULES: dict[int, Rule] = {
    rule.cka: rule
    for rule in [
        # --- every object -----------------------------------------------------------
        _r(CKA.CLASS, _U, ALL_CLASSES, settable=ALL_MAKE),
        _r(CKA.TOKEN, _B, ALL_CLASSES, settable=MAKE_COPY, default=False),
        # A copy may make an object private, never public (a loosening once public objects are served).
        _r(CKA.PRIVATE, _B, ALL_CLASSES, settable=MAKE_COPY, default=True, direction=Direction.TO_TRUE),
        _r(CKA.MODIFIABLE, _B, ALL_CLASSES, settable=MAKE_COPY, default=True, direction=Direction.TO_FALSE),
        _r(CKA.COPYABLE, _B, ALL_CLASSES, settable=MAKE_COPY | Op.SET, default=True, direction=Direction.TO_FALSE),
        _r(CKA.DESTROYABLE, _B, ALL_CLASSES, default=True),
        _r(CKA.LABEL, _Y, ALL_CLASSES, default=b"", max_bytes=MAX_LABEL_BYTES),
        # --- data objects ---------------------------------------------------------------
        _r(CKA.APPLICATION, _Y, frozenset({CKO.DATA}), default=b"", max_bytes=MAX_LABEL_BYTES),
        _r(CKA.OBJECT_ID, _Y, frozenset({CKO.DATA}), default=b""),
        # CKA_VALUE: readable for data objects and certificates, secret for keys (see is_secret). Never in
        # C_UnwrapKey's template (PKCS#11 v2.40 footnote 6): the key's value is what was unwrapped.
        # Public keys too since PKCS#11 3.2: an ML-DSA or ML-KEM public key is its CKA_VALUE.
        _r(CKA.VALUE, _Y, frozenset({CKO.DATA, CKO.CERTIFICATE, CKO.SECRET_KEY, CKO.PRIVATE_KEY, CKO.PUBLIC_KEY}),
           settable=Op.CREATE),
        # --- certificates -------------------------------------------------------------------
        _r(CKA.CERTIFICATE_TYPE, _U, frozenset({CKO.CERTIFICATE}), settable=Op.CREATE),
        _r(CKA.CERTIFICATE_CATEGORY, _U, frozenset({CKO.CERTIFICATE}), default=0),
        _r(CKA.ISSUER, _Y, frozenset({CKO.CERTIFICATE}), default=b""),
        _r(CKA.SERIAL_NUMBER, _Y, frozenset({CKO.CERTIFICATE}), default=b""),
        _r(CKA.URL, _Y, frozenset({CKO.CERTIFICATE}), default=b""),
        _r(CKA.HASH_OF_SUBJECT_PUBLIC_KEY, _Y, frozenset({CKO.CERTIFICATE}), default=b""),
        _r(CKA.HASH_OF_ISSUER_PUBLIC_KEY, _Y, frozenset({CKO.CERTIFICATE}), default=b""),
        _r(CKA.JAVA_MIDP_SECURITY_DOMAIN, _U, frozenset({CKO.CERTIFICATE}), default=0),
        _r(CKA.CHECK_VALUE, _Y, frozenset({CKO.CERTIFICATE, CKO.SECRET_KEY}), settable=Op.NONE, maintained=True),
        # --- keys -----------------------------------------------------------------------------
        _r(CKA.KEY_TYPE, _U, KEY_CLASSES, settable=ALL_MAKE),
        _r(CKA.ID, _Y, KEY_CLASSES | {CKO.CERTIFICATE}, default=b"", max_bytes=MAX_LABEL_BYTES),
        _r(CKA.START_DATE, _D, KEY_CLASSES | {CKO.CERTIFICATE}, default=b""),
        _r(CKA.END_DATE, _D, KEY_CLASSES | {CKO.CERTIFICATE}, default=b""),
        _r(CKA.SUBJECT, _Y, frozenset({CKO.PUBLIC_KEY, CKO.PRIVATE_KEY, CKO.CERTIFICATE}), default=b""),
        _r(CKA.DERIVE, _B, KEY_CLASSES, default=False, copy=_USAGE),
        _r(CKA.LOCAL, _B, KEY_CLASSES, settable=Op.NONE, maintained=True),
        _r(CKA.KEY_GEN_MECHANISM, _U, KEY_CLASSES, settable=Op.NONE, maintained=True),
        _r(CKA.ALLOWED_MECHANISMS, Kind.MECHANISMS, KEY_CLASSES, settable=MAKE_COPY, copy=Copy.SUBSET),
        # Usage flags. Defaults follow SoftHSMv2: what a key type can do, it may do unless told not to.
        _r(CKA.ENCRYPT, _B, SECRET_OR_PUBLIC, default=True, copy=_USAGE),
        _r(CKA.VERIFY, _B, SECRET_OR_PUBLIC, default=True, copy=_USAGE),
        _r(CKA.VERIFY_RECOVER, _B, frozenset({CKO.PUBLIC_KEY}), default=False, copy=_USAGE),
        _r(CKA.WRAP, _B, SECRET_OR_PUBLIC, default=True, copy=_USAGE),
        _r(CKA.DECRYPT, _B, SECRET_OR_PRIVATE, default=True, copy=_USAGE),
        _r(CKA.SIGN, _B, SECRET_OR_PRIVATE, default=True, copy=_USAGE),
        _r(CKA.SIGN_RECOVER, _B, frozenset({CKO.PRIVATE_KEY}), default=False, copy=_USAGE),
        _r(CKA.UNWRAP, _B, SECRET_OR_PRIVATE, default=True, copy=_USAGE),
        _r(CKA.TRUSTED, _B, SECRET_OR_PUBLIC | {CKO.CERTIFICATE}, default=False, admin_only=True, copy=Copy.RESET),
        _r(CKA.WRAP_TEMPLATE, Kind.TEMPLATE, SECRET_OR_PUBLIC, settable=ALL_MAKE, copy=Copy.KEEP),
        _r(CKA.UNWRAP_TEMPLATE, Kind.TEMPLATE, SECRET_OR_PRIVATE, settable=ALL_MAKE, copy=Copy.KEEP),
        _r(CKA.SENSITIVE, _B, SECRET_OR_PRIVATE, default=True, direction=Direction.TO_TRUE),
        _r(CKA.EXTRACTABLE, _B, SECRET_OR_PRIVATE, default=False, direction=Direction.TO_FALSE),
        _r(CKA.WRAP_WITH_TRUSTED, _B, SECRET_OR_PRIVATE, default=False, direction=Direction.TO_TRUE),
        _r(CKA.ALWAYS_SENSITIVE, _B, SECRET_OR_PRIVATE, settable=Op.NONE, maintained=True),
        _r(CKA.NEVER_EXTRACTABLE, _B, SECRET_OR_PRIVATE, settable=Op.NONE, maintained=True),
        _r(CKA.ALWAYS_AUTHENTICATE, _B, frozenset({CKO.PRIVATE_KEY}), settable=MAKE_COPY, default=False,
           direction=Direction.TO_TRUE),
        _r(CKA.VALUE_LEN, _U, frozenset({CKO.SECRET_KEY}), settable=Op.GENERATE | Op.UNWRAP | Op.DERIVE),
        # Public values of asymmetric keys: given when a public key is imported, computed otherwise.
        _r(CKA.MODULUS, _Y, frozenset({CKO.PUBLIC_KEY, CKO.PRIVATE_KEY}), settable=Op.CREATE),
        _r(CKA.MODULUS_BITS, _U, frozenset({CKO.PUBLIC_KEY}), settable=Op.GENERATE),
        _r(CKA.PUBLIC_EXPONENT, _Y, frozenset({CKO.PUBLIC_KEY, CKO.PRIVATE_KEY}), settable=Op.CREATE | Op.GENERATE),
        _r(CKA.EC_PARAMS, _Y, frozenset({CKO.PUBLIC_KEY, CKO.PRIVATE_KEY}), settable=Op.CREATE | Op.GENERATE),
        _r(CKA.EC_POINT, _Y, frozenset({CKO.PUBLIC_KEY}), settable=Op.CREATE),
        _r(CKA.PUBLIC_KEY_INFO, _Y, frozenset({CKO.PUBLIC_KEY, CKO.PRIVATE_KEY}), settable=Op.NONE,
           maintained=True),
        # PKCS#11 3.2 (ML-DSA, ML-KEM): the parameter set, the KEM usages, and the seed (held in the
        # private key's material, never readable).
        _r(CKA.PARAMETER_SET, _U, frozenset({CKO.PUBLIC_KEY, CKO.PRIVATE_KEY}), settable=Op.CREATE | Op.GENERATE),
        _r(CKA.ENCAPSULATE, _B, frozenset({CKO.PUBLIC_KEY}), copy=_USAGE),
        _r(CKA.DECAPSULATE, _B, frozenset({CKO.PRIVATE_KEY}), copy=_USAGE),
        _r(CKA.SEED, _Y, frozenset({CKO.PRIVATE_KEY}), settable=Op.NONE, secret=True),
        # Strongroom's vendor-defined attributes: the key's quorum values (CloudHSM's manage-key-quorum-value and
        # use-key-quorum-value; 0 = none), given when the key is made and never changed (dispatch/quorum.py).
        _r(CKA.STRONGROOM_MANAGE_KEY_QUORUM, _U, SECRET_OR_PRIVATE, settable=ALL_MAKE, default=0, copy=Copy.KEEP),
        _r(CKA.STRONGROOM_USE_KEY_QUORUM, _U, SECRET_OR_PRIVATE, settable=ALL_MAKE, default=0, copy=Copy.KEEP),
        # Private components: held inside the node only, never readable, never set in clear.
        *[
            _r(cka, _Y, frozenset({CKO.PRIVATE_KEY}), settable=Op.NONE, secret=True)
            for cka in (CKA.PRIVATE_EXPONENT, CKA.PRIME_1, CKA.PRIME_2, CKA.EXPONENT_1, CKA.EXPONENT_2,
                        CKA.COEFFICIENT)
        ],
    ]
}


def copy_rule(rule: Rule) -> Copy:
    """C_CopyObject's rule for an attribute: its own, else what the rest of its row implies."""
    if rule.copy is not None:
        return rule.copy
    if rule.maintained or not rule.settable & Op.COPY:
        return Copy.KEEP
    if rule.direction is not Direction.ANY:
        return Copy.ONE_WAY
    if rule.settable & Op.SET:
        return Copy.AS_SET
    return Copy.FREE


def rule_for(cka: int) -> Rule:
    rule = RULES.get(cka)
    if rule is None:
        try:
            name = CKA(cka).name
        except ValueError:
            name = hex(cka)
        raise AttributeTypeInvalid(f"attribute CKA_{name} is not supported")
    return rule


def is_secret(cka: int, object_class: int) -> bool:
    """Key material is never readable: CKA_VALUE of keys and the private components."""
    if cka == CKA.VALUE:
        return object_class in (CKO.SECRET_KEY, CKO.PRIVATE_KEY)
    rule = RULES.get(cka)
    return rule is not None and rule.secret


def coerce(cka: int, value: Any) -> Any:
    """Check a caller's value against the attribute's type and size; return the stored form."""
    rule = rule_for(cka)
    name = f"CKA_{CKA(cka).name}"
    if rule.kind is Kind.BOOL:
        if not isinstance(value, bool):
            raise AttributeValueInvalid(f"{name} is a boolean")
        return value
    if rule.kind is Kind.ULONG:
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 1 << 64:
            raise AttributeValueInvalid(f"{name} is an unsigned integer")
        return value
    if rule.kind in (Kind.BYTES, Kind.DATE):
        if not isinstance(value, bytes) or len(value) > rule.max_bytes:
            raise AttributeValueInvalid(f"{name} is a byte string of at most {rule.max_bytes} bytes")
        if rule.kind is Kind.DATE and value and not (len(value) == 8 and value.isdigit()):
            raise AttributeValueInvalid(f"{name} is a CK_DATE: 8 digits YYYYMMDD, or empty")
        return value
    if rule.kind is Kind.MECHANISMS:
        if not isinstance(value, list) or len(value) > 256 or not all(
            isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 1 << 64 for v in value
        ):
            raise AttributeValueInvalid(f"{name} is a list of mechanism numbers")
        return list(value)
    # Kind.TEMPLATE: a nested attribute map whose values follow the same rules.
    pairs = _pairs(value)
    if pairs is None:
        raise AttributeValueInvalid(f"{name} is an attribute template")
    nested = {}
    for key, inner in pairs:
        if not isinstance(key, int) or rule_for(key).kind is Kind.TEMPLATE:
            raise AttributeValueInvalid(f"{name} may not nest templates")
        nested[key] = coerce(key, inner)
    return nested


def _pairs(template: Any) -> list[tuple[Any, Any]] | None:
    """A template travels as a list of [type, value] pairs (msgpack maps only take string keys here)."""
    if isinstance(template, dict):
        items = list(template.items())
    elif isinstance(template, list) and all(isinstance(p, list) and len(p) == 2 for p in template):
        items = [(p[0], p[1]) for p in template]
    else:
        return None
    if len(items) > MAX_TEMPLATE_ATTRIBUTES or len({k for k, _ in items if isinstance(k, int)}) != len(items):
        return None
    return items


def to_wire(attributes: dict[int, Any]) -> list[list[Any]]:
    return [[key, to_wire(value) if isinstance(value, dict) else value] for key, value in attributes.items()]


def coerce_template(template: Any) -> dict[int, Any]:
    pairs = _pairs(template)
    if pairs is None:
        raise AttributeValueInvalid(
            f"a template is a list of at most {MAX_TEMPLATE_ATTRIBUTES} [type, value] pairs, each type once"
        )
    result = {}
    for key, value in pairs:
        if not isinstance(key, int) or isinstance(key, bool):
            raise AttributeTypeInvalid(f"attribute type {key!r} is not a number")
        result[key] = coerce(key, value)
    return result
