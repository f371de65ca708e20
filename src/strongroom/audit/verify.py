"""Offline check of an audit log's hash chain: needs only the file, no key.

Streams the file line by line (memory stays bounded by the record size limit)
and stops at the first broken link, because everything after a break can no
longer be trusted to be in its original place.
"""

from __future__ import annotations

import fcntl
import os
from dataclasses import dataclass
from typing import BinaryIO

from strongroom.audit.log import GENESIS_PREV, MAX_LINE_BYTES, AuditRecord, RecordFormatError, parse_record


@dataclass(frozen=True, slots=True)
class Break:
    """The first place the chain does not hold.

    ``line`` is 1-based; ``seq`` is the record's own seq when it could be read.
    """

    line: int
    seq: int | None
    reason: str


@dataclass(frozen=True, slots=True)
class VerifyResult:
    """``records``, ``last_seq`` and ``last_hash`` describe the intact prefix before any break."""

    ok: bool
    records: int
    last_seq: int | None
    last_hash: str | None
    first_break: Break | None


def verify(path: str | os.PathLike[str]) -> VerifyResult:
    """Check every record and every link of the log at ``path``.

    Raises OSError if the file cannot be opened or read: that is not a chain break
    but a question about the file itself. Records appended while this runs are
    not checked.
    """
    with open(path, "rb") as f:
        size = _stable_size(f)
        return _verify_stream(f, size)


def _stable_size(f: BinaryIO) -> int:
    """The file size at a moment when no writer is half-way through a line.

    Holding the shared lock only for this instant (not for the whole scan) keeps
    a long verification from stalling the node's writers.
    """
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_SH)
    except OSError:
        # e.g. a copy on a filesystem without flock: a torn tail is then reported as such.
        return os.fstat(f.fileno()).st_size
    try:
        return os.fstat(f.fileno()).st_size
    finally:
        fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _verify_stream(f: BinaryIO, size: int) -> VerifyResult:
    last: AuditRecord | None = None
    count = 0
    remaining = size
    line_no = 0
    while remaining > 0:
        raw = f.readline(min(MAX_LINE_BYTES + 1, remaining))
        if not raw:  # the file shrank under us
            break
        remaining -= len(raw)
        line_no += 1
        try:
            last = _check_line(raw, last)
        except _Broken as exc:
            return _result(count, last, Break(line=line_no, seq=exc.seq, reason=exc.reason))
        count += 1
    return _result(count, last, None)


class _Broken(Exception):
    def __init__(self, seq: int | None, reason: str) -> None:
        super().__init__(reason)
        self.seq = seq
        self.reason = reason


def _check_line(raw: bytes, last: AuditRecord | None) -> AuditRecord:
    """The record in ``raw`` if it is sound and follows ``last``; raises _Broken otherwise."""
    if len(raw) > MAX_LINE_BYTES:
        raise _Broken(None, f"line is longer than the {MAX_LINE_BYTES}-byte record limit")
    if not raw.endswith(b"\n"):
        raise _Broken(None, "last line has no newline: truncated or torn write")
    try:
        record = parse_record(raw)
    except RecordFormatError as exc:
        raise _Broken(exc.seq, str(exc)) from None
    reason = _link_problem(record, last)
    if reason is not None:
        raise _Broken(record.seq, reason)
    return record


def _link_problem(record: AuditRecord, last: AuditRecord | None) -> str | None:
    expected_seq = 1 if last is None else last.seq + 1
    expected_prev = GENESIS_PREV if last is None else last.hash
    # seq first: a gap or a step back says more about what happened than a bare prev mismatch.
    if record.seq > expected_seq:
        return f"seq {record.seq} where {expected_seq} was expected: record(s) removed"
    if record.seq < expected_seq:
        return f"seq {record.seq} where {expected_seq} was expected: record(s) reordered, duplicated or inserted"
    if record.prev != expected_prev:
        what = "the genesis value (64 zeros)" if last is None else f"the hash of record {last.seq}"
        return f"prev does not match {what}: record(s) inserted, removed or replaced"
    if last is not None and record.boot < last.boot:
        return f"boot counter went down from {last.boot} to {record.boot}"
    return None


def _result(count: int, last: AuditRecord | None, brk: Break | None) -> VerifyResult:
    return VerifyResult(
        ok=brk is None,
        records=count,
        last_seq=None if last is None else last.seq,
        last_hash=None if last is None else last.hash,
        first_break=brk,
    )
