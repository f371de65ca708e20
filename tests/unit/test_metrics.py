"""The metrics hooks on their own: bounded labels, etcd elections from raft terms, store and audit
counting (in this process's default registry, read back through prometheus_client)."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from strongroom.audit import AuditLog, AuditWriteError
from strongroom.metrics import labels, settings
from strongroom.metrics import store as store_metrics
from strongroom.store.base import UnavailableError


def sample(name: str, **labelset: str) -> float:
    return REGISTRY.get_sample_value(name, labelset) or 0.0


def test_a_peer_cannot_grow_a_label_without_bound() -> None:
    bounded = labels.BoundedLabel(re.compile(r"[a-z]{1,8}\.[a-z]{1,8}"))
    assert bounded("../../etc") == labels.OTHER
    assert bounded(12) == labels.OTHER
    names = [f"op.{chr(97 + i // 26)}{chr(97 + i % 26)}" for i in range(labels.MAX_VALUES + 50)]
    assert [bounded(name) for name in names[:labels.MAX_VALUES]] == names[:labels.MAX_VALUES]
    assert {bounded(name) for name in names[labels.MAX_VALUES:]} == {labels.OTHER}
    assert bounded(names[0]) == names[0]  # one seen before keeps its series


def test_outcomes_and_mechanisms_are_spec_names() -> None:
    assert labels.outcome(0) == "ok"
    assert labels.outcome(0xA0) == "CKR_PIN_INCORRECT"
    assert labels.outcome(0x7FFFFFF0) == labels.OTHER
    assert labels.mechanism(0x1041) == "CKM_ECDSA"
    assert labels.mechanism(None) == "none"
    assert labels.mechanism(0x7FFFFFF0) == labels.OTHER
    assert labels.mechanism(True) == labels.OTHER


def test_raft_term_increases_count_elections_once_per_node(monkeypatch: pytest.MonkeyPatch) -> None:
    # The term seen is this process's: tests that ran a real etcd before (the store tests) left theirs, and
    # the first term a process sees must not count as an election.
    monkeypatch.setitem(store_metrics._term, "seen", 0)
    before = sample("strongroom_etcd_leader_changes_seen_total")
    store_metrics.count_elections(True)
    store_metrics.seen_raft_term(1000)  # the first term seen is no election
    store_metrics.seen_raft_term(1000)
    store_metrics.seen_raft_term(1002)  # two elections (e.g. a split vote, then a leader)
    store_metrics.seen_raft_term(1001)  # an older answer
    assert sample("strongroom_etcd_leader_changes_seen_total") == before + 2
    assert sample("strongroom_etcd_raft_term") == 1002
    store_metrics.count_elections(False)  # another worker of the node: the primary one counts
    store_metrics.seen_raft_term(1003)
    assert sample("strongroom_etcd_leader_changes_seen_total") == before + 2
    store_metrics.count_elections(True)


def test_store_requests_are_timed_and_their_failures_counted() -> None:
    class FakeEtcd:
        @store_metrics.timed("etcd")
        async def _request(self, path: str, fail: bool) -> dict[str, object]:
            if fail:
                raise UnavailableError("no quorum")
            return {"header": {"raft_term": "1"}}

    store = FakeEtcd()
    before = sample("strongroom_store_errors_total", backend="etcd", error="UnavailableError")
    count = sample("strongroom_store_request_duration_seconds_count", backend="etcd", request="kv.range")
    asyncio.run(store._request("/v3/kv/range", False))
    with pytest.raises(UnavailableError):
        asyncio.run(store._request("/v3/kv/range", True))
    assert sample("strongroom_store_errors_total", backend="etcd", error="UnavailableError") == before + 1
    assert sample("strongroom_store_request_duration_seconds_count", backend="etcd", request="kv.range") == count + 2


def test_audit_appends_and_fsyncs_are_counted(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    AuditLog.create(path)
    log = AuditLog(path, node_id="n1", boot=1)
    ok, failed = sample("strongroom_audit_appends_total", outcome="ok"), sample("strongroom_audit_appends_total",
                                                                                   outcome="failed")
    fsyncs = sample("strongroom_audit_fsync_duration_seconds_count")
    log.append("test.event", actor=None)
    path.unlink()
    with pytest.raises(AuditWriteError):
        log.append("test.event", actor=None)
    assert sample("strongroom_audit_appends_total", outcome="ok") == ok + 1
    assert sample("strongroom_audit_appends_total", outcome="failed") == failed + 1
    assert sample("strongroom_audit_fsync_duration_seconds_count") == fsyncs + 1


def test_listen_setting_is_checked() -> None:
    assert settings.MetricsSettings("127.0.0.1:9464").url == "http://127.0.0.1:9464/metrics"
    assert settings.MetricsSettings("[::1]:9464").url == "http://[::1]:9464/metrics"
    assert settings.MetricsSettings.from_document(None).url is None
    for bad in ("9464", "host:", "host:99999", ":80"):
        with pytest.raises(settings.MetricsSettingsError):
            settings.MetricsSettings(bad)
    with pytest.raises(settings.MetricsSettingsError):
        settings.MetricsSettings.from_document({"listen": "127.0.0.1:1", "tls": True})


def test_request_counting_keeps_its_caches_bounded() -> None:
    from dataclasses import dataclass, field

    from strongroom.metrics import node

    @dataclass
    class Request:
        op: str
        args: dict[str, object] = field(default_factory=dict)

    before = sample("strongroom_requests_total", op="crypto.sign", outcome="ok")
    node.observe_request(Request("crypto.sign", {"mechanism": 0x1041}), 0, 0.001)
    node.observe_request(Request("crypto.sign", {"mechanism": 0x1041}), 0, 0.001)
    assert sample("strongroom_requests_total", op="crypto.sign", outcome="ok") == before + 2
    assert sample("strongroom_request_duration_seconds_count", op="crypto.sign", mechanism="CKM_ECDSA") >= 2
    node.observe_request(Request("kms.data_key.generate"), 0, 0.001)  # three parts: still its own name
    assert sample("strongroom_requests_total", op="kms.data_key.generate", outcome="ok") == 1
    for index in range(node.CACHE_LIMIT + 100):  # a peer sending ever new operation names and mechanisms
        node.observe_request(Request(f"x.op{index}", {"mechanism": 0x7FFF0000 + index}), 0xA0, 0.001)
    assert len(node._counted) <= node.CACHE_LIMIT and len(node._timed) <= node.CACHE_LIMIT
    assert sample("strongroom_requests_total", op="other", outcome="CKR_PIN_INCORRECT") > 0
