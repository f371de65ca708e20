"""The event loop the node's workers and the agent run on: uvloop (libuv, its TLS in Cython) when
it is installed, else asyncio's own. ``STRONGROOM_EVENT_LOOP=asyncio`` forces asyncio's (to compare,
or to rule the loop out when something misbehaves); bench/README.md has the measurements."""

from __future__ import annotations

import asyncio
import importlib
import os
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")
ENVIRONMENT = "STRONGROOM_EVENT_LOOP"


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's ``new_event_loop`` unless asyncio's loop is asked for or uvloop is missing."""
    if os.environ.get(ENVIRONMENT, "uvloop").strip().lower() == "asyncio":
        return None
    try:
        uvloop = importlib.import_module("uvloop")
    except ImportError:
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def run(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(main)`` on the loop :func:`loop_factory` picks."""
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        return runner.run(main)
