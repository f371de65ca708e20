"""The agent's node layer against a scripted fake node: lazy logins, re-login after the node forgot
one, retries after a connection lost mid-call (idempotent calls only), state loss, no lockout
hammering with refused credentials, choosing the least loaded connection."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from strongroom import pki
from strongroom.agent.config import AgentConfig, Timeouts
from strongroom.agent.nodes import (
    Identity,
    Logins,
    NodeError,
    NodePool,
    NodeUnavailable,
    StateLost,
)
from strongroom.client.profile import NodeAddress
from strongroom.errors import CKR
from strongroom.transport.protocol import FrameDecoder, decode_request, encode_reply
from strongroom.transport.tls import server_context

#: What this fake node lists: one mechanism the agent's own software does not know (0x80001234).
MECHANISMS = [{"mechanism": 0x80001234, "name": "CKM_VENDOR_TEST", "min_key_size": 1, "max_key_size": 2, "flags": 1}]

Behaviour = Callable[["FakeNode", str, bytes | None, dict[str, Any]], Any]


class FakeNode:
    """Speaks the node protocol; logins live per connection like a node worker's."""

    def __init__(self, certs: dict[str, Path]) -> None:
        self.context = server_context(certs["node_crt"], certs["node_key"], certs["ca"])
        self.server: asyncio.base_events.Server | None = None
        self.port = 0
        self.tokens: set[bytes] = set()
        self.password = "secret-pw"
        self.logins = 0
        self.calls: list[str] = []
        self.drop_on: set[str] = set()  # ops whose next call kills the connection instead of answering
        #: mechanism.list wants a login (as dispatch declares it today) unless this is False.
        self.mechanisms_need_login = True
        self.writers: list[asyncio.StreamWriter] = []

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", self.port, ssl=self.context)
        self.port = self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        for writer in self.writers:
            writer.close()
        await self.server.wait_closed()

    def forget_logins(self) -> None:
        self.tokens.clear()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.append(writer)
        decoder = FrameDecoder()
        mine: set[bytes] = set()  # logins of this connection (a worker's memory)
        try:
            while data := await reader.read(65536):
                for payload in decoder.feed(data):
                    request = decode_request(payload)
                    self.calls.append(request.op)
                    if request.op in self.drop_on:
                        self.drop_on.discard(request.op)
                        writer.close()
                        return
                    code, body = self._answer(request.op, request.session, request.args, mine)
                    writer.write(encode_reply(request.request_id, code, body))
        except (ConnectionError, OSError):
            pass

    def _answer(self, op: str, token: bytes | None, args: dict[str, Any], mine: set[bytes]) -> tuple[int, Any]:
        if op == "node.status":
            return 0, {"state": "active"}
        if op == "mechanism.list" and not self.mechanisms_need_login:
            return 0, {"mechanisms": MECHANISMS}
        if op == "session.login":
            self.logins += 1
            if args["password"] != self.password:
                return CKR.PIN_INCORRECT, "wrong username or password"
            new = secrets.token_bytes(32)
            self.tokens.add(new)
            mine.add(new)
            return 0, {"session": new, "username": args["username"], "role": args.get("role")}
        if token is None:
            return CKR.USER_NOT_LOGGED_IN, "log in"
        if token not in self.tokens or token not in mine:
            return CKR.SESSION_HANDLE_INVALID, "unknown or expired session; log in again"
        if op == "session.info":
            return 0, {"username": "alice"}
        if op == "p11.gone":
            return CKR.SESSION_HANDLE_INVALID, "no PKCS#11 session 1 in this login"
        if op == "mechanism.list":
            return 0, {"mechanisms": MECHANISMS}
        return 0, {"op": op}


@pytest.fixture
def certs(tmp_path: Path) -> dict[str, Path]:
    ca_key, ca_cert = pki.create_ca("test CA")
    node_key, node_cert = pki.issue_node_certificate(ca_key, ca_cert, "node1", hosts=["127.0.0.1"])
    client_key, client_cert = pki.issue_client_certificate(ca_key, ca_cert, "agent")
    paths = {name: tmp_path / name for name in ("ca", "node_crt", "node_key", "client_crt", "client_key")}
    pki.write_cert(paths["ca"], ca_cert)
    pki.write_cert(paths["node_crt"], node_cert)
    pki.write_private_key(paths["node_key"], node_key)
    pki.write_cert(paths["client_crt"], client_cert)
    pki.write_private_key(paths["client_key"], client_key)
    return paths


def pool_for(certs: dict[str, Path], *ports: int) -> NodePool:
    config = AgentConfig(
        socket=certs["ca"].parent / "a.sock", ca=certs["ca"], cert=certs["client_crt"], key=certs["client_key"],
        nodes=tuple(NodeAddress(f"node{i + 1}", "127.0.0.1", port) for i, port in enumerate(ports)),
        timeouts=Timeouts(connect=2, request=5, reconnect_wait=0.5, health_interval=60),
    )
    return NodePool(config)


def identity(password: str = "secret-pw") -> Logins:
    return Logins(Identity("alice", bytearray(password.encode()), "crypto-user", 1))


def run(scenario: Callable[[FakeNode, NodePool], Any], certs: dict[str, Path]) -> None:
    async def main() -> None:
        node = FakeNode(certs)
        await node.start()
        pool = pool_for(certs, node.port)
        await pool.start()
        try:
            await scenario(node, pool)
        finally:
            await pool.close()
            await node.stop()

    asyncio.run(main())


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
