"""Audit heads: what makes cutting the newest records off a log evident.

A hash chain shows any edit, removal or insertion, but not that the *newest*
records were cut off the end: the shorter log is a valid chain. So each node
records its log's head (``seq``, ``hash``, ``boot``, and ``first``, the hash of
its first record, which names the log) in the store through the barrier, every
few seconds and at clean shutdown (:mod:`strongroom.services.freshness`).
``strongroom audit verify --dir`` then compares each log with the head its node
recorded (:func:`head_problem`): a log that ends before the recorded seq, or
whose record at that seq has another hash, was truncated or rewritten.

Records appended after the last recorded head (at most a few seconds' worth, or
everything since the last clean shutdown after a crash) are not covered.
"""

from __future__ import annotations

import os
from typing import Any

from strongroom.audit.log import MAX_LINE_BYTES, AuditRecord, RecordFormatError, parse_record

#: ``audit/heads/<node id>``: the last head each node recorded.
HEADS_PREFIX = "audit/heads/"


def head_key(node_id: str) -> str:
    return HEADS_PREFIX + node_id


def _line_from(f: Any, offset: int, size: int) -> AuditRecord | None:
    """The record on the first line that starts at or after ``offset`` (None past the end)."""
    if offset >= size:
        return None
    if offset == 0:
        f.seek(0)
    else:
        f.seek(offset - 1)
        f.readline(MAX_LINE_BYTES + 1)  # the rest of the line ``offset`` falls in
    if f.tell() >= size:
        return None
    raw = f.readline(MAX_LINE_BYTES + 1)
    if not raw.endswith(b"\n"):
        raise RecordFormatError("a line has no newline or is too long")
    return parse_record(raw)


def record_at(path: str | os.PathLike[str], seq: int) -> AuditRecord | None:
    """The record with this ``seq`` (None if the log has none), by binary search over the file.

    Reads about log2(size) lines, so checking a recorded head costs little even for a
    large log. Assumes the records are in seq order (a verified chain); raises
    RecordFormatError when a line it reads is damaged.
    """
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        lo, hi = 0, size
        while lo < hi:
            mid = (lo + hi) // 2
            record = _line_from(f, mid, size)
            if record is None or record.seq >= seq:
                hi = mid
            else:
                lo = mid + 1
        record = _line_from(f, lo, size)
    return record if record is not None and record.seq == seq else None


def first_record(path: str | os.PathLike[str]) -> AuditRecord | None:
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        return _line_from(f, 0, size)


def head_value(node_id: str, head: AuditRecord, first_hash: str) -> dict[str, Any]:
    """The value of ``audit/heads/<node id>`` for a log whose last record is ``head``."""
    return {"node": node_id, "seq": head.seq, "hash": head.hash, "boot": head.boot, "first": first_hash,
            "time": head.time}


def head_problem(path: str | os.PathLike[str], recorded: dict[str, Any], last_seq: int | None) -> str | None:
    """Why the log at ``path`` (whose last intact record is ``last_seq``) does not contain ``recorded``.

    None when the log still holds the recorded head: same first record, a record at
    the recorded seq, with the recorded hash.
    """
    seq = int(recorded["seq"])
    try:
        first = first_record(path)
        if first is None or first.hash != recorded.get("first"):
            first_hash = str(recorded.get("first"))[:16]
            return (f"its first record is not the one its node recorded (first hash {first_hash}…): "
                    "the log was replaced or rewritten")
        if last_seq is None or last_seq < seq:
            return (f"truncated: the log ends at seq {last_seq or 0}, but its node recorded seq {seq} "
                    f"(hash {str(recorded['hash'])[:16]}…) in the store")
        record = record_at(path, seq)
    except RecordFormatError as exc:
        return f"cannot be compared with the recorded head: {exc}"
    if record is None:
        return f"the log holds no record with seq {seq}, which its node recorded in the store"
    if record.hash != recorded["hash"]:
        return (f"rewritten: the record with seq {seq} has hash {record.hash[:16]}…, but its node recorded "
                f"{str(recorded['hash'])[:16]}…")
    return None
