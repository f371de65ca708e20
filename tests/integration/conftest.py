"""Integration fixtures: real node processes started by the real `strongroom` command."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from strongroom.client import Client
from strongroom.local.processes import process_group_members as group_members

STRONGROOM = [sys.executable, "-m", "strongroom"]
PKCS11_DIR = Path(__file__).resolve().parents[2] / "pkcs11"


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


# --- the PKCS#11 module, as applications load it -----------------------------------------------------


@dataclass(frozen=True)
class Pkcs11Module:
    """The plain (non-sanitizer) build of the module: the library applications load."""

    path: Path
    #: What `make` printed (a test checks the build is free of warnings).
    make_output: str


@pytest.fixture(scope="session")
def pkcs11_module() -> Pkcs11Module:
    """`make -C pkcs11`, once per session. Built rather than taken from `up`'s summary: `up` names the
    module only if one was built before it ran, and in a source checkout it names this same file."""
    if shutil.which("make") is None or shutil.which("cc") is None:
        pytest.fail("building the PKCS#11 module needs make and a C compiler (apt-get install gcc make)")
    result = subprocess.run(["make", "-C", str(PKCS11_DIR)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    path = PKCS11_DIR / "build" / "libstrongroom-pkcs11.so"
    assert path.is_file(), f"make succeeded but built no {path}"
    return Pkcs11Module(path, result.stdout + result.stderr)


@dataclass(frozen=True)
class Pkcs11Target:
    """What an application needs to reach a cluster through the module: the library, the agent's
    socket, the token label, and crypto users to log in as."""

    cluster: LocalCluster
    module: Path
    socket: str
    token_label: str

    def crypto_user(self, name: str, password: str) -> str:
        """Create a crypto user (a name unique in the cluster); its PIN as applications give it."""
        admin = self.cluster.admin()
        admin.user_create(name, "crypto-user", password)
        admin.logout()
        return f"{name}:{password}"


def pkcs11_target(cluster: LocalCluster, module: Pkcs11Module) -> Pkcs11Target:
    summary = cluster.summary
    assert summary.get("agent_socket"), f"`strongroom up` reported no agent socket: {summary}"
    named = summary.get("pkcs11_module")
    # Applications are told the module through the env file `up` writes: it must be the one tested.
    assert named is None or Path(named).resolve() == module.path.resolve(), (named, module.path)
    return Pkcs11Target(cluster, module.path, summary["agent_socket"], summary["token_label"])


@pytest.fixture(scope="module")
def pkcs11(pkcs11_module: Pkcs11Module, shared_cluster: LocalCluster) -> Pkcs11Target:
    """The shared cluster as a PKCS#11 application sees it (tests add their own crypto users)."""
    return pkcs11_target(shared_cluster, pkcs11_module)
