"""``node.*``: health of this node; served without login, even in the error state."""

from __future__ import annotations

import os
import time
from typing import Any

from strongroom import __version__
from strongroom.dispatch.table import ALL_STATES, error_reply, operation


@operation("node.status", states=ALL_STATES, in_error_state=True)
async def status(call: Any, _args: None) -> dict[str, Any]:
    services = call.services
    config = services.config
    problem = services.error
    try:
        state = "error" if problem else await services.cluster_state()
    except Exception as exc:  # noqa: BLE001 - status must describe any failure, not fail itself
        state, problem = "error", error_reply(exc, "node.status")[1]
    report = services.selftest
    return {
        "node_id": config.node_id,
        "zone": config.zone,
        "address": config.address,
        "version": __version__,
        "state": state,
        "cluster_state": None if state == "error" else state,
        "cluster_id": services.cluster_id,
        "error": problem,
        "self_tests": {
            "passed": list(report.passed),
            "failed": [{"name": f.name, "reason": f.reason} for f in report.failed],
        },
        "boot": services.boot,
        "pid": os.getpid(),
        "uptime_seconds": round(time.time() - services.started, 3),
        "sessions": len(services.sessions),
        "requests": services.counters["requests"],
    }


@operation("node.metrics", states=ALL_STATES)
async def metrics(call: Any, _args: None) -> dict[str, Any]:
    """Operator metrics of this worker: counts only, never key material or labels.

    Crypto operations are counted per key handle rather than audited one by one.
    """
    services = call.services
    objects = services.objects
    return {
        "node_id": services.config.node_id,
        "pid": os.getpid(),
        "requests": services.counters["requests"],
        "errors": services.counters["errors"],
        "login_sessions": len(services.sessions),
        "p11_sessions": len(services.p11),
        "token_objects": 0 if objects is None else len(objects.tokens),
        "session_objects": 0 if objects is None else len(objects.sessions),
        "crypto_operations": sum(services.key_use.values()),
        "crypto_operations_by_key": {str(handle): count for handle, count in services.key_use.most_common(100)},
    }
