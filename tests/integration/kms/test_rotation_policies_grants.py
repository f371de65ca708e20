"""Key rotation, key policies and grants through real boto3 against a real gateway and cluster.

Other principals are real access keys issued with `strongroom kms access-key create` (each acts
as `arn:aws:iam::<account>:user/<name>`); nothing is mocked.
"""

from __future__ import annotations

import json
import struct
import time
from dataclasses import dataclass
from typing import Any

import pytest
from botocore.exceptions import ClientError, ParamValidationError

from strongroom.client import Client
from tests.integration.kms.conftest import ACCOUNT, KmsEnv, error_of, gateway_login, short_day_gateway, wait_deleted

pytestmark = pytest.mark.slow
MAIN = f"arn:aws:iam::{ACCOUNT}:user/local-full-access"
ROOT = f"arn:aws:iam::{ACCOUNT}:root"


def user(name: str) -> str:
    return f"arn:aws:iam::{ACCOUNT}:user/{name}"


def expect(code: str, call: Any, *args: Any, **kwargs: Any) -> str:
    with pytest.raises(ClientError) as caught:
        call(*args, **kwargs)
    got_code, message = error_of(caught)
    assert got_code == code, (got_code, message)
    return message


@dataclass
class Principals:
    alice: Any  # no access-key policy: everything its account allows
    bob: Any    # access-key policy: kms:Encrypt and kms:DescribeKey only
    carol: Any  # access-key policy: kms:ListKeys only


def issue(kms: KmsEnv, tmp_path: Any, name: str, policy: dict[str, Any] | None) -> Any:
    args = ["kms", "access-key", "create", "--name", name]
    if policy is not None:
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(policy))
        args += ["--policy", str(path)]
    code, out = kms.cluster.cli(*args, pin=kms.cluster.admin_pin)
    assert code == 0, out
    return kms.client(out["data"]["access_key_id"], out["data"]["secret_access_key"])


@pytest.fixture(scope="module")
def who(kms: KmsEnv, tmp_path_factory: pytest.TempPathFactory) -> Principals:
    tmp = tmp_path_factory.mktemp("principals")
    iam = lambda *actions: {"Version": "2012-10-17", "Statement": [  # noqa: E731
        {"Effect": "Allow", "Action": list(actions), "Resource": "*"}]}
    return Principals(issue(kms, tmp, "alice", None), issue(kms, tmp, "bob", iam("kms:Encrypt", "kms:DescribeKey")),
                      issue(kms, tmp, "carol", iam("kms:ListKeys")))


def policy(*statements: dict[str, Any]) -> str:
    return json.dumps({"Version": "2012-10-17", "Statement": list(statements)})


def allow(principal: Any, actions: Any = "kms:*", **extra: Any) -> dict[str, Any]:
    return {"Effect": "Allow", "Principal": {"AWS": principal}, "Action": actions, "Resource": "*", **extra}


def deny(principal: Any, actions: Any, **extra: Any) -> dict[str, Any]:
    return {"Effect": "Deny", "Principal": {"AWS": principal}, "Action": actions, "Resource": "*", **extra}


def material_version(blob: bytes) -> int:
    return struct.unpack_from(">I", blob, 18)[0]


def labels(kms: KmsEnv, key_id: str) -> list[int]:
    from strongroom.constants import CKA

    with Client.from_dir(kms.cluster.dir) as hsm:
        hsm.login(*gateway_login(kms.cluster))
        try:
            found = []
            for version in range(1, 13):
                found += hsm.find_objects({CKA.LABEL: f"kms/{key_id}/{version}".encode()})
            for handle in found:
                attrs = hsm.get_attributes(handle, [CKA.SENSITIVE, CKA.EXTRACTABLE])
                assert attrs == {CKA.SENSITIVE: True, CKA.EXTRACTABLE: False}
            return found
        finally:
            hsm.logout()


# --- rotation ------------------------------------------------------------------------------------------------


def test_on_demand_rotation_keeps_old_ciphertexts_and_moves_new_ones(kms: KmsEnv, client: Any) -> None:
    key_id = client.create_key()["KeyMetadata"]["KeyId"]
    first = client.describe_key(KeyId=key_id)["KeyMetadata"]["CurrentKeyMaterialId"]
    old = client.encrypt(KeyId=key_id, Plaintext=b"before", EncryptionContext={"a": "1"})["CiphertextBlob"]
    assert material_version(old) == 1

    assert client.rotate_key_on_demand(KeyId=key_id)["KeyId"] == kms.arn(key_id)
    second = client.describe_key(KeyId=key_id)["KeyMetadata"]["CurrentKeyMaterialId"]
    assert second != first and len(second) == 64
    opened = client.decrypt(CiphertextBlob=old, EncryptionContext={"a": "1"})
    assert opened["Plaintext"] == b"before" and opened["KeyMaterialId"] == first
    new = client.encrypt(KeyId=key_id, Plaintext=b"after")["CiphertextBlob"]
    assert material_version(new) == 2
    assert client.decrypt(CiphertextBlob=new)["KeyMaterialId"] == second
    assert client.generate_data_key(KeyId=key_id, NumberOfBytes=32)["KeyMaterialId"] == second
    moved = client.re_encrypt(CiphertextBlob=old, SourceEncryptionContext={"a": "1"}, DestinationKeyId=key_id,
                              DestinationEncryptionContext={"a": "1"})
    assert (moved["SourceKeyMaterialId"], moved["DestinationKeyMaterialId"]) == (first, second)
    assert material_version(moved["CiphertextBlob"]) == 2
    assert client.decrypt(CiphertextBlob=moved["CiphertextBlob"], EncryptionContext={"a": "1"})["Plaintext"] \
        == b"before"
    # The new version is a new non-extractable key object in the cluster.
    assert len(labels(kms, key_id)) == 2

    rotations = client.list_key_rotations(KeyId=key_id)
    assert rotations["Truncated"] is False and "NextMarker" not in rotations
    (entry,) = rotations["Rotations"]
    assert entry["KeyId"] == key_id and entry["RotationType"] == "ON_DEMAND" and entry["KeyMaterialId"] == second
    assert abs(entry["RotationDate"].timestamp() - time.time()) < 60
    every = client.list_key_rotations(KeyId=key_id, IncludeKeyMaterial="ALL_KEY_MATERIAL")["Rotations"]
    assert [(e["KeyMaterialId"], e["KeyMaterialState"]) for e in every] == [(first, "NON_CURRENT"),
                                                                           (second, "CURRENT")]
    # On-demand rotation leaves automatic rotation as it was.
    assert client.get_key_rotation_status(KeyId=key_id)["KeyRotationEnabled"] is False


def test_rotation_status_limits_states_and_pagination(kms: KmsEnv, client: Any) -> None:
    key_id = client.create_key()["KeyMetadata"]["KeyId"]
    status = client.get_key_rotation_status(KeyId=key_id)
    assert status["KeyRotationEnabled"] is False and "NextRotationDate" not in status
    client.enable_key_rotation(KeyId=key_id)
    status = client.get_key_rotation_status(KeyId=key_id)
    assert status["KeyRotationEnabled"] is True and status["RotationPeriodInDays"] == 365
    # The module's gateway has 3600-second days.
    assert abs(status["NextRotationDate"].timestamp() - (time.time() + 365 * 3600)) < 120
    client.enable_key_rotation(KeyId=key_id, RotationPeriodInDays=90)
    assert client.get_key_rotation_status(KeyId=key_id)["RotationPeriodInDays"] == 90
    message = expect("ValidationException", client.enable_key_rotation, KeyId=key_id, RotationPeriodInDays=2561)
    assert "'rotationPeriodInDays' failed to satisfy constraint: Member must have value less than or equal to 2560" \
        in message
    with pytest.raises(ParamValidationError):  # botocore checks the minimum itself
        client.enable_key_rotation(KeyId=key_id, RotationPeriodInDays=89)
    client.disable_key_rotation(KeyId=key_id)
    assert client.get_key_rotation_status(KeyId=key_id)["KeyRotationEnabled"] is False
    expect("NotFoundException", client.enable_key_rotation, KeyId="alias/nothing")

    client.disable_key(KeyId=key_id)
    expect("DisabledException", client.enable_key_rotation, KeyId=key_id)
    expect("DisabledException", client.rotate_key_on_demand, KeyId=key_id)
    client.schedule_key_deletion(KeyId=key_id, PendingWindowInDays=7)
    expect("KMSInvalidStateException", client.rotate_key_on_demand, KeyId=key_id)
    assert client.get_key_rotation_status(KeyId=key_id)["KeyRotationEnabled"] is False
    client.cancel_key_deletion(KeyId=key_id)
    client.enable_key(KeyId=key_id)

    for _ in range(10):
        client.rotate_key_on_demand(KeyId=key_id)
    message = expect("LimitExceededException", client.rotate_key_on_demand, KeyId=key_id)
    assert message.startswith("The on-demand rotations limit has been reached for the given keyId.")
    pages = list(client.get_paginator("list_key_rotations").paginate(KeyId=key_id, PaginationConfig={"PageSize": 3}))
    assert [len(p["Rotations"]) for p in pages] == [3, 3, 3, 1]
    assert all(p["Truncated"] for p in pages[:-1]) and not pages[-1]["Truncated"]
    versions = [r["KeyMaterialId"] for p in pages for r in p["Rotations"]]
    assert len(set(versions)) == 10
    assert versions[-1] == client.describe_key(KeyId=key_id)["KeyMetadata"]["CurrentKeyMaterialId"]
    expect("InvalidMarkerException", client.list_key_rotations, KeyId=key_id, Marker="bogus")

    hmac = None
    try:
        hmac = client.create_key(KeySpec="HMAC_256", KeyUsage="GENERATE_VERIFY_MAC")["KeyMetadata"]["KeyId"]
    except ClientError:
        pass  # HMAC keys are another group's work; when they exist they must refuse rotation
    if hmac is not None:
        expect("UnsupportedOperationException", client.enable_key_rotation, KeyId=hmac)
        expect("UnsupportedOperationException", client.rotate_key_on_demand, KeyId=hmac)


# --- key policies ---------------------------------------------------------------------------------------------


def test_default_key_policy_and_policy_names(client: Any, who: Principals) -> None:
    key_id = client.create_key()["KeyMetadata"]["KeyId"]
    got = client.get_key_policy(KeyId=key_id)
    assert got["PolicyName"] == "default"
    document = json.loads(got["Policy"])
    assert document["Version"] == "2012-10-17"
    assert document["Statement"] == [{"Sid": "Enable IAM User Permissions", "Effect": "Allow",
                                      "Principal": {"AWS": ROOT}, "Action": "kms:*", "Resource": "*"}]
    assert json.loads(client.get_key_policy(KeyId=key_id, PolicyName="default")["Policy"]) == document
    listed = client.list_key_policies(KeyId=key_id)
    assert listed["PolicyNames"] == ["default"] and listed["Truncated"] is False
    # The default policy delegates to the access keys' own policies.
    blob = who.alice.encrypt(KeyId=key_id, Plaintext=b"x")["CiphertextBlob"]
    assert who.alice.decrypt(CiphertextBlob=blob)["Plaintext"] == b"x"
    who.bob.encrypt(KeyId=key_id, Plaintext=b"x")
    message = expect("AccessDeniedException", who.bob.decrypt, CiphertextBlob=blob)
    assert message == (f"User: {user('bob')} is not authorized to perform: kms:Decrypt on resource: "
                       f"arn:aws:kms:us-east-1:{ACCOUNT}:key/{key_id} because no identity-based policy allows "
                       "the kms:Decrypt action")


def test_principals_not_in_the_key_policy_are_refused(kms: KmsEnv, client: Any, who: Principals) -> None:
    arn_key = client.create_key(Policy=policy(allow(MAIN)))["KeyMetadata"]["Arn"]
    blob = client.encrypt(KeyId=arn_key, Plaintext=b"x")["CiphertextBlob"]
    message = expect("AccessDeniedException", who.alice.encrypt, KeyId=arn_key, Plaintext=b"x")
    assert message == (f"User: {user('alice')} is not authorized to perform: kms:Encrypt on resource: {arn_key} "
                       "because no resource-based policy allows the kms:Encrypt action")
    expect("AccessDeniedException", who.alice.decrypt, CiphertextBlob=blob)
    expect("AccessDeniedException", who.alice.describe_key, KeyId=arn_key)
    # Named directly, a principal needs no permission of its own (bob's policy has no kms:Decrypt).
    client.put_key_policy(KeyId=arn_key, Policy=policy(allow(MAIN), allow(user("bob"), ["kms:Decrypt"])))
    assert who.bob.decrypt(CiphertextBlob=blob)["Plaintext"] == b"x"
    expect("AccessDeniedException", who.bob.encrypt, KeyId=arn_key, Plaintext=b"x")  # not in the key policy


def test_explicit_deny_wins(client: Any, who: Principals) -> None:
    key_arn = client.create_key(Policy=policy(allow(ROOT), deny(user("alice"), "kms:Decrypt"),
                                              allow(user("alice"), "kms:Decrypt")))["KeyMetadata"]["Arn"]
    blob = who.alice.encrypt(KeyId=key_arn, Plaintext=b"x")["CiphertextBlob"]
    message = expect("AccessDeniedException", who.alice.decrypt, CiphertextBlob=blob)
    assert message.endswith("with an explicit deny in a resource-based policy")
    assert client.decrypt(CiphertextBlob=blob)["Plaintext"] == b"x"
    # A Deny for the account applies to every principal of it, the full-rights key included.
    client.put_key_policy(KeyId=key_arn, Policy=policy(allow(ROOT), deny(ROOT, "kms:Encrypt*")))
    expect("AccessDeniedException", client.encrypt, KeyId=key_arn, Plaintext=b"x")
    assert client.decrypt(CiphertextBlob=blob)["Plaintext"] == b"x"


def test_encryption_context_conditions(client: Any, who: Principals) -> None:
    key_arn = client.create_key(Policy=policy(
        allow(MAIN),
        allow(user("alice"), ["kms:Encrypt", "kms:Decrypt"],
              Condition={"StringEquals": {"kms:EncryptionContext:tenant": "a"},
                         "ForAllValues:StringLike": {"kms:EncryptionContextKeys": ["tenant", "app*"]}}),
    ))["KeyMetadata"]["Arn"]
    blob = who.alice.encrypt(KeyId=key_arn, Plaintext=b"x", EncryptionContext={"tenant": "a", "app-id": "7"})
    assert who.alice.decrypt(CiphertextBlob=blob["CiphertextBlob"],
                             EncryptionContext={"tenant": "a", "app-id": "7"})["Plaintext"] == b"x"
    for context in ({"tenant": "b"}, {}, {"tenant": "a", "other": "1"}, {"tenant": "A"}):
        expect("AccessDeniedException", who.alice.encrypt, KeyId=key_arn, Plaintext=b"x", EncryptionContext=context)
    # kms:CallerAccount and aws:PrincipalArn.
    client.put_key_policy(KeyId=key_arn, Policy=policy(
        allow(MAIN), allow("*", "kms:Encrypt", Condition={"StringEquals": {"kms:CallerAccount": ACCOUNT},
                                                          "StringLike": {"aws:PrincipalArn": "*:user/b*"}})))
    who.bob.encrypt(KeyId=key_arn, Plaintext=b"x")
    expect("AccessDeniedException", who.alice.encrypt, KeyId=key_arn, Plaintext=b"x")
    # kms:ViaService never matches here: no AWS service calls this endpoint.
    client.put_key_policy(KeyId=key_arn, Policy=policy(
        allow(MAIN), allow(user("alice"), "kms:Encrypt",
                           Condition={"StringEquals": {"kms:ViaService": "s3.us-east-1.amazonaws.com"}})))
    expect("AccessDeniedException", who.alice.encrypt, KeyId=key_arn, Plaintext=b"x")


def test_malformed_policies_and_the_lockout_check(client: Any, who: Principals) -> None:
    key_id = client.create_key()["KeyMetadata"]["KeyId"]
    before = client.get_key_policy(KeyId=key_id)["Policy"]
    expect("MalformedPolicyDocumentException", client.put_key_policy, KeyId=key_id, Policy="not json")
    expect("MalformedPolicyDocumentException", client.put_key_policy, KeyId=key_id,
           Policy=json.dumps({"Statement": [{"Effect": "Allow", "Action": "kms:*", "Resource": "*"}]}))
    message = expect("MalformedPolicyDocumentException", client.put_key_policy, KeyId=key_id, Policy=policy(
        allow(ROOT, Condition={"NumericLessThan": {"kms:EncryptionContext:n": "3"}})))
    assert "NumericLessThan" in message and "StringEquals" in message
    message = expect("MalformedPolicyDocumentException", client.put_key_policy, KeyId=key_id, Policy=policy(
        allow(ROOT, Condition={"StringEquals": {"aws:SourceIp": "10.0.0.1"}})))
    assert "aws:SourceIp" in message and "kms:EncryptionContextKeys" in message
    message = expect("MalformedPolicyDocumentException", client.put_key_policy, KeyId=key_id,
                     Policy=policy(allow("not-a-principal")))
    assert message == "Policy contains a statement with one or more invalid principals."
    expect("LimitExceededException", client.put_key_policy, KeyId=key_id,
           Policy=policy(allow(ROOT, Sid="x" * 33000)))
    expect("MalformedPolicyDocumentException", client.create_key, Policy="[]")
    # A policy that would lock the caller out needs BypassPolicyLockoutSafetyCheck.
    message = expect("MalformedPolicyDocumentException", client.put_key_policy, KeyId=key_id,
                     Policy=policy(allow(user("alice"))))
    assert message == "The new key policy will not allow you to update the key policy in the future."
    assert client.get_key_policy(KeyId=key_id)["Policy"] == before
    client.put_key_policy(KeyId=key_id, Policy=policy(allow(user("alice"))), BypassPolicyLockoutSafetyCheck=True)
    expect("AccessDeniedException", client.get_key_policy, KeyId=key_id)
    assert json.loads(who.alice.get_key_policy(KeyId=key_id)["Policy"])["Statement"][0]["Principal"] == {
        "AWS": user("alice")}
    who.alice.put_key_policy(KeyId=key_id, Policy=before)
    assert client.get_key_policy(KeyId=key_id)["Policy"] == before


def test_access_key_policies_still_apply_to_keyless_operations(who: Principals) -> None:
    expect("AccessDeniedException", who.bob.create_key)
    expect("AccessDeniedException", who.bob.list_retirable_grants, RetiringPrincipal=user("bob"))
    assert "Keys" in who.carol.list_keys()


# --- grants --------------------------------------------------------------------------------------------------


def test_grants_allow_their_grantee_until_retired_or_revoked(kms: KmsEnv, client: Any, who: Principals) -> None:
    key_id = client.create_key()["KeyMetadata"]["KeyId"]
    blob = client.encrypt(KeyId=key_id, Plaintext=b"secret")["CiphertextBlob"]
    message = expect("AccessDeniedException", who.carol.decrypt, CiphertextBlob=blob)
    assert "because no identity-based policy allows the kms:Decrypt action" in message

    granted = client.create_grant(KeyId=key_id, GranteePrincipal=user("carol"), RetiringPrincipal=user("alice"),
                                  Operations=["Decrypt", "Encrypt", "DescribeKey"], Name="carol-rw")
    grant_id, token = granted["GrantId"], granted["GrantToken"]
    assert len(grant_id) == 64
    assert who.carol.decrypt(CiphertextBlob=blob, GrantTokens=[token])["Plaintext"] == b"secret"
    assert who.carol.decrypt(CiphertextBlob=blob)["Plaintext"] == b"secret"  # immediately consistent anyway
    who.carol.encrypt(KeyId=key_id, Plaintext=b"x")
    who.carol.describe_key(KeyId=key_id)
    expect("AccessDeniedException", who.carol.generate_data_key, KeyId=key_id, NumberOfBytes=32)
    expect("AccessDeniedException", who.carol.revoke_grant, KeyId=key_id, GrantId=grant_id)
    expect("InvalidGrantTokenException", who.carol.decrypt, CiphertextBlob=blob, GrantTokens=["bogus"])
    expect("InvalidGrantTokenException", client.encrypt, KeyId=key_id, Plaintext=b"x",
           GrantTokens=[token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")])
    expect("ValidationException", client.encrypt, KeyId=key_id, Plaintext=b"x", GrantTokens=[token] * 11)
    # Same Name and parameters: the same grant (CreateGrant is idempotent by name).
    again = client.create_grant(KeyId=key_id, GranteePrincipal=user("carol"), RetiringPrincipal=user("alice"),
                                Operations=["Decrypt", "Encrypt", "DescribeKey"], Name="carol-rw")
    assert again["GrantId"] == grant_id

    listed = client.list_grants(KeyId=key_id)["Grants"]
    (entry,) = listed
    assert entry["KeyId"] == kms.arn(key_id) and entry["GrantId"] == grant_id and entry["Name"] == "carol-rw"
    assert entry["GranteePrincipal"] == user("carol") and entry["RetiringPrincipal"] == user("alice")
    assert entry["IssuingAccount"] == ROOT and entry["Operations"] == ["Decrypt", "Encrypt", "DescribeKey"]
    retirable = who.alice.list_retirable_grants(RetiringPrincipal=user("alice"))["Grants"]
    assert [g["GrantId"] for g in retirable] == [grant_id]

    # The retiring principal retires it with the token; then the grantee is refused again.
    who.alice.retire_grant(GrantToken=token)
    expect("AccessDeniedException", who.carol.decrypt, CiphertextBlob=blob)
    assert client.list_grants(KeyId=key_id)["Grants"] == []

    # A grantee whose grant includes RetireGrant may retire it; others may not.
    second = client.create_grant(KeyId=key_id, GranteePrincipal=user("carol"), Operations=["Decrypt", "RetireGrant"])
    expect("AccessDeniedException", who.bob.retire_grant, KeyId=key_id, GrantId=second["GrantId"])
    who.carol.retire_grant(KeyId=kms.arn(key_id), GrantId=second["GrantId"])
    expect("AccessDeniedException", who.carol.decrypt, CiphertextBlob=blob)
    expect("NotFoundException", client.retire_grant, KeyId=key_id, GrantId=second["GrantId"])

    # Key users revoke grants (kms:RevokeGrant).
    third = client.create_grant(KeyId=key_id, GranteePrincipal=user("carol"), Operations=["Decrypt"])
    who.carol.decrypt(CiphertextBlob=blob)
    client.revoke_grant(KeyId=key_id, GrantId=third["GrantId"])
    expect("AccessDeniedException", who.carol.decrypt, CiphertextBlob=blob)
    expect("NotFoundException", client.revoke_grant, KeyId=key_id, GrantId=third["GrantId"])
    expect("InvalidGrantIdException", client.revoke_grant, KeyId=key_id, GrantId="nope")


def test_grant_constraints_and_grants_that_create_grants(kms: KmsEnv, client: Any, who: Principals) -> None:
    key_id = client.create_key()["KeyMetadata"]["KeyId"]
    client.create_grant(KeyId=key_id, GranteePrincipal=user("carol"), Operations=["Encrypt", "Decrypt"],
                        Constraints={"EncryptionContextSubset": {"Tenant": "a"}})
    blob = who.carol.encrypt(KeyId=key_id, Plaintext=b"x", EncryptionContext={"tenant": "a", "more": "1"})
    who.carol.decrypt(CiphertextBlob=blob["CiphertextBlob"], EncryptionContext={"tenant": "a", "more": "1"})
    for context in ({}, {"tenant": "b"}, {"tenant": "A"}):
        expect("AccessDeniedException", who.carol.encrypt, KeyId=key_id, Plaintext=b"x", EncryptionContext=context)

    other = client.create_key()["KeyMetadata"]["KeyId"]
    client.create_grant(KeyId=other, GranteePrincipal=user("carol"), Operations=["Encrypt"],
                        Constraints={"EncryptionContextEquals": {"tenant": "a"}})
    who.carol.encrypt(KeyId=other, Plaintext=b"x", EncryptionContext={"tenant": "a"})
    expect("AccessDeniedException", who.carol.encrypt, KeyId=other, Plaintext=b"x",
           EncryptionContext={"tenant": "a", "more": "1"})
    expect("ValidationException", client.create_grant, KeyId=other, GranteePrincipal=user("carol"),
           Operations=["Encrypt"], Constraints={"EncryptionContextEquals": {"a": "1"},
                                                "EncryptionContextSubset": {"a": "1"}})
    expect("ValidationException", client.create_grant, KeyId=other, GranteePrincipal=user("carol"),
           Operations=["Sign"])
    expect("ValidationException", client.create_grant, KeyId=other, GranteePrincipal=user("carol"),
           Operations=["Fly"])

    # A grant with CreateGrant lets its grantee grant no more than it has.
    third = client.create_key()["KeyMetadata"]["KeyId"]
    client.create_grant(KeyId=third, GranteePrincipal=user("carol"), Operations=["Encrypt", "CreateGrant"],
                        Constraints={"EncryptionContextSubset": {"app": "x"}})
    who.carol.create_grant(KeyId=third, GranteePrincipal=user("bob"), Operations=["Encrypt"],
                           Constraints={"EncryptionContextEquals": {"app": "x", "n": "1"}})
    expect("AccessDeniedException", who.carol.create_grant, KeyId=third, GranteePrincipal=user("bob"),
           Operations=["Decrypt"], Constraints={"EncryptionContextSubset": {"app": "x"}})
    expect("AccessDeniedException", who.carol.create_grant, KeyId=third, GranteePrincipal=user("bob"),
           Operations=["Encrypt"])
    # ListGrants: filters and pagination.
    for n in range(3):
        client.create_grant(KeyId=third, GranteePrincipal=user("alice"), Operations=["Decrypt"], Name=f"g{n}")
    pages = list(client.get_paginator("list_grants").paginate(KeyId=third, PaginationConfig={"PageSize": 2}))
    assert [len(p["Grants"]) for p in pages] == [2, 2, 1]
    alices = client.list_grants(KeyId=third, GranteePrincipal=user("alice"))["Grants"]
    assert sorted(g["Name"] for g in alices) == ["g0", "g1", "g2"]
    one = client.list_grants(KeyId=third, GrantId=alices[0]["GrantId"])["Grants"]
    assert [g["GrantId"] for g in one] == [alices[0]["GrantId"]]


# --- automatic rotation and deletion (a second gateway with short days) --------------------------------------------


def test_automatic_rotation_fires_and_deletion_destroys_every_version(kms: KmsEnv) -> None:
    with short_day_gateway(kms, "kms-rotation", day_seconds=0.01) as fast:  # 90 days = 0.9 s
        client = fast.client()
        key_id = client.create_key()["KeyMetadata"]["KeyId"]
        old = client.encrypt(KeyId=key_id, Plaintext=b"old")["CiphertextBlob"]
        client.enable_key_rotation(KeyId=key_id, RotationPeriodInDays=90)
        deadline = time.monotonic() + 20
        while len(client.list_key_rotations(KeyId=key_id)["Rotations"]) < 2:
            assert time.monotonic() < deadline, "no automatic rotation"
            time.sleep(0.2)
        client.disable_key_rotation(KeyId=key_id)
        rotations = client.list_key_rotations(KeyId=key_id)["Rotations"]
        assert {r["RotationType"] for r in rotations} == {"AUTOMATIC"}
        assert client.decrypt(CiphertextBlob=old)["Plaintext"] == b"old"
        new = client.encrypt(KeyId=key_id, Plaintext=b"new")["CiphertextBlob"]
        assert material_version(new) >= 3
        count = len(labels(kms, key_id))
        assert count >= 3

        grant_id = client.create_grant(KeyId=key_id, GranteePrincipal=user("carol"), RetiringPrincipal=MAIN,
                                       Operations=["Decrypt"])["GrantId"]
        assert grant_id in [g["GrantId"] for g in client.list_retirable_grants(RetiringPrincipal=MAIN)["Grants"]]
        client.schedule_key_deletion(KeyId=key_id, PendingWindowInDays=7)
        wait_deleted(client, key_id)
        # The key is invisible from its tombstone on; its objects and grants follow in the same sweep.
        deadline = time.monotonic() + 10
        while labels(kms, key_id) or grant_id in [
                g["GrantId"] for g in client.list_retirable_grants(RetiringPrincipal=MAIN)["Grants"]]:
            assert time.monotonic() < deadline, "the key's objects or grants were left behind"
            time.sleep(0.2)
        expect("InvalidCiphertextException", client.decrypt, CiphertextBlob=old)
