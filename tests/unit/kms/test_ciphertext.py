"""The ciphertext blob: layout, parsing, the canonical encryption context."""

from __future__ import annotations

import uuid

import pytest

from strongroom.kms import ciphertext
from strongroom.kms.errors import InvalidCiphertext

KEY = str(uuid.uuid4())


def test_header_round_trip_and_overhead():
    iv = ciphertext.new_iv()
    header = ciphertext.header(KEY, 7, iv)
    assert len(header) == ciphertext.HEADER_LEN == 34
    blob = ciphertext.parse(header + b"c" * 5 + b"t" * 16)
    assert (blob.key_id, blob.material_version, blob.iv, blob.header) == (KEY, 7, iv, header)
    assert blob.body == b"c" * 5 + b"t" * 16
    assert ciphertext.OVERHEAD + 4096 <= 6144


@pytest.mark.parametrize("blob", [b"", b"\xc5\x01" + b"\0" * 40, b"\x00\x01" + b"\0" * 60, b"\xc5\x02" + b"\0" * 60])
def test_foreign_or_short_blobs_are_invalid_ciphertext(blob):
    with pytest.raises(InvalidCiphertext) as caught:
        ciphertext.parse(blob)
    assert caught.value.message == ""


def test_context_is_order_independent_exact_and_unambiguous():
    canon = ciphertext.canonical_context
    assert canon({"a": "1", "b": "2"}) == canon({"b": "2", "a": "1"})
    assert canon({"a": "1"}) != canon({"A": "1"})
    assert canon({"ab": "c"}) != canon({"a": "bc"})
    assert canon({}) != canon({"": ""})
    assert canon({"k": "é"}) != canon({"k": "e"})


def test_aad_binds_the_header_and_the_context():
    header = ciphertext.header(KEY, 1, b"\0" * 12)
    assert ciphertext.aad(header, {"a": "b"}) != ciphertext.aad(header, {})
    other = ciphertext.header(KEY, 2, b"\0" * 12)
    assert ciphertext.aad(header, {}) != ciphertext.aad(other, {})
    assert b"a" not in ciphertext.header(KEY, 1, b"\0" * 12)[18:]
