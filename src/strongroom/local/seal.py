"""``strongroom seal migrate``: change one node's seal in a ``strongroom up`` directory.

The node's configuration gets the new ``[seal]``; the node restarts, opens its current seal
(or receives the key from a peer, for a ``shares`` seal), re-seals the key with the new
provider and destroys the old provider's key-encryption key (:mod:`strongroom.node.supervisor`).
The key never leaves the node process. Other nodes keep serving meanwhile, so a cluster of
several nodes migrates one node at a time without downtime.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from strongroom.client import Client, ClientError, ClientProfile, ProfileError
from strongroom.local.layout import Layout, LocalClusterError
from strongroom.local.nodes import start_and_check, stop_node, wait_for_key
from strongroom.seal import SHARES, SealError, SealSettings, seal_info
from strongroom.services.config import ConfigError, NodeConfig


def migrate(directory: Path, node_id: str, to: str, options: dict[str, Any]) -> dict[str, Any]:
    layout = Layout(Path(directory).resolve())
    try:
        profile = ClientProfile.load(layout.profile)
        config = NodeConfig.load(layout.node_config(node_id))
        settings = SealSettings(to, options)
    except (ProfileError, ConfigError, SealError) as exc:
        raise LocalClusterError(str(exc)) from None
    node = next((n for n in profile.nodes if n.node_id == node_id), None)
    if node is None:
        raise LocalClusterError(f"the cluster in {layout.root} has no node {node_id!r}")
    try:
        _identity, current = seal_info(config.node_dir)
    except SealError as exc:
        raise LocalClusterError(f"{node_id} holds no readable seal: {exc}") from None
    if to == SHARES:
        # A cold start of a shares-sealed node needs the custodians' shares: the cluster must have some.
        try:
            with Client(profile.as_operator(), node, timeout=10) as client:
                recovery = client.cluster_status().get("recovery")
        except (ClientError, ProfileError) as exc:
            raise LocalClusterError(f"cannot ask {node_id} whether the cluster has recovery shares: {exc}") from None
        if not recovery:
            raise LocalClusterError("this cluster was initialized without recovery custodians: a node with a shares "
                                    "seal could never start alone again. Keep another seal type")
    layout.node_config(node_id).write_text(replace(config, seal=settings).to_toml())
    stop_node(layout, node_id)
    started = start_and_check(layout, node)
    if started["state"] in ("sealed", "uninitialized"):
        started.update(state=wait_for_key(layout, node, started["pid"])["state"])
    try:
        _identity, now = seal_info(config.node_dir)
    except SealError as exc:
        raise LocalClusterError(f"{node_id} restarted but its seal is unreadable: {exc}") from None
    if now != to:
        raise LocalClusterError(f"{node_id} restarted but still has a {now} seal; see its node.log")
    return {"id": node_id, "from": current, "to": to, "pid": started["pid"], "state": started["state"]}
