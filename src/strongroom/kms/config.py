"""The gateway's configuration file (TOML).

::

    [kms]
    host = "127.0.0.1"
    port = 8443
    region = "us-east-1"
    account_id = "111122223333"       # 12 digits; ARNs name it
    partition = "aws"
    tls_cert = "kms/tls.crt"          # HTTPS with this certificate and key (required, unless ...)
    tls_key = "kms/tls.key"
    # insecure_http = true            # ... plain HTTP instead, asked for explicitly (tests, a TLS proxy in front)
    max_skew_seconds = 300            # SigV4 clock skew limit
    signing_key_cache_seconds = 300   # how long a SigV4 signing key from the node is kept (0: verify in the node)
    key_cache_seconds = 1.0           # how long a key record read for a request is reused (0: never)
    unknown_key_cache_seconds = 10.0  # how long an access key id the node does not know is answered alone
    auth_failures_per_second = 5.0    # failed authentications per source address and per access key id ...
    auth_failure_burst = 20           # ... with this burst (0: no limit); then ThrottlingException
    auth_failures_per_second_total = 100.0   # failed authentications sent to the node, all sources (0: no limit)
    log_level = "info"

    [cluster]
    profile = "client.json"           # straight to the nodes with this client profile (mTLS) ...
    # agent_socket = "/run/strongroom/agent.sock"   # ... or through the host's agent
    username = "kmsgateway"           # the KMS service user (a crypto user)
    password_file = "kms/kmsgateway.password"   # mode 0600, the password on one line
    connections = 2                   # pipelined connections (each logs in once)
    request_timeout = 30.0
    key_store_user = "kmsuser"        # the crypto user custom key stores log in as (AWS's name; never ``username``)

    [deletion]
    check_seconds = 60.0              # how often keys past their deletion date are deleted
    day_seconds = 86400               # TEST ONLY: the length of a "day" of PendingWindowInDays

Relative paths are relative to the configuration file's folder.
"""

from __future__ import annotations

import os
import re
import stat
import tomllib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, overload

import tomli_w

from strongroom.metrics.settings import MetricsSettings, MetricsSettingsError

REGION_RE = re.compile(r"^[a-z]{2}(-[a-z]+)+-[0-9]+\Z|^[a-z0-9-]{1,32}\Z")
ACCOUNT_RE = re.compile(r"^[0-9]{12}\Z")
LOG_LEVELS = ("debug", "info", "warning", "error")


class ConfigError(Exception):
    pass


@dataclass
class ServerSettings:
    host: str = "127.0.0.1"
    port: int = 8443
    region: str = "us-east-1"
    account_id: str = "111122223333"
    partition: str = "aws"
    tls_cert: str | None = None
    tls_key: str | None = None
    #: Plain HTTP, only when asked for: without it the gateway needs tls_cert and tls_key.
    insecure_http: bool = False
    max_skew_seconds: float = 300.0
    #: How long a day-scoped SigV4 signing key fetched from the node is used (0: every request is
    #: verified in the node, as before). A deleted access key keeps working this long at most.
    signing_key_cache_seconds: float = 300.0
    #: How long a key record read from the cluster is reused by later requests (0: never). Changes
    #: made through this gateway are seen at once; another gateway's within this many seconds.
    key_cache_seconds: float = 1.0
    #: How long an access key id the node said it does not know is refused without asking it again.
    unknown_key_cache_seconds: float = 10.0
    #: Failed authentications (unknown access key, bad signature) per second and burst, per source
    #: address and per access key id; beyond them, requests the node would have to decide are
    #: answered ThrottlingException without asking it (see strongroom.kms.auth_limits).
    auth_failures_per_second: float = 5.0
    auth_failure_burst: int = 20
    #: The same for all sources together (failures that reach the node); 0: no overall limit.
    auth_failures_per_second_total: float = 100.0
    log_level: str = "info"
    max_body_bytes: int = 256 * 1024


@dataclass
class ClusterSettings:
    profile: str | None = None
    agent_socket: str | None = None
    #: The gateway's own service user: not ``kmsuser``, which AWS names the key stores' user.
    username: str = "kmsgateway"
    password_file: str = "kmsgateway.password"
    connections: int = 2
    request_timeout: float = 30.0
    #: The crypto user of custom key stores (AWS: kmsuser); must differ from ``username``.
    key_store_user: str = "kmsuser"


@dataclass
class DeletionSettings:
    check_seconds: float = 60.0
    #: Test only: how many seconds one day of a deletion window lasts (86400 in production).
    day_seconds: float = 86400.0


@dataclass
class GatewayConfig:
    kms: ServerSettings = field(default_factory=ServerSettings)
    cluster: ClusterSettings = field(default_factory=ClusterSettings)
    deletion: DeletionSettings = field(default_factory=DeletionSettings)
    base: Path = field(default_factory=Path.cwd)
    #: ``[metrics] listen``: the gateway's /metrics listener (strongroom.metrics).
    metrics: MetricsSettings = field(default_factory=MetricsSettings)

    @overload
    def path(self, value: str) -> Path: ...
    @overload
    def path(self, value: None) -> None: ...
    @overload
    def path(self, value: str | None) -> Path | None: ...

    def path(self, value: str | None) -> Path | None:
        if value is None:
            return None
        path = Path(value)
        return path if path.is_absolute() else self.base / path

    @classmethod
    def load(cls, path: Path, *, validate: bool = True) -> GatewayConfig:
        """``validate=False``: read a file to fix it up (e.g. an older kms.toml without TLS)."""
        path = Path(path)
        try:
            document = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"{path} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path} is not valid TOML: {exc}") from None
        config = cls(
            kms=_section(ServerSettings, document.get("kms", {}), "kms"),
            cluster=_section(ClusterSettings, document.get("cluster", {}), "cluster"),
            deletion=_section(DeletionSettings, document.get("deletion", {}), "deletion"),
            base=path.resolve().parent,
            metrics=_metrics(document.get("metrics")),
        )
        if validate:
            config.validate()
        return config

    def validate(self) -> None:
        k, c, d = self.kms, self.cluster, self.deletion
        if not 0 <= k.port <= 65535:
            raise ConfigError("kms.port is 0 to 65535")
        if not REGION_RE.match(k.region):
            raise ConfigError(f"kms.region {k.region!r} is not a region name")
        if not ACCOUNT_RE.match(k.account_id):
            raise ConfigError("kms.account_id is 12 digits")
        if (k.tls_cert is None) != (k.tls_key is None):
            raise ConfigError("give both kms.tls_cert and kms.tls_key, or neither")
        if not isinstance(k.insecure_http, bool):
            raise ConfigError("kms.insecure_http is true or false")
        if k.tls_cert is None and not k.insecure_http:
            raise ConfigError("the KMS gateway serves HTTPS: give kms.tls_cert and kms.tls_key (a certificate for "
                              "the names clients connect to), or set kms.insecure_http = true for plain HTTP "
                              "(tests, or behind a TLS-terminating proxy on the same host)")
        if k.tls_cert is not None and k.insecure_http:
            raise ConfigError("kms.insecure_http = true and kms.tls_cert both given: choose one")
        if k.log_level not in LOG_LEVELS:
            raise ConfigError(f"kms.log_level is one of {', '.join(LOG_LEVELS)}")
        if not 1 <= k.max_skew_seconds <= 3600:
            raise ConfigError("kms.max_skew_seconds is 1 to 3600")
        if not 0 <= k.signing_key_cache_seconds <= 3600:
            raise ConfigError("kms.signing_key_cache_seconds is 0 to 3600")
        if not 0 <= k.key_cache_seconds <= 60:
            raise ConfigError("kms.key_cache_seconds is 0 to 60")
        if not 0 <= k.unknown_key_cache_seconds <= 3600:
            raise ConfigError("kms.unknown_key_cache_seconds is 0 to 3600")
        if not 0 <= k.auth_failures_per_second <= 100_000 or not 0 <= k.auth_failures_per_second_total <= 1_000_000:
            raise ConfigError("kms.auth_failures_per_second(_total) is 0 (no limit) or a positive rate")
        if not isinstance(k.auth_failure_burst, int) or not 0 <= k.auth_failure_burst <= 100_000:
            raise ConfigError("kms.auth_failure_burst is 0 (no limit) to 100000")
        if not 1024 <= k.max_body_bytes <= 16 * 1024 * 1024:
            raise ConfigError("kms.max_body_bytes is 1024 to 16777216")
        if (c.profile is None) == (c.agent_socket is None):
            raise ConfigError("give exactly one of cluster.profile and cluster.agent_socket")
        if not 1 <= c.connections <= 64:
            raise ConfigError("cluster.connections is 1 to 64")
        if d.check_seconds <= 0 or d.day_seconds <= 0:
            raise ConfigError("deletion.check_seconds and deletion.day_seconds are positive")

    def read_password(self) -> str:
        path = self.path(self.cluster.password_file)
        assert path is not None
        try:
            info = path.stat()
        except FileNotFoundError:
            raise ConfigError(f"the service user's password file {path} does not exist") from None
        if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ConfigError(f"{path} must be readable by its owner only (chmod 600)")
        password = path.read_text().strip("\n")
        if not password:
            raise ConfigError(f"{path} is empty")
        return password

    def to_toml(self) -> str:
        document: dict[str, Any] = {}
        for name in ("kms", "cluster", "deletion"):
            document[name] = {k: v for k, v in asdict(getattr(self, name)).items() if v is not None}
        if self.metrics.listen is not None:
            document["metrics"] = self.metrics.to_document()
        return tomli_w.dumps(document)

    def write(self, path: Path) -> None:
        path.write_text(self.to_toml())
        os.chmod(path, 0o600)


def _section(cls: type, raw: Any, name: str) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"[{name}] must be a table")
    known = {f.name: f for f in fields(cls)}
    unknown = set(raw) - set(known)
    if unknown:
        raise ConfigError(f"unknown setting(s) in [{name}]: {', '.join(sorted(unknown))}")
    try:
        return cls(**raw)
    except TypeError as exc:
        raise ConfigError(f"[{name}]: {exc}") from None


def _metrics(raw: Any) -> MetricsSettings:
    try:
        return MetricsSettings.from_document(raw)
    except MetricsSettingsError as exc:
        raise ConfigError(str(exc)) from None
