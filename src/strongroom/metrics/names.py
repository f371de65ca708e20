"""Every metric Strongroom exports, by process (:func:`node`, :func:`agent`, :func:`kms`), made on first use.

Created lazily, not at import: a node switches prometheus_client to multiprocess mode
(:func:`strongroom.metrics.registry.use_multiprocess`) before its workers count anything, and a
metric made earlier would keep counting in the supervisor's memory only. docs/metrics.md lists
them; tests/integration/test_metrics.py checks that the table and this module agree.
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import Counter, Gauge, Histogram

#: Latency buckets (seconds) from 0.25 ms (an AES call on a warm node) to 30 s (RSA-4096 generation).
LATENCY_BUCKETS = (0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                   30.0)
#: fsync of the audit log: 50 µs (tmpfs) to 1 s (a stalled disk).
FSYNC_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


@dataclass(frozen=True)
class NodeMetrics:
    # --- node: requests ---------------------------------------------------------------------------
    requests: Counter
    request_seconds: Histogram
    logins: Counter
    lockouts: Counter
    # --- node: what a worker holds (gauges sampled every few seconds) ------------------------------
    login_sessions: Gauge
    pkcs11_sessions: Gauge
    keys: Gauge
    cache_objects: Gauge
    backup_last: Gauge
    backup_age: Gauge
    # --- node: store and audit ----------------------------------------------------------------------
    store_seconds: Histogram
    store_errors: Counter
    etcd_leader_changes: Counter
    etcd_raft_term: Gauge
    audit_appends: Counter
    audit_fsync_seconds: Histogram


@dataclass(frozen=True)
class AgentMetrics:
    agent_calls: Counter
    agent_call_seconds: Histogram
    agent_relayed: Counter


@dataclass(frozen=True)
class KmsMetrics:
    kms_requests: Counter
    kms_request_seconds: Histogram


def _node() -> NodeMetrics:
    # Gauges name how a node's workers add up (prometheus_client's multiprocess_mode): "livesum" for
    # what each worker holds on its own, "max" for a view every worker shares.
    return NodeMetrics(
        requests=Counter("strongroom_requests", "Node requests by operation and outcome (ok or the CKR_* name).",
                         ["op", "outcome"]),
        request_seconds=Histogram("strongroom_request_duration_seconds",
                                  "Node request latency by operation and mechanism (none: the operation takes none).",
                                  ["op", "mechanism"], buckets=LATENCY_BUCKETS),
        logins=Counter("strongroom_logins", "Logins (session.login) by outcome.", ["outcome"]),
        lockouts=Counter("strongroom_lockouts", "Users locked by their failed logins."),
        login_sessions=Gauge("strongroom_login_sessions", "Logged-in sessions held by the node's workers.",
                             multiprocess_mode="livesum"),
        pkcs11_sessions=Gauge("strongroom_pkcs11_sessions", "PKCS#11 sessions held by the node's workers.",
                              multiprocess_mode="livesum"),
        keys=Gauge("strongroom_keys", "Token objects in the cluster by class (secret_key, private_key, ...).",
                   ["class"], multiprocess_mode="max"),
        cache_objects=Gauge("strongroom_cache_objects",
                            "Decrypted objects the node's workers hold in memory (token and session objects).",
                            ["kind"], multiprocess_mode="livesum"),
        backup_last=Gauge("strongroom_backup_last_timestamp_seconds",
                          "When the newest backup of the cluster was made (Unix time; 0: none yet).",
                          multiprocess_mode="max"),
        backup_age=Gauge("strongroom_backup_age_seconds",
                         "Seconds since the newest backup of the cluster (as of the last sample; -1: none yet).",
                         multiprocess_mode="livemostrecent"),
        store_seconds=Histogram("strongroom_store_request_duration_seconds",
                                "Store request latency by backend (sqlite, etcd) and request.",
                                ["backend", "request"], buckets=LATENCY_BUCKETS),
        store_errors=Counter("strongroom_store_errors", "Store requests that failed, by backend and error.",
                             ["backend", "error"]),
        etcd_leader_changes=Counter("strongroom_etcd_leader_changes_seen",
                                    "etcd elections seen by this node (increases of etcd's raft term)."),
        etcd_raft_term=Gauge("strongroom_etcd_raft_term", "The highest etcd raft term this node has seen.",
                             multiprocess_mode="max"),
        audit_appends=Counter("strongroom_audit_appends", "Audit log appends by outcome (ok, failed).",
                              ["outcome"]),
        audit_fsync_seconds=Histogram("strongroom_audit_fsync_duration_seconds",
                                      "Time of the fsync that makes each audit record durable.",
                                      buckets=FSYNC_BUCKETS),
    )


def _agent() -> AgentMetrics:
    return AgentMetrics(
        agent_calls=Counter("strongroom_agent_calls", "PKCS#11 calls the agent served, by function and outcome.",
                            ["function", "outcome"]),
        agent_call_seconds=Histogram("strongroom_agent_call_duration_seconds",
                                     "Latency of the PKCS#11 calls the agent served, by function.",
                                     ["function"], buckets=LATENCY_BUCKETS),
        agent_relayed=Counter("strongroom_agent_relayed_requests",
                              "Node-protocol requests (SDK, CLI) the agent relayed to a node."),
    )


def _kms() -> KmsMetrics:
    return KmsMetrics(
        kms_requests=Counter("strongroom_kms_requests",
                             "KMS API requests by operation and outcome (ok or the AWS error code).",
                             ["operation", "outcome"]),
        kms_request_seconds=Histogram("strongroom_kms_request_duration_seconds",
                                      "KMS API request latency by operation.", ["operation"],
                                      buckets=LATENCY_BUCKETS),
    )


_made: dict[str, object] = {}


def node() -> NodeMetrics:
    """A node's metrics (and the store's and audit log's), made on the first call."""
    made = _made.get("node")
    if not isinstance(made, NodeMetrics):
        made = _made["node"] = _node()
    return made


def agent() -> AgentMetrics:
    made = _made.get("agent")
    if not isinstance(made, AgentMetrics):
        made = _made["agent"] = _agent()
    return made


def kms() -> KmsMetrics:
    made = _made.get("kms")
    if not isinstance(made, KmsMetrics):
        made = _made["kms"] = _kms()
    return made


def made() -> bool:
    """Whether any metric was made (the multiprocess switch must come before)."""
    return bool(_made)
