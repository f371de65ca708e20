"""The background processes of a local cluster (nodes, the agent, the KMS gateway, etcd members):
the one way they are launched, found again and stopped.

A :class:`Background` is one such process: the command it runs, its pid file and its log. ``up``
may run again at any time, so a launch first asks :meth:`Background.pid` whether the process runs
already. That answer trusts the pid file only as far as the process it names still runs the same
command: a pid the system has since given to another program is not ours to stop.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from strongroom.local.layout import LocalClusterError

T = TypeVar("T")

#: How much of a log an error message quotes.
LOG_TAIL_LINES = 15


class LaunchError(LocalClusterError):
    """A background process exited during start-up, or was not ready in time (the message quotes its log)."""


class NotReady(Exception):
    """Raised by a readiness check to say why it is not ready yet (quoted if the wait times out)."""


def _state_and_argv(pid: int) -> tuple[str, list[bytes]] | None:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1][:1]
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, IndexError):
        return None
    return state, argv


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie does not; one that is our child is reaped on the way)."""
    _reap(pid)
    found = _state_and_argv(pid)
    return found is not None and found[0] != "Z"


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def terminate(pid: int, timeout: float) -> None:
    """SIGTERM ``pid`` (it cleans up: logs out, removes its socket); SIGKILL it if it outlives ``timeout``."""
    stop_processes({pid}, timeout)


def stop_processes(pids: Iterable[int], timeout: float) -> None:
    """SIGTERM each, then SIGKILL what is still there after ``timeout``."""
    pids = set(pids)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(alive(pid) for pid in pids):
        time.sleep(0.05)
    for pid in pids:
        if alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            _reap(pid)


def process_group_members(pgid: int) -> set[int]:
    """Live (non-zombie) processes of a process group: a node's supervisor and workers."""
    members = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(") ", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.add(int(entry.name))
    return members


def stop_group(pid: int, timeout: float) -> None:
    """SIGTERM the process group ``pid`` leads (a node's supervisor and workers), then SIGKILL what is left."""
    try:
        pgid = os.getpgid(pid)
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not process_group_members(pgid):
            return
        _reap(pid)
        time.sleep(0.05)
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    _reap(pid)


def processes_running(marks: Iterable[str]) -> set[int]:
    """Live processes (but this one) whose command line holds every one of ``marks`` as an argument."""
    wanted = [mark.encode() for mark in marks]
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        seen = _state_and_argv(int(entry.name))
        if seen is not None and seen[0] != "Z" and all(part in seen[1] for part in wanted):
            found.add(int(entry.name))
    return found


@dataclass(frozen=True)
class Background:
    """One background process of a local cluster directory."""

    #: How messages name it: "the agent", "node node1".
    what: str
    argv: tuple[str, ...]
    pid_file: Path
    log_file: Path
    #: Arguments its command line always holds: how a pid file's process is recognized as this one.
    marks: tuple[str, ...]
    #: Stop its whole process group (a node: its supervisor and the workers it forked).
    group: bool = False
    #: Environment variables set for it on top of this process's own.
    env: tuple[tuple[str, str], ...] = ()

    def pid(self) -> int | None:
        """The pid in the pid file, if that process runs and is this one."""
        try:
            pid = int(self.pid_file.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        seen = _state_and_argv(pid)
        if seen is None or seen[0] == "Z" or not all(mark.encode() in seen[1] for mark in self.marks):
            return None  # gone, or the pid now belongs to something else
        return pid

    def spawn(self) -> int:
        """Start it (output appended to its log) and write its pid file; its pid."""
        with open(self.log_file, "ab") as log:
            process = subprocess.Popen(
                list(self.argv), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                # Its own session and process group: a terminal's ^C does not reach it, and stopping a
                # node's group reaches every worker it forked.
                start_new_session=True, close_fds=True,
                env={**os.environ, **dict(self.env)} if self.env else None,
            )
        self.pid_file.write_text(f"{process.pid}\n")
        return process.pid

    def wait(self, pid: int, ready: Callable[[], T], *, goal: str, timeout: float, interval: float = 0.05) -> T:
        """Call ``ready`` until it returns something true, and return that; :class:`LaunchError` if the
        process exits first or ``timeout`` seconds pass. ``ready`` may raise :class:`NotReady` to say why
        not yet. ``goal`` completes "did not ... within N s": "answer", "open /run/agent.sock"."""
        deadline = time.monotonic() + timeout
        reason = ""
        while True:
            if not alive(pid):
                raise LaunchError(f"{self.what} exited before it could {goal}; its log ends with:\n{self.log_tail()}")
            try:
                result = ready()
            except NotReady as exc:
                reason = str(exc)
            else:
                if result:
                    return result
            if time.monotonic() >= deadline:
                break
            time.sleep(interval)
        why = f" ({reason})" if reason else ""
        raise LaunchError(f"{self.what} did not {goal} within {timeout:.0f} s{why}; its log ends with:\n"
                          f"{self.log_tail()}")

    def stop(self, timeout: float) -> int | None:
        """SIGTERM it (its group), SIGKILL after ``timeout``; forget its pid file. Its pid, or None if it
        did not run."""
        pid = self.pid()
        self.pid_file.unlink(missing_ok=True)
        if pid is None:
            return None
        if self.group:
            stop_group(pid, timeout)
        else:
            terminate(pid, timeout)
        return pid

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        try:
            text = self.log_file.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])
