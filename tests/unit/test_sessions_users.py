"""Login sessions (idle expiry, limits) and users (rules, lockout, admin protection) over a real store."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from strongroom.auth.sessions import TOKEN_BYTES, SessionTable
from strongroom.auth.users import (
    LOCKED_CHECKS,
    MAX_FAILED_LOGINS,
    PASSWORD_MAX,
    PASSWORD_MIN,
    WRONG_CREDENTIALS,
    Role,
    UserDirectory,
    UserExists,
    UserNotFound,
    check_password_rules,
    normalize_username,
)
from strongroom.barrier import Barrier, Write
from strongroom.errors import (
    CKR,
    ActionProhibited,
    ArgumentsBad,
    PinIncorrect,
    PinInvalid,
    PinLenRange,
    PinLocked,
    SessionHandleInvalid,
    UserNotLoggedIn,
)
from strongroom.store.sqlite import SqliteStore

CLUSTER_KEY = bytearray(b"\x42" * 32)
PASSWORD = "correct-horse"
WRONG = "wrong-password"

# --------------------------------------------------------------------------- sessions


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def table(clock: Clock, *, idle: float = 60.0, per_user: int = 3, total: int = 10) -> SessionTable:
    return SessionTable(idle_timeout=idle, max_per_user=per_user, max_total=total, clock=clock)


def test_session_open_and_resolve():
    clock = Clock()
    sessions = table(clock)
    a = sessions.open("alice", Role.CRYPTO_USER, connection_id=7)
    b = sessions.open("alice", Role.CRYPTO_USER, connection_id=8)
    assert len(a.token) == TOKEN_BYTES and a.token != b.token
    assert sessions.resolve(a.token) is a
    assert (a.username, a.role, a.connection_id, a.created) == ("alice", Role.CRYPTO_USER, 7, clock.now)
    assert len(sessions) == 2
    with pytest.raises(UserNotLoggedIn):
        sessions.resolve(None)
    with pytest.raises(SessionHandleInvalid):
        sessions.resolve(b"\x00" * TOKEN_BYTES)
    sessions.close(a.token)
    with pytest.raises(SessionHandleInvalid):
        sessions.resolve(a.token)
    sessions.close(a.token)  # closing twice is harmless
    assert len(sessions) == 1


def test_idle_expiry_with_an_injected_clock():
    clock = Clock()
    sessions = table(clock, idle=60)
    session = sessions.open("alice", Role.ADMIN, 1)
    clock.now += 60  # exactly the timeout: still alive
    assert sessions.resolve(session.token) is session
    clock.now += 59  # resolving touched it: the timer restarted
    assert sessions.resolve(session.token) is session
    assert session.last_used == clock.now and session.created == 1000.0
    clock.now += 60.001
    with pytest.raises(SessionHandleInvalid, match="idle"):
        sessions.resolve(session.token)
    assert len(sessions) == 0
    with pytest.raises(SessionHandleInvalid):  # gone for good, even if the clock went back
        clock.now -= 100
        sessions.resolve(session.token)


def test_expire_idle_removes_only_idle_sessions():
    clock = Clock()
    sessions = table(clock, idle=10)
    old = sessions.open("alice", Role.CRYPTO_USER, 1)
    clock.now += 8
    fresh = sessions.open("bob", Role.CRYPTO_USER, 2)
    clock.now += 5  # old idle 13 s, fresh idle 5 s
    assert sessions.expire_idle() == 1
    assert sessions.resolve(fresh.token) is fresh
    with pytest.raises(SessionHandleInvalid):
        sessions.resolve(old.token)
    assert sessions.expire_idle() == 0


def test_the_per_user_limit_ends_the_least_recently_used_session_instead_of_refusing():
    """The old table refused the 1,025th login of a user (CKR_SESSION_COUNT): anyone with the password could
    lock its user out by logging in 1,024 times. Now the login always succeeds; the user's least recently
    used session goes."""
    clock = Clock()
    ended: list[tuple[str, str]] = []
    sessions = table(clock, per_user=2, total=10)
    sessions.on_end = lambda session, why: ended.append((session.username, why))
    first = sessions.open("alice", Role.CRYPTO_USER, 1)
    second = sessions.open("alice", Role.CRYPTO_USER, 1)
    clock.now += 1
    sessions.resolve(first.token)  # used: second is now the least recently used
    third = sessions.open("alice", Role.CRYPTO_USER, 2)
    assert sessions.resolve(first.token) is first and sessions.resolve(third.token) is third
    with pytest.raises(SessionHandleInvalid):
        sessions.resolve(second.token)
    assert ended == [("alice", "user 'alice' reached its 2 sessions: the least recently used went")]
    bob = sessions.open("bob", Role.CRYPTO_USER, 3)  # other users are not affected
    for _ in range(50):  # a flood of logins of alice
        sessions.open("alice", Role.CRYPTO_USER, 4)
    assert sessions.resolve(bob.token) is bob and len(sessions) == 3


def test_at_the_total_limit_the_user_holding_the_most_gives_way():
    clock = Clock()
    sessions = table(clock, idle=30, per_user=5, total=3)
    first = sessions.open("a", Role.CRYPTO_USER, 1)
    sessions.open("b", Role.CRYPTO_USER, 1)
    flood = sessions.open("b", Role.CRYPTO_USER, 1)
    sessions.open("c", Role.ADMIN, 1)  # b held the most: its oldest went
    assert len(sessions) == 3
    assert sessions.resolve(first.token) is first and sessions.resolve(flood.token) is flood


def test_idle_sessions_free_their_slots():
    clock = Clock()
    sessions = table(clock, idle=30, per_user=5, total=3)
    first = sessions.open("a", Role.CRYPTO_USER, 1)
    clock.now += 20
    others = [sessions.open("b", Role.CRYPTO_USER, 1), sessions.open("c", Role.ADMIN, 1)]
    clock.now += 11  # only the first session is now idle for more than 30 s
    sessions.open("d", Role.CRYPTO_USER, 1)
    assert len(sessions) == 3 and all(sessions.resolve(s.token) is s for s in others)
    with pytest.raises(SessionHandleInvalid):
        sessions.resolve(first.token)


def test_sessions_end_with_their_connection_unless_kept():
    clock = Clock()
    sessions = table(clock)
    plain = sessions.open("alice", Role.CRYPTO_USER, 7)
    kept = sessions.open("alice", Role.CRYPTO_USER, 7, keep=True)
    other = sessions.open("bob", Role.CRYPTO_USER, 8)
    assert sessions.close_connection(7) == [plain]
    with pytest.raises(SessionHandleInvalid):
        sessions.resolve(plain.token)
    assert sessions.resolve(kept.token) is kept and sessions.resolve(other.token) is other


def test_close_user():
    clock = Clock()
    sessions = table(clock)
    alice = [sessions.open("alice", Role.CRYPTO_USER, i) for i in range(3)]
    bob = sessions.open("bob", Role.CRYPTO_USER, 9)
    assert len(sessions.close_user("alice")) == 3
    for session in alice:
        with pytest.raises(SessionHandleInvalid):
            sessions.resolve(session.token)
    assert sessions.resolve(bob.token) is bob
    assert sessions.close_user("alice") == []
    assert sessions.close_user("nobody") == []
    assert len(sessions) == 1


# --------------------------------------------------------------------------- username / password rules


@pytest.mark.parametrize(
    "name, normalized",
    [
        ("a", "a"),
        ("Z", "z"),
        ("7", "7"),
        ("_", "_"),
        ("a" * 31, "a" * 31),
        ("Crypto_User_01", "crypto_user_01"),
        ("ADMIN", "admin"),
    ],
)
def test_usernames_accepted(name, normalized):
    assert normalize_username(name) == normalized


@pytest.mark.parametrize(
    "name",
    [
        "",
        "a" * 32,
        "a-b",
        "a b",
        " ab",
        "a:b",
        "a.b",
        "a/b",
        "é",
        "josé",
        "Ä",
        "名前",
        "\u212a",  # KELVIN SIGN, lower() is "k"
        "\uff11",  # FULLWIDTH DIGIT ONE
        "alice\n",  # "$" alone would accept a trailing newline
        "\nalice",
        "alice\x00",
        None,
        1,
        b"alice",
        ["alice"],
    ],
)
def test_usernames_refused(name):
    with pytest.raises(ArgumentsBad):
        normalize_username(name)


@pytest.mark.parametrize(
    "password",
    ["x" * PASSWORD_MIN, "x" * PASSWORD_MAX, "correct horse", "pässwörd", "€" * PASSWORD_MAX, "-_:;!@#$%^&*()"],
)
def test_passwords_accepted(password):
    assert check_password_rules(password) == password


@pytest.mark.parametrize("password", ["", "x", "x" * (PASSWORD_MIN - 1), "x" * (PASSWORD_MAX + 1),
                                      "é" * (PASSWORD_MAX + 1)])
def test_passwords_of_the_wrong_length_refused(password):
    with pytest.raises(PinLenRange):
        check_password_rules(password)


@pytest.mark.parametrize("password", ["password\n", "pass\x00word", "\tpassword", "passw\x7ford", "pass\u2028word"])
def test_passwords_with_control_characters_refused(password):
    with pytest.raises(PinInvalid):
        check_password_rules(password)


@pytest.mark.parametrize("password", [None, 1234567, b"password", ["password"]])
def test_non_string_passwords_refused(password):
    with pytest.raises(ArgumentsBad):
        check_password_rules(password)


# --------------------------------------------------------------------------- users over a real store


def with_users(tmp_path: Path, body: Callable[..., Awaitable[Any]], workers: int = 1) -> Any:
    """Run ``body(dir1, dir2, ...)``: one UserDirectory per worker, each with its own store connection."""
    path = tmp_path / "store.db"

    async def main() -> Any:
        stores = [await SqliteStore.open(path) for _ in range(workers)]
        try:
            return await body(*[UserDirectory(Barrier(store, CLUSTER_KEY)) for store in stores])
        finally:
            for store in stores:
                await store.close()

    return asyncio.run(main())


def test_authenticate_counts_failures_and_locks_at_five(tmp_path):
    async def body(users: UserDirectory) -> None:
        await users.create("alice", Role.CRYPTO_USER, PASSWORD)
        assert (await users.authenticate("Alice", PASSWORD)).name == "alice"  # case-insensitive
        for attempt in range(1, MAX_FAILED_LOGINS + 1):
            with pytest.raises(PinIncorrect) as info:
                await users.authenticate("alice", WRONG)
            assert info.value.message == WRONG_CREDENTIALS  # the attempt that locks says no more
            user = await users.require("alice")
            assert user.failed_logins == attempt
            assert user.locked is (attempt == MAX_FAILED_LOGINS)
        # Locked: a wrong password gets the answer of any wrong password (still counted); only the
        # right one tells its holder that the account is locked.
        with pytest.raises(PinIncorrect) as info:
            await users.authenticate("alice", WRONG)
        assert info.value.message == WRONG_CREDENTIALS
        with pytest.raises(PinLocked):
            await users.authenticate("alice", PASSWORD)
        assert (await users.require("alice")).failed_logins == MAX_FAILED_LOGINS + 2
        # After LOCKED_CHECKS checks past the lock nothing is checked or counted any more: no oracle.
        for _ in range(LOCKED_CHECKS - 2):
            with pytest.raises(PinIncorrect):
                await users.authenticate("alice", WRONG)
        assert (await users.require("alice")).failed_logins == MAX_FAILED_LOGINS + LOCKED_CHECKS
        for password in (PASSWORD, WRONG):
            with pytest.raises(PinIncorrect) as info:
                await users.authenticate("alice", password)
            assert info.value.message == WRONG_CREDENTIALS
        assert (await users.require("alice")).failed_logins == MAX_FAILED_LOGINS + LOCKED_CHECKS
        assert (await users.require("alice")).public()["locked"] is True

        # An admin resetting the password unlocks the account.
        await users.set_password("alice", "new-password")
        assert (await users.require("alice")).failed_logins == 0
        assert (await users.authenticate("alice", "new-password")).name == "alice"
        with pytest.raises(PinIncorrect):
            await users.authenticate("alice", PASSWORD)

    with_users(tmp_path, body)


def test_unknown_unactivated_and_locked_users_answer_like_a_wrong_password(tmp_path):
    async def body(users: UserDirectory) -> None:
        await users.create("known", Role.CRYPTO_USER, PASSWORD)
        await users._barrier.commit([users.new_user_write("fresh_admin", Role.ADMIN, None)])  # not activated
        answers = []
        for name in ["known"] * (MAX_FAILED_LOGINS + LOCKED_CHECKS + 2) + ["ghost", "fresh_admin"]:
            with pytest.raises(PinIncorrect) as info:
                await users.authenticate(name, WRONG)
            answers.append((type(info.value), info.value.code, info.value.message))
        assert set(answers) == {(PinIncorrect, CKR.PIN_INCORRECT, WRONG_CREDENTIALS)}

    with_users(tmp_path, body)


def test_accounts_have_ids_a_new_user_of_an_old_name_is_another_account(tmp_path):
    async def body(users: UserDirectory) -> None:
        await users.create("root", Role.ADMIN, PASSWORD)
        first = await users.create("bob", Role.CRYPTO_USER, PASSWORD)
        assert first.uid and first.uid == (await users.require("bob")).uid
        assert (await users.authenticate("bob", PASSWORD)).uid == first.uid
        await users.delete("bob", acting_user="root")
        second = await users.create("bob", Role.CRYPTO_USER, PASSWORD)
        assert second.uid and second.uid != first.uid
        # A record from before ids existed gets a stand-in that stays the same across rewrites.
        legacy = {"name": "old", "role": "crypto-user", "password": None, "failed_logins": 0, "created": 12.5}
        await users._barrier.commit([Write("users/old", legacy, None)])
        stand_in = (await users.require("old")).uid
        assert stand_in == "legacy-12.5"
        await users.set_password("old", PASSWORD)
        assert (await users.require("old")).uid == stand_in

    with_users(tmp_path, body)


def test_delete_takes_what_goes_with_it_in_the_same_commit_and_the_rest_in_batches(tmp_path):
    """user.delete's ``also`` (the share lists naming the user): up to the store's limit in the removal's
    own transaction, the rest in batches until nothing is asked any more."""

    async def body(users: UserDirectory) -> None:
        await users.create("root", Role.ADMIN, PASSWORD)
        barrier = users._barrier
        for count, name in ((10, "few"), (150, "many")):
            await users.create(name, Role.CRYPTO_USER, PASSWORD)
            for i in range(count):
                await barrier.commit([Write(f"lists/{name}/{i}", {"names": [name, "other"]}, None)])

            async def also(gone: str, prefix: str = f"lists/{name}/") -> list[Write]:
                entries, _ = await barrier.list_prefix(prefix)
                return [Write(e.key, {"names": [n for n in e.value["names"] if n != gone]}, e)
                        for e in entries if gone in e.value["names"]]

            await users.delete(name, acting_user="root", also=also)
            entries, _ = await barrier.list_prefix(f"lists/{name}/")
            assert len(entries) == count and all(e.value["names"] == ["other"] for e in entries)
            assert await users.get(name) is None

    with_users(tmp_path, body)


def test_a_successful_login_resets_the_counter(tmp_path):
    async def body(users: UserDirectory) -> None:
        await users.create("bob", Role.CRYPTO_USER, PASSWORD)
        for _ in range(MAX_FAILED_LOGINS - 1):
            with pytest.raises(PinIncorrect):
                await users.authenticate("bob", WRONG)
        assert (await users.require("bob")).failed_logins == MAX_FAILED_LOGINS - 1
        await users.authenticate("bob", PASSWORD)
        assert (await users.require("bob")).failed_logins == 0

    with_users(tmp_path, body)


@pytest.mark.parametrize("name", ["nobody", "a-b", "", None, 5, "alice\n", "a" * 32])
def test_unknown_or_malformed_users_get_the_same_error(tmp_path, name):
    async def body(users: UserDirectory) -> None:
        await users.create("alice", Role.CRYPTO_USER, PASSWORD)
        with pytest.raises(PinIncorrect) as info:
            await users.authenticate(name, PASSWORD)
        assert info.value.message == "wrong username or password"
        with pytest.raises(PinIncorrect):
            await users.authenticate("alice", None)
        assert (await users.require("alice")).failed_logins == 0

    with_users(tmp_path, body)


def test_create_rules(tmp_path):
    async def body(users: UserDirectory) -> None:
        created = await users.create("Carol", Role.ADMIN, PASSWORD)
        assert created.name == "carol" and created.role is Role.ADMIN and created.failed_logins == 0
        with pytest.raises(UserExists):
            await users.create("CAROL", Role.CRYPTO_USER, PASSWORD)
        with pytest.raises(ArgumentsBad):
            await users.create("carol\n", Role.CRYPTO_USER, PASSWORD)
        with pytest.raises(PinLenRange):
            await users.create("dave", Role.CRYPTO_USER, "short")
        assert [u.name for u in await users.list()] == ["carol"]
        with pytest.raises(UserNotFound):
            await users.set_password("nobody", PASSWORD)

    with_users(tmp_path, body)


def test_last_admin_cannot_be_deleted_and_nobody_deletes_themselves(tmp_path):
    async def body(users: UserDirectory) -> None:
        await users.create("root", Role.ADMIN, PASSWORD)
        await users.create("bob", Role.CRYPTO_USER, PASSWORD)

        with pytest.raises(ActionProhibited, match="last admin"):
            await users.delete("root", acting_user="bob")
        with pytest.raises(ActionProhibited, match="logged in as"):
            await users.delete("root", acting_user="root")
        with pytest.raises(ActionProhibited, match="logged in as"):
            await users.delete("ROOT", acting_user="root")  # the name is normalized first
        with pytest.raises(UserNotFound):
            await users.delete("nobody", acting_user="root")

        await users.create("root2", Role.ADMIN, PASSWORD)
        with pytest.raises(ActionProhibited, match="logged in as"):
            await users.delete("root2", acting_user="root2")
        deleted = await users.delete("root", acting_user="root2")  # another admin remains
        assert deleted.name == "root"
        with pytest.raises(ActionProhibited, match="last admin"):
            await users.delete("root2", acting_user="bob")
        assert (await users.delete("bob", acting_user="root2")).name == "bob"  # crypto users are fine
        assert [u.name for u in await users.list()] == ["root2"]

    with_users(tmp_path, body)


def test_concurrent_deletes_of_the_last_two_admins_keep_one(tmp_path):
    async def body(users_a: UserDirectory, users_b: UserDirectory) -> None:
        await users_a.create("admin1", Role.ADMIN, PASSWORD)
        await users_a.create("admin2", Role.ADMIN, PASSWORD)
        results = await asyncio.gather(
            users_a.delete("admin1", acting_user="admin2"),
            users_b.delete("admin2", acting_user="admin1"),
            return_exceptions=True,
        )
        assert sum(isinstance(r, ActionProhibited) for r in results) == 1, results
        remaining = await users_a.list()
        assert len(remaining) == 1 and remaining[0].role is Role.ADMIN

    with_users(tmp_path, body, workers=2)


def _check_race(results: list[Any], failed_logins: int) -> None:
    unexpected = [r for r in results if type(r) is not PinIncorrect]
    assert not unexpected, unexpected
    # Every attempt was counted before its check (no lost increments), and none past the last check.
    assert failed_logins == MAX_FAILED_LOGINS + LOCKED_CHECKS


def test_concurrent_wrong_passwords_lock_without_lost_increments(tmp_path):
    async def body(users: UserDirectory) -> None:
        await users.create("target", Role.CRYPTO_USER, PASSWORD)
        attempts = MAX_FAILED_LOGINS + LOCKED_CHECKS
        results = await asyncio.gather(*(users.authenticate("target", WRONG) for _ in range(attempts)),
                                       return_exceptions=True)
        user = await users.require("target")
        assert user.locked
        _check_race(results, user.failed_logins)
        # Nothing is checked any more: the right password is answered as a wrong one.
        with pytest.raises(PinIncorrect):
            await users.authenticate("target", PASSWORD)
        assert (await users.require("target")).failed_logins == attempts

    with_users(tmp_path, body)


def test_concurrent_wrong_passwords_from_two_workers(tmp_path):
    # Two store connections on one file, as two worker processes of a node have.
    async def body(users_a: UserDirectory, users_b: UserDirectory) -> None:
        await users_a.create("target", Role.CRYPTO_USER, PASSWORD)
        attempts = [(users_a if i % 2 else users_b).authenticate("target", WRONG)
                    for i in range(MAX_FAILED_LOGINS + LOCKED_CHECKS + 4)]
        results = await asyncio.gather(*attempts, return_exceptions=True)
        user = await users_b.require("target")
        assert user.locked
        _check_race(results, user.failed_logins)

    with_users(tmp_path, body, workers=2)
