"""Server-side SigV4 against botocore's own signer: the same string to sign, every refusal with AWS's code."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from strongroom.dispatch.ops.kms import sigv4_signature
from strongroom.kms import sigv4
from strongroom.kms.errors import (
    IncompleteSignature,
    InvalidSignature,
    MissingAuthenticationToken,
    UnrecognizedClient,
)

KEY_ID, SECRET = "AKIAEXAMPLEEXAMPLE12", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
HOST = "127.0.0.1:4599"


def signed(body: bytes = b'{"KeyId": "alias/x"}', *, region: str = "us-east-1", service: str = "kms",
           target: str = "TrentService.Encrypt", secret: str = SECRET, token: str | None = None) -> AWSRequest:
    request = AWSRequest(method="POST", url=f"http://{HOST}/", data=body,
                         headers={"X-Amz-Target": target, "Content-Type": "application/x-amz-json-1.1"})
    SigV4Auth(Credentials(KEY_ID, secret, token), service, region).add_auth(request)
    return request


def headers_of(request: AWSRequest, extra: dict[str, str] | None = None, drop: tuple[str, ...] = ()) -> sigv4.Headers:
    items = [(k, v) for k, v in request.headers.items() if k.lower() not in drop]
    items.append(("Host", HOST))
    items += list((extra or {}).items())
    return sigv4.Headers(items)


def prepare(request: AWSRequest, body: bytes | None = None, **kw):
    return sigv4.prepare("POST", "/", "", kw.pop("headers", None) or headers_of(request),
                         request.body if body is None else body, region=kw.pop("region", "us-east-1"), **kw)


def test_string_to_sign_matches_botocore_and_the_node_verifies_it():
    request = signed()
    prepared = prepare(request)
    sent = request.headers["Authorization"].split("Signature=")[1]
    assert prepared.signature == sent
    assert sigv4.signature(SECRET, prepared) == sent
    assert sigv4_signature(SECRET, prepared.date, prepared.region, prepared.service, prepared.string_to_sign) == sent
    assert prepared.access_key_id == KEY_ID and prepared.service == "kms"


def test_a_body_changed_after_signing_changes_the_string_to_sign():
    request = signed()
    prepared = prepare(request, body=b'{"KeyId": "alias/y"}')
    assert sigv4.signature(SECRET, prepared) != prepared.signature


def test_another_secret_does_not_verify():
    prepared = prepare(signed(secret="another-secret"))
    assert sigv4.signature(SECRET, prepared) != prepared.signature


def test_header_values_are_trimmed_and_spaces_collapsed():
    request = signed()
    items = [(k, ("  " + v.replace("-", "-") + "  ") if k == "Content-Type" else v) for k, v in request.headers.items()]
    prepared = sigv4.prepare("POST", "/", "", sigv4.Headers(items + [("Host", HOST)]), request.body,
                             region="us-east-1")
    assert sigv4.signature(SECRET, prepared) == prepared.signature


def test_missing_authorization():
    request = signed()
    with pytest.raises(MissingAuthenticationToken, match="Missing Authentication Token"):
        prepare(request, headers=headers_of(request, drop=("authorization",)))


@pytest.mark.parametrize("header, text", [
    ("AWS4-HMAC-SHA256 Credential=AK/20261128/us-east-1/kms/aws4_request", "requires 'Signature' parameter"),
    ("AWS4-HMAC-SHA256 garbage", "not a valid key=value pair (missing equal-sign)"),
    ("AWS4-HMAC-SHA1 Credential=x, SignedHeaders=host, Signature=00", "Unsupported AWS 'algorithm'"),
    ("AWS4-HMAC-SHA256 Credential=AK/20261128, SignedHeaders=host, Signature=00", "Credential"),
])
def test_malformed_authorization(header, text):
    request = signed()
    headers = headers_of(request, extra={"Authorization": header}, drop=("authorization",))
    with pytest.raises(IncompleteSignature, match=text.replace("(", r"\(").replace(")", r"\)")):
        prepare(request, headers=headers)


def test_missing_date():
    request = signed()
    with pytest.raises(IncompleteSignature, match="'X-Amz-Date' or a 'Date' header"):
        prepare(request, headers=headers_of(request, drop=("x-amz-date",)))


@pytest.mark.parametrize("kwargs, text", [
    ({"service": "s3"}, "scoped to correct service: 'kms'"),
    ({"region": "eu-west-1"}, "scoped to a valid region"),
])
def test_scope(kwargs, text):
    with pytest.raises(InvalidSignature, match=text):
        prepare(signed(**kwargs))


def test_clock_skew_both_ways():
    request = signed()
    sent = dt.datetime.strptime(request.headers["X-Amz-Date"], sigv4.AMZ_DATE_FORMAT).replace(tzinfo=dt.UTC)
    prepare(request, now=lambda: sent + dt.timedelta(seconds=299))
    with pytest.raises(InvalidSignature, match=r"^Signature expired: \d{8}T\d{6}Z is now earlier than "
                                               r"\d{8}T\d{6}Z \(\d{8}T\d{6}Z - 5 min\.\)$"):
        prepare(request, now=lambda: sent + dt.timedelta(seconds=301))
    with pytest.raises(InvalidSignature, match=r"^Signature not yet current: .* \+ 5 min\.\)$"):
        prepare(request, now=lambda: sent - dt.timedelta(seconds=301))


def test_operation_must_be_signed():
    request = AWSRequest(method="POST", url=f"http://{HOST}/", data=b"{}",
                         headers={"Content-Type": "application/x-amz-json-1.1"})
    SigV4Auth(Credentials(KEY_ID, SECRET), "kms", "us-east-1").add_auth(request)
    headers = headers_of(request, extra={"X-Amz-Target": "TrentService.ScheduleKeyDeletion"})
    with pytest.raises(InvalidSignature, match="'x-amz-target' must be a 'SignedHeader'"):
        prepare(request, headers=headers)


def test_declared_body_hash_must_match():
    request = signed()
    with pytest.raises(InvalidSignature, match="x-amz-content-sha256"):
        prepare(request, headers=headers_of(request, extra={"X-Amz-Content-Sha256": "0" * 64}))


def test_session_tokens_are_not_ours():
    request = signed(token="session-token")
    with pytest.raises(UnrecognizedClient):
        prepare(request)


def test_canonical_request_shape():
    headers = sigv4.Headers([("Host", "h"), ("X-Amz-Date", "20261128T000000Z")])
    canonical = sigv4.canonical_request("post", "/a/../b", "z=1&a=%20", headers, ["host", "x-amz-date"], "ab")
    assert canonical == "POST\n/b\na=%20&z=1\nhost:h\nx-amz-date:20261128T000000Z\n\nhost;x-amz-date\nab"
    assert json.dumps(canonical)  # plain text
