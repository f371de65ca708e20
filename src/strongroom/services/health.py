"""How a node worker is doing: the error state, the power-on self-test report and the counters.

``node.status`` and ``node.metrics`` report from here; the request pipeline refuses every
operation but status while :attr:`Health.error` is set (a failed self-test, a store rollback,
tampering, zeroization).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class SelfTestFailure:
    name: str
    reason: str


@dataclass(frozen=True)
class SelfTestReport:
    passed: tuple[str, ...]
    failed: tuple[SelfTestFailure, ...]
    duration: float  # seconds, wall clock, for the whole run
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.failed

    @property
    def failed_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.failed)

    def reason(self, name: str) -> str | None:
        """The failure reason for ``name``, or None if it did not fail."""
        for failure in self.failed:
            if failure.name == name:
                return failure.reason
        return None


class Health:
    def __init__(self, selftest: SelfTestReport, boot: int, error: str | None = None) -> None:
        self.selftest = selftest
        self.boot = boot
        self.started = time.time()
        #: Set when the node must refuse everything but status (self-test failure, rollback, zeroized).
        self.error = error
        self.counters: dict[str, int] = {"requests": 0, "errors": 0}
        #: Crypto operations per key handle (metrics; crypto operations are counted, not audited).
        self.key_use: Counter[int] = Counter()
        #: Set by the worker: stops this node (every worker) after the current replies went out.
        self.shutdown: Callable[[], None] = lambda: None
