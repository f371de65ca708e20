"""``strongroom hsm add / remove``: grow and shrink the local cluster of a ``strongroom up`` directory.

``add_node`` gives a new node its own certificate from the (stand-in) customer CA,
has an admin enroll that certificate (``hsm.enroll``: the admin's credentials come from
``STRONGROOM_PIN``), starts the node — which receives the cluster key from a running node
through the authenticated key exchange of :mod:`strongroom.services.join` — and lists it in
``client.json``. ``remove_node`` revokes the node's certificate through another
node (``hsm.revoke``, an operator act made with the operator's client
certificate), stops the node, zeroizes its sealed key and unlists it. A removed
node's folder stays (its audit log remains evidence) with its configuration
renamed ``node.toml.removed``; node ids are never reused.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

from strongroom import pki
from strongroom.client import Client, ClientError, ClientProfile, NodeAddress, ProfileError
from strongroom.local.cluster import enroll_nodes
from strongroom.local.layout import HOST, Layout, LocalClusterError, free_port
from strongroom.local.nodes import start_and_check, stop_node, wait_for_key
from strongroom.seal import destroy_seal
from strongroom.services.config import ConfigError, NodeConfig

ZONES = "abcdefghijklmnopqrstuvwxyz"
_NODE_ID = re.compile(r"node(\d+)")
REMOVED_SUFFIX = ".removed"


def _profile(layout: Layout) -> ClientProfile:
    try:
        return ClientProfile.load(layout.profile)
    except ProfileError as exc:
        raise LocalClusterError(str(exc)) from None


def _next_node_id(layout: Layout) -> str:
    """One more than any node this directory ever had (removed ones included)."""
    root = layout.root / "nodes"
    numbers = [int(m.group(1)) for p in root.iterdir() if (m := _NODE_ID.fullmatch(p.name))] if root.exists() else []
    return f"node{max(numbers, default=0) + 1}"


def _write_profile(layout: Layout, profile: ClientProfile, nodes: list[NodeAddress]) -> None:
    replace(profile, nodes=tuple(nodes)).write(layout.profile)


def add_node(directory: Path, zone: str | None = None, admin: tuple[str, str] | None = None) -> dict[str, Any]:
    """Add a node to the running cluster in ``directory``; returns ``{id, zone, address, pid}``.

    ``admin``: (user, password) of an admin, who enrolls the new node's certificate.
    """
    if admin is None:
        raise LocalClusterError("adding a node needs an admin to enroll it: set STRONGROOM_PIN=admin:password")
    layout = Layout(Path(directory).resolve())
    profile = _profile(layout)
    if not profile.nodes:
        raise LocalClusterError(f"{layout.root} lists no node to copy the configuration from")
    if zone is not None and not re.fullmatch(r"[A-Za-z0-9_.-]{1,32}", zone):
        raise LocalClusterError(f"zone {zone!r}: use 1 to 32 letters, digits, '_', '.' or '-'")
    try:
        template = NodeConfig.load(layout.node_config(profile.nodes[0].node_id))
    except ConfigError as exc:
        raise LocalClusterError(str(exc)) from None
    node_id = _next_node_id(layout)
    node_dir = layout.node_dir(node_id)
    try:
        node_dir.mkdir(mode=0o700, parents=True)  # exclusive: two concurrent `hsm add` pick different ids
    except FileExistsError:
        raise LocalClusterError(f"{node_dir} appeared meanwhile (another `hsm add`?); try again") from None
    if zone is None:
        used = {n.zone for n in profile.nodes}
        zone = next((z for z in ZONES if z not in used), ZONES[(len(profile.nodes)) % len(ZONES)])
    try:
        (node_dir / "tls").mkdir(mode=0o700)
        ca_key = pki.load_private_key(layout.ca_key)
        ca_cert = pki.load_certificate(layout.ca_cert)
        key, cert = pki.issue_node_certificate(ca_key, ca_cert, node_id, hosts=[HOST, "localhost", node_id])
        pki.write_private_key(node_dir / "tls" / "node.key", key)
        pki.write_cert(node_dir / "tls" / "node.crt", cert)
        config = replace(template, node_id=node_id, node_dir=node_dir, zone=zone, port=free_port(),
                         tls_cert=node_dir / "tls" / "node.crt", tls_key=node_dir / "tls" / "node.key",
                         peers=[n.address for n in profile.nodes])
        layout.node_config(node_id).write_text(config.to_toml())
        node = NodeAddress(node_id, config.host, config.port, zone)
        # Only an enrolled certificate receives the cluster key.
        try:
            enroll_nodes(profile, admin, [(node_id, node_dir / "tls" / "node.crt")])
        except ClientError as exc:
            raise LocalClusterError(f"could not enroll {node_id} (nothing was started): {exc.message}") from None
    except (LocalClusterError, pki.PkiError, OSError) as exc:
        shutil.rmtree(node_dir, ignore_errors=True)  # nothing of value yet: no key was sealed there
        if isinstance(exc, LocalClusterError):
            raise
        raise LocalClusterError(f"cannot prepare node {node_id}: {exc}") from None
    try:
        started = start_and_check(layout, node)
        started.update(state=wait_for_key(layout, node, started["pid"])["state"])
    except LocalClusterError:
        # It holds the key now: do not leave a sealed copy behind a node nobody lists.
        stop_node(layout, node_id)
        destroy_seal(node_dir)
        config_path = layout.node_config(node_id)
        config_path.replace(config_path.with_name(config_path.name + REMOVED_SUFFIX))
        raise
    # Re-read: the profile may have changed while the node joined and started.
    current = _profile(layout)
    _write_profile(layout, current, [*current.nodes, node])
    return started


def remove_node(directory: Path, node_id: str) -> dict[str, Any]:
    """Revoke a node's certificate, stop the node, destroy its sealed key and unlist it."""
    layout = Layout(Path(directory).resolve())
    profile = _profile(layout)
    node = next((n for n in profile.nodes if n.node_id == node_id), None)
    if node is None:
        known = ", ".join(n.node_id for n in profile.nodes)
        raise LocalClusterError(f"the cluster in {layout.root} has no node {node_id!r} (nodes: {known})")
    others = [n for n in profile.nodes if n.node_id != node_id]
    if not others:
        raise LocalClusterError(f"{node_id} is the last node of the cluster; it cannot be removed "
                                "(that would lose the cluster key: use `strongroom down` to stop it)")
    node_dir = layout.node_dir(node_id)
    try:
        serial = pki.load_certificate(node_dir / "tls" / "node.crt").serial_number
    except pki.PkiError as exc:
        raise LocalClusterError(f"cannot read the certificate of {node_id}: {exc}") from None
    # 1. Revoke through another node (the operator's client certificate): from now on nodes refuse
    #    new connections with this certificate, and the node leaves the registry agents follow.
    revocation = None
    failures = []
    try:
        operator = profile.as_operator()
    except ProfileError as exc:
        raise LocalClusterError(str(exc)) from None
    for other in others:
        try:
            with Client(operator, other, timeout=30) as client:
                revocation = client.call("hsm.revoke", node_id=node_id, serial=f"{serial:x}")
            break
        except ClientError as exc:
            failures.append(f"{other.node_id}: {exc.message}")
    if revocation is None:
        raise LocalClusterError(f"could not revoke the certificate of {node_id} (nothing was changed): "
                                + "; ".join(failures))
    # 2. Stop it: SIGTERM to its process group lets requests in flight finish.
    pid, _leftovers = stop_node(layout, node_id)
    # 3. Zeroize its copy of the cluster key, and unlist it.
    destroy_seal(node_dir)
    config_path = layout.node_config(node_id)
    if config_path.exists():
        config_path.replace(config_path.with_name(config_path.name + REMOVED_SUFFIX))
    current = _profile(layout)
    _write_profile(layout, current, [n for n in current.nodes if n.node_id != node_id])
    return {"id": node_id, "zone": node.zone, "address": node.address, "stopped_pid": pid,
            "serial": f"{serial:x}", "revoked_at": revocation.get("revoked_at"), "seal_destroyed": True}


__all__ = ["add_node", "remove_node"]
