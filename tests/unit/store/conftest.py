"""Backends for the store conformance suite.

Every test takes ``store_factory``, parametrized over :data:`BACKENDS`. To run the
suite against another backend (etcd), add a :class:`StoreBackend` subclass to
:data:`BACKENDS`; skip in its constructor when the service is not available.
"""

from __future__ import annotations

import abc
import asyncio
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import pytest

from strongroom.store.base import Store
from strongroom.store.sqlite import SqliteStore

_T = TypeVar("_T")


class StoreBackend(abc.ABC):
    """One backing store (a file, an etcd namespace) that tests open clients on.

    The backend owns the event loop of the test, so stores are opened, used and
    closed on one loop (which loop-bound clients such as gRPC channels require).
    """

    name: ClassVar[str]

    def __init__(self, runner: asyncio.Runner, tmp_path: Path) -> None:
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

    def __init__(self, runner: asyncio.Runner, tmp_path: Path) -> None:
        super().__init__(runner, tmp_path)
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


BACKENDS: dict[str, type[StoreBackend]] = {"sqlite": SqliteBackend}


@pytest.fixture(params=sorted(BACKENDS))
def store_factory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreBackend]:
    with asyncio.Runner() as runner:
        backend = BACKENDS[request.param](runner, tmp_path)
        try:
            yield backend
        finally:
            runner.run(backend.aclose())
