"""Oversized frames below the skip limit stream past without being buffered."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from strongroom.transport.protocol import FrameDecoder, FrameTooLarge, OversizedFrame, encode_request


def _chunks(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    pieces, start = [], 0
    for point in points + [len(data)]:
        pieces.append(data[start:point])
        start = point
    return pieces


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=10**7), max_size=12))
def test_oversized_frame_is_reported_with_its_id_and_the_stream_stays_in_sync(cuts: list[int]) -> None:
    small = encode_request(1, "node.status", None, {})
    big = encode_request(424242, "crypto.sign", None, {"data": b"z" * 5000})
    stream = small + big + small
    decoder = FrameDecoder(max_frame=1000, skip_limit=100_000)
    out: list[bytes | OversizedFrame] = []
    for piece in _chunks(stream, cuts):
        out += decoder.feed(piece)
    assert out[0] == small[4:] and out[2] == small[4:]
    assert isinstance(out[1], OversizedFrame) and out[1].request_id() == 424242
    assert out[1].size == len(big) - 4 and decoder.pending == 0


def test_beyond_the_skip_limit_the_stream_is_given_up() -> None:
    decoder = FrameDecoder(max_frame=1000, skip_limit=10_000)
    with pytest.raises(FrameTooLarge):
        decoder.feed((20_000).to_bytes(4, "big"))


def test_garbage_head_gives_request_id_zero() -> None:
    decoder = FrameDecoder(max_frame=10, skip_limit=1000)
    (frame,) = decoder.feed((100).to_bytes(4, "big") + b"\xc1" * 100)
    assert isinstance(frame, OversizedFrame) and frame.request_id() == 0
