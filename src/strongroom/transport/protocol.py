"""The wire protocol between clients (agent, CLI, SDK) and a node.

A connection carries **frames**: a 4-byte big-endian length followed by that many
bytes of msgpack. Each frame is one message; both directions use the same
framing, and a connection carries many requests in flight whose replies may come
back in any order (they are matched by request id).

Messages are msgpack arrays, versioned by their first element::

    request:  [PROTOCOL_VERSION, request_id, op, session, args]           or ... args, revision]
    reply:    [PROTOCOL_VERSION, request_id, code, body]                  or ... body, revision]

``request_id`` is an unsigned 64-bit integer chosen by the client; ``op`` a string
naming an operation of the dispatch table; ``session`` ``None`` or the bytes token
that ``session.login`` returned; ``args`` a map of string keys. ``code`` is a
PKCS#11 return code (0 = CKR_OK); ``body`` is the result when ``code`` is 0 and
a human-readable message string otherwise.

``revision`` (optional, an unsigned integer) is the read-your-writes token: a node's
reply carries the store revision its writes for that request made, the client keeps
the highest it saw and sends it with its next requests (to any node), and a node
whose object cache is behind it catches up before it uses a key. Without it a node
serves keys from its cache as its store watch keeps it.

Arrays rather than maps keep the per-call overhead small: for ECDSA and AES the
framing and parsing is most of the cost of a call.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

import msgpack

from strongroom.errors import CKR

PROTOCOL_VERSION = 1
HEADER = struct.Struct(">I")
#: Default largest frame a peer accepts (header excluded). Configurable per node.
DEFAULT_MAX_FRAME = 2 << 20
MAX_REQUEST_ID = (1 << 64) - 1
MAX_OP_LENGTH = 64
MAX_SESSION_TOKEN = 64
MAX_REVISION = (1 << 63) - 1


class ProtocolError(Exception):
    """A message that cannot be understood; ``request_id`` is set when it could be read."""

    def __init__(self, message: str, code: CKR = CKR.ARGUMENTS_BAD, request_id: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.request_id = request_id


class FrameTooLarge(ProtocolError):
    """The peer announced a frame above the limit; the stream cannot be resynchronised."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"frame of {size} bytes exceeds the limit of {limit} bytes", CKR.DATA_LEN_RANGE)
        self.size = size
        self.limit = limit


@dataclass(frozen=True, slots=True)
class Request:
    request_id: int
    op: str
    session: bytes | None
    args: dict[str, Any]
    #: The client's read-your-writes token (0: none).
    revision: int = 0


@dataclass(frozen=True, slots=True)
class Reply:
    request_id: int
    code: int
    body: Any
    #: The store revision the request's writes made (0: it wrote nothing).
    revision: int = 0

    @property
    def ok(self) -> bool:
        return self.code == CKR.OK


@dataclass(frozen=True, slots=True)
class OversizedFrame:
    """A frame above the limit that was skipped without being buffered; ``head`` is its start."""

    size: int
    head: bytes

    def request_id(self) -> int:
        """The request id, read from the first bytes of the message, or 0 if they don't show one."""
        unpacker = msgpack.Unpacker(raw=False)
        unpacker.feed(self.head)
        try:
            if unpacker.read_array_header() not in (5, 6):  # 6: with the client's revision
                return 0
            unpacker.unpack()  # version
            request_id = unpacker.unpack()
        except Exception:  # noqa: BLE001 - any garbage means "unknown id"
            return 0
        return request_id if isinstance(request_id, int) and 0 <= request_id <= MAX_REQUEST_ID else 0


class FrameDecoder:
    """Splits a byte stream into frame payloads; feed it whatever the socket returned.

    A frame above ``max_frame`` but at most ``skip_limit`` is skipped as it streams by
    (never buffered) and reported as an :class:`OversizedFrame`, so the peer gets an
    error naming its request and the connection survives; above ``skip_limit`` the
    stream is given up with :class:`FrameTooLarge`.
    """

    HEAD_BYTES = 32

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME, skip_limit: int = 0) -> None:
        self._max_frame = max_frame
        self._skip_limit = skip_limit
        self._buffer = bytearray()
        self._skipping = 0  # bytes of an oversized frame still to discard
        self._skip_size = 0
        self._skip_head = bytearray()

    def _skip(self, data: bytes | bytearray) -> tuple[OversizedFrame | None, int]:
        """Consume the oversized frame in progress; returns (finished frame, bytes consumed)."""
        take = min(self._skipping, len(data))
        room = self.HEAD_BYTES - len(self._skip_head)
        if room > 0:
            self._skip_head += data[: min(room, take)]
        self._skipping -= take
        if self._skipping:
            return None, take
        return OversizedFrame(self._skip_size, bytes(self._skip_head)), take

    def feed(self, data: bytes) -> list[bytes | OversizedFrame]:
        """Return every complete payload now available; raise :class:`FrameTooLarge` early.

        The size check happens as soon as a header is complete, so an oversized
        frame is refused before its body is buffered.
        """
        frames: list[bytes | OversizedFrame] = []
        if self._skipping:
            done, used = self._skip(data)
            data = data[used:]
            if done is None:
                return frames
            frames.append(done)
        self._buffer += data
        view = self._buffer
        offset = 0
        while len(view) - offset >= HEADER.size:
            (size,) = HEADER.unpack_from(view, offset)
            if size > self._max_frame:
                if size > self._skip_limit:
                    raise FrameTooLarge(size, self._max_frame)
                self._skipping, self._skip_size, self._skip_head = size, size, bytearray()
                offset += HEADER.size
                done, used = self._skip(view[offset:])
                offset += used
                if done is None:
                    break
                frames.append(done)
                continue
            end = offset + HEADER.size + size
            if len(view) < end:
                break
            frames.append(bytes(view[offset + HEADER.size : end]))
            offset = end
        if offset:
            del self._buffer[:offset]
        return frames

    @property
    def pending(self) -> int:
        return len(self._buffer)


def frame(payload: bytes) -> bytes:
    return HEADER.pack(len(payload)) + payload


#: Arrays and maps one message may hold. An empty array is one byte on the wire and ~60 bytes as a
#: Python list: without a budget a 4 MiB frame of them costs hundreds of MiB before any check runs.
MAX_CONTAINERS = 65536
#: Elements of one array or map (PKCS#11 templates and object lists stay far below).
MAX_CONTAINER_LEN = 65536


class _Budget:
    """Counts the containers msgpack builds and stops the decoder when the budget is spent."""

    def __init__(self, limit: int) -> None:
        self.left = limit

    def spend(self, value: Any) -> Any:
        self.left -= 1
        if self.left < 0:
            raise ValueError("too many arrays and maps in one message")
        return value


def unpack_limited(payload: bytes, max_containers: int = MAX_CONTAINERS) -> Any:
    """msgpack-decode ``payload`` from the network with limits on sizes and on the number of containers.

    Raises ValueError (and msgpack's own errors) for anything that is not a small, well-formed message.
    """
    budget = _Budget(max_containers)
    # strict_map_key keeps map keys to str/bytes; raw=False decodes strings as UTF-8.
    return msgpack.unpackb(payload, raw=False, strict_map_key=True, use_list=True, list_hook=budget.spend,
                           object_hook=budget.spend, max_array_len=MAX_CONTAINER_LEN,
                           max_map_len=MAX_CONTAINER_LEN)


def _unpack(payload: bytes) -> Any:
    try:
        return unpack_limited(payload)
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
        raise ProtocolError(f"undecodable message: {exc.__class__.__name__}: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - msgpack raises a few other types on garbage (e.g. TypeError)
        raise ProtocolError(f"undecodable message: {exc.__class__.__name__}") from None


def encode_request(request_id: int, op: str, session: bytes | None, args: dict[str, Any], revision: int = 0) -> bytes:
    message = [PROTOCOL_VERSION, request_id, op, session, args]
    if revision:
        message.append(revision)
    return frame(msgpack.packb(message, use_bin_type=True))


def decode_request(payload: bytes) -> Request:
    message = _unpack(payload)
    if not isinstance(message, list) or len(message) not in (5, 6):
        raise ProtocolError("a request is an array of 5 elements (6 with a revision)")
    version, request_id, op, session, args = message[:5]
    revision = message[5] if len(message) == 6 else 0
    if not isinstance(request_id, int) or isinstance(request_id, bool) or not 0 <= request_id <= MAX_REQUEST_ID:
        raise ProtocolError("request id must be an unsigned 64-bit integer")
    if type(version) is not int or version != PROTOCOL_VERSION:
        raise ProtocolError(
            f"protocol version {version!r} is not supported (this node speaks {PROTOCOL_VERSION})",
            request_id=request_id,
        )
    if not isinstance(op, str) or not 0 < len(op) <= MAX_OP_LENGTH:
        raise ProtocolError("operation name must be a non-empty string", request_id=request_id)
    if session is not None and (not isinstance(session, bytes) or len(session) > MAX_SESSION_TOKEN):
        raise ProtocolError("session must be null or a token of bytes", request_id=request_id)
    if not isinstance(args, dict) or not all(isinstance(key, str) for key in args):
        raise ProtocolError("arguments must be a map with string keys", request_id=request_id)
    if type(revision) is not int or not 0 <= revision <= MAX_REVISION:
        raise ProtocolError("the revision must be an unsigned 63-bit integer", request_id=request_id)
    return Request(request_id, op, session, args, revision)


def encode_reply(request_id: int, code: int, body: Any, revision: int = 0) -> bytes:
    message = [PROTOCOL_VERSION, request_id, int(code), body]
    if revision:
        message.append(revision)
    return frame(msgpack.packb(message, use_bin_type=True))


def decode_reply(payload: bytes) -> Reply:
    message = _unpack(payload)
    if not isinstance(message, list) or len(message) not in (4, 5) or message[0] != PROTOCOL_VERSION:
        raise ProtocolError("a reply is an array of 4 elements (5 with a revision) of protocol version 1")
    _, request_id, code, body = message[:4]
    revision = message[4] if len(message) == 5 else 0
    if not isinstance(request_id, int) or not isinstance(code, int):
        raise ProtocolError("reply id and code must be integers")
    if type(revision) is not int or not 0 <= revision <= MAX_REVISION:
        raise ProtocolError("the reply's revision must be an unsigned 63-bit integer")
    return Reply(request_id, code, body, revision)
