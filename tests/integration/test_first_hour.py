"""The first hour with Strongroom, as a new user meets it: commands that say what to pass, one JSON
envelope, `up` that refuses what it would ignore and keeps hand edits, status exit codes, the
cluster's own name as the token label, completion, `ca create`, a confirmation before the newest
backup goes, and a test runner that leaves no node behind when it is killed."""

from __future__ import annotations

import grp
import json
import os
import re
import signal
import stat
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from strongroom import pki
from strongroom.local.agent import stop_agent
from strongroom.local.processes import alive
from tests.integration.conftest import STRONGROOM, LocalCluster, Pkcs11Module

ROOT = Path(__file__).resolve().parents[2]
GROUP = "nogroup"  # Debian's group for nobody: present everywhere, used by nothing of ours


def bare(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STRONGROOM_")}
    return subprocess.run([*STRONGROOM, *args], capture_output=True, text=True, env=env, timeout=120)


@pytest.mark.parametrize("command", ["up", "down", "status"])
def test_commands_without_a_directory_say_what_to_pass(command: str) -> None:
    result = bare(command)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert "--dir DIR" in result.stderr and "STRONGROOM_DIR" in result.stderr
    envelope = json.loads(bare(command, "--json").stdout)
    assert envelope["error_code"] != 0 and "--dir DIR" in envelope["error"]


def test_a_usage_error_with_json_is_an_envelope_too() -> None:
    result = bare("user", "create", "--json", "--no-such-option")
    assert result.returncode == 2 and result.stderr == ""
    envelope = json.loads(result.stdout)
    assert envelope["error_code"] != 0 and envelope["error_name"] == "USAGE"
    assert "--username" in envelope["error"] or "--no-such-option" in envelope["error"]


def test_bash_completion_completes_commands_and_options() -> None:
    script = bare("completion", "bash")
    assert script.returncode == 0

    def complete(*words: str) -> list[str]:
        line = " ".join(f"'{w}'" for w in words)
        probe = (f"{script.stdout}\nCOMP_WORDS=(strongroom {line}); COMP_CWORD={len(words)}; _strongroom; "
                 'printf "%s\\n" "${COMPREPLY[@]}"')
        return subprocess.run(["bash", "-c", probe], capture_output=True, text=True, timeout=30).stdout.split()

    assert complete("status-p") == ["status-page"]
    assert complete("--dir", "/tmp/x", "cert", "") == ["--help", "rotate"]
    assert "--socket-group" in complete("up", "--so")
    assert complete("backup", "delete", "--y") == ["--yes"]


def test_help_shows_examples() -> None:
    assert "the first hour:" in bare("--help").stdout
    for command in (["up"], ["status"], ["cert", "rotate"], ["status-page"], ["ca", "create"]):
        assert "example" in bare(*command, "--help").stdout, command


def test_ca_create_makes_a_ca_and_never_overwrites(tmp_path: Path) -> None:
    cert, key = tmp_path / "ca.crt", tmp_path / "ca.key"
    result = bare("ca", "create", "--out-cert", str(cert), "--out-key", str(key), "--name", "Example HSM CA",
                  "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    assert pki.is_ca(pki.load_certificate(cert))
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    node_key, node_cert = pki.issue_node_certificate(pki.load_private_key(key), pki.load_certificate(cert), "n1",
                                                     hosts=["127.0.0.1"])
    assert pki.verify_issued_by(node_cert, pki.load_certificate(cert))
    again = bare("ca", "create", "--out-cert", str(cert), "--out-key", str(tmp_path / "other.key"), "--json")
    assert again.returncode == 1 and "never overwritten" in json.loads(again.stdout)["error"]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    local = LocalCluster(tmp_path_factory.mktemp("first-hour") / "cluster", workers=1)
    local.up()
    try:
        yield local
    finally:
        local.down()


def test_up_nodes_on_an_existing_directory_is_refused_not_ignored(cluster: LocalCluster) -> None:
    rc, out = cluster.cli("up", "--nodes", "3")
    assert rc == 1 and "already holds a cluster of 1 node" in out["error"] and "--nodes 3" in out["error"], out
    rc, out = cluster.cli("up", "--nodes", "1")  # what it has: fine
    assert rc == 0 and len(out["data"]["nodes"]) == 1, out


def test_status_exits_non_zero_only_with_a_non_zero_error_code(cluster: LocalCluster) -> None:
    rc, out = cluster.cli("status")
    assert (rc, out["error_code"]) == (0, 0) and out["data"]["healthy"] is True, out
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", out["data"]["certificates"][0]["not_after"])
    stop_agent(cluster.dir)
    try:
        rc, out = cluster.cli("status")
        assert rc == 1 and out["error_code"] != 0 and out["error_name"] == "CLUSTER_UNHEALTHY", out
        assert "agent" in out["error"] and out["data"]["agent"]["health"] == "stopped"
        text = cluster.run("status")
        assert text.returncode == 1 and "NOT healthy" in text.stdout and "None" not in text.stdout
    finally:
        cluster.up()
    rc, out = cluster.cli("cluster", "status")
    assert rc == 0 and re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", out["data"]["created"]), out


def test_up_keeps_hand_edits_of_agent_toml_and_takes_a_socket_group(cluster: LocalCluster) -> None:
    config = cluster.dir / "agent.toml"
    text = config.read_text()
    assert 'log_level = "info"' in text and "request = 120.0" in text
    config.write_text(text.replace('log_level = "info"', 'log_level = "debug"').replace("request = 120.0",
                                                                                        "request = 60.0"))
    before = cluster.summary["agent_pid"]
    cluster.up_args = ("--socket-group", GROUP)
    try:
        cluster.up()
    finally:
        cluster.up_args = ()
    document = tomllib.loads(config.read_text())
    assert document["agent"]["log_level"] == "debug" and document["timeouts"]["request"] == 60.0
    assert document["agent"]["socket_group"] == GROUP
    restarted = cluster.summary["agent_pid"]
    assert restarted != before and not alive(before)  # the agent runs with what the file says now
    socket_stat = os.stat(cluster.summary["agent_socket"])
    assert socket_stat.st_gid == grp.getgrnam(GROUP).gr_gid and stat.S_IMODE(socket_stat.st_mode) == 0o660
    cluster.up()  # nothing changed: the same agent keeps serving
    assert cluster.summary["agent_pid"] == restarted
    rc, out = cluster.cli("up", "--socket-group", "no-such-group-here")
    assert rc == 1 and "no such group" in out["error"], out


def test_deleting_the_newest_backup_needs_a_confirmation(cluster: LocalCluster) -> None:
    deadline = time.monotonic() + 60
    while True:
        rc, out = cluster.cli("backup", "list")
        if out["data"]["backups"] or time.monotonic() > deadline:
            break
        time.sleep(1)
    newest = out["data"]["backups"][0]["backup_id"]
    rc, out = cluster.cli("backup", "delete", "--backup-id", newest)
    assert rc == 1 and "newest backup" in out["error"] and "--yes" in out["error"], out
    rc, out = cluster.cli("backup", "list")
    assert out["data"]["backups"][0]["backup_id"] == newest
    rc, out = cluster.cli("backup", "delete", "--backup-id", newest, "--yes")
    assert rc == 0 and out["data"]["backup_id"] == newest, out


def test_the_name_given_at_cluster_init_is_the_token_label_and_status_name(tmp_path: Path,
                                                                         pkcs11_module: Pkcs11Module) -> None:
    local = LocalCluster(tmp_path / "named", workers=1, up_args=("--no-initialize",))
    local.up()
    try:
        rc, out = local.cli("cluster", "init", "--name", "prod", "--out", str(tmp_path / "cluster.csr"))
        assert rc == 0, out
        assert json.loads((local.dir / "client.json").read_text())["cluster_name"] == "prod"
        assert tomllib.loads((local.dir / "agent.toml").read_text())["agent"]["cluster_name"] == "prod"
        rc, out = local.cli("status")
        assert out["data"]["cluster_name"] == "prod", out
        probe = ("import os, pkcs11\nlib = pkcs11.lib(os.environ['MODULE'])\n"
                 "print(lib.get_token(token_label='prod').label)\n")
        env = {**os.environ, "MODULE": str(pkcs11_module.path),
               "STRONGROOM_AGENT_SOCKET": str(local.dir / "agent.sock")}
        result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=60)
        assert result.returncode == 0 and result.stdout.strip() == "prod", result.stdout + result.stderr
    finally:
        local.down()


GUARDED = """
import subprocess, sys, time
subprocess.run([sys.executable, "-m", "strongroom", "up", "--dir", sys.argv[1], "--workers", "1"], check=True,
               stdout=subprocess.DEVNULL)
print("up", flush=True)
time.sleep(600)
"""


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL])
def test_killing_the_test_runner_leaves_no_node_behind(tmp_path: Path, how: signal.Signals) -> None:
    directory = tmp_path / "guarded"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STRONGROOM_", "SRTEST_"))}
    guard = subprocess.Popen([sys.executable, str(ROOT / "scripts" / "run-tests-guard"), sys.executable, "-c",
                              GUARDED, str(directory)], stdout=subprocess.PIPE, text=True, env=env)
    assert guard.stdout is not None and guard.stdout.readline().strip() == "up"
    pids = [int((directory / "nodes" / "node1" / "node.pid").read_text()), int((directory / "agent.pid").read_text())]
    assert all(alive(pid) for pid in pids)
    guard.send_signal(how)
    guard.wait(60)
    deadline = time.monotonic() + 30  # SIGKILL: the guard's watchdog notices within a second, then 10 s of grace
    while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(alive(pid) for pid in pids), f"still running after {how.name} of the runner: {pids}"
