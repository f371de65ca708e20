"""The token's mechanisms come from the nodes: asked without a login first (applications list them
before C_Login), else under an application's login; kept per node connection."""

from __future__ import annotations

from pathlib import Path

from strongroom.agent.attrcodec import Layout
from strongroom.agent.nodes import NodePool
from strongroom.agent.runtime import Agent
from strongroom.agent.state import App
from tests.unit.agent.fake_node import MECHANISMS, FakeNode, identity, run

CKM_AES_GCM = 0x1087


def an_app(app_id: bytes = b"A" * 16) -> App:
    return App(app_id, 4242, 1000, Layout(8, True))


def test_mechanisms_come_from_the_node_without_a_login(certs: dict[str, Path]) -> None:
    async def scenario(node: FakeNode, pool: NodePool) -> None:
        node.mechanisms_need_login = False
        agent = Agent(pool.config, pool)
        assert await agent.mechanism_list(None) == MECHANISMS
        assert await agent.mechanism_list(None) == MECHANISMS
        assert node.calls.count("mechanism.list") == 1  # kept on the link
        assert node.logins == 0
        link = pool.links[0]
        link.drop("test")  # a new connection: perhaps a node restarted with other software
        assert await agent.mechanism_list(None) == MECHANISMS
        assert node.calls.count("mechanism.list") == 2 and link.epoch == 2

    run(scenario, certs)


def test_a_node_that_wants_a_login_is_asked_with_an_applications_login(certs: dict[str, Path]) -> None:
    async def scenario(node: FakeNode, pool: NodePool) -> None:
        agent = Agent(pool.config, pool)
        idle, logged_in = an_app(b"I" * 16), an_app(b"L" * 16)
        logged_in.logins = identity()
        agent.apps = {idle.app_id: idle, logged_in.app_id: logged_in}
        assert await agent.mechanism_list(idle) == MECHANISMS  # the caller has no login: another app's serves
        assert node.calls.count("mechanism.list") == 2 and node.logins == 1  # refused without, then with

    run(scenario, certs)


def test_without_any_login_this_hosts_software_answers_and_is_not_kept(certs: dict[str, Path]) -> None:
    async def scenario(node: FakeNode, pool: NodePool) -> None:
        agent = Agent(pool.config, pool)
        listing = await agent.mechanism_list(None)
        assert CKM_AES_GCM in {m["mechanism"] for m in listing}
        assert 0x80001234 not in {m["mechanism"] for m in listing}
        assert pool.links[0].mechanisms is None  # the first answer of a node replaces it
        node.mechanisms_need_login = False
        assert await agent.mechanism_list(None) == MECHANISMS

    run(scenario, certs)


def test_when_no_node_answers_the_last_list_a_node_gave_serves(certs: dict[str, Path]) -> None:
    async def scenario(node: FakeNode, pool: NodePool) -> None:
        node.mechanisms_need_login = False
        agent = Agent(pool.config, pool)
        assert await agent.mechanism_list(None) == MECHANISMS
        await node.stop()
        pool.links[0].conn = None  # gone, without the reconnect that would forget the list
        assert await agent.mechanism_list(None) == MECHANISMS
        await node.start()

    run(scenario, certs)
