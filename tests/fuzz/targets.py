"""What the fuzzers feed: the node's frame and argument decoders and the agent's module protocol.

Each target takes one input (bytes) and raises :class:`Finding` when the code under test does something
no input may make it do: an exception other than the protocol's own refusal (a traceback in a node or
the agent), a reply that is not a reply, or a hang (the runner's per-input timeout). The refusals
themselves (ProtocolError, HsmError, the agent's CKR answers) are the expected outcome of garbage.

Run with atheris (coverage-guided): ``python -m tests.fuzz.run TARGET [-runs=N] [corpus dir]``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack

#: Operations and functions are chosen by the input's first byte from these sorted lists.
NODE_FRAME_LIMIT = 64 * 1024


class Finding(Exception):
    """The code under test misbehaved on this input."""


def _structure(data: bytes) -> Any:
    """Some msgpack value from ``data`` (what a peer could send), or the raw bytes."""
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=False, max_array_len=256, max_map_len=256,
                               max_bin_len=len(data), max_str_len=len(data))
    except Exception:  # noqa: BLE001 - not msgpack: the bytes themselves are the value
        return data


# --- the node ------------------------------------------------------------------------------------


def node_frames(data: bytes) -> None:
    """Bytes off a node's socket, in chunks the input chooses: framing, then each request's decoding."""
    from strongroom.transport.protocol import FrameDecoder, FrameTooLarge, OversizedFrame, ProtocolError, decode_request

    decoder = FrameDecoder(NODE_FRAME_LIMIT, skip_limit=4 * NODE_FRAME_LIMIT)
    step = 1 + (data[0] if data else 0)
    for start in range(1, len(data), step):
        try:
            payloads = decoder.feed(data[start:start + step])
        except FrameTooLarge:
            return  # the listener answers and closes the connection
        for payload in payloads:
            if isinstance(payload, OversizedFrame):
                payload.request_id()
                continue
            try:
                request = decode_request(payload)
            except ProtocolError:
                continue
            if not isinstance(request.op, str) or not isinstance(request.args, dict):
                raise Finding(f"decode_request returned {request!r}")


def node_args(data: bytes) -> None:
    """An operation's arguments as a peer sends them: the table's parsing and the template coercion."""
    from strongroom.dispatch import ops  # noqa: F401  (fills the table)
    from strongroom.dispatch.table import OPERATIONS, parse_args
    from strongroom.errors import HsmError
    from strongroom.objects.attributes import coerce_template

    if not data:
        return
    names = sorted(OPERATIONS)
    spec = OPERATIONS[names[data[0] % len(names)]]
    raw = _structure(data[1:])
    try:
        parse_args(spec.args, raw if isinstance(raw, dict) else {"template": raw})
    except HsmError:
        pass
    try:
        coerce_template(raw if isinstance(raw, list) else [raw])
    except HsmError:
        pass


# --- the agent ---------------------------------------------------------------------------------


class _Connection:
    def __init__(self) -> None:
        self.app: Any = None
        self.peer_uid: int | None = 1000
        self.peer_pid: int | None = 4242


class _NoNodes:
    """A pool whose nodes never answer: the agent decides alone (as when every node is down)."""

    links: list[Any] = []

    async def acquire(self, *_args: Any, **_kwargs: Any) -> Any:
        from strongroom.agent.nodes import NodeUnavailable

        raise NodeUnavailable("no node while fuzzing")


class AgentHarness:
    """One agent (no nodes) and one event loop, kept across inputs (as a running agent is)."""

    def __init__(self) -> None:
        from strongroom.agent.config import AgentConfig
        from strongroom.agent.functions import FUNCTIONS
        from strongroom.agent.runtime import Agent
        from strongroom.client.profile import NodeAddress

        config = AgentConfig(socket=Path("/nonexistent/agent.sock"), ca=Path("ca"), cert=Path("c"), key=Path("k"),
                             nodes=(NodeAddress("node1", "127.0.0.1", 1),), slot_id=3)
        self.agent = Agent(config, pool=_NoNodes())  # type: ignore[arg-type]  # the pool's two members
        self.loop = asyncio.new_event_loop()
        self.names = sorted(FUNCTIONS)

    def call(self, connection: _Connection, name: str, args: list[Any]) -> tuple[int, list[Any]]:
        from strongroom.agent.functions import dispatch

        rv, outputs = self.loop.run_until_complete(asyncio.wait_for(
            dispatch(self.agent, connection, name, args), 10))
        if not isinstance(rv, int) or not isinstance(outputs, list):
            raise Finding(f"{name} answered {rv!r}, {outputs!r}")
        return rv, outputs


_HARNESS: AgentHarness | None = None


def _harness() -> AgentHarness:
    global _HARNESS
    if _HARNESS is None:
        _HARNESS = AgentHarness()
    return _HARNESS


def agent_frames(data: bytes) -> None:
    """Bytes from an application's PKCS#11 module on the agent's socket: framing and decoding."""
    from strongroom.agent.server import (
        MAX_FRAME,
        SKIP_LIMIT,
        BadMessage,
        _oversized_id,
        decode_request,
        is_node_protocol,
    )
    from strongroom.transport.protocol import FrameDecoder, FrameTooLarge, OversizedFrame

    decoder = FrameDecoder(min(MAX_FRAME, NODE_FRAME_LIMIT), skip_limit=SKIP_LIMIT)
    try:
        payloads = decoder.feed(data)
    except FrameTooLarge:
        return
    for payload in payloads:
        if isinstance(payload, OversizedFrame):
            _oversized_id(payload.head)
            continue
        if is_node_protocol(payload):
            continue  # the pass-through's path: node_frames covers that decoder
        with contextlib.suppress(BadMessage):
            decode_request(payload)


def agent_calls(data: bytes) -> None:
    """A PKCS#11 function with arguments the input makes, on an initialized application of the agent."""
    if not data:
        return
    harness = _harness()
    connection = _Connection()
    rv, _ = harness.call(connection, "C_Initialize", [bytes(16), 1, 8, True])
    if rv != 0:
        raise Finding(f"C_Initialize answered {rv}")
    name = harness.names[data[0] % len(harness.names)]
    args = _structure(data[1:])
    harness.call(connection, name, args if isinstance(args, list) else [args])
    harness.call(connection, "C_Finalize", [])


TARGETS: dict[str, Callable[[bytes], None]] = {
    "node-frames": node_frames,
    "node-args": node_args,
    "agent-frames": agent_frames,
    "agent-calls": agent_calls,
}


# --- seeds: well-formed inputs the fuzzer mutates from ------------------------------------------------


def _node_seeds() -> list[bytes]:
    from strongroom.transport.protocol import encode_request

    requests = [
        (1, "node.status", None, {}),
        (2, "session.login", None, {"username": "alice", "password": "password1"}),
        (3, "crypto.sign", b"s" * 32, {"key": 5, "mechanism": 0x1041, "data": b"m" * 32}),
        (4, "key.generate", b"s" * 32, {"mechanism": 0x1080, "template": [[0x161, 32], [1, True], [3, b"label"]]}),
        (5, "object.find", b"s" * 32, {"template": [[0, 4]], "max": 10}),
    ]
    frames = [encode_request(*request) for request in requests]
    return [bytes([7]) + b"".join(frames), bytes([0]) + frames[3], bytes([200]) + frames[1] + frames[2][:9]]


def _args_seeds() -> list[bytes]:
    from strongroom.dispatch import ops  # noqa: F401
    from strongroom.dispatch.table import OPERATIONS

    names = sorted(OPERATIONS)
    samples = {
        "key.generate": {"mechanism": 0x1080, "template": [[0x161, 32], [1, True], [3, b"l"]]},
        "key.generate_pair": {"mechanism": 0x1040, "public_template": [[0x180, b"\x06\x08*\x86H\xce=\x03\x01\x07"]],
                              "private_template": [[1, True], [0x108, True]]},
        "crypto.encrypt": {"key": 9, "mechanism": 0x1087, "data": b"d" * 16, "params": {"iv": b"i" * 12}},
        "object.create": {"template": [[0, 4], [0x100, 0x1f], [0x11, b"k" * 32]]},
        "session.login": {"username": "alice", "password": "password1", "role": "crypto-user", "keep": True},
        "user.create": {"username": "bob", "role": "crypto-user", "password": "password2"},
    }
    return [bytes([names.index(name)]) + msgpack.packb(args, use_bin_type=True)
            for name, args in samples.items() if name in names]


def _agent_frame_seeds() -> list[bytes]:
    from strongroom.transport.protocol import frame

    messages = [[1, 1, "C_Initialize", [bytes(16), 1, 8, True]], [1, 2, "C_GetSlotList", [True]],
                [1, 3, "C_OpenSession", [3, 6]], [1, 4, "C_Login", [1, 1, b"alice:password1"]],
                [1, 5, "C_FindObjectsInit", [1, [[0, b"\x04\x00\x00\x00\x00\x00\x00\x00"]]]]]
    return [b"".join(frame(msgpack.packb(m, use_bin_type=True)) for m in messages)]


def _agent_call_seeds() -> list[bytes]:
    from strongroom.agent.functions import FUNCTIONS

    names = sorted(FUNCTIONS)
    calls = {"C_GetSlotList": [True], "C_OpenSession": [3, 6], "C_GetTokenInfo": [3], "C_Login": [1, 1, b"a:b"],
             "C_GetMechanismList": [3, 64], "C_FindObjectsInit": [1, [[0, b"\x04" + bytes(7)], [3, b"x"]]],
             "C_GenerateKey": [1, [0x1080, None], [[0x161, b"\x20" + bytes(7)]]],
             "C_SignInit": [1, [0x1041, None], 5], "C_GenerateRandom": [1, 16]}
    return [bytes([names.index(name)]) + msgpack.packb(args, use_bin_type=True)
            for name, args in calls.items() if name in names]


SEEDS: dict[str, Callable[[], list[bytes]]] = {
    "node-frames": _node_seeds,
    "node-args": _args_seeds,
    "agent-frames": _agent_frame_seeds,
    "agent-calls": _agent_call_seeds,
}
