"""Argument checking (parse_args) and the exception -> CKR mapping (error_reply) of the dispatcher."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import strongroom.dispatch.ops  # noqa: F401 - registers every operation
from strongroom import errors
from strongroom.auth.users import UserExists, UserNotFound
from strongroom.barrier import RecordTampered
from strongroom.dispatch.table import MAX_BYTES, MAX_ITEMS, MAX_STRING, OPERATIONS, error_reply, parse_args
from strongroom.errors import CKR, ArgumentsBad, HsmError
from strongroom.store.base import CompactedError, ConflictError, OutcomeUnknownError, StoreError, UnavailableError
from strongroom.store.sqlite import StoreCorruptedError


@dataclass(frozen=True)
class SampleArgs:
    count: int
    label: str
    blob: bytes
    flag: bool = False
    note: str | None = None
    items: list[int] = field(default_factory=list)
    attrs: dict[str, Any] = field(default_factory=dict)
    anything: Any = None


@dataclass(frozen=True)
class NoDefaults:
    name: str


GOOD = {"count": 3, "label": "x", "blob": b"\x00"}


def refused(cls: type | None, raw: dict[Any, Any]) -> ArgumentsBad:
    with pytest.raises(ArgumentsBad) as info:
        parse_args(cls, raw)
    assert info.value.code == CKR.ARGUMENTS_BAD
    return info.value


# --------------------------------------------------------------------------- parse_args: accepted


def test_valid_arguments_build_the_dataclass_with_defaults():
    args = parse_args(SampleArgs, GOOD)
    assert args == SampleArgs(3, "x", b"\x00")
    assert args.flag is False and args.note is None and args.items == [] and args.attrs == {}


def test_every_field_given():
    raw = {
        **GOOD,
        "flag": True,
        "note": "n",
        "items": [1, -2, 3],
        "attrs": {"k": [1, {"x": b""}]},
        "anything": {"whatever": 1.5},
    }
    assert parse_args(SampleArgs, raw) == SampleArgs(**raw)


def test_limits_are_inclusive():
    raw = {
        "count": -(1 << 63),
        "label": "s" * MAX_STRING,
        "blob": b"b" * MAX_BYTES,
        "items": [0] * MAX_ITEMS,
        "attrs": {str(i): i for i in range(MAX_ITEMS)},
    }
    assert parse_args(SampleArgs, raw).label == "s" * MAX_STRING
    assert parse_args(SampleArgs, {**GOOD, "label": "", "blob": b""}).blob == b""


def test_optional_accepts_none_and_no_arguments_operation_accepts_empty():
    assert parse_args(SampleArgs, {**GOOD, "note": None}).note is None
    assert parse_args(None, {}) is None


# --------------------------------------------------------------------------- parse_args: refused


def test_unknown_fields_are_refused():
    assert "bogus" in refused(SampleArgs, {**GOOD, "bogus": 1}).message
    refused(SampleArgs, {**GOOD, b"count": 1})  # bytes key, even one that spells a field
    refused(SampleArgs, {**GOOD, "Count": 1})
    refused(NoDefaults, {"name": "n", **{f"x{i}": i for i in range(50)}})


def test_missing_fields_are_refused():
    for name in ("count", "label", "blob"):
        raw = dict(GOOD)
        del raw[name]
        assert repr(name) in refused(SampleArgs, raw).message
    refused(NoDefaults, {})


@pytest.mark.parametrize(
    "name, value",
    [
        ("count", True),  # bool is an int subclass in Python: still refused for int
        ("count", False),
        ("count", 1.0),
        ("count", "1"),
        ("count", None),
        ("label", 1),  # int for str
        ("label", b"x"),
        ("label", None),
        ("label", ["x"]),
        ("blob", "x"),  # str for bytes
        ("blob", bytearray(b"x")),
        ("blob", 0),
        ("flag", 1),  # int for bool
        ("flag", 0),
        ("flag", "true"),
        ("flag", None),
        ("note", 5),
        ("items", (1, 2)),
        ("items", [1, True]),
        ("items", [1, "2"]),
        ("items", {"a": 1}),
        ("attrs", [("a", 1)]),
        ("attrs", None),
    ],
)
def test_mistyped_fields_are_refused(name, value):
    assert repr(name) in refused(SampleArgs, {**GOOD, name: value}).message


@pytest.mark.parametrize(
    "name, value",
    [
        ("label", "s" * (MAX_STRING + 1)),
        ("note", "s" * (MAX_STRING + 1)),
        ("items", [0] * (MAX_ITEMS + 1)),
        ("attrs", {str(i): i for i in range(MAX_ITEMS + 1)}),
    ],
)
def test_oversize_fields_are_refused(name, value):
    message = refused(SampleArgs, {**GOOD, name: value}).message
    assert len(message) < 200  # the oversized value is not echoed back


def test_oversize_bytes_are_a_data_length_error():
    from strongroom.errors import DataLenRange

    with pytest.raises(DataLenRange) as info:
        parse_args(SampleArgs, {**GOOD, "blob": b"b" * (MAX_BYTES + 1)})
    assert info.value.code == CKR.DATA_LEN_RANGE and len(info.value.message) < 200


@pytest.mark.parametrize("raw", [{"a": 1}, {b"a": 1}, {"a": 1, b"b": 2}, {"z": 1, b"y": 2, "x": None}])
def test_arguments_to_an_operation_that_takes_none_are_refused(raw):
    # Mixed str/bytes keys used to escape as a TypeError (CKR_GENERAL_ERROR) from sorting the names.
    refused(None, raw)


keys = st.text(max_size=12) | st.binary(max_size=12)
values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10) | st.binary(max_size=10),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(keys, children, max_size=4),
    max_leaves=10,
)


@settings(max_examples=150, deadline=None)
@given(op=st.sampled_from(sorted(OPERATIONS)), raw=st.dictionaries(keys, values, max_size=5), extra=st.data())
def test_parse_args_of_every_operation_raises_only_arguments_bad(op, raw, extra):
    spec = OPERATIONS[op]
    if spec.args is not None and extra.draw(st.booleans()):
        # Start from the real field names so the type checks are reached, not only the name checks.
        names = [f for f in spec.args.__dataclass_fields__]
        raw = {**{name: extra.draw(values | st.text(max_size=10)) for name in names}, **raw}
    try:
        result = parse_args(spec.args, raw)
    except ArgumentsBad:
        return
    if spec.args is None:
        assert result is None and raw == {}
    else:
        assert isinstance(result, spec.args)


# --------------------------------------------------------------------------- error_reply

HSM_ERRORS = [
    (errors.ArgumentsBad("bad"), CKR.ARGUMENTS_BAD),
    (errors.FunctionNotSupported("nope"), CKR.FUNCTION_NOT_SUPPORTED),
    (errors.DeviceError("dev"), CKR.DEVICE_ERROR),
    (errors.DataLenRange("long"), CKR.DATA_LEN_RANGE),
    (errors.UserNotLoggedIn("login"), CKR.USER_NOT_LOGGED_IN),
    (errors.UserTypeInvalid("type"), CKR.USER_TYPE_INVALID),
    (errors.PinIncorrect("pin"), CKR.PIN_INCORRECT),
    (errors.PinLocked("locked"), CKR.PIN_LOCKED),
    (errors.PinLenRange("len"), CKR.PIN_LEN_RANGE),
    (errors.PinInvalid("inv"), CKR.PIN_INVALID),
    (errors.SessionHandleInvalid("sess"), CKR.SESSION_HANDLE_INVALID),
    (errors.SessionCount("many"), CKR.SESSION_COUNT),
    (errors.ActionProhibited("no"), CKR.ACTION_PROHIBITED),
    (errors.CryptokiNotInitialized("init"), CKR.CRYPTOKI_NOT_INITIALIZED),
    (errors.TokenNotRecognized("token"), CKR.TOKEN_NOT_RECOGNIZED),
    (errors.AttributeValueInvalid("attr"), CKR.ATTRIBUTE_VALUE_INVALID),
    (errors.FipsSelfTestFailed("fips"), CKR.FIPS_SELF_TEST_FAILED),
    (RecordTampered("users/alice"), CKR.DEVICE_ERROR),
    (UserExists("exists"), CKR.ACTION_PROHIBITED),
    (UserNotFound("missing"), CKR.ARGUMENTS_BAD),
    (HsmError("plain"), CKR.GENERAL_ERROR),
    (HsmError("explicit", CKR.KEY_HANDLE_INVALID), CKR.KEY_HANDLE_INVALID),
    (errors.PinIncorrect("overridden", CKR.PIN_EXPIRED), CKR.PIN_EXPIRED),
]


@pytest.mark.parametrize("exc, code", HSM_ERRORS, ids=lambda v: type(v).__name__ if isinstance(v, Exception) else "")
def test_hsm_errors_map_to_their_code_and_message(exc, code):
    reply_code, message = error_reply(exc, "some.op")
    assert reply_code == code and type(reply_code) is int
    assert message == str(exc)


def test_hsm_error_without_message_uses_the_code_name():
    assert error_reply(errors.PinLocked(""), "x")[0] == CKR.PIN_LOCKED
    exc = HsmError.__new__(errors.SessionCount)
    Exception.__init__(exc)
    assert error_reply(exc, "x") == (CKR.SESSION_COUNT, "CKR_SESSION_COUNT")


@pytest.mark.parametrize(
    "exc",
    [
        StoreError("disk"),
        UnavailableError("no quorum"),
        OutcomeUnknownError("timeout"),
        ConflictError("users/a"),
        CompactedError(3, 10),
        StoreCorruptedError("corrupt"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_store_errors_map_to_device_error(exc):
    code, message = error_reply(exc, "user.create")
    assert code == CKR.DEVICE_ERROR
    assert str(exc) in message


@pytest.mark.parametrize(
    "exc",
    [
        RuntimeError("secret-material-0xdeadbeef"),
        KeyError("secret-material-0xdeadbeef"),
        ValueError("secret-material-0xdeadbeef"),
        TypeError("secret-material-0xdeadbeef"),
        AssertionError("secret-material-0xdeadbeef"),
        ZeroDivisionError("secret-material-0xdeadbeef"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_unexpected_exceptions_are_general_error_without_details(exc, caplog):
    with caplog.at_level(logging.ERROR, logger="strongroom.dispatch.table"):
        code, message = error_reply(exc, "random.generate")
    assert code == CKR.GENERAL_ERROR
    assert "secret-material" not in message
    assert type(exc).__name__ not in message
    assert "random.generate" in message
    # The details go to the node log instead, with the traceback.
    assert any(r.exc_info and r.exc_info[1] is exc for r in caplog.records)
