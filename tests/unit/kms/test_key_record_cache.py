"""The gateway's short key-record cache and the last-known records of custom-key-store keys."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from strongroom.errors import CKR
from strongroom.kms.backend import ClusterError
from strongroom.kms.model import KEYS, Metadata, put


class FakeRecords:
    def __init__(self) -> None:
        self.records: dict[str, tuple[dict[str, Any], int]] = {}
        self.reads = 0
        self.unreachable = False
        self.gate: asyncio.Event | None = None

    async def record_get(self, key: str) -> tuple[dict[str, Any] | None, int]:
        if self.unreachable:
            raise ClusterError(CKR.DEVICE_REMOVED, "no node answers", unreachable=True)
        self.reads += 1
        value, revision = self.records.get(key, (None, 0))
        if self.gate is not None:
            await self.gate.wait()
        return value, revision

    async def record_commit(self, changes: list[dict[str, Any]]) -> bool:
        for change in changes:
            self.records[change["key"]] = (change["value"], self.records.get(change["key"], ({}, 0))[1] + 1)
        return True


def record(key_id: str, state: str = "Enabled", store: str | None = None) -> dict[str, Any]:
    value = {"key_id": key_id, "created": 1.0, "key_usage": "ENCRYPT_DECRYPT", "key_spec": "SYMMETRIC_DEFAULT",
             "state": state, "materials": [{"version": 1, "handle": 7, "material_id": "m", "created": 1.0}]}
    if store:
        value.update(custom_key_store_id=store, cloud_hsm_cluster_id="cluster-x", origin="AWS_CLOUDHSM")
    return value


class Clock:
    now = 100.0

    def __call__(self) -> float:
        return self.now


def test_reads_are_reused_for_the_cache_time_and_commits_drop_them() -> None:
    async def main() -> None:
        backend, clock = FakeRecords(), Clock()
        backend.records[KEYS + "k"] = (record("k"), 1)
        metadata = Metadata(backend, cache_seconds=1.0, clock=clock)  # type: ignore[arg-type]
        assert (await metadata.get_key("k")).state == "Enabled"
        await metadata.get_key("k")
        assert backend.reads == 1
        # Another gateway disables the key: seen once the cache time has passed.
        backend.records[KEYS + "k"] = (record("k", "Disabled"), 2)
        assert (await metadata.get_key("k")).state == "Enabled"
        clock.now += 1.0
        assert (await metadata.get_key("k")).state == "Disabled"
        # Through this gateway: at once.
        await metadata.commit([put(KEYS + "k", record("k", "Enabled"), 2)])
        assert (await metadata.get_key("k")).state == "Enabled"
        # update_key always reads the cluster.
        reads = backend.reads
        await metadata.update_key("k", lambda key: None)
        assert backend.reads == reads + 1

    asyncio.run(main())


def test_a_read_racing_with_a_commit_is_not_cached() -> None:
    async def main() -> None:
        backend = FakeRecords()
        backend.records[KEYS + "k"] = (record("k"), 1)
        metadata = Metadata(backend, cache_seconds=60.0)  # type: ignore[arg-type]
        backend.gate = asyncio.Event()
        reader = asyncio.create_task(metadata.get_key("k"))
        await asyncio.sleep(0)
        backend.gate.set()
        backend.gate = None
        await metadata.commit([put(KEYS + "k", record("k", "Disabled"), 1)])
        assert (await reader).state == "Enabled"  # read before the commit answered...
        assert (await metadata.get_key("k")).state == "Disabled"  # ...but not cached

    asyncio.run(main())


def test_unreachable_cluster_store_keys_from_their_last_record_others_raise() -> None:
    async def main() -> None:
        backend = FakeRecords()
        backend.records[KEYS + "s"] = (record("s", store="cks-1"), 1)
        backend.records[KEYS + "d"] = (record("d"), 1)
        metadata = Metadata(backend, cache_seconds=0.0)  # type: ignore[arg-type]
        lost: list[str] = []
        metadata.unreachable_hook = lambda key: lost.append(key.custom_key_store_id)
        await metadata.get_key("s")
        await metadata.get_key("d")
        backend.unreachable = True
        key = await metadata.get_key("s")
        assert key is not None and key.key_id == "s" and lost == ["cks-1"]
        for key_id in ("d", "never-read"):
            with pytest.raises(ClusterError):
                await metadata.get_key(key_id)

    asyncio.run(main())
