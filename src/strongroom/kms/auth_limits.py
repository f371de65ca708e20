"""What an unauthenticated request may cost the cluster: a negative cache of unknown access key
ids and a rate limit of failed authentications (per source address, per access key id, overall).

Without them every request signed with an unknown access key, or with a bad signature, cost
the node a round trip and an fsynced audit record — a flood of them was a cheap way to load
the node and its disk. Now:

* An access key id the node said it does not know is remembered for ``ttl`` seconds (at most
  ``max_entries`` ids, least recently used dropped first): requests with it are answered
  ``UnrecognizedClientException`` by the gateway alone. An id that is not even of the AKIA form
  never reaches the node. The price: an access key created just after a client tried it works
  on this gateway ``ttl`` seconds later.
* Every failed authentication (unknown id, signature that does not match) takes a token from
  three buckets: the source address's (IPv6: its /64), the access key id's, and the gateway's
  overall one. A request that needs the node to authenticate it (its signing key is not held,
  or its signature does not match the one held) first *reserves* a token from each; the
  reservation is returned when it authenticates. When a bucket is empty the request is answered
  ``ThrottlingException`` (400, "Rate exceeded": AWS's answer, which SDKs retry with backoff)
  without asking the node. So at most ``burst`` unproven requests per source or key are in the
  node at once, and failures reach it at ``rate`` per second per source or key, ``total_rate``
  overall. A request whose signing key the gateway holds and whose signature matches needs no
  token, nor does fetching the signing key of an access key that authenticated here within the
  hour (the signing-key cache already bounds those fetches to one per key, day and
  ``signing_key_cache_seconds``): legitimate clients behind an attacker's address, and an access
  key someone floods with bad signatures, keep working.

Buckets are kept for at most ``max_entries`` sources and as many access key ids (a bucket
that refilled is forgotten; beyond the bound the least recently used goes, which only makes
that source start again from a full bucket — the overall bucket still holds).
"""

from __future__ import annotations

import functools
import ipaddress
import re
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

ACCESS_KEY_ID_RE = re.compile(r"^AKIA[A-Z0-9]{16}\Z")
DEFAULT_MAX_ENTRIES = 10_000
THROTTLED_MESSAGE = "Rate exceeded"


@functools.lru_cache(maxsize=4096)
def source_of(address: str | None) -> str:
    """The rate-limited unit of a peer address: an IPv4 address, an IPv6 /64, or the text as given.

    Cached (a bounded LRU of peer addresses): parsing an address costs more than the rest of a
    request's rate-limit bookkeeping, and a client sends many requests from one address."""
    if not address:
        return "unknown"
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return address[:64]
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network(f"{ip}/64", strict=False))
    return str(ip)


class ExpiringSet:
    """Access key ids remembered for ``ttl`` seconds from when they were added (bounded, LRU): the ids
    the node does not know (the negative cache), and the ids that authenticated lately."""

    def __init__(self, ttl: float, max_entries: int = DEFAULT_MAX_ENTRIES,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self._clock = clock
        self._expires: OrderedDict[str, float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._expires)

    def __contains__(self, access_key_id: str) -> bool:
        expires = self._expires.get(access_key_id)
        if expires is None:
            return False
        if expires <= self._clock():
            del self._expires[access_key_id]
            return False
        self._expires.move_to_end(access_key_id)
        return True

    def add(self, access_key_id: str) -> None:
        if self.ttl <= 0:
            return
        self._expires[access_key_id] = self._clock() + self.ttl
        self._expires.move_to_end(access_key_id)
        while len(self._expires) > self.max_entries:
            self._expires.popitem(last=False)

    def discard(self, access_key_id: str) -> None:
        self._expires.pop(access_key_id, None)


@dataclass
class _Bucket:
    tokens: float
    updated: float


class _Buckets:
    """Token buckets by name: ``rate`` tokens per second up to ``burst``; a missing bucket is full."""

    def __init__(self, rate: float, burst: float, max_entries: int, clock: Callable[[], float]) -> None:
        self.rate = rate
        self.burst = burst
        self.max_entries = max_entries
        self._clock = clock
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def _get(self, name: str) -> _Bucket:
        now = self._clock()
        bucket = self._buckets.get(name)
        if bucket is None:
            bucket = self._buckets[name] = _Bucket(self.burst, now)
            while len(self._buckets) > self.max_entries:
                self._buckets.popitem(last=False)
        else:
            bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.updated) * self.rate)
            bucket.updated = now
            self._buckets.move_to_end(name)
        return bucket

    def available(self, name: str) -> bool:
        return self._get(name).tokens >= 1

    def take(self, name: str) -> None:
        """One token (the balance may go below zero: failures seen without a reservation still count)."""
        bucket = self._get(name)
        bucket.tokens = max(bucket.tokens - 1, -self.burst)

    def give_back(self, name: str) -> None:
        bucket = self._get(name)
        bucket.tokens = min(self.burst, bucket.tokens + 1)
        if bucket.tokens >= self.burst:
            del self._buckets[name]  # a full bucket is the same as none


@dataclass
class Reservation:
    """Tokens held while the node decides; :meth:`FailureLimiter.succeeded` returns them."""

    names: list[tuple[_Buckets, str]] = field(default_factory=list)
    settled: bool = False


class FailureLimiter:
    """Rate limits of failed authentications per source, per access key id and overall."""

    def __init__(self, rate: float, burst: int, total_rate: float, *, max_entries: int = DEFAULT_MAX_ENTRIES,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.enabled = rate > 0 and burst > 0
        self.sources = _Buckets(rate, burst, max_entries, clock)
        self.keys = _Buckets(rate, burst, max_entries, clock)
        # The overall bucket holds five sources' bursts: a flood spread over many addresses is held
        # back as well. Only requests sent to the node draw from it, so one source (held to its own
        # rate) cannot empty it for everyone with failures the gateway answers alone.
        self.total = _Buckets(total_rate, 5 * burst, 1, clock) if total_rate > 0 else None
        self.throttled = 0

    def _dimensions(self, source: str, access_key_id: str, *, total: bool) -> list[tuple[_Buckets, str]]:
        dimensions = [(self.sources, source), (self.keys, access_key_id)]
        if total and self.total is not None:
            dimensions.append((self.total, "*"))
        return dimensions

    def reserve(self, source: str, access_key_id: str) -> Reservation | None:
        """A token from every bucket for a request the node must decide; None: throttle it."""
        if not self.enabled:
            return Reservation(settled=True)
        dimensions = self._dimensions(source, access_key_id, total=True)
        if not all(buckets.available(name) for buckets, name in dimensions):
            self.throttled += 1
            return None
        for buckets, name in dimensions:
            buckets.take(name)
        return Reservation(dimensions)

    def succeeded(self, reservation: Reservation) -> None:
        if reservation.settled:
            return
        reservation.settled = True
        for buckets, name in reservation.names:
            buckets.give_back(name)

    def failed(self, reservation: Reservation | None, source: str, access_key_id: str) -> None:
        """A failed authentication: a reservation is kept; without one (decided by the gateway alone), a
        token is taken from the source's and the access key's buckets."""
        if not self.enabled:
            return
        if reservation is not None and not reservation.settled:
            reservation.settled = True
            return
        for buckets, name in self._dimensions(source, access_key_id, total=False):
            buckets.take(name)
