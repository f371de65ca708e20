"""Backends for the store conformance suite.

Every test takes ``store_factory``, parametrized over :data:`BACKENDS`. To run the
suite against another backend, add a :class:`StoreBackend` subclass to
:data:`BACKENDS`; skip in its constructor when the service is not available.

The etcd backend shares one single-member etcd (started on first use, once per
test session) between all tests; each test gets a namespace of its own and a
``revision_base`` equal to etcd's revision when the test began, so that to the
test the store looks new (revision 0, first write at revision 1). That relies on
tests running one at a time against it, as they do.
"""

from __future__ import annotations

import abc
import asyncio
import uuid
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import pytest

from strongroom.store.base import Store
from strongroom.store.sqlite import SqliteStore
from tests.etcd_cluster import EtcdCluster, require_etcd

_T = TypeVar("_T")


class StoreBackend(abc.ABC):
    """One backing store (a file, an etcd namespace) that tests open clients on.

    The backend owns the event loop of the test, so stores are opened, used and
    closed on one loop (which loop-bound clients such as gRPC channels require).
    """

    name: ClassVar[str]
    #: Keeps no old values: a watch skips a put that a later change of the same key superseded.
    coalesces_watch: ClassVar[bool] = False

    def __init__(self, runner: asyncio.Runner, tmp_path: Path, request: pytest.FixtureRequest) -> None:
        self._runner = runner
        self._opened: list[Store] = []

    def run(self, coro: Coroutine[Any, Any, _T]) -> _T:
        return self._runner.run(coro)

    async def open(self) -> Store:
        """A new client on the shared data, as another worker process would have."""
        store = await self._open()
        self._opened.append(store)
        return store

    async def aclose(self) -> None:
        for store in reversed(self._opened):
            await store.close()

    @abc.abstractmethod
    async def _open(self) -> Store: ...

    @abc.abstractmethod
    async def compact(self, store: Store, revision: int) -> None:
        """Make the backend forget watch history at and below ``revision``."""

    @abc.abstractmethod
    def child_prelude(self) -> str:
        """Python source defining ``async def open_store() -> Store`` for another process."""


class SqliteBackend(StoreBackend):
    name = "sqlite"
    coalesces_watch = True

    def __init__(self, runner: asyncio.Runner, tmp_path: Path, request: pytest.FixtureRequest) -> None:
        super().__init__(runner, tmp_path, request)
        self.path = tmp_path / "store.db"

    async def _open(self) -> Store:
        # A short poll keeps cross-instance watch tests fast; the default is 50 ms.
        return await SqliteStore.open(self.path, watch_poll_interval=0.01)

    async def compact(self, store: Store, revision: int) -> None:
        assert isinstance(store, SqliteStore)
        await store.compact(revision)

    def child_prelude(self) -> str:
        return (
            "from strongroom.store.sqlite import SqliteStore\n"
            "async def open_store():\n"
            f"    return await SqliteStore.open({str(self.path)!r})\n"
        )


class SqliteIntegrityBackend(SqliteBackend):
    """SQLite with the store-integrity key, as every node opens it: the same contract, every row checked."""

    name = "sqlite-integrity"
    key = b"\x5c" * 32

    async def _open(self) -> Store:
        store = await super()._open()
        store.enable_integrity(self.key)
        return store

    def child_prelude(self) -> str:
        return (
            "from strongroom.store.sqlite import SqliteStore\n"
            "async def open_store():\n"
            f"    store = await SqliteStore.open({str(self.path)!r})\n"
            f"    store.enable_integrity({self.key!r})\n"
            "    return store\n"
        )


class EtcdBackend(StoreBackend):
    """A fresh namespace on the session's single-member etcd (see the module docstring)."""

    name = "etcd"

    def __init__(self, runner: asyncio.Runner, tmp_path: Path, request: pytest.FixtureRequest) -> None:
        super().__init__(runner, tmp_path, request)
        cluster: EtcdCluster = request.getfixturevalue("etcd_session_cluster")
        self.endpoints = cluster.endpoints
        self.namespace = f"/strongroom-test/{uuid.uuid4().hex}/"
        self.revision_base = self.run(self._etcd_revision())

    async def _etcd_revision(self) -> int:
        from strongroom.store.etcd import EtcdStore

        store = EtcdStore(self.endpoints, namespace=self.namespace)
        try:
            return await store.revision()
        finally:
            await store.close()

    def _options(self) -> dict[str, Any]:
        return {"namespace": self.namespace, "revision_base": self.revision_base}

    async def _open(self) -> Store:
        from strongroom.store.etcd import EtcdStore

        return await EtcdStore.open(self.endpoints, **self._options())

    async def compact(self, store: Store, revision: int) -> None:
        from strongroom.store.etcd import EtcdStore

        assert isinstance(store, EtcdStore)
        await store.compact(revision)

    def child_prelude(self) -> str:
        return (
            "from strongroom.store.etcd import EtcdStore\n"
            "async def open_store():\n"
            f"    return await EtcdStore.open({self.endpoints!r}, **{self._options()!r})\n"
        )


@pytest.fixture(scope="session")
def etcd_session_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    """One single-member etcd for the whole session, started on first use; skips without etcd."""
    require_etcd()
    with EtcdCluster(tmp_path_factory.mktemp("etcd-session"), size=1) as cluster:
        yield cluster


BACKENDS: dict[str, type[StoreBackend]] = {
    "sqlite": SqliteBackend,
    "sqlite-integrity": SqliteIntegrityBackend,
    "etcd": EtcdBackend,
}


@pytest.fixture(params=sorted(BACKENDS))
def store_factory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreBackend]:
    with asyncio.Runner() as runner:
        backend = BACKENDS[request.param](runner, tmp_path, request)
        try:
            yield backend
        finally:
            runner.run(backend.aclose())
