"""The token's mechanisms come from the nodes, asked without a login (applications list them before
C_Login); kept per node connection."""

from __future__ import annotations

from pathlib import Path

import pytest

from strongroom.agent.attrcodec import Layout
from strongroom.agent.nodes import NodePool
from strongroom.agent.returns import AgentError
from strongroom.agent.runtime import Agent
from strongroom.agent.state import App
from strongroom.errors import CKR
from tests.unit.agent.fake_node import MECHANISMS, FakeNode, run


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


def test_with_no_list_from_any_node_the_answer_says_why(certs: dict[str, Path]) -> None:
    async def scenario(node: FakeNode, pool: NodePool) -> None:
        node.mechanisms_need_login = True  # this node never gives its list
        agent = Agent(pool.config, pool)
        with pytest.raises(AgentError) as refused:
            await agent.mechanism_list(None)
        assert refused.value.code == CKR.DEVICE_REMOVED
        assert pool.links[0].mechanisms is None
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
