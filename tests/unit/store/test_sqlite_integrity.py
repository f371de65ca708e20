"""Attacks on the SQLite store's bookkeeping, made the way someone who can write the file would.

The barrier binds a record's ciphertext to its key and version, but on SQLite the version,
revisions and history are plain columns: an old row (old value *and* its old version) copied
back authenticates. With the store-integrity key (``enable_integrity``) the store refuses any
row that is not the one it last wrote, while it runs and after a restart.

Every attack goes straight to the file with :mod:`sqlite3`, bypassing the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import sys
import textwrap
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest

import strongroom
from strongroom.store.base import CompactedError, ConflictError, Delete, Put, Record, Store, StoreError
from strongroom.store.sqlite import SqliteStore

KEY = b"\x33" * 32
RowTuple = tuple[str, bytes, int, int, int]


# --- helpers ---------------------------------------------------------------------------------


async def open_store(path: Path, key: bytes | None = KEY, **kw: Any) -> SqliteStore:
    store = await SqliteStore.open(path, watch_poll_interval=0.01, **kw)
    if key is not None:
        store.enable_integrity(key)
    return store


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(coro)


def sql(path: Path, statement: str, *params: Any) -> list[tuple[Any, ...]]:
    """One statement straight into the file, committed (what an attacker with the file does)."""
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        return db.execute(statement, params).fetchall()


def row_of(path: Path, key: str) -> RowTuple | None:
    rows = sql(path, "SELECT key, value, version, create_revision, mod_revision FROM kv WHERE key = ?", key)
    return rows[0] if rows else None


def put_row(path: Path, row: RowTuple) -> None:
    sql(path, "INSERT OR REPLACE INTO kv (key, value, version, create_revision, mod_revision) VALUES (?, ?, ?, ?, ?)",
        *row)


def assert_refused(caught: pytest.ExceptionInfo[StoreError], *words: str) -> None:
    assert type(caught.value).__name__ == "StoreTampered", repr(caught.value)
    for word in words:
        assert word in str(caught.value), str(caught.value)


async def refused_everywhere(store: Store, key: str, prefix: str) -> None:
    """``key`` is refused by get and by every listing that covers it."""
    with pytest.raises(StoreError) as caught:
        await store.get(key)
    assert_refused(caught, repr(key))
    for covering in (prefix, ""):
        with pytest.raises(StoreError) as caught:
            await store.list_prefix(covering)
        assert_refused(caught, repr(key))


async def three_versions(store: Store, path: Path, key: str = "users/alice") -> list[RowTuple]:
    """``key`` written three times; returns each row as it was in the file."""
    rows = []
    for n in range(3):
        record = await store.get(key)
        await store.put(key, b"value %d" % n, expect=record.mod_revision if record else 0)
        saved = row_of(path, key)
        assert saved is not None
        rows.append(saved)
    return rows


# --- one record put back while the store runs -------------------------------------------------


def test_an_old_row_copied_back_is_refused_on_get_and_list(tmp_path: Path) -> None:
    path = tmp_path / "s.db"

    async def main() -> None:
        store = await open_store(path)
        await store.put("users/bob", b"bob")
        old, _, current = await three_versions(store, path)
        put_row(path, old)  # value *and* version 1 back: the barrier's AAD would accept it
        await refused_everywhere(store, "users/alice", "users/")
        bob = await store.get("users/bob")  # the rest of the store keeps working
        assert bob is not None and bob.value == b"bob"
        with pytest.raises(StoreError) as caught:  # and nobody builds on the old row
            await store.put("users/alice", b"x", expect=old[4])
        assert_refused(caught, "'users/alice'")
        put_row(path, current)  # the row as the store wrote it: served again
        record = await store.get("users/alice")
        assert record is not None and record.value == b"value 2" and record.version == 3
        await store.close()

    run(main())


@pytest.mark.parametrize(
    "forge",
    [
        pytest.param(lambda old, cur: (cur[0], old[1], cur[2], cur[3], cur[4]), id="old-value-current-bookkeeping"),
        pytest.param(lambda old, cur: (cur[0], old[1], old[2], cur[3], cur[4]), id="old-value-and-version"),
        pytest.param(lambda old, cur: (cur[0], old[1], old[2], old[3], cur[4]), id="old-row-current-mod-revision"),
        pytest.param(lambda old, cur: (cur[0], cur[1], cur[2] + 1, cur[3], cur[4]), id="version-bumped"),
        pytest.param(lambda old, cur: (cur[0], cur[1], cur[2], cur[3] + 1, cur[4]), id="create-revision-edited"),
        pytest.param(lambda old, cur: (cur[0], cur[1], cur[2], cur[3], cur[4] + 1), id="mod-revision-edited"),
        pytest.param(lambda old, cur: (cur[0], cur[1] + b"\0", cur[2], cur[3], cur[4]), id="value-extended"),
        pytest.param(lambda old, cur: (cur[0], "value 2", cur[2], cur[3], cur[4]), id="value-as-text"),
        pytest.param(lambda old, cur: (cur[0], cur[1], "3x", cur[3], cur[4]), id="version-as-text"),
    ],
)
def test_forged_bookkeeping_is_refused(tmp_path: Path, forge: Callable[[RowTuple, RowTuple], RowTuple]) -> None:
    path = tmp_path / "s.db"

    async def main() -> None:
        store = await open_store(path)
        old, _, current = await three_versions(store, path)
        put_row(path, forge(old, current))
        await refused_everywhere(store, "users/alice", "users/")
        await store.close()

    run(main())


def test_a_deleted_row_is_refused_not_reported_missing(tmp_path: Path) -> None:
    path = tmp_path / "s.db"

    async def main() -> None:
        store = await open_store(path)
        await three_versions(store, path)
        sql(path, "DELETE FROM kv WHERE key = 'users/alice'")
        await refused_everywhere(store, "users/alice", "users/")
        await store.close()

    run(main())


def test_a_deleted_record_brought_back_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "s.db"

    async def main() -> None:
        store = await open_store(path)
        *_, last = await three_versions(store, path)
        await store.delete("users/alice")
        put_row(path, last)
        await refused_everywhere(store, "users/alice", "users/")
        # Recreated at version 1 by the store, the old version-1 row does not pass for it either.
        sql(path, "DELETE FROM kv WHERE key = 'users/alice'")
        await store.put("users/alice", b"new", expect=0)
        first = row_of(path, "users/alice")
        assert first is not None and first[2] == 1
        await store.put("users/alice", b"newer")
        put_row(path, first)
        await refused_everywhere(store, "users/alice", "users/")
        await store.close()

    run(main())


def test_a_whole_older_file_under_a_running_store_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "s.db"

    async def main() -> None:
        store = await open_store(path)
        await store.put("users/alice", b"1")
        with contextlib.closing(sqlite3.connect(path)) as live, contextlib.closing(
                sqlite3.connect(tmp_path / "old.db")) as old:
            live.backup(old)
        await store.put("users/alice", b"2")
        await store.put("users/bob", b"2")
        with contextlib.closing(sqlite3.connect(tmp_path / "old.db")) as old, contextlib.closing(
                sqlite3.connect(path)) as live:
            old.backup(live)  # every table as it was, consistent with itself
        with pytest.raises(StoreError) as caught:
            await store.get("users/bob")
        assert_refused(caught, "went back")
        await store.close()

    run(main())


# --- another instance (another worker process) -------------------------------------------------


def test_another_instance_catches_up_then_refuses_the_old_row(tmp_path: Path) -> None:
    path = tmp_path / "s.db"

    async def main() -> None:
        writer, reader = await open_store(path), await open_store(path)
        await reader.revision()  # the reader knows the store as it was before the writes
        old, *_ = await three_versions(writer, path)
        record = await reader.get("users/alice")  # the reader follows the writer's history
        assert record is not None and record.value == b"value 2"
        put_row(path, old)
        for store in (writer, reader):
            await refused_everywhere(store, "users/alice", "users/")
        await writer.close()
        await reader.close()

    run(main())


def test_two_instances_writing_alternately_stay_consistent(tmp_path: Path) -> None:
    path = tmp_path / "s.db"

    async def main() -> None:
        stores = [await open_store(path), await open_store(path)]
        for i in range(40):
            store = stores[i % 2]
            record = await store.get("counter")
            await store.commit([Put("counter", b"%d" % i, expect=record.mod_revision if record else 0),
                                Put(f"items/{i % 7}", os.urandom(20)),
                                *([Delete(f"items/{(i + 3) % 7}")] if i % 5 == 0 else [])])
        for store in stores:
            record = await store.get("counter")
            assert record is not None and record.value == b"39" and record.version == 40
            assert [r.key for r in (await store.list_prefix("items/")).records] == sorted(
                r.key for r in (await stores[0].list_prefix("items/")).records)
        with pytest.raises(ConflictError):  # conditional writes still conflict across instances
            await stores[0].put("counter", b"stale", expect=1)
        for store in stores:
            await store.close()
        fresh = await open_store(path)  # a restart: the full scan matches the digest
        assert (await fresh.get("counter")).value == b"39"  # type: ignore[union-attr]
        await fresh.close()

    run(main())


INCREMENTER = """
import asyncio, sys
from strongroom.store.base import ConflictError
from strongroom.store.sqlite import SqliteStore

async def main(path, times):
    store = await SqliteStore.open(path)
    store.enable_integrity(bytes.fromhex(sys.argv[3]))
    try:
        for _ in range(times):
            while True:
                record = await store.get("counter")
                count = int(record.value) if record else 0
                try:
                    await store.put("counter", b"%d" % (count + 1), expect=record.mod_revision if record else 0)
                    break
                except ConflictError:
                    pass
    finally:
        await store.close()

asyncio.run(main(sys.argv[1], int(sys.argv[2])))
"""


async def run_child(source: str, *args: str) -> None:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(strongroom.__file__).resolve().parents[1]),
                                                      env.get("PYTHONPATH")]))
    process = await asyncio.create_subprocess_exec(sys.executable, "-c", textwrap.dedent(source), *args, env=env,
                                                   stderr=asyncio.subprocess.PIPE)
    async with asyncio.timeout(60):
        _, stderr = await process.communicate()
    assert process.returncode == 0, stderr.decode(errors="replace")


def test_processes_writing_at_once_keep_the_digest_right(tmp_path: Path) -> None:
    path = tmp_path / "s.db"

    async def main() -> None:
        store = await open_store(path)
        await store.put("other", b"x")
        await asyncio.gather(*(run_child(INCREMENTER, str(path), "15", KEY.hex()) for _ in range(3)))
        record = await store.get("counter")
        assert record is not None and (record.value, record.version) == (b"45", 45)
        await store.close()
        fresh = await open_store(path)
        assert (await fresh.get("counter")).value == b"45"  # type: ignore[union-attr]
        await fresh.close()

    run(main())


# --- the history (events) ------------------------------------------------------------------------


HISTORY_ATTACKS = {
    "event-version-edited":
        "UPDATE events SET version = version + 1 WHERE revision = (SELECT MAX(revision) FROM events)",
    "event-deleted": "DELETE FROM events WHERE id = (SELECT MAX(id) FROM events)",
    "event-inserted": "INSERT INTO events (revision, key, deleted, version, create_revision, value_hash) "
                      "SELECT revision, 'users/mallory', 0, 1, revision, value_hash FROM events "
                      "WHERE id = (SELECT MAX(id) FROM events)",
    "event-key-swapped": "UPDATE events SET key = 'users/mallory' WHERE id = (SELECT MAX(id) FROM events)",
    "delete-turned-into-put": "UPDATE events SET deleted = 0 WHERE deleted = 1",
    "chain-link-deleted": "DELETE FROM chain WHERE revision = (SELECT MAX(revision) FROM chain)",
    "chain-link-edited": "UPDATE chain SET link = zeroblob(32) WHERE revision = (SELECT MAX(revision) FROM chain)",
    "revision-pushed-up": "UPDATE meta SET value = value + 1 WHERE name = 'revision'",
    "revision-as-text": "UPDATE meta SET value = 'many' WHERE name = 'revision'",
    "event-hash-as-text": "UPDATE events SET value_hash = 'x' WHERE id = (SELECT MAX(id) FROM events)",
    "event-hash-too-long": "UPDATE events SET value_hash = zeroblob(300) WHERE id = (SELECT MAX(id) FROM events)",
    "chain-link-as-text": "UPDATE chain SET link = 'x' WHERE revision = (SELECT MAX(revision) FROM chain)",
    "revision-pulled-down": "UPDATE meta SET value = value - 1 WHERE name = 'revision'",
}


@pytest.mark.parametrize("attack", sorted(HISTORY_ATTACKS))
def test_forged_edited_or_deleted_history_is_refused(tmp_path: Path, attack: str) -> None:
    path = tmp_path / "s.db"

    async def main() -> None:
        writer, reader = await open_store(path), await open_store(path)
        await writer.put("users/alice", b"1")
        await writer.put("users/zed", b"z")
        assert (await reader.get("users/alice")).value == b"1"  # type: ignore[union-attr]
        await writer.put("users/alice", b"2")
        await writer.commit([Put("users/bob", b"3"), Delete("users/zed")])
        sql(path, HISTORY_ATTACKS[attack])
        with pytest.raises(StoreError) as caught:  # the reader has to follow that history
            await reader.get("users/alice")
        assert_refused(caught)
        with pytest.raises(StoreError):  # and stays refused: the history cannot be trusted any more
            await reader.list_prefix("")
        await writer.close()
        await reader.close()

    run(main())


def test_the_events_table_keeps_no_values(tmp_path: Path) -> None:
    path = tmp_path / "s.db"

    async def main() -> None:
        store = await open_store(path)
        values = [os.urandom(64) for _ in range(6)]
        for value in values:
            await store.put("users/alice", value)
        await store.close()

    run(main())
    columns = [row[1] for row in sql(path, "PRAGMA table_info(events)")]
    assert "value" not in columns
    blobs = b"".join(bytes(v) for table in ("events", "meta") for row in sql(path, f"SELECT * FROM {table}")
                     for v in row if isinstance(v, bytes))
    current = row_of(path, "users/alice")
    assert current is not None
    everything = b"".join(bytes(v) for (name,) in sql(path, "SELECT name FROM sqlite_master WHERE type = 'table'")
                          for row in sql(path, f"SELECT * FROM {name}") for v in row if isinstance(v, bytes))
    # Only the current value is anywhere in the tables; the five older ones are gone.
    assert everything.count(current[1]) == 1 and current[1] not in blobs


# --- a restart (the file edited while no store had it open) ----------------------------------------


def _copy_back(path: Path, saved: dict[str, RowTuple]) -> None:
    put_row(path, saved["old"])


def _delete_row(path: Path, saved: dict[str, RowTuple]) -> None:
    sql(path, "DELETE FROM kv WHERE key = 'users/alice'")


def _resurrect(path: Path, saved: dict[str, RowTuple]) -> None:
    put_row(path, saved["gone"])


def _edit_version(path: Path, saved: dict[str, RowTuple]) -> None:
    sql(path, "UPDATE kv SET version = 1 WHERE key = 'users/alice'")


def _add_row(path: Path, saved: dict[str, RowTuple]) -> None:
    put_row(path, ("users/mallory",) + saved["old"][1:])  # type: ignore[arg-type]


def _text_value(path: Path, saved: dict[str, RowTuple]) -> None:
    sql(path, "UPDATE kv SET value = 'value 2' WHERE key = 'users/alice'")


def _reshape_digest(path: Path, saved: dict[str, RowTuple]) -> None:
    sql(path, "UPDATE integrity_state SET chain_head = CAST(chain_head || X'00' AS BLOB), "
              "origin = CAST(substr(origin, 2) AS BLOB)")


def _key_not_utf8(path: Path, saved: dict[str, RowTuple]) -> None:
    sql(path, "UPDATE kv SET key = CAST(X'75ff' AS TEXT) WHERE key = 'users/bob'")


def _drop_digest(path: Path, saved: dict[str, RowTuple]) -> None:
    put_row(path, saved["old"])
    sql(path, "DELETE FROM integrity_state")


@pytest.mark.parametrize("tamper", [_copy_back, _delete_row, _resurrect, _edit_version, _add_row, _text_value,
                                    _reshape_digest, _key_not_utf8, _drop_digest],
                         ids=lambda f: f.__name__.strip("_"))
def test_a_file_edited_while_stopped_is_refused_on_open(tmp_path: Path,
                                                         tamper: Callable[[Path, dict[str, RowTuple]], None]) -> None:
    path = tmp_path / "s.db"

    async def write() -> dict[str, RowTuple]:
        store = await open_store(path)
        old, *_ = await three_versions(store, path)
        await store.put("users/gone", b"bye")
        gone = row_of(path, "users/gone")
        assert gone is not None
        await store.delete("users/gone")
        await store.put("users/bob", b"bob")
        await store.close()
        return {"old": old, "gone": gone}

    async def reopen() -> None:
        store = await open_store(path)
        # The scan at first use does not match the digest: the whole store is refused, not one key.
        for attempt in (store.get("users/bob"), store.revision(), store.list_prefix("users/")):
            with pytest.raises(StoreError) as caught:
                await attempt
            assert_refused(caught)
        await store.close()

    saved = run(write())
    tamper(path, saved)
    run(reopen())


def test_an_untouched_store_reopens_and_serves(tmp_path: Path) -> None:
    path = tmp_path / "s.db"

    async def main() -> None:
        store = await open_store(path)
        await three_versions(store, path)
        identity = getattr(store, "integrity_id", None)
        await store.close()
        store = await open_store(path)
        record = await store.get("users/alice")
        assert record is not None and record.version == 3
        assert identity is not None and getattr(store, "integrity_id", None) == identity
        assert getattr(store, "integrity_adopted", None) is False
        await store.close()

    run(main())


# --- writers without the key --------------------------------------------------------------------------


def test_a_writer_without_the_key_is_refused_and_breaks_nothing(tmp_path: Path) -> None:
    path = tmp_path / "s.db"

    async def main() -> None:
        store = await open_store(path)
        await store.put("users/alice", b"1")
        keyless = await open_store(path, key=None)
        record = await keyless.get("users/alice")  # reading needs no key (nothing is verified, though)
        assert record is not None and record.value == b"1"
        for write in (keyless.put("users/alice", b"forged"), keyless.delete("users/alice"),
                      keyless.commit([Put("users/new", b"x")])):
            with pytest.raises(StoreError, match="integrity key"):
                await write
        await keyless.close()
        assert (await store.get("users/alice")).value == b"1"  # type: ignore[union-attr]
        await store.put("users/alice", b"2")
        await store.close()

    run(main())


# --- compaction -----------------------------------------------------------------------------------------


def test_compaction_and_an_instance_left_behind(tmp_path: Path) -> None:
    path = tmp_path / "s.db"

    async def main() -> None:
        writer = await open_store(path, compact_keep=3)
        behind = await open_store(path, compact_keep=3)
        await writer.put("users/alice", b"0")
        await behind.revision()
        old = row_of(path, "users/alice")
        for i in range(10):  # more revisions than the history keeps: the one left behind scans again
            await writer.put(f"items/{i}", b"x")
        await writer.put("users/alice", b"1")
        assert (await behind.get("users/alice")).value == b"1"  # type: ignore[union-attr]
        await writer.compact(await writer.revision())
        with pytest.raises(CompactedError):
            async for _ in writer.watch("", 5):
                break
        await writer.put("users/alice", b"2")
        assert (await behind.get("users/alice")).value == b"2"  # type: ignore[union-attr]
        for i in range(10):
            await writer.put(f"items/{i}", b"y")
        assert old is not None
        put_row(path, old)  # and a rescan does not let an old row in
        with pytest.raises(StoreError) as caught:
            await behind.get("users/alice")
        assert_refused(caught)
        await writer.close()
        await behind.close()

    run(main())


# --- watches --------------------------------------------------------------------------------------------


async def watched(store: Store, prefix: str, start: int, until: int) -> list[tuple[int, bool, str, bytes]]:
    seen: list[tuple[int, bool, str, bytes]] = []
    async with asyncio.timeout(10):
        async for event in store.watch(prefix, start):
            seen.append((event.revision, event.deleted, event.record.key, event.record.value))
            if event.revision >= until:
                break
    return seen


def test_watches_give_current_values_and_refuse_forged_history(tmp_path: Path) -> None:
    path = tmp_path / "s.db"

    async def main() -> None:
        store, other = await open_store(path), await open_store(path)
        await store.put("w/a", b"1")
        await store.put("w/a", b"2")  # supersedes revision 1: its value is kept nowhere
        await store.commit([Put("w/b", b"3"), Put("x/c", b"4")])
        await store.delete("w/b")
        await store.put("w/d", b"5")
        for watcher in (store, other):
            assert await watched(watcher, "w/", 1, 5) == [
                (2, False, "w/a", b"2"), (4, True, "w/b", b""), (5, False, "w/d", b"5")]
        sql(path, "UPDATE events SET version = 7 WHERE revision = 2")
        with pytest.raises(StoreError) as caught:
            await watched(store, "w/", 1, 5)
        assert_refused(caught)
        await store.close()
        await other.close()

    run(main())


# --- a store written before integrity existed ------------------------------------------------------------

LEGACY_SCHEMA = (
    "CREATE TABLE meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID",
    ("CREATE TABLE kv (key TEXT PRIMARY KEY, value BLOB NOT NULL, version INTEGER NOT NULL, "
     "create_revision INTEGER NOT NULL, mod_revision INTEGER NOT NULL)"),
    ("CREATE TABLE events (id INTEGER PRIMARY KEY, revision INTEGER NOT NULL, key TEXT NOT NULL, "
     "deleted INTEGER NOT NULL, value BLOB NOT NULL, version INTEGER NOT NULL, create_revision INTEGER NOT NULL)"),
    "CREATE INDEX events_by_revision ON events (revision)",
    "INSERT INTO meta (name, value) VALUES ('schema', 1), ('revision', 2), ('compacted', 0)",
    "INSERT INTO kv VALUES ('users/alice', X'6e6577', 2, 1, 2)",
    ("INSERT INTO events (revision, key, deleted, value, version, create_revision) VALUES "
     "(1, 'users/alice', 0, X'6f6c646f6c646f6c64', 1, 1), (2, 'users/alice', 0, X'6e6577', 2, 1)"),
)


def test_a_store_from_before_integrity_is_adopted_once_and_loses_its_old_values(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute("PRAGMA journal_mode = WAL")
        for statement in LEGACY_SCHEMA:
            db.execute(statement)
        db.commit()

    async def main() -> None:
        store = await open_store(path)
        record = await store.get("users/alice")
        assert record == Record("users/alice", b"new", 2, 1, 2)
        assert getattr(store, "integrity_adopted", None) is True
        with pytest.raises(CompactedError):  # the old history (with its values) is gone
            async for _ in store.watch("", 1):
                break
        await store.put("users/alice", b"newer")
        await store.close()
        again = await open_store(path)
        assert (await again.get("users/alice")).value == b"newer"  # type: ignore[union-attr]
        assert getattr(again, "integrity_adopted", None) is False  # adopted once, verified since
        await again.close()

    run(main())
    assert b"oldoldold" not in path.read_bytes()
    assert sql(path, "SELECT value FROM meta WHERE name = 'schema'") == [(2,)]
