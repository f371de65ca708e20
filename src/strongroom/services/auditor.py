"""The node's audit log as the services write it: off the event loop, a write that fails fails the act,
and a change is recorded as an intent before its commit and an outcome after (:mod:`strongroom.audit.outcomes`).

How an intent's outcome is known:

* the commit of the change carries a marker record (:class:`WitnessedBarrier`), so "did it land?" is
  answered by the store, exactly;
* a commit that succeeded, or that failed in a way that wrote nothing for sure (a revision conflict,
  a store that refused it), is settled at once by the handler's ``audited`` block;
* one whose answer was lost (a timeout, a dropped connection, a cancelled task) is settled by a
  **fence**: writing the marker as "fenced" if it is still absent, after which the change can never
  land; finding it there means it landed. While the store cannot be asked, the intent waits here and
  :meth:`Auditor.run` tries again;
* an outcome that cannot be written (a full disk) is kept and written when it can;
* a worker that died leaves its intents open: worker 0 of the node finds them in the log (intents of
  a process that is gone, or of an earlier boot) and settles them the same way.
"""

from __future__ import annotations

import asyncio
import contextvars
import itertools
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from strongroom.audit import AuditLog, AuditWriteError
from strongroom.audit.log import INTENT
from strongroom.audit.outcomes import marker_key, scan_open
from strongroom.barrier import Barrier, Change, Remove, Write
from strongroom.barrier.barrier import Entry
from strongroom.errors import DeviceError, HsmError
from strongroom.store.base import (
    ConflictError,
    Delete,
    Operation,
    OutcomeUnknownError,
    StoreError,
    UnavailableError,
    note_write,
    validate_commit,
)

log = logging.getLogger(__name__)

#: The marker's states: the commit landed with it, or a fence was written first (it never will).
DONE = "done"
FENCED = "fenced"
#: How long a witnessed commit whose answer was lost is sent again (an etcd election after its leader died).
RETRY_LOST_SECONDS = 3.0
RETRY_LOST_PAUSE = 0.2
#: How often the background task retries what is pending and looks for a dead worker's intents.
RETRY_SECONDS = 2.0
ORPHAN_SCAN_SECONDS = 10.0
#: Markers removed per store commit once their outcome is on disk.
MARKER_BATCH = 64
#: Markers with their outcome on disk that a witnessed commit removes along with its own change (at most).
PIGGYBACK_MARKERS = 16
#: How long a "done" marker may wait for a witnessed commit to take it before the background task removes it
#: (in batches): under load the next key's commit removes it, idle the background does, in one write.
DONE_MARKER_WAIT = 2.0
#: A fence stays this long: a request that took it for absent could still be on its way (a TCP
#: retransmission across a healed partition) and must find it there. A "done" marker may go at once.
FENCE_KEEP_SECONDS = 3600.0
#: How often worker 0 looks for markers left behind (a worker that died before removing them).
SWEEP_SECONDS = 600.0


@dataclass(eq=False)
class Intent:
    """A change announced in the log whose outcome is not written yet."""

    event: str
    actor: str | None
    seq: int
    boot: int
    node: str
    task: asyncio.Task[Any] | None = None
    #: The commit that carried the marker succeeded.
    committed: bool = False
    #: A commit carrying the marker was sent and its answer is not known.
    uncertain: bool = False
    #: What the marker's commit changed: created / updated / removed store keys.
    changes: dict[str, list[str]] = field(default_factory=dict)
    #: The auditor that announced it (its commit removes that auditor's settled markers too).
    auditor: Auditor | None = field(default=None, repr=False)

    @property
    def marker(self) -> str:
        return marker_key(self.node, self.boot, self.seq)


_PENDING: contextvars.ContextVar[Intent | None] = contextvars.ContextVar("strongroom_audit_intent", default=None)


def pending_intent() -> Intent | None:
    """The intent the current task announced and has not committed yet (its next commit carries the marker)."""
    intent = _PENDING.get()
    if intent is None or intent.committed or intent.task is not asyncio.current_task():
        return None
    return intent


def _summary(changes: Sequence[Change]) -> dict[str, list[str]]:
    summary: dict[str, list[str]] = {"created": [], "updated": [], "removed": []}
    for change in changes:
        if isinstance(change, Write):
            summary["created" if change.previous is None else "updated"].append(change.key)
        elif isinstance(change, Remove):
            summary["removed"].append(change.key)
    return {name: keys for name, keys in summary.items() if keys}


class WitnessedBarrier(Barrier):
    """The barrier whose commits carry the marker of the intent the committing task announced.

    Such a commit also removes markers whose outcome is already on disk (:meth:`Auditor.removable_markers`): a
    created key then costs the store one write, not one for the key and one more for its marker's removal.
    """

    async def commit(self, changes: Sequence[Change], written: dict[str, Entry] | None = None) -> int:
        intent = pending_intent()
        if intent is None:
            return await super().commit(changes, written)
        operations = self._operations(changes)
        validate_commit(operations)
        summary = _summary(changes)
        marker = self._encrypted(Write(intent.marker, {"state": DONE, "event": intent.event, "time": time.time(),
                                                       **summary}))
        auditor = intent.auditor
        # Unconditional deletes of other keys: they cannot make the commit fail, and one done twice is a no-op.
        old_markers = [] if auditor is None else auditor.removable_markers(PIGGYBACK_MARKERS)
        try:
            # The marker and the removals stay within etcd's own limit (128) above MAX_COMMIT_OPERATIONS.
            revision = note_write(await self._apply_witnessed([*operations, marker, *(Delete(k) for k in old_markers)],
                                                              intent.marker))
        except (ConflictError, UnavailableError):
            raise  # nothing was written
        except BaseException:
            intent.uncertain = True
            raise
        intent.committed, intent.uncertain, intent.changes = True, False, summary
        if auditor is not None:
            auditor.markers_removed(old_markers)
        self._fill_written(changes, operations, revision, written)
        return revision

    async def _apply_witnessed(self, operations: list[Operation], marker: str) -> int:
        """Apply ``operations`` (which create ``marker``); a try whose answer was lost is sent again.

        Every try carries the marker with a must-not-exist compare, so at most one of them lands: sending the
        same operations again after a timeout (etcd's leader died a moment ago and the election is not over)
        cannot apply the change twice. A try refused after one whose answer was lost is settled by the
        marker: there, the lost try landed; absent, it may still land (an older proposal in flight), so the
        outcome stays unknown (the auditor fences it).
        """
        deadline: float | None = None
        while True:
            try:
                return await self.store._apply(operations)
            except OutcomeUnknownError:
                now = time.monotonic()
                if deadline is None:
                    deadline = now + RETRY_LOST_SECONDS
                elif now >= deadline:
                    raise
                log.info("a witnessed commit's answer was lost; sending it again (at most one lands)")
                await asyncio.sleep(RETRY_LOST_PAUSE)
            except (ConflictError, UnavailableError) as exc:
                if deadline is None:
                    raise  # nothing was written
                try:
                    record = await self.store.get(marker)
                except StoreError as read_failure:
                    raise OutcomeUnknownError(f"a try of this change was lost and then {exc}") from read_failure
                if record is None:
                    raise OutcomeUnknownError(f"a try of this change was lost and then {exc}") from exc
                return record.mod_revision


def outcome_of(exc: BaseException) -> str:
    """The outcome recorded for a change that failed with ``exc`` (nothing of it was written)."""
    if isinstance(exc, HsmError):
        return exc.code.spec_name
    if isinstance(exc, ConflictError):
        return "CKR_FUNCTION_FAILED"
    if isinstance(exc, StoreError):
        return "CKR_DEVICE_ERROR"
    return "CKR_GENERAL_ERROR"


class Auditor:
    def __init__(self, audit_log: AuditLog) -> None:
        self._log = audit_log
        #: The barrier to settle intents with (set once the worker holds the cluster key).
        self.barrier: Callable[[], Barrier | None] = lambda: None
        #: Intents whose fate the store could not tell yet.
        self._unsettled: list[Intent] = []
        #: Outcomes that could not be written yet: (intent, outcome, details).
        self._unwritten: list[tuple[Intent, str, dict[str, Any]]] = []
        #: Fenced markers whose outcome is on disk, and from when they may go: removed from the store in batches.
        self._markers: list[tuple[float, str]] = []
        #: "Done" markers whose outcome is on disk (may go at once), in order, with when the background removes them.
        self._done: dict[str, float] = {}
        self._wake = asyncio.Event()

    @property
    def path(self) -> Path:
        return self._log.path

    async def record(
        self, event: str, *, actor: str | None, outcome: str = "ok", details: dict[str, Any] | None = None
    ) -> None:
        """Append to the audit log before the caller acknowledges; failure fails the operation."""
        await self._append(event, actor, outcome, details or {})

    async def _append(self, event: str, actor: str | None, outcome: str, details: dict[str, Any]) -> int:
        try:
            record = await asyncio.to_thread(self._log.append, event, actor=actor, outcome=outcome, details=details)
        except AuditWriteError as exc:
            log.error("audit log write failed: %s", exc)
            raise DeviceError(f"the audit log cannot be written ({exc}); the operation was not performed") from None
        return record.seq

    # --- intents and outcomes --------------------------------------------------------------------

    async def intent(self, event: str, *, actor: str | None, details: dict[str, Any]) -> Intent:
        """Announce a change (fails the change if it cannot be written); the task's next commit carries
        its marker."""
        seq = await self._append(event, actor, INTENT, details)
        intent = Intent(event, actor, seq, self._log.boot, self._log.node_id, asyncio.current_task(), auditor=self)
        _PENDING.set(intent)
        return intent

    def release(self, intent: Intent) -> None:
        """The task is done with ``intent``: commits no longer carry its marker."""
        if _PENDING.get() is intent:
            _PENDING.set(None)
        intent.task = None

    async def settle(self, intent: Intent, exc: BaseException | None) -> None:
        """Write ``intent``'s outcome: the block that announced it ended (with ``exc``, or without)."""
        self.release(intent)
        if intent.committed or exc is None:
            await self._write_outcome(intent, "ok")
        elif intent.uncertain:
            if not await self._fence(intent):
                self._unsettled.append(intent)
                self._wake.set()
                log.warning("the outcome of %s (audit intent %d) is not known yet; it is settled once the store "
                            "answers", intent.event, intent.seq)
        else:
            await self._write_outcome(intent, outcome_of(exc))

    async def _fence(self, intent: Intent) -> bool:
        """Settle an intent whose commit may or may not have landed; False while the store cannot tell."""
        barrier = self.barrier()
        if barrier is None:
            return False
        try:
            try:
                await barrier.commit([Write(intent.marker, {"state": FENCED, "event": intent.event,
                                                            "time": time.time()})])
            except ConflictError:
                entry = await barrier.get(intent.marker)
                if entry is None:  # removed meanwhile: only after its outcome was written
                    return True
                if entry.value.get("state") == DONE:
                    intent.committed = True
                    intent.changes = {k: list(entry.value.get(k) or []) for k in ("created", "updated", "removed")
                                      if entry.value.get(k)}
                    await self._write_outcome(intent, "ok", settled="after the fact")
                    return True
            await self._write_outcome(intent, "CKR_DEVICE_ERROR", settled="fenced: it never landed")
            return True
        except (StoreError, HsmError) as exc:
            log.info("cannot settle audit intent %d yet: %s", intent.seq, exc)
            return False

    async def _write_outcome(self, intent: Intent, outcome: str, settled: str | None = None) -> None:
        details: dict[str, Any] = {"intent": intent.seq}
        if outcome == "ok":
            details.update(intent.changes)
        if settled is not None:
            details["settled"] = settled
        if intent.node != self._log.node_id or intent.boot != self._log.boot:
            details["intent_boot"] = intent.boot
        try:
            await self._append(intent.event, intent.actor, outcome, details)
        except DeviceError:
            # The change is done (or refused) either way; its outcome is written when the log takes it.
            self._unwritten.append((intent, outcome, details))
            self._wake.set()
            return
        self._forget_marker(intent, details)

    def removable_markers(self, limit: int) -> list[str]:
        """Up to ``limit`` "done" markers whose outcome is on disk, oldest first (for a commit to remove)."""
        return list(itertools.islice(self._done, limit))

    def markers_removed(self, keys: Sequence[str]) -> None:
        for key in keys:
            self._done.pop(key, None)

    def _forget_marker(self, intent: Intent, details: dict[str, Any]) -> None:
        if intent.committed:
            self._done[intent.marker] = time.monotonic() + DONE_MARKER_WAIT
            if len(self._done) >= MARKER_BATCH:
                self._wake.set()
        elif "settled" in details:
            self._markers.append((time.monotonic() + FENCE_KEEP_SECONDS, intent.marker))

    # --- in the background ------------------------------------------------------------------------

    async def run(self, *, orphans: bool, checkpoint: Path | None = None) -> None:
        """Retry what is pending; remove markers; with ``orphans``, settle the intents of dead processes."""
        scanner = _OrphanScanner(self, checkpoint) if orphans else None
        next_scan = 0.0
        next_sweep = 0.0
        loop = asyncio.get_running_loop()
        while True:
            try:
                async with asyncio.timeout(RETRY_SECONDS):
                    await self._wake.wait()
            except TimeoutError:
                pass
            self._wake.clear()
            try:
                await self._retry()
                if scanner is not None and loop.time() >= next_scan and self.barrier() is not None:
                    next_scan = loop.time() + ORPHAN_SCAN_SECONDS
                    await scanner.scan()
                    if loop.time() >= next_sweep:
                        next_sweep = loop.time() + SWEEP_SECONDS
                        await self.sweep(scanner.open_intents)
                await self._remove_markers()
            except asyncio.CancelledError:
                raise
            except Exception:  # the loop must outlive anything one round meets
                log.exception("settling audit outcomes failed; retrying")

    async def _retry(self) -> None:
        unwritten, self._unwritten = self._unwritten, []
        for intent, outcome, details in unwritten:
            try:
                await self._append(intent.event, intent.actor, outcome, details)
            except DeviceError:
                self._unwritten.append((intent, outcome, details))
                continue
            self._forget_marker(intent, details)
        unsettled, self._unsettled = self._unsettled, []
        for intent in unsettled:
            if not await self._fence(intent):
                self._unsettled.append(intent)

    async def _remove_markers(self) -> None:
        barrier = self.barrier()
        now = time.monotonic()
        due = [key for when, key in self._markers if when <= now]
        due += [key for key, when in self._done.items() if when <= now or len(self._done) >= MARKER_BATCH]
        if not due or barrier is None:
            return
        removed: set[str] = set()
        for start in range(0, len(due), MARKER_BATCH):
            batch = due[start:start + MARKER_BATCH]
            try:
                await barrier.store.commit([Delete(key) for key in batch])
            except (StoreError, ValueError) as exc:
                log.info("audit markers stay in the store for now: %s", exc)
                break
            removed.update(batch)
        self._markers = [(when, key) for when, key in self._markers if key not in removed]
        self.markers_removed(list(removed))

    async def sweep(self, open_intents: set[tuple[int, int]]) -> None:
        """Remove this node's markers older than :data:`FENCE_KEEP_SECONDS` whose intent is settled (a worker
        that died after writing an outcome left its marker)."""
        barrier = self.barrier()
        if barrier is None:
            return
        prefix = f"audit/intents/{self._log.node_id}/"
        entries, _ = await barrier.list_prefix(prefix)
        old = time.time() - FENCE_KEEP_SECONDS
        doomed = []
        for entry in entries:
            boot, _, seq = entry.key[len(prefix):].partition("/")
            if not (boot.isdigit() and seq.isdigit()) or (int(boot), int(seq)) in open_intents:
                continue
            when = entry.value.get("time")
            if isinstance(when, (int, float)) and when < old:
                doomed.append(entry.key)
        for start in range(0, len(doomed), MARKER_BATCH):
            await barrier.store.commit([Delete(key) for key in doomed[start:start + MARKER_BATCH]])

    @property
    def pending(self) -> dict[str, int]:
        """What is waiting (for node.status)."""
        return {"unsettled": len(self._unsettled), "unwritten": len(self._unwritten),
                "markers": len(self._markers) + len(self._done)}


class _OrphanScanner:
    """Worker 0's look through the node's log for intents whose process is gone."""

    def __init__(self, auditor: Auditor, checkpoint: Path | None) -> None:
        self._auditor = auditor
        self._checkpoint = checkpoint
        self._offset = self._load()
        #: Intents settled by this scanner whose outcome may not be on disk yet.
        self._settled: set[tuple[int, int]] = set()
        #: (boot, seq) of the intents the last scan found open.
        self.open_intents: set[tuple[int, int]] = set()

    def _load(self) -> int:
        if self._checkpoint is None:
            return 0
        try:
            saved = json.loads(self._checkpoint.read_text())
            offset = int(saved["offset"])
        except (OSError, ValueError, KeyError, TypeError):
            return 0
        try:
            if offset > os.path.getsize(self._auditor.path):
                return 0  # not this log's checkpoint
        except OSError:
            return 0
        return offset

    def _save(self, offset: int) -> None:
        if self._checkpoint is None or offset == self._offset:
            return
        tmp = self._checkpoint.with_name(self._checkpoint.name + ".tmp")
        try:
            tmp.write_text(json.dumps({"offset": offset}))
            os.replace(tmp, self._checkpoint)
        except OSError as exc:
            log.info("cannot save the audit scan checkpoint: %s", exc)

    async def scan(self) -> None:
        auditor = self._auditor
        found, end = await asyncio.to_thread(scan_open, auditor.path, self._offset)
        me = (auditor._log.boot, os.getpid())
        still_open = []
        for item in found:
            record = item.record
            key = (record.boot, record.seq)
            alive = record.boot == me[0] and _alive(record.pid)
            if alive or key in self._settled:
                still_open.append(item)
                continue
            intent = Intent(record.event, record.actor, record.seq, record.boot, record.node)
            if await auditor._fence(intent):
                self._settled.add(key)
                log.info("settled audit intent %d (%s) of process %d, which is gone", record.seq, record.event,
                         record.pid)
            else:
                still_open.append(item)
        self.open_intents = {(item.record.boot, item.record.seq) for item in still_open}
        unsettled = [item for item in still_open if (item.record.boot, item.record.seq) not in self._settled]
        offset = min((item.offset for item in unsettled), default=end)
        self._settled = {key for key in self._settled
                         if any((i.record.boot, i.record.seq) == key for i in still_open)}
        self._save(offset)
        self._offset = offset


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
