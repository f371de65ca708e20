"""The directory of a local cluster (``strongroom up --dir DIR``): what lies where.

Created on the first ``up``, reused afterwards::

    ca/ca.key, ca/ca.crt          stand-in for the customer's CA (keep ca.key offline in production)
    client/client.{key,crt}       an application host's identity (role agent): the agent, the CLI and SDK logins
    operator/operator.{key,crt}   the operator's identity (role operator): backups, zeroize, node removal
    nodes/<id>/                   node.toml, tls/, sealed cluster key, audit.log, node.log, node.pid
    store/strongroom.db           the embedded SQLite store (encrypted records only)
    etcd/                         (up --nodes N, N > 1) members.json, each member's data, log and pid
    client.json                   client profile: node addresses + certificate paths
    custodians/                   (up --seal shares without --custodian) throw-away custodian keys and shares
    cluster.id                    the cluster's id, once initialized (the admin password is printed once, kept nowhere)
    backups/<cluster id>/*.srbk   automatic and manual backups (encrypted records; useless without the cluster key)
    agent.toml, agent.sock        the client agent's configuration and its Unix socket (PKCS#11 path)
    agent.pid, agent.log
    kms.toml, kms/                (up --kms) the KMS gateway's configuration and state (:mod:`strongroom.kms.local`)
    kms.pid, kms.log, kms.serving the running gateway, its log, and the endpoint it serves
    strongroom.env                export lines for a shell
    cluster.json                  what ``up`` printed last
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from strongroom.ports import free_port as free_port  # the launchers pick their ports through the layout

#: Everything of a local cluster listens on loopback.
HOST = "127.0.0.1"


class LocalClusterError(Exception):
    """A local-cluster action refused or failed; the message says what to do (the CLI prints it)."""


@dataclass(frozen=True)
class Layout:
    root: Path

    @property
    def ca_key(self) -> Path:
        return self.root / "ca" / "ca.key"

    @property
    def ca_cert(self) -> Path:
        return self.root / "ca" / "ca.crt"

    @property
    def client_key(self) -> Path:
        return self.root / "client" / "client.key"

    @property
    def client_cert(self) -> Path:
        return self.root / "client" / "client.crt"

    @property
    def operator_key(self) -> Path:
        return self.root / "operator" / "operator.key"

    @property
    def operator_cert(self) -> Path:
        return self.root / "operator" / "operator.crt"

    @property
    def custodians(self) -> Path:
        return self.root / "custodians"

    @property
    def cluster_id_file(self) -> Path:
        return self.root / "cluster.id"

    @property
    def store(self) -> Path:
        return self.root / "store" / "strongroom.db"

    @property
    def profile(self) -> Path:
        return self.root / "client.json"

    @property
    def env_file(self) -> Path:
        return self.root / "strongroom.env"

    @property
    def summary(self) -> Path:
        return self.root / "cluster.json"

    @property
    def backups(self) -> Path:
        return self.root / "backups"

    # --- the agent -------------------------------------------------------------------------------

    @property
    def agent_config(self) -> Path:
        return self.root / "agent.toml"

    @property
    def agent_socket(self) -> Path:
        return self.root / "agent.sock"

    @property
    def agent_pid(self) -> Path:
        return self.root / "agent.pid"

    @property
    def agent_log(self) -> Path:
        return self.root / "agent.log"

    # --- the KMS gateway (its configuration and state: strongroom.kms.local) ------------------------

    @property
    def gateway_pid(self) -> Path:
        return self.root / "kms.pid"

    @property
    def gateway_log(self) -> Path:
        return self.root / "kms.log"

    @property
    def gateway_serving(self) -> Path:
        """The endpoint the running gateway was started with (a restart is due when the configuration
        now says another scheme or port)."""
        return self.root / "kms.serving"

    # --- nodes -----------------------------------------------------------------------------------------

    def node_dir(self, node_id: str) -> Path:
        return self.root / "nodes" / node_id

    def node_config(self, node_id: str) -> Path:
        return self.node_dir(node_id) / "node.toml"

    def node_pid(self, node_id: str) -> Path:
        return self.node_dir(node_id) / "node.pid"

    def node_log(self, node_id: str) -> Path:
        return self.node_dir(node_id) / "node.log"

    def node_ids(self) -> list[str]:
        nodes = self.root / "nodes"
        return sorted(p.name for p in nodes.iterdir() if (p / "node.toml").exists()) if nodes.exists() else []
