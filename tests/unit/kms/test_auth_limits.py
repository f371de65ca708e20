"""What unauthenticated requests may cost the node: the gateway's negative cache of unknown access
key ids and its rate limits of failed authentications (a fake node that counts its calls)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from strongroom.errors import CKR
from strongroom.kms import sigv4
from strongroom.kms.auth_limits import ExpiringSet, FailureLimiter, source_of
from strongroom.kms.backend import ClusterError
from strongroom.kms.config import ConfigError, GatewayConfig
from strongroom.kms.errors import InvalidSignature, Throttling, UnrecognizedClient
from strongroom.kms.gateway import Gateway
from strongroom.kms.validation import json_too_deep
from tests.unit.kms.test_signing_key_cache import DATE, KEY_ID, OTHER_SECRET, SECRET, Clock, FakeNode, prepared


def unknown(n: int) -> sigv4.Prepared:
    key_id = f"AKIAUNKNOWN{n:09d}"
    to_sign = f"AWS4-HMAC-SHA256\n{DATE}T120000Z\n{DATE}/us-east-1/kms/aws4_request\n" + "ab" * 32
    return sigv4.Prepared(key_id, DATE, "us-east-1", "kms", to_sign, "0" * 64)


def gateway(node: FakeNode, **settings: Any) -> Gateway:
    config = GatewayConfig()
    config.cluster.agent_socket = "/nonexistent"
    for name, value in settings.items():
        setattr(config.kms, name, value)
    return Gateway(config, node)  # type: ignore[arg-type]


async def authenticate(gw: Gateway, p: sigv4.Prepared, source: str = "192.0.2.1") -> Any:
    real = sigv4.prepare
    try:
        sigv4.prepare = lambda *a, **k: p  # type: ignore[assignment]
        return await gw.authenticate("POST", "/", "", sigv4.Headers([]), b"", source)
    finally:
        sigv4.prepare = real  # type: ignore[assignment]


async def outcome(gw: Gateway, p: sigv4.Prepared, source: str = "192.0.2.1") -> str:
    try:
        await authenticate(gw, p, source)
    except (UnrecognizedClient, InvalidSignature, Throttling) as exc:
        return exc.code
    return "ok"


def test_unknown_access_key_ids_are_answered_from_the_negative_cache() -> None:
    async def main() -> None:
        node = FakeNode()
        gw = gateway(node)
        answers = [await outcome(gw, unknown(1)) for _ in range(50)]
        assert answers == ["UnrecognizedClientException"] * 50
        assert node.calls == ["signing_key"]  # one round trip, not fifty
        assert node.sources == ["192.0.2.1"]  # the node audits the requester's address
        # Not even of the AKIA form: never sent to the node.
        bad_form = sigv4.Prepared("not-an-akid", DATE, "us-east-1", "kms", unknown(0).string_to_sign, "0" * 64)
        assert await outcome(gw, bad_form) == "UnrecognizedClientException" and node.calls == ["signing_key"]

    asyncio.run(main())


def test_a_flood_of_new_unknown_ids_is_throttled_per_source_and_legitimate_clients_pass() -> None:
    async def main() -> None:
        node = FakeNode()
        gw = gateway(node, auth_failures_per_second=5.0, auth_failure_burst=20)
        assert (await authenticate(gw, prepared())).name == "ci"  # the legitimate client: signing key held
        node.calls.clear()
        answers = [await outcome(gw, unknown(n)) for n in range(200)]
        assert answers.count("UnrecognizedClientException") <= 21 and answers.count("ThrottlingException") >= 179
        assert len(node.calls) <= 21  # the node saw at most the burst (plus a refill)
        # The legitimate client on the same address: its signing key is held, no token needed.
        for n in range(5):
            assert (await authenticate(gw, prepared(n=n))).name == "ci"
        # Another address is not held back by the first one's failures.
        assert await outcome(gw, unknown(999), source="198.51.100.9") == "UnrecognizedClientException"

    asyncio.run(main())


def test_bad_signatures_for_a_real_key_are_throttled_per_key_across_sources() -> None:
    async def main() -> None:
        node = FakeNode()
        gw = gateway(node, auth_failure_burst=10, auth_failures_per_second=1.0)
        await authenticate(gw, prepared())
        node.calls.clear()
        answers = [await outcome(gw, prepared(OTHER_SECRET, n=n), source=f"203.0.113.{n}") for n in range(40)]
        assert answers.count("InvalidSignatureException") == 10 and node.calls == ["verify"] * 10
        assert answers[10:] == ["ThrottlingException"] * 30
        # The key's owner still authenticates with the held signing key ...
        assert (await authenticate(gw, prepared(n=77), source="198.51.100.1")).name == "ci"
        # ... and may fetch a new one (another day, an expired entry) though its key's bucket is empty,
        # even from an address whose own bucket is empty too.
        for n in range(30):
            await outcome(gw, unknown(n), source="203.0.113.0")
        assert await outcome(gw, unknown(99), source="203.0.113.0") == "ThrottlingException"
        gw.signing_keys.clear()
        node.calls.clear()
        assert (await authenticate(gw, prepared(n=78), source="203.0.113.0")).name == "ci"
        assert node.calls == ["signing_key"]

    asyncio.run(main())


def test_the_limits_refill_and_failures_of_a_down_cluster_are_not_the_callers() -> None:
    async def main() -> None:
        node, clock = FakeNode(), Clock()
        gw = gateway(node, auth_failure_burst=2, auth_failures_per_second=1.0)
        gw.limiter = FailureLimiter(1.0, 2, 100.0, clock=clock)
        gw.unknown_keys = ExpiringSet(10, clock=clock)
        assert [await outcome(gw, unknown(n)) for n in range(3)] == ["UnrecognizedClientException"] * 2 + [
            "ThrottlingException"]
        clock.now += 1.0
        assert await outcome(gw, unknown(10)) == "UnrecognizedClientException"
        clock.now += 11  # the negative cache forgets: the node is asked again
        node.calls.clear()
        assert await outcome(gw, unknown(1)) == "UnrecognizedClientException" and node.calls == ["signing_key"]
        # The cluster unreachable: a retryable fault, and no token is lost for it.
        clock.now += 10
        node.unreachable = True
        for n in range(5):
            with pytest.raises(Exception) as caught:
                await authenticate(gw, unknown(100 + n))
            assert getattr(caught.value, "code", "") == "DependencyTimeoutException"
        node.unreachable = False
        assert await outcome(gw, unknown(200)) == "UnrecognizedClientException"

    asyncio.run(main())


def test_concurrent_first_requests_of_one_client_cost_one_token_and_one_fetch() -> None:
    async def main() -> None:
        node = FakeNode()
        gw = gateway(node, auth_failure_burst=2)
        results = await asyncio.gather(*(authenticate(gw, prepared(n=n)) for n in range(30)))
        assert all(r.name == "ci" for r in results) and node.calls == ["signing_key"]

    asyncio.run(main())


def test_cache_disabled_every_request_is_decided_in_the_node_within_the_limits() -> None:
    async def main() -> None:
        node = FakeNode()
        gw = gateway(node, signing_key_cache_seconds=0, auth_failure_burst=3)
        for n in range(10):  # successes give their reservation back
            assert (await authenticate(gw, prepared(n=n))).name == "ci"
        answers = [await outcome(gw, prepared(OTHER_SECRET, n=n)) for n in range(6)]
        assert answers == ["InvalidSignatureException"] * 3 + ["ThrottlingException"] * 3

    asyncio.run(main())


def test_limiter_and_expiring_set_are_bounded() -> None:
    clock = Clock()
    cache = ExpiringSet(10, max_entries=3, clock=clock)
    for n in range(5):
        cache.add(f"k{n}")
    assert len(cache) == 3 and "k0" not in cache and "k4" in cache
    clock.now += 10
    assert "k4" not in cache
    limiter = FailureLimiter(1.0, 2, 0, max_entries=4, clock=clock)
    for n in range(10):
        limiter.failed(None, f"192.0.2.{n}", f"AKIA{n:016d}")
    assert len(limiter.sources) == 4 and len(limiter.keys) == 4
    assert limiter.total is None  # 0: no overall limit
    off = FailureLimiter(0, 0, 0)
    assert all(off.reserve("s", "k") is not None for _ in range(100))


def test_sources_are_addresses_and_ipv6_slash_64() -> None:
    assert source_of("192.0.2.7") == "192.0.2.7"
    assert source_of("2001:db8:1:2:3:4:5:6") == source_of("2001:db8:1:2:ffff::1") == "2001:db8:1:2::/64"
    assert source_of("::ffff:192.0.2.7") == "192.0.2.7"
    assert source_of(None) == source_of("") == "unknown"
    assert source_of("fe80::1%eth0") == "fe80::/64"


def test_config_needs_tls_or_an_explicit_insecure_http() -> None:
    config = GatewayConfig()
    config.cluster.agent_socket = "/run/agent.sock"
    with pytest.raises(ConfigError) as caught:
        config.validate()
    assert "insecure_http" in str(caught.value) and "tls_cert" in str(caught.value)
    config.kms.insecure_http = True
    config.validate()
    config.kms.tls_cert, config.kms.tls_key = "a.crt", "a.key"
    with pytest.raises(ConfigError):
        config.validate()
    config.kms.insecure_http = False
    config.validate()
    for name, value in (("auth_failure_burst", -1), ("auth_failures_per_second", -1.0),
                        ("unknown_key_cache_seconds", 7200.0), ("max_body_bytes", 10**9)):
        setattr(config.kms, name, value)
        with pytest.raises(ConfigError):
            config.validate()
        setattr(config.kms, name, getattr(GatewayConfig().kms, name))


def test_a_deeply_nested_policy_is_malformed_not_a_fault() -> None:
    from strongroom.kms.policy import PolicyError, parse_policy

    with pytest.raises(PolicyError):
        parse_policy('{"Version": "2012-10-17", "Statement": ' + "[" * 5000 + "]" * 5000 + "}")
    nested_ok = ('{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "kms:*", "Resource": "*", '
                 '"Condition": {"ForAnyValue:StringEquals": {"kms:EncryptionContextKeys": ["a", "b"]}}}]}')
    assert parse_policy(nested_ok)


def test_json_nesting_is_measured_before_parsing() -> None:
    assert not json_too_deep(b'{"Tags": [{"TagKey": "a", "TagValue": "b"}]}', 8)
    assert not json_too_deep(b'{"Description": "[[[[[[[[[[[[[[[[[[[[[[["}', 8)  # brackets in strings do not count
    assert not json_too_deep(b'{"Description": "\\"[[[[[[[[[[[[[[[[[[[[[[["}', 8)
    assert json_too_deep(b"[" * 9 + b"]" * 9, 8) and not json_too_deep(b"[" * 8 + b"]" * 8, 8)
    assert json_too_deep(b"[" * 200_000, 8)


def test_wrong_answers_of_a_node_are_not_counted_as_the_callers_failures() -> None:
    async def main() -> None:
        class Broken(FakeNode):
            async def sigv4_signing_key(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
                raise ClusterError(CKR.GENERAL_ERROR, "internal error")

        gw = gateway(Broken(), auth_failure_burst=1)
        for _ in range(3):
            with pytest.raises(Exception) as caught:
                await authenticate(gw, prepared())
            assert getattr(caught.value, "code", "") == "KMSInternalException"

    asyncio.run(main())


def test_a_known_key_whose_secret_changed_still_works_at_once() -> None:
    async def main() -> None:
        node = FakeNode()
        gw = gateway(node, auth_failure_burst=1)
        await authenticate(gw, prepared())
        node.secrets[KEY_ID] = OTHER_SECRET
        assert (await authenticate(gw, prepared(OTHER_SECRET))).name == "ci"
        assert (await authenticate(gw, prepared(OTHER_SECRET, n=3))).name == "ci"
        del node.secrets[KEY_ID]
        assert await outcome(gw, prepared(SECRET)) == "UnrecognizedClientException"
        assert KEY_ID in gw.unknown_keys

    asyncio.run(main())
