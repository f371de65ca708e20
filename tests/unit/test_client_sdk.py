"""The SDK's two faces over one definition of each call: the blocking Client runs AsyncClient's
methods on its connection's loop, so both send the same requests and raise the same errors.

A fake node on a Unix socket (the agent's side of the protocol) records every request and
answers from a table; no cluster is needed."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from strongroom.client import AsyncClient, AsyncConnection, Client, ClientError
from strongroom.constants import CKA, CKM
from strongroom.errors import CKR
from strongroom.kms.backend import Backend, ClusterError
from strongroom.kms.config import GatewayConfig
from strongroom.transport.protocol import FrameDecoder, decode_request, encode_reply

Answer = Callable[[dict[str, Any]], tuple[int, Any] | None]

ANSWERS: dict[str, Answer] = {
    "session.login": lambda a: (0, {"session": b"S" * 16, "username": a["username"], "role": "crypto-user"}),
    "session.logout": lambda a: (0, {}),
    "crypto.sign": lambda a: (0, {"signature": b"sig:" + a["data"]}),
    "crypto.verify": lambda a: (int(CKR.SIGNATURE_INVALID), "the signature does not verify"),
    "key.generate": lambda a: (0, {"handle": 7}),
    "object.get_attributes": lambda a: (0, {"error": int(CKR.ATTRIBUTE_SENSITIVE),
                                            "attributes": [[int(CKA.LABEL), b"k"]]}),
    "crypto.digest_init": lambda a: (0, {}),
    "crypto.digest_update": lambda a: (0, {}),
    "crypto.digest_final": lambda a: (0, {"digest": b"D"}),
    "node.status": lambda a: (0, {"node_id": "fake"}),
    "crypto.encrypt": lambda a: (0, {"data": b"E" + a["data"]}),
    "random.generate": lambda a: (0, {"random": bytes(a["length"])}),
    "key.generate_pair": lambda a: (0, {"public": 11, "private": 12}),
    "object.destroy": lambda a: (int(CKR.OBJECT_HANDLE_INVALID), "no such object"),
    "slow": lambda a: None,  # never answered
}


class FakeNode:
    """Answers framed requests on a Unix socket from :data:`ANSWERS`, in its own thread."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.requests: list[tuple[str, dict[str, Any], bytes | None]] = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(5)

    async def _start(self) -> None:
        self._server = await asyncio.start_unix_server(self._serve, str(self.path))

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        decoder = FrameDecoder()
        while data := await reader.read(65536):
            for payload in decoder.feed(data):
                assert isinstance(payload, bytes)
                request = decode_request(payload)
                self.requests.append((request.op, request.args, request.session))
                answer = ANSWERS[request.op](request.args)
                if answer is not None:
                    writer.write(encode_reply(request.request_id, *answer))
        writer.close()

    def close(self) -> None:
        async def stop() -> None:
            self._server.close()

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


@pytest.fixture
def node(tmp_path: Path) -> Iterator[FakeNode]:
    fake = FakeNode(tmp_path / "agent.sock")
    yield fake
    fake.close()


def _exercise_blocking(client: Client) -> list[Any]:
    results: list[Any] = [client.login("alice", "pw")]
    results.append(client.sign(5, CKM.ECDSA, b"m"))
    results.append(client.generate_key(CKM.AES_KEY_GEN, {CKA.VALUE_LEN: 32, CKA.TOKEN: True}))
    results.append(client.multipart("digest", 3, CKM.SHA256, [b"a", b"b"]))
    return results


async def _exercise_async(client: AsyncClient) -> list[Any]:
    results: list[Any] = [await client.login("alice", "pw")]
    results.append(await client.sign(5, CKM.ECDSA, b"m"))
    results.append(await client.generate_key(CKM.AES_KEY_GEN, {CKA.VALUE_LEN: 32, CKA.TOKEN: True}))
    results.append(await client.multipart("digest", 3, CKM.SHA256, [b"a", b"b"]))
    return results


def test_blocking_and_async_clients_send_the_same_requests(node: FakeNode) -> None:
    with Client(agent_socket=str(node.path)) as client:
        blocking = _exercise_blocking(client)
        assert (client.session, client.username, client.role) == (b"S" * 16, "alice", "crypto-user")
    sent_blocking, node.requests[:] = list(node.requests), []
    # Closing the blocking client logged its login out (the async face below is closed without it).
    assert sent_blocking.pop() == ("session.logout", {}, b"S" * 16)

    async def run() -> list[Any]:
        connection = await AsyncConnection.open_unix(str(node.path))
        try:
            return await _exercise_async(AsyncClient(connection.call))
        finally:
            await connection.close()

    assert asyncio.run(run()) == blocking
    assert node.requests == sent_blocking
    login, sign, generate, *digest = sent_blocking
    assert login == ("session.login", {"username": "alice", "password": "pw"}, None)  # role None: left out
    assert sign == ("crypto.sign", {"key": 5, "mechanism": int(CKM.ECDSA), "data": b"m"}, b"S" * 16)
    assert generate[1] == {"mechanism": int(CKM.AES_KEY_GEN),
                           "template": [[int(CKA.VALUE_LEN), 32], [int(CKA.TOKEN), True]]}
    assert [op for op, _, _ in digest] == ["crypto.digest_init", "crypto.digest_update", "crypto.digest_update",
                                          "crypto.digest_final"]
    assert blocking[1:] == [b"sig:m", 7, {"digest": b"D"}]


def test_errors_are_the_same_on_both_faces(node: FakeNode) -> None:
    with Client(agent_socket=str(node.path)) as client:
        with pytest.raises(ClientError) as refused:
            client.get_attributes(7, [CKA.VALUE, CKA.LABEL])
        assert refused.value.code == CKR.ATTRIBUTE_SENSITIVE
        with pytest.raises(ClientError) as invalid:
            client.verify(7, CKM.ECDSA, b"m", b"s")
        assert invalid.value.code == CKR.SIGNATURE_INVALID

    class Refused(Exception):
        def __init__(self, code: int, message: str) -> None:
            super().__init__(message)
            self.code = code

    async def run() -> None:
        connection = await AsyncConnection.open_unix(str(node.path))
        try:
            # The KMS backend's choice: its own error type for a refusal inside a reply.
            with pytest.raises(Refused) as caught:
                await AsyncClient(connection.call, refused=Refused).get_attributes(7, [CKA.VALUE])
            assert caught.value.code == CKR.ATTRIBUTE_SENSITIVE
        finally:
            await connection.close()

    asyncio.run(run())


def test_a_call_without_an_answer_times_out_and_the_client_goes_on(node: FakeNode) -> None:
    with Client(agent_socket=str(node.path), timeout=0.5) as client:
        started = time.monotonic()
        with pytest.raises(ClientError) as late:
            client.call("slow")
        assert late.value.code == CKR.DEVICE_ERROR and "did not answer in time" in late.value.message
        assert time.monotonic() - started < 5
        assert client.node_status() == {"node_id": "fake"}


def test_the_session_can_be_set_by_hand(node: FakeNode) -> None:
    """Tests forge sessions by assigning ``client.session``; every later call carries it."""
    with Client(agent_socket=str(node.path)) as client:
        client.session = b"\0" * 32
        client.node_status()
        client.close()
        client.node_status()  # a new connection, the same session
    assert [session for _, _, session in node.requests] == [b"\0" * 32, b"\0" * 32]


def test_the_kms_backend_sends_the_sdks_requests(node: FakeNode) -> None:
    """The gateway's Backend: its links log in with AsyncClient.login and its calls are AsyncClient's."""
    config = GatewayConfig()
    config.cluster.profile, config.cluster.agent_socket, config.cluster.connections = None, str(node.path), 1

    async def run() -> None:
        backend = Backend(config, "service-password")
        try:
            await backend.start()
            assert await backend.gcm_encrypt(7, b"i" * 12, b"aad", b"plain") == b"Eplain"
            assert await backend.cluster.generate_random(4) == bytes(4)
            assert await backend.generate_key_pair("k", int(CKM.EC_KEY_PAIR_GEN), {}, {}) == (11, 12)
            await backend.destroy_object(99)  # already gone: not an error for the gateway
            assert await backend.verify(7, int(CKM.ECDSA), b"m", b"s") is False
            with pytest.raises(ClusterError) as refused:
                await backend.cluster.get_attributes(7, [CKA.VALUE])
            assert refused.value.code == CKR.ATTRIBUTE_SENSITIVE
        finally:
            await backend.close()

    asyncio.run(run())
    ops = [(op, args, session) for op, args, session in node.requests]
    assert ops[0] == ("session.login", {"username": config.cluster.username, "password": "service-password",
                                        "role": "crypto-user"}, None)
    assert ops[1] == ("crypto.encrypt", {"key": 7, "mechanism": int(CKM.AES_GCM), "data": b"plain",
                                         "params": {"iv": b"i" * 12, "aad": b"aad", "tag_bits": 128}}, b"S" * 16)
    assert [op for op, _, _ in ops[2:]] == ["random.generate", "key.generate_pair", "object.destroy", "crypto.verify",
                                            "object.get_attributes", "session.logout"]
    assert all(session == b"S" * 16 for _, _, session in ops[1:])
