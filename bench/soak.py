#!/usr/bin/env python3
"""Soak: a 3-zone cluster under load while the operator's worst day happens to it, fault after fault.

Run through ``bench/soak`` (root: it makes network namespaces; etcd installed). One run, bounded in time:

* three network namespaces the run creates (tests/netns.py): in each zone an etcd member and a node
  (2 workers) over the 3-member etcd store; the agent in the root namespace, reaching the zones through
  a bridge. Only the addresses of those namespaces are used;
* load through the agent (the SDK's pass-through): 8 threads signing (ECDSA P-256) and encrypting
  (AES-GCM) with keys made at the start, a stream of key creations (an EC key pair or an AES key every
  0.2 s) and a login probe (a new application logging in every second);
* the fault schedule, cycled until the time is up: kill a node's process group (restarted 2 s later,
  as systemd would), kill a worker (its node's supervisor starts it again), kill an etcd member,
  lose the etcd quorum (2 of 3 members), restart the agent, cut a zone off the network, fill and
  free the disk of the node the load is on (each node directory is a small tmpfs).

Per fault it prints: client errors by return code, the recovery time (from the end of the fault until
every load thread succeeded again), objects half-written (a key pair with one half: must be 0), audit
records without an outcome or with a false one (an intent left unsettled; an ``ok`` creation of an object
that does not exist; a creation the client was told succeeded with no ``ok`` outcome: must be 0), and
``audit verify`` of each node's log. At the end ``strongroom audit verify --dir`` over the three logs.
Exit status 0 only when every one of those is 0 and every log verifies.

    bench/soak                      30 minutes (the README's figures)
    bench/soak --minutes 3          the CI version (tests/integration/test_soak.py)
    bench/soak --json FILE          also keep every number
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402

from strongroom import pki  # noqa: E402
from strongroom.agent.config import AgentConfig  # noqa: E402
from strongroom.audit import verify  # noqa: E402
from strongroom.audit.outcomes import analyze, false_claims  # noqa: E402
from strongroom.client import Client, ClientError, ClientProfile, NodeAddress  # noqa: E402
from strongroom.constants import CKA, CKM  # noqa: E402
from strongroom.errors import CKR  # noqa: E402
from strongroom.local.cluster import enroll_nodes, initialize_cluster  # noqa: E402
from strongroom.mechanisms import ec as ec_mech  # noqa: E402
from strongroom.objects.model import key_of  # noqa: E402
from strongroom.services.config import NodeConfig  # noqa: E402
from tests.etcd_cluster import etcd_binary  # noqa: E402
from tests.netns import Topology, netns_unavailable_reason  # noqa: E402

ZONES = ("a", "b", "c")
NODE_PORT = 7443
ETCD_CLIENT, ETCD_PEER = 2379, 2380
CLUSTER = "soak"
ADMIN_PASSWORD = "soak-admin-password"
USER, USER_PASSWORD = "soaker", "soak-password1"
P256 = ec_mech.params_for_curve(ec.SECP256R1())
LOAD_THREADS = 8
CREATE_EVERY = 0.2
#: AES-GCM with the IV made by the node.
GCM = {"iv": None, "aad": b"soak", "tag_bits": 128}
#: Each node's directory is a small filesystem of its own: the disk fault fills the one of the node the
#: load is on at that moment (the agent moves its clients between nodes as nodes die and come back).
DISK_SIZE = "160m"
RECOVERY_TIMEOUT = 90.0
SETTLE_TIMEOUT = 45.0


def log(text: str) -> None:
    print(f"[soak {time.strftime('%H:%M:%S')}] {text}", flush=True)


# --- what the load threads saw -----------------------------------------------------------------------


@dataclass
class Sample:
    at: float
    thread: str
    ok: bool
    code: str = ""
    message: str = ""


class Recorder:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.samples: list[Sample] = []
        #: Key creations the clients were told succeeded: (label, [store keys]).
        self.acknowledged: list[tuple[str, list[str], float]] = []
        #: Labels of every key pair creation attempted (acknowledged or not).
        self.attempted_pairs: list[tuple[str, float]] = []

    def add(self, thread: str, ok: bool, code: str = "", message: str = "") -> None:
        with self._lock:
            self.samples.append(Sample(time.monotonic(), thread, ok, code, message[:300]))

    def between(self, start: float, end: float) -> list[Sample]:
        with self._lock:
            return [s for s in self.samples if start <= s.at < end]

    def threads(self) -> set[str]:
        with self._lock:
            return {s.thread for s in self.samples}


def _code(exc: ClientError) -> str:
    try:
        return CKR(exc.code).spec_name
    except ValueError:
        return f"0x{int(exc.code):x}"


class Load:
    """The load threads: they log in again by themselves after any failure (as an application would)."""

    def __init__(self, socket_path: str, recorder: Recorder, sign_key: int, aes_key: int) -> None:
        self.socket = socket_path
        self.recorder = recorder
        self.sign_key, self.aes_key = sign_key, aes_key
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._work, args=(f"load-{i}",), daemon=True)
                        for i in range(LOAD_THREADS)]
        self.threads.append(threading.Thread(target=self._create, daemon=True))
        self.threads.append(threading.Thread(target=self._logins, daemon=True))
        self.sequence = 0

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def close(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(30)

    def _client(self) -> Client:
        client = Client.from_agent(self.socket, timeout=10)
        client.login(USER, USER_PASSWORD)
        return client

    def _loop(self, name: str, step: Callable[[Client], None], pause: float) -> None:
        client: Client | None = None
        while not self.stop.is_set():
            try:
                if client is None:
                    client = self._client()
                step(client)
                self.recorder.add(name, True)
            except ClientError as exc:
                self.recorder.add(name, False, _code(exc), exc.message)
                if client is not None:
                    with contextlib.suppress(Exception):
                        client.close()
                client = None
                self.stop.wait(0.2)
            self.stop.wait(pause)
        if client is not None:
            with contextlib.suppress(Exception):
                client.close()

    def _work(self, name: str) -> None:
        turn = [0]

        def step(client: Client) -> None:
            turn[0] += 1
            if turn[0] % 2:
                client.sign(self.sign_key, CKM.ECDSA, os.urandom(32))
            else:
                client.encrypt(self.aes_key, CKM.AES_GCM, os.urandom(64), GCM)

        self._loop(name, step, 0.005)

    def _create(self) -> None:
        def step(client: Client) -> None:
            self.sequence += 1
            label = f"soak-{self.sequence}"
            if self.sequence % 2:
                self.recorder.attempted_pairs.append((label, time.monotonic()))
                public, private = client.generate_key_pair(
                    CKM.EC_KEY_PAIR_GEN, {CKA.TOKEN: True, CKA.EC_PARAMS: P256, CKA.LABEL: label.encode()},
                    {CKA.TOKEN: True, CKA.SIGN: True, CKA.LABEL: label.encode()})
                handles = [public, private]
            else:
                handles = [client.generate_key(CKM.AES_KEY_GEN, {CKA.TOKEN: True, CKA.VALUE_LEN: 32,
                                                                 CKA.LABEL: label.encode()})]
            self.recorder.acknowledged.append((label, [key_of(h) for h in handles], time.monotonic()))

        self._loop("create", step, CREATE_EVERY)

    def _logins(self) -> None:
        while not self.stop.is_set():
            try:
                with Client.from_agent(self.socket, timeout=10) as client:
                    client.login(USER, USER_PASSWORD)
                    client.call("session.info")
                self.recorder.add("login", True)
            except ClientError as exc:
                self.recorder.add("login", False, _code(exc), exc.message)
            self.stop.wait(1.0)


# --- the cluster ---------------------------------------------------------------------------------------


class Cluster:
    def __init__(self, topo: Topology, base: Path, etcd: str) -> None:
        self.topo, self.base, self.etcd = topo, base, etcd
        self.logs = base / "logs"
        self.logs.mkdir(parents=True)
        self.nodes: dict[str, subprocess.Popen[bytes]] = {}
        self.members: dict[str, subprocess.Popen[bytes]] = {}
        self.configs: dict[str, NodeConfig] = {}
        self.agent: subprocess.Popen[bytes] | None = None
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("STRONGROOM_")}
        ca_key, ca_cert = pki.create_ca("soak CA")
        (base / "ca").mkdir(mode=0o700)
        pki.write_private_key(base / "ca" / "ca.key", ca_key)
        pki.write_cert(base / "ca" / "ca.crt", ca_cert)
        self.ca_key, self.ca_cert = ca_key, ca_cert
        client_key, client_cert = pki.issue_client_certificate(ca_key, ca_cert, "soak-host")
        pki.write_private_key(base / "ca" / "client.key", client_key)
        pki.write_cert(base / "ca" / "client.crt", client_cert)
        self.client_urls = [f"http://{topo.zones[z].address}:{ETCD_CLIENT}" for z in ZONES]
        addresses = []
        for zone in ZONES:
            node_id = f"node-{zone}"
            node_dir = base / "nodes" / node_id
            node_dir.mkdir(parents=True)
            subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={DISK_SIZE},mode=0700", "tmpfs", str(node_dir)],
                           check=True)
            (node_dir / "tls").mkdir(mode=0o700)
            os.chmod(node_dir, 0o700)
            host = topo.zones[zone].address
            key, cert = pki.issue_node_certificate(ca_key, ca_cert, node_id, hosts=[host])
            pki.write_private_key(node_dir / "tls" / "node.key", key)
            pki.write_cert(node_dir / "tls" / "node.crt", cert)
            config = NodeConfig(
                node_id=node_id, node_dir=node_dir, host=host, port=NODE_PORT,
                tls_cert=node_dir / "tls" / "node.crt", tls_key=node_dir / "tls" / "node.key",
                ca_cert=base / "ca" / "ca.crt", store_path=node_dir / "unused.db", zone=zone,
                cluster_name=CLUSTER, workers=2, store_backend="etcd", store_endpoints=list(self.client_urls),
                peers=[f"{topo.zones[z].address}:{NODE_PORT}" for z in ZONES if z != zone],
            )
            (node_dir / "node.toml").write_text(config.to_toml())
            self.configs[zone] = config
            addresses.append(NodeAddress(node_id, host, NODE_PORT, zone))
        self.profile = ClientProfile(CLUSTER, base / "ca" / "ca.crt", base / "ca" / "client.crt",
                                     base / "ca" / "client.key", tuple(addresses))
        self.profile.write(base / "client.json")  # `strongroom audit verify --dir` reads it
        self.agent_config = base / "agent.toml"
        self.agent_socket = base / "agent.sock"
        AgentConfig.for_profile(self.profile, self.agent_socket).write(self.agent_config)

    # etcd
    def start_member(self, zone: str) -> None:
        initial = ",".join(f"etcd-{z}=http://{self.topo.zones[z].address}:{ETCD_PEER}" for z in ZONES)
        address = self.topo.zones[zone].address
        client_url, peer_url = f"http://{address}:{ETCD_CLIENT}", f"http://{address}:{ETCD_PEER}"
        self.members[zone] = self.topo.spawn(zone, [
            self.etcd, "--name", f"etcd-{zone}", "--data-dir", str(self.base / f"etcd-{zone}.data"),
            "--listen-client-urls", client_url, "--advertise-client-urls", client_url,
            "--listen-peer-urls", peer_url, "--initial-advertise-peer-urls", peer_url,
            "--initial-cluster", initial, "--initial-cluster-state", "new",
            "--initial-cluster-token", f"sr-soak-{self.topo.suffix}",
            "--heartbeat-interval", "100", "--election-timeout", "1000", "--pre-vote",
            "--logger", "zap", "--log-level", "error", "--log-outputs", "stderr",
        ], self.logs / f"etcd-{zone}.log", env=self.env)  # fmt: skip

    def stop_member(self, zone: str) -> None:
        Topology.stop(self.members[zone], signal.SIGKILL)

    def etcd_ready(self) -> None:
        for url in self.client_urls:
            until(f"etcd at {url}", lambda url=url: _etcd_read(url), 30)

    # nodes
    def start_node(self, zone: str) -> None:
        config = self.configs[zone]
        self.nodes[zone] = self.topo.spawn(
            zone, [sys.executable, "-m", "strongroom", "node", "serve", "--config", str(config.node_dir / "node.toml")],
            self.logs / f"node-{zone}.log", env=self.env)

    def stop_node(self, zone: str) -> None:
        Topology.stop(self.nodes[zone], signal.SIGKILL)

    def node_client(self, zone: str, timeout: float = 10) -> Client:
        return Client(self.profile, self.profile.nodes[ZONES.index(zone)], timeout=timeout)

    def any_node(self) -> Client:
        """A client of the first node that answers."""
        for zone in ZONES:
            client = self.node_client(zone, 30)
            try:
                client.node_status()
                return client
            except ClientError:
                client.close()
        raise RuntimeError("no node answers")

    def tails(self) -> str:
        parts = []
        for path in sorted(self.logs.glob("*.log")):
            lines = path.read_text(errors="replace").splitlines()[-6:]
            parts.append(f"--- {path.name}\n" + "\n".join(lines))
        return "\n".join(parts)

    def node_status(self, zone: str) -> dict[str, Any]:
        with self.node_client(zone, 5) as client:
            return client.node_status()

    def node_pid(self, zone: str) -> int:
        """The node process itself (``ip netns exec`` runs it in place: same pid)."""
        return self.nodes[zone].pid

    def workers(self, zone: str) -> list[int]:
        children = Path(f"/proc/{self.node_pid(zone)}/task/{self.node_pid(zone)}/children")
        try:
            return [int(pid) for pid in children.read_text().split()]
        except OSError:
            return []

    # agent
    def start_agent(self) -> None:
        with open(self.logs / "agent.log", "ab") as out:
            self.agent = subprocess.Popen(
                [sys.executable, "-m", "strongroom", "agent", "--config", str(self.agent_config)],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                env=self.env)
        until("the agent's socket", lambda: self.agent_socket.exists() and _connects(self.agent_socket), 30)

    def stop_agent(self) -> None:
        if self.agent is not None:
            Topology.stop(self.agent, signal.SIGKILL)
            self.agent = None
            with contextlib.suppress(FileNotFoundError):
                self.agent_socket.unlink()

    def audit_logs(self) -> dict[str, Path]:
        return {f"node-{z}": self.configs[z].audit_path for z in ZONES}

    def close(self) -> list[str]:
        self.stop_agent()
        problems = self.topo.close()
        for config in self.configs.values():
            subprocess.run(["umount", "-l", str(config.node_dir)], check=False, capture_output=True)
        return problems


def _etcd_read(url: str) -> bool:
    request = urllib.request.Request(url + "/v3/kv/range", data=b'{"key":"AA=="}', method="POST")
    with urllib.request.urlopen(request, timeout=2) as answer:
        return answer.status == 200


def _connects(path: Path) -> bool:
    import socket

    with socket.socket(socket.AF_UNIX) as probe:
        probe.settimeout(2)
        try:
            probe.connect(str(path))
        except OSError:
            return False
    return True


def until(what: str, check: Callable[[], Any], timeout: float, pause: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = check()
            if value:
                return value
        except (ClientError, OSError, ValueError, KeyError) as exc:
            last = exc
        time.sleep(pause)
    raise RuntimeError(f"{what}: not within {timeout:.0f} s (last: {last})")


# --- faults --------------------------------------------------------------------------------------------


@dataclass
class Fault:
    name: str
    inject: Callable[[], None]
    restore: Callable[[], None]
    hold: float


def faults(cluster: Cluster, rng: random.Random) -> list[Fault]:
    topo = cluster.topo
    fillers: list[Path] = []

    def busiest() -> str:
        """The zone whose audit log grows fastest now: the node the load is on."""
        def sizes() -> dict[str, int]:
            return {z: p.stat().st_size if p.exists() else 0 for z, p in
                    ((z, cluster.configs[z].audit_path) for z in ZONES)}
        before = sizes()
        time.sleep(1.0)
        after = sizes()
        return max(ZONES, key=lambda z: after[z] - before[z])

    def kill_worker() -> None:
        zone = rng.choice(ZONES)
        workers = cluster.workers(zone)
        if workers:
            os.kill(rng.choice(workers), signal.SIGKILL)

    def fill_disk() -> None:
        zone = busiest()
        log(f"  filling the disk of node-{zone}")
        filler = cluster.configs[zone].node_dir / "soak-filler"
        fillers.append(filler)
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
        for size in (1 << 20, 4096, 512):
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"\0" * size)
        os.close(fd)

    def free_disk() -> None:
        while fillers:
            fillers.pop().unlink(missing_ok=True)

    def quorum_loss() -> None:
        cluster.stop_member("b")
        cluster.stop_member("c")

    def quorum_back() -> None:
        cluster.start_member("b")
        cluster.start_member("c")

    return [
        Fault("kill a node's process group (node-a; restarted 2 s later)", lambda: cluster.stop_node("a"),
              lambda: cluster.start_node("a"), 2.0),
        Fault("kill a worker (SIGKILL; its supervisor starts it again)", kill_worker, lambda: None, 0.0),
        Fault("kill an etcd member (etcd-c, 5 s)", lambda: cluster.stop_member("c"),
              lambda: cluster.start_member("c"), 5.0),
        Fault("etcd quorum lost (etcd-b and etcd-c, 8 s)", quorum_loss, quorum_back, 8.0),
        Fault("restart the agent", cluster.stop_agent, cluster.start_agent, 1.0),
        Fault("cut zone b off the network (8 s)", lambda: topo.cut("b"), lambda: topo.restore("b"), 8.0),
        Fault("fill and free the disk of the node in use (6 s full)", fill_disk, free_disk, 6.0),
    ]


@dataclass
class Window:
    fault: str
    started: float
    restored: float = 0.0
    ended: float = 0.0
    errors: Counter[str] = field(default_factory=Counter)
    #: The same by what failed: signing/encrypting, key creation, a new login.
    errors_by_kind: dict[str, dict[str, int]] = field(default_factory=dict)
    #: One message of each (kind, code): what the clients were told.
    messages: dict[str, str] = field(default_factory=dict)
    #: Errors that name the store as their cause, by kind (a timeout or a dropped connection on a starved
    #: machine is not one): without quorum only creations may have them.
    store_refusals: Counter[str] = field(default_factory=Counter)
    operations: int = 0
    recovery: float | None = None
    half_written: int = 0
    unsettled: int = 0
    false_outcomes: int = 0
    verify: dict[str, bool] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def row(self) -> dict[str, Any]:
        return {"fault": self.fault, "operations": self.operations, "client_errors": dict(self.errors),
                "client_errors_by_kind": self.errors_by_kind, "client_error_messages": self.messages,
                "store_refusals_by_kind": dict(self.store_refusals),
                "recovery_seconds": None if self.recovery is None else round(self.recovery, 2),
                "half_written": self.half_written, "audit_without_outcome": self.unsettled,
                "audit_false_outcome": self.false_outcomes, "audit_verify": self.verify, "notes": self.notes}


def recovered(recorder: Recorder, since: float, names: set[str]) -> float | None:
    """Seconds after ``since`` when the last of ``names`` had its first success (None: not all yet)."""
    first: dict[str, float] = {}
    for sample in recorder.between(since, time.monotonic() + 1):
        if sample.ok and sample.thread in names and sample.thread not in first:
            first[sample.thread] = sample.at
    if set(first) != names:
        return None
    return max(first.values()) - since


# --- the checks after each fault ------------------------------------------------------------------------


def check_audit(cluster: Cluster, recorder: Recorder, window: Window, admin: Client) -> None:
    logs = cluster.audit_logs()
    # Taken before the logs are read: a creation's outcome is on disk before its reply leaves the node (or
    # its intent is open), so every creation acknowledged by now is in what is read below.
    acknowledged = list(recorder.acknowledged)
    deadline = time.monotonic() + SETTLE_TIMEOUT
    while True:
        reports = {node: analyze(path) for node, path in logs.items()}
        unsettled = sum(len(r.open) for r in reports.values())
        if unsettled == 0 or time.monotonic() > deadline:
            break
        time.sleep(1)
    window.unsettled = unsettled
    problems = [f"{node}: {p}" for node, r in reports.items() for p in r.problems]
    if unsettled:
        window.notes += [f"{node}: {act.describe()}" for node, r in reports.items() for act in r.open][:5]

    def exists(keys: list[str]) -> set[str]:
        return set(admin.call("audit.objects", keys=keys)["exists"])

    claims = false_claims(reports, exists)
    ok_created = {key for r in reports.values() for act in r.acts if act.outcome == "ok" for key in act.created}
    told_but_not_ok = [label for label, keys, _ in acknowledged if not set(keys) <= ok_created]
    window.false_outcomes = len(claims) + len(problems) + len(told_but_not_ok)
    window.notes += [f"false claim {c.node}: {c.act}: {c.why}" for c in claims][:5] + problems[:5]
    window.notes += [f"acknowledged {label} without an ok outcome" for label in told_but_not_ok][:5]
    for node, path in logs.items():
        window.verify[node] = verify(path).ok


def check_pairs(user: Client, recorder: Recorder, window: Window, checked: set[str]) -> None:
    """Every key pair attempted so far: both halves or neither (a half pair is a half-written object)."""
    for label, _ in list(recorder.attempted_pairs):
        if label in checked:
            continue
        found = user.find_objects({CKA.LABEL: label.encode()})
        if len(found) not in (0, 2):
            window.half_written += 1
            window.notes.append(f"{label}: {len(found)} object(s)")
        checked.add(label)


# --- the run -------------------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    reason = netns_unavailable_reason()
    etcd = etcd_binary()
    if reason or etcd is None:
        log(f"cannot run: {reason or 'etcd is not installed (apt-get install etcd-server)'}")
        return 2
    rng = random.Random(args.seed)
    base = Path(tempfile.mkdtemp(prefix="strongroom-soak-"))
    topo = Topology(ZONES).create()
    cluster: Cluster | None = None
    load: Load | None = None
    windows: list[Window] = []
    started = time.monotonic()
    try:
        cluster = Cluster(topo, base, etcd)
        for zone in ZONES:
            cluster.start_member(zone)
        cluster.etcd_ready()
        cluster.start_node("a")
        until("node a", lambda: cluster.node_status("a"), 60)
        with cluster.node_client("a", 30) as first:
            installed = initialize_cluster(first, CLUSTER, cluster.ca_key, cluster.ca_cert)
            first.cluster_activate(ADMIN_PASSWORD, installed["activation_secret"], "admin")
        enroll_nodes(cluster.profile, ("admin", ADMIN_PASSWORD),
                     [(f"node-{z}", cluster.configs[z].tls_cert) for z in ("b", "c")])
        for zone in ("b", "c"):
            cluster.start_node(zone)
        for zone in ("b", "c"):
            until(f"node {zone} active", lambda zone=zone: cluster.node_status(zone)["state"] == "active", 60)
        admin = cluster.node_client("a", 30)
        admin.login("admin", ADMIN_PASSWORD)
        admin.user_create(USER, "crypto-user", USER_PASSWORD)
        cluster.start_agent()
        user = Client.from_agent(str(cluster.agent_socket), timeout=30)
        user.login(USER, USER_PASSWORD)
        _, sign_key = user.generate_key_pair(CKM.EC_KEY_PAIR_GEN, {CKA.TOKEN: True, CKA.EC_PARAMS: P256},
                                             {CKA.TOKEN: True, CKA.SIGN: True, CKA.LABEL: b"soak-signer"})
        aes_key = user.generate_key(CKM.AES_KEY_GEN, {CKA.TOKEN: True, CKA.VALUE_LEN: 32, CKA.LABEL: b"soak-aes"})
        user.close()
        log(f"cluster up in {time.monotonic() - started:.0f} s ({base}); load starts")
        recorder = Recorder()
        load = Load(str(cluster.agent_socket), recorder, sign_key, aes_key)
        load.start()
        time.sleep(5)
        names = {f"load-{i}" for i in range(LOAD_THREADS)} | {"create", "login"}
        schedule = faults(cluster, rng)
        if args.faults:
            wanted = [int(n) - 1 for n in args.faults.split(",")]
            schedule = [schedule[i] for i in wanted]
        budget = args.minutes * 60
        slot = max(20.0, budget / max(len(schedule), 1) if budget < 600 else 40.0)
        checked: set[str] = set()
        run_started = time.monotonic()
        index = 0
        # Every fault once, whatever the time (a loaded machine stretches the slots), then more rounds while
        # the time lasts.
        while index < len(schedule) or time.monotonic() - run_started < budget - 5:
            fault = schedule[index % len(schedule)]
            index += 1
            window = Window(fault.name, time.monotonic())
            log(f"fault {index}: {fault.name}")
            fault.inject()
            time.sleep(fault.hold)
            window.restored = time.monotonic()
            fault.restore()
            log(f"  restored after {window.restored - window.started:.1f} s")
            with contextlib.suppress(RuntimeError):
                until("recovery", lambda w=window: recovered(recorder, w.restored, names) is not None,
                      RECOVERY_TIMEOUT, pause=0.5)
            window.recovery = recovered(recorder, window.restored, names)
            if window.recovery is None:
                log(f"  not recovered within {RECOVERY_TIMEOUT:.0f} s; node logs:\n{cluster.tails()}")
            # Checks, with clients of their own (straight to a node, as the operator's tools).
            with cluster.any_node() as operator:
                check_audit(cluster, recorder, window, operator)
                operator.login(USER, USER_PASSWORD)
                check_pairs(operator, recorder, window, checked)
                operator.logout()
            rest = window.started + slot - time.monotonic()
            if rest > 0:
                time.sleep(rest)
            window.ended = time.monotonic()
            samples = recorder.between(window.started, window.ended)
            window.operations = len(samples)
            window.errors = Counter(s.code for s in samples if not s.ok)
            for kind in ("load", "create", "login"):
                failed = Counter(s.code for s in samples if not s.ok and s.thread.startswith(kind))
                if failed:
                    window.errors_by_kind[kind] = dict(failed)
            for sample in samples:
                if not sample.ok:
                    kind = sample.thread.split("-")[0]
                    window.messages.setdefault(f"{kind} {sample.code}", sample.message)
                    if sample.message.startswith(("the store ", "store error")):
                        window.store_refusals[kind] += 1
            windows.append(window)
            log(f"  {json.dumps(window.row())}")
        load.close()
        load = None
        verify_dir = subprocess.run([sys.executable, "-m", "strongroom", "audit", "verify", "--dir", str(base),
                                     "--json"], capture_output=True, text=True, timeout=300, env=cluster.env)
        final = json.loads(verify_dir.stdout) if verify_dir.stdout.strip() else {"error": verify_dir.stderr}
    finally:
        if load is not None:
            load.close()
        problems = cluster.close() if cluster is not None else topo.close()
        if problems:
            log(f"teardown problems: {problems}")
    return report(args, windows, final, verify_dir.returncode, time.monotonic() - started, recorder)


def report(args: argparse.Namespace, windows: list[Window], final: dict[str, Any], verify_rc: int,
           seconds: float, recorder: Recorder) -> int:
    rows = [w.row() for w in windows]
    print()
    print(f"{'fault':58} {'ops':>6} {'recovery':>9} {'half':>5} {'no-out':>6} {'false':>5}  verify  client errors")
    for row in rows:
        errors = ", ".join(f"{code} {n}" for code, n in sorted(row["client_errors"].items())) or "-"
        recovery = "-" if row["recovery_seconds"] is None else f"{row['recovery_seconds']:.2f} s"
        verified = "ok" if all(row["audit_verify"].values()) else "FAIL"
        print(f"{row['fault'][:58]:58} {row['operations']:>6} {recovery:>9} {row['half_written']:>5} "
              f"{row['audit_without_outcome']:>6} {row['audit_false_outcome']:>5}  {verified:6}  {errors}")
    told = [(row["fault"], what, message) for row in rows for what, message in row["client_error_messages"].items()]
    if told:
        print("\nwhat the clients were told (one message per fault, thread kind and code):")
        for fault, what, message in told:
            print(f"  {fault[:40]:40} {what:32} {message[:160]}")
    logs = final.get("data", {}).get("logs", [])
    print(f"\nstrongroom audit verify --dir: exit {verify_rc}; " + "; ".join(
        f"{Path(entry['file']).parent.name}: {'OK' if entry['ok'] else 'NOT OK'} ({entry['records']} records, "
        f"{entry['outcomes']['acts']} acts)" for entry in logs)
        + f"; objects checked: {final.get('data', {}).get('objects_checked')}, false claims: "
          f"{len(final.get('data', {}).get('false_claims', []))}")
    totals = Counter[str]()
    for row in rows:
        totals.update(row["client_errors"])
    operations = sum(row["operations"] for row in rows)
    print(f"{len(rows)} faults in {seconds / 60:.1f} min; {operations} client operations, "
          f"{sum(totals.values())} errors; {len(recorder.acknowledged)} key creations acknowledged")
    failed = any(r["half_written"] or r["audit_without_outcome"] or r["audit_false_outcome"]
                 or not all(r["audit_verify"].values()) or r["recovery_seconds"] is None for r in rows)
    failed = failed or verify_rc != 0 or not rows
    if args.json:
        Path(args.json).write_text(json.dumps({"faults": rows, "audit_verify": final, "verify_exit": verify_rc,
                                               "minutes": args.minutes, "seconds": seconds, "operations": operations,
                                               "acknowledged_creations": len(recorder.acknowledged),
                                               "ok": not failed}, indent=2, default=str))
    print("SOAK " + ("FAILED" if failed else "PASSED"))
    return 1 if failed else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--seed", type=int, default=14)
    parser.add_argument("--faults", help="only these faults of the schedule, by number (1-7, e.g. 4,7)")
    parser.add_argument("--json", help="also write every number to this file")
    args = parser.parse_args()
    if os.geteuid() != 0:
        log("the soak makes network namespaces and mounts a tmpfs: run it as root")
        return 2

    def stopped(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)  # through run()'s finally: processes, namespaces and mounts go

    signal.signal(signal.SIGTERM, stopped)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
