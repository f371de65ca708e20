"""What the quorum and MFA tests share: users with approval keys (made with cryptography or openssl), their
registration through the SDK, and signing token files as approvers do."""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from strongroom.client import Client
from strongroom.pki import approvals
from strongroom.pki.approvals import TokenFile

from .conftest import LocalCluster

PASSWORD = "password1"


def new_key(kind: str) -> approvals.PrivateKey:
    if kind == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if kind == "p256":
        return ec.generate_private_key(ec.SECP256R1())
    if kind == "p384":
        return ec.generate_private_key(ec.SECP384R1())
    return ed25519.Ed25519PrivateKey.generate()


def pem(key: approvals.PrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def token_file(reply: dict[str, Any]) -> TokenFile:
    """The token file a generate/get reply carries (as the CLI would write it)."""
    return TokenFile.loads(json.dumps(reply["file"]))


@dataclass
class Approver:
    name: str
    key: approvals.PrivateKey
    client: Client

    def sign(self, token: TokenFile) -> bytes:
        assert token.token is not None
        return approvals.sign_token(self.key, token.token)

    def approve(self, via: Client, token: TokenFile) -> dict[str, Any]:
        assert token.approval_data is not None
        return via.quorum_approve(token.approval_data, self.name, self.sign(token))


def register(client: Client, key: approvals.PrivateKey) -> dict[str, Any]:
    """``user change-quorum token-sign register`` through the SDK: a registration token, signed by the key."""
    entry = token_file(client.quorum_generate("registration")).tokens[0]
    assert entry.approval_data is not None
    return client.quorum_register(approvals.public_pem(key.public_key()), entry.approval_data,
                                  approvals.sign_token(key, entry.unsigned))


def approver(cluster: LocalCluster, name: str, role: str, kind: str = "rsa", *,
             admin: Client | None = None) -> Approver:
    """A new user of ``role`` with a registered approval key of ``kind``, logged in."""
    creator = admin or cluster.admin()
    creator.user_create(name, role, PASSWORD)
    client = cluster.client()
    client.login(name, PASSWORD)
    key = new_key(kind)
    register(client, key)
    return Approver(name, key, client)


def first_admin(cluster: LocalCluster, kind: str = "rsa") -> Approver:
    client = cluster.admin()
    key = new_key(kind)
    register(client, key)
    return Approver(cluster.summary["admin_user"], key, client)


def openssl(*args: str, cwd: Path, stdin: bytes | None = None) -> bytes:
    result = subprocess.run(["openssl", *args], cwd=cwd, input=stdin, capture_output=True, timeout=60)
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    return result.stdout
