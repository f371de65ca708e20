"""The Vault KV v2 endpoint over real HTTPS: the routes MariaDB and pg_tde call, their shapes, Vault-shaped
errors, token scoping (each scope attacked), key versions generated in the cluster, audit of every release."""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from strongroom.client import Client, ClientError
from strongroom.errors import CKR
from strongroom.vaultkv.config import VaultKvConfig
from strongroom.vaultkv.local import free_port
from tests.integration.conftest import LocalCluster
from tests.integration.vaultkv.conftest import VaultEnv

MOUNT = "secret"  # the local token's mount (`up --vault-kv`)
STRONGROOM = [sys.executable, "-m", "strongroom"]


def test_up_prints_the_endpoint_and_a_token_and_keeps_them(vault: VaultEnv) -> None:
    summary = vault.cluster.summary
    assert summary["vault_kv_url"].startswith("https://127.0.0.1:")
    assert summary["vault_kv_token"].startswith("hvs.") and summary["vault_kv_mount"] == MOUNT
    assert summary["vault_kv_ca_bundle"] == summary["ca_cert"]
    again = vault.cluster.run("up", "--workers", "2")  # without --vault-kv: DIR was set up for it
    assert again.returncode == 0, again.stderr
    repeated = json.loads(again.stdout)
    assert repeated["vault_kv_url"] == summary["vault_kv_url"]
    assert repeated["vault_kv_token"] == summary["vault_kv_token"]
    # The token is written nowhere but DIR/vaultkv/token.json (0600): not in the env file.
    assert summary["vault_kv_token"] not in (vault.cluster.dir / "strongroom.env").read_text()
    assert (vault.cluster.dir / "vaultkv" / "token.json").stat().st_mode & 0o077 == 0


def test_mount_and_tune_answer_kv_version_2_as_the_clients_parse_them(vault: VaultEnv) -> None:
    tune = vault.get(f"/v1/sys/mounts/{MOUNT}/tune", vault.token)
    assert tune.status_code == 200 and tune.json()["options"]["version"] == "2"  # MariaDB reads options.version
    mount = vault.get(f"/v1/sys/mounts/{MOUNT}", vault.token).json()
    assert mount["data"]["type"] == "kv" and mount["data"]["options"]["version"] == "2"  # pg_tde reads data.*
    assert vault.get(f"/v1/sys/mounts/{MOUNT}/tune", None).status_code == 403


def test_versions_are_generated_in_the_cluster_and_read_back(vault: VaultEnv) -> None:
    token = vault.token
    assert vault.get(f"/v1/{MOUNT}/data/gen", token).json() == {"errors": []}  # 404: no key yet
    first = vault.put(MOUNT, "gen", token)
    assert first.status_code == 200 and first.json()["data"]["version"] == 1
    second = vault.put(MOUNT, "gen", token)
    assert second.json()["data"]["version"] == 2
    latest, version = vault.key(MOUNT, "gen", token)
    old, old_version = vault.key(MOUNT, "gen", token, version=1)
    assert (version, old_version) == (2, 1) and len(latest) == len(old) == 32 and latest != old
    reply = vault.get(f"/v1/{MOUNT}/data/gen", token).json()["data"]
    assert base64.b64decode(reply["data"]["key"]) == bytes.fromhex(reply["data"]["data"])  # pg_tde's and MariaDB's
    assert reply["metadata"]["destroyed"] is False and reply["metadata"]["created_time"].endswith("Z")
    assert vault.get(f"/v1/{MOUNT}/data/gen?version=3", token).status_code == 404
    # The size is chosen by the first version and kept by the next ones.
    assert vault.put(MOUNT, "small", token, {"bits": "128"}).status_code == 200
    assert vault.put(MOUNT, "small", token).status_code == 200
    assert len(vault.key(MOUNT, "small", token)[0]) == 16 and len(vault.key(MOUNT, "small", token, 1)[0]) == 16


def test_a_write_carrying_key_material_is_refused(vault: VaultEnv) -> None:
    chosen = "00" * 32
    for data in ({"data": chosen}, {"key": base64.b64encode(bytes(32)).decode()}):
        reply = vault.put(MOUNT, "chosen", vault.token, data)
        assert reply.status_code == 400 and "carries no key material" in reply.json()["errors"][0]
    assert vault.get(f"/v1/{MOUNT}/data/chosen", vault.token).status_code == 404  # nothing was stored


def test_check_and_set(vault: VaultEnv) -> None:
    assert vault.put(MOUNT, "cas", vault.token, options={"cas": 1}).status_code == 400  # the key does not exist
    assert vault.put(MOUNT, "cas", vault.token, options={"cas": 0}).json()["data"]["version"] == 1
    refused = vault.put(MOUNT, "cas", vault.token, options={"cas": 0})
    assert refused.status_code == 400 and "check-and-set" in refused.json()["errors"][0]
    assert vault.put(MOUNT, "cas", vault.token, options={"cas": 1}).json()["data"]["version"] == 2


def test_listing_names_only_what_the_token_reaches(vault: VaultEnv) -> None:
    writer = vault.token_create("listing", "write")
    assert vault.get("/v1/listing/metadata/?list=true", writer["token"]).status_code == 404  # empty: pg_tde's 404
    for name in ("a1", "a2", "b1"):
        assert vault.put("listing", name, writer["token"]).status_code == 200
    listed = vault.get("/v1/listing/metadata/?list=true", writer["token"]).json()["data"]["keys"]
    assert listed == ["a1", "a2", "b1"]
    narrow = vault.token_create("listing", "read", "a?")
    assert vault.get("/v1/listing/metadata/?list=true", narrow["token"]).json()["data"]["keys"] == ["a1", "a2"]


def test_every_scope_of_a_token_holds(vault: VaultEnv) -> None:
    """Each attack first succeeds with the token that has the right, then fails with the one that lacks it."""
    writer = vault.token_create("scoped", "write", "db-*", display_name="scoped writer")
    reader = vault.token_create("scoped", "read", "db-1", display_name="scoped reader")
    assert vault.put("scoped", "db-1", writer["token"]).status_code == 200
    assert vault.put("scoped", "other", writer["token"]).status_code == 403  # a name outside its patterns
    assert vault.put("scoped", "db-1", reader["token"]).status_code == 403   # a read token writes nothing
    assert vault.key("scoped", "db-1", reader["token"])[1] == 1
    assert vault.put("scoped", "db-2", writer["token"]).status_code == 200
    assert vault.get("/v1/scoped/data/db-2", reader["token"]).status_code == 403  # not among its names
    assert vault.get("/v1/scoped/data/db-1", vault.token).status_code == 403       # the `secret` token: another mount
    assert vault.get(f"/v1/{MOUNT}/data/gen", reader["token"]).status_code == 403
    forged = reader["token"][:-4] + ("AAAA" if not reader["token"].endswith("AAAA") else "BBBB")
    assert vault.get("/v1/scoped/data/db-1", forged).status_code == 403            # right accessor, wrong secret
    assert vault.get("/v1/scoped/data/db-1", None).status_code == 403
    bearer = vault.http("GET", "/v1/scoped/data/db-1", headers={"Authorization": f"Bearer {reader['token']}"})
    assert bearer.status_code == 200
    for reply in (vault.get("/v1/scoped/data/db-2", reader["token"]), vault.get("/v1/scoped/data/db-1", forged)):
        assert reply.json() == {"errors": ["permission denied"]}  # Vault's answer: never which part was wrong
    outcomes = {r["outcome"] for r in vault.audit_events("vaultkv.key.release", accessor=reader["accessor"])}
    assert outcomes == {"ok", "CKR_ACTION_PROHIBITED"}  # the releases and the refusals, each with its token


def test_expired_and_revoked_tokens_are_refused(vault: VaultEnv) -> None:
    writer = vault.token_create("mortal", "write")
    assert vault.put("mortal", "k", writer["token"]).status_code == 200
    short = vault.token_create("mortal", "read", ttl="1s")
    # The CLI shows the expiry to the second (ISO-8601, truncated): wait until a second after it has passed.
    expires = dt.datetime.fromisoformat(short["expires"].replace("Z", "+00:00")).timestamp() + 1
    time.sleep(max(0.0, expires - time.time()) + 0.5)
    assert vault.get("/v1/mortal/data/k", short["token"]).status_code == 403  # past its expiry (the node's clock)
    revoked = vault.token_create("mortal", "read")
    assert vault.key("mortal", "k", revoked["token"])[1] == 1
    vault.revoke(revoked["accessor"])
    assert vault.get("/v1/mortal/data/k", revoked["token"]).status_code == 403
    code, listed = vault.cluster.cli("vault-kv", "token", "list", pin=vault.cluster.admin_pin)
    assert code == 0
    accessors = [t["accessor"] for t in listed["data"]["tokens"]]
    assert short["accessor"] in accessors and revoked["accessor"] not in accessors
    assert all("token" not in t and "digest" not in t for t in listed["data"]["tokens"])


def test_every_release_is_audited_with_who_which_key_and_version(vault: VaultEnv) -> None:
    reader = vault.token_create(MOUNT, "read", "gen", display_name="audited reader")
    vault.key(MOUNT, "gen", reader["token"], version=1)
    vault.key(MOUNT, "gen", reader["token"])
    released = vault.audit_events("vaultkv.key.release", accessor=reader["accessor"])
    assert [(r["outcome"], r["details"]["version"]) for r in released] == [("ok", 1), ("ok", 2)]
    record = released[0]
    assert record["actor"] == "vaultkv" and record["details"]["token_name"] == "audited reader"
    assert (record["details"]["mount"], record["details"]["name"], record["details"]["source"]) == \
        (MOUNT, "gen", "127.0.0.1")
    assert all(reader["token"][20:] not in json.dumps(r) for r in vault.audit())  # the secret is never logged
    assert vault.audit_events("vaultkv.key.write", name="gen", version=2)


def test_vault_shaped_errors_and_limits(vault: VaultEnv) -> None:
    token = vault.token
    unknown = vault.get("/v1/sys/policies/acl", token)
    assert unknown.status_code == 404 and isinstance(unknown.json()["errors"], list)
    assert vault.http("DELETE", f"/v1/{MOUNT}/data/gen", token=token).json() == {"errors": []}
    assert vault.http("DELETE", f"/v1/{MOUNT}/data/gen", token=token).status_code == 405
    bad_json = vault.http("POST", f"/v1/{MOUNT}/data/x", token=token, content=b"{not json")
    assert bad_json.status_code == 400 and bad_json.json()["errors"]
    deep = vault.http("POST", f"/v1/{MOUNT}/data/x", token=token, content=b'{"data":' * 20 + b"{}" + b"}" * 20)
    assert deep.status_code == 400
    big = vault.http("POST", f"/v1/{MOUNT}/data/x", token=token, content=b" " * (64 * 1024))
    assert big.status_code == 413 and big.json()["errors"]
    assert vault.get(f"/v1/{MOUNT}/data/gen?version=one", token).status_code == 400
    assert vault.http("GET", f"/v1/{MOUNT}/data/gen", token=token,
                      headers={"X-Vault-Namespace": "team"}).status_code == 400
    assert vault.get(f"/v1/{MOUNT}/data/bad%2Fname", token).status_code == 400
    assert vault.get(f"/v1/{MOUNT}/data/gen", "x" * 300).status_code == 403
    assert vault.put(MOUNT, "x", token, {"bits": "512"}).status_code == 400
    assert vault.put(MOUNT, "x", token, options={"cas": "1"}).status_code == 400


def test_only_tls_with_the_clusters_ca(vault: VaultEnv) -> None:
    with pytest.raises(httpx.ConnectError):  # the system trust store does not know the cluster's CA
        httpx.get(vault.url + f"/v1/sys/mounts/{MOUNT}/tune", headers={"X-Vault-Token": vault.token}, timeout=10)
    host, port = vault.url.removeprefix("https://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as plain:  # plain HTTP gets no answer in clear
        plain.sendall(b"GET /v1/sys/mounts/secret/tune HTTP/1.1\r\nHost: x\r\nX-Vault-Token: " +
                      vault.token.encode() + b"\r\n\r\n")
        try:
            answer = plain.recv(4096)
        except OSError:
            answer = b""
    assert b"version" not in answer


def test_refused_tokens_are_rate_limited(vault: VaultEnv, tmp_path: Path) -> None:
    """A second service whose bucket hardly refills (0.01/s, burst 5): the sixth refused token from one address
    gets 429 without reaching the node, whatever the speed of the machine."""
    def slow_refill(config: VaultKvConfig) -> None:
        config.vault_kv.auth_failures_per_second, config.vault_kv.auth_failure_burst = 0.01, 5

    with second_service(vault, tmp_path, slow_refill) as (other, _):
        assert other.key(MOUNT, "gen", vault.token)[1] == 2  # accepted once: not held back later
        flood = "hvs." + "F" * 16 + "x" * 32  # a well-formed token no one made
        before = len(vault.audit_events("vaultkv.key.release", accessor="F" * 16))
        statuses = [other.get(f"/v1/{MOUNT}/data/gen", flood).status_code for _ in range(8)]
        assert statuses == [403] * 5 + [429] * 3, statuses
        # Only the five the bucket let through reached the node (and its audit log).
        assert len(vault.audit_events("vaultkv.key.release", accessor="F" * 16)) == before + 5
        throttled = other.get(f"/v1/{MOUNT}/data/gen", "hvs." + "F" * 16 + "y" * 32)
        assert throttled.json()["errors"][0].startswith("rate limit quota exceeded")
        # A token the node accepted lately, sent from the same address, is not held back by the flood.
        assert other.key(MOUNT, "gen", vault.token)[1] == 2


def test_the_service_user_reaches_no_key_without_a_token(vault: VaultEnv) -> None:
    """The service's own password is not enough: the node wants a token made for it, on every request. Another
    crypto user holding a valid token gets nothing either (the token names its service user)."""
    password = (vault.cluster.dir / "vaultkv" / "vaultkv.password").read_text().strip()
    with Client.from_dir(vault.cluster.dir, timeout=30) as service:
        service.login("vaultkv", password)
        with pytest.raises(ClientError) as refused:
            service.call("vaultkv.key.read", token="hvs." + "A" * 48, mount=MOUNT, name="gen")
        assert refused.value.code == CKR.ACTION_PROHIBITED
        assert service.call("vaultkv.key.read", token=vault.token, mount=MOUNT, name="gen")["version"] == 2
    other = vault.cluster.crypto_user("mallory", "password1")
    with pytest.raises(ClientError) as stolen:
        other.call("vaultkv.key.read", token=vault.token, mount=MOUNT, name="gen")
    assert stolen.value.code == CKR.ACTION_PROHIBITED
    admin = vault.cluster.admin()
    with pytest.raises(ClientError) as role:
        admin.call("vaultkv.key.read", token=vault.token, mount=MOUNT, name="gen")
    assert role.value.code in (CKR.ACTION_PROHIBITED, CKR.USER_TYPE_INVALID)
    with pytest.raises(ClientError):  # a token may name only an existing crypto user
        admin.call("vaultkv.token.create", mount=MOUNT, policy="read", service_user="admin")


def test_stop_and_start_keep_port_tokens_and_keys(vault: VaultEnv) -> None:
    before = vault.key(MOUNT, "gen", vault.token)
    code, stopped = vault.cluster.cli("vault-kv", "stop")
    assert code == 0 and stopped["data"]["stopped"]
    with pytest.raises(httpx.ConnectError):
        vault.get(f"/v1/{MOUNT}/data/gen", vault.token)
    code, started = vault.cluster.cli("vault-kv", "start", pin=vault.cluster.admin_pin)
    assert code == 0 and started["data"]["vault_kv_url"] == vault.url
    assert vault.key(MOUNT, "gen", vault.token) == before


def test_down_stops_the_service(tmp_path: Path) -> None:
    cluster = LocalCluster(tmp_path / "cluster", up_args=("--vault-kv",))
    cluster.up()
    try:
        pid = cluster.summary["vault_kv_pid"]
    finally:
        stopped = cluster.down()["stopped"]
    assert {"id": "vault-kv", "pid": pid} in stopped


def test_through_the_agent_socket(vault: VaultEnv, tmp_path: Path) -> None:
    """An application host's path: the CLI without --dir (the agent relays an admin's token commands), and a
    second service whose configuration names the agent's socket instead of a client profile."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STRONGROOM_")}
    env.update(STRONGROOM_AGENT_SOCKET=vault.cluster.summary["agent_socket"], STRONGROOM_PIN=vault.cluster.admin_pin)
    made = subprocess.run([*STRONGROOM, "vault-kv", "token", "create", "--mount", MOUNT, "--policy", "read",
                           "--ttl", "10m", "--name", "gen", "--json"], capture_output=True, text=True, env=env,
                          timeout=60)
    assert made.returncode == 0, made.stderr
    token = json.loads(made.stdout)["data"]["token"]

    def through_agent(config: VaultKvConfig) -> None:
        config.cluster.profile, config.cluster.agent_socket = None, vault.cluster.summary["agent_socket"]

    with second_service(vault, tmp_path, through_agent) as (other, _):
        assert other.key(MOUNT, "gen", token)[1] == 2


@contextlib.contextmanager
def second_service(vault: VaultEnv, tmp_path: Path, configure: Callable[[VaultKvConfig], None]
                   ) -> Iterator[tuple[VaultEnv, subprocess.Popen[bytes]]]:
    """Another `strongroom vault-kv serve` on the same cluster: DIR/vaultkv.toml as ``configure`` changes it."""
    config = VaultKvConfig.load(vault.cluster.dir / "vaultkv.toml")
    config.vault_kv.port = free_port()
    configure(config)
    path = vault.cluster.dir / f"vaultkv-{tmp_path.name}.toml"
    config.write(path)
    log = tmp_path / "service.log"
    with open(log, "wb") as output:
        service = subprocess.Popen([*STRONGROOM, "vault-kv", "serve", "--config", str(path)], stdout=output,
                                   stderr=output)
    other = VaultEnv(vault.cluster, url_override=f"https://127.0.0.1:{config.vault_kv.port}")
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                other.get(f"/v1/sys/mounts/{MOUNT}/tune", None)
                break
            except httpx.ConnectError:
                assert service.poll() is None and time.monotonic() < deadline, log.read_text()
                time.sleep(0.2)
        yield other, service
    finally:
        service.terminate()
        service.wait(15)
