"""Where a node without the cluster key asks for it: the peers of node.toml and those seen in the registry."""

from __future__ import annotations

import json
import os

from strongroom.services.config import NodeConfig

#: Addresses of the other nodes seen in the registry (not secret), for a restart without peers in node.toml.
PEERS_FILE = "peers.json"


def load_peers(config: NodeConfig) -> list[str]:
    """The peers of node.toml, then those remembered from the registry; never this node itself."""
    peers = list(config.peers)
    try:
        remembered = json.loads((config.node_dir / PEERS_FILE).read_text())
        peers += [str(p) for p in remembered if isinstance(p, str)]
    except (FileNotFoundError, ValueError, TypeError):
        pass
    return list(dict.fromkeys(p for p in peers if p != config.address))  # the first of each, in order


def remember_peers(config: NodeConfig, addresses: list[str]) -> None:
    addresses = sorted({a for a in addresses if a != config.address})
    path = config.node_dir / PEERS_FILE
    try:
        if json.loads(path.read_text()) == addresses:
            return
    except (FileNotFoundError, ValueError):
        pass
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(addresses))
    os.replace(tmp, path)
