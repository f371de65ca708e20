"""Backups as a node makes them: one consistent snapshot of the encrypted store, signed by the cluster.

A node reads every record of the store at one revision (records stay as the
barrier encrypted them: the backup is useless without the cluster key), wraps
them with the cluster's metadata, a SHA-256 over the whole and a signature by the
cluster identity key (:mod:`strongroom.services.identity`). Key pairs are committed
in one store transaction, so a snapshot holds both halves or neither.

Automatic backups (:func:`run_scheduler`, on one worker of every node that has a
backup directory): one after activation, one after each change of membership,
and one every ``interval_hours``. ``backup/last`` records the newest backup; a
node writes its file only after winning the compare-and-swap on that record, so
several nodes never write the same scheduled backup twice. Retention then
deletes old files, never the newest.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
import uuid
from dataclasses import asdict
from typing import Any

from strongroom.backup import BackupCatalog, BackupHeader, BackupRecord, encode_backup
from strongroom.barrier import Write
from strongroom.services import registry
from strongroom.services.identity import IDENTITY_KEY, ClusterIdentity
from strongroom.store.base import ConflictError, StoreError

log = logging.getLogger(__name__)

LAST_BACKUP_KEY = "backup/last"
SIGNATURE_ALGORITHM = "ecdsa-p384-prehashed-sha256"
META_KEY = "cluster/meta"


class BackupRefused(Exception):
    """The cluster cannot be backed up now (not initialized, store unavailable)."""


async def produce_backup(services: Any, trigger: str) -> tuple[BackupHeader, bytes, dict[str, Any]]:
    """Snapshot the store; returns the header, the file's bytes and the ``backup/last`` value to record."""
    barrier = services.require_barrier()
    listing = await barrier.snapshot()
    by_key = {record.key: record for record in listing.records}
    if META_KEY not in by_key or IDENTITY_KEY not in by_key:
        raise BackupRefused("the store holds no initialized cluster")
    meta = barrier.decode(by_key[META_KEY]).value
    identity = ClusterIdentity.from_record(barrier.decode(by_key[IDENTITY_KEY]).value)
    members = registry.membership(await registry.nodes(barrier))
    header = BackupHeader(
        backup_id=str(uuid.uuid4()),
        cluster_id=str(meta["cluster_id"]),
        cluster_name=str(meta.get("name", "")),
        created=time.time(),
        revision=listing.revision,
        node_id=services.config.node_id,
        trigger=trigger,
        record_count=len(listing.records),
        trust_anchor_fingerprint=meta.get("trust_anchor_fingerprint"),
        cluster_certificate_pem=meta.get("cluster_certificate"),
        signature_algorithm=SIGNATURE_ALGORITHM,
    )
    records = [BackupRecord(r.key, r.value, r.version) for r in listing.records]
    data = await asyncio.to_thread(encode_backup, header, records, identity.sign_digest)
    last = {"backup_id": header.backup_id, "created": header.created, "revision": header.revision,
            "trigger": trigger, "node_id": header.node_id, "size": len(data),
            "sha256": hashlib.sha256(data).hexdigest(), "membership": members,
            "activated": meta.get("activated")}
    return header, data, last


async def record_last(services: Any, last: dict[str, Any], previous: Any) -> bool:
    """Record ``last`` as the newest backup unless another one was recorded since ``previous`` was read."""
    try:
        await services.require_barrier().commit([Write(LAST_BACKUP_KEY, last, previous)])
    except ConflictError:
        return False
    return True


async def due(services: Any, now: float) -> str | None:
    """Why an automatic backup is due now (its trigger), or None."""
    barrier = services.require_barrier()
    meta = await barrier.get(META_KEY)
    if meta is None or meta.value.get("state") != "active":
        return None
    last = await barrier.get(LAST_BACKUP_KEY)
    if last is None:
        return "activation"
    value = last.value
    activated = meta.value.get("activated")
    if activated is not None and value.get("activated") != activated:
        return "activation"
    if registry.membership(await registry.nodes(barrier)) != value.get("membership"):
        return "membership"
    if now - float(value.get("created", 0)) >= services.config.backup.interval_hours * 3600:
        return "scheduled"
    return None


async def take_automatic_backup(services: Any, trigger: str) -> dict[str, Any] | None:
    """Make, record and write one automatic backup; None if another node recorded one first."""
    policy = services.config.backup
    previous = await services.require_barrier().get(LAST_BACKUP_KEY)
    header, data, last = await produce_backup(services, trigger)
    if not await record_last(services, last, previous):
        return None
    catalog = BackupCatalog(policy.dir)
    path = await asyncio.to_thread(catalog.write, data, header)
    removed = await asyncio.to_thread(catalog.apply_retention, header.cluster_id, policy.retention_days)
    await services.audit("backup.create", actor=None,
                         details={"backup_id": header.backup_id, "trigger": trigger, "revision": header.revision,
                                  "file": str(path), "retention_deleted": [e.backup_id for e in removed]})
    log.info("automatic backup %s (%s) written to %s", header.backup_id, trigger, path)
    return dict(asdict(header), path=str(path))


async def run_scheduler(services: Any) -> None:
    """Check every ``check_seconds`` whether an automatic backup is due; never raises."""
    policy = services.config.backup
    while True:
        await asyncio.sleep(policy.check_seconds)
        if services.error is not None or not services.has_cluster_key():
            continue
        try:
            trigger = await due(services, time.time())
            if trigger is not None:
                await take_automatic_backup(services, trigger)
        except asyncio.CancelledError:
            raise
        except (StoreError, BackupRefused, OSError) as exc:
            log.warning("automatic backup not taken: %s", exc)
        except Exception:  # noqa: BLE001 - the scheduler must outlive any one failure
            log.exception("automatic backup failed")
