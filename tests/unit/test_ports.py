"""Ports for local processes come from below the kernel's ephemeral range (an outgoing connection's local end
cannot take them between the pick and the bind) and never twice from one process."""

from __future__ import annotations

import socket

import pytest

from strongroom import ports


def test_ports_are_below_the_ephemeral_range_distinct_and_free() -> None:
    low = ports._ephemeral_low()
    picked = [ports.free_port() for _ in range(200)]
    assert len(set(picked)) == len(picked)
    assert all(1024 <= port < low for port in picked), (low, sorted(picked)[-3:])
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", picked[-1]))  # still free: nothing took it


def test_a_taken_port_is_not_picked(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        taken = holder.getsockname()[1]
        monkeypatch.setattr(ports, "_ephemeral_low", lambda: taken + 2)
        monkeypatch.setattr(ports, "_SPAN", 2)  # the only candidate below the range is the taken port
        port = ports.free_port()
    assert port != taken
