"""The gateway's per-request caches (issue 15, h15k) keep every check: what they remember is only
what a request that passed the check would compute again, and a refusal is never remembered."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from prometheus_client import REGISTRY

from strongroom.kms import sigv4
from strongroom.kms.auth_limits import source_of
from strongroom.kms.errors import IncompleteSignature, InvalidSignature
from strongroom.kms.policy import Request, cached_key_policy, default_key_policy, evaluate
from strongroom.metrics import kms as kms_metrics
from strongroom.metrics import labels

KEY_ID, SECRET = "AKIAEXAMPLEEXAMPLE12", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
HOST = "127.0.0.1:4599"


def signed() -> AWSRequest:
    request = AWSRequest(method="POST", url=f"http://{HOST}/", data=b"{}",
                         headers={"X-Amz-Target": "TrentService.Encrypt", "Content-Type": "application/x-amz-json-1.1"})
    SigV4Auth(Credentials(KEY_ID, SECRET), "kms", "us-east-1").add_auth(request)
    return request


def prepare(request: AWSRequest, date: str | None = None, **kw: Any) -> sigv4.Prepared:
    items = [(k, v) for k, v in request.headers.items() if date is None or k.lower() != "x-amz-date"]
    items.append(("Host", HOST))
    if date is not None:
        items.append(("X-Amz-Date", date))
    return sigv4.prepare("POST", "/", "", sigv4.Headers(items), b"{}", region="us-east-1", **kw)


def test_a_date_that_does_not_parse_is_refused_every_time_and_a_good_one_still_passes() -> None:
    request = signed()
    good = request.headers["X-Amz-Date"]
    bad = good[:4] + "13" + good[6:]  # month 13: the same shape, not a date
    for _ in range(3):
        with pytest.raises(IncompleteSignature, match="ISO-8601"):
            prepare(request, date=bad)
    assert prepare(request).signature == request.headers["Authorization"].split("Signature=")[1]
    assert sigv4.signature(SECRET, prepare(request)) == prepare(request).signature


def test_a_remembered_date_is_checked_against_the_clock_on_every_request() -> None:
    request = signed()
    sent = dt.datetime.strptime(request.headers["X-Amz-Date"], sigv4.AMZ_DATE_FORMAT).replace(tzinfo=dt.UTC)
    prepare(request, now=lambda: sent)  # parsed and remembered
    with pytest.raises(InvalidSignature, match="Signature expired"):
        prepare(request, now=lambda: sent + dt.timedelta(seconds=301))
    with pytest.raises(InvalidSignature, match="Signature not yet current"):
        prepare(request, now=lambda: sent - dt.timedelta(seconds=301))


def test_odd_paths_canonicalize_the_same_when_asked_again() -> None:
    headers = sigv4.Headers([("Host", "h"), ("X-Amz-Date", "20261128T000000Z")])
    for _ in range(2):
        canonical = sigv4.canonical_request("POST", "/a/../b", "", headers, ["host", "x-amz-date"], "ab")
        assert canonical.split("\n")[1:3] == ["/b", ""]
        assert sigv4.canonical_request("POST", "/", "z=1&a=%20", headers, ["host"], "ab").split("\n")[1:3] == [
            "/", "a=%20&z=1"]


def test_the_default_key_policy_allows_its_own_account_only() -> None:
    text = default_key_policy("aws", "111122223333")
    assert default_key_policy("aws", "111122223333") is text  # one string, one parsed policy
    assert default_key_policy("aws", "444455556666") != text
    policy = cached_key_policy(text)
    arn = "arn:aws:kms:us-east-1:111122223333:key/00000000-0000-0000-0000-000000000000"
    mine = Request("kms:Encrypt", arn, "arn:aws:iam::111122223333:user/a", "111122223333", {})
    theirs = Request("kms:Encrypt", arn, "arn:aws:iam::444455556666:user/b", "444455556666", {})
    assert evaluate(mine, policy, None, False)[0] == "allow"
    assert evaluate(theirs, policy, None, False)[0] == "implicit"


def test_peer_addresses_keep_their_rate_limit_unit() -> None:
    for _ in range(2):
        assert source_of("127.0.0.1") == "127.0.0.1"
        assert source_of("::ffff:10.0.0.7") == "10.0.0.7"
        assert source_of("2001:db8:1:2:3:4:5:6") == "2001:db8:1:2::/64"
        assert source_of("") == "unknown"
        assert source_of("not-an-address") == "not-an-address"


def sample(operation: str, outcome: str) -> float:
    return REGISTRY.get_sample_value("strongroom_kms_requests_total", {"operation": operation,
                                                                       "outcome": outcome}) or 0.0


def test_request_metrics_count_each_outcome_under_its_own_label() -> None:
    async def answer(status: int, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        return status, body

    async def count(target: str | None, status: int, body: dict[str, Any]) -> None:
        assert await kms_metrics.timed(target, answer(status, body)) == (status, body)

    before = {(op, outcome): sample(op, outcome) for op, outcome in [
        ("Encrypt", "ok"), ("Encrypt", "NotFoundException"), ("Encrypt", labels.OTHER), (labels.OTHER, "ok")]}
    for _ in range(2):
        asyncio.run(count("TrentService.Encrypt", 200, {"CiphertextBlob": "x"}))
        asyncio.run(count("TrentService.Encrypt", 400, {"__type": "NotFoundException"}))
        asyncio.run(count("TrentService.Encrypt", 400, {"__type": None}))  # no code: "other", never "ok"
        asyncio.run(count(None, 200, {}))
    assert sample("Encrypt", "ok") == before[("Encrypt", "ok")] + 2
    assert sample("Encrypt", "NotFoundException") == before[("Encrypt", "NotFoundException")] + 2
    assert sample("Encrypt", labels.OTHER) == before[("Encrypt", labels.OTHER)] + 2
    assert sample(labels.OTHER, "ok") == before[(labels.OTHER, "ok")] + 2
