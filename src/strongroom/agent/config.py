"""The agent's configuration file (TOML).

::

    [agent]
    socket = "/run/strongroom/agent.sock"   # Unix socket the PKCS#11 module connects to
    cluster_name = "strongroom"             # the token label
    slot_id = 0                             # stable slot id of the cluster's one slot
    log_level = "info"
    links_per_node = 2                      # connections to each node (one per node worker is best)

    [tls]                                   # the client identity towards the nodes (mTLS)
    ca = "ca/ca.crt"
    cert = "client/client.crt"
    key = "client/client.key"

    [timeouts]                              # seconds
    connect = 5.0          # one TCP + TLS connection attempt
    request = 120.0        # one node request (RSA-4096 generation takes seconds)
    reconnect_wait = 5.0   # how long a call waits for some node to come back
    health_interval = 2.0  # node.status on every connection

    [[nodes]]
    id = "node1"
    zone = "a"
    address = "127.0.0.1:2223"

Relative paths are relative to the configuration file's folder. :meth:`AgentConfig.for_profile`
makes one from a client profile (``client.json``); ``strongroom up`` writes one for its directory
(:func:`strongroom.local.agent.write_config`).
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import tomli_w

from strongroom.client.profile import ClientProfile, NodeAddress, ProfileError
from strongroom.metrics.settings import MetricsSettings, MetricsSettingsError

#: sun_path is 108 bytes on Linux, including the terminating NUL.
MAX_SOCKET_PATH = 107
LOG_LEVELS = ("debug", "info", "warning", "error")
MAX_LINKS_PER_NODE = 64


class ConfigError(Exception):
    pass


@dataclass
class Timeouts:
    connect: float = 5.0
    request: float = 120.0
    reconnect_wait: float = 5.0
    health_interval: float = 2.0


@dataclass
class AgentConfig:
    socket: Path
    ca: Path
    cert: Path
    key: Path
    nodes: tuple[NodeAddress, ...]
    cluster_name: str = "strongroom"
    slot_id: int = 0
    log_level: str = "info"
    #: Group that may use the socket (mode 0660): e.g. "www-data" so nginx workers can reach the HSM.
    socket_group: str | None = None
    timeouts: Timeouts = field(default_factory=Timeouts)
    #: ``[metrics] listen``: the agent's /metrics listener (strongroom.metrics).
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    #: Connections the agent keeps to each node. A node's worker processes share nothing but the
    #: store, and a connection is served by the one worker that accepted it: to use all of a
    #: node's cores, this should be at least its number of workers (``workers`` in node.toml).
    links_per_node: int = 2

    def __post_init__(self) -> None:
        if not self.nodes:
            raise ConfigError("the agent configuration names no node")
        if len(os.fsencode(str(self.socket))) > MAX_SOCKET_PATH:
            raise ConfigError(f"socket path {self.socket} is longer than {MAX_SOCKET_PATH} bytes")
        if not 0 <= self.slot_id < 1 << 32:
            raise ConfigError("slot_id must be an unsigned 32-bit number")
        if self.log_level not in LOG_LEVELS:
            raise ConfigError(f"log_level must be one of {', '.join(LOG_LEVELS)}")
        if not 1 <= self.links_per_node <= MAX_LINKS_PER_NODE:
            raise ConfigError(f"links_per_node must be between 1 and {MAX_LINKS_PER_NODE}")
        for name in ("connect", "request", "reconnect_wait", "health_interval"):
            if getattr(self.timeouts, name) <= 0:
                raise ConfigError(f"timeouts.{name} must be positive")

    @classmethod
    def for_profile(cls, profile: ClientProfile, socket: Path) -> AgentConfig:
        """The agent of the application host whose client profile is ``profile``, listening on ``socket``."""
        return cls(socket=socket, cluster_name=profile.cluster_name, ca=profile.ca, cert=profile.cert,
                   key=profile.key, nodes=profile.nodes)

    # --- file --------------------------------------------------------------------------

    def to_toml(self) -> str:
        document: dict[str, Any] = {
            "agent": {
                "socket": str(self.socket),
                "cluster_name": self.cluster_name,
                "slot_id": self.slot_id,
                "log_level": self.log_level,
                "links_per_node": self.links_per_node,
                **({"socket_group": self.socket_group} if self.socket_group else {}),
            },
            "tls": {"ca": str(self.ca), "cert": str(self.cert), "key": str(self.key)},
            "timeouts": {f.name: getattr(self.timeouts, f.name) for f in fields(Timeouts)},
            "nodes": [{"id": n.node_id, "zone": n.zone, "address": n.address} for n in self.nodes],
        }
        if self.metrics.listen is not None:
            document["metrics"] = self.metrics.to_document()
        return tomli_w.dumps(document)

    def write(self, path: Path) -> None:
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(self.to_toml())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> AgentConfig:
        path = Path(path)
        try:
            document = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"agent config file {path} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"agent config file {path} is not valid TOML: {exc}") from None
        base = path.parent.resolve()

        def resolve(value: Any) -> Path:
            return base / Path(str(value))  # an absolute value stays absolute

        try:
            agent = document.get("agent", {})
            tls = document["tls"]
            unknown = set(document.get("timeouts", {})) - {f.name for f in fields(Timeouts)}
            if unknown:
                raise ConfigError(f"{path}: unknown [timeouts] keys {sorted(unknown)}")
            timeouts = Timeouts(**{k: float(v) for k, v in document.get("timeouts", {}).items()})
            nodes = tuple(
                NodeAddress.parse(str(n["id"]), str(n["address"]), str(n.get("zone", "a")))
                for n in document.get("nodes", [])
            )
            return cls(
                socket=resolve(agent["socket"]),
                cluster_name=str(agent.get("cluster_name", "strongroom")),
                slot_id=int(agent.get("slot_id", 0)),
                log_level=str(agent.get("log_level", "info")).lower(),
                links_per_node=int(agent.get("links_per_node", 2)),
                socket_group=None if agent.get("socket_group") is None else str(agent["socket_group"]),
                ca=resolve(tls["ca"]),
                cert=resolve(tls["cert"]),
                key=resolve(tls["key"]),
                nodes=nodes,
                timeouts=timeouts,
                metrics=MetricsSettings.from_document(document.get("metrics")),
            )
        except KeyError as exc:
            raise ConfigError(f"{path}: missing setting {exc.args[0]!r}") from None
        except (ProfileError, MetricsSettingsError) as exc:
            raise ConfigError(f"{path}: {exc}") from None
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{path}: bad value: {exc}") from None

