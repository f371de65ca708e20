"""Anonymous PKCS#11 sessions: what a session that is not logged in may cost a node.

PKCS#11 gives a session without a login the public objects of its token (v2.40 §6.7). An agent serves
such sessions for its applications through an anonymous login (``session.open_public``): a login
session of role ``public`` with no account behind it, which sees public objects and its own session
objects only (:mod:`strongroom.objects.access`). Nothing about it is secret, but it costs memory and
CPU, and the caller proved only that it holds an application host's certificate; so per worker:

* opening one is rate-limited per source (the client certificate): :data:`OPEN_RATE` per second after a
  burst of :data:`OPEN_BURST`;
* they all go by one name (:data:`strongroom.objects.access.PUBLIC_NAME`), so the login table's
  ``max_sessions_per_user`` bounds them per worker, and they expire when idle like any login;
* each one makes at most :data:`REQUEST_RATE` requests per second after a burst of
  :data:`REQUEST_BURST`; beyond, CKR_FUNCTION_FAILED (the agent passes it on, the caller may retry).

The state is bounded: at most :data:`MAX_TRACKED` sources and sessions are remembered (oldest first out).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

OPEN_RATE = 20.0
OPEN_BURST = 100.0
REQUEST_RATE = 5000.0
REQUEST_BURST = 10000.0
MAX_TRACKED = 4096


@dataclass
class Bucket:
    """A token bucket: ``rate`` tokens a second up to ``burst``."""

    rate: float
    burst: float
    tokens: float
    at: float

    def take(self, now: float) -> bool:
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True


class PublicGate:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._opens: OrderedDict[str, Bucket] = OrderedDict()
        self._requests: OrderedDict[bytes, Bucket] = OrderedDict()

    def may_open(self, source: str) -> bool:
        """May ``source`` open another anonymous session now?"""
        now = self._clock()
        bucket = self._opens.get(source)
        if bucket is None:
            bucket = self._opens[source] = Bucket(OPEN_RATE, OPEN_BURST, OPEN_BURST, now)
            _bound(self._opens)
        self._opens.move_to_end(source)
        return bucket.take(now)

    def may_request(self, token: bytes) -> bool:
        now = self._clock()
        bucket = self._requests.get(token)
        if bucket is None:
            bucket = self._requests[token] = Bucket(REQUEST_RATE, REQUEST_BURST, REQUEST_BURST, now)
            _bound(self._requests)
        return bucket.take(now)

    def forget(self, token: bytes) -> None:
        self._requests.pop(token, None)


def _bound(table: OrderedDict[str, Bucket] | OrderedDict[bytes, Bucket]) -> None:
    while len(table) > MAX_TRACKED:
        table.popitem(last=False)


#: This worker's gate (each worker is a process of its own).
GATE = PublicGate()
