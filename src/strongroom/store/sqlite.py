"""The SQLite store: one file shared by every worker process of a node.

Why it is built this way:

* Each :class:`SqliteStore` owns one connection, used only by one dedicated
  thread. Calls from one process are therefore serialized, and the event loop
  never waits on disk I/O or on another process's lock.
* Writers take the database write lock up front (``BEGIN IMMEDIATE``), so the
  revision counter and every ``expect`` are read under the same lock as the
  write: conditional writes stay correct across processes.
* SQLite cannot notify other processes, so watches poll the ``events`` table.
  Writes made through the same :class:`SqliteStore` wake its watchers at once;
  writes from other processes are seen within ``watch_poll_interval``.
* The ``events`` table is the watch history. It is trimmed to the last
  ``compact_keep`` revisions; the newest trimmed revision is remembered in
  ``meta`` so that a watch asking for it fails loudly (:class:`CompactedError`)
  instead of silently missing changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from strongroom.store.base import (
    CompactedError,
    ConflictError,
    Delete,
    Listing,
    Operation,
    OutcomeUnknownError,
    Put,
    Record,
    Store,
    StoreError,
    UnavailableError,
    WatchEvent,
    prefix_end,
)

__all__ = ["SqliteStore", "StoreCorruptedError"]

_T = TypeVar("_T")

SCHEMA_VERSION = 1

#: Largest revision span one watch poll reads, so a watcher far behind catches
#: up in bounded steps instead of loading the whole history at once.
_WATCH_BATCH_REVISIONS = 1000

#: The largest code point: a prefix ending in it has no "next" string.
_MAX_CHAR = "\U0010ffff"

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS meta (
        name  TEXT PRIMARY KEY,
        value INTEGER NOT NULL
    ) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS kv (
        key             TEXT PRIMARY KEY,
        value           BLOB NOT NULL,
        version         INTEGER NOT NULL,
        create_revision INTEGER NOT NULL,
        mod_revision    INTEGER NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS events (
        id              INTEGER PRIMARY KEY,
        revision        INTEGER NOT NULL,
        key             TEXT NOT NULL,
        deleted         INTEGER NOT NULL,
        value           BLOB NOT NULL,
        version         INTEGER NOT NULL,
        create_revision INTEGER NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS events_by_revision ON events (revision)",
    f"""INSERT OR IGNORE INTO meta (name, value)
        VALUES ('schema', {SCHEMA_VERSION}), ('revision', 0), ('compacted', 0)""",
)

_RECORD_COLUMNS = "key, value, version, create_revision, mod_revision"


class StoreCorruptedError(StoreError):
    """The file is not a SQLite database or its content is damaged; restore from backup."""


class SqliteStore(Store):
    """A :class:`Store` over one SQLite file that several processes may open at once.

    Construction does no I/O (the file is opened on first use, in the store's
    thread); use :meth:`open` to open it eagerly and fail early.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        compact_keep: int = 10_000,
        watch_poll_interval: float = 0.05,
        busy_timeout: float = 10.0,
    ) -> None:
        if compact_keep < 1:
            raise ValueError("compact_keep must be at least 1")
        if watch_poll_interval <= 0 or busy_timeout < 0:
            raise ValueError("watch_poll_interval must be positive and busy_timeout not negative")
        self._path = Path(path)
        self._compact_keep = compact_keep
        self._poll_interval = watch_poll_interval
        self._busy_timeout = busy_timeout
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="strongroom-sqlite")
        self._db: sqlite3.Connection | None = None
        self._closed = False
        self._watchers: set[asyncio.Event] = set()

    @classmethod
    async def open(cls, path: str | Path, **kw: Any) -> SqliteStore:
        """Create the store and open the file now, so a bad path fails here, not on first use."""
        store = cls(path, **kw)
        try:
            await store._call(store._connection)
        except BaseException:
            await store.close()
            raise
        return store

    @property
    def path(self) -> Path:
        return self._path

    # -- Store interface -------------------------------------------------

    async def get(self, key: str) -> Record | None:
        return await self._call(self._get, key)

    async def list_prefix(self, prefix: str) -> Listing:
        return await self._call(self._list_prefix, prefix)

    async def watch(self, prefix: str, start_revision: int) -> AsyncIterator[WatchEvent]:
        """Poll the event history; a local write wakes the poll early.

        The generator holds nothing between polls but an :class:`asyncio.Event`,
        so abandoning or cancelling it needs no cleanup beyond its ``finally``.
        """
        if start_revision < 1:
            raise ValueError("start_revision must be at least 1")
        wake = asyncio.Event()
        self._watchers.add(wake)
        try:
            next_revision = start_revision
            while True:
                wake.clear()
                events, next_revision, behind = await self._call(self._read_events, prefix, next_revision)
                for event in events:
                    yield event
                if not behind:
                    await self._wait_for_change(wake)
        finally:
            self._watchers.discard(wake)

    async def revision(self) -> int:
        return await self._call(self._revision)

    async def compact(self, revision: int) -> None:
        """Forget watch history at or below ``revision`` (etcd's Compact); keeps every key.

        Compaction also happens on every write, keeping ``compact_keep`` revisions;
        this is for callers that want to drop history sooner.
        """
        await self._call(self._compact_now, revision, writing=True)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for wake in self._watchers:
            wake.set()  # so watchers notice the close now, not after a poll interval
        try:
            await asyncio.get_running_loop().run_in_executor(self._executor, self._close_connection)
        finally:
            self._executor.shutdown(wait=False)

    # -- plumbing on the event loop side ----------------------------------

    async def _call(self, fn: Callable[..., _T], *args: Any, writing: bool = False) -> _T:
        """Run ``fn`` on the store's thread, with sqlite errors turned into store errors."""
        if self._closed:
            raise StoreError(f"SQLite store {str(self._path)!r} is closed")
        job = functools.partial(self._guarded, fn, args, writing)
        return await asyncio.get_running_loop().run_in_executor(self._executor, job)

    async def _apply(self, operations: list[Operation]) -> int:
        revision = await self._call(self._apply_on_thread, operations, writing=True)
        for wake in self._watchers:
            wake.set()
        return revision

    async def _wait_for_change(self, wake: asyncio.Event) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._poll_interval):
                await wake.wait()

    # -- everything below runs on the store's thread ----------------------

    def _guarded(self, fn: Callable[..., _T], args: tuple[Any, ...], writing: bool) -> _T:
        try:
            return fn(*args)
        except sqlite3.Error as exc:
            raise _translate(exc, self._path, self._busy_timeout, writing=writing) from exc

    def _connection(self) -> sqlite3.Connection:
        if self._db is None:
            self._db = self._connect()
        return self._db

    def _connect(self) -> sqlite3.Connection:
        _create_private_file(self._path)
        db = sqlite3.connect(self._path, timeout=self._busy_timeout, isolation_level=None)
        try:
            _configure(db, self._path)
            _ensure_schema(db, self._path)
        except BaseException:
            db.close()
            raise
        return db

    def _close_connection(self) -> None:
        db, self._db = self._db, None
        if db is not None:
            with contextlib.suppress(sqlite3.Error):
                db.close()

    def _get(self, key: str) -> Record | None:
        row = self._connection().execute(f"SELECT {_RECORD_COLUMNS} FROM kv WHERE key = ?", (key,)).fetchone()
        return None if row is None else Record(*row)

    def _revision(self) -> int:
        return _meta(self._connection())["revision"]

    def _list_prefix(self, prefix: str) -> Listing:
        db = self._connection()
        sql, params = _list_query(prefix)
        with _transaction(db, "BEGIN"):  # one snapshot for the rows and the revision
            revision = _meta(db)["revision"]
            rows = db.execute(sql, params).fetchall()
        return Listing([Record(*row) for row in rows], revision)

    def _apply_on_thread(self, operations: list[Operation]) -> int:
        db = self._connection()
        with _transaction(db, "BEGIN IMMEDIATE"):
            meta = _meta(db)
            current = {op.key: _fetch(db, op.key) for op in operations}
            _check_expectations(operations, current)
            changes = [op for op in operations if _changes_something(op, current[op.key])]
            if not changes:
                return meta["revision"]  # like etcd: a write that changes nothing makes no revision
            revision = meta["revision"] + 1
            for op in changes:
                _apply_change(db, op, current[op.key], revision)
            db.execute("UPDATE meta SET value = ? WHERE name = 'revision'", (revision,))
            _trim_history(db, revision - self._compact_keep, meta["compacted"])
            return revision

    def _compact_now(self, revision: int) -> None:
        db = self._connection()
        with _transaction(db, "BEGIN IMMEDIATE"):
            meta = _meta(db)
            if revision > meta["revision"]:
                raise ValueError(f"cannot compact future revision {revision} (current: {meta['revision']})")
            _trim_history(db, revision, meta["compacted"])

    def _read_events(self, prefix: str, start: int) -> tuple[list[WatchEvent], int, bool]:
        """Events from ``start`` on, the revision to poll from next, and whether more are waiting."""
        db = self._connection()
        with _transaction(db, "BEGIN"):  # compacted mark and events from one snapshot: no silent gaps
            meta = _meta(db)
            if start <= meta["compacted"]:
                raise CompactedError(start, meta["compacted"])
            last = min(meta["revision"], start + _WATCH_BATCH_REVISIONS - 1)
            if last < start:
                return [], start, False
            condition, params = _key_condition(prefix)
            rows = db.execute(
                "SELECT revision, key, deleted, value, version, create_revision FROM events"
                f" WHERE revision BETWEEN ? AND ? AND {condition} ORDER BY revision, id",
                (start, last, *params),
            ).fetchall()
        return [_watch_event(*row) for row in rows], last + 1, last < meta["revision"]


# -- validation ----------------------------------------------------------------


# -- SQL helpers (store thread) ---------------------------------------------------


@contextlib.contextmanager
def _transaction(db: sqlite3.Connection, begin: str) -> Iterator[None]:
    db.execute(begin)
    try:
        yield
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
        raise


def _create_private_file(path: Path) -> None:
    """Create the file 0600 ourselves: SQLite would use 0644, and it gives -wal/-shm the file's mode."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        return
    except OSError as exc:
        raise StoreError(f"cannot create SQLite store {str(path)!r}: {exc.strerror or exc}") from exc
    os.close(fd)


def _configure(db: sqlite3.Connection, path: Path) -> None:
    (mode,) = db.execute("PRAGMA journal_mode = WAL").fetchone()
    if str(mode).lower() != "wal":
        raise StoreError(f"SQLite store {str(path)!r} cannot use WAL mode (got {mode!r}); use a local filesystem")
    db.execute("PRAGMA synchronous = FULL")


def _ensure_schema(db: sqlite3.Connection, path: Path) -> None:
    with _transaction(db, "BEGIN IMMEDIATE"):
        for statement in _SCHEMA:
            db.execute(statement)
        schema = _meta(db)["schema"]
    if schema != SCHEMA_VERSION:
        raise StoreError(f"SQLite store {str(path)!r} has schema {schema}, this version reads {SCHEMA_VERSION}")


def _meta(db: sqlite3.Connection) -> dict[str, int]:
    return dict(db.execute("SELECT name, value FROM meta").fetchall())


def _fetch(db: sqlite3.Connection, key: str) -> Record | None:
    row = db.execute(f"SELECT {_RECORD_COLUMNS} FROM kv WHERE key = ?", (key,)).fetchone()
    return None if row is None else Record(*row)


def _check_expectations(operations: list[Operation], current: dict[str, Record | None]) -> None:
    for op in operations:
        if op.expect is None:
            continue
        record = current[op.key]
        if (record.mod_revision if record else 0) != op.expect:
            raise ConflictError(op.key)


def _changes_something(op: Operation, record: Record | None) -> bool:
    if isinstance(op, Put):
        return True
    return isinstance(op, Delete) and record is not None


def _apply_change(db: sqlite3.Connection, op: Operation, old: Record | None, revision: int) -> None:
    if isinstance(op, Put):
        version = old.version + 1 if old else 1
        created = old.create_revision if old else revision
        db.execute(
            f"INSERT OR REPLACE INTO kv ({_RECORD_COLUMNS}) VALUES (?, ?, ?, ?, ?)",
            (op.key, op.value, version, created, revision),
        )
        event = (revision, op.key, 0, op.value, version, created)
    else:
        db.execute("DELETE FROM kv WHERE key = ?", (op.key,))
        event = (revision, op.key, 1, b"", 0, 0)  # etcd's delete event: only key and revision
    db.execute(
        "INSERT INTO events (revision, key, deleted, value, version, create_revision) VALUES (?, ?, ?, ?, ?, ?)",
        event,
    )


def _trim_history(db: sqlite3.Connection, revision: int, compacted: int) -> None:
    if revision <= compacted:
        return
    db.execute("DELETE FROM events WHERE revision <= ?", (revision,))
    db.execute("UPDATE meta SET value = ? WHERE name = 'compacted'", (revision,))


def _key_condition(prefix: str) -> tuple[str, tuple[str, ...]]:
    """A ``key`` range (so SQLite can use the key index) covering exactly the keys under ``prefix``.

    :func:`prefix_end` has no "unbounded" answer, so the empty prefix and prefixes
    ending in U+10FFFF are open-ended here; a bound that lands on a surrogate
    (never storable as UTF-8) moves to U+E000, the next storable code point.
    """
    stem = prefix.rstrip(_MAX_CHAR)
    if not stem:
        return "key >= ?", (prefix,)
    end = prefix_end(stem)
    if "\ud800" <= end[-1] <= "\udfff":
        end = end[:-1] + "\ue000"
    return "key >= ? AND key < ?", (prefix, end)


def _list_query(prefix: str) -> tuple[str, tuple[str, ...]]:
    condition, params = _key_condition(prefix)
    return f"SELECT {_RECORD_COLUMNS} FROM kv WHERE {condition} ORDER BY key", params


def _watch_event(revision: int, key: str, deleted: int, value: bytes, version: int, created: int) -> WatchEvent:
    return WatchEvent(revision, bool(deleted), Record(key, value, version, created, revision))


# -- error translation -----------------------------------------------------------


def _translate(exc: sqlite3.Error, path: Path, busy_timeout: float, *, writing: bool) -> StoreError:
    """Name the file and say what happened; callers never see a raw sqlite3 exception."""
    code = getattr(exc, "sqlite_errorcode", None)
    primary = code & 0xFF if isinstance(code, int) else None
    where = f"SQLite store {str(path)!r}"
    if primary in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
        return UnavailableError(f"{where} stayed locked by another connection for over {busy_timeout:g}s: {exc}")
    if primary == sqlite3.SQLITE_FULL:
        return UnavailableError(f"{where}: disk full, nothing was written: {exc}")
    if primary in (sqlite3.SQLITE_NOTADB, sqlite3.SQLITE_CORRUPT):
        return StoreCorruptedError(f"{where} is not a valid database or is corrupted: {exc}")
    if primary == sqlite3.SQLITE_IOERR and writing:
        return OutcomeUnknownError(f"{where}: I/O error during a write, which may or may not be applied: {exc}")
    if primary == sqlite3.SQLITE_CANTOPEN:
        return StoreError(f"{where} cannot be opened: {exc}")
    if primary in (sqlite3.SQLITE_READONLY, sqlite3.SQLITE_PERM):
        return StoreError(f"{where} is not writable: {exc}")
    return StoreError(f"{where}: {exc}")
