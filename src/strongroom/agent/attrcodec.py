"""Raw PKCS#11 attribute bytes <-> the typed values a node speaks.

The module sends attribute values as the application laid them out in memory: a
CK_ULONG is ``ulong_size`` bytes in the host's byte order (both told by the
C_Initialize hello), a CK_BBOOL one byte, byte arrays and CK_DATE as they are,
CKA_ALLOWED_MECHANISMS an array of CK_ULONG, and attributes whose type has
CKF_ARRAY_ATTRIBUTE (CKA_WRAP_TEMPLATE …) a nested template. The node wants
``bool`` / ``int`` / ``bytes`` / ``list[int]`` / nested ``[[type, value], …]``
(:mod:`strongroom.objects.attributes`). The kind of each attribute comes from the
node's rule table; an attribute the node does not know travels as bytes and the
node answers CKR_ATTRIBUTE_TYPE_INVALID.

:func:`read_values` applies C_GetAttributeValue's per-attribute algorithm
(PKCS#11 v2.40 §5.7) to the node's typed answer and the caller's capacities.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from strongroom.constants import CKA
from strongroom.errors import CKR
from strongroom.objects.attributes import RULES, Kind

#: CK_UNAVAILABLE_INFORMATION as the node stores it (a 64-bit ~0).
UNAVAILABLE_64 = (1 << 64) - 1
ARRAY_ATTRIBUTE = 0x40000000  # CKF_ARRAY_ATTRIBUTE
MAX_TEMPLATE_ATTRIBUTES = 256
MAX_ULONG_64 = (1 << 64) - 1


class CodecError(Exception):
    def __init__(self, code: CKR, message: str) -> None:
        super().__init__(message)
        self.code = int(code)


@dataclass(frozen=True)
class Layout:
    """How the application lays out CK_ULONG (from the C_Initialize hello)."""

    ulong_size: int = 8
    little_endian: bool = True

    def __post_init__(self) -> None:
        if self.ulong_size not in (4, 8):
            raise ValueError("CK_ULONG is 4 or 8 bytes")

    @property
    def byteorder(self) -> Literal["little", "big"]:
        return "little" if self.little_endian else "big"

    @property
    def ulong_max(self) -> int:
        return (1 << (8 * self.ulong_size)) - 1

    @property
    def unavailable(self) -> int:
        """CK_UNAVAILABLE_INFORMATION in the application's CK_ULONG."""
        return self.ulong_max

    @property
    def attribute_size(self) -> int:
        """sizeof(CK_ATTRIBUTE): type, pointer, length (pointer as wide as CK_ULONG on LP64/ILP32)."""
        return 3 * self.ulong_size

    def pack(self, value: int) -> bytes:
        if value == UNAVAILABLE_64:
            value = self.ulong_max
        return (value & self.ulong_max).to_bytes(self.ulong_size, self.byteorder)

    def unpack(self, raw: bytes) -> int:
        value = int.from_bytes(raw, self.byteorder)
        if self.ulong_size == 4 and value == self.ulong_max:
            return UNAVAILABLE_64  # ~0 means "unavailable" whatever the width
        return value


def kind_of(cka: int) -> Kind | None:
    rule = RULES.get(cka)
    return None if rule is None else rule.kind


def _attr_name(cka: int) -> str:
    try:
        return "CKA_" + CKA(cka).name
    except ValueError:
        return hex(cka)


# --- application -> node ----------------------------------------------------------------


def decode_value(cka: int, raw: Any, layout: Layout, *, nested: bool = False) -> Any:
    kind = kind_of(cka)
    if isinstance(raw, list):
        if nested:
            raise CodecError(CKR.TEMPLATE_INCONSISTENT, "array attributes cannot nest array attributes")
        if kind not in (None, Kind.TEMPLATE) or (kind is None and not cka & ARRAY_ATTRIBUTE):
            raise CodecError(CKR.ATTRIBUTE_VALUE_INVALID, f"{_attr_name(cka)} is not an array attribute")
        return decode_template(raw, layout, nested=True)
    if not isinstance(raw, bytes):
        raise CodecError(CKR.ARGUMENTS_BAD, f"the value of {_attr_name(cka)} must be bytes or a nested template")
    if kind is None or kind in (Kind.BYTES, Kind.DATE):
        return raw
    if kind is Kind.BOOL:
        if len(raw) != 1:
            raise CodecError(CKR.ATTRIBUTE_VALUE_INVALID, f"{_attr_name(cka)} is a CK_BBOOL (1 byte)")
        return raw[0] != 0
    if kind is Kind.ULONG:
        if len(raw) != layout.ulong_size:
            raise CodecError(CKR.ATTRIBUTE_VALUE_INVALID,
                             f"{_attr_name(cka)} is a CK_ULONG ({layout.ulong_size} bytes)")
        return layout.unpack(raw)
    if kind is Kind.MECHANISMS:
        size = layout.ulong_size
        if len(raw) % size:
            raise CodecError(CKR.ATTRIBUTE_VALUE_INVALID, f"{_attr_name(cka)} is an array of CK_ULONG")
        return [layout.unpack(raw[i:i + size]) for i in range(0, len(raw), size)]
    # Kind.TEMPLATE given as bytes: only an empty value (no template) makes sense.
    if raw:
        raise CodecError(CKR.ATTRIBUTE_VALUE_INVALID, f"{_attr_name(cka)} is an attribute template")
    return []


def decode_template(template: Any, layout: Layout, *, nested: bool = False) -> list[list[Any]]:
    """``[[type, raw], …]`` from the module -> ``[[type, typed], …]`` for the node.

    A type given twice with the same value is kept once; with different values the
    template contradicts itself (CKR_TEMPLATE_INCONSISTENT).
    """
    if not isinstance(template, list):
        raise CodecError(CKR.ARGUMENTS_BAD, "a template is an array of [type, value]")
    if len(template) > MAX_TEMPLATE_ATTRIBUTES:
        raise CodecError(CKR.ARGUMENTS_BAD, f"a template has at most {MAX_TEMPLATE_ATTRIBUTES} attributes")
    result: dict[int, Any] = {}
    for pair in template:
        if not isinstance(pair, list) or len(pair) != 2:
            raise CodecError(CKR.ARGUMENTS_BAD, "a template entry is [type, value]")
        cka, raw = pair
        if not isinstance(cka, int) or isinstance(cka, bool) or not 0 <= cka <= MAX_ULONG_64:
            raise CodecError(CKR.ARGUMENTS_BAD, "an attribute type is an unsigned integer")
        value = decode_value(cka, raw, layout, nested=nested)
        if cka in result and result[cka] != value:
            raise CodecError(CKR.TEMPLATE_INCONSISTENT, f"{_attr_name(cka)} is given twice with different values")
        result[cka] = value
    return [[k, v] for k, v in result.items()]


def template_flag(template: list[list[Any]], cka: int, default: bool = False) -> bool:
    """A boolean attribute of a decoded template (CKA_TOKEN …)."""
    for key, value in template:
        if key == cka:
            return bool(value)
    return default


# --- node -> application ----------------------------------------------------------------


def encode_value(cka: int, value: Any, layout: Layout) -> bytes | list[list[Any]]:
    """A typed node value as the application's raw bytes (or a nested raw template)."""
    kind = kind_of(cka)
    if isinstance(value, bool):
        return b"\x01" if value else b"\x00"
    if isinstance(value, int):
        return layout.pack(value)
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, dict):
        value = [[k, v] for k, v in value.items()]
    if isinstance(value, list):
        is_template = kind is Kind.TEMPLATE or (
            kind is None and bool(value) and all(isinstance(p, list) and len(p) == 2 for p in value)
        )
        if is_template:
            return [[int(k), encode_value(int(k), v, layout)] for k, v in value]
        return b"".join(layout.pack(int(v)) for v in value)
    if value is None:
        return b""
    raise CodecError(CKR.GENERAL_ERROR, f"the node sent an unexpected value for {_attr_name(cka)}")


def encoded_length(encoded: bytes | list[Any], layout: Layout) -> int:
    if isinstance(encoded, list):
        return len(encoded) * layout.attribute_size
    return len(encoded)


def read_values(
    requests: list[tuple[int, int]],
    node_values: list[Any],
    node_error: int | None,
    layout: Layout,
) -> tuple[int, list[list[Any]]]:
    """C_GetAttributeValue: ``(rv, [[value_or_None, length], …])`` in request order.

    ``requests`` are ``(type, cap)`` with cap -1 for a NULL pValue (length query);
    ``node_values`` the node's typed value per type (None: sensitive or not an
    attribute of the object, ``node_error`` telling which). Per §5.7: an unavailable
    attribute gets CK_UNAVAILABLE_INFORMATION; a NULL pValue gets the exact length; a
    buffer that fits gets the value; a short one gets CK_UNAVAILABLE_INFORMATION and
    makes the call CKR_BUFFER_TOO_SMALL. Every attribute is processed whatever happens;
    CKR_ATTRIBUTE_SENSITIVE and CKR_ATTRIBUTE_TYPE_INVALID take precedence over
    CKR_BUFFER_TOO_SMALL.
    """
    out: list[list[Any]] = []
    unavailable = False
    too_small = False
    for (cka, cap), value in zip(requests, node_values, strict=True):
        if value is None:
            out.append([None, layout.unavailable])
            unavailable = True
            continue
        encoded = encode_value(cka, value, layout)
        length = encoded_length(encoded, layout)
        if cap < 0:
            out.append([None, length])
        elif cap >= length:
            out.append([encoded, length])
        else:
            out.append([None, layout.unavailable])
            too_small = True
    if unavailable:
        code = node_error if node_error in (CKR.ATTRIBUTE_SENSITIVE, CKR.ATTRIBUTE_TYPE_INVALID) \
            else CKR.ATTRIBUTE_TYPE_INVALID
    elif too_small:
        code = CKR.BUFFER_TOO_SMALL
    else:
        code = CKR.OK
    return int(code), out
