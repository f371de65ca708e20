"""Intents and outcomes: a change is audited before it is made and again once its fate is known.

A node must not act unaudited, so the record has to be on disk before the store commit; but the
commit can then fail (etcd without quorum, a full disk) or the node can die before it, and a
record written ahead that said ``ok`` would claim a change that never happened. So a change is
two records in the node's log:

* the **intent** (``outcome: "intent"``), written before the commit: a failed write refuses the
  change, as before;
* the **outcome**, written once the fate is known: the same ``event``, ``outcome`` ``ok`` or the
  ``CKR_*`` of the failure, and ``details.intent`` = the intent's ``seq``. An ``ok`` outcome names the
  store keys the commit created, updated and removed (``details.created`` ...).

The commit carries a marker record (``audit/intents/<node>/<boot>/<seq>``, through the barrier) in
the same transaction, so "did it land?" always has an exact answer in the store, even for a commit
whose answer was lost or whose worker died: whoever settles such an intent later writes the marker
*if it is still absent* (a fence: the commit can then never land) or finds it there (it landed).
See :mod:`strongroom.services.auditor`.

This module reads logs: :func:`analyze` pairs every intent with its outcome and names what does
not fit (an intent still open, an outcome with no intent, two outcomes for one intent);
:func:`scan_open` streams a log from an offset for the intents still open (what the node settles
after a worker died); :func:`false_claims` checks, across every node's log, the ``ok`` creations
against the objects that exist.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from strongroom.audit.log import INTENT, MAX_LINE_BYTES, AuditRecord, RecordFormatError, parse_record

#: Where the commit markers live in the store (see the module docstring).
MARKERS_PREFIX = "audit/intents/"
#: The store prefix of PKCS#11 objects: what an ``ok`` creation must name.
OBJECTS_PREFIX = "objects/"


def marker_key(node_id: str, boot: int, seq: int) -> str:
    return f"{MARKERS_PREFIX}{node_id}/{boot}/{seq}"


@dataclass
class Act:
    """One audited change: its intent, and its outcome once written."""

    event: str
    node: str
    intent_seq: int
    intent_time: str
    boot: int
    pid: int
    actor: str | None
    outcome: str | None = None
    outcome_seq: int | None = None
    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)

    def describe(self) -> str:
        state = self.outcome or "no outcome"
        return f"{self.event} (intent seq {self.intent_seq}, {self.intent_time}): {state}"


@dataclass
class Report:
    records: int = 0
    acts: list[Act] = field(default_factory=list)
    #: Intents with no outcome (yet): a change whose fate the log does not tell.
    open: list[Act] = field(default_factory=list)
    #: Records that contradict the rules above (each a sentence naming the seq).
    problems: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {"acts": len(self.acts), "open": [act.describe() for act in self.open][:20],
                "open_count": len(self.open), "problems": self.problems[:20], "problem_count": len(self.problems)}


def _keys(details: dict[str, Any], name: str) -> list[str]:
    value = details.get(name)
    return [str(key) for key in value] if isinstance(value, list) else []


class _Pairing:
    """Pairs intents with outcomes as records stream by."""

    def __init__(self) -> None:
        self.open: dict[int, Act] = {}
        self.acts: list[Act] = []
        self.problems: list[str] = []
        self.closed: set[int] = set()

    def feed(self, record: AuditRecord) -> Act | None:
        """Take one record; returns the act it opened, if it is an intent."""
        if record.outcome == INTENT:
            act = Act(record.event, record.node, record.seq, record.time, record.boot, record.pid, record.actor)
            self.open[record.seq] = act
            self.acts.append(act)
            return act
        ref = record.details.get("intent")
        if ref is None:
            return None
        if not isinstance(ref, int) or isinstance(ref, bool):
            self.problems.append(f"seq {record.seq}: details.intent is not a record number")
            return None
        done = self.open.pop(ref) if ref in self.open else None
        if done is None:
            again = "a second outcome for" if ref in self.closed else "an outcome for no"
            self.problems.append(f"seq {record.seq}: {again} intent (seq {ref})")
            return None
        if done.event != record.event:
            self.problems.append(f"seq {record.seq}: the outcome of intent {ref} ({done.event}) is recorded as "
                                 f"{record.event}")
        self.closed.add(ref)
        done.outcome, done.outcome_seq = record.outcome, record.seq
        if record.outcome == "ok":
            done.created = _keys(record.details, "created")
            done.updated = _keys(record.details, "updated")
            done.removed = _keys(record.details, "removed")
        return None


def _records(path: str | os.PathLike[str], offset: int = 0) -> Iterable[tuple[int, int, AuditRecord | None]]:
    """(offset, length, record) for each complete line from ``offset`` (None for a line that is not a record)."""
    with open(path, "rb") as f:
        f.seek(offset)
        while True:
            raw = f.readline(MAX_LINE_BYTES + 1)
            if not raw or not raw.endswith(b"\n"):
                return
            try:
                record: AuditRecord | None = parse_record(raw)
            except RecordFormatError:
                record = None
            yield offset, len(raw), record
            offset += len(raw)


def analyze(path: str | os.PathLike[str]) -> Report:
    """Every act of the log at ``path`` with its outcome, and what does not fit."""
    report = Report()
    pairing = _Pairing()
    for _offset, _length, record in _records(path):
        if record is None:
            continue  # the chain check (audit.verify) says where and why
        report.records += 1
        pairing.feed(record)
    report.acts = pairing.acts
    report.open = sorted(pairing.open.values(), key=lambda act: act.intent_seq)
    report.problems = pairing.problems
    return report


@dataclass(frozen=True)
class OpenIntent:
    offset: int
    record: AuditRecord


def scan_open(path: str | os.PathLike[str], offset: int = 0) -> tuple[list[OpenIntent], int]:
    """The intents still open among the records from ``offset`` on, and the offset after the last
    complete line. An outcome whose intent lies before ``offset`` is ignored."""
    pairing = _Pairing()
    offsets: dict[int, int] = {}
    end = offset
    for at, length, record in _records(path, offset):
        end = at + length
        if record is not None:
            act = pairing.feed(record)
            if act is not None:
                offsets[act.intent_seq] = at
    found = [OpenIntent(offsets[seq], _as_record(act)) for seq, act in pairing.open.items()]
    return sorted(found, key=lambda o: o.offset), end


def _as_record(act: Act) -> AuditRecord:
    return AuditRecord(act.intent_seq, act.boot, act.intent_time, act.node, act.pid, act.event, act.actor, INTENT,
                       {}, "", "")


@dataclass
class FalseClaim:
    node: str
    act: str
    why: str


def false_claims(reports: dict[str, Report], exists: Callable[[list[str]], set[str]]) -> list[FalseClaim]:
    """``ok`` creations (across every node's log) of objects that neither exist nor were removed by an ``ok``
    act. ``exists(keys)`` answers which store keys exist now (asked in batches of 512)."""
    removed = {key for report in reports.values() for act in report.acts if act.outcome == "ok"
               for key in act.removed}
    claimed: dict[str, tuple[str, Act]] = {}
    for node, report in reports.items():
        for act in report.acts:
            if act.outcome != "ok":
                continue
            for key in act.created:
                if key.startswith(OBJECTS_PREFIX) and key not in removed:
                    claimed[key] = (node, act)
    keys = sorted(claimed)
    present: set[str] = set()
    for start in range(0, len(keys), 512):
        present |= exists(keys[start:start + 512])
    return [FalseClaim(claimed[key][0], claimed[key][1].describe(), f"{key} does not exist and no later act "
                       "removed it") for key in keys if key not in present]


#: An intent older than this with no outcome is reported as unsettled: a running node settles one
#: within seconds (a dead worker's within ten), so an older one means a node that is down or cannot
#: reach its store (its fate is then written when it can).
SETTLE_GRACE_SECONDS = 60.0


def check(report: Report, now: float, grace: float = SETTLE_GRACE_SECONDS) -> dict[str, Any]:
    """What ``audit verify`` says of one log's intents and outcomes; ``ok`` False when a record contradicts
    the pairing rules or an intent older than ``grace`` seconds has no outcome."""
    import datetime as dt

    def age(act: Act) -> float:
        when = dt.datetime.strptime(act.intent_time, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=dt.UTC)
        return now - when.timestamp()

    stale = [act for act in report.open if age(act) > grace]
    summary = report.summary()
    summary["unsettled"] = [act.describe() for act in stale][:20]
    summary["unsettled_count"] = len(stale)
    summary["ok"] = not report.problems and not stale
    return summary
