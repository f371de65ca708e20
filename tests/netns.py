"""Network namespaces joined by a bridge, for tests that put zones on separate "hosts".

:class:`Topology` (root only) creates, all with one random suffix:

* one namespace per zone (``sr-<rand>-a`` ...), each with ``lo`` up and one veth
  ``eth0`` holding ``10.77.<octet>.<n>/24``;
* a namespace ``sr-<rand>-br`` holding a Linux bridge that every zone's veth and a
  veth from the root namespace are plugged into;
* in the root namespace one veth end ``srh<rand>`` with ``10.77.<octet>.254/24``, so
  that test code (SDK clients) in the root namespace reaches every zone.

The third octet is chosen among those no route or address of the root namespace
uses. Nothing but the links and namespaces created here is touched.

:meth:`Topology.cut` brings a zone's port on the bridge down (the zone keeps its own
address and its processes; packets to and from it are lost, as with a pulled cable);
:meth:`Topology.restore` brings it up again. :meth:`Topology.spawn` starts a command
inside a zone's namespace in its own session; :meth:`Topology.close` kills every
process started so (the whole process group), then deletes the namespaces and the
root-side link. Deleting a namespace destroys the veths inside it.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["NetnsUnavailable", "Topology", "Zone", "netns_unavailable_reason"]

IP_TIMEOUT = 10.0


class NetnsUnavailable(Exception):
    """The machine cannot host the topology (not root, no ``ip``, no CAP_NET_ADMIN...)."""


def netns_unavailable_reason() -> str | None:
    """Why network namespaces cannot be used here, or ``None`` when they may be."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "network namespaces need root (CI runs this test as root)"
    if shutil.which("ip") is None:
        return "the `ip` command (iproute2) is not installed"
    return None


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=IP_TIMEOUT)
    if check and result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}")
    return result


def _die_with_parent() -> None:
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


@dataclass
class Zone:
    name: str  # "a", "b", ...
    netns: str
    address: str
    bridge_port: str  # the veth end on the bridge (inside the bridge namespace)


@dataclass
class Topology:
    zone_names: tuple[str, ...] = ("a", "b", "c")
    suffix: str = field(default_factory=lambda: secrets.token_hex(3))
    zones: dict[str, Zone] = field(default_factory=dict)
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    _namespaces: list[str] = field(default_factory=list)
    _root_link: str | None = None

    def __post_init__(self) -> None:
        self.bridge_netns = f"sr-{self.suffix}-br"
        self.root_link = f"srh{self.suffix}"
        self.octet = _free_octet()
        self.prefix = f"10.77.{self.octet}"
        self.root_address = f"{self.prefix}.254"

    # --- building ------------------------------------------------------------------

    def create(self) -> Topology:
        """Build everything; on any failure undo what was made and raise NetnsUnavailable."""
        try:
            self._add_netns(self.bridge_netns)
        except RuntimeError as exc:
            raise NetnsUnavailable(f"cannot create a network namespace here: {exc}") from None
        try:
            br = self.bridge_netns
            _ip("-n", br, "link", "set", "lo", "up")
            _ip("-n", br, "link", "add", "br0", "type", "bridge")
            _ip("-n", br, "link", "set", "br0", "up")
            # The root namespace's way in: srh<rand> (root) <-> p-root (on the bridge).
            _ip("link", "add", self.root_link, "type", "veth", "peer", "name", "p-root", "netns", br)
            self._root_link = self.root_link
            _ip("-n", br, "link", "set", "p-root", "master", "br0")
            _ip("-n", br, "link", "set", "p-root", "up")
            _ip("addr", "add", f"{self.root_address}/24", "dev", self.root_link)
            _ip("link", "set", self.root_link, "up")
            for index, zone_name in enumerate(self.zone_names, start=1):
                netns = f"sr-{self.suffix}-{zone_name}"
                self._add_netns(netns)
                port = f"p-{zone_name}"
                address = f"{self.prefix}.{index}"
                _ip("-n", br, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", netns)
                _ip("-n", br, "link", "set", port, "master", "br0")
                _ip("-n", br, "link", "set", port, "up")
                _ip("-n", netns, "link", "set", "lo", "up")
                _ip("-n", netns, "addr", "add", f"{address}/24", "dev", "eth0")
                _ip("-n", netns, "link", "set", "eth0", "up")
                self.zones[zone_name] = Zone(zone_name, netns, address, port)
        except BaseException:
            self.close()
            raise
        return self

    def _add_netns(self, name: str) -> None:
        _ip("netns", "add", name)
        self._namespaces.append(name)

    # --- faults ----------------------------------------------------------------------

    def cut(self, zone_name: str) -> None:
        """Unplug a zone: its port on the bridge goes down (carrier lost on its eth0 too)."""
        _ip("-n", self.bridge_netns, "link", "set", self.zones[zone_name].bridge_port, "down")

    def restore(self, zone_name: str) -> None:
        _ip("-n", self.bridge_netns, "link", "set", self.zones[zone_name].bridge_port, "up")

    # --- processes ---------------------------------------------------------------------

    def spawn(self, zone_name: str, args: list[str], log_path: Path,
              env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        """Start ``args`` inside the zone's namespace, in its own session, logging to ``log_path``."""
        with open(log_path, "ab") as log:
            process = subprocess.Popen(
                ["ip", "netns", "exec", self.zones[zone_name].netns, *args],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True, close_fds=True, env=env, preexec_fn=_die_with_parent,
            )
        self.processes.append(process)
        return process

    @staticmethod
    def stop(process: subprocess.Popen[bytes], sig: int = signal.SIGKILL, timeout: float = 10.0) -> None:
        """Signal the process's whole group (it leads its own session) and wait for the leader."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout)
        # Workers of the group that outlived their leader.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)

    # --- teardown ----------------------------------------------------------------------

    def close(self) -> list[str]:
        """Kill every process started here, delete every namespace and link; returns the problems met."""
        problems: list[str] = []
        for process in self.processes:
            try:
                self.stop(process)
            except Exception as exc:  # noqa: BLE001 - keep tearing down
                problems.append(f"process {process.pid}: {exc}")
        self.processes.clear()
        # Wait until no process is left in our namespaces (a namespace lives while a process is in it).
        deadline = time.monotonic() + 10
        while self._namespaces and time.monotonic() < deadline:
            left = [pid for ns in self._namespaces for pid in self._pids_in(ns)]
            if not left:
                break
            for pid in left:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.05)
        if self._root_link is not None:
            result = _ip("link", "del", self._root_link, check=False)
            if result.returncode != 0 and "Cannot find device" not in result.stderr:
                problems.append(f"link {self._root_link}: {result.stderr.strip()}")
            self._root_link = None
        for name in reversed(self._namespaces):
            result = _ip("netns", "del", name, check=False)
            if result.returncode != 0:
                problems.append(f"netns {name}: {result.stderr.strip()}")
        self._namespaces.clear()
        return problems

    @staticmethod
    def _pids_in(netns: str) -> list[int]:
        result = _ip("netns", "pids", netns, check=False)
        return [int(p) for p in result.stdout.split() if p.isdigit()] if result.returncode == 0 else []

    def leftovers(self) -> list[str]:
        """Namespaces and links with this topology's suffix that still exist (empty after close)."""
        found = [n for n in _ip("netns", "list", check=False).stdout.split() if self.suffix in n]
        links = _ip("-o", "link", "show", check=False).stdout
        found += [self.root_link] if re.search(rf"\b{re.escape(self.root_link)}\b", links) else []
        return found

    def __enter__(self) -> Topology:
        return self.create()

    def __exit__(self, *exc: object) -> None:
        self.close()


def _free_octet() -> int:
    """A third octet for 10.77.X.0/24 that no address or non-default route of the root namespace covers."""
    used = _ip("-4", "addr", "show", check=False).stdout
    for _ in range(50):
        octet = secrets.randbelow(240) + 10
        if f"10.77.{octet}." in used:
            continue
        routes = _ip("-4", "route", "show", "table", "all", "match", f"10.77.{octet}.0/24", check=False).stdout
        if all(line.startswith(("default", "unreachable default")) or not line.strip()
               for line in routes.splitlines()):
            return octet
    raise NetnsUnavailable("no free 10.77.X.0/24 test range on this machine")
