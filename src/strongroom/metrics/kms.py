"""The KMS gateway's metrics: each API request by operation and outcome, and its latency."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

from prometheus_client import Counter, Histogram

from strongroom.metrics import labels, names, registry, server
from strongroom.metrics.settings import MetricsSettings

_OPERATIONS = labels.BoundedLabel(re.compile(r"[A-Z][A-Za-z]{1,60}"))
_CODES = labels.BoundedLabel(re.compile(r"[A-Za-z.]{1,80}"))
TARGET_PREFIX = "TrentService."
_tasks: set[asyncio.Task[None]] = set()


#: Label children by the request's own values, as the agent's (``labels()`` takes a lock and validates on every
#: call). A client chooses its X-Amz-Target, so the cache stops growing at CACHE_LIMIT (then ``labels()`` each time).
_counted: dict[tuple[str, bool, str | None], tuple[Counter, Histogram]] = {}
CACHE_LIMIT = 1024
#: Longer X-Amz-Target values (no operation's is) are not kept: the cache holds at most ~100 KiB of them.
TARGET_CACHED_MAX = 96


def _children(target: str, ok: bool, code: str | None) -> tuple[Counter, Histogram]:
    """``code``: the AWS error code of a failed request (None when its answer names none)."""
    children = _counted.get((target, ok, code))
    if children is None:
        metrics = names.kms()
        operation = _OPERATIONS(target.removeprefix(TARGET_PREFIX))
        outcome = "ok" if ok else _CODES(code)
        children = metrics.kms_requests.labels(operation, outcome), metrics.kms_request_seconds.labels(operation)
        if len(_counted) < CACHE_LIMIT and len(target) <= TARGET_CACHED_MAX:
            _counted[(target, ok, code)] = children
    return children


async def timed(target: str | None, handled: Awaitable[tuple[int, dict[str, Any]]]) -> tuple[int, dict[str, Any]]:
    """Serve one request (``handled``: the gateway's answer to come), counting it by the operation its
    X-Amz-Target names and by outcome (``ok`` or the AWS error code)."""
    start = time.perf_counter()
    status, body = await handled
    code = body.get("__type") if status != 200 and isinstance(body, dict) else None
    counter, histogram = _children(target or "", status == 200, code if isinstance(code, str) else None)
    counter.inc()
    histogram.observe(time.perf_counter() - start)
    return status, body


async def _serve(settings: MetricsSettings, tls_cert: Path | None) -> None:
    certs = [] if tls_cert is None else [("kms gateway", tls_cert)]
    extra = [registry.info_metric("kms", {}), registry.certificate_metrics(lambda: certs)]
    names.kms()
    listener = await server.start(settings, registry.serving_registry(extra))
    if listener is None:
        return
    try:
        await asyncio.Event().wait()
    finally:
        await listener.stop()


def start(settings: MetricsSettings, tls_cert: Path | None) -> None:
    """In the gateway's loop: serve /metrics until the loop ends (no-op without ``[metrics] listen``)."""
    if settings.listen is None:
        return
    task = asyncio.get_running_loop().create_task(_serve(settings, tls_cert))
    _tasks.add(task)
    task.add_done_callback(_tasks.discard)
