"""Frames written in one event-loop turn leave together: one TLS record and one ``send`` for all.

A pipelined connection (the agent's to a node) carries many requests and replies at once; written
one by one, each costs its own TLS record (encryption call, header, MAC) and its own system call,
and wakes the peer once per frame. :class:`WriteBatch` gathers what is written during one turn of
the event loop and hands it to the transport at the start of the next (``call_soon``), so a turn
that produced eight replies sends one buffer. A frame never waits longer than the callbacks that
were already ready when it was written.
"""

from __future__ import annotations

import asyncio


class WriteBatch:
    """Buffered writes to ``transport``, flushed once per event-loop turn."""

    __slots__ = ("_transport", "_loop", "_parts", "_size")

    def __init__(self, transport: asyncio.WriteTransport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._parts: list[bytes] = []
        self._size = 0

    def write(self, data: bytes) -> None:
        if not self._parts:
            self._loop.call_soon(self.flush)
        self._parts.append(data)
        self._size += len(data)

    def flush(self) -> None:
        """Hand everything buffered to the transport now (also before closing it)."""
        parts, self._parts, self._size = self._parts, [], 0
        if not parts or self._transport.is_closing():
            return
        self._transport.write(parts[0] if len(parts) == 1 else b"".join(parts))

    @property
    def buffered(self) -> int:
        """Bytes not yet handed over plus what the transport still holds (for flow control)."""
        return self._size + self._transport.get_write_buffer_size()
