"""The store interface every backend implements (SQLite now, etcd for clusters).

The model is etcd's, so that both backends behave the same:

* every successful write (a single put/delete or a whole :meth:`Store.commit`)
  creates one new store-wide **revision**;
* each key carries ``create_revision``, ``mod_revision`` and ``version`` (how many
  times it was written since it was created: 1 after creation, reset by delete);
* conditional writes compare the ``mod_revision`` the caller read: ``expect=0``
  means "must not exist", ``expect=None`` means unconditional.

The store only ever sees opaque bytes: the barrier encrypts values before they
arrive here. All methods are coroutines; blocking backends run their I/O off the
event loop.
"""

from __future__ import annotations

import abc
import contextvars
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass


class StoreError(Exception):
    """Base class of every store failure."""


class ConflictError(StoreError):
    """A compared revision did not match; nothing was written."""

    def __init__(self, key: str) -> None:
        super().__init__(f"revision conflict on {key!r}")
        self.key = key


class CompactedError(StoreError):
    """A watch asked for a revision the store no longer keeps; list again and re-watch."""

    def __init__(self, requested: int, compacted: int) -> None:
        super().__init__(f"revision {requested} is compacted (oldest kept: {compacted + 1})")
        self.requested = requested
        self.compacted = compacted


class UnavailableError(StoreError):
    """The store refused the request (e.g. etcd lost quorum); nothing was written."""


class OutcomeUnknownError(StoreError):
    """The request timed out; it may or may not have been applied."""


@dataclass(frozen=True, slots=True)
class Record:
    key: str
    value: bytes
    version: int
    create_revision: int
    mod_revision: int


@dataclass(frozen=True, slots=True)
class Put:
    key: str
    value: bytes
    expect: int | None = None


@dataclass(frozen=True, slots=True)
class Delete:
    key: str
    expect: int | None = None


@dataclass(frozen=True, slots=True)
class Check:
    """Compare only: the commit fails unless ``key`` is at ``expect`` (0 = absent)."""

    key: str
    expect: int


Operation = Put | Delete | Check


@dataclass(frozen=True, slots=True)
class Listing:
    records: list[Record]
    revision: int


@dataclass(frozen=True, slots=True)
class WatchEvent:
    """A change seen by a watch. ``record.value`` is ``b""`` for deletes."""

    revision: int
    deleted: bool
    record: Record


#: Largest number of operations in one :meth:`Store.commit` (etcd's default max-txn-ops is 128).
MAX_COMMIT_OPERATIONS = 64


class WriteTrace:
    """The highest revision the writes of one request made (read-your-writes tokens, see :func:`trace_writes`)."""

    __slots__ = ("revision",)

    def __init__(self) -> None:
        self.revision = 0


_trace: contextvars.ContextVar[WriteTrace | None] = contextvars.ContextVar("strongroom_write_trace", default=None)


def trace_writes() -> WriteTrace:
    """Record, from now on in this task (and the tasks it starts), the revision of every store write.

    The node's listener starts one per request and hands the revision to the client with the
    reply: the client sends it back with its next requests, to any node, and a node whose
    cache is behind it waits for its watch to get there first (read-your-writes without a
    store query per call: :meth:`strongroom.objects.repository.ObjectRepository.caught_up`).
    """
    trace = WriteTrace()
    _trace.set(trace)
    return trace


def note_write(revision: int) -> int:
    """Record ``revision`` as written by the current request (for writes that bypass :meth:`Store.commit`)."""
    trace = _trace.get()
    if trace is not None and revision > trace.revision:
        trace.revision = revision
    return revision


class Store(abc.ABC):
    """A strongly consistent key/value store with revisions."""

    @abc.abstractmethod
    async def get(self, key: str) -> Record | None: ...

    async def put(self, key: str, value: bytes, expect: int | None = None) -> int:
        """Write ``key``; returns the new store revision. Raises :class:`ConflictError`."""
        operation = Put(key, bytes(value), expect)
        validate_operation(operation)
        return note_write(await self._apply([operation]))

    async def delete(self, key: str, expect: int | None = None) -> int:
        """Delete ``key``; returns the new store revision (the current one if nothing was deleted)."""
        operation = Delete(key, expect)
        validate_operation(operation)
        return note_write(await self._apply([operation]))

    async def commit(self, operations: Sequence[Operation]) -> int:
        """Apply all operations atomically, or none; returns the new revision.

        Raises :class:`ConflictError` naming the first key whose comparison failed,
        and :class:`ValueError` for an empty list, more than
        :data:`MAX_COMMIT_OPERATIONS` operations, or a key named twice.
        """
        operations = list(operations)
        validate_commit(operations)
        return note_write(await self._apply(operations))

    @abc.abstractmethod
    async def _apply(self, operations: list[Operation]) -> int:
        """Apply already validated operations atomically (the backend's one write path)."""

    @abc.abstractmethod
    async def list_prefix(self, prefix: str) -> Listing:
        """Every record whose key starts with ``prefix``, sorted by key, at one revision."""

    @abc.abstractmethod
    def watch(self, prefix: str, start_revision: int) -> AsyncIterator[WatchEvent]:
        """Changes to keys under ``prefix`` from ``start_revision`` (inclusive) on, in order.

        A backend may skip a put that a later change of the same key replaced (SQLite keeps no old
        values, so it cannot report them): deletes, and the latest value of every key, always arrive.

        Raises :class:`CompactedError` (from the iterator) when ``start_revision``
        is older than what the store keeps.
        """

    @abc.abstractmethod
    async def revision(self) -> int:
        """The current store revision (0 for an empty, never-written store)."""

    def poll_now(self) -> None:
        """A watcher of this process is known to be behind: look for changes now (a polling backend).

        A store that pushes its changes (etcd) has nothing to do.
        """
        return None

    @abc.abstractmethod
    async def close(self) -> None: ...

    def enable_integrity(self, key: bytes) -> None:
        """Authenticate the store's own bookkeeping (versions, history) with ``key`` from now on.

        Called by the node once it holds the cluster key (``key`` is derived from it). A backend
        whose bookkeeping an attacker cannot rewrite (etcd: versions are kept by etcd's Raft log)
        ignores it; one whose file anyone may edit (SQLite) must refuse a record copied back from
        an earlier state.
        """
        return None


def prefix_end(prefix: str) -> str:
    """The smallest key greater than every key that starts with ``prefix`` (etcd's range_end)."""
    if not prefix:
        return "\U0010ffff"
    return prefix[:-1] + chr(ord(prefix[-1]) + 1)


def validate_commit(operations: list[Operation]) -> None:
    if not operations:
        raise ValueError("a commit needs at least one operation")
    if len(operations) > MAX_COMMIT_OPERATIONS:
        raise ValueError(f"a commit takes at most {MAX_COMMIT_OPERATIONS} operations, got {len(operations)}")
    seen: set[str] = set()
    for op in operations:
        validate_operation(op)
        if op.key in seen:
            raise ValueError(f"key {op.key!r} appears twice in one commit")
        seen.add(op.key)


def validate_operation(op: Operation) -> None:
    if not isinstance(op, (Put, Delete, Check)):
        raise TypeError(f"not a store operation: {op!r}")
    if not isinstance(op.key, str) or not op.key:
        raise ValueError("a key must be a non-empty string")
    if op.expect is not None and (not isinstance(op.expect, int) or op.expect < 0):
        raise ValueError(f"expect must be None or a revision >= 0, got {op.expect!r}")
    if isinstance(op, Check) and op.expect is None:
        raise ValueError("a Check needs an expected revision")
