"""General-purpose, slot and token functions (PKCS#11 v2.40 §5.4, §5.5).

One slot for the cluster, with the stable id of the configuration (default 0). Its
token is the cluster: label = cluster name, serial = the cluster id (from
``cluster.status``), mechanisms = ``mechanism.list`` (cached).
"""

from __future__ import annotations

import time
from typing import Any

from strongroom import __version__
from strongroom.agent.attrcodec import Layout
from strongroom.agent.functions.message import MESSAGE_FLAGS
from strongroom.agent.functions.registry import BOOL, BYTES, ULONG, Context, function
from strongroom.agent.returns import AgentError
from strongroom.agent.state import MAX_SESSIONS_PER_APP, App
from strongroom.constants import CKF, CKM
from strongroom.errors import CKR

MANUFACTURER = b"Strongroom"
MODEL = b"Strongroom HSM"
MIN_PIN = 7  # a password alone (C_SetPIN's new PIN); a login PIN is "username:password"
MAX_PIN = 31 + 1 + 32  # username (31) ":" password (32)
EC_MECHANISMS = frozenset({CKM.EC_KEY_PAIR_GEN, CKM.ECDSA, CKM.ECDSA_SHA1, CKM.ECDSA_SHA224, CKM.ECDSA_SHA256,
                           CKM.ECDSA_SHA384, CKM.ECDSA_SHA512, CKM.ECDH1_DERIVE})
EC_FLAGS = CKF.EC_F_P | CKF.EC_NAMEDCURVE | CKF.EC_UNCOMPRESS


def _version() -> list[int]:
    parts = (__version__.split(".") + ["0", "0"])[:2]
    return [int(p) if p.isdigit() else 0 for p in parts]


def _utf8(text: str, limit: int) -> bytes:
    raw = text.encode()
    while len(raw) > limit:  # cut on a character boundary
        text = text[:-1]
        raw = text.encode()
    return raw


# --- general purpose -------------------------------------------------------------------------


@function("C_Initialize", BYTES, ULONG, ULONG, BOOL, needs_app=False)
async def initialize(ctx: Context, app_id: bytes, pid: int, ulong_size: int, little_endian: bool) -> list[Any]:
    """The hello: every connection of an application starts with it, with the same app_id. The one output
    says whether this agent knew the application: a module that had sessions or a login and hears ``False``
    (the agent restarted, or its last connection had closed) reopens them with X_Resume first."""
    if len(app_id) != 16:
        raise AgentError(CKR.ARGUMENTS_BAD, "app_id is 16 bytes")
    if ulong_size not in (4, 8):
        raise AgentError(CKR.ARGUMENTS_BAD, "CK_ULONG is 4 or 8 bytes")
    connection = ctx.connection
    if connection.app is not None and not connection.app.finalized:
        raise AgentError(CKR.CRYPTOKI_ALREADY_INITIALIZED, "this connection already belongs to an application")
    agent = ctx.agent
    layout = Layout(ulong_size, little_endian)
    app = agent.apps.get(app_id)
    known = app is not None
    if app is not None:
        # Another connection of the same application (its module's pool). It must come from
        # the same user and describe the same CK_ULONG.
        if app.uid is not None and connection.peer_uid is not None and app.uid != connection.peer_uid:
            raise AgentError(CKR.ARGUMENTS_BAD, "app_id belongs to another user")
        if app.layout != layout:
            raise AgentError(CKR.ARGUMENTS_BAD, "app_id was initialized with another CK_ULONG layout")
    else:
        app = App(app_id, pid, connection.peer_uid, layout)
        agent.apps[app_id] = app
    app.connections.add(connection)
    connection.app = app
    return [known]


@function("C_Finalize")
async def finalize(ctx: Context) -> list[Any]:
    await ctx.agent.finalize(ctx.app)
    return []


@function("C_GetInfo")
async def get_info(_ctx: Context) -> list[Any]:
    """The installed Strongroom's version, for the module's CK_INFO (libraryVersion = major.minor)."""
    return [{"manufacturer": MANUFACTURER, "description": b"Strongroom PKCS#11 module", "library": _version(),
             "version": __version__}]


# --- slots and tokens -------------------------------------------------------------------------


@function("C_GetSlotList", BOOL)
async def get_slot_list(ctx: Context, _token_present: bool) -> list[Any]:
    # The token (the cluster) is always present in its slot; unreachable nodes show as errors.
    return [[ctx.agent.config.slot_id]]


@function("C_GetSlotInfo", ULONG)
async def get_slot_info(ctx: Context, slot: int) -> list[Any]:
    ctx.check_slot(slot)
    name = ctx.agent.config.cluster_name
    return [{
        "description": _utf8(f"Strongroom cluster {name}", 64),
        "manufacturer": MANUFACTURER,
        "flags": int(CKF.TOKEN_PRESENT),
        "hw": _version(),
        "fw": _version(),
    }]


def _serial(cluster_id: str | None) -> bytes:
    if not cluster_id:
        return b""
    return cluster_id.replace("-", "")[:16].encode()


@function("C_GetTokenInfo", ULONG)
async def get_token_info(ctx: Context, slot: int) -> list[Any]:
    ctx.check_slot(slot)
    app = ctx.app
    status = await ctx.agent.cluster_status()
    if status is None:
        raise AgentError(CKR.DEVICE_ERROR, "no node of the cluster answers")
    state = status.get("state")
    flags = CKF.RNG | CKF.LOGIN_REQUIRED
    if state in ("initialized", "active"):
        flags |= CKF.TOKEN_INITIALIZED
    if state == "active":
        flags |= CKF.USER_PIN_INITIALIZED
    flags |= app.pin_failures.flags()  # wrong PINs this application gave since the user's last good login
    unavailable = app.layout.unavailable
    sessions = list(app.sessions.values())
    return [{
        "label": _utf8(ctx.agent.config.cluster_name, 32),
        "manufacturer": MANUFACTURER,
        "model": MODEL,
        "serial": _serial(status.get("cluster_id")),
        "flags": int(flags),
        "max_session_count": MAX_SESSIONS_PER_APP,
        "session_count": len(sessions),
        "max_rw_session_count": MAX_SESSIONS_PER_APP,
        "rw_session_count": sum(1 for s in sessions if s.rw),
        "max_pin_len": MAX_PIN,
        "min_pin_len": MIN_PIN,
        "total_public_memory": unavailable,
        "free_public_memory": unavailable,
        "total_private_memory": unavailable,
        "free_private_memory": unavailable,
        "hw": _version(),
        "fw": _version(),
        "utc_time": time.strftime("%Y%m%d%H%M%S", time.gmtime()).encode() + b"00",
    }]


async def _mechanisms(ctx: Context) -> dict[int, dict[str, Any]]:
    listing = await ctx.agent.mechanism_list(ctx.app)
    return {int(m["mechanism"]): m for m in listing}


@function("C_GetMechanismList", ULONG)
async def get_mechanism_list(ctx: Context, slot: int) -> list[Any]:
    ctx.check_slot(slot)
    return [sorted((await _mechanisms(ctx)).keys())]


@function("C_GetMechanismInfo", ULONG, ULONG)
async def get_mechanism_info(ctx: Context, slot: int, mechanism: int) -> list[Any]:
    ctx.check_slot(slot)
    info = (await _mechanisms(ctx)).get(mechanism)
    if info is None:
        raise AgentError(CKR.MECHANISM_INVALID, f"mechanism {mechanism:#x} is not supported")
    flags = int(info["flags"])
    if mechanism in EC_MECHANISMS:
        flags |= EC_FLAGS  # prime-field named curves, uncompressed points
    if mechanism == CKM.AES_GCM:
        flags |= MESSAGE_FLAGS  # the agent runs the message-based functions (functions/message.py)
    return [int(info["min_key_size"]), int(info["max_key_size"]), flags]
