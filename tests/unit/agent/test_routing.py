"""Routing of one application's calls over several links to one node, each served by its own
worker process (a fake node whose workers share nothing, like the real node's).

Everything a PKCS#11 session holds on the node (its node session, multi-part operations,
session objects) must reach the worker that holds it; stateless single-part calls and
token-object operations may go to any worker, and spread when there is load.
"""

from __future__ import annotations

import asyncio
import itertools
import secrets
from collections import Counter
from pathlib import Path
from typing import Any

from strongroom.agent.config import AgentConfig, Timeouts
from strongroom.agent.functions import dispatch
from strongroom.agent.nodes import NodePool
from strongroom.agent.runtime import Agent
from strongroom.client.profile import NodeAddress
from strongroom.constants import CKA, CKM, CKU
from strongroom.errors import CKR
from strongroom.transport.protocol import FrameDecoder, decode_request, encode_reply
from strongroom.transport.tls import server_context

SERIAL_RW = 0x6
SESSION_OBJECT_BASE = 1 << 30
TOKEN_KEY = 5
OUTPUT = {"encrypt": "data", "decrypt": "data", "sign": "signature", "digest": "digest"}


class Worker:
    """One worker process's memory: logins, node sessions with their operations, session objects."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.logins: set[bytes] = set()
        self.sessions: dict[int, dict[str, Any]] = {}
        self.objects: set[int] = set()


class WorkersNode:
    _handles = itertools.count(1)
    _objects = itertools.count(SESSION_OBJECT_BASE + 1)

    def __init__(self, certs: dict[str, Path], pids: list[int]) -> None:
        self.context = server_context(certs["node_crt"], certs["node_key"], certs["ca"])
        self.workers = {pid: Worker(pid) for pid in pids}
        self.placement = itertools.cycle(pids)  # which worker accepts the next connection
        self.served: list[tuple[str, int, int | None]] = []  # (op, worker pid, node session)
        self.server: asyncio.base_events.Server | None = None
        self.port = 0

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.context)
        self.port = self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        worker = self.workers[next(self.placement)]
        decoder = FrameDecoder()
        tasks: set[asyncio.Task[None]] = set()

        async def answer(payload: bytes) -> None:
            request = decode_request(payload)
            await asyncio.sleep(0.002)  # requests overlap, so links have requests in flight
            self.served.append((request.op, worker.pid, request.args.get("session")
                                if isinstance(request.args, dict) else None))
            code, body = self._answer(worker, request.op, request.session, request.args or {})
            writer.write(encode_reply(request.request_id, code, body))

        try:
            while data := await reader.read(65536):
                for payload in decoder.feed(data):
                    task = asyncio.get_running_loop().create_task(answer(payload))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
        except (ConnectionError, OSError):
            pass

    def _answer(self, worker: Worker, op: str, token: bytes | None, args: dict[str, Any]) -> tuple[int, Any]:
        if op == "node.status":
            return 0, {"state": "active", "pid": worker.pid}
        if op == "session.login":
            new = secrets.token_bytes(16)
            worker.logins.add(new)
            return 0, {"session": new, "username": args["username"], "role": args.get("role")}
        if token not in worker.logins:
            return CKR.SESSION_HANDLE_INVALID, "unknown session; log in again"
        if op == "session.logout":
            worker.logins.discard(token)
            return 0, {}
        if op == "session.info":
            return 0, {}
        if op == "random.generate":
            return 0, {"random": b"r" * args["length"]}
        if op == "p11session.open":
            handle = next(self._handles)
            worker.sessions[handle] = {"ops": {}}
            return 0, {"session": handle}
        key = args.get("key")
        if isinstance(key, int) and key > SESSION_OBJECT_BASE and key not in worker.objects:
            return CKR.KEY_HANDLE_INVALID, f"no key {key} in this worker"
        kind, _, step = op.removeprefix("crypto.").partition("_")
        if op.startswith("crypto.") and not step and kind in OUTPUT:  # stateless single-part
            return 0, {OUTPUT[kind]: b"out", "worker": worker.pid}
        if "session" not in args:
            return 0, {}
        session = worker.sessions.get(args["session"])
        if session is None:
            return CKR.SESSION_HANDLE_INVALID, f"no PKCS#11 session {args['session']} in this worker"
        if op == "p11session.close":
            del worker.sessions[args["session"]]
            return 0, {}
        if op == "key.generate":
            handle = next(self._objects)
            worker.objects.add(handle)
            return 0, {"handle": handle}
        if op == "crypto.cancel":
            session["ops"].pop(args["kind"], None)
            return 0, {}
        if step == "init":
            session["ops"][kind] = 0
            return 0, {}
        if kind not in session["ops"]:
            return CKR.OPERATION_NOT_INITIALIZED, "no operation"
        if step == "update":
            session["ops"][kind] += 1
            return 0, {"data": b"part"} if kind in ("encrypt", "decrypt") else {}
        del session["ops"][kind]
        return 0, {OUTPUT[kind]: b"final"}


class Conn:
    def __init__(self) -> None:
        self.app = None
        self.peer_uid = 1000
        self.peer_pid = 4242


async def _setup(certs: dict[str, Path], pids: list[int]) -> tuple[WorkersNode, NodePool, Agent]:
    node = WorkersNode(certs, pids)
    await node.start()
    config = AgentConfig(
        socket=certs["ca"].parent / "a.sock", ca=certs["ca"], cert=certs["client_crt"], key=certs["client_key"],
        nodes=(NodeAddress("node1", "127.0.0.1", node.port),),
        timeouts=Timeouts(connect=2, request=5, reconnect_wait=0.5, health_interval=60),
        links_per_node=len(pids),
    )
    pool = NodePool(config)
    await pool.start()
    return node, pool, Agent(config, pool)


async def ok(agent: Agent, conn: Conn, function: str, *args: Any) -> list[Any]:
    rv, outputs = await dispatch(agent, conn, function, list(args))
    assert rv == CKR.OK, (function, hex(rv))
    return outputs


def test_session_state_stays_on_its_worker_and_stateless_calls_spread(certs: dict[str, Path]) -> None:
    async def main() -> None:
        node, pool, agent = await _setup(certs, [101, 102])
        try:
            assert sorted(link.worker for link in pool.links) == [101, 102]
            conns = [Conn() for _ in range(8)]
            for conn in conns:
                await ok(agent, conn, "C_Initialize", b"A" * 16, 1, 8, True)
            main_conn = conns[0]
            session = (await ok(agent, main_conn, "C_OpenSession", 0, SERIAL_RW))[0]
            await ok(agent, main_conn, "C_Login", session, CKU.USER, b"alice:pw")
            app = main_conn.app
            assert app is not None and app.home is not None
            home = app.home.worker

            # A multi-part signature: node session, init, updates, final all on one worker.
            await ok(agent, main_conn, "C_SignInit", session, [CKM.SHA256_RSA_PKCS, None], TOKEN_KEY)
            await ok(agent, main_conn, "C_SignUpdate", session, b"a")
            await ok(agent, main_conn, "C_SignUpdate", session, b"b")
            assert (await ok(agent, main_conn, "C_SignFinal", session, 64))[1] == b"final"
            # A session object, then operations with it (init via the node, then the one-request path).
            template = [[CKA.TOKEN, b"\x00"], [CKA.VALUE_LEN, (32).to_bytes(8, "little")]]
            secret = (await ok(agent, main_conn, "C_GenerateKey", session, [CKM.AES_KEY_GEN, None], template))[0]
            for _ in range(3):
                await ok(agent, main_conn, "C_EncryptInit", session, [CKM.AES_CBC_PAD, b"\x00" * 16], secret)
                await ok(agent, main_conn, "C_Encrypt", session, b"x" * 16, 64)
            stateful = [(op, pid) for op, pid, _s in node.served
                        if op.startswith(("p11session.", "crypto.sign_", "crypto.encrypt", "key.generate"))]
            assert stateful and {pid for _op, pid in stateful} == {home}, stateful

            # Stateless single-part calls of many sessions at once use both workers.
            sessions = [(await ok(agent, conn, "C_OpenSession", 0, SERIAL_RW))[0] for conn in conns]
            await ok(agent, main_conn, "C_SignInit", sessions[0], [CKM.ECDSA, None], TOKEN_KEY)  # validates
            await ok(agent, main_conn, "C_Sign", sessions[0], b"d" * 32, 64)
            before = len(node.served)

            async def signer(conn: Conn, handle: int) -> None:
                for _ in range(10):
                    await ok(agent, conn, "C_SignInit", handle, [CKM.ECDSA, None], TOKEN_KEY)
                    await ok(agent, conn, "C_Sign", handle, b"d" * 32, 64)

            await asyncio.gather(*(signer(conn, handle) for conn, handle in zip(conns, sessions, strict=True)))
            signs = Counter(pid for op, pid, _s in node.served[before:] if op == "crypto.sign")
            assert sum(signs.values()) == 80 and set(signs) == {101, 102}, signs
            assert min(signs.values()) >= 16, signs  # not a trickle: the load is shared
            # One login per worker for the application, not one per call.
            assert Counter(pid for op, pid, _s in node.served if op == "session.login") == {101: 1, 102: 1}

            # The node session still holds its state on its worker after all that.
            await ok(agent, main_conn, "C_EncryptInit", session, [CKM.AES_CBC_PAD, b"\x00" * 16], secret)
            await ok(agent, main_conn, "C_EncryptUpdate", session, b"y" * 16, 64)
            await ok(agent, main_conn, "C_EncryptFinal", session, 64)
            last = [pid for op, pid, _s in node.served[-3:]]
            assert last == [home] * 3

            # Logout ends the login on every worker.
            await ok(agent, main_conn, "C_Logout", session)
            assert all(not worker.logins for worker in node.workers.values())
        finally:
            await agent.shutdown()
            await pool.close()
            await node.stop()

    asyncio.run(main())


def test_a_lost_link_loses_only_its_sessions_state(certs: dict[str, Path]) -> None:
    """A link that dies behaves like a node that died: the operations it held that had taken data
    fail, those that had not are re-created, stateless calls go on elsewhere."""
    async def main() -> None:
        node, pool, agent = await _setup(certs, [101, 102])
        try:
            conn = Conn()
            await ok(agent, conn, "C_Initialize", b"B" * 16, 1, 8, True)
            first = (await ok(agent, conn, "C_OpenSession", 0, SERIAL_RW))[0]
            second = (await ok(agent, conn, "C_OpenSession", 0, SERIAL_RW))[0]
            await ok(agent, conn, "C_Login", first, CKU.USER, b"alice:pw")
            app = conn.app
            assert app is not None and app.home is not None
            home = app.home
            await ok(agent, conn, "C_SignInit", first, [CKM.SHA256_RSA_PKCS, None], TOKEN_KEY)  # no data yet
            await ok(agent, conn, "C_EncryptInit", second, [CKM.AES_CBC_PAD, b"\x00" * 16], TOKEN_KEY)
            await ok(agent, conn, "C_EncryptUpdate", second, b"z" * 16, 64)  # state on the worker

            worker = node.workers[home.worker or 0]
            home.drop("test: the worker's connection is gone")
            worker.sessions.clear()  # the worker's memory of it goes too
            # The sign operation had taken no data: re-created on a node session elsewhere.
            assert (await ok(agent, conn, "C_Sign", first, b"m", 64))[1] == b"final"
            rv, _ = await dispatch(agent, conn, "C_EncryptUpdate", [second, b"z" * 16, 64])
            assert rv == CKR.FUNCTION_FAILED
            rv, _ = await dispatch(agent, conn, "C_EncryptFinal", [second, 64])
            assert rv == CKR.OPERATION_NOT_INITIALIZED
            assert len(await ok(agent, conn, "C_GenerateRandom", first, 8)) == 1
        finally:
            await agent.shutdown()
            await pool.close()
            await node.stop()

    asyncio.run(main())
