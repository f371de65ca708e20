"""Behaviour every :class:`Store` backend must share (etcd's data model).

The first part runs against each backend of ``store_factory`` (see conftest.py);
the last part checks what only the SQLite backend promises (files, errors).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import sqlite3
import stat
import sys
import textwrap
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, Protocol

import pytest

import strongroom
from strongroom.store.base import (
    MAX_COMMIT_OPERATIONS,
    Check,
    CompactedError,
    ConflictError,
    Delete,
    OutcomeUnknownError,
    Put,
    Store,
    StoreError,
    UnavailableError,
    WatchEvent,
)
from strongroom.store.sqlite import SqliteStore, StoreCorruptedError, _list_query, _translate

AsyncTest = Callable[..., Coroutine[Any, Any, None]]


class StoreBackend(Protocol):
    """What the ``store_factory`` fixture provides (conftest.py; not imported, it is no package)."""

    name: str
    #: The backend keeps no old values, so a watch skips a put that a later change of its key superseded.
    coalesces_watch: bool

    def run(self, coro: Coroutine[Any, Any, Any]) -> Any: ...

    async def open(self) -> Store: ...

    async def compact(self, store: Store, revision: int) -> None: ...

    def child_prelude(self) -> str: ...


def async_test(test: AsyncTest) -> Callable[..., None]:
    """Run an ``async def`` test on the backend's loop, or a fresh one (no pytest-asyncio)."""

    @functools.wraps(test)
    def wrapper(**fixtures: Any) -> None:
        backend = fixtures.get("store_factory")
        if backend is not None:
            backend.run(test(**fixtures))
        else:
            asyncio.run(test(**fixtures))

    return wrapper


async def collect(store: Store, prefix: str, start: int, count: int, timeout: float = 5.0) -> list[WatchEvent]:
    """The first ``count`` events of a watch; the watch is closed afterwards."""
    events: list[WatchEvent] = []
    watch = store.watch(prefix, start)
    try:
        async with asyncio.timeout(timeout):
            async for event in watch:
                events.append(event)
                if len(events) == count:
                    break
    finally:
        aclose = getattr(watch, "aclose", None)  # the interface promises only an AsyncIterator
        if aclose is not None:
            await aclose()
    return events


def summary(events: list[WatchEvent]) -> list[tuple[int, str, str, bytes]]:
    return [(e.revision, "delete" if e.deleted else "put", e.record.key, e.record.value) for e in events]


Change = tuple[int, str, str, bytes]


async def collect_changes(backend: StoreBackend, store: Store, prefix: str, start: int, expected: list[Change],
                          timeout: float = 5.0) -> list[WatchEvent]:
    """Watch until the last of ``expected`` arrives; the changes seen must be ``expected``.

    A backend that keeps no old values (SQLite) may leave out a put that a later change of the same
    key in ``expected`` superseded (whether it does depends on when it polls); never a delete, never
    the latest change of a key, never anything out of order.
    """
    events: list[WatchEvent] = []
    watch = store.watch(prefix, start)
    try:
        async with asyncio.timeout(timeout):
            async for event in watch:
                events.append(event)
                if summary([event])[0] == expected[-1]:
                    break
    finally:
        aclose = getattr(watch, "aclose", None)
        if aclose is not None:
            await aclose()
    seen = summary(events)
    if not backend.coalesces_watch:
        assert seen == expected
        return events
    required = [change for i, change in enumerate(expected)
                if change[1] == "delete" or all(later[2] != change[2] for later in expected[i + 1:])]
    assert [change for change in seen if change in required] == required, seen
    position = 0
    for change in seen:  # a subsequence of expected: nothing made up, nothing reordered
        assert change in expected[position:], (change, seen)
        position = expected.index(change, position) + 1
    return events


def child_env() -> dict[str, str]:
    """Let a child process import strongroom even when it is not installed in the venv."""
    src = str(Path(strongroom.__file__).resolve().parents[1])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [src, env.get("PYTHONPATH")]))
    return env


async def run_child(backend: StoreBackend, body: str, *args: str, timeout: float = 30.0) -> None:
    """Run ``body`` in a separate Python process that opens the same backing store."""
    source = backend.child_prelude() + textwrap.dedent(body)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        source,
        *args,
        env=child_env(),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(timeout):
        _, stderr = await process.communicate()
    assert process.returncode == 0, stderr.decode(errors="replace")


# ---------------------------------------------------------------------------
# Keys, versions and revisions
# ---------------------------------------------------------------------------


@async_test
async def test_get_missing_key_returns_none(store_factory: StoreBackend) -> None:
    store = await store_factory.open()
    assert await store.get("missing") is None


@async_test
async def test_empty_store_is_at_revision_zero(store_factory: StoreBackend) -> None:
    store = await store_factory.open()
    assert await store.revision() == 0


@async_test
async def test_put_creates_key_at_version_one(store_factory: StoreBackend) -> None:
    store = await store_factory.open()
    revision = await store.put("k", b"v1")
    record = await store.get("k")
    assert revision == 1 == await store.revision()
    assert record is not None
    assert (record.key, record.value, record.version) == ("k", b"v1", 1)
    assert record.create_revision == record.mod_revision == revision


@async_test
async def test_update_increments_version_and_keeps_create_revision(store_factory: StoreBackend) -> None:
    store = await store_factory.open()
    created = await store.put("k", b"v1")
    await store.put("other", b"x")
    updated = await store.put("k", b"v2")
    record = await store.get("k")
    assert record is not None
    assert (record.value, record.version) == (b"v2", 2)
    assert (record.create_revision, record.mod_revision) == (created, updated)


@async_test
async def test_empty_value_is_kept(store_factory: StoreBackend) -> None:
    store = await store_factory.open()
    await store.put("k", b"")
    record = await store.get("k")
    assert record is not None and record.value == b""


@async_test
async def test_expect_zero_creates_missing_key(store_factory: StoreBackend) -> None:
    store = await store_factory.open()
    revision = await store.put("k", b"v", expect=0)
    record = await store.get("k")
    assert record is not None and record.mod_revision == revision


@async_test
async def test_expect_zero_on_existing_key_conflicts(store_factory: StoreBackend) -> None:
    store = await store_factory.open()
    await store.put("k", b"v1")
    with pytest.raises(ConflictError) as caught:
        await store.put("k", b"v2", expect=0)
    assert caught.value.key == "k"
    record = await store.get("k")
    assert record is not None and record.value == b"v1"
    assert await store.revision() == 1


@async_test
async def test_stale_expect_conflicts_and_writes_nothing(store_factory: StoreBackend) -> None:
    store = await store_factory.open()
    first = await store.put("k", b"v1")
    second = await store.put("k", b"v2")
    with pytest.raises(ConflictError):
        await store.put("k", b"v3", expect=first)
    record = await store.get("k")
    assert record is not None
    assert (record.value, record.version, record.mod_revision) == (b"v2", 2, second)
    assert await store.revision() == second


@async_test
async def test_expect_on_missing_key_conflicts(store_factory: StoreBackend) -> None:
    store = await store_factory.open()
    with pytest.raises(ConflictError):
        await store.put("k", b"v", expect=1)
    assert await store.get("k") is None
    assert await store.revision() == 0


@async_test
async def test_current_expect_writes(store_factory: StoreBackend) -> None:
    store = await store_factory.open()
    first = await store.put("k", b"v1")
    second = await store.put("k", b"v2", expect=first)
    assert second == first + 1


@async_test
async def test_delete_removes_key_at_new_revision(store_factory: StoreBackend) -> None:
    store = await store_factory.open()
    await store.put("k", b"v")
    revision = await store.delete("k")
    assert revision == 2 == await store.revision()
    assert await store.get("k") is None


@async_test
async def test_delete_of_missing_key_makes_no_revision(store_factory: StoreBackend) -> None:
    store = await store_factory.open()
    await store.put("other", b"v")
    assert await store.delete("missing") == 1
    assert await store.delete("missing", expect=0) == 1
    assert await store.revision() == 1


@async_test
async def test_delete_with_stale_expect_conflicts(store_factory: StoreBackend) -> None:
    store = await store_factory.open()
    first = await store.put("k", b"v1")
    second = await store.put("k", b"v2")
    with pytest.raises(ConflictError):
        await store.delete("k", expect=first)
    with pytest.raises(ConflictError):
        await store.delete("k", expect=0)
    assert await store.get("k") is not None
    assert await store.delete("k", expect=second) == second + 1
    assert await store.get("k") is None


@async_test
async def test_version_resets_after_delete_and_recreate(store_factory: StoreBackend) -> None:
    store = await store_factory.open()
    await store.put("k", b"v1")
    await store.put("k", b"v2")
    await store.delete("k")
    recreated = await store.put("k", b"v3", expect=0)
    record = await store.get("k")
    assert record is not None
    assert (record.version, record.create_revision, record.mod_revision) == (1, recreated, recreated)


@async_test
async def test_every_write_makes_exactly_one_revision(store_factory: StoreBackend) -> None:
    store = await store_factory.open()
    revisions = [
        await store.put("a", b"1"),
        await store.commit([Put("b", b"2"), Put("c", b"3"), Put("d", b"4")]),
        await store.delete("a"),
        await store.commit([Delete("b"), Put("e", b"5")]),
    ]
    assert revisions == [1, 2, 3, 4]
    assert await store.revision() == 4


@async_test
async def test_concurrent_writers_get_distinct_revisions(store_factory: StoreBackend) -> None:
    one, two = await store_factory.open(), await store_factory.open()
    writes = [store.put(f"k/{i}", b"v") for i in range(10) for store in (one, two)]
    revisions = await asyncio.gather(*writes)
    assert sorted(revisions) == list(range(1, 21))


# ---------------------------------------------------------------------------
# Commit
# ---------------------------------------------------------------------------


@async_test
async def test_commit_applies_everything_at_one_revision(store_factory: StoreBackend) -> None:
    store = await store_factory.open()
    await store.put("old", b"x")
    revision = await store.commit([Put("a", b"1", expect=0), Put("b", b"2"), Delete("old", expect=1)])
    a, b = await store.get("a"), await store.get("b")
    assert a is not None and b is not None
    assert a.mod_revision == b.mod_revision == revision == 2
    assert await store.get("old") is None


@async_test
async def test_commit_with_failing_check_writes_nothing(store_factory: StoreBackend) -> None:
    store = await store_factory.open()
    guard = await store.put("guard", b"g")
    await store.put("guard", b"moved")
    with pytest.raises(ConflictError) as caught:
        await store.commit([Put("a", b"1"), Put("b", b"2"), Check("guard", guard)])
    assert caught.value.key == "guard"
    assert await store.get("a") is None and await store.get("b") is None
    assert await store.revision() == 2


@async_test
async def test_commit_reports_first_conflicting_key(store_factory: StoreBackend) -> None:
    store = await store_factory.open()
    await store.put("x", b"1")
    await store.put("y", b"1")
    with pytest.raises(ConflictError) as caught:
        await store.commit([Put("ok", b"v", expect=0), Put("y", b"2", expect=0), Put("x", b"2", expect=0)])
    assert caught.value.key == "y"
    assert await store.get("ok") is None


@async_test
async def test_commit_check_absent_key(store_factory: StoreBackend) -> None:
    store = await store_factory.open()
    revision = await store.commit([Check("lock", 0), Put("a", b"1")])
    await store.put("lock", b"held")
    with pytest.raises(ConflictError):
        await store.commit([Check("lock", 0), Put("a", b"2")])
    a = await store.get("a")
    assert a is not None and a.mod_revision == revision


@async_test
async def test_commit_that_changes_nothing_makes_no_revision(store_factory: StoreBackend) -> None:
    store = await store_factory.open()
    revision = await store.put("a", b"1")
    assert await store.commit([Check("a", revision), Delete("missing")]) == revision
    assert await store.revision() == revision


@pytest.mark.parametrize(
    "operations",
    [
        pytest.param([], id="empty"),
        pytest.param([Put(f"k{i}", b"") for i in range(MAX_COMMIT_OPERATIONS + 1)], id="too-many"),
        pytest.param([Put("k", b"1"), Delete("k")], id="key-twice"),
        pytest.param([Put("k", b"1"), Check("k", 0)], id="put-and-check-same-key"),
    ],
)
@async_test
async def test_commit_rejects_invalid_operation_lists(store_factory: StoreBackend, operations: list[Any]) -> None:
    store = await store_factory.open()
    with pytest.raises(ValueError):
        await store.commit(operations)
    assert await store.revision() == 0


@async_test
async def test_commit_accepts_the_maximum_number_of_operations(store_factory: StoreBackend) -> None:
    store = await store_factory.open()
    revision = await store.commit([Put(f"k/{i:03}", b"") for i in range(MAX_COMMIT_OPERATIONS)])
    listing = await store.list_prefix("k/")
    assert revision == 1 and len(listing.records) == MAX_COMMIT_OPERATIONS


# ---------------------------------------------------------------------------
# Listing
# ---------------------------------------------------------------------------


@async_test
async def test_list_prefix_is_sorted_and_bounded(store_factory: StoreBackend) -> None:
    store = await store_factory.open()
    for key in ["a/2", "a0", "a", "a/1", "b/1", "a/1/x", "A/1", "a/"]:
        await store.put(key, key.encode())
    listing = await store.list_prefix("a/")
    assert [r.key for r in listing.records] == ["a/", "a/1", "a/1/x", "a/2"]
    assert [r.value for r in listing.records] == [b"a/", b"a/1", b"a/1/x", b"a/2"]
    assert listing.revision == await store.revision() == 8


@async_test
async def test_list_prefix_orders_by_code_point(store_factory: StoreBackend) -> None:
    store = await store_factory.open()
    keys = ["p/\u00e9", "p/z", "p/\U0001f511", "p/Z", "p/\u20ac"]
    for key in keys:
        await store.put(key, b"")
    listing = await store.list_prefix("p/")
    assert [r.key for r in listing.records] == sorted(keys)


@async_test
async def test_list_prefix_at_the_edges_of_unicode(store_factory: StoreBackend) -> None:
    store = await store_factory.open()
    keys = ["a", "z\U0010ffff", "z\U0010ffff/1", "\U0010ffff", "\ud7ff/x", "\ue000"]
    for key in keys:
        await store.put(key, b"")
    assert [r.key for r in (await store.list_prefix("")).records] == sorted(keys)
    assert [r.key for r in (await store.list_prefix("z\U0010ffff")).records] == ["z\U0010ffff", "z\U0010ffff/1"]
    assert [r.key for r in (await store.list_prefix("\ud7ff")).records] == ["\ud7ff/x"]


@async_test
async def test_list_prefix_with_no_match(store_factory: StoreBackend) -> None:
    store = await store_factory.open()
    await store.put("a/1", b"")
    listing = await store.list_prefix("b/")
    assert listing.records == [] and listing.revision == 1


@async_test
async def test_list_prefix_reflects_deletes_and_versions(store_factory: StoreBackend) -> None:
    store = await store_factory.open()
    await store.commit([Put("a/1", b"x"), Put("a/2", b"y")])
    await store.put("a/1", b"x2")
    await store.delete("a/2")
    (record,) = (await store.list_prefix("a/")).records
    assert (record.key, record.value, record.version, record.create_revision, record.mod_revision) == (
        "a/1",
        b"x2",
        2,
        1,
        2,
    )


# ---------------------------------------------------------------------------
# Watch
# ---------------------------------------------------------------------------


@async_test
async def test_watch_replays_puts_and_deletes_in_order_filtered_by_prefix(store_factory: StoreBackend) -> None:
    store = await store_factory.open()
    await store.put("w/a", b"1")
    await store.put("x/a", b"ignored")
    await store.commit([Put("w/b", b"2"), Put("w0", b"ignored"), Delete("w/a")])
    await store.put("w/b", b"3")
    events = await collect_changes(store_factory, store, "w/", 1, [
        (1, "put", "w/a", b"1"),
        (3, "put", "w/b", b"2"),
        (3, "delete", "w/a", b""),
        (4, "put", "w/b", b"3"),
    ])
    by_revision = {(e.revision, e.record.key): e.record for e in events}
    if not store_factory.coalesces_watch:
        assert by_revision[3, "w/b"].version == 1
    latest = by_revision[4, "w/b"]
    assert (latest.version, latest.create_revision, latest.mod_revision) == (2, 3, 4)
    assert by_revision[3, "w/a"].mod_revision == 3


@async_test
async def test_watch_from_a_later_revision_skips_earlier_changes(store_factory: StoreBackend) -> None:
    store = await store_factory.open()
    await store.put("w/a", b"1")
    await store.put("w/a", b"2")
    assert summary(await collect(store, "w/", 2, 1)) == [(2, "put", "w/a", b"2")]


@async_test
async def test_watch_sees_only_future_changes_live(store_factory: StoreBackend) -> None:
    store = await store_factory.open()
    await store.put("w/old", b"0")
    start = await store.revision() + 1
    watching = asyncio.create_task(collect(store, "w/", start, 3))
    await asyncio.sleep(0.05)  # let the watch reach its wait before the writes
    await store.put("w/a", b"1")
    await store.put("v/a", b"ignored")
    await store.delete("w/old")
    await store.put("w/b", b"2")
    assert summary(await watching) == [
        (2, "put", "w/a", b"1"),
        (4, "delete", "w/old", b""),
        (5, "put", "w/b", b"2"),
    ]


@async_test
async def test_watch_sees_writes_from_another_instance(store_factory: StoreBackend) -> None:
    watcher, writer = await store_factory.open(), await store_factory.open()
    start = await watcher.revision() + 1
    watching = asyncio.create_task(collect_changes(store_factory, watcher, "w/", start, [
        (1, "put", "w/a", b"1"),
        (3, "put", "w/b", b"2"),
        (3, "delete", "w/a", b""),
    ]))
    await asyncio.sleep(0.05)
    await writer.put("w/a", b"1")
    await writer.put("elsewhere", b"x")
    await writer.commit([Put("w/b", b"2"), Delete("w/a")])
    await watching


WATCHED_WRITER = """
import asyncio

async def main():
    store = await open_store()
    try:
        await store.put("proc/a", b"1")
        await store.put("other/x", b"ignored")
        await store.put("proc/b", b"2")
        await store.delete("proc/a")
    finally:
        await store.close()

asyncio.run(main())
"""


@async_test
async def test_watch_sees_writes_from_another_process(store_factory: StoreBackend) -> None:
    store = await store_factory.open()
    start = await store.revision() + 1
    watching = asyncio.create_task(collect_changes(store_factory, store, "proc/", start, [
        (1, "put", "proc/a", b"1"),
        (3, "put", "proc/b", b"2"),
        (4, "delete", "proc/a", b""),
    ], timeout=30))
    await run_child(store_factory, WATCHED_WRITER)
    await watching


INCREMENTER = """
import asyncio
import sys

from strongroom.store.base import ConflictError

async def increment(store):
    while True:
        record = await store.get("counter")
        count = int(record.value) if record else 0
        try:
            await store.put("counter", b"%d" % (count + 1), expect=record.mod_revision if record else 0)
            return
        except ConflictError:
            pass

async def main(times):
    store = await open_store()
    try:
        for _ in range(times):
            await increment(store)
    finally:
        await store.close()

asyncio.run(main(int(sys.argv[1])))
"""


@async_test
async def test_conditional_writes_from_several_processes_serialize(store_factory: StoreBackend) -> None:
    store = await store_factory.open()
    await asyncio.gather(*(run_child(store_factory, INCREMENTER, "15") for _ in range(3)))
    record = await store.get("counter")
    assert record is not None
    assert (record.value, record.version) == (b"45", 45)
    assert await store.revision() == 45  # failed attempts made no revision


@async_test
async def test_watch_from_a_compacted_revision_fails(store_factory: StoreBackend) -> None:
    store = await store_factory.open()
    for i in range(5):
        await store.put(f"w/{i}", b"")
    await store_factory.compact(store, 3)
    for start in (1, 3):
        with pytest.raises(CompactedError) as caught:
            await collect(store, "w/", start, 1)
        assert caught.value.requested == start
        assert caught.value.compacted == 3
    assert [e.revision for e in await collect(store, "w/", 4, 2)] == [4, 5]


@async_test
async def test_cancelling_a_watch_stops_it(store_factory: StoreBackend) -> None:
    store = await store_factory.open()
    watching = asyncio.create_task(collect(store, "w/", 1, 10, timeout=60))
    await asyncio.sleep(0.05)
    watching.cancel()
    async with asyncio.timeout(2):
        with pytest.raises(asyncio.CancelledError):
            await watching
    assert await store.put("w/a", b"still works") == 1


@async_test
async def test_breaking_out_of_a_watch_leaves_the_store_usable(store_factory: StoreBackend) -> None:
    store = await store_factory.open()
    await store.put("w/a", b"1")
    await store.put("w/b", b"2")
    assert len(await collect(store, "w/", 1, 1)) == 1
    assert await store.put("w/c", b"3") == 3


# ---------------------------------------------------------------------------
# Lifecycle
# ---------------------------------------------------------------------------


@async_test
async def test_closed_store_refuses_calls(store_factory: StoreBackend) -> None:
    store = await store_factory.open()
    await store.close()
    await store.close()  # idempotent
    with pytest.raises(StoreError):
        await store.get("k")
    with pytest.raises(StoreError):
        await store.put("k", b"v")
    with pytest.raises(StoreError):
        await collect(store, "", 1, 1)


@async_test
async def test_data_survives_reopening(store_factory: StoreBackend) -> None:
    store = await store_factory.open()
    await store.put("k", b"v")
    await store.close()
    again = await store_factory.open()
    record = await again.get("k")
    assert record is not None and record.value == b"v"
    assert await again.revision() == 1


# ---------------------------------------------------------------------------
# SQLite only
# ---------------------------------------------------------------------------


@async_test
async def test_sqlite_trims_history_to_compact_keep(tmp_path: Path) -> None:
    store = await SqliteStore.open(tmp_path / "s.db", compact_keep=3)
    try:
        for i in range(5):
            await store.put(f"k/{i}", b"")
        with pytest.raises(CompactedError) as caught:
            await collect(store, "k/", 2, 1)
        assert caught.value.compacted == 2
        assert [e.revision for e in await collect(store, "k/", 3, 3)] == [3, 4, 5]
    finally:
        await store.close()


@async_test
async def test_sqlite_compact_refuses_future_revision(tmp_path: Path) -> None:
    store = await SqliteStore.open(tmp_path / "s.db")
    try:
        with pytest.raises(ValueError):
            await store.compact(1)
    finally:
        await store.close()


@async_test
async def test_sqlite_files_are_private_and_in_wal_mode(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = await SqliteStore.open(path)
    try:
        await store.put("k", b"v")
        for name in ("s.db", "s.db-wal", "s.db-shm"):
            assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o600, name
        with contextlib.closing(sqlite3.connect(path)) as db:
            assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    finally:
        await store.close()


def test_sqlite_list_prefix_uses_the_key_index(tmp_path: Path) -> None:
    asyncio.run(_create_store(tmp_path / "s.db"))
    sql, params = _list_query("a/")
    with contextlib.closing(sqlite3.connect(tmp_path / "s.db")) as db:
        plan = " ".join(row[-1] for row in db.execute("EXPLAIN QUERY PLAN " + sql, params))
    assert "SEARCH kv USING INDEX" in plan and "key>? AND key<?" in plan
    assert "SCAN" not in plan and "TEMP B-TREE" not in plan


async def _create_store(path: Path) -> None:
    store = await SqliteStore.open(path)
    await store.close()


@pytest.mark.parametrize("contents", [b"this is not a database, just text" * 100, b"\0" * 4096])
@async_test
async def test_sqlite_non_database_file_is_a_store_error(tmp_path: Path, contents: bytes) -> None:
    path = tmp_path / "garbage.db"
    path.write_bytes(contents)
    with pytest.raises(StoreError) as caught:
        await SqliteStore.open(path)
    assert str(path) in str(caught.value)
    lazy = SqliteStore(path)
    try:
        with pytest.raises(StoreError, match="not a valid database"):
            await lazy.get("k")
    finally:
        await lazy.close()


@async_test
async def test_sqlite_lock_held_too_long_is_unavailable(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = await SqliteStore.open(path, busy_timeout=0.1)
    await store.put("k", b"v")
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        with pytest.raises(UnavailableError) as caught:
            await store.put("k", b"v2")
        assert str(path) in str(caught.value)
        record = await store.get("k")  # WAL: readers are not blocked by the writer
        assert record is not None and record.value == b"v"
        other.execute("ROLLBACK")
        assert await store.put("k", b"v2") == 2
    finally:
        other.close()
        await store.close()


@async_test
async def test_sqlite_missing_directory_is_a_store_error(tmp_path: Path) -> None:
    path = tmp_path / "no" / "such" / "dir" / "s.db"
    with pytest.raises(StoreError, match="cannot create") as caught:
        await SqliteStore.open(path)
    assert str(path) in str(caught.value)


@async_test
async def test_sqlite_close_ends_running_watches(tmp_path: Path) -> None:
    store = await SqliteStore.open(tmp_path / "s.db", watch_poll_interval=10)
    watching = asyncio.create_task(collect(store, "", 1, 1))
    await asyncio.sleep(0.05)
    await store.close()
    async with asyncio.timeout(2):
        with pytest.raises(StoreError, match="closed"):
            await watching


def _sqlite_error(code: int, message: str) -> sqlite3.Error:
    error = sqlite3.OperationalError(message)
    error.sqlite_errorcode = code
    return error


@pytest.mark.parametrize(
    ("code", "writing", "expected", "words"),
    [
        (sqlite3.SQLITE_FULL, True, UnavailableError, "disk full"),
        (sqlite3.SQLITE_BUSY, True, UnavailableError, "locked"),
        (sqlite3.SQLITE_NOTADB, False, StoreCorruptedError, "not a valid database"),
        (sqlite3.SQLITE_CORRUPT | (1 << 8), False, StoreCorruptedError, "corrupted"),
        (sqlite3.SQLITE_IOERR | (4 << 8), True, OutcomeUnknownError, "may or may not"),
        (sqlite3.SQLITE_IOERR | (4 << 8), False, StoreError, "disk I/O"),
        (sqlite3.SQLITE_READONLY, True, StoreError, "not writable"),
    ],
)
def test_sqlite_errors_become_store_errors(code: int, writing: bool, expected: type[StoreError], words: str) -> None:
    error = _translate(_sqlite_error(code, "disk I/O error"), Path("/var/lib/x.db"), 10.0, writing=writing)
    assert type(error) is expected
    assert "/var/lib/x.db" in str(error) and words in str(error)
