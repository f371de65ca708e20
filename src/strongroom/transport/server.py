"""The node's mTLS listener: frames in, replies out, many requests in flight.

The transport knows nothing about operations: it turns frames into
:class:`~strongroom.transport.protocol.Request` objects, hands each to the
``handle`` coroutine as its own task (so replies leave in completion order, not
arrival order), and writes the replies back. It enforces the limits that protect
the node from a peer: frame size, requests in flight per connection (reading
pauses at the limit: back-pressure, nothing is dropped) and connection count.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import socket
import ssl
from collections.abc import Awaitable, Callable
from typing import Any

from cryptography import x509

from strongroom.errors import CKR
from strongroom.transport.protocol import (
    FrameDecoder,
    FrameTooLarge,
    OversizedFrame,
    ProtocolError,
    Request,
    decode_request,
    encode_reply,
)
from strongroom.transport.tls import PeerIdentity, peer_identity

log = logging.getLogger(__name__)


# --- peer identity and the admission hook (hsm join/remove) -------------------------------


@dataclasses.dataclass(frozen=True)
class ConnectionPeer(PeerIdentity):
    """The verified peer certificate of a connection, plus its serial (what revocation names)."""

    serial: int = 0

    @property
    def name(self) -> str:
        return self.common_name or "?"


def connection_peer(ssl_object: Any) -> ConnectionPeer:
    """The :class:`ConnectionPeer` of a completed handshake (``SSLObject`` or ``SSLSocket``)."""
    identity = peer_identity(ssl_object)
    serial = x509.load_der_x509_certificate(ssl_object.getpeercert(binary_form=True)).serial_number
    return ConnectionPeer(**{f.name: getattr(identity, f.name) for f in dataclasses.fields(identity)},
                          serial=serial)


#: Called with the :class:`ConnectionPeer` of each accepted connection; a reason string closes it.
AdmitHook = Callable[[ConnectionPeer], Awaitable[str | None]]
#: A slow or failing admission check lets the connection in (and logs): the store being down must
#: not turn into refusing every client. Operations that matter (hsm.clone_key) check again, strictly.
ADMIT_TIMEOUT = 2.0

# The handler receives the ConnectionPeer (or "?" when there is no TLS peer).
RequestHandler = Callable[[Request, int, Any], Awaitable[tuple[int, Any]]]
#: Called with a connection's id once it ended and its requests completed (its logins end with it).
CloseHook = Callable[[int], Awaitable[None]]
READ_CHUNK = 256 * 1024
#: Replies queued in the socket buffer beyond this make the writer wait for the peer.
WRITE_HIGH_WATER = 1 << 20
#: Frames above the limit but below this are skipped (an error names the request); above it the
#: connection is closed, as the peer is not speaking the protocol.
SKIP_LIMIT = 256 << 20


class NodeListener:
    def __init__(
        self,
        handle: RequestHandler,
        *,
        max_frame: int,
        max_in_flight: int,
        max_connections: int,
        admit: AdmitHook | None = None,
        on_close: CloseHook | None = None,
    ) -> None:
        self._handle = handle
        self._admit = admit
        self._on_close = on_close
        self._max_frame = max_frame
        self._max_in_flight = max_in_flight
        self._max_connections = max_connections
        self._connection_ids = itertools.count(1)
        self._open = 0
        self._server: asyncio.base_events.Server | None = None

    async def start(self, sock: socket.socket, context: ssl.SSLContext) -> None:
        self._server = await asyncio.start_server(
            self._serve_connection, sock=sock, ssl=context, ssl_handshake_timeout=10, limit=READ_CHUNK
        )

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connection_id = next(self._connection_ids)
        if self._open >= self._max_connections:
            log.warning("refusing connection %d: %d connections open", connection_id, self._open)
            writer.close()
            return
        self._open += 1
        ssl_object = writer.get_extra_info("ssl_object")
        peer: ConnectionPeer | str = connection_peer(ssl_object) if ssl_object is not None else "?"
        connection = _Connection(self, connection_id, peer, writer)
        try:
            if isinstance(peer, ConnectionPeer) and not await self._admitted(connection_id, peer):
                return
            await connection.run(reader)
        except asyncio.CancelledError:
            # Only the end of the worker's loop cancels a connection task; ending quietly keeps
            # asyncio's stream callback from logging a traceback for every connection still open.
            return
        finally:
            self._open -= 1
            await connection.finish()
            if self._on_close is not None:
                try:
                    await self._on_close(connection_id)
                except Exception:  # the hook must not leave the connection task with an error
                    log.exception("closing connection %d: the close hook failed", connection_id)


    async def _admitted(self, connection_id: int, peer: ConnectionPeer) -> bool:
        if self._admit is None:
            return True
        try:
            async with asyncio.timeout(ADMIT_TIMEOUT):
                reason = await self._admit(peer)
        except Exception as exc:  # noqa: BLE001 - see ADMIT_TIMEOUT
            log.warning("connection %d from %s: admission check failed (%s); admitting",
                        connection_id, peer.name, exc or type(exc).__name__)
            return True
        if reason:
            log.warning("closing connection %d from %s (serial %x): %s", connection_id, peer.name, peer.serial,
                        reason)
            return False
        return True


class _Connection:
    def __init__(self, listener: NodeListener, connection_id: int, peer: ConnectionPeer | str,
                 writer: asyncio.StreamWriter) -> None:
        self._listener = listener
        self.connection_id = connection_id
        self.identity = peer
        self.peer = peer.name if isinstance(peer, ConnectionPeer) else peer
        self._writer = writer
        self._in_flight = asyncio.Semaphore(listener._max_in_flight)
        self._tasks: set[asyncio.Task[None]] = set()
        self._drain_lock = asyncio.Lock()

    async def run(self, reader: asyncio.StreamReader) -> None:
        decoder = FrameDecoder(self._listener._max_frame, skip_limit=SKIP_LIMIT)
        while True:
            try:
                data = await reader.read(READ_CHUNK)
            except (ConnectionError, ssl.SSLError, OSError) as exc:
                log.info("connection %d from %s: %s", self.connection_id, self.peer, exc)
                return
            if not data:
                return
            try:
                payloads = decoder.feed(data)
            except FrameTooLarge as exc:
                # The stream cannot be resynchronised past a frame we refuse to read: say why, then close.
                await self._send(0, exc.code, str(exc))
                return
            for payload in payloads:
                if isinstance(payload, OversizedFrame):
                    await self._send(payload.request_id(), CKR.DATA_LEN_RANGE,
                                     f"request of {payload.size} bytes exceeds the node's limit of "
                                     f"{self._listener._max_frame} bytes; send large data in parts")
                    continue
                await self._in_flight.acquire()
                try:
                    request = decode_request(payload)
                except ProtocolError as exc:
                    self._in_flight.release()
                    await self._send(exc.request_id or 0, exc.code, str(exc))
                    continue
                task = asyncio.create_task(self._serve_request(request))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def _serve_request(self, request: Request) -> None:
        try:
            code, body = await self._listener._handle(request, self.connection_id, self.identity)
            await self._send(request.request_id, code, body)
        finally:
            self._in_flight.release()

    async def _send(self, request_id: int, code: int, body: Any) -> None:
        try:
            payload = encode_reply(request_id, code, body)
        except (TypeError, ValueError, OverflowError):
            log.exception("reply to request %d is not encodable", request_id)
            payload = encode_reply(request_id, CKR.GENERAL_ERROR, "internal error: reply not encodable")
        if self._writer.is_closing():
            return
        self._writer.write(payload)
        if self._writer.transport.get_write_buffer_size() > WRITE_HIGH_WATER:
            async with self._drain_lock:
                try:
                    await self._writer.drain()
                except (ConnectionError, OSError):
                    pass

    async def finish(self) -> None:
        # Requests still running complete (their effects are committed) but nobody hears the reply.
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        self._writer.close()
        try:
            await self._writer.wait_closed()
        except (ConnectionError, ssl.SSLError, OSError):
            pass
