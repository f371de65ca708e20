"""Store freshness: make putting back an older copy of the *whole* store evident.

The barrier binds each record to its key and per-key version, so one record put
back at an older version fails to open. A whole older store (an old SQLite file,
an etcd snapshot) is consistent, though: every record in it authenticates. Two
things that only move forward catch it:

* the store's **revision** (every write makes a new one; etcd never goes back,
  compaction does not lower it), which is not authenticated: whoever writes to
  the store directly can push it up with junk writes, so also
* the **epoch record** ``cluster/epoch``, written through the barrier: its
  per-key version is bound into its AAD, so nobody without the cluster key can
  make an older copy claim a newer version. One worker of each node advances it
  every heartbeat.

Each node keeps the highest (revision, epoch version) it has seen in
``store.freshness`` in its directory, authenticated with HMAC-SHA256 under a key
derived (HKDF) from the cluster key, binding the cluster id, the node id and the
seal it belongs to. At start and every heartbeat each worker reads that file
*first*, then the store: every value in the file was seen in the store before, so
a linearizable store can only show as much or more. Less means the store went
back: the worker enters its error state and audits it.

No false alarm on: a restart (the file stays, the store moved on), a node stopped
for a while, several workers (the file is only ever raised, under a lock, and
replaced atomically), a node zeroized and added again or a restored cluster (a
new seal, whose nonce the file is bound to, starts a new mark).

Single records put back (an older version, or one deleted and created again) are
the store's own business: etcd keeps versions itself, and the SQLite store
authenticates every row against a digest of all of them (store/integrity.py). That
digest starts once per store with a random origin, which the mark records too: a
store whose digest was deleted and made anew (to have rows taken as they are)
shows another origin, and is refused like a rollback. A store check that finds
tampering puts the worker in the error state as well (audited ``store.tampered``).

Limits: a rollback to a copy taken less than one heartbeat before the node last
checked is not seen (on SQLite with integrity, junk writes cannot pad it: they
need the key); someone who can write to the node's directory can delete the file
(with the ``file`` seal they can read the sealed key too: see the trust model).

This module also records the node's audit head (:mod:`strongroom.audit.heads`).
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import hmac
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from strongroom.audit import AuditLog, AuditWriteError
from strongroom.audit import heads as audit_heads
from strongroom.barrier import Barrier, RecordTampered, Write
from strongroom.seal import FRESHNESS_FILE, SEAL_FILE
from strongroom.services.auditor import Auditor
from strongroom.services.config import NodeConfig
from strongroom.services.health import Health
from strongroom.store.base import ConflictError, Store
from strongroom.store.integrity import StoreTampered

log = logging.getLogger(__name__)

EPOCH_KEY = "cluster/epoch"
FORMAT = 1
LOCK_FILE = FRESHNESS_FILE + ".lock"
_INFO = b"strongroom/store-freshness/v1\0"


class FreshnessError(Exception):
    """The high-water mark file is damaged or fails authentication."""


@dataclass(frozen=True, slots=True)
class Mark:
    revision: int = 0
    epoch: int = 0
    #: The origin of the store's integrity digest (SQLite; "" when the store has none): set once, never changed.
    integrity: str = ""


def derive_key(cluster_key: bytes | bytearray, cluster_id: str, node_id: str) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
                info=_INFO + cluster_id.encode() + b"\0" + node_id.encode()).derive(bytes(cluster_key))


def seal_id(node_dir: Path) -> str | None:
    """What names this node's current seal (its nonce): a new seal starts a new high-water mark."""
    try:
        return str(json.loads((node_dir / SEAL_FILE).read_bytes())["nonce"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


class HighWaterMark:
    """``store.freshness``: the highest revision and epoch this node saw, only ever raised."""

    def __init__(self, node_dir: Path, key: bytes, cluster_id: str, node_id: str, seal: str) -> None:
        self.path = node_dir / FRESHNESS_FILE
        self._lock_path = node_dir / LOCK_FILE
        self._key = key
        self._bound = {"cluster_id": cluster_id, "node_id": node_id, "seal": seal}

    def _mac(self, body: dict[str, Any]) -> str:
        data = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
        return hmac.new(self._key, data, hashlib.sha256).hexdigest()

    def load(self) -> Mark | None:
        """The mark, or None when there is none for this seal yet. Raises FreshnessError if tampered."""
        try:
            document = json.loads(self.path.read_bytes())
            body = {k: document[k] for k in ("format", "cluster_id", "node_id", "seal", "revision", "epoch")}
            if "integrity" in document:  # absent from marks written before store integrity (and for etcd)
                body["integrity"] = document["integrity"]
            mac = str(document["mac"])
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise FreshnessError(f"{self.path} is damaged ({exc.__class__.__name__})") from None
        if any(body[k] != v for k, v in self._bound.items()):
            # Left from an earlier seal of this node (zeroized and added again): not this key's mark.
            log.warning("%s belongs to another seal of this node; starting a new high-water mark", self.path)
            return None
        if body["format"] != FORMAT or not hmac.compare_digest(mac, self._mac(body)):
            raise FreshnessError(f"{self.path} failed authentication (altered?)")
        if not all(isinstance(body[k], int) and not isinstance(body[k], bool) for k in ("revision", "epoch")) or (
                not isinstance(body.get("integrity", ""), str)):
            raise FreshnessError(f"{self.path} is damaged")
        return Mark(body["revision"], body["epoch"], body.get("integrity", ""))

    def raise_to(self, seen: Mark) -> Mark:
        """Record ``seen`` unless the file already holds more (several workers write it)."""
        from strongroom.seal import write_private_file

        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            current = self.load() or Mark()
            new = Mark(max(current.revision, seen.revision), max(current.epoch, seen.epoch),
                       current.integrity or seen.integrity)
            if new != current or not self.path.exists():
                body: dict[str, Any] = dict(self._bound, format=FORMAT, revision=new.revision, epoch=new.epoch)
                if new.integrity:
                    body["integrity"] = new.integrity
                document = dict(body, mac=self._mac(body))
                write_private_file(self.path, json.dumps(document, sort_keys=True).encode())
            return new
        finally:
            os.close(fd)


def rollback_message(seen: Mark, revision: int, epoch: int) -> str | None:
    """Why the store (at ``revision``, epoch record version ``epoch``) is older than ``seen``, or None."""
    if revision < seen.revision:
        where = f"revision {revision} < {seen.revision}"
    elif epoch < seen.epoch:
        where = f"epoch {epoch} < {seen.epoch}"
    else:
        return None
    return f"the store is older than this node has seen ({where}): rolled back? refusing to serve"


def integrity_message(seen: Mark, integrity: str) -> str | None:
    """Why a store whose digest has origin ``integrity`` is not the one this node saw, or None."""
    if not seen.integrity or integrity == seen.integrity:
        return None
    now = f"origin {integrity}" if integrity else "no digest"
    return (f"tamper response: the store's integrity digest was made anew ({now}; this node saw origin "
            f"{seen.integrity}): it was deleted to have altered records taken as they are; refusing to serve")


class KeyHolder(Protocol):
    """What the checks need of the worker's cluster key (services.keyring.ClusterKeyring)."""

    barrier: Barrier | None
    cluster_id: str | None
    freshness_key: bytes | None


class Freshness:
    """One worker's checks: store freshness (every worker) and, on one worker, the audit head."""

    def __init__(self, config: NodeConfig, store: Store, keyring: KeyHolder, health: Health, audit: Auditor,
                 *, advance: bool) -> None:
        self._config = config
        self._store = store
        self._keyring = keyring
        self._health = health
        self._audit = audit
        self.advance = advance  # this worker advances the epoch and records the audit head
        self._published: tuple[int, str] | None = None
        self._first: str | None = None
        self._head_problem: str | None = None

    def _mark(self) -> HighWaterMark | None:
        config, keyring = self._config, self._keyring
        key = keyring.freshness_key
        seal = seal_id(config.node_dir)
        if key is None or seal is None or keyring.cluster_id is None:
            return None
        return HighWaterMark(config.node_dir, key, keyring.cluster_id, config.node_id, seal)

    async def _fail(self, message: str, details: dict[str, Any], event: str = "store.rollback") -> None:
        if self._health.error is not None:
            return
        self._health.error = message
        log.error("%s", message)
        try:
            await self._audit.record(event, actor=None, outcome="CKR_DEVICE_ERROR",
                                     details=dict(details, error=message))
        except Exception:  # the error state holds whether or not the log takes it
            log.exception("could not audit %s", event)

    async def check(self) -> bool:
        """Compare the store with this node's high-water mark; False when it went back (error state)."""
        error = self._health.error
        barrier = self._keyring.barrier
        if error is not None or barrier is None:
            return error is None
        mark = self._mark()
        if mark is None:
            return True
        try:
            seen = await asyncio.to_thread(mark.load)  # first the file, then the store (see the module doc)
        except FreshnessError as exc:
            await self._fail(f"tamper response: {exc}; refusing to serve", {"file": str(mark.path)})
            return False
        try:
            revision = await self._store.revision()
            epoch_entry = await barrier.get(EPOCH_KEY)
        except RecordTampered as exc:
            await self._fail(exc.message, {"key": exc.key})
            return False
        except StoreTampered as exc:
            await self._fail(f"tamper response: {exc}", {"key": exc.key}, event="store.tampered")
            return False
        except Exception as exc:  # noqa: BLE001 - an unreachable store is not a rollback; try again later
            log.warning("store freshness not checked: %s", exc)
            return True
        epoch = 0 if epoch_entry is None else epoch_entry.record.version
        integrity = getattr(self._store, "integrity_id", None) or ""
        if seen is not None:
            problem = rollback_message(seen, revision, epoch)
            if problem is not None:
                await self._fail(problem, {"revision": revision, "seen_revision": seen.revision, "epoch": epoch,
                                           "seen_epoch": seen.epoch})
                return False
            problem = integrity_message(seen, integrity)
            if problem is not None:
                await self._fail(problem, {"integrity": integrity, "seen_integrity": seen.integrity},
                                 event="store.tampered")
                return False
        else:
            log.info("store freshness: starting the high-water mark at revision %d, epoch %d", revision, epoch)
        if self.advance:
            try:
                if epoch_entry is not None or await barrier.get("cluster/meta") is not None:
                    value = {"node": self._config.node_id, "time": time.time()}
                    revision = await barrier.commit([Write(EPOCH_KEY, value, epoch_entry)])
                    epoch += 1
            except ConflictError:
                pass  # another node advanced it meanwhile
            except Exception as exc:  # noqa: BLE001 - the next heartbeat tries again
                log.debug("epoch not advanced: %s", exc)
        await asyncio.to_thread(mark.raise_to, Mark(revision, epoch, integrity))
        return True

    async def publish_audit_head(self) -> None:
        """Record this node's audit head in the store (``audit/heads/<node id>``), never lowering it."""
        barrier = self._keyring.barrier
        if self._health.error is not None or barrier is None:
            return
        config = self._config
        try:
            head = await asyncio.to_thread(AuditLog(config.audit_path, node_id=config.node_id,
                                                    boot=self._health.boot).head)
            if head is None or self._published == (head.seq, head.hash):
                return
            if self._first is None:
                first = await asyncio.to_thread(audit_heads.first_record, config.audit_path)
                if first is None:
                    return
                self._first = first.hash
            key = audit_heads.head_key(config.node_id)
            entry = await barrier.get(key)
            if entry is not None:
                # Whoever recorded it (this process, an earlier boot), the log must still hold it.
                problem = await asyncio.to_thread(audit_heads.head_problem, config.audit_path, entry.value, head.seq)
                if problem is not None:
                    if problem != self._head_problem:
                        self._head_problem = problem
                        message = f"the audit log {config.audit_path} {problem}; keeping the recorded head"
                        log.error("%s", message)
                        await self._audit.record("audit.head_mismatch", actor=None, outcome="CKR_DEVICE_ERROR",
                                                 details={"recorded_seq": entry.value.get("seq"), "problem": problem})
                    return  # never overwrite the evidence
                if int(entry.value.get("seq", 0)) >= head.seq:
                    self._published = (int(entry.value["seq"]), str(entry.value["hash"]))
                    return
            value = audit_heads.head_value(config.node_id, head, self._first)
            await barrier.commit([Write(key, value, entry)])
            self._published = (head.seq, head.hash)
        except ConflictError:
            pass
        except (AuditWriteError, OSError) as exc:
            log.warning("audit head not recorded: %s", exc)
        except Exception as exc:  # noqa: BLE001 - the next period tries again
            log.warning("audit head not recorded: %s", exc)

    async def run(self, period: float) -> None:
        """Background task: check every ``period`` seconds (and record the audit head on one worker)."""
        while True:
            await asyncio.sleep(period)
            try:
                await self.check()
                if self.advance:
                    await self.publish_audit_head()
            except asyncio.CancelledError:
                raise
            except Exception:  # the checks must outlive surprises
                log.exception("store freshness check failed")
