"""A thread-safe, pipelined connection to one node.

Many threads may call at once: each request gets an id, goes out as one frame,
and a reader thread hands each reply to the caller waiting on that id, in
whatever order the node answers.
"""

from __future__ import annotations

import itertools
import socket
import ssl
import threading
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

from strongroom.errors import CKR, HsmError
from strongroom.transport.protocol import (
    DEFAULT_MAX_FRAME,
    FrameDecoder,
    ProtocolError,
    Reply,
    decode_reply,
    encode_request,
)

DEFAULT_TIMEOUT = 60.0


class ClientError(HsmError):
    """An error reply from the node, or a failure to reach it."""

    def __init__(self, code: int, message: str) -> None:
        try:
            ckr = CKR(code)
        except ValueError:
            ckr = CKR.VENDOR_DEFINED
        super().__init__(message, ckr)
        self.raw_code = code


class Connection:
    def __init__(
        self,
        host: str,
        port: int,
        context: ssl.SSLContext,
        *,
        server_hostname: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        max_frame: int = 4 * DEFAULT_MAX_FRAME,
    ) -> None:
        self._timeout = timeout
        raw = socket.create_connection((host, port), timeout=timeout)
        try:
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._sock = context.wrap_socket(raw, server_hostname=server_hostname or host)
        except BaseException:
            raw.close()
            raise
        self._sock.settimeout(None)
        self._ids = itertools.count(1)
        self._pending: dict[int, Future[Reply]] = {}
        self._lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._decoder = FrameDecoder(max_frame)
        self._closed: str | None = None
        self._reader = threading.Thread(target=self._read_loop, name="strongroom-reader", daemon=True)
        self._reader.start()

    def submit(self, op: str, args: dict[str, Any] | None = None, session: bytes | None = None) -> Future[Reply]:
        future: Future[Reply] = Future()
        with self._lock:
            if self._closed is not None:
                raise ClientError(CKR.DEVICE_REMOVED, f"connection closed: {self._closed}")
            request_id = next(self._ids)
            self._pending[request_id] = future
        frame = encode_request(request_id, op, session, args or {})
        try:
            with self._send_lock:
                self._sock.sendall(frame)
        except OSError as exc:
            self._fail_all(f"send failed: {exc}")
        return future

    def send_raw(self, data: bytes) -> None:
        """Send bytes as they are (tests use it to send malformed frames)."""
        with self._send_lock:
            self._sock.sendall(data)

    def expect_reply(self, request_id: int) -> Future[Reply]:
        """Register interest in a reply id the caller sent itself with :meth:`send_raw`."""
        future: Future[Reply] = Future()
        with self._lock:
            self._pending[request_id] = future
        return future

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
            raise ClientError(CKR.DEVICE_ERROR, "the node did not answer in time") from None

    def _read_loop(self) -> None:
        while True:
            try:
                data = self._sock.recv(256 * 1024)
            except (OSError, ValueError) as exc:
                self._fail_all(f"receive failed: {exc}")
                return
            if not data:
                self._fail_all("the node closed the connection")
                return
            try:
                for payload in self._decoder.feed(data):
                    self._deliver(decode_reply(payload))
            except ProtocolError as exc:
                self._fail_all(f"bad reply from node: {exc}")
                return

    def _deliver(self, reply: Reply) -> None:
        with self._lock:
            future = self._pending.pop(reply.request_id, None)
        if future is not None:
            future.set_result(reply)
        elif reply.request_id == 0:
            # A complaint about a frame the node could not attribute to a request.
            with self._lock:
                self.unattributed.append(reply)

    unattributed: list[Reply] = []

    def _fail_all(self, why: str) -> None:
        with self._lock:
            if self._closed is None:
                self._closed = why
            pending, self._pending = self._pending, {}
        for future in pending.values():
            if not future.done():
                future.set_result(Reply(0, int(CKR.DEVICE_REMOVED), f"connection lost: {why}"))

    @property
    def closed(self) -> str | None:
        return self._closed

    def close(self) -> None:
        with self._lock:
            if self._closed is None:
                self._closed = "closed by client"
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._sock.close()
        self._reader.join(timeout=5)

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
