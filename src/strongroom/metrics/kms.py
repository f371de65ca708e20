"""The KMS gateway's metrics: each API request by operation and outcome, and its latency."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

from strongroom.metrics import labels, names, registry, server
from strongroom.metrics.settings import MetricsSettings

_OPERATIONS = labels.BoundedLabel(re.compile(r"[A-Z][A-Za-z]{1,60}"))
_CODES = labels.BoundedLabel(re.compile(r"[A-Za-z.]{1,80}"))
TARGET_PREFIX = "TrentService."
_tasks: set[asyncio.Task[None]] = set()


async def timed(target: str | None, handled: Awaitable[tuple[int, dict[str, Any]]]) -> tuple[int, dict[str, Any]]:
    """Serve one request (``handled``: the gateway's answer to come), counting it by the operation its
    X-Amz-Target names and by outcome (``ok`` or the AWS error code)."""
    start = time.perf_counter()
    status, body = await handled
    operation = _OPERATIONS((target or "").removeprefix(TARGET_PREFIX) if target else "")
    outcome = "ok" if status == 200 else _CODES(body.get("__type") if isinstance(body, dict) else None)
    metrics = names.kms()
    metrics.kms_requests.labels(operation, outcome).inc()
    metrics.kms_request_seconds.labels(operation).observe(time.perf_counter() - start)
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
