"""``audit.*``: what the nodes recorded about their audit logs (no login: the operator's tool reads it)."""

from __future__ import annotations

from typing import Any

from strongroom.audit.heads import HEADS_PREFIX
from strongroom.dispatch.call import Call
from strongroom.dispatch.table import AGENT, OPERATOR, operation
from strongroom.services.state import ACTIVE, INITIALIZE_IN_PROGRESS, INITIALIZED


@operation("audit.heads", states=(INITIALIZE_IN_PROGRESS, INITIALIZED, ACTIVE), peers=(AGENT, OPERATOR))
async def heads(call: Call, _args: None) -> dict[str, Any]:
    """The last audit head (seq, hash, boot, first record's hash) each node recorded in the store.

    ``strongroom audit verify --dir`` compares the logs with them: a log that ends
    before its recorded head, or holds another record there, was truncated or rewritten.
    Only hashes and counters: nothing of the logs' content.
    """
    entries, _revision = await call.services.keyring.require_barrier().list_prefix(HEADS_PREFIX)
    result = []
    for entry in entries:
        value = entry.value
        result.append({"node": entry.key[len(HEADS_PREFIX):], "seq": int(value["seq"]), "hash": str(value["hash"]),
                       "boot": int(value.get("boot", 0)), "first": str(value.get("first", "")),
                       "time": value.get("time")})
    return {"heads": result, "answered_by": call.services.config.node_id}
