"""Wire protocol: fuzzing the frame decoder and the request/reply decoders.

The decoders face bytes from any client that can open a socket, so the property
that matters is: whatever arrives, the only exceptions are :class:`ProtocolError`
(or its subclass :class:`FrameTooLarge`), never a crash of another type.
"""

from __future__ import annotations

from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from strongroom.errors import CKR
from strongroom.transport.protocol import (
    DEFAULT_MAX_FRAME,
    HEADER,
    MAX_OP_LENGTH,
    MAX_REQUEST_ID,
    MAX_SESSION_TOKEN,
    PROTOCOL_VERSION,
    FrameDecoder,
    FrameTooLarge,
    ProtocolError,
    Reply,
    Request,
    decode_reply,
    decode_request,
    encode_reply,
    encode_request,
    frame,
)

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# --------------------------------------------------------------------------- strategies

INT64_MIN = -(1 << 63)
UINT64_MAX = (1 << 64) - 1

scalars = (
    st.none()
    | st.booleans()
    | st.integers(INT64_MIN, UINT64_MAX)
    | st.floats(allow_nan=False)  # NaN != NaN would break the equality checks, not the decoder
    | st.text(max_size=20)
    | st.binary(max_size=20)
)

#: Anything msgpack can encode (map keys: str or bytes, as strict_map_key allows; plus ints to be refused).
structures = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=6)
    | st.dictionaries(st.text(max_size=8) | st.binary(max_size=8) | st.integers(-5, 5), children, max_size=6),
    max_leaves=25,
)

#: Values that survive a msgpack round trip unchanged (str keys only, lists not tuples).
plain_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=8), children, max_size=5),
    max_leaves=20,
)

request_ids = st.integers(0, MAX_REQUEST_ID)
op_names = st.text(min_size=1, max_size=MAX_OP_LENGTH)
sessions = st.none() | st.binary(max_size=MAX_SESSION_TOKEN)
arg_maps = st.dictionaries(st.text(max_size=16), plain_values, max_size=6)


def pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def payload_of(framed: bytes) -> bytes:
    (size,) = HEADER.unpack_from(framed)
    assert len(framed) == HEADER.size + size
    return framed[HEADER.size :]


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    """``data`` cut at the given offsets (clamped, sorted, duplicates allowed: empty chunks too)."""
    points = sorted(min(max(c, 0), len(data)) for c in cuts)
    chunks, start = [], 0
    for point in points:
        chunks.append(data[start:point])
        start = point
    chunks.append(data[start:])
    return chunks


def reference_frames(data: bytes, limit: int) -> tuple[list[bytes], bool, int]:
    """Frames in ``data``, whether an oversized header appears, and the unconsumed tail length."""
    frames, offset = [], 0
    while len(data) - offset >= HEADER.size:
        (size,) = HEADER.unpack_from(data, offset)
        if size > limit:
            return frames, True, len(data) - offset
        if len(data) - offset - HEADER.size < size:
            break
        frames.append(data[offset + HEADER.size : offset + HEADER.size + size])
        offset += HEADER.size + size
    return frames, False, len(data) - offset


def strictly_valid(message: Any) -> bool:
    """The spec's definition of a request (stricter than the decoder on the version's type)."""
    if not isinstance(message, list) or len(message) != 5:
        return False
    version, request_id, op, session, args = message
    return (
        type(version) is int
        and version == PROTOCOL_VERSION
        and type(request_id) is int
        and 0 <= request_id <= MAX_REQUEST_ID
        and isinstance(op, str)
        and 0 < len(op) <= MAX_OP_LENGTH
        and (session is None or (isinstance(session, bytes) and len(session) <= MAX_SESSION_TOKEN))
        and isinstance(args, dict)
    )


def readable(structure: Any) -> bool:
    """Whether msgpack decodes the message at all (integer map keys anywhere make it refuse the whole)."""
    try:
        msgpack.unpackb(pack(structure), raw=False, strict_map_key=True)
    except ValueError:
        return False
    return True


def check_request(result: Request) -> None:
    """Whatever the decoder returns is well-typed (the dispatcher relies on it)."""
    assert isinstance(result, Request)
    assert type(result.request_id) is int and 0 <= result.request_id <= MAX_REQUEST_ID
    assert isinstance(result.op, str) and 0 < len(result.op) <= MAX_OP_LENGTH
    assert result.session is None or (isinstance(result.session, bytes) and len(result.session) <= MAX_SESSION_TOKEN)
    assert isinstance(result.args, dict)


# --------------------------------------------------------------------------- (a) frame decoder fuzz


@FUZZ
@given(
    data=st.binary(max_size=300),
    cuts=st.lists(st.integers(0, 300), max_size=8),
    limit=st.sampled_from([0, 1, 4, 16, 64, DEFAULT_MAX_FRAME]),
)
def test_frame_decoder_on_arbitrary_bytes_yields_frames_or_frame_too_large(data, cuts, limit):
    expected, too_large, tail = reference_frames(data, limit)
    decoder = FrameDecoder(max_frame=limit)
    got: list[bytes] = []
    raised = None
    for chunk in split(data, cuts):
        try:
            got.extend(decoder.feed(chunk))
        except FrameTooLarge as exc:  # anything else propagates and fails the test
            raised = exc
            break
    if too_large:
        assert raised is not None
        assert raised.size > limit and raised.limit == limit
        assert raised.code == CKR.DATA_LEN_RANGE and raised.request_id is None
        # Frames completed in earlier feeds were delivered, in order; nothing was invented.
        assert got == expected[: len(got)]
    else:
        assert raised is None
        assert got == expected
        assert decoder.pending == tail


@FUZZ
@given(
    payloads=st.lists(st.binary(max_size=80), max_size=6),
    cuts=st.lists(st.integers(0, 600), max_size=10),
)
def test_frame_decoder_reassembles_frames_across_any_chunking(payloads, cuts):
    stream = b"".join(frame(p) for p in payloads)
    decoder = FrameDecoder(max_frame=80)
    got: list[bytes] = []
    for chunk in split(stream, cuts):
        got.extend(decoder.feed(chunk))
    assert got == payloads
    assert decoder.pending == 0


def test_frame_decoder_byte_at_a_time():
    stream = frame(b"") + frame(b"abc") + frame(b"\x00" * 10)
    decoder = FrameDecoder()
    got = []
    for i in range(len(stream)):
        got.extend(decoder.feed(stream[i : i + 1]))
    assert got == [b"", b"abc", b"\x00" * 10]
    assert decoder.pending == 0


# --------------------------------------------------------------------------- (b) request round trip


@settings(FUZZ, max_examples=100)
@given(
    requests=st.lists(st.tuples(request_ids, op_names, sessions, arg_maps), min_size=1, max_size=3),
    cuts=st.lists(st.integers(0, 4000), max_size=10),
)
def test_request_round_trip_through_chunked_stream(requests, cuts):
    stream = b"".join(encode_request(*r) for r in requests)
    decoder = FrameDecoder()
    payloads: list[bytes] = []
    for chunk in split(stream, cuts):
        payloads.extend(decoder.feed(chunk))
    assert decoder.pending == 0
    decoded = [decode_request(p) for p in payloads]
    assert [(d.request_id, d.op, d.session, d.args) for d in decoded] == [tuple(r) for r in requests]


def test_request_round_trip_at_the_limits():
    args = {"data": b"\xff" * 1000, "nested": {"a": [1, -1, 2.5, None, True]}, "": ""}
    for request_id, op, session in [
        (0, "x", None),
        (MAX_REQUEST_ID, "o" * MAX_OP_LENGTH, b"\x00" * MAX_SESSION_TOKEN),
        (7, "user.create", b""),
    ]:
        request = decode_request(payload_of(encode_request(request_id, op, session, args)))
        assert request == Request(request_id, op, session, args)


@FUZZ
@given(request_id=request_ids, code=st.integers(0, 0xFFFFFFFF), body=plain_values)
def test_reply_round_trip(request_id, code, body):
    reply = decode_reply(payload_of(encode_reply(request_id, code, body)))
    assert reply == Reply(request_id, code, body)
    assert reply.ok is (code == CKR.OK)


# --------------------------------------------------------------------------- (c) decoder fuzz


def decode_or_protocol_error(payload: bytes) -> Request | None:
    try:
        result = decode_request(payload)
    except ProtocolError as exc:
        assert exc.request_id is None or (type(exc.request_id) is int and 0 <= exc.request_id <= MAX_REQUEST_ID)
        assert isinstance(exc.code, int)
        return None
    check_request(result)
    return result


@FUZZ
@given(payload=st.binary(max_size=200))
def test_decode_request_on_arbitrary_bytes(payload):
    decode_or_protocol_error(payload)


@FUZZ
@given(payload=st.binary(max_size=200))
def test_decode_request_on_mutated_valid_requests(payload):
    # Arbitrary bytes rarely look like msgpack arrays; start from a real request and damage it.
    base = payload_of(encode_request(42, "session.login", b"tok", {"username": "u", "password": "p" * 8}))
    for mutated in (base[: len(payload) % (len(base) + 1)], payload + base, base + payload, base[:5] + payload):
        decode_or_protocol_error(mutated)


@FUZZ
@given(structure=structures)
def test_decode_request_on_arbitrary_msgpack_structures(structure):
    result = decode_or_protocol_error(pack(structure))
    if strictly_valid(structure):
        assert result == Request(structure[1], structure[2], structure[3], structure[4])


#: Five-element arrays whose elements are often almost right, to reach the later checks.
near_requests = st.tuples(
    st.sampled_from([PROTOCOL_VERSION, 0, 2, -1, "1", None]) | structures,
    st.sampled_from([0, 1, MAX_REQUEST_ID, -1, True, False, 1.5, "1"])
    | st.integers(INT64_MIN, UINT64_MAX) | structures,
    op_names | st.sampled_from(["", "o" * (MAX_OP_LENGTH + 1)]) | structures,
    sessions | st.binary(min_size=MAX_SESSION_TOKEN + 1, max_size=MAX_SESSION_TOKEN + 1) | structures,
    arg_maps | structures,
).map(list)


@FUZZ
@given(structure=near_requests)
def test_decode_request_on_near_valid_arrays(structure):
    result = decode_or_protocol_error(pack(structure))
    if strictly_valid(structure):
        assert result == Request(structure[1], structure[2], structure[3], structure[4])
    elif result is None and type(structure[1]) is int and 0 <= structure[1] <= MAX_REQUEST_ID and readable(structure):
        # The id was readable, so the error must carry it (the client matches replies by id).
        with pytest.raises(ProtocolError) as info:
            decode_request(pack(structure))
        assert info.value.request_id == structure[1]


@FUZZ
@given(payload=st.binary(max_size=200) | structures.map(pack))
def test_decode_reply_raises_only_protocol_error(payload):
    try:
        reply = decode_reply(payload)
    except ProtocolError:
        return
    assert isinstance(reply, Reply) and isinstance(reply.request_id, int) and isinstance(reply.code, int)


# --------------------------------------------------------------------------- (d) oversized header


def test_oversized_header_is_refused_before_the_body_arrives():
    limit = 1024
    decoder = FrameDecoder(max_frame=limit)
    header = HEADER.pack(limit + 1)
    assert decoder.feed(header[:3]) == []  # incomplete header: nothing to judge yet
    with pytest.raises(FrameTooLarge) as info:
        decoder.feed(header[3:])  # not one byte of the body has been sent
    assert info.value.size == limit + 1 and info.value.limit == limit
    assert info.value.code == CKR.DATA_LEN_RANGE
    assert isinstance(info.value, ProtocolError)


def test_oversized_header_after_a_good_frame():
    decoder = FrameDecoder(max_frame=16)
    assert decoder.feed(frame(b"ok")) == [b"ok"]
    with pytest.raises(FrameTooLarge):
        decoder.feed(HEADER.pack(0xFFFFFFFF))
    # A frame exactly at the limit is fine.
    assert FrameDecoder(max_frame=16).feed(frame(b"x" * 16)) == [b"x" * 16]


def test_default_limit_refuses_a_4_gib_announcement():
    with pytest.raises(FrameTooLarge) as info:
        FrameDecoder().feed(b"\xff\xff\xff\xff")
    assert info.value.limit == DEFAULT_MAX_FRAME


# --------------------------------------------------------------------------- (e) specific refusals


def refused(message: Any) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        decode_request(pack(message))
    assert type(info.value) is ProtocolError
    assert info.value.code == CKR.ARGUMENTS_BAD
    return info.value


@pytest.mark.parametrize("version", [0, 2, -1, 255, "1", None, b"\x01", [1]])
def test_wrong_version_is_refused_with_the_request_id(version):
    assert refused([version, 99, "node.status", None, {}]).request_id == 99


@pytest.mark.parametrize("request_id", [-1, INT64_MIN, True, False, 1.0, 2.0**64, 1e30, "7", None, b"\x07", [7]])
def test_bad_request_ids_are_refused_without_an_id(request_id):
    # msgpack cannot carry an integer above 2**64 - 1; a "huge" id can only arrive as a float.
    assert refused([PROTOCOL_VERSION, request_id, "node.status", None, {}]).request_id is None


def test_largest_request_id_is_accepted():
    assert decode_request(pack([PROTOCOL_VERSION, MAX_REQUEST_ID, "x", None, {}])).request_id == MAX_REQUEST_ID


@pytest.mark.parametrize("args", [None, [], ["a", 1], "args", b"args", 0, True, 1.5])
def test_non_map_args_are_refused_with_the_request_id(args):
    assert refused([PROTOCOL_VERSION, 5, "node.status", None, args]).request_id == 5


@pytest.mark.parametrize("op", ["", "o" * (MAX_OP_LENGTH + 1), "é" * (MAX_OP_LENGTH + 1), None, 1, b"node.status",
                                ["x"]])
def test_bad_op_names_are_refused_with_the_request_id(op):
    assert refused([PROTOCOL_VERSION, 6, op, None, {}]).request_id == 6


def test_op_name_at_the_limit_is_accepted():
    assert decode_request(pack([PROTOCOL_VERSION, 6, "o" * MAX_OP_LENGTH, None, {}])).op == "o" * MAX_OP_LENGTH


@pytest.mark.parametrize("session", ["token", 0, True, [b"t"], {"t": b"t"}, b"\x00" * (MAX_SESSION_TOKEN + 1)])
def test_bad_sessions_are_refused_with_the_request_id(session):
    assert refused([PROTOCOL_VERSION, 8, "session.info", session, {}]).request_id == 8


@pytest.mark.parametrize(
    "message",
    [None, 1, "x", {}, [], [PROTOCOL_VERSION], [PROTOCOL_VERSION, 1, "x", None],
     [PROTOCOL_VERSION, 1, "x", None, {}, 0, 0]],
)
def test_messages_that_are_not_five_element_arrays_are_refused(message):
    # (six elements are a request with its read-your-writes revision: below)
    assert refused(message).request_id is None


def test_a_sixth_element_is_the_clients_revision():
    assert decode_request(pack([PROTOCOL_VERSION, 1, "x", None, {}])).revision == 0
    assert decode_request(pack([PROTOCOL_VERSION, 1, "x", None, {}, 0])).revision == 0
    assert decode_request(pack([PROTOCOL_VERSION, 1, "x", None, {}, 12345])).revision == 12345
    assert decode_request(payload_of(encode_request(3, "x", None, {}, 77))).revision == 77
    # No token, no sixth element: what older nodes and the agent's module detection expect.
    assert len(msgpack.unpackb(payload_of(encode_request(3, "x", None, {})))) == 5


@pytest.mark.parametrize("revision", [-1, True, 1.0, "5", None, b"\x05", [5], 1 << 63])
def test_bad_revisions_are_refused_with_the_request_id(revision):
    assert refused([PROTOCOL_VERSION, 9, "x", None, {}, revision]).request_id == 9


def test_a_reply_carries_the_revision_its_writes_made():
    assert decode_reply(payload_of(encode_reply(4, 0, {"a": 1}, 99))).revision == 99
    reply = decode_reply(payload_of(encode_reply(4, 0, {"a": 1})))
    assert (reply.request_id, reply.body, reply.revision) == (4, {"a": 1}, 0)
    assert len(msgpack.unpackb(payload_of(encode_reply(4, 0, {})))) == 4
    with pytest.raises(ProtocolError):
        decode_reply(pack([PROTOCOL_VERSION, 4, 0, {}, -3]))


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"\xc1",  # the one byte msgpack never uses
        b"\x95\x01",  # an array announcing 5 elements, then nothing
        pack([1, 2, "x", None, {}]) + b"\x00",  # trailing data
        pack([1, 2, "x", None, {1: 2}]),  # integer map key: strict_map_key
        b"\x91" * 5000 + b"\xc0",  # deep nesting
        b"\xdd\xff\xff\xff\xff",  # an array announcing 4 billion elements
        b"\xa3\xff\xfe\xfd",  # a str that is not UTF-8
    ],
)
def test_undecodable_payloads_are_protocol_errors(payload):
    with pytest.raises(ProtocolError) as info:
        decode_request(payload)
    assert info.value.request_id is None


def test_ext_types_do_not_crash_the_decoder():
    payload = pack([PROTOCOL_VERSION, 3, "x", None, {"e": msgpack.ExtType(5, b"abc")}])
    request = decode_request(payload)
    assert request.args == {"e": msgpack.ExtType(5, b"abc")}
    with pytest.raises(ProtocolError) as info:
        decode_request(pack([PROTOCOL_VERSION, 3, "x", msgpack.ExtType(5, b"abc"), {}]))
    assert info.value.request_id == 3


def test_an_oversized_request_with_a_revision_still_names_its_request_id():
    big = encode_request(41, "crypto.encrypt", None, {"data": b"z" * 100}, 7)
    (skipped,) = FrameDecoder(max_frame=16, skip_limit=1 << 20).feed(big)
    assert skipped.request_id() == 41
    big = encode_request(42, "crypto.encrypt", None, {"data": b"z" * 100})
    (skipped,) = FrameDecoder(max_frame=16, skip_limit=1 << 20).feed(big)
    assert skipped.request_id() == 42
