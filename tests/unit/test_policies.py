"""Cluster policies (services/policy.py), the anonymous-session gate (auth/public.py) and the agent's
PIN-failure flags that follow the node's lockout (issue 13 items 1, 6, 7, 8)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import pytest

from strongroom.agent import state
from strongroom.auth import public, users
from strongroom.auth.users import Role
from strongroom.errors import CKR, ArgumentsBad, HsmError
from strongroom.services import policy


def test_the_defaults_open_public_objects_and_import_and_keep_legacy_off() -> None:
    defaults = policy.Policies()
    assert defaults.public_visible and defaults.import_allowed and not defaults.legacy
    assert defaults.as_dict() == {"public_objects": "visible", "plaintext_import": "allowed",
                                  "legacy_algorithms": "off"}
    assert {name: values[0] for name, values in policy.CHOICES.items()} == defaults.as_dict()


def test_a_change_is_checked() -> None:
    changed = policy.Policies().changed("public_objects", "hidden").changed("legacy_algorithms", "on")
    assert not changed.public_visible and changed.legacy and changed.import_allowed
    with pytest.raises(ArgumentsBad, match="unknown policy"):
        policy.Policies().changed("public_keys", "hidden")
    with pytest.raises(ArgumentsBad, match="one of allowed, forbidden"):
        policy.Policies().changed("plaintext_import", "maybe")


@pytest.mark.parametrize(("meta", "expected"), [
    (None, {}),
    ({}, {}),
    ({"policies": "hidden"}, {}),
    ({"policies": {"public_objects": "hidden"}}, {"public_objects": "hidden"}),
    # A newer node's names and values are left out, never guessed.
    ({"policies": {"public_objects": "sometimes", "quantum": "on", "legacy_algorithms": "on"}},
     {"legacy_algorithms": "on"}),
])
def test_what_a_meta_record_holds(meta: dict[str, Any] | None, expected: dict[str, str]) -> None:
    assert policy.from_meta(meta) == policy.Policies(**expected)


@dataclass
class Entry:
    value: dict[str, Any]


class Barrier:
    def __init__(self, meta: dict[str, Any]) -> None:
        self.meta = meta
        self.reads = 0

    async def get(self, key: str) -> Entry:
        assert key == policy.CLUSTER_META_KEY
        self.reads += 1
        return Entry(self.meta)


def test_a_worker_reads_the_policies_at_most_once_a_second_and_at_once_after_its_own_change(
        monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [100.0]
    monkeypatch.setattr(policy.time, "monotonic", lambda: clock[0])
    barrier = Barrier({"policies": {"public_objects": "hidden"}})

    async def run() -> None:
        assert await policy.current(None) == policy.Policies()  # before the cluster key is here
        assert not (await policy.current(barrier)).public_visible  # type: ignore[arg-type]
        barrier.meta = {"policies": {}}
        assert not (await policy.current(barrier)).public_visible  # type: ignore[arg-type]
        assert barrier.reads == 1
        clock[0] += policy.REFRESH_SECONDS
        assert (await policy.current(barrier)).public_visible  # type: ignore[arg-type]
        assert barrier.reads == 2
        policy.remember(barrier, policy.Policies(legacy_algorithms="on"))  # type: ignore[arg-type]
        assert (await policy.current(barrier)).legacy  # type: ignore[arg-type]
        assert barrier.reads == 2

    asyncio.run(run())


def test_anonymous_sessions_are_rate_limited_per_source_and_per_session() -> None:
    now = [0.0]
    gate = public.PublicGate(clock=lambda: now[0])
    opened = sum(gate.may_open("agent-a") for _ in range(int(public.OPEN_BURST) + 10))
    assert opened == public.OPEN_BURST
    assert gate.may_open("agent-b")  # another source has its own budget
    now[0] += 1.0
    assert sum(gate.may_open("agent-a") for _ in range(100)) == public.OPEN_RATE
    requests = sum(gate.may_request(b"t") for _ in range(int(public.REQUEST_BURST) + 5))
    assert requests == public.REQUEST_BURST
    gate.forget(b"t")
    assert gate.may_request(b"t")  # a new session starts with a full bucket


def test_the_gate_remembers_a_bounded_number_of_sources(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(public, "MAX_TRACKED", 8)
    gate = public.PublicGate(clock=lambda: 0.0)
    for n in range(50):
        gate.may_open(f"source-{n}")
        gate.may_request(n.to_bytes(2, "big"))
    assert len(gate._opens) == 8 and len(gate._requests) == 8


def test_nobody_becomes_public_by_name() -> None:
    """The role of anonymous sessions is never one a user account has or an admin gives."""
    with pytest.raises(HsmError) as refused:
        Role.parse("public")
    assert refused.value.code == CKR.USER_TYPE_INVALID
    assert Role.PUBLIC.value == "public"


def test_the_agent_s_pin_flags_follow_the_node_s_lockout() -> None:
    assert state.LOCKOUT_AFTER == users.MAX_FAILED_LOGINS
