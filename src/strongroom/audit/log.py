"""The node's append-only, hash-chained audit log.

One JSON Lines file per node records every management event and every
authentication. Each line is one record in canonical JSON; ``hash`` is the
SHA-256 of the canonical JSON of the record without ``hash``, and ``prev`` is
the previous record's ``hash`` (64 zeros for the first one). Anyone holding the
file can check the chain offline, with no key (see :mod:`strongroom.audit.verify`).

The chain protects against edits, removals, insertions and reordering, not
against someone who rewrites the whole tail consistently; that needs the
records to leave the node (export/signing is a separate layer).

Several worker processes of one node append to the same file, so every append
happens under an exclusive ``fcntl.flock`` on the file itself: read the last
record, write one line, fsync, unlock. Each append opens its own file
description, which also makes threads of one process exclude each other
(flock locks belong to open file descriptions, not to processes).
"""

from __future__ import annotations

import datetime as _dt
import fcntl
import hashlib
import json
import math
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from strongroom.metrics import audit as audit_metrics

GENESIS_PREV = "0" * 64
# A whole line, newline included. Keeps a record small enough to read back
# from the end of the file in one bounded step.
MAX_LINE_BYTES = 64 * 1024
FIELDS = ("seq", "boot", "time", "node", "pid", "event", "actor", "outcome", "details", "prev", "hash")

_HEX64 = re.compile(r"[0-9a-f]{64}")
#: ``intent``: a change about to be committed; the record that tells how it ended names it (see
#: :mod:`strongroom.audit.outcomes`). ``ok`` or a ``CKR_*`` name: what happened.
_OUTCOME = re.compile(r"ok|intent|CKR_[A-Z0-9_]+")
INTENT = "intent"
_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
_TAIL_CHUNK = 4096


class AuditWriteError(Exception):
    """The event could not be recorded; the caller must fail the operation it audits."""


class RecordFormatError(ValueError):
    """One line of the log is not a well-formed record (the message says why).

    ``seq`` is the line's claimed seq when it could be read, to help locate the damage.
    """

    def __init__(self, reason: str, seq: int | None = None) -> None:
        super().__init__(reason)
        self.seq = seq


@dataclass(frozen=True, slots=True)
class AuditRecord:
    seq: int
    boot: int
    time: str
    node: str
    pid: int
    event: str
    actor: str | None
    outcome: str
    details: dict[str, Any]
    prev: str
    hash: str


# --------------------------------------------------------------------------- record format


def canonical_json(obj: dict[str, Any]) -> bytes:
    """The one byte form that is hashed and written: any other spelling is not a record."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")


def record_hash(fields: dict[str, Any]) -> str:
    """SHA-256 over the canonical JSON of the record minus its own ``hash``."""
    body = {k: v for k, v in fields.items() if k != "hash"}
    return hashlib.sha256(canonical_json(body)).hexdigest()


def _reject_constant(name: str) -> Any:
    # json.loads accepts NaN/Infinity, which are not JSON and never written by us.
    raise RecordFormatError(f"not valid JSON: {name} is not a JSON value")


def parse_record(raw: bytes) -> AuditRecord:
    """Decode and check one line (with or without its newline) on its own.

    Checks shape, types, canonical spelling and the record's own hash; the links
    to the previous record are the caller's business.
    """
    line = raw[:-1] if raw.endswith(b"\n") else raw
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RecordFormatError(f"not valid UTF-8 ({exc.reason} at byte {exc.start})") from None
    try:
        obj = json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise RecordFormatError(f"not valid JSON ({exc.msg} at column {exc.colno})") from None
    except RecursionError:
        raise RecordFormatError("not valid JSON (nested too deeply)") from None
    if not isinstance(obj, dict):
        raise RecordFormatError(f"not a JSON object but {_json_type(obj)}")
    try:
        _check_fields(obj)
        _check_integrity(obj, line)
    except RecordFormatError as exc:
        exc.seq = obj["seq"] if _is_int(obj.get("seq")) else None
        raise
    return AuditRecord(**obj)


def _check_integrity(obj: dict[str, Any], line: bytes) -> None:
    try:
        canonical = canonical_json(obj)
        digest = record_hash(obj)
    except (ValueError, UnicodeEncodeError, RecursionError) as exc:
        raise RecordFormatError(f"not representable as a record ({exc})") from None
    if digest != obj["hash"]:
        raise RecordFormatError("hash mismatch: the record was altered after it was written")
    # Same values, other bytes: rules out duplicate keys and other spellings that
    # another reader could interpret differently from what was hashed.
    if canonical != line:
        raise RecordFormatError("not in canonical JSON form (same values, different bytes)")


def _check_fields(obj: dict[str, Any]) -> None:
    missing = [f for f in FIELDS if f not in obj]
    if missing:
        raise RecordFormatError(f"missing field(s): {', '.join(missing)}")
    extra = sorted(set(obj) - set(FIELDS))
    if extra:
        raise RecordFormatError(f"unexpected field(s): {', '.join(extra)}")
    for name in ("seq", "boot", "pid"):
        if not _is_int(obj[name]):
            raise RecordFormatError(f"{name} must be an integer, got {_json_type(obj[name])}")
    if obj["seq"] < 1:
        raise RecordFormatError(f"seq must be >= 1, got {obj['seq']}")
    if obj["boot"] < 0:
        raise RecordFormatError(f"boot must be >= 0, got {obj['boot']}")
    for name in ("time", "node", "event", "outcome", "prev", "hash"):
        if not isinstance(obj[name], str):
            raise RecordFormatError(f"{name} must be a string, got {_json_type(obj[name])}")
    if obj["actor"] is not None and not isinstance(obj["actor"], str):
        raise RecordFormatError(f"actor must be a string or null, got {_json_type(obj['actor'])}")
    if not isinstance(obj["details"], dict):
        raise RecordFormatError(f"details must be an object, got {_json_type(obj['details'])}")
    if not _TIME.fullmatch(obj["time"]):
        raise RecordFormatError(f"time {obj['time']!r} is not UTC ISO-8601 with milliseconds")
    if not _OUTCOME.fullmatch(obj["outcome"]):
        raise RecordFormatError(f"outcome {obj['outcome']!r} is neither 'ok', 'intent' nor a CKR_* name")
    for name in ("prev", "hash"):
        if not _HEX64.fullmatch(obj[name]):
            raise RecordFormatError(f"{name} is not 64 lowercase hex digits")


def _is_int(value: object) -> bool:
    # bool is an int subclass in Python but true/false in JSON.
    return isinstance(value, int) and not isinstance(value, bool)


def _json_type(value: object) -> str:
    names = {bool: "boolean", int: "integer", float: "number", str: "string", list: "array", dict: "object"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def _check_json_value(value: object, where: str) -> None:
    """Accept only what survives a JSON round trip unchanged.

    json.dumps would silently turn int keys into strings and tuples into lists,
    so the record in the file would differ from what the caller thinks it logged.
    """
    if value is None or isinstance(value, (str, bool, int)):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise AuditWriteError(f"{where} is {value!r}, which JSON cannot represent")
        return
    if isinstance(value, list):
        for i, item in enumerate(value):
            _check_json_value(item, f"{where}[{i}]")
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise AuditWriteError(f"{where} has a non-string key {key!r}")
            _check_json_value(item, f"{where}.{key}")
        return
    raise AuditWriteError(f"{where} is a {type(value).__name__}, which is not JSON-serializable")


def _utc_now() -> str:
    now = _dt.datetime.now(_dt.UTC)
    return f"{now:%Y-%m-%dT%H:%M:%S}.{now.microsecond // 1000:03d}Z"


# --------------------------------------------------------------------------- file access


def _pread_exact(fd: int, size: int, offset: int) -> bytes:
    chunks: list[bytes] = []
    while size > 0:
        chunk = os.pread(fd, size, offset)
        if not chunk:
            raise OSError(f"unexpected end of file at offset {offset}")
        chunks.append(chunk)
        size -= len(chunk)
        offset += len(chunk)
    return b"".join(chunks)


def _read_last_line(fd: int, size: int) -> bytes | None:
    """The last complete line of a file of ``size`` bytes, read backwards from the end.

    Raises RecordFormatError if the file does not end with a newline (a torn
    write) or if the last line is longer than any record may be.
    """
    if size == 0:
        return None
    want = min(size, _TAIL_CHUNK)
    while True:
        tail = _pread_exact(fd, want, size - want)
        if not tail.endswith(b"\n"):
            raise RecordFormatError("the last line has no newline (torn or truncated write)")
        start = tail.rfind(b"\n", 0, len(tail) - 1)
        if start >= 0:
            return tail[start + 1 :]
        if want == size:
            return tail  # the file holds a single line
        if want > MAX_LINE_BYTES:
            raise RecordFormatError(f"the last line is longer than {MAX_LINE_BYTES} bytes")
        want = min(size, want * 2, MAX_LINE_BYTES + 1)


# --------------------------------------------------------------------------- the log


class AuditLog:
    """Appends records for one node; safe to use from many processes and threads at once."""

    @staticmethod
    def create(path: str | os.PathLike[str]) -> None:
        """Create an empty log readable only by the owner. Refuses to replace an existing one."""
        path = Path(path)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            os.fchmod(fd, 0o600)  # the umask could have stripped bits we need
            os.fsync(fd)
        finally:
            os.close(fd)
        _fsync_dir(path.parent)

    def __init__(self, path: str | os.PathLike[str], *, node_id: str, boot: int) -> None:
        if not isinstance(node_id, str) or not node_id:
            raise ValueError("node_id must be a non-empty string")
        if not _is_int(boot) or boot < 0:
            raise ValueError("boot must be a non-negative integer")
        self.path = Path(path)
        self.node_id = node_id
        self.boot = boot

    @audit_metrics.counted
    def append(
        self,
        event: str,
        *,
        actor: str | None,
        outcome: str = "ok",
        details: dict[str, Any] | None = None,
    ) -> AuditRecord:
        """Write one record and return it once it is on disk. Blocks while other writers hold the log."""
        fields = self._new_fields(event, actor, outcome, {} if details is None else details)
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CLOEXEC)
        except FileNotFoundError:
            # Never recreate it: a fresh chain would hide that the old one was deleted.
            raise AuditWriteError(f"audit log {self.path} does not exist") from None
        except OSError as exc:
            raise AuditWriteError(f"cannot open audit log {self.path}: {exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            return self._append_locked(fd, fields)
        except OSError as exc:
            raise AuditWriteError(f"cannot write audit log {self.path}: {exc}") from exc
        finally:
            os.close(fd)  # also drops the lock

    def head(self) -> AuditRecord | None:
        """The last record, or None for an empty log.

        Raises AuditWriteError when the log is missing or its last line is damaged,
        i.e. exactly when :meth:`append` would refuse to extend it.
        """
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise AuditWriteError(f"cannot open audit log {self.path}: {exc}") from exc
        try:
            # Shared lock: no writer is half-way through the last line.
            fcntl.flock(fd, fcntl.LOCK_SH)
            return self._last_record(fd, os.fstat(fd).st_size)
        except OSError as exc:
            raise AuditWriteError(f"cannot read audit log {self.path}: {exc}") from exc
        finally:
            os.close(fd)

    # -- internals

    def _new_fields(self, event: str, actor: str | None, outcome: str, details: dict[str, Any]) -> dict[str, Any]:
        """Everything but the chain links, validated before the file is touched."""
        if not isinstance(event, str) or not event:
            raise AuditWriteError("event must be a non-empty string")
        if actor is not None and not isinstance(actor, str):
            raise AuditWriteError("actor must be a string or None")
        if not isinstance(outcome, str) or not _OUTCOME.fullmatch(outcome):
            raise AuditWriteError(f"outcome must be 'ok', 'intent' or a CKR_* name, got {outcome!r}")
        if not isinstance(details, dict):
            raise AuditWriteError(f"details must be a dict, got {type(details).__name__}")
        try:
            _check_json_value(details, "details")
        except RecursionError:
            raise AuditWriteError("details are nested too deeply") from None
        return {
            "boot": self.boot,
            "node": self.node_id,
            "event": event,
            "actor": actor,
            "outcome": outcome,
            "details": details,
        }

    def _append_locked(self, fd: int, fields: dict[str, Any]) -> AuditRecord:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise AuditWriteError(f"audit log {self.path} is not a regular file")
        last = self._last_record(fd, st.st_size)
        if last is not None and self.boot < last.boot:
            raise AuditWriteError(
                f"audit log {self.path}: boot counter {self.boot} is lower than the last record's {last.boot}"
            )
        record = dict(fields)
        record.update(
            seq=1 if last is None else last.seq + 1,
            prev=GENESIS_PREV if last is None else last.hash,
            time=_utc_now(),
            pid=os.getpid(),
        )
        line = self._encode(record)
        _write_durably(fd, line, rollback_to=st.st_size)
        # Built from the bytes on disk, so the caller cannot later mutate what it "logged".
        return parse_record(line)

    def _last_record(self, fd: int, size: int) -> AuditRecord | None:
        try:
            raw = _read_last_line(fd, size)
            return None if raw is None else parse_record(raw)
        except RecordFormatError as exc:
            raise AuditWriteError(f"audit log {self.path} is damaged, refusing to extend it: {exc}") from None

    def _encode(self, record: dict[str, Any]) -> bytes:
        try:
            record["hash"] = record_hash(record)
            line = canonical_json(record) + b"\n"
        except (ValueError, TypeError, UnicodeEncodeError, RecursionError) as exc:
            raise AuditWriteError(f"record for {record['event']!r} is not serializable: {exc}") from None
        if len(line) > MAX_LINE_BYTES:
            raise AuditWriteError(
                f"record for {record['event']!r} is {len(line)} bytes, over the {MAX_LINE_BYTES}-byte limit"
            )
        return line


def _write_durably(fd: int, line: bytes, *, rollback_to: int) -> None:
    """Write and fsync ``line``; on failure try to cut the file back to ``rollback_to``.

    We hold the exclusive lock, so everything past ``rollback_to`` is ours. Cutting
    it keeps a failed append from leaving a torn line that would block every
    later append. If even that fails, the torn line stays and later appends
    refuse loudly, which is the safe outcome.
    """
    try:
        view = memoryview(line)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        audit_metrics.fsync(fd)
    except OSError:
        try:
            os.ftruncate(fd, rollback_to)
            os.fsync(fd)
        except OSError:
            pass
        raise


def _fsync_dir(directory: Path) -> None:
    """Make a new directory entry durable; a log that vanishes on power loss looks like deletion."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
