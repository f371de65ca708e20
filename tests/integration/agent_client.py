"""A small client of the agent protocol (docs/agent-protocol.md): the tests' stand-in for the C module.

:class:`AgentApp` is one application: an ``app_id`` and a pool of connections, each
starting with the C_Initialize hello. It encodes templates the way the module does
(CK_ULONG in the application's layout, CK_BBOOL one byte, nested templates for array
attributes) and returns ``(rv, outputs)`` as the agent answers.

Like the module, it answers CKR_DEVICE_REMOVED itself when the agent connection breaks
and CKR_CRYPTOKI_NOT_INITIALIZED until the application initializes again.
"""

from __future__ import annotations

import itertools
import os
import socket
import struct
from typing import Any

import msgpack

CKR_OK = 0
CKR_DEVICE_REMOVED = 0x32
CKR_CRYPTOKI_NOT_INITIALIZED = 0x190
HEADER = struct.Struct(">I")


class AgentConnection:
    def __init__(self, path: str, timeout: float = 120.0) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(path)
        self._ids = itertools.count(1)

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def request(self, function: str, args: list[Any], request_id: int | None = None) -> tuple[int, int, Any]:
        request_id = next(self._ids) if request_id is None else request_id
        payload = msgpack.packb([1, request_id, function, args], use_bin_type=True)
        self.sock.sendall(HEADER.pack(len(payload)) + payload)
        return self.read_reply()

    def read_reply(self) -> tuple[int, int, Any]:
        (size,) = HEADER.unpack(self._read(HEADER.size))
        message = msgpack.unpackb(self._read(size), raw=False, strict_map_key=False)
        version, reply_id, rv, outputs = message
        assert version == 1
        return reply_id, rv, outputs

    def call(self, function: str, *args: Any) -> tuple[int, Any]:
        request_id = next(self._ids)
        reply_id, rv, outputs = self.request(function, list(args), request_id)
        assert reply_id == request_id, (reply_id, request_id)
        return rv, outputs

    def _read(self, n: int) -> bytes:
        chunks = []
        while n:
            chunk = self.sock.recv(n)
            if not chunk:
                raise ConnectionError("the agent closed the connection")
            chunks.append(chunk)
            n -= len(chunk)
        return b"".join(chunks)

    def close(self) -> None:
        self.sock.close()


class AgentApp:
    def __init__(self, path: str, *, ulong_size: int = 8, little_endian: bool = True,
                 app_id: bytes | None = None) -> None:
        self.path = path
        self.ulong_size = ulong_size
        self.little_endian = little_endian
        self.app_id = app_id or os.urandom(16)
        self.connections: dict[int, AgentConnection] = {}
        self.broken = False

    # --- plumbing ---------------------------------------------------------------------

    def connection(self, index: int = 0) -> AgentConnection:
        conn = self.connections.get(index)
        if conn is None:
            conn = AgentConnection(self.path)
            rv, _ = conn.call("C_Initialize", self.app_id, os.getpid(), self.ulong_size, self.little_endian)
            assert rv == CKR_OK, hex(rv)
            self.connections[index] = conn
        return conn

    def call(self, function: str, *args: Any, conn: int = 0) -> tuple[int, Any]:
        if self.broken:
            return CKR_CRYPTOKI_NOT_INITIALIZED, []
        try:
            return self.connection(conn).call(function, *args)
        except (ConnectionError, OSError):
            # What the module does when the agent goes away: the call fails with
            # DEVICE_REMOVED and the library must be initialized again.
            self.broken = True
            self.close()
            return CKR_DEVICE_REMOVED, []

    def ok(self, function: str, *args: Any, conn: int = 0) -> Any:
        rv, outputs = self.call(function, *args, conn=conn)
        assert rv == CKR_OK, f"{function}: rv {rv:#x}"
        return outputs

    def reinitialize(self) -> None:
        """C_Finalize + C_Initialize after the agent went away: a new app_id, new connections."""
        self.close()
        self.app_id = os.urandom(16)
        self.broken = False

    def close(self) -> None:
        for conn in self.connections.values():
            conn.close()
        self.connections.clear()

    # --- encodings ------------------------------------------------------------------------

    @property
    def byteorder(self) -> str:
        return "little" if self.little_endian else "big"

    def ulong(self, value: int) -> bytes:
        return value.to_bytes(self.ulong_size, self.byteorder)

    def from_ulong(self, raw: bytes) -> int:
        return int.from_bytes(raw, self.byteorder)

    def value(self, value: Any) -> Any:
        if isinstance(value, bool):
            return b"\x01" if value else b"\x00"
        if isinstance(value, int):
            return self.ulong(value)
        if isinstance(value, (bytes, bytearray)):
            return bytes(value)
        if isinstance(value, dict):
            return self.template(value)
        if isinstance(value, list):
            return b"".join(self.ulong(v) for v in value)
        raise TypeError(value)

    def template(self, attributes: dict[int, Any]) -> list[list[Any]]:
        return [[int(k), self.value(v)] for k, v in attributes.items()]

    # --- conveniences ------------------------------------------------------------------------

    def open_session(self, rw: bool = True, slot: int = 0) -> int:
        flags = 0x4 | (0x2 if rw else 0)
        return self.ok("C_OpenSession", slot, flags)[0]

    def login(self, session: int, pin: str, user_type: int = 1) -> int:
        rv, _ = self.call("C_Login", session, user_type, pin.encode())
        return rv
