"""Integration fixtures: real node processes started by the real `strongroom` command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from strongroom.client import Client
from strongroom.local.cluster import process_group_members as group_members

STRONGROOM = [sys.executable, "-m", "strongroom"]


class LocalCluster:
    """A `strongroom up` directory driven through the CLI, plus SDK clients into it."""

    def __init__(self, directory: Path, workers: int = 2, up_args: tuple[str, ...] = ()) -> None:
        self.dir = directory
        self.workers = workers
        #: More arguments for every `up` (e.g. --nodes 3, --seal shares).
        self.up_args = up_args
        self.summary: dict[str, Any] = {}
        self._clients: list[Client] = []

    # --- processes ------------------------------------------------------------------

    def up(self, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = self.run("up", "--workers", str(self.workers), *self.up_args)
        if check:
            assert result.returncode == 0, result.stdout + result.stderr
            summary = json.loads(result.stdout)
            # The first admin's password is printed by the `up` that initialized the cluster, and only then.
            if summary.get("admin_password") is None:
                summary["admin_password"] = self.summary.get("admin_password")
            self.summary = summary
        return result

    def down(self) -> dict[str, Any]:
        for client in self._clients:
            client.close()
        self._clients.clear()
        result = self.run("down", "--json")
        assert result.returncode == 0, result.stdout + result.stderr
        return json.loads(result.stdout)["data"]

    def run(self, *args: str, pin: str | None = None, stdin: str | None = None,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        environment = {k: v for k, v in os.environ.items() if not k.startswith("STRONGROOM_")}
        environment["STRONGROOM_DIR"] = str(self.dir)
        if pin is not None:
            environment["STRONGROOM_PIN"] = pin
        environment.update(env or {})
        return subprocess.run(
            [*STRONGROOM, *args, "--dir", str(self.dir)], capture_output=True, text=True, input=stdin,
            env=environment, timeout=120,
        )

    def cli(self, *args: str, pin: str | None = None) -> tuple[int, dict[str, Any]]:
        """Run a command with --json; returns (exit code, parsed JSON envelope)."""
        result = self.run(*args, "--json", pin=pin)
        assert result.stdout.strip(), f"no JSON output; stderr: {result.stderr}"
        return result.returncode, json.loads(result.stdout)

    # --- SDK ----------------------------------------------------------------------------

    @property
    def admin_pin(self) -> str:
        return f"{self.summary['admin_user']}:{self.summary['admin_password']}"

    def client(self) -> Client:
        client = Client.from_dir(self.dir, timeout=30)
        self._clients.append(client)
        return client

    def admin(self) -> Client:
        client = self.client()
        client.login(self.summary["admin_user"], self.summary["admin_password"])
        return client

    def crypto_user(self, name: str, password: str = "password1") -> Client:
        admin = self.admin()
        admin.user_create(name, "crypto-user", password)
        admin.logout()
        client = self.client()
        client.login(name, password)
        return client

    @property
    def node_dir(self) -> Path:
        return self.dir / "nodes" / "node1"

    @property
    def config_path(self) -> Path:
        return self.node_dir / "node.toml"

    def node_pids(self) -> set[int]:
        """Every live process of the node's process group (supervisor and workers)."""
        pid = int((self.node_dir / "node.pid").read_text())
        return group_members(os.getpgid(pid))


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    local = LocalCluster(tmp_path / "cluster")
    local.up()
    try:
        yield local
    finally:
        local.down()


@pytest.fixture(scope="module")
def shared_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """One cluster for tests that only add users with unique names."""
    local = LocalCluster(tmp_path_factory.mktemp("shared") / "cluster")
    local.up()
    try:
        yield local
    finally:
        local.down()
