"""Key creation at the store's pace (issue 15): one store write per created object set, no read on the way.

A worker in this process over a real SQLite store counts the store requests each ``key.generate`` and
``key.generate_pair`` makes (only those of the request itself: the worker's background tasks run in
other contexts). Before: a revision query (the object limit's catch-up), the commit, one read back per
new object, and one more write per key to remove its audit marker.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections import Counter
from pathlib import Path
from typing import Any

from strongroom.audit import AuditLog
from strongroom.audit.outcomes import analyze
from strongroom.barrier import Barrier, Write
from strongroom.constants import CKA, CKM, CKO
from strongroom.errors import CKR
from strongroom.mechanisms import ec as ec_mech
from strongroom.node.worker import build_worker
from strongroom.services.health import SelfTestReport
from strongroom.store.base import Listing, Operation, Record
from strongroom.store.sqlite import SqliteStore
from tests.unit.test_audit_outcomes import FaultyStore, Node
from tests.unit.test_join import Pki, node_config, peer_of

_COUNTING: contextvars.ContextVar[Counter[str] | None] = contextvars.ContextVar("h15b_counting", default=None)


class CountingStore(FaultyStore):
    """Counts the requests made from a context the test marked (a request's task and the tasks it starts)."""

    def _count(self, what: str) -> None:
        counter = _COUNTING.get()
        if counter is not None:
            counter[what] += 1

    async def get(self, key: str) -> Record | None:
        self._count("get")
        return await super().get(key)

    async def _apply(self, operations: list[Operation]) -> int:
        self._count("write")
        return await super()._apply(operations)

    async def list_prefix(self, prefix: str) -> Listing:
        self._count("list")
        return await super().list_prefix(prefix)

    async def revision(self) -> int:
        self._count("revision")
        return await super().revision()


class CountingNode(Node):
    def __init__(self, tmp: Path, boot: int = 1) -> None:  # Node's, over a CountingStore
        self.pki = Pki(tmp)
        self.config = node_config(tmp, self.pki, "node1")
        AuditLog.create(self.config.audit_path)
        self.store = CountingStore(SqliteStore(self.config.store_path))
        self.worker = build_worker(self.config, self.store, SelfTestReport((), (), 0.0), boot=boot)
        self.agent = peer_of(self.pki.client("agent")[2])
        self.session: bytes | None = None

    async def counted(self, op: str, args: dict[str, Any]) -> tuple[Counter[str], Any]:
        counter: Counter[str] = Counter()
        token = _COUNTING.set(counter)
        try:
            code, body = await self.call(op, args, self.session)
        finally:
            _COUNTING.reset(token)
        assert code == CKR.OK, (op, body)
        return counter, body

    async def following(self) -> None:
        objects = self.worker.services.keyring.require_objects()
        async with asyncio.timeout(30):
            while not objects._following:
                await asyncio.sleep(0.02)


def _aes(label: bytes) -> dict[str, Any]:
    return {"mechanism": int(CKM.AES_KEY_GEN), "template": [[int(CKA.CLASS), int(CKO.SECRET_KEY)],
            [int(CKA.TOKEN), True], [int(CKA.VALUE_LEN), 32], [int(CKA.LABEL), label]]}


def _ec_pair(label: bytes) -> dict[str, Any]:
    from cryptography.hazmat.primitives.asymmetric import ec

    params = ec_mech.params_for_curve(ec.SECP256R1())
    return {"mechanism": int(CKM.EC_KEY_PAIR_GEN),
            "public_template": [[int(CKA.TOKEN), True], [int(CKA.EC_PARAMS), params], [int(CKA.LABEL), label]],
            "private_template": [[int(CKA.TOKEN), True], [int(CKA.LABEL), label]]}


def run_counting(tmp: Path, scenario: Any) -> None:
    async def main() -> None:
        node = CountingNode(tmp)
        try:
            await node.start()
            await node.following()
            await scenario(node)
        finally:
            await node.close()

    asyncio.run(main())


async def _markers(node: Node) -> set[str]:
    return {record.key for record in (await node.store.inner.list_prefix("audit/intents/")).records}


def test_a_key_or_a_pair_is_one_store_write_and_no_read(tmp_path: Path) -> None:
    async def scenario(node: CountingNode) -> None:
        await node.counted("key.generate", _aes(b"warm-up"))  # the policies are read once, then cached
        created: list[int] = []
        for i in range(4):
            counter, body = await node.counted("key.generate", _aes(b"aes%d" % i))
            assert counter == Counter(write=1), counter
            created.append(body["handle"])
        for i in range(3):
            counter, body = await node.counted("key.generate_pair", _ec_pair(b"ec%d" % i))
            assert counter == Counter(write=1), counter
            created += [body["public"], body["private"]]
        # Each commit also removed the markers of the changes before it (their outcome was on disk):
        # only the last change's marker is left, until the next commit or the background removes it.
        assert len(await _markers(node)) == 1
        report = analyze(node.config.audit_path)
        assert report.problems == [] and report.open == []
        acts = [act for act in report.acts if act.event in ("key.generate", "key.generate_pair")]
        assert [act.outcome for act in acts] == ["ok"] * 8
        stored = {record.key for record in (await node.store.inner.list_prefix("objects/")).records}
        assert {key for act in acts for key in act.created} == stored
        # The keys are usable at once, and the cache holds the store metadata a read would give (the value is
        # in the object's fields: the cached entry keeps no copy of it).
        objects = node.worker.services.keyring.require_objects()
        barrier = node.worker.services.keyring.barrier
        assert barrier is not None
        for handle in created:
            cached = (await objects.get(handle)).entry
            read = await barrier.get(f"objects/{handle:08x}")
            assert cached is not None and read is not None
            assert cached.value == {} and cached.record.value == b""
            assert (cached.key, cached.record.version, cached.record.create_revision, cached.revision) == (
                read.key, read.record.version, read.record.create_revision, read.revision)

    run_counting(tmp_path, scenario)


def test_the_background_removes_the_last_marker(tmp_path: Path) -> None:
    async def scenario(node: CountingNode) -> None:
        await node.counted("key.generate", _aes(b"one"))
        assert len(await _markers(node)) == 1
        auditor = node.worker.services.audit
        background = asyncio.create_task(auditor.run(orphans=False))  # as node/main.py runs it
        try:
            async with asyncio.timeout(30):
                while await _markers(node):
                    await asyncio.sleep(0.2)
        finally:
            background.cancel()
        assert auditor.pending["markers"] == 0
        report = analyze(node.config.audit_path)
        assert report.problems == [] and report.open == []

    run_counting(tmp_path, scenario)


def test_an_entry_from_a_commit_is_the_entry_a_read_returns(tmp_path: Path) -> None:
    async def main() -> None:
        store = await SqliteStore.open(tmp_path / "store.db")
        try:
            barrier = Barrier(store, bytearray(b"\x11" * 32))
            written: dict[str, Any] = {}
            await barrier.commit([Write("a", {"n": 1, "t": (1, 2)}), Write("b", {"x": b"y"})], written)
            for key in ("a", "b"):
                assert written[key] == await barrier.get(key)
            again: dict[str, Any] = {}
            await barrier.commit([Write("a", {"n": 2}, written["a"])], again)
            assert again["a"] == await barrier.get("a")
            assert again["a"].record.version == 2
            assert again["a"].record.create_revision == written["a"].record.create_revision
        finally:
            await store.close()

    asyncio.run(main())


def test_a_commit_whose_answer_was_lost_is_sent_again_and_lands_once(tmp_path: Path) -> None:
    """etcd's leader died a moment ago: the write times out (applied or not). The worker sends the same commit
    again (its marker's must-not-exist compare lets at most one land) and answers what happened."""

    async def scenario(node: CountingNode) -> None:
        node.store.faults.append("lost")  # applied, the answer lost: the second try finds its marker
        code, body = await node.generate(b"lost-applied")
        assert code == CKR.OK, body
        node.store.faults += ["timeout", "timeout"]  # not applied twice, then the third try lands
        code, body = await node.generate(b"lost-not-applied")
        assert code == CKR.OK, body
        stored = {record.key for record in (await node.store.inner.list_prefix("objects/")).records}
        assert len(stored) == 2
        report = analyze(node.config.audit_path)
        assert report.problems == [] and report.open == []
        acts = [act for act in report.acts if act.event == "key.generate"]
        assert [act.outcome for act in acts] == ["ok", "ok"]
        assert {key for act in acts for key in act.created} == stored

    run_counting(tmp_path, scenario)


def test_a_worker_does_not_decode_its_own_writes_again_from_the_watch(tmp_path: Path) -> None:
    """The watch reports this worker's own commits too: their cache entries came from the commit, so the
    follower skips them (a key's mod revision names one write); a write by anyone else is decoded as before."""

    async def scenario(node: CountingNode) -> None:
        objects = node.worker.services.keyring.require_objects()
        barrier = objects._barrier
        decoded: list[str] = []
        original = barrier.decode

        def counting_decode(record: Record) -> Any:
            if record.key.startswith("objects/"):
                decoded.append(record.key)
            return original(record)

        barrier.decode = counting_decode  # type: ignore[method-assign]  # counts what the follower decodes

        async def caught_up() -> None:
            current = await node.store.inner.revision()
            async with asyncio.timeout(30):
                while objects._revision < current:
                    await asyncio.sleep(0.02)

        handles = [(await node.counted("key.generate", _aes(b"own%d" % i)))[1]["handle"] for i in range(3)]
        await caught_up()
        assert decoded == []
        key = f"objects/{handles[0]:08x}"
        entry = await barrier.get(key)  # what another worker or node writing this object would have read
        assert entry is not None
        decoded.clear()
        revision = await barrier.commit([Write(key, entry.value, entry)])  # not through the cache
        await caught_up()
        assert decoded == [key]
        assert (await objects.get(handles[0])).revision == revision

    run_counting(tmp_path, scenario)
