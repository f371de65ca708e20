"""Picking a TCP port for a local process to listen on (``strongroom up``, the local KMS gateway and Vault KV
service, the tests)."""

from __future__ import annotations

import random
import socket
from pathlib import Path

_EPHEMERAL = Path("/proc/sys/net/ipv4/ip_local_port_range")
#: How far below the kernel's ephemeral range ports are picked.
_SPAN = 8000
#: Ports this process handed out: two picks made before either is bound must differ.
_handed_out: set[int] = set()


def _ephemeral_low() -> int:
    try:
        return int(_EPHEMERAL.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now, from just below the kernel's ephemeral range.

    The port is picked here and bound later by another process. A port of the ephemeral range can be
    taken meanwhile by the local end of any outgoing connection (an etcd member of ``up --nodes 3`` died
    at start of "bind: address already in use" so); below that range only another listener can take it.
    """
    low = _ephemeral_low()
    first = max(1024, low - _SPAN)
    if low - 1 > first:
        for _ in range(64):
            port = random.randint(first, low - 1)
            if port in _handed_out:
                continue
            with socket.socket() as probe:
                try:
                    probe.bind((host, port))
                except OSError:
                    continue
            _handed_out.add(port)
            return port
    with socket.socket() as probe:  # nothing free below the range: let the kernel choose
        probe.bind((host, 0))
        port = int(probe.getsockname()[1])
    _handed_out.add(port)
    return port
