"""The agent's attribute codec: raw PKCS#11 bytes <-> typed node values, and C_GetAttributeValue's rules."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from strongroom.agent.attrcodec import (
    UNAVAILABLE_64,
    CodecError,
    Layout,
    decode_template,
    decode_value,
    encode_value,
    read_values,
    template_flag,
)
from strongroom.constants import CKA, CKM, CKO
from strongroom.errors import CKR
from strongroom.objects.attributes import RULES, Kind

LAYOUTS = [Layout(8, True), Layout(8, False), Layout(4, True), Layout(4, False)]
layouts = st.sampled_from(LAYOUTS)


def attrs_of(kind: Kind) -> list[int]:
    return sorted(cka for cka, rule in RULES.items() if rule.kind is kind)


def typed_value(kind: Kind, layout: Layout) -> st.SearchStrategy[Any]:
    ulong = st.integers(0, layout.ulong_max - 1)
    if kind is Kind.BOOL:
        return st.booleans()
    if kind is Kind.ULONG:
        return ulong
    if kind is Kind.BYTES:
        return st.binary(max_size=300)
    if kind is Kind.DATE:
        return st.sampled_from([b"", b"20240131", b"19991231"])
    if kind is Kind.MECHANISMS:
        return st.lists(ulong, max_size=20)
    raise AssertionError(kind)


@st.composite
def flat_attribute(draw: Any, layout: Layout) -> tuple[int, Any]:
    kind = draw(st.sampled_from([Kind.BOOL, Kind.ULONG, Kind.BYTES, Kind.DATE, Kind.MECHANISMS]))
    cka = draw(st.sampled_from(attrs_of(kind)))
    return cka, draw(typed_value(kind, layout))


@st.composite
def template(draw: Any, layout: Layout, nested: bool = True) -> list[list[Any]]:
    pairs = draw(st.lists(flat_attribute(layout), max_size=12, unique_by=lambda p: p[0]))
    result = [[cka, value] for cka, value in pairs]
    if nested and draw(st.booleans()):
        result.append([int(CKA.WRAP_TEMPLATE), draw(template(layout, nested=False))])
    return result


@given(st.data())
def test_typed_values_round_trip_through_raw_bytes(data: Any) -> None:
    layout = data.draw(layouts)
    typed = data.draw(template(layout))
    raw = [[cka, encode_value(cka, value, layout)] for cka, value in typed]
    assert decode_template(raw, layout) == typed


@given(st.data())
def test_raw_bytes_round_trip_through_typed_values(data: Any) -> None:
    layout = data.draw(layouts)
    cka = data.draw(st.sampled_from(attrs_of(Kind.ULONG)))
    raw = data.draw(st.binary(min_size=layout.ulong_size, max_size=layout.ulong_size))
    assert encode_value(cka, decode_value(cka, raw, layout), layout) == raw


@given(layouts, st.integers(0, (1 << 32) - 2))
def test_ulong_layouts(layout: Layout, value: int) -> None:
    raw = layout.pack(value)
    assert len(raw) == layout.ulong_size
    assert raw == value.to_bytes(layout.ulong_size, "little" if layout.little_endian else "big")
    assert decode_value(CKA.CLASS, raw, layout) == value


def test_unavailable_information_in_both_widths() -> None:
    narrow, wide = Layout(4, True), Layout(8, True)
    assert encode_value(CKA.KEY_GEN_MECHANISM, UNAVAILABLE_64, narrow) == b"\xff" * 4
    assert encode_value(CKA.KEY_GEN_MECHANISM, UNAVAILABLE_64, wide) == b"\xff" * 8
    assert decode_value(CKA.KEY_GEN_MECHANISM, b"\xff" * 4, narrow) == UNAVAILABLE_64


def test_bool_is_one_byte_any_nonzero_is_true() -> None:
    layout = Layout()
    assert decode_value(CKA.TOKEN, b"\x01", layout) is True
    assert decode_value(CKA.TOKEN, b"\x7f", layout) is True
    assert decode_value(CKA.TOKEN, b"\x00", layout) is False
    with pytest.raises(CodecError) as info:
        decode_value(CKA.TOKEN, b"\x01\x00", layout)
    assert info.value.code == CKR.ATTRIBUTE_VALUE_INVALID


def test_ulong_of_the_wrong_width_is_value_invalid() -> None:
    with pytest.raises(CodecError) as info:
        decode_value(CKA.CLASS, b"\x04\x00\x00\x00", Layout(8, True))
    assert info.value.code == CKR.ATTRIBUTE_VALUE_INVALID


def test_allowed_mechanisms_is_an_array_of_ulong() -> None:
    layout = Layout(4, False)
    raw = b"".join(layout.pack(m) for m in (CKM.AES_GCM, CKM.AES_CBC))
    assert decode_value(CKA.ALLOWED_MECHANISMS, raw, layout) == [CKM.AES_GCM, CKM.AES_CBC]
    with pytest.raises(CodecError):
        decode_value(CKA.ALLOWED_MECHANISMS, raw + b"\x00", layout)


def test_unknown_attributes_pass_as_bytes() -> None:
    layout = Layout()
    assert decode_template([[0x80001234, b"\x01\x02"]], layout) == [[0x80001234, b"\x01\x02"]]


def test_nested_templates() -> None:
    layout = Layout()
    raw = [[CKA.UNWRAP_TEMPLATE, [[CKA.SENSITIVE, b"\x01"], [CKA.KEY_TYPE, layout.pack(0x1F)]]]]
    assert decode_template(raw, layout) == [[CKA.UNWRAP_TEMPLATE, [[CKA.SENSITIVE, True], [CKA.KEY_TYPE, 0x1F]]]]
    with pytest.raises(CodecError) as info:  # depth 1 only
        decode_template([[CKA.WRAP_TEMPLATE, [[CKA.UNWRAP_TEMPLATE, []]]]], layout)
    assert info.value.code == CKR.TEMPLATE_INCONSISTENT
    with pytest.raises(CodecError):  # not an array attribute
        decode_template([[CKA.LABEL, [[CKA.TOKEN, b"\x01"]]]], layout)


def test_template_limits_and_duplicates() -> None:
    layout = Layout()
    with pytest.raises(CodecError) as info:
        decode_template([[CKA.LABEL, b"x"]] * 257, layout)
    assert info.value.code == CKR.ARGUMENTS_BAD
    assert decode_template([[CKA.LABEL, b"x"], [CKA.LABEL, b"x"]], layout) == [[CKA.LABEL, b"x"]]
    with pytest.raises(CodecError) as info:
        decode_template([[CKA.LABEL, b"x"], [CKA.LABEL, b"y"]], layout)
    assert info.value.code == CKR.TEMPLATE_INCONSISTENT
    for bad in ("x", [[1]], [[-1, b""]], [["a", b""]], [[CKA.LABEL, 5]]):
        with pytest.raises(CodecError):
            decode_template(bad, layout)


def test_template_flag() -> None:
    assert template_flag([[CKA.TOKEN, True]], CKA.TOKEN) is True
    assert template_flag([], CKA.TOKEN) is False
    assert template_flag([], CKA.TOKEN, default=True) is True


# --- C_GetAttributeValue -------------------------------------------------------------------------


def test_read_values_follows_the_spec_algorithm() -> None:
    layout = Layout()
    requests = [(CKA.LABEL, -1), (CKA.LABEL, 2), (CKA.LABEL, 10), (CKA.CLASS, 8)]
    node = [b"label", b"label", b"label", CKO.SECRET_KEY]
    rv, out = read_values(requests, node, None, layout)
    assert rv == CKR.BUFFER_TOO_SMALL
    assert out == [[None, 5], [None, layout.unavailable], [b"label", 5], [layout.pack(CKO.SECRET_KEY), 8]]


def test_read_values_sensitive_and_invalid_win_over_buffer_too_small() -> None:
    layout = Layout(4, True)
    rv, out = read_values([(CKA.VALUE, 32), (CKA.LABEL, 0)], [None, b"x"], CKR.ATTRIBUTE_SENSITIVE, layout)
    assert rv == CKR.ATTRIBUTE_SENSITIVE
    assert out == [[None, 0xFFFFFFFF], [None, 0xFFFFFFFF]]
    rv, _ = read_values([(0x80009999, 8)], [None], CKR.ATTRIBUTE_TYPE_INVALID, layout)
    assert rv == CKR.ATTRIBUTE_TYPE_INVALID
    rv, out = read_values([], [], None, layout)
    assert (rv, out) == (CKR.OK, [])


def test_read_values_array_attribute_length_counts_ck_attribute_structures() -> None:
    layout = Layout(8, True)
    nested = [[CKA.SENSITIVE, True], [CKA.EXTRACTABLE, False]]
    rv, out = read_values([(CKA.WRAP_TEMPLATE, -1), (CKA.WRAP_TEMPLATE, 48)], [nested, nested], None, layout)
    assert rv == CKR.OK
    assert out[0] == [None, 48]
    assert out[1] == [[[CKA.SENSITIVE, b"\x01"], [CKA.EXTRACTABLE, b"\x00"]], 48]
    rv, out = read_values([(CKA.WRAP_TEMPLATE, 24)], [nested], None, layout)
    assert rv == CKR.BUFFER_TOO_SMALL


@given(st.data())
def test_read_values_never_hands_out_more_than_the_capacity(data: Any) -> None:
    layout = data.draw(layouts)
    values = data.draw(st.lists(st.one_of(st.none(), st.binary(max_size=40)), max_size=10))
    caps = data.draw(st.lists(st.integers(-1, 50), min_size=len(values), max_size=len(values)))
    requests = [(int(CKA.LABEL), cap) for cap in caps]
    rv, out = read_values(requests, values, CKR.ATTRIBUTE_SENSITIVE if None in values else None, layout)
    for (value, length), cap, node in zip(out, caps, values, strict=True):
        if value is not None:
            assert len(value) == length <= cap
            assert value == node
        elif node is not None and cap < 0:
            assert length == len(node)
        else:
            assert length == layout.unavailable
    assert rv in (CKR.OK, CKR.ATTRIBUTE_SENSITIVE, CKR.BUFFER_TOO_SMALL)
