"""Login attempts whose worker died before their verdict (issue 14: kill -9 during logins): an attempt is
counted before its password is checked, and a worker killed in between used to leave that count behind as a
failure, so a few kills during logins locked an account whose every password was right."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from strongroom.auth import users as users_module
from strongroom.auth.users import MAX_FAILED_LOGINS, Attempt, Role, UserDirectory
from strongroom.barrier import Barrier, Write
from strongroom.errors import PinIncorrect, PinLocked
from tests.unit.test_offline_logins import PASSWORD, QuorumStore, run


def _dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


async def _leave_attempts(users: UserDirectory, barrier: Barrier, name: str, attempts: list[Attempt]) -> None:
    """What killed workers leave in the record: each attempt counted, none settled."""
    user = await users.get(name)
    assert user is not None and user.entry is not None
    left = user.with_counter(user.failed_logins + len(attempts), pending=(*user.pending, *attempts))
    await barrier.commit([Write(user.entry.key, left.to_record(), user.entry)])


def test_attempts_of_killed_workers_are_no_failures(tmp_path: Path) -> None:
    async def body(store: QuorumStore, barrier: Barrier) -> None:
        users = UserDirectory(barrier)
        await users.create("carol", Role.CRYPTO_USER, PASSWORD)
        now = time.time()
        killed = [Attempt(f"k{i}", users_module._BOOT, os.getppid(), _dead_pid(), now)
                  for i in range(MAX_FAILED_LOGINS)]
        await _leave_attempts(users, barrier, "carol", killed)
        # Five logins killed mid-check: the old code answered CKR_PIN_LOCKED to the right password here.
        assert (await users.authenticate("carol", PASSWORD)).name == "carol"
        record = await users.get("carol")
        assert record is not None and record.failed_logins == 0 and record.pending == ()

    run(tmp_path, body)


def test_wrong_passwords_still_lock_and_live_or_recent_attempts_still_count(tmp_path: Path) -> None:
    async def body(store: QuorumStore, barrier: Barrier) -> None:
        users = UserDirectory(barrier)
        await users.create("dave", Role.CRYPTO_USER, PASSWORD)
        for guess in range(MAX_FAILED_LOGINS - 1):
            with pytest.raises(PinIncorrect):
                await users.authenticate("dave", f"guess-{guess}")
        record = await users.get("dave")
        assert record is not None and record.failures == MAX_FAILED_LOGINS - 1 and record.pending == ()
        # An attempt of another node a moment ago is still being checked there: not abandoned, and it
        # cannot be used to wipe the count (one more wrong guess locks).
        elsewhere = Attempt("e1", "another-boot", 1, 1, time.time())
        await _leave_attempts(users, barrier, "dave", [elsewhere])
        with pytest.raises(PinIncorrect):
            await users.authenticate("dave", "guess-last")
        with pytest.raises(PinLocked):
            await users.authenticate("dave", PASSWORD)

    run(tmp_path, body)


def test_an_attempt_without_a_verdict_for_five_minutes_stops_counting(tmp_path: Path) -> None:
    async def body(store: QuorumStore, barrier: Barrier) -> None:
        users = UserDirectory(barrier)
        await users.create("erin", Role.CRYPTO_USER, PASSWORD)
        old = time.time() - users_module.ABANDONED_AFTER_SECONDS - 1
        stale = [Attempt(f"s{i}", "another-boot", 1, 1, old) for i in range(MAX_FAILED_LOGINS + 2)]
        await _leave_attempts(users, barrier, "erin", stale)
        assert (await users.authenticate("erin", PASSWORD)).name == "erin"

    run(tmp_path, body)
