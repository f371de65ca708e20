"""The etcd members of a local multi-node cluster (``strongroom up --nodes N``).

One member per zone, on loopback, beside its node — the layout a real deployment
has with one host per zone. Members keep their data in DIR/etcd/<name>/ so that
``up`` after ``down`` resumes the same cluster.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

from strongroom.local.layout import HOST, free_port
from strongroom.local.processes import Background

START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0


class EtcdError(Exception):
    pass


@dataclass
class Member:
    name: str
    client_port: int
    peer_port: int

    @property
    def client_url(self) -> str:
        return f"http://{HOST}:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://{HOST}:{self.peer_port}"


def etcd_binary() -> str:
    found = os.environ.get("STRONGROOM_ETCD") or shutil.which("etcd")
    if not found:
        raise EtcdError("etcd is not installed: apt-get install etcd-server (needed for --nodes above 1)")
    return found


def plan(directory: Path, count: int) -> list[Member]:
    """Choose names and ports once; they are kept in DIR/etcd/members.json."""
    members = [Member(f"etcd-{'abcdefgh'[i]}", free_port(), free_port()) for i in range(count)]
    root = directory / "etcd"
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    (root / "members.json").write_text(json.dumps([asdict(m) for m in members], indent=2))
    return members


def load(directory: Path) -> list[Member]:
    path = directory / "etcd" / "members.json"
    if not path.exists():
        return []
    return [Member(**m) for m in json.loads(path.read_text())]


def endpoints(directory: Path) -> list[str]:
    return [m.client_url for m in load(directory)]


def member_process(directory: Path, member: Member, binary: str = "etcd") -> Background:
    """The etcd member's process (``binary``: only needed to start it)."""
    data_dir = (directory / "etcd" / member.name).resolve()  # as spawned, so that the marks match later
    members = load(directory)
    initial = ",".join(f"{m.name}={m.peer_url}" for m in members)
    state = "existing" if (data_dir / "member").exists() else "new"
    argv = (binary, "--name", member.name, "--data-dir", str(data_dir),
            "--listen-client-urls", member.client_url, "--advertise-client-urls", member.client_url,
            "--listen-peer-urls", member.peer_url, "--initial-advertise-peer-urls", member.peer_url,
            "--initial-cluster", initial, "--initial-cluster-state", state,
            "--initial-cluster-token", f"strongroom-{directory.name}",
            "--heartbeat-interval", "100", "--election-timeout", "1000",
            # A member coming back after a partition must not depose a healthy leader.
            "--pre-vote",
            "--logger", "zap", "--log-level", "error", "--log-outputs", "stderr")
    return Background(f"etcd member {member.name}", argv, directory / "etcd" / f"{member.name}.pid",
                      directory / "etcd" / f"{member.name}.log", marks=("--data-dir", str(data_dir)))


def start(directory: Path) -> list[int]:
    """Start every member not running yet; wait until the cluster has a leader."""
    members = load(directory)
    binary = etcd_binary()
    pids = []
    for member in members:
        process = member_process(directory, member, binary)
        pid = process.pid()
        pids.append(pid if pid is not None else process.spawn())
    _wait_healthy(directory, members)
    return pids


def _wait_healthy(directory: Path, members: list[Member]) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    last = ""
    while time.monotonic() < deadline:
        for member in members:
            try:
                with urllib.request.urlopen(f"{member.client_url}/health", timeout=1) as answer:
                    if json.loads(answer.read()).get("health") == "true":
                        return
            except (OSError, urllib.error.URLError, ValueError) as exc:
                last = str(exc)
        time.sleep(0.1)
    logs = directory / "etcd"
    raise EtcdError(f"etcd did not become healthy within {START_TIMEOUT:.0f} s ({last}); see {logs}/*.log")


def stop(directory: Path) -> list[dict[str, object]]:
    stopped: list[dict[str, object]] = []
    for member in load(directory):
        pid = member_process(directory, member).stop(STOP_TIMEOUT)
        if pid is not None:
            stopped.append({"id": member.name, "pid": pid})
    return stopped


def status(directory: Path) -> list[dict[str, object]]:
    result: list[dict[str, object]] = []
    for member in load(directory):
        pid = member_process(directory, member).pid()
        health = "stopped"
        if pid is not None:
            try:
                with urllib.request.urlopen(f"{member.client_url}/health", timeout=1) as answer:
                    health = "healthy" if json.loads(answer.read()).get("health") == "true" else "unhealthy"
            except (OSError, urllib.error.URLError, ValueError):
                health = "unreachable"
        result.append({"id": member.name, "pid": pid, "endpoint": member.client_url, "health": health})
    return result
