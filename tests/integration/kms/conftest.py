"""KMS fixtures: one real cluster (`strongroom up`) and one real gateway process per test module.

Clients are the real boto3 / botocore / AWS CLI; nothing is mocked. The gateway's deletion
"day" is stretched to an hour here so that keys scheduled for deletion stay pending while a
module runs; the deletion test starts a second gateway with a short day.
"""

from __future__ import annotations

import contextlib
import json
import os
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from strongroom.kms.config import GatewayConfig
from strongroom.kms.local import setup, write_config
from strongroom.local.gateway import start_gateway, stop_gateway
from strongroom.ports import free_port
from tests.integration.conftest import LocalCluster

REGION = "us-east-1"
ACCOUNT = "111122223333"
AWS_CLI = Path(sys.executable).parent / "aws"


@dataclass
class KmsEnv:
    cluster: LocalCluster
    info: dict[str, Any]

    @property
    def endpoint(self) -> str:
        return self.info["kms_endpoint"]

    @property
    def access_key_id(self) -> str:
        return self.info["kms_access_key_id"]

    @property
    def secret(self) -> str:
        return self.info["kms_secret_access_key"]

    @property
    def ca_bundle(self) -> str | None:
        """The CA file that verifies the gateway's HTTPS certificate (None: plain HTTP)."""
        return self.info.get("kms_ca_bundle")

    @property
    def verify(self) -> str | bool:
        """What boto3 takes (``verify=``) to check the gateway's certificate."""
        return self.ca_bundle or True

    @property
    def tls(self) -> ssl.SSLContext | bool:
        """What httpx takes (``verify=``) to check the gateway's certificate."""
        return ssl.create_default_context(cafile=self.ca_bundle) if self.ca_bundle else True

    def client(self, access_key_id: str | None = None, secret: str | None = None, region: str = REGION) -> Any:
        return boto3.client(
            "kms", endpoint_url=self.endpoint, region_name=region,
            aws_access_key_id=access_key_id or self.access_key_id,
            aws_secret_access_key=secret or self.secret,
            config=Config(retries={"max_attempts": 1, "mode": "standard"}),
            verify=self.verify,
        )

    def arn(self, key_id: str) -> str:
        return f"arn:aws:kms:{REGION}:{ACCOUNT}:key/{key_id}"

    def aws(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        env.update(AWS_ACCESS_KEY_ID=self.access_key_id, AWS_SECRET_ACCESS_KEY=self.secret,
                   AWS_DEFAULT_REGION=REGION, AWS_CONFIG_FILE="/dev/null", AWS_SHARED_CREDENTIALS_FILE="/dev/null",
                   AWS_MAX_ATTEMPTS="1")
        tls = ["--ca-bundle", self.ca_bundle] if self.ca_bundle else []
        result = subprocess.run([str(AWS_CLI), "kms", *args, "--endpoint-url", self.endpoint, *tls, "--output", "json"],
                                capture_output=True, text=True, env=env, timeout=60)
        if check:
            assert result.returncode == 0, result.stderr
        return result

    def aws_json(self, *args: str) -> Any:
        return json.loads(self.aws(*args).stdout or "null")


def admin_of(cluster: LocalCluster) -> tuple[str, str]:
    """The first admin's credentials, as `up` printed them (set-up takes them; no file holds them)."""
    return cluster.summary["admin_user"], cluster.summary["admin_password"]


@pytest.fixture(scope="module")
def kms(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KmsEnv]:
    cluster = LocalCluster(tmp_path_factory.mktemp("kms") / "cluster")
    cluster.up()
    try:
        info = start_gateway(cluster.dir, day_seconds=3600.0, check_seconds=1.0, admin=admin_of(cluster))
        yield KmsEnv(cluster, info)
    finally:
        stop_gateway(cluster.dir)
        cluster.down()


@pytest.fixture(scope="module")
def client(kms: KmsEnv) -> Any:
    return kms.client()


def error_of(excinfo: Any) -> tuple[str, str]:
    """(code, message) of a botocore ClientError."""
    error = excinfo.value.response["Error"]
    return error["Code"], error.get("Message", "")


@contextlib.contextmanager
def second_gateway(kms: KmsEnv, name: str, configure: Callable[[GatewayConfig], None] | None = None,
                   extra_args: tuple[str, ...] = ()) -> Iterator[KmsEnv]:
    """Another gateway process on the same cluster (its own port, limits and caches): DIR/kms.toml as
    ``configure`` changes it, run with ``strongroom kms serve --config DIR/<name>.toml [extra_args]``."""
    root = kms.cluster.dir
    config = GatewayConfig.load(root / "kms.toml")
    config.kms.port = free_port()
    if configure is not None:
        configure(config)
    config.write(root / f"{name}.toml")
    with open(root / f"{name}.log", "ab") as log:
        process = subprocess.Popen([sys.executable, "-m", "strongroom", "kms", "serve", "--config",
                                    str(root / f"{name}.toml"), *extra_args], stdout=log, stderr=subprocess.STDOUT)
    try:
        https = config.kms.tls_cert is not None and "--insecure-http" not in extra_args
        scheme = "https" if https else "http"
        other = KmsEnv(kms.cluster, dict(kms.info, kms_endpoint=f"{scheme}://127.0.0.1:{config.kms.port}",
                                         kms_ca_bundle=kms.ca_bundle if https else None, kms_pid=process.pid,
                                         kms_log=str(root / f"{name}.log")))
        deadline = time.monotonic() + 30
        while True:
            try:
                other.client().list_keys(Limit=1)
                break
            except Exception:  # noqa: BLE001 - not up yet (refused, reset, TLS): poll until the deadline
                assert time.monotonic() < deadline and process.poll() is None, f"the gateway {name} did not start"
                time.sleep(0.1)
        yield other
    finally:
        process.terminate()
        process.wait(10)


@contextlib.contextmanager
def short_day_gateway(kms: KmsEnv, name: str, day_seconds: float, check_seconds: float = 0.2) -> Iterator[KmsEnv]:
    """A second gateway process on the same cluster whose deletion and rotation "day" lasts ``day_seconds``."""
    def configure(config: GatewayConfig) -> None:
        config.deletion.day_seconds = day_seconds
        config.deletion.check_seconds = check_seconds

    with second_gateway(kms, name, configure) as fast:
        yield fast


def wait_deleted(client: Any, key_id: str, timeout: float = 20) -> None:
    """Until DescribeKey answers NotFoundException (and nothing else)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            client.describe_key(KeyId=key_id)
        except ClientError as exc:
            assert exc.response["Error"]["Code"] == "NotFoundException"
            return
        assert time.monotonic() < deadline, "the key was not deleted"
        time.sleep(0.2)


#: The gateway's own service user (`up --kms`'s default): custom key stores log in as `kmsuser`.
KEY_STORE_GATEWAY_USER = "kmsgateway"


def gateway_login(cluster: LocalCluster) -> tuple[str, str]:
    """The gateway's service user and its password, as DIR/kms.toml names them."""
    from strongroom.kms.local import users_of

    user, password_file, _ = users_of(cluster.dir)
    return user, password_file.read_text().strip()


@contextlib.contextmanager
def key_store_cluster(directory: Path, kmsuser_password: str, **config: Any) -> Iterator[KmsEnv]:
    """A cluster whose gateway runs as KEY_STORE_GATEWAY_USER, and whose `kmsuser` (the key stores' crypto
    user `up --kms` makes) an admin gives a password the test knows."""
    cluster = LocalCluster(directory)
    cluster.up()
    try:
        setup(cluster.dir, service_user=KEY_STORE_GATEWAY_USER, admin=admin_of(cluster))
        gateway_config = write_config(cluster.dir, **config)
        gateway_config.cluster.username = KEY_STORE_GATEWAY_USER
        gateway_config.write(cluster.dir / "kms.toml")
        admin = cluster.admin()
        admin.user_change_password("kmsuser", kmsuser_password)
        admin.logout()
        yield KmsEnv(cluster, start_gateway(cluster.dir, admin=admin_of(cluster)))
    finally:
        stop_gateway(cluster.dir)
        cluster.down()


def stop_nodes_and_agent(cluster: LocalCluster) -> None:
    """Everything of the cluster but the gateway (`down` would stop the gateway too)."""
    from strongroom.local.agent import stop_agent
    from strongroom.local.layout import Layout
    from strongroom.local.nodes import stop_node

    layout = Layout(cluster.dir)
    stop_agent(layout.root)
    for node_id in layout.node_ids():
        stop_node(layout, node_id)
