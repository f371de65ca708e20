"""``node.*``: health of this node (served without login, even in the error state) and its unsealing."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

from strongroom import __version__
from strongroom.dispatch.call import Call
from strongroom.dispatch.table import AGENT, EVERY_PEER, OPERATOR, error_reply, operation
from strongroom.errors import ActionProhibited, ArgumentsBad
from strongroom.services.state import ALL_STATES


@operation("node.status", states=ALL_STATES, in_error_state=True, peers=EVERY_PEER)
async def status(call: Call, _args: None) -> dict[str, Any]:
    services = call.services
    config = services.config
    problem = services.health.error
    seal = await services.keyring.seal_status()
    try:
        if problem:
            state = "error"
        elif not services.keyring.has_cluster_key() and seal.get("state") == "sealed":
            state, problem = "sealed", seal.get("detail")
        else:
            state = await services.state.current()
    except Exception as exc:  # noqa: BLE001 - status must describe any failure, not fail itself
        state, problem = "error", error_reply(exc, "node.status")[1]
    report = services.health.selftest
    return {
        "node_id": config.node_id,
        "zone": config.zone,
        "address": config.address,
        "version": __version__,
        "state": state,
        "cluster_state": None if state in ("error", "sealed") else state,
        "seal": seal,
        "cluster_id": services.keyring.cluster_id,
        "error": problem,
        "self_tests": {
            "passed": list(report.passed),
            "failed": [{"name": f.name, "reason": f.reason} for f in report.failed],
        },
        "boot": services.health.boot,
        "pid": os.getpid(),
        "uptime_seconds": round(time.time() - services.health.started, 3),
        "sessions": len(services.sessions.logins),
        "requests": services.health.counters["requests"],
        # Restarts and the last death of each worker (the supervisor starts a dead one again).
        "workers": await services.keyring.workers_status(),
        "audit_pending": services.audit.pending,
    }


@operation("node.metrics", states=ALL_STATES, peers=(AGENT, OPERATOR))
async def metrics(call: Call, _args: None) -> dict[str, Any]:
    """Operator metrics of this worker: counts only, never key material or labels.

    Crypto operations are counted per key handle rather than audited one by one.
    """
    services = call.services
    objects = services.keyring.objects
    return {
        "node_id": services.config.node_id,
        "pid": os.getpid(),
        "requests": services.health.counters["requests"],
        "errors": services.health.counters["errors"],
        "login_sessions": len(services.sessions.logins),
        "p11_sessions": len(services.sessions.p11),
        "token_objects": 0 if objects is None else len(objects.tokens),
        "session_objects": 0 if objects is None else len(objects.sessions),
        "crypto_operations": sum(services.health.key_use.values()),
        "crypto_operations_by_key": {str(handle): count for handle, count in services.health.key_use.most_common(100)},
    }


# --- unsealing a node with a shares seal (strongroom unseal; see strongroom.seal.shares) -------------

#: Custodians use the operator's tool or an application host's; never a node certificate.
UNSEALERS = (AGENT, OPERATOR)


async def _ask_supervisor(call: Call, kind: str, **fields: Any) -> dict[str, Any]:
    services = call.services
    if not services.supervisor.attached:
        raise ActionProhibited("this node runs without a supervisor: nothing to unseal")
    reply = await services.supervisor.request(kind, **fields)
    if reply.get("error"):
        raise ArgumentsBad(str(reply["error"]))
    return reply


@operation("node.unseal_begin", states=ALL_STATES, peers=UNSEALERS)
async def unseal_begin(call: Call, _args: None) -> dict[str, Any]:
    """The current unseal attempt: its id, the supervisor's one-time X25519 key, the progress."""
    return dict((await _ask_supervisor(call, "unseal_begin"))["attempt"])


@dataclass
class UnsealSubmitArgs:
    attempt_id: str
    sender_public: bytes
    nonce: bytes
    #: The custodian's decrypted share, in a sealed box to the attempt's key (a few hundred bytes).
    ciphertext: bytes


@operation("node.unseal_submit", args=UnsealSubmitArgs, states=ALL_STATES, peers=UNSEALERS)
async def unseal_submit(call: Call, args: UnsealSubmitArgs) -> dict[str, Any]:
    if len(args.ciphertext) > 8192 or len(args.sender_public) != 32 or len(args.attempt_id) > 64:
        raise ArgumentsBad("malformed unseal submission")
    reply = await _ask_supervisor(call, "unseal_submit", attempt_id=args.attempt_id,
                                  sender_public=args.sender_public, nonce=args.nonce, ciphertext=args.ciphertext)
    return {"unsealed": bool(reply["unsealed"]), "submitted": reply["submitted"], "threshold": reply["threshold"],
            "node_id": call.services.config.node_id}
