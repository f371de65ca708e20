"""Audit log appends and the fsync each one waits for."""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable
from typing import ParamSpec, TypeVar

from strongroom.metrics import names

P = ParamSpec("P")
T = TypeVar("T")


def counted(append: Callable[P, T]) -> Callable[P, T]:
    """Count each append by outcome: ``ok``, or ``failed`` (the operation it records fails with it)."""

    @functools.wraps(append)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            result = append(*args, **kwargs)
        except Exception:
            names.node().audit_appends.labels("failed").inc()
            raise
        names.node().audit_appends.labels("ok").inc()
        return result

    return wrapper


def fsync(fd: int) -> None:
    """``os.fsync``, timed."""
    start = time.perf_counter()
    try:
        os.fsync(fd)
    finally:
        names.node().audit_fsync_seconds.observe(time.perf_counter() - start)
