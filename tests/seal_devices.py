"""Real devices for the seal tests: a software TPM, SoftHSMv2 tokens, a second cluster's KMS gateway.

:class:`SwTpm` runs ``swtpm socket --tpm2`` on two free loopback ports (server P, control P+1,
as libtss2-tcti-swtpm expects) with its state in its own directory: a new directory is a new
TPM (new owner seed), the same directory after a restart is the same TPM. :class:`SoftHsm`
makes a private SoftHSMv2 token directory with its own ``SOFTHSM2_CONF``; SoftHSMv2 reads
that variable at ``C_Initialize``, so a test switches tokens with :meth:`SoftHsm.activate`
(the seal provider finalizes the module after every use). :class:`KmsCluster` is a second
Strongroom cluster started with ``strongroom up --kms``: its gateway keeps the KEKs of ``kms`` seals.

Nothing here skips: CI installs swtpm, tpm2-tools and softhsm2, and a missing one fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SOFTHSM_MODULE = "/usr/lib/softhsm/libsofthsm2.so"
SO_PIN = "so-pin-1234"


def _port_pair() -> int:
    """A port P such that P and P+1 are free on 127.0.0.1 (swtpm's server and control ports)."""
    for _ in range(200):
        with socket.socket() as first:
            first.bind(("127.0.0.1", 0))
            port = first.getsockname()[1]
            if port >= 65535:
                continue
            with socket.socket() as second:
                try:
                    second.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
            return port
    raise RuntimeError("no two consecutive free ports on 127.0.0.1")


@dataclass
class SwTpm:
    """One software TPM 2.0: ``start()``, ``stop()``, ``tcti`` for the seal options."""

    state_dir: Path
    port: int = field(default_factory=_port_pair)
    process: subprocess.Popen[bytes] | None = None

    @property
    def tcti(self) -> str:
        return f"swtpm:host=127.0.0.1,port={self.port}"

    def start(self) -> SwTpm:
        assert self.process is None, "already running"
        self.state_dir.mkdir(parents=True, exist_ok=True)
        log = self.state_dir.parent / f"{self.state_dir.name}.log"
        self.process = subprocess.Popen(
            ["swtpm", "socket", "--tpm2", "--server", f"type=tcp,port={self.port},bindaddr=127.0.0.1",
             "--ctrl", f"type=tcp,port={self.port + 1},bindaddr=127.0.0.1",
             "--tpmstate", f"dir={self.state_dir}", "--flags", "startup-clear", "--log", f"file={log}"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while True:
            result = subprocess.run(["tpm2_getrandom", "-T", self.tcti, "--hex", "4"], capture_output=True,
                                    timeout=30, check=False)
            if result.returncode == 0:
                return self
            assert self.process.poll() is None, f"swtpm exited: {log.read_text(errors='replace')}"
            assert time.monotonic() < deadline, f"swtpm did not answer: {result.stderr.decode()}"
            time.sleep(0.05)

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def tool(self, *args: str) -> str:
        """Run a tpm2-tools command against this TPM (e.g. ``tool("tpm2_pcrextend", ...)``)."""
        result = subprocess.run([args[0], "-T", self.tcti, *args[1:]], capture_output=True, text=True, timeout=30,
                                check=False)
        assert result.returncode == 0, result.stderr
        return result.stdout

    def loaded_handles(self) -> list[str]:
        """Transient objects and sessions left in the TPM (none should stay after a seal operation)."""
        out = []
        for capability in ("handles-transient", "handles-loaded-session", "handles-saved-session"):
            out += [line.strip("- ").strip() for line in self.tool("tpm2_getcap", capability).splitlines()
                    if line.strip()]
        return out


@contextlib.contextmanager
def swtpm(state_dir: Path) -> Iterator[SwTpm]:
    tpm = SwTpm(state_dir).start()
    try:
        yield tpm
    finally:
        tpm.stop()


@dataclass
class SoftHsm:
    """A private SoftHSMv2 token directory: ``init_token(label, pin)``, ``env`` for processes."""

    home: Path

    def __post_init__(self) -> None:
        (self.home / "tokens").mkdir(parents=True, exist_ok=True)
        self.conf.write_text(f"directories.tokendir = {self.home / 'tokens'}\nobjectstore.backend = file\n"
                             "log.level = ERROR\nslots.removable = false\nslots.mechanisms = ALL\n"
                             "library.reset_on_fork = false\n")

    @property
    def conf(self) -> Path:
        return self.home / "softhsm2.conf"

    @property
    def env(self) -> dict[str, str]:
        return {"SOFTHSM2_CONF": str(self.conf)}

    def init_token(self, label: str, pin: str) -> None:
        result = subprocess.run(["softhsm2-util", "--init-token", "--free", "--label", label, "--so-pin", SO_PIN,
                                 "--pin", pin], capture_output=True, text=True, env={**os.environ, **self.env},
                                timeout=60, check=False)
        assert result.returncode == 0, result.stderr

    def pin_file(self, pin: str, name: str = "pin") -> Path:
        path = self.home / name
        path.write_text(pin + "\n")
        path.chmod(0o600)
        return path

    @contextlib.contextmanager
    def activate(self) -> Iterator[None]:
        """This token directory for PKCS#11 calls made in this process (SoftHSMv2 reads it at C_Initialize)."""
        old = os.environ.get("SOFTHSM2_CONF")
        os.environ["SOFTHSM2_CONF"] = str(self.conf)
        try:
            yield
        finally:
            if old is None:
                os.environ.pop("SOFTHSM2_CONF", None)
            else:
                os.environ["SOFTHSM2_CONF"] = old


@dataclass
class KmsCluster:
    """A second cluster whose KMS gateway keeps KEKs, and what `up --kms` printed about it."""

    cluster: Any  # tests.integration.conftest.LocalCluster
    secret_file: Path

    @property
    def info(self) -> dict[str, Any]:
        return self.cluster.summary

    @property
    def endpoint(self) -> str:
        return str(self.info["kms_endpoint"])

    @property
    def ca_bundle(self) -> str | None:
        return self.info.get("kms_ca_bundle")

    def client(self, endpoint: str | None = None, ca_bundle: str | None = None) -> Any:
        import boto3
        from botocore.config import Config

        return boto3.client("kms", endpoint_url=endpoint or self.endpoint, region_name=self.info["kms_region"],
                            aws_access_key_id=self.info["kms_access_key_id"],
                            aws_secret_access_key=self.info["kms_secret_access_key"],
                            verify=ca_bundle or self.ca_bundle or True,
                            config=Config(retries={"max_attempts": 1, "mode": "standard"}))

    def new_key(self) -> str:
        """A new symmetric KMS key; its ARN."""
        return str(self.client().create_key(Description="strongroom seal test")["KeyMetadata"]["Arn"])

    def options(self, key_id: str, **more: Any) -> dict[str, Any]:
        """The ``[seal]`` options of a kms seal with ``key_id`` (no secret: the secret's file)."""
        options = {"endpoint": self.endpoint, "region": self.info["kms_region"], "key_id": key_id,
                   "access_key_id": self.info["kms_access_key_id"], "secret_access_key_file": str(self.secret_file)}
        if self.ca_bundle:
            options["ca_bundle"] = self.ca_bundle
        return {**options, **more}

    def gateway(self, command: str) -> None:
        """``strongroom kms start|stop`` for this cluster."""
        result = self.cluster.run("kms", command, pin=self.cluster.admin_pin)
        assert result.returncode == 0, result.stdout + result.stderr


@contextlib.contextmanager
def kms_cluster(directory: Path) -> Iterator[KmsCluster]:
    from tests.integration.conftest import LocalCluster

    cluster = LocalCluster(directory / "kms-cluster", workers=1)
    result = cluster.run("up", "--workers", "1", "--kms")
    assert result.returncode == 0, result.stdout + result.stderr
    cluster.summary = json.loads(result.stdout)
    try:
        secret_file = directory / "kms-secret"
        secret_file.write_text(cluster.summary["kms_secret_access_key"] + "\n")
        secret_file.chmod(0o600)
        yield KmsCluster(cluster, secret_file)
    finally:
        cluster.down()
