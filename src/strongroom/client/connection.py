"""Pipelined connections to one node: :class:`AsyncConnection` and the thread-safe :class:`Connection`.

Each request gets an id and goes out as one frame; a reader task hands each reply
to whoever waits on that id, in whatever order the node answers.

The blocking :class:`Connection` runs an :class:`AsyncConnection` on a private
event-loop thread. It does not share one ``ssl.SSLSocket`` between a reader
thread and writer threads: OpenSSL forbids concurrent use of one SSL object, and
doing it anyway loses replies under TLS 1.3 (session tickets arrive while a
write is in progress).
"""

from __future__ import annotations

import asyncio
import itertools
import ssl
import threading
import time
import weakref
from collections.abc import Coroutine
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, TypeVar

from strongroom.errors import CKR, HsmError
from strongroom.pki.certs import PkiError
from strongroom.transport.batch import WriteBatch
from strongroom.transport.protocol import (
    DEFAULT_MAX_FRAME,
    FrameDecoder,
    OversizedFrame,
    ProtocolError,
    Reply,
    decode_reply,
    encode_request,
)
from strongroom.transport.tls import require_node

T = TypeVar("T")
DEFAULT_TIMEOUT = 60.0
READ_CHUNK = 256 * 1024
NO_ANSWER = "the node did not answer in time"
#: Requests queued in the socket buffer beyond this make the sender wait (:meth:`AsyncConnection.drained`).
WRITE_HIGH_WATER = 1 << 20


class ClientError(HsmError):
    """An error reply from the node, or a failure to reach it."""

    def __init__(self, code: int, message: str) -> None:
        try:
            ckr = CKR(code)
        except ValueError:
            ckr = CKR.VENDOR_DEFINED
        super().__init__(message, ckr)
        self.raw_code = code


class RevisionClock:
    """The highest store revision a client's own writes made, as the nodes' replies said (see the
    protocol's ``revision``). Connections to several nodes share one, so that what a client wrote
    through one node is what it reads through any other."""

    __slots__ = ("revision",)

    def __init__(self) -> None:
        self.revision = 0


class AsyncConnection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, max_frame: int,
                 clock: RevisionClock | None = None) -> None:
        self.clock = clock if clock is not None else RevisionClock()
        self._reader = reader
        self._writer = writer
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Reply]] = {}
        self._decoder = FrameDecoder(max_frame)
        self.closed: str | None = None
        self.unattributed: list[Reply] = []
        #: time.monotonic() when a reply last arrived: a connection that answers is slow, not stuck.
        self.last_reply = 0.0
        self._drain_lock = asyncio.Lock()
        #: Requests of one loop turn leave together (the agent's threads' calls to one node: transport/batch.py).
        self._batch = WriteBatch(writer.transport, asyncio.get_running_loop())
        self._read_task = asyncio.create_task(self._read_loop())

    @classmethod
    async def open(
        cls,
        host: str,
        port: int,
        context: ssl.SSLContext,
        *,
        server_hostname: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        max_frame: int = 4 * DEFAULT_MAX_FRAME,
        clock: RevisionClock | None = None,
    ) -> AsyncConnection:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(
                host, port, ssl=context, server_hostname=server_hostname or host, limit=READ_CHUNK
            )
        try:
            require_node(writer.get_extra_info("ssl_object"))
        except PkiError as exc:
            writer.close()
            raise ClientError(CKR.DEVICE_ERROR, f"{host}:{port}: {exc}") from None
        return cls(reader, writer, max_frame, clock)

    @classmethod
    async def open_unix(cls, path: str, *, timeout: float = DEFAULT_TIMEOUT,
                        max_frame: int = 4 * DEFAULT_MAX_FRAME) -> AsyncConnection:
        """Through the local agent's socket (it relays to a node with its own mTLS identity)."""
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_unix_connection(path, limit=READ_CHUNK)
        return cls(reader, writer, max_frame)

    def send(self, op: str, args: dict[str, Any], session: bytes | None) -> asyncio.Future[Reply]:
        """Queue one request; the returned future resolves to its reply."""
        if self.closed is not None:
            raise ClientError(CKR.DEVICE_REMOVED, f"connection closed: {self.closed}")
        request_id = next(self._ids)
        future: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        self._batch.write(encode_request(request_id, op, session, args, self.clock.revision))
        return future

    def send_raw(self, data: bytes) -> None:
        self._batch.write(data)

    async def drained(self) -> None:
        """Wait while more than :data:`WRITE_HIGH_WATER` bytes of requests wait to be sent: a peer that stops
        reading (a node at its in-flight limit) then slows the senders instead of growing the buffer."""
        if self._batch.buffered <= WRITE_HIGH_WATER:
            return
        self._batch.flush()
        async with self._drain_lock:
            try:
                await self._writer.drain()
            except (ConnectionError, OSError) as exc:
                raise ClientError(CKR.DEVICE_REMOVED, f"connection lost: {exc}") from None

    def expect_reply(self, request_id: int) -> asyncio.Future[Reply]:
        future: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        return future

    async def call(self, op: str, args: dict[str, Any] | None = None, session: bytes | None = None,
                   timeout: float | None = None) -> Any:
        """One request's reply body; an error reply raises ClientError (so does no reply within ``timeout``)."""
        pending = self.send(op, args or {}, session)
        if timeout is None:
            reply = await pending
        else:
            try:
                async with asyncio.timeout(timeout):
                    reply = await pending
            except TimeoutError:
                raise ClientError(CKR.DEVICE_ERROR, NO_ANSWER) from None
        if not reply.ok:
            raise ClientError(reply.code, str(reply.body))
        return reply.body

    async def _read_loop(self) -> None:
        why = "the node closed the connection"
        try:
            while True:
                data = await self._reader.read(READ_CHUNK)
                if not data:
                    break
                self.last_reply = time.monotonic()
                for payload in self._decoder.feed(data):
                    if isinstance(payload, OversizedFrame):  # not with this decoder (no skip limit): it raises
                        raise ProtocolError(f"reply of {payload.size} bytes is above the limit")
                    reply = decode_reply(payload)
                    if reply.revision > self.clock.revision:
                        self.clock.revision = reply.revision
                    future = self._pending.pop(reply.request_id, None)
                    if future is not None and not future.done():
                        future.set_result(reply)
                    elif reply.request_id == 0:
                        self.unattributed.append(reply)
        except ProtocolError as exc:
            why = f"bad reply from node: {exc}"
        except (ConnectionError, ssl.SSLError, OSError) as exc:
            why = f"receive failed: {exc}"
        except asyncio.CancelledError:
            why = "closed by client"
        finally:
            self._fail_all(why)

    def _fail_all(self, why: str) -> None:
        if self.closed is None:
            self.closed = why
        pending, self._pending = self._pending, {}
        for future in pending.values():
            if not future.done():
                future.set_result(Reply(0, int(CKR.DEVICE_REMOVED), f"connection lost: {why}"))

    async def close(self) -> None:
        self._read_task.cancel()
        try:
            await self._read_task
        except asyncio.CancelledError:
            pass
        self._batch.flush()
        self._writer.close()
        try:
            await self._writer.wait_closed()
        except (ConnectionError, ssl.SSLError, OSError):
            pass


class Connection:
    """A blocking, thread-safe facade: many threads may call at once and share the pipeline."""

    def __init__(
        self,
        host: str,
        port: int,
        context: ssl.SSLContext | None,
        *,
        server_hostname: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        max_frame: int = 4 * DEFAULT_MAX_FRAME,
        unix_path: str | None = None,
    ) -> None:
        self._timeout = timeout
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="strongroom-client", daemon=True)
        self._thread.start()
        try:
            if unix_path is not None:
                opening = AsyncConnection.open_unix(unix_path, timeout=timeout, max_frame=max_frame)
            else:
                assert context is not None
                opening = AsyncConnection.open(host, port, context, server_hostname=server_hostname,
                                               timeout=timeout, max_frame=max_frame)
            self._async: AsyncConnection = self._run(opening, timeout + 1)
        except BaseException:
            self._stop_loop()
            raise
        # A client dropped without close() (a script that just exits) still shuts down quietly.
        self._finalizer = weakref.finalize(self, _shutdown, self._loop, self._thread, self._async)

    def _run(self, coro: Any, timeout: float | None = None) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    @property
    def aio(self) -> AsyncConnection:
        """The connection itself; use it only from coroutines given to :meth:`run`."""
        return self._async

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on this connection's event-loop thread and wait for its result. The waits
        inside have their own time limits (the blocking Client's calls pass its timeout)."""
        if self._loop.is_closed():
            coro.close()
            raise ClientError(CKR.DEVICE_REMOVED, f"connection closed: {self.closed}")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def submit(self, op: str, args: dict[str, Any] | None = None, session: bytes | None = None) -> Future[Reply]:
        async def send() -> Reply:
            return await self._async.send(op, args or {}, session)

        return asyncio.run_coroutine_threadsafe(send(), self._loop)

    def send_raw(self, data: bytes) -> None:
        """Send bytes as they are (tests use it to send malformed frames)."""
        self._loop.call_soon_threadsafe(self._async.send_raw, data)

    def expect_reply(self, request_id: int) -> Future[Reply]:
        """Register interest in a reply id the caller sent itself with :meth:`send_raw`."""

        async def wait() -> Reply:
            return await self._async.expect_reply(request_id)

        return asyncio.run_coroutine_threadsafe(wait(), self._loop)

    def call(
        self,
        op: str,
        args: dict[str, Any] | None = None,
        session: bytes | None = None,
        timeout: float | None = None,
    ) -> Any:
        reply = self.wait(self.submit(op, args, session), timeout)
        if not reply.ok:
            raise ClientError(reply.code, str(reply.body))
        return reply.body

    def wait(self, future: Future[Reply], timeout: float | None = None) -> Reply:
        try:
            return future.result(timeout or self._timeout)
        except FutureTimeout:
            future.cancel()
            raise ClientError(CKR.DEVICE_ERROR, NO_ANSWER) from None
        except ClientError:
            raise

    @property
    def unattributed(self) -> list[Reply]:
        return self._async.unattributed

    @property
    def closed(self) -> str | None:
        return self._async.closed

    def close(self) -> None:
        self._finalizer.detach()
        _shutdown(self._loop, self._thread, self._async)

    def _stop_loop(self) -> None:
        _stop(self._loop, self._thread)

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _stop(loop: asyncio.AbstractEventLoop, thread: threading.Thread) -> None:
    if loop.is_closed():
        return
    loop.call_soon_threadsafe(loop.stop)
    thread.join(timeout=5)
    loop.close()


def _shutdown(loop: asyncio.AbstractEventLoop, thread: threading.Thread, connection: AsyncConnection) -> None:
    if loop.is_closed():
        return
    try:
        asyncio.run_coroutine_threadsafe(connection.close(), loop).result(5)
    except (FutureTimeout, RuntimeError):
        pass
    _stop(loop, thread)
