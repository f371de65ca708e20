"""KMS fixtures: one real cluster (`strongroom up`) and one real gateway process per test module.

Clients are the real boto3 / botocore / AWS CLI; nothing is mocked. The gateway's deletion
"day" is stretched to an hour here so that keys scheduled for deletion stay pending while a
module runs; the deletion test starts a second gateway with a short day.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

boto3 = pytest.importorskip("boto3")
from botocore.config import Config  # noqa: E402

from strongroom.kms.local import start_gateway, stop_gateway  # noqa: E402
from tests.integration.conftest import LocalCluster  # noqa: E402

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

    def client(self, access_key_id: str | None = None, secret: str | None = None, region: str = REGION) -> Any:
        return boto3.client(
            "kms", endpoint_url=self.endpoint, region_name=region,
            aws_access_key_id=access_key_id or self.access_key_id,
            aws_secret_access_key=secret or self.secret,
            config=Config(retries={"max_attempts": 1, "mode": "standard"}),
        )

    def arn(self, key_id: str) -> str:
        return f"arn:aws:kms:{REGION}:{ACCOUNT}:key/{key_id}"

    def aws(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        env.update(AWS_ACCESS_KEY_ID=self.access_key_id, AWS_SECRET_ACCESS_KEY=self.secret,
                   AWS_DEFAULT_REGION=REGION, AWS_CONFIG_FILE="/dev/null", AWS_SHARED_CREDENTIALS_FILE="/dev/null",
                   AWS_MAX_ATTEMPTS="1")
        result = subprocess.run([str(AWS_CLI), "kms", *args, "--endpoint-url", self.endpoint, "--output", "json"],
                                capture_output=True, text=True, env=env, timeout=60)
        if check:
            assert result.returncode == 0, result.stderr
        return result

    def aws_json(self, *args: str) -> Any:
        return json.loads(self.aws(*args).stdout or "null")


@pytest.fixture(scope="module")
def kms(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KmsEnv]:
    cluster = LocalCluster(tmp_path_factory.mktemp("kms") / "cluster")
    cluster.up()
    try:
        info = start_gateway(cluster.dir, day_seconds=3600.0, check_seconds=1.0)
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
