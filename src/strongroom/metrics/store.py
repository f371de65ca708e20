"""Store latency and errors, and the etcd elections a node sees: decorators on the one method each
backend sends every request through (``SqliteStore._call``, ``EtcdStore._request``)."""

from __future__ import annotations

import functools
import time
from collections.abc import Awaitable, Callable
from typing import Any, ParamSpec, TypeVar

from strongroom.metrics import names

P = ParamSpec("P")
T = TypeVar("T")

#: The highest raft term this process saw, and whether it counts elections (one worker per node does,
#: so that a node's workers do not count each election once each).
_term = {"seen": 0}
_counting = {"elections": True}


def count_elections(enabled: bool) -> None:
    _counting["elections"] = enabled


def _request_name(what: object) -> str:
    if isinstance(what, str):  # an etcd gateway path: /v3/kv/range -> kv.range
        return what.removeprefix("/v3/").replace("/", ".")[:32] or "other"
    name = getattr(what, "__name__", "other")  # a SqliteStore method run on its thread: _get -> get
    return str(name).lstrip("_")[:32]


def seen_raft_term(term: int) -> None:
    """An etcd answer's ``header.raft_term``: each increase is an election (a new leader, or a try)."""
    previous = _term["seen"]
    if term <= previous:
        return
    _term["seen"] = term
    metrics = names.node()
    metrics.etcd_raft_term.set(term)
    if previous and _counting["elections"]:
        metrics.etcd_leader_changes.inc(term - previous)


def _raft_term(answer: Any) -> int | None:
    header = answer.get("header") if isinstance(answer, dict) else None
    term = header.get("raft_term") if isinstance(header, dict) else None
    try:
        return None if term is None else int(term)
    except (TypeError, ValueError):
        return None


def timed(backend: str) -> Callable[[Callable[P, Awaitable[T]]], Callable[P, Awaitable[T]]]:
    """Time each request through the decorated method (its first argument after ``self`` names the
    request), count the ones that raise, and follow etcd's raft term in the answers."""

    def decorate(method: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
        @functools.wraps(method)
        async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
            start = time.perf_counter()
            metrics = names.node()
            request = _request_name(args[1] if len(args) > 1 else None)
            try:
                result = await method(*args, **kwargs)
            except BaseException as exc:
                metrics.store_errors.labels(backend, type(exc).__name__).inc()
                raise
            finally:
                metrics.store_seconds.labels(backend, request).observe(time.perf_counter() - start)
            term = _raft_term(result)
            if term is not None:
                seen_raft_term(term)
            return result

        return wrapper

    return decorate
