"""Issue 11, as an attacker with an ordinary account would try it: a shared user exporting the owner's
key, C_CopyObject loosening a key, CKA_ALWAYS_AUTHENTICATE ignored, context-specific logins guessed
without limit, logins telling unknown users from known ones, and a new user inheriting the shares of a
deleted one of the same name. Real node processes (`strongroom up`), the SDK straight to a node, and
the PKCS#11 module through the agent (PyKCS11, pkcs11-tool)."""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from strongroom.client import Client, ClientError
from strongroom.constants import CKA, CKG, CKK, CKM, CKO
from strongroom.errors import CKR
from strongroom.mechanisms import ec as ec_mech
from strongroom.mechanisms import rsa as rsa_mech

from .conftest import LocalCluster

ROOT = Path(__file__).resolve().parents[2]
GCM = {"iv": None, "aad": b"", "tag_bits": 128}
OAEP = {"hash": CKM.SHA256, "mgf": CKG.MGF1_SHA256, "source": 0, "source_data": b""}


def _code(action) -> CKR:  # type: ignore[no-untyped-def]
    with pytest.raises(ClientError) as failure:
        action()
    return failure.value.code


def _answer(action) -> tuple[int, str]:  # type: ignore[no-untyped-def]
    with pytest.raises(ClientError) as failure:
        action()
    return int(failure.value.code), failure.value.message


def aes_key(client: Client, label: str, extra: dict[int, Any] | None = None) -> int:
    return client.generate_key(CKM.AES_KEY_GEN, {CKA.TOKEN: True, CKA.LABEL: label.encode(), CKA.VALUE_LEN: 32,
                                                 **(extra or {})})


def rsa_pair(client: Client, label: str, private: dict[int, Any] | None = None) -> tuple[int, int]:
    return client.generate_key_pair(
        CKM.RSA_PKCS_KEY_PAIR_GEN,
        {CKA.TOKEN: True, CKA.LABEL: label.encode(), CKA.MODULUS_BITS: 2048},
        {CKA.TOKEN: True, CKA.LABEL: label.encode(), **(private or {})},
    )


def failed_logins(cluster: LocalCluster, username: str) -> int:
    admin = cluster.admin()
    try:
        return {u["username"]: u for u in admin.user_list()}[username]["failed_logins"]
    finally:
        admin.logout()


def audit_records(cluster: LocalCluster) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (cluster.node_dir / "audit.log").read_text().splitlines() if line]


@pytest.fixture(scope="module")
def alice(shared_cluster: LocalCluster) -> Client:
    return shared_cluster.crypto_user("own_alice")


@pytest.fixture(scope="module")
def bob(shared_cluster: LocalCluster) -> Client:
    return shared_cluster.crypto_user("own_bob")


# --- 1. a shared user uses a key, only the owner manages or exports it ------------------------------------


def test_a_shared_user_cannot_export_the_owners_key(alice: Client, bob: Client) -> None:
    secret = aes_key(alice, "exportable-by-owner-only", {CKA.EXTRACTABLE: True})
    assert alice.share(secret, "own_bob") == ["own_bob"]
    bob_public, _bob_private = rsa_pair(bob, "bob-rsa")
    # The attack of issue 11: the shared user wraps the owner's extractable key under its own RSA key,
    # then unwraps the blob as a key it owns.
    assert _code(lambda: bob.wrap_key(CKM.RSA_PKCS_OAEP, bob_public, secret, OAEP)) == CKR.KEY_NOT_WRAPPABLE
    kek = aes_key(bob, "bob-kek")
    assert _code(lambda: bob.wrap_key(CKM.AES_KEY_WRAP_PAD, kek, secret)) == CKR.KEY_NOT_WRAPPABLE
    # Using it stays allowed; the owner still exports it.
    sealed = bob.encrypt(secret, CKM.AES_GCM, b"shared use", GCM)
    assert alice.decrypt(secret, CKM.AES_GCM, sealed["data"], dict(GCM, iv=sealed["iv"])) == b"shared use"
    owner_kek = aes_key(alice, "alice-kek")
    assert alice.wrap_key(CKM.AES_KEY_WRAP_PAD, owner_kek, secret)


def test_a_shared_wrapping_key_wraps_and_unwraps_the_shared_users_own_keys(alice: Client, bob: Client) -> None:
    """CloudHSM's trusted-key flow: the owner shares a wrapping key, application users wrap and unwrap
    their own data keys with it. The key being exported must be the caller's."""
    kek = aes_key(alice, "shared-kek")
    alice.share(kek, "own_bob")
    mine = aes_key(bob, "bob-data-key", {CKA.EXTRACTABLE: True})
    wrapped = bob.wrap_key(CKM.AES_KEY_WRAP_PAD, kek, mine)
    back = bob.unwrap_key(CKM.AES_KEY_WRAP_PAD, kek, wrapped,
                          {CKA.CLASS: CKO.SECRET_KEY, CKA.KEY_TYPE: CKK.AES, CKA.TOKEN: True})
    assert {o["handle"]: o["owner"] for o in bob.list_objects({CKA.LABEL: b""})}.get(back, "own_bob") == "own_bob"
    block = os.urandom(16)
    assert bob.encrypt(back, CKM.AES_ECB, block)["data"] == bob.encrypt(mine, CKM.AES_ECB, block)["data"]
    # The unwrapped key is the shared user's own: it manages it.
    bob.set_attributes(back, {CKA.LABEL: b"bob-owns-this"})
    bob.destroy_object(back)


def test_a_shared_user_cannot_derive_copy_change_share_or_destroy(shared_cluster: LocalCluster, alice: Client,
                                                                   bob: Client) -> None:
    public, private = alice.generate_key_pair(
        CKM.EC_KEY_PAIR_GEN,
        {CKA.TOKEN: True, CKA.LABEL: b"shared-ecdh", CKA.EC_PARAMS: ec_mech.params_for_curve(ec.SECP256R1())},
        {CKA.TOKEN: True, CKA.LABEL: b"shared-ecdh", CKA.DERIVE: True},
    )
    alice.share(private, "own_bob")
    peer = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(Encoding.X962,
                                                                             PublicFormat.UncompressedPoint)
    derive_template = {CKA.CLASS: CKO.SECRET_KEY, CKA.KEY_TYPE: CKK.AES, CKA.VALUE_LEN: 32, CKA.TOKEN: True,
                       CKA.EXTRACTABLE: True}
    ecdh = {"kdf": 1, "shared_data": b"", "public_data": peer}
    # Deriving makes a new key out of the shared one's secret, owned by the caller: owner only.
    assert _code(lambda: bob.derive_key(CKM.ECDH1_DERIVE, private, derive_template, ecdh)) \
        == CKR.KEY_FUNCTION_NOT_PERMITTED
    assert alice.derive_key(CKM.ECDH1_DERIVE, private, derive_template, ecdh)
    # A copy would be the shared user's own key.
    assert _code(lambda: bob.copy_object(private, {})) == CKR.ACTION_PROHIBITED
    assert _code(lambda: bob.copy_object(private, {CKA.TOKEN: False}, session=bob.open_session())) \
        == CKR.ACTION_PROHIBITED
    assert _code(lambda: bob.set_attributes(private, {CKA.SIGN: False})) == CKR.ACTION_PROHIBITED
    assert _code(lambda: bob.destroy_object(private)) == CKR.ACTION_PROHIBITED
    assert _code(lambda: bob.share(private, "own_alice")) == CKR.ACTION_PROHIBITED
    assert _code(lambda: bob.unshare(private, "own_bob")) == CKR.ACTION_PROHIBITED
    # Use stays allowed.
    signature = bob.sign(private, CKM.ECDSA_SHA256, b"used, not owned")
    alice.verify(public, CKM.ECDSA_SHA256, b"used, not owned", signature)
    # A user it is not shared with does not even see it.
    carol = shared_cluster.crypto_user("own_carol")
    assert _code(lambda: carol.sign(private, CKM.ECDSA_SHA256, b"x")) == CKR.KEY_HANDLE_INVALID
    assert _code(lambda: carol.copy_object(private, {})) == CKR.OBJECT_HANDLE_INVALID
    assert _code(lambda: carol.get_attribute(private, CKA.LABEL)) == CKR.OBJECT_HANDLE_INVALID
    assert _code(lambda: carol.derive_key(CKM.ECDH1_DERIVE, private, derive_template, ecdh)) \
        == CKR.KEY_HANDLE_INVALID


# --- 3. C_CopyObject never loosens a key ------------------------------------------------------------------


def test_copy_cannot_widen_allowed_mechanisms(alice: Client) -> None:
    narrow = aes_key(alice, "narrow", {CKA.ALLOWED_MECHANISMS: [CKM.AES_GCM]})
    for wider in ([CKM.AES_GCM, CKM.AES_ECB], [CKM.AES_ECB], []):
        assert _code(lambda w=wider: alice.copy_object(narrow, {CKA.ALLOWED_MECHANISMS: w})) \
            == CKR.ATTRIBUTE_READ_ONLY
    same = alice.copy_object(narrow, {CKA.ALLOWED_MECHANISMS: [CKM.AES_GCM]})
    plain = alice.copy_object(narrow, {CKA.LABEL: b"narrow-copy"})
    for copy in (same, plain):
        assert alice.get_attribute(copy, CKA.ALLOWED_MECHANISMS) == [CKM.AES_GCM]
        assert _code(lambda c=copy: alice.encrypt(c, CKM.AES_ECB, bytes(16))) == CKR.MECHANISM_INVALID
    # Shrinking is a restriction, so it is allowed (an empty list on the source means "any").
    two = aes_key(alice, "two-mechanisms", {CKA.ALLOWED_MECHANISMS: [CKM.AES_GCM, CKM.AES_ECB]})
    assert alice.get_attribute(alice.copy_object(two, {CKA.ALLOWED_MECHANISMS: [CKM.AES_ECB]}),
                               CKA.ALLOWED_MECHANISMS) == [CKM.AES_ECB]
    anything = aes_key(alice, "any-mechanism")
    assert alice.get_attribute(alice.copy_object(anything, {CKA.ALLOWED_MECHANISMS: [CKM.AES_GCM]}),
                               CKA.ALLOWED_MECHANISMS) == [CKM.AES_GCM]


def test_copy_keeps_wrap_and_unwrap_templates(alice: Client) -> None:
    kek = aes_key(alice, "templated-kek", {CKA.WRAP_TEMPLATE: {CKA.KEY_TYPE: CKK.AES},
                                           CKA.UNWRAP_TEMPLATE: {CKA.EXTRACTABLE: False}})
    for cka in (CKA.WRAP_TEMPLATE, CKA.UNWRAP_TEMPLATE):
        assert _code(lambda c=cka: alice.copy_object(kek, {c: {}})) == CKR.ATTRIBUTE_READ_ONLY
    assert _code(lambda: alice.copy_object(kek, {CKA.UNWRAP_TEMPLATE: {CKA.EXTRACTABLE: True}})) \
        == CKR.ATTRIBUTE_READ_ONLY
    copy = alice.copy_object(kek, {CKA.UNWRAP_TEMPLATE: {CKA.EXTRACTABLE: False}})
    attributes = alice.get_attributes(copy, [CKA.WRAP_TEMPLATE, CKA.UNWRAP_TEMPLATE])
    assert attributes[CKA.UNWRAP_TEMPLATE] == [[CKA.EXTRACTABLE, False]]
    assert attributes[CKA.WRAP_TEMPLATE] == [[CKA.KEY_TYPE, CKK.AES]]


def test_copy_does_not_carry_trust(shared_cluster: LocalCluster, alice: Client) -> None:
    kek = aes_key(alice, "trusted-kek")
    admin = shared_cluster.admin()
    admin.set_attributes(kek, {CKA.TRUSTED: True})
    admin.logout()
    assert alice.get_attribute(kek, CKA.TRUSTED) is True
    copy = alice.copy_object(kek, {CKA.LABEL: b"untrusted-copy"})
    assert alice.get_attribute(copy, CKA.TRUSTED) is False
    assert _code(lambda: alice.copy_object(kek, {CKA.TRUSTED: True})) == CKR.ATTRIBUTE_READ_ONLY
    # The copy cannot wrap what needs a trusted wrapping key.
    guarded = aes_key(alice, "needs-trusted", {CKA.EXTRACTABLE: True, CKA.WRAP_WITH_TRUSTED: True})
    alice.wrap_key(CKM.AES_KEY_WRAP_PAD, kek, guarded)
    assert _code(lambda: alice.wrap_key(CKM.AES_KEY_WRAP_PAD, copy, guarded)) == CKR.KEY_NOT_WRAPPABLE


def test_copy_one_way_attributes_only_tighten(alice: Client) -> None:
    loose = aes_key(alice, "loose", {CKA.SENSITIVE: False, CKA.EXTRACTABLE: True})
    tight = alice.copy_object(loose, {CKA.SENSITIVE: True, CKA.EXTRACTABLE: False})
    assert alice.get_attributes(tight, [CKA.SENSITIVE, CKA.EXTRACTABLE, CKA.ALWAYS_SENSITIVE,
                                        CKA.NEVER_EXTRACTABLE]) == {
        CKA.SENSITIVE: True, CKA.EXTRACTABLE: False, CKA.ALWAYS_SENSITIVE: False, CKA.NEVER_EXTRACTABLE: False}
    assert _code(lambda: alice.copy_object(tight, {CKA.SENSITIVE: False})) == CKR.ATTRIBUTE_READ_ONLY
    assert _code(lambda: alice.copy_object(tight, {CKA.EXTRACTABLE: True})) == CKR.ATTRIBUTE_READ_ONLY
    guarded = aes_key(alice, "guarded", {CKA.EXTRACTABLE: True, CKA.WRAP_WITH_TRUSTED: True})
    assert _code(lambda: alice.copy_object(guarded, {CKA.WRAP_WITH_TRUSTED: False})) == CKR.ATTRIBUTE_READ_ONLY
    _public, private = rsa_pair(alice, "always-auth-copy", {CKA.ALWAYS_AUTHENTICATE: True})
    assert _code(lambda: alice.copy_object(private, {CKA.ALWAYS_AUTHENTICATE: False})) \
        == CKR.ATTRIBUTE_READ_ONLY
    assert alice.get_attribute(alice.copy_object(private, {}), CKA.ALWAYS_AUTHENTICATE) is True
    frozen = aes_key(alice, "frozen-copy", {CKA.MODIFIABLE: False, CKA.COPYABLE: True})
    assert _code(lambda: alice.copy_object(frozen, {CKA.MODIFIABLE: True})) == CKR.ATTRIBUTE_READ_ONLY
    uncopyable = alice.copy_object(loose, {CKA.COPYABLE: False})
    assert _code(lambda: alice.copy_object(uncopyable, {})) == CKR.ACTION_PROHIBITED


def test_copy_of_an_unmodifiable_key_cannot_enable_a_usage(alice: Client) -> None:
    fixed = aes_key(alice, "fixed-usage", {CKA.ENCRYPT: False, CKA.MODIFIABLE: False})
    assert _code(lambda: alice.copy_object(fixed, {CKA.ENCRYPT: True})) == CKR.ATTRIBUTE_READ_ONLY
    # Turning a usage off, or renaming, restricts nothing the source allowed: fine.
    narrowed = alice.copy_object(fixed, {CKA.DECRYPT: False})
    assert alice.get_attribute(narrowed, CKA.DECRYPT) is False
    # A modifiable key: its owner could enable the usage on the key itself, so the copy may too.
    changeable = aes_key(alice, "changeable-usage", {CKA.ENCRYPT: False})
    assert alice.get_attribute(alice.copy_object(changeable, {CKA.ENCRYPT: True}), CKA.ENCRYPT) is True


# --- 5. a deleted user's shares die with it ------------------------------------------------------------------


def _recreate(cluster: LocalCluster, name: str, password: str) -> Client:
    admin = cluster.admin()
    admin.user_delete(name)
    admin.user_create(name, "crypto-user", password)
    admin.logout()
    client = cluster.client()
    client.login(name, password)
    return client


def test_a_new_user_with_a_deleted_users_name_inherits_no_share(shared_cluster: LocalCluster,
                                                                   alice: Client) -> None:
    heir = shared_cluster.crypto_user("own_heir")
    key = aes_key(alice, "for-the-first-heir")
    alice.share(key, "own_heir")
    heir.encrypt(key, CKM.AES_GCM, b"x", GCM)
    heir.close()
    newcomer = _recreate(shared_cluster, "own_heir", "another-password")
    assert key not in newcomer.find_objects()
    assert _code(lambda: newcomer.encrypt(key, CKM.AES_GCM, b"x", GCM)) == CKR.KEY_HANDLE_INVALID
    listed = {o["handle"]: o for o in alice.list_objects({CKA.LABEL: b"for-the-first-heir"})}
    assert listed[key]["shared_with"] == []


def test_share_lists_longer_than_one_store_transaction_are_all_cleaned(shared_cluster: LocalCluster,
                                                                       alice: Client) -> None:
    many = shared_cluster.crypto_user("own_many")
    keys = [aes_key(alice, f"many-{i}") for i in range(70)]  # more than the store's 64 operations per commit
    for key in keys:
        alice.share(key, "own_many")
    assert set(keys) <= set(many.find_objects())
    many.close()
    newcomer = _recreate(shared_cluster, "own_many", "another-password")
    assert not set(keys) & set(newcomer.find_objects())
    for key in keys[::10]:
        assert _code(lambda k=key: newcomer.encrypt(k, CKM.AES_GCM, b"x", GCM)) == CKR.KEY_HANDLE_INVALID
    listed = alice.list_objects({CKA.CLASS: CKO.SECRET_KEY})
    assert not [o for o in listed if "own_many" in o["shared_with"]]


# --- 4. a login answers the same for unknown users, known users and locked users ----------------------------


def test_unknown_and_known_users_get_the_same_answers(cluster: LocalCluster) -> None:
    admin = cluster.admin()
    admin.user_create("known_user", "crypto-user", "password1")
    admin.user_create("second_admin", "admin", "password1")
    probe = cluster.client()
    known = [_answer(lambda: probe.login("known_user", "wrong-password")) for _ in range(8)]
    unknown = [_answer(lambda: probe.login("ghost_user", "wrong-password")) for _ in range(8)]
    assert known == unknown
    assert set(known) == {(int(CKR.PIN_INCORRECT), "wrong username or password")}
    # An admin's name is not told apart either, before or after a source pause (no role claimed).
    admins = [_answer(lambda: probe.login("second_admin", "wrong-password")) for _ in range(8)]
    ghosts = [_answer(lambda: probe.login("ghost_admin", "wrong-password")) for _ in range(8)]
    assert admins == ghosts
    # Only whoever knows the password learns that the account is locked.
    assert _code(lambda: probe.login("known_user", "password1")) == CKR.PIN_LOCKED
    assert {u["username"]: u for u in admin.user_list()}["known_user"]["locked"] is True
    records = [r for r in audit_records(cluster) if r.get("event") == "auth.login"]
    assert any(r["actor"] == "known_user" and r["outcome"] == "CKR_PIN_LOCKED" for r in records)


def test_unknown_users_cost_the_same_time_as_known_ones(cluster: LocalCluster) -> None:
    """Both run Argon2id with the same parameters (and the same store work); measured interleaved."""
    admin = cluster.admin()
    admin.user_create("timed_user", "crypto-user", "password1")
    probe = cluster.client()
    timings: dict[str, list[float]] = {"known": [], "unknown": [], "locked": []}
    for _round in range(4):
        for _ in range(4):  # stays below the lockout
            for kind, name in (("known", "timed_user"), ("unknown", "timed_ghost")):
                started = time.perf_counter()
                with pytest.raises(ClientError):
                    probe.login(name, "wrong-password")
                timings[kind].append(time.perf_counter() - started)
        admin.user_change_password("timed_user", "password1")  # an admin reset clears the counter
    for _ in range(6):
        with pytest.raises(ClientError):
            probe.login("timed_user", "wrong-password")
    for _ in range(10):
        started = time.perf_counter()
        with pytest.raises(ClientError):
            probe.login("timed_user", "wrong-password")
        timings["locked"].append(time.perf_counter() - started)
    medians = {kind: statistics.median(values) for kind, values in timings.items()}
    print("login failure medians (ms):", {k: round(v * 1000, 1) for k, v in medians.items()})
    # Generous bounds (a loaded 2-core machine): an account answered without the Argon2id work (as a
    # locked one was) takes a tenth of the time, far outside them.
    assert 0.5 < medians["unknown"] / medians["known"] < 2
    assert 0.5 < medians["unknown"] / medians["locked"] < 2


# --- 2. CKA_ALWAYS_AUTHENTICATE through the SDK ----------------------------------------------------------------


def test_always_authenticate_needs_a_context_login_per_operation(shared_cluster: LocalCluster) -> None:
    user = shared_cluster.crypto_user("own_signer", "signer-password")
    public, private = rsa_pair(user, "always-auth", {CKA.ALWAYS_AUTHENTICATE: True})
    message = b"every signature needs the password"
    # No context login: refused, single-part or multi-part.
    assert _code(lambda: user.sign(private, CKM.SHA256_RSA_PKCS, message)) == CKR.USER_NOT_LOGGED_IN
    session = user.open_session()
    user.call("crypto.sign_init", session=session, mechanism=int(CKM.SHA256_RSA_PKCS), key=private)
    assert _code(lambda: user.call("crypto.sign_single", session=session, data=message)) \
        == CKR.USER_NOT_LOGGED_IN
    # With it: one operation, then the next needs a new one.
    user.call("crypto.sign_init", session=session, mechanism=int(CKM.SHA256_RSA_PKCS), key=private)
    user.context_login(session, "signer-password")
    signature = user.call("crypto.sign_single", session=session, data=message)["signature"]
    user.verify(public, CKM.SHA256_RSA_PKCS, message, signature)
    user.call("crypto.sign_init", session=session, mechanism=int(CKM.SHA256_RSA_PKCS), key=private)
    assert _code(lambda: user.call("crypto.sign_update", session=session, data=message)) \
        == CKR.USER_NOT_LOGGED_IN
    # Multi-part after a context login.
    user.call("crypto.sign_init", session=session, mechanism=int(CKM.SHA256_RSA_PKCS), key=private)
    user.context_login(session, "signer-password")
    user.call("crypto.sign_update", session=session, data=message[:10])
    user.call("crypto.sign_update", session=session, data=message[10:])
    signature = user.call("crypto.sign_final", session=session)["signature"]
    user.verify(public, CKM.SHA256_RSA_PKCS, message, signature)
    # Decryption too; an operation that does not need it refuses a context login.
    ciphertext = rsa_mech.public_key_from_attributes(
        user.get_attributes(public, [CKA.MODULUS, CKA.PUBLIC_EXPONENT])
    ).encrypt(b"secret", padding.OAEP(padding.MGF1(hashes.SHA256()), hashes.SHA256(), None))
    assert _code(lambda: user.decrypt(private, CKM.RSA_PKCS_OAEP, ciphertext, OAEP)) == CKR.USER_NOT_LOGGED_IN
    user.call("crypto.decrypt_init", session=session, mechanism=int(CKM.RSA_PKCS_OAEP), key=private, params=OAEP)
    user.context_login(session, "signer-password")
    assert user.call("crypto.decrypt_single", session=session, data=ciphertext)["data"] == b"secret"
    assert _code(lambda: user.context_login(session, "signer-password")) == CKR.OPERATION_NOT_INITIALIZED
    # Without any way to log in per use, unwrapping with it is refused too (it is a decryption).
    assert _code(lambda: user.unwrap_key(CKM.RSA_PKCS_OAEP, private, ciphertext,
                                         {CKA.CLASS: CKO.SECRET_KEY, CKA.KEY_TYPE: CKK.GENERIC_SECRET,
                                          CKA.TOKEN: True}, OAEP)) == CKR.USER_NOT_LOGGED_IN


def test_wrong_context_logins_count_towards_lockout_and_are_audited(cluster: LocalCluster) -> None:
    user = cluster.crypto_user("guessed", "right-password")
    _public, private = rsa_pair(user, "guessed-key", {CKA.ALWAYS_AUTHENTICATE: True})
    session = user.open_session()
    user.call("crypto.sign_init", session=session, mechanism=int(CKM.SHA256_RSA_PKCS), key=private)
    for attempt in range(1, 5):
        assert _code(lambda: user.context_login(session, "wrong-password")) == CKR.PIN_INCORRECT
        assert failed_logins(cluster, "guessed") == attempt
    user.context_login(session, "right-password")  # a success clears the counter, as a login does
    assert failed_logins(cluster, "guessed") == 0
    user.call("crypto.sign_single", session=session, data=b"m")
    user.call("crypto.sign_init", session=session, mechanism=int(CKM.SHA256_RSA_PKCS), key=private)
    for _ in range(5):
        assert _code(lambda: user.context_login(session, "wrong-password")) == CKR.PIN_INCORRECT
    # Locked now, as after five failed logins: the right password no longer helps, a new login neither.
    assert _code(lambda: user.context_login(session, "right-password")) == CKR.PIN_LOCKED
    assert _code(lambda: cluster.client().login("guessed", "right-password")) == CKR.PIN_LOCKED
    records = [r for r in audit_records(cluster) if r.get("event") == "auth.context_login"]
    assert [r["outcome"] for r in records].count("CKR_PIN_INCORRECT") == 9
    assert [r["outcome"] for r in records].count("ok") == 1
    assert all(r["actor"] == "guessed" for r in records)


# --- through the PKCS#11 module: PyKCS11 and pkcs11-tool ------------------------------------------------------------

PYKCS11_SCRIPT = """
import json, os, sys
import PyKCS11
from PyKCS11 import *

lib = PyKCS11Lib()
lib.load(os.environ["MODULE"])
slot = lib.getSlotList(tokenPresent=True)[0]
OUT = {}

def rv(call):
    try:
        call()
    except PyKCS11Error as exc:
        return CKR[exc.value] if exc.value in CKR else exc.value
    return "CKR_OK"

s = lib.openSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION)
s.login(os.environ["PIN"])
"""


def _pykcs11(cluster: LocalCluster, pin: str, body: str, **inputs: bytes) -> dict[str, Any]:
    module = cluster.summary.get("pkcs11_module") or str(ROOT / "pkcs11" / "build" / "libstrongroom-pkcs11.so")
    env = {k: v for k, v in os.environ.items() if not k.startswith("STRONGROOM_")}
    env.update(STRONGROOM_AGENT_SOCKET=cluster.summary["agent_socket"], MODULE=module, PIN=pin)
    env.update({f"IN_{name}": value.hex() for name, value in inputs.items()})
    script = PYKCS11_SCRIPT + textwrap.dedent(body) + "\nprint(json.dumps(OUT))\n"
    result = subprocess.run([sys.executable, "-c", script], check=False, capture_output=True, text=True, env=env,
                            timeout=110)
    assert result.returncode == 0, f"script failed:\n{result.stdout}\n{result.stderr}"
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_pkcs11_context_login_through_the_agent(shared_cluster: LocalCluster) -> None:
    user = shared_cluster.crypto_user("own_p11", "p11-password")
    public, _private = rsa_pair(user, "p11-always-auth", {CKA.ALWAYS_AUTHENTICATE: True, CKA.ID: b"\xaa\x01"})
    out = _pykcs11(shared_cluster, "own_p11:p11-password", """
        key = s.findObjects([(CKA_CLASS, CKO_PRIVATE_KEY), (CKA_LABEL, "p11-always-auth")])[0]
        OUT["always"] = s.getAttributeValue(key, [CKA_ALWAYS_AUTHENTICATE])[0]
        mech = Mechanism(CKM_SHA256_RSA_PKCS, None).to_native()
        data = ckbytelist(b"signed through the module")

        def check(code):
            if code != CKR_OK:
                raise PyKCS11Error(code)

        def sign_without_login():
            check(s.lib.C_SignInit(s.session, mech, key))
            signature = ckbytelist()
            check(s.lib.C_Sign(s.session, data, signature))  # the size
            check(s.lib.C_Sign(s.session, data, signature))  # the signature
        OUT["no_login"] = rv(sign_without_login)
        # No operation: a context login has no context.
        OUT["no_operation"] = rv(lambda: s.login("p11-password", CKU_CONTEXT_SPECIFIC))
        assert s.lib.C_SignInit(s.session, mech, key) == CKR_OK
        OUT["wrong"] = [rv(lambda: s.login("not-the-password", CKU_CONTEXT_SPECIFIC)) for _ in range(3)]
        OUT["right"] = rv(lambda: s.login("own_p11:p11-password", CKU_CONTEXT_SPECIFIC))
        signature = ckbytelist()
        OUT["size"] = s.lib.C_Sign(s.session, data, signature)
        OUT["sign"] = s.lib.C_Sign(s.session, data, signature)
        OUT["signature"] = bytes(signature).hex()
        OUT["again"] = rv(sign_without_login)
    """)
    assert out["always"] is True
    assert out["no_login"] == "CKR_USER_NOT_LOGGED_IN"
    assert out["no_operation"] == "CKR_OPERATION_NOT_INITIALIZED"
    assert out["wrong"] == ["CKR_PIN_INCORRECT"] * 3
    assert out["right"] == "CKR_OK" and out["size"] == 0 and out["sign"] == 0
    assert out["again"] == "CKR_USER_NOT_LOGGED_IN"
    outside = rsa_mech.public_key_from_attributes(user.get_attributes(public, [CKA.MODULUS, CKA.PUBLIC_EXPONENT]))
    outside.verify(bytes.fromhex(out["signature"]), b"signed through the module", padding.PKCS1v15(),
                   hashes.SHA256())
    # The node counted the three wrong passwords (the right one then cleared them) and audited all four.
    records = [r for r in audit_records(shared_cluster) if r.get("event") == "auth.context_login"
               and r.get("actor") == "own_p11"]
    assert [r["outcome"] for r in records] == ["CKR_PIN_INCORRECT"] * 3 + ["ok"]


def test_pkcs11_wrong_context_logins_lock_the_user(cluster: LocalCluster) -> None:
    user = cluster.crypto_user("p11_guessed", "p11-password")
    rsa_pair(user, "p11-guessed", {CKA.ALWAYS_AUTHENTICATE: True})
    out = _pykcs11(cluster, "p11_guessed:p11-password", """
        key = s.findObjects([(CKA_CLASS, CKO_PRIVATE_KEY), (CKA_LABEL, "p11-guessed")])[0]
        assert s.lib.C_SignInit(s.session, Mechanism(CKM_SHA256_RSA_PKCS, None).to_native(), key) == CKR_OK
        OUT["answers"] = [rv(lambda: s.login("guess-%d" % i, CKU_CONTEXT_SPECIFIC)) for i in range(7)]
        OUT["right"] = rv(lambda: s.login("p11-password", CKU_CONTEXT_SPECIFIC))
    """)
    assert out["answers"] == ["CKR_PIN_INCORRECT"] * 7
    assert out["right"] == "CKR_PIN_LOCKED"
    assert _code(lambda: cluster.client().login("p11_guessed", "p11-password")) == CKR.PIN_LOCKED


def test_pkcs11_tool_signs_with_an_always_authenticate_key(shared_cluster: LocalCluster, tmp_path: Path) -> None:
    """pkcs11-tool notices CKA_ALWAYS_AUTHENTICATE after C_SignInit and logs in for the context itself."""
    tool = shutil.which("pkcs11-tool")
    if tool is None:
        pytest.fail("OpenSC pkcs11-tool is not installed (apt-get install opensc)")
    user = shared_cluster.crypto_user("own_tool", "tool-password")
    public, _private = rsa_pair(user, "tool-always-auth", {CKA.ALWAYS_AUTHENTICATE: True, CKA.ID: b"\xaa\x02"})
    module = shared_cluster.summary.get("pkcs11_module") or str(ROOT / "pkcs11" / "build" /
                                                                  "libstrongroom-pkcs11.so")
    env = {k: v for k, v in os.environ.items() if not k.startswith("STRONGROOM_")}
    env["STRONGROOM_AGENT_SOCKET"] = shared_cluster.summary["agent_socket"]
    (tmp_path / "in").write_bytes(b"pkcs11-tool data")
    result = subprocess.run([tool, "--module", module, "--token-label", shared_cluster.summary["token_label"],
                             "--login", "--pin", "own_tool:tool-password", "--sign", "-m", "SHA256-RSA-PKCS",
                             "--id", "aa02", "-i", str(tmp_path / "in"), "-o", str(tmp_path / "sig")],
                            check=False, capture_output=True, text=True, env=env, timeout=90)
    assert result.returncode == 0, result.stdout + result.stderr
    outside = rsa_mech.public_key_from_attributes(user.get_attributes(public, [CKA.MODULUS, CKA.PUBLIC_EXPONENT]))
    outside.verify((tmp_path / "sig").read_bytes(), b"pkcs11-tool data", padding.PKCS1v15(), hashes.SHA256())
    records = [r for r in audit_records(shared_cluster) if r.get("event") == "auth.context_login"
               and r.get("actor") == "own_tool"]
    assert [r["outcome"] for r in records] == ["ok"]


def test_pkcs11_shared_user_cannot_wrap_or_copy_the_owners_key(shared_cluster: LocalCluster) -> None:
    owner = shared_cluster.crypto_user("own_p11_owner", "owner-password")
    shared_cluster.crypto_user("own_p11_user", "user-password").close()
    secret = aes_key(owner, "p11-owners-key", {CKA.EXTRACTABLE: True})
    owner.share(secret, "own_p11_user")
    module = shared_cluster.summary.get("pkcs11_module") or str(ROOT / "pkcs11" / "build" /
                                                                  "libstrongroom-pkcs11.so")
    script = textwrap.dedent("""
        import json, os
        import pkcs11
        from pkcs11 import KeyType, MGF, Mechanism, exceptions

        def outcome(call):
            try:
                call()
            except exceptions.PKCS11Error as exc:
                # python-pkcs11 has no class of its own for CKR_ACTION_PROHIBITED: name the code then.
                return type(exc).__name__ if type(exc) is not exceptions.PKCS11Error else str(exc)
            return "ok"

        token = pkcs11.lib(os.environ["MODULE"]).get_token(token_label=os.environ["TOKEN_LABEL"])
        out = {}
        with token.open(user_pin=os.environ["PIN"], rw=True) as s:
            target = s.get_key(label="p11-owners-key")
            public, _private = s.generate_keypair(KeyType.RSA, 2048, store=False)
            out["wrap"] = outcome(lambda: public.wrap_key(target, mechanism=Mechanism.RSA_PKCS_OAEP,
                                                          mechanism_param=(Mechanism.SHA256, MGF.SHA256, None)))
            out["copy"] = outcome(lambda: target.copy({}))
            out["destroy"] = outcome(lambda: target.destroy())
            out["encrypt"] = outcome(lambda: target.encrypt(bytes(16), mechanism=Mechanism.AES_ECB))
        print(json.dumps(out))
    """)
    env = {k: v for k, v in os.environ.items() if not k.startswith("STRONGROOM_")}
    env.update(STRONGROOM_AGENT_SOCKET=shared_cluster.summary["agent_socket"], MODULE=module,
               TOKEN_LABEL=shared_cluster.summary["token_label"], PIN="own_p11_user:user-password")
    result = subprocess.run([sys.executable, "-c", script], check=False, capture_output=True, text=True, env=env,
                            timeout=110)
    assert result.returncode == 0, result.stdout + result.stderr
    out = json.loads(result.stdout.strip().splitlines()[-1])
    prohibited = "Unmapped error code 0x1b"  # CKR_ACTION_PROHIBITED, as python-pkcs11 0.10 names it
    assert out == {"wrap": "KeyNotWrappable", "copy": prohibited, "destroy": prohibited, "encrypt": "ok"}
