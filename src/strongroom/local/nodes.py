"""The node processes of a local cluster: start one and wait until it answers (or holds the cluster
key), stop one with every worker it forked.

A node runs ``strongroom node serve --config DIR/nodes/<id>/node.toml`` in its own process group
(its supervisor forks the workers), logging to ``node.log`` beside its ``node.pid``.
"""

from __future__ import annotations

import sys
from typing import Any

from strongroom.client import Client, ClientError, ClientProfile, NodeAddress
from strongroom.local.layout import Layout, LocalClusterError
from strongroom.local.processes import (
    Background,
    LaunchError,
    NotReady,
    alive,
    processes_running,
    stop_processes,
)

START_TIMEOUT = 60.0
STOP_TIMEOUT = 15.0


def node_process(layout: Layout, node_id: str) -> Background:
    config = str(layout.node_config(node_id).resolve())  # as spawned, so that the marks match later
    return Background(
        f"node {node_id}", (sys.executable, "-m", "strongroom", "node", "serve", "--config", config),
        layout.node_pid(node_id), layout.node_log(node_id), marks=("node", "serve", "--config", config), group=True,
    )


def running_pid(layout: Layout, node_id: str) -> int | None:
    """The pid of the node's supervisor, if it runs."""
    return node_process(layout, node_id).pid()


def start_node(layout: Layout, node_id: str) -> int:
    """Start the node unless it runs; its supervisor's pid (it may not answer yet: :func:`wait_ready`)."""
    process = node_process(layout, node_id)
    pid = process.pid()
    return pid if pid is not None else process.spawn()


def _status(profile: ClientProfile, node: NodeAddress) -> dict[str, Any]:
    try:
        with Client(profile, node, timeout=10) as client:
            return client.node_status()
    except ClientError as exc:
        raise NotReady(exc.message) from None


def wait_ready(layout: Layout, node: NodeAddress, pid: int, timeout: float = START_TIMEOUT) -> dict[str, Any]:
    """Wait until the node answers ``node.status``; that status."""
    profile = ClientProfile.load(layout.profile)
    return node_process(layout, node.node_id).wait(pid, lambda: _status(profile, node), goal="answer",
                                                   timeout=timeout, interval=0.1)


def start_and_check(layout: Layout, node: NodeAddress) -> dict[str, Any]:
    """Start the node unless it runs, wait until it answers; ``{id, zone, address, pid, state, seal}``."""
    process = node_process(layout, node.node_id)
    running = process.pid()
    pid = running if running is not None else process.spawn()
    try:
        status = wait_ready(layout, node, pid)
    except LaunchError:
        if running is None or alive(running):
            raise
        # The node that ran when we looked was on its way out (a zeroize stops the node right after
        # its answer; a `down` from elsewhere): start it anew rather than report its exit, once the
        # workers it leaves (which hold its port until they notice) are gone too.
        leftovers = processes_running(process.marks)
        if leftovers:
            stop_processes(leftovers, STOP_TIMEOUT)
        pid = process.spawn()
        status = wait_ready(layout, node, pid)
    if status["state"] == "error":
        raise LocalClusterError(f"node {node.node_id} is in the error state: {status['error']}")
    return {"id": node.node_id, "zone": node.zone, "address": node.address, "pid": pid, "state": status["state"],
            "seal": status.get("seal")}


def wait_for_key(layout: Layout, node: NodeAddress, pid: int, timeout: float = START_TIMEOUT) -> dict[str, Any]:
    """Wait until a node that joins (or unseals) holds the cluster key; its last status."""
    profile = ClientProfile.load(layout.profile)

    def holds_key() -> dict[str, Any]:
        try:
            status = _status(profile, node)
        except NotReady:
            raise NotReady("no answer") from None
        if status.get("state") in (None, "sealed", "uninitialized"):
            raise NotReady((status.get("seal") or {}).get("detail") or status.get("error") or "no answer")
        return status

    return node_process(layout, node.node_id).wait(pid, holds_key, goal="receive the cluster key", timeout=timeout,
                                                   interval=0.2)


def stop_node(layout: Layout, node_id: str) -> tuple[int | None, list[int]]:
    """Stop the node: SIGTERM to its process group lets requests in flight finish; then whatever still
    runs its configuration (workers whose supervisor was killed, on a system without PR_SET_PDEATHSIG),
    found by command line, not by a pid file. ``(its pid or None, the leftovers stopped)``."""
    process = node_process(layout, node_id)
    pid = process.stop(STOP_TIMEOUT)
    leftovers = processes_running(process.marks)
    if leftovers:
        stop_processes(leftovers, STOP_TIMEOUT)
    return pid, sorted(leftovers)
