"""The gateway's request path (authenticate -> operation -> authorize -> handler) and its
background work (deleting keys whose deletion date passed). HTTP lives in :mod:`.server`."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

from strongroom.errors import CKR
from strongroom.kms import sigv4
from strongroom.kms.arn import Location
from strongroom.kms.auth_limits import (
    ACCESS_KEY_ID_RE,
    THROTTLED_MESSAGE,
    ExpiringSet,
    FailureLimiter,
    Reservation,
    source_of,
)
from strongroom.kms.authorization import Authorizer, Identity, identity_for
from strongroom.kms.backend import Backend, ClusterError
from strongroom.kms.config import GatewayConfig
from strongroom.kms.context import Context, Services
from strongroom.kms.errors import (
    DependencyTimeout,
    InternalError,
    InvalidSignature,
    KmsError,
    SerializationError,
    Throttling,
    UnknownOperation,
    UnrecognizedClient,
)
from strongroom.kms.grants import list_grants
from strongroom.kms.keystores import KeyStores
from strongroom.kms.model import ALIASES, DELETED, ENABLED, KEYS, PENDING_DELETION, Conflict, KmsKey, Metadata, delete
from strongroom.kms.ops import load
from strongroom.kms.ops.imports import expire_material, material_expired, sweep_import_parameters
from strongroom.kms.ops.rotation import rotate
from strongroom.kms.signing_keys import SigningKeyCache
from strongroom.kms.usage import TRACKED, UsageTracker
from strongroom.kms.validation import Params, has_lone_surrogate, json_too_deep

log = logging.getLogger("strongroom.kms")
TARGET_PREFIX = "TrentService."
#: The node's refusals that are the caller's failed authentication (counted by the rate limits).
AUTHENTICATION_FAILURES = frozenset({CKR.KEY_HANDLE_INVALID, CKR.SIGNATURE_INVALID, CKR.ARGUMENTS_BAD})
RECENT_KEY_SECONDS = 3600.0
#: At most one "throttling" warning in the log per this many seconds.
THROTTLE_LOG_SECONDS = 60.0
CONTENT_TYPES = ("application/x-amz-json-1.1", "application/x-amz-json-1.0", "application/json")


def cluster_failure(exc: ClusterError) -> KmsError:
    """A cluster error that no handler expected: a fault, retryable when the cluster was unreachable."""
    if exc.unreachable:
        return DependencyTimeout(f"The cluster could not be reached: {exc.message}")
    log.warning("cluster error %s: %s", exc.code, exc.message)
    return InternalError("The cluster could not complete the request; see the gateway log.")


def _authentication_failure(exc: ClusterError) -> KmsError:
    """The node's refusal of an access key as AWS answers it; unreachable: a retryable fault."""
    if exc.unreachable:
        return cluster_failure(exc)
    if exc.code == CKR.KEY_HANDLE_INVALID:
        return UnrecognizedClient(sigv4.UNKNOWN_KEY_MESSAGE)
    if exc.code in (CKR.SIGNATURE_INVALID, CKR.ARGUMENTS_BAD):
        return InvalidSignature(sigv4.MISMATCH_MESSAGE)
    return cluster_failure(exc)


#: No KMS request nests deeper than 4 (CreateGrant's Constraints: body, object, map, value).
MAX_JSON_DEPTH = 8


class Gateway:
    def __init__(self, config: GatewayConfig, backend: Backend) -> None:
        self.config = config
        self.backend = backend
        self.metadata = Metadata(backend, cache_seconds=config.kms.key_cache_seconds)
        self.keystores = KeyStores(config, backend)
        self.metadata.key_hook = self.keystores.annotate
        self.metadata.unreachable_hook = self.keystores.unreachable
        self.signing_keys = SigningKeyCache(backend.sigv4_signing_key, ttl=config.kms.signing_key_cache_seconds)
        k = config.kms
        self.unknown_keys = ExpiringSet(k.unknown_key_cache_seconds)
        #: Access keys that authenticated within the hour: fetching their signing key takes no token.
        self.recent_keys = ExpiringSet(RECENT_KEY_SECONDS)
        self.limiter = FailureLimiter(k.auth_failures_per_second, k.auth_failure_burst,
                                      k.auth_failures_per_second_total)
        self._throttle_logged = -THROTTLE_LOG_SECONDS
        self.where = Location(config.kms.region, config.kms.account_id, config.kms.partition)
        self.usage = UsageTracker(self.metadata)
        self.services = Services(config, self.where, backend, self.metadata, self.keystores,
                                 Authorizer(self.where, backend), self.usage)
        self.operations = load()
        self._sweeper: asyncio.Task[None] | None = None

    # --- authentication ---------------------------------------------------------------------------

    async def authenticate(self, method: str, raw_path: str, raw_query: str, headers: sigv4.Headers,
                           body: bytes, source: str = "") -> Identity:
        """SigV4: every check the gateway can make alone, then the signature with the held signing key;
        the node only for what it must decide, within the failed-authentication limits
        (:mod:`.auth_limits`). ``source``: the peer's address (rate limits, the node's audit)."""
        prepared = sigv4.prepare(method, raw_path, raw_query, headers, body, region=self.where.region,
                                 max_skew=self.config.kms.max_skew_seconds)
        source = source_of(source)
        access_key_id = prepared.access_key_id
        if not ACCESS_KEY_ID_RE.match(access_key_id) or access_key_id in self.unknown_keys:
            self.limiter.failed(None, source, access_key_id)
            raise UnrecognizedClient(sigv4.UNKNOWN_KEY_MESSAGE)
        if not self.signing_keys.enabled:
            return await self._verify_in_node(prepared, source)
        scope = (access_key_id, prepared.date, prepared.region, prepared.service)
        entry = self.signing_keys.cached(scope)
        if entry is None:
            entry = await self._fetch_signing_key(scope, source)
        if sigv4.matches(entry.signing_key, prepared):
            self.recent_keys.add(access_key_id)
            return identity_for(entry.access_key_id, entry.name, entry.policy)
        # A mismatch: ask the node once (it holds the current secret and audits the failure). If it
        # verifies, the cached signing key was stale (the access key was re-created): fetch it again.
        try:
            identity = await self._verify_in_node(prepared, source)
        except ClusterError:  # the cluster cannot be asked: the signing key we hold said no
            self.limiter.failed(None, source, access_key_id)
            raise InvalidSignature(sigv4.MISMATCH_MESSAGE) from None
        except UnrecognizedClient:
            self.signing_keys.drop(scope)
            raise
        try:
            await self.signing_keys.get(scope, refresh=True, source=source)
        except ClusterError:
            self.signing_keys.drop(scope)
        return identity

    def _reserve(self, source: str, access_key_id: str) -> Reservation:
        reservation = self.limiter.reserve(source, access_key_id)
        if reservation is None:
            now = time.monotonic()
            if now - self._throttle_logged >= THROTTLE_LOG_SECONDS:
                self._throttle_logged = now
                log.warning("throttling failed authentications (from %s, access key %s; %d throttled so far)",
                            source, access_key_id[:32], self.limiter.throttled)
            raise Throttling(THROTTLED_MESSAGE)
        return reservation

    def _node_refused(self, exc: ClusterError, reservation: Reservation | None, source: str,
                      access_key_id: str) -> KmsError:
        """The node's answer about an access key, as AWS's error; an authentication failure is counted."""
        if exc.unreachable or exc.code not in AUTHENTICATION_FAILURES:
            if reservation is not None:
                self.limiter.succeeded(reservation)  # not the caller's failure: the tokens go back
            return _authentication_failure(exc)
        if exc.code == CKR.KEY_HANDLE_INVALID:
            self.unknown_keys.add(access_key_id)
            self.recent_keys.discard(access_key_id)
        self.limiter.failed(reservation, source, access_key_id)
        return _authentication_failure(exc)

    async def _fetch_signing_key(self, scope: tuple[str, str, str, str], source: str) -> Any:
        access_key_id = scope[0]
        # No token to join a fetch under way (concurrent first requests of one client are one round
        # trip), nor for an access key that authenticated here lately: the cache bounds its fetches to
        # one per scope and signing_key_cache_seconds, and a flood of bad signatures for it (its
        # bucket empty) or from its owner's address must not stop its owner's next fetch.
        free = self.signing_keys.pending(scope) or access_key_id in self.recent_keys
        reservation = None if free else self._reserve(source, access_key_id)
        try:
            entry = await self.signing_keys.get(scope, source=source)
        except ClusterError as exc:
            raise self._node_refused(exc, reservation, source, access_key_id) from None
        if reservation is not None:
            self.limiter.succeeded(reservation)
        return entry

    async def _verify_in_node(self, prepared: sigv4.Prepared, source: str) -> Identity:
        """The node checks the signature (``kms.sigv4.verify``); ClusterError only when unreachable."""
        access_key_id = prepared.access_key_id
        reservation = self._reserve(source, access_key_id)
        try:
            verified = await self.backend.verify_sigv4(access_key_id, prepared.date, prepared.region,
                                                       prepared.service, prepared.string_to_sign,
                                                       prepared.signature, source=source)
        except ClusterError as exc:
            if exc.unreachable:
                self.limiter.succeeded(reservation)
                raise
            raise self._node_refused(exc, reservation, source, access_key_id) from None
        self.limiter.succeeded(reservation)
        self.recent_keys.add(access_key_id)
        return identity_for(verified["access_key_id"], verified["name"], verified.get("policy"))

    # --- one request ---------------------------------------------------------------------------------

    async def handle(self, method: str, raw_path: str, raw_query: str, headers: sigv4.Headers,
                     body: bytes, source: str = "", request_id: str = "") -> tuple[int, dict[str, Any]]:
        """Serve one request; returns (HTTP status, JSON body). Never raises. ``request_id``: the
        x-amzn-RequestId the answer carries (kept as the KmsRequestId of the keys it used)."""
        operation = "?"
        try:
            try:
                identity = await self.authenticate(method, raw_path, raw_query, headers, body, source)
            except ClusterError as exc:
                raise _authentication_failure(exc) from None
            target = headers.get("x-amz-target") or ""
            operation = target[len(TARGET_PREFIX):] if target.startswith(TARGET_PREFIX) else target
            spec = self.operations.get(operation) if target.startswith(TARGET_PREFIX) else None
            if method != "POST" or spec is None:
                raise UnknownOperation(f"Unknown operation {target or '(none)'}" if method == "POST"
                                       else "Only POST requests are supported")
            content_type = (headers.get("content-type") or "").split(";")[0].strip().lower()
            if content_type not in CONTENT_TYPES:
                raise SerializationError(f"Unsupported Content-Type {content_type or '(none)'}")
            if json_too_deep(body, MAX_JSON_DEPTH):
                raise SerializationError(f"The request body nests JSON deeper than {MAX_JSON_DEPTH} levels")
            try:
                document = json.loads(body or b"{}")
            except (ValueError, RecursionError):
                raise SerializationError("The request body is not valid JSON") from None
            if not isinstance(document, dict):
                raise SerializationError("The request body must be a JSON object")
            if has_lone_surrogate(document):
                raise SerializationError("The request body is not valid JSON text: a string holds an unpaired "
                                         "UTF-16 surrogate")
            ctx = Context(self.services, identity, spec, Params(document), request_id=request_id)
            if spec.keyless:
                ctx.authorize("*")
            result = await spec.handler(ctx)
            if operation in TRACKED:
                self._note_usage(operation, result, request_id)
            return 200, result
        except KmsError as exc:
            if exc.status >= 500:
                log.warning("%s: %s %s", operation, exc.code, exc.message)
            return exc.status, exc.body()
        except ClusterError as exc:
            error = cluster_failure(exc)
            return error.status, error.body()
        except Exception:  # every failure must become an AWS-shaped answer
            log.exception("internal error in %s", operation)
            error = InternalError("Internal error; see the gateway log.")
            return error.status, error.body()

    def _note_usage(self, operation: str, result: dict[str, Any], request_id: str) -> None:
        """The keys a successful cryptographic answer names (KeyId; ReEncrypt's SourceKeyId too)."""
        for member in ("KeyId", "SourceKeyId"):
            arn = result.get(member)
            if isinstance(arn, str):
                self.usage.note(arn.rpartition("/")[2], operation, request_id)

    # --- key deletion -----------------------------------------------------------------------------------

    def start_background(self) -> None:
        loop = asyncio.get_running_loop()
        self._sweeper = loop.create_task(self._sweep_forever())
        self._keystores_start = loop.create_task(self.keystores.start())
        self.usage.start()

    async def stop_background(self) -> None:
        await self.usage.stop()
        await self.keystores.close()
        if self._sweeper is not None:
            self._sweeper.cancel()
            await asyncio.gather(self._sweeper, return_exceptions=True)
            self._sweeper = None

    async def _sweep_forever(self) -> None:
        while True:
            try:
                await self.sweep()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - keep sweeping after cluster hiccups
                log.warning("key deletion sweep failed: %s", exc)
            await asyncio.sleep(self.config.deletion.check_seconds)

    async def sweep(self, now: float | None = None) -> list[str]:
        """Delete every key whose deletion date passed (and finish interrupted deletions)."""
        now = time.time() if now is None else now
        deleted = []
        cursor = ""
        while True:
            keys, more = await self.metadata.list_keys(cursor, 1000, include_deleted=True)
            for key in keys:
                due = key.state == PENDING_DELETION and key.deletion_date is not None and key.deletion_date <= now
                if due or key.state == DELETED:
                    if await self.delete_key(key.key_id, now):
                        deleted.append(key.key_id)
                elif self.rotation_due(key, now):
                    await self.rotate_due(key.key_id, now)
                elif material_expired(key, now):
                    await expire_material(self.services, key.key_id, now)
            if not more or not keys:
                await sweep_import_parameters(self.services, now)
                return deleted
            cursor = keys[-1].key_id

    # --- automatic rotation (part of the sweep) --------------------------------------------------------

    def rotation_due(self, key: KmsKey, now: float) -> bool:
        return (key.state == ENABLED and key.rotation_period is not None and key.rotation_anchor is not None
                and key.rotation_anchor + key.rotation_period * self.config.deletion.day_seconds <= now)

    async def rotate_due(self, key_id: str, now: float) -> None:
        try:
            await rotate(self.services, key_id, "AUTOMATIC", lambda key: self.rotation_due(key, now))
        except KmsError as exc:
            log.warning("automatic rotation of %s failed: %s %s", key_id, exc.code, exc.message)

    async def _delete_grants(self, key_id: str) -> None:
        for grant in await list_grants(self.backend, key_id):
            try:
                await self.metadata.commit([delete(grant.record_key, grant.revision)])
            except Conflict:
                pass

    async def delete_key(self, key_id: str, now: float) -> bool:
        """Tombstone the key and drop its aliases, destroy its cluster objects, remove the record."""
        def tombstone(key: KmsKey) -> None:
            if key.state == PENDING_DELETION and key.deletion_date is not None and key.deletion_date <= now:
                key.state = DELETED

        key = await self.metadata.update_key(key_id, tombstone, include_deleted=True)
        if key is None or key.state != DELETED:
            return False  # cancelled meanwhile
        aliases = [a for a in await self.metadata.all_aliases() if a.target == key_id]
        for alias in aliases:
            try:
                await self.metadata.commit([delete(ALIASES + alias.name, alias.revision)])
            except Conflict:
                pass  # retargeted meanwhile: it no longer names this key
        for material in key.materials:
            if not material.present:  # imported key material already deleted
                continue
            await self.keystores.destroy_material(key, material.handle)
            if material.public_handle is not None:  # asymmetric keys: the public key object too
                await self.backend.destroy_object(material.public_handle)
        await self._delete_grants(key_id)
        for _ in range(5):
            current = await self.metadata.get_key(key_id, include_deleted=True, fresh=True)
            if current is None:
                break
            try:
                await self.metadata.commit([delete(KEYS + key_id, current.revision)])
                break
            except Conflict:
                continue
        log.info("deleted KMS key %s (%d key material version(s), %d alias(es))",
                 key_id, len(key.materials), len(aliases))
        return True
