"""What the SQLite store's integrity checks cost: gets, commits and the startup scan.

    .venv/bin/python bench/sqlite_integrity.py [--records 10000] [--ops 10000] [--scan 20000] [--plain]
        [--store-module FILE]

Records are 300 random bytes (about a barrier-sealed user record). ``--plain`` runs without
``enable_integrity``; ``--store-module`` loads ``SqliteStore`` from another file, e.g. the store
before integrity existed (``git show 181341c:src/strongroom/store/sqlite.py > /tmp/old_sqlite.py``).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import random
import tempfile
import time
from pathlib import Path

from strongroom.store import sqlite
from strongroom.store.base import MAX_COMMIT_OPERATIONS, Put

KEY = b"\x5a" * 32
SqliteStore = sqlite.SqliteStore


async def fill(path: Path, records: int, integrity: bool) -> None:
    store = await SqliteStore.open(path)
    if integrity:
        store.enable_integrity(KEY)
    try:
        for start in range(0, records, MAX_COMMIT_OPERATIONS):
            end = min(records, start + MAX_COMMIT_OPERATIONS)
            batch = [Put(f"objects/{i:08x}", os.urandom(300)) for i in range(start, end)]
            await store.commit(batch)
    finally:
        await store.close()


async def measure(path: Path, records: int, ops: int, integrity: bool) -> dict[str, float]:
    store = await SqliteStore.open(path)
    if integrity:
        store.enable_integrity(KEY)
    try:
        started = time.perf_counter()
        await store.revision()  # the first call builds the index (full scan) when integrity is on
        first = time.perf_counter() - started
        keys = [f"objects/{random.randrange(records):08x}" for _ in range(ops)]
        started = time.perf_counter()
        for key in keys:
            await store.get(key)
        gets = time.perf_counter() - started
        started = time.perf_counter()
        for key in keys:
            record = await store.get(key)
            assert record is not None
            await store.put(key, os.urandom(300), expect=record.mod_revision)
        read_writes = time.perf_counter() - started
        started = time.perf_counter()
        listing = await store.list_prefix("objects/")
        listed = time.perf_counter() - started
        assert len(listing.records) == records
    finally:
        await store.close()
    return {"open+scan ms": first * 1e3, "get us": gets / ops * 1e6,
            "get+put us": read_writes / ops * 1e6, "put us (derived)": (read_writes - gets) / ops * 1e6,
            "list_prefix ms": listed * 1e3}


async def scan(path: Path) -> float:
    store = await SqliteStore.open(path)
    store.enable_integrity(KEY)
    try:
        started = time.perf_counter()
        await store.revision()
        return time.perf_counter() - started
    finally:
        await store.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=10_000)
    parser.add_argument("--ops", type=int, default=10_000)
    parser.add_argument("--scan", type=int, default=20_000)
    parser.add_argument("--plain", action="store_true", help="no integrity key")
    parser.add_argument("--store-module", type=Path, help="take SqliteStore from this file instead")
    args = parser.parse_args()
    global SqliteStore
    if args.store_module is not None:
        spec = importlib.util.spec_from_file_location("bench_store_module", args.store_module)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        SqliteStore = module.SqliteStore
    integrity = not args.plain and "enable_integrity" in vars(SqliteStore)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.db"
        asyncio.run(fill(path, args.records, integrity))
        result = asyncio.run(measure(path, args.records, args.ops, integrity))
        source = args.store_module or "strongroom.store.sqlite"
        print(f"{source}: integrity={'on' if integrity else 'off'} records={args.records} ops={args.ops}")
        for name, value in result.items():
            print(f"  {name:18} {value:10.1f}")
        if integrity and args.scan:
            big = Path(tmp) / "scan.db"
            asyncio.run(fill(big, args.scan, True))
            print(f"  startup scan of {args.scan} records: {asyncio.run(scan(big)) * 1e3:.0f} ms")


if __name__ == "__main__":
    main()
