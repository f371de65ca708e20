"""Where a client finds the cluster: node addresses and its mTLS identity.

A profile is a small JSON file (``client.json`` in a ``strongroom up`` directory)::

    {"cluster_name": "...", "ca": "ca/ca.crt", "cert": "client/client.crt", "key": "client/client.key",
     "operator_cert": "operator/operator.crt", "operator_key": "operator/operator.key",
     "nodes": [{"id": "node1", "zone": "a", "address": "127.0.0.1:2223"}]}

``cert``/``key`` are an application host's identity (certificate role ``agent``: HSM users log
in through it); ``operator_cert``/``operator_key``, where present, the operator's (backups,
zeroize, node removal; no login). A ``strongroom up`` directory has both; a real deployment
gives each person only theirs.

Relative paths are relative to the profile's folder.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

PROFILE_FILE = "client.json"


class ProfileError(Exception):
    pass


@dataclass(frozen=True)
class NodeAddress:
    node_id: str
    host: str
    port: int
    zone: str = "a"

    @classmethod
    def parse(cls, node_id: str, address: str, zone: str = "a") -> NodeAddress:
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit():
            raise ProfileError(f"node address {address!r} is not HOST:PORT")
        return cls(node_id, host.strip("[]"), int(port), zone)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True)
class ClientProfile:
    cluster_name: str
    ca: Path
    cert: Path
    key: Path
    nodes: tuple[NodeAddress, ...]
    operator_cert: Path | None = None
    operator_key: Path | None = None

    def as_operator(self) -> ClientProfile:
        """The same cluster through the operator's certificate (operator acts need it)."""
        if self.operator_cert is None or self.operator_key is None:
            raise ProfileError("this profile holds no operator certificate (operator_cert/operator_key): operator "
                               "acts (backups, zeroize, node removal) need the operator's certificate")
        return ClientProfile(self.cluster_name, self.ca, self.operator_cert, self.operator_key, self.nodes,
                             self.operator_cert, self.operator_key)

    @classmethod
    def load(cls, path: Path) -> ClientProfile:
        path = Path(path)
        if path.is_dir():
            path = path / PROFILE_FILE
        try:
            document = json.loads(path.read_text())
        except FileNotFoundError:
            raise ProfileError(f"{path} does not exist: is this a Strongroom directory (strongroom up --dir)?") \
                from None
        except ValueError as exc:
            raise ProfileError(f"{path} is not valid JSON: {exc}") from None
        base = path.parent
        try:
            return cls(
                cluster_name=str(document.get("cluster_name", "strongroom")),
                ca=base / document["ca"],
                cert=base / document["cert"],
                key=base / document["key"],
                nodes=tuple(
                    NodeAddress.parse(n["id"], n["address"], n.get("zone", "a")) for n in document["nodes"]
                ),
                operator_cert=base / document["operator_cert"] if document.get("operator_cert") else None,
                operator_key=base / document["operator_key"] if document.get("operator_key") else None,
            )
        except (KeyError, TypeError) as exc:
            raise ProfileError(f"{path} lacks a setting: {exc}") from None

    def write(self, path: Path) -> None:
        base = path.parent
        document = {
            "cluster_name": self.cluster_name,
            "ca": os.path.relpath(self.ca, base),
            "cert": os.path.relpath(self.cert, base),
            "key": os.path.relpath(self.key, base),
            **({"operator_cert": os.path.relpath(self.operator_cert, base),
                "operator_key": os.path.relpath(self.operator_key, base)}
               if self.operator_cert is not None and self.operator_key is not None else {}),
            "nodes": [{"id": n.node_id, "zone": n.zone, "address": n.address} for n in self.nodes],
        }
        path.write_text(json.dumps(document, indent=2) + "\n")


def default_profile_path() -> Path | None:
    """``STRONGROOM_DIR`` (written to the env file by ``strongroom up``) locates the profile."""
    directory = os.environ.get("STRONGROOM_DIR")
    return Path(directory) if directory else None
