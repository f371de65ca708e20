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
