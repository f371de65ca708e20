"""The node's kms.* operations over a real SQLite store and barrier (no network)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from strongroom.auth.users import Role
from strongroom.barrier import Barrier
from strongroom.dispatch.ops import kms
from strongroom.dispatch.table import parse_args
from strongroom.errors import CKR, ArgumentsBad, HsmError
from strongroom.services.auditor import Intent, outcome_of
from strongroom.store.sqlite import SqliteStore

CLUSTER_KEY = bytearray(b"\x24" * 32)


@dataclass
class FakeServices:
    """What the kms.* handlers use of a worker's services: the barrier (through the keyring) and the auditor."""

    barrier: Barrier
    audited: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)

    @property
    def keyring(self) -> FakeServices:
        return self

    @property
    def audit(self) -> FakeServices:
        return self

    def require_barrier(self) -> Barrier:
        return self.barrier

    async def record(self, event: str, *, actor: str | None, outcome: str = "ok",
                     details: dict[str, Any] | None = None) -> None:
        self.audited.append((event, outcome, details or {}))

    async def intent(self, event: str, *, actor: str | None, details: dict[str, Any]) -> Intent:
        """A change announced (services/auditor.py); its outcome is recorded below with the same details."""
        self.audited.append((event, "intent", details))
        return Intent(event, actor, len(self.audited), 1, "node1")

    async def settle(self, intent: Intent, exc: BaseException | None) -> None:
        outcome = "ok" if exc is None or intent.committed else outcome_of(exc)
        self.audited.append((intent.event, outcome, self.audited[intent.seq - 1][2]))


@dataclass
class FakeSession:
    username: str
    role: Role


@dataclass
class FakeCall:
    services: FakeServices
    session: FakeSession

    @property
    def actor(self) -> str:
        return self.session.username


def run(tmp_path: Path, body: Callable[[FakeServices], Awaitable[Any]]) -> Any:
    async def main() -> Any:
        store = await SqliteStore.open(tmp_path / "store.db")
        try:
            return await body(FakeServices(Barrier(store, CLUSTER_KEY)))
        finally:
            await store.close()

    return asyncio.run(main())


def admin(services: FakeServices) -> FakeCall:
    return FakeCall(services, FakeSession("admin", Role.ADMIN))


def user(services: FakeServices, name: str = "kmsuser") -> FakeCall:
    return FakeCall(services, FakeSession(name, Role.CRYPTO_USER))


async def op(handler: Any, cls: Any, call: FakeCall, **args: Any) -> Any:
    return await handler(call, parse_args(cls, args) if cls is not None else None)


def test_access_keys_secret_once_and_sigv4_verification(tmp_path):
    async def body(services: FakeServices) -> None:
        created = await op(kms.access_key_create, kms.AccessKeyCreateArgs, admin(services), name="ci")
        assert kms.ACCESS_KEY_ID_RE.match(created["access_key_id"]) and len(created["secret_access_key"]) == 40
        listed = await op(kms.access_key_list, None, admin(services))
        assert listed["access_keys"] == [{k: v for k, v in created.items() if k != "secret_access_key"}]
        assert "secret" not in str(listed)
        # The stored record is barrier ciphertext: the secret is not in the store in clear.
        raw = await services.barrier.store.get(kms.ACCESS_KEY_PREFIX + created["access_key_id"])
        assert created["secret_access_key"].encode() not in raw.value

        scope = "20261128/us-east-1/kms/aws4_request"
        to_sign = f"AWS4-HMAC-SHA256\n20261128T120000Z\n{scope}\n" + "ab" * 32
        good = kms.sigv4_signature(created["secret_access_key"], "20261128", "us-east-1", "kms", to_sign)
        args = dict(access_key_id=created["access_key_id"], date="20261128", region="us-east-1", service="kms",
                    string_to_sign=to_sign)
        result = await op(kms.sigv4_verify, kms.SigV4VerifyArgs, user(services), signature=good, **args)
        assert result == {"access_key_id": created["access_key_id"], "name": "ci", "policy": None}
        with pytest.raises(HsmError) as caught:
            await op(kms.sigv4_verify, kms.SigV4VerifyArgs, user(services), signature="0" * 64, **args)
        assert caught.value.code == CKR.SIGNATURE_INVALID
        # Another crypto user cannot use kmsuser's access keys, and unknown ids look the same.
        for call, key_id in ((user(services, "alice"), created["access_key_id"]),
                             (user(services), "AKIA" + "Z" * 16)):
            with pytest.raises(HsmError) as caught:
                await op(kms.sigv4_verify, kms.SigV4VerifyArgs, call, signature=good,
                         **dict(args, access_key_id=key_id))
            assert caught.value.code == CKR.KEY_HANDLE_INVALID
        with pytest.raises(ArgumentsBad):
            await op(kms.sigv4_verify, kms.SigV4VerifyArgs, user(services), signature=good,
                     **dict(args, string_to_sign="anything else"))
        assert [e for e, outcome, _ in services.audited if outcome != "ok"].count("kms.sigv4.verify") == 3

        await op(kms.access_key_delete, kms.AccessKeyDeleteArgs, admin(services),
                 access_key_id=created["access_key_id"])
        with pytest.raises(HsmError) as caught:
            await op(kms.sigv4_verify, kms.SigV4VerifyArgs, user(services), signature=good, **args)
        assert caught.value.code == CKR.KEY_HANDLE_INVALID
        events = [e for e, outcome, _ in services.audited if outcome == "ok"]
        assert events == ["kms.access_key.create", "kms.access_key.delete"]

    run(tmp_path, body)


def test_access_key_policy_must_be_a_json_object(tmp_path):
    async def body(services: FakeServices) -> None:
        for bad in ("[1]", "{not json"):
            with pytest.raises(ArgumentsBad):
                await op(kms.access_key_create, kms.AccessKeyCreateArgs, admin(services), name="p", policy=bad)
        with pytest.raises(ArgumentsBad):
            await op(kms.access_key_create, kms.AccessKeyCreateArgs, admin(services), name="bad name!")

    run(tmp_path, body)


def test_records_compare_and_swap_namespaces_and_listing(tmp_path):
    async def body(services: FakeServices) -> None:
        me, other = user(services), user(services, "alice")
        commit = lambda call, *changes: op(kms.record_commit, kms.RecordCommitArgs, call,  # noqa: E731
                                           changes=list(changes))
        assert (await commit(me, {"key": "keys/a", "expect": 0, "value": {"n": 1}}))["ok"]
        got = await op(kms.record_get, kms.RecordGetArgs, me, key="keys/a")
        assert got["value"] == {"n": 1} and got["revision"] > 0
        # Stale revision: nothing written, the conflicting key named.
        stale = await commit(me, {"key": "keys/b", "expect": 0, "value": {}},
                             {"key": "keys/a", "expect": got["revision"] + 100, "value": {"n": 2}})
        assert stale == {"ok": False, "conflict": "keys/a"}
        assert (await op(kms.record_get, kms.RecordGetArgs, me, key="keys/b"))["value"] is None
        assert (await commit(me, {"key": "keys/a", "expect": got["revision"], "value": {"n": 2}}))["ok"]
        assert (await commit(me, {"key": "keys/a", "expect": 0, "value": {}}))["ok"] is False
        # Another user sees its own namespace only.
        assert (await op(kms.record_get, kms.RecordGetArgs, other, key="keys/a"))["value"] is None
        for name in "cdefg":
            assert (await commit(me, {"key": f"keys/{name}", "expect": 0, "value": {"n": name}}))["ok"]
        first = await op(kms.record_list, kms.RecordListArgs, me, prefix="keys/", limit=3)
        assert [r["key"] for r in first["records"]] == ["keys/a", "keys/c", "keys/d"] and first["more"]
        rest = await op(kms.record_list, kms.RecordListArgs, me, prefix="keys/", start_after="keys/d", limit=10)
        assert [r["key"] for r in rest["records"]] == ["keys/e", "keys/f", "keys/g"] and not rest["more"]
        current = (await op(kms.record_get, kms.RecordGetArgs, me, key="keys/c"))["revision"]
        assert (await commit(me, {"key": "keys/c", "expect": current, "delete": True}))["ok"]
        for bad in ({"key": "../x", "expect": 0, "value": {}}, {"key": "k", "expect": -1, "value": {}},
                    {"key": "k", "expect": 0, "value": {"big": "x" * (kms.MAX_VALUE_BYTES + 1)}},
                    {"key": "k", "expect": 0, "delete": True}):
            with pytest.raises(ArgumentsBad):
                await commit(me, bad)
        with pytest.raises(ArgumentsBad):
            await commit(me, {"key": "k", "expect": 0, "value": {}}, {"key": "k", "expect": 0, "value": {}})

    run(tmp_path, body)


def _today(offset_days: int = 0) -> str:
    import datetime as dt

    return (dt.datetime.now(dt.UTC) + dt.timedelta(days=offset_days)).strftime("%Y%m%d")


def test_sigv4_signing_key_role_binding_date_and_audit(tmp_path, monkeypatch):
    failures = kms.FailureAudit()
    monkeypatch.setattr(kms, "FAILURES", failures)

    async def body(services: FakeServices) -> None:
        created = await op(kms.access_key_create, kms.AccessKeyCreateArgs, admin(services), name="ci",
                           policy='{"Version": "2012-10-17", "Statement": []}')
        key_id, secret = created["access_key_id"], created["secret_access_key"]
        args = dict(access_key_id=key_id, date=_today(), region="us-east-1", service="kms")
        issued = await op(kms.sigv4_signing_key_op, kms.SigV4SigningKeyArgs, user(services), **args)
        # kSigning of SigV4: the same derivation as the client's, never the secret itself.
        from strongroom.kms import sigv4

        assert issued["signing_key"] == sigv4.signing_key(secret, args["date"], "us-east-1", "kms")
        assert len(issued["signing_key"]) == 32 and secret not in str(issued)
        assert (issued["name"], issued["policy"]) == ("ci", created["policy"])
        # A signature made with the secret verifies with the derived key (what the gateway does).
        to_sign = f"AWS4-HMAC-SHA256\n{args['date']}T120000Z\n{args['date']}/us-east-1/kms/aws4_request\n" + "cd" * 32
        prepared = sigv4.Prepared(key_id, args["date"], "us-east-1", "kms", to_sign,
                                  kms.sigv4_signature(secret, args["date"], "us-east-1", "kms", to_sign))
        assert sigv4.matches(issued["signing_key"], prepared)
        assert not sigv4.matches(issued["signing_key"],
                                 sigv4.Prepared(key_id, args["date"], "us-east-1", "kms", to_sign, "0" * 64))

        # Yesterday and tomorrow are issued; two days away is not.
        for offset in (-1, 1):
            await op(kms.sigv4_signing_key_op, kms.SigV4SigningKeyArgs, user(services),
                     **dict(args, date=_today(offset)))
        for date in (_today(-2), _today(2), "20260230", "2026-11-28"):
            with pytest.raises(ArgumentsBad):
                await op(kms.sigv4_signing_key_op, kms.SigV4SigningKeyArgs, user(services), **dict(args, date=date))
        # Only the service user the key is bound to; unknown ids look the same.
        for call, other in ((user(services, "alice"), key_id), (user(services), "AKIA" + "Z" * 16),
                            (user(services), "not-an-id")):
            with pytest.raises(HsmError) as caught:
                await op(kms.sigv4_signing_key_op, kms.SigV4SigningKeyArgs, call, **dict(args, access_key_id=other))
            assert caught.value.code == CKR.KEY_HANDLE_INVALID
        # Issuance is audited once per access key and day, not per request.
        for _ in range(3):
            await op(kms.sigv4_signing_key_op, kms.SigV4SigningKeyArgs, user(services), **args)
        issued_events = [d for e, outcome, d in services.audited if e == "kms.sigv4.signing_key" and outcome == "ok"]
        assert sorted(d["date"] for d in issued_events) == sorted([_today(), _today(-1), _today(1)])
        # Refusals are audited aggregated: the first of each group (service user, outcome, source, access key
        # or "unknown") at once, the rest counted into one record when the interval ends.
        refused = [(outcome, d) for e, outcome, d in services.audited
                   if e == "kms.sigv4.signing_key" and outcome not in ("ok", "intent")]
        assert sorted(o for o, _ in refused) == ["CKR_ARGUMENTS_BAD", "CKR_KEY_HANDLE_INVALID",
                                                  "CKR_KEY_HANDLE_INVALID"]
        assert all(d["count"] == 1 and d["source"] == "unknown" for _, d in refused)
        before = len(services.audited)
        await failures.close_all(services)
        summaries = {o: d for e, o, d in services.audited[before:]}
        assert summaries["CKR_ARGUMENTS_BAD"]["count"] == 3 and summaries["CKR_ARGUMENTS_BAD"]["aggregated"]
        assert summaries["CKR_KEY_HANDLE_INVALID"]["count"] == 1
        assert summaries["CKR_KEY_HANDLE_INVALID"]["sample_access_key_ids"] == ["not-an-id"]
        # Deleting the access key ends issuance (and removes its issuance marker).
        await op(kms.access_key_delete, kms.AccessKeyDeleteArgs, admin(services), access_key_id=key_id)
        assert await services.barrier.get(kms.SIGNING_KEY_ISSUED_PREFIX + key_id) is None
        with pytest.raises(HsmError) as caught:
            await op(kms.sigv4_signing_key_op, kms.SigV4SigningKeyArgs, user(services), **args)
        assert caught.value.code == CKR.KEY_HANDLE_INVALID

    run(tmp_path, body)


def test_sigv4_signing_key_is_for_crypto_users_only():
    from strongroom.dispatch.table import OPERATIONS

    spec = OPERATIONS["kms.sigv4.signing_key"]
    assert spec.roles == frozenset(kms.CRYPTO_USER) == OPERATIONS["kms.sigv4.verify"].roles


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def test_refused_sigv4_requests_are_audited_once_per_group_and_interval(tmp_path, monkeypatch):
    """A flood of bad requests: two audit records per (service user, outcome, source, key) and interval."""
    clock = Clock()
    failures = kms.FailureAudit(interval=60, max_groups=3, clock=clock)
    monkeypatch.setattr(kms, "FAILURES", failures)

    async def body(services: FakeServices) -> None:
        created = await op(kms.access_key_create, kms.AccessKeyCreateArgs, admin(services), name="ci")
        key_id = created["access_key_id"]
        to_sign = f"AWS4-HMAC-SHA256\n{_today()}T120000Z\n{_today()}/us-east-1/kms/aws4_request\n" + "cd" * 32
        bad = {"date": _today(), "region": "us-east-1", "service": "kms", "string_to_sign": to_sign,
               "signature": "0" * 64}
        start = len(services.audited)

        async def refuse(access_key_id: str, source: str) -> None:
            with pytest.raises(HsmError):
                await op(kms.sigv4_verify, kms.SigV4VerifyArgs, user(services), access_key_id=access_key_id,
                         source=source, **bad)

        for i in range(50):  # a bad signature for a real key, and 50 unknown ids, from one address
            await refuse(key_id, "203.0.113.7")
            await refuse(f"AKIA{i:016d}", "203.0.113.7")
        written = services.audited[start:]
        assert [(e, o, d["access_key_id"], d["count"]) for e, o, d in written] == [
            ("kms.sigv4.verify", "CKR_SIGNATURE_INVALID", key_id, 1),
            ("kms.sigv4.verify", "CKR_KEY_HANDLE_INVALID", "AKIA" + "0" * 16, 1)]
        assert all(d["source"] == "203.0.113.7" for _, _, d in written)
        clock.now += 30
        await refuse(key_id, "198.51.100.1")  # another address: its own group
        assert len(services.audited) == start + 3
        # The interval ends (the timer, or the next refusal after it): one record with the count each.
        clock.now += 31
        before = len(services.audited)
        await refuse(key_id, "203.0.113.7")
        closed = services.audited[before:]
        assert [(o, d["count"], d.get("aggregated")) for _, o, d in closed] == [
            ("CKR_SIGNATURE_INVALID", 49, True), ("CKR_SIGNATURE_INVALID", 1, None)]  # summary, then a new group
        await failures.close_all(services)
        summary = next(d for _, o, d in services.audited if o == "CKR_KEY_HANDLE_INVALID" and d.get("aggregated"))
        assert summary["count"] == 49 and summary["access_key_id"] == "unknown"
        assert summary["sample_access_key_ids"] == [f"AKIA{i:016d}" for i in range(1, 6)]
        assert summary["first"].endswith("Z") and summary["interval_seconds"] == 60
        # Bounded: beyond max_groups, refusals share one catch-all group per outcome.
        before = len(services.audited)
        for n in range(6):
            await refuse(key_id, f"192.0.2.{n}")
        groups = [d["source"] for _, _, d in services.audited[before:]]
        assert groups == ["192.0.2.0", "192.0.2.1", "192.0.2.2", "*"] and len(failures) == 4
        # A source the gateway did not send, or not printable: "unknown".
        await refuse(key_id, "\x00bad")
        assert len(failures) == 4

    run(tmp_path, body)


def test_the_timer_writes_the_aggregated_record(tmp_path, monkeypatch):
    failures = kms.FailureAudit(interval=0.05)
    monkeypatch.setattr(kms, "FAILURES", failures)

    async def body(services: FakeServices) -> None:
        for _ in range(5):
            with pytest.raises(HsmError):
                await op(kms.sigv4_signing_key_op, kms.SigV4SigningKeyArgs, user(services),
                         access_key_id="AKIA" + "Q" * 16, date=_today(), region="us-east-1", service="kms",
                         source="127.0.0.1")
        assert len(services.audited) == 1
        await asyncio.sleep(0.2)
        assert [d["count"] for _, _, d in services.audited] == [1, 4] and len(failures) == 0

    run(tmp_path, body)


def test_a_deeply_nested_access_key_policy_is_refused_not_a_fault(tmp_path):
    async def body(services: FakeServices) -> None:
        with pytest.raises(ArgumentsBad):
            await op(kms.access_key_create, kms.AccessKeyCreateArgs, admin(services), name="deep",
                     policy="[" * 2000 + "]" * 2000)

    run(tmp_path, body)
