"""The Vault KV service's configuration file (TOML).

::

    [vault_kv]
    host = "127.0.0.1"
    port = 8200
    tls_cert = "vaultkv/tls.crt"      # HTTPS with this certificate and key (required, unless ...)
    tls_key = "vaultkv/tls.key"
    # insecure_http = true            # ... plain HTTP instead, asked for explicitly (tests, a TLS proxy in front)
    log_level = "info"
    max_body_bytes = 16384            # a write's body; Vault KV writes here are a few dozen bytes
    auth_failures_per_second = 5.0    # refused tokens per source address and per token accessor ...
    auth_failure_burst = 50           # ... with this burst (0: no limit); then 429
    auth_failures_per_second_total = 100.0   # refused tokens sent to the node, all sources (0: no limit)

    [cluster]
    profile = "client.json"           # straight to the nodes with this client profile (mTLS) ...
    # agent_socket = "/run/strongroom/agent.sock"   # ... or through the host's agent
    username = "vaultkv"              # the service user (a crypto user): owns the key records
    password_file = "vaultkv/vaultkv.password"   # mode 0600, the password on one line
    connections = 2
    request_timeout = 30.0

Relative paths are relative to the configuration file's folder. The ``[cluster]`` section is the
KMS gateway's (:class:`strongroom.kms.config.ClusterSettings`): the service reaches the cluster
through the same connection code (:class:`strongroom.kms.backend.Backend`).
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import tomli_w

from strongroom.kms.config import LOG_LEVELS, ClusterSettings, ConfigError, GatewayConfig

SERVICE_USER = "vaultkv"
__all__ = ["ConfigError", "ServiceSettings", "VaultKvConfig", "SERVICE_USER"]


@dataclass
class ServiceSettings:
    host: str = "127.0.0.1"
    port: int = 8200
    tls_cert: str | None = None
    tls_key: str | None = None
    #: Plain HTTP, only when asked for: tokens and data keys would cross the network in clear.
    insecure_http: bool = False
    log_level: str = "info"
    max_body_bytes: int = 16 * 1024
    auth_failures_per_second: float = 5.0
    auth_failure_burst: int = 50
    auth_failures_per_second_total: float = 100.0


def _cluster_defaults() -> ClusterSettings:
    return ClusterSettings(username=SERVICE_USER, password_file="vaultkv/vaultkv.password")


@dataclass
class VaultKvConfig:
    vault_kv: ServiceSettings = field(default_factory=ServiceSettings)
    cluster: ClusterSettings = field(default_factory=_cluster_defaults)
    base: Path = field(default_factory=Path.cwd)

    def path(self, value: str | None) -> Path | None:
        if value is None:
            return None
        path = Path(value)
        return path if path.is_absolute() else self.base / path

    @property
    def scheme(self) -> str:
        return "http" if self.vault_kv.insecure_http else "https"

    @property
    def address(self) -> str:
        """What Vault clients call VAULT_ADDR: scheme, host and port, without ``/v1``."""
        return f"{self.scheme}://{self.vault_kv.host}:{self.vault_kv.port}"

    @classmethod
    def load(cls, path: Path, *, validate: bool = True) -> VaultKvConfig:
        path = Path(path)
        try:
            document = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"{path} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path} is not valid TOML: {exc}") from None
        unknown = set(document) - {"vault_kv", "cluster"}
        if unknown:
            raise ConfigError(f"unknown section(s) in {path}: {', '.join(sorted(unknown))}")
        cluster = asdict(_cluster_defaults()) | _table(document.get("cluster", {}), "cluster")
        config = cls(vault_kv=_section(ServiceSettings, document.get("vault_kv", {}), "vault_kv"),
                     cluster=_section(ClusterSettings, cluster, "cluster"), base=path.resolve().parent)
        if validate:
            config.validate()
        return config

    def validate(self) -> None:
        s, c = self.vault_kv, self.cluster
        if not isinstance(s.port, int) or not 0 <= s.port <= 65535:
            raise ConfigError("vault_kv.port is 0 to 65535")
        if (s.tls_cert is None) != (s.tls_key is None):
            raise ConfigError("give both vault_kv.tls_cert and vault_kv.tls_key, or neither")
        if not isinstance(s.insecure_http, bool):
            raise ConfigError("vault_kv.insecure_http is true or false")
        if s.tls_cert is None and not s.insecure_http:
            raise ConfigError("the Vault KV service serves HTTPS: give vault_kv.tls_cert and vault_kv.tls_key, or set "
                              "vault_kv.insecure_http = true for plain HTTP (tests, or a TLS proxy on the same host)")
        if s.tls_cert is not None and s.insecure_http:
            raise ConfigError("vault_kv.insecure_http = true and vault_kv.tls_cert both given: choose one")
        if s.log_level not in LOG_LEVELS:
            raise ConfigError(f"vault_kv.log_level is one of {', '.join(LOG_LEVELS)}")
        if not isinstance(s.max_body_bytes, int) or not 1024 <= s.max_body_bytes <= 1024 * 1024:
            raise ConfigError("vault_kv.max_body_bytes is 1024 to 1048576")
        if not 0 <= s.auth_failures_per_second <= 100_000 or not 0 <= s.auth_failures_per_second_total <= 1_000_000:
            raise ConfigError("vault_kv.auth_failures_per_second(_total) is 0 (no limit) or a positive rate")
        if not isinstance(s.auth_failure_burst, int) or not 0 <= s.auth_failure_burst <= 100_000:
            raise ConfigError("vault_kv.auth_failure_burst is 0 (no limit) to 100000")
        if (c.profile is None) == (c.agent_socket is None):
            raise ConfigError("give exactly one of cluster.profile and cluster.agent_socket")
        if not 1 <= c.connections <= 64:
            raise ConfigError("cluster.connections is 1 to 64")
        if not 1 <= c.request_timeout <= 600:
            raise ConfigError("cluster.request_timeout is 1 to 600 seconds")

    def backend_config(self) -> GatewayConfig:
        """The cluster connection's settings in the shape :class:`strongroom.kms.backend.Backend` takes."""
        return GatewayConfig(cluster=self.cluster, base=self.base)

    def read_password(self) -> str:
        return self.backend_config().read_password()

    def to_toml(self) -> str:
        cluster = {k: v for k, v in asdict(self.cluster).items() if v is not None and k != "key_store_user"}
        service = {k: v for k, v in asdict(self.vault_kv).items() if v is not None}
        return tomli_w.dumps({"vault_kv": service, "cluster": cluster})

    def write(self, path: Path) -> None:
        path.write_text(self.to_toml())
        os.chmod(path, 0o600)


def _table(raw: Any, name: str) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise ConfigError(f"[{name}] must be a table")
    return raw


def _section(cls: type, raw: Any, name: str) -> Any:
    known = {f.name for f in fields(cls)}
    unknown = set(_table(raw, name)) - known
    if unknown:
        raise ConfigError(f"unknown setting(s) in [{name}]: {', '.join(sorted(unknown))}")
    try:
        return cls(**raw)
    except TypeError as exc:
        raise ConfigError(f"[{name}]: {exc}") from None
