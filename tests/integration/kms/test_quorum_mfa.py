"""The KMS gateway beside quorum and MFA (issue 16): people turn MFA on and the admin services need approvals,
and the gateway, which logs in as its own service user without MFA, keeps serving, a gateway started afterwards
too. Real cluster, real gateway processes, boto3."""

from __future__ import annotations

from typing import Any

import pytest

from strongroom.client import ClientError
from strongroom.pki import approvals

from ..approvers import approver, first_admin, token_file
from .conftest import KmsEnv, gateway_login, second_gateway


def test_the_gateway_keeps_working_while_people_use_mfa_and_quorum(kms: KmsEnv, client: Any) -> None:
    cluster = kms.cluster
    key_id = client.create_key()["KeyMetadata"]["KeyId"]
    blob = client.encrypt(KeyId=key_id, Plaintext=b"before")["CiphertextBlob"]

    admin = first_admin(cluster)  # registers the admin's approval key
    entry = token_file(admin.client.quorum_generate("registration")).tokens[0]
    assert entry.approval_data is not None
    admin.client.mfa_register(admin.name, approvals.public_pem(admin.key.public_key()), entry.approval_data,
                              approvals.sign_token(admin.key, entry.unsigned))
    approver(cluster, "kms_admin2", "admin", "p256", admin=admin.client)
    admin.client.quorum_set_value("user", 2)  # two admins with keys: user changes need both from now on
    assert admin.client.quorum_values()["user"] == 2
    with pytest.raises(ClientError) as info:
        cluster.client().login(admin.name, cluster.summary["admin_password"])
    assert "multi-factor" in info.value.message
    mfa_users = {row["username"] for row in admin.client.quorum_users() if row["mfa"]}
    assert mfa_users == {admin.name} and gateway_login(cluster)[0] not in mfa_users

    # The running gateway: its links keep their logins and make new ones as its service user.
    assert client.decrypt(CiphertextBlob=blob)["Plaintext"] == b"before"
    other = client.create_key()["KeyMetadata"]["KeyId"]
    assert client.decrypt(CiphertextBlob=client.encrypt(KeyId=other, Plaintext=b"after")["CiphertextBlob"])[
        "Plaintext"] == b"after"
    # A gateway process started now logs in from scratch, as the service user.
    with second_gateway(kms, "after-mfa") as fresh:
        assert fresh.client().decrypt(CiphertextBlob=blob)["Plaintext"] == b"before"
