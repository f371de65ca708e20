"""What only the etcd backend does: several members, failures, namespaces, paging, TLS and auth.

The shared behaviour is in test_store_conformance.py (run against etcd by
conftest.py). These tests start their own real etcd clusters on loopback
(tests/etcd_cluster.py) and skip when etcd is not installed. Error mapping that
a real etcd cannot be made to show on demand is checked against a small fake
gateway on loopback that answers as etcd does.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from strongroom.store.base import (
    CompactedError,
    ConflictError,
    OutcomeUnknownError,
    Put,
    StoreError,
    UnavailableError,
    WatchEvent,
)
from strongroom.store.etcd import EtcdStore, _bytes_prefix_end
from tests.etcd_cluster import EtcdCluster, free_port, require_etcd, write_test_pki

pytestmark = pytest.mark.timeout(60)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.fixture
def cluster3(tmp_path: Path) -> Iterator[EtcdCluster]:
    require_etcd()
    with EtcdCluster(tmp_path / "etcd", size=3) as cluster:
        yield cluster


@pytest.fixture
def cluster1(tmp_path: Path) -> Iterator[EtcdCluster]:
    require_etcd()
    with EtcdCluster(tmp_path / "etcd", size=1) as cluster:
        yield cluster


async def first_events(watch: Any, count: int, timeout: float = 5.0) -> list[WatchEvent]:
    events: list[WatchEvent] = []
    async with asyncio.timeout(timeout):
        async for event in watch:
            events.append(event)
            if len(events) == count:
                break
    return events


@contextlib.asynccontextmanager
async def opened(*args: Any, **kw: Any) -> Any:
    store = EtcdStore(*args, **kw)
    try:
        yield store
    finally:
        await store.close()


# ---------------------------------------------------------------------------
# A real three-member cluster
# ---------------------------------------------------------------------------


def test_a_write_through_one_member_is_seen_through_the_others(cluster3: EtcdCluster) -> None:
    a, b, c = cluster3.endpoints

    async def scenario() -> None:
        async with opened([a]) as via_a, opened([b]) as via_b, opened([c]) as via_c:
            start = await via_c.revision() + 1
            watch = via_c.watch("k/", start)
            watching = asyncio.create_task(first_events(watch, 1))
            await asyncio.sleep(0.05)
            revision = await via_a.put("k/1", b"from a")
            record = await via_b.get("k/1")  # linearizable: no waiting for replication
            assert record is not None and (record.value, record.mod_revision) == (b"from a", revision)
            (event,) = await watching
            assert (event.revision, event.record.key, event.record.value) == (revision, "k/1", b"from a")
            await watch.aclose()
            with pytest.raises(ConflictError):
                await via_b.put("k/1", b"stale", expect=revision - 1)
            assert await via_c.put("k/1", b"from c", expect=revision) == revision + 1

    asyncio.run(scenario())


def test_losing_members_one_then_two_then_getting_one_back(cluster3: EtcdCluster) -> None:
    leader = cluster3.leader_index()
    order = [leader] + [i for i in range(3) if i != leader]

    async def scenario() -> None:
        endpoints = [cluster3.endpoints[i] for i in order]  # start on the leader, which dies first
        async with opened(endpoints, timeout=1.0) as store:
            await store.put("k", b"0")

            # One member (the leader) gone: writes go on through the others after the election.
            cluster3.kill(order[0])
            started = time.monotonic()
            revision = await write_until_accepted(store, "k", b"1", within=10.0)
            failover = time.monotonic() - started
            assert failover < 5.0
            record = await store.get("k")
            assert record is not None and (record.value, record.mod_revision) == (b"1", revision)

            # Two gone: quorum lost. A write already in flight may hang until its timeout.
            cluster3.kill(order[1])
            with contextlib.suppress(OutcomeUnknownError, UnavailableError):
                await store.put("k", b"in flight")
            cluster3.wait_leaderless(order[2])
            for attempt in (lambda: store.put("k", b"2"), lambda: store.get("k"), store.revision):
                started = time.monotonic()
                with pytest.raises(UnavailableError, match="quorum"):
                    await attempt()
                # The store waits election_wait (2.5 s) for a leader, then fails, instead of etcd's 7 s+.
                # A generous bound: this asserts "fails rather than hangs", not a speed.
                assert time.monotonic() - started < 10.0

            # One member back: quorum again, and writes work.
            cluster3.restart(order[1])
            revision = await write_until_accepted(store, "k", b"3", within=10.0)
            record = await store.get("k")
            assert record is not None and (record.value, record.mod_revision) == (b"3", revision)

    asyncio.run(scenario())


async def write_until_accepted(store: EtcdStore, key: str, value: bytes, within: float) -> int:
    """Retry an unconditional put until it lands (what a caller does across a leader election)."""
    deadline = time.monotonic() + within
    while True:
        try:
            return await store.put(key, value)
        except (UnavailableError, OutcomeUnknownError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)


def test_a_watch_moves_to_another_member_without_gaps(cluster3: EtcdCluster) -> None:
    a, b, c = cluster3.endpoints

    async def scenario() -> None:
        async with opened([c, a, b]) as watcher, opened([a, b]) as writer:
            first = await writer.put("w/1", b"1")
            watch = watcher.watch("w/", first)
            try:
                (event,) = await first_events(watch, 1)
                assert event.revision == first
                cluster3.kill(2)  # the member the watch streams from
                second = await write_until_accepted(writer, "w/2", b"2", within=10.0)
                await writer.delete("w/1")
                events = await first_events(watch, 2, timeout=10.0)
                assert [(e.revision, e.deleted, e.record.key) for e in events] == [
                    (second, False, "w/2"),
                    (second + 1, True, "w/1"),
                ]
            finally:
                await watch.aclose()

    asyncio.run(scenario())


# ---------------------------------------------------------------------------
# Namespaces, revisions, compaction and paging on one member
# ---------------------------------------------------------------------------


def test_namespaces_are_isolated_and_keys_are_prefixed_in_etcd(cluster1: EtcdCluster) -> None:
    (endpoint,) = cluster1.endpoints

    async def scenario() -> None:
        async with opened([endpoint], namespace="/one/") as one, opened([endpoint], namespace="/two/") as two:
            await one.put("k", b"1")
            await two.put("k", b"2")
            await two.put("other", b"x")
            assert [r.key for r in (await one.list_prefix("")).records] == ["k"]
            record = await one.get("k")
            assert record is not None and record.value == b"1"
            await one.delete("k")
            assert (await two.get("k")) is not None
            events = await first_events(one.watch("", 1), 2)
            assert [(e.record.key, e.deleted) for e in events] == [("k", False), ("k", True)]

    asyncio.run(scenario())
    raw = cluster1.request(cluster1.member(0), "/v3/kv/range", {"key": b64(b"/two/k")})
    assert base64.b64decode(raw["kvs"][0]["value"]) == b"2"


def test_revisions_are_etcds_own_by_default(cluster1: EtcdCluster) -> None:
    async def scenario() -> None:
        async with opened(cluster1.endpoints) as store:
            assert await store.revision() == 1  # a never-written etcd
            assert await store.put("k", b"v") == 2
            record = await store.get("k")
            assert record is not None and record.create_revision == record.mod_revision == 2

    asyncio.run(scenario())


def test_compaction_by_etcd_then_watch_from_an_old_revision(cluster1: EtcdCluster) -> None:
    async def scenario() -> None:
        async with opened(cluster1.endpoints) as store:
            for i in range(6):
                await store.put(f"w/{i}", b"")  # etcd revisions 2..7
            # Compaction as an operator or etcd's auto-compaction would do it.
            cluster1.request(cluster1.member(0), "/v3/kv/compaction", {"revision": 5, "physical": True})
            with pytest.raises(CompactedError) as caught:
                await first_events(store.watch("w/", 3), 1)
            assert (caught.value.requested, caught.value.compacted) == (3, 4)
            assert [e.revision for e in await first_events(store.watch("w/", 5), 3)] == [5, 6, 7]
            listing = await store.list_prefix("w/")  # keys survive compaction
            assert len(listing.records) == 6 and listing.revision == 7

    asyncio.run(scenario())


def test_list_prefix_pages_at_one_revision(cluster1: EtcdCluster, monkeypatch: pytest.MonkeyPatch) -> None:
    async def scenario() -> None:
        async with opened(cluster1.endpoints, page_size=3) as store, opened(cluster1.endpoints) as other:
            await store.commit([Put(f"p/{i:02}", b"%d" % i) for i in range(10)])
            snapshot = await store.revision()
            pages: list[dict[str, Any]] = []
            real_request = store._request

            async def spying(path: str, body: dict[str, Any], *, write: bool) -> dict[str, Any]:
                answer = await real_request(path, body, write=write)
                if path == "/v3/kv/range" and "range_end" in body:
                    pages.append(body)
                    if len(pages) == 1:  # a writer slips in between pages
                        await other.put("p/00", b"changed")
                        await other.put("p/99", b"new")
                return answer

            monkeypatch.setattr(store, "_request", spying)
            listing = await store.list_prefix("p/")
            assert listing.revision == snapshot
            assert [r.key for r in listing.records] == [f"p/{i:02}" for i in range(10)]
            assert listing.records[0].value == b"0"
            assert len(pages) == 4 and all(p.get("revision") == snapshot for p in pages[1:])

    asyncio.run(scenario())


def test_bytes_prefix_end() -> None:
    assert _bytes_prefix_end(b"a/") == b"a0"
    assert _bytes_prefix_end(b"z\xf4\x8f\xbf\xbf") == b"z\xf4\x8f\xbf\xc0"
    assert _bytes_prefix_end(b"a\xff\xff") == b"b"
    assert _bytes_prefix_end(b"\xff") == b"\0"


def test_closing_the_store_ends_a_running_watch(cluster1: EtcdCluster) -> None:
    async def scenario() -> None:
        store = EtcdStore(cluster1.endpoints)
        watching = asyncio.create_task(first_events(store.watch("", 1), 10, timeout=30))
        await asyncio.sleep(0.1)
        await store.close()
        async with asyncio.timeout(2):
            with pytest.raises(StoreError, match="closed"):
                await watching

    asyncio.run(scenario())


# ---------------------------------------------------------------------------
# Endpoint failover and error mapping
# ---------------------------------------------------------------------------


def test_watch_messages_larger_than_a_line_buffer_arrive_whole(cluster1: EtcdCluster) -> None:
    """A revision's watch message comes in many reads: one of ~1.3 MiB (a 1 MiB record in base64 and JSON),
    then small ones, each delivered once and whole (aiohttp's own readline refuses lines over 128 KiB)."""
    big = bytes(range(256)) * 4096

    async def scenario() -> None:
        async with opened(cluster1.endpoints) as store:
            first = await store.put("big/1", big)
            await store.put("big/2", b"small")
            await store.commit([Put("big/3", big[:300_000]), Put("big/4", b"x")])
            events = await first_events(store.watch("big/", first), 4)
            assert [(e.record.key, e.record.value) for e in events] == [
                ("big/1", big), ("big/2", b"small"), ("big/3", big[:300_000]), ("big/4", b"x")
            ]

    asyncio.run(scenario())


def test_a_refusing_endpoint_is_skipped(cluster1: EtcdCluster) -> None:
    dead = f"http://127.0.0.1:{free_port()}"

    async def scenario() -> None:
        async with opened([dead, *cluster1.endpoints]) as store:
            assert await store.put("k", b"v") == 2
            assert store._current == 1  # sticks with the endpoint that answered

    asyncio.run(scenario())


def test_no_endpoint_answering_is_unavailable() -> None:
    dead = [f"http://127.0.0.1:{free_port()}" for _ in range(3)]

    async def scenario() -> None:
        async with opened(dead) as store:
            for attempt in (lambda: store.put("k", b"v"), lambda: store.get("k"), lambda: store.list_prefix("")):
                started = time.monotonic()
                with pytest.raises(UnavailableError, match="quorum") as caught:
                    await attempt()
                assert time.monotonic() - started < 1.0
                assert all(url in str(caught.value) for url in dead)
            with pytest.raises(UnavailableError):
                await first_events(store.watch("", 1), 1)

    asyncio.run(scenario())


Handler = Callable[[str, dict[str, Any]], Awaitable[tuple[int, dict[str, Any]] | str]]


class FakeGateway:
    """A loopback HTTP/1.1 server answering like etcd's gateway, as ``handler`` decides.

    ``handler(path, body)`` returns ``(status, json)``, ``"hang"`` (never answer)
    or ``"drop"`` (close the connection after reading the request).
    """

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.requests: list[tuple[str, dict[str, Any], dict[str, str]]] = []
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> str:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    async def __aexit__(self, *exc: object) -> None:
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode().split("\r\n")
                path = lines[0].split()[1]
                headers = {k.strip().lower(): v.strip() for k, v in (ln.split(":", 1) for ln in lines[1:] if ln)}
                body = json.loads(await reader.readexactly(int(headers.get("content-length", "0"))) or b"{}")
                self.requests.append((path, body, headers))
                outcome = await self.handler(path, body)
                if outcome == "hang":
                    await asyncio.sleep(3600)
                if outcome == "drop" or isinstance(outcome, str):
                    return
                status, answer = outcome
                data = json.dumps(answer).encode()
                writer.write(
                    f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {len(data)}\r\n\r\n".encode()
                    + data
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self._tasks.discard(task)
            writer.close()


def answer_with(status: int, answer: dict[str, Any]) -> Handler:
    async def handler(path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        return status, answer

    return handler


def grpc_error(code: int, message: str) -> dict[str, Any]:
    return {"error": message, "message": message, "code": code}


def run_against(handler: Handler, scenario: Callable[[EtcdStore, FakeGateway], Awaitable[None]], **kw: Any) -> None:
    async def main() -> None:
        gateway = FakeGateway(handler)
        async with gateway as url:
            async with opened([url], **kw) as store:
                await scenario(store, gateway)

    asyncio.run(main())


def test_requests_ask_for_a_leader() -> None:
    async def scenario(store: EtcdStore, gateway: FakeGateway) -> None:
        await store.get("k")
        assert gateway.requests[0][2]["grpc-metadata-hasleader"] == "true"

    run_against(answer_with(200, {"header": {"revision": "7"}}), scenario)


@pytest.mark.parametrize("outcome", ["hang", "drop"])
def test_a_write_without_an_answer_has_an_unknown_outcome(outcome: str) -> None:
    async def handler(path: str, body: dict[str, Any]) -> str:
        return outcome

    async def scenario(store: EtcdStore, gateway: FakeGateway) -> None:
        started = time.monotonic()
        with pytest.raises(OutcomeUnknownError, match="may or may not"):
            await store.put("k", b"v")
        assert time.monotonic() - started < 2.0
        with pytest.raises(UnavailableError):
            await store.get("k")

    run_against(handler, scenario, timeout=0.3)


def test_closing_the_store_during_a_request_is_a_store_error() -> None:
    async def handler(path: str, body: dict[str, Any]) -> str:
        return "hang"

    async def scenario(store: EtcdStore, gateway: FakeGateway) -> None:
        for request in (store.put("k", b"v"), store.get("k")):
            pending = asyncio.create_task(request)
            await asyncio.sleep(0.1)
            await store.close()
            with pytest.raises(StoreError, match="closed"):
                await pending

    run_against(handler, scenario, timeout=5.0)


@pytest.mark.parametrize(
    "message",
    [
        "etcdserver: request timed out",
        "etcdserver: request timed out, possibly due to previous leader failure",
        "etcdserver: leader changed",
    ],
)
def test_etcd_timing_out_a_write_is_an_unknown_outcome(message: str) -> None:
    async def scenario(store: EtcdStore, gateway: FakeGateway) -> None:
        with pytest.raises(OutcomeUnknownError):
            await store.put("k", b"v")
        with pytest.raises(UnavailableError):
            await store.get("k")

    run_against(answer_with(503, grpc_error(14, message)), scenario)


def test_no_leader_anywhere_is_lost_quorum() -> None:
    async def scenario(store: EtcdStore, gateway: FakeGateway) -> None:
        with pytest.raises(UnavailableError, match="no leader.*quorum"):
            await store.put("k", b"v")

    run_against(answer_with(503, grpc_error(14, "etcdserver: no leader")), scenario)


def test_other_etcd_errors_are_store_errors() -> None:
    async def scenario(store: EtcdStore, gateway: FakeGateway) -> None:
        with pytest.raises(StoreError, match="permission denied") as caught:
            await store.put("k", b"v")
        assert not isinstance(caught.value, (UnavailableError, OutcomeUnknownError))
        with pytest.raises(StoreError, match="permission denied"):
            await store.get("k")

    run_against(answer_with(403, grpc_error(7, "etcdserver: permission denied")), scenario)


def test_an_answer_over_the_size_limit_is_refused_not_buffered(monkeypatch: pytest.MonkeyPatch) -> None:
    """A member answering more than MAX_ANSWER_BYTES: the read fails as that member's failure, a write's
    outcome is unknown (its answer never arrived whole); nothing is kept of the answer."""
    import strongroom.store.etcd as etcd_module

    monkeypatch.setattr(etcd_module, "MAX_ANSWER_BYTES", 4096)
    padding = {"header": {"revision": "7"}, "kvs": [{"key": b64(b"/strongroom/k"), "value": b64(b"v" * 8192)}]}

    async def scenario(store: EtcdStore, gateway: FakeGateway) -> None:
        with pytest.raises(UnavailableError, match="4096"):
            await store.get("k")
        with pytest.raises(OutcomeUnknownError, match="4096"):
            await store.put("k", b"v")

    run_against(answer_with(200, padding), scenario)


def test_a_failed_txn_names_the_first_conflicting_operation() -> None:
    """The JSON of a failed txn has no "succeeded"; the failure branch reads the compared keys."""

    async def handler(path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        current = {b64(b"/strongroom/a"): "5", b64(b"/strongroom/b"): "9"}
        responses = []
        for op in body["failure"]:
            key = op["request_range"]["key"]
            if key in current:
                kvs = [{"key": key, "mod_revision": current[key], "create_revision": "1", "version": "2"}]
                responses.append({"response_range": {"kvs": kvs, "count": "1"}})
            else:
                responses.append({"response_range": {}})  # the gateway leaves out empty fields
        return 200, {"header": {"revision": "9"}, "responses": responses}

    async def scenario(store: EtcdStore, gateway: FakeGateway) -> None:
        from strongroom.store.base import Check, Delete

        with pytest.raises(ConflictError) as caught:
            await store.commit([Check("a", 5), Put("new", b"", expect=0), Delete("b", expect=8), Put("c", b"")])
        assert caught.value.key == "b"
        txn = gateway.requests[-1][1]
        assert [c["target"] for c in txn["compare"]] == ["MOD", "CREATE", "MOD"]
        assert len(txn["success"]) == 3 and len(txn["failure"]) == 3

    run_against(handler, scenario)


# ---------------------------------------------------------------------------
# TLS and user/password authentication
# ---------------------------------------------------------------------------


def test_tls_with_client_certificates_and_password_auth(tmp_path: Path) -> None:
    require_etcd()
    pki = write_test_pki(tmp_path / "pki")
    with EtcdCluster(tmp_path / "etcd", size=1, tls=pki, extra_args=("--auth-token-ttl", "1")) as cluster:
        member = cluster.member(0)
        cluster.request(member, "/v3/auth/role/add", {"name": "root"})
        cluster.request(member, "/v3/auth/user/add", {"name": "root", "password": "s3cret"})
        cluster.request(member, "/v3/auth/user/grant", {"user": "root", "role": "root"})
        cluster.request(member, "/v3/auth/enable", {})
        tls = {"ca_file": str(pki.ca), "cert_file": str(pki.client_cert), "key_file": str(pki.client_key)}

        async def scenario() -> None:
            async with opened(cluster.endpoints, username="root", password="s3cret", **tls) as store:
                assert await store.put("k", b"v") == 2
                first_token = store._tokens[cluster.endpoints[0]]
                await asyncio.sleep(2.5)  # the simple token expires after 1 s of disuse
                assert await store.put("k", b"v2") == 3
                assert store._tokens[cluster.endpoints[0]] != first_token
                events = await first_events(store.watch("", 2), 2)
                assert [e.record.value for e in events] == [b"v", b"v2"]
            with pytest.raises(StoreError, match="credentials|authentication failed") as caught:
                await EtcdStore.open(cluster.endpoints, username="root", password="wrong", **tls)
            assert not isinstance(caught.value, UnavailableError)
            with pytest.raises(UnavailableError):  # no client certificate: the handshake fails
                await EtcdStore.open(cluster.endpoints, ca_file=str(pki.ca))

        asyncio.run(scenario())
