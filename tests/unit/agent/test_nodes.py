"""The agent's node layer against a scripted fake node: lazy logins, re-login after the node forgot
one, retries after a connection lost mid-call (idempotent calls only), state loss, no lockout
hammering with refused credentials, choosing the least loaded connection."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from strongroom.agent.nodes import NodeError, NodePool, NodeUnavailable, StateLost
from strongroom.errors import CKR
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
