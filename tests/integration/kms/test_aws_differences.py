"""What differed from AWS when the API was tried with AWS's own expectations (issue 17), each checked
as AWS answers it: bad input is a 400 (never a 500 with a traceback in the log), the CloudHSM
cluster id has AWS's shape, GenerateDataKeyPair refuses a custom-key-store key, ReEncrypt checks
the source before the destination."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import httpx
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.exceptions import ClientError

from tests.integration.kms.conftest import REGION, KmsEnv, error_of
from tests.integration.kms.test_sigv4_http import send

pytestmark = pytest.mark.slow


def raw(kms: KmsEnv, operation: str, body: bytes) -> tuple[int, str]:
    """A signed request whose body is exactly ``body`` (what a hostile or broken client sends)."""
    aws = AWSRequest(method="POST", url=kms.endpoint + "/", data=body, headers={
        "X-Amz-Target": f"TrentService.{operation}", "Content-Type": "application/x-amz-json-1.1"})
    SigV4Auth(Credentials(kms.access_key_id, kms.secret), "kms", REGION).add_auth(aws)
    request = {"headers": dict(aws.headers.items()), "content": aws.body}
    reply: httpx.Response = send(kms, request)
    return reply.status_code, reply.json().get("__type", "")


def log_of(kms: KmsEnv) -> str:
    return Path(kms.info["kms_log"]).read_text()


@pytest.mark.parametrize(("operation", "body"), [
    # A JSON number too large for any integer where an integer is due.
    ("GenerateRandom", b'{"NumberOfBytes": 1e400}'),
    ("ListKeys", b'{"Limit": -1e400}'),
    ("ScheduleKeyDeletion", b'{"KeyId": "1234abcd-12ab-34cd-56ef-1234567890ab", "PendingWindowInDays": 1e999}'),
    # A lone UTF-16 surrogate (valid JSON escapes, not valid Unicode text) where a string is stored or hashed.
    ("CreateKey", b'{"Description": "\\ud800"}'),
    ("CreateKey", b'{"Tags": [{"TagKey": "k", "TagValue": "\\udfff"}]}'),
    ("Encrypt", b'{"KeyId": "alias/aws-differences", "Plaintext": "aGk=", "EncryptionContext": {"\\ud800": "v"}}'),
    ("GenerateDataKey", b'{"KeyId": "alias/aws-differences", "NumberOfBytes": 32, '
                        b'"EncryptionContext": {"k": "\\udc00x"}}'),
    # A 50,000-deep array in a member no operation knows.
    ("DescribeKey", b'{"KeyId": "alias/aws-differences", "Unknown": ' + b"[" * 50_000 + b"]" * 50_000 + b"}"),
    ("GenerateRandom", b'{"NumberOfBytes": 8, "X": ' + b"[" * 50_000 + b"]" * 50_000 + b"}"),
])
def test_bad_input_is_a_client_error_not_a_fault(kms: KmsEnv, client: Any, operation: str, body: bytes) -> None:
    try:
        client.create_alias(AliasName="alias/aws-differences", TargetKeyId=client.create_key()["KeyMetadata"]["KeyId"])
    except ClientError as exc:
        assert exc.response["Error"]["Code"] == "AlreadyExistsException"
    status, code = raw(kms, operation, body)
    assert status == 400, (status, code)
    assert code in ("SerializationException", "ValidationException"), code
    assert "Traceback" not in log_of(kms)
    # And nothing half-made: no key carries the lone surrogate.
    for entry in client.list_keys(Limit=1000)["Keys"]:
        assert "\ud800" not in client.describe_key(KeyId=entry["KeyId"])["KeyMetadata"]["Description"]


def test_a_surrogate_pair_is_text_and_stays_accepted(kms: KmsEnv, client: Any) -> None:
    """The escape of a character beyond the BMP (a valid surrogate pair) is ordinary text."""
    request = json.dumps({"Description": "key \U0001f511"}).encode()  # ensure_ascii: "\\ud83d\\udd11"
    assert b"\\ud83d\\udd11" in request
    status, _ = raw(kms, "CreateKey", request)
    assert status == 200
    described = [client.describe_key(KeyId=k["KeyId"])["KeyMetadata"]["Description"]
                 for k in client.list_keys(Limit=1000)["Keys"]]
    assert "key \U0001f511" in described


def test_re_encrypt_checks_the_source_before_the_destination(kms: KmsEnv, client: Any) -> None:
    """Both sides wrong: AWS answers for the source (IncorrectKeyException), not the destination."""
    source = client.create_key()["KeyMetadata"]["KeyId"]
    other = client.create_key()["KeyMetadata"]["KeyId"]
    signing = client.create_key(KeySpec="ECC_NIST_P256", KeyUsage="SIGN_VERIFY")["KeyMetadata"]["KeyId"]
    blob = client.encrypt(KeyId=source, Plaintext=b"data")["CiphertextBlob"]
    with pytest.raises(ClientError) as failure:  # wrong SourceKeyId and a destination that cannot encrypt
        client.re_encrypt(CiphertextBlob=blob, SourceKeyId=other, DestinationKeyId=signing)
    assert error_of(failure)[0] == "IncorrectKeyException"
    with pytest.raises(ClientError) as failure:  # the source alone right: the destination's error
        client.re_encrypt(CiphertextBlob=blob, SourceKeyId=source, DestinationKeyId=signing)
    assert error_of(failure)[0] == "InvalidKeyUsageException"
    with pytest.raises(ClientError) as failure:  # DryRun answers only once both sides passed
        client.re_encrypt(CiphertextBlob=blob, SourceKeyId=other, DestinationKeyId=other, DryRun=True)
    assert error_of(failure)[0] == "IncorrectKeyException"
    with pytest.raises(ClientError) as failure:
        client.re_encrypt(CiphertextBlob=blob, SourceKeyId=source, DestinationKeyId=other, DryRun=True)
    assert error_of(failure)[0] == "DryRunOperationException"
    moved = client.re_encrypt(CiphertextBlob=blob, SourceKeyId=source, DestinationKeyId=other)
    assert client.decrypt(CiphertextBlob=moved["CiphertextBlob"])["Plaintext"] == b"data"


AWS_CLUSTER_ID = re.compile(r"^cluster-[2-7a-zA-Z]{11,16}$")
