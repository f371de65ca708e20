"""The Vault KV version 2 routes that MariaDB and pg_tde call, answered in Vault's shapes.

::

    GET  /v1/sys/mounts/<mount>              pg_tde: data.type == "kv", data.options.version == "2"
    GET  /v1/sys/mounts/<mount>/tune         MariaDB: options.version == "2"
    GET  /v1/<mount>/metadata/?list=true     pg_tde (200, or 404 when the mount holds no key); LIST works too
    GET  /v1/<mount>/data/<name>[?version=N] data.data.data (hex: MariaDB) and data.data.key (base64: pg_tde),
                                             data.metadata.version; 404 {"errors": []} when missing
    POST /v1/<mount>/data/<name>             a new version, generated in the cluster (PUT alike)

The token comes in ``X-Vault-Token`` (or ``Authorization: Bearer``). Every answer is JSON; errors are
``{"errors": [...]}`` with Vault's status codes: 400 bad request, 403 "permission denied" (whatever
the reason: the reason goes to the log and the node's audit log, not to the client), 404, 405, 429
(too many refused tokens), 500, 503 (the cluster cannot be reached). A write names no key material:
``{"data": {}}`` or ``{"data": {"bits": "128"}}``, with ``{"options": {"cas": N}}`` as Vault has it.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import logging
import re
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

from strongroom.errors import CKR
from strongroom.kms.auth_limits import ExpiringSet, FailureLimiter, Reservation, source_of
from strongroom.kms.backend import ClusterError

log = logging.getLogger("strongroom.vaultkv")

#: ``call(op, args)``: a node operation's reply body (the service's :class:`~strongroom.kms.backend.Backend`).
Call = Callable[[str, dict[str, Any]], Awaitable[Any]]

MAX_TOKEN_CHARS = 256
MAX_QUERY_CHARS = 256
MAX_JSON_DEPTH = 8
#: Read-only node operations: sent again once when the connection was lost under them.
IDEMPOTENT = frozenset({"vaultkv.mount.read", "vaultkv.key.list", "vaultkv.key.read"})
_TOKEN_SHAPE = re.compile(r"^hvs\.([A-Za-z0-9]{16})")
_VERSION_RE = re.compile(r"^[0-9]{1,9}\Z")
_BITS = {"128": 128, "192": 192, "256": 256}
PERMISSION_DENIED = "permission denied"
UNREACHABLE = "the key store (the Strongroom cluster) cannot be reached; see the Vault KV service's log"
MOUNT_DESCRIPTION = "Strongroom: key versions generated and kept in the cluster"
#: A token the node accepted lately skips the failure rate limit (the database keeps working while someone on its
#: address floods the service with bad tokens); the node still checks it on every request.
PROVEN_SECONDS = 3600.0

Reply = tuple[int, dict[str, Any]]


def errors(status: int, *messages: str) -> Reply:
    return status, {"errors": list(messages)}


def _envelope(data: dict[str, Any]) -> dict[str, Any]:
    return {"request_id": str(uuid.uuid4()), "lease_id": "", "renewable": False, "lease_duration": 0,
            "data": data, "wrap_info": None, "warnings": None, "auth": None}


def _rfc3339(moment: float) -> str:
    return dt.datetime.fromtimestamp(moment, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _metadata(version: int, created: float) -> dict[str, Any]:
    return {"created_time": _rfc3339(created), "custom_metadata": None, "deletion_time": "", "destroyed": False,
            "version": version}


def _mount_info(mount: str) -> dict[str, Any]:
    return {"type": "kv", "description": MOUNT_DESCRIPTION, "accessor": f"kv_{mount}",
            "config": {"default_lease_ttl": 0, "max_lease_ttl": 0, "force_no_cache": False},
            "options": {"version": "2"}, "local": False, "seal_wrap": False, "external_entropy_access": False,
            "plugin_version": "", "running_plugin_version": "", "running_sha256": "", "uuid": ""}


def _tune_info() -> dict[str, Any]:
    return {"description": MOUNT_DESCRIPTION, "default_lease_ttl": 0, "max_lease_ttl": 0, "force_no_cache": False,
            "options": {"version": "2"}}


def _depth(value: Any, level: int = 0) -> int:
    if level > MAX_JSON_DEPTH:
        return level
    if isinstance(value, dict):
        return max((_depth(v, level + 1) for v in value.values()), default=level + 1)
    if isinstance(value, list):
        return max((_depth(v, level + 1) for v in value), default=level + 1)
    return level


@dataclass(frozen=True)
class Request:
    method: str
    #: The path as sent (not percent-decoded: names allow no '%', so an encoded character is refused).
    path: str
    query: str
    token: str | None
    namespace: str | None
    body: bytes
    source: str


@dataclass(frozen=True)
class WriteOptions:
    #: 0: 256, or the size of the versions before.
    bits: int
    #: -1: no check-and-set.
    cas: int


class VaultApi:
    def __init__(self, call: Call, limiter: FailureLimiter) -> None:
        self._call = call
        self.limiter = limiter
        #: Digests of tokens the node accepted within PROVEN_SECONDS (bounded, least recently used dropped).
        self._proven = ExpiringSet(PROVEN_SECONDS)

    async def handle(self, request: Request) -> Reply:
        parts = [part for part in request.path.split("/") if part]
        if not parts or parts[0] != "v1":
            return errors(404)
        parts = parts[1:]
        if request.namespace:
            return errors(400, "namespaces are not supported: leave X-Vault-Namespace out")
        if len(request.query) > MAX_QUERY_CHARS:
            return errors(400, "the query string is too long")
        try:
            query = dict(parse_qsl(request.query, keep_blank_values=True, strict_parsing=bool(request.query),
                                   max_num_fields=8))
        except ValueError:
            return errors(400, "the query string is malformed")
        method = request.method.upper()
        if len(parts) in (3, 4) and parts[:2] == ["sys", "mounts"] and (len(parts) == 3 or parts[3] == "tune"):
            if method != "GET":
                return errors(405)
            return await self._mount(request, parts[2], tune=len(parts) == 4)
        if len(parts) == 2 and parts[1] == "metadata":
            if not (method == "LIST" or (method == "GET" and query.get("list") == "true")):
                return errors(405) if method not in ("GET", "LIST") else errors(404)
            return await self._list(request, parts[0])
        if len(parts) == 3 and parts[1] == "data":
            if method == "GET":
                return await self._read(request, parts[0], parts[2], query.get("version", ""))
            if method in ("POST", "PUT"):
                return await self._write(request, parts[0], parts[2])
            return errors(405)
        return errors(404, f"no handler for route {request.path[:128]!r}: this endpoint serves the KV v2 routes "
                           "databases use (see docs/tde.md)")

    # --- routes ----------------------------------------------------------------------------------------

    async def _mount(self, request: Request, mount: str, *, tune: bool) -> Reply:
        status, body = await self._node(request, "vaultkv.mount.read", mount=mount)
        if status != 200:
            return status, body
        info = _tune_info() if tune else _mount_info(mount)
        return 200, {**info, **_envelope(info)}

    async def _list(self, request: Request, mount: str) -> Reply:
        status, body = await self._node(request, "vaultkv.key.list", mount=mount)
        if status != 200:
            return status, body
        if not body["names"]:
            return errors(404)
        return 200, _envelope({"keys": list(body["names"])})

    async def _read(self, request: Request, mount: str, name: str, version_text: str) -> Reply:
        if version_text and not _VERSION_RE.match(version_text):
            return errors(400, "version must be a number")
        version = int(version_text or 0)
        status, body = await self._node(request, "vaultkv.key.read", mount=mount, name=name, version=version)
        if status != 200:
            return status, body
        key = bytes(body["key"])
        data = {"data": key.hex(), "key": base64.b64encode(key).decode()}
        return 200, _envelope({"data": data, "metadata": _metadata(int(body["version"]), float(body["created"]))})

    async def _write(self, request: Request, mount: str, name: str) -> Reply:
        parsed = self._write_body(request.body)
        if not isinstance(parsed, WriteOptions):
            return parsed
        status, body = await self._node(request, "vaultkv.key.write", mount=mount, name=name, bits=parsed.bits,
                                        cas=parsed.cas)
        if status != 200:
            return status, body
        return 200, _envelope(_metadata(int(body["version"]), float(body["created"])))

    @staticmethod
    def _write_body(raw: bytes) -> WriteOptions | Reply:
        """What a write asks for, or the 400 that refuses it."""
        try:
            document = json.loads(raw or b"{}")
        except (ValueError, RecursionError):
            return errors(400, "failed to parse JSON input")
        if not isinstance(document, dict) or _depth(document) > MAX_JSON_DEPTH:
            return errors(400, "the body is a JSON object: {\"data\": {}, \"options\": {\"cas\": N}}")
        unknown = set(document) - {"data", "options"}
        if unknown:
            return errors(400, f"unknown field(s): {', '.join(sorted(map(str, unknown)))[:128]}")
        data, options = document.get("data", {}), document.get("options") or {}
        if not isinstance(data, dict) or not isinstance(options, dict):
            return errors(400, "data and options are JSON objects")
        extra = set(data) - {"bits"}
        if extra:
            return errors(400, "Strongroom generates every key version inside the cluster: a write carries no key "
                               f"material (data may name only bits: 128, 192 or 256; got {sorted(extra)[:4]})")
        bits_value = data.get("bits", 0)
        bits = _BITS.get(str(bits_value)) if bits_value != 0 else 0
        if bits is None or isinstance(bits_value, bool):
            return errors(400, "bits is 128, 192 or 256")
        if set(options) - {"cas"}:
            return errors(400, "the only write option is cas")
        cas = options.get("cas", -1)
        if isinstance(cas, bool) or not isinstance(cas, int) or (cas != -1 and not 0 <= cas <= 10**9):
            return errors(400, "cas is a version number (0: only if the key does not exist yet)")
        return WriteOptions(bits, cas)

    # --- the node ----------------------------------------------------------------------------------------

    async def _node(self, request: Request, op: str, **args: Any) -> Reply:
        token = request.token or ""
        if not token or len(token) > MAX_TOKEN_CHARS or not token.isprintable():
            return errors(403, PERMISSION_DENIED)
        shape = _TOKEN_SHAPE.match(token)
        accessor = shape.group(1) if shape else "malformed"
        source = source_of(request.source)
        digest = hashlib.sha256(token.encode()).hexdigest()
        reservation = None
        if digest not in self._proven:
            reservation = self.limiter.reserve(source, accessor)
            if reservation is None:
                return errors(429, "rate limit quota exceeded: too many refused tokens; try again later")
        try:
            body = await self._send(op, dict(args, token=token, source=request.source or ""))
        except ClusterError as exc:
            if exc.code == CKR.ACTION_PROHIBITED:
                self._proven.discard(digest)
                self.limiter.failed(reservation, source, accessor)
                log.info("refused %s %s from %s (token %s): %s", request.method, request.path[:128], source,
                         accessor, exc.message)
                return errors(403, PERMISSION_DENIED)
            self._settle(reservation)
            return self._cluster_error(op, exc)
        self._settle(reservation)
        self._proven.add(digest)
        return 200, body

    def _settle(self, reservation: Reservation | None) -> None:
        if reservation is not None:
            self.limiter.succeeded(reservation)

    async def _send(self, op: str, args: dict[str, Any]) -> Any:
        try:
            return await self._call(op, args)
        except ClusterError as exc:
            if not exc.unreachable or op not in IDEMPOTENT:
                raise
        return await self._call(op, args)

    @staticmethod
    def _cluster_error(op: str, exc: ClusterError) -> Reply:
        if exc.code in (CKR.KEY_HANDLE_INVALID, CKR.OBJECT_HANDLE_INVALID):
            return errors(404)
        if exc.code in (CKR.ARGUMENTS_BAD, CKR.DEVICE_MEMORY, CKR.DATA_LEN_RANGE):
            return errors(400, exc.message)
        if exc.unreachable or exc.code in (CKR.PIN_INCORRECT, CKR.PIN_LOCKED, CKR.DEVICE_REMOVED, CKR.DEVICE_ERROR,
                                           CKR.CRYPTOKI_NOT_INITIALIZED):
            log.error("%s: the cluster could not serve: %s", op, exc.message)
            return errors(503, UNREACHABLE)
        try:
            code = CKR(exc.code).spec_name
        except ValueError:
            code = hex(exc.code)
        log.error("%s: the cluster answered %s: %s", op, code, exc.message)
        return errors(500, "internal error; see the Vault KV service's log")
