"""Everything the gateway asks of the cluster: the SDK's calls (:class:`~strongroom.client.AsyncClient`,
``Backend.cluster``) over connections the gateway keeps.

The gateway logs in as the KMS service user (a crypto user) on a few pipelined connections —
straight to the nodes with a client profile (mTLS) or through the host's agent — and keeps
them: a lost connection is reopened (on the next node of the profile), an expired login is
renewed, and idempotent requests are sent again once. Key material never reaches the gateway:
keys are generated in the cluster as non-extractable, sensitive token keys and AES-GCM runs
there (``crypto.encrypt`` / ``crypto.decrypt``).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import ssl
from collections.abc import Sequence
from typing import Any

from strongroom.client.calls import AsyncClient, Login
from strongroom.client.connection import AsyncConnection, ClientError, RevisionClock
from strongroom.client.profile import ClientProfile, NodeAddress, ProfileError
from strongroom.constants import CKA, CKK, CKM, CKO
from strongroom.errors import CKR
from strongroom.kms.config import ConfigError, GatewayConfig

log = logging.getLogger("strongroom.kms")

#: Requests that change nothing: sent again once when the connection was lost under them.
IDEMPOTENT = frozenset({"crypto.encrypt", "crypto.decrypt", "random.generate", "kms.sigv4.verify",
                        "kms.sigv4.signing_key", "kms.record.get", "kms.record.list", "object.find", "session.info"})
#: Asymmetric and HMAC operations change nothing either.
IDEMPOTENT = IDEMPOTENT | frozenset({"crypto.sign", "crypto.verify", "object.get_attributes"})
#: A data key whose answer was lost was never seen: another one is drawn.
IDEMPOTENT = IDEMPOTENT | frozenset({"kms.data_key.generate"})
_RELOGIN = frozenset({CKR.SESSION_HANDLE_INVALID, CKR.USER_NOT_LOGGED_IN, CKR.SESSION_CLOSED})
_CONNECTION_LOST = frozenset({CKR.DEVICE_REMOVED})
#: The node takes a requester address of at most this many characters (kms.sigv4.* ``source``).
SOURCE_MAX = 64


class ClusterError(Exception):
    """A node's error reply (``code`` is the CKR) or the cluster could not be reached (``unreachable``)."""

    def __init__(self, code: int, message: str, *, unreachable: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.unreachable = unreachable


class _Link:
    """One connection and its login."""

    def __init__(self, backend: Backend, index: int) -> None:
        self.backend = backend
        self.index = index
        self.connection: AsyncConnection | None = None
        self.session: bytes | None = None
        self.lock = asyncio.Lock()

    async def ready(self) -> tuple[AsyncConnection, bytes]:
        connection, session = self.connection, self.session
        if connection is not None and connection.closed is None and session is not None:
            return connection, session  # the usual case, without taking the lock (nothing to await in between)
        async with self.lock:
            if self.connection is None or self.connection.closed is not None:
                await self._drop()
                self.connection = await self.backend.open_connection(self.index)
            if self.session is None:
                self.session = await self.backend.login(self.connection)
            return self.connection, self.session

    async def relogin(self, stale: bytes | None) -> None:
        async with self.lock:
            if self.session == stale:
                self.session = None

    async def reset(self, stale: AsyncConnection | None) -> None:
        async with self.lock:
            if self.connection is stale:
                await self._drop()

    async def _drop(self) -> None:
        connection, self.connection, self.session = self.connection, None, None
        if connection is not None:
            try:
                await connection.close()
            except Exception:  # noqa: BLE001 - closing a dead connection
                pass

    async def close(self) -> None:
        async with self.lock:
            if self.connection is not None and self.session is not None and self.connection.closed is None:
                try:
                    await asyncio.wait_for(AsyncClient(self.connection.call, login=Login(self.session)).logout(), 5)
                except Exception:  # noqa: BLE001 - best effort on shutdown
                    pass
            await self._drop()


class Backend:
    def __init__(self, config: GatewayConfig, password: str) -> None:
        self.config = config
        self._password = password
        self._timeout = config.cluster.request_timeout
        self._profile: ClientProfile | None = None
        self._context: ssl.SSLContext | None = None
        self._agent_socket = config.path(config.cluster.agent_socket)
        if config.cluster.profile is not None:
            try:
                self._profile = ClientProfile.load(config.path(config.cluster.profile))
            except ProfileError as exc:
                raise ConfigError(f"cluster.profile: {exc}") from None
        #: One read-your-writes token for every connection (a key record written on one is read on another).
        self._clock = RevisionClock()
        self._links = [_Link(self, i) for i in range(config.cluster.connections)]
        self._next = itertools.cycle(range(len(self._links)))
        self._node_cursor = 0
        self._login_failure: str | None = None
        #: Whether to ask kms.data_key.generate (False once the cluster said it does not offer it).
        self._data_key_op = True
        #: The cluster's calls (the SDK's), sent through :meth:`call`'s links.
        self.cluster = AsyncClient(self._send, refused=ClusterError)

    # --- connections ------------------------------------------------------------------------------

    async def open_connection(self, index: int) -> AsyncConnection:
        if self._agent_socket is not None:
            try:
                return await AsyncConnection.open_unix(str(self._agent_socket), timeout=self._timeout)
            except OSError as exc:
                raise ClusterError(CKR.DEVICE_REMOVED, f"cannot reach the agent at {self._agent_socket}: {exc}",
                                   unreachable=True) from None
        assert self._profile is not None
        if self._context is None:
            from strongroom.transport.tls import client_context

            profile = self._profile
            self._context = await asyncio.to_thread(client_context, profile.cert, profile.key, profile.ca)
        nodes: Sequence[NodeAddress] = self._profile.nodes
        errors = []
        start = (self._node_cursor + index) % len(nodes)
        for offset in range(len(nodes)):
            node = nodes[(start + offset) % len(nodes)]
            try:
                connection = await AsyncConnection.open(node.host, node.port, self._context,
                                                        timeout=min(self._timeout, 10.0), clock=self._clock)
            except (OSError, ssl.SSLError, TimeoutError) as exc:
                errors.append(f"{node.node_id}: {exc}")
                continue
            self._node_cursor = (start + offset) % len(nodes)
            return connection
        raise ClusterError(CKR.DEVICE_REMOVED, "no node of the cluster answers (" + "; ".join(errors) + ")",
                           unreachable=True)

    async def login(self, connection: AsyncConnection) -> bytes:
        username = self.config.cluster.username
        client = AsyncClient(connection.call)
        try:
            await asyncio.wait_for(client.login(username, self._password, "crypto-user"), self._timeout)
        except ClientError as exc:
            if exc.code in (CKR.PIN_INCORRECT, CKR.PIN_LOCKED):
                # Never retried automatically: a wrong password would lock the service user.
                self._login_failure = f"the cluster refused the service user {username!r}: {exc.message}"
                log.error("%s", self._login_failure)
            raise ClusterError(int(exc.code), exc.message) from None
        except TimeoutError:
            raise ClusterError(CKR.DEVICE_REMOVED, "the cluster did not answer the login", unreachable=True) from None
        self._login_failure = None
        assert client.session is not None  # login() holds the session it was given, checked to be bytes
        return client.session

    async def start(self) -> None:
        """Connect and log in once, so that a wrong configuration fails at start."""
        await self._links[0].ready()

    async def close(self) -> None:
        for link in self._links:
            await link.close()

    # --- calls ------------------------------------------------------------------------------------

    async def call(self, op: str, args: dict[str, Any] | None = None) -> Any:
        if self._login_failure is not None:
            raise ClusterError(CKR.PIN_INCORRECT, self._login_failure)
        args = {k: v for k, v in (args or {}).items() if v is not None}
        link = self._links[next(self._next)]
        attempts = 3
        for attempt in range(attempts):
            connection, session = await link.ready()
            try:
                # A timeout scope, not wait_for: on Python 3.11 wait_for runs the call in a task of its own.
                async with asyncio.timeout(self._timeout):
                    reply = await connection.send(op, args, session)
            except ClientError as exc:  # the connection was already closed
                await link.reset(connection)
                if attempt + 1 < attempts and op in IDEMPOTENT:
                    continue
                raise ClusterError(int(exc.code), exc.message, unreachable=True) from None
            except TimeoutError:
                await link.reset(connection)
                raise ClusterError(CKR.DEVICE_REMOVED, f"the cluster did not answer {op} in time",
                                   unreachable=True) from None
            if reply.ok:
                return reply.body
            code = reply.code
            if code in _RELOGIN and attempt + 1 < attempts:
                await link.relogin(session)
                continue
            if code in _CONNECTION_LOST:
                await link.reset(connection)
                if attempt + 1 < attempts and op in IDEMPOTENT:
                    continue
                raise ClusterError(code, str(reply.body), unreachable=True)
            raise ClusterError(code, str(reply.body))
        raise ClusterError(CKR.DEVICE_REMOVED, f"{op} failed after {attempts} attempts", unreachable=True)

    async def _send(self, op: str, args: dict[str, Any], session: bytes | None) -> Any:
        """The cluster calls' transport: :meth:`call` (each link sends under its own login)."""
        return await self.call(op, args)

    # --- keys and cryptography (the SDK's calls, with the gateway's templates and answers) ---------------

    async def generate_aes_key(self, label: str, length: int = 32) -> int:
        """A token AES key owned by the service user: sensitive, never extractable, GCM only."""
        template: dict[int, object] = {
            CKA.CLASS: int(CKO.SECRET_KEY), CKA.KEY_TYPE: int(CKK.AES), CKA.TOKEN: True,
            CKA.LABEL: label.encode(), CKA.VALUE_LEN: length, CKA.SENSITIVE: True, CKA.EXTRACTABLE: False,
            CKA.ENCRYPT: True, CKA.DECRYPT: True, CKA.WRAP: False, CKA.UNWRAP: False,
            CKA.SIGN: False, CKA.VERIFY: False, CKA.DERIVE: False,
            CKA.ALLOWED_MECHANISMS: [int(CKM.AES_GCM)],
        }
        return await self.cluster.generate_key(CKM.AES_KEY_GEN, template)

    async def destroy_object(self, handle: int) -> None:
        try:
            await self.cluster.destroy_object(handle)
        except ClusterError as exc:
            if exc.code not in (CKR.OBJECT_HANDLE_INVALID, CKR.KEY_HANDLE_INVALID):
                raise

    async def gcm_encrypt(self, handle: int, iv: bytes, aad: bytes, plaintext: bytes) -> bytes:
        result = await self.cluster.encrypt(handle, CKM.AES_GCM, plaintext, {"iv": iv, "aad": aad, "tag_bits": 128})
        return result["data"]

    async def gcm_data_key(self, handle: int, length: int, iv: bytes, aad: bytes) -> tuple[bytes, bytes] | None:
        """(data key, its AES-GCM ciphertext and tag) from the cluster in one round trip
        (``kms.data_key.generate``); None when the cluster, or the agent between, does not offer that
        operation (an older version): the caller then asks random.generate and gcm_encrypt, and this
        backend does not ask again until it is restarted."""
        if not self._data_key_op:
            return None
        try:
            result = await self.cluster.call("kms.data_key.generate", key=handle, length=length,
                                             params={"iv": iv, "aad": aad, "tag_bits": 128})
        except ClusterError as exc:
            if exc.code in (CKR.FUNCTION_NOT_SUPPORTED, CKR.ACTION_PROHIBITED) and not exc.unreachable:
                log.info("the cluster does not offer kms.data_key.generate (%s): data keys take two requests",
                         exc.message)
                self._data_key_op = False
                return None
            raise
        plaintext, sealed = result.get("plaintext"), result.get("data")
        if not isinstance(plaintext, bytes) or len(plaintext) != length or not isinstance(sealed, bytes) \
                or len(sealed) != length + 16:
            raise ClusterError(CKR.DEVICE_ERROR, "kms.data_key.generate: the reply is not a data key and its seal")
        return plaintext, sealed

    async def gcm_decrypt(self, handle: int, iv: bytes, aad: bytes, data: bytes) -> bytes:
        return await self.cluster.decrypt(handle, CKM.AES_GCM, data, {"iv": iv, "aad": aad, "tag_bits": 128})

    # --- SigV4 and metadata records (node operations only the gateway uses) -----------------------------

    async def verify_sigv4(self, access_key_id: str, date: str, region: str, service: str,
                           string_to_sign: str, signature: str, *, source: str = "") -> dict[str, Any]:
        """``source``: the requester's address, for the node's (aggregated) audit of a refusal."""
        return await self.cluster.call(
            "kms.sigv4.verify", access_key_id=access_key_id, date=date, region=region, service=service,
            string_to_sign=string_to_sign, signature=signature, source=source[:SOURCE_MAX])

    async def sigv4_signing_key(self, access_key_id: str, date: str, region: str, service: str, *,
                                source: str = "") -> dict[str, Any]:
        """{signing_key (32 bytes), name, policy}: the day-scoped derived key, never the secret."""
        return await self.cluster.call(
            "kms.sigv4.signing_key", access_key_id=access_key_id, date=date, region=region, service=service,
            source=source[:SOURCE_MAX])

    async def record_get(self, key: str) -> tuple[dict[str, Any] | None, int]:
        result = await self.cluster.call("kms.record.get", key=key)
        return result["value"], int(result["revision"])

    async def record_list(self, prefix: str, start_after: str = "", limit: int = 1000
                          ) -> tuple[list[tuple[str, dict[str, Any], int]], bool]:
        result = await self.cluster.call("kms.record.list", prefix=prefix, start_after=start_after, limit=limit)
        return [(r["key"], r["value"], int(r["revision"])) for r in result["records"]], bool(result["more"])

    async def record_commit(self, changes: list[dict[str, Any]]) -> bool:
        """Apply all changes or none; False when a record moved on since it was read."""
        result = await self.cluster.call("kms.record.commit", changes=changes)
        return bool(result["ok"])

    # --- asymmetric and HMAC keys (ops/asymmetric.py, ops/mac.py) ----------------------------------------

    async def generate_key_pair(self, label: str, mechanism: int, public: dict[int, Any],
                                private: dict[int, Any]) -> tuple[int, int]:
        """A token key pair owned by the service user: (public handle, private handle).

        The private key is sensitive and never extractable; both templates come from the caller
        (usage flags and CKA_ALLOWED_MECHANISMS restrict each half to its KMS algorithms)."""
        common: dict[int, Any] = {CKA.TOKEN: True, CKA.LABEL: label.encode()}
        public_template = {CKA.CLASS: int(CKO.PUBLIC_KEY), **common, **public}
        private_template = {CKA.CLASS: int(CKO.PRIVATE_KEY), **common, CKA.SENSITIVE: True,
                            CKA.EXTRACTABLE: False, **private}
        return await self.cluster.generate_key_pair(mechanism, public_template, private_template)

    async def generate_hmac_key(self, label: str, length: int, mechanism: int) -> int:
        """A token generic secret (sensitive, never extractable) usable only for one CKM_SHA*_HMAC."""
        template: dict[int, object] = {
            CKA.CLASS: int(CKO.SECRET_KEY), CKA.KEY_TYPE: int(CKK.GENERIC_SECRET), CKA.TOKEN: True,
            CKA.LABEL: label.encode(), CKA.VALUE_LEN: length, CKA.SENSITIVE: True, CKA.EXTRACTABLE: False,
            CKA.SIGN: True, CKA.VERIFY: True, CKA.ENCRYPT: False, CKA.DECRYPT: False, CKA.WRAP: False,
            CKA.UNWRAP: False, CKA.DERIVE: False, CKA.ALLOWED_MECHANISMS: [mechanism],
        }
        return await self.cluster.generate_key(CKM.GENERIC_SECRET_KEY_GEN, template)

    async def verify(self, handle: int, mechanism: int, data: bytes, signature: bytes, params: Any = None) -> bool:
        """True when the signature verifies, False when the cluster says it does not."""
        try:
            await self.cluster.verify(handle, mechanism, data, signature, params)
        except ClusterError as exc:
            if exc.code in (CKR.SIGNATURE_INVALID, CKR.SIGNATURE_LEN_RANGE):
                return False
            raise
        return True
