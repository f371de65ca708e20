"""Key-policy evaluation (principals, conditions, Deny), the supported subset, grant constraints and tokens."""

from __future__ import annotations

import json

import pytest

from strongroom.kms.grants import Grant, new_grant_id, new_nonce, parse_token
from strongroom.kms.policy import PolicyError, Request, default_key_policy, evaluate, parse_policy

ACCOUNT = "111122223333"
KEY = f"arn:aws:kms:us-east-1:{ACCOUNT}:key/1234abcd-12ab-34cd-56ef-1234567890ab"
ALICE = f"arn:aws:iam::{ACCOUNT}:user/alice"
BOB = f"arn:aws:iam::{ACCOUNT}:user/bob"
ROOT = f"arn:aws:iam::{ACCOUNT}:root"


def key_policy(*statements: dict) -> object:
    return parse_policy(json.dumps({"Version": "2012-10-17", "Statement": list(statements)}), key_policy=True)


def st(effect: str, principal: object, action: object = "kms:*", **extra: object) -> dict:
    return {"Effect": effect, "Principal": principal, "Action": action, "Resource": "*", **extra}


def req(action: str = "kms:Encrypt", principal: str = ALICE, context: dict | None = None) -> Request:
    return Request(action, KEY, principal, ACCOUNT, context)


def test_default_policy_delegates_to_identity_policies():
    policy = parse_policy(default_key_policy("aws", ACCOUNT), key_policy=True)
    assert evaluate(req(), policy, None) == ("allow", "")
    only_decrypt = parse_policy('{"Statement": {"Effect": "Allow", "Action": "kms:Decrypt", "Resource": "*"}}')
    assert evaluate(req(), policy, only_decrypt) == ("implicit", "identity-based")
    assert evaluate(req("kms:Decrypt"), policy, only_decrypt) == ("allow", "")
    assert evaluate(req(), policy, None, identity_error=True) == ("implicit", "identity-based")


def test_principals_deny_and_wildcards():
    policy = key_policy(st("Allow", {"AWS": [BOB]}, "kms:Encrypt*"), st("Deny", {"AWS": ACCOUNT}, "kms:Decrypt"),
                        st("Allow", "*", "kms:Describe*"))
    only_nothing = parse_policy('{"Statement": {"Effect": "Allow", "Action": "kms:ListKeys", "Resource": "*"}}')
    assert evaluate(req("kms:Encrypt", BOB), policy, only_nothing)[0] == "allow"  # named: no IAM permission needed
    assert evaluate(req("kms:Encrypt", ALICE), policy, None) == ("implicit", "resource-based")
    assert evaluate(req("kms:Decrypt", BOB), policy, None) == ("deny", "resource-based")
    assert evaluate(req("kms:DescribeKey", ALICE), policy, only_nothing)[0] == "allow"
    identity_deny = parse_policy('{"Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"},'
                                 '{"Effect": "Deny", "Action": "kms:Encrypt", "Resource": "*"}]}')
    assert evaluate(req("kms:Encrypt", BOB), policy, identity_deny) == ("deny", "identity-based")
    not_action = key_policy(
        {"Effect": "Allow", "Principal": {"AWS": ROOT}, "NotAction": "kms:Schedule*", "Resource": "*"})
    assert evaluate(req("kms:Encrypt"), not_action, None)[0] == "allow"
    assert evaluate(req("kms:ScheduleKeyDeletion"), not_action, None)[0] == "implicit"


def test_encryption_context_conditions():
    policy = key_policy(st("Allow", {"AWS": ALICE}, Condition={
        "StringEquals": {"kms:EncryptionContext:Tenant": ["a", "b"]},
        "ForAllValues:StringLike": {"kms:EncryptionContextKeys": ["tenant", "app*"]}}))
    assert evaluate(req(context={"tenant": "a"}), policy, None)[0] == "allow"  # context key part: any case
    assert evaluate(req(context={"tenant": "b", "app-x": "1"}), policy, None)[0] == "allow"
    assert evaluate(req(context={"tenant": "c"}), policy, None)[0] == "implicit"
    assert evaluate(req(context={"tenant": "A"}), policy, None)[0] == "implicit"  # values are exact
    assert evaluate(req(context={"tenant": "a", "x": "1"}), policy, None)[0] == "implicit"
    assert evaluate(req(context=None), policy, None)[0] == "implicit"
    any_key = key_policy(st("Allow", {"AWS": ALICE}, Condition={
        "ForAnyValue:StringEquals": {"kms:EncryptionContextKeys": "k"}}))
    assert evaluate(req(context={"k": "1", "j": "2"}), any_key, None)[0] == "allow"
    assert evaluate(req(context={"j": "2"}), any_key, None)[0] == "implicit"
    negated = key_policy(st("Deny", "*", Condition={"StringNotEquals": {"kms:CallerAccount": ACCOUNT}}),
                         st("Allow", "*", Condition={"StringNotLike": {"kms:ViaService": "*"}}))
    assert evaluate(req(), negated, None)[0] == "allow"  # ViaService is never present
    arn = key_policy(st("Allow", "*", Condition={"StringEqualsIgnoreCase": {"aws:PrincipalArn": BOB.upper()}}))
    assert evaluate(req(principal=BOB), arn, None)[0] == "allow"
    assert evaluate(req(principal=ALICE), arn, None)[0] == "implicit"


@pytest.mark.parametrize("statement, named", [
    (st("Allow", "*", Condition={"NumericLessThan": {"kms:EncryptionContext:a": "1"}}), "NumericLessThan"),
    (st("Allow", "*", Condition={"StringEqualsIfExists": {"kms:EncryptionContext:a": "1"}}), "StringEqualsIfExists"),
    (st("Allow", "*", Condition={"StringEquals": {"aws:SourceIp": "1.2.3.4"}}), "aws:SourceIp"),
    (st("Allow", "*", Condition={"StringEquals": {"kms:GrantIsForAWSResource": "true"}}), "kms:GrantIsForAWSResource"),
    (st("Allow", {"AWS": "bob"}), "invalid principals"),
    (st("Allow", {"Weird": ROOT}), "invalid principals"),
    ({"Effect": "Allow", "Action": "kms:*", "Resource": "*"}, "no principal"),
    ({"Effect": "Allow", "NotPrincipal": {"AWS": ROOT}, "Action": "kms:*"}, "NotPrincipal"),
    ({"Effect": "Allow", "Principal": "*", "Action": "kms:*", "NotAction": "kms:Decrypt"}, "NotAction"),
    ({"Effect": "Allow", "Principal": "*", "Action": "s3:*"}, "kms:"),
])
def test_unsupported_or_malformed_key_policies_are_refused_naming_why(statement, named):
    with pytest.raises(PolicyError, match=named):
        key_policy(statement)


def test_identity_policies_take_no_principal():
    with pytest.raises(PolicyError):
        parse_policy(json.dumps({"Statement": st("Allow", "*")}))


def test_grant_constraints_and_tokens():
    grant = Grant(KEY.rsplit("/", 1)[1], new_grant_id(), ALICE, ["Encrypt", "DescribeKey"], 0.0, new_nonce(),
                  constraints={"EncryptionContextSubset": {"Tenant": "a"}})
    assert grant.allows(ALICE, "Encrypt", {"tenant": "a", "x": "y"})
    assert not grant.allows(ALICE, "Encrypt", {"tenant": "A"})
    assert not grant.allows(ALICE, "Encrypt", None)
    assert grant.allows(ALICE, "DescribeKey", None)  # constraints apply only to operations with a context
    assert not grant.allows(BOB, "Encrypt", {"tenant": "a"})
    assert not grant.allows(ALICE, "Decrypt", {"tenant": "a"})
    grant.constraints = {"EncryptionContextEquals": {"tenant": "a"}}
    assert grant.allows(ALICE, "Encrypt", {"TENANT": "a"}) and not grant.allows(ALICE, "Encrypt", {"tenant": "a",
                                                                                                   "x": "y"})
    assert parse_token(grant.token) == (grant.key_id, grant.grant_id, grant.nonce)
    for bad in ("", "bogus", grant.token + "AA", grant.token[:-8]):
        assert parse_token(bad) is None
