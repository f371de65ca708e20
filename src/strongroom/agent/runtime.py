"""The agent's state across connections: applications, caches, and ending logins and sessions."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from strongroom.agent.config import AgentConfig
from strongroom.agent.mechanisms import mechanism_list
from strongroom.agent.nodes import NodePool, NodeTimeout, NodeUnavailable
from strongroom.agent.state import App, Session

log = logging.getLogger("strongroom.agent")

CLUSTER_CACHE_SECONDS = 10.0
LOGOUT_TIMEOUT = 5.0


class Agent:
    def __init__(self, config: AgentConfig, pool: NodePool) -> None:
        self.config = config
        self.pool = pool
        self.apps: dict[bytes, App] = {}
        self.cluster: dict[str, Any] | None = None
        self.cluster_at = 0.0

    # --- caches -------------------------------------------------------------------------

    async def cluster_status(self) -> dict[str, Any] | None:
        """``cluster.status`` (no login needed), cached for a few seconds; None if unreachable."""
        now = time.monotonic()
        if self.cluster is not None and now - self.cluster_at < CLUSTER_CACHE_SECONDS:
            return self.cluster
        try:
            status = await self.pool.request_any("cluster.status", {})
        except Exception as exc:  # noqa: BLE001 - a stale answer is better than none
            log.warning("cluster.status failed: %s", exc)
            return self.cluster
        self.cluster, self.cluster_at = status, now
        return status

    async def mechanism_list(self, prefer: App | None) -> list[dict[str, Any]]:
        """The token's mechanisms, as the node that serves ``prefer`` lists them (see :mod:`.mechanisms`)."""
        return await mechanism_list(self.pool, prefer)

    # --- ending things --------------------------------------------------------------------

    async def logout(self, app: App) -> None:
        """The application's login state returns to public: node logins end, node state goes."""
        logins, app.logins = app.logins, None
        for session in app.sessions.values():
            session.forget_node_state()
            session.find = None
        app.session_objects.clear()
        app.home = None
        if logins is None:
            return
        held = logins.clear()
        await asyncio.gather(*(self._node_logout(key, token, epoch) for key, token, epoch in held))

    async def leave_public(self, app: App) -> None:
        """A login replaces the application's anonymous node logins: what they held (public session objects,
        operations) goes with them."""
        public, app.public = app.public, None
        for session in app.sessions.values():
            session.forget_node_state()
        app.session_objects.clear()
        app.home = None
        if public is None:
            return
        held = public.clear()
        await asyncio.gather(*(self._node_logout(name, token, epoch) for name, token, epoch in held))

    async def _node_logout(self, key: str, token: bytes | None, epoch: int) -> None:
        link = self.pool.link(key)
        if token is None or link is None or not link.connected or link.epoch != epoch:
            return
        try:
            # session.logout ends the login and, on the node, its PKCS#11 sessions and session objects.
            await link.request("session.logout", {}, token, timeout=LOGOUT_TIMEOUT)
        except (NodeUnavailable, NodeTimeout):
            pass

    async def close_session(self, app: App, session: Session) -> None:
        app.sessions.pop(session.handle, None)
        binding = session.binding
        session.forget_node_state()
        session.find = None
        for handle in [h for h, owner in app.session_objects.items() if owner == session.handle]:
            del app.session_objects[handle]
        if binding is not None and binding.valid(app.crypto_logins):
            live = app.crypto_logins.current(binding.link)
            if live is not None:
                try:
                    await binding.link.request("p11session.close", {"session": binding.handle}, live[0],
                                               timeout=LOGOUT_TIMEOUT)
                except (NodeUnavailable, NodeTimeout):
                    pass
        if not app.sessions and app.logins is not None:
            # PKCS#11: closing an application's last session returns it to the public state.
            await self.logout(app)

    async def finalize(self, app: App) -> None:
        """C_Finalize, or the application's last connection closed."""
        if app.finalized:
            return
        app.finalized = True
        if self.apps.get(app.app_id) is app:
            del self.apps[app.app_id]
        for connection in list(app.connections):
            connection.app = None
        app.connections.clear()
        await self.logout(app)
        await self.leave_public(app)
        app.sessions.clear()
        log.info("application %s (pid %s) finalized", app.app_id.hex()[:8], app.pid)

    async def shutdown(self) -> None:
        await asyncio.gather(*(self.finalize(app) for app in list(self.apps.values())), return_exceptions=True)
