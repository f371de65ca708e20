"""``[metrics]`` of node.toml, agent.toml and kms.toml::

    [metrics]
    listen = "127.0.0.1:9464"   # HOST:PORT of the plain-HTTP /metrics listener; absent: no listener

Metrics carry no key material, but they show who uses the cluster how much: bind to loopback or a
management network that only the operator's Prometheus reaches.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


class MetricsSettingsError(ValueError):
    pass


@dataclass(frozen=True)
class MetricsSettings:
    #: HOST:PORT, or None for no listener.
    listen: str | None = None

    def __post_init__(self) -> None:
        if self.listen is not None:
            self.host_port()

    def host_port(self) -> tuple[str, int]:
        if self.listen is None:
            raise MetricsSettingsError("metrics are off (no [metrics] listen)")
        host, colon, port = self.listen.rpartition(":")
        host = host.strip("[]")
        if not colon or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise MetricsSettingsError(f"[metrics] listen is HOST:PORT, not {self.listen!r}")
        return host, int(port)

    @property
    def url(self) -> str | None:
        """Where Prometheus scrapes, or None."""
        if self.listen is None:
            return None
        host, port = self.host_port()
        return f"http://{f'[{host}]' if ':' in host else host}:{port}/metrics"

    @classmethod
    def from_document(cls, document: Any) -> MetricsSettings:
        if document is None:
            return cls()
        if not isinstance(document, dict):
            raise MetricsSettingsError("[metrics] must be a table")
        unknown = set(document) - {"listen"}
        if unknown:
            raise MetricsSettingsError(f"unknown [metrics] keys {sorted(unknown)}")
        listen = document.get("listen")
        if listen is not None and not isinstance(listen, str):
            raise MetricsSettingsError("[metrics] listen is a string HOST:PORT")
        return cls(listen=listen or None)

    def to_document(self) -> dict[str, Any]:
        return {} if self.listen is None else {"listen": self.listen}
