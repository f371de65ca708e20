"""`strongroom up --kms`: the gateway comes with the local cluster, its JSON is enough for boto3."""

from __future__ import annotations

import os
import time
from pathlib import Path

import boto3
import pytest

from tests.integration.conftest import LocalCluster

pytestmark = pytest.mark.slow


def test_up_with_kms_prints_a_ready_endpoint_and_down_stops_it(tmp_path: Path) -> None:
    local = LocalCluster(tmp_path / "c", workers=1)
    result = local.run("up", "--workers", "1", "--kms")
    assert result.returncode == 0, result.stderr
    import json

    summary = json.loads(result.stdout)
    try:
        for key in ("kms_endpoint", "kms_region", "kms_access_key_id", "kms_secret_access_key", "kms_ca_bundle"):
            assert summary[key], key
        # HTTPS by default, with a certificate of the cluster's CA (the bundle `up` names).
        assert summary["kms_endpoint"].startswith("https://127.0.0.1:")
        assert summary["kms_ca_bundle"] == summary["ca_cert"]
        kms = boto3.client("kms", endpoint_url=summary["kms_endpoint"], region_name=summary["kms_region"],
                           aws_access_key_id=summary["kms_access_key_id"],
                           aws_secret_access_key=summary["kms_secret_access_key"], verify=summary["kms_ca_bundle"])
        key_id = kms.create_key(Description="from up --kms")["KeyMetadata"]["KeyId"]
        blob = kms.encrypt(KeyId=key_id, Plaintext=b"hello")["CiphertextBlob"]
        assert kms.decrypt(CiphertextBlob=blob)["Plaintext"] == b"hello"
        rc, status = local.cli("status")
        assert rc == 0 and status["data"]["kms"]["health"] == "running", status
        assert f"STRONGROOM_KMS_ENDPOINT={summary['kms_endpoint']}" in Path(summary["env_file"]).read_text()
        # A plain `up` later keeps the gateway (same endpoint, same key).
        again = json.loads(local.run("up", "--workers", "1").stdout)
        assert again["kms_endpoint"] == summary["kms_endpoint"]
    finally:
        stopped = local.down()
    assert "kms" in [entry["id"] for entry in stopped["stopped"]]
    pid = summary["kms_pid"]
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        raise AssertionError("the gateway outlived `down`")
