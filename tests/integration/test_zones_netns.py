"""Zones as separate hosts: each zone's etcd member and node in its own network namespace.

Three namespaces (zones a, b, c) hang off a Linux bridge in a fourth namespace; the
test process (the SDK clients) stays in the root namespace and reaches every zone
through a veth onto the same bridge (tests/netns.py). Each zone runs a real etcd
member (peer and client URLs on its own address) and a real node
(``python -m strongroom node serve``) over the three-member etcd store. Node a
initializes the cluster; b and c, enrolled by the admin, receive the cluster key from it.

Zone c is then unplugged (its port on the bridge goes down): through nodes a and b
signatures keep working and a key created through a is usable through b at once,
while clients of node c fail to connect. Once the link is back, node c serves again
and sees the key created while it was cut off.

Runs as root where ``ip netns`` works (CI); skips with the reason elsewhere.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from strongroom import pki
from strongroom.client import Client, ClientError, ClientProfile, NodeAddress
from strongroom.constants import CKA, CKM
from strongroom.local.cluster import enroll_nodes, initialize_cluster
from strongroom.mechanisms import ec as ec_mech
from strongroom.services.config import NodeConfig
from tests.etcd_cluster import etcd_binary
from tests.netns import NetnsUnavailable, Topology, netns_unavailable_reason

pytestmark = pytest.mark.slow

P256 = ec_mech.params_for_curve(ec.SECP256R1())
ZONES = ("a", "b", "c")
NODE_PORT = 7443
ETCD_CLIENT_PORT = 2379
ETCD_PEER_PORT = 2380
CLUSTER = "zoned"
ADMIN_PASSWORD = "zones-admin-password"
USER_PASSWORD = "password1"

T = TypeVar("T")


FAILURES: dict[str, list[str]] = {}


def _until(what: str, attempt: Callable[[], T], timeout: float, pause: float = 0.1) -> T:
    """Call ``attempt`` until it returns without ClientError/OSError; raise after ``timeout``.

    The failed attempts are kept in FAILURES[what] (elapsed time and error), for the report.
    """
    start = time.monotonic()
    deadline = start + timeout
    FAILURES[what] = []
    while True:
        try:
            return attempt()
        except (ClientError, OSError, ValueError, AssertionError) as exc:
            FAILURES[what].append(f"{time.monotonic() - start:.2f}s {type(exc).__name__}: {str(exc)[:160]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{what}: still failing after {timeout:.0f} s: {exc}") from None
            time.sleep(pause)


def _etcd_call(url: str, path: str, body: dict[str, Any] | None = None, timeout: float = 2.0) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url + path, data=data, method="GET" if body is None else "POST")
    with urllib.request.urlopen(request, timeout=timeout) as answer:
        return json.loads(answer.read())


def _log_tails(directory: Path) -> str:
    parts = []
    for log in sorted(directory.glob("*.log")):
        lines = log.read_text(errors="replace").splitlines()[-12:]
        parts.append(f"--- {log.name}\n" + "\n".join(lines))
    return "\n".join(parts)


class WriteProbe:
    """Key creation through one node in a loop (own connection, own thread): latency and failures over time."""

    def __init__(self, client: Client) -> None:
        import threading

        self.client = client
        self.samples: list[tuple[float, float, str | None]] = []  # (start, latency, error)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            start = time.monotonic()
            error = None
            try:
                self.client.generate_key(CKM.AES_KEY_GEN, {CKA.TOKEN: True, CKA.VALUE_LEN: 16, CKA.LABEL: b"probe"})
            except ClientError as exc:
                error = str(exc)[:120]
            self.samples.append((start, time.monotonic() - start, error))
            self.stop.wait(0.05)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(15)
        self.client.close()

    def between(self, start: float, end: float) -> list[tuple[float, float, str | None]]:
        return [sample for sample in self.samples if start <= sample[0] < end]

    @staticmethod
    def summary(samples: list[tuple[float, float, str | None]]) -> str:
        failed = [s for s in samples if s[2]]
        longest = max((s[1] for s in samples), default=0.0)
        return f"{len(samples)} writes, {len(failed)} failed, longest {longest:.2f} s" + (
            f" (first failure: {failed[0][2]})" if failed else "")


class Zoned:
    """The cluster over a Topology: certificates, etcd members, nodes and SDK clients."""

    def __init__(self, topo: Topology, base: Path, etcd: str) -> None:
        self.topo = topo
        self.base = base
        self.etcd = etcd
        self.logs = base / "logs"
        self.logs.mkdir(parents=True)
        self.clients: list[Client] = []
        self.nodes: dict[str, Any] = {}
        self.configs: dict[str, NodeConfig] = {}
        self.member_ids: dict[str, str] = {}
        ca_key, ca_cert = pki.create_ca("zones test CA")
        (base / "ca").mkdir(mode=0o700)
        pki.write_private_key(base / "ca" / "ca.key", ca_key)
        pki.write_cert(base / "ca" / "ca.crt", ca_cert)
        client_key, client_cert = pki.issue_client_certificate(ca_key, ca_cert, "zones-test-client")
        pki.write_private_key(base / "ca" / "client.key", client_key)
        pki.write_cert(base / "ca" / "client.crt", client_cert)
        self.client_urls = [f"http://{topo.zones[z].address}:{ETCD_CLIENT_PORT}" for z in ZONES]
        addresses = []
        for zone in ZONES:
            node_id = f"node-{zone}"
            node_dir = base / "nodes" / node_id
            (node_dir / "tls").mkdir(parents=True, mode=0o700)
            os.chmod(node_dir, 0o700)
            host = topo.zones[zone].address
            key, cert = pki.issue_node_certificate(ca_key, ca_cert, node_id, hosts=[host])
            pki.write_private_key(node_dir / "tls" / "node.key", key)
            pki.write_cert(node_dir / "tls" / "node.crt", cert)
            config = NodeConfig(
                node_id=node_id, node_dir=node_dir, host=host, port=NODE_PORT,
                tls_cert=node_dir / "tls" / "node.crt", tls_key=node_dir / "tls" / "node.key",
                ca_cert=base / "ca" / "ca.crt", store_path=node_dir / "unused.db", zone=zone,
                cluster_name=CLUSTER, workers=1, store_backend="etcd", store_endpoints=list(self.client_urls),
                peers=[f"{topo.zones[z].address}:{NODE_PORT}" for z in ZONES if z != zone],
            )
            (node_dir / "node.toml").write_text(config.to_toml())
            self.configs[zone] = config
            addresses.append(NodeAddress(node_id, host, NODE_PORT, zone))
        self.profile = ClientProfile(CLUSTER, base / "ca" / "ca.crt", base / "ca" / "client.crt",
                                     base / "ca" / "client.key", tuple(addresses))
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("STRONGROOM_")}

    # --- etcd ----------------------------------------------------------------------------

    def start_etcd(self) -> None:
        initial = ",".join(f"etcd-{z}=http://{self.topo.zones[z].address}:{ETCD_PEER_PORT}" for z in ZONES)
        for zone in ZONES:
            address = self.topo.zones[zone].address
            client_url = f"http://{address}:{ETCD_CLIENT_PORT}"
            peer_url = f"http://{address}:{ETCD_PEER_PORT}"
            self.topo.spawn(zone, [
                self.etcd, "--name", f"etcd-{zone}", "--data-dir", str(self.base / f"etcd-{zone}.data"),
                "--listen-client-urls", client_url, "--advertise-client-urls", client_url,
                "--listen-peer-urls", peer_url, "--initial-advertise-peer-urls", peer_url,
                "--initial-cluster", initial, "--initial-cluster-state", "new",
                "--initial-cluster-token", f"sr-zones-{self.topo.suffix}",
                # The timers and pre-vote `strongroom up` uses (src/strongroom/local/etcd.py).
                "--heartbeat-interval", "100", "--election-timeout", "1000", "--pre-vote",
                "--logger", "zap", "--log-level", "error", "--log-outputs", "stderr",
            ], self.logs / f"etcd-{zone}.log", env=self.env)  # fmt: skip
        for url in self.client_urls:  # a linearizable read through every member: there is a leader
            _until(f"etcd at {url}", lambda url=url: _etcd_call(url, "/v3/kv/range", {"key": "AA=="}), 20)

    def etcd_status(self, zone: str) -> dict[str, Any]:
        return _etcd_call(self.client_urls[ZONES.index(zone)], "/v3/maintenance/status", {})

    def etcd_leader_zone(self, asking: str = "a") -> str:
        """The zone whose member leads, as ``asking``'s member sees it (member ids do not change)."""
        if not self.member_ids:
            self.member_ids = {self.etcd_status(z)["header"]["member_id"]: z for z in ZONES}
        return self.member_ids[self.etcd_status(asking)["leader"]]

    def move_etcd_leader_to(self, zone: str) -> None:
        """Make ``zone``'s member the raft leader (MoveLeader), so cutting it off costs an election."""
        leader = self.etcd_leader_zone()
        target = self.etcd_status(zone)["header"]["member_id"]
        if leader != zone:
            _etcd_call(self.client_urls[ZONES.index(leader)], "/v3/maintenance/transfer-leadership",
                       {"targetID": target}, timeout=5)

        def moved() -> None:
            if self.etcd_leader_zone() != zone:
                raise ValueError(f"etcd-{zone} does not lead yet")

        _until("leadership transfer", moved, 10)

    # --- nodes ---------------------------------------------------------------------------

    def start_node(self, zone: str) -> None:
        config = self.configs[zone]
        self.nodes[zone] = self.topo.spawn(
            zone, [sys.executable, "-m", "strongroom", "node", "serve", "--config",
                   str(config.node_dir / "node.toml")],
            self.logs / f"node-{zone}.log", env=self.env)

    def wait_node(self, zone: str, timeout: float = 30) -> dict[str, Any]:
        def status() -> dict[str, Any]:
            if self.nodes[zone].poll() is not None:
                raise RuntimeError(f"node {zone} exited:\n{_log_tails(self.logs)}")
            with Client(self.profile, self.profile.nodes[ZONES.index(zone)], timeout=5) as client:
                return client.node_status()

        return _until(f"node {zone}", status, timeout)

    def client(self, zone: str, timeout: float = 10) -> Client:
        client = Client(self.profile, self.profile.nodes[ZONES.index(zone)], timeout=timeout)
        self.clients.append(client)
        return client

    def user(self, zone: str, timeout: float = 10) -> Client:
        client = self.client(zone, timeout)
        client.login("zoned", USER_PASSWORD)
        return client

    def close_clients(self) -> None:
        for client in self.clients:
            with contextlib.suppress(Exception):
                client.close()
        self.clients.clear()


def test_a_zone_cut_off_its_network_leaves_the_others_serving(tmp_path: Path) -> None:
    # What this test needs is installed by .ci/run; missing, it fails (a skipped test proves nothing).
    reason = netns_unavailable_reason()
    if reason:
        pytest.fail(reason)
    etcd = etcd_binary()
    if etcd is None:
        pytest.fail("etcd is not installed (apt-get install etcd-server, or set STRONGROOM_ETCD)")
    try:
        topo = Topology(ZONES)
        topo.create()
    except NetnsUnavailable as exc:
        pytest.fail(str(exc))
    started = time.monotonic()
    timings: dict[str, float] = {}
    cluster: Zoned | None = None
    probe: WriteProbe | None = None
    try:
        cluster = Zoned(topo, tmp_path, etcd)
        cluster.start_etcd()
        timings["etcd up"] = time.monotonic() - started

        # Node a initializes the cluster; b and c get the cluster key from it (mTLS + X25519).
        cluster.start_node("a")
        assert cluster.wait_node("a")["state"] in ("uninitialized", "initialized", "active")
        with cluster.client("a") as first:
            installed = initialize_cluster(first, CLUSTER, pki.load_private_key(tmp_path / "ca" / "ca.key"),
                                           pki.load_certificate(tmp_path / "ca" / "ca.crt"))
            first.cluster_activate(ADMIN_PASSWORD, installed["activation_secret"], "admin")
        enroll_nodes(cluster.profile, ("admin", ADMIN_PASSWORD),
                     [(f"node-{z}", cluster.configs[z].tls_cert) for z in ("b", "c")])
        for zone in ("b", "c"):
            cluster.start_node(zone)
        def holds_the_key(zone: str) -> None:
            status = cluster.wait_node(zone)
            assert status["state"] == "active", status

        for zone in ("b", "c"):
            _until(f"node {zone} to receive the cluster key", lambda zone=zone: holds_the_key(zone), 30)
        timings["cluster up"] = time.monotonic() - started

        admin = cluster.client("a")
        admin.login("admin", ADMIN_PASSWORD)
        admin.user_create("zoned", "crypto-user", USER_PASSWORD)
        a, b, c = (cluster.user(z) for z in ZONES)
        public, private = a.generate_key_pair(CKM.EC_KEY_PAIR_GEN, {CKA.TOKEN: True, CKA.EC_PARAMS: P256},
                                              {CKA.TOKEN: True, CKA.LABEL: b"before-cut"})
        c.verify(public, CKM.ECDSA_SHA256, b"all zones", b.sign(private, CKM.ECDSA_SHA256, b"all zones"))
        assert sorted(n["id"] for n in c.cluster_status()["nodes"]) == ["node-a", "node-b", "node-c"]

        # The worst case for the survivors: zone c's etcd member leads when it is cut off.
        cluster.move_etcd_leader_to("c")
        assert cluster.etcd_leader_zone() == "c"

        # Token-key creation (a store write) through node b all along, in its own thread.
        probe_client = Client(cluster.profile, cluster.profile.nodes[1], timeout=10)
        probe_client.login("zoned", USER_PASSWORD)
        probe = WriteProbe(probe_client)
        time.sleep(0.3)

        # --- cut zone c off ------------------------------------------------------------
        cut_at = time.monotonic()
        topo.cut("c")

        # Signatures with an existing key through a and b: no store write involved.
        for client in (a, b):
            t0 = time.monotonic()
            signature = _until("sign through a surviving zone",
                               lambda client=client: client.sign(private, CKM.ECDSA_SHA256, b"cut"), 15)
            a.verify(public, CKM.ECDSA_SHA256, b"cut", signature)
            timings[f"sign via {client.node.zone} after cut"] = time.monotonic() - t0

        # A key created through a (a store write: needs the a+b majority and a new etcd leader).
        t0 = time.monotonic()
        new_public, new_private = _until(
            "key creation through a", lambda: a.generate_key_pair(
                CKM.EC_KEY_PAIR_GEN, {CKA.TOKEN: True, CKA.EC_PARAMS: P256},
                {CKA.TOKEN: True, CKA.LABEL: b"while-cut"}), 20)
        timings["first key creation via a after cut (write stall)"] = time.monotonic() - t0
        timings["cut -> first write committed"] = time.monotonic() - cut_at
        # ...usable through b at once, no sleep.
        a.verify(new_public, CKM.ECDSA_SHA256, b"fresh", b.sign(new_private, CKM.ECDSA_SHA256, b"fresh"))
        t0 = time.monotonic()
        a.generate_key(CKM.AES_KEY_GEN, {CKA.TOKEN: True, CKA.VALUE_LEN: 32, CKA.LABEL: b"while-cut-aes"})
        timings["second key creation via a (steady)"] = time.monotonic() - t0
        assert cluster.etcd_leader_zone("a") in ("a", "b") and cluster.etcd_leader_zone("b") in ("a", "b")

        # Clients of node c fail: a new connection gets nowhere (timeout / unreachable)...
        t0 = time.monotonic()
        with pytest.raises(ClientError):
            with Client(cluster.profile, cluster.profile.nodes[2], timeout=3) as lost:
                lost.node_status()
        timings["new client of c fails after"] = time.monotonic() - t0
        # ...and the logged-in one gets no answer either.
        t0 = time.monotonic()
        with pytest.raises(ClientError):
            c.connection.call("node.status", {}, c.session, timeout=3)
        timings["existing client of c fails after"] = time.monotonic() - t0
        # The node and etcd processes of zone c are still running: it is the network that is gone.
        assert cluster.nodes["c"].poll() is None

        # --- restore the link ------------------------------------------------------------
        restored_at = time.monotonic()
        topo.restore("c")
        cluster.close_clients()  # the old connections to c may be half-dead

        def c_answers() -> dict[str, Any]:
            with Client(cluster.profile, cluster.profile.nodes[2], timeout=5) as client:
                return client.node_status()

        _until("node c answers after the link is restored", c_answers, 20, pause=0.2)
        timings["restore -> c answers node.status"] = time.monotonic() - restored_at

        def c_sees_the_new_key() -> bytes:
            client = Client(cluster.profile, cluster.profile.nodes[2], timeout=5)
            try:
                client.login("zoned", USER_PASSWORD)
                timings.setdefault("restore -> login through c", time.monotonic() - restored_at)
                assert new_private in client.find_objects({CKA.LABEL: b"while-cut"})
                assert client.find_objects({CKA.LABEL: b"while-cut-aes"})
                return client.sign(new_private, CKM.ECDSA_SHA256, b"back")
            finally:
                client.close()

        signature = _until("node c after the link is restored", c_sees_the_new_key, 20, pause=0.2)
        timings["restore -> c serves the key made while cut"] = time.monotonic() - restored_at
        time.sleep(0.5)
        probe.close()
        before = probe.between(0, cut_at)
        during_cut = probe.between(cut_at, restored_at)
        after_restore = probe.between(restored_at, time.monotonic())
        print(f"\nwrites through node b: before the cut: {probe.summary(before)}; "
              f"while c was cut off: {probe.summary(during_cut)}; after the restore: {probe.summary(after_restore)}")
        assert before and not any(error for _, _, error in before)
        # While c is cut off, b keeps writing: at most a stall for the etcd election, no failure.
        assert during_cut and not any(error for _, _, error in during_cut), probe.summary(during_cut)
        assert max(latency for _, latency, _ in during_cut) < 5
        a = cluster.user("a")
        a.verify(new_public, CKM.ECDSA_SHA256, b"back", signature)
        # And c's side writes again (its etcd member rejoined the majority).
        c = cluster.user("c")
        _until("key creation through c", lambda: c.generate_key(
            CKM.AES_KEY_GEN, {CKA.TOKEN: True, CKA.VALUE_LEN: 16, CKA.LABEL: b"from-c"}), 15)
        assert cluster.user("b").find_objects({CKA.LABEL: b"from-c"})
    except BaseException:
        if cluster is not None:
            print(_log_tails(cluster.logs))
        raise
    finally:
        if probe is not None:
            probe.close()
        if cluster is not None:
            cluster.close_clients()
        problems = topo.close()
        left = topo.leftovers()
        timings["total"] = time.monotonic() - started
        print("\nzones netns timings (s): " + ", ".join(f"{k}: {v:.2f}" for k, v in timings.items()))
        for what, failures in FAILURES.items():
            if failures and what not in {f"node {z}" for z in ZONES} and not what.startswith("etcd at"):
                print(f"  failed attempts of {what!r}: {failures}")
    assert not problems, problems
    assert not left, f"left behind: {left}"
