"""The key-object builder (objects/builder.py): what generate, derive and unwrap make of a template and a key."""

from __future__ import annotations

import os

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from strongroom.constants import CKA, CKK, CKM, CKO
from strongroom.errors import KeySizeRange, TemplateIncomplete, TemplateInconsistent, WrappedKeyInvalid
from strongroom.mechanisms.base import GeneratedSecret
from strongroom.objects import builder
from strongroom.objects.model import StoredObject

ALICE = builder.Maker("alice", "uid-alice")


def der_of(private: ec.EllipticCurvePrivateKey) -> bytes:
    return private.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption())


def test_a_generated_secret_is_its_makers_local_key_with_what_its_value_fixes() -> None:
    value = os.urandom(32)
    obj = builder.generated_secret(ALICE, {CKA.TOKEN: True, CKA.LABEL: b"k"}, GeneratedSecret(value, CKK.AES),
                                   int(CKM.AES_KEY_GEN), p11_session=None)
    assert (obj.owner, obj.owner_id, obj.material, obj.p11_session) == ("alice", "uid-alice", value, None)
    attributes = obj.attributes
    assert attributes[CKA.CLASS] == CKO.SECRET_KEY and attributes[CKA.KEY_TYPE] == CKK.AES
    assert attributes[CKA.VALUE_LEN] == 32 and len(attributes[CKA.CHECK_VALUE]) == 3
    assert attributes[CKA.LOCAL] and attributes[CKA.KEY_GEN_MECHANISM] == CKM.AES_KEY_GEN
    assert attributes[CKA.ALWAYS_SENSITIVE] and attributes[CKA.NEVER_EXTRACTABLE]
    session_object = builder.generated_secret(ALICE, {}, GeneratedSecret(value, CKK.AES), int(CKM.AES_KEY_GEN), 7)
    assert session_object.p11_session == 7
    with pytest.raises(TemplateInconsistent):  # the template may not contradict the key
        builder.generated_secret(ALICE, {CKA.VALUE_LEN: 16}, GeneratedSecret(value, CKK.AES), int(CKM.AES_KEY_GEN),
                                 None)


def test_a_template_naming_another_class_is_inconsistent() -> None:
    builder.class_must_be({}, CKO.SECRET_KEY)
    builder.class_must_be({CKA.CLASS: CKO.SECRET_KEY}, CKO.SECRET_KEY)
    with pytest.raises(TemplateInconsistent):
        builder.class_must_be({CKA.CLASS: CKO.PRIVATE_KEY}, CKO.SECRET_KEY)


def test_derive_asks_for_a_secret_type_and_a_length_it_can_have() -> None:
    assert builder.derived_length({CKA.KEY_TYPE: CKK.AES, CKA.VALUE_LEN: 16}) == (CKK.AES, 16)
    assert builder.derived_length({CKA.KEY_TYPE: CKK.GENERIC_SECRET, CKA.VALUE_LEN: 512}) == (CKK.GENERIC_SECRET, 512)
    with pytest.raises(TemplateIncomplete):
        builder.derived_length({CKA.VALUE_LEN: 16})
    with pytest.raises(TemplateIncomplete):
        builder.derived_length({CKA.KEY_TYPE: CKK.EC, CKA.VALUE_LEN: 16})
    with pytest.raises(TemplateIncomplete):
        builder.derived_length({CKA.KEY_TYPE: CKK.AES})
    for key_type, length in ((CKK.AES, 20), (CKK.GENERIC_SECRET, 513), (CKK.GENERIC_SECRET, 0)):
        with pytest.raises(KeySizeRange):
            builder.derived_length({CKA.KEY_TYPE: key_type, CKA.VALUE_LEN: length})


def base_key(*, always_sensitive: bool, never_extractable: bool) -> StoredObject:
    return StoredObject(1, "alice", {CKA.CLASS: CKO.SECRET_KEY, CKA.KEY_TYPE: CKK.GENERIC_SECRET,
                                     CKA.ALWAYS_SENSITIVE: always_sensitive, CKA.NEVER_EXTRACTABLE: never_extractable})


def test_a_derived_key_keeps_always_sensitive_and_never_extractable_only_from_its_base() -> None:
    template = {CKA.KEY_TYPE: CKK.AES, CKA.VALUE_LEN: 16, CKA.SENSITIVE: True, CKA.EXTRACTABLE: False}
    value = os.urandom(16)
    good = builder.derived_secret(ALICE, template, CKK.AES, value,
                                  base_key(always_sensitive=True, never_extractable=True))
    assert good.attributes[CKA.ALWAYS_SENSITIVE] and good.attributes[CKA.NEVER_EXTRACTABLE]
    assert not good.attributes[CKA.LOCAL] and good.material == value and good.owner_id == "uid-alice"
    weak = builder.derived_secret(ALICE, template, CKK.AES, value,
                                  base_key(always_sensitive=False, never_extractable=False))
    assert not weak.attributes[CKA.ALWAYS_SENSITIVE] and not weak.attributes[CKA.NEVER_EXTRACTABLE]
    # Even from the best base, a key made extractable or not sensitive is neither.
    loose = builder.derived_secret(ALICE, template | {CKA.SENSITIVE: False, CKA.EXTRACTABLE: True}, CKK.AES,
                                   value, base_key(always_sensitive=True, never_extractable=True))
    assert not loose.attributes[CKA.ALWAYS_SENSITIVE] and not loose.attributes[CKA.NEVER_EXTRACTABLE]


def test_an_unwrap_template_names_a_secret_or_private_key_and_its_type() -> None:
    builder.check_unwrap_template({CKA.CLASS: CKO.SECRET_KEY, CKA.KEY_TYPE: CKK.AES})
    builder.check_unwrap_template({CKA.CLASS: CKO.PRIVATE_KEY, CKA.KEY_TYPE: CKK.EC})
    for template in ({CKA.CLASS: CKO.SECRET_KEY}, {CKA.KEY_TYPE: CKK.AES},
                     {CKA.CLASS: CKO.PUBLIC_KEY, CKA.KEY_TYPE: CKK.EC}):
        with pytest.raises(TemplateIncomplete):
            builder.check_unwrap_template(template)


def test_unwrapped_bytes_must_be_a_valid_key_of_the_template_s_type() -> None:
    secret = {CKA.CLASS: CKO.SECRET_KEY, CKA.KEY_TYPE: CKK.AES, CKA.TOKEN: True}
    value = os.urandom(24)
    obj = builder.unwrapped_key(ALICE, secret, value)
    assert obj.material == value and obj.attributes[CKA.VALUE_LEN] == 24 and not obj.attributes[CKA.LOCAL]
    assert not obj.attributes[CKA.ALWAYS_SENSITIVE]  # it existed outside the HSM
    with pytest.raises(WrappedKeyInvalid):
        builder.unwrapped_key(ALICE, secret, os.urandom(20))
    with pytest.raises(TemplateInconsistent):
        builder.unwrapped_key(ALICE, secret | {CKA.KEY_TYPE: CKK.EC}, value)

    private = ec.generate_private_key(ec.SECP256R1())
    obj = builder.unwrapped_key(ALICE, {CKA.CLASS: CKO.PRIVATE_KEY, CKA.KEY_TYPE: CKK.EC}, der_of(private))
    assert obj.object_class is CKO.PRIVATE_KEY and obj.key_type is CKK.EC and obj.owner == "alice"
    assert obj.material == der_of(private)
    with pytest.raises(WrappedKeyInvalid):  # an EC key where the template says RSA
        builder.unwrapped_key(ALICE, {CKA.CLASS: CKO.PRIVATE_KEY, CKA.KEY_TYPE: CKK.RSA}, der_of(private))
