"""A scripted node for the agent's unit tests: speaks the node protocol over mTLS, keeps logins per
connection like a node worker, and can drop a connection instead of answering."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

from strongroom.agent.config import AgentConfig, Timeouts
from strongroom.agent.nodes import Identity, Logins, NodePool
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
        #: An old node that wanted a login for mechanism.list (the agent then reports what it knew).
        self.mechanisms_need_login = False
        self.writers: list[asyncio.StreamWriter] = []
        #: The worker (pid) each new connection lands on, in order; then ``worker``.
        self.placement: list[int] = []
        self.worker = 1
        self.served: list[tuple[str, int]] = []  # (op, worker) of every request
        #: op -> seconds its answers are held back (a node short of CPU); "*": every op.
        self.delays: dict[str, float] = {}
        #: A node that died: every connection closes at its next request (each on its own, as the agent
        #: learns of each only when it uses it).
        self.dead = False
        self.connections = 0

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
        self.connections += 1
        worker = self.placement.pop(0) if self.placement else self.worker
        decoder = FrameDecoder()
        mine: set[bytes] = set()  # logins of this connection (a worker's memory)
        try:
            while data := await reader.read(65536):
                for payload in decoder.feed(data):
                    request = decode_request(payload)
                    self.calls.append(request.op)
                    self.served.append((request.op, worker))
                    if request.op in self.drop_on or self.dead:
                        self.drop_on.discard(request.op)
                        writer.close()
                        return
                    code, body = self._answer(request.op, request.session, request.args, mine, worker)
                    answer = encode_reply(request.request_id, code, body)
                    delay = self.delays.get(request.op, self.delays.get("*"))
                    if delay:
                        asyncio.get_running_loop().call_later(delay, _late, writer, answer)
                    else:
                        writer.write(answer)
        except (ConnectionError, OSError):
            pass

    def _answer(self, op: str, token: bytes | None, args: dict[str, Any], mine: set[bytes],
                worker: int = 1) -> tuple[int, Any]:
        if op == "node.status":
            return 0, {"state": "active", "pid": worker}
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


def _late(writer: asyncio.StreamWriter, answer: bytes) -> None:
    if not writer.is_closing():
        writer.write(answer)


def pool_for(certs: dict[str, Path], *ports: int, links: int = 1) -> NodePool:
    config = AgentConfig(
        socket=certs["ca"].parent / "a.sock", ca=certs["ca"], cert=certs["client_crt"], key=certs["client_key"],
        nodes=tuple(NodeAddress(f"node{i + 1}", "127.0.0.1", port) for i, port in enumerate(ports)),
        links_per_node=links,
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
