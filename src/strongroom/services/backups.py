"""Backups as a node makes them: one consistent snapshot of the encrypted store, signed by the cluster.

A node reads every record of the store at one revision (records stay as the
barrier encrypted them: the backup is useless without the cluster key), wraps
them with the cluster's metadata, a SHA-256 over the whole and a signature by the
cluster identity key (:mod:`strongroom.services.identity`). Key pairs are committed
in one store transaction, so a snapshot holds both halves or neither.

Automatic backups (:meth:`Backups.run_scheduler`, on one worker of every node that has a
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
from dataclasses import asdict, dataclass
from typing import Any

from strongroom.backup import BackupCatalog, BackupHeader, BackupRecord, encode_backup
from strongroom.barrier import Barrier, Entry, Write
from strongroom.services import registry
from strongroom.services.auditor import Auditor
from strongroom.services.config import NodeConfig
from strongroom.services.health import Health
from strongroom.services.identity import IDENTITY_KEY, ClusterIdentity
from strongroom.services.keyring import ClusterKeyring
from strongroom.services.state import ACTIVE, CLUSTER_META_KEY
from strongroom.store.base import ConflictError, StoreError

log = logging.getLogger(__name__)

LAST_BACKUP_KEY = "backup/last"
SIGNATURE_ALGORITHM = "ecdsa-p384-prehashed-sha256"


class BackupRefused(Exception):
    """The cluster cannot be backed up now (not initialized, store unavailable)."""


async def produce_backup(barrier: Barrier, node_id: str, trigger: str) -> tuple[BackupHeader, bytes, dict[str, Any]]:
    """Snapshot the store; returns the header, the file's bytes and the ``backup/last`` value to record."""
    listing = await barrier.snapshot()
    by_key = {record.key: record for record in listing.records}
    if CLUSTER_META_KEY not in by_key or IDENTITY_KEY not in by_key:
        raise BackupRefused("the store holds no initialized cluster")
    meta = barrier.decode(by_key[CLUSTER_META_KEY]).value
    identity = ClusterIdentity.from_record(barrier.decode(by_key[IDENTITY_KEY]).value)
    members = registry.membership(await registry.nodes(barrier))
    header = BackupHeader(
        backup_id=str(uuid.uuid4()),
        cluster_id=str(meta["cluster_id"]),
        cluster_name=str(meta.get("name", "")),
        created=time.time(),
        revision=listing.revision,
        node_id=node_id,
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


async def record_last(barrier: Barrier, last: dict[str, Any], previous: Entry | None) -> bool:
    """Record ``last`` as the newest backup unless another one was recorded since ``previous`` was read."""
    try:
        await barrier.commit([Write(LAST_BACKUP_KEY, last, previous)])
    except ConflictError:
        return False
    return True


async def due(barrier: Barrier, interval_hours: float, now: float) -> str | None:
    """Why an automatic backup is due now (its trigger), or None."""
    meta = await barrier.get(CLUSTER_META_KEY)
    if meta is None or meta.value.get("state") != ACTIVE:
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
    if now - float(value.get("created", 0)) >= interval_hours * 3600:
        return "scheduled"
    return None


@dataclass
class Pending:
    """A backup made for the operator (``backup.create``), waiting in this worker to be read out."""

    data: bytes
    expires: float


class Backups:
    def __init__(self, config: NodeConfig, keyring: ClusterKeyring, audit: Auditor, health: Health) -> None:
        self._config = config
        self._keyring = keyring
        self._audit = audit
        self._health = health
        self._pending: dict[str, Pending] = {}

    def pending(self) -> dict[str, Pending]:
        """This worker's backups waiting to be read, by backup id, with the expired ones dropped."""
        table = self._pending
        now = time.monotonic()
        for backup_id in [k for k, v in table.items() if v.expires < now]:
            del table[backup_id]
        return table

    async def produce(self, trigger: str) -> tuple[BackupHeader, bytes, dict[str, Any]]:
        return await produce_backup(self._keyring.require_barrier(), self._config.node_id, trigger)

    async def take_automatic_backup(self, trigger: str) -> dict[str, Any] | None:
        """Make, record and write one automatic backup; None if another node recorded one first."""
        policy = self._config.backup
        if policy.dir is None:
            raise BackupRefused("this node has no backup directory ([backup] dir)")
        barrier = self._keyring.require_barrier()
        previous = await barrier.get(LAST_BACKUP_KEY)
        header, data, last = await self.produce(trigger)
        if not await record_last(self._keyring.require_barrier(), last, previous):
            return None
        catalog = BackupCatalog(policy.dir)
        path = await asyncio.to_thread(catalog.write, data, header)
        removed = await asyncio.to_thread(catalog.apply_retention, header.cluster_id, policy.retention_days)
        await self._audit.record("backup.create", actor=None,
                                 details={"backup_id": header.backup_id, "trigger": trigger,
                                          "revision": header.revision, "file": str(path),
                                          "retention_deleted": [e.backup_id for e in removed]})
        log.info("automatic backup %s (%s) written to %s", header.backup_id, trigger, path)
        return dict(asdict(header), path=str(path))

    async def run_scheduler(self) -> None:
        """Check every ``check_seconds`` whether an automatic backup is due; never raises."""
        policy = self._config.backup
        while True:
            await asyncio.sleep(policy.check_seconds)
            if self._health.error is not None or not self._keyring.has_cluster_key():
                continue
            try:
                trigger = await due(self._keyring.require_barrier(), policy.interval_hours, time.time())
                if trigger is not None:
                    await self.take_automatic_backup(trigger)
            except asyncio.CancelledError:
                raise
            except (StoreError, BackupRefused, OSError) as exc:
                log.warning("automatic backup not taken: %s", exc)
            except Exception:  # the scheduler must outlive any one failure
                log.exception("automatic backup failed")
