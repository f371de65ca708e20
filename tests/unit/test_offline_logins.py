"""Logins while the store has no quorum (issue 14, item 4): available, with a bounded per-node lockout
that is written to the store once it takes writes again (strongroom.auth.offline)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from strongroom.auth.offline import OfflineCounts, OfflineLockout
from strongroom.auth.users import MAX_FAILED_LOGINS, Role, UserDirectory
from strongroom.barrier import Barrier
from strongroom.errors import PinIncorrect, PinLocked
from strongroom.store.base import Listing, Operation, Record, Store, UnavailableError, WatchEvent
from strongroom.store.sqlite import SqliteStore

PASSWORD = "correct-horse"


class QuorumStore(Store):
    """A real store that can lose its quorum: every request then fails as etcd's does without a leader."""

    def __init__(self, inner: SqliteStore) -> None:
        self.inner = inner
        self.down = False

    def _check(self) -> None:
        if self.down:
            raise UnavailableError("the etcd cluster has no leader (lost quorum: too few members are up)")

    async def get(self, key: str) -> Record | None:
        self._check()
        return await self.inner.get(key)

    async def _apply(self, operations: list[Operation]) -> int:
        self._check()
        return await self.inner.commit(operations)

    async def list_prefix(self, prefix: str) -> Listing:
        self._check()
        return await self.inner.list_prefix(prefix)

    def watch(self, prefix: str, start_revision: int) -> AsyncIterator[WatchEvent]:
        return self.inner.watch(prefix, start_revision)

    async def revision(self) -> int:
        self._check()
        return await self.inner.revision()

    async def close(self) -> None:
        await self.inner.close()


class SharedChannel:
    """Two workers' channels to one supervisor: the node's one counter."""

    def __init__(self, counts: OfflineCounts) -> None:
        self._counts = counts

    @property
    def attached(self) -> bool:
        return True

    async def request(self, kind: str, **fields: Any) -> dict[str, Any]:
        answer = self._counts.answer(kind, fields)
        assert answer is not None
        return answer


def run(tmp_path: Path, body: Callable[[QuorumStore, Barrier], Awaitable[None]]) -> None:
    async def main() -> None:
        store = QuorumStore(await SqliteStore.open(tmp_path / "store.db"))
        try:
            await body(store, Barrier(store, bytearray(b"\x42" * 32)))
        finally:
            await store.close()

    asyncio.run(main())


def test_a_user_logs_in_while_the_store_has_no_quorum(tmp_path: Path) -> None:
    async def body(store: QuorumStore, barrier: Barrier) -> None:
        users = UserDirectory(barrier)
        await users.create("alice", Role.CRYPTO_USER, PASSWORD)
        await users.list()  # what the users watch keeps: the records as last seen
        store.down = True
        # The old directory read and counted in the store first: UnavailableError, no login at all.
        user = await users.authenticate("alice", PASSWORD)
        assert user.name == "alice"
        with pytest.raises(PinIncorrect):
            await users.authenticate("alice", "wrong-password")
        with pytest.raises(PinIncorrect):  # a user never seen here cannot log in offline
            await users.authenticate("nobody", PASSWORD)

    run(tmp_path, body)


def test_offline_guesses_are_bounded_per_node_and_written_back_when_quorum_returns(tmp_path: Path) -> None:
    async def body(store: QuorumStore, barrier: Barrier) -> None:
        counts = OfflineCounts()  # the node's supervisor
        worker_a = UserDirectory(barrier, OfflineLockout(SharedChannel(counts)))
        worker_b = UserDirectory(barrier, OfflineLockout(SharedChannel(counts)))
        await worker_a.create("bob", Role.CRYPTO_USER, PASSWORD)
        with pytest.raises(PinIncorrect):
            await worker_a.authenticate("bob", "wrong-once")  # counted online: 1 in the record
        await worker_a.list()
        await worker_b.list()
        store.down = True
        guesses = 0
        for directory in (worker_a, worker_b) * 3:  # the node's workers share one counter
            with pytest.raises(PinIncorrect):
                await directory.authenticate("bob", f"guess-{guesses}")
            guesses += 1
        # This node checked MAX - 1 wrong guesses (one failure was known already) and refused the rest
        # unchecked; now even the right password is refused here.
        uid = await _uid(store, barrier, "bob")
        assert counts.pending() == [("bob", uid, MAX_FAILED_LOGINS - 1)]
        with pytest.raises(PinIncorrect):
            await worker_b.authenticate("bob", PASSWORD)
        store.down = False
        assert await worker_a.reconcile() == 1
        record = await worker_a.get("bob")
        assert record is not None and record.failed_logins == MAX_FAILED_LOGINS
        assert counts.pending() == []
        with pytest.raises(PinLocked):  # locked as if every attempt had been counted online
            await worker_a.authenticate("bob", PASSWORD)
        assert guesses > MAX_FAILED_LOGINS - 1

    run(tmp_path, body)


def test_a_right_password_offline_takes_back_its_own_attempt_only(tmp_path: Path) -> None:
    async def body(store: QuorumStore, barrier: Barrier) -> None:
        users = UserDirectory(barrier)
        await users.create("carol", Role.CRYPTO_USER, PASSWORD)
        await users.list()
        store.down = True
        for _ in range(2):
            with pytest.raises(PinIncorrect):
                await users.authenticate("carol", "wrong-password")
        await users.authenticate("carol", PASSWORD)
        store.down = False
        await users.reconcile()
        record = await users.get("carol")
        assert record is not None and record.failed_logins == 2  # nothing written offline was reset
        assert record.failed_logins < MAX_FAILED_LOGINS

    run(tmp_path, body)


async def _uid(store: QuorumStore, barrier: Barrier, name: str) -> str:
    was, store.down = store.down, False
    try:
        user = await UserDirectory(barrier).get(name)
        assert user is not None
        return user.uid
    finally:
        store.down = was


@pytest.mark.parametrize("offline", [False, True], ids=["online", "offline"])
def test_concurrent_logins_with_the_right_password_do_not_lock_the_user(tmp_path: Path, offline: bool) -> None:
    """Ten applications of one user logging in at once (what a restarted agent does): every attempt is counted
    before its password is checked, and the old check took the attempts of the others for failures
    (CKR_PIN_LOCKED, seen in the soak run; offline, the refused ones even stayed counted)."""
    async def body(store: QuorumStore, barrier: Barrier) -> None:
        users = UserDirectory(barrier, OfflineLockout(SharedChannel(OfflineCounts())))
        await users.create("dora", Role.CRYPTO_USER, PASSWORD)
        await users.list()
        store.down = offline
        results = await asyncio.gather(*(users.authenticate("dora", PASSWORD) for _ in range(10)),
                                       return_exceptions=True)
        assert [type(r).__name__ for r in results] == ["User"] * 10
        store.down = False
        await users.reconcile()
        record = await users.get("dora")
        assert record is not None and record.failed_logins == 0

    run(tmp_path, body)
