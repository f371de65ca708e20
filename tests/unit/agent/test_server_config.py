"""The agent's socket server (framing, limits, socket file) and its configuration file."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import struct
from pathlib import Path
from typing import Any

import msgpack
import pytest

from strongroom.agent.config import AgentConfig, ConfigError, Timeouts
from strongroom.agent.runtime import Agent
from strongroom.agent.server import (
    MAX_FRAME,
    AgentServer,
    AgentSocketError,
    BadMessage,
    _oversized_id,
    decode_request,
    encode_reply,
)
from strongroom.client.profile import NodeAddress
from strongroom.errors import CKR
from strongroom.local.agent import write_config
from strongroom.local.layout import LocalClusterError

HEADER = struct.Struct(">I")


def config(tmp_path: Path) -> AgentConfig:
    return AgentConfig(socket=tmp_path / "agent.sock", ca=tmp_path / "ca.crt", cert=tmp_path / "c.crt",
                       key=tmp_path / "c.key", nodes=(NodeAddress("node1", "127.0.0.1", 1),))


# --- configuration ----------------------------------------------------------------------------------


def test_config_round_trip(tmp_path: Path) -> None:
    original = config(tmp_path)
    original.slot_id = 7
    original.links_per_node = 3
    original.timeouts = Timeouts(connect=1.5, request=30, reconnect_wait=2, health_interval=1)
    path = tmp_path / "agent.toml"
    original.write(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert AgentConfig.load(path) == original


def test_config_relative_paths_and_errors(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text('[agent]\nsocket = "run/a.sock"\n[tls]\nca = "ca.crt"\ncert = "c.crt"\nkey = "c.key"\n'
                    '[[nodes]]\nid = "n1"\naddress = "10.0.0.1:2223"\n')
    loaded = AgentConfig.load(path)
    assert loaded.socket == tmp_path / "run" / "a.sock"
    assert loaded.ca == tmp_path / "ca.crt"
    assert loaded.nodes == (NodeAddress("n1", "10.0.0.1", 2223, "a"),)
    assert loaded.slot_id == 0 and loaded.cluster_name == "strongroom" and loaded.links_per_node == 2
    for bad in ("", "[agent]\nsocket = 1\n", path.read_text().replace('"run/a.sock"', '"a.sock"\nlinks_per_node = 0'),
                path.read_text().replace("10.0.0.1:2223", "nope"),
                path.read_text() + "[timeouts]\nbogus = 1\n", path.read_text() + "[timeouts]\nconnect = -1\n"):
        path.write_text(bad)
        with pytest.raises(ConfigError):
            AgentConfig.load(path)
    with pytest.raises(ConfigError):
        AgentConfig.load(tmp_path / "missing.toml")
    with pytest.raises(ConfigError):
        AgentConfig(socket=Path("/" + "x" * 200), ca=Path("a"), cert=Path("b"), key=Path("c"),
                    nodes=(NodeAddress("n", "h", 1),))


def test_config_for_a_local_cluster_directory(tmp_path: Path) -> None:
    (tmp_path / "client.json").write_text(json.dumps({
        "cluster_name": "prod", "ca": "ca/ca.crt", "cert": "client/client.crt", "key": "client/client.key",
        "nodes": [{"id": "node1", "zone": "a", "address": "127.0.0.1:4000"},
                  {"id": "node2", "zone": "b", "address": "127.0.0.1:4001"}],
    }))
    path = write_config(tmp_path)
    assert path == tmp_path.resolve() / "agent.toml"
    loaded = AgentConfig.load(path)
    assert loaded.socket == tmp_path.resolve() / "agent.sock"
    assert loaded.cluster_name == "prod"
    assert loaded.cert == tmp_path.resolve() / "client" / "client.crt"
    assert [n.node_id for n in loaded.nodes] == ["node1", "node2"]
    with pytest.raises(LocalClusterError):
        write_config(tmp_path / "nothing-here")


# --- messages -------------------------------------------------------------------------------------------


def pack(message: Any) -> bytes:
    return msgpack.packb(message, use_bin_type=True)


def test_decode_request() -> None:
    assert decode_request(pack([1, 7, "C_Finalize", []])) == (7, "C_Finalize", [])
    for bad, request_id in [
        (b"\xc1", None), (pack({"a": 1}), None), (pack([1, 2, 3]), None), (pack([1, -1, "C_X", []]), None),
        (pack([1, 1 << 32, "C_X", []]), None), (pack([1, True, "C_X", []]), None),
        (pack([2, 5, "C_X", []]), 5), (pack([1, 5, "", []]), 5), (pack([1, 5, "C_X", {}]), 5),
        (pack([1, 5, "C" * 65, []]), 5), (pack([1, 5, b"C_X", []]), 5),
    ]:
        with pytest.raises(BadMessage) as info:
            decode_request(bad)
        assert info.value.request_id == request_id, bad


def test_encode_reply_and_unencodable_outputs() -> None:
    framed = encode_reply(3, CKR.OK, [b"x", None, 5])
    assert msgpack.unpackb(framed[4:]) == [1, 3, 0, [b"x", None, 5]]
    framed = encode_reply(3, CKR.OK, [object()])
    assert msgpack.unpackb(framed[4:]) == [1, 3, CKR.GENERAL_ERROR, []]


def test_oversized_id() -> None:
    assert _oversized_id(pack([1, 99, "C_Sign", [1, b"x" * 100]])[:32]) == 99
    assert _oversized_id(b"\x00garbage") == 0


# --- the socket ---------------------------------------------------------------------------------------


async def _exchange(path: Path, payload: bytes, expect_close: bool = True) -> tuple[Any, bool]:
    reader, writer = await asyncio.open_unix_connection(str(path))
    writer.write(payload)
    await writer.drain()
    reply = None
    try:
        header = await asyncio.wait_for(reader.readexactly(4), 5)
        reply = msgpack.unpackb(await reader.readexactly(HEADER.unpack(header)[0]))
    except asyncio.IncompleteReadError:
        pass
    closed = expect_close and await asyncio.wait_for(reader.read(1), 5) == b""
    writer.close()
    return reply, closed


def test_socket_server(tmp_path: Path) -> None:
    async def scenario() -> None:
        cfg = config(tmp_path)
        agent = Agent(cfg, pool=None)  # type: ignore[arg-type]
        server = AgentServer(agent, cfg.socket)
        await server.start()
        assert stat.S_IMODE(os.lstat(cfg.socket).st_mode) == 0o660
        with pytest.raises(AgentSocketError):
            await AgentServer(agent, cfg.socket).start()

        # Requests are answered in order on one connection; state belongs to the app_id.
        reader, writer = await asyncio.open_unix_connection(str(cfg.socket))
        for request_id, message in enumerate([["C_GetSlotList", [True]],
                                              ["C_Initialize", [b"A" * 16, 1, 8, True]],
                                              ["C_GetSlotList", [True]],
                                              ["C_Nope", []]], start=1):
            body = pack([1, request_id, *message])
            writer.write(HEADER.pack(len(body)) + body)
        replies = []
        for _ in range(4):
            size = HEADER.unpack(await reader.readexactly(4))[0]
            replies.append(msgpack.unpackb(await reader.readexactly(size)))
        assert replies == [[1, 1, CKR.CRYPTOKI_NOT_INITIALIZED, []], [1, 2, 0, [False]], [1, 3, 0, [[0]]],
                           [1, 4, CKR.FUNCTION_NOT_SUPPORTED, []]]
        assert len(agent.apps) == 1
        writer.close()
        await writer.wait_closed()
        for _ in range(50):  # the application ends with its last connection
            if not agent.apps:
                break
            await asyncio.sleep(0.02)
        assert not agent.apps

        # A bad field is answered; garbage closes; an oversized frame is answered and closes.
        body = pack([1, 9, "C_X", {}])
        reply, _ = await _exchange(cfg.socket, HEADER.pack(len(body)) + body, expect_close=False)
        assert reply == [1, 9, CKR.ARGUMENTS_BAD, []]
        reply, closed = await _exchange(cfg.socket, HEADER.pack(3) + b"\xc1\xc1\xc1")
        assert reply is None and closed
        big = pack([1, 11, "C_Sign", [1, b"x" * (MAX_FRAME + 10), -1]])
        reply, closed = await _exchange(cfg.socket, HEADER.pack(len(big)) + big)
        assert reply == [1, 11, CKR.DATA_LEN_RANGE, []] and closed
        reply, closed = await _exchange(cfg.socket, HEADER.pack(1 << 30))
        assert reply == [1, 0, CKR.DATA_LEN_RANGE, []] and closed

        await server.close()
        assert not cfg.socket.exists()

        # A socket file left by a dead agent is replaced.
        import socket as socket_module

        stale = socket_module.socket(socket_module.AF_UNIX)
        stale.bind(str(cfg.socket))
        stale.close()
        server = AgentServer(agent, cfg.socket)
        await server.start()
        await server.close()

    asyncio.run(scenario())
