"""The barrier over a real SQLite store: confidentiality and tamper evidence of records.

Tampering is done the way an attacker with the file would do it: straight into the
``kv`` table (key, value, version, create_revision, mod_revision), bypassing the store.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import msgpack
import pytest

from strongroom.barrier import Barrier, Entry, RecordTampered, Remove, Unchanged, Write
from strongroom.barrier.barrier import MAGIC
from strongroom.errors import CKR
from strongroom.store.base import ConflictError, Record
from strongroom.store.sqlite import SqliteStore

KEY = bytearray(b"\x11" * 32)


def run_with_barrier(tmp_path: Path, body: Callable[[Barrier, Path], Awaitable[Any]], key: bytearray = KEY) -> Any:
    path = tmp_path / "store.db"

    async def main() -> Any:
        store = await SqliteStore.open(path)
        try:
            return await body(Barrier(store, key), path)
        finally:
            await store.close()

    return asyncio.run(main())


def raw_row(path: Path, key: str) -> tuple[bytes, int, int, int]:
    with sqlite3.connect(path) as db:
        row = db.execute("SELECT value, version, create_revision, mod_revision FROM kv WHERE key = ?",
                         (key,)).fetchone()
    assert row is not None
    return row


def set_raw_value(path: Path, key: str, value: bytes) -> None:
    """Overwrite only the ``value`` column, as an attacker editing the file would."""
    db = sqlite3.connect(path)
    try:
        with db:
            assert db.execute("UPDATE kv SET value = ? WHERE key = ?", (value, key)).rowcount == 1
    finally:
        db.close()


async def put(barrier: Barrier, key: str, value: dict[str, Any]) -> Entry:
    previous = await barrier.get(key)
    await barrier.commit([Write(key, value, previous)])
    entry = await barrier.get(key)
    assert entry is not None
    return entry


def assert_tampered(exc_info: pytest.ExceptionInfo[RecordTampered], key: str) -> None:
    assert exc_info.value.key == key
    assert repr(key) in str(exc_info.value)
    assert exc_info.value.code == CKR.DEVICE_ERROR


# --------------------------------------------------------------------------- round trip


def test_values_round_trip(tmp_path):
    value = {
        "label": "signing key ü",
        "n": -5,
        "big": (1 << 64) - 1,
        "blob": bytes(range(256)),
        "ratio": 0.25,
        "flags": [True, False, None],
        "nested": {"a": {"b": [1, "two", b"3"]}},
        "empty": {},
    }

    async def body(barrier: Barrier, path: Path) -> None:
        assert await barrier.get("objects/a") is None
        revision = await barrier.commit([Write("objects/a", value)])
        entry = await barrier.get("objects/a")
        assert entry is not None
        assert entry.value == value and entry.key == "objects/a"
        assert entry.revision == revision and entry.record.version == 1

        revision2 = await barrier.commit([Write("objects/a", {"v": 2}, entry)])
        assert revision2 > revision
        entry2 = await barrier.get("objects/a")
        assert entry2 is not None and entry2.value == {"v": 2} and entry2.record.version == 2

        await barrier.commit([Write("objects/b", {"v": "b"})])
        await barrier.commit([Write("other/c", {"v": "c"})])
        entries, listed_at = await barrier.list_prefix("objects/")
        assert [(e.key, e.value) for e in entries] == [("objects/a", {"v": 2}), ("objects/b", {"v": "b"})]
        assert listed_at == await barrier.store.revision()

        await barrier.commit([Remove("objects/a", entry2)])
        assert await barrier.get("objects/a") is None
        # Recreated after a delete: version starts again at 1 and still opens.
        await barrier.commit([Write("objects/a", {"v": 3})])
        entry3 = await barrier.get("objects/a")
        assert entry3 is not None and entry3.value == {"v": 3} and entry3.record.version == 1

    run_with_barrier(tmp_path, body)


def test_store_only_holds_ciphertext(tmp_path):
    secret = os.urandom(16).hex()  # distinctive: cannot appear by chance
    secret_bytes = b"raw-" + os.urandom(24)

    async def body(barrier: Barrier, path: Path) -> None:
        await barrier.commit([Write("objects/k", {"text": secret, "blob": secret_bytes})])
        entry = await barrier.get("objects/k")
        assert entry is not None
        await barrier.commit([Write("objects/k", {"text": secret + "2", "blob": secret_bytes}, entry)])
        record = await barrier.store.get("objects/k")
        assert record is not None
        assert record.value.startswith(MAGIC)
        assert secret.encode() not in record.value and secret_bytes not in record.value

    run_with_barrier(tmp_path, body)
    files = [p for p in tmp_path.iterdir() if p.name.startswith("store.db")]
    assert tmp_path / "store.db" in files
    for file in files:  # the database and whatever WAL/SHM files remain
        content = file.read_bytes()
        assert secret.encode() not in content, file
        assert secret_bytes not in content, file
    # The test would notice plaintext: the key name (not encrypted) is in the file.
    assert b"objects/k" in (tmp_path / "store.db").read_bytes()


# --------------------------------------------------------------------------- tampering


def test_swapped_record_is_refused_naming_the_key(tmp_path):
    async def body(barrier: Barrier, path: Path) -> None:
        await barrier.commit([Write("users/alice", {"role": "crypto-user"})])
        await barrier.commit([Write("users/mallory", {"role": "admin"})])
        alice_raw = raw_row(path, "users/alice")
        mallory_raw = raw_row(path, "users/mallory")
        assert alice_raw[1] == mallory_raw[1] == 1  # same version: only the key binding can tell
        set_raw_value(path, "users/alice", mallory_raw[0])
        with pytest.raises(RecordTampered) as info:
            await barrier.get("users/alice")
        assert_tampered(info, "users/alice")
        with pytest.raises(RecordTampered) as info:
            await barrier.list_prefix("users/")
        assert_tampered(info, "users/alice")
        # The untouched record still opens.
        mallory = await barrier.get("users/mallory")
        assert mallory is not None and mallory.value == {"role": "admin"}

    run_with_barrier(tmp_path, body)


def test_rolled_back_record_is_refused(tmp_path):
    async def body(barrier: Barrier, path: Path) -> None:
        await barrier.commit([Write("users/alice", {"failed_logins": 0})])
        old = raw_row(path, "users/alice")[0]
        await put(barrier, "users/alice", {"failed_logins": 5})
        current = raw_row(path, "users/alice")[0]

        # 1. In the file: the old ciphertext put back under the current version.
        set_raw_value(path, "users/alice", old)
        with pytest.raises(RecordTampered) as info:
            await barrier.get("users/alice")
        assert_tampered(info, "users/alice")

        # 2. Through the store API (e.g. a restored backup row written back): the version moves on.
        await barrier.store.put("users/alice", old)
        with pytest.raises(RecordTampered) as info:
            await barrier.get("users/alice")
        assert_tampered(info, "users/alice")

        # Even the latest genuine ciphertext no longer opens once the version has moved past it.
        await barrier.store.put("users/alice", current)
        with pytest.raises(RecordTampered):
            await barrier.get("users/alice")

    run_with_barrier(tmp_path, body)


def test_flipped_byte_in_the_file_is_refused(tmp_path):
    async def body(barrier: Barrier, path: Path) -> None:
        await barrier.commit([Write("objects/k", {"v": "x" * 40})])
        value = bytearray(raw_row(path, "objects/k")[0])
        value[len(value) // 2] ^= 0x01
        set_raw_value(path, "objects/k", bytes(value))
        with pytest.raises(RecordTampered) as info:
            await barrier.get("objects/k")
        assert_tampered(info, "objects/k")

    run_with_barrier(tmp_path, body)


def test_truncated_value_in_the_file_is_refused(tmp_path):
    async def body(barrier: Barrier, path: Path) -> None:
        await barrier.commit([Write("objects/k", {"v": "x" * 40})])
        value = raw_row(path, "objects/k")[0]
        for cut in (len(value) - 1, len(value) - 16, 20, 0):
            set_raw_value(path, "objects/k", value[:cut])
            with pytest.raises(RecordTampered) as info:
                await barrier.get("objects/k")
            assert_tampered(info, "objects/k")

    run_with_barrier(tmp_path, body)


def test_every_single_byte_change_and_every_truncation_is_refused(tmp_path):
    async def body(barrier: Barrier, path: Path) -> None:
        await barrier.commit([Write("objects/k", {"v": 1})])
        record = await barrier.store.get("objects/k")
        assert record is not None
        assert barrier.decode(record).value == {"v": 1}
        blob = record.value

        def variant(value: bytes) -> Record:
            return Record(record.key, value, record.version, record.create_revision, record.mod_revision)

        for i in range(len(blob)):
            for mask in (0x01, 0x80):
                damaged = bytearray(blob)
                damaged[i] ^= mask
                with pytest.raises(RecordTampered) as info:
                    barrier.decode(variant(bytes(damaged)))
                assert_tampered(info, "objects/k")
        for cut in range(len(blob)):
            with pytest.raises(RecordTampered):
                barrier.decode(variant(blob[:cut]))
        with pytest.raises(RecordTampered):
            barrier.decode(variant(blob + b"\x00"))
        # Same bytes, wrong version or wrong key in the metadata: refused too.
        with pytest.raises(RecordTampered):
            barrier.decode(Record(record.key, blob, record.version + 1, record.create_revision, record.mod_revision))
        with pytest.raises(RecordTampered) as info:
            barrier.decode(Record("objects/j", blob, record.version, record.create_revision, record.mod_revision))
        assert_tampered(info, "objects/j")

    run_with_barrier(tmp_path, body)


def test_authentic_ciphertext_that_is_not_a_map_is_refused(tmp_path):
    async def body(barrier: Barrier, path: Path) -> None:
        await barrier.store.put("objects/list", barrier.seal("objects/list", 1, msgpack.packb([1, 2])))
        with pytest.raises(RecordTampered, match="map"):
            await barrier.get("objects/list")
        await barrier.store.put("objects/junk", barrier.seal("objects/junk", 1, b"\xc1"))
        with pytest.raises(RecordTampered, match="decode"):
            await barrier.get("objects/junk")

    run_with_barrier(tmp_path, body)


def test_another_cluster_key_cannot_read(tmp_path):
    async def write(barrier: Barrier, path: Path) -> None:
        await barrier.commit([Write("objects/k", {"v": "secret"})])

    async def read(barrier: Barrier, path: Path) -> None:
        with pytest.raises(RecordTampered) as info:
            await barrier.get("objects/k")
        assert_tampered(info, "objects/k")

    async def read_other_epoch(path: Path) -> None:
        store = await SqliteStore.open(path)
        try:
            with pytest.raises(RecordTampered):
                await Barrier(store, KEY, epoch=2).get("objects/k")
            entry = await Barrier(store, KEY).get("objects/k")
            assert entry is not None and entry.value == {"v": "secret"}
        finally:
            await store.close()

    run_with_barrier(tmp_path, write)
    run_with_barrier(tmp_path, read, key=bytearray(b"\x22" * 32))
    flipped = bytearray(KEY)
    flipped[-1] ^= 1
    run_with_barrier(tmp_path, read, key=flipped)
    asyncio.run(read_other_epoch(tmp_path / "store.db"))


# --------------------------------------------------------------------------- optimistic locking


def test_commit_with_a_stale_entry_conflicts_and_writes_nothing(tmp_path):
    async def body(barrier: Barrier, path: Path) -> None:
        await barrier.commit([Write("objects/a", {"v": 1})])
        stale = await barrier.get("objects/a")
        assert stale is not None
        await barrier.commit([Write("objects/a", {"v": 2}, stale)])  # someone else wins the race
        revision = await barrier.store.revision()
        rows_before = raw_row(path, "objects/a")

        attempts = [
            [Write("objects/new", {"v": "new"}), Write("objects/a", {"v": 3}, stale)],
            [Write("objects/new", {"v": "new"}), Remove("objects/a", stale)],
            [Write("objects/new", {"v": "new"}), Unchanged("objects/a", stale)],
            [Write("objects/new", {"v": "new"}), Unchanged("objects/a", None)],
            [Write("objects/new", {"v": "new"}), Write("objects/a", {"v": 3})],  # "must not exist"
        ]
        for changes in attempts:
            with pytest.raises(ConflictError) as info:
                await barrier.commit(changes)
            assert info.value.key == "objects/a"
            assert await barrier.store.revision() == revision
            assert await barrier.get("objects/new") is None
            assert raw_row(path, "objects/a") == rows_before
            current = await barrier.get("objects/a")
            assert current is not None and current.value == {"v": 2}

        # With the fresh entry the same commit goes through.
        fresh = await barrier.get("objects/a")
        await barrier.commit([Write("objects/new", {"v": "new"}), Write("objects/a", {"v": 3}, fresh)])
        a, new = await barrier.get("objects/a"), await barrier.get("objects/new")
        assert a is not None and a.value == {"v": 3}
        assert new is not None and new.value == {"v": "new"}

    run_with_barrier(tmp_path, body)


def test_paged_listing_decrypts_only_the_page_and_counting_decrypts_nothing(tmp_path):
    async def body(barrier: Barrier, path: Path) -> None:
        for name in ("a", "b", "c", "d"):
            await put(barrier, f"list/{name}", {"name": name})
        await put(barrier, "other/x", {"name": "x"})
        page, more = await barrier.list_page("list/", limit=2)
        assert [e.value["name"] for e in page] == ["a", "b"] and more
        page, more = await barrier.list_page("list/", start_after="list/b", limit=2)
        assert [e.key for e in page] == ["list/c", "list/d"] and not more
        assert (await barrier.list_page("list/", start_after="list/d", limit=5)) == ([], False)
        # A tampered record outside the page is not opened (nor counted as anything but a record) ...
        set_raw_value(path, "list/d", raw_row(path, "list/a")[0])
        page, more = await barrier.list_page("list/", limit=3)
        assert [e.key for e in page] == ["list/a", "list/b", "list/c"] and more
        assert await barrier.count_prefix("list/") == 4 and await barrier.count_prefix("none/") == 0
        # ... and one inside it is refused, naming it.
        with pytest.raises(RecordTampered) as exc_info:
            await barrier.list_page("list/", start_after="list/b", limit=3)
        assert_tampered(exc_info, "list/d")

    run_with_barrier(tmp_path, body)


def test_snapshot_is_every_record_as_stored(tmp_path):
    async def body(barrier: Barrier, path: Path) -> None:
        await put(barrier, "a", {"secret": "s3cr3t"})
        await put(barrier, "b/c", {"n": 1})
        snapshot = await barrier.snapshot()
        assert [r.key for r in snapshot.records] == ["a", "b/c"]
        assert snapshot.revision == await barrier.store.revision()
        assert all(r.value.startswith(MAGIC) and b"s3cr3t" not in r.value for r in snapshot.records)
        assert barrier.decode(snapshot.records[0]).value == {"secret": "s3cr3t"}

    run_with_barrier(tmp_path, body)
