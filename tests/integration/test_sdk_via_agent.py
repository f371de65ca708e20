"""The SDK and the CLI reach the cluster through the host's agent by default."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from strongroom.client import Client, ClientError
from strongroom.constants import CKA, CKM
from strongroom.errors import CKR

from .conftest import LocalCluster


def test_sdk_through_the_agent(shared_cluster: LocalCluster) -> None:
    shared_cluster.crypto_user("agent_sdk")
    with Client.from_agent(shared_cluster.summary["agent_socket"]) as client:
        assert client.cluster_status()["state"] == "active"
        client.login("agent_sdk", "password1")
        key = client.generate_key(CKM.AES_KEY_GEN, {CKA.TOKEN: True, CKA.VALUE_LEN: 32, CKA.LABEL: b"via-agent"})
        sealed = client.encrypt(key, CKM.AES_GCM, b"hello", {"iv": None, "aad": b"", "tag_bits": 128})
        params = {"iv": sealed["iv"], "aad": b"", "tag_bits": 128}
        assert client.decrypt(key, CKM.AES_GCM, sealed["data"], params) == b"hello"
        # Many requests in flight through the relay.
        conn = client.connection
        futures = [conn.submit("random.generate", {"length": 16}, client.session) for _ in range(200)]
        assert len({conn.wait(f).body["random"] for f in futures}) == 200
        # The operator's act of initializing a cluster is not reachable through the agent.
        with pytest.raises(ClientError) as failure:
            client.call("cluster.initialize", cluster_name="x")
        assert failure.value.code == CKR.ACTION_PROHIBITED
    with pytest.raises(ClientError) as failure:
        Client.from_agent(str(shared_cluster.dir / "no-such.sock")).node_status()
    assert failure.value.code == CKR.DEVICE_REMOVED


def test_cli_uses_the_agent_from_the_env_file(shared_cluster: LocalCluster) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STRONGROOM_")}
    env["STRONGROOM_AGENT_SOCKET"] = shared_cluster.summary["agent_socket"]
    env["STRONGROOM_PIN"] = shared_cluster.admin_pin

    def cli(*args: str, pin: str | None = None) -> tuple[int, dict]:
        run_env = dict(env, **({"STRONGROOM_PIN": pin} if pin else {}))
        result = subprocess.run([sys.executable, "-m", "strongroom", *args, "--json"], capture_output=True,
                                text=True, env=run_env, timeout=60)
        return result.returncode, json.loads(result.stdout)

    rc, created = cli("user", "create", "--username", "agent_cli", "--role", "crypto-user", "--password",
                      "password1")
    assert rc == 0 and created["data"]["username"] == "agent_cli"
    rc, generated = cli("key", "generate-symmetric", "aes", "--label", "agent-cli-key", "--key-length-bytes", "16",
                        pin="agent_cli:password1")
    assert rc == 0, generated
    rc, listed = cli("key", "list", "--filter", "attr.label=agent-cli-key", pin="agent_cli:password1")
    assert rc == 0 and len(listed["data"]["matched_keys"]) == 1
