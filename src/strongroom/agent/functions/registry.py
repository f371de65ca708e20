"""One table of PKCS#11 functions, filled by the chapter modules, and the dispatch through it.

Each handler is registered with :func:`function` under its PKCS#11 name with the
types of its arguments (docs/agent-protocol.md); :func:`dispatch` checks them, calls
the handler, and turns every outcome into ``(rv, outputs)`` with an rv the function
may return (:mod:`strongroom.agent.returns`). Nothing an application sends can make
the agent answer with a traceback: unexpected exceptions are logged and answered
with CKR_GENERAL_ERROR.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from strongroom.agent.attrcodec import MAX_TEMPLATE_ATTRIBUTES, CodecError, Layout
from strongroom.agent.nodes import NodeError, NodeTimeout, NodeUnavailable, StateLost
from strongroom.agent.returns import AgentError, finish, translate
from strongroom.errors import CKR

if TYPE_CHECKING:
    from strongroom.agent.runtime import Agent
    from strongroom.agent.state import App, Session

log = logging.getLogger("strongroom.agent")

MAX_ULONG = (1 << 64) - 1
MAX_BYTES = 8 << 20  # a single part (the module sends no more: pkcs11/src/mp.h MP_MAX_BYTES)
MAX_RESUMED_SESSIONS = 1024
#: Functions whose failure the module explains on the application's stderr: the reply to a refusal
#: carries the reason as its one output (a str, at most this long).
EXPLAINED = frozenset({"C_Initialize", "C_Login", "X_Resume"})
MAX_REASON = 300


@dataclass
class Result:
    """A reply whose rv is not CKR_OK but still carries outputs (BUFFER_TOO_SMALL, C_GetAttributeValue)."""

    rv: int
    outputs: list[Any]


class Connection:
    """What a handler knows about the client connection it serves."""

    app: App | None
    peer_uid: int | None
    peer_pid: int | None


@dataclass
class Context:
    agent: Agent
    connection: Connection
    function: str

    @property
    def app(self) -> App:
        app = self.connection.app
        if app is None or app.finalized:
            raise AgentError(CKR.CRYPTOKI_NOT_INITIALIZED, "call C_Initialize first")
        return app

    @property
    def layout(self) -> Layout:
        return self.app.layout

    def session(self, handle: int) -> Session:
        session = self.app.sessions.get(handle)
        if session is None:
            raise AgentError(CKR.SESSION_HANDLE_INVALID, f"no session {handle}")
        return session

    def check_slot(self, slot: int) -> None:
        if slot != self.agent.config.slot_id:
            raise AgentError(CKR.SLOT_ID_INVALID, f"no slot {slot}")


# --- argument types ----------------------------------------------------------------------------


def _bad(what: str) -> AgentError:
    return AgentError(CKR.ARGUMENTS_BAD, what)


def ULONG(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_ULONG:
        raise _bad("expected an unsigned integer")
    return value


def BOOL(value: Any) -> bool:
    if not isinstance(value, bool):
        raise _bad("expected a boolean")
    return value


def BYTES(value: Any) -> bytes:
    if not isinstance(value, bytes) or len(value) > MAX_BYTES:
        raise _bad("expected a byte string")
    return value


def CAP(value: Any) -> int:
    """Output capacity: -1 for a NULL buffer (size query), else the buffer's length."""
    if not isinstance(value, int) or isinstance(value, bool) or not -1 <= value <= MAX_ULONG:
        raise _bad("expected an output capacity (-1 or a length)")
    return value


def TEMPLATE(value: Any) -> list[Any]:
    """Checked for shape here; decoded against the application's layout by the handler."""
    if not isinstance(value, list) or len(value) > MAX_TEMPLATE_ATTRIBUTES:
        raise _bad(f"expected a template of at most {MAX_TEMPLATE_ATTRIBUTES} attributes")
    return value


def MECHANISM(value: Any) -> tuple[int, Any]:
    if not isinstance(value, list) or len(value) != 2:
        raise _bad("a mechanism is [type, params]")
    mechanism, params = value
    mechanism = ULONG(mechanism)
    if params is None or isinstance(params, bytes):
        return mechanism, params
    if isinstance(params, dict) and all(isinstance(k, str) for k in params) and len(params) <= 16:
        for inner in params.values():
            if not (inner is None or isinstance(inner, (bytes, bool)) or
                    (isinstance(inner, int) and 0 <= inner <= MAX_ULONG)):
                raise _bad("mechanism parameters are integers or byte strings")
        return mechanism, params
    raise _bad("mechanism parameters are nil, bytes or a map")


KINDS = frozenset({"encrypt", "decrypt", "sign", "verify", "digest", "find"})


def KIND(value: Any) -> str:
    """The kind of an operation (the module's X_* requests)."""
    if not isinstance(value, str) or value not in KINDS:
        raise _bad(f"expected one of {', '.join(sorted(KINDS))}")
    return value


def SESSIONS(value: Any) -> list[tuple[int, int, int]]:
    """X_Resume's sessions: [[handle, slot, flags], ...]."""
    if not isinstance(value, list) or len(value) > MAX_RESUMED_SESSIONS:
        raise _bad(f"expected at most {MAX_RESUMED_SESSIONS} sessions")
    sessions = []
    for entry in value:
        if not isinstance(entry, list) or len(entry) != 3:
            raise _bad("a session is [handle, slot, flags]")
        sessions.append((ULONG(entry[0]), ULONG(entry[1]), ULONG(entry[2])))
    return sessions


def OPTIONAL_LOGIN(value: Any) -> tuple[int, bytes] | None:
    """X_Resume's login: nil, or [user_type, pin]."""
    if value is None:
        return None
    if not isinstance(value, list) or len(value) != 2:
        raise _bad("a login is [user_type, pin]")
    return ULONG(value[0]), BYTES(value[1])


def ATTRIBUTE_REQUESTS(value: Any) -> list[tuple[int, int]]:
    if not isinstance(value, list) or len(value) > MAX_TEMPLATE_ATTRIBUTES:
        raise _bad(f"expected at most {MAX_TEMPLATE_ATTRIBUTES} [type, cap] pairs")
    requests = []
    for pair in value:
        if not isinstance(pair, list) or len(pair) != 2:
            raise _bad("expected [type, cap] pairs")
        requests.append((ULONG(pair[0]), CAP(pair[1])))
    return requests


# --- the table ----------------------------------------------------------------------------------

Handler = Callable[..., Awaitable[Any]]


@dataclass(frozen=True)
class Spec:
    name: str
    handler: Handler
    args: tuple[Callable[[Any], Any], ...]
    needs_app: bool


FUNCTIONS: dict[str, Spec] = {}
#: What to do when a function's arguments are refused before its handler runs (a call of an active
#: operation that fails ends the operation: the crypto functions register here).
BAD_ARGUMENT_HOOKS: dict[str, Callable[[Context, Any], Awaitable[None]]] = {}


def on_bad_arguments(name: str, hook: Callable[[Context, Any], Awaitable[None]]) -> None:
    BAD_ARGUMENT_HOOKS[name] = hook


def function(name: str, *args: Callable[[Any], Any], needs_app: bool = True) -> Callable[[Handler], Handler]:
    def register(handler: Handler) -> Handler:
        if name in FUNCTIONS:
            raise RuntimeError(f"{name} registered twice")
        FUNCTIONS[name] = Spec(name, handler, args, needs_app)
        return handler

    return register


async def dispatch(agent: Agent, connection: Connection, name: str, args: Any) -> tuple[int, list[Any]]:
    spec = FUNCTIONS.get(name)
    if spec is None:
        return int(CKR.FUNCTION_NOT_SUPPORTED), []
    rv, outputs = await _run(spec, Context(agent, connection, name), args)
    final = finish(name, rv)
    if final != CKR.OK and final != rv:
        outputs = [] if name not in EXPLAINED else outputs
    if final not in (CKR.OK, CKR.BUFFER_TOO_SMALL) and name != "C_GetAttributeValue" and name not in EXPLAINED:
        outputs = []
    return final, outputs


def _reason(message: str) -> list[Any]:
    return [message[:MAX_REASON]]


async def _run(spec: Spec, ctx: Context, args: Any) -> tuple[int, list[Any]]:
    name = spec.name
    converted: list[Any] | None = None
    try:
        if spec.needs_app:
            ctx.app  # noqa: B018 - raises CRYPTOKI_NOT_INITIALIZED
        if not isinstance(args, list) or len(args) != len(spec.args):
            raise _bad(f"{name} takes {len(spec.args)} arguments")
        converted = [kind(value) for kind, value in zip(spec.args, args, strict=True)]
        result = await spec.handler(ctx, *converted)
    except AgentError as exc:
        log.debug("%s: %s (%s)", name, _code_name(exc.code), exc.message)
        hook = BAD_ARGUMENT_HOOKS.get(name)
        if converted is None and hook is not None:
            try:
                await hook(ctx, args)
            except Exception:  # the refusal is the answer; ending the operation is best effort
                log.debug("%s: ending the operation after bad arguments failed", name, exc_info=True)
        return exc.code, _reason(exc.message) if name in EXPLAINED else []
    except NodeError as exc:
        code = translate(name, exc.code)
        log.debug("%s: node answered %s -> %s (%s)", name, _code_name(exc.code), _code_name(code), exc)
        return code, _reason(str(exc)) if name in EXPLAINED else []
    except CodecError as exc:
        return exc.code, []
    except NodeUnavailable as exc:
        log.warning("%s: %s", name, exc)
        return int(CKR.DEVICE_REMOVED), _reason(str(exc)) if name in EXPLAINED else []
    except NodeTimeout as exc:
        log.warning("%s: %s", name, exc)
        return int(CKR.DEVICE_ERROR), []
    except StateLost as exc:
        log.warning("%s: node-side state lost: %s", name, exc)
        return int(CKR.FUNCTION_FAILED), []
    except Exception:  # never a traceback to the application
        log.exception("unexpected error in %s", name)
        return int(CKR.GENERAL_ERROR), []
    if isinstance(result, Result):
        return int(result.rv), result.outputs
    return int(CKR.OK), list(result)


def _code_name(code: int) -> str:
    try:
        return CKR(code).spec_name
    except ValueError:
        return hex(code)
