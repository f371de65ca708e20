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
* The ``events`` table is the watch history: keys, versions and the SHA-256 of
  each new value, never the value itself, so no old ciphertext stays in the file
  for anyone to copy back (``secure_delete`` zeroes what SQLite frees, too). A
  watch reads the value from ``kv``; a put that a later change of the same key
  superseded is therefore not reported (its value is gone): a watcher sees every
  delete and the latest value of every key, in revision order. The history is
  trimmed to the last ``compact_keep`` revisions; the newest trimmed revision is
  remembered in ``meta`` so that a watch asking for it fails loudly
  (:class:`CompactedError`) instead of silently missing changes.
* With :meth:`SqliteStore.enable_integrity` (the node calls it as soon as it
  holds the cluster key) versions, revisions, presence and history are
  authenticated too (see :mod:`strongroom.store.integrity`): every row read is
  checked against an index built from a verified scan and kept current from a
  MACed, hash-chained history, and a process without the key may not write.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from strongroom.metrics import store as store_metrics
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
from strongroom.store.integrity import (
    ORIGIN_SIZE,
    ZERO_LINK,
    Change,
    Index,
    IntegrityKeys,
    IntegrityRequired,
    Pending,
    State,
    StoreTampered,
    change_of,
    state_of,
    value_hash,
)

__all__ = ["IntegrityRequired", "SqliteStore", "StoreCorruptedError", "StoreTampered"]

log = logging.getLogger(__name__)

_T = TypeVar("_T")

#: 2: events keep a hash of the value instead of the value; the integrity tables (chain, integrity_state).
SCHEMA_VERSION = 2

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
        version         INTEGER NOT NULL,
        create_revision INTEGER NOT NULL,
        value_hash      BLOB NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS events_by_revision ON events (revision)",
    # One link of the MACed history per revision (written only with the integrity key).
    """CREATE TABLE IF NOT EXISTS chain (
        revision INTEGER PRIMARY KEY,
        link     BLOB NOT NULL
    )""",
    # The authenticated digest of the live rows (store/integrity.py); one row.
    """CREATE TABLE IF NOT EXISTS integrity_state (
        id         INTEGER PRIMARY KEY CHECK (id = 1),
        revision   INTEGER NOT NULL,
        chain_head BLOB NOT NULL,
        origin     BLOB NOT NULL,
        mac        BLOB NOT NULL
    )""",
    f"""INSERT OR IGNORE INTO meta (name, value)
        VALUES ('schema', {SCHEMA_VERSION}), ('revision', 0), ('compacted', 0)""",
)

_RECORD_COLUMNS = "key, value, version, create_revision, mod_revision"
_EVENT_COLUMNS = "revision, key, deleted, version, create_revision, value_hash"
#: A get and the store revision in one statement (one snapshot), whether or not the key exists.
_GET_WITH_REVISION = (
    "SELECT m.value, kv.key, kv.value, kv.version, kv.create_revision, kv.mod_revision"
    " FROM meta AS m LEFT JOIN kv ON kv.key = ? WHERE m.name = 'revision'"
)


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
        # Integrity (store/integrity.py); everything below is used on the store's thread only.
        self._keys: IntegrityKeys | None = None
        self._index: Index | None = None
        self._broken: StoreTampered | None = None
        #: This process found rows but no digest and took them as they were (a store from before
        #: integrity, or written without the key). The node's high-water mark tells whether that is legitimate.
        self.integrity_adopted = False
        #: The origin of the store's digest (hex) once verified; a new one means the digest was made anew.
        self.integrity_id: str | None = None

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

    @property
    def _where(self) -> str:
        return f"SQLite store {str(self._path)!r}"

    # -- Store interface -------------------------------------------------

    def enable_integrity(self, key: bytes) -> None:
        """Authenticate every row, revision and the history from now on (see the module doc).

        Returns at once; the index is built (a full scan, checked against the stored digest) by
        the store's thread before it serves the next call.
        """
        if self._closed:
            return
        self._executor.submit(self._set_integrity_key, bytes(key))

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

    def poll_now(self) -> None:
        """Wake every watch poll now: another process (worker) wrote a revision a client holds."""
        for wake in self._watchers:
            wake.set()

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

    @store_metrics.timed("sqlite")
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
        self._keys = self._index = None
        db, self._db = self._db, None
        if db is not None:
            with contextlib.suppress(sqlite3.Error):
                db.close()

    def _set_integrity_key(self, key: bytes) -> None:
        keys = IntegrityKeys(key)
        if self._keys is not None and self._keys.fingerprint == keys.fingerprint:
            return
        self._keys, self._index, self._broken = keys, None, None

    def _get(self, key: str) -> Record | None:
        db = self._connection()
        if self._keys is None:
            row = db.execute(f"SELECT {_RECORD_COLUMNS} FROM kv WHERE key = ?", (key,)).fetchone()
            return None if row is None else Record(*row)
        index = self._ready(db)
        revision, *row = db.execute(_GET_WITH_REVISION, (key,)).fetchone()
        if revision == index.revision:
            record = None if row[0] is None else Record(*row)
        else:  # someone wrote since: follow the history first, in the same snapshot as the row
            with _transaction(db, "BEGIN"):
                index = self._synced(db)
                record = _fetch(db, key)
        index.check(key, record)
        return record

    def _revision(self) -> int:
        db = self._connection()
        revision = _meta(db)["revision"]
        if self._keys is None:
            return revision
        index = self._ready(db)
        if revision == index.revision:
            return revision
        with _transaction(db, "BEGIN"):
            return self._synced(db).revision

    def _list_prefix(self, prefix: str) -> Listing:
        db = self._connection()
        sql, params = _list_query(prefix)
        index = None if self._keys is None else self._ready(db)
        with _transaction(db, "BEGIN"):  # one snapshot for the rows and the revision
            if index is not None:
                index = self._synced(db)
                revision = index.revision
            else:
                revision = _meta(db)["revision"]
            rows = db.execute(sql, params).fetchall()
        records = [Record(*row) for row in rows]
        if index is not None:
            index.check_listing(prefix, records)
        return Listing(records, revision)

    def _apply_on_thread(self, operations: list[Operation]) -> int:
        db = self._connection()
        index = None if self._keys is None else self._ready(db)
        pending: Pending | None = None
        with _transaction(db, "BEGIN IMMEDIATE"):
            meta = _meta(db)
            if index is None:
                if meta.get("integrity") or _read_state(db) is not None:
                    raise IntegrityRequired(
                        f"{self._where} authenticates its records; a process without the store integrity key "
                        "(derived from the cluster key) may not write to it")
            else:
                index = self._synced(db, meta)
            current = {op.key: _fetch(db, op.key) for op in operations}
            if index is not None:
                for key, record in current.items():  # nobody builds on a row the store did not write
                    index.check(key, record)
            _check_expectations(operations, current)
            changes = [op for op in operations if _changes_something(op, current[op.key])]
            if not changes:
                return meta["revision"]  # like etcd: a write that changes nothing makes no revision
            revision = meta["revision"] + 1
            applied = [_apply_change(db, op, current[op.key], revision) for op in changes]
            if index is not None:
                pending = index.prepare(revision, applied)
                db.execute("INSERT INTO chain (revision, link) VALUES (?, ?)", (revision, pending.link))
                _write_state(db, pending.state)
            db.execute("UPDATE meta SET value = ? WHERE name = 'revision'", (revision,))
            _trim_history(db, revision - self._compact_keep, meta["compacted"])
        if index is not None and pending is not None:
            index.apply(pending)  # only once committed: a failed commit leaves the index as the file is
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
        if self._keys is not None:
            return self._read_verified_events(db, prefix, start)
        with _transaction(db, "BEGIN"):  # compacted mark and events from one snapshot: no silent gaps
            meta = _meta(db)
            if start <= meta["compacted"]:
                raise CompactedError(start, meta["compacted"])
            last = min(meta["revision"], start + _WATCH_BATCH_REVISIONS - 1)
            if last < start:
                return [], start, False
            condition, params = _key_condition(prefix, "e.key")
            rows = db.execute(
                "SELECT e.revision, e.key, e.deleted, e.version, e.create_revision, kv.value FROM events AS e"
                " LEFT JOIN kv ON kv.key = e.key AND kv.mod_revision = e.revision"
                f" WHERE e.revision BETWEEN ? AND ? AND {condition} ORDER BY e.revision, e.id",
                (start, last, *params),
            ).fetchall()
        # A put whose row has changed since has no value left to report: its key's later event follows.
        events = [_watch_event(*row) for row in rows if row[2] or row[5] is not None]
        return events, last + 1, last < meta["revision"]

    def _read_verified_events(self, db: sqlite3.Connection, prefix: str, start: int
                              ) -> tuple[list[WatchEvent], int, bool]:
        """:meth:`_read_events` with the history checked against the links this process verified."""
        index = self._ready(db)
        with _transaction(db, "BEGIN"):
            meta = _meta(db)
            index = self._synced(db, meta)
            compacted = meta["compacted"]
            if start <= compacted:
                raise CompactedError(start, compacted)
            last = min(index.revision, start + _WATCH_BATCH_REVISIONS - 1)
            if last < start:
                return [], start, False
            if start - 1 < index.floor:
                self._verify_older_history(db, index, start - 1)
            rows = db.execute(f"SELECT {_EVENT_COLUMNS} FROM events WHERE revision BETWEEN ? AND ?"
                              " ORDER BY revision, id", (start, last)).fetchall()
            self._sticky(index.verify_history, start, last, _history(rows))
            events: list[WatchEvent] = []
            for revision, key, deleted, version, created, _digest in rows:
                if not key.startswith(prefix):
                    continue
                if deleted:
                    events.append(_watch_event(revision, key, deleted, version, created, b""))
                    continue
                entry = index.entries.get(key)
                if entry is None or entry[2] != revision:
                    continue  # superseded since: its value is kept nowhere; the later event follows
                record = _fetch(db, key)
                index.check(key, record)
                assert record is not None
                events.append(WatchEvent(revision, False, record))
        return events, last + 1, last < index.revision

    def _verify_older_history(self, db: sqlite3.Connection, index: Index, revision: int) -> None:
        """A watch from before this process's first scan: check that history against the link it verified."""
        if revision == 0:
            link: bytes | None = ZERO_LINK
        else:
            row = db.execute("SELECT link FROM chain WHERE revision = ?", (revision,)).fetchone()
            link = row[0] if row is not None and isinstance(row[0], bytes) and len(row[0]) == 32 else None
        if link is None:  # the history starts later (integrity began there): list again instead
            raise CompactedError(revision + 1, index.floor)
        rows = db.execute(f"SELECT {_EVENT_COLUMNS} FROM events WHERE revision > ? AND revision <= ?"
                          " ORDER BY revision, id", (revision, index.floor)).fetchall()
        self._sticky(index.extend_back, revision, link, _history(rows))

    # -- integrity (store thread) ------------------------------------------------

    def _sticky(self, fn: Callable[..., _T], *args: Any) -> _T:
        """Run a check of the digest or the history; a failure there stays (nothing in the file is trusted)."""
        try:
            return fn(*args)
        except StoreTampered as exc:
            self._broken = exc
            log.error("%s", exc)
            raise

    def _ready(self, db: sqlite3.Connection) -> Index:
        """The index, built on first use (outside any transaction: it may have to write the digest)."""
        if self._broken is not None:
            raise self._broken
        if self._index is None:
            self._index = self._sticky(self._build, db)
        return self._index

    def _build(self, db: sqlite3.Connection) -> Index:
        assert self._keys is not None
        with _transaction(db, "BEGIN"):
            state = _read_state(db)
            if state is not None:
                return self._scan(db, state, None)
        with _transaction(db, "BEGIN IMMEDIATE"):  # no digest yet: make it, holding the write lock
            state = _read_state(db)
            if state is not None:
                return self._scan(db, state, None)  # another process made it meanwhile
            return self._begin_integrity(db)

    def _scan(self, db: sqlite3.Connection, state: State, previous: Index | None) -> Index:
        assert self._keys is not None
        index = Index(self._keys, self._where, keep=self._compact_keep)
        index.load(db.execute(f"SELECT {_RECORD_COLUMNS} FROM kv"))
        index.start(state)
        revision = _meta(db)["revision"]
        if revision != state.revision:
            raise StoreTampered(f"{self._where}: its revision counter ({revision}) disagrees with its digest "
                                f"(revision {state.revision})")
        if previous is not None:
            index.check_successor(previous)
        self.integrity_id = state.origin.hex()
        return index

    def _begin_integrity(self, db: sqlite3.Connection) -> Index:
        """Start authenticating a store that has no digest: a new one, or one written without the key."""
        assert self._keys is not None
        meta = _meta(db)
        index = Index(self._keys, self._where, keep=self._compact_keep)
        index.load(db.execute(f"SELECT {_RECORD_COLUMNS} FROM kv"))
        if index.entries and meta.get("integrity"):
            raise StoreTampered(f"{self._where} holds records but its integrity digest is gone (deleted?); "
                                "refusing to start it over")
        origin = os.urandom(ORIGIN_SIZE)
        state = State(meta["revision"], ZERO_LINK, origin,
                      self._keys.state_mac(meta["revision"], ZERO_LINK, index.aggregate, origin))
        index.start(state)
        _write_state(db, state)
        db.execute("INSERT OR REPLACE INTO meta (name, value) VALUES ('integrity', 1)")
        # History written without the key has no links to follow: watchers list again instead.
        _trim_history(db, meta["revision"], meta["compacted"])
        self.integrity_id = origin.hex()
        if index.entries:
            self.integrity_adopted = True
            log.warning("%s had no integrity digest: its %d records are taken as they are now (a store from "
                        "before integrity, or written without the key)", self._where, len(index.entries))
        return index

    def _synced(self, db: sqlite3.Connection, meta: dict[str, int] | None = None) -> Index:
        """The index brought to the file's current revision (inside the caller's transaction)."""
        return self._sticky(self._follow, db, _meta(db) if meta is None else meta)

    def _follow(self, db: sqlite3.Connection, meta: dict[str, int]) -> Index:
        index = self._index
        assert index is not None, "_ready() comes first"
        revision, compacted = meta.get("revision"), meta.get("compacted")
        if revision == index.revision:
            return index
        if type(revision) is not int or type(compacted) is not int:
            raise StoreTampered(f"{self._where}: its revision counters are missing or malformed")
        if revision < index.revision:
            raise StoreTampered(f"{self._where} went back from revision {index.revision} to {revision} "
                                "(an older copy of the file?)")
        if index.revision < compacted:  # the history this process needs is trimmed: scan again
            state = _read_state(db)
            if state is None:
                raise StoreTampered(f"{self._where} holds records but its integrity digest is gone (deleted?)")
            self._index = self._scan(db, state, index)
            return self._index
        rows = db.execute(f"SELECT {_EVENT_COLUMNS} FROM events WHERE revision > ? AND revision <= ?"
                          " ORDER BY revision, id", (index.revision, revision)).fetchall()
        links = dict(db.execute("SELECT revision, link FROM chain WHERE revision > ? AND revision <= ?",
                                (index.revision, revision)).fetchall())
        history = _history(rows)
        for number in range(index.revision + 1, revision + 1):
            link = links.get(number)
            index.follow(number, history.get(number, []), link if isinstance(link, bytes) else None)
        index.verify_state(_read_state(db))
        return index


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
    # What SQLite frees (a replaced row, trimmed history) is zeroed, not left for whoever reads the file.
    db.execute("PRAGMA secure_delete = ON")
    # The schema is in the file: views and triggers someone adds there run no functions with side effects.
    db.execute("PRAGMA trusted_schema = OFF")


def _ensure_schema(db: sqlite3.Connection, path: Path) -> None:
    with _transaction(db, "BEGIN IMMEDIATE"):
        migrated = _migrate_from_1(db)
        for statement in _SCHEMA:
            db.execute(statement)
        schema = _meta(db)["schema"]
    if schema != SCHEMA_VERSION:
        raise StoreError(f"SQLite store {str(path)!r} has schema {schema}, this version reads {SCHEMA_VERSION}")
    if migrated:
        # The old history's pages are free now; rewrite the file so none of its values stays on disk.
        with contextlib.suppress(sqlite3.Error):
            db.execute("VACUUM")
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")


def _migrate_from_1(db: sqlite3.Connection) -> bool:
    """Schema 1 kept every old value in ``events``: drop that history (watchers list again)."""
    if db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'").fetchone() is None:
        return False
    if _meta(db).get("schema") != 1:
        return False
    db.execute("DROP TABLE IF EXISTS events")
    db.execute("UPDATE meta SET value = (SELECT value FROM meta WHERE name = 'revision') WHERE name = 'compacted'")
    db.execute("UPDATE meta SET value = 2 WHERE name = 'schema'")
    return True


def _meta(db: sqlite3.Connection) -> dict[str, int]:
    return dict(db.execute("SELECT name, value FROM meta").fetchall())


def _fetch(db: sqlite3.Connection, key: str) -> Record | None:
    row = db.execute(f"SELECT {_RECORD_COLUMNS} FROM kv WHERE key = ?", (key,)).fetchone()
    return None if row is None else Record(*row)


def _history(rows: list[tuple[Any, ...]]) -> dict[int, list[Change]]:
    """Event rows (:data:`_EVENT_COLUMNS`) grouped by revision."""
    history: dict[int, list[Change]] = {}
    for revision, key, deleted, version, created, digest in rows:
        history.setdefault(revision, []).append(change_of(key, deleted, version, created, digest))
    return history


def _read_state(db: sqlite3.Connection) -> State | None:
    row = db.execute("SELECT revision, chain_head, origin, mac FROM integrity_state WHERE id = 1").fetchone()
    return None if row is None else state_of(*row)


def _write_state(db: sqlite3.Connection, state: State) -> None:
    db.execute("INSERT OR REPLACE INTO integrity_state (id, revision, chain_head, origin, mac) VALUES (1, ?, ?, ?, ?)",
               (state.revision, state.chain_head, state.origin, state.mac))


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


def _apply_change(db: sqlite3.Connection, op: Operation, old: Record | None, revision: int) -> Change:
    if isinstance(op, Put):
        version = old.version + 1 if old else 1
        created = old.create_revision if old else revision
        db.execute(
            f"INSERT OR REPLACE INTO kv ({_RECORD_COLUMNS}) VALUES (?, ?, ?, ?, ?)",
            (op.key, op.value, version, created, revision),
        )
        change = Change(op.key, False, version, created, value_hash(op.value))
    else:
        db.execute("DELETE FROM kv WHERE key = ?", (op.key,))
        change = Change(op.key, True, 0, 0, b"")  # etcd's delete event: only key and revision
    db.execute(
        f"INSERT INTO events ({_EVENT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)",
        (revision, change.key, int(change.deleted), change.version, change.create_revision, change.value_hash),
    )
    return change


def _trim_history(db: sqlite3.Connection, revision: int, compacted: int) -> None:
    if revision <= compacted:
        return
    db.execute("DELETE FROM events WHERE revision <= ?", (revision,))
    db.execute("DELETE FROM chain WHERE revision <= ?", (revision,))
    db.execute("UPDATE meta SET value = ? WHERE name = 'compacted'", (revision,))


def _key_condition(prefix: str, column: str = "key") -> tuple[str, tuple[str, ...]]:
    """A ``key`` range (so SQLite can use the key index) covering exactly the keys under ``prefix``.

    :func:`prefix_end` has no "unbounded" answer, so the empty prefix and prefixes
    ending in U+10FFFF are open-ended here; a bound that lands on a surrogate
    (never storable as UTF-8) moves to U+E000, the next storable code point.
    """
    stem = prefix.rstrip(_MAX_CHAR)
    if not stem:
        return f"{column} >= ?", (prefix,)
    end = prefix_end(stem)
    if "\ud800" <= end[-1] <= "\udfff":
        end = end[:-1] + "\ue000"
    return f"{column} >= ? AND {column} < ?", (prefix, end)


def _list_query(prefix: str) -> tuple[str, tuple[str, ...]]:
    condition, params = _key_condition(prefix)
    return f"SELECT {_RECORD_COLUMNS} FROM kv WHERE {condition} ORDER BY key", params


def _watch_event(revision: int, key: str, deleted: int, version: int, created: int, value: bytes) -> WatchEvent:
    return WatchEvent(revision, bool(deleted), Record(key, value if not deleted else b"", version, created, revision))


# -- error translation -----------------------------------------------------------


def _translate(exc: sqlite3.Error, path: Path, busy_timeout: float, *, writing: bool) -> StoreError:
    """Name the file and say what happened; callers never see a raw sqlite3 exception."""
    code = getattr(exc, "sqlite_errorcode", None)
    primary = code & 0xFF if isinstance(code, int) else None
    where = f"SQLite store {str(path)!r}"
    if "Could not decode to UTF-8" in str(exc):  # the store only ever writes UTF-8: someone else wrote this
        return StoreTampered(f"{where} holds text that is not UTF-8 (altered outside the store?): {exc}")
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
