"""The ownership rule (objects/access.py) and C_CopyObject's rule per attribute (objects/attributes.py,
templates.copy_attributes), on objects built in memory."""

from __future__ import annotations

from typing import Any

import pytest

from strongroom.constants import CKA, CKK, CKM, CKO
from strongroom.errors import (
    ActionProhibited,
    AttributeReadOnly,
    KeyFunctionNotPermitted,
    KeyHandleInvalid,
    KeyNotWrappable,
    ObjectHandleInvalid,
    UserNotLoggedIn,
)
from strongroom.objects import templates
from strongroom.objects.access import Access, Action, Actor, authorize, may
from strongroom.objects.attributes import RULES, Copy, Op, copy_rule
from strongroom.objects.model import StoredObject
from strongroom.objects.usage import (
    check_use,
    check_wrappable,
    needs_context_login,
    refuse_without_context,
)

from .builders import make_object

ALICE = Actor("alice", "alice-1", False)
BOB = Actor("bob", "bob-1", False)
BOB_AGAIN = Actor("bob", "bob-2", False)  # deleted and created again: another account
CAROL = Actor("carol", "carol-1", False)
ADMIN = Actor("admin", "admin-1", True)


def secret_key(**changes: Any) -> StoredObject:
    attributes = templates.build(Op.GENERATE, CKO.SECRET_KEY,
                                 {CKA.TOKEN: True, CKA.EXTRACTABLE: True, **changes.pop("attributes", {})},
                                 {CKA.KEY_TYPE: CKK.AES, CKA.VALUE_LEN: 32})
    obj = StoredObject(7, "alice", attributes, material=b"k" * 32, owner_id="alice-1",
                       shared=frozenset({"bob"}), share_ids={"bob": "bob-1"})
    return obj.with_changes(**changes)


def private_key(extra: dict[int, Any] | None = None) -> StoredObject:
    attributes = templates.build(Op.GENERATE, CKO.PRIVATE_KEY, {CKA.TOKEN: True, **(extra or {})},
                                 {CKA.KEY_TYPE: CKK.RSA})
    return StoredObject(9, "alice", attributes, owner_id="alice-1")


# --- who may ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("actor", "see", "use", "own", "trust"), [
    (ALICE, True, True, True, False),
    (BOB, True, True, False, False),
    (BOB_AGAIN, False, False, False, False),
    (CAROL, False, False, False, False),
    (ADMIN, True, False, False, True),
], ids=["owner", "shared", "new-account-same-name", "stranger", "admin"])
def test_the_access_matrix(actor: Actor, see: bool, use: bool, own: bool, trust: bool) -> None:
    key = secret_key()
    assert [may(key, actor, a) for a in (Access.SEE, Access.USE, Access.OWN, Access.TRUST)] == [see, use, own, trust]


def test_an_owner_deleted_and_created_again_owns_nothing_and_records_without_ids_match_by_name() -> None:
    assert not may(secret_key(), Actor("alice", "alice-2", False), Access.OWN)
    legacy = secret_key(owner_id=None, share_ids={})
    assert may(legacy, Actor("alice", "whoever", False), Access.OWN)
    assert may(legacy, BOB_AGAIN, Access.USE) and not may(legacy, BOB_AGAIN, Access.OWN)


def test_session_objects_exist_only_for_the_login_that_holds_them() -> None:
    key = secret_key(p11_session=42)
    mine = Actor("alice", "alice-1", False, holds_session=lambda handle: handle == 42)
    assert may(key, mine, Access.OWN)
    assert not may(key, ALICE, Access.SEE)  # the same user through another login
    assert not may(key, Actor("admin", "a", True, holds_session=lambda _h: True), Access.SEE)


@pytest.mark.parametrize(("action", "shared_user_error"), [
    (Action.READ, None),
    (Action.USE_KEY, None),
    (Action.EXPORT, KeyNotWrappable),
    (Action.DERIVE_FROM, KeyFunctionNotPermitted),
    (Action.COPY, ActionProhibited),
    (Action.SET_ATTRIBUTES, ActionProhibited),
    (Action.DESTROY, ActionProhibited),
    (Action.SHARE, ActionProhibited),
])
def test_the_answers(action: Action, shared_user_error: type[Exception] | None) -> None:
    key = secret_key()
    authorize(key, ALICE, action)
    if shared_user_error is None:
        authorize(key, BOB, action)
    else:
        with pytest.raises(shared_user_error):
            authorize(key, BOB, action)
    hidden = KeyHandleInvalid if action in (Action.USE_KEY, Action.EXPORT, Action.DERIVE_FROM) else \
        ObjectHandleInvalid
    for stranger in (CAROL, BOB_AGAIN):
        with pytest.raises(hidden):
            authorize(key, stranger, action)


def test_usage_export_and_derive_through_the_key_rules() -> None:
    key = secret_key(attributes={CKA.DERIVE: True})
    wrapping = secret_key().with_changes(handle=8)
    check_use(key, BOB, "encrypt", CKM.AES_GCM)
    check_use(wrapping, BOB, "wrap", CKM.AES_KEY_WRAP_PAD)  # a shared wrapping key wraps the user's keys
    with pytest.raises(KeyNotWrappable):
        check_wrappable(key, wrapping, BOB)  # ...but not the owner's
    check_wrappable(key, wrapping, ALICE)
    with pytest.raises(KeyFunctionNotPermitted):
        check_use(key, BOB, "derive", CKM.ECDH1_DERIVE)
    check_use(key, ALICE, "derive", CKM.ECDH1_DERIVE)
    with pytest.raises(ActionProhibited):
        check_use(key, ADMIN, "encrypt", CKM.AES_GCM)


def test_always_authenticate_asks_a_login_per_sign_or_decrypt_and_refuses_calls_without_init() -> None:
    key = private_key({CKA.ALWAYS_AUTHENTICATE: True})
    assert needs_context_login(key, "sign") and needs_context_login(key, "decrypt")
    assert not needs_context_login(private_key(), "sign")
    for purpose in ("sign", "decrypt", "unwrap", "derive"):
        with pytest.raises(UserNotLoggedIn):
            refuse_without_context(key, purpose)
    refuse_without_context(private_key(), "sign")


# --- C_CopyObject ---------------------------------------------------------------------------------------------


EXPECTED_COPY = {
    CKA.TOKEN: Copy.FREE,
    CKA.PRIVATE: Copy.ONE_WAY,
    CKA.MODIFIABLE: Copy.ONE_WAY,
    CKA.COPYABLE: Copy.ONE_WAY,
    CKA.SENSITIVE: Copy.ONE_WAY,
    CKA.EXTRACTABLE: Copy.ONE_WAY,
    CKA.WRAP_WITH_TRUSTED: Copy.ONE_WAY,
    CKA.ALWAYS_AUTHENTICATE: Copy.ONE_WAY,
    CKA.ALLOWED_MECHANISMS: Copy.SUBSET,
    CKA.WRAP_TEMPLATE: Copy.KEEP,
    CKA.UNWRAP_TEMPLATE: Copy.KEEP,
    CKA.TRUSTED: Copy.RESET,
    CKA.CLASS: Copy.KEEP,
    CKA.KEY_TYPE: Copy.KEEP,
    CKA.VALUE: Copy.KEEP,
    CKA.VALUE_LEN: Copy.KEEP,
    CKA.LOCAL: Copy.KEEP,
    CKA.ALWAYS_SENSITIVE: Copy.KEEP,
    CKA.NEVER_EXTRACTABLE: Copy.KEEP,
    CKA.LABEL: Copy.AS_SET,
    CKA.ID: Copy.AS_SET,
    **{cka: Copy.NARROW for cka in (CKA.ENCRYPT, CKA.DECRYPT, CKA.SIGN, CKA.VERIFY, CKA.WRAP, CKA.UNWRAP,
                                    CKA.DERIVE, CKA.SIGN_RECOVER, CKA.VERIFY_RECOVER)},
}


def test_every_attribute_has_a_copy_rule_and_the_security_relevant_ones_are_these() -> None:
    rules = {cka: copy_rule(rule) for cka, rule in RULES.items()}
    assert {cka: rules[cka] for cka in EXPECTED_COPY} == EXPECTED_COPY
    # Whatever may loosen a key is never FREE or AS_SET.
    for cka, policy in rules.items():
        if policy in (Copy.FREE, Copy.AS_SET):
            assert RULES[cka].direction.value == "any" and not RULES[cka].admin_only, cka


def _copy_refused(source: StoredObject, changes: dict[int, Any]) -> None:
    with pytest.raises(AttributeReadOnly):
        templates.copy_attributes(source, changes)


def test_a_copy_never_loosens() -> None:
    key = secret_key(attributes={CKA.ALLOWED_MECHANISMS: [CKM.AES_GCM, CKM.AES_ECB],
                                 CKA.UNWRAP_TEMPLATE: {CKA.EXTRACTABLE: False}, CKA.WRAP_WITH_TRUSTED: True})
    key.attributes[CKA.TRUSTED] = True  # set by an admin
    copy = templates.copy_attributes(key, {})
    assert copy[CKA.TRUSTED] is False and copy[CKA.ALLOWED_MECHANISMS] == [CKM.AES_GCM, CKM.AES_ECB]
    assert templates.copy_attributes(key, {CKA.ALLOWED_MECHANISMS: [CKM.AES_ECB]})[CKA.ALLOWED_MECHANISMS] \
        == [CKM.AES_ECB]
    for wider in ([CKM.AES_GCM, CKM.AES_CBC], []):
        _copy_refused(key, {CKA.ALLOWED_MECHANISMS: wider})
    _copy_refused(key, {CKA.UNWRAP_TEMPLATE: {}})
    assert templates.copy_attributes(key, {CKA.UNWRAP_TEMPLATE: {CKA.EXTRACTABLE: False}})  # the same: fine
    _copy_refused(key, {CKA.TRUSTED: True})
    assert templates.copy_attributes(key, {CKA.TRUSTED: False})[CKA.TRUSTED] is False
    _copy_refused(key, {CKA.WRAP_WITH_TRUSTED: False})
    assert templates.copy_attributes(key, {CKA.EXTRACTABLE: False})[CKA.EXTRACTABLE] is False
    locked = templates.copy_attributes(key, {CKA.EXTRACTABLE: False, CKA.MODIFIABLE: False})
    frozen = key.with_changes(attributes=locked)
    for loosening in ({CKA.EXTRACTABLE: True}, {CKA.MODIFIABLE: True}, {CKA.SENSITIVE: False},
                      {CKA.PRIVATE: False}):
        _copy_refused(frozen, loosening)
    assert templates.copy_attributes(frozen, {CKA.TOKEN: False})[CKA.TOKEN] is False


def test_usages_switch_on_in_a_copy_only_where_the_source_could_be_changed() -> None:
    modifiable = secret_key(attributes={CKA.ENCRYPT: False})
    assert templates.copy_attributes(modifiable, {CKA.ENCRYPT: True})[CKA.ENCRYPT] is True
    fixed = secret_key(attributes={CKA.ENCRYPT: False, CKA.MODIFIABLE: False})
    _copy_refused(fixed, {CKA.ENCRYPT: True})
    _copy_refused(fixed, {CKA.LABEL: b"renamed"})  # AS_SET: as C_SetAttributeValue would refuse
    assert templates.copy_attributes(fixed, {CKA.DECRYPT: False})[CKA.DECRYPT] is False
    assert templates.copy_attributes(fixed, {CKA.LABEL: fixed.attributes[CKA.LABEL]})  # repeated: no change


def test_always_authenticate_and_copyable() -> None:
    key = private_key({CKA.ALWAYS_AUTHENTICATE: True})
    _copy_refused(key, {CKA.ALWAYS_AUTHENTICATE: False})
    assert templates.copy_attributes(key, {})[CKA.ALWAYS_AUTHENTICATE] is True
    assert templates.copy_attributes(private_key(), {CKA.ALWAYS_AUTHENTICATE: True})[CKA.ALWAYS_AUTHENTICATE]
    with pytest.raises(ActionProhibited):
        templates.copy_attributes(private_key({CKA.COPYABLE: False}), {})


# --- gaps: admins, CKA_TRUSTED, the copy rule of every attribute -------------------------------------------------


def test_an_admin_is_never_an_owner_or_a_user_whatever_its_name() -> None:
    """Roles, not names: an admin account named like the owner, or listed as a share, uses nothing."""
    namesake = Actor("alice", "alice-1", True)
    listed = Actor("bob", "bob-1", True)
    for admin in (namesake, listed):
        assert [may(secret_key(), admin, a) for a in (Access.SEE, Access.USE, Access.OWN)] == [True, False, False]
        with pytest.raises(ActionProhibited):
            check_use(secret_key(), admin, "encrypt", CKM.AES_GCM)


def test_only_admins_mark_token_objects_trusted() -> None:
    key = secret_key()
    authorize(key, ADMIN, Action.SET_TRUST)
    with pytest.raises(ActionProhibited):
        authorize(key, ALICE, Action.SET_TRUST)  # the owner sees it: refused, not hidden
    with pytest.raises(ActionProhibited):
        authorize(key, BOB, Action.SET_TRUST)
    with pytest.raises(ObjectHandleInvalid):
        authorize(key, CAROL, Action.SET_TRUST)
    with pytest.raises(ObjectHandleInvalid):  # a session object does not exist for an admin
        authorize(secret_key(p11_session=3), Actor("admin", "admin-1", True, holds_session=lambda _h: True),
                  Action.SET_TRUST)


def test_refusals_name_keys_as_keys_and_objects_as_objects() -> None:
    for action in Action:
        error = action.not_found(99)
        assert isinstance(error, KeyHandleInvalid if action in (Action.USE_KEY, Action.EXPORT, Action.DERIVE_FROM)
                          else ObjectHandleInvalid)
        assert ("key" if isinstance(error, KeyHandleInvalid) else "object") in error.message


def _changed(value: Any) -> Any:
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, bytes):
        return value + b"!"
    if isinstance(value, list):
        return [*value, CKM.AES_CBC]
    return {**value, CKA.LABEL: b"more"}


@pytest.mark.parametrize("cka", sorted(RULES, key=int), ids=lambda c: f"CKA_{CKA(c).name}")
def test_each_attribute_s_copy_rule_holds(cka: int) -> None:
    """Behaviour of C_CopyObject for every attribute a secret or private key has, on a modifiable source and
    on one with CKA_MODIFIABLE false (PKCS#11 v2.40 §4.1.3 and §5.7: only what could be modified, plus
    CKA_TOKEN/CKA_PRIVATE/CKA_MODIFIABLE; Strongroom's rule per attribute in attributes.Copy)."""
    rule = RULES[cka]
    extra = {CKA.ALLOWED_MECHANISMS: [CKM.AES_GCM, CKM.AES_ECB], CKA.START_DATE: b"20250101"}
    sources = [make_object(CKO.SECRET_KEY, {**extra, CKA.WRAP_TEMPLATE: {CKA.EXTRACTABLE: False},
                                            CKA.UNWRAP_TEMPLATE: {CKA.EXTRACTABLE: False}}),
               make_object(CKO.PRIVATE_KEY, {**extra, CKA.UNWRAP_TEMPLATE: {CKA.EXTRACTABLE: False}})]
    for source in sources:
        if cka not in source.attributes:
            continue
        current = source.attributes[cka]
        new = _changed(current)
        policy = copy_rule(rule)
        for modifiable in (True, False):
            obj = source if modifiable else source.with_changes(
                attributes={**source.attributes, CKA.MODIFIABLE: False})
            if cka == CKA.MODIFIABLE and not modifiable:
                current, new = False, True
            if policy is Copy.SUBSET:
                allowed = set(new) <= set(current)
            elif policy is Copy.ONE_WAY:
                allowed = (rule.direction.value == "false->true") is (new is True)
            else:
                allowed = {Copy.FREE: True, Copy.AS_SET: modifiable, Copy.NARROW: new is False or modifiable,
                           Copy.KEEP: False, Copy.RESET: False}[policy]
            if allowed:
                assert templates.copy_attributes(obj, {cka: new})[cka] == new, (policy, modifiable)
            else:
                with pytest.raises(AttributeReadOnly):
                    templates.copy_attributes(obj, {cka: new})
            if policy is not Copy.RESET:
                assert templates.copy_attributes(obj, {cka: obj.attributes[cka]})[cka] == obj.attributes[cka]
