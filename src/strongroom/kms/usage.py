"""The last successful cryptographic use of each key (GetKeyLastUsage), kept off the request path.

A successful Encrypt, Decrypt, ReEncrypt (both keys), GenerateDataKey*, GenerateDataKeyPair*,
GenerateMac, VerifyMac, Sign, Verify, DeriveSharedSecret, Encapsulate or Decapsulate is noted in
memory (:meth:`UsageTracker.note`: no cluster round trip, no store write per request). Every
:data:`FLUSH_SECONDS` the notes are written to the records ``usage/<key id>`` — a later use
never overwritten by an earlier one, several gateways merging by time — in commits of at most
:data:`BATCH` records. :meth:`UsageTracker.last` answers from the record and this gateway's notes
not yet written, so this gateway answers its own uses at once and another's within a flush, as
AWS's eventual consistency allows. Notes not yet written are lost if the gateway is killed
(it writes them when it stops).

``TrackingStartDate`` is the later of the key's creation and the day tracking began in this
cluster (the record ``usage-tracking``, written once, the first time a gateway starts with it).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from strongroom.kms.backend import ClusterError
from strongroom.kms.model import Conflict, Metadata, put

log = logging.getLogger("strongroom.kms")

USAGE = "usage/"
TRACKING = "usage-tracking"
FLUSH_SECONDS = 30.0
#: Records per commit (the node takes at most 16 changes in one).
BATCH = 16
#: Keys noted between two flushes; beyond, the oldest notes are written at the next flush first and
#: the newest kept (a flood of distinct keys cannot grow the gateway's memory without bound).
MAX_PENDING = 100_000

#: The operations GetKeyLastUsage reports (AWS's KeyLastUsageTrackingOperation enum).
TRACKED = frozenset({"Decrypt", "DeriveSharedSecret", "Encrypt", "GenerateDataKey", "GenerateDataKeyPair",
                     "GenerateDataKeyPairWithoutPlaintext", "GenerateDataKeyWithoutPlaintext", "GenerateMac",
                     "ReEncrypt", "Sign", "Verify", "VerifyMac", "Encapsulate", "Decapsulate"})


@dataclass(frozen=True)
class Use:
    operation: str
    timestamp: float
    request_id: str

    def to_record(self) -> dict[str, Any]:
        return {"operation": self.operation, "timestamp": self.timestamp, "request_id": self.request_id}

    @classmethod
    def from_record(cls, value: dict[str, Any] | None) -> Use | None:
        if not value:
            return None
        return cls(str(value["operation"]), float(value["timestamp"]), str(value.get("request_id", "")))


def later(a: Use | None, b: Use | None) -> Use | None:
    if a is None:
        return b
    if b is None:
        return a
    return b if b.timestamp > a.timestamp else a


class UsageTracker:
    def __init__(self, metadata: Metadata, *, flush_seconds: float = FLUSH_SECONDS,
                 clock: Callable[[], float] = time.time) -> None:
        self.metadata = metadata
        self.flush_seconds = flush_seconds
        self._clock = clock
        self._pending: dict[str, Use] = {}
        self._tracking_start: float | None = None
        self._task: asyncio.Task[None] | None = None

    def note(self, key_id: str, operation: str, request_id: str) -> None:
        """A successful use (called by the gateway once the response is ready)."""
        if operation not in TRACKED:
            return
        if key_id not in self._pending and len(self._pending) >= MAX_PENDING:
            self._pending.pop(next(iter(self._pending)))
        self._pending.pop(key_id, None)  # keep insertion order = age of the note
        self._pending[key_id] = Use(operation, self._clock(), request_id)

    async def last(self, key_id: str) -> Use | None:
        value, _ = await self.metadata.backend.record_get(USAGE + key_id)
        return later(Use.from_record(value), self._pending.get(key_id))

    async def tracking_start(self) -> float:
        """When this cluster began tracking key usage (written once, by the first gateway to ask)."""
        if self._tracking_start is not None:
            return self._tracking_start
        value, _ = await self.metadata.backend.record_get(TRACKING)
        if value is None:
            start = self._clock()
            try:
                await self.metadata.commit([put(TRACKING, {"start": start}, 0)])
            except Conflict:
                value, _ = await self.metadata.backend.record_get(TRACKING)
            else:
                value = {"start": start}
        assert value is not None
        self._tracking_start = float(value["start"])
        return self._tracking_start

    async def flush(self) -> int:
        """Write the notes taken since the last flush; how many records were written."""
        written = 0
        while self._pending:
            batch = list(self._pending.items())[:BATCH]
            for key_id, _ in batch:
                del self._pending[key_id]
            try:
                written += await self._write(batch)
            except ClusterError as exc:
                for key_id, use in batch:  # keep them for the next flush (unless newer notes came)
                    self._pending.setdefault(key_id, use)
                log.debug("key usage not written yet: %s", exc.message)
                return written
        return written

    async def _write(self, batch: list[tuple[str, Use]]) -> int:
        for _ in range(3):
            changes = []
            for key_id, use in batch:
                value, revision = await self.metadata.backend.record_get(USAGE + key_id)
                stored = Use.from_record(value)
                if stored is None or use.timestamp > stored.timestamp:
                    changes.append(put(USAGE + key_id, use.to_record(), revision))
            if not changes:
                return 0
            try:
                await self.metadata.commit(changes)
                return len(changes)
            except Conflict:
                continue  # another gateway wrote one of them meanwhile: read again
        return 0

    # --- background ---------------------------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._flush_forever())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        try:
            await self.flush()
        except Exception as exc:  # noqa: BLE001 - stopping: the notes are lost, as documented
            log.warning("could not write the last key usages while stopping: %s", exc)

    async def _flush_forever(self) -> None:
        # Tracking begins now: the cluster-wide start is written by the first gateway that runs this.
        delay = 1.0
        while self._tracking_start is None:
            try:
                await self.tracking_start()
            except ClusterError as exc:
                log.debug("the start of key usage tracking is not written yet: %s", exc.message)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.flush_seconds)
        while True:
            await asyncio.sleep(self.flush_seconds)
            try:
                await self.flush()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the next flush tries again
                log.warning("writing the last key usages failed: %s", exc)
