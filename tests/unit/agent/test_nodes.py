"""The agent's node layer against a scripted fake node: lazy logins, re-login after the node forgot
one, retries after a connection lost mid-call (idempotent calls only), state loss, no lockout
hammering with refused credentials, choosing the least loaded connection, several links per
node placed on different worker processes."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from strongroom.agent import nodes
from strongroom.agent.nodes import LOGIN_COST, PLACEMENT_ATTEMPTS, NodeError, NodePool, NodeUnavailable, StateLost
from strongroom.agent.passthrough import Passthrough
from strongroom.errors import CKR
from strongroom.transport.protocol import FrameDecoder, decode_reply, encode_request
from tests.unit.agent.fake_node import FakeNode, identity, pool_for, run


def test_lazy_login_and_relogin_after_the_node_forgot(certs: dict[str, Path]) -> None:
    async def scenario(node: FakeNode, pool: NodePool) -> None:
        logins = identity()
        body, link, serial = await pool.call("x.read", {}, logins=logins, idempotent=True)
        assert body == {"op": "x.read"} and node.logins == 1
        await pool.call("x.read", {}, logins=logins)
        assert node.logins == 1  # the login is reused
        node.forget_logins()
        body, _link, new_serial = await pool.call("x.write", {}, logins=logins)  # refused before doing anything
        assert body == {"op": "x.write"} and node.logins == 2 and new_serial != serial
        assert node.calls[-4:] == ["x.write", "session.info", "session.login", "x.write"]

    run(scenario, certs)


def test_connection_lost_mid_call(certs: dict[str, Path]) -> None:
    async def scenario(node: FakeNode, pool: NodePool) -> None:
        logins = identity()
        await pool.call("x.read", {}, logins=logins)
        link = pool.links[0]
        assert link.epoch == 1
        node.drop_on.add("x.read")
        body, _link, _serial = await pool.call("x.read", {}, logins=logins, idempotent=True)
        assert body == {"op": "x.read"} and link.epoch == 2
        assert node.logins == 2  # a new connection needs a new login
        node.drop_on.add("x.write")
        with pytest.raises(NodeUnavailable):  # not idempotent: the outcome is unknown
            await pool.call("x.write", {}, logins=logins)
        assert node.calls.count("x.write") == 1

    run(scenario, certs)


def test_stateful_calls_report_state_loss(certs: dict[str, Path]) -> None:
    async def scenario(node: FakeNode, pool: NodePool) -> None:
        logins = identity()
        _body, link, serial = await pool.call("p11session.open", {}, logins=logins)
        await pool.call("x.step", {}, logins=logins, link=link, stateful=True, serial=serial)
        node.forget_logins()
        with pytest.raises(StateLost):  # the node forgot the login, and the node session with it
            await pool.call("x.step", {}, logins=logins, link=link, stateful=True, serial=serial)
        _body, link, serial = await pool.call("p11session.open", {}, logins=logins)
        with pytest.raises(StateLost):  # the login lives, the node session does not
            await pool.call("p11.gone", {}, logins=logins, link=link, stateful=True, serial=serial)
        node.drop_on.add("x.step")
        with pytest.raises(StateLost):
            await pool.call("x.step", {}, logins=logins, link=link, stateful=True, serial=serial)
        await link.connect()
        with pytest.raises(StateLost):  # a new connection: the old login's serial is stale
            await pool.call("x.step", {}, logins=logins, link=link, stateful=True, serial=serial)

    run(scenario, certs)


def test_refused_credentials_are_tried_once(certs: dict[str, Path]) -> None:
    async def scenario(node: FakeNode, pool: NodePool) -> None:
        logins = identity()
        await pool.call("x.read", {}, logins=logins)
        node.password = "changed-elsewhere"
        node.forget_logins()
        for _ in range(3):
            with pytest.raises(NodeError) as info:
                await pool.call("x.read", {}, logins=logins, idempotent=True)
            assert info.value.code == CKR.USER_NOT_LOGGED_IN
        assert node.logins == 2  # one refused attempt, then none: the account is not locked by us
        assert logins.closed

    run(scenario, certs)


def test_no_node_reachable(certs: dict[str, Path]) -> None:
    async def scenario(node: FakeNode, pool: NodePool) -> None:
        await node.stop()
        pool.links[0].drop("test")
        with pytest.raises(NodeUnavailable):
            await pool.call("x.read", {}, logins=identity(), idempotent=True)
        await node.start()  # same port: the node is back
        body, _link, _serial = await pool.call("x.read", {}, logins=identity(), idempotent=True)
        assert body == {"op": "x.read"}

    run(scenario, certs)


def test_least_loaded_link_is_chosen(certs: dict[str, Path]) -> None:
    async def main() -> None:
        nodes = [FakeNode(certs), FakeNode(certs)]
        for node in nodes:
            await node.start()
        pool = pool_for(certs, *(n.port for n in nodes))
        await pool.start()
        try:
            first, second = pool.links
            first.in_flight = 5
            assert await pool.acquire() is second
            second.in_flight = 9
            assert await pool.acquire() is first
            assert await pool.acquire(preferred=second) is second
            first.healthy = False  # unhealthy links are used only when nothing else is up
            assert await pool.acquire() is second
            first.in_flight = second.in_flight = 0
        finally:
            await pool.close()
            for node in nodes:
                await node.stop()

    asyncio.run(main())


def test_logging_out_wipes_the_held_password() -> None:
    logins = identity("secret-pw")
    held = logins.identity.password
    assert bytes(held) == b"secret-pw"
    logins.clear()
    assert held == bytearray(len(b"secret-pw")) and not logins.identity.password  # zeroed in place, then dropped
def run_links(scenario: Callable[[FakeNode, NodePool], Any], certs: dict[str, Path], placement: list[int],
              links: int = 2) -> None:
    async def main() -> None:
        node = FakeNode(certs)
        node.placement = list(placement)
        await node.start()
        pool = pool_for(certs, node.port, links=links)
        await pool.start()
        try:
            await scenario(node, pool)
        finally:
            await pool.close()
            await node.stop()

    asyncio.run(main())


def test_links_of_a_node_are_placed_on_different_workers(certs: dict[str, Path]) -> None:
    async def scenario(node: FakeNode, pool: NodePool) -> None:
        first, second = pool.links
        assert (first.key, second.key) == ("node1", "node1#2") and first.name == second.name == "node1"
        # The second link landed twice on the first one's worker and was opened again each time.
        assert {first.worker, second.worker} == {7, 8} and node.connections == 4
        assert first.epoch == second.epoch == 1
        assert pool.link("node1#2") is second and pool.node_links("node1") == [first, second]

        # A reconnection is placed again, away from the sibling's worker.
        node.placement = [first.worker, first.worker, second.worker]  # type: ignore[list-item]
        old = second.worker
        second.drop("test")
        assert await second.connect(force=True)
        assert second.worker == old and second.epoch == 2 and first.worker != old

    run_links(scenario, certs, placement=[7, 7, 7, 8])


def test_more_links_than_workers_share_after_a_few_attempts(certs: dict[str, Path]) -> None:
    async def scenario(node: FakeNode, pool: NodePool) -> None:
        assert [link.worker for link in pool.links] == [1, 1]
        assert node.connections == 1 + PLACEMENT_ATTEMPTS  # bounded, then it shares the worker
        second = pool.links[1]
        second.drop("test")
        assert await second.connect(force=True)
        assert node.connections == 2 + PLACEMENT_ATTEMPTS  # no search again beside the same workers
        body, _link, _serial = await pool.call("x.read", {}, logins=identity(), idempotent=True)
        assert body == {"op": "x.read"}

    run_links(scenario, certs, placement=[])


def test_each_link_logs_in_on_its_own_and_logout_ends_every_login(certs: dict[str, Path]) -> None:
    async def scenario(node: FakeNode, pool: NodePool) -> None:
        first, second = pool.links
        logins = identity()
        await pool.call("x.read", {}, logins=logins, link=first, pinned=True)
        await pool.call("x.read", {}, logins=logins, link=second, pinned=True)
        assert node.logins == 2
        assert {key for key, _token in logins.live()} == {"node1", "node1#2"}
        assert logins.current(first) != logins.current(second)
        # The node forgot the second link's login only (its worker restarted its sessions).
        token = logins.current(second)
        assert token is not None
        node.tokens.discard(token[0])
        await pool.call("x.write", {}, logins=logins, link=second, pinned=True)
        assert node.logins == 3 and logins.current(first) == (await logins.token(first))

    run_links(scenario, certs, placement=[1, 2])


def test_least_loaded_counts_a_missing_login_and_ties_stay(certs: dict[str, Path]) -> None:
    async def scenario(node: FakeNode, pool: NodePool) -> None:
        first, second = pool.links
        logins = identity()
        await pool.call("x.read", {}, logins=logins, link=first, pinned=True)
        # The application is logged in on the first link only: a link without its login costs
        # LOGIN_COST requests more, so it stays on the first while that is not busy…
        assert all([await pool.acquire(logins=logins) is first for _ in range(4)])
        first.in_flight = LOGIN_COST
        assert all([await pool.acquire(logins=logins) is first for _ in range(4)])  # a tie stays
        first.in_flight = LOGIN_COST + 1
        assert await pool.acquire(logins=logins) is second  # busy enough to log in elsewhere
        first.in_flight = 0
        # Without a login to weigh (no application), the least loaded; a tie stays on the first.
        assert all([await pool.acquire() is first for _ in range(4)])
        first.in_flight = 1
        assert await pool.acquire() is second

    run_links(scenario, certs, placement=[1, 2])


def test_a_retry_after_a_lost_connection_uses_a_new_connection(certs: dict[str, Path]) -> None:
    """A node that dies takes all its connections, and the siblings may not have noticed yet:
    the retry of an idempotent call waits for a new connection rather than trying a sibling's."""
    async def scenario(node: FakeNode, pool: NodePool) -> None:
        logins = identity()
        first, second = pool.links
        _body, link, serial = await pool.call("p11session.open", {}, logins=logins, link=first, pinned=True)
        node.drop_on.add("x.read")
        body, used, _serial = await pool.call("x.read", {}, logins=logins, link=first, idempotent=True)
        assert body == {"op": "x.read"} and used is first and first.epoch == 2
        assert second.epoch == 1 and node.calls.count("x.read") == 2
        with pytest.raises(StateLost):  # state on the lost connection stays lost
            await pool.call("x.step", {}, logins=logins, link=link, stateful=True, serial=serial)

    run_links(scenario, certs, placement=[1, 2])


def test_after_a_forgotten_login_the_retry_stays_on_that_link(certs: dict[str, Path]) -> None:
    """Every login of the application idled out: the call logs in again where it was refused and
    is retried there, not on a sibling whose login is just as stale."""
    async def scenario(node: FakeNode, pool: NodePool) -> None:
        first, second = pool.links
        logins = identity()
        for link in (first, second):
            await pool.call("x.read", {}, logins=logins, link=link, pinned=True)
        for _ in range(3):
            node.forget_logins()
            body, _link, _serial = await pool.call("x.write", {}, logins=logins)
            assert body == {"op": "x.write"}
            assert node.calls[-4:] == ["x.write", "session.info", "session.login", "x.write"]

    run_links(scenario, certs, placement=[1, 2])


def test_a_slow_health_check_keeps_a_connection_that_answers(certs: dict[str, Path],
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """node.status late while other requests are answered (a node short of CPU): the connection stays, with the
    requests in flight on it. No answer at all: it is dropped (the next call reconnects)."""
    monkeypatch.setattr(nodes, "HEALTH_TIMEOUT", 0.3)  # the check then waits the fake pool's connect timeout, 2 s

    async def scenario(node: FakeNode, pool: NodePool) -> None:
        logins = identity()
        await pool.call("x.read", {}, logins=logins, idempotent=True)
        (link,) = pool.links
        conn = link.conn
        node.delays["node.status"] = 2.5

        async def busy() -> None:
            for _ in range(30):
                await pool.call("x.read", {}, logins=logins, idempotent=True)
                await asyncio.sleep(0.1)

        link.next_health = 0.0
        await asyncio.gather(pool._check(link, 0.0), busy())
        assert link.conn is conn and link.connected  # kept: it answered the other requests

        node.delays["*"] = 3.0  # now nothing is answered in time
        link.next_health = 0.0
        await pool._check(link, 0.0)
        assert link.conn is not conn and "did not answer node.status" in (link.last_error or "")

    run(scenario, certs)


class _ClientSocket:
    """What Passthrough writes its replies to: the SDK client's end, decoded."""

    def __init__(self) -> None:
        self.replies: list[tuple[int, int, Any]] = []
        self.transport = self

    def write(self, data: bytes) -> None:
        for payload in FrameDecoder().feed(data):
            reply = decode_reply(payload)
            self.replies.append((reply.request_id, reply.code, reply.body))

    def is_closing(self) -> bool:
        return False

    def get_write_buffer_size(self) -> int:
        return 0

    async def drain(self) -> None:
        return None


def test_sdk_requests_through_the_agent_leave_every_link_of_a_dead_node(certs: dict[str, Path]) -> None:
    """A node killed: the retry of an idempotent SDK request goes to another node, not to the dead node's other
    link, which has not noticed yet (links_per_node = 2; test_hsm_join failed on it one run in four)."""

    async def main() -> None:
        first, second = FakeNode(certs), FakeNode(certs)
        await first.start()
        await second.start()
        pool = pool_for(certs, first.port, second.port, links=2)
        await pool.start()
        try:
            await asyncio.gather(*(link.connect() for link in pool.links))
            assert all(link.connected for link in pool.links)
            client = _ClientSocket()
            relay = Passthrough(pool, client)  # type: ignore[arg-type]
            request = FrameDecoder().feed(encode_request(7, "node.status", None, {}))[0]
            await relay.submit(request)
            await relay.close()
            assert client.replies == [(7, 0, {"state": "active", "pid": 1})]
            first.dead = True
            relay = Passthrough(pool, client)  # type: ignore[arg-type]
            await relay.submit(request)
            await relay.close()
            assert client.replies[-1][1] == 0, client.replies[-1]  # answered by the other node
            assert second.calls.count("node.status") >= 1
        finally:
            await pool.close()
            await first.stop()
            await second.stop()

    asyncio.run(main())
