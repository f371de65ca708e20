"""Vault KV fixtures: a real cluster started with `strongroom up --vault-kv`, real HTTPS clients.

The service is the real `strongroom vault-kv serve` process `up` starts; clients are httpx over
TLS that trusts the cluster's CA (what MariaDB's `hashicorp-key-management-vault-ca` does), the
real `strongroom` CLI, and (in test_mariadb.py) Debian's MariaDB with the plugin.
"""

from __future__ import annotations

import json
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.integration.conftest import LocalCluster


@dataclass
class VaultEnv:
    cluster: LocalCluster
    #: Another service of the same cluster (default: the one `up` started).
    url_override: str | None = None

    @property
    def url(self) -> str:
        return self.url_override or str(self.cluster.summary["vault_kv_url"])

    @property
    def token(self) -> str:
        """The local write token `up` printed (mount `secret`, every name)."""
        return str(self.cluster.summary["vault_kv_token"])

    @property
    def ca(self) -> str:
        return str(self.cluster.summary["vault_kv_ca_bundle"])

    def http(self, method: str, path: str, *, token: str | None = None, body: Any = None,
             headers: dict[str, str] | None = None, content: bytes | None = None) -> httpx.Response:
        sent = dict(headers or {})
        if token is not None:
            sent["X-Vault-Token"] = token
        return httpx.request(method, self.url + path, headers=sent, json=body, content=content,
                             verify=ssl.create_default_context(cafile=self.ca), timeout=30)

    def get(self, path: str, token: str | None) -> httpx.Response:
        return self.http("GET", path, token=token)

    def put(self, mount: str, name: str, token: str, data: dict[str, Any] | None = None,
            options: dict[str, Any] | None = None) -> httpx.Response:
        body: dict[str, Any] = {"data": data or {}}
        if options is not None:
            body["options"] = options
        return self.http("POST", f"/v1/{mount}/data/{name}", token=token, body=body)

    def key(self, mount: str, name: str, token: str, version: int | None = None) -> tuple[bytes, int]:
        """(key bytes, version) as a database receives them; asserts the answer is a release."""
        query = "" if version is None else f"?version={version}"
        reply = self.get(f"/v1/{mount}/data/{name}{query}", token)
        assert reply.status_code == 200, reply.text
        data = reply.json()["data"]
        return bytes.fromhex(data["data"]["data"]), int(data["metadata"]["version"])

    def token_create(self, mount: str, policy: str, *names: str, ttl: str = "1h", display_name: str = "",
                     service_user: str | None = None) -> dict[str, Any]:
        args = ["vault-kv", "token", "create", "--mount", mount, "--policy", policy, "--ttl", ttl]
        for name in names:
            args += ["--name", name]
        if display_name:
            args += ["--display-name", display_name]
        if service_user:
            args += ["--service-user", service_user]
        code, envelope = self.cluster.cli(*args, pin=self.cluster.admin_pin)
        assert code == 0, envelope
        return dict(envelope["data"])

    def revoke(self, accessor: str) -> None:
        code, envelope = self.cluster.cli("vault-kv", "token", "revoke", "--accessor", accessor,
                                          pin=self.cluster.admin_pin)
        assert code == 0, envelope

    def audit(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in (self.cluster.node_dir / "audit.log").read_text().splitlines()]

    def audit_events(self, event: str, **details: Any) -> list[dict[str, Any]]:
        """Audit records of ``event`` whose details hold every given item."""
        return [r for r in self.audit() if r["event"] == event
                and all(r["details"].get(k) == v for k, v in details.items())]

    def wait_audited(self, event: str, timeout: float = 10, **details: Any) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while True:
            found = self.audit_events(event, **details)
            if found or time.monotonic() > deadline:
                return found
            time.sleep(0.1)


@pytest.fixture(scope="module")
def vault(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VaultEnv]:
    cluster = LocalCluster(tmp_path_factory.mktemp("vaultkv") / "cluster", up_args=("--vault-kv",))
    cluster.up()
    try:
        yield VaultEnv(cluster)
    finally:
        cluster.down()
