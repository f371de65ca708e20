"""The audit log never says ``ok`` for a change that did not happen (issue 14, item 1).

A worker runs in this process over a real SQLite store wrapped by :class:`FaultyStore`, which
fails chosen commits the ways a real store does: refused with nothing written (etcd without
quorum, a full disk) or timed out after it was applied (etcd's "request timed out"). Every
test then reads the audit log as a file and checks what it claims against the store.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from strongroom.audit import AuditLog, AuditWriteError
from strongroom.audit.outcomes import analyze, false_claims, marker_key
from strongroom.barrier import Write
from strongroom.constants import CKA, CKM, CKO
from strongroom.dispatch.call import Call
from strongroom.errors import CKR
from strongroom.node.worker import build_worker
from strongroom.services.auditor import _OrphanScanner
from strongroom.services.health import SelfTestReport
from strongroom.store.base import Listing, Operation, OutcomeUnknownError, Record, Store, UnavailableError, WatchEvent
from strongroom.store.sqlite import SqliteStore
from strongroom.transport.protocol import Request
from tests.unit.test_join import Pki, node_config, peer_of


class FaultyStore(Store):
    """A real store whose next commits touching ``objects/`` fail as armed."""

    def __init__(self, inner: SqliteStore) -> None:
        self.inner = inner
        #: Each armed fault: "refuse" (nothing written), "lost" (written, then the answer is lost) or "timeout"
        #: (not written, the answer lost).
        self.faults: list[str] = []

    async def get(self, key: str) -> Record | None:
        return await self.inner.get(key)

    async def _apply(self, operations: list[Operation]) -> int:
        if self.faults and any(op.key.startswith("objects/") for op in operations):
            fault = self.faults.pop(0)
            if fault == "refuse":
                raise UnavailableError("test: the store refused the write; nothing was written")
            if fault == "timeout":
                raise OutcomeUnknownError("test: the write timed out (and was not applied)")
            await self.inner.commit(operations)
            raise OutcomeUnknownError("test: the write timed out; it may or may not have been applied")
        return await self.inner.commit(operations)

    async def list_prefix(self, prefix: str) -> Listing:
        return await self.inner.list_prefix(prefix)

    def watch(self, prefix: str, start_revision: int) -> AsyncIterator[WatchEvent]:
        return self.inner.watch(prefix, start_revision)

    async def revision(self) -> int:
        return await self.inner.revision()

    async def close(self) -> None:
        await self.inner.close()

    def enable_integrity(self, key: bytes) -> None:
        self.inner.enable_integrity(key)


class Node:
    def __init__(self, tmp: Path, boot: int = 1) -> None:
        self.pki = Pki(tmp)
        self.config = node_config(tmp, self.pki, "node1")
        AuditLog.create(self.config.audit_path)
        self.store = FaultyStore(SqliteStore(self.config.store_path))
        self.worker = build_worker(self.config, self.store, SelfTestReport((), (), 0.0), boot=boot)
        self.agent = peer_of(self.pki.client("agent")[2])
        self.session: bytes | None = None

    async def call(self, op: str, args: dict[str, Any], session: bytes | None = None) -> tuple[int, Any]:
        return await self.worker.pipeline.handle(Request(1, op, session, args), 1, self.agent)

    async def ok(self, op: str, args: dict[str, Any], session: bytes | None = None) -> Any:
        code, body = await self.call(op, args, session)
        assert code == CKR.OK, (op, body)
        return body

    async def start(self) -> None:
        from strongroom import pki

        body = await self.ok("cluster.initialize", {})
        cert = pki.sign_csr(self.pki.ca_key, self.pki.ca_cert, body["csr"].encode(), days=30, server=False,
                            client=True)
        body = await self.ok("cluster.install_certificate",
                             {"certificate": pki.cert_to_pem(cert).decode(),
                              "trust_anchor": pki.cert_to_pem(self.pki.ca_cert).decode()})
        await self.ok("cluster.activate",
                      {"password": "first-admin-pw", "activation_secret": body["activation_secret"]})
        admin = (await self.ok("session.login", {"username": "admin", "password": "first-admin-pw"}))["session"]
        await self.ok("user.create", {"username": "alice", "role": "crypto-user", "password": "password1"}, admin)
        self.session = (await self.ok("session.login", {"username": "alice", "password": "password1"}))["session"]

    async def generate(self, label: bytes = b"k") -> tuple[int, Any]:
        template = [[int(CKA.CLASS), int(CKO.SECRET_KEY)], [int(CKA.TOKEN), True], [int(CKA.VALUE_LEN), 32],
                    [int(CKA.LABEL), label]]
        return await self.call("key.generate", {"mechanism": int(CKM.AES_KEY_GEN), "template": template},
                               self.session)

    async def objects(self) -> set[str]:
        return {record.key for record in (await self.store.inner.list_prefix("objects/")).records}

    def records(self, event: str | None = None) -> list[dict[str, Any]]:
        lines = self.config.audit_path.read_text().splitlines()
        found = [json.loads(line) for line in lines]
        return [r for r in found if event is None or r["event"] == event]

    async def close(self) -> None:
        await self.worker.services.keyring.stop_background()
        await self.store.close()


def run_node(tmp: Path, scenario: Callable[[Node], Awaitable[None]], boot: int = 1,
             before: Callable[[Path], None] = lambda _path: None) -> None:
    async def main() -> None:
        node = Node(tmp, boot)
        before(node.config.audit_path)
        try:
            await node.start()
            await scenario(node)
        finally:
            await node.close()

    asyncio.run(main())


def claims(node: Node, event: str) -> list[dict[str, Any]]:
    """What the log says of ``event``: one entry per act, its final outcome and the keys it names."""
    report = analyze(node.config.audit_path)
    return [act for act in report.acts if act.event == event]


def test_a_refused_commit_is_not_audited_as_ok(tmp_path: Path) -> None:
    async def scenario(node: Node) -> None:
        node.store.faults.append("refuse")
        code, body = await node.generate(b"refused")
        assert code == CKR.DEVICE_ERROR, body
        assert await node.objects() == set()
        # The attack on the old code: its witness wrote an ``ok`` key.generate record before the commit.
        oks = [r for r in node.records("key.generate") if r["outcome"] == "ok"]
        assert oks == [], oks
        (act,) = claims(node, "key.generate")
        assert act.outcome == "CKR_DEVICE_ERROR" and act.created == []

    run_node(tmp_path, scenario)


def test_a_commit_whose_answer_was_lost_is_audited_as_what_happened(tmp_path: Path) -> None:
    async def scenario(node: Node) -> None:
        # Lost, and every try sent again lost too (the worker resends a lost commit for a few seconds).
        node.store.faults += ["lost"] + ["timeout"] * 100
        code, _ = await node.generate(b"lost")
        node.store.faults.clear()
        assert code == CKR.DEVICE_ERROR  # the caller was told it failed...
        stored = await node.objects()
        assert len(stored) == 1  # ...but the key exists: the log must say ok, and name it
        (act,) = claims(node, "key.generate")
        assert act.outcome == "ok" and set(act.created) == stored

    run_node(tmp_path, scenario)


def test_every_success_has_one_intent_and_one_outcome(tmp_path: Path) -> None:
    async def scenario(node: Node) -> None:
        for i in range(3):
            code, body = await node.generate(b"fine%d" % i)
            assert code == CKR.OK, body
        report = analyze(node.config.audit_path)
        assert report.problems == [] and report.open == []
        acts = [act for act in report.acts if act.event == "key.generate"]
        assert [act.outcome for act in acts] == ["ok"] * 3
        assert {key for act in acts for key in act.created} == await node.objects()

    run_node(tmp_path, scenario)


def test_an_outcome_that_cannot_be_written_is_written_later(tmp_path: Path) -> None:
    async def scenario(node: Node) -> None:
        log = node.worker.services.audit._log
        real_append = log.append

        def full_disk(event: str, **kw: Any) -> Any:
            if kw.get("outcome") != "intent" and event == "key.generate":
                raise AuditWriteError("cannot write audit log: [Errno 28] No space left on device")
            return real_append(event, **kw)

        log.append = full_disk  # type: ignore[method-assign]  # the disk fills between intent and outcome
        code, body = await node.generate(b"full")
        assert code == CKR.OK, body  # the key was made (its intent is on disk): the caller is told so
        assert analyze(node.config.audit_path).open  # ...and the log says its fate is not written yet
        log.append = real_append  # type: ignore[method-assign]  # space freed
        await node.worker.services.audit._retry()
        report = analyze(node.config.audit_path)
        assert report.open == [] and report.problems == []
        (act,) = [act for act in report.acts if act.event == "key.generate"]
        assert act.outcome == "ok" and set(act.created) == await node.objects()

    run_node(tmp_path, scenario)


def _intent_of_a_dead_process(path: Path, boot: int = 1) -> int:
    """An intent written by another process that then died (a worker killed mid-change): its seq."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            record = AuditLog(path, node_id="node1", boot=boot).append("key.generate", actor="alice",
                                                                        outcome="intent", details={"label": "x"})
            os.write(write, str(record.seq).encode())
        finally:
            os._exit(0)
    os.close(write)
    seq = int(os.read(read, 32))
    os.close(read)
    os.waitpid(pid, 0)
    return seq


@pytest.mark.parametrize("landed", [False, True], ids=["never-landed", "landed"])
def test_the_intent_of_a_dead_worker_is_settled_as_what_the_store_proves(tmp_path: Path, landed: bool) -> None:
    async def scenario(node: Node) -> None:
        seq = _intent_of_a_dead_process(node.config.audit_path)
        barrier = node.worker.services.keyring.require_barrier()
        if landed:  # its commit (object and marker together) went through before it died
            await barrier.commit([Write(marker_key("node1", 1, seq), {"state": "done", "event": "key.generate",
                                                                      "time": 0, "created": ["objects/77"]}),
                                  Write("objects/77", {"test": True})])
        await _OrphanScanner(node.worker.services.audit, None).scan()
        report = analyze(node.config.audit_path)
        assert report.open == [] and report.problems == []
        (act,) = [act for act in report.acts if act.intent_seq == seq]
        if landed:
            assert act.outcome == "ok" and act.created == ["objects/77"]
        else:
            assert act.outcome == "CKR_DEVICE_ERROR"
            # The fence: that commit can never land now.
            fenced = await barrier.get(marker_key("node1", 1, seq))
            assert fenced is not None and fenced.value["state"] == "fenced"
        # Scanning again settles nothing twice.
        await _OrphanScanner(node.worker.services.audit, None).scan()
        assert analyze(node.config.audit_path).problems == []

    run_node(tmp_path, scenario)


def test_an_intent_of_an_earlier_boot_is_settled_even_if_its_pid_runs(tmp_path: Path) -> None:
    def before(path: Path) -> None:  # the node's previous life died with this change under way
        AuditLog(path, node_id="node1", boot=1).append("user.create", actor="admin", outcome="intent")  # our pid

    async def scenario(node: Node) -> None:
        await _OrphanScanner(node.worker.services.audit, None).scan()
        (act,) = [act for act in analyze(node.config.audit_path).acts if act.intent_seq == 1]
        assert act.outcome == "CKR_DEVICE_ERROR"
        assert analyze(node.config.audit_path).open == []

    run_node(tmp_path, scenario, boot=2, before=before)


def test_a_witness_outside_an_audited_block_is_refused(tmp_path: Path) -> None:
    async def scenario(node: Node) -> None:
        from strongroom.dispatch.auditing import witness

        before = len(node.records())
        call = Call(node.worker.services, Request(1, "x", None, {}), 1, "agent", None)
        with pytest.raises(RuntimeError, match="outside an audited block"):
            await witness(call, "key.generate", {})()
        assert len(node.records()) == before

    run_node(tmp_path, scenario)


def test_analyze_names_outcomes_that_do_not_fit(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    AuditLog.create(path)
    log = AuditLog(path, node_id="n", boot=1)
    first = log.append("key.generate", actor="a", outcome="intent").seq
    log.append("key.generate", actor="a", details={"intent": first, "created": ["objects/1"]})
    log.append("key.generate", actor="a", details={"intent": first})  # twice
    log.append("key.generate", actor="a", details={"intent": 999})  # no such intent
    other = log.append("user.create", actor="a", outcome="intent").seq
    log.append("key.generate", actor="a", details={"intent": other})  # another event's
    log.append("object.destroy", actor="a", outcome="intent")  # never settled
    report = analyze(path)
    assert len(report.problems) == 3, report.problems
    assert [act.event for act in report.open] == ["object.destroy"]


def test_false_claims_names_ok_creations_of_objects_that_do_not_exist(tmp_path: Path) -> None:
    logs = {}
    for node in ("a", "b"):
        path = tmp_path / f"{node}.log"
        AuditLog.create(path)
        logs[node] = AuditLog(path, node_id=node, boot=1)

    def act(node: str, event: str, **details: Any) -> None:
        seq = logs[node].append(event, actor="u", outcome="intent").seq
        logs[node].append(event, actor="u", details={"intent": seq, **details})

    act("a", "key.generate", created=["objects/1"])  # exists
    act("a", "key.generate_pair", created=["objects/2", "objects/3"])  # 3 destroyed through node b
    act("b", "object.destroy", removed=["objects/3"])
    act("b", "key.generate", created=["objects/4"])  # a lie: it does not exist
    reports = {node: analyze(tmp_path / f"{node}.log") for node in logs}
    asked: list[str] = []

    def exists(keys: list[str]) -> set[str]:
        asked.extend(keys)
        return {"objects/1", "objects/2"} & set(keys)

    (claim,) = false_claims(reports, exists)
    assert claim.node == "b" and "objects/4" in claim.why
    assert sorted(asked) == ["objects/1", "objects/2", "objects/4"]
