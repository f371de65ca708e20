"""MFA (CloudHSM's token-sign strategy) against real node processes: registration, a login that needs a
signature over a fresh challenge of the node (refused without it, with another key's, or replayed), the
CLI's interactive ``login ... mfa-token-sign`` signed with openssl as CloudHSM's documentation does it, one-shot
commands with STRONGROOM_MFA_KEY, an admin's change of another user's MFA under the user service's quorum,
and PKCS#11 applications: an MFA user cannot log in through the agent, service users without MFA still can."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from strongroom.client import Client, ClientError
from strongroom.client.calls import AsyncClient
from strongroom.errors import CKR
from strongroom.pki import approvals
from strongroom.pki.approvals import TokenFile

from .approvers import PASSWORD, first_admin, new_key, openssl, pem, register, token_file
from .conftest import STRONGROOM, LocalCluster, Pkcs11Module, pkcs11_target


def refused(call: Any, *args: Any, **kwargs: Any) -> ClientError:
    with pytest.raises(ClientError) as info:
        call(*args, **kwargs)
    return info.value


def enable_mfa(client: Client, username: str, key: approvals.PrivateKey, **options: Any) -> dict[str, Any]:
    """``user change-mfa token-sign`` through the SDK: a registration token signed by the MFA key."""
    entry = token_file(client.quorum_generate("registration")).tokens[0]
    assert entry.approval_data is not None
    return client.mfa_register(username, approvals.public_pem(key.public_key()), entry.approval_data,
                               approvals.sign_token(key, entry.unsigned), **options)


def signed(challenge_file: dict[str, Any], key: approvals.PrivateKey) -> list[dict[str, bytes]]:
    tokens = TokenFile.loads(json.dumps(challenge_file)).tokens
    return [{"token": t.unsigned, "signature": approvals.sign_token(key, t.unsigned)} for t in tokens]


def audit(cluster: LocalCluster) -> list[dict[str, Any]]:
    log = cluster.dir / "nodes" / "node1" / "audit.log"
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]


def test_mfa_login_needs_a_fresh_signed_challenge(cluster: LocalCluster) -> None:
    admin = cluster.admin()
    admin.user_create("carol", "crypto-user", PASSWORD)
    carol = cluster.client()
    carol.login("carol", PASSWORD)
    key = new_key("rsa")
    result = enable_mfa(carol, "carol", key)
    assert result["mfa"] == [{"strategy": "token-sign", "status": "enabled"}]
    carol.logout()

    # The password alone: refused, and the reason says what to do.
    error = refused(cluster.client().login, "carol", PASSWORD)
    assert error.code == CKR.FUNCTION_REJECTED and "multi-factor" in error.message
    # The challenge needs the right password (and counts a wrong one as a failed login).
    assert refused(cluster.client().mfa_challenge, "carol", "wrong-password").code == CKR.PIN_INCORRECT
    # A signature by another key.
    client = cluster.client()
    challenge = client.mfa_challenge("carol", PASSWORD)["file"]
    assert [t["node"] for t in challenge["tokens"]] == ["node1"]  # one token per node of the cluster
    error = refused(client.login, "carol", PASSWORD, mfa=signed(challenge, new_key("rsa")))
    assert error.code == CKR.FUNCTION_REJECTED and "does not verify" in error.message
    # That challenge is spent now, even with the right signature.
    error = refused(client.login, "carol", PASSWORD, mfa=signed(challenge, key))
    assert "no unused challenge" in error.message
    # A fresh one, signed with the registered key.
    challenge = client.mfa_challenge("carol", PASSWORD)["file"]
    answer = signed(challenge, key)
    assert client.login("carol", PASSWORD, mfa=answer)["username"] == "carol"
    assert client.call("session.info")["username"] == "carol"
    # Replayed on another connection: refused.
    assert "no unused challenge" in refused(cluster.client().login, "carol", PASSWORD, mfa=answer).message
    # Another user's challenge does not log carol in.
    admin.user_create("dave", "crypto-user", PASSWORD)
    dave = cluster.client()
    dave.login("dave", PASSWORD)
    dave_key = new_key("p256")
    enable_mfa(dave, "dave", dave_key)
    dave_challenge = cluster.client().mfa_challenge("dave", PASSWORD)["file"]
    error = refused(cluster.client().login, "carol", PASSWORD, mfa=signed(dave_challenge, key))
    assert "another user" in error.message

    logins = [r for r in audit(cluster) if r["event"] == "auth.login" and r["actor"] == "carol"]
    assert any(r["outcome"] == "ok" and r["details"].get("mfa") == "token-sign" for r in logins)
    assert sum(r["outcome"] == "CKR_FUNCTION_REJECTED" for r in logins) >= 4
    assert any(r["event"] == "auth.mfa_challenge" and r["actor"] == "carol" for r in audit(cluster))

    # MFA off: the password alone works again.
    carol.login("carol", PASSWORD, mfa=signed(cluster.client().mfa_challenge("carol", PASSWORD)["file"], key))
    carol.mfa_register("carol", deregister=True)
    assert cluster.client().login("carol", PASSWORD)["username"] == "carol"


def test_mfa_and_quorum_share_one_key(cluster: LocalCluster) -> None:
    """As in CloudHSM: the MFA key is the quorum key; replacing one with another key needs --change-quorum."""
    admin = cluster.admin()
    admin.user_create("erin", "crypto-user", PASSWORD)
    erin = cluster.client()
    erin.login("erin", PASSWORD)
    quorum_key = new_key("ed25519")
    register(erin, quorum_key)
    error = refused(enable_mfa, erin, "erin", new_key("rsa"))
    assert error.code == CKR.ACTION_PROHIBITED and "change_quorum" in error.message
    other = new_key("p384")
    status = enable_mfa(erin, "erin", other, change_quorum=True)
    assert status["algorithm"] == "EC-P-384" and status["quorum"] and status["mfa"]
    # The same key again needs no flag.
    assert enable_mfa(erin, "erin", other)["mfa"]


def test_an_admin_changes_another_user_s_mfa_under_the_user_quorum(cluster: LocalCluster) -> None:
    admin = first_admin(cluster)
    admin.client.user_create("admin2", "admin", PASSWORD)
    admin2 = cluster.client()
    admin2.login("admin2", PASSWORD)
    key2 = new_key("p256")
    register(admin2, key2)
    admin.client.user_create("frank", "crypto-user", PASSWORD)
    admin.client.quorum_set_value("user", 2)
    frank_key = new_key("rsa")
    # The admin turns MFA on for frank (frank's key signed the registration token, handed to the admin).
    entry = token_file(admin.client.quorum_generate("registration")).tokens[0]
    assert entry.approval_data is not None
    signature = approvals.sign_token(frank_key, entry.unsigned)
    public = approvals.public_pem(frank_key.public_key())
    error = refused(admin.client.mfa_register, "frank", public, entry.approval_data, signature)
    assert error.code == CKR.FUNCTION_REJECTED and "user service" in error.message
    token = token_file(admin.client.quorum_generate("user", "quorum.mfa_register", {"username": "frank",
                                                                                   "public_key": public}))
    for person, key in ((admin.name, admin.key), ("admin2", key2)):
        assert token.token is not None
        admin.client.quorum_approve(token.approval_data or b"", person, approvals.sign_token(key, token.token))
    result = admin.client.approved(token.approval_data, AsyncClient.mfa_register, "frank", public,
                                   entry.approval_data, signature)
    assert result["mfa"]
    assert "multi-factor" in refused(cluster.client().login, "frank", PASSWORD).message


# --- the CLI ------------------------------------------------------------------------------------------------


def _env(cluster: LocalCluster, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STRONGROOM_")}
    env.update(STRONGROOM_DIR=str(cluster.dir), **extra)
    return env


def _wait_for(path: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not (path.exists() and path.stat().st_size > 0):
        assert time.monotonic() < deadline, f"{path} was not written"
        time.sleep(0.1)


def test_cli_change_mfa_and_login_signed_with_openssl_as_documented(cluster: LocalCluster, tmp_path: Path) -> None:
    """set-up-mfa-for-cloudhsm-cli and login-mfa-token-sign: the unsigned tokens of the file are base64-decoded,
    signed with ``openssl pkeyutl -sign -inkey officer1.key -pkeyopt digest:sha256 -keyform PEM``, base64-encoded
    with ``base64 -w0`` and pasted back; the CLI asks for the signed file (enter: the same) and the public key."""
    admin = cluster.admin()
    admin.user_create("officer1", "crypto-user", PASSWORD)
    work = tmp_path
    # $ openssl genrsa -out officer1.key 2048 ; openssl rsa -in officer1.key -outform PEM -pubout -out officer1.pub
    openssl("genrsa", "-out", "officer1.key", "2048", cwd=work)
    openssl("rsa", "-in", "officer1.key", "-outform", "PEM", "-pubout", "-out", "officer1.pub", cwd=work)

    def sign_file(name: str) -> None:
        tokens = json.loads((work / name).read_text())
        for n, entry in enumerate(tokens["tokens"], 1):
            (work / f"token{n}.bin").write_bytes(base64.b64decode(entry["unsigned"]))  # base64 -d token1.b64
            openssl("pkeyutl", "-sign", "-inkey", "officer1.key", "-pkeyopt", "digest:sha256", "-keyform", "PEM",
                    "-in", f"token{n}.bin", "-out", f"token{n}.sig.bin", cwd=work)
            entry["signed"] = base64.b64encode((work / f"token{n}.sig.bin").read_bytes()).decode()  # base64 -w0
        (work / name).write_text(json.dumps(tokens, indent=2))

    shell = subprocess.Popen([*STRONGROOM, "interactive", "--dir", str(cluster.dir)], cwd=work, env=_env(cluster),
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert shell.stdin is not None
    try:
        shell.stdin.write(f"login --username officer1 --role crypto-user --password {PASSWORD}\n")
        # aws-cloudhsm > user change-mfa token-sign --token unsigned-tokens.json --username <USERNAME> --role ...
        shell.stdin.write("user change-mfa token-sign --token unsigned-tokens.json --username officer1 "
                          "--role crypto-user\n")
        shell.stdin.flush()
        _wait_for(work / "unsigned-tokens.json")
        sign_file("unsigned-tokens.json")
        # Enter signed token file path (press enter if same as the unsigned token file):  /  public key path
        shell.stdin.write("\nofficer1.pub\n")
        shell.stdin.write("logout\n")
        # aws-cloudhsm > login --username test_user --role admin mfa-token-sign --token /home/valid.token
        shell.stdin.write(f"login --username officer1 --role crypto-user --password {PASSWORD} mfa-token-sign "
                          "--token valid.token\n")
        shell.stdin.flush()
        _wait_for(work / "valid.token")
        sign_file("valid.token")
        shell.stdin.write("\n")
        shell.stdin.write("user list --json\nquit\n")
        shell.stdin.flush()
        out, err = shell.communicate(timeout=120)
    finally:
        if shell.poll() is None:
            shell.kill()
    assert "MFA (token-sign) is on for officer1" in out, out + err
    assert "logged in as officer1 (crypto-user) with MFA" in out, out + err
    assert '"username": "officer1"' in out  # the user list ran under the MFA login
    # One-shot commands: the password alone is refused, STRONGROOM_MFA_KEY signs the challenge.
    run = [*STRONGROOM, "user", "list", "--json"]
    alone = subprocess.run(run, cwd=work, env=_env(cluster, STRONGROOM_PIN=f"officer1:{PASSWORD}"),
                           capture_output=True, text=True, timeout=120)
    assert alone.returncode != 0 and "multi-factor" in alone.stdout
    with_key = subprocess.run(run, cwd=work, capture_output=True, text=True, timeout=120, env=_env(
        cluster, STRONGROOM_PIN=f"officer1:{PASSWORD}", STRONGROOM_MFA_KEY=str(work / "officer1.key")))
    assert with_key.returncode == 0, with_key.stdout + with_key.stderr


# --- PKCS#11 applications ---------------------------------------------------------------------------------

LOGIN_SCRIPT = """
import json, os
import pkcs11
from pkcs11 import KeyType, Mechanism, ObjectClass, exceptions

lib = pkcs11.lib(os.environ["STRONGROOM_PKCS11_MODULE"])
token = lib.get_token(token_label=os.environ["TOKEN_LABEL"])
try:
    with token.open(user_pin=os.environ["USER_PIN"]) as session:
        key = session.get_key(object_class=ObjectClass.SECRET_KEY, key_type=KeyType.AES, label="svc")
        print(json.dumps({"ok": len(key.encrypt(b"x" * 16, mechanism=Mechanism.AES_CBC_PAD,
                                                mechanism_param=b"\\x00" * 16))}))
except exceptions.PKCS11Error as exc:
    print(json.dumps({"error": type(exc).__name__}))
"""


def test_pkcs11_service_users_work_and_mfa_users_are_sent_to_the_cli(pkcs11_module: Pkcs11Module,
                                                                    cluster: LocalCluster) -> None:
    target = pkcs11_target(cluster, pkcs11_module)
    admin = cluster.admin()
    for name in ("svc_app", "mfa_person"):
        admin.user_create(name, "crypto-user", PASSWORD)
        client = cluster.client()
        client.login(name, PASSWORD)
        from strongroom.constants import CKA, CKM

        client.generate_key(CKM.AES_KEY_GEN, {CKA.TOKEN: True, CKA.LABEL: b"svc", CKA.VALUE_LEN: 32})
        if name == "mfa_person":
            enable_mfa(client, name, new_key("ed25519"))

    def app(pin: str) -> dict[str, Any]:
        env = dict(os.environ, STRONGROOM_PKCS11_MODULE=str(target.module), STRONGROOM_AGENT_SOCKET=target.socket,
                   TOKEN_LABEL=target.token_label, USER_PIN=pin)
        result = subprocess.run([sys.executable, "-c", textwrap.dedent(LOGIN_SCRIPT)], env=env, capture_output=True,
                                text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        return dict(json.loads(result.stdout))

    assert app(f"svc_app:{PASSWORD}") == {"ok": 32}
    refusal = app(f"mfa_person:{PASSWORD}")
    assert "error" in refusal and refusal["error"] != "PinIncorrect", refusal
    # The MFA user logs in through the agent with the SDK (the CLI's path), signing the challenge.
    key = new_key("rsa")
    via_agent = Client.from_agent(target.socket, timeout=30)
    try:
        entry = token_file(via_agent.mfa_challenge("mfa_person", PASSWORD))
        assert entry.tokens and not entry.is_quorum
        # Its registered key is another (ed25519): this one is refused, through the agent too.
        error = refused(via_agent.login, "mfa_person", PASSWORD,
                        mfa=[{"token": t.unsigned, "signature": approvals.sign_token(key, t.unsigned)}
                             for t in entry.tokens])
        assert "does not verify" in error.message
    finally:
        via_agent.close()


def test_an_ecdsa_mfa_key_signed_by_openssl_logs_in(cluster: LocalCluster, tmp_path: Path) -> None:
    """Beyond CloudHSM's RSA-2048: a P-256 key, the challenge file in CloudHSM's format, signed by openssl."""
    admin = cluster.admin()
    admin.user_create("gina", "crypto-user", PASSWORD)
    gina = cluster.client()
    gina.login("gina", PASSWORD)
    key = new_key("p256")
    enable_mfa(gina, "gina", key)
    (tmp_path / "gina.key").write_bytes(pem(key))
    client = cluster.client()
    raw = client.mfa_challenge("gina", PASSWORD)["file"]
    assert raw["version"] == "2.0" and set(raw["tokens"][0]) >= {"unsigned", "signed"}
    parsed = TokenFile.loads(json.dumps(raw))
    assert parsed.tokens[0].signed is None and len(parsed.tokens[0].unsigned) == 32
    answers = []
    for entry in parsed.tokens:
        (tmp_path / "t.bin").write_bytes(entry.unsigned)
        openssl("pkeyutl", "-sign", "-inkey", "gina.key", "-pkeyopt", "digest:sha256", "-in", "t.bin", "-out",
                "t.sig", cwd=tmp_path)
        answers.append({"token": entry.unsigned, "signature": (tmp_path / "t.sig").read_bytes()})
    assert client.login("gina", PASSWORD, mfa=answers)["username"] == "gina"


def test_one_challenge_per_node_and_one_login_per_signed_file(tmp_path: Path) -> None:
    """Two nodes: the challenge file holds a token of each; the node a login reaches checks its own, and the
    signed file then logs in nowhere else (one signed file, one login)."""
    from strongroom.client import ClientProfile

    cluster = LocalCluster(tmp_path / "two", workers=1, up_args=("--nodes", "2"))
    cluster.up()
    try:
        profile = ClientProfile.load(cluster.dir)
        assert len(profile.nodes) == 2
        node1, node2 = (Client(profile, node, timeout=30) for node in profile.nodes)
        admin = cluster.admin()
        admin.user_create("hana", "crypto-user", PASSWORD)
        hana = cluster.client()
        hana.login("hana", PASSWORD)
        key = new_key("ed25519")
        enable_mfa(hana, "hana", key)
        challenge = node1.mfa_challenge("hana", PASSWORD)["file"]
        assert sorted(t["node"] for t in challenge["tokens"]) == ["node1", "node2"]
        answer = signed(challenge, key)
        # Only node2's token, signed: node2 logs in with it; node1's alone would not log in on node2.
        node2_only = [a for a, t in zip(answer, challenge["tokens"], strict=True) if t["node"] == "node2"]
        node1_only = [a for a, t in zip(answer, challenge["tokens"], strict=True) if t["node"] == "node1"]
        assert "no unused challenge of node node2" in refused(node2.login, "hana", PASSWORD, mfa=node1_only).message
        assert node2.login("hana", PASSWORD, mfa=node2_only)["username"] == "hana"
        # The same signed file on node1: spent with its sibling.
        assert "no unused challenge" in refused(node1.login, "hana", PASSWORD, mfa=answer).message
        # A fresh file, signed whole: the node reached (node1) logs in.
        assert node1.login("hana", PASSWORD, mfa=signed(node1.mfa_challenge("hana", PASSWORD)["file"],
                                                          key))["username"] == "hana"
        node1.close()
        node2.close()
    finally:
        cluster.down()
