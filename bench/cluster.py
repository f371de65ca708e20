#!/usr/bin/env python3
"""Strongroom, 1 node vs 3 nodes: key-creation latency and throughput, sign throughput.

Run through ``bench/cluster`` (which sets up the venv first). One run:

1. ``strongroom up --dir TMP/one --workers 1`` (one node, embedded SQLite store), a crypto user
   created through the SDK as admin, then the measurements below, then ``strongroom down``;
2. the same with ``up --dir TMP/three --nodes 3 --workers 1`` (3 etcd members + 3 nodes);
3. a table with both clusters side by side and the ratios 3-node / 1-node.

Every measurement uses the Python SDK straight to the nodes (``Client(profile, node=...)`` with
the directory's client profile), not the agent:

* key-creation latency: AES-256 token keys (and EC P-256 token key pairs) created one after
  the other through node1; p50/p99 of one ``key.generate`` / ``key.generate_pair`` call;
* key-creation throughput: N threads (default 8), each with its own client, spread round-robin
  over every node of the cluster, creating keys for a fixed time;
* sign throughput: ECDSA P-256 ``crypto.sign`` (CKM_ECDSA over a 32-byte digest, single part),
  one client per node, each keeping a window of requests in flight (``connection.submit``);
  plus two control rows (1-node with 3 clients, 3-node with 1 client through node1) that tell
  the effect of the cluster apart from the effect of the number of client connections.

During each measurement the CPU time of every node process, every etcd member and this
process (the load generator) is read from ``/proc``; for the 3-node cluster the etcd members'
``/metrics`` (WAL fsyncs, backend commits, transactions, linearizable reads) are read before
and after each key-creation measurement, and a probe times raw etcd writes (``/v3/kv/put`` of a
1 KiB value, sequential) to separate the store's write latency from the node's own work.

Nothing here asserts a speed: it measures and prints. On a machine with few cores (the CI
machine has 2) a 3-node cluster (3 nodes + 3 etcd members + the load generator) cannot scale
signing: all of them share the same cores.
"""

from __future__ import annotations

import argparse
import base64
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PYTHON = ROOT / ".venv" / "bin" / "python"
CLK_TCK = os.sysconf("SC_CLK_TCK")

from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402

from strongroom.client import Client, ClientProfile  # noqa: E402
from strongroom.constants import CKA, CKM  # noqa: E402
from strongroom.mechanisms import ec as ec_mech  # noqa: E402

P256 = ec_mech.params_for_curve(ec.SECP256R1())
USER, PASSWORD = "bench", "bench-pass-1"


def log(msg: str) -> None:
    print(f"[cluster-bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --- machine and CPU accounting --------------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    try:
        commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        commit += " (uncommitted changes)" if dirty else ""
    except OSError:
        commit = "unknown"
    try:
        etcd_version = subprocess.run(["etcd", "--version"], capture_output=True, text=True,
                                      timeout=10).stdout.splitlines()[0]
    except (OSError, IndexError):
        etcd_version = "etcd not found"
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "etcd": etcd_version,
        "commit": commit,
        "loadavg_at_start": Path("/proc/loadavg").read_text().split()[:3],
    }


def proc_cpu(pid: int) -> float:
    """utime + stime of a process (all its threads), seconds; 0 when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def machine_busy() -> float:
    """Busy CPU seconds of the whole machine (all cores) since boot."""
    parts = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = parts[3] + (parts[4] if len(parts) > 4 else 0)
    return (sum(parts[:8]) - idle) / CLK_TCK


def children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return out


class CpuMeter:
    """CPU time of groups of processes over a measurement: % of one core, and per operation."""

    def __init__(self, groups: dict[str, list[int]]) -> None:
        self.groups = groups

    def snapshot(self) -> dict[str, float]:
        snap = {name: sum(proc_cpu(p) for p in pids) for name, pids in self.groups.items()}
        snap["loadgen"] = proc_cpu(os.getpid())
        snap["machine"] = machine_busy()
        snap["wall"] = time.monotonic()
        return snap

    @staticmethod
    def delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
        wall = after["wall"] - before["wall"]
        pct = {k: 100.0 * (after[k] - before[k]) / wall for k in before if k != "wall"}
        known = sum(v for k, v in pct.items() if k != "machine")
        pct["other"] = max(pct["machine"] - known, 0.0)
        return pct


# --- etcd ------------------------------------------------------------------------------------------


def etcd_endpoints(directory: Path) -> list[str]:
    from strongroom.local import etcd as local_etcd
    try:
        return list(local_etcd.endpoints(directory))
    except Exception:  # noqa: BLE001 - the 1-node cluster has no etcd
        return []


def etcd_pids(directory: Path) -> list[int]:
    pids = []
    for f in sorted((directory / "etcd").glob("*.pid")):
        try:
            pids.append(int(f.read_text().strip()))
        except (OSError, ValueError):
            pass
    return pids


METRICS = ("etcd_disk_wal_fsync_duration_seconds_sum", "etcd_disk_wal_fsync_duration_seconds_count",
           "etcd_disk_backend_commit_duration_seconds_sum", "etcd_disk_backend_commit_duration_seconds_count",
           "etcd_server_proposals_committed_total", "etcd_mvcc_txn_total", "etcd_mvcc_put_total",
           "etcd_mvcc_range_total", "etcd_server_read_indexes_failed_total")
#: The client requests each member received, by gRPC method of the KV service (the JSON gateway calls them):
#: etcd_mvcc_range_total also counts the ranges a txn's compares make on every member, these do not.
KV_REQUESTS = {"Range": "rq_range", "Txn": "rq_txn", "Put": "rq_put", "DeleteRange": "rq_delete"}


def etcd_metrics(endpoints: list[str]) -> list[dict[str, float]]:
    out = []
    for ep in endpoints:
        values: dict[str, float] = {}
        try:
            with urllib.request.urlopen(ep + "/metrics", timeout=5) as answer:
                for line in answer.read().decode().splitlines():
                    name, _, value = line.partition(" ")
                    if name in METRICS:
                        values[name] = float(value)
                    elif name.startswith("grpc_server_handled_total{") and 'grpc_service="etcdserverpb.KV"' in name:
                        method = name.partition('grpc_method="')[2].partition('"')[0]
                        if method in KV_REQUESTS:
                            key = KV_REQUESTS[method]
                            values[key] = values.get(key, 0.0) + float(value)  # summed over the status codes
        except OSError:
            pass
        out.append(values)
    return out


def _counter_rates(before: list[dict[str, float]], after: list[dict[str, float]]) -> dict[str, float]:
    """Committed proposals (largest member), txns and puts (largest member) and reads (sum over members)."""
    def d(name: str, i: int) -> float:
        return after[i].get(name, 0.0) - before[i].get(name, 0.0)

    n = len(before)
    return {
        # every member applies every committed proposal: take the largest count, not the sum
        "proposals": max(d("etcd_server_proposals_committed_total", i) for i in range(n)),
        "txn": max(d("etcd_mvcc_txn_total", i) for i in range(n)),
        "put": max(d("etcd_mvcc_put_total", i) for i in range(n)),
        # a range is served by the member that received it: sum over members
        "range": sum(d("etcd_mvcc_range_total", i) for i in range(n)),
        # client requests: each went to one member, sum over members
        **{key: sum(d(key, i) for i in range(n)) for key in KV_REQUESTS.values()},
    }


def etcd_idle(endpoints: list[str], seconds: float) -> dict[str, float]:
    """What the idle cluster asks of etcd per second (heartbeats, freshness checks, the backup scheduler...):
    subtracted from each measurement, so that the per-key figures count only what creating keys costs."""
    before = etcd_metrics(endpoints)
    t0 = time.monotonic()
    time.sleep(seconds)
    after = etcd_metrics(endpoints)
    wall = time.monotonic() - t0
    if not before or not all(before):
        return {}
    return {name: value / wall for name, value in _counter_rates(before, after).items()}


def etcd_delta(before: list[dict[str, float]], after: list[dict[str, float]], ops: int, seconds: float = 0.0,
               idle: dict[str, float] | None = None) -> dict[str, float]:
    """Per created key: committed proposals, txns, reads served; mean WAL fsync and backend commit. With ``idle``
    (per-second rates of the idle cluster), also the same counts net of the idle traffic over ``seconds``."""
    def d(name: str, i: int) -> float:
        return after[i].get(name, 0.0) - before[i].get(name, 0.0)

    n = len(before)
    if not n or not ops:
        return {}
    fsync_n = sum(d("etcd_disk_wal_fsync_duration_seconds_count", i) for i in range(n))
    fsync_s = sum(d("etcd_disk_wal_fsync_duration_seconds_sum", i) for i in range(n))
    commit_n = sum(d("etcd_disk_backend_commit_duration_seconds_count", i) for i in range(n))
    commit_s = sum(d("etcd_disk_backend_commit_duration_seconds_sum", i) for i in range(n))
    counts = _counter_rates(before, after)
    out = {
        "proposals_per_op": counts["proposals"] / ops,
        "txn_per_op": counts["txn"] / ops,
        "put_per_op": counts["put"] / ops,
        "range_per_op": counts["range"] / ops,
        **{f"{key}_per_op": counts[key] / ops for key in KV_REQUESTS.values()},
        "wal_fsync_ms": 1000.0 * fsync_s / fsync_n if fsync_n else 0.0,
        "wal_fsyncs_per_op_per_member": fsync_n / n / ops,
        "backend_commit_ms": 1000.0 * commit_s / commit_n if commit_n else 0.0,
    }
    if idle:
        for name in ("proposals", "txn", "put", "range", *KV_REQUESTS.values()):
            out[f"{name}_per_op_net"] = max(0.0, counts[name] - idle.get(name, 0.0) * seconds) / ops
    return out


def etcd_put_probe(endpoint: str, count: int) -> dict[str, float]:
    """Sequential raw etcd writes (1 KiB values under a key outside Strongroom's namespace):
    the latency of a quorum-committed write with no node in the path (HTTP/JSON gateway)."""
    key = base64.b64encode(b"/bench-probe/x").decode()
    value = base64.b64encode(os.urandom(1024)).decode()
    lat = []
    for i in range(count + 5):
        body = json.dumps({"key": key, "value": value}).encode()
        t0 = time.perf_counter()
        req = urllib.request.Request(endpoint + "/v3/kv/put", data=body, method="POST")
        with urllib.request.urlopen(req, timeout=10) as answer:
            answer.read()
        if i >= 5:
            lat.append(time.perf_counter() - t0)
    req = urllib.request.Request(endpoint + "/v3/kv/deleterange", data=json.dumps({"key": key}).encode(),
                                 method="POST")
    urllib.request.urlopen(req, timeout=10).read()
    return percentiles(lat)


# --- measurements ----------------------------------------------------------------------------------


def percentiles(samples: list[float]) -> dict[str, float]:
    s = sorted(samples)
    if not s:
        return {"p50_ms": 0.0, "p99_ms": 0.0, "mean_ms": 0.0, "n": 0}

    def q(p: float) -> float:
        return 1000.0 * s[min(len(s) - 1, max(0, int(round(p * (len(s) - 1)))))]

    return {"p50_ms": q(0.50), "p99_ms": q(0.99), "mean_ms": 1000.0 * statistics.fmean(s), "n": len(s)}


def make_aes(client: Client, label: bytes) -> None:
    client.generate_key(CKM.AES_KEY_GEN, {CKA.TOKEN: True, CKA.VALUE_LEN: 32, CKA.LABEL: label})


def make_ec(client: Client, label: bytes) -> None:
    client.generate_key_pair(CKM.EC_KEY_PAIR_GEN, {CKA.TOKEN: True, CKA.EC_PARAMS: P256, CKA.LABEL: label},
                             {CKA.TOKEN: True, CKA.LABEL: label})


MAKERS: dict[str, Callable[[Client, bytes], None]] = {"aes": make_aes, "ec": make_ec}


class Cluster:
    def __init__(self, name: str, directory: Path, nodes: int, workers: int, env: dict[str, str]) -> None:
        self.name, self.dir, self.nodes, self.workers, self.env = name, directory, nodes, workers, env
        self.summary: dict[str, Any] | None = None
        self.clients: list[Client] = []
        #: etcd requests per second of the idle cluster (3 nodes), measured once after start.
        self.etcd_idle: dict[str, float] = {}

    def up(self) -> None:
        cmd = [str(PYTHON), "-m", "strongroom", "up", "--dir", str(self.dir), "--workers", str(self.workers)]
        if self.nodes > 1:
            cmd += ["--nodes", str(self.nodes)]
        log(f"{self.name}: {' '.join(cmd[1:])}")
        self.summary = {}  # from here on `down` is needed even if up fails half-way
        p = subprocess.run(cmd, capture_output=True, text=True, env=self.env, timeout=300)
        if p.returncode != 0:
            raise RuntimeError(f"strongroom up failed: {p.stderr.strip()[-2000:]}")
        self.summary = json.loads(p.stdout)
        self.profile = ClientProfile.load(self.dir)
        admin = Client(self.profile, node=self.profile.nodes[0], timeout=60)
        admin.login(self.summary["admin_user"], self.summary["admin_password"])
        admin.user_create(USER, "crypto-user", PASSWORD)
        admin.close()

    def down(self) -> None:
        for c in self.clients:
            try:
                c.close()
            except Exception:  # noqa: BLE001
                pass
        self.clients.clear()
        if self.summary is None:
            return
        log(f"{self.name}: strongroom down")
        p = subprocess.run([str(PYTHON), "-m", "strongroom", "down", "--dir", str(self.dir)], capture_output=True,
                           text=True, env=self.env, timeout=180)
        if p.returncode != 0:
            log(f"{self.name}: strongroom down failed: {p.stderr.strip()[-1000:]}")
        self.summary = None

    def client(self, index: int) -> Client:
        c = Client(self.profile, node=self.profile.nodes[index % len(self.profile.nodes)], timeout=60)
        c.login(USER, PASSWORD)
        self.clients.append(c)
        return c

    def meter(self) -> CpuMeter:
        assert self.summary
        groups: dict[str, list[int]] = {"node1": [], "other nodes": []}
        for n in self.summary["nodes"]:
            pids = [int(n["pid"]), *children(int(n["pid"]))]
            groups["node1" if n["id"] == "node1" else "other nodes"] += pids
        groups["etcd"] = etcd_pids(self.dir)
        return CpuMeter(groups)


def measure_latency(cluster: Cluster, kind: str, count: int) -> dict[str, Any]:
    client = cluster.client(0)
    maker = MAKERS[kind]
    for _ in range(5):
        maker(client, b"warm-up")
    endpoints = etcd_endpoints(cluster.dir)
    meter = cluster.meter()
    m0, c0 = etcd_metrics(endpoints), meter.snapshot()
    t_start = time.monotonic()
    lat = []
    for i in range(count):
        t0 = time.perf_counter()
        maker(client, b"lat-%d" % i)
        lat.append(time.perf_counter() - t0)
    c1, m1 = meter.snapshot(), etcd_metrics(endpoints)
    wall = time.monotonic() - t_start
    return {**percentiles(lat), "cpu": CpuMeter.delta(c0, c1),
            "etcd": etcd_delta(m0, m1, count, wall, cluster.etcd_idle)}


def measure_create_throughput(cluster: Cluster, kind: str, threads: int, seconds: float) -> dict[str, Any]:
    clients = [cluster.client(i) for i in range(threads)]
    maker = MAKERS[kind]
    for c in clients:
        maker(c, b"warm-up")
    counts = [0] * threads
    lat: list[list[float]] = [[] for _ in range(threads)]
    errors: list[BaseException] = []
    barrier = threading.Barrier(threads + 1)
    stop_at = [0.0]

    def run(i: int) -> None:
        c = clients[i]
        barrier.wait()
        try:
            while time.monotonic() < stop_at[0]:
                t0 = time.perf_counter()
                maker(c, b"tp-%d" % i)
                lat[i].append(time.perf_counter() - t0)
                counts[i] += 1
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    ts = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    for t in ts:
        t.start()
    endpoints = etcd_endpoints(cluster.dir)
    meter = cluster.meter()
    m0, c0 = etcd_metrics(endpoints), meter.snapshot()
    t_start = time.monotonic()
    stop_at[0] = t_start + seconds
    barrier.wait()
    for t in ts:
        t.join()
    wall = time.monotonic() - t_start
    c1, m1 = meter.snapshot(), etcd_metrics(endpoints)
    if errors:
        raise RuntimeError(f"key creation failed: {errors[0]!r}")
    total = sum(counts)
    return {"ops_per_s": total / wall, "ops": total, "threads": threads, "seconds": wall,
            **percentiles([x for li in lat for x in li]), "cpu": CpuMeter.delta(c0, c1),
            "etcd": etcd_delta(m0, m1, total, wall, cluster.etcd_idle)}


def measure_sign(cluster: Cluster, n_clients: int, window: int, seconds: float) -> dict[str, Any]:
    """ECDSA P-256 crypto.sign (CKM_ECDSA, 32-byte digest), `window` requests in flight per client,
    client i connected to node i mod N."""
    owner = cluster.client(0)
    public, private = owner.generate_key_pair(
        CKM.EC_KEY_PAIR_GEN, {CKA.TOKEN: True, CKA.EC_PARAMS: P256, CKA.LABEL: b"sign"},
        {CKA.TOKEN: True, CKA.LABEL: b"sign"})
    digest = bytes(range(32))
    clients = [cluster.client(i) for i in range(n_clients)]
    for c in clients:  # the key works through every node the run uses
        sig = c.sign(private, CKM.ECDSA, digest)
        c.verify(public, CKM.ECDSA, digest, sig)
    args = {"key": private, "mechanism": int(CKM.ECDSA), "data": digest}
    counts = [0] * n_clients
    errors: list[str] = []
    barrier = threading.Barrier(n_clients + 1)
    stop_at = [0.0]

    def run(i: int) -> None:
        conn, session = clients[i].connection, clients[i].session
        pending: deque = deque()
        barrier.wait()
        try:
            for _ in range(window):
                pending.append(conn.submit("crypto.sign", args, session))
            while pending:
                reply = conn.wait(pending.popleft())
                if not reply.ok:
                    errors.append(f"crypto.sign: CKR {reply.code:#x} {reply.body}")
                    return
                counts[i] += 1
                if time.monotonic() < stop_at[0]:
                    pending.append(conn.submit("crypto.sign", args, session))
        except BaseException as exc:  # noqa: BLE001
            errors.append(repr(exc))

    ts = [threading.Thread(target=run, args=(i,)) for i in range(n_clients)]
    for t in ts:
        t.start()
    meter = cluster.meter()
    c0 = meter.snapshot()
    t_start = time.monotonic()
    stop_at[0] = t_start + seconds
    barrier.wait()
    for t in ts:
        t.join()
    wall = time.monotonic() - t_start
    c1 = meter.snapshot()
    if errors:
        raise RuntimeError(errors[0])
    total = sum(counts)
    return {"ops_per_s": total / wall, "ops": total, "clients": n_clients, "window": window, "seconds": wall,
            "per_client": counts, "cpu": CpuMeter.delta(c0, c1)}


def bench_cluster(cluster: Cluster, args: argparse.Namespace, sign_clients: list[int]) -> dict[str, Any]:
    cluster.up()
    out: dict[str, Any] = {"nodes": cluster.nodes, "summary_nodes": cluster.summary["nodes"]}  # type: ignore[index]
    endpoints = etcd_endpoints(cluster.dir)
    if endpoints:
        log(f"{cluster.name}: raw etcd write probe")
        out["etcd_put"] = etcd_put_probe(endpoints[0], args.keys)
        log(f"{cluster.name}: what the idle cluster asks of etcd ({args.idle:g} s)")
        cluster.etcd_idle = out["etcd_idle"] = etcd_idle(endpoints, args.idle)
    log(f"{cluster.name}: AES-256 key latency ({args.keys} keys through node1)")
    out["aes_latency"] = measure_latency(cluster, "aes", args.keys)
    log(f"{cluster.name}: EC P-256 key-pair latency ({args.pairs} pairs through node1)")
    out["ec_latency"] = measure_latency(cluster, "ec", args.pairs)
    log(f"{cluster.name}: AES-256 key throughput ({args.threads} threads, {args.seconds:g} s)")
    out["aes_throughput"] = measure_create_throughput(cluster, "aes", args.threads, args.seconds)
    log(f"{cluster.name}: EC P-256 key-pair throughput ({args.threads} threads, {args.seconds:g} s)")
    out["ec_throughput"] = measure_create_throughput(cluster, "ec", args.threads, args.seconds)
    out["sign"] = {}
    for n in sign_clients:
        log(f"{cluster.name}: ECDSA sign, {n} client(s) × {args.window} in flight, {args.seconds:g} s")
        out["sign"][n] = measure_sign(cluster, n, args.window, args.seconds)
    return out


# --- report ----------------------------------------------------------------------------------------


def table(head: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    lines = ["| " + " | ".join(h.ljust(widths[i]) for i, h in enumerate(head)) + " |",
             "| " + " | ".join(("-" * widths[i]) if i == 0 else ("-" * (widths[i] - 1) + ":")
                               for i in range(len(head))) + " |"]
    for r in rows:
        lines.append("| " + " | ".join(c.ljust(widths[i]) if i == 0 else c.rjust(widths[i])
                                       for i, c in enumerate(r)) + " |")
    return "\n".join(lines)


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}×" if b else "—"


def main_table(one: dict[str, Any], three: dict[str, Any], args: argparse.Namespace) -> str:
    rows = []

    def lat(name: str, key: str, unit: str = "ms") -> None:
        for q in ("p50", "p99"):
            a, b = one[key][f"{q}_ms"], three[key][f"{q}_ms"]
            rows.append([f"{name} {q} ({unit})", f"{a:.2f}", f"{b:.2f}", ratio(b, a)])

    def rate(name: str, a: float, b: float) -> None:
        rows.append([name, f"{a:,.0f}" if a >= 100 else f"{a:,.1f}", f"{b:,.0f}" if b >= 100 else f"{b:,.1f}",
                     ratio(b, a)])

    lat("AES-256 key create, sequential via node1, latency", "aes_latency")
    lat("EC P-256 pair create, sequential via node1, latency", "ec_latency")
    t = args.threads
    rate(f"AES-256 key create, {t} threads over all nodes (keys/s)", one["aes_throughput"]["ops_per_s"],
         three["aes_throughput"]["ops_per_s"])
    rate(f"EC P-256 pair create, {t} threads over all nodes (pairs/s)", one["ec_throughput"]["ops_per_s"],
         three["ec_throughput"]["ops_per_s"])
    w = args.window
    rate(f"ECDSA P-256 sign, 1 client per node × {w} in flight (sign/s)", one["sign"][1]["ops_per_s"],
         three["sign"][3]["ops_per_s"])
    rate(f"ECDSA P-256 sign, 3 clients × {w} in flight (sign/s)", one["sign"][3]["ops_per_s"],
         three["sign"][3]["ops_per_s"])
    rate(f"ECDSA P-256 sign, 1 client via node1 × {w} in flight (sign/s)", one["sign"][1]["ops_per_s"],
         three["sign"][1]["ops_per_s"])
    return table(["measurement", "1 node", "3 nodes", "3 / 1"], rows)


def cpu_table(one: dict[str, Any] | None, three: dict[str, Any] | None) -> str:
    rows = []
    for label, res in (("1 node", one), ("3 nodes", three)):
        if res is None:
            continue
        items = [("AES create, 1 thread", res["aes_latency"], res["aes_latency"]["n"]),
                 ("EC create, 1 thread", res["ec_latency"], res["ec_latency"]["n"]),
                 ("AES create, 8 threads", res["aes_throughput"], res["aes_throughput"]["ops"]),
                 ("EC create, 8 threads", res["ec_throughput"], res["ec_throughput"]["ops"])]
        items += [(f"sign, {n} client(s)", r, r["ops"]) for n, r in sorted(res["sign"].items())]
        for name, r, _ops in items:
            cpu = r["cpu"]
            rate_ = r.get("ops_per_s") or (1000.0 / r["mean_ms"] if r.get("mean_ms") else 0.0)

            def per_op(pct: float, rate_: float = rate_) -> str:
                return f"{pct / 100.0 / rate_ * 1e6:,.0f}" if rate_ else "—"

            rest = "—" if label == "1 node" else f"{cpu['other nodes']:.0f}"
            rest_op = "—" if label == "1 node" else per_op(cpu["other nodes"])
            etcd_, etcd_op = ("—", "—") if label == "1 node" else (f"{cpu['etcd']:.0f}", per_op(cpu["etcd"]))
            rows.append([f"{label}: {name}", f"{cpu['machine']:.0f}", f"{cpu['other']:.0f}", f"{cpu['loadgen']:.0f}",
                         f"{cpu['node1']:.0f}", rest, etcd_, per_op(cpu["loadgen"]), per_op(cpu["node1"]), rest_op,
                         etcd_op])
    return table(["measurement", "machine CPU%", "other CPU%", "loadgen CPU%", "node1 CPU%", "node2+3 CPU%",
                  "etcd CPU%", "loadgen µs/op", "node1 µs/op", "node2+3 µs/op", "etcd µs/op"], rows)


def etcd_table(three: dict[str, Any]) -> str:
    rows = []
    probe = three.get("etcd_put")
    if probe:
        rows.append(["raw etcd put 1 KiB, sequential (no node)", f"{probe['p50_ms']:.2f}", f"{probe['p99_ms']:.2f}",
                     "1", "", "", "", "", "", ""])
    for name, key in (("AES create, 1 thread", "aes_latency"), ("EC create, 1 thread", "ec_latency"),
                      ("AES create, 8 threads", "aes_throughput"), ("EC create, 8 threads", "ec_throughput")):
        r = three[key]
        e = r.get("etcd", {})
        if not e:
            continue
        requests = (f"{e['rq_range_per_op']:.2f} / "
                    f"{e['rq_txn_per_op'] + e['rq_put_per_op'] + e['rq_delete_per_op']:.2f}"
                    if "rq_range_per_op" in e else "")
        net = (f"{e['rq_range_per_op_net']:.2f} / "
               f"{e['rq_txn_per_op_net'] + e['rq_put_per_op_net'] + e['rq_delete_per_op_net']:.2f}"
               if "rq_range_per_op_net" in e else "")
        rows.append([name, f"{r['p50_ms']:.2f}", f"{r['p99_ms']:.2f}", f"{e['proposals_per_op']:.2f}", requests, net,
                     f"{e['txn_per_op'] + e['put_per_op']:.2f}", f"{e['range_per_op']:.2f}",
                     f"{e['wal_fsync_ms']:.2f}", f"{e['backend_commit_ms']:.2f}"])
    return table(["3-node measurement", "p50 ms", "p99 ms", "etcd proposals/op", "requests/op: reads / writes",
                  "requests/op net of idle: reads / writes", "mvcc put+txn/op", "mvcc ranges/op (incl. txn compares)",
                  "WAL fsync ms (mean)", "backend commit ms (mean)"], rows)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--keys", type=int, default=100, help="AES keys for the latency measurement (default 100)")
    ap.add_argument("--pairs", type=int, default=50, help="EC key pairs for the latency measurement (default 50)")
    ap.add_argument("--threads", type=int, default=8, help="threads of the creation throughput (default 8)")
    ap.add_argument("--seconds", type=float, default=5.0, help="length of each timed measurement (default 5)")
    ap.add_argument("--window", type=int, default=64, help="sign requests in flight per client (default 64)")
    ap.add_argument("--idle", type=float, default=3.0,
                    help="seconds of idle 3-node cluster measured for the etcd baseline (default 3)")
    ap.add_argument("--only", choices=["one", "three"], help="run only the 1-node or only the 3-node cluster")
    ap.add_argument("--json", metavar="FILE", type=Path, help="also write every number as JSON")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = ap.parse_args()

    env = {k: v for k, v in os.environ.items() if not k.startswith("STRONGROOM_")}
    data: dict[str, Any] = {"machine": machine_info(), "args": vars(args) | {"json": None}}
    tmp = Path(tempfile.mkdtemp(prefix="strongroom-cluster-bench-"))
    t_begin = time.monotonic()
    clusters = [Cluster("1 node", tmp / "one", 1, 1, env), Cluster("3 nodes", tmp / "three", 3, 1, env)]
    try:
        log(f"temporary directory {tmp}")
        # One cluster at a time: on a small machine the idle one would still take CPU.
        for cluster, key, sign_clients in ((clusters[0], "one", [1, 3]), (clusters[1], "three", [3, 1])):
            if args.only not in (None, key):
                continue
            try:
                data[key] = bench_cluster(cluster, args, sign_clients)
            finally:
                cluster.down()
    finally:
        for cluster in clusters:
            cluster.down()
        if args.keep:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    data["total_seconds"] = round(time.monotonic() - t_begin, 1)

    m = data["machine"]
    one, three = data.get("one"), data.get("three")
    print()
    print(f"Date: {m['date']}  Machine: nproc {m['nproc']}, CPU \"{m['cpu']}\", kernel {m['kernel']}, "
          f"load average at start {' '.join(m['loadavg_at_start'])}")
    print(f"Strongroom {m['commit']}; Python {m['python']}; {m['etcd']}; nodes with --workers 1; "
          f"1 node = embedded SQLite store, 3 nodes = 3 etcd members; SDK straight to the nodes (mTLS); "
          f"{args.seconds:g} s per timed measurement; run took {data['total_seconds']} s")
    if (m["nproc"] or 1) < 8:
        print(f"NOTE: this machine has {m['nproc']} cores. The 3-node cluster runs 3 nodes + 3 etcd members + the "
              f"load generator on them: signing cannot scale with nodes here, and the 3-node numbers measure "
              f"the cost of the cluster (consensus, more processes on the same cores), not its capacity.")
    print()
    if one is not None and three is not None:
        print(main_table(one, three, args))
        print()
    else:
        for label, res in (("1 node", one), ("3 nodes", three)):
            if res is not None:
                print(f"{label}: AES create p50 {res['aes_latency']['p50_ms']:.2f} ms, "
                      f"EC pair create p50 {res['ec_latency']['p50_ms']:.2f} ms; {args.threads} threads: "
                      f"{res['aes_throughput']['ops_per_s']:,.1f} AES keys/s, "
                      f"{res['ec_throughput']['ops_per_s']:,.1f} EC pairs/s; sign "
                      + ", ".join(f"{n} client(s) {r['ops_per_s']:,.0f}/s" for n, r in sorted(res["sign"].items())))
        print()
    print("CPU during each measurement (% of one core; machine = all cores, 'other' = the rest of the machine) "
          "and CPU time per operation:")
    print()
    print(cpu_table(one, three))
    print()
    print("3-node cluster, etcd per created key (from the members' /metrics; proposals and txns counted once, "
          "reads summed over members):")
    print()
    if three is not None:
        print(etcd_table(three))
        idle = three.get("etcd_idle") or {}
        print(f"\nThe idle 3-node cluster asked etcd, per second: {idle.get('proposals', 0):.1f} proposals, "
              f"{idle.get('rq_range', 0):.1f} read and "
              f"{idle.get('rq_txn', 0) + idle.get('rq_put', 0) + idle.get('rq_delete', 0):.1f} write requests "
              f"(subtracted in the 'net of idle' column).")
    print()
    for label, res in (("1 node", one), ("3 nodes", three)):
        if res is not None:
            print(capacity_line(label, res, m["nproc"] or 1, args.threads))
    print()
    if args.json:
        args.json.write_text(json.dumps(data, indent=2, default=str))
    return 0


def capacity_line(label: str, res: dict[str, Any], cores: int, threads: int) -> str:
    """What the measured CPU per key allows on this machine's cores when nothing else runs on them.

    The throughput rows follow the neighbours' load (other sessions on a shared machine); the CPU
    the cluster and the load generator spend per created key moves much less, so the rate it allows
    on idle cores is the figure to compare between runs.
    """
    parts = []
    for name, key in (("AES key", "aes_throughput"), ("EC pair", "ec_throughput")):
        r = res[key]
        cpu = r["cpu"]
        spent = sum(cpu.get(group, 0.0) for group in ("node1", "other nodes", "etcd", "loadgen"))  # % of a core
        per_op_ms = spent / 100.0 / r["ops_per_s"] * 1000.0 if r["ops_per_s"] else 0.0
        ceiling = cores * 1000.0 / per_op_ms if per_op_ms else 0.0
        parts.append(f"{per_op_ms:.2f} ms per {name} -> at most {ceiling:,.0f}/s on {cores} idle cores "
                     f"(measured {r['ops_per_s']:,.1f}/s beside {cpu.get('other', 0.0):.0f}% of other CPU)")
    return f"{label}, {threads} threads: CPU of the cluster + load generator " + "; ".join(parts)


if __name__ == "__main__":
    sys.exit(main())
