"""The launcher of a local cluster's background processes (strongroom.local.processes) and the agent's
start/stop on it (strongroom.local.agent): real processes, no cluster.

The attacks: a pid file whose pid the system has since given to another program must not make
``down`` stop that program (or its whole process group); a running agent that does not answer must
not be left behind when ``up`` starts a new one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from strongroom import pki
from strongroom.local.agent import agent_process, agent_status, start_agent, stop_agent
from strongroom.local.layout import Layout, LocalClusterError
from strongroom.local.nodes import stop_node
from strongroom.local.processes import Background, LaunchError, NotReady, alive, process_group_members

SLEEPER = "import sys, time; print('sleeping', flush=True); time.sleep(float(sys.argv[1]))"


@pytest.fixture
def spawned() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes a test starts itself; killed at the end whatever happened."""
    processes: list[subprocess.Popen[bytes]] = []
    yield processes
    for process in processes:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)


def stranger(spawned: list[subprocess.Popen[bytes]], *argv: str) -> subprocess.Popen[bytes]:
    """Another program of the same user, in a process group of its own."""
    process = subprocess.Popen([sys.executable, "-c", SLEEPER, "60", *argv], start_new_session=True)
    spawned.append(process)
    return process


def sleeper(tmp_path: Path, seconds: float, *marks: str, group: bool = False) -> Background:
    return Background("the sleeper", (sys.executable, "-c", SLEEPER, str(seconds), *marks), tmp_path / "s.pid",
                      tmp_path / "s.log", marks=marks, group=group)


def test_a_pid_file_naming_another_program_is_not_ours_to_stop(tmp_path: Path,
                                                              spawned: list[subprocess.Popen[bytes]]) -> None:
    layout = Layout(tmp_path)
    layout.node_dir("node1").mkdir(parents=True)
    other = stranger(spawned)  # the pid the node once had, given since to this program
    layout.node_pid("node1").write_text(f"{other.pid}\n")
    assert stop_node(layout, "node1") == (None, [])
    time.sleep(0.2)
    assert other.poll() is None and process_group_members(other.pid) == {other.pid}
    assert not layout.node_pid("node1").exists()  # the stale pid file is forgotten


def test_a_pid_file_naming_our_process_is_found_and_its_group_stopped(tmp_path: Path) -> None:
    process = sleeper(tmp_path, 60, "strongroom-test-mark", group=True)
    assert process.pid() is None  # no pid file yet
    pid = process.spawn()
    # Between fork and exec the child still shows our command line: it is ours once it runs the sleeper.
    deadline = time.monotonic() + 10
    while process.pid() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert process.pid() == pid
    assert process.stop(10) == pid
    assert not alive(pid) and not process_group_members(pid)
    assert process.pid() is None and process.stop(10) is None


def test_waiting_for_a_process_that_exits_quotes_its_log(tmp_path: Path) -> None:
    process = sleeper(tmp_path, 0, "strongroom-test-mark")
    pid = process.spawn()
    with pytest.raises(LaunchError) as failure:
        process.wait(pid, lambda: False, goal="answer", timeout=30)
    assert "the sleeper exited before it could answer" in str(failure.value)
    assert "sleeping" in str(failure.value)  # the tail of its log
    assert isinstance(failure.value, LocalClusterError)  # the CLI prints it as a one-line error


def test_waiting_too_long_says_why_it_is_not_ready(tmp_path: Path) -> None:
    process = sleeper(tmp_path, 60, "strongroom-test-mark")
    pid = process.spawn()
    try:
        def not_yet() -> bool:
            raise NotReady("connection refused")

        with pytest.raises(LaunchError, match=r"did not answer within 0 s \(connection refused\)"):
            process.wait(pid, not_yet, goal="answer", timeout=0.3)
        assert process.wait(pid, lambda: "ready", goal="answer", timeout=5) == "ready"
    finally:
        process.stop(10)


def local_directory(tmp_path: Path) -> Path:
    """What the agent of a `strongroom up` directory needs: CA, client identity, client.json (no node runs)."""
    ca_key, ca_cert = pki.create_ca("test CA")
    key, cert = pki.issue_client_certificate(ca_key, ca_cert, "local-agent", role=pki.AGENT)
    for sub in ("ca", "client"):
        (tmp_path / sub).mkdir()
    pki.write_cert(tmp_path / "ca" / "ca.crt", ca_cert)
    pki.write_cert(tmp_path / "client" / "client.crt", cert)
    pki.write_private_key(tmp_path / "client" / "client.key", key)
    (tmp_path / "client.json").write_text(json.dumps({
        "cluster_name": "test", "ca": "ca/ca.crt", "cert": "client/client.crt", "key": "client/client.key",
        "nodes": [{"id": "node1", "zone": "a", "address": "127.0.0.1:1"}],
    }))
    return tmp_path.resolve()


def test_an_agent_that_runs_but_does_not_answer_is_replaced(tmp_path: Path,
                                                            spawned: list[subprocess.Popen[bytes]]) -> None:
    directory = local_directory(tmp_path)
    layout = Layout(directory)
    hung = stranger(spawned, "strongroom", "agent", "--config", str(layout.agent_config))  # never opens the socket
    layout.agent_pid.write_text(f"{hung.pid}\n")
    assert agent_status(directory) == {"pid": hung.pid, "socket": str(layout.agent_socket), "health": "unresponsive"}
    try:
        pid = start_agent(directory)
        assert pid != hung.pid
        assert not alive(hung.pid)  # stopped, not left running beside the new one
        assert agent_status(directory) == {"pid": pid, "socket": str(layout.agent_socket), "health": "running"}
        assert start_agent(directory) == pid  # running and answering: left alone
    finally:
        stopped = stop_agent(directory)
    assert stopped == pid and not layout.agent_socket.exists()
    assert agent_process(layout).pid() is None and not alive(pid)


def test_an_agent_that_cannot_start_says_why(tmp_path: Path) -> None:
    directory = local_directory(tmp_path)
    (directory / "client" / "client.key").write_text("not a key")
    with pytest.raises(LaunchError, match="the agent exited before it could open") as failure:
        start_agent(directory)
    assert "cannot load the client certificate" in str(failure.value)
    assert os.path.exists(Layout(directory).agent_log)


def test_a_process_gets_the_environment_it_is_given_on_top_of_ours(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STRONGROOM_TEST_INHERITED", "kept")
    script = "import os; print(os.environ.get('GOMAXPROCS'), os.environ.get('STRONGROOM_TEST_INHERITED'), flush=True)"
    process = Background("the printer", (sys.executable, "-c", script, "strongroom-test-mark"), tmp_path / "p.pid",
                         tmp_path / "p.log", marks=("strongroom-test-mark",), env=(("GOMAXPROCS", "1"),))
    pid = process.spawn()
    deadline = time.monotonic() + 30
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert (tmp_path / "p.log").read_text().split() == ["1", "kept"]


def test_local_etcd_members_share_the_host_s_cores_unless_the_operator_says_otherwise(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Every member of a local cluster runs on this host: each gets its share of the cores (at least one)."""
    from strongroom.local import etcd

    monkeypatch.delenv("GOMAXPROCS", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    assert etcd.member_env(3) == (("GOMAXPROCS", "1"),)
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    assert etcd.member_env(3) == (("GOMAXPROCS", "2"),)
    monkeypatch.setenv("GOMAXPROCS", "4")
    assert etcd.member_env(3) == ()
