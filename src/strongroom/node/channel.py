"""The private channel between a node's supervisor and each of its worker processes.

One ``socketpair`` per worker, made before the fork. The supervisor is the one place of a
node that holds the cluster key for the node as a whole: it opens the seal (after the
process hardened itself), receives the key from a peer or from the custodians' shares, and
hands it to every worker over this channel; a worker that made or received the key itself
(``cluster.initialize``) gives it to the supervisor, which hands it to its siblings. Workers
ask the supervisor for the seal's state and forward unseal shares to it.

Messages are msgpack maps, each framed with a 4-byte big-endian length; both ends are
processes of the same node (hardened, not dumpable), and the channel is not reachable from
outside the node. A worker whose channel reaches end-of-file lost its supervisor and stops.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import socket
import struct
from collections.abc import Awaitable, Callable
from typing import Any

import msgpack

log = logging.getLogger(__name__)

_LENGTH = struct.Struct(">I")
#: Messages are small (a key, a share, a status); anything larger is a bug or an attack.
MAX_MESSAGE = 64 * 1024
REQUEST_TIMEOUT = 30.0


class ChannelClosed(Exception):
    """The other end went away."""


def encode(message: dict[str, Any]) -> bytes:
    body = msgpack.packb(message, use_bin_type=True)
    return _LENGTH.pack(len(body)) + body


async def read_message(reader: asyncio.StreamReader) -> dict[str, Any]:
    try:
        header = await reader.readexactly(_LENGTH.size)
        (length,) = _LENGTH.unpack(header)
        if length > MAX_MESSAGE:
            raise ChannelClosed(f"a channel message of {length} bytes (limit {MAX_MESSAGE})")
        body = await reader.readexactly(length)
    except (asyncio.IncompleteReadError, ConnectionError) as exc:
        raise ChannelClosed(str(exc) or "end of file") from None
    message = msgpack.unpackb(body, raw=False, max_bin_len=MAX_MESSAGE, max_str_len=MAX_MESSAGE,
                              max_array_len=1024, max_map_len=1024)
    if not isinstance(message, dict):
        raise ChannelClosed("a channel message is not a map")
    return message


async def open_stream(sock: socket.socket) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    sock.setblocking(False)
    return await asyncio.open_connection(sock=sock, limit=MAX_MESSAGE + _LENGTH.size)


class SupervisorLink:
    """A worker's end: requests to the supervisor, and the key when it arrives.

    ``on_key(cluster_id, key)`` is called for every key the supervisor hands over (the
    bytearray is the callee's to wipe); ``on_lost()`` when the supervisor is gone.
    """

    def __init__(self, sock: socket.socket | None) -> None:
        self._sock = sock
        self._writer: asyncio.StreamWriter | None = None
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._ids = itertools.count(1)
        self._task: asyncio.Task[None] | None = None
        self.on_key: Callable[[str, bytearray], None] = lambda _cluster_id, _key: None
        self.on_lost: Callable[[], Awaitable[None] | None] = lambda: None

    @property
    def attached(self) -> bool:
        return self._sock is not None

    async def start(self) -> None:
        if self._sock is None:
            return
        reader, self._writer = await open_stream(self._sock)
        self._task = asyncio.get_running_loop().create_task(self._read(reader))

    async def _read(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                message = await read_message(reader)
                kind = message.get("t")
                if kind == "key":
                    key = bytearray(message["key"])
                    self.on_key(str(message["cluster_id"]), key)
                elif kind == "reply":
                    future = self._pending.pop(int(message.get("id", 0)), None)
                    if future is not None and not future.done():
                        future.set_result(message)
                else:
                    log.warning("unknown message %r from the supervisor", kind)
        except asyncio.CancelledError:
            raise
        except ChannelClosed as exc:
            log.error("the node's supervisor is gone (%s); this worker stops", exc)
        except Exception:  # a malformed message must not leave the worker half-alive
            log.exception("the channel to the supervisor failed; this worker stops")
        for future in self._pending.values():
            if not future.done():
                future.set_exception(ChannelClosed("the supervisor is gone"))
        result = self.on_lost()
        if result is not None:
            await result

    def send(self, message: dict[str, Any]) -> None:
        if self._writer is None:
            return
        self._writer.write(encode(message))

    async def request(self, kind: str, **fields: Any) -> dict[str, Any]:
        """Ask the supervisor; its reply map (``error`` set when it refused)."""
        if self._writer is None:
            raise ChannelClosed("this worker has no supervisor")
        request_id = next(self._ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        self._writer.write(encode({"t": kind, "id": request_id, **fields}))
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT):
                return await future
        finally:
            self._pending.pop(request_id, None)

    def give_key(self, cluster_id: str, key: bytearray) -> None:
        """This worker made or received the cluster key: the supervisor keeps it for the siblings."""
        self.send({"t": "key", "cluster_id": cluster_id, "key": bytes(key)})

    def forget_key(self) -> None:
        self.send({"t": "forget"})

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._writer is not None:
            self._writer.close()
