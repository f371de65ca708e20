"""The agent's Unix socket: frames in, one request at a time per connection, frames out.

Framing is the node protocol's (4-byte big-endian length + msgpack, reusing
:class:`FrameDecoder`); the messages are the module's (docs/agent-protocol.md)::

    request:  [1, id, function, args]
    reply:    [1, id, rv, outputs]

A connection whose first message is the node protocol's 5-element request is an SDK or CLI
client: its requests are relayed to a node (:mod:`strongroom.agent.passthrough`).

A frame above 9 MiB is answered with CKR_DATA_LEN_RANGE and the connection closed; a
message that cannot be decoded closes the connection; a well-formed message with bad
fields is answered with CKR_ARGUMENTS_BAD. The socket is created with mode 0660: the
agent's user and group may use it. A connection that joins an application (its
C_Initialize names an app_id the agent knows) must come from the same user id
(SO_PEERCRED).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import stat
import struct
from pathlib import Path
from typing import Any

import msgpack

from strongroom.agent.functions import Connection, dispatch
from strongroom.agent.passthrough import Passthrough
from strongroom.agent.runtime import Agent
from strongroom.errors import CKR
from strongroom.metrics import agent as agent_metrics
from strongroom.transport.protocol import FrameDecoder, FrameTooLarge, OversizedFrame, frame, unpack_limited

log = logging.getLogger("strongroom.agent")

PROTOCOL_VERSION = 1
MAX_FRAME = 9 << 20  # a single part of 8 MiB (functions.registry.MAX_BYTES) and the rest
#: Frames above MAX_FRAME but below this are read past to learn their request id before closing.
SKIP_LIMIT = 16 << 20
MAX_REQUEST_ID = (1 << 32) - 1
MAX_FUNCTION_NAME = 64
READ_CHUNK = 256 * 1024
SOCKET_MODE = 0o660


class AgentSocketError(Exception):
    pass


class BadMessage(Exception):
    def __init__(self, message: str, request_id: int | None = None) -> None:
        super().__init__(message)
        self.request_id = request_id


class ClientConnection(Connection):
    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.app = None
        self.peer_pid: int | None = None
        self.peer_uid: int | None = None
        sock = writer.get_extra_info("socket")
        if sock is not None and hasattr(socket, "SO_PEERCRED"):
            with contextlib.suppress(OSError):
                creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
                self.peer_pid, self.peer_uid, _gid = struct.unpack("3i", creds)


def is_node_protocol(payload: bytes) -> bool:
    """The SDK speaks the node protocol: a 5-element array, 6 with a revision (the module's messages have 4)."""
    unpacker = msgpack.Unpacker(raw=False)
    unpacker.feed(payload[:16])
    try:
        length: int = unpacker.read_array_header()  # an int, or it raises
    except Exception:  # noqa: BLE001 - not an array: let the module path report it
        return False
    return length in (5, 6)


def decode_request(payload: bytes) -> tuple[int, str, list[Any]]:
    try:
        message = unpack_limited(payload)
    except Exception as exc:  # noqa: BLE001 - any garbage is a protocol error
        raise BadMessage(f"undecodable message ({exc.__class__.__name__})") from None
    if not isinstance(message, list) or len(message) != 4:
        raise BadMessage("a request is [1, id, function, args]")
    version, request_id, name, args = message
    if not isinstance(request_id, int) or isinstance(request_id, bool) or not 0 <= request_id <= MAX_REQUEST_ID:
        raise BadMessage("the request id is a uint32")
    if type(version) is not int or version != PROTOCOL_VERSION:
        raise BadMessage(f"protocol version {version!r} is not supported", request_id)
    if not isinstance(name, str) or not 0 < len(name) <= MAX_FUNCTION_NAME:
        raise BadMessage("the function name is a string", request_id)
    if not isinstance(args, list):
        raise BadMessage("the arguments are an array", request_id)
    return request_id, name, args


def encode_reply(request_id: int, rv: int, outputs: list[Any]) -> bytes:
    try:
        payload = msgpack.packb([PROTOCOL_VERSION, request_id, int(rv), outputs], use_bin_type=True)
    except Exception:  # a reply that cannot be encoded is an internal error
        log.exception("cannot encode the reply to request %d", request_id)
        payload = msgpack.packb([PROTOCOL_VERSION, request_id, int(CKR.GENERAL_ERROR), []], use_bin_type=True)
    return frame(payload)


def _oversized_id(head: bytes) -> int:
    unpacker = msgpack.Unpacker(raw=False)
    unpacker.feed(head)
    try:
        if unpacker.read_array_header() != 4:
            return 0
        unpacker.unpack()
        request_id = unpacker.unpack()
    except Exception:  # noqa: BLE001 - unknown id
        return 0
    return request_id if isinstance(request_id, int) and 0 <= request_id <= MAX_REQUEST_ID else 0


class AgentServer:
    def __init__(self, agent: Agent, path: Path, group: str | None = None) -> None:
        self.agent = agent
        self.path = Path(path)
        self.group = group
        self._server: asyncio.base_events.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        await self._clear_stale_socket()
        old_umask = os.umask(0o117)  # the socket is born 0660: no window with wider access
        try:
            self._server = await asyncio.start_unix_server(self._serve, path=str(self.path), limit=READ_CHUNK)
        finally:
            os.umask(old_umask)
        os.chmod(self.path, SOCKET_MODE)
        if self.group is not None:
            import grp

            try:
                os.chown(self.path, -1, grp.getgrnam(self.group).gr_gid)
            except (KeyError, PermissionError) as exc:
                raise OSError(f"cannot give the agent socket to group {self.group!r}: {exc}") from None
        log.info("listening on %s", self.path)

    async def _clear_stale_socket(self) -> None:
        try:
            mode = os.lstat(self.path).st_mode
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(mode):
            raise AgentSocketError(f"{self.path} exists and is not a socket")
        try:
            _reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(str(self.path)), 2)
        except (OSError, TimeoutError):
            self.path.unlink(missing_ok=True)  # left behind by an agent that died
            return
        writer.close()
        raise AgentSocketError(f"another agent is already listening on {self.path}")

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.close()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        self._writers.add(writer)
        connection = ClientConnection(writer)
        passthrough: Passthrough | None = None
        decoder = FrameDecoder(MAX_FRAME, skip_limit=SKIP_LIMIT)
        try:
            while True:
                data = await reader.read(READ_CHUNK)
                if not data:
                    break
                try:
                    frames = decoder.feed(data)
                except FrameTooLarge:
                    writer.write(encode_reply(0, CKR.DATA_LEN_RANGE, []))
                    break
                stop = False
                for payload in frames:
                    if isinstance(payload, OversizedFrame):
                        writer.write(encode_reply(_oversized_id(payload.head), CKR.DATA_LEN_RANGE, []))
                        stop = True
                        break
                    if passthrough is not None or (connection.app is None and is_node_protocol(payload)):
                        passthrough = passthrough or Passthrough(self.agent.pool, writer)
                        agent_metrics.relayed()
                        await passthrough.submit(payload)  # waits while the client has too many in flight
                        continue
                    try:
                        request_id, name, args = decode_request(payload)
                    except BadMessage as exc:
                        if exc.request_id is None:
                            log.warning("closing a connection: %s", exc)
                            stop = True
                            break
                        writer.write(encode_reply(exc.request_id, CKR.ARGUMENTS_BAD, []))
                        continue
                    rv, outputs = await self._call(connection, name, args)
                    writer.write(encode_reply(request_id, rv, outputs))
                    await writer.drain()
                if stop:
                    break
            with contextlib.suppress(ConnectionError, OSError):
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        except asyncio.CancelledError:
            pass
        finally:
            if passthrough is not None:
                await passthrough.close()
            self._writers.discard(writer)
            with contextlib.suppress(Exception):
                writer.close()
            await self._detach(connection)
            if task is not None:
                self._tasks.discard(task)

    async def _call(self, connection: ClientConnection, name: str, args: list[Any]) -> tuple[int, list[Any]]:
        try:
            return await agent_metrics.timed_call(name, dispatch(self.agent, connection, name, args))
        except Exception:  # dispatch already catches; this is the last guard
            log.exception("unexpected error serving %s", name)
            return int(CKR.GENERAL_ERROR), []

    async def _detach(self, connection: ClientConnection) -> None:
        """A connection closed; the application ends with its last one."""
        app = connection.app
        connection.app = None
        if app is None:
            return
        app.connections.discard(connection)
        if not app.connections and not app.finalized:
            try:
                await self.agent.finalize(app)
            except Exception:  # must not break the server
                log.exception("finalizing an application failed")
