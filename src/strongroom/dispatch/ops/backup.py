"""``backup.*``: the operator takes a backup through a node, without any customer credential.

Only a certificate with the operator role reaches these operations (dispatch checks it and
audits a refusal): an application host's certificate never does.

The node makes the whole file (:func:`strongroom.services.backups.produce_backup`) and
keeps it in this worker's memory for a few minutes, while the operator's tool reads
it in chunks on the same connection (a backup is larger than a frame). What the
operator receives is ciphertext records, the cluster's public metadata and a
signature: nothing that opens a key without the cluster key.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

from strongroom.dispatch.call import Call
from strongroom.dispatch.table import OPERATOR, operation
from strongroom.errors import ActionProhibited, ArgumentsBad, DeviceError
from strongroom.services.backups import LAST_BACKUP_KEY, BackupRefused, Pending, record_last
from strongroom.services.state import ACTIVE, INITIALIZED

STATES = (INITIALIZED, ACTIVE)
#: Largest chunk one backup.read returns (a frame is 2 MiB).
MAX_CHUNK = 1 << 20
#: A made backup stays readable this long, and at most this many are kept per worker.
PENDING_SECONDS = 600.0
MAX_PENDING = 4
TRIGGERS = ("manual",)


@dataclass
class CreateArgs:
    trigger: str = "manual"


@operation("backup.create", args=CreateArgs, states=STATES, peers=(OPERATOR,))
async def create(call: Call, args: CreateArgs) -> dict[str, Any]:
    services = call.services
    if args.trigger not in TRIGGERS:
        raise ArgumentsBad(f"trigger must be one of {', '.join(TRIGGERS)}")
    pending = services.backups.pending()
    if len(pending) >= MAX_PENDING:
        raise ActionProhibited(f"{MAX_PENDING} backups are already waiting to be read on this node; "
                               "read or release them first")
    previous = await services.keyring.require_barrier().get(LAST_BACKUP_KEY)
    try:
        header, data, last = await services.backups.produce(args.trigger)
    except BackupRefused as exc:
        raise DeviceError(str(exc)) from None
    # A manual backup counts as the newest one even if an automatic one raced it: both are complete.
    barrier = services.keyring.require_barrier()
    if not await record_last(barrier, last, previous):
        await record_last(barrier, last, await barrier.get(LAST_BACKUP_KEY))
    pending[header.backup_id] = Pending(data, time.monotonic() + PENDING_SECONDS)
    await services.audit.record("backup.create", actor=call.actor,
                                details={"backup_id": header.backup_id, "trigger": args.trigger,
                                         "revision": header.revision, "peer": call.peer_name})
    return {"header": asdict(header), "size": len(data), "sha256": last["sha256"], "chunk": MAX_CHUNK}


@dataclass
class ReadArgs:
    backup_id: str
    offset: int = 0
    length: int = MAX_CHUNK


@operation("backup.read", args=ReadArgs, states=STATES, peers=(OPERATOR,))
async def read(call: Call, args: ReadArgs) -> dict[str, Any]:
    entry = call.services.backups.pending().get(args.backup_id)
    if entry is None:
        raise ArgumentsBad(f"no backup {args.backup_id!r} is waiting on this connection's node worker "
                           "(expired after 10 minutes, or made on another node)")
    if not 0 <= args.offset <= len(entry.data) or not 1 <= args.length <= MAX_CHUNK:
        raise ArgumentsBad(f"offset must be within the backup ({len(entry.data)} bytes), length 1..{MAX_CHUNK}")
    return {"data": entry.data[args.offset : args.offset + args.length], "size": len(entry.data)}


@dataclass
class ReleaseArgs:
    backup_id: str


@operation("backup.release", args=ReleaseArgs, states=STATES, peers=(OPERATOR,))
async def release(call: Call, args: ReleaseArgs) -> dict[str, Any]:
    return {"released": call.services.backups.pending().pop(args.backup_id, None) is not None}
