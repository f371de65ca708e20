"""AWS-style validation messages, key identifiers, access-key policies, pagination markers."""

from __future__ import annotations

import base64

import pytest

from strongroom.kms.arn import Location, parse_identifier
from strongroom.kms.errors import InvalidArn, InvalidMarker, NotFound, SerializationError, Validation
from strongroom.kms.ops.common import make_marker, parse_marker
from strongroom.kms.policy import PolicyError, parse_policy
from strongroom.kms.validation import Params

HERE = Location("us-east-1", "111122223333")
KEY = "1234abcd-12ab-34cd-56ef-1234567890ab"


def test_one_violation_has_aws_wording():
    params = Params({"KeyId": "x" * 2049})
    params.string("KeyId", required=True, max_len=2048)
    with pytest.raises(Validation) as caught:
        params.check()
    assert caught.value.message == ("1 validation error detected: Value at 'keyId' failed to satisfy constraint: "
                                    "Member must have length less than or equal to 2048")


def test_several_violations_are_joined():
    params = Params({"NumberOfBytes": 0, "KeySpec": "AES_512"})
    params.integer("NumberOfBytes", minimum=1, maximum=1024)
    params.string("KeySpec", enum=["AES_256", "AES_128"])
    params.string("KeyId", required=True)
    with pytest.raises(Validation) as caught:
        params.check()
    assert caught.value.message == (
        "3 validation errors detected: "
        "Value '0' at 'numberOfBytes' failed to satisfy constraint: Member must have value greater than or equal to 1; "
        "Value 'AES_512' at 'keySpec' failed to satisfy constraint: Member must satisfy enum value set: "
        "[AES_256, AES_128]; "
        "Value null at 'keyId' failed to satisfy constraint: Member must not be null")


def test_blob_lengths_and_types():
    params = Params({"Plaintext": base64.b64encode(b"x" * 4097).decode()})
    params.blob("Plaintext", required=True, max_len=4096)
    with pytest.raises(Validation, match="Value at 'plaintext' failed to satisfy constraint: Member must have "
                                         "length less than or equal to 4096"):
        params.check()
    with pytest.raises(SerializationError):
        Params({"Plaintext": "%%%"}).blob("Plaintext")
    with pytest.raises(SerializationError):
        Params({"KeyId": 5}).string("KeyId")


def test_tag_members_are_named_like_aws():
    params = Params({"Tags": [{"TagKey": "k", "TagValue": "v" * 257}, {"TagKey": ""}]})
    params.tags("Tags")
    with pytest.raises(Validation) as caught:
        params.check()
    text = caught.value.message
    assert "'tags.1.member.tagValue'" in text and "'tags.2.member.tagKey'" in text
    assert "Value null at 'tags.2.member.tagValue'" in text


@pytest.mark.parametrize("text, kind, value", [
    (KEY, "key", KEY),
    (KEY.upper(), "key", KEY),
    (f"arn:aws:kms:us-east-1:111122223333:key/{KEY}", "key", KEY),
    ("alias/my-key", "alias", "alias/my-key"),
    ("arn:aws:kms:us-east-1:111122223333:alias/my-key", "alias", "alias/my-key"),
])
def test_identifier_forms(text, kind, value):
    ref = parse_identifier(text, HERE)
    assert (ref.kind, ref.value) == (kind, value)


@pytest.mark.parametrize("text, error, message", [
    ("fake-key-id", NotFound, "Invalid keyId 'fake-key-id'"),
    (f"arn:aws:kms:eu-west-1:111122223333:key/{KEY}", NotFound, "Invalid arn eu-west-1"),
    ("mrk-" + "0" * 32, NotFound, "does not exist"),
    ("arn:aws:s3:::bucket", InvalidArn, "not a valid KMS key or alias ARN"),
    ("arn:aws:kms:us-east-1:111122223333:thing/x", InvalidArn, "not a valid KMS key or alias ARN"),
])
def test_identifier_errors(text, error, message):
    with pytest.raises(error, match=message):
        parse_identifier(text, HERE)


def test_aliases_refused_where_only_keys_are_accepted():
    with pytest.raises(NotFound, match="Invalid keyId 'alias/x'"):
        parse_identifier("alias/x", HERE, allow_alias=False)


def test_policy_evaluation():
    policy = parse_policy('{"Version": "2012-10-17", "Statement": ['
                          '{"Effect": "Allow", "Action": ["kms:Encrypt", "kms:Describe*"], "Resource": "*"},'
                          '{"Effect": "Deny", "Action": "kms:DescribeKey", "Resource": "arn:aws:kms:*:*:key/secret*"}'
                          ']}')
    assert policy.decide("kms:Encrypt", "arn:aws:kms:us-east-1:1:key/a") == "allow"
    assert policy.decide("kms:describekey", "arn:aws:kms:us-east-1:1:key/a") == "allow"
    assert policy.decide("kms:DescribeKey", "arn:aws:kms:us-east-1:1:key/secret-1") == "deny"
    assert policy.decide("kms:Decrypt", "arn:aws:kms:us-east-1:1:key/a") == "implicit"
    for bad in ("[]", "{}", '{"Statement": [{"Effect": "Allow", "Action": "s3:*"}]}',
                '{"Statement": {"Effect": "Allow", "Action": "kms:*", "Condition": {}}}'):
        with pytest.raises(PolicyError):
            parse_policy(bad)


def test_markers_round_trip_and_are_checked():
    assert parse_marker(make_marker("keys", KEY), "keys") == KEY
    assert parse_marker(None, "keys") == ""
    for bad in (make_marker("aliases", "alias/x"), "not-base64!", base64.urlsafe_b64encode(b"keys").decode()):
        with pytest.raises(InvalidMarker):
            parse_marker(bad, "keys")
