"""A node's configuration file (TOML)."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import tomli_w

from strongroom.metrics.settings import MetricsSettings, MetricsSettingsError
from strongroom.seal import SealError, SealSettings
from strongroom.transport.protocol import DEFAULT_MAX_FRAME


class ConfigError(Exception):
    pass


@dataclass
class Limits:
    max_frame: int = DEFAULT_MAX_FRAME
    max_in_flight: int = 128  # per connection; reading pauses beyond it
    max_connections: int = 1024
    session_idle_seconds: float = 900.0
    max_sessions_per_user: int = 1024
    max_sessions: int = 8192
    max_p11_sessions_per_login: int = 1024
    max_objects: int = 16000  # token objects in the cluster (CloudHSM hsm2m: 16,666 keys)
    #: Failed admin logins from one client certificate before that source is slowed down.
    admin_login_failures_per_source: int = 5
    #: First pause imposed on such a source; it doubles with each further failure, up to 15 minutes.
    admin_login_backoff_seconds: float = 30.0


@dataclass
class BackupPolicy:
    """Automatic backups (CloudHSM's defaults: one a day, kept 90 days). ``dir`` unset: none."""

    dir: Path | None = None
    interval_hours: float = 24.0
    retention_days: float = 90.0
    #: How often a node looks whether a backup is due (a new day, an activation, a membership change).
    check_seconds: float = 60.0


@dataclass
class NodeConfig:
    node_id: str
    node_dir: Path
    host: str
    port: int
    tls_cert: Path
    tls_key: Path
    ca_cert: Path
    store_path: Path
    zone: str = "a"
    cluster_name: str = "strongroom"
    workers: int = 1
    #: "sqlite" (store_path, one host) or "etcd" (store_endpoints, replicated clusters).
    store_backend: str = "sqlite"
    store_endpoints: list[str] = field(default_factory=list)
    store_namespace: str = "/strongroom/"
    #: etcd TLS and authentication (all optional): CA, client certificate and key, user and a
    #: file holding the password (kept out of the configuration itself).
    store_tls: dict[str, str] = field(default_factory=dict)
    store_username: str | None = None
    store_password_file: Path | None = None
    limits: Limits = field(default_factory=Limits)
    backup: BackupPolicy = field(default_factory=BackupPolicy)
    #: ``[seal]``: how this node keeps the cluster key at rest (strongroom.seal).
    seal: SealSettings = field(default_factory=SealSettings)
    #: Other nodes' addresses (HOST:PORT): where a node without the key (joining, or with a shares
    #: seal) asks for it. Addresses seen in the registry are remembered beside them.
    peers: list[str] = field(default_factory=list)
    #: ``[metrics] listen``: the node's /metrics listener (strongroom.metrics), served by its supervisor.
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    # Test-only fault injection: names of self-tests to treat as failed. Empty in production.
    fail_selftests: list[str] = field(default_factory=list)

    @property
    def audit_path(self) -> Path:
        return self.node_dir / "audit.log"

    @property
    def boot_counter_path(self) -> Path:
        return self.node_dir / "boot.counter"

    @property
    def log_path(self) -> Path:
        return self.node_dir / "node.log"

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def to_toml(self) -> str:
        document: dict[str, Any] = {
            "node_id": self.node_id,
            "zone": self.zone,
            "cluster_name": self.cluster_name,
            "node_dir": str(self.node_dir),
            "listen": {"host": self.host, "port": self.port},
            "workers": self.workers,
            "tls": {"cert": str(self.tls_cert), "key": str(self.tls_key), "ca": str(self.ca_cert)},
            "store": self._store_document(),
            "limits": {f.name: getattr(self.limits, f.name) for f in fields(Limits)},
            "seal": self.seal.to_document(),
        }
        if self.peers:
            document["peers"] = list(self.peers)
        if self.metrics.listen is not None:
            document["metrics"] = self.metrics.to_document()
        if self.backup.dir is not None:
            document["backup"] = {"dir": str(self.backup.dir), "interval_hours": self.backup.interval_hours,
                                  "retention_days": self.backup.retention_days,
                                  "check_seconds": self.backup.check_seconds}
        if self.fail_selftests:
            document["testing"] = {"fail_selftests": list(self.fail_selftests)}
        return tomli_w.dumps(document)

    def _store_document(self) -> dict[str, Any]:
        if self.store_backend == "etcd":
            document: dict[str, Any] = {"backend": "etcd", "endpoints": list(self.store_endpoints),
                                        "namespace": self.store_namespace}
            document.update({k: v for k, v in self.store_tls.items() if v})
            if self.store_username:
                document["username"] = self.store_username
            if self.store_password_file:
                document["password_file"] = str(self.store_password_file)
            return document
        return {"backend": "sqlite", "path": str(self.store_path)}

    def open_store(self) -> Any:
        """The store this node's configuration names (one per worker process)."""
        if self.store_backend == "etcd":
            from strongroom.store.etcd import EtcdStore

            password = None
            if self.store_password_file is not None:
                password = self.store_password_file.read_text().strip()
            return EtcdStore(self.store_endpoints, namespace=self.store_namespace,
                             ca_file=self.store_tls.get("ca"), cert_file=self.store_tls.get("cert"),
                             key_file=self.store_tls.get("key"), username=self.store_username, password=password)
        from strongroom.store.sqlite import SqliteStore

        return SqliteStore(self.store_path)

    @classmethod
    def load(cls, path: Path) -> NodeConfig:
        try:
            document = tomllib.loads(Path(path).read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
        try:
            limits_doc = document.get("limits", {})
            unknown = set(limits_doc) - {f.name for f in fields(Limits)}
            if unknown:
                raise ConfigError(f"{path}: unknown [limits] keys {sorted(unknown)}")
            store = document["store"]
            backend = store.get("backend", "sqlite")
            if backend not in ("sqlite", "etcd"):
                raise ConfigError(f"{path}: store backend {backend!r} is not supported (sqlite or etcd)")
            if backend == "etcd" and not store.get("endpoints"):
                raise ConfigError(f"{path}: the etcd store needs [store] endpoints")
            return cls(
                node_id=str(document["node_id"]),
                zone=str(document.get("zone", "a")),
                cluster_name=str(document.get("cluster_name", "strongroom")),
                node_dir=Path(document["node_dir"]),
                host=str(document["listen"]["host"]),
                port=int(document["listen"]["port"]),
                workers=int(document.get("workers", 1)),
                tls_cert=Path(document["tls"]["cert"]),
                tls_key=Path(document["tls"]["key"]),
                ca_cert=Path(document["tls"]["ca"]),
                store_path=Path(store.get("path", "")),
                store_backend=backend,
                store_endpoints=[str(e) for e in store.get("endpoints", [])],
                store_namespace=str(store.get("namespace", "/strongroom/")),
                store_tls={k: str(store[k]) for k in ("ca", "cert", "key") if store.get(k)},
                store_username=None if store.get("username") is None else str(store["username"]),
                store_password_file=None if store.get("password_file") is None else Path(store["password_file"]),
                limits=Limits(**limits_doc),
                backup=_backup_policy(path, document.get("backup", {})),
                fail_selftests=list(document.get("testing", {}).get("fail_selftests", [])),
                seal=SealSettings.from_document(document.get("seal", {})),
                peers=[str(p) for p in document.get("peers", [])],
                metrics=MetricsSettings.from_document(document.get("metrics")),
            )
        except KeyError as exc:
            raise ConfigError(f"{path}: missing setting {exc.args[0]!r}") from None
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{path}: bad value: {exc}") from None
        except SealError as exc:
            raise ConfigError(f"{path}: [seal]: {exc}") from None
        except MetricsSettingsError as exc:
            raise ConfigError(f"{path}: {exc}") from None


def _backup_policy(path: Path, document: dict[str, Any]) -> BackupPolicy:
    unknown = set(document) - {f.name for f in fields(BackupPolicy)}
    if unknown:
        raise ConfigError(f"{path}: unknown [backup] keys {sorted(unknown)}")
    policy = BackupPolicy(
        dir=None if document.get("dir") is None else Path(document["dir"]),
        interval_hours=float(document.get("interval_hours", 24.0)),
        retention_days=float(document.get("retention_days", 90.0)),
        check_seconds=float(document.get("check_seconds", 60.0)),
    )
    if policy.interval_hours <= 0 or policy.retention_days <= 0 or policy.check_seconds <= 0:
        raise ConfigError(f"{path}: [backup] interval_hours, retention_days and check_seconds must be positive")
    return policy
