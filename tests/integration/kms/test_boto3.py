"""The first KMS operation set through real boto3 against a real gateway and cluster."""

from __future__ import annotations

import base64
import json
import os
import time
from typing import Any

import httpx
import pytest
from botocore.exceptions import ClientError

from strongroom.client import Client
from strongroom.client import ClientError as HsmClientError
from strongroom.errors import CKR
from tests.integration.kms.conftest import (
    ACCOUNT,
    REGION,
    KmsEnv,
    error_of,
    gateway_login,
    short_day_gateway,
    wait_deleted,
)

pytestmark = pytest.mark.slow


def new_key(client: Any, **kwargs: Any) -> dict[str, Any]:
    return client.create_key(**kwargs)["KeyMetadata"]


def expect(code: str, call: Any, *args: Any, message: str | None = None, **kwargs: Any) -> str:
    with pytest.raises(ClientError) as caught:
        call(*args, **kwargs)
    got_code, got_message = error_of(caught)
    assert got_code == code, (got_code, got_message)
    if message is not None:
        assert got_message == message
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    return got_message


# --- keys ---------------------------------------------------------------------------------------------


def test_create_describe_list_and_describe_forms(kms: KmsEnv, client: Any) -> None:
    meta = new_key(client, Description="orders", Tags=[{"TagKey": "team", "TagValue": "db"}])
    key_id = meta["KeyId"]
    assert meta["Arn"] == kms.arn(key_id) and meta["AWSAccountId"] == ACCOUNT
    assert {k: meta[k] for k in ("KeyState", "Enabled", "KeyUsage", "KeySpec", "CustomerMasterKeySpec",
                                 "Origin", "KeyManager", "MultiRegion", "EncryptionAlgorithms", "Description")} == {
        "KeyState": "Enabled", "Enabled": True, "KeyUsage": "ENCRYPT_DECRYPT", "KeySpec": "SYMMETRIC_DEFAULT",
        "CustomerMasterKeySpec": "SYMMETRIC_DEFAULT", "Origin": "AWS_KMS", "KeyManager": "CUSTOMER",
        "MultiRegion": False, "EncryptionAlgorithms": ["SYMMETRIC_DEFAULT"], "Description": "orders"}
    assert len(meta["CurrentKeyMaterialId"]) == 64
    client.create_alias(AliasName="alias/orders", TargetKeyId=key_id)
    for form in (key_id, kms.arn(key_id), "alias/orders", f"arn:aws:kms:{REGION}:{ACCOUNT}:alias/orders"):
        described = client.describe_key(KeyId=form)["KeyMetadata"]
        assert described["KeyId"] == key_id and described["Arn"] == kms.arn(key_id)
    listed = [k for page in client.get_paginator("list_keys").paginate() for k in page["Keys"]]
    assert {"KeyId": key_id, "KeyArn": kms.arn(key_id)} in listed
    client.update_key_description(KeyId=key_id, Description="")
    assert client.describe_key(KeyId=key_id)["KeyMetadata"]["Description"] == ""
    assert client.list_resource_tags(KeyId=key_id)["Tags"] == [{"TagKey": "team", "TagValue": "db"}]


def test_the_cluster_holds_a_non_extractable_key_labelled_by_key_id(kms: KmsEnv, client: Any) -> None:
    from strongroom.constants import CKA

    key_id = new_key(client)["KeyId"]
    with Client.from_dir(kms.cluster.dir) as hsm:
        hsm.login(*gateway_login(kms.cluster))
        (handle,) = hsm.find_objects({CKA.LABEL: f"kms/{key_id}/1".encode()})
        attrs = hsm.get_attributes(handle, [CKA.SENSITIVE, CKA.EXTRACTABLE, CKA.TOKEN, CKA.VALUE_LEN])
        assert attrs == {CKA.SENSITIVE: True, CKA.EXTRACTABLE: False, CKA.TOKEN: True, CKA.VALUE_LEN: 32}
        with pytest.raises(HsmClientError) as refused:
            hsm.get_attributes(handle, [CKA.VALUE])
        assert refused.value.code == CKR.ATTRIBUTE_SENSITIVE
        hsm.logout()


def test_not_found_and_malformed_ids(kms: KmsEnv, client: Any) -> None:
    missing = "12345678-1234-1234-1234-123456789012"
    expect("NotFoundException", client.describe_key, KeyId=missing,
           message=f"Key '{kms.arn(missing)}' does not exist")
    expect("NotFoundException", client.describe_key, KeyId="fake-key-id", message="Invalid keyId 'fake-key-id'")
    expect("NotFoundException", client.describe_key, KeyId=f"arn:aws:kms:eu-west-1:{ACCOUNT}:key/{missing}",
           message="Invalid arn eu-west-1")
    expect("NotFoundException", client.describe_key, KeyId="alias/none",
           message=f"Alias arn:aws:kms:{REGION}:{ACCOUNT}:alias/none is not found.")
    expect("InvalidArnException", client.describe_key, KeyId="arn:aws:s3:::bucket")
    expect("ValidationException", client.describe_key, KeyId="k" * 2049,
           message="1 validation error detected: Value at 'keyId' failed to satisfy constraint: "
                   "Member must have length less than or equal to 2048")
    expect("NotFoundException", client.enable_key, KeyId="alias/none")


def test_create_key_refusals(client: Any) -> None:
    expect("UnsupportedOperationException", client.create_key, KeySpec="ML_KEM_512",
           KeyUsage="ENCAPSULATE_DECAPSULATE")
    expect("ValidationException", client.create_key, KeySpec="HMAC_256",
           message="You must specify a KeyUsage value for all KMS keys except for symmetric encryption keys.")
    message = expect("ValidationException", client.create_key, KeySpec="HMAC_random")
    assert message.startswith("1 validation error detected: Value 'HMAC_random' at 'keySpec' failed to satisfy "
                              "constraint: Member must satisfy enum value set: [RSA_2048")
    expect("ValidationException", client.create_key, KeyUsage="SIGN_VERIFY")
    expect("ValidationException", client.create_key, Description="d" * 8193)
    expect("UnsupportedOperationException", client.create_key, Origin="EXTERNAL_KEY_STORE")
    expect("TagException", client.create_key, Tags=[{"TagKey": "aws:x", "TagValue": "y"}],
           message="Tags beginning with aws: are reserved")


# --- encryption -------------------------------------------------------------------------------------


def test_encrypt_decrypt_with_every_key_form_and_no_key_id(kms: KmsEnv, client: Any) -> None:
    key_id = new_key(client)["KeyId"]
    client.create_alias(AliasName="alias/forms", TargetKeyId=key_id)
    context = {"tenant": "acme", "purpose": "test"}
    for form in (key_id, kms.arn(key_id), "alias/forms", f"arn:aws:kms:{REGION}:{ACCOUNT}:alias/forms"):
        sealed = client.encrypt(KeyId=form, Plaintext=b"secret row", EncryptionContext=context)
        assert sealed["KeyId"] == kms.arn(key_id) and sealed["EncryptionAlgorithm"] == "SYMMETRIC_DEFAULT"
        assert b"secret row" not in sealed["CiphertextBlob"] and b"acme" not in sealed["CiphertextBlob"]
        opened = client.decrypt(CiphertextBlob=sealed["CiphertextBlob"], EncryptionContext=dict(reversed(
            list(context.items()))))
        assert opened["Plaintext"] == b"secret row" and opened["KeyId"] == kms.arn(key_id)
        assert len(opened["KeyMaterialId"]) == 64
        with_id = client.decrypt(CiphertextBlob=sealed["CiphertextBlob"], EncryptionContext=context, KeyId=form)
        assert with_id["Plaintext"] == b"secret row"
    assert len(client.encrypt(KeyId=key_id, Plaintext=b"x" * 4096)["CiphertextBlob"]) <= 6144


def test_decrypt_with_the_wrong_key_id(kms: KmsEnv, client: Any) -> None:
    a, b = new_key(client)["KeyId"], new_key(client)["KeyId"]
    blob = client.encrypt(KeyId=a, Plaintext=b"data")["CiphertextBlob"]
    expect("IncorrectKeyException", client.decrypt, CiphertextBlob=blob, KeyId=b,
           message="The key ID in the request does not identify a CMK that can perform this operation.")


@pytest.mark.parametrize("given", [None, {}, {"tenant": "acme"}, {"tenant": "acme", "extra": "1"},
                                   {"tenant": "ACME"}, {"Tenant": "acme"}])
def test_wrong_missing_or_extra_encryption_context(client: Any, given: dict[str, str] | None) -> None:
    key_id = new_key(client)["KeyId"]
    blob = client.encrypt(KeyId=key_id, Plaintext=b"data", EncryptionContext={"tenant": "acme"})["CiphertextBlob"]
    kwargs = {} if given is None else {"EncryptionContext": given}
    if given == {"tenant": "acme"}:
        assert client.decrypt(CiphertextBlob=blob, **kwargs)["Plaintext"] == b"data"
    else:
        expect("InvalidCiphertextException", client.decrypt, CiphertextBlob=blob, message="", **kwargs)


REGIONS = {"magic": 0, "version": 1, "key id": 5, "material version": 21, "iv": 25, "body": 37, "tag": -3}


@pytest.mark.parametrize("region", list(REGIONS))
def test_tampering_any_region_is_invalid_ciphertext(client: Any, region: str) -> None:
    key_id = new_key(client)["KeyId"]
    blob = bytearray(client.encrypt(KeyId=key_id, Plaintext=b"sixteen byte msg")["CiphertextBlob"])
    assert len(blob) == 34 + 16 + 16
    blob[REGIONS[region]] ^= 0x01
    expect("InvalidCiphertextException", client.decrypt, CiphertextBlob=bytes(blob), message="")
    expect("InvalidCiphertextException", client.decrypt, CiphertextBlob=bytes(blob[:-1]), message="")


def test_re_encrypt(kms: KmsEnv, client: Any) -> None:
    a, b = new_key(client)["KeyId"], new_key(client)["KeyId"]
    blob = client.encrypt(KeyId=a, Plaintext=b"move me", EncryptionContext={"k": "1"})["CiphertextBlob"]
    moved = client.re_encrypt(CiphertextBlob=blob, SourceEncryptionContext={"k": "1"}, DestinationKeyId=b,
                              DestinationEncryptionContext={"k": "2"})
    assert moved["SourceKeyId"] == kms.arn(a) and moved["KeyId"] == kms.arn(b)
    opened = client.decrypt(CiphertextBlob=moved["CiphertextBlob"], EncryptionContext={"k": "2"})
    assert opened["Plaintext"] == b"move me" and opened["KeyId"] == kms.arn(b)
    expect("InvalidCiphertextException", client.re_encrypt, CiphertextBlob=blob, DestinationKeyId=b)
    expect("IncorrectKeyException", client.re_encrypt, CiphertextBlob=blob, SourceKeyId=b,
           SourceEncryptionContext={"k": "1"}, DestinationKeyId=b)


def test_data_keys_and_random(kms: KmsEnv, client: Any) -> None:
    key_id = new_key(client)["KeyId"]
    for kwargs, length in (({"NumberOfBytes": 1}, 1), ({"NumberOfBytes": 1024}, 1024), ({"KeySpec": "AES_128"}, 16),
                           ({"KeySpec": "AES_256"}, 32)):
        data_key = client.generate_data_key(KeyId=key_id, EncryptionContext={"f": "x"}, **kwargs)
        assert len(data_key["Plaintext"]) == length and data_key["KeyId"] == kms.arn(key_id)
        assert client.decrypt(CiphertextBlob=data_key["CiphertextBlob"],
                              EncryptionContext={"f": "x"})["Plaintext"] == data_key["Plaintext"]
    bare = client.generate_data_key_without_plaintext(KeyId=key_id, KeySpec="AES_256")
    assert "Plaintext" not in bare and len(client.decrypt(CiphertextBlob=bare["CiphertextBlob"])["Plaintext"]) == 32
    expect("ValidationException", client.generate_data_key, KeyId=key_id,
           message="Please specify either number of bytes or key spec.")
    expect("ValidationException", client.generate_data_key, KeyId=key_id, NumberOfBytes=16, KeySpec="AES_128")
    expect("ValidationException", client.generate_data_key, KeyId=key_id, NumberOfBytes=1025,
           message="1 validation error detected: Value '1025' at 'numberOfBytes' failed to satisfy constraint: "
                   "Member must have value less than or equal to 1024")
    assert len(client.generate_random(NumberOfBytes=1024)["Plaintext"]) == 1024
    assert len(client.generate_random(NumberOfBytes=1)["Plaintext"]) == 1


def raw_call(kms: KmsEnv, operation: str, body: dict[str, Any]) -> httpx.Response:
    """A signed request whose body botocore did not validate (its client refuses values below the minimum)."""
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    request = AWSRequest(method="POST", url=kms.endpoint + "/", data=json.dumps(body).encode(),
                         headers={"X-Amz-Target": f"TrentService.{operation}",
                                  "Content-Type": "application/x-amz-json-1.1"})
    SigV4Auth(Credentials(kms.access_key_id, kms.secret), "kms", REGION).add_auth(request)
    return httpx.post(kms.endpoint + "/", content=request.body, headers=dict(request.headers.items()), timeout=30,
                      verify=kms.tls)


def test_size_limits_checked_by_the_server(kms: KmsEnv, client: Any) -> None:
    key_id = new_key(client)["KeyId"]
    expect("ValidationException", client.encrypt, KeyId=key_id, Plaintext=b"x" * 4097,
           message="1 validation error detected: Value at 'plaintext' failed to satisfy constraint: "
                   "Member must have length less than or equal to 4096")
    expect("ValidationException", client.decrypt, CiphertextBlob=b"x" * 6145)
    for number in (0, 1025):
        reply = raw_call(kms, "GenerateRandom", {"NumberOfBytes": number})
        bound = "greater than or equal to 1" if number == 0 else "less than or equal to 1024"
        assert reply.status_code == 400 and reply.json() == {
            "__type": "ValidationException",
            "message": f"1 validation error detected: Value '{number}' at 'numberOfBytes' failed to satisfy "
                       f"constraint: Member must have value {bound}"}
        reply = raw_call(kms, "GenerateDataKey", {"KeyId": key_id, "NumberOfBytes": number})
        assert reply.status_code == 400 and reply.json()["__type"] == "ValidationException"
    reply = raw_call(kms, "GenerateRandom", {})
    assert reply.json() == {"__type": "ValidationException", "message": "NumberOfBytes is required."}
    reply = raw_call(kms, "Encrypt", {"KeyId": key_id, "Plaintext": ""})
    assert reply.status_code == 400 and reply.json()["__type"] == "ValidationException"


def test_error_shape_and_request_ids(kms: KmsEnv) -> None:
    reply = raw_call(kms, "NoSuchOperation", {})
    assert reply.status_code == 400 and reply.json()["__type"] == "UnknownOperationException"
    assert reply.headers["content-type"] == "application/x-amz-json-1.1" and reply.headers["x-amzn-requestid"]
    ok = raw_call(kms, "ListKeys", {})
    assert ok.status_code == 200 and ok.headers["x-amzn-requestid"] != reply.headers["x-amzn-requestid"]
    assert isinstance(ok.json()["Truncated"], bool)
    reply = raw_call(kms, "CreateKey", {"Description": 5})
    assert reply.status_code == 400 and reply.json()["__type"] == "SerializationException"


# --- key states -----------------------------------------------------------------------------------------


def test_key_state_matrix(kms: KmsEnv, client: Any) -> None:
    meta = new_key(client)
    key_id, arn = meta["KeyId"], meta["Arn"]
    blob = client.encrypt(KeyId=key_id, Plaintext=b"p")["CiphertextBlob"]

    def crypto_ops() -> list[tuple[Any, dict[str, Any]]]:
        return [(client.encrypt, {"KeyId": key_id, "Plaintext": b"p"}),
                (client.decrypt, {"CiphertextBlob": blob}),
                (client.generate_data_key, {"KeyId": key_id, "NumberOfBytes": 16}),
                (client.generate_data_key_without_plaintext, {"KeyId": key_id, "KeySpec": "AES_256"}),
                (client.re_encrypt, {"CiphertextBlob": blob, "DestinationKeyId": key_id})]

    # Enabled: everything works; Enable/Disable are idempotent.
    for call, kwargs in crypto_ops():
        call(**kwargs)
    client.enable_key(KeyId=key_id)
    expect("KMSInvalidStateException", client.cancel_key_deletion, KeyId=key_id,
           message=f"{arn} is not pending deletion.")

    # Disabled.
    client.disable_key(KeyId=key_id)
    client.disable_key(KeyId=key_id)
    described = client.describe_key(KeyId=key_id)["KeyMetadata"]
    assert (described["KeyState"], described["Enabled"]) == ("Disabled", False)
    for call, kwargs in crypto_ops():
        expect("DisabledException", call, message=f"{arn} is disabled.", **kwargs)
    expect("KMSInvalidStateException", client.cancel_key_deletion, KeyId=key_id)
    client.enable_key(KeyId=key_id)
    client.disable_key(KeyId=key_id)

    # PendingDeletion (scheduled from Disabled).
    scheduled = client.schedule_key_deletion(KeyId=key_id, PendingWindowInDays=7)
    assert scheduled["KeyId"] == arn and scheduled["KeyState"] == "PendingDeletion"
    assert scheduled["PendingWindowInDays"] == 7
    described = client.describe_key(KeyId=key_id)["KeyMetadata"]
    assert described["KeyState"] == "PendingDeletion" and described["Enabled"] is False
    assert described["DeletionDate"] == scheduled["DeletionDate"]
    for call, kwargs in crypto_ops():
        expect("KMSInvalidStateException", call, message=f"{arn} is pending deletion.", **kwargs)
    for call in (client.enable_key, client.disable_key, client.schedule_key_deletion):
        expect("KMSInvalidStateException", call, KeyId=key_id, message=f"{arn} is pending deletion.")
    expect("KMSInvalidStateException", client.update_key_description, KeyId=key_id, Description="x")
    expect("KMSInvalidStateException", client.tag_resource, KeyId=key_id, Tags=[{"TagKey": "a", "TagValue": "b"}])
    expect("KMSInvalidStateException", client.create_alias, AliasName="alias/pending", TargetKeyId=key_id)
    assert client.list_resource_tags(KeyId=key_id)["Tags"] == []
    assert key_id in [k["KeyId"] for page in client.get_paginator("list_keys").paginate() for k in page["Keys"]]

    # Cancel: back to Disabled, not Enabled.
    assert client.cancel_key_deletion(KeyId=key_id)["KeyId"] == arn
    described = client.describe_key(KeyId=key_id)["KeyMetadata"]
    assert described["KeyState"] == "Disabled" and "DeletionDate" not in described
    client.enable_key(KeyId=key_id)
    assert client.decrypt(CiphertextBlob=blob)["Plaintext"] == b"p"


def test_schedule_window_bounds(client: Any, kms: KmsEnv) -> None:
    key_id = new_key(client)["KeyId"]
    for days, bound in ((6, "greater than or equal to 7"), (31, "less than or equal to 30")):
        expect("ValidationException", client.schedule_key_deletion, KeyId=key_id, PendingWindowInDays=days,
               message=f"1 validation error detected: Value '{days}' at 'pendingWindowInDays' failed to satisfy "
                       f"constraint: Member must have value {bound}")
    scheduled = client.schedule_key_deletion(KeyId=key_id)
    assert scheduled["PendingWindowInDays"] == 30
    # This module's gateway stretches a day to an hour (test knob): 30 "days" from now.
    assert abs(scheduled["DeletionDate"].timestamp() - (time.time() + 30 * 3600)) < 60
    client.cancel_key_deletion(KeyId=key_id)


def test_deletion_really_happens(kms: KmsEnv, client: Any) -> None:
    """A second gateway on the same cluster with a 0.1-second "day" deletes what it scheduled."""
    from strongroom.constants import CKA

    root = kms.cluster.dir
    with short_day_gateway(kms, "kms-fast", day_seconds=0.1) as fast:
        fast_client = fast.client()
        meta = new_key(fast_client)
        key_id = meta["KeyId"]
        fast_client.create_alias(AliasName="alias/doomed", TargetKeyId=key_id)
        blob = fast_client.encrypt(KeyId=key_id, Plaintext=b"gone soon")["CiphertextBlob"]
        fast_client.schedule_key_deletion(KeyId=key_id, PendingWindowInDays=7)
        wait_deleted(client, key_id)
        # The cluster object is destroyed by the same sweep, just after the record disappears.
        deadline = time.monotonic() + 20
        with Client.from_dir(root) as hsm:
            hsm.login(*gateway_login(kms.cluster))
            while hsm.find_objects({CKA.LABEL: f"kms/{key_id}/1".encode()}):
                assert time.monotonic() < deadline, "the key's cluster object was not destroyed"
                time.sleep(0.2)
            hsm.logout()
    expect("NotFoundException", client.describe_key, KeyId=key_id, message=f"Key '{kms.arn(key_id)}' does not exist")
    expect("NotFoundException", client.describe_key, KeyId="alias/doomed")
    expect("InvalidCiphertextException", client.decrypt, CiphertextBlob=blob)
    assert key_id not in [k["KeyId"] for page in client.get_paginator("list_keys").paginate() for k in page["Keys"]]


# --- aliases and tags ------------------------------------------------------------------------------------


def test_alias_rules(kms: KmsEnv, client: Any) -> None:
    a, b = new_key(client)["KeyId"], new_key(client)["KeyId"]
    client.create_alias(AliasName="alias/rules-1", TargetKeyId=kms.arn(a))
    expect("AlreadyExistsException", client.create_alias, AliasName="alias/rules-1", TargetKeyId=b,
           message=f"An alias with the name arn:aws:kms:{REGION}:{ACCOUNT}:alias/rules-1 already exists")
    expect("ValidationException", client.create_alias, AliasName="rules-2", TargetKeyId=a,
           message='Alias must start with the prefix "alias/". '
                   'Please see https://docs.aws.amazon.com/kms/latest/developerguide/kms-alias.html')
    expect("InvalidAliasNameException", client.create_alias, AliasName="alias/aws/mine", TargetKeyId=a)
    message = expect("ValidationException", client.create_alias, AliasName="alias/bad.name", TargetKeyId=a)
    assert "Member must satisfy regular expression pattern: ^[a-zA-Z0-9:/_-]+$" in message
    expect("ValidationException", client.create_alias, AliasName="alias/" + "x" * 251, TargetKeyId=a)
    expect("ValidationException", client.create_alias, AliasName="alias/rules-3", TargetKeyId="alias/rules-1",
           message="Aliases must refer to keys. Not aliases")
    expect("NotFoundException", client.create_alias, AliasName="alias/rules-3",
           TargetKeyId="12345678-1234-1234-1234-123456789012")
    client.update_alias(AliasName="alias/rules-1", TargetKeyId=b)
    assert client.describe_key(KeyId="alias/rules-1")["KeyMetadata"]["KeyId"] == b
    expect("NotFoundException", client.update_alias, AliasName="alias/none", TargetKeyId=b,
           message=f"Alias arn:aws:kms:{REGION}:{ACCOUNT}:alias/none is not found.")
    by_key = client.list_aliases(KeyId=b)["Aliases"]
    assert [x["AliasName"] for x in by_key] == ["alias/rules-1"] and by_key[0]["TargetKeyId"] == b
    assert by_key[0]["AliasArn"] == f"arn:aws:kms:{REGION}:{ACCOUNT}:alias/rules-1"
    assert client.list_aliases(KeyId=a)["Aliases"] == []
    client.delete_alias(AliasName="alias/rules-1")
    expect("NotFoundException", client.delete_alias, AliasName="alias/rules-1")
    expect("NotFoundException", client.encrypt, KeyId="alias/rules-1", Plaintext=b"x")


def test_tags(client: Any) -> None:
    key_id = new_key(client)["KeyId"]
    client.tag_resource(KeyId=key_id, Tags=[{"TagKey": "a", "TagValue": "1"}, {"TagKey": "b", "TagValue": ""}])
    client.tag_resource(KeyId=key_id, Tags=[{"TagKey": "a", "TagValue": "2"}])
    assert client.list_resource_tags(KeyId=key_id)["Tags"] == [{"TagKey": "a", "TagValue": "2"},
                                                                 {"TagKey": "b", "TagValue": ""}]
    client.untag_resource(KeyId=key_id, TagKeys=["b", "never-there"])
    assert client.list_resource_tags(KeyId=key_id)["Tags"] == [{"TagKey": "a", "TagValue": "2"}]
    expect("TagException", client.tag_resource, KeyId=key_id,
           Tags=[{"TagKey": "x", "TagValue": "1"}, {"TagKey": "x", "TagValue": "2"}], message="Duplicate tag keys")
    expect("TagException", client.tag_resource, KeyId=key_id,
           Tags=[{"TagKey": f"t{i}", "TagValue": ""} for i in range(50)], message="Too many tags")
    message = expect("ValidationException", client.tag_resource, KeyId=key_id,
                     Tags=[{"TagKey": "k" * 129, "TagValue": "v"}])
    assert "'tags.1.member.tagKey'" in message


# --- pagination ---------------------------------------------------------------------------------------------


def test_paginators_walk_every_page(kms: KmsEnv, client: Any) -> None:
    made = {new_key(client)["KeyId"] for _ in range(5)}
    pages = list(client.get_paginator("list_keys").paginate(PaginationConfig={"PageSize": 2}))
    assert all(len(p["Keys"]) <= 2 for p in pages) and len(pages) >= 3
    assert all(p["Truncated"] == ("NextMarker" in p) for p in pages) and pages[-1]["Truncated"] is False
    seen = [k["KeyId"] for p in pages for k in p["Keys"]]
    assert made <= set(seen) and len(seen) == len(set(seen))
    total = len(seen)

    some = sorted(made)[:1][0]
    for index in range(5):
        client.create_alias(AliasName=f"alias/page-{index}", TargetKeyId=some)
    names = [a["AliasName"] for p in client.get_paginator("list_aliases").paginate(
        KeyId=some, PaginationConfig={"PageSize": 2}) for a in p["Aliases"]]
    assert names == [f"alias/page-{i}" for i in range(5)]

    client.tag_resource(KeyId=some, Tags=[{"TagKey": f"t{i:02}", "TagValue": str(i)} for i in range(7)])
    first = client.list_resource_tags(KeyId=some, Limit=3)
    assert first["Truncated"] and len(first["Tags"]) == 3
    rest = client.list_resource_tags(KeyId=some, Limit=10, Marker=first["NextMarker"])
    assert [t["TagKey"] for t in first["Tags"] + rest["Tags"]] == [f"t{i:02}" for i in range(7)]
    assert rest["Truncated"] is False and "NextMarker" not in rest

    expect("InvalidMarkerException", client.list_keys, Marker="bogus")
    expect("InvalidMarkerException", client.list_keys, Marker=first["NextMarker"])
    expect("ValidationException", client.list_keys, Limit=1001)
    assert len(client.list_keys(Limit=1000)["Keys"]) == total


# --- access keys and policies ----------------------------------------------------------------------------------


def test_access_key_cli_policy_and_deletion(kms: KmsEnv, tmp_path: Any) -> None:
    policy = tmp_path / "policy.json"
    policy.write_text(json.dumps({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": ["kms:Encrypt", "kms:Decrypt", "kms:DescribeKey"], "Resource": "*"}]}))
    code, out = kms.cluster.cli("kms", "access-key", "create", "--name", "limited", "--policy", str(policy),
                                pin=kms.cluster.admin_pin)
    assert code == 0, out
    limited_id, limited_secret = out["data"]["access_key_id"], out["data"]["secret_access_key"]
    code, listed = kms.cluster.cli("kms", "access-key", "list", pin=kms.cluster.admin_pin)
    assert code == 0 and limited_secret not in json.dumps(listed)
    assert any(k["access_key_id"] == limited_id and k["name"] == "limited" for k in listed["data"]["access_keys"])

    limited = kms.client(limited_id, limited_secret)
    full = kms.client()
    key_id = new_key(full)["KeyId"]
    blob = limited.encrypt(KeyId=key_id, Plaintext=b"ok")["CiphertextBlob"]
    assert limited.decrypt(CiphertextBlob=blob)["Plaintext"] == b"ok"
    message = expect("AccessDeniedException", limited.schedule_key_deletion, KeyId=key_id)
    assert "user/limited is not authorized to perform: kms:ScheduleKeyDeletion" in message
    expect("AccessDeniedException", limited.create_key)

    # A crypto user that is not the service user cannot use the gateway's access keys (nor admins).
    code, out = kms.cluster.cli("kms", "access-key", "delete", "--id", limited_id, pin=kms.cluster.admin_pin)
    assert code == 0, out
    # The gateway holds today's signing key of the deleted access key for at most
    # [kms] signing_key_cache_seconds (300 s): a fresh gateway process (empty cache) refuses it.
    from strongroom.local.gateway import start_gateway, stop_gateway

    stop_gateway(kms.cluster.dir)
    kms.info.update(start_gateway(kms.cluster.dir))
    limited = kms.client(limited_id, limited_secret)
    expect("UnrecognizedClientException", limited.list_keys,
           message="The security token included in the request is invalid.")
    code, out = kms.cluster.cli("kms", "access-key", "list", pin=":".join(gateway_login(kms.cluster)))
    assert code != 0 and out["error_name"] == "CKR_ACTION_PROHIBITED"


# --- other clients -----------------------------------------------------------------------------------------------


def test_aws_cli(kms: KmsEnv, tmp_path: Any) -> None:
    key = kms.aws_json("create-key", "--description", "from the cli")["KeyMetadata"]
    (tmp_path / "clear").write_bytes(b"cli secret")
    sealed = kms.aws_json("encrypt", "--key-id", key["KeyId"], "--plaintext", f"fileb://{tmp_path / 'clear'}",
                          "--encryption-context", "app=cli")
    assert sealed["KeyId"] == key["Arn"]
    (tmp_path / "sealed").write_bytes(base64.b64decode(sealed["CiphertextBlob"]))
    opened = kms.aws_json("decrypt", "--ciphertext-blob", f"fileb://{tmp_path / 'sealed'}",
                          "--encryption-context", "app=cli")
    assert base64.b64decode(opened["Plaintext"]) == b"cli secret"
    listed = kms.aws_json("list-keys", "--page-size", "1")
    assert key["KeyId"] in [k["KeyId"] for k in listed["Keys"]] and "NextMarker" not in listed
    failed = kms.aws("describe-key", "--key-id", "nope", check=False)
    assert failed.returncode != 0
    assert "An error occurred (NotFoundException) when calling the DescribeKey operation: Invalid keyId 'nope'" \
        in failed.stderr


def test_aws_encryption_sdk(kms: KmsEnv, client: Any, monkeypatch: Any) -> None:
    import aws_encryption_sdk as esdk
    arn = new_key(client)["Arn"]
    import botocore.session

    monkeypatch.setenv("AWS_ENDPOINT_URL_KMS", kms.endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", kms.access_key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", kms.secret)
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    # The master-key provider builds its own clients: the gateway's CA reaches them through a botocore session.
    session = botocore.session.Session()
    if kms.ca_bundle:
        session.set_config_variable("ca_bundle", kms.ca_bundle)
    sdk = esdk.EncryptionSDKClient(commitment_policy=esdk.CommitmentPolicy.REQUIRE_ENCRYPT_REQUIRE_DECRYPT)
    provider = esdk.StrictAwsKmsMasterKeyProvider(key_ids=[arn], botocore_session=session)
    message, _header = sdk.encrypt(source=b"envelope" * 100, key_provider=provider,
                                   encryption_context={"purpose": "test"})
    plaintext, header = sdk.decrypt(source=message, key_provider=provider)
    assert plaintext == b"envelope" * 100 and header.encryption_context["purpose"] == "test"
