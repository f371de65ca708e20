"""Issue 11's hygiene list for the KMS gateway, tried as attacks on a real gateway and cluster.

* a flood of requests with unknown access keys or bad signatures must not cost the node a
  round trip and an fsynced audit record each;
* DryRun authorizes exactly as the real call (an unauthorized caller learns nothing about a key);
* the gateway serves HTTPS with the cluster's CA by default, plain HTTP only when asked;
* the gateway process is hardened (no core dumps, not dumpable);
* setting the gateway up takes the admin from the caller or STRONGROOM_PIN, never from a file;
* every decoder has a limit (headers, JSON nesting).
"""

from __future__ import annotations

import json
import secrets
import socket
import ssl
import string
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.exceptions import ClientError
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from strongroom import pki
from strongroom.kms.config import GatewayConfig
from tests.integration.conftest import LocalCluster
from tests.integration.kms.conftest import ACCOUNT, REGION, KmsEnv, error_of, second_gateway

pytestmark = pytest.mark.slow
AUTH_FAILURES = {"UnrecognizedClientException", "InvalidSignatureException"}


def audit_records(cluster: LocalCluster, prefix: str = "kms.sigv4") -> list[dict[str, Any]]:
    records = []
    for path in (cluster.dir / "nodes").glob("*/audit.log"):
        for line in path.read_text().splitlines():
            record = json.loads(line)
            if record["event"].startswith(prefix):
                records.append(record)
    return records


def random_akid() -> str:
    return "AKIA" + "".join(secrets.choice(string.ascii_uppercase + string.digits) for _ in range(16))


def signed(kms: KmsEnv, akid: str, secret: str, body: bytes = b"{}", operation: str = "ListKeys",
           extra: dict[str, str] | None = None) -> tuple[bytes, dict[str, str]]:
    request = AWSRequest(method="POST", url=kms.endpoint + "/", data=body,
                         headers={"X-Amz-Target": f"TrentService.{operation}",
                                  "Content-Type": "application/x-amz-json-1.1"})
    SigV4Auth(Credentials(akid, secret), "kms", REGION).add_auth(request)
    headers = dict(request.headers.items())
    headers.update(extra or {})
    return request.body, headers


def answer(reply: httpx.Response) -> tuple[int, str]:
    return reply.status_code, (reply.json().get("__type", "") if reply.status_code != 200 else "")


# --- 1. unauthenticated floods -------------------------------------------------------------------------------


def test_a_flood_of_unknown_keys_and_bad_signatures_does_not_reach_the_node_one_by_one(kms: KmsEnv) -> None:
    """Before: each of these requests cost a node round trip and one fsynced audit record (200 here)."""
    with second_gateway(kms, "kms-flood") as gateway:
        legit = gateway.client()
        legit.list_keys(Limit=1)  # today's signing key is now held by this gateway
        before = len(audit_records(kms.cluster))
        one_unknown = signed(gateway, random_akid(), "x" * 40)
        requests = ([one_unknown] * 60 + [signed(gateway, random_akid(), "x" * 40) for _ in range(100)]
                    + [signed(gateway, gateway.access_key_id, "y" * 40) for _ in range(40)])
        answers: dict[tuple[int, str], int] = {}
        with httpx.Client(verify=gateway.tls, timeout=30) as http:
            for body, headers in requests:
                key = answer(http.post(gateway.endpoint + "/", content=body, headers=headers))
                answers[key] = answers.get(key, 0) + 1
            # A legitimate client of the same address still gets through (its signing key is held).
            assert legit.list_keys(Limit=1)["Truncated"] in (True, False)
        assert set(answers) <= {(400, code) for code in AUTH_FAILURES | {"ThrottlingException"}}, answers
        assert answers.get((400, "ThrottlingException"), 0) > 0, answers  # the rate limit answered, not the node
        written = audit_records(kms.cluster)[before:]
        # At most the first failure per (source, access key or "unknown", operation) and worker process is written
        # at once; the rest is counted into one record per interval.
        assert len(written) <= 8, [(r["event"], r["outcome"], r["details"]) for r in written]
        assert written and all(r["details"].get("source") == "127.0.0.1" for r in written)


# --- 2. DryRun authorizes ------------------------------------------------------------------------------------


def issue(kms: KmsEnv, tmp_path: Path, name: str, actions: list[str]) -> Any:
    policy = tmp_path / f"{name}.json"
    policy.write_text(json.dumps({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": actions, "Resource": "*"}]}))
    code, out = kms.cluster.cli("kms", "access-key", "create", "--name", name, "--policy", str(policy),
                                pin=kms.cluster.admin_pin)
    assert code == 0, out
    return kms.client(out["data"]["access_key_id"], out["data"]["secret_access_key"])


def outcome(call: Any, **kwargs: Any) -> tuple[str, str]:
    with pytest.raises(ClientError) as caught:
        call(**kwargs)
    return error_of(caught)


def test_dry_run_authorizes_like_the_real_call(kms: KmsEnv, client: Any, tmp_path: Path) -> None:
    """Before: Decrypt with DryRun and no KeyId answered DryRunOperationException to anyone, and for a disabled
    key "<key ARN> is disabled." — without asking the key policy or grants."""
    sym = client.create_key()["KeyMetadata"]["KeyId"]
    disabled = client.create_key()["KeyMetadata"]["KeyId"]
    rsa = client.create_key(KeySpec="RSA_2048", KeyUsage="ENCRYPT_DECRYPT")["KeyMetadata"]["KeyId"]
    signer = client.create_key(KeySpec="ECC_NIST_P256", KeyUsage="SIGN_VERIFY")["KeyMetadata"]["KeyId"]
    mac = client.create_key(KeySpec="HMAC_256", KeyUsage="GENERATE_VERIFY_MAC")["KeyMetadata"]["KeyId"]
    blob = client.encrypt(KeyId=sym, Plaintext=b"secret")["CiphertextBlob"]
    disabled_blob = client.encrypt(KeyId=disabled, Plaintext=b"secret")["CiphertextBlob"]
    client.disable_key(KeyId=disabled)
    rsa_blob = client.encrypt(KeyId=rsa, Plaintext=b"secret", EncryptionAlgorithm="RSAES_OAEP_SHA_256")[
        "CiphertextBlob"]
    signature = client.sign(KeyId=signer, Message=b"m", SigningAlgorithm="ECDSA_SHA_256")["Signature"]
    tag = client.generate_mac(KeyId=mac, Message=b"m", MacAlgorithm="HMAC_SHA_256")["Mac"]
    grant_id = client.create_grant(KeyId=sym, GranteePrincipal=f"arn:aws:iam::{ACCOUNT}:user/someone",
                                   Operations=["Decrypt"])["GrantId"]

    mallory = issue(kms, tmp_path, "mallory", ["kms:ListKeys"])
    # Allowed to re-encrypt *to* any key, not *from* one: ReEncrypt must still ask about the source.
    trudy = issue(kms, tmp_path, "trudy", ["kms:ReEncryptTo", "kms:Encrypt"])
    calls: list[tuple[Any, str, dict[str, Any]]] = [
        (mallory, "decrypt", {"CiphertextBlob": blob}),
        (mallory, "decrypt", {"CiphertextBlob": disabled_blob}),
        (mallory, "decrypt", {"CiphertextBlob": blob, "KeyId": sym}),
        (mallory, "decrypt", {"CiphertextBlob": rsa_blob, "KeyId": rsa, "EncryptionAlgorithm": "RSAES_OAEP_SHA_256"}),
        (mallory, "encrypt", {"KeyId": sym, "Plaintext": b"x"}),
        (mallory, "encrypt", {"KeyId": rsa, "Plaintext": b"x", "EncryptionAlgorithm": "RSAES_OAEP_SHA_256"}),
        (mallory, "generate_data_key", {"KeyId": sym, "NumberOfBytes": 32}),
        (mallory, "generate_data_key_without_plaintext", {"KeyId": disabled, "NumberOfBytes": 32}),
        (mallory, "generate_data_key_pair", {"KeyId": sym, "KeyPairSpec": "ECC_NIST_P256"}),
        (mallory, "generate_data_key_pair_without_plaintext", {"KeyId": sym, "KeyPairSpec": "ECC_NIST_P256"}),
        (mallory, "re_encrypt", {"CiphertextBlob": blob, "DestinationKeyId": sym}),
        (trudy, "re_encrypt", {"CiphertextBlob": blob, "DestinationKeyId": sym}),
        (trudy, "re_encrypt", {"CiphertextBlob": disabled_blob, "DestinationKeyId": sym}),
        (mallory, "sign", {"KeyId": signer, "Message": b"m", "SigningAlgorithm": "ECDSA_SHA_256"}),
        (mallory, "verify", {"KeyId": signer, "Message": b"m", "Signature": signature,
                             "SigningAlgorithm": "ECDSA_SHA_256"}),
        (mallory, "generate_mac", {"KeyId": mac, "Message": b"m", "MacAlgorithm": "HMAC_SHA_256"}),
        (mallory, "verify_mac", {"KeyId": mac, "Message": b"m", "Mac": tag, "MacAlgorithm": "HMAC_SHA_256"}),
        (mallory, "create_grant", {"KeyId": sym, "GranteePrincipal": f"arn:aws:iam::{ACCOUNT}:user/mallory",
                                   "Operations": ["Decrypt"]}),
        (mallory, "revoke_grant", {"KeyId": sym, "GrantId": grant_id}),
        (mallory, "retire_grant", {"KeyId": sym, "GrantId": grant_id}),
    ]
    for principal, name, kwargs in calls:
        real = outcome(getattr(principal, name), **kwargs)
        dry = outcome(getattr(principal, name), DryRun=True, **kwargs)
        assert real[0] == "AccessDeniedException", (name, kwargs, real)
        assert dry == real, (name, kwargs, dry, real)  # the same refusal, word for word
        assert "disabled" not in dry[1]
    # An authorized caller: DryRun answers what the real call would (a disabled key is still disabled).
    assert outcome(client.decrypt, CiphertextBlob=blob, DryRun=True)[0] == "DryRunOperationException"
    disabled_answer = ("DisabledException", f"{kms.arn(disabled)} is disabled.")
    assert outcome(client.decrypt, CiphertextBlob=disabled_blob, DryRun=True) == \
        outcome(client.decrypt, CiphertextBlob=disabled_blob) == disabled_answer
    assert outcome(client.re_encrypt, CiphertextBlob=blob, DestinationKeyId=sym, DryRun=True)[0] == \
        "DryRunOperationException"
    # A KeyId naming another key: the same IncorrectKeyException with or without DryRun.
    assert outcome(client.decrypt, CiphertextBlob=blob, KeyId=rsa, DryRun=True) == \
        outcome(client.decrypt, CiphertextBlob=blob, KeyId=rsa)


# --- 3. HTTPS by default ---------------------------------------------------------------------------------------


def port_of(endpoint: str) -> int:
    return int(endpoint.rsplit(":", 1)[1])


def test_the_gateway_serves_https_with_a_certificate_of_the_clusters_ca(kms: KmsEnv) -> None:
    """Before: `start_gateway` (and `up --kms`) served plain HTTP."""
    assert kms.endpoint.startswith("https://127.0.0.1:")
    assert Path(kms.ca_bundle or "") == kms.cluster.dir / "ca" / "ca.crt"
    port = port_of(kms.endpoint)
    pem = ssl.get_server_certificate(("127.0.0.1", port))
    cert = x509.load_pem_x509_certificate(pem.encode())
    ca = pki.load_certificate(kms.cluster.dir / "ca" / "ca.crt")
    assert pki.verify_issued_by(cert, ca)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    # A server certificate only: it cannot act as a client (or node) certificate of the cluster.
    assert list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == \
        [ExtendedKeyUsageOID.SERVER_AUTH]
    # Verified by name with the cluster's CA; TLS 1.2 (what AWS SDKs need) and 1.3 both work.
    for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
        context = ssl.create_default_context(cafile=kms.ca_bundle)
        context.minimum_version = context.maximum_version = version
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
                context.wrap_socket(raw, server_hostname="localhost") as tls:
            assert tls.version() == {ssl.TLSVersion.TLSv1_2: "TLSv1.2", ssl.TLSVersion.TLSv1_3: "TLSv1.3"}[version]
    # Plain HTTP to the HTTPS port gets no KMS answer.
    with pytest.raises(httpx.HTTPError):
        httpx.post(f"http://127.0.0.1:{port}/", content=b"{}", timeout=10)
    # And the CA bundle is needed: the system's trust store does not know the cluster's CA.
    with pytest.raises(httpx.ConnectError):
        httpx.post(kms.endpoint + "/", content=b"{}", timeout=10)
    config = GatewayConfig.load(kms.cluster.dir / "kms.toml")
    assert config.kms.tls_cert and config.kms.tls_key and not config.kms.insecure_http


def test_plain_http_only_when_asked_and_then_with_a_warning(kms: KmsEnv) -> None:
    def plain(config: GatewayConfig) -> None:
        config.kms.tls_cert = config.kms.tls_key = None
        config.kms.insecure_http = True

    with second_gateway(kms, "kms-plain", plain) as gateway:
        assert gateway.endpoint.startswith("http://") and gateway.client().list_keys(Limit=1)
        log = Path(gateway.info["kms_log"]).read_text()
        assert "WARNING" in log and "plain HTTP" in log
    # Neither TLS nor insecure_http: the gateway refuses to start, saying what to do.
    config = GatewayConfig.load(kms.cluster.dir / "kms.toml")
    config.kms.tls_cert = config.kms.tls_key = None
    path = kms.cluster.dir / "kms-neither.toml"
    path.write_text(config.to_toml())
    result = subprocess.run([sys.executable, "-m", "strongroom", "kms", "serve", "--config", str(path)],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 2 and "insecure_http" in result.stderr, result.stderr
    # ... unless told on the command line.
    with second_gateway(kms, "kms-flag", lambda c: setattr(c.kms, "tls_cert", None) or setattr(c.kms, "tls_key", None),
                        extra_args=("--insecure-http",)) as gateway:
        assert gateway.client().list_keys(Limit=1)
        assert "plain HTTP" in Path(gateway.info["kms_log"]).read_text()


# --- 4. hardening ----------------------------------------------------------------------------------------------


def test_the_gateway_process_is_hardened(kms: KmsEnv) -> None:
    pid = kms.info["kms_pid"]
    limits = Path(f"/proc/{pid}/limits").read_text()
    core = next(line for line in limits.splitlines() if line.startswith("Max core file size")).split()
    assert core[4:6] == ["0", "0"], core
    log = Path(kms.info["kms_log"]).read_text()
    assert "hardening" in log and "rlimit_core" in log and "prctl_dumpable" in log


# --- 5. no admin password on disk ------------------------------------------------------------------------------


def test_set_up_takes_the_admin_from_the_caller_or_strongroom_pin(tmp_path: Path, monkeypatch: Any) -> None:
    from strongroom.kms.local import GatewayStartError, users_of
    from strongroom.local.gateway import start_gateway, stop_gateway

    cluster = LocalCluster(tmp_path / "c", workers=1)
    cluster.up()
    try:
        assert not (cluster.dir / "credentials.json").exists()  # `up` keeps no admin password
        monkeypatch.delenv("STRONGROOM_PIN", raising=False)
        with pytest.raises(GatewayStartError) as caught:
            start_gateway(cluster.dir)
        assert "STRONGROOM_PIN" in str(caught.value) and "admin" in str(caught.value)
        monkeypatch.setenv("STRONGROOM_PIN", cluster.admin_pin)
        info = start_gateway(cluster.dir)
        env = KmsEnv(cluster, info)
        assert env.endpoint.startswith("https://") and env.client().list_keys()["Truncated"] is False
        stop_gateway(cluster.dir)
        # Set up again (the service user's files lost) with the admin passed in, no environment.
        monkeypatch.delenv("STRONGROOM_PIN")
        users_of(cluster.dir)[1].unlink()
        (cluster.dir / "kms" / "access-key.json").unlink()
        info = start_gateway(cluster.dir, admin=(cluster.summary["admin_user"], cluster.summary["admin_password"]))
        assert KmsEnv(cluster, info).client().list_keys()["Truncated"] is False
        # The command line: --insecure-http serves plain HTTP and says so in the log.
        assert cluster.run("kms", "stop").returncode == 0
        result = cluster.run("kms", "start", "--insecure-http", "--json")
        assert result.returncode == 0, result.stderr
        started = json.loads(result.stdout)["data"]
        assert started["kms_endpoint"].startswith("http://") and started.get("kms_ca_bundle") is None
        assert KmsEnv(cluster, started).client().list_keys()["Truncated"] is False
        assert "plain HTTP" in Path(started["kms_log"]).read_text()
    finally:
        stop_gateway(cluster.dir)
        cluster.down()


# --- 6. decoder limits -----------------------------------------------------------------------------------------


def test_header_and_json_limits(kms: KmsEnv, client: Any) -> None:
    with httpx.Client(verify=kms.tls, timeout=30) as http:
        # Many headers: refused by the HTTP parser, before any SigV4 work.
        body, headers = signed(kms, kms.access_key_id, kms.secret,
                               extra={f"x-filler-{i}": "v" for i in range(100)})
        assert http.post(kms.endpoint + "/", content=body, headers=headers).status_code == 400
        # One huge header.
        body, headers = signed(kms, kms.access_key_id, kms.secret, extra={"x-filler": "v" * 9000})
        assert http.post(kms.endpoint + "/", content=body, headers=headers).status_code == 400
        # Deeply nested JSON from an authenticated caller: a client error, not a fault (was a 500 with a traceback).
        deep = b'{"Tags": ' + b"[" * 50_000 + b"]" * 50_000 + b"}"
        body, headers = signed(kms, kms.access_key_id, kms.secret, body=deep, operation="CreateKey")
        reply = http.post(kms.endpoint + "/", content=body, headers=headers)
        assert answer(reply) == (400, "SerializationException"), reply.text
        # Nesting a little deeper than any KMS request needs is refused too.
        nested = b'{"Tags": [{"TagKey": "a", "TagValue": "b", "x": ' + b"[" * 40 + b"]" * 40 + b"}]}"
        body, headers = signed(kms, kms.access_key_id, kms.secret, body=nested, operation="CreateKey")
        assert answer(http.post(kms.endpoint + "/", content=body, headers=headers)) == (400, "SerializationException")
    # A key policy is JSON inside the JSON: nested deep it is a malformed policy, not a fault (was a 500).
    key_id = client.create_key()["KeyMetadata"]["KeyId"]
    deep_policy = '{"Version": "2012-10-17", "Statement": ' + "[" * 5000 + "]" * 5000 + "}"
    assert outcome(client.put_key_policy, KeyId=key_id, PolicyName="default", Policy=deep_policy)[0] == \
        "MalformedPolicyDocumentException"
    assert outcome(client.create_key, Policy=deep_policy)[0] == "MalformedPolicyDocumentException"
    assert "Traceback" not in Path(kms.info["kms_log"]).read_text()
