"""The node's mTLS listener: frames in, replies out, many requests in flight.

The transport knows nothing about operations: it turns frames into
:class:`~strongroom.transport.protocol.Request` objects, hands each to the
``handle`` coroutine as its own task (so replies leave in completion order, not
arrival order), and writes the replies back. It enforces the limits that protect
the node from a peer: frame size, requests in flight per connection (reading
pauses at the limit: back-pressure, nothing is dropped) and connection count.

Before a peer has a certificate, it costs as little as it can. A TLS server connection in
asyncio holds a 256 KiB buffer and OpenSSL's state from the moment it exists, so the
listener accepts plain TCP first and starts TLS only when the peer's first bytes arrive
(:data:`FIRST_BYTES_SECONDS`); a connection that says nothing is a socket and a small task.
At most :data:`MAX_HANDSHAKES` handshakes run at once per worker, :data:`MAX_HANDSHAKES_PER_SOURCE`
per source address; more wait their turn (no refusal: a real client behind the same address
is served once a slot frees) for at most :data:`HANDSHAKE_WAIT_SECONDS`. At most
:data:`MAX_WAITING` connections per worker may wait like that; beyond it new ones are closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import dataclasses
import itertools
import logging
import socket
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from cryptography import x509

from strongroom.errors import CKR
from strongroom.store.base import trace_writes
from strongroom.transport.batch import WriteBatch
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
#: How long a new connection may stay silent before its ClientHello (it costs no TLS state meanwhile).
FIRST_BYTES_SECONDS = 10.0
#: TLS handshakes in progress at once, per worker and per source address (each holds ~300 KiB).
MAX_HANDSHAKES = 64
MAX_HANDSHAKES_PER_SOURCE = 8
#: How long a connection whose peer spoke waits for a handshake slot; and how long the handshake may take.
HANDSHAKE_WAIT_SECONDS = 10.0
HANDSHAKE_SECONDS = 10.0
#: Connections per worker accepted but not yet through their handshake (silent ones included).
MAX_WAITING = 8192
#: Handshakes after which, once none is left waiting, the worker's heap is trimmed (:func:`_trim_heap`).
TRIM_AFTER_HANDSHAKES = 32


class _HandshakeSlots:
    """At most ``total`` handshakes at once, ``per_source`` of them from one address; the rest wait in line."""

    def __init__(self, total: int, per_source: int) -> None:
        self._total = asyncio.Semaphore(total)
        self._per_source = per_source
        self._sources: dict[str, tuple[asyncio.Semaphore, int]] = {}

    @contextlib.asynccontextmanager
    async def take(self, source: str) -> AsyncIterator[None]:
        semaphore, users = self._sources.get(source) or (asyncio.Semaphore(self._per_source), 0)
        self._sources[source] = (semaphore, users + 1)
        try:
            async with semaphore, self._total:
                yield
        finally:
            semaphore, users = self._sources[source]
            if users <= 1:
                del self._sources[source]  # forgotten once nobody from there waits or shakes hands
            else:
                self._sources[source] = (semaphore, users - 1)


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
        #: Accepted connections not through their handshake yet.
        self._waiting = 0
        self._slots = _HandshakeSlots(MAX_HANDSHAKES, MAX_HANDSHAKES_PER_SOURCE)
        self._accepting: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._refused_logged = 0.0
        #: Handshakes started since the heap was last trimmed.
        self._handshakes = 0

    async def start(self, sock: socket.socket, context: ssl.SSLContext) -> None:
        sock.setblocking(False)
        self._accepting = asyncio.get_running_loop().create_task(self._accept(sock, context))

    async def close(self) -> None:
        if self._accepting is not None:
            self._accepting.cancel()
            await asyncio.gather(self._accepting, return_exceptions=True)
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _accept(self, sock: socket.socket, context: ssl.SSLContext) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, address = await loop.sock_accept(sock)
            except OSError as exc:  # EMFILE and the like: say so, breathe, go on
                self._say_refused(f"accept failed: {exc}")
                await asyncio.sleep(0.1)
                continue
            if self._waiting >= MAX_WAITING:
                conn.close()
                self._say_refused(f"{self._waiting} connections are waiting for their handshake")
                continue
            self._waiting += 1
            task = loop.create_task(self._handshake(conn, address, context))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _say_refused(self, why: str) -> None:
        now = time.monotonic()
        if now - self._refused_logged > 10:  # once in a while, not once per connection of a flood
            self._refused_logged = now
            log.warning("refusing new connections: %s", why)

    async def _handshake(self, conn: socket.socket, address: Any, context: ssl.SSLContext) -> None:
        """TLS once the peer speaks and a slot is free; then serve the connection."""
        loop = asyncio.get_running_loop()
        source = str(address[0]) if isinstance(address, tuple) and address else "?"
        streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        try:
            conn.setblocking(False)
            if not await _readable(loop, conn, FIRST_BYTES_SECONDS):
                return
            # Gone already, or not TLS (a handshake record starts with 22): no TLS state for it at all.
            first = conn.recv(1, socket.MSG_PEEK)
            if first != b"\x16":
                return
            async with asyncio.timeout(HANDSHAKE_WAIT_SECONDS + HANDSHAKE_SECONDS):
                async with self._slots.take(source):
                    if conn.recv(1, socket.MSG_PEEK) != b"\x16":
                        return  # it went away while it waited for its turn
                    self._handshakes += 1
                    reader = asyncio.StreamReader(limit=READ_CHUNK, loop=loop)
                    protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
                    transport, _ = await loop.connect_accepted_socket(
                        lambda: protocol, sock=conn, ssl=context, ssl_handshake_timeout=HANDSHAKE_SECONDS)
                    streams = reader, asyncio.StreamWriter(transport, protocol, reader, loop)
        except (OSError, TimeoutError) as exc:
            log.debug("connection from %s ended before its handshake: %s", source, exc)
        finally:
            self._waiting -= 1
            if streams is None:
                conn.close()
            if self._waiting == 0 and self._handshakes >= TRIM_AFTER_HANDSHAKES:
                # A burst is over: hand the TLS state it left in the heap back to the system.
                self._handshakes = 0
                _trim_heap()
        if streams is not None:
            await self._serve_connection(*streams)

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
        self._batch = WriteBatch(writer.transport, asyncio.get_running_loop())
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
            written = trace_writes()  # this task's: the revision the request's writes made goes with the reply
            code, body = await self._listener._handle(request, self.connection_id, self.identity)
            await self._send(request.request_id, code, body, written.revision)
        finally:
            self._in_flight.release()

    async def _send(self, request_id: int, code: int, body: Any, revision: int = 0) -> None:
        try:
            payload = encode_reply(request_id, code, body, revision)
        except (TypeError, ValueError, OverflowError):
            log.exception("reply to request %d is not encodable", request_id)
            payload = encode_reply(request_id, CKR.GENERAL_ERROR, "internal error: reply not encodable")
        if self._writer.is_closing():
            return
        self._batch.write(payload)  # replies of one loop turn leave in one TLS record (transport/batch.py)
        if self._batch.buffered > WRITE_HIGH_WATER:
            self._batch.flush()
            async with self._drain_lock:
                try:
                    await self._writer.drain()
                except (ConnectionError, OSError):
                    pass

    async def finish(self) -> None:
        # Requests still running complete (their effects are committed) but nobody hears the reply.
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        self._batch.flush()
        self._writer.close()
        try:
            await self._writer.wait_closed()
        except (ConnectionError, ssl.SSLError, OSError):
            pass


async def _readable(loop: asyncio.AbstractEventLoop, conn: socket.socket, timeout: float) -> bool:
    """Whether ``conn`` has something to read (or hit end-of-file) within ``timeout`` seconds."""
    ready: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    fd = conn.fileno()
    loop.add_reader(fd, wake)
    try:
        async with asyncio.timeout(timeout):
            await ready
        return True
    except TimeoutError:
        return False
    finally:
        loop.remove_reader(fd)


def _trim_heap() -> None:
    """glibc's malloc_trim: free pages inside the heap go back to the system (OpenSSL's per-connection state
    is many small blocks, which a plain free keeps). A no-op where there is no glibc."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass
