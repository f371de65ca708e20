"""Telling systemd that a service is ready (``Type=notify`` units, deploy/systemd/).

One datagram, ``READY=1``, to the socket in ``$NOTIFY_SOCKET`` (sd_notify(3)'s protocol; an
address starting with ``@`` is in the abstract namespace). Without the variable (not started by
systemd) it does nothing. ``systemctl start`` then returns once the node listens, the agent's
socket answers or the gateway serves, instead of as soon as the process exists.
"""

from __future__ import annotations

import os
import socket

__all__ = ["notify_ready"]


def notify_ready(status: str | None = None) -> bool:
    """Send ``READY=1`` (and ``STATUS=``) to systemd; whether a message went out."""
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return False
    address = "\0" + path[1:] if path.startswith("@") else path
    message = "READY=1" + (f"\nSTATUS={status}" if status else "")
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(message.encode())
    except OSError:
        return False  # systemd gone or not listening: serving matters more
    return True
