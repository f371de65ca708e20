"""The gateway's cache of SigV4 derived signing keys (what AWS's own front ends keep).

A signing key (kSigning, the HMAC chain of "AWS4"+secret, date, region, service,
"aws4_request") is valid for one access key, one UTC day, one region and one service; the
node issues it (``kms.sigv4.signing_key``) to the service user the access key is bound to,
and the secret itself never leaves the node. With it the gateway verifies signatures itself
(``hmac.compare_digest``), so a request costs no authentication round trip while the key is
cached, and requests are still authenticated while the cluster cannot be reached.

Bounds: an entry lives ``ttl`` seconds from its fetch (absolute, never extended by use), so an
access key deleted in the cluster stops working on this gateway within ``ttl``; at most
``max_entries`` entries (least recently used dropped first); expired entries are dropped when
met and by :meth:`SigningKeyCache.prune`. The keys are Python ``bytes``, which cannot be wiped
reliably: dropping them is all that is done.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

DEFAULT_TTL = 300.0
DEFAULT_MAX_ENTRIES = 4096

CacheKey = tuple[str, str, str, str]  # (access key id, date, region, service)


@dataclass(frozen=True)
class SigningKey:
    access_key_id: str
    signing_key: bytes
    name: str
    policy: str | None
    expires: float  # time.monotonic()


class SigningKeyCache:
    def __init__(self, fetch: Callable[..., Awaitable[dict[str, Any]]], *, ttl: float = DEFAULT_TTL,
                 max_entries: int = DEFAULT_MAX_ENTRIES, clock: Callable[[], float] = time.monotonic) -> None:
        self._fetch = fetch
        self.ttl = ttl
        self.max_entries = max_entries
        self._clock = clock
        self._entries: OrderedDict[CacheKey, SigningKey] = OrderedDict()
        self._inflight: dict[CacheKey, asyncio.Future[SigningKey]] = {}
        self.fetches = 0

    @property
    def enabled(self) -> bool:
        return self.ttl > 0

    def __len__(self) -> int:
        return len(self._entries)

    def cached(self, key: CacheKey) -> SigningKey | None:
        """The unexpired entry for ``key`` (no fetch); expired entries are dropped."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry.expires <= self._clock():
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return entry

    def pending(self, key: CacheKey) -> bool:
        """Whether a fetch of ``key`` is under way (a :meth:`get` now joins it)."""
        return key in self._inflight

    async def get(self, key: CacheKey, *, refresh: bool = False, source: str = "") -> SigningKey:
        """The cached entry, or fetched from the node (one fetch per key at a time).
        ``refresh`` fetches even when cached. Errors of the fetch (unknown key, cluster
        unreachable) propagate and cache nothing. ``source``: the requester's address, for the
        node's audit of a refusal."""
        if not refresh:
            entry = self.cached(key)
            if entry is not None:
                return entry
        pending = self._inflight.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[SigningKey] = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        try:
            entry = await self._load(key, source)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: no "never retrieved" warning when nobody else waits
            raise
        else:
            future.set_result(entry)
            return entry
        finally:
            self._inflight.pop(key, None)

    async def _load(self, key: CacheKey, source: str) -> SigningKey:
        self.fetches += 1
        answer = await self._fetch(*key, source=source)
        signing_key = answer["signing_key"]
        if not isinstance(signing_key, bytes) or len(signing_key) != 32:
            raise ValueError("the node returned a malformed signing key")
        entry = SigningKey(key[0], signing_key, str(answer["name"]), answer.get("policy"), self._clock() + self.ttl)
        self._entries[key] = entry
        self._entries.move_to_end(key)
        self.prune()
        return entry

    def drop(self, key: CacheKey) -> None:
        self._entries.pop(key, None)

    def prune(self) -> None:
        """Drop expired entries, then the least recently used beyond ``max_entries``."""
        now = self._clock()
        for key in [k for k, e in self._entries.items() if e.expires <= now]:
            del self._entries[key]
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def clear(self) -> None:
        self._entries.clear()
