"""Quorum approvals (M of N) against real node processes: each service refused with M-1 approvals and done with
M; the attacks (an approver who may not approve, a replayed token, an expired one, one for other arguments, one
from another cluster, a tampered signature) each refused with its own message; key usage through PKCS#11
(python-pkcs11); CloudHSM's documented openssl flow run as its documentation shows it; the audit trail."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding

from strongroom.client import ClientError
from strongroom.client.calls import AsyncClient, pairs
from strongroom.constants import CKA, CKK, CKM, CKO
from strongroom.errors import CKR
from strongroom.pki import approvals
from strongroom.pki.certs import cert_to_pem, issue_node_certificate, load_certificate, load_private_key

from .approvers import PASSWORD, Approver, approver, first_admin, new_key, openssl, register, token_file
from .conftest import STRONGROOM, LocalCluster, Pkcs11Module, pkcs11_target

MANAGE, USE = CKA.STRONGROOM_MANAGE_KEY_QUORUM, CKA.STRONGROOM_USE_KEY_QUORUM


def refused(call: Any, *args: Any, **kwargs: Any) -> ClientError:
    with pytest.raises(ClientError) as info:
        call(*args, **kwargs)
    return info.value


def audit_events(cluster: LocalCluster) -> list[dict[str, Any]]:
    records = []
    for log in sorted(cluster.dir.glob("nodes/*/audit.log")):
        records += [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    return records


@pytest.fixture(scope="module")
def admins(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalCluster, list[Approver]]]:
    """A cluster with three admins holding approval keys of three kinds (RSA, P-256, Ed25519)."""
    cluster = LocalCluster(tmp_path_factory.mktemp("quorum") / "cluster")
    cluster.up()
    try:
        first = first_admin(cluster, "rsa")
        team = [first, approver(cluster, "officer2", "admin", "p256", admin=first.client),
                approver(cluster, "officer3", "admin", "ed25519", admin=first.client)]
        yield cluster, team
    finally:
        cluster.down()


def set_value(admin: Approver, service: str, value: int, approvers: list[Approver]) -> None:
    """Set a quorum value with the approvals the quorum service asks now."""
    required = admin.client.quorum_values()["quorum"]
    if required <= 1:
        admin.client.quorum_set_value(service, value)
        return
    token = token_file(admin.client.quorum_generate("quorum", "quorum.set_value", {"service": service,
                                                                                   "value": value}))
    for person in approvers[:required]:
        person.approve(admin.client, token)
    admin.client.approved(token.approval_data, AsyncClient.quorum_set_value, service, value)


# --- each service: M-1 refused, M done ---------------------------------------------------------------------


def test_user_service_needs_m_approvals_bound_to_the_request(admins: tuple[LocalCluster, list[Approver]]) -> None:
    cluster, (admin, officer2, officer3) = admins
    client = admin.client
    set_value(admin, "user", 2, [admin, officer2, officer3])
    assert client.quorum_values()["user"] == 2

    error = refused(client.user_create, "qu_bob", "crypto-user", PASSWORD)
    assert error.code == CKR.FUNCTION_REJECTED and "quorum approval required" in error.message

    token = token_file(client.quorum_generate("user", "user.create", {"username": "qu_bob", "role": "crypto-user"}))
    officer2.approve(client, token)
    error = refused(client.approved, token.approval_data, AsyncClient.user_create, "qu_bob", "crypto-user", PASSWORD)
    assert "quorum not met" in error.message and "has 1 (officer2)" in error.message
    officer3.approve(client, token)
    created = client.approved(token.approval_data, AsyncClient.user_create, "qu_bob", "crypto-user", PASSWORD)
    assert created["username"] == "qu_bob"

    # Without passing the token: the requester's complete token for exactly this request is found.
    token = token_file(client.quorum_generate("user", "user.change_password", {"username": "qu_bob"}))
    error = refused(client.user_change_password, "qu_bob", "new-password1")
    assert "has 0" in error.message
    admin.approve(client, token)
    officer3.approve(client, token)
    client.user_change_password("qu_bob", "new-password1")

    # One's own password needs no approval (the service covers acting on others).
    officer2.client.user_change_password("officer2", PASSWORD)


def test_quorum_service_guards_the_values_themselves(admins: tuple[LocalCluster, list[Approver]]) -> None:
    cluster, (admin, officer2, officer3) = admins
    client = admin.client
    set_value(admin, "quorum", 2, [admin, officer2, officer3])
    error = refused(client.quorum_set_value, "user", 3)
    assert error.code == CKR.FUNCTION_REJECTED
    token = token_file(client.quorum_generate("quorum", "quorum.set_value", {"service": "user", "value": 3}))
    officer2.approve(client, token)
    assert "quorum not met" in refused(client.approved, token.approval_data, AsyncClient.quorum_set_value,
                                       "user", 3).message
    officer3.approve(client, token)
    client.approved(token.approval_data, AsyncClient.quorum_set_value, "user", 3)
    assert client.quorum_values()["user"] == 3
    # Never more than the admins who could approve: 3 keys registered, so 4 is refused.
    token = token_file(client.quorum_generate("quorum", "quorum.set_value", {"service": "user", "value": 4}))
    officer2.approve(client, token)
    officer3.approve(client, token)
    error = refused(client.approved, token.approval_data, AsyncClient.quorum_set_value, "user", 4)
    assert error.code == CKR.ACTION_PROHIBITED and "could never be met" in error.message
    set_value(admin, "user", 2, [admin, officer2, officer3])


def test_cluster_service_guards_enrollment_and_policies(admins: tuple[LocalCluster, list[Approver]]) -> None:
    cluster, (admin, officer2, officer3) = admins
    client = admin.client
    set_value(admin, "cluster", 2, [admin, officer2, officer3])
    ca_key, ca_cert = load_private_key(cluster.dir / "ca" / "ca.key"), load_certificate(cluster.dir / "ca" / "ca.crt")
    _key, cert = issue_node_certificate(ca_key, ca_cert, "node9", hosts=["127.0.0.1"])
    certificate = cert_to_pem(cert).decode()
    assert refused(client.hsm_enroll, "node9", certificate).code == CKR.FUNCTION_REJECTED
    token = token_file(client.quorum_generate("cluster", "hsm.enroll", {"node_id": "node9",
                                                                       "certificate": certificate}))
    officer3.approve(client, token)
    assert "quorum not met" in refused(client.approved, token.approval_data, AsyncClient.hsm_enroll, "node9",
                                       certificate).message
    admin.approve(client, token)
    assert client.approved(token.approval_data, AsyncClient.hsm_enroll, "node9", certificate)["node_id"] == "node9"

    assert refused(client.call, "cluster.set_policy", name="legacy_algorithms", value="on").code \
        == CKR.FUNCTION_REJECTED
    token = token_file(client.quorum_generate("cluster", "cluster.set_policy",
                                              {"name": "legacy_algorithms", "value": "off"}))
    admin.approve(client, token)
    officer2.approve(client, token)
    client.call("cluster.set_policy", name="legacy_algorithms", value="off")

    # An admin's zeroize of a node: refused with M-1 approvals (not run with M here: it would end the node).
    zeroize = client.quorum_generate("cluster", "hsm.zeroize", {"node_id": "node1"})
    officer2.approve(client, token_file(zeroize))
    error = refused(client.call, "hsm.zeroize", node_id="node1")
    assert error.code == CKR.FUNCTION_REJECTED and "quorum not met" in error.message and "has 1" in error.message
    assert client.cluster_status()["state"] == "active"
    client.quorum_delete(zeroize["token_id"])
    set_value(admin, "cluster", 1, [admin, officer2, officer3])


@pytest.fixture(scope="module")
def key_team(admins: tuple[LocalCluster, list[Approver]]) -> tuple[LocalCluster, list[Approver]]:
    """Crypto users alice (the owner of the keys), bob and carol, with approval keys; user quorum off."""
    cluster, (admin, officer2, officer3) = admins
    set_value(admin, "user", 1, [admin, officer2, officer3])
    team = [approver(cluster, name, "crypto-user", kind, admin=admin.client)
            for name, kind in (("alice", "rsa"), ("bob", "p384"), ("carol", "ed25519"))]
    return cluster, team


def aes_key(client: Any, label: str, manage: int = 0, use: int = 0) -> int:
    template = {CKA.TOKEN: True, CKA.LABEL: label.encode(), CKA.VALUE_LEN: 32, CKA.EXTRACTABLE: True}
    if manage:
        template[MANAGE] = manage
    if use:
        template[USE] = use
    return int(client.generate_key(CKM.AES_KEY_GEN, template))


def test_key_values_are_checked_when_a_key_is_made(key_team: tuple[LocalCluster, list[Approver]]) -> None:
    _cluster, (alice, _bob, _carol) = key_team
    handle = aes_key(alice.client, "values", manage=2, use=3)
    assert alice.client.get_attributes(handle, [MANAGE, USE]) == {MANAGE: 2, USE: 3}
    assert refused(aes_key, alice.client, "too-many", use=9).code == CKR.ATTRIBUTE_VALUE_INVALID
    error = refused(aes_key, alice.client, "more-than-approvers", manage=4)  # three crypto users have keys
    assert error.code == CKR.ATTRIBUTE_VALUE_INVALID and "could approve" in error.message
    # The values never change afterwards.
    assert refused(alice.client.set_attributes, handle, {USE: 1}).code in (CKR.ATTRIBUTE_READ_ONLY,
                                                                          CKR.ACTION_PROHIBITED)


def test_key_management_needs_the_key_s_approvers(key_team: tuple[LocalCluster, list[Approver]]) -> None:
    _cluster, (alice, bob, carol) = key_team
    client = alice.client
    handle = aes_key(client, "managed", manage=2)
    # Naming the approvers (as CloudHSM's --share-crypto-users at generation): free until the key has 2 users.
    client.share(handle, "bob")
    assert refused(client.share, handle, "carol").code == CKR.ACTION_PROHIBITED
    token = token_file(client.quorum_generate("key-management", "object.share", {"username": "carol"}, key=handle))
    bob.approve(client, token)
    assert "quorum not met" in refused(client.share, handle, "carol").message
    alice.approve(client, token)  # the requester may approve its own token, as in CloudHSM
    assert sorted(client.share(handle, "carol")) == ["bob", "carol"]

    # Destroy: M-1 refused, M done.
    assert refused(client.destroy_object, handle).code == CKR.ACTION_PROHIBITED
    token = token_file(client.quorum_generate("key-management", "object.destroy", key=handle))
    carol.approve(client, token)
    assert "quorum not met" in refused(client.destroy_object, handle).message
    bob.approve(client, token)
    client.destroy_object(handle)
    assert handle not in client.find_objects({CKA.LABEL: b"managed"})


def test_unshare_never_leaves_a_key_impossible_to_approve(key_team: tuple[LocalCluster, list[Approver]]) -> None:
    _cluster, (alice, bob, _carol) = key_team
    handle = aes_key(alice.client, "locked-in", use=2)
    alice.client.share(handle, "bob")
    error = refused(alice.client.unshare, handle, "bob")
    assert error.code == CKR.ACTION_PROHIBITED and "impossible to approve" in error.message


def test_key_management_covers_wrap_unwrap_and_set_attribute(key_team: tuple[LocalCluster, list[Approver]]) -> None:
    """The rest of the key-management service: wrapping a key whose manage value is 2 (CKR_KEY_NOT_WRAPPABLE
    without approvals), unwrapping with such a key, changing its attributes: refused with one approval, done with
    two, each token bound to its arguments."""
    _cluster, (alice, bob, _carol) = key_team
    client = alice.client
    kek = int(client.generate_key(CKM.AES_KEY_GEN, {CKA.TOKEN: True, CKA.LABEL: b"q-kek", CKA.VALUE_LEN: 32,
                                                     CKA.WRAP: True, CKA.UNWRAP: True, MANAGE: 2}))
    guarded = aes_key(client, "q-guarded", manage=2)
    for handle in (kek, guarded):
        client.share(handle, "bob")  # bob is named an approver (the key has fewer users than its value)
    plain_kek = int(client.generate_key(CKM.AES_KEY_GEN, {CKA.TOKEN: True, CKA.VALUE_LEN: 32, CKA.WRAP: True}))

    # Wrap the guarded key (its manage value counts, not the wrapping key's).
    assert refused(client.wrap_key, CKM.AES_KEY_WRAP, plain_kek, guarded).code == CKR.KEY_NOT_WRAPPABLE
    token = token_file(client.quorum_generate("key-management", "key.wrap", {
        "mechanism": int(CKM.AES_KEY_WRAP), "wrapping_key": plain_kek}, key=guarded))
    bob.approve(client, token)
    assert "quorum not met" in refused(client.wrap_key, CKM.AES_KEY_WRAP, plain_kek, guarded).message
    alice.approve(client, token)
    wrapped = client.wrap_key(CKM.AES_KEY_WRAP, plain_kek, guarded)
    assert len(wrapped) == 40

    # Unwrap with the guarded KEK: the token binds the wrapped bytes and the template.
    blob = client.wrap_key(CKM.AES_KEY_WRAP, kek, aes_key(client, "q-payload"))  # wrapping with kek is not guarded
    template = {CKA.CLASS: CKO.SECRET_KEY, CKA.KEY_TYPE: CKK.AES, CKA.TOKEN: True, CKA.LABEL: b"q-unwrapped"}
    assert refused(client.unwrap_key, CKM.AES_KEY_WRAP, kek, blob, template).code == CKR.ACTION_PROHIBITED
    token = token_file(client.quorum_generate("key-management", "key.unwrap", {
        "mechanism": int(CKM.AES_KEY_WRAP), "wrapped": blob, "template": pairs(template)}, key=kek))
    bob.approve(client, token)
    alice.approve(client, token)
    other = {**template, CKA.LABEL: b"q-other-label"}
    assert "not this request" in refused(client.approved, token.approval_data, AsyncClient.unwrap_key,
                                         CKM.AES_KEY_WRAP, kek, blob, other).message
    unwrapped = client.approved(token.approval_data, AsyncClient.unwrap_key, CKM.AES_KEY_WRAP, kek, blob, template)
    assert client.get_attribute(unwrapped, CKA.LABEL) == b"q-unwrapped"

    # Set an attribute of the guarded key.
    assert refused(client.set_attributes, guarded, {CKA.LABEL: b"renamed"}).code == CKR.ACTION_PROHIBITED
    token = token_file(client.quorum_generate("key-management", "object.set_attributes", {
        "template": pairs({CKA.LABEL: b"renamed"})}, key=guarded))
    alice.approve(client, token)
    assert "quorum not met" in refused(client.set_attributes, guarded, {CKA.LABEL: b"renamed"}).message
    bob.approve(client, token)
    client.set_attributes(guarded, {CKA.LABEL: b"renamed"})
    assert client.get_attribute(guarded, CKA.LABEL) == b"renamed"


def test_key_usage_is_a_window_of_approved_uses(key_team: tuple[LocalCluster, list[Approver]]) -> None:
    _cluster, (alice, bob, carol) = key_team
    client = alice.client
    handle = aes_key(client, "used", use=2)
    client.share(handle, "bob")
    iv = b"\x00" * 16
    error = refused(client.encrypt, handle, CKM.AES_CBC_PAD, b"data", iv)
    assert error.code == CKR.FUNCTION_REJECTED and f"encrypt with key {handle}" in error.message
    token = token_file(client.quorum_generate("key-usage", key=handle, uses=["encrypt", "decrypt"], window=300,
                                              count=3))
    carol_error = refused(carol.approve, client, token)  # not a user of the key
    assert carol_error.code == CKR.ACTION_PROHIBITED and "owner and the users it is shared with" in carol_error.message
    bob.approve(client, token)
    assert "quorum not met" in refused(client.encrypt, handle, CKM.AES_CBC_PAD, b"data", iv).message
    alice.approve(client, token)
    ciphertext = client.encrypt(handle, CKM.AES_CBC_PAD, b"data", iv)["data"]
    assert client.decrypt(handle, CKM.AES_CBC_PAD, ciphertext, iv) == b"data"
    # Not approved for signing (CMAC), whatever is left of the window.
    error = refused(client.sign, handle, CKM.AES_CMAC, b"x")
    assert error.code == CKR.FUNCTION_REJECTED and f"sign with key {handle}" in error.message
    client.encrypt(handle, CKM.AES_CBC_PAD, b"data", iv)  # the third and last use
    error = refused(client.encrypt, handle, CKM.AES_CBC_PAD, b"data", iv)
    assert "quorum approval required" in error.message  # spent: no live token left
    # Bob, who shares the key, needs his own approval: alice's was hers.
    assert refused(bob.client.encrypt, handle, CKM.AES_CBC_PAD, b"data", iv).code == CKR.FUNCTION_REJECTED


def test_a_key_under_usage_quorum_is_no_hkdf_salt_key(key_team: tuple[LocalCluster, list[Approver]]) -> None:
    """HKDF's salt key is used as much as its base key (CKM_HKDF_DATA hands out HMAC(salt key, ...) readable):
    a key whose use needs approvals cannot serve as one, else it would be used without them."""
    _cluster, (alice, _bob, _carol) = key_team
    client = alice.client

    def derivable(label: str, use: int = 0) -> int:
        template = {CKA.TOKEN: True, CKA.LABEL: label.encode(), CKA.VALUE_LEN: 32, CKA.DERIVE: True}
        if use:
            template[USE] = use
        return int(client.generate_key(CKM.GENERIC_SECRET_KEY_GEN, template))

    base, guarded = derivable("hkdf-base"), derivable("hkdf-guarded-salt", use=2)
    params = {"extract": True, "expand": True, "prf": int(CKM.SHA256), "salt_type": 4, "salt": None,
              "salt_key": guarded, "info": b"attack"}
    data = {CKA.TOKEN: True, CKA.VALUE_LEN: 32}
    as_base = refused(client.derive_key, CKM.HKDF_DATA, guarded, data, dict(params, salt_key=base))
    assert as_base.code == CKR.FUNCTION_REJECTED  # as the base key, its quorum holds
    as_salt = refused(client.derive_key, CKM.HKDF_DATA, base, data, params)
    assert as_salt.code == CKR.KEY_FUNCTION_NOT_PERMITTED and "salt key" in as_salt.message, as_salt.message
    # A salt key without quorum values still works.
    plain = derivable("hkdf-plain-salt")
    client.derive_key(CKM.HKDF_DATA, base, data, dict(params, salt_key=plain))


# --- the attacks ----------------------------------------------------------------------------------------


def test_attacks_are_refused_each_with_its_own_message(admins: tuple[LocalCluster, list[Approver]],
                                                       key_team: tuple[LocalCluster, list[Approver]],
                                                       tmp_path: Path) -> None:
    cluster, (admin, officer2, officer3) = admins
    _c, (alice, _bob, _carol) = key_team
    client = admin.client
    set_value(admin, "user", 2, [admin, officer2, officer3])
    messages: dict[str, str] = {}

    # An approver who may not approve: a crypto user on an admin token.
    token = token_file(client.quorum_generate("user", "user.delete", {"username": "qu_bob"}))
    error = refused(alice.approve, client, token)
    assert error.code == CKR.ACTION_PROHIBITED
    messages["not allowed"] = error.message

    # A tampered signature: one bit flipped.
    signature = bytearray(officer2.sign(token))
    signature[5] ^= 0x01
    assert token.approval_data is not None
    error = refused(client.quorum_approve, token.approval_data, "officer2", bytes(signature))
    assert error.code == CKR.SIGNATURE_INVALID
    messages["tampered"] = error.message
    # ... or a valid signature under another approver's name.
    error = refused(client.quorum_approve, token.approval_data, "officer3", officer2.sign(token))
    assert error.code == CKR.SIGNATURE_INVALID

    # A token for other arguments: approved for deleting qu_bob, used to delete officer3.
    officer2.approve(client, token)
    officer3.approve(client, token)
    error = refused(client.approved, token.approval_data, AsyncClient.user_delete, "officer3")
    assert error.code == CKR.FUNCTION_REJECTED
    messages["other arguments"] = error.message

    # A replayed token: used once (qu_bob deleted), then again.
    client.approved(token.approval_data, AsyncClient.user_delete, "qu_bob")
    error = refused(client.approved, token.approval_data, AsyncClient.user_delete, "qu_bob")
    messages["replayed"] = error.message

    # An expired token.
    token = token_file(client.quorum_generate("user", "user.create", {"username": "late", "role": "crypto-user"},
                                              timeout=1))
    time.sleep(2.5)
    error = refused(client.approved, token.approval_data, AsyncClient.user_create, "late", "crypto-user", PASSWORD)
    messages["expired"] = error.message
    assert "expired" in refused(officer2.approve, client, token).message

    # A token from another cluster: same admin name, same approval keys registered there.
    other = LocalCluster(tmp_path / "other")
    other.up()
    try:
        other_admin = other.admin()
        register(other_admin, admin.key)
        for person in (officer2, officer3):
            other_admin.user_create(person.name, "admin", PASSWORD)
            person_client = other.client()
            person_client.login(person.name, PASSWORD)
            register(person_client, person.key)
        other_admin.quorum_set_value("user", 2)
        foreign = token_file(other_admin.quorum_generate("user", "user.create", {"username": "spy",
                                                                                 "role": "crypto-user"}))
        officer2.approve(other_admin, foreign)
        officer3.approve(other_admin, foreign)
        error = refused(client.approved, foreign.approval_data, AsyncClient.user_create, "spy", "crypto-user",
                        PASSWORD)
        messages["other cluster"] = error.message
        assert "issued by cluster" in refused(officer2.approve, client, foreign).message
    finally:
        other.down()

    assert "may not approve" in messages["not allowed"]
    assert "does not verify" in messages["tampered"]
    assert "not this request" in messages["other arguments"]
    assert "spent" in messages["replayed"]
    assert "expired" in messages["expired"]
    assert "issued by cluster" in messages["other cluster"]
    assert len(set(messages.values())) == len(messages), messages  # all distinct
    assert "late" not in [u["username"] for u in client.user_list()]
    assert "spy" not in [u["username"] for u in client.user_list()]


def test_tokens_are_listed_fetched_and_deleted_and_everything_is_audited(
        admins: tuple[LocalCluster, list[Approver]]) -> None:
    cluster, (admin, officer2, _officer3) = admins
    client = admin.client
    reply = client.quorum_generate("user", "user.delete", {"username": "nobody_here"})
    listed = {t["token_id"]: t for t in officer2.client.quorum_tokens()}  # an approver sees admin tokens
    assert listed[reply["token_id"]]["arguments"] == {"username": "nobody_here"}
    fetched = token_file(officer2.client.quorum_token(reply["token_id"]))
    assert fetched.approval_data == token_file(reply).approval_data
    assert client.quorum_delete(reply["token_id"]) == [reply["token_id"]]
    assert reply["token_id"] not in {t["token_id"] for t in client.quorum_tokens()}
    events = {record["event"] for record in audit_events(cluster)}
    assert {"quorum.token.generate", "quorum.token.approve", "quorum.token.use", "quorum.token.delete",
            "quorum.refused", "quorum.set_value", "quorum.register"} <= events


def approved_by(admin: Approver, approvers: list[Approver], service: str, operation: str,
                arguments: dict[str, Any], call: Any, *args: Any, **kwargs: Any) -> Any:
    """Run ``call`` with a token of ``service`` bound to it, signed by as many of ``approvers`` as needed."""
    required = admin.client.quorum_values()[service]
    token = token_file(admin.client.quorum_generate(service, operation, arguments))
    for person in approvers[:required]:
        person.approve(admin.client, token)
    return admin.client.approved(token.approval_data, call, *args, **kwargs)


def test_change_quorum_of_others_timeouts_and_no_quorum_left_unreachable(
        admins: tuple[LocalCluster, list[Approver]], key_team: tuple[LocalCluster, list[Approver]]) -> None:
    """The user service covers an admin's change of another user's approval key; each service has its own token
    timeout; deleting a user or removing a key never leaves a quorum that no one can meet."""
    cluster, (admin, officer2, officer3) = admins
    _c, (alice, bob, _carol) = key_team
    client = admin.client
    set_value(admin, "user", 2, [admin, officer2, officer3])
    assert refused(alice.client.quorum_register, None, None, None, deregister=True,
                   username="bob").code == CKR.ACTION_PROHIBITED  # a crypto user changes only its own key
    approved_by(admin, [officer2, officer3], "user", "user.create", {"username": "dora", "role": "crypto-user"},
                AsyncClient.user_create, "dora", "crypto-user", PASSWORD)

    # dora's key signs the admin's registration token; the admin registers it: a change-quorum of another user.
    dora_key = new_key("p384")
    entry = token_file(client.quorum_generate("registration")).tokens[0]
    assert entry.approval_data is not None
    signature, public = approvals.sign_token(dora_key, entry.unsigned), approvals.public_pem(dora_key.public_key())
    error = refused(client.quorum_register, public, entry.approval_data, signature, username="dora")
    assert error.code == CKR.FUNCTION_REJECTED and "quorum approval required" in error.message
    # Approved for another key: refused (the token binds the key).
    other = approvals.public_pem(new_key("p384").public_key())
    token = token_file(client.quorum_generate("user", "quorum.register", {"username": "dora", "public_key": other}))
    officer2.approve(client, token)
    officer3.approve(client, token)
    assert "not this request" in refused(client.approved, token.approval_data, AsyncClient.quorum_register, public,
                                         entry.approval_data, signature, username="dora").message
    result = approved_by(admin, [officer2, officer3], "user", "quorum.register",
                         {"username": "dora", "public_key": public}, AsyncClient.quorum_register, public,
                         entry.approval_data, signature, username="dora")
    assert result["username"] == "dora" and result["algorithm"] == "EC-P-384"
    assert {u["username"]: u for u in client.quorum_users()}["dora"]["quorum"] == [{"strategy": "token-sign",
                                                                                    "status": "enabled"}]

    # Token timeouts per service (the quorum service approves the change).
    approved_by(admin, [officer2, officer3], "quorum", "quorum.set_timeout", {"service": "user", "seconds": 120},
                AsyncClient.quorum_set_timeout, "user", 120)
    assert client.quorum_values()["timeouts"]["user"] == 120
    assert client.quorum_values()["timeouts"]["cluster"] == 600
    short = client.quorum_generate("user", "user.delete", {"username": "dora"})
    assert 60 < short["token-timeout-seconds"] <= 120
    assert refused(client.quorum_generate, "user", "user.delete", {"username": "dora"},
                   timeout=300).code == CKR.ARGUMENTS_BAD
    client.quorum_delete(short["token_id"])

    # An admin service at 3 with 3 admin keys: no admin key may go, and no admin with one may be deleted.
    set_value(admin, "cluster", 3, [admin, officer2, officer3])
    error = refused(client.quorum_register, None, None, None, deregister=True)
    assert error.code == CKR.ACTION_PROHIBITED and "could never be met" in error.message
    error = refused(approved_by, admin, [officer2, officer3], "user", "user.delete", {"username": "officer3"},
                    AsyncClient.user_delete, "officer3")
    assert error.code == CKR.ACTION_PROHIBITED and "could never be met" in error.message
    set_value(admin, "cluster", 1, [admin, officer2, officer3])
    # A key whose use value is 2 with two users holding keys (alice's, shared with bob): bob stays.
    alice.client.share(aes_key(alice.client, "needs-bob", use=2), "bob")
    error = refused(bob.client.quorum_register, None, None, None, deregister=True)
    assert error.code == CKR.ACTION_PROHIBITED and "could never be approved again" in error.message
    error = refused(approved_by, admin, [officer2, officer3], "user", "user.delete", {"username": "bob"},
                    AsyncClient.user_delete, "bob")
    assert error.code == CKR.ACTION_PROHIBITED and "could never be approved again" in error.message
    assert "bob" in [u["username"] for u in client.user_list()]
    # An admin removes dora's key (no key depends on it) under the user quorum.
    result = approved_by(admin, [officer2, officer3], "user", "quorum.register",
                         {"username": "dora", "deregister": True}, AsyncClient.quorum_register, None, None, None,
                         deregister=True, username="dora")
    assert result == {"username": "dora"}
    registered = [r for r in audit_events(cluster) if r["event"] == "quorum.register" and r["outcome"] == "intent"
                  and r["details"].get("username") == "dora"]
    assert [r["actor"] for r in registered] == [admin.name, admin.name]


def wait_for_audit(cluster: LocalCluster, event: str, token_id: str, timeout: float = 120) -> dict[str, Any]:
    """The first record of ``event`` naming ``token_id`` (the sweep runs every 10 s; generous for a loaded host)."""
    deadline = time.monotonic() + timeout
    while True:
        for record in audit_events(cluster):
            if record["event"] == event and record["details"].get("token") == token_id:
                return record
        assert time.monotonic() < deadline, f"no {event} of token {token_id[:16]} in the audit log"
        time.sleep(0.5)


def test_a_token_that_expires_unused_is_audited_by_the_sweep(admins: tuple[LocalCluster, list[Approver]]) -> None:
    """Nobody lists or uses it: the cluster's sweep still records its expiry (once), and it shows as expired."""
    cluster, (admin, officer2, _officer3) = admins
    reply = admin.client.quorum_generate("user", "user.delete", {"username": "never_asked_again"}, timeout=1)
    token = token_file(reply)
    officer2.approve(admin.client, token)
    record = wait_for_audit(cluster, "quorum.token.expire", reply["token_id"])
    assert record["details"]["approvers"] == ["officer2"] and record["details"]["requester"] == admin.name
    assert record["details"]["arguments"] == {"username": "never_asked_again"}
    deadline = time.monotonic() + 60
    while not (outcomes := [r for r in audit_events(cluster) if r["event"] == "quorum.token.expire"
                            and r["details"].get("intent") == record["seq"]]):
        assert time.monotonic() < deadline, "the expiry's outcome was never written"
        time.sleep(0.2)
    assert [r["outcome"] for r in outcomes] == ["ok"]  # the mark was written: one expiry in the chain
    assert [r for r in audit_events(cluster) if r["event"] == "quorum.token.expire"
            and r["details"].get("token") == reply["token_id"]] == [record]
    listed = {t["token_id"]: t for t in admin.client.quorum_tokens()}
    assert listed[reply["token_id"]]["state"] == "expired"
    assert "expired" in refused(officer2.approve, admin.client, token).message


def expiries(cluster: LocalCluster, token_id: str) -> list[dict[str, Any]]:
    """The expiries of a token the audit chain records as done: the sweep's (an intent whose outcome is ok) or
    a full cluster's purge (one record). An intent whose write lost a race (the purge removed the token first)
    is an attempt, not an expiry."""
    records = audit_events(cluster)
    done = {r["details"].get("intent") for r in records if r["event"] == "quorum.token.expire" and r["outcome"] == "ok"}
    return [r for r in records if r["event"] == "quorum.token.expire" and r["details"].get("token") == token_id
            and (r["outcome"] != "intent" or r["seq"] in done)]


def test_at_most_1024_tokens_and_expired_ones_are_purged_and_audited(cluster: LocalCluster) -> None:
    """CloudHSM's limit, per cluster: when 1,024 tokens are kept, an expired one makes room (its expiry audited
    once); when none has expired, a new token is refused. No sleep: the short-lived token is the first of 1,024."""
    client = cluster.admin()
    first = client.quorum_generate("registration", timeout=1)
    for _ in range(1023):
        client.quorum_generate("registration")
    deadline = time.monotonic() + 120
    while client.quorum_token(first["token_id"])["state"] != "expired":
        assert time.monotonic() < deadline, "a token of 1 s never expired"
        time.sleep(0.2)
    client.quorum_generate("registration")  # the 1,025th: the expired one makes room
    assert "no token" in refused(client.quorum_token, first["token_id"]).message
    error = refused(client.quorum_generate, "registration")  # 1,024 live tokens: refused
    assert error.code == CKR.DEVICE_MEMORY and "1024" in error.message
    assert len(expiries(cluster, first["token_id"])) == 1


# --- key usage through PKCS#11 -------------------------------------------------------------------------------

PKCS11_SCRIPT = """
import json, os
import pkcs11
from pkcs11 import KeyType, Mechanism, ObjectClass, exceptions

lib = pkcs11.lib(os.environ["STRONGROOM_PKCS11_MODULE"])
token = lib.get_token(token_label=os.environ["TOKEN_LABEL"])
results = []
with token.open(user_pin=os.environ["USER_PIN"]) as session:
    key = session.get_key(object_class=ObjectClass.PRIVATE_KEY, key_type=KeyType.RSA, label=os.environ["LABEL"])
    for _ in range(int(os.environ["TRIES"])):
        try:
            results.append(key.sign(b"approved message", mechanism=Mechanism.SHA256_RSA_PKCS).hex())
        except exceptions.PKCS11Error as exc:  # python-pkcs11 has no class for CKR_KEY_FUNCTION_NOT_PERMITTED
            results.append(f"{type(exc).__name__}: {exc}")
print(json.dumps(results))
"""


def run_pkcs11(target: Any, pin: str, label: str, tries: int) -> list[str]:
    env = dict(os.environ, STRONGROOM_PKCS11_MODULE=str(target.module), STRONGROOM_AGENT_SOCKET=target.socket,
               TOKEN_LABEL=target.token_label, USER_PIN=pin, LABEL=label, TRIES=str(tries))
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(PKCS11_SCRIPT)], env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return list(json.loads(result.stdout))


def test_key_usage_quorum_through_pkcs11(pkcs11_module: Pkcs11Module, tmp_path: Path) -> None:
    cluster = LocalCluster(tmp_path / "cluster")
    cluster.up()
    try:
        target = pkcs11_target(cluster, pkcs11_module)
        admin = cluster.admin()
        alice = approver(cluster, "p11_alice", "crypto-user", "rsa", admin=admin)
        bob = approver(cluster, "p11_bob", "crypto-user", "p256", admin=admin)
        public, private = alice.client.generate_key_pair(
            CKM.RSA_PKCS_KEY_PAIR_GEN, {CKA.TOKEN: True, CKA.MODULUS_BITS: 2048, CKA.LABEL: b"p11-quorum"},
            {CKA.TOKEN: True, CKA.LABEL: b"p11-quorum", USE: 2})
        alice.client.share(private, "p11_bob")
        pin = f"p11_alice:{PASSWORD}"

        not_permitted = "PKCS11Error: Unmapped error code 0x68"  # C_SignInit: CKR_KEY_FUNCTION_NOT_PERMITTED
        # No approval: C_SignInit refuses the key's use.
        assert run_pkcs11(target, pin, "p11-quorum", 1) == [not_permitted]
        # One approval of two: still refused.
        token = token_file(alice.client.quorum_generate("key-usage", key=private, uses=["sign"], window=300,
                                                        count=2))
        bob.approve(alice.client, token)
        assert run_pkcs11(target, pin, "p11-quorum", 1) == [not_permitted]
        # Two: the application signs twice (the approved count); the third C_Sign is CKR_FUNCTION_REJECTED
        # (the agent sends a checked key's next signature in one request) or its C_SignInit is refused.
        alice.approve(alice.client, token)
        results = run_pkcs11(target, pin, "p11-quorum", 3)
        assert results[2].startswith("FunctionRejected") or results[2] == not_permitted, results
        modulus = alice.client.get_attribute(public, CKA.MODULUS)
        exponent = alice.client.get_attribute(public, CKA.PUBLIC_EXPONENT)
        from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicNumbers

        verifier = RSAPublicNumbers(int.from_bytes(exponent, "big"), int.from_bytes(modulus, "big")).public_key()
        for signature in results[:2]:
            verifier.verify(bytes.fromhex(signature), b"approved message", padding.PKCS1v15(), hashes.SHA256())
        assert [t["state"] for t in alice.client.quorum_tokens() if t["token_id"] == token.token.hex()] == ["used"]
    finally:
        cluster.down()


# --- CloudHSM's documented flow, with openssl ----------------------------------------------------------------


def _cli(cluster: LocalCluster, workdir: Path, *args: str, pin: str) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STRONGROOM_")}
    env.update(STRONGROOM_DIR=str(cluster.dir), STRONGROOM_PIN=pin)
    result = subprocess.run([*STRONGROOM, *args, "--json"], cwd=workdir, env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.stdout.strip(), result.stderr
    reply = json.loads(result.stdout)
    reply["returncode"] = result.returncode
    return reply


def test_cloudhsm_openssl_flow_as_documented(cluster: LocalCluster, tmp_path: Path) -> None:
    """quorum-auth-chsm-cli-first-time and -admin: keys from openssl genrsa, the registration token signed with
    ``openssl pkeyutl -sign -pkeyopt digest:sha256`` over the base64-decoded token, the base64 signature pasted
    into the file, ``user change-quorum token-sign register``, ``set-quorum-value``, a user-service token signed
    by two admins the same way, and ``user create ... --approval FILE``."""
    work = tmp_path
    admin_pin = cluster.admin_pin
    assert _cli(cluster, work, "user", "create", "--username", "admin2", "--role", "admin", "--password", PASSWORD,
                pin=admin_pin)["error_code"] == 0
    people = {"admin": admin_pin, "admin2": f"admin2:{PASSWORD}"}
    for name, pin in people.items():
        # $ openssl genrsa -out <admin.key> -aes256 2048
        # $ openssl rsa -in admin.key -outform PEM -pubout -out admin1.pub
        openssl("genrsa", "-out", f"{name}.key", "-aes256", "-passout", "pass:pass phrase", "2048", cwd=work)
        openssl("rsa", "-in", f"{name}.key", "-passin", "pass:pass phrase", "-outform", "PEM", "-pubout", "-out",
                f"{name}.pub", cwd=work)
        # aws-cloudhsm > quorum token-sign generate --service registration --token /path/tokenfile
        reply = _cli(cluster, work, "quorum", "token-sign", "generate", "--service", "registration", "--token",
                     f"{name}.token", pin=pin)
        assert reply["error_code"] == 0, reply
        tokenfile = json.loads((work / f"{name}.token").read_text())
        assert set(tokenfile) >= {"version", "tokens"} and set(tokenfile["tokens"][0]) >= {"approval_data", "unsigned",
                                                                                            "signed"}
        # $ echo -n '<unsigned>' | base64 -d > admin.bin
        (work / f"{name}.bin").write_bytes(base64.b64decode(tokenfile["tokens"][0]["unsigned"]))
        # $ openssl pkeyutl -sign -inkey admin.key -pkeyopt digest:sha256 -keyform PEM -in admin.bin -out admin.sig.bin
        openssl("pkeyutl", "-sign", "-inkey", f"{name}.key", "-passin", "pass:pass phrase", "-pkeyopt",
                "digest:sha256", "-keyform", "PEM", "-in", f"{name}.bin", "-out", f"{name}.sig.bin", cwd=work)
        # $ base64 -w0 admin.sig.bin > admin.sig.b64 ; paste it into the token file
        tokenfile["tokens"][0]["signed"] = base64.b64encode((work / f"{name}.sig.bin").read_bytes()).decode()
        (work / f"{name}.token").write_text(json.dumps(tokenfile, indent=2))
        # aws-cloudhsm > user change-quorum token-sign register --public-key </path/admin.pub> --signed-token ...
        reply = _cli(cluster, work, "user", "change-quorum", "token-sign", "register", "--public-key",
                     f"{name}.pub", "--signed-token", f"{name}.token", pin=pin)
        assert reply["error_code"] == 0, reply
    # aws-cloudhsm > quorum token-sign set-quorum-value --service user --value 2
    assert _cli(cluster, work, "quorum", "token-sign", "set-quorum-value", "--service", "user", "--value", "2",
                pin=admin_pin)["error_code"] == 0
    values = _cli(cluster, work, "quorum", "token-sign", "list-quorum-values", pin=admin_pin)["data"]
    assert values["user"] == 2
    refusal = _cli(cluster, work, "user", "create", "--username", "user1", "--role", "crypto-user", "--password",
                   PASSWORD, pin=admin_pin)
    assert refusal["error_code"] == CKR.FUNCTION_REJECTED, refusal
    # aws-cloudhsm > quorum token-sign generate --service user --token </path/admin.token>   (bound to the request)
    assert _cli(cluster, work, "quorum", "token-sign", "generate", "--service", "user", "--token", "admin.token",
                "--operation", "user create", "--argument", "username=user1", "--argument", "role=crypto-user",
                pin=admin_pin)["error_code"] == 0
    token = json.loads((work / "admin.token").read_text())
    assert set(token) >= {"version", "approval_data", "token", "signatures"} and token["signatures"] == []
    (work / "unsigned_token.bin").write_bytes(base64.b64decode(token["token"]))
    for name in people:
        openssl("pkeyutl", "-sign", "-inkey", f"{name}.key", "-passin", "pass:pass phrase", "-pkeyopt",
                "digest:sha256", "-keyform", "PEM", "-in", "unsigned_token.bin", "-out", f"{name}.sig.bin", cwd=work)
        token["signatures"].append({"username": name,
                                    "signature": base64.b64encode((work / f"{name}.sig.bin").read_bytes()).decode()})
    (work / "admin.token").write_text(json.dumps(token, indent=2))
    listed = _cli(cluster, work, "quorum", "token-sign", "list", pin=admin_pin)["data"]["tokens"]
    assert any(t["service"] == "user" and t["approvals-required"] == 2 for t in listed)
    # aws-cloudhsm > user create --username user1 --role crypto-user --approval /path/admin.token
    created = _cli(cluster, work, "user", "create", "--username", "user1", "--role", "crypto-user", "--password",
                   PASSWORD, "--approval", "admin.token", pin=admin_pin)
    assert created["error_code"] == 0 and created["data"]["username"] == "user1", created
    again = _cli(cluster, work, "user", "delete", "--username", "user1", "--approval", "admin.token", pin=admin_pin)
    assert again["error_code"] != 0 and "spent" in again["error"]
    # The same token signed with the CLI's own signing command verifies alike.
    assert _cli(cluster, work, "quorum", "token-sign", "sign", "--token", "admin.token", "--private-key", "admin.key",
                "--passphrase", "pass phrase", "--username", "admin", pin=admin_pin)["error_code"] == 0
    assert approvals.TokenFile.loads((work / "admin.token").read_text()).signatures


def test_key_list_verbose_shows_the_key_quorum_values(cluster: LocalCluster, tmp_path: Path) -> None:
    admin = first_admin(cluster)
    alice = approver(cluster, "kl_alice", "crypto-user", admin=admin.client)
    approver(cluster, "kl_bob", "crypto-user", admin=admin.client)
    reply = _cli(cluster, tmp_path, "key", "generate-symmetric", "aes", "--label", "kq", "--key-length-bytes", "32",
                 "--manage-key-quorum-value", "2", "--use-key-quorum-value", "2", pin=f"kl_alice:{PASSWORD}")
    assert reply["error_code"] == 0, reply
    listed = _cli(cluster, tmp_path, "key", "list", "--verbose", "--filter", "attr.label=kq",
                  pin=f"kl_alice:{PASSWORD}")["data"]["matched_keys"]
    assert listed[0]["key-info"]["key-quorum-values"] == {"manage-key-quorum-value": 2, "use-key-quorum-value": 2}
    assert alice.client.get_attributes(listed[0]["handle"], [CKA.KEY_TYPE])[CKA.KEY_TYPE] == CKK.AES
    assert listed[0]["attributes"]["class"] in ("secret-key", CKO.SECRET_KEY.name)


#: openssl commands for each kind of approval key: how it is made, and the pkeyutl options that sign a token.
OPENSSL_KEYS = {
    "RSA-3072": (("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:3072"),
                 ("-pkeyopt", "digest:sha256", "-pkeyopt", "rsa_padding_mode:pss")),
    "EC-P-384": (("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-384"), ("-pkeyopt", "digest:sha256")),
    "Ed25519": (("genpkey", "-algorithm", "ed25519"), ("-rawin",)),
}


def test_openssl_keys_of_every_type_register_and_approve_through_the_cli(cluster: LocalCluster,
                                                                        tmp_path: Path) -> None:
    """Beyond CloudHSM's RSA-2048: RSA-3072 signing with PSS, ECDSA P-384 and Ed25519 keys made by openssl
    genpkey, registered with the CloudHSM flow (registration token signed by openssl pkeyutl), then the three
    approve a user-service token the same way and the request runs with --approval FILE."""
    work = tmp_path
    admin_pin = cluster.admin_pin
    people = {cluster.summary["admin_user"]: admin_pin}
    for name in ("ossl2", "ossl3"):
        assert _cli(cluster, work, "user", "create", "--username", name, "--role", "admin", "--password", PASSWORD,
                    pin=admin_pin)["error_code"] == 0
        people[name] = f"{name}:{PASSWORD}"
    kinds = dict(zip(people, OPENSSL_KEYS, strict=True))

    def sign(name: str, token: bytes) -> str:
        (work / f"{name}.bin").write_bytes(token)
        openssl("pkeyutl", "-sign", "-inkey", f"{name}.key", *OPENSSL_KEYS[kinds[name]][1], "-in", f"{name}.bin",
                "-out", f"{name}.sig", cwd=work)
        return base64.b64encode((work / f"{name}.sig").read_bytes()).decode()

    for name, pin in people.items():
        openssl(*OPENSSL_KEYS[kinds[name]][0], "-out", f"{name}.key", cwd=work)
        openssl("pkey", "-in", f"{name}.key", "-pubout", "-out", f"{name}.pub", cwd=work)
        assert _cli(cluster, work, "quorum", "token-sign", "generate", "--service", "registration", "--token",
                    f"{name}.token", pin=pin)["error_code"] == 0
        tokenfile = json.loads((work / f"{name}.token").read_text())
        tokenfile["tokens"][0]["signed"] = sign(name, base64.b64decode(tokenfile["tokens"][0]["unsigned"]))
        (work / f"{name}.token").write_text(json.dumps(tokenfile, indent=2))
        reply = _cli(cluster, work, "user", "change-quorum", "token-sign", "register", "--public-key", f"{name}.pub",
                     "--signed-token", f"{name}.token", pin=pin)
        assert reply["error_code"] == 0 and reply["data"]["algorithm"] == kinds[name], reply
    algorithms = {row["username"]: row["algorithm"] for row in cluster.admin().quorum_users()}
    assert algorithms == kinds

    assert _cli(cluster, work, "quorum", "token-sign", "set-quorum-value", "--service", "user", "--value", "3",
                pin=admin_pin)["error_code"] == 0
    assert _cli(cluster, work, "quorum", "token-sign", "generate", "--service", "user", "--token", "create.token",
                "--operation", "user create", "--argument", "username=ossl_user", "--argument", "role=crypto-user",
                pin=admin_pin)["error_code"] == 0
    token = json.loads((work / "create.token").read_text())
    for name in list(people)[:2]:
        token["signatures"].append({"username": name, "signature": sign(name, base64.b64decode(token["token"]))})
    (work / "create.token").write_text(json.dumps(token, indent=2))
    args = ("user", "create", "--username", "ossl_user", "--role", "crypto-user", "--password", PASSWORD,
            "--approval", "create.token")
    refusal = _cli(cluster, work, *args, pin=admin_pin)
    assert refusal["error_code"] == CKR.FUNCTION_REJECTED and "has 2" in refusal["error"], refusal
    token["signatures"].append({"username": "ossl3", "signature": sign("ossl3", base64.b64decode(token["token"]))})
    (work / "create.token").write_text(json.dumps(token, indent=2))
    created = _cli(cluster, work, *args, pin=admin_pin)
    assert created["error_code"] == 0 and created["data"]["username"] == "ossl_user", created


def test_cloudhsm_timeouts_generated_and_approved(cluster: LocalCluster, tmp_path: Path) -> None:
    """``quorum token-sign list-timeouts`` / ``set-timeout --generated N --approved N`` as CloudHSM's CLI has them:
    a token has `generated` seconds to collect its approvals, then `approved` seconds to be used."""
    admin = first_admin(cluster)
    admin2 = approver(cluster, "to_admin2", "admin", "ed25519", admin=admin.client)
    pin = cluster.admin_pin
    assert _cli(cluster, tmp_path, "quorum", "token-sign", "list-timeouts", pin=pin)["data"] == {
        "generated": 600, "approved": 600}
    assert _cli(cluster, tmp_path, "quorum", "token-sign", "set-timeout", "--generated", "900", "--approved", "60",
                pin=pin)["error_code"] == 0
    assert _cli(cluster, tmp_path, "quorum", "token-sign", "list-timeouts", pin=pin)["data"] == {
        "generated": 900, "approved": 60}
    assert _cli(cluster, tmp_path, "quorum", "token-sign", "set-timeout", "--approved", "5",
                pin=pin)["error_code"] == CKR.ARGUMENTS_BAD

    admin.client.quorum_set_value("user", 2)
    reply = admin.client.quorum_generate("user", "user.create", {"username": "timed", "role": "crypto-user"})
    assert 600 < reply["token-timeout-seconds"] <= 900  # time to collect the approvals
    token = token_file(reply)
    half = admin.approve(admin.client, token)
    assert half["state"] == "pending" and half["token-timeout-seconds"] > 600
    complete = admin2.approve(admin.client, token)
    assert complete["state"] == "approved" and complete["token-timeout-seconds"] <= 60  # now: time to use it
    created = admin.client.approved(token.approval_data, AsyncClient.user_create, "timed", "crypto-user", PASSWORD)
    assert created["username"] == "timed"


def test_an_admin_zeroizes_a_node_with_m_cluster_approvals(tmp_path: Path) -> None:
    """The cluster service's zeroize, done: two nodes, value 2; refused on node2 with one approval, done with two
    (approved from node1: a token is the cluster's), and node1 keeps serving."""
    from strongroom.client import Client, ClientProfile

    cluster = LocalCluster(tmp_path / "zeroize", workers=1, up_args=("--nodes", "2"))
    cluster.up()
    try:
        admin = first_admin(cluster, "ed25519")
        admin2 = approver(cluster, "z_admin2", "admin", "p256", admin=admin.client)
        admin.client.quorum_set_value("cluster", 2)
        profile = ClientProfile.load(cluster.dir)
        node2 = Client(profile, profile.nodes[1], timeout=30)
        try:
            node2.login(admin.name, cluster.summary["admin_password"])
            assert node2.call("session.info")["username"] == admin.name
            token = token_file(node2.quorum_generate("cluster", "hsm.zeroize", {"node_id": "node2"}))
            admin.approve(node2, token)
            error = refused(node2.zeroize, "node2")
            assert error.code == CKR.FUNCTION_REJECTED and "quorum not met" in error.message
            admin2.approve(admin.client, token)
            assert token.approval_data is not None
            done = node2.approved(token.approval_data, AsyncClient.zeroize, "node2")
            assert done["zeroized"] is True
        finally:
            node2.close()
        assert "node2" not in {n["id"] for n in admin.client.cluster_status()["nodes"]}
        assert admin.client.user_create("z_after", "crypto-user", PASSWORD)["username"] == "z_after"
    finally:
        cluster.down()
