"""What the command groups share: the cluster directory, the admin PIN, a connection to one node."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from strongroom.cli.output import CliError

if TYPE_CHECKING:
    from strongroom.client import ClientProfile, NodeAddress

T = TypeVar("T")

#: How long a node of client.json gets to answer (TLS handshake and node.status) before the next one is tried.
PROBE_SECONDS = 5.0


def directory(args: argparse.Namespace, *, up: bool = False) -> Path:
    """``--dir``, else ``STRONGROOM_DIR``; a CLI error saying what to pass otherwise."""
    path = getattr(args, "dir", None) or os.environ.get("STRONGROOM_DIR")
    if not path:
        if up:
            raise CliError("give the directory of the local cluster with --dir DIR (created on first use), e.g. "
                           "`strongroom up --dir /tmp/strongroom`; or set STRONGROOM_DIR")
        raise CliError("give the cluster directory with --dir DIR (the one `strongroom up --dir DIR` made), "
                       "or set STRONGROOM_DIR (`. DIR/strongroom.env` sets it)")
    return Path(path)


def admin_pin() -> tuple[str, str] | None:
    """``STRONGROOM_PIN=user:password`` (CloudHSM's CLOUDHSM_PIN), or None."""
    pin = os.environ.get("STRONGROOM_PIN")
    if not pin or ":" not in pin:
        return None
    username, _, password = pin.partition(":")
    return username, password


def reachable_node(profile: ClientProfile) -> NodeAddress:
    """The first node of the profile, in its order, that answers ``node.status`` within PROBE_SECONDS and can
    serve (neither sealed nor in error); else the first that answered at all. Operator tooling keeps working
    while a node or its whole host is down, and also past a node that accepts connections but never answers
    (a stopped process: the kernel still completes the TCP handshake) or one that is sealed."""
    from strongroom.client import Client, ClientError

    failures = []
    answered: NodeAddress | None = None
    for node in profile.nodes:
        try:
            with Client(profile, node, timeout=PROBE_SECONDS) as probe:
                state = probe.node_status().get("state")
        except (ClientError, OSError) as exc:
            failures.append(f"{node.node_id} at {node.address}: {getattr(exc, 'message', None) or exc}")
            continue
        if state not in ("sealed", "error"):
            return node
        answered = answered or node
    if answered is not None:
        return answered
    raise CliError("no node of the cluster answers (" + "; ".join(failures) + ")")


def node_client(args: argparse.Namespace, *, operator: bool = True) -> Any:
    """A connection to one node (``--node``, else the first that answers), no login: with the directory's operator
    certificate (operator acts: backups, zeroize), or with ``operator=False`` its application-host
    certificate (the customer's set-up steps and admin acts that log in)."""
    from strongroom.client import Client, ClientProfile, ProfileError

    root = directory(args)
    try:
        profile = ClientProfile.load(root / "client.json")
        if operator:
            profile = profile.as_operator()
    except ProfileError as exc:
        raise CliError(str(exc)) from None
    node = None
    if getattr(args, "node", None):
        node = next((n for n in profile.nodes if n.node_id == args.node), None)
        if node is None:
            raise CliError(f"{root} lists no node {args.node!r} (see `strongroom status`)")
    return Client(profile, node or reachable_node(profile), timeout=120)


def local(action: Callable[[], T]) -> T:
    """Run a local-cluster action; its refusals become CLI errors."""
    from strongroom.local.layout import LocalClusterError

    try:
        return action()
    except LocalClusterError as exc:
        raise CliError(str(exc)) from None
