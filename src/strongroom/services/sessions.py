"""Logins and their PKCS#11 sessions in one worker, and what ends them.

A login ends by logout, with its connection (unless it asked to be kept), by idling past
the limit, when a newer login of its user takes its place at the limit, or because its user
was deleted anywhere in the cluster (another worker or node: the store's watch tells). Its
PKCS#11 sessions, and the session objects they hold, go with it.
"""

from __future__ import annotations

import asyncio
import logging

from strongroom.auth.sessions import Session, SessionTable
from strongroom.auth.throttle import LoginThrottle
from strongroom.auth.users import PREFIX as USERS_PREFIX
from strongroom.errors import HsmError
from strongroom.objects.p11sessions import P11SessionTable
from strongroom.services.config import Limits
from strongroom.services.keyring import ClusterKeyring
from strongroom.store.base import CompactedError, Store, StoreError

log = logging.getLogger(__name__)
#: How often worker 0 tries to write the failed logins counted without the store.
RECONCILE_SECONDS = 2.0


class Sessions:
    def __init__(self, limits: Limits, keyring: ClusterKeyring, store: Store) -> None:
        self._limits = limits
        self._keyring = keyring
        self._store = store
        self.logins = SessionTable(
            idle_timeout=limits.session_idle_seconds,
            max_per_user=limits.max_sessions_per_user,
            max_total=limits.max_sessions,
            on_end=self._ended,
        )
        self.p11 = P11SessionTable(max_per_login=limits.max_p11_sessions_per_login)
        self.throttle = LoginThrottle(limits.admin_login_failures_per_source, limits.admin_login_backoff_seconds)

    def _ended(self, session: Session, why: str) -> None:
        if why != "idle":
            log.info("login %s… of %s ended: %s", session.token[:4].hex(), session.username, why)
        self.end_login(session.token)

    def connection_closed(self, connection_id: int) -> list[Session]:
        """The connection ended: so do its logins (but those kept), with their PKCS#11 sessions."""
        ended = self.logins.close_connection(connection_id)
        for session in ended:
            self.end_login(session.token)
        return ended

    def close_user(self, username: str) -> None:
        for token in self.logins.close_user(username):
            self.end_login(token)

    def end_login(self, token: bytes) -> None:
        """A login ended: its PKCS#11 sessions and their session objects go with it."""
        for handle in self.p11.of_login(token):
            self.close_p11(handle)

    def close_p11(self, handle: int) -> None:
        self.p11.close(handle)
        objects = self._keyring.objects
        if objects is not None:
            objects.drop_session_objects(handle)

    async def reap(self) -> None:
        """Background task: idle logins expire; their PKCS#11 sessions and session objects go too."""
        while True:
            await asyncio.sleep(min(30.0, self._limits.session_idle_seconds / 2))
            self.logins.expire_idle()
            for handle in self.p11.reap(self.logins.tokens()):
                objects = self._keyring.objects
                if objects is not None:
                    objects.drop_session_objects(handle)

    async def watch_users(self) -> None:
        """Close this worker's sessions of users deleted anywhere (another worker or node), and keep the user
        records as last seen (what a login is checked against while the store cannot count it)."""
        prefix = USERS_PREFIX
        store = self._store
        revision: int | None = None
        while True:
            try:
                if revision is None:
                    revision = await store.revision() + 1
                    users = self._keyring.users
                    if users is not None:
                        await users.list()  # the records as they are now; the watch tells what changes
                async for event in store.watch(prefix, revision):
                    revision = event.revision + 1
                    users = self._keyring.users
                    if users is not None:
                        try:
                            users.observe(event.record, event.deleted)
                        except HsmError as exc:  # a record that does not open: never used offline
                            log.warning("user record %s: %s", event.record.key, exc)
                    if event.deleted:
                        self.close_user(event.record.key[len(prefix):])
            except asyncio.CancelledError:
                raise
            except CompactedError:
                # Missed events: the sessions to drop are those whose user no longer exists.
                revision = None
                try:
                    listing = await store.list_prefix(prefix)
                except Exception:  # noqa: BLE001 - retried below
                    await asyncio.sleep(1)
                    continue
                existing = {record.key[len(prefix):] for record in listing.records}
                for name in self.logins.usernames() - existing:
                    self.close_user(name)
            except Exception as exc:  # noqa: BLE001 - the watch must outlive store hiccups
                log.warning("user watch failed (%s); resuming", exc)
                await asyncio.sleep(1)

    async def reconcile_lockouts(self) -> None:
        """Background task of worker 0: once the store takes writes again, the failed logins this node counted
        without it go into the users' records (auth/offline.py)."""
        while True:
            await asyncio.sleep(RECONCILE_SECONDS)
            users = self._keyring.users
            if users is None:
                continue
            try:
                await users.reconcile()
            except (StoreError, HsmError) as exc:
                log.debug("offline login failures not reconciled yet: %s", exc)
