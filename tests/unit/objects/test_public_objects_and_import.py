"""Issue 13 in objects/: public objects and the caller that is not logged in (access.py), CKA_PRIVATE's
default per class (templates.py), keys imported in clear (builder.imported_key) and the values of keys that
are neither sensitive nor unextractable (templates.read)."""

from __future__ import annotations

import os
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from strongroom.constants import CKA, CKK, CKO
from strongroom.errors import (
    CKR,
    AttributeValueInvalid,
    KeyHandleInvalid,
    ObjectHandleInvalid,
    TemplateIncomplete,
    TemplateInconsistent,
    UserNotLoggedIn,
)
from strongroom.objects import builder, templates
from strongroom.objects.access import PUBLIC_NAME, Access, Action, Actor, authorize, may
from strongroom.objects.keys import check_value, clear_value, int_to_bytes
from strongroom.objects.model import StoredObject

from .builders import ADMIN, CERTIFICATE_MUST, OWNER, STRANGER, make_object

ALICE = builder.Maker("alice", "alice-1")
P256 = bytes.fromhex("06082a8648ce3d030107")


def anonymous(*, sees_public: bool = True, sessions: tuple[int, ...] = ()) -> Actor:
    return Actor.anonymous(lambda handle: handle in sessions, sees_public)


def hidden(actor: Actor) -> Actor:
    """The same caller under the policy public_objects = hidden."""
    return Actor(actor.name, actor.user_id, actor.is_admin, actor.holds_session, sees_public=False)


# --- CKA_PRIVATE's default per class -------------------------------------------------------------------


@pytest.mark.parametrize(("object_class", "private"), [
    (CKO.PUBLIC_KEY, False), (CKO.CERTIFICATE, False),
    (CKO.PRIVATE_KEY, True), (CKO.SECRET_KEY, True), (CKO.DATA, True),
])
def test_cka_private_defaults_as_softhsm(object_class: CKO, private: bool) -> None:
    """Public keys and certificates are public unless their creator says otherwise; keys that are secret and
    data objects (which may hold anything) are private."""
    assert make_object(object_class).attributes[CKA.PRIVATE] is private
    said = make_object(object_class, {CKA.PRIVATE: not private})
    assert said.attributes[CKA.PRIVATE] is (not private)


# --- who sees and uses a public object -----------------------------------------------------------------


def test_a_public_key_is_seen_by_everyone_and_used_by_every_user_but_owned_by_its_owner() -> None:
    public_key = make_object(CKO.PUBLIC_KEY)
    nobody = anonymous()
    for actor in (OWNER, STRANGER, ADMIN, nobody):
        assert may(public_key, actor, Access.SEE)
    assert [may(public_key, a, Access.USE) for a in (OWNER, STRANGER, ADMIN, nobody)] == [True, True, False, True]
    assert [may(public_key, a, Access.OWN) for a in (OWNER, STRANGER, ADMIN, nobody)] == [True, False, False, False]
    authorize(public_key, nobody, Action.USE_KEY)  # verify, encrypt with it
    with pytest.raises(Exception) as refused:  # but not change it
        authorize(public_key, nobody, Action.SET_ATTRIBUTES)
    assert refused.value.code == CKR.ACTION_PROHIBITED  # type: ignore[attr-defined]


def test_a_public_certificate_is_seen_but_only_a_public_key_is_used() -> None:
    certificate = make_object(CKO.CERTIFICATE)
    assert may(certificate, anonymous(), Access.SEE) and may(certificate, STRANGER, Access.SEE)
    assert not may(certificate, anonymous(), Access.USE) and not may(certificate, STRANGER, Access.USE)
    # A key its creator made public is still not usable by others unless it is a public key.
    loose_secret = make_object(CKO.SECRET_KEY, {CKA.PRIVATE: False})
    assert may(loose_secret, STRANGER, Access.SEE) and not may(loose_secret, STRANGER, Access.USE)
    assert may(loose_secret, anonymous(), Access.SEE) and not may(loose_secret, anonymous(), Access.USE)


def test_a_caller_not_logged_in_never_sees_nor_uses_a_private_object() -> None:
    nobody = anonymous()
    for object_class in (CKO.PRIVATE_KEY, CKO.SECRET_KEY, CKO.DATA):
        private = make_object(object_class)
        assert not any(may(private, nobody, access) for access in Access)
        with pytest.raises(ObjectHandleInvalid):  # reading: as if it did not exist
            authorize(private, nobody, Action.READ)
        with pytest.raises(UserNotLoggedIn):  # using it by its handle: log in first
            authorize(private, nobody, Action.USE_KEY)
    private_public_key = make_object(CKO.PUBLIC_KEY, {CKA.PRIVATE: True})
    assert not may(private_public_key, nobody, Access.SEE) and not may(private_public_key, STRANGER, Access.SEE)


def test_a_public_session_owns_its_own_session_objects_only() -> None:
    mine = StoredObject(11, PUBLIC_NAME, make_object(CKO.PUBLIC_KEY, token=False).attributes, p11_session=3)
    assert all(may(mine, anonymous(sessions=(3,)), a) for a in (Access.SEE, Access.USE, Access.OWN))
    assert not may(mine, anonymous(sessions=(4,)), Access.SEE)  # another application's public session
    assert not may(mine, anonymous(sessions=(3,)), Access.TRUST)
    # A logged-in user's session object is not the public session's, even when public.
    users = make_object(CKO.PUBLIC_KEY, token=False, p11_session=3)
    assert may(users, anonymous(sessions=(3,)), Access.SEE) and not may(users, anonymous(sessions=(3,)), Access.OWN)


def test_public_objects_hidden_restores_the_owner_rule() -> None:
    public_key = make_object(CKO.PUBLIC_KEY)
    assert not may(public_key, hidden(STRANGER), Access.SEE)
    assert may(public_key, hidden(OWNER), Access.USE) and may(public_key, hidden(ADMIN), Access.SEE)
    nobody = anonymous(sees_public=False)
    assert not may(public_key, nobody, Access.SEE)
    with pytest.raises(KeyHandleInvalid):
        authorize(public_key, hidden(STRANGER), Action.USE_KEY)


# --- keys imported in clear ------------------------------------------------------------------------------


def test_an_imported_secret_key_keeps_its_value_as_material_never_as_an_attribute() -> None:
    value = os.urandom(32)
    obj = builder.imported_key(ALICE, {CKA.CLASS: CKO.SECRET_KEY, CKA.KEY_TYPE: CKK.AES, CKA.VALUE: value,
                                       CKA.TOKEN: True}, None)
    assert obj.material == value and CKA.VALUE not in obj.attributes
    attributes = obj.attributes
    assert attributes[CKA.VALUE_LEN] == 32 and attributes[CKA.CHECK_VALUE] == check_value(CKK.AES, value)
    # Not made in the HSM, and its value was known outside it.
    assert not attributes[CKA.LOCAL] and not attributes[CKA.ALWAYS_SENSITIVE] and not attributes[CKA.NEVER_EXTRACTABLE]
    assert attributes[CKA.SENSITIVE] and attributes[CKA.PRIVATE]  # the defaults still close it


@pytest.mark.parametrize(("template", "error"), [
    ({CKA.KEY_TYPE: CKK.AES}, TemplateIncomplete),  # no value
    ({CKA.KEY_TYPE: CKK.AES, CKA.VALUE: b"\x01" * 15}, AttributeValueInvalid),
    ({CKA.VALUE: b"\x01" * 16}, TemplateIncomplete),  # no key type
    ({CKA.KEY_TYPE: CKK.DES3, CKA.VALUE: b"\x01" * 24}, TemplateInconsistent),  # legacy_algorithms off
    ({CKA.KEY_TYPE: CKK.AES, CKA.VALUE: b"\x01" * 16, CKA.MODULUS_BITS: 2048}, TemplateInconsistent),
])
def test_a_secret_key_template_that_is_not_a_key(template: dict[int, Any], error: type[Exception]) -> None:
    with pytest.raises(error):
        builder.imported_key(ALICE, {CKA.CLASS: CKO.SECRET_KEY, **template}, None)


def test_triple_des_keys_import_under_the_legacy_policy_with_their_check_value() -> None:
    k1, k2 = bytes.fromhex("0123456789abcdef"), bytes.fromhex("fedcba9876543210")
    two = builder.imported_key(ALICE, {CKA.CLASS: CKO.SECRET_KEY, CKA.KEY_TYPE: CKK.DES2, CKA.VALUE: k1 + k2},
                               None, legacy=True)
    three = builder.imported_key(ALICE, {CKA.CLASS: CKO.SECRET_KEY, CKA.KEY_TYPE: CKK.DES3,
                                         CKA.VALUE: k1 + k2 + k1}, None, legacy=True)
    # Two-key Triple-DES is three-key K1 K2 K1: the same check value.
    assert two.attributes[CKA.CHECK_VALUE] == three.attributes[CKA.CHECK_VALUE] == check_value(CKK.DES3, k1 + k2 + k1)


def test_an_imported_ec_private_key_is_checked_by_the_library() -> None:
    private = ec.generate_private_key(ec.SECP256R1())
    value = int_to_bytes(private.private_numbers().private_value)
    obj = builder.imported_key(ALICE, {CKA.CLASS: CKO.PRIVATE_KEY, CKA.KEY_TYPE: CKK.EC, CKA.EC_PARAMS: P256,
                                       CKA.VALUE: value}, 5)
    assert obj.p11_session == 5 and CKA.VALUE not in obj.attributes and obj.attributes[CKA.EC_PARAMS] == P256
    with pytest.raises(TemplateIncomplete):
        builder.imported_key(ALICE, {CKA.CLASS: CKO.PRIVATE_KEY, CKA.KEY_TYPE: CKK.EC, CKA.VALUE: value}, None)
    with pytest.raises(Exception) as invalid:  # zero is no private value
        builder.imported_key(ALICE, {CKA.CLASS: CKO.PRIVATE_KEY, CKA.KEY_TYPE: CKK.EC, CKA.EC_PARAMS: P256,
                                     CKA.VALUE: b"\x00"}, None)
    assert invalid.value.code == CKR.ATTRIBUTE_VALUE_INVALID  # type: ignore[attr-defined]


def test_an_imported_rsa_private_key_with_or_without_its_crt_values() -> None:
    private = rsa.generate_private_key(65537, 2048)
    numbers = private.private_numbers()
    full = {CKA.CLASS: CKO.PRIVATE_KEY, CKA.KEY_TYPE: CKK.RSA,
            CKA.MODULUS: int_to_bytes(numbers.public_numbers.n), CKA.PUBLIC_EXPONENT: b"\x01\x00\x01",
            CKA.PRIVATE_EXPONENT: int_to_bytes(numbers.d), CKA.PRIME_1: int_to_bytes(numbers.p),
            CKA.PRIME_2: int_to_bytes(numbers.q), CKA.EXPONENT_1: int_to_bytes(numbers.dmp1),
            CKA.EXPONENT_2: int_to_bytes(numbers.dmq1), CKA.COEFFICIENT: int_to_bytes(numbers.iqmp)}
    short = {k: v for k, v in full.items() if k not in (CKA.EXPONENT_1, CKA.EXPONENT_2, CKA.COEFFICIENT)}
    for template in (full, short):
        obj = builder.imported_key(ALICE, template, None)
        assert obj.attributes[CKA.MODULUS] == full[CKA.MODULUS]
        assert not any(cka in obj.attributes for cka in (CKA.PRIVATE_EXPONENT, CKA.PRIME_1, CKA.COEFFICIENT))
    with pytest.raises(TemplateInconsistent):  # RSA values under another key type
        builder.imported_key(ALICE, {**full, CKA.KEY_TYPE: CKK.EC}, None)


# --- reading the value of a key that is not sensitive ----------------------------------------------------


def _secret(sensitive: bool, extractable: bool) -> StoredObject:
    value = bytes(range(32))
    return builder.imported_key(ALICE, {CKA.CLASS: CKO.SECRET_KEY, CKA.KEY_TYPE: CKK.GENERIC_SECRET,
                                        CKA.VALUE: value, CKA.SENSITIVE: sensitive, CKA.EXTRACTABLE: extractable},
                                None)


@pytest.mark.parametrize(("sensitive", "extractable", "readable"), [
    (False, True, True), (True, True, False), (False, False, False), (True, False, False),
])
def test_cka_value_is_read_only_from_a_key_neither_sensitive_nor_unextractable(sensitive: bool, extractable: bool,
                                                                               readable: bool) -> None:
    key = _secret(sensitive, extractable)
    assert key.revealable() is readable
    values, error = templates.read(key, [CKA.VALUE, CKA.VALUE_LEN], reveal=True)
    assert values[1] == [CKA.VALUE_LEN, 32]
    if readable:
        assert values[0] == [CKA.VALUE, bytes(range(32))] and error is None
    else:
        assert values[0] == [CKA.VALUE, None] and error == CKR.ATTRIBUTE_SENSITIVE
    # The caller the access rules do not allow to use the key reads nothing in clear.
    values, error = templates.read(key, [CKA.VALUE], reveal=False)
    assert values == [[CKA.VALUE, None]] and error == CKR.ATTRIBUTE_SENSITIVE


def test_a_generated_key_stays_sensitive_by_default() -> None:
    generated = make_object(CKO.SECRET_KEY, {CKA.EXTRACTABLE: True})
    assert generated.attributes[CKA.SENSITIVE] and not generated.revealable()


def test_a_private_key_reveals_its_components_in_clear() -> None:
    private = ec.generate_private_key(ec.SECP256R1())
    value = private.private_numbers().private_value.to_bytes(32, "big")
    obj = builder.imported_key(ALICE, {CKA.CLASS: CKO.PRIVATE_KEY, CKA.KEY_TYPE: CKK.EC, CKA.EC_PARAMS: P256,
                                       CKA.VALUE: value, CKA.SENSITIVE: False, CKA.EXTRACTABLE: True}, None)
    assert clear_value(obj, CKA.VALUE) == value
    assert templates.read(obj, [CKA.VALUE], reveal=True) == ([[CKA.VALUE, value]], None)
    certificate = make_object(CKO.CERTIFICATE, CERTIFICATE_MUST)
    assert clear_value(certificate, CKA.VALUE) is None
