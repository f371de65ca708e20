"""The agent of a ``strongroom up`` directory: its configuration, start it in the background, stop it,
check it (``up`` / ``down`` / ``status``)::

    DIR/agent.toml     configuration: written by the first ``up``; later ones keep hand edits and
                       change only what they own (the nodes of DIR/client.json, the token label,
                       ``--socket-group``)
    DIR/agent.sock     the socket (STRONGROOM_AGENT_SOCKET)
    DIR/agent.pid      the agent's pid
    DIR/agent.started  a digest of the settings the running agent read (a change but to the nodes
                       restarts it on the next ``up``)
    DIR/agent.log      its log (stderr)
"""

from __future__ import annotations

import grp
import hashlib
import json
import socket
import sys
import tomllib
from pathlib import Path
from typing import Any

import tomli_w

from strongroom.agent.config import AgentConfig, ConfigError
from strongroom.client import ClientProfile, ProfileError
from strongroom.local.layout import HOST, Layout, LocalClusterError, free_port
from strongroom.local.processes import Background
from strongroom.metrics.settings import MetricsSettings

START_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0


def _started_file(layout: Layout) -> Path:
    return layout.root / "agent.started"


def _digest(path: Path) -> str:
    """What a restart depends on: every setting but the node list (a running agent follows the cluster's
    nodes by itself, from cluster.status)."""
    try:
        document = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError):
        return ""
    document.pop("nodes", None)
    return hashlib.sha256(json.dumps(document, sort_keys=True, default=str).encode()).hexdigest()


def _owned(profile: ClientProfile, document: dict[str, Any], socket_group: str | None) -> dict[str, Any]:
    """``document`` with what ``up`` owns brought up to date, everything else as the file has it."""
    updated = dict(document)
    agent = dict(updated.get("agent", {}))
    agent["cluster_name"] = profile.cluster_name
    if socket_group is not None:
        agent["socket_group"] = socket_group
    updated["agent"] = agent
    updated["nodes"] = [{"id": n.node_id, "zone": n.zone, "address": n.address} for n in profile.nodes]
    return updated


def write_config(directory: Path, *, socket_group: str | None = None) -> Path:
    """Write DIR/agent.toml (or bring it up to date); returns its path.

    A new file: the socket DIR/agent.sock, the client identity DIR/client/client.{crt,key}, the CA
    DIR/ca/ca.crt, the nodes of DIR/client.json and a /metrics listener on a free loopback port.
    An existing file keeps every setting as it is (hand edits included; comments too unless
    something changes), but for the node list and the token label, which follow DIR/client.json,
    and ``socket_group`` when given.
    """
    layout = Layout(Path(directory).resolve())
    if socket_group is not None:
        try:
            grp.getgrnam(socket_group)
        except KeyError:
            raise LocalClusterError(f"--socket-group {socket_group}: no such group on this host") from None
    try:
        profile = ClientProfile.load(layout.profile)
        if not layout.agent_config.exists():
            config = AgentConfig.for_profile(profile, layout.agent_socket)
            config.socket_group = socket_group
            config.metrics = MetricsSettings(f"{HOST}:{free_port()}")
            config.write(layout.agent_config)
            return layout.agent_config
        text = layout.agent_config.read_text()
        document = tomllib.loads(text)
    except (ProfileError, ConfigError) as exc:
        raise LocalClusterError(str(exc)) from None
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise LocalClusterError(f"{layout.agent_config}: {exc}; fix or remove it (up writes a new one)") from None
    updated = _owned(profile, document, socket_group)
    if updated == document:
        return layout.agent_config
    tmp = layout.agent_config.with_name("agent.toml.new")
    tmp.write_text(tomli_w.dumps(updated))
    try:
        AgentConfig.load(tmp)
    except ConfigError as exc:
        tmp.unlink(missing_ok=True)
        raise LocalClusterError(f"{layout.agent_config}: {exc}") from None
    tmp.chmod(0o600)
    tmp.replace(layout.agent_config)
    return layout.agent_config


def agent_process(layout: Layout) -> Background:
    return Background(
        "the agent", (sys.executable, "-m", "strongroom", "agent", "--config", str(layout.agent_config)),
        layout.agent_pid, layout.agent_log,
        # Not the configuration's path: a test may run the directory's agent from another file.
        marks=("strongroom", "agent", "--config"),
    )


def _answers(path: Path, timeout: float = 2.0) -> bool:
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            probe.settimeout(timeout)
            probe.connect(str(path))
        return True
    except OSError:
        return False


def start_agent(directory: Path, *, socket_group: str | None = None) -> int:
    """Start the agent of DIR unless it runs with the settings agent.toml has now (a change, by ``up`` or by
    hand, restarts it; the node list alone does not); wait until its socket answers; return its pid."""
    layout = Layout(Path(directory).resolve())
    write_config(layout.root, socket_group=socket_group)
    process = agent_process(layout)
    pid = process.pid()
    digest = _digest(layout.agent_config)
    started = _started_file(layout)
    current = started.read_text().strip() if started.exists() else digest  # one started before this file existed
    if pid is not None and current == digest and _answers(layout.agent_socket):
        return pid
    stop_agent(layout.root)  # one that runs but does not answer, or with another configuration, is replaced
    pid = process.spawn()
    started.write_text(f"{digest}\n")
    process.wait(pid, lambda: _answers(layout.agent_socket), goal=f"open {layout.agent_socket}",
                 timeout=START_TIMEOUT)
    return pid


def stop_agent(directory: Path) -> int | None:
    """SIGTERM the agent of DIR (it logs out of the nodes and removes its socket); SIGKILL if it hangs."""
    layout = Layout(Path(directory).resolve())
    pid = agent_process(layout).stop(STOP_TIMEOUT)
    if pid is not None:
        layout.agent_socket.unlink(missing_ok=True)
    return pid


def agent_status(directory: Path) -> dict[str, Any]:
    """``{"pid", "socket", "health"}``: health is running, stopped or unresponsive."""
    layout = Layout(Path(directory).resolve())
    pid = agent_process(layout).pid()
    if pid is None:
        health = "stopped"
    else:
        health = "running" if _answers(layout.agent_socket) else "unresponsive"
    return {"pid": pid, "socket": str(layout.agent_socket), "health": health}
