"""``audit.*``: what the nodes recorded about their audit logs (no login: the operator's tool reads it)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from strongroom.audit.heads import HEADS_PREFIX
from strongroom.audit.outcomes import OBJECTS_PREFIX
from strongroom.dispatch.call import Call
from strongroom.dispatch.table import AGENT, OPERATOR, operation
from strongroom.errors import ArgumentsBad
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


#: Keys asked about in one audit.objects request.
MAX_OBJECT_KEYS = 512


@dataclass
class ObjectsArgs:
    keys: list[Any]


@operation("audit.objects", args=ObjectsArgs, states=(ACTIVE,), peers=(AGENT, OPERATOR))
async def objects(call: Call, args: ObjectsArgs) -> dict[str, Any]:
    """Which of the given object records (``objects/<handle>``) exist now.

    ``strongroom audit verify --dir`` checks with it that every ``ok`` creation in the logs names an
    object that exists or that a later act removed (strongroom.audit.outcomes). Only handles, asked
    for by the caller: nothing of the objects themselves.
    """
    if len(args.keys) > MAX_OBJECT_KEYS:
        raise ArgumentsBad(f"at most {MAX_OBJECT_KEYS} keys per request")
    asked = {key for key in args.keys if isinstance(key, str) and key.startswith(OBJECTS_PREFIX)}
    listing = await call.services.keyring.require_barrier().store.list_prefix(OBJECTS_PREFIX)
    return {"exists": sorted(asked & {record.key for record in listing.records})}
