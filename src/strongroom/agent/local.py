"""The agent of a ``strongroom up`` directory: start it in the background, stop it, check it.

For :mod:`strongroom.local.cluster` (``up`` / ``down`` / ``status``)::

    DIR/agent.toml   configuration (rewritten on every start from DIR/client.json)
    DIR/agent.sock   the socket (STRONGROOM_AGENT_SOCKET)
    DIR/agent.pid    the agent's pid
    DIR/agent.log    its log (stderr)
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from strongroom.agent.config import AGENT_SOCKET_FILE, write_for_local_cluster
from strongroom.local.processes import terminate

PID_FILE = "agent.pid"
LOG_FILE = "agent.log"
START_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0


class AgentStartError(Exception):
    pass


def socket_path(directory: Path) -> Path:
    return Path(directory).resolve() / AGENT_SOCKET_FILE


def _agent_pid(directory: Path) -> int | None:
    """The pid in DIR/agent.pid if that process is alive and is a strongroom agent."""
    try:
        pid = int((Path(directory) / PID_FILE).read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1][:1]
    except (FileNotFoundError, IndexError, OSError):
        return None
    if state == "Z" or b"agent" not in cmdline or b"strongroom" not in b" ".join(cmdline):
        return None  # gone, or the pid was reused by something else
    return pid


def _answers(path: Path, timeout: float = 2.0) -> bool:
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            probe.settimeout(timeout)
            probe.connect(str(path))
        return True
    except OSError:
        return False


def _log_tail(directory: Path, lines: int = 15) -> str:
    try:
        text = (Path(directory) / LOG_FILE).read_text(errors="replace")
    except FileNotFoundError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def start_agent(directory: Path) -> int:
    """Start the agent of DIR unless it runs; wait until its socket answers; return its pid."""
    directory = Path(directory).resolve()
    config = write_for_local_cluster(directory)
    pid = _agent_pid(directory)
    if pid is not None and _answers(socket_path(directory)):
        return pid
    with open(directory / LOG_FILE, "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "strongroom", "agent", "--config", str(config)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True, close_fds=True,
        )
    (directory / PID_FILE).write_text(f"{process.pid}\n")
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AgentStartError(f"the agent exited during start-up; its log ends with:\n{_log_tail(directory)}")
        if _answers(socket_path(directory)):
            return process.pid
        time.sleep(0.05)
    raise AgentStartError(f"the agent did not open {socket_path(directory)} within {START_TIMEOUT:.0f} s")


def stop_agent(directory: Path) -> int | None:
    """SIGTERM the agent of DIR (it logs out of the nodes and removes its socket); SIGKILL if it hangs."""
    directory = Path(directory).resolve()
    pid = _agent_pid(directory)
    (directory / PID_FILE).unlink(missing_ok=True)
    if pid is None:
        return None
    terminate(pid, STOP_TIMEOUT)
    socket_path(directory).unlink(missing_ok=True)
    return pid


def agent_status(directory: Path) -> dict[str, Any]:
    """``{"pid", "socket", "health"}``: health is running, stopped or unresponsive."""
    directory = Path(directory).resolve()
    pid = _agent_pid(directory)
    path = socket_path(directory)
    if pid is None:
        health = "stopped"
    else:
        health = "running" if _answers(path) else "unresponsive"
    return {"pid": pid, "socket": str(path), "health": health}
