"""Audit log: the chain format, tamper detection, crash safety and concurrent writers."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import re
import stat
from pathlib import Path
from typing import Any

import pytest

from strongroom.audit import MAX_LINE_BYTES, AuditLog, AuditRecord, AuditWriteError, verify

NODE = "node-a"
ZEROS = "0" * 64


# --------------------------------------------------------------------------- helpers
# Written from the spec, not from the implementation, so they also pin the format.


def canonical(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def seal(obj: dict[str, Any]) -> bytes:
    """A line whose own hash is correct, as a forger who knows the format would write it."""
    body = {k: v for k, v in obj.items() if k != "hash"}
    return canonical({**body, "hash": hashlib.sha256(canonical(body)).hexdigest()}) + b"\n"


def lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def write_lines(path: Path, content: list[bytes]) -> None:
    path.write_bytes(b"".join(content))


@pytest.fixture
def log_path(tmp_path: Path) -> Path:
    path = tmp_path / "audit.jsonl"
    AuditLog.create(path)
    return path


def fill(path: Path, n: int, *, boot: int = 1) -> list[AuditRecord]:
    log = AuditLog(path, node_id=NODE, boot=boot)
    return [log.append("user.create", actor="so", details={"user": f"u{i}", "i": i}) for i in range(n)]


def assert_break(path: Path, *, line: int, seq: int | None, reason: str, records: int) -> None:
    result = verify(path)
    assert not result.ok
    assert result.first_break is not None, result
    assert result.first_break.line == line, result.first_break
    assert result.first_break.seq == seq, result.first_break
    assert re.search(reason, result.first_break.reason), result.first_break.reason
    assert result.records == records
    assert result.last_seq == (records or None)


# --------------------------------------------------------------------------- format and happy path


def test_create_makes_empty_owner_only_file(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    old = os.umask(0)  # the mode must not depend on the caller's umask
    try:
        AuditLog.create(path)
    finally:
        os.umask(old)
    assert path.read_bytes() == b""
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with pytest.raises(FileExistsError):
        AuditLog.create(path)


def test_empty_log_verifies_and_has_no_head(log_path: Path) -> None:
    result = verify(log_path)
    assert result.ok and result.records == 0 and result.last_seq is None and result.last_hash is None
    assert AuditLog(log_path, node_id=NODE, boot=1).head() is None


def test_chain_of_appends_verifies(log_path: Path) -> None:
    log = AuditLog(log_path, node_id=NODE, boot=3)
    first = log.append("auth.login", actor=None, outcome="CKR_PIN_INCORRECT", details={"user": "bob"})
    second = log.append("auth.login", actor="bob")
    third = log.append("user.create", actor="bob", details={"user": "carol", "roles": ["CU"], "n": 1.5})

    assert [r.seq for r in (first, second, third)] == [1, 2, 3]
    assert first.prev == ZEROS and second.prev == first.hash and third.prev == second.hash
    assert second.details == {} and second.outcome == "ok"
    assert log.head() == third

    result = verify(log_path)
    assert result.ok and result.first_break is None
    assert (result.records, result.last_seq, result.last_hash) == (3, 3, third.hash)


def test_record_line_format_matches_spec(log_path: Path) -> None:
    rec = AuditLog(log_path, node_id=NODE, boot=7).append("user.create", actor="ålice", details={"note": "ünïcode"})
    [raw] = lines(log_path)
    obj = json.loads(raw)
    assert set(obj) == {"seq", "boot", "time", "node", "pid", "event", "actor", "outcome", "details", "prev", "hash"}
    assert raw == seal(obj)  # canonical, UTF-8 (not \u-escaped), own hash over the rest
    assert "ålice".encode() in raw
    assert obj["seq"] == 1 and obj["boot"] == 7 and obj["node"] == NODE and obj["pid"] == os.getpid()
    assert obj["prev"] == ZEROS
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", obj["time"])
    assert AuditRecord(**obj) == rec


def test_returned_record_is_detached_from_callers_details(log_path: Path) -> None:
    details: dict[str, Any] = {"k": ["v"]}
    rec = AuditLog(log_path, node_id=NODE, boot=1).append("x.y", actor=None, details=details)
    details["k"].append("changed later")
    assert rec.details == {"k": ["v"]}


def test_boot_counter_may_grow(log_path: Path) -> None:
    fill(log_path, 2, boot=1)
    fill(log_path, 2, boot=2)
    assert verify(log_path).ok


# --------------------------------------------------------------------------- tampering


def test_edited_field_is_a_hash_mismatch(log_path: Path) -> None:
    fill(log_path, 5)
    content = lines(log_path)
    content[2] = content[2].replace(b'"actor":"so"', b'"actor":"eve"')
    write_lines(log_path, content)
    assert_break(log_path, line=3, seq=3, reason="hash mismatch", records=2)


def test_edited_field_with_recomputed_hash_breaks_next_link(log_path: Path) -> None:
    fill(log_path, 5)
    content = lines(log_path)
    obj = json.loads(content[2])
    obj["outcome"] = "CKR_PIN_INCORRECT"
    content[2] = seal(obj)
    write_lines(log_path, content)
    assert_break(log_path, line=4, seq=4, reason="prev does not match the hash of record 3", records=3)


def test_deleted_middle_line_is_reported(log_path: Path) -> None:
    fill(log_path, 5)
    content = lines(log_path)
    del content[2]
    write_lines(log_path, content)
    assert_break(log_path, line=3, seq=4, reason=r"seq 4 where 3 was expected: record\(s\) removed", records=2)


def test_deleted_first_line_is_reported(log_path: Path) -> None:
    fill(log_path, 3)
    write_lines(log_path, lines(log_path)[1:])
    assert_break(log_path, line=1, seq=2, reason="seq 2 where 1 was expected", records=0)


def test_swapped_lines_are_reported(log_path: Path) -> None:
    fill(log_path, 5)
    content = lines(log_path)
    content[1], content[2] = content[2], content[1]
    write_lines(log_path, content)
    assert_break(log_path, line=2, seq=3, reason="seq 3 where 2 was expected", records=1)


def test_truncated_last_line_is_reported(log_path: Path) -> None:
    fill(log_path, 4)
    content = lines(log_path)
    content[-1] = content[-1][: len(content[-1]) // 2]
    write_lines(log_path, content)
    assert_break(log_path, line=4, seq=None, reason="no newline: truncated", records=3)


def test_last_line_missing_only_its_newline_is_reported(log_path: Path) -> None:
    fill(log_path, 2)
    log_path.write_bytes(log_path.read_bytes()[:-1])
    assert_break(log_path, line=2, seq=None, reason="no newline", records=1)


def test_forged_line_with_correct_own_hash_is_reported(log_path: Path) -> None:
    recs = fill(log_path, 4)
    content = lines(log_path)
    # A plausible record with a correct own hash but a made-up link.
    forged = json.loads(content[1])
    forged.update(seq=3, event="user.delete", prev="ab" * 32)
    content.insert(2, seal(forged))
    write_lines(log_path, content)
    assert_break(log_path, line=3, seq=3, reason="prev does not match the hash of record 2", records=2)
    assert verify(log_path).last_hash == recs[1].hash


def test_forged_line_chained_correctly_breaks_at_the_displaced_record(log_path: Path) -> None:
    fill(log_path, 4)
    content = lines(log_path)
    forged = json.loads(content[1])
    forged.update(seq=3, event="user.delete", prev=forged["hash"])
    content.insert(2, seal(forged))
    write_lines(log_path, content)
    # The forgery itself links up; the original record 3 after it cannot.
    assert_break(log_path, line=4, seq=3, reason="seq 3 where 4 was expected", records=3)


def test_decreasing_boot_counter_is_reported(log_path: Path) -> None:
    fill(log_path, 2, boot=5)
    content = lines(log_path)
    last = json.loads(content[-1])
    content.append(seal({**last, "seq": 3, "boot": 4, "prev": last["hash"]}))
    write_lines(log_path, content)
    assert_break(log_path, line=3, seq=3, reason="boot counter went down from 5 to 4", records=2)


def test_first_record_must_start_from_genesis(log_path: Path) -> None:
    fill(log_path, 1)
    obj = json.loads(lines(log_path)[0])
    write_lines(log_path, [seal({**obj, "prev": "11" * 32})])
    assert_break(log_path, line=1, seq=1, reason="prev does not match the genesis value", records=0)


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda o: o.pop("pid"), "missing field.*pid"),
        (lambda o: o.update(extra=1), "unexpected field.*extra"),
        (lambda o: o.update(seq="2"), "seq must be an integer, got string"),
        (lambda o: o.update(boot=True), "boot must be an integer, got boolean"),
        (lambda o: o.update(actor=5), "actor must be a string or null"),
        (lambda o: o.update(details=[]), "details must be an object"),
        (lambda o: o.update(time="yesterday"), "time .* is not UTC ISO-8601"),
        (lambda o: o.update(outcome="failed"), "outcome .* neither 'ok', 'intent' nor a CKR_"),
        (lambda o: o.update(prev="XYZ"), "prev is not 64 lowercase hex"),
    ],
)
def test_malformed_records_are_reported(log_path: Path, mutate: Any, reason: str) -> None:
    fill(log_path, 3)
    content = lines(log_path)
    obj = json.loads(content[1])
    mutate(obj)
    content[1] = seal(obj)
    write_lines(log_path, content)
    result = verify(log_path)
    assert result.first_break is not None and result.first_break.line == 2
    assert re.search(reason, result.first_break.reason), result.first_break.reason


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        (b"{not json\n", "not valid JSON"),
        (b"\n", "not valid JSON"),
        (b"[1,2]\n", "not a JSON object"),
        (b"\xff\xfe\n", "not valid UTF-8"),
    ],
)
def test_garbage_lines_are_reported(log_path: Path, bad: bytes, reason: str) -> None:
    fill(log_path, 3)
    content = lines(log_path)
    content.insert(1, bad)
    write_lines(log_path, content)
    assert_break(log_path, line=2, seq=None, reason=reason, records=1)


def test_non_canonical_spelling_is_reported(log_path: Path) -> None:
    fill(log_path, 2)
    content = lines(log_path)
    obj = json.loads(content[1])
    # Same values, own hash still right, but spelled differently (here: a duplicate
    # key that other JSON readers may resolve differently).
    content[1] = content[1][:-2] + b',"actor":"so"}\n'
    assert json.loads(content[1]) == obj
    write_lines(log_path, content)
    assert_break(log_path, line=2, seq=2, reason="canonical", records=1)


def test_overlong_line_is_reported(log_path: Path) -> None:
    fill(log_path, 1)
    with log_path.open("ab") as f:
        f.write(b"x" * (MAX_LINE_BYTES + 10) + b"\n")
    assert_break(log_path, line=2, seq=None, reason="longer than", records=1)


# --------------------------------------------------------------------------- refusing to write


def test_append_to_missing_file_fails_and_does_not_create_it(tmp_path: Path) -> None:
    path = tmp_path / "gone.jsonl"
    with pytest.raises(AuditWriteError, match="does not exist"):
        AuditLog(path, node_id=NODE, boot=1).append("auth.login", actor="so")
    assert not path.exists()


@pytest.mark.parametrize(
    "damage",
    [
        lambda c: c[:-1] + [c[-1][:-20]],  # torn write
        lambda c: c[:-1] + [c[-1][:-1]],  # only the newline lost
        lambda c: c[:-1] + [c[-1].replace(b'"so"', b'"xx"')],  # altered
        lambda c: c + [b"garbage\n"],
    ],
)
def test_append_refuses_to_extend_a_damaged_chain(log_path: Path, damage: Any) -> None:
    fill(log_path, 3)
    write_lines(log_path, damage(lines(log_path)))
    before = log_path.read_bytes()
    log = AuditLog(log_path, node_id=NODE, boot=1)
    with pytest.raises(AuditWriteError, match="damaged"):
        log.append("auth.login", actor="so")
    with pytest.raises(AuditWriteError, match="damaged"):
        log.head()
    assert log_path.read_bytes() == before


def test_append_refuses_a_lower_boot_counter(log_path: Path) -> None:
    fill(log_path, 1, boot=4)
    with pytest.raises(AuditWriteError, match="boot counter 3 is lower"):
        AuditLog(log_path, node_id=NODE, boot=3).append("auth.login", actor="so")
    assert verify(log_path).records == 1


@pytest.mark.parametrize(
    "details",
    [
        {"when": object()},
        {"raw": b"bytes"},
        {"nested": {"set": {1, 2}}},
        {1: "non-string key"},
        {"nan": float("nan")},
        {"t": ("tuple",)},
    ],
)
def test_non_json_details_are_rejected_before_writing(log_path: Path, details: dict[Any, Any]) -> None:
    fill(log_path, 1)
    before = log_path.read_bytes()
    with pytest.raises(AuditWriteError):
        AuditLog(log_path, node_id=NODE, boot=1).append("user.create", actor="so", details=details)
    assert log_path.read_bytes() == before


@pytest.mark.parametrize(
    "kwargs",
    [
        {"event": "", "actor": None},
        {"event": "x", "actor": 3},
        {"event": "x", "actor": None, "outcome": "error"},
        {"event": "x", "actor": None, "details": ["not", "a", "dict"]},
    ],
)
def test_bad_arguments_are_rejected(log_path: Path, kwargs: dict[str, Any]) -> None:
    with pytest.raises(AuditWriteError):
        AuditLog(log_path, node_id=NODE, boot=1).append(**kwargs)
    assert log_path.read_bytes() == b""


def test_oversized_record_is_rejected(log_path: Path) -> None:
    log = AuditLog(log_path, node_id=NODE, boot=1)
    with pytest.raises(AuditWriteError, match="limit"):
        log.append("user.create", actor="so", details={"blob": "x" * MAX_LINE_BYTES})
    assert log_path.read_bytes() == b""
    # A large record just under the limit is fine and is found again by the backward read.
    rec = log.append("user.create", actor="so", details={"blob": "y" * (MAX_LINE_BYTES - 400)})
    assert log.append("auth.login", actor="so").prev == rec.hash
    assert verify(log_path).ok


def test_failed_write_is_rolled_back(log_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = AuditLog(log_path, node_id=NODE, boot=1)
    log.append("auth.login", actor="so")
    before = log_path.read_bytes()
    real_write = os.write
    calls = 0

    def disk_fills_up(fd: int, data: Any) -> int:
        nonlocal calls
        calls += 1
        if calls == 1:
            return real_write(fd, bytes(data[:10]))  # a short write...
        raise OSError(28, "No space left on device")  # ...then the disk is full

    monkeypatch.setattr(os, "write", disk_fills_up)
    with pytest.raises(AuditWriteError, match="No space left"):
        log.append("user.create", actor="so")
    monkeypatch.undo()

    # No torn line is left behind to block the node once space is back.
    assert log_path.read_bytes() == before
    assert log.append("user.create", actor="so").seq == 2
    assert verify(log_path).ok


# --------------------------------------------------------------------------- concurrency


WORKERS = 4
PER_WORKER = 50


def _worker(path: str, worker: int, start: Any) -> None:
    start.wait()
    log = AuditLog(path, node_id=NODE, boot=1)
    for i in range(PER_WORKER):
        log.append("auth.login", actor=f"w{worker}", details={"worker": worker, "i": i})


def test_concurrent_appends_from_several_processes(log_path: Path) -> None:
    # fork keeps this fast and independent of how pytest names the test module;
    # every append opens its own file description, so nothing is shared anyway.
    ctx = multiprocessing.get_context("fork")
    start = ctx.Event()
    procs = [ctx.Process(target=_worker, args=(str(log_path), w, start)) for w in range(WORKERS)]
    for p in procs:
        p.start()
    start.set()
    for p in procs:
        p.join(timeout=60)
    assert [p.exitcode for p in procs] == [0] * WORKERS

    result = verify(log_path)
    assert result.ok, result.first_break
    assert result.records == result.last_seq == WORKERS * PER_WORKER

    records = [json.loads(raw) for raw in lines(log_path)]
    assert [r["seq"] for r in records] == list(range(1, WORKERS * PER_WORKER + 1))
    seen = sorted((r["details"]["worker"], r["details"]["i"]) for r in records)
    assert seen == [(w, i) for w in range(WORKERS) for i in range(PER_WORKER)]
    assert len({r["pid"] for r in records}) == WORKERS
