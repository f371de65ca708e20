"""Store freshness (whole-store rollback) and audit heads (tail truncation), without node processes.

The node's checks run here over a real SQLite store and barrier with a stand-in for
the worker's services; the store is "rolled back" the way an operator would do it:
by putting an older copy of the database file back.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import multiprocessing
import os
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from strongroom.audit import AuditLog, verify
from strongroom.audit.heads import first_record, head_problem, head_value, record_at
from strongroom.barrier import Barrier, Write
from strongroom.barrier.barrier import STORE_INTEGRITY_PURPOSE, derive_subkey
from strongroom.seal import FRESHNESS_FILE, SealedIdentity, destroy_seal, seal_cluster_key
from strongroom.services.freshness import (
    EPOCH_KEY,
    Freshness,
    FreshnessError,
    HighWaterMark,
    Mark,
    derive_key,
    integrity_message,
    rollback_message,
    seal_id,
)
from strongroom.store.sqlite import SqliteStore

CLUSTER_KEY = b"\x42" * 32
CLUSTER_ID = "c-1"


class FakeConfig:
    def __init__(self, node_dir: Path, node_id: str = "node1") -> None:
        self.node_dir = node_dir
        self.node_id = node_id
        self.audit_path = node_dir / "audit.log"


class FakeServices:
    """What the freshness checks use of a worker's services: it stands in for the keyring (barrier, cluster id,
    freshness key), the health (error state, boot) and the auditor at once."""

    def __init__(self, node_dir: Path, store: SqliteStore, node_id: str = "node1") -> None:
        self.config = FakeConfig(node_dir, node_id)
        self.store = store
        self.barrier = Barrier(store, bytearray(CLUSTER_KEY))
        self.cluster_id = CLUSTER_ID
        self.freshness_key = derive_key(CLUSTER_KEY, CLUSTER_ID, node_id)
        self.error: str | None = None
        self.boot = 1
        self.audited: list[tuple[str, dict[str, Any]]] = []

    async def record(self, event: str, *, actor: str | None, outcome: str = "ok",
                     details: dict[str, Any] | None = None) -> None:
        self.audited.append((event, details or {}))

    def freshness(self, *, advance: bool) -> Freshness:
        return Freshness(self.config, self.store, self, self, self, advance=advance)


def make_node_dir(root: Path, name: str = "node1") -> Path:
    node_dir = root / name
    node_dir.mkdir(parents=True, exist_ok=True)
    seal_cluster_key(node_dir, SealedIdentity(CLUSTER_ID, name), bytearray(CLUSTER_KEY))
    return node_dir


async def initialized_store(path: Path) -> SqliteStore:
    store = await SqliteStore.open(path)
    barrier = Barrier(store, bytearray(CLUSTER_KEY))
    if await barrier.get("cluster/meta") is None:
        await barrier.commit([Write("cluster/meta", {"cluster_id": CLUSTER_ID, "state": "active"})])
    return store


async def write_some(store: SqliteStore, count: int, prefix: str = "objects/") -> None:
    barrier = Barrier(store, bytearray(CLUSTER_KEY))
    for i in range(count):
        key = f"{prefix}{os.urandom(4).hex()}-{i}"
        await barrier.commit([Write(key, {"i": i})])


def copy_store(src: Path, dst_dir: Path) -> None:
    dst_dir.mkdir(parents=True, exist_ok=True)
    for path in src.parent.glob(src.name + "*"):
        shutil.copy2(path, dst_dir / path.name)


def put_back(copy_dir: Path, target: Path) -> None:
    for path in target.parent.glob(target.name + "*"):
        path.unlink()
    for path in copy_dir.iterdir():
        shutil.copy2(path, target.parent / path.name)


def mark_file(node_dir: Path, node_id: str = "node1") -> HighWaterMark:
    return HighWaterMark(node_dir, derive_key(CLUSTER_KEY, CLUSTER_ID, node_id), CLUSTER_ID, node_id,
                         seal_id(node_dir) or "")


# --- the high-water mark file ------------------------------------------------------------------


def test_the_mark_only_goes_up_and_is_authenticated(tmp_path: Path) -> None:
    node_dir = make_node_dir(tmp_path)
    mark = mark_file(node_dir)
    assert mark.load() is None
    assert mark.raise_to(Mark(10, 2)) == Mark(10, 2)
    assert mark.raise_to(Mark(5, 7)) == Mark(10, 7)  # each field is a running maximum
    assert mark.raise_to(Mark(3, 1)) == Mark(10, 7)
    assert mark.load() == Mark(10, 7)
    assert (node_dir / FRESHNESS_FILE).stat().st_mode & 0o077 == 0

    # Lowering the revision by hand (without the cluster key) is tamper, not a reset.
    document = json.loads((node_dir / FRESHNESS_FILE).read_text())
    (node_dir / FRESHNESS_FILE).write_text(json.dumps(dict(document, revision=1)))
    with pytest.raises(FreshnessError, match="failed authentication"):
        mark.load()
    # Another node's (or another cluster's) key does not open it either.
    (node_dir / FRESHNESS_FILE).write_text(json.dumps(document))
    other = HighWaterMark(node_dir, derive_key(CLUSTER_KEY, CLUSTER_ID, "node2"), CLUSTER_ID, "node1",
                          seal_id(node_dir) or "")
    with pytest.raises(FreshnessError):
        other.load()
    (node_dir / FRESHNESS_FILE).write_text("{not json")
    with pytest.raises(FreshnessError, match="damaged"):
        mark.load()


def _raise_many(node_dir: str, values: list[int]) -> None:
    mark = mark_file(Path(node_dir))
    for value in values:
        mark.raise_to(Mark(value, value // 2))


def test_several_workers_raising_the_mark_keep_the_maximum(tmp_path: Path) -> None:
    node_dir = make_node_dir(tmp_path)
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_raise_many, args=(str(node_dir), list(range(start, 400, 4))))
               for start in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(30)
        assert worker.exitcode == 0
    assert mark_file(node_dir).load() == Mark(399, 199)


def test_a_new_seal_starts_a_new_mark(tmp_path: Path) -> None:
    node_dir = make_node_dir(tmp_path)
    mark_file(node_dir).raise_to(Mark(100, 10))
    # Zeroize destroys the mark with the seal; the node added again starts afresh.
    destroy_seal(node_dir)
    assert not (node_dir / FRESHNESS_FILE).exists()
    seal_cluster_key(node_dir, SealedIdentity(CLUSTER_ID, "node1"), bytearray(CLUSTER_KEY))
    assert mark_file(node_dir).load() is None
    # A mark left from an earlier seal (say, a zeroize cut short) is not this seal's: ignored, not an alarm.
    mark_file(node_dir).raise_to(Mark(100, 10))
    saved = (node_dir / FRESHNESS_FILE).read_bytes()
    (node_dir / "cluster.seal").unlink()
    (node_dir / "seal.key").unlink()
    seal_cluster_key(node_dir, SealedIdentity(CLUSTER_ID, "node1"), bytearray(CLUSTER_KEY))
    (node_dir / FRESHNESS_FILE).write_bytes(saved)
    assert mark_file(node_dir).load() is None


def test_rollback_message() -> None:
    seen = Mark(10, 3)
    assert rollback_message(seen, 10, 3) is None
    assert rollback_message(seen, 50, 9) is None
    assert rollback_message(seen, 9, 3) == (
        "the store is older than this node has seen (revision 9 < 10): rolled back? refusing to serve")
    assert "(epoch 2 < 3)" in (rollback_message(seen, 99, 2) or "")


# --- the node's checks over a real store -------------------------------------------------------


def test_no_false_alarm_on_restart_pause_and_sibling_workers(tmp_path: Path) -> None:
    node_dir = make_node_dir(tmp_path / "nodes")
    db = tmp_path / "store" / "strongroom.db"
    db.parent.mkdir()

    async def main() -> None:
        store = await initialized_store(db)
        services = FakeServices(node_dir, store)
        first, second = services.freshness(advance=True), services.freshness(advance=False)
        for _ in range(5):
            assert await first.check() and await second.check()
            await write_some(store, 3)
        epoch = await services.barrier.get(EPOCH_KEY)
        assert epoch is not None and epoch.record.version == 5
        # Two workers checking at once, one advancing the epoch.
        results = await asyncio.gather(*[w.check() for w in (first, second) for _ in range(10)])
        assert all(results) and services.error is None
        await store.close()

        # A restart: new worker objects, same node directory; the store moved on meanwhile
        # (other nodes kept writing while this one was stopped).
        store = await initialized_store(db)
        await write_some(store, 20)
        services = FakeServices(node_dir, store)
        assert await services.freshness(advance=True).check()
        assert await services.freshness(advance=False).check()
        assert services.error is None and services.audited == []
        await store.close()

    asyncio.run(main())


async def seen_then_copied(tmp_path: Path, node_dir: Path, db: Path) -> None:
    """A store the node has checked once, copied aside to tmp_path/old (what an operator could put back)."""
    store = await initialized_store(db)
    await FakeServices(node_dir, store).freshness(advance=True).check()
    await store.close()
    copy_store(db, tmp_path / "old")


def test_an_older_copy_of_the_whole_store_is_refused_and_audited(tmp_path: Path) -> None:
    node_dir = make_node_dir(tmp_path / "nodes")
    db = tmp_path / "store" / "strongroom.db"
    db.parent.mkdir()

    async def main() -> None:
        await seen_then_copied(tmp_path, node_dir, db)

        store = await initialized_store(db)
        await write_some(store, 4)
        assert await FakeServices(node_dir, store).freshness(advance=True).check()
        await store.close()

        put_back(tmp_path / "old", db)
        store = await initialized_store(db)
        services = FakeServices(node_dir, store)
        assert not await services.freshness(advance=True).check()
        assert services.error is not None
        assert services.error.startswith("the store is older than this node has seen (revision ")
        assert services.error.endswith("): rolled back? refusing to serve")
        assert [event for event, _ in services.audited] == ["store.rollback"]
        # It does not advance anything in the old store, and says so again after a restart.
        assert (await services.barrier.get(EPOCH_KEY)).record.version == 1
        again = FakeServices(node_dir, store)
        assert not await again.freshness(advance=False).check()
        await store.close()

    asyncio.run(main())


def test_a_rollback_padded_with_junk_writes_is_caught_by_the_epoch(tmp_path: Path) -> None:
    node_dir = make_node_dir(tmp_path / "nodes")
    db = tmp_path / "store" / "strongroom.db"
    db.parent.mkdir()

    async def main() -> None:
        await seen_then_copied(tmp_path, node_dir, db)
        store = await initialized_store(db)
        for _ in range(3):
            await FakeServices(node_dir, store).freshness(advance=True).check()
        await store.close()

        put_back(tmp_path / "old", db)
        store = await SqliteStore.open(db)
        for i in range(50):  # the operator pushes the (unauthenticated) revision up with raw writes
            await store.put(f"junk/{i}", b"x")
        services = FakeServices(node_dir, store)
        assert not await services.freshness(advance=True).check()
        assert "(epoch 1 < 4)" in (services.error or "")
        await store.close()

    asyncio.run(main())


def test_a_restored_cluster_or_a_rejoined_node_starts_afresh(tmp_path: Path) -> None:
    node_dir = make_node_dir(tmp_path / "nodes")
    db = tmp_path / "store" / "strongroom.db"
    db.parent.mkdir()

    async def main() -> None:
        store = await initialized_store(db)
        await write_some(store, 30)
        assert await FakeServices(node_dir, store).freshness(advance=True).check()
        await store.close()

        # Restored from a backup: a new, younger store, and a new node directory.
        new_db = tmp_path / "restored" / "strongroom.db"
        new_db.parent.mkdir()
        new_dir = make_node_dir(tmp_path / "restored-nodes")
        store = await initialized_store(new_db)
        services = FakeServices(new_dir, store)
        assert await services.freshness(advance=True).check() and services.error is None
        await store.close()

        # The old node zeroized and added to the (restored) cluster: a new seal, a new mark.
        destroy_seal(node_dir)
        seal_cluster_key(node_dir, SealedIdentity(CLUSTER_ID, "node1"), bytearray(CLUSTER_KEY))
        store = await initialized_store(new_db)
        services = FakeServices(node_dir, store)
        assert await services.freshness(advance=True).check() and services.error is None
        await store.close()

    asyncio.run(main())


# --- the SQLite store's integrity digest ------------------------------------------------------------

INTEGRITY_KEY = derive_subkey(CLUSTER_KEY, STORE_INTEGRITY_PURPOSE, CLUSTER_ID)


async def integrity_store(path: Path) -> SqliteStore:
    """The store as a node opens it: with the integrity key from the cluster key."""
    store = await SqliteStore.open(path)
    store.enable_integrity(INTEGRITY_KEY)
    return store


def raw(path: Path, statement: str, *params: Any) -> list[tuple[Any, ...]]:
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        return db.execute(statement, params).fetchall()


def test_the_mark_keeps_the_store_integrity_origin_and_reads_old_marks(tmp_path: Path) -> None:
    node_dir = make_node_dir(tmp_path)
    mark = mark_file(node_dir)
    assert mark.raise_to(Mark(5, 1)) == Mark(5, 1, "")  # etcd, or a store from before integrity
    document = json.loads((node_dir / FRESHNESS_FILE).read_text())
    assert "integrity" not in document  # the same file as before integrity existed
    assert mark.raise_to(Mark(6, 1, "aa" * 16)) == Mark(6, 1, "aa" * 16)
    assert mark.raise_to(Mark(7, 2, "bb" * 16)) == Mark(7, 2, "aa" * 16)  # set once: another one is an alarm
    assert mark.load() == Mark(7, 2, "aa" * 16)
    # Taking the origin out (to make any digest acceptable) breaks the MAC.
    document = json.loads((node_dir / FRESHNESS_FILE).read_text())
    del document["integrity"]
    (node_dir / FRESHNESS_FILE).write_text(json.dumps(document))
    with pytest.raises(FreshnessError, match="failed authentication"):
        mark.load()
    assert integrity_message(Mark(1, 1, "aa"), "aa") is None
    assert integrity_message(Mark(1, 1, ""), "cc") is None
    assert "made anew (origin cc; this node saw origin aa)" in (integrity_message(Mark(1, 1, "aa"), "cc") or "")


def test_a_store_whose_digest_was_made_anew_is_refused(tmp_path: Path) -> None:
    """Digest and its flag deleted, so that the store takes an old row as it is: the node's mark says no."""
    node_dir = make_node_dir(tmp_path / "nodes")
    db = tmp_path / "store" / "strongroom.db"
    db.parent.mkdir()

    async def main() -> None:
        # A store written before integrity existed (no key): adopted once, no alarm, origin remembered.
        store = await initialized_store(db)
        await write_some(store, 3, prefix="users/")
        await store.close()
        store = await integrity_store(db)
        services = FakeServices(node_dir, store)
        assert await services.freshness(advance=True).check() and services.error is None
        assert store.integrity_adopted and mark_file(node_dir).load().integrity == store.integrity_id
        barrier = services.barrier
        key = (await store.list_prefix("users/")).records[0].key
        entry = await barrier.get(key)
        assert entry is not None
        old = raw(db, "SELECT key, value, version, create_revision, mod_revision FROM kv WHERE key = ?", key)[0]
        await barrier.commit([Write(key, {"failed_logins": 5}, entry)])
        assert await services.freshness(advance=True).check()
        await store.close()

        raw(db, "INSERT OR REPLACE INTO kv VALUES (?, ?, ?, ?, ?)", *old)  # the old row back...
        raw(db, "DELETE FROM integrity_state")  # ...its digest and the flag that there was one, gone
        raw(db, "DELETE FROM meta WHERE name = 'integrity'")
        store = await integrity_store(db)
        services = FakeServices(node_dir, store)
        assert (await services.barrier.get(key)).value == entry.value  # the store alone takes the old row
        assert not await services.freshness(advance=False).check()
        assert services.error is not None and "integrity digest was made anew" in services.error
        assert [event for event, _ in services.audited] == ["store.tampered"]
        await store.close()

    asyncio.run(main())


def test_a_record_put_back_while_the_node_was_stopped_stops_the_worker(tmp_path: Path) -> None:
    node_dir = make_node_dir(tmp_path / "nodes")
    db = tmp_path / "store" / "strongroom.db"
    db.parent.mkdir()

    async def main() -> None:
        store = await integrity_store(db)
        services = FakeServices(node_dir, store)
        await services.barrier.commit([Write("cluster/meta", {"cluster_id": CLUSTER_ID, "state": "active"})])
        await services.barrier.commit([Write("users/victim", {"failed_logins": 0})])
        old = raw(db, "SELECT key, value, version, create_revision, mod_revision FROM kv WHERE key = ?",
                  "users/victim")[0]
        entry = await services.barrier.get("users/victim")
        await services.barrier.commit([Write("users/victim", {"failed_logins": 5}, entry)])
        assert await services.freshness(advance=True).check()
        await store.close()

        raw(db, "INSERT OR REPLACE INTO kv VALUES (?, ?, ?, ?, ?)", *old)
        store = await integrity_store(db)
        services = FakeServices(node_dir, store)
        assert not await services.freshness(advance=True).check()
        assert services.error is not None and "does not match its authenticated digest" in services.error
        assert [event for event, _ in services.audited] == ["store.tampered"]
        await store.close()

    asyncio.run(main())


# --- audit heads --------------------------------------------------------------------------------


def _log(tmp_path: Path, records: int) -> Path:
    path = tmp_path / "audit.log"
    AuditLog.create(path)
    log = AuditLog(path, node_id="node1", boot=1)
    for i in range(records):
        log.append("user.create", actor="admin", details={"pad": "x" * (i * 37 % 300)})
    return path


def test_record_at_finds_every_record_by_binary_search(tmp_path: Path) -> None:
    path = _log(tmp_path, 150)
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    for seq in range(1, 151):
        record = record_at(path, seq)
        assert record is not None and record.seq == seq and record.hash == lines[seq - 1]["hash"]
    assert record_at(path, 0) is None and record_at(path, 151) is None
    assert first_record(path).hash == lines[0]["hash"]


def test_head_problem_names_truncation_and_rewrites(tmp_path: Path) -> None:
    path = _log(tmp_path, 20)
    log = AuditLog(path, node_id="node1", boot=1)
    head = log.head()
    recorded = head_value("node1", head, first_record(path).hash)
    assert head_problem(path, recorded, verify(path).last_seq) is None
    log.append("session.login", actor="admin")  # the log grew after the head was recorded: fine
    assert head_problem(path, recorded, verify(path).last_seq) is None

    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(lines[:-3]))  # the newest three records cut off
    result = verify(path)
    assert result.ok  # the chain alone cannot tell
    problem = head_problem(path, recorded, result.last_seq)
    assert problem is not None and problem.startswith("truncated: the log ends at seq 18, but its node recorded seq 20")

    # Cut, then appended again past the recorded seq: the record there is another one.
    for _ in range(4):
        log.append("session.login", actor="admin")
    problem = head_problem(path, recorded, verify(path).last_seq)
    assert problem is not None and problem.startswith("rewritten: the record with seq 20")

    # A whole other log in its place.
    path.unlink()
    _log(tmp_path, 25)
    problem = head_problem(path, recorded, verify(path).last_seq)
    assert problem is not None and "first record" in problem


def test_the_node_records_its_head_and_never_lowers_it(tmp_path: Path) -> None:
    node_dir = make_node_dir(tmp_path / "nodes")
    db = tmp_path / "store" / "strongroom.db"
    db.parent.mkdir()
    AuditLog.create(node_dir / "audit.log")
    log = AuditLog(node_dir / "audit.log", node_id="node1", boot=1)
    for _ in range(5):
        log.append("session.login", actor="admin")

    async def main() -> None:
        store = await initialized_store(db)
        services = FakeServices(node_dir, store)
        worker = services.freshness(advance=True)
        await worker.publish_audit_head()
        recorded = (await services.barrier.get("audit/heads/node1")).value
        assert recorded["seq"] == 5 and recorded["hash"] == log.head().hash
        log.append("session.logout", actor="admin")
        await worker.publish_audit_head()
        assert (await services.barrier.get("audit/heads/node1")).value["seq"] == 6

        # The tail cut off: the node keeps the recorded head (the evidence) and audits what it saw.
        lines = (node_dir / "audit.log").read_bytes().splitlines(keepends=True)
        (node_dir / "audit.log").write_bytes(b"".join(lines[:-2]))
        await worker.publish_audit_head()
        await services.freshness(advance=True).publish_audit_head()  # a restarted node, too
        assert (await services.barrier.get("audit/heads/node1")).value["seq"] == 6
        assert [event for event, _ in services.audited] == ["audit.head_mismatch", "audit.head_mismatch"]
        await store.close()

    asyncio.run(main())
