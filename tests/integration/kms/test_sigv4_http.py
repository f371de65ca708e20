"""SigV4 on the wire: requests signed by botocore's signer, then altered, sent with httpx."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import httpx
import pytest
from botocore import auth as botocore_auth
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from tests.integration.kms.conftest import REGION, KmsEnv

pytestmark = pytest.mark.slow

MISMATCH = ("The request signature we calculated does not match the signature you provided. Check your AWS Secret "
            "Access Key and signing method. Consult the service documentation for details.")


def signed(kms: KmsEnv, body: dict[str, Any] | None = None, *, operation: str = "ListKeys",
           key_id: str | None = None, secret: str | None = None, region: str = REGION,
           service: str = "kms") -> dict[str, Any]:
    request = AWSRequest(method="POST", url=kms.endpoint + "/", data=json.dumps(body or {}).encode(),
                         headers={"X-Amz-Target": f"TrentService.{operation}",
                                  "Content-Type": "application/x-amz-json-1.1"})
    SigV4Auth(Credentials(key_id or kms.access_key_id, secret or kms.secret), service, region).add_auth(request)
    return {"headers": dict(request.headers.items()), "content": request.body}


def send(kms: KmsEnv, request: dict[str, Any]) -> httpx.Response:
    return httpx.post(kms.endpoint + "/", headers=request["headers"], content=request["content"], timeout=30,
                      verify=kms.tls)


def error(reply: httpx.Response) -> tuple[int, str, str]:
    body = reply.json()
    assert reply.headers["x-amzn-requestid"] and reply.headers["content-type"] == "application/x-amz-json-1.1"
    return reply.status_code, body["__type"], body["message"]


def test_a_correct_signature_passes(kms: KmsEnv) -> None:
    reply = send(kms, signed(kms))
    assert reply.status_code == 200 and "Keys" in reply.json()


def test_wrong_secret(kms: KmsEnv) -> None:
    reply = send(kms, signed(kms, secret="x" * 40))
    assert error(reply) == (400, "InvalidSignatureException", MISMATCH)


def test_unknown_access_key(kms: KmsEnv) -> None:
    reply = send(kms, signed(kms, key_id="AKIAUNKNOWNUNKNOWN00"))
    assert error(reply) == (400, "UnrecognizedClientException",
                            "The security token included in the request is invalid.")
    reply = send(kms, signed(kms, key_id="not-even-an-akid"))
    assert error(reply)[1] == "UnrecognizedClientException"


def test_no_authorization(kms: KmsEnv) -> None:
    request = signed(kms)
    del request["headers"]["Authorization"]
    assert error(send(kms, request)) == (400, "MissingAuthenticationTokenException", "Missing Authentication Token")


def test_malformed_authorization(kms: KmsEnv) -> None:
    request = signed(kms)
    request["headers"]["Authorization"] = request["headers"]["Authorization"].split(", Signature=")[0]
    status, code, message = error(send(kms, request))
    assert (status, code) == (400, "IncompleteSignatureException")
    assert message.startswith("Authorization header requires 'Signature' parameter.")


@pytest.mark.parametrize("minutes, text", [(-6, "Signature expired: "), (6, "Signature not yet current: ")])
def test_skewed_clock(kms: KmsEnv, monkeypatch: Any, minutes: int, text: str) -> None:
    skewed = dt.datetime.now(dt.UTC).replace(tzinfo=None) + dt.timedelta(minutes=minutes)
    monkeypatch.setattr(botocore_auth, "get_current_datetime", lambda: skewed)
    status, code, message = error(send(kms, signed(kms)))
    assert (status, code) == (400, "InvalidSignatureException")
    assert message.startswith(text) and message.endswith("5 min.)")


def test_skew_within_the_window_passes(kms: KmsEnv, monkeypatch: Any) -> None:
    skewed = dt.datetime.now(dt.UTC).replace(tzinfo=None) - dt.timedelta(minutes=4)
    monkeypatch.setattr(botocore_auth, "get_current_datetime", lambda: skewed)
    assert send(kms, signed(kms)).status_code == 200


def test_body_changed_after_signing(kms: KmsEnv) -> None:
    request = signed(kms, {"Limit": 5})
    request["content"] = json.dumps({"Limit": 6}).encode()
    assert error(send(kms, request)) == (400, "InvalidSignatureException", MISMATCH)


def test_operation_swapped_after_signing(kms: KmsEnv) -> None:
    request = signed(kms, {"KeyId": "alias/x"}, operation="DescribeKey")
    request["headers"]["X-Amz-Target"] = "TrentService.ScheduleKeyDeletion"
    assert error(send(kms, request)) == (400, "InvalidSignatureException", MISMATCH)


def test_wrong_scope(kms: KmsEnv) -> None:
    status, code, message = error(send(kms, signed(kms, region="eu-west-1")))
    assert (code, message) == ("InvalidSignatureException", "Credential should be scoped to a valid region, not "
                                                              "'eu-west-1'. ")
    status, code, message = error(send(kms, signed(kms, service="s3")))
    assert (code, message) == ("InvalidSignatureException", "Credential should be scoped to correct service: 'kms'. ")


def test_declared_payload_hash_must_match(kms: KmsEnv) -> None:
    request = signed(kms)
    request["headers"]["X-Amz-Content-Sha256"] = "0" * 64
    assert error(send(kms, request))[1] == "InvalidSignatureException"


def test_oversized_body(kms: KmsEnv) -> None:
    request = signed(kms, {"Description": "x" * 300_000}, operation="CreateKey")
    assert error(send(kms, request))[:2] == (400, "SerializationException")
