"""Abuse of a real cluster (issue 14): logins that pile up, clients that send and never read, floods of
connections that never speak TLS. Each test does the attack, then checks the cluster still serves and
what it costs in memory (RSS of the real processes, from /proc)."""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from strongroom.client import Client, ClientError
from strongroom.errors import CKR
from strongroom.transport.protocol import FrameDecoder, decode_reply, encode_request

from .conftest import LocalCluster


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


def records(cluster: LocalCluster, event: str) -> list[dict[str, Any]]:
    lines = (cluster.node_dir / "audit.log").read_text().splitlines()
    return [r for r in (json.loads(line) for line in lines) if r["event"] == event]


def set_limits(cluster: LocalCluster, **limits: Any) -> None:
    """Change [limits] in node.toml and start the node again with them."""
    import tomllib

    import tomli_w

    config = tomllib.loads(cluster.config_path.read_text())
    config.setdefault("limits", {}).update(limits)
    cluster.config_path.write_text(tomli_w.dumps(config))
    cluster.down()
    cluster.up()


def sessions_on_node(cluster: LocalCluster) -> int:
    with cluster.client() as probe:  # one worker: node.status counts every login of the node
        return int(probe.node_status()["sessions"])


@pytest.fixture
def one_worker(tmp_path: Path) -> LocalCluster:
    cluster = LocalCluster(tmp_path / "c", workers=1)
    cluster.up()
    yield cluster
    cluster.down()


# --- item 6: logins ------------------------------------------------------------------------------


def test_logins_end_with_their_connection_unless_kept(one_worker: LocalCluster) -> None:
    cluster = one_worker
    cluster.crypto_user("alice")
    cluster.down()  # the fixture's own clients are gone with their connections
    cluster.up()
    base = sessions_on_node(cluster)
    client = Client.from_dir(cluster.dir, timeout=30)
    client.login("alice", "password1")
    assert sessions_on_node(cluster) == base + 1
    client.connection.close()  # gone without a logout: the old node kept the login 15 minutes
    deadline = time.monotonic() + 10
    while sessions_on_node(cluster) != base and time.monotonic() < deadline:
        time.sleep(0.1)
    assert sessions_on_node(cluster) == base
    ended = records(cluster, "auth.logout")[-1]
    assert ended["actor"] == "alice" and ended["details"] == {"reason": "connection closed"}
    # A login made to be kept outlives its connection and serves another one.
    keeper = Client.from_dir(cluster.dir, timeout=30)
    keeper.login("alice", "password1", keep=True)
    token = keeper.session
    keeper.connection.close()
    other = Client.from_dir(cluster.dir, timeout=30)
    other.session = token
    assert other.call("session.info")["username"] == "alice"
    other.close()  # a session handed over is not this client's to log out
    third = Client.from_dir(cluster.dir, timeout=30)
    third.session = token
    assert third.call("session.info")["username"] == "alice"
    third.logout()
    third.close()


def test_closing_the_sdk_logs_out_directly_and_through_the_agent(one_worker: LocalCluster) -> None:
    cluster = one_worker
    cluster.crypto_user("bob")
    agent_socket = cluster.summary["agent_socket"]
    for make in (lambda: Client.from_dir(cluster.dir, timeout=30),
                 lambda: Client.from_agent(agent_socket, timeout=30)):
        before = len(records(cluster, "auth.logout"))
        with make() as client:
            client.login("bob", "password1")
            token = client.session
        logouts = records(cluster, "auth.logout")[before:]
        assert [(r["actor"], r["details"]) for r in logouts] == [("bob", {})], logouts  # an explicit logout
        with make() as stale:
            stale.session = token
            with pytest.raises(ClientError) as refused:
                stale.call("session.info")
            assert refused.value.code == CKR.SESSION_HANDLE_INVALID
    # Through the agent, a client that just disappears: the agent logs its logins out on the node.
    before = len(records(cluster, "auth.logout"))
    vanishing = Client.from_agent(agent_socket, timeout=30)
    vanishing.login("bob", "password1")
    vanishing.connection.close()
    deadline = time.monotonic() + 10
    while len(records(cluster, "auth.logout")) == before and time.monotonic() < deadline:
        time.sleep(0.1)
    assert [r["actor"] for r in records(cluster, "auth.logout")[before:]] == ["bob"]


def test_the_per_user_login_limit_cannot_be_used_to_lock_a_user_out(one_worker: LocalCluster) -> None:
    """The issue's attack: log in again and again (1,024 times with the default limit) and the user could
    not log in anywhere (CKR_SESSION_COUNT). Here with a limit of 8 and 40 kept logins."""
    cluster = one_worker
    set_limits(cluster, max_sessions_per_user=8)
    cluster.crypto_user("carol")
    attacker = Client.from_dir(cluster.dir, timeout=30)
    for _ in range(40):
        attacker.login("carol", "password1", keep=True)
    victim = Client.from_dir(cluster.dir, timeout=30)
    victim.login("carol", "password1")  # refused with CKR_SESSION_COUNT before
    assert victim.call("session.info")["username"] == "carol"
    assert sessions_on_node(cluster) <= 8 + 1  # bounded all the same (+1: the admin of crypto_user)
    attacker.close()
    victim.close()


# --- item 7: the agent's pass-through --------------------------------------------------------------


def test_a_client_that_pipelines_and_reads_nothing_cannot_grow_the_agent(one_worker: LocalCluster) -> None:
    """1,500 requests for 64 KiB of random each, pipelined, the replies left unread: the old agent
    buffered them all (+100 MB). Now it stops reading the client at its in-flight limit."""
    cluster = one_worker
    cluster.crypto_user("dave")
    agent_pid = int((cluster.dir / "agent.pid").read_text())
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(cluster.summary["agent_socket"])
    sock.sendall(encode_request(1, "session.login", None, {"username": "dave", "password": "password1"}))
    decoder = FrameDecoder(4 << 20)
    replies: list[Any] = []
    while not replies:
        replies += decoder.feed(sock.recv(65536))
    token = decode_reply(replies.pop()).body["session"]
    before = rss_kib(agent_pid)
    count = 1500
    payload = b"".join(encode_request(i + 2, "random.generate", token, {"length": 65536}) for i in range(count))
    sock.setblocking(False)
    sent = 0
    deadline = time.monotonic() + 20
    while sent < len(payload) and time.monotonic() < deadline:  # send what the agent takes, read nothing
        try:
            sent += sock.send(payload[sent:sent + 65536])
        except BlockingIOError:
            time.sleep(0.05)
    time.sleep(3)  # let the agent do whatever it does with what it read
    grown = rss_kib(agent_pid) - before
    print(f"\nagent RSS {before} KiB -> +{grown} KiB with {sent} of {len(payload)} request bytes taken, "
          "no reply read")
    assert grown < 40 * 1024, f"the agent grew by {grown} KiB"
    # Nothing was dropped: reading now, every reply arrives.
    sock.setblocking(True)
    sock.settimeout(60)
    rest = threading.Thread(target=sock.sendall, args=(payload[sent:],))
    rest.start()
    got = 0
    while got < count:
        for frame in decoder.feed(sock.recv(1 << 20)):
            reply = decode_reply(frame)
            assert reply.code == CKR.OK and len(reply.body["random"]) == 65536
            got += 1
    rest.join(60)
    sock.close()


# --- item 5: connections before TLS --------------------------------------------------------------


def test_idle_and_stalled_connections_cost_little_and_a_real_client_is_served(one_worker: LocalCluster) -> None:
    """3,000 TCP connections that say nothing and 300 that start a handshake and stall (from another
    address): the old node spent ~300 KiB on each before any certificate (1,000 idle: 122 -> 428 MB,
    kept after they closed). A real client is served meanwhile, and the memory goes back after."""
    cluster = one_worker
    host, port = cluster.summary["nodes"][0]["address"].rsplit(":", 1)
    supervisor = int((cluster.node_dir / "node.pid").read_text())
    (worker,) = [pid for pid in cluster.node_pids() if pid != supervisor]
    with cluster.client() as warm:
        warm.node_status()
    before = rss_kib(worker)
    rounds = []
    for _ in range(2):  # twice: what a flood leaves behind must not add up
        idle = [socket.create_connection((host, int(port)), timeout=10) for _ in range(3000)]
        stalled = []
        for _ in range(300):  # a ClientHello's first byte, then nothing: these do take handshake slots
            conn = socket.create_connection((host, int(port)), timeout=10, source_address=("127.0.0.2", 0))
            conn.sendall(b"\x16")
            stalled.append(conn)
        time.sleep(2)
        during = rss_kib(worker)
        started = time.monotonic()
        with cluster.client() as real:
            assert real.node_status()["state"] == "active"
        served = time.monotonic() - started
        for conn in idle + stalled:
            conn.close()
        time.sleep(3)
        rounds.append((during, served, rss_kib(worker)))
    print(f"\nworker RSS before: {before // 1024} MB; " + "; ".join(
        f"with 3,000 idle + 300 stalled connections {d // 1024} MB, real client served in {s:.2f} s, "
        f"after they closed {a // 1024} MB" for d, s, a in rounds))
    for during, served, after in rounds:
        assert served < 5
        assert during - before < 64 * 1024  # at most 64 handshakes hold TLS state at once (~300 KiB each)
        assert after - before < 48 * 1024  # what a flood's tasks and handshakes leave in the heap, reused
    assert rounds[1][2] - rounds[0][2] < 16 * 1024
