"""The operation table: op name -> handler, and the one place errors become CKR codes.

Handlers live in :mod:`strongroom.dispatch.ops`, one module per op group (the
part of the name before the dot: ``user.create`` is in ``ops/user.py``). Each
declares, with :func:`operation`, who may call it (no login, or which roles),
in which cluster states (:mod:`strongroom.services.state`), and the dataclass its
arguments must match.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import types
import typing
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from strongroom.dispatch.call import Call
from strongroom.dispatch.quorum import QuorumRule
from strongroom.errors import CKR, ActionProhibited, ArgumentsBad, DataLenRange, FunctionNotSupported, HsmError
from strongroom.services.state import ACTIVE

log = logging.getLogger(__name__)

#: ``async def handler(call, args)``: ``args`` is the operation's argument dataclass (None if it takes none).
Handler = Callable[[Call, Any], Awaitable[dict[str, Any]]]

# Who may call an operation, by the role of the certificate on the connection (see strongroom.pki.certs):
# an application host (the agent, the CLI and SDK of the customer's users), the operator, a node.
AGENT = "agent"
OPERATOR = "operator"
NODE = "node"
EVERY_PEER = frozenset({AGENT, OPERATOR, NODE})


@dataclass(frozen=True)
class OperationSpec:
    name: str
    handler: Handler
    args: type | None
    roles: frozenset[str] | None  # None: no login needed
    states: frozenset[str]
    in_error_state: bool  # still served when self-tests failed (status only)
    #: Certificate roles that may call it: by default only application hosts; an operator's or a
    #: node's certificate reaches only the operations that name its role.
    peers: frozenset[str] = frozenset({AGENT})
    #: The approvals (M of N) it needs, checked before the handler runs (strongroom.dispatch.quorum).
    quorum: QuorumRule | None = None


OPERATIONS: dict[str, OperationSpec] = {}


def operation(
    name: str,
    *,
    args: type | None = None,
    roles: Iterable[str] | None = None,
    states: Iterable[str] = (ACTIVE,),
    in_error_state: bool = False,
    peers: Iterable[str] = (AGENT,),
    quorum: QuorumRule | None = None,
) -> Callable[[Handler], Handler]:
    def register(handler: Handler) -> Handler:
        if name in OPERATIONS:
            raise RuntimeError(f"operation {name!r} registered twice")
        OPERATIONS[name] = OperationSpec(
            name,
            handler,
            args,
            None if roles is None else frozenset(roles),
            frozenset(states),
            in_error_state,
            frozenset(peers),
            quorum,
        )
        return handler

    return register


def lookup(name: str) -> OperationSpec:
    spec = OPERATIONS.get(name)
    if spec is None:
        raise FunctionNotSupported(f"unknown operation {name!r}")
    return spec


def check_peer(spec: OperationSpec, peer_role: str | None) -> None:
    """Refuse a caller whose certificate's role may not call this operation."""
    if peer_role not in spec.peers:
        wanted = " or ".join(sorted(spec.peers))
        raise ActionProhibited(f"{spec.name} needs a certificate with the {wanted} role; "
                               f"this connection's certificate has {peer_role or 'no Strongroom'} role")


def check_role(spec: OperationSpec, role: str) -> None:
    if spec.roles is not None and role not in spec.roles:
        wanted = " or ".join(sorted(spec.roles))
        raise ActionProhibited(f"{spec.name} needs the {wanted} role; this session is {role}")


# --- argument checking -------------------------------------------------------------

MAX_STRING = 4096
MAX_BYTES = 3 << 19  # 1.5 MiB: above what a mechanism takes per call, below the frame limit
MAX_ITEMS = 1024


def _matches(value: Any, hint: Any) -> bool:
    try:
        check = _checker(hint)
    except TypeError:  # an unhashable hint: nothing to cache it under
        check = _make_checker(hint)
    return check(value)


@functools.cache
def _checker(hint: Any) -> Callable[[Any], bool]:
    # Reading a hint (get_origin, get_args, the comparisons) cost more than the check itself; once per hint.
    return _make_checker(hint)


def _make_checker(hint: Any) -> Callable[[Any], bool]:
    origin = typing.get_origin(hint)
    if hint is Any:
        return lambda value: True
    if origin in (typing.Union, types.UnionType):
        options = tuple(_make_checker(option) for option in typing.get_args(hint))
        return lambda value: any(check(value) for check in options)
    if hint is type(None):
        return lambda value: value is None
    if hint is bool:
        return lambda value: isinstance(value, bool)
    if hint is int:
        return lambda value: isinstance(value, int) and not isinstance(value, bool)
    if hint is str:
        return lambda value: isinstance(value, str) and len(value) <= MAX_STRING
    if hint is bytes:
        return lambda value: isinstance(value, bytes) and len(value) <= MAX_BYTES
    if origin is list:
        (item,) = typing.get_args(hint) or (Any,)
        check_item = _make_checker(item)
        return lambda value: (isinstance(value, list) and len(value) <= MAX_ITEMS
                              and all(check_item(v) for v in value))
    if origin is dict or hint is dict:
        return lambda value: isinstance(value, dict) and len(value) <= MAX_ITEMS
    return lambda value: isinstance(value, hint)


@functools.cache
def _schema(cls: type) -> tuple[dict[str, Any], dict[str, dataclasses.Field[Any]]]:
    # Resolving type hints is slow (it evaluates annotations); do it once per argument class.
    return typing.get_type_hints(cls), {f.name: f for f in dataclasses.fields(cls)}


def parse_args(cls: type | None, raw: dict[str, Any]) -> Any:
    """Build the handler's argument dataclass, refusing unknown, missing and mistyped fields."""
    if cls is None:
        if raw:
            raise ArgumentsBad(f"this operation takes no arguments (got {sorted(map(str, raw))[:5]})")
        return None
    hints, fields = _schema(cls)
    unknown = set(raw) - set(fields)
    if unknown:
        raise ArgumentsBad(f"unknown argument(s): {', '.join(sorted(map(str, unknown))[:5])}")
    values: dict[str, Any] = {}
    for name, field in fields.items():
        if name not in raw:
            no_default = field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING
            if no_default:
                raise ArgumentsBad(f"missing argument {name!r}")
            continue
        if isinstance(raw[name], bytes) and len(raw[name]) > MAX_BYTES:
            raise DataLenRange(f"argument {name!r} is {len(raw[name])} bytes; the limit is {MAX_BYTES} per call")
        if not _matches(raw[name], hints[name]):
            raise ArgumentsBad(f"argument {name!r} has the wrong type or size (expected {hints[name]})")
        values[name] = raw[name]
    return cls(**values)


def error_reply(exc: BaseException, op: str) -> tuple[int, str]:
    """Map any exception to (CKR code, message). Unexpected ones never leak details."""
    if isinstance(exc, HsmError):
        return int(exc.code), exc.message
    from strongroom.store.base import OutcomeUnknownError, StoreError, UnavailableError

    if isinstance(exc, UnavailableError):
        # The store's own message says why (etcd: no leader, lost quorum; SQLite: the disk is full).
        return int(CKR.DEVICE_ERROR), f"the store is unavailable: {exc}"
    if isinstance(exc, OutcomeUnknownError):
        return int(CKR.DEVICE_ERROR), f"the store did not answer in time; the outcome is unknown: {exc}"
    if isinstance(exc, StoreError):
        return int(CKR.DEVICE_ERROR), f"store error: {exc}"
    log.exception("internal error in %s", op, exc_info=exc)
    return int(CKR.GENERAL_ERROR), f"internal error in {op}; see the node log"
