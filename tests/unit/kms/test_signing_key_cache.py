"""The gateway's SigV4 signing-key cache and local verification (no cluster: a fake node)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from strongroom.errors import CKR
from strongroom.kms import sigv4
from strongroom.kms.backend import ClusterError
from strongroom.kms.config import GatewayConfig
from strongroom.kms.errors import DependencyTimeout, InvalidSignature, UnrecognizedClient
from strongroom.kms.gateway import Gateway
from strongroom.kms.signing_keys import SigningKeyCache

SECRET = "s" * 40
OTHER_SECRET = "o" * 40
KEY_ID = "AKIA" + "A" * 16
DATE = "20261128"
SCOPE = (KEY_ID, DATE, "us-east-1", "kms")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeNode:
    """kms.sigv4.signing_key / kms.sigv4.verify over a dict of access keys; counts calls."""

    def __init__(self) -> None:
        self.secrets = {KEY_ID: SECRET}
        self.calls: list[str] = []
        self.sources: list[str] = []
        self.unreachable = False

    def _check(self, access_key_id: str) -> str:
        if self.unreachable:
            raise ClusterError(CKR.DEVICE_REMOVED, "no node answers", unreachable=True)
        if access_key_id not in self.secrets:
            raise ClusterError(CKR.KEY_HANDLE_INVALID, "unknown")
        return self.secrets[access_key_id]

    async def sigv4_signing_key(self, access_key_id: str, date: str, region: str, service: str, *,
                                source: str = "") -> dict[str, Any]:
        self.calls.append("signing_key")
        self.sources.append(source)
        secret = self._check(access_key_id)
        return {"signing_key": sigv4.signing_key(secret, date, region, service), "name": "ci", "policy": None}

    async def verify_sigv4(self, access_key_id: str, date: str, region: str, service: str, string_to_sign: str,
                           signature: str, *, source: str = "") -> dict[str, Any]:
        self.calls.append("verify")
        self.sources.append(source)
        secret = self._check(access_key_id)
        if sigv4.signature(secret, sigv4.Prepared(access_key_id, date, region, service, string_to_sign,
                                                  signature)) != signature:
            raise ClusterError(CKR.SIGNATURE_INVALID, "mismatch")
        return {"access_key_id": access_key_id, "name": "ci", "policy": None}


def prepared(secret: str = SECRET, n: int = 0) -> sigv4.Prepared:
    to_sign = f"AWS4-HMAC-SHA256\n{DATE}T120000Z\n{DATE}/us-east-1/kms/aws4_request\n" + f"{n:064x}"
    unsigned = sigv4.Prepared(KEY_ID, DATE, "us-east-1", "kms", to_sign, "")
    return sigv4.Prepared(*SCOPE, to_sign, sigv4.signature(secret, unsigned))


def test_cache_hits_then_expires_absolutely() -> None:
    async def main() -> None:
        node, clock = FakeNode(), Clock()
        cache = SigningKeyCache(node.sigv4_signing_key, ttl=300, clock=clock)
        first = await cache.get(SCOPE)
        assert sigv4.matches(first.signing_key, prepared())
        clock.now += 299
        assert (await cache.get(SCOPE)) is first and node.calls == ["signing_key"]
        clock.now += 1  # 300 s after the fetch, however often it was used: gone
        assert cache.cached(SCOPE) is None and len(cache) == 0
        await cache.get(SCOPE)
        assert node.calls == ["signing_key"] * 2

    asyncio.run(main())


def test_cache_is_bounded_and_drops_expired_entries() -> None:
    async def main() -> None:
        node, clock = FakeNode(), Clock()
        for i in range(10):
            node.secrets[f"AKIA{i:016d}"] = SECRET
        cache = SigningKeyCache(node.sigv4_signing_key, ttl=60, max_entries=4, clock=clock)
        for i in range(6):
            await cache.get((f"AKIA{i:016d}", DATE, "us-east-1", "kms"))
        assert len(cache) == 4
        assert cache.cached(("AKIA" + "0" * 16, DATE, "us-east-1", "kms")) is None  # least recently used first
        clock.now += 30
        await cache.get(("AKIA" + "0" * 15 + "8", DATE, "us-east-1", "kms"))
        clock.now += 31
        cache.prune()
        assert len(cache) == 1  # only the one fetched 31 s ago is left

    asyncio.run(main())


def test_errors_are_not_cached_and_concurrent_misses_fetch_once() -> None:
    async def main() -> None:
        node = FakeNode()
        cache = SigningKeyCache(node.sigv4_signing_key, ttl=300)
        node.unreachable = True
        with pytest.raises(ClusterError):
            await cache.get(SCOPE)
        assert len(cache) == 0
        node.unreachable = False
        node.calls.clear()
        entries = await asyncio.gather(*(cache.get(SCOPE) for _ in range(8)))
        assert node.calls == ["signing_key"] and all(e is entries[0] for e in entries)

    asyncio.run(main())


def gateway(node: FakeNode, ttl: float = 300) -> Gateway:
    config = GatewayConfig()
    config.cluster.agent_socket = "/nonexistent"
    config.kms.signing_key_cache_seconds = ttl
    return Gateway(config, node)  # type: ignore[arg-type]


async def authenticate(gw: Gateway, p: sigv4.Prepared) -> Any:
    gw_prepare = sigv4.prepare
    try:
        sigv4.prepare = lambda *a, **k: p  # type: ignore[assignment]
        return await gw.authenticate("POST", "/", "", sigv4.Headers([]), b"")
    finally:
        sigv4.prepare = gw_prepare  # type: ignore[assignment]


def test_gateway_verifies_locally_and_survives_an_unreachable_cluster() -> None:
    async def main() -> None:
        node = FakeNode()
        gw = gateway(node)
        identity = await authenticate(gw, prepared())
        assert (identity.access_key_id, identity.name) == (KEY_ID, "ci") and node.calls == ["signing_key"]
        for n in range(5):
            await authenticate(gw, prepared(n=n))
        assert node.calls == ["signing_key"]  # no round trip per request
        node.unreachable = True
        assert (await authenticate(gw, prepared(n=9))).name == "ci"  # authenticated without the cluster
        # A wrong signature cannot be checked with the node: refused with the key we hold.
        with pytest.raises(InvalidSignature):
            await authenticate(gw, prepared(OTHER_SECRET))
        # Another day's key is not cached: the cluster is needed, a retryable fault.
        gw.signing_keys.clear()
        with pytest.raises(DependencyTimeout):
            await authenticate(gw, prepared())
        status, body = await gw.handle("POST", "/", "", sigv4.Headers([]), b"")
        assert status == 400  # no Authorization header: refused before any lookup, no traceback

    asyncio.run(main())


def test_mismatch_with_a_cached_key_asks_the_node_once_then_refetches() -> None:
    async def main() -> None:
        node = FakeNode()
        gw = gateway(node)
        await authenticate(gw, prepared())
        # The access key is re-created with another secret (same id): the cached signing key is stale.
        node.secrets[KEY_ID] = OTHER_SECRET
        node.calls.clear()
        assert (await authenticate(gw, prepared(OTHER_SECRET))).name == "ci"  # works at once
        assert node.calls == ["verify", "signing_key"]
        node.calls.clear()
        await authenticate(gw, prepared(OTHER_SECRET, n=1))
        assert node.calls == []  # the new signing key is cached
        # A wrong signature: the node is asked once (it audits the failure), then refused.
        with pytest.raises(InvalidSignature):
            await authenticate(gw, prepared(SECRET))
        assert node.calls == ["verify"]
        # A deleted access key: refused and dropped from the cache as soon as a mismatch shows it...
        del node.secrets[KEY_ID]
        with pytest.raises(UnrecognizedClient):
            await authenticate(gw, prepared(SECRET))
        assert gw.signing_keys.cached(SCOPE) is None
        with pytest.raises(UnrecognizedClient):
            await authenticate(gw, prepared(OTHER_SECRET))

    asyncio.run(main())


def test_deleted_access_key_stops_working_within_the_cache_time() -> None:
    async def main() -> None:
        node, clock = FakeNode(), Clock()
        gw = gateway(node)
        gw.signing_keys._clock = clock
        await authenticate(gw, prepared())
        del node.secrets[KEY_ID]
        assert (await authenticate(gw, prepared(n=1))).name == "ci"  # still cached
        clock.now += 300
        with pytest.raises(UnrecognizedClient):
            await authenticate(gw, prepared(n=2))

    asyncio.run(main())


def test_cache_disabled_verifies_in_the_node_every_time() -> None:
    async def main() -> None:
        node = FakeNode()
        gw = gateway(node, ttl=0)
        for n in range(3):
            await authenticate(gw, prepared(n=n))
        assert node.calls == ["verify"] * 3
        node.unreachable = True
        with pytest.raises(ClusterError):  # handle() answers it as DependencyTimeoutException (503)
            await authenticate(gw, prepared())

    asyncio.run(main())
