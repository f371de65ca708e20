"""A single record put back from an earlier copy of the SQLite store, against a real node.

The attack (issue 11, item 4): a crypto user is locked out after five wrong passwords; whoever
can write the store file takes the user's row from a copy made before the failures (its old
ciphertext *and* its old version, so the barrier's AAD still matches) and writes it back. On
etcd the version is kept by etcd; on SQLite it was a plain column, and guessing resumed. Now
the row is refused (CKR_DEVICE_ERROR), whether it is written back while the node runs or while
it is stopped, and the store keeps no old ciphertext to copy back in the first place.
"""

from __future__ import annotations

import contextlib
import functools
import sqlite3
from pathlib import Path

import pytest

from strongroom.client import Client, ClientError
from strongroom.errors import CKR

from .conftest import LocalCluster

pytestmark = pytest.mark.slow

KEY = "users/victim"
RowTuple = tuple[str, bytes, int, int, int]


def store_path(cluster: LocalCluster) -> Path:
    return cluster.dir / "store" / "strongroom.db"


def snapshot(cluster: LocalCluster, to: Path) -> Path:
    """A consistent copy of the live store (SQLite's online backup, as anyone who reads the file can)."""
    with contextlib.closing(sqlite3.connect(store_path(cluster))) as live, contextlib.closing(
            sqlite3.connect(to)) as copy:
        live.backup(copy)
    return to


def row_in(db: Path, key: str) -> RowTuple:
    with contextlib.closing(sqlite3.connect(db)) as conn:
        row = conn.execute("SELECT key, value, version, create_revision, mod_revision FROM kv WHERE key = ?",
                           (key,)).fetchone()
    assert row is not None, f"{key} not in {db}"
    return row


def write_back(cluster: LocalCluster, row: RowTuple) -> None:
    with contextlib.closing(sqlite3.connect(store_path(cluster), timeout=30)) as conn, conn:
        conn.execute("INSERT OR REPLACE INTO kv (key, value, version, create_revision, mod_revision) "
                     "VALUES (?, ?, ?, ?, ?)", row)


def code_of(action) -> ClientError:  # type: ignore[no-untyped-def]
    with pytest.raises(ClientError) as failure:
        action()
    return failure.value


def lock_out(cluster: LocalCluster, name: str) -> None:
    guesser = cluster.client()
    for _ in range(5):
        assert code_of(lambda: guesser.login(name, "wrong-password")).code == CKR.PIN_INCORRECT
    assert code_of(lambda: guesser.login(name, "password1")).code == CKR.PIN_LOCKED


def assert_never_accepted(cluster: LocalCluster) -> None:
    """Right and wrong passwords alike, on fresh connections (so on every worker): refused, never accepted."""
    for password in ("password1", "wrong-password", "password1", "password1"):
        error = code_of(functools.partial(cluster.client().login, "victim", password))
        assert error.code == CKR.DEVICE_ERROR, (error.code, error.message)


def test_a_locked_users_row_copied_back_while_the_node_runs_is_refused(cluster: LocalCluster,
                                                                       tmp_path: Path) -> None:
    admin = cluster.admin()  # logged in before the failures (failed logins slow down later admin logins)
    cluster.crypto_user("victim").logout()
    before = snapshot(cluster, tmp_path / "before.db")
    lock_out(cluster, "victim")
    locked = row_in(store_path(cluster), KEY)
    old = row_in(before, KEY)
    assert old[2] < locked[2]  # an older version: its AAD still opens under the barrier

    write_back(cluster, old)
    assert_never_accepted(cluster)
    error = code_of(lambda: cluster.client().login("victim", "password1"))
    assert KEY in error.message  # the refusal names the record
    error = code_of(admin.user_list)
    assert error.code == CKR.DEVICE_ERROR and KEY in error.message

    # The row as the node wrote it: served again, and still locked (nothing was reset meanwhile).
    write_back(cluster, locked)
    assert code_of(lambda: cluster.client().login("victim", "password1")).code == CKR.PIN_LOCKED
    assert {u["username"]: u for u in admin.user_list()}["victim"]["locked"] is True


def test_a_locked_users_row_copied_back_while_the_node_is_stopped_is_refused(cluster: LocalCluster,
                                                                             tmp_path: Path) -> None:
    cluster.crypto_user("victim").logout()
    before = snapshot(cluster, tmp_path / "before.db")
    lock_out(cluster, "victim")
    cluster.down()
    write_back(cluster, row_in(before, KEY))

    result = cluster.up(check=False)
    assert result.returncode != 0, result.stdout
    assert "does not match" in result.stderr, result.stderr
    client = Client.from_dir(cluster.dir, timeout=30)
    try:
        assert "does not match" in client.node_status()["error"]
    finally:
        client.close()
    assert_never_accepted(cluster)
    audit = (cluster.node_dir / "audit.log").read_text()
    assert '"event":"store.tampered"' in audit


def test_the_store_keeps_no_old_ciphertext(cluster: LocalCluster) -> None:
    admin = cluster.admin()
    admin.user_create("rotating", "crypto-user", "password1")
    values = [row_in(store_path(cluster), "users/rotating")[1]]
    for n in range(2, 6):
        admin.user_change_password("rotating", f"password{n}")
        values.append(row_in(store_path(cluster), "users/rotating")[1])
    assert len(set(values)) == len(values)
    with contextlib.closing(sqlite3.connect(store_path(cluster))) as conn:
        columns = [row[1] for row in conn.execute("PRAGMA table_info(events)")]
        tables = [name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        blobs = [bytes(v) for table in tables for row in conn.execute(f"SELECT * FROM {table}")
                 for v in row if isinstance(v, bytes)]
    assert "value" not in columns
    for old in values[:-1]:
        assert not any(old in blob for blob in blobs), "an old ciphertext of users/rotating is still stored"
    assert sum(values[-1] in blob for blob in blobs) == 1  # the current one, in kv only
