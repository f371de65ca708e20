"""The per-source pause after failed admin logins (auth/throttle.py)."""

from __future__ import annotations

from strongroom.auth.throttle import MAX_BACKOFF, MAX_SOURCES, LoginThrottle


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_source_is_paused_only_from_the_limit_on_and_the_pause_doubles() -> None:
    clock = Clock()
    throttle = LoginThrottle(limit=3, backoff=10, clock=clock)
    assert [throttle.failed("a") for _ in range(2)] == [0.0, 0.0]
    assert throttle.wait_seconds("a") == 0
    assert throttle.failed("a") == 10
    assert throttle.wait_seconds("a") == 10
    assert throttle.wait_seconds("b") == 0  # other sources are not affected
    clock.now += 10
    assert throttle.wait_seconds("a") == 0
    assert throttle.failed("a") == 20
    for _ in range(20):
        pause = throttle.failed("a")
    assert pause == MAX_BACKOFF


def test_success_clears_and_memory_is_bounded() -> None:
    throttle = LoginThrottle(limit=1, backoff=5, clock=Clock())
    assert throttle.failed("a") == 5
    throttle.succeeded("a")
    assert throttle.wait_seconds("a") == 0
    for index in range(MAX_SOURCES + 10):
        throttle.failed(f"s{index}")
    assert len(throttle._sources) == MAX_SOURCES
    assert throttle.wait_seconds("s0") == 0  # the oldest were forgotten
