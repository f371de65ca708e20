"""The etcd members of a local multi-node cluster (``strongroom up --nodes N``).

One member per zone, on loopback, beside its node — the layout a real deployment
has with one host per zone. Members keep their data in DIR/etcd/<name>/ so that
``up`` after ``down`` resumes the same cluster.

``hsm add`` with a new zone adds a member (:func:`add_member`: etcd's member API first,
then the member starts as one joining an existing cluster) and ``hsm remove`` of the last
node of a zone removes it (:func:`remove_member`), as an operator does on real hosts with
``etcdctl member add / remove`` (docs/deploy.md).
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
from typing import Any

from strongroom.local.layout import HOST, free_port
from strongroom.local.processes import Background

START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
#: One member-API request (add, remove, list).
API_TIMEOUT = 10.0


class EtcdError(Exception):
    pass


@dataclass
class Member:
    name: str
    client_port: int
    peer_port: int
    #: Added to a running cluster (``hsm add``): it starts as a member of an existing cluster.
    joined: bool = False

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


def member_name(zone: str) -> str:
    """One member per zone, named after it (``up`` names zones a, b, c ...)."""
    return f"etcd-{zone}"


def plan(directory: Path, count: int) -> list[Member]:
    """Choose names and ports once; they are kept in DIR/etcd/members.json."""
    members = [Member(member_name("abcdefgh"[i]), free_port(), free_port()) for i in range(count)]
    _save(directory, members)
    return members


def _save(directory: Path, members: list[Member]) -> None:
    root = directory / "etcd"
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = root / "members.json.tmp"
    tmp.write_text(json.dumps([asdict(m) for m in members], indent=2))
    os.replace(tmp, root / "members.json")


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
    state = "existing" if member.joined or (data_dir / "member").exists() else "new"
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
                      directory / "etcd" / f"{member.name}.log", marks=("--data-dir", str(data_dir)),
                      env=member_env(len(members)))


def member_env(members: int) -> tuple[tuple[str, str], ...]:
    """The Go runtime's share of this host for each of the ``members`` members that run on it.

    Every member of a local cluster runs on this one host. With Go's default (a thread per core
    for each member) the members' idle threads spin for work on the cores the others use: on 2
    cores with 3 members, each txn cost the members 1.9 ms of CPU with the default and 1.55 ms
    with one core each (issue 15, measured at 250 txn/s). An operator's own GOMAXPROCS wins.
    """
    if "GOMAXPROCS" in os.environ:
        return ()
    return (("GOMAXPROCS", str(max(1, (os.cpu_count() or 1) // max(1, members)))),)


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


# --- membership (etcd's member API through its JSON gateway) -------------------------------------


def _api(members: list[Member], path: str, body: dict[str, Any]) -> dict[str, Any]:
    """POST to the first member that answers; etcd's own refusal is an EtcdError at once."""
    failures = []
    for member in members:
        request = urllib.request.Request(member.client_url + path, data=json.dumps(body).encode(), method="POST",
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=API_TIMEOUT) as answer:
                result: dict[str, Any] = json.loads(answer.read())
                return result
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")[:300]
            raise EtcdError(f"etcd refused {path} at {member.client_url}: HTTP {exc.code} {detail}") from None
        except (OSError, ValueError) as exc:
            failures.append(f"{member.name}: {exc}")
    raise EtcdError(f"no etcd member answered {path}: {'; '.join(failures)}")


def member_list(directory: Path) -> list[dict[str, Any]]:
    """The cluster's members as etcd knows them: ``{"ID", "name", "peerURLs", "clientURLs"}``."""
    answer = _api(load(directory), "/v3/cluster/member/list", {})
    members: list[dict[str, Any]] = answer.get("members", [])
    return members


def add_member(directory: Path, zone: str) -> Member | None:
    """Add and start the etcd member of a new zone; None when the zone has one already.

    The order etcd asks for: the running cluster learns the new member's peer URL first
    (``member add``), then the member starts with ``--initial-cluster-state existing`` and
    catches up from the leader. The quorum grows at once, so the member is started right away.
    """
    members = load(directory)
    name = member_name(zone)
    if not members or any(m.name == name for m in members):
        return None
    binary = etcd_binary()
    member = Member(name, free_port(), free_port(), joined=True)
    _api(members, "/v3/cluster/member/add", {"peerURLs": [member.peer_url]})
    _save(directory, [*members, member])
    member_process(directory, member, binary).spawn()
    try:
        _wait_healthy(directory, [member])
    except EtcdError:
        remove_member(directory, zone)
        raise
    return member


def remove_member(directory: Path, zone: str) -> Member | None:
    """Remove the zone's member from the etcd cluster (member API), stop it and delete its data.

    None when the zone has no member of its own. The last member is never removed (that would
    be the whole store).
    """
    members = load(directory)
    member = next((m for m in members if m.name == member_name(zone)), None)
    if member is None:
        return None
    others = [m for m in members if m is not member]
    if not others:
        raise EtcdError(f"{member.name} is the last etcd member; it holds the whole store and is not removed")
    known = next((m for m in member_list(directory) if member.peer_url in m.get("peerURLs", [])), None)
    if known is not None:
        # The gateway sends 64-bit ids as strings and takes them back as such. etcd refuses to remove a
        # member while fewer than a quorum of the others have been connected for 5 s ("unhealthy
        # cluster": its strict reconfiguration check), e.g. right after a member joined: wait that out.
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                _api(others, "/v3/cluster/member/remove", {"ID": known["ID"]})
                break
            except EtcdError as exc:
                if "unhealthy cluster" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
    member_process(directory, member).stop(STOP_TIMEOUT)
    _save(directory, others)
    shutil.rmtree(directory / "etcd" / member.name, ignore_errors=True)
    return member


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
