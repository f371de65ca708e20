"""The agent of a ``strongroom up`` directory: its configuration, start it in the background, stop it,
check it (``up`` / ``down`` / ``status``)::

    DIR/agent.toml   configuration (rewritten on every start from DIR/client.json)
    DIR/agent.sock   the socket (STRONGROOM_AGENT_SOCKET)
    DIR/agent.pid    the agent's pid
    DIR/agent.log    its log (stderr)
"""

from __future__ import annotations

import socket
import sys
from pathlib import Path
from typing import Any

from strongroom.agent.config import AgentConfig, ConfigError
from strongroom.client import ClientProfile, ProfileError
from strongroom.local.layout import Layout, LocalClusterError
from strongroom.local.processes import Background

START_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0


def write_config(directory: Path) -> Path:
    """Write DIR/agent.toml; returns its path.

    The socket is DIR/agent.sock, the client identity DIR/client/client.{crt,key}, the CA
    DIR/ca/ca.crt and the nodes those of DIR/client.json. Rewriting it is harmless (``up``
    does on every start, so that node addresses stay current).
    """
    layout = Layout(Path(directory).resolve())
    try:
        config = AgentConfig.for_profile(ClientProfile.load(layout.profile), layout.agent_socket)
    except (ProfileError, ConfigError) as exc:
        raise LocalClusterError(str(exc)) from None
    config.write(layout.agent_config)
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


def start_agent(directory: Path) -> int:
    """Start the agent of DIR unless it runs; wait until its socket answers; return its pid."""
    layout = Layout(Path(directory).resolve())
    write_config(layout.root)
    process = agent_process(layout)
    pid = process.pid()
    if pid is not None and _answers(layout.agent_socket):
        return pid
    stop_agent(layout.root)  # one that runs but does not answer is replaced, not left behind
    pid = process.spawn()
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
