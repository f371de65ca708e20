"""Roles, lockout, sessions and tampered records, against real node processes."""

from __future__ import annotations

import sqlite3
import time

import pytest

from strongroom.client import ClientError
from strongroom.errors import CKR

from .conftest import LocalCluster


def _code(action) -> CKR:  # type: ignore[no-untyped-def]
    with pytest.raises(ClientError) as failure:
        action()
    return failure.value.code


def test_role_matrix(shared_cluster: LocalCluster) -> None:
    admin = shared_cluster.admin()
    user = shared_cluster.crypto_user("matrix_cu")
    # Admins manage users but never use cryptography.
    admin.user_create("matrix_victim", "crypto-user", "password1")
    admin.user_change_password("matrix_victim", "password2")
    assert _code(lambda: admin.generate_random(8)) == CKR.ACTION_PROHIBITED
    # Crypto users use cryptography but never manage users.
    assert len(user.generate_random(32)) == 32
    assert _code(lambda: user.user_create("matrix_x", "crypto-user", "password1")) == CKR.ACTION_PROHIBITED
    assert _code(lambda: user.user_create("matrix_y", "admin", "password1")) == CKR.ACTION_PROHIBITED
    assert _code(lambda: user.user_delete("matrix_victim")) == CKR.ACTION_PROHIBITED
    assert _code(lambda: user.user_change_password("matrix_victim", "password3")) == CKR.ACTION_PROHIBITED
    # Both may list users and change their own password.
    assert {"matrix_cu", "matrix_victim"} <= {u["username"] for u in user.user_list()}
    user.user_change_password("matrix_cu", "password9")
    # Nobody logged in: nothing but status.
    anonymous = shared_cluster.client()
    assert _code(lambda: anonymous.user_list()) == CKR.USER_NOT_LOGGED_IN
    assert _code(lambda: anonymous.generate_random(8)) == CKR.USER_NOT_LOGGED_IN
    # A forged session token is refused.
    anonymous.session = b"\0" * 32
    assert _code(lambda: anonymous.user_list()) == CKR.SESSION_HANDLE_INVALID


def test_user_rules(shared_cluster: LocalCluster) -> None:
    admin = shared_cluster.admin()
    assert _code(lambda: admin.user_create("bad-name", "crypto-user", "password1")) == CKR.ARGUMENTS_BAD
    assert _code(lambda: admin.user_create("x" * 32, "crypto-user", "password1")) == CKR.ARGUMENTS_BAD
    assert _code(lambda: admin.user_create("rules_short", "crypto-user", "123456")) == CKR.PIN_LEN_RANGE
    assert _code(lambda: admin.user_create("rules_long", "crypto-user", "x" * 33)) == CKR.PIN_LEN_RANGE
    assert _code(lambda: admin.user_create("rules_role", "superuser", "password1")) == CKR.USER_TYPE_INVALID
    admin.user_create("Rules_Case", "crypto-user", "x" * 32)
    assert _code(lambda: admin.user_create("rules_case", "crypto-user", "password1")) == CKR.ACTION_PROHIBITED
    names = [u["username"] for u in admin.user_list()]
    assert "rules_case" in names
    for refused in ("bad-name", "rules_short", "rules_long", "rules_role"):
        assert refused not in names
    # The last admin cannot be deleted, nor can you delete yourself.
    assert _code(lambda: admin.user_delete("admin")) == CKR.ACTION_PROHIBITED
    admin.user_create("rules_admin2", "admin", "password1")
    second = shared_cluster.client()
    second.login("rules_admin2", "password1", role="admin")
    assert _code(lambda: second.user_delete("rules_admin2")) == CKR.ACTION_PROHIBITED
    admin.user_delete("rules_admin2")
    # The deleted user's session dies on every worker (each watches the user records).
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            second.user_list()
        except ClientError as exc:
            assert exc.code == CKR.SESSION_HANDLE_INVALID
            break
        time.sleep(0.05)
    else:
        pytest.fail("the session of a deleted user stayed usable")
    assert "rules_admin2" not in [u["username"] for u in admin.user_list()]
    assert _code(lambda: admin.user_delete("admin")) == CKR.ACTION_PROHIBITED


def test_wrong_role_at_login_is_refused_like_a_wrong_password(shared_cluster: LocalCluster) -> None:
    shared_cluster.crypto_user("role_probe")
    client = shared_cluster.client()
    assert _code(lambda: client.login("role_probe", "password1", role="admin")) == CKR.PIN_INCORRECT
    assert _code(lambda: client.login("nobody_here", "password1")) == CKR.PIN_INCORRECT
    client.login("role_probe", "password1", role="crypto-user")


def test_lockout_after_five_failures_survives_restart_until_admin_reset(cluster: LocalCluster) -> None:
    admin = cluster.admin()
    admin.user_create("locky", "crypto-user", "password1")
    victim = cluster.client()
    for _ in range(5):
        assert _code(lambda: victim.login("locky", "wrong-password")) == CKR.PIN_INCORRECT
    # Locked: even the right password is refused.
    assert _code(lambda: victim.login("locky", "password1")) == CKR.PIN_LOCKED
    listed = {u["username"]: u for u in admin.user_list()}
    assert listed["locky"]["locked"] is True
    cluster.down()
    cluster.up()
    victim = cluster.client()
    assert _code(lambda: victim.login("locky", "password1")) == CKR.PIN_LOCKED
    admin = cluster.admin()
    admin.user_change_password("locky", "password2")
    victim.login("locky", "password2")
    assert {u["username"]: u for u in admin.user_list()}["locky"]["failed_logins"] == 0
    audit = (cluster.node_dir / "audit.log").read_text()
    assert audit.count('"event":"auth.login"') >= 8
    assert '"outcome":"CKR_PIN_LOCKED"' in audit and '"outcome":"CKR_PIN_INCORRECT"' in audit


def test_a_success_resets_the_failure_counter(shared_cluster: LocalCluster) -> None:
    shared_cluster.crypto_user("resetty")
    client = shared_cluster.client()
    for _ in range(4):
        assert _code(lambda: client.login("resetty", "wrong-password")) == CKR.PIN_INCORRECT
    client.login("resetty", "password1")
    client.logout()
    for _ in range(4):
        assert _code(lambda: client.login("resetty", "wrong-password")) == CKR.PIN_INCORRECT
    client.login("resetty", "password1")


def test_idle_sessions_expire(cluster: LocalCluster) -> None:
    cluster.down()
    config = cluster.config_path.read_text()
    cluster.config_path.write_text(config.replace("session_idle_seconds = 900.0", "session_idle_seconds = 1.0"))
    cluster.up()
    user = cluster.crypto_user("sleepy")
    user.generate_random(4)
    time.sleep(0.6)
    user.generate_random(4)  # activity keeps it alive
    time.sleep(1.5)
    assert _code(lambda: user.generate_random(4)) == CKR.SESSION_HANDLE_INVALID


def test_a_tampered_record_is_refused_and_named(cluster: LocalCluster) -> None:
    admin = cluster.admin()
    admin.user_create("tampered", "crypto-user", "password1")
    admin.user_create("innocent", "crypto-user", "password1")
    db = sqlite3.connect(cluster.dir / "store" / "strongroom.db")
    (value,) = db.execute("SELECT value FROM kv WHERE key = 'users/tampered'").fetchone()
    flipped = bytearray(value)
    flipped[-1] ^= 1
    db.execute("UPDATE kv SET value = ? WHERE key = 'users/tampered'", (bytes(flipped),))
    db.commit()
    client = cluster.client()
    with pytest.raises(ClientError) as failure:
        client.login("tampered", "password1")
    assert failure.value.code == CKR.DEVICE_ERROR and "users/tampered" in failure.value.message
    with pytest.raises(ClientError) as failure:
        admin.user_list()
    assert "users/tampered" in failure.value.message
    # A record swapped under another key is refused too.
    (innocent,) = db.execute("SELECT value FROM kv WHERE key = 'users/innocent'").fetchone()
    db.execute("UPDATE kv SET value = ? WHERE key = 'users/tampered'", (innocent,))
    db.commit()
    db.close()
    with pytest.raises(ClientError) as failure:
        client.login("tampered", "password1")
    assert "users/tampered" in failure.value.message
    client.login("innocent", "password1")
