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

On a cluster over etcd, a node in a new zone brings that zone's etcd member
(:func:`strongroom.local.etcd.add_member`: etcd's member API, then the member joins) and
uses it first; removing the last node of a zone removes its member. The other nodes'
``node.toml`` follow the member list, so that their next start uses the members that exist.
"""

from __future__ import annotations

import contextlib
import re
import shutil
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from strongroom import pki
from strongroom.client import Client, ClientError, ClientProfile, NodeAddress, ProfileError
from strongroom.local import etcd
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
                         peers=[n.address for n in profile.nodes],
                         metrics=replace(template.metrics, listen=template.metrics.listen and f"{HOST}:{free_port()}"))
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
    member = None
    try:
        member = _add_etcd_member(layout, config, zone)
        started = start_and_check(layout, node)
        started.update(state=wait_for_key(layout, node, started["pid"])["state"])
    except LocalClusterError:
        # It holds the key now: do not leave a sealed copy behind a node nobody lists.
        stop_node(layout, node_id)
        destroy_seal(node_dir)
        config_path = layout.node_config(node_id)
        config_path.replace(config_path.with_name(config_path.name + REMOVED_SUFFIX))
        if member is not None:
            with contextlib.suppress(LocalClusterError):  # the start's failure is the one to report
                _remove_etcd_member(layout, zone)
        raise
    # Re-read: the profile may have changed while the node joined and started.
    current = _profile(layout)
    _write_profile(layout, current, [*current.nodes, node])
    if member is not None:
        started["etcd_member"] = {"id": member.name, "endpoint": member.client_url}
    return started


def _add_etcd_member(layout: Layout, config: NodeConfig, zone: str) -> etcd.Member | None:
    """The new zone's etcd member (none for SQLite, or a zone that has one): added, started, and first in
    the new node's endpoints; the other nodes' configurations list it too."""
    if config.store_backend != "etcd":
        return None
    try:
        member = etcd.add_member(layout.root, zone)
    except etcd.EtcdError as exc:
        raise LocalClusterError(f"could not add an etcd member for zone {zone}: {exc}") from None
    if member is None:
        return None
    own = replace(config, store_endpoints=[member.client_url, *config.store_endpoints])
    layout.node_config(config.node_id).write_text(own.to_toml())
    _rewrite_endpoints(layout, lambda endpoints: [*endpoints, member.client_url], skip=config.node_id)
    return member


def _remove_etcd_member(layout: Layout, zone: str) -> str | None:
    """Remove the zone's etcd member once no node of that zone is left; its endpoint, or None."""
    try:
        member = etcd.remove_member(layout.root, zone)
    except etcd.EtcdError as exc:
        raise LocalClusterError(f"the node was removed, but not the etcd member of zone {zone}: {exc}") from None
    if member is None:
        return None
    _rewrite_endpoints(layout, lambda endpoints: [e for e in endpoints if e != member.client_url])
    return member.client_url


def _rewrite_endpoints(layout: Layout, change: Callable[[list[str]], list[str]], skip: str | None = None) -> None:
    for node_id in layout.node_ids():
        if node_id == skip:
            continue
        path = layout.node_config(node_id)
        try:
            config = NodeConfig.load(path)
        except ConfigError:
            continue  # not ours to repair here; `up` reports it
        if config.store_backend == "etcd":
            path.write_text(replace(config, store_endpoints=change(config.store_endpoints)).to_toml())


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
    remaining = [n for n in current.nodes if n.node_id != node_id]
    _write_profile(layout, current, remaining)
    result = {"id": node_id, "zone": node.zone, "address": node.address, "stopped_pid": pid,
              "serial": f"{serial:x}", "revoked_at": revocation.get("revoked_at"), "seal_destroyed": True}
    # 4. The zone's etcd member leaves with the zone's last node.
    if not any(n.zone == node.zone for n in remaining):
        removed = _remove_etcd_member(layout, node.zone)
        if removed is not None:
            result["etcd_member_removed"] = removed
    return result


__all__ = ["add_node", "remove_node"]
